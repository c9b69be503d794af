//! What a PaymentIntent's `status` says the money did, and so what the
//! customer is told: one reading for the edge's forward, its reconciliation
//! lookup and its refresh, and for the widget.
//!
//! Stripe answers a confirmation with HTTP 200 whatever the money did: a card
//! that needs 3-D Secure comes back `requires_action`, having charged
//! nothing. So a 2xx is read by its body's `status`, Stripe's vocabulary,
//! which the passthrough contract uses too (an answer without one is placed).
//! <https://docs.stripe.com/payments/paymentintents/lifecycle> lists the
//! statuses.

/// A PaymentIntent's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentStatus {
    /// No payment method yet, or the last one failed (a decline, a failed
    /// 3-D Secure challenge).
    RequiresPaymentMethod,
    /// Created but not confirmed.
    RequiresConfirmation,
    /// The customer must act: authenticate with their bank (3-D Secure).
    RequiresAction,
    /// The payment method is processing the payment; it succeeds or fails
    /// without the customer.
    Processing,
    /// Authorised, to be captured by the merchant.
    RequiresCapture,
    /// Canceled: no money moves.
    Canceled,
    /// The money moved.
    Succeeded,
}

/// What an intent's status means for the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentOutcome {
    /// The order is placed: money has moved or will without the customer
    /// doing more.
    Placed,
    /// Nothing is charged until the customer authenticates with their bank.
    ActionRequired,
    /// Nothing was or will be charged under this attempt: a new attempt
    /// (another card) may follow.
    Refused,
}

impl IntentStatus {
    /// Every status, in Stripe's lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::RequiresPaymentMethod,
        Self::RequiresConfirmation,
        Self::RequiresAction,
        Self::Processing,
        Self::RequiresCapture,
        Self::Canceled,
        Self::Succeeded,
    ];

    /// The status as Stripe spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequiresPaymentMethod => "requires_payment_method",
            Self::RequiresConfirmation => "requires_confirmation",
            Self::RequiresAction => "requires_action",
            Self::Processing => "processing",
            Self::RequiresCapture => "requires_capture",
            Self::Canceled => "canceled",
            Self::Succeeded => "succeeded",
        }
    }

    /// The status spelled `name`, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// What the status means for the customer. An unconfirmed intent
    /// (`requires_confirmation`) charged nothing and the edge never leaves
    /// one behind, so it is a refusal like a failed payment method.
    pub fn outcome(self) -> PaymentOutcome {
        match self {
            Self::Succeeded | Self::Processing | Self::RequiresCapture => PaymentOutcome::Placed,
            Self::RequiresAction => PaymentOutcome::ActionRequired,
            Self::RequiresPaymentMethod | Self::RequiresConfirmation | Self::Canceled => {
                PaymentOutcome::Refused
            }
        }
    }

    /// Whether the intent may still change without a new confirmation: the
    /// customer may authenticate, and a processing payment succeeds or
    /// fails. A stored answer in such a state is refreshed when replayed.
    pub fn may_change(self) -> bool {
        matches!(self, Self::RequiresAction | Self::Processing)
    }
}

/// The outcome of a successful (2xx) answer with `status` as its body's
/// `status` field: placed when there is none, as for a backend that does
/// not speak PaymentIntents, and when it is one Stripe does not have (yet):
/// of the readings, "placed" is the one that never leads the customer to pay
/// again.
pub fn outcome_of(status: Option<&str>) -> PaymentOutcome {
    // Matched on the text rather than through [`IntentStatus::parse`]: the
    // widget ships this, and the direct match is the smaller code. The
    // tests hold the two readings equal.
    match status {
        Some("requires_action") => PaymentOutcome::ActionRequired,
        Some("requires_payment_method" | "requires_confirmation" | "canceled") => {
            PaymentOutcome::Refused
        }
        _ => PaymentOutcome::Placed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_and_means_one_thing() {
        for status in IntentStatus::ALL {
            assert_eq!(IntentStatus::parse(status.as_str()), Some(status));
        }
        let placed: Vec<_> = IntentStatus::ALL
            .into_iter()
            .filter(|s| s.outcome() == PaymentOutcome::Placed)
            .map(IntentStatus::as_str)
            .collect();
        assert_eq!(placed, ["processing", "requires_capture", "succeeded"]);
        assert_eq!(
            IntentStatus::RequiresAction.outcome(),
            PaymentOutcome::ActionRequired
        );
        let changing: Vec<_> = IntentStatus::ALL
            .into_iter()
            .filter(|s| s.may_change())
            .map(IntentStatus::as_str)
            .collect();
        assert_eq!(changing, ["requires_action", "processing"]);
    }

    #[test]
    fn the_widgets_reading_of_a_status_is_the_statuss_own() {
        for status in IntentStatus::ALL {
            assert_eq!(
                outcome_of(Some(status.as_str())),
                status.outcome(),
                "{status:?}"
            );
        }
    }

    #[test]
    fn an_answer_without_a_known_status_is_placed() {
        assert_eq!(outcome_of(None), PaymentOutcome::Placed);
        assert_eq!(outcome_of(Some("exploded")), PaymentOutcome::Placed);
        assert_eq!(outcome_of(Some("succeeded")), PaymentOutcome::Placed);
        assert_eq!(outcome_of(Some("canceled")), PaymentOutcome::Refused);
    }
}
