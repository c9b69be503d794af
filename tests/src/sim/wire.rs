//! The Stripe-shaped JSON the simulator answers with: PaymentIntents, `{"error":{...}}` bodies and
//! the envelopes of the lookups (a search result page and a list).
//!
//! This module only renders bytes; which body a request gets is decided in `state`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// Status codes the simulator answers with, named so the state machine reads like the spec.
pub(crate) mod status {
    pub const OK: u16 = 200;
    pub const TEMPORARY_REDIRECT: u16 = 307;
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    pub const PAYMENT_REQUIRED: u16 = 402;
    pub const NOT_FOUND: u16 = 404;
    pub const METHOD_NOT_ALLOWED: u16 = 405;
    pub const CONFLICT: u16 = 409;
    pub const PAYLOAD_TOO_LARGE: u16 = 413;
    pub const TOO_MANY_REQUESTS: u16 = 429;
    pub const INTERNAL_SERVER_ERROR: u16 = 500;
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

/// A PaymentIntent as Stripe returns it, reduced to the fields ChargeOnce and a Stripe SDK read.
///
/// `client_secret`, `last_payment_error` and `next_action` are always present, `null` when
/// empty, as in Stripe's PaymentIntent object
/// (<https://docs.stripe.com/api/payment_intents/object>).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PaymentIntent {
    pub id: String,
    pub object: &'static str,
    pub amount: u64,
    pub currency: String,
    pub status: &'static str,
    pub payment_method: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub created: u64,
    pub client_secret: String,
    pub last_payment_error: Option<PaymentError>,
    pub next_action: Option<NextAction>,
    /// Only on intents created through `/v1/orders`: the `Idempotency-Key` it was created under.
    /// Not a Stripe field: the passthrough backend's contract (README, "The passthrough
    /// backend") asks each intent its lookup lists to show its key, so that an edge can tell a
    /// list that ignored its filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Why the last payment attempt failed: an intent's `last_payment_error`, and the fields a
/// decline's error body shares with it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PaymentError {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<&'static str>,
    pub message: String,
    /// The card that failed, as Stripe's error object carries it: "payment_method: The
    /// PaymentMethod object for errors returned on a request involving a PaymentMethod"
    /// (<https://docs.stripe.com/api/errors>). What a card tester reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<CardMethod>,
}

/// A card PaymentMethod, reduced to what a decline shows of it
/// (<https://docs.stripe.com/api/payment_methods/object>: `card.brand`, `card.country`,
/// `card.last4`, `card.checks`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CardMethod {
    pub id: String,
    pub object: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub card: Card,
}

/// The card of a [`CardMethod`].
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Card {
    pub brand: &'static str,
    pub country: &'static str,
    pub last4: &'static str,
    pub checks: CardChecks,
}

/// Which of the card's checks passed: "If a CVC was provided, results of the check, one of
/// `pass`, `fail`, `unavailable`, or `unchecked`" (`card.checks.cvc_check`).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CardChecks {
    pub cvc_check: &'static str,
}

impl CardMethod {
    /// The test card `id`, a Visa ending in `last4`, whose CVC check passed.
    pub fn visa(id: &str, last4: &'static str) -> Self {
        Self {
            id: id.to_owned(),
            object: "payment_method",
            kind: "card",
            card: Card {
                brand: "visa",
                country: "US",
                last4,
                checks: CardChecks { cvc_check: "pass" },
            },
        }
    }
}

/// What the customer must do before the payment can go on: an intent's `next_action`.
///
/// <https://docs.stripe.com/payments/3d-secure/authentication-flow>: "After confirmation, if a
/// PaymentIntent has a requires_action status, inspect the PaymentIntent’s next_action. If it
/// contains redirect_to_url, that means 3DS is required." Without a `return_url` the action is
/// `use_stripe_sdk`, of which <https://docs.stripe.com/api/payment_intents/object>
/// (`next_action.use_stripe_sdk`) says "Stripe.js depends on the contents of this dictionary to
/// invoke authentication flows. The shape of the contents is subject to change and is only
/// intended to be used by Stripe.js"; paysim puts there where its stand-in for that challenge is.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NextAction {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_stripe_sdk: Option<UseStripeSdk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_to_url: Option<RedirectToUrl>,
}

/// The contents of a `use_stripe_sdk` action: paysim's challenge, not Stripe.js's.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UseStripeSdk {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The path of the test hook that plays the bank's challenge.
    pub authenticate_url: String,
}

/// A `redirect_to_url` action: where the customer authenticates, and where they come back to.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RedirectToUrl {
    pub url: String,
    pub return_url: String,
}

impl NextAction {
    /// The 3-D Secure challenge of the intent `id`, played at paysim's authenticate hook:
    /// `redirect_to_url` when the confirmation carried a `return_url`, `use_stripe_sdk` otherwise.
    pub fn three_d_secure(id: &str, return_url: Option<&str>) -> Self {
        let hook = format!("/__sim/payment_intents/{id}/authenticate");
        match return_url {
            Some(return_url) => Self {
                kind: "redirect_to_url",
                use_stripe_sdk: None,
                redirect_to_url: Some(RedirectToUrl {
                    url: hook,
                    return_url: return_url.to_owned(),
                }),
            },
            None => Self {
                kind: "use_stripe_sdk",
                use_stripe_sdk: Some(UseStripeSdk {
                    kind: "paysim_three_d_secure",
                    authenticate_url: hook,
                }),
                redirect_to_url: None,
            },
        }
    }
}

/// Stripe's error object, the value under `"error"`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ApiError {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<&'static str>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    // Boxed: only declines carry it, and it would triple the size of every `Result<_, ApiError>`.
    pub payment_intent: Option<Box<PaymentIntent>>,
    /// The card that failed, for a decline (see [`PaymentError::payment_method`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<Box<CardMethod>>,
}

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: &'a ApiError,
}

impl ApiError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            decline_code: None,
            message: message.into(),
            param: None,
            payment_intent: None,
            payment_method: None,
        }
    }

    /// An `invalid_request_error` without a param.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new("invalid_request_error", message)
    }

    /// An `invalid_request_error` blaming one parameter.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::invalid_request(message)
        }
    }

    /// An `idempotency_error`.
    pub fn idempotency(message: impl Into<String>) -> Self {
        Self::new("idempotency_error", message)
    }

    /// An `api_error`, Stripe's type for failures on its side.
    pub fn api(message: impl Into<String>) -> Self {
        Self::new("api_error", message)
    }

    /// A failed payment (a decline): the error the intent recorded as its `last_payment_error`,
    /// carrying the failed PaymentIntent, as Stripe's 402 `card_error` does.
    pub fn payment_failed(intent: PaymentIntent) -> Self {
        // Only intents built from a failure reach here; a missing error would be a paysim bug.
        let error = intent
            .last_payment_error
            .clone()
            .expect("a failed payment's intent records its last_payment_error");
        Self {
            code: Some(error.code),
            decline_code: error.decline_code,
            payment_method: error.payment_method.clone().map(Box::new),
            payment_intent: Some(Box::new(intent)),
            ..Self::new(error.kind, error.message)
        }
    }

    /// Stripe's answer to a payment method id it does not know.
    pub fn no_such_payment_method(id: &str) -> Self {
        Self {
            code: Some("resource_missing"),
            ..Self::invalid_param("payment_method", format!("No such PaymentMethod: '{id}'"))
        }
    }

    /// Stripe's answer to a PaymentIntent id it does not know: 404 `resource_missing`, "The ID
    /// provided is not valid. Either the resource does not exist, or an ID for a different
    /// resource has been provided." (<https://docs.stripe.com/error-codes#resource-missing>).
    pub fn no_such_payment_intent(id: &str) -> Self {
        Self {
            code: Some("resource_missing"),
            ..Self::invalid_param("intent", format!("No such payment_intent: '{id}'"))
        }
    }

    /// An operation the intent's status does not allow: `payment_intent_unexpected_state`, "The
    /// PaymentIntent’s state was incompatible with the operation you were trying to perform."
    /// (<https://docs.stripe.com/error-codes>).
    pub fn payment_intent_unexpected_state(message: impl Into<String>) -> Self {
        Self {
            code: Some("payment_intent_unexpected_state"),
            ..Self::invalid_request(message)
        }
    }

    /// A second request with an idempotency key whose first request is still executing.
    ///
    /// <https://docs.stripe.com/error-codes#idempotency-key-in-use>: "`idempotency_key_in_use`:
    /// The idempotency key provided is currently being used in another request. This occurs if
    /// your integration is making duplicate requests simultaneously", answered with "409 |
    /// Conflict | The request conflicts with another request (perhaps due to using the same
    /// idempotent key)" (<https://docs.stripe.com/api/errors>). Its type is
    /// `invalid_request_error`: the docs keep `idempotency_error` for "an Idempotency-Key ...
    /// re-used on a request that does not match the first request's API endpoint and
    /// parameters".
    pub fn idempotency_key_in_use(key: &str) -> Self {
        Self {
            code: Some("idempotency_key_in_use"),
            ..Self::invalid_request(format!(
                "There is currently another in-progress request using this Idempotent Key (that \
                 probably means you submitted twice, and the other request is still going \
                 through): {key}. Please try again later."
            ))
        }
    }

    /// A request refused by the rate limiter before anything ran.
    ///
    /// <https://docs.stripe.com/rate-limits>: "If you send many requests in quick succession, you
    /// might receive 429 error responses"; <https://docs.stripe.com/error-codes#rate-limit>:
    /// "`rate_limit`: Too many requests hit the API too quickly. We recommend an exponential
    /// backoff of your requests." An `invalid_request_error`, one of the four types
    /// <https://docs.stripe.com/api/errors> lists.
    pub fn rate_limited() -> Self {
        Self {
            code: Some("rate_limit"),
            ..Self::invalid_request(
                "Too many requests hit the API too quickly (injected rate_limit_next fault); \
                 nothing was executed. We recommend an exponential backoff of your requests.",
            )
        }
    }

    /// The `{"error": ...}` body.
    pub fn to_body(&self) -> Bytes {
        json_bytes(&ErrorEnvelope { error: self })
    }
}

/// Stripe's search result page, the answer of `GET /v1/payment_intents/search`.
///
/// The simulator answers every match in one page, so `has_more` is always `false` and `next_page`
/// always `null`. The elements are raw so that each one is the stored PaymentIntent byte for byte.
#[derive(Debug, Serialize)]
pub(crate) struct SearchResult<'a> {
    object: &'static str,
    url: &'static str,
    has_more: bool,
    next_page: Option<&'static str>,
    data: Vec<&'a RawValue>,
}

impl<'a> SearchResult<'a> {
    /// The only page of the search served at `url`.
    pub fn complete(url: &'static str, data: Vec<&'a RawValue>) -> Self {
        Self {
            object: "search_result",
            url,
            has_more: false,
            next_page: None,
            data,
        }
    }
}

/// Stripe's list object, the answer of `GET /v1/orders`; one page, like [`SearchResult`].
#[derive(Debug, Serialize)]
pub(crate) struct List<'a> {
    object: &'static str,
    url: &'static str,
    has_more: bool,
    data: Vec<&'a RawValue>,
}

impl<'a> List<'a> {
    /// The only page of the list served at `url`.
    pub fn complete(url: &'static str, data: Vec<&'a RawValue>) -> Self {
        Self {
            object: "list",
            url,
            has_more: false,
            data,
        }
    }
}

/// Serializes a value the simulator built itself.
pub(crate) fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    // Only our own structs of strings, integers and string maps reach here; they always serialize.
    Bytes::from(serde_json::to_vec(value).expect("simulator types serialize to JSON"))
}

/// Serializes a value the simulator built itself into JSON kept as is, byte for byte.
///
/// The same compact serializer as [`json_bytes`], so the text equals what `json_bytes` gives for
/// the same value, alone or nested in a larger body.
pub(crate) fn raw_json<T: Serialize>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("simulator types serialize to JSON")
}
