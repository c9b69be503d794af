//! The payment backend as the protocol sees it: what request each adapter
//! sends, and which answers are final (stored and replayed) and which free the
//! key for a retry.
//!
//! The HTTP call itself is the edge's; everything decided about it is here.

use crate::order::Order;
use crate::problem::{Problem, ProblemType};
use crate::record::StoredResponse;

/// The `Retry-After` sent when the backend gave none.
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 1;

/// The longest `Retry-After` passed on to clients: a backend asking for more
/// is treated as asking for this, so checkout never stalls for minutes.
pub const MAX_RETRY_AFTER_SECS: u32 = 60;

/// Which backend API the edge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    /// Stripe's `POST /v1/payment_intents`, form-encoded, confirmed at once.
    Stripe,
    /// The order's JSON body forwarded as-is to the configured URL.
    Passthrough,
}

/// A request for the backend, minus the headers every adapter sends
/// (`Idempotency-Key`, `Authorization`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRequest {
    /// The full URL.
    pub url: String,
    /// The body's media type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

impl BackendKind {
    /// The Worker secret holding this backend's credential, sent as
    /// `Authorization: Bearer`.
    pub fn secret_name(self) -> &'static str {
        match self {
            Self::Stripe => "STRIPE_SECRET_KEY",
            Self::Passthrough => "PASSTHROUGH_SECRET",
        }
    }

    /// Whether the edge refuses to forward without that secret: Stripe always
    /// wants one; a passthrough backend may not.
    pub fn requires_secret(self) -> bool {
        matches!(self, Self::Stripe)
    }

    /// Builds the backend request for `order`. `raw_body` is the client's body
    /// as received, which the passthrough adapter forwards unchanged.
    pub fn request(self, base_url: &str, order: &Order, raw_body: &str) -> BackendRequest {
        match self {
            Self::Stripe => BackendRequest {
                url: format!("{}/v1/payment_intents", base_url.trim_end_matches('/')),
                content_type: "application/x-www-form-urlencoded",
                body: stripe_form(order),
            },
            Self::Passthrough => BackendRequest {
                url: base_url.to_owned(),
                content_type: "application/json",
                body: raw_body.to_owned(),
            },
        }
    }
}

/// The form Stripe's API takes to create and confirm a PaymentIntent in one
/// call. `allow_redirects=never` is what lets `confirm=true` go without a
/// `return_url` for card payments.
fn stripe_form(order: &Order) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("amount", &order.amount.to_string())
        .append_pair("currency", &order.currency)
        .append_pair("payment_method", &order.payment_method)
        .append_pair("confirm", "true")
        .append_pair("automatic_payment_methods[enabled]", "true")
        .append_pair("automatic_payment_methods[allow_redirects]", "never")
        .append_pair("metadata[order_ref]", &order.order_ref);
    if let Some(customer) = &order.customer {
        form.append_pair("metadata[customer]", customer);
    }
    form.finish()
}

/// What an answer from the backend means for the key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum BackendOutcome {
    /// A final answer (success, decline, other client error): store it and
    /// replay it for every retry.
    Final(StoredResponse),
    /// No final answer: release the key and tell the client to retry.
    Retry(Problem),
}

/// Why the backend call produced no response at all.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportFailure {
    /// No response within the configured timeout.
    Timeout {
        /// The timeout that ran out, in milliseconds.
        after_ms: u64,
    },
    /// The connection failed or was closed before a response arrived.
    Unreachable(String),
}

/// Classifies a backend response. `body` is taken whole so that what is
/// stored is byte for byte what the backend sent.
pub fn classify_response(
    status: u16,
    content_type: Option<&str>,
    body: Vec<u8>,
    retry_after: Option<&str>,
) -> BackendOutcome {
    let retry_after = retry_after
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(DEFAULT_RETRY_AFTER_SECS)
        .clamp(1, MAX_RETRY_AFTER_SECS);
    let retry = |kind, detail: String| {
        BackendOutcome::Retry(Problem::new(kind, detail).retry_after(retry_after))
    };
    match status {
        200..=299 | 400 | 402 | 410..=418 | 421..=424 | 426..=428 | 431 | 451 => {
            match String::from_utf8(body) {
                Ok(body) => BackendOutcome::Final(StoredResponse {
                    status,
                    content_type: content_type.unwrap_or("application/json").to_owned(),
                    body,
                }),
                Err(_) => retry(
                    ProblemType::BackendError,
                    format!(
                        "the payment backend answered {status} with a body that is not UTF-8 text"
                    ),
                ),
            }
        }
        409 => retry(
            ProblemType::RequestInFlight,
            "the payment backend is still processing a request with this key".into(),
        ),
        408 | 425 | 429 | 503 => retry(
            ProblemType::BackendUnavailable,
            format!("the payment backend answered {status}; nothing was charged by this attempt"),
        ),
        504 => retry(
            ProblemType::BackendTimeout,
            "the payment backend's own gateway timed out".into(),
        ),
        // 401/403/404/405 mean the edge is pointed at the wrong URL or holds the
        // wrong secret: not the customer's fault, and not final for their key.
        401 | 403 => retry(
            ProblemType::BackendError,
            format!("the payment backend refused the edge's credentials ({status})"),
        ),
        _ => retry(
            ProblemType::BackendError,
            format!("the payment backend answered {status}"),
        ),
    }
}

/// The problem for a backend call that produced no response. The key is
/// released and the client's retry forwards again with the same key, so an
/// idempotent backend still charges once.
pub fn classify_failure(failure: &TransportFailure) -> Problem {
    match failure {
        TransportFailure::Timeout { after_ms } => Problem::new(
            ProblemType::BackendTimeout,
            format!(
                "the payment backend did not answer within {after_ms} ms; retry with the same Idempotency-Key"
            ),
        ),
        TransportFailure::Unreachable(why) => Problem::new(
            ProblemType::BackendError,
            format!(
                "the payment backend could not be reached ({why}); retry with the same Idempotency-Key"
            ),
        ),
    }
    .retry_after(DEFAULT_RETRY_AFTER_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        Order {
            amount: 1999,
            currency: "usd".into(),
            customer: Some("cus 1&x".into()),
            order_ref: "ord_1".into(),
            payment_method: "pm_card_visa".into(),
        }
    }

    fn status_of(outcome: BackendOutcome) -> u16 {
        match outcome {
            BackendOutcome::Final(r) => r.status,
            BackendOutcome::Retry(p) => p.status(),
        }
    }

    #[test]
    fn stripe_request_is_a_confirmed_payment_intent_without_redirects() {
        let req = BackendKind::Stripe.request("https://api.stripe.com/", &order(), "{}");
        assert_eq!(req.url, "https://api.stripe.com/v1/payment_intents");
        assert_eq!(req.content_type, "application/x-www-form-urlencoded");
        assert_eq!(
            req.body,
            "amount=1999&currency=usd&payment_method=pm_card_visa&confirm=true\
             &automatic_payment_methods%5Benabled%5D=true\
             &automatic_payment_methods%5Ballow_redirects%5D=never\
             &metadata%5Border_ref%5D=ord_1&metadata%5Bcustomer%5D=cus+1%26x"
        );
    }

    #[test]
    fn passthrough_forwards_the_body_unchanged() {
        let raw = r#"{"amount": 1999, "x": "as sent"}"#;
        let req = BackendKind::Passthrough.request("http://sim/v1/orders", &order(), raw);
        assert_eq!(req.url, "http://sim/v1/orders");
        assert_eq!(req.body, raw);
    }

    #[test]
    fn successes_and_declines_are_final_and_kept_byte_for_byte() {
        let body = b"{\"id\": \"pi_1\",\n \"status\":\"succeeded\"}".to_vec();
        match classify_response(
            200,
            Some("application/json; charset=utf-8"),
            body.clone(),
            None,
        ) {
            BackendOutcome::Final(r) => {
                assert_eq!(r.body.as_bytes(), body);
                assert_eq!(r.content_type, "application/json; charset=utf-8");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify_response(402, None, b"{}".to_vec(), None),
            BackendOutcome::Final(_)
        ));
        assert!(matches!(
            classify_response(400, None, b"{}".to_vec(), None),
            BackendOutcome::Final(_)
        ));
    }

    #[test]
    fn server_errors_and_busy_answers_free_the_key() {
        assert_eq!(status_of(classify_response(500, None, vec![], None)), 502);
        assert_eq!(status_of(classify_response(503, None, vec![], None)), 503);
        assert_eq!(status_of(classify_response(429, None, vec![], None)), 503);
        assert_eq!(status_of(classify_response(504, None, vec![], None)), 504);
        assert_eq!(status_of(classify_response(409, None, vec![], None)), 409);
    }

    #[test]
    fn credential_and_routing_errors_are_not_the_customers_final_answer() {
        for status in [401, 403, 404, 405, 301] {
            assert!(
                matches!(
                    classify_response(status, None, vec![], None),
                    BackendOutcome::Retry(_)
                ),
                "{status} must not be stored"
            );
        }
    }

    #[test]
    fn retry_after_is_passed_on_within_bounds() {
        let after = |v| match classify_response(503, None, vec![], Some(v)) {
            BackendOutcome::Retry(p) => p.retry_after_secs,
            other => panic!("{other:?}"),
        };
        assert_eq!(after("7"), Some(7));
        assert_eq!(after("0"), Some(1));
        assert_eq!(after("3600"), Some(MAX_RETRY_AFTER_SECS));
        assert_eq!(
            after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(DEFAULT_RETRY_AFTER_SECS)
        );
    }

    #[test]
    fn a_body_that_is_not_utf8_is_not_stored() {
        assert_eq!(
            status_of(classify_response(200, None, vec![0xff, 0xfe], None)),
            502
        );
    }

    #[test]
    fn transport_failures_map_to_504_and_502_with_retry_after() {
        let timeout = classify_failure(&TransportFailure::Timeout { after_ms: 10_000 });
        assert_eq!((timeout.status(), timeout.retry_after_secs), (504, Some(1)));
        let down = classify_failure(&TransportFailure::Unreachable("connection reset".into()));
        assert_eq!(down.status(), 502);
    }
}
