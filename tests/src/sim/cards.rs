//! The test payment methods paysim knows, and what confirming each one does, as Stripe documents
//! them for its test mode.
//!
//! This module only names outcomes; `state` applies them (charging, recording, answering). A
//! method not listed here is answered as Stripe answers an unknown PaymentMethod id, a 400
//! `resource_missing`.

/// What confirming a PaymentIntent with a test payment method does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CardOutcome {
    /// The payment succeeds and is charged at once.
    Succeeds,
    /// The issuer asks for 3-D Secure: the intent waits in `requires_action` until the challenge
    /// is played (`POST /__sim/payment_intents/{id}/authenticate`), nothing charged meanwhile.
    RequiresAuthentication,
    /// The issuer declines: a 402 `card_error`, nothing charged.
    Declines(Decline),
}

/// A decline as Stripe's test cards produce it: the error's `code`, its `decline_code` where
/// Stripe gives one, and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decline {
    pub code: &'static str,
    pub decline_code: Option<&'static str>,
    pub message: &'static str,
    /// The last four digits of the test card's number in that table.
    pub last4: &'static str,
}

/// The outcome of confirming with `payment_method`, or `None` for a method paysim does not know.
///
/// The declines follow the table at <https://docs.stripe.com/testing#declined-payments>, which
/// gives each test card's error code and decline code, for example "Insufficient funds decline |
/// 4000000000009995 | card_declined | insufficient_funds", "Expired card decline |
/// 4000000000000069 | expired_card | n/a" and "Processing error decline | 4000000000000119 |
/// processing_error | n/a": where the decline code is "n/a" the error carries none. The
/// `pm_card_*` ids are the same cards as PaymentMethods (the table's PaymentMethods tab).
pub(crate) fn outcome(payment_method: &str) -> Option<CardOutcome> {
    Some(match payment_method {
        // https://docs.stripe.com/testing#cards: "When writing test code, use a PaymentMethod
        // such as pm_card_visa instead of a card number."
        "pm_card_visa" | "pm_card_mastercard" => CardOutcome::Succeeds,
        // https://docs.stripe.com/testing, "Authentication and setup", "Always authenticate"
        // (4000002760003184): "This card requires authentication on all transactions, regardless
        // of how the card is set up."
        "pm_card_authenticationRequired" => CardOutcome::RequiresAuthentication,
        // https://docs.stripe.com/payments/3d-secure/authentication-flow, "Test the 3DS flow":
        // "pm_card_threeDSecure2Required | Required | The payment must complete 3DS2
        // authentication for the payment to be successful."
        "pm_card_threeDSecure2Required" => CardOutcome::RequiresAuthentication,
        // "Generic decline | 4000000000000002 | card_declined | generic_decline".
        "pm_card_chargeDeclined" => CardOutcome::Declines(Decline {
            code: "card_declined",
            decline_code: Some("generic_decline"),
            message: "Your card was declined.",
            last4: "0002",
        }),
        // "Insufficient funds decline | 4000000000009995 | card_declined | insufficient_funds".
        "pm_card_visa_chargeDeclinedInsufficientFunds" => CardOutcome::Declines(Decline {
            code: "card_declined",
            decline_code: Some("insufficient_funds"),
            message: "Your card has insufficient funds.",
            last4: "9995",
        }),
        // "Expired card decline | 4000000000000069 | expired_card | n/a".
        "pm_card_chargeDeclinedExpiredCard" => CardOutcome::Declines(Decline {
            code: "expired_card",
            decline_code: None,
            message: "Your card has expired.",
            last4: "0069",
        }),
        // "Processing error decline | 4000000000000119 | processing_error | n/a".
        "pm_card_chargeDeclinedProcessingError" => CardOutcome::Declines(Decline {
            code: "processing_error",
            decline_code: None,
            message: "An error occurred while processing your card. Try again in a little bit.",
            last4: "0119",
        }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declines_carry_the_codes_stripes_test_cards_give() {
        let decline = |method| match outcome(method) {
            Some(CardOutcome::Declines(decline)) => (decline.code, decline.decline_code),
            other => panic!("{method}: {other:?}"),
        };
        assert_eq!(
            decline("pm_card_chargeDeclined"),
            ("card_declined", Some("generic_decline"))
        );
        assert_eq!(
            decline("pm_card_visa_chargeDeclinedInsufficientFunds"),
            ("card_declined", Some("insufficient_funds"))
        );
        assert_eq!(
            decline("pm_card_chargeDeclinedExpiredCard"),
            ("expired_card", None)
        );
        assert_eq!(
            decline("pm_card_chargeDeclinedProcessingError"),
            ("processing_error", None)
        );
    }

    #[test]
    fn three_d_secure_cards_require_authentication_and_unknown_methods_are_none() {
        for method in [
            "pm_card_authenticationRequired",
            "pm_card_threeDSecure2Required",
        ] {
            assert_eq!(outcome(method), Some(CardOutcome::RequiresAuthentication));
        }
        assert_eq!(outcome("pm_card_visa"), Some(CardOutcome::Succeeds));
        assert_eq!(outcome("pm_nope"), None);
        assert_eq!(outcome("PM_CARD_VISA"), None);
    }
}
