//! The payment backend as the protocol sees it: what request each adapter
//! sends, which answers are final (stored and replayed), which leave the key
//! free for a retry, and which leave it unknown; and how the edge asks the
//! backend whether an earlier forward charged (the reconciliation lookup).
//!
//! The HTTP call itself is the edge's; everything decided about it is here.

use crate::order::Order;
use crate::problem::{Problem, ProblemType};
use crate::record::{Found, StoredResponse};
use crate::time::UnixMs;

/// The `Retry-After` sent when the backend gave none.
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 1;

/// The largest backend body the edge stores for replay. A PaymentIntent is a
/// few KB; a backend answering with more is misbehaving, and one key must not
/// be able to fill the store.
pub const MAX_STORED_BODY_BYTES: usize = 64 * 1024;

/// The PaymentIntent metadata field that carries the backend key, so a
/// Stripe lookup can find a charge by it (Stripe cannot search by
/// idempotency key).
pub const STRIPE_KEY_METADATA: &str = "chargeonce_key";

/// The longest `Retry-After` passed on to clients: a backend asking for more
/// is treated as asking for this, so checkout never stalls for minutes.
pub const MAX_RETRY_AFTER_SECS: u32 = 60;

/// Which backend API the edge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Stripe's `POST /v1/payment_intents`, form-encoded, confirmed at once.
    Stripe,
    /// The order as canonical JSON (without its token) to the configured URL.
    Passthrough,
}

/// A request for the backend, minus the headers every adapter sends
/// (`Idempotency-Key` with the backend key, `Authorization`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

    /// Builds the backend request for `order`, sent with
    /// `Idempotency-Key: backend_key` ([`crate::ScopedKey::backend_key`]).
    /// The passthrough adapter sends the order's canonical JSON without the
    /// order token, which is the edge's business, not the backend's.
    pub fn request(self, base_url: &str, order: &Order, backend_key: &str) -> BackendRequest {
        match self {
            Self::Stripe => BackendRequest {
                url: format!("{}/v1/payment_intents", base_url.trim_end_matches('/')),
                content_type: "application/x-www-form-urlencoded",
                body: stripe_form(order, backend_key),
            },
            Self::Passthrough => BackendRequest {
                url: base_url.to_owned(),
                content_type: "application/json",
                body: order.charge().canonical_json(),
            },
        }
    }

    /// The URL of a `GET` that lists what the backend did under
    /// `backend_key`; [`classify_lookup`] reads the answer.
    ///
    /// Stripe: the Search API on the metadata the edge set
    /// (`metadata['chargeonce_key']:'<key>'`). Search is eventually
    /// consistent, so against real Stripe a miss is not proof; the forward
    /// that follows a miss carries the same `Idempotency-Key`, which Stripe
    /// deduplicates for 24 hours. Passthrough: `?idempotency_key=<key>` on
    /// the backend URL.
    pub fn lookup_url(self, base_url: &str, backend_key: &str) -> String {
        match self {
            Self::Stripe => {
                let query = format!("metadata['{STRIPE_KEY_METADATA}']:'{backend_key}'");
                let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
                format!(
                    "{}/v1/payment_intents/search?query={encoded}",
                    base_url.trim_end_matches('/')
                )
            }
            Self::Passthrough => {
                let encoded: String =
                    form_urlencoded::byte_serialize(backend_key.as_bytes()).collect();
                let join = if base_url.contains('?') { '&' } else { '?' };
                format!("{base_url}{join}idempotency_key={encoded}")
            }
        }
    }
}

/// The form Stripe's API takes to create and confirm a PaymentIntent in one
/// call. `allow_redirects=never` is what lets `confirm=true` go without a
/// `return_url` for card payments.
fn stripe_form(order: &Order, backend_key: &str) -> String {
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
    form.append_pair(&format!("metadata[{STRIPE_KEY_METADATA}]"), backend_key);
    form.finish()
}

/// What an answer from the backend means for the key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub enum BackendOutcome {
    /// A final answer (success, decline, other client error): store it and
    /// replay it for every retry.
    Final(StoredResponse),
    /// The backend said it did not process the request (503, 429, refused
    /// credentials): release the key; the retry forwards again.
    NotCharged(Problem),
    /// The request may have charged (a 5xx mid-request, a lost connection, a
    /// success whose body cannot be stored): abandon the claim so the retry
    /// reconciles first.
    Unknown(Problem),
    /// The backend may still be working on the request (the edge gave up
    /// waiting): keep the claim; when its lease runs out the key becomes
    /// unknown and the retry reconciles.
    StillRunning(Problem),
}

impl BackendOutcome {
    /// The problem the client gets when the outcome is not final.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::Final(_) => None,
            Self::NotCharged(p) | Self::Unknown(p) | Self::StillRunning(p) => Some(p),
        }
    }
}

/// Why the backend call produced no response at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    let problem = |kind, detail: String| Problem::new(kind, detail).retry_after(retry_after);
    match status {
        200..=299 | 400 | 402 | 410..=418 | 421..=424 | 426..=428 | 431 | 451 => {
            if body.len() > MAX_STORED_BODY_BYTES {
                return BackendOutcome::Unknown(problem(
                    ProblemType::BackendError,
                    format!(
                        "the payment backend answered {status} with a {} byte body, more than the {MAX_STORED_BODY_BYTES} bytes the edge stores; retry with the same Idempotency-Key",
                        body.len()
                    ),
                ));
            }
            match String::from_utf8(body) {
                Ok(body) => BackendOutcome::Final(StoredResponse {
                    status,
                    content_type: content_type.unwrap_or("application/json").to_owned(),
                    body,
                }),
                Err(_) => BackendOutcome::Unknown(problem(
                    ProblemType::BackendError,
                    format!(
                        "the payment backend answered {status} with a body that is not UTF-8 text; retry with the same Idempotency-Key"
                    ),
                )),
            }
        }
        // An idempotent backend is still running an earlier request with this
        // key (one whose worker died): wait for it like for our own timeout.
        409 => BackendOutcome::StillRunning(problem(
            ProblemType::RequestInFlight,
            "the payment backend is still processing a request with this key".into(),
        )),
        408 | 425 | 429 | 503 => BackendOutcome::NotCharged(problem(
            ProblemType::BackendUnavailable,
            format!("the payment backend answered {status}; nothing was charged by this attempt"),
        )),
        504 => BackendOutcome::StillRunning(problem(
            ProblemType::BackendTimeout,
            "the payment backend's own gateway timed out; retry with the same Idempotency-Key"
                .into(),
        )),
        // A server error mid-request may come after the charge.
        500..=599 => BackendOutcome::Unknown(problem(
            ProblemType::BackendError,
            format!("the payment backend answered {status}; retry with the same Idempotency-Key"),
        )),
        // 401/403 refuse the edge's credentials and 404/405 mean it is pointed
        // at the wrong URL: nothing ran, and it is not the customer's fault,
        // so not final for their key either.
        401 | 403 => BackendOutcome::NotCharged(problem(
            ProblemType::BackendError,
            format!("the payment backend refused the edge's credentials ({status})"),
        )),
        _ => BackendOutcome::NotCharged(problem(
            ProblemType::BackendError,
            format!("the payment backend answered {status}"),
        )),
    }
}

/// What a backend call that produced no response means for the key. A
/// timeout leaves the request possibly still running; a broken connection
/// may have come after the charge.
pub fn classify_failure(failure: &TransportFailure) -> BackendOutcome {
    match failure {
        TransportFailure::Timeout { after_ms } => BackendOutcome::StillRunning(
            Problem::new(
                ProblemType::BackendTimeout,
                format!(
                    "the payment backend did not answer within {after_ms} ms; retry with the same Idempotency-Key"
                ),
            )
            .retry_after(DEFAULT_RETRY_AFTER_SECS),
        ),
        TransportFailure::Unreachable(why) => BackendOutcome::Unknown(
            Problem::new(
                ProblemType::BackendError,
                format!(
                    "the payment backend could not be reached or dropped the connection ({why}); retry with the same Idempotency-Key"
                ),
            )
            .retry_after(DEFAULT_RETRY_AFTER_SECS),
        ),
    }
}

/// What the reconciliation lookup found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub enum LookupOutcome {
    /// The backend charged under the key: this is the key's final answer.
    Charged(StoredResponse),
    /// No charge under the key (declined or never-run attempts are not
    /// charges): forwarding again cannot charge twice.
    NotCharged,
    /// The backend could not say: forward nothing; the key stays unknown.
    Failed(Problem),
}

impl LookupOutcome {
    /// What the key's record needs to know of a lookup sent at `looked_at`,
    /// and the problem to tell the client when it failed.
    pub fn found(self, looked_at: UnixMs) -> (Found, Option<Problem>) {
        match self {
            Self::Charged(response) => (Found::Charge { response }, None),
            Self::NotCharged => (Found::Nothing { looked_at }, None),
            Self::Failed(problem) => (Found::Unknown, Some(problem)),
        }
    }
}

/// The lookup produced no answer at all.
pub fn classify_lookup_failure(failure: &TransportFailure) -> LookupOutcome {
    lookup_failed(match failure {
        TransportFailure::Timeout { after_ms } => format!("its lookup took over {after_ms} ms"),
        TransportFailure::Unreachable(why) => format!("its lookup failed: {why}"),
    })
}

fn lookup_failed(why: String) -> LookupOutcome {
    LookupOutcome::Failed(
        Problem::new(
            ProblemType::BackendUnavailable,
            format!(
                "an earlier attempt with this Idempotency-Key may have been charged, and the payment backend could not confirm it ({why}); nothing was forwarded; retry with the same key"
            ),
        )
        .retry_after(DEFAULT_RETRY_AFTER_SECS),
    )
}

/// PaymentIntent statuses under which money has moved or will move without
/// the customer doing anything more.
const CHARGED_STATUSES: &[&str] = &["succeeded", "processing", "requires_capture"];

/// Reads the lookup's answer: both adapters answer a JSON object whose `data`
/// lists PaymentIntents, newest first. The first charged one, as compact
/// JSON, becomes the key's final answer (status 200, as its POST would have
/// been), replayed byte for byte from then on. It is re-serialised rather than
/// cut out of the answer byte for byte because serde_json's `raw_value`
/// feature would cost the widget, which shares this crate, 1.4 KB of its
/// 60 KB budget; no client has seen the original bytes anyway.
pub fn classify_lookup(status: u16, body: &[u8]) -> LookupOutcome {
    let failed = lookup_failed;
    if status != 200 {
        return failed(format!("its lookup answered {status}"));
    }
    let list: serde_json::Value = match serde_json::from_slice(body) {
        Ok(list) => list,
        Err(e) => return failed(format!("its lookup answer is not JSON: {e}")),
    };
    let Some(data) = list.get("data").and_then(|d| d.as_array()) else {
        return failed("its lookup answer has no data list".into());
    };
    for intent in data {
        let Some(fields) = intent.as_object() else {
            return failed("its lookup listed something that is not an object".into());
        };
        let status = fields.get("status").and_then(|s| s.as_str());
        if status.is_some_and(|s| CHARGED_STATUSES.contains(&s)) {
            let body = intent.to_string();
            if body.len() > MAX_STORED_BODY_BYTES {
                return failed("the charge it found is too large to store".into());
            }
            return LookupOutcome::Charged(StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body,
            });
        }
    }
    LookupOutcome::NotCharged
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
            order_token: None,
            payment_method: "pm_card_visa".into(),
        }
    }

    fn status_of(outcome: BackendOutcome) -> u16 {
        match outcome {
            BackendOutcome::Final(r) => r.status,
            other => other.problem().unwrap().status(),
        }
    }

    const KEY: &str = "chargeonce_00ff";

    #[test]
    fn stripe_request_is_a_confirmed_payment_intent_without_redirects() {
        let req = BackendKind::Stripe.request("https://api.stripe.com/", &order(), KEY);
        assert_eq!(req.url, "https://api.stripe.com/v1/payment_intents");
        assert_eq!(req.content_type, "application/x-www-form-urlencoded");
        assert_eq!(
            req.body,
            "amount=1999&currency=usd&payment_method=pm_card_visa&confirm=true\
             &automatic_payment_methods%5Benabled%5D=true\
             &automatic_payment_methods%5Ballow_redirects%5D=never\
             &metadata%5Border_ref%5D=ord_1&metadata%5Bcustomer%5D=cus+1%26x\
             &metadata%5Bchargeonce_key%5D=chargeonce_00ff"
        );
    }

    #[test]
    fn passthrough_forwards_the_canonical_charge_without_the_token() {
        let order = Order {
            order_token: Some("v1.signed".into()),
            ..order()
        };
        let req = BackendKind::Passthrough.request("http://sim/v1/orders", &order, KEY);
        assert_eq!(req.url, "http://sim/v1/orders");
        assert_eq!(req.body, order.charge().canonical_json());
        assert!(!req.body.contains("order_token"));
    }

    #[test]
    fn lookups_ask_by_the_backend_key() {
        assert_eq!(
            BackendKind::Stripe.lookup_url("https://api.stripe.com/", KEY),
            "https://api.stripe.com/v1/payment_intents/search?query=\
             metadata%5B%27chargeonce_key%27%5D%3A%27chargeonce_00ff%27"
        );
        assert_eq!(
            BackendKind::Passthrough.lookup_url("http://sim/v1/orders", KEY),
            "http://sim/v1/orders?idempotency_key=chargeonce_00ff"
        );
        assert_eq!(
            BackendKind::Passthrough.lookup_url("http://sim/orders?v=2", KEY),
            "http://sim/orders?v=2&idempotency_key=chargeonce_00ff"
        );
    }

    #[test]
    fn a_lookup_finds_the_newest_charge() {
        let body = br#"{"object":"search_result","data":[
            {"id":"pi_3","status":"requires_payment_method"},
            {"id": "pi_2", "status": "succeeded"},
            {"id":"pi_1","status":"succeeded"}]}"#;
        assert_eq!(
            classify_lookup(200, body),
            LookupOutcome::Charged(StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body: r#"{"id":"pi_2","status":"succeeded"}"#.into(),
            })
        );
    }

    #[test]
    fn a_lookup_without_a_charge_allows_a_forward() {
        assert_eq!(
            classify_lookup(200, br#"{"data":[]}"#),
            LookupOutcome::NotCharged
        );
        assert_eq!(
            classify_lookup(200, br#"{"data":[{"status":"requires_payment_method"}]}"#),
            LookupOutcome::NotCharged
        );
    }

    #[test]
    fn a_lookup_that_cannot_answer_forwards_nothing() {
        for (status, body) in [
            (500, &br#"{"data":[]}"#[..]),
            (401, b"{}"),
            (200, b"not json"),
            (200, br#"{"object":"list"}"#),
            (200, br#"{"data":[42]}"#),
        ] {
            match classify_lookup(status, body) {
                LookupOutcome::Failed(p) => assert_eq!(p.status(), 503),
                other => panic!("{status} {body:?} gave {other:?}"),
            }
        }
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
    fn answers_say_whether_the_key_may_have_charged() {
        let kind = |status| match classify_response(status, None, vec![], None) {
            BackendOutcome::Final(_) => "final",
            BackendOutcome::NotCharged(_) => "not charged",
            BackendOutcome::Unknown(_) => "unknown",
            BackendOutcome::StillRunning(_) => "still running",
        };
        for status in [408, 425, 429, 503, 401, 403, 404, 405, 301] {
            assert_eq!(kind(status), "not charged", "{status}");
        }
        for status in [500, 502, 507] {
            assert_eq!(kind(status), "unknown", "{status}");
        }
        for status in [409, 504] {
            assert_eq!(kind(status), "still running", "{status}");
        }
        assert_eq!(status_of(classify_response(500, None, vec![], None)), 502);
        assert_eq!(status_of(classify_response(503, None, vec![], None)), 503);
        assert_eq!(status_of(classify_response(429, None, vec![], None)), 503);
        assert_eq!(status_of(classify_response(504, None, vec![], None)), 504);
        assert_eq!(status_of(classify_response(409, None, vec![], None)), 409);
    }

    #[test]
    fn retry_after_is_passed_on_within_bounds() {
        let after = |v| match classify_response(503, None, vec![], Some(v)) {
            BackendOutcome::NotCharged(p) => p.retry_after_secs,
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
    fn a_success_that_cannot_be_stored_is_an_unknown_outcome() {
        assert!(matches!(
            classify_response(200, None, vec![0xff, 0xfe], None),
            BackendOutcome::Unknown(_)
        ));
        let huge = vec![b' '; MAX_STORED_BODY_BYTES + 1];
        assert!(matches!(
            classify_response(200, None, huge, None),
            BackendOutcome::Unknown(_)
        ));
        let largest = vec![b' '; MAX_STORED_BODY_BYTES];
        assert!(matches!(
            classify_response(200, None, largest, None),
            BackendOutcome::Final(_)
        ));
    }

    #[test]
    fn a_timeout_may_still_be_running_and_a_dropped_connection_may_have_charged() {
        let timeout = classify_failure(&TransportFailure::Timeout { after_ms: 10_000 });
        assert!(matches!(timeout, BackendOutcome::StillRunning(_)));
        let p = timeout.problem().unwrap();
        assert_eq!((p.status(), p.retry_after_secs), (504, Some(1)));
        let down = classify_failure(&TransportFailure::Unreachable("connection reset".into()));
        assert!(matches!(down, BackendOutcome::Unknown(_)));
        assert_eq!(down.problem().unwrap().status(), 502);
    }
}
