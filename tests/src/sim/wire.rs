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
    pub const BAD_REQUEST: u16 = 400;
    pub const UNAUTHORIZED: u16 = 401;
    pub const PAYMENT_REQUIRED: u16 = 402;
    pub const NOT_FOUND: u16 = 404;
    pub const METHOD_NOT_ALLOWED: u16 = 405;
    pub const CONFLICT: u16 = 409;
    pub const PAYLOAD_TOO_LARGE: u16 = 413;
    pub const INTERNAL_SERVER_ERROR: u16 = 500;
    pub const SERVICE_UNAVAILABLE: u16 = 503;
}

/// A PaymentIntent as Stripe returns it, reduced to the fields ChargeOnce reads.
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

    /// The decline Stripe answers for `pm_card_chargeDeclined`, carrying the failed PaymentIntent.
    pub fn card_declined(intent: PaymentIntent) -> Self {
        Self {
            code: Some("card_declined"),
            decline_code: Some("generic_decline"),
            payment_intent: Some(Box::new(intent)),
            ..Self::new("card_error", "Your card was declined.")
        }
    }

    /// Stripe's answer to a payment method id it does not know.
    pub fn no_such_payment_method(id: &str) -> Self {
        Self {
            code: Some("resource_missing"),
            ..Self::invalid_param("payment_method", format!("No such PaymentMethod: '{id}'"))
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
