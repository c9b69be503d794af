//! The payment backend as the protocol sees it: what request each adapter
//! sends, which answers are final (stored and replayed), which leave the key
//! free for a retry, and which leave it unknown; and how the edge asks the
//! backend whether an earlier forward charged (the reconciliation lookup).
//!
//! The HTTP call itself is the edge's; everything decided about it is here.

use crate::order::Order;
use crate::payment::{self, IntentStatus, PaymentOutcome};
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

    /// The URL of a `GET` that shows the intent `intent_id`, created under
    /// `backend_key`, as it is now, to refresh a stored answer that may have
    /// changed ([`unsettled_intent`]); [`classify_refresh`] reads the
    /// answer. Stripe: `GET /v1/payment_intents/{id}`, which reads the
    /// intent itself and does not lag like Search. Passthrough: the lookup,
    /// which lists the key's intents as they are now.
    pub fn refresh_url(self, base_url: &str, intent_id: &str, backend_key: &str) -> String {
        match self {
            Self::Stripe => {
                let id: String = form_urlencoded::byte_serialize(intent_id.as_bytes()).collect();
                format!("{}/v1/payment_intents/{id}", base_url.trim_end_matches('/'))
            }
            Self::Passthrough => self.lookup_url(base_url, backend_key),
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
    /// The backend replayed a server error it saved for an earlier request
    /// with the key (`Idempotent-Replayed: true`; Stripe saves 500s): that
    /// request may have charged, but nothing ran for this one. Abandon the
    /// claim as for [`Self::Unknown`], without counting this forward as one
    /// that may have charged, so retries cannot keep the key from settling.
    SavedUnknown(Problem),
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
            Self::NotCharged(p)
            | Self::Unknown(p)
            | Self::SavedUnknown(p)
            | Self::StillRunning(p) => Some(p),
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

/// A whole answer from the backend, as the shell read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct BackendResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// Whether it carried `Idempotent-Replayed: true`: an answer the backend
    /// saved for an earlier request with the key, sent again without running
    /// this one (<https://docs.stripe.com/idempotency>).
    pub replayed: bool,
    /// The body, whole, so that what is stored is byte for byte what the
    /// backend sent.
    pub body: Vec<u8>,
}

impl BackendResponse {
    /// An answer with this status and body, and no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            body: body.into(),
            ..Self::default()
        }
    }
}

/// Classifies a backend response to a forward.
pub fn classify_response(response: BackendResponse) -> BackendOutcome {
    let BackendResponse {
        status,
        content_type,
        retry_after,
        replayed,
        body,
    } = response;
    let retry_after = retry_after
        .as_deref()
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
                    content_type: content_type.unwrap_or_else(|| "application/json".to_owned()),
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
        500..=599 if replayed => BackendOutcome::SavedUnknown(problem(
            ProblemType::BackendError,
            format!(
                "the payment backend replayed the {status} it saved for an earlier request with this Idempotency-Key; its outcome is being confirmed; retry with the same key"
            ),
        )),
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
    /// The backend holds the key's answer (a charge, or an intent awaiting
    /// the customer's authentication): this is the key's final answer.
    Answered(StoredResponse),
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
            Self::Answered(response) => (Found::Answer { response }, None),
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

/// Reads the lookup's answer: both adapters answer a JSON object whose `data`
/// lists PaymentIntents, newest first. The first that is the key's answer
/// (placed, or awaiting the customer's authentication, read as a forward's
/// answer is read: [`payment::outcome_of`]), as compact JSON, becomes the
/// key's final answer (status 200, as its POST would have been), replayed
/// byte for byte from then on. A refused intent (a decline) charged nothing:
/// forwarding again cannot charge twice. It is re-serialised rather than
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
        if payment::outcome_of(status) != PaymentOutcome::Refused {
            let body = intent.to_string();
            if body.len() > MAX_STORED_BODY_BYTES {
                return failed("the charge it found is too large to store".into());
            }
            return LookupOutcome::Answered(StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body,
            });
        }
    }
    LookupOutcome::NotCharged
}

/// The id of the intent a stored answer shows, if that intent may still
/// change without a new confirmation ([`IntentStatus::may_change`]: it awaits
/// the customer's authentication, or is processing). Such an answer is
/// refreshed when replayed, so that the retry after authentication reports
/// the outcome under the same key. Cheap for every other answer: only a 2xx
/// that mentions such a status is parsed.
pub fn unsettled_intent(response: &StoredResponse) -> Option<String> {
    if !(200..300).contains(&response.status)
        || !IntentStatus::ALL
            .iter()
            .any(|s| s.may_change() && response.body.contains(s.as_str()))
    {
        return None;
    }
    let intent: serde_json::Value = serde_json::from_str(&response.body).ok()?;
    let status = IntentStatus::parse(intent.get("status")?.as_str()?)?;
    status
        .may_change()
        .then(|| intent.get("id")?.as_str().map(str::to_owned))
        .flatten()
}

/// What a key's final answer says the money did: a 2xx by its intent's
/// `status` ([`payment::outcome_of`]; placed when it names none);
/// any other final answer (a refusal, a decline, "not charged") charged
/// nothing.
pub fn response_outcome(response: &StoredResponse) -> PaymentOutcome {
    if !(200..300).contains(&response.status) {
        return PaymentOutcome::Refused;
    }
    let status = serde_json::from_str::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|body| body.get("status")?.as_str().map(str::to_owned));
    payment::outcome_of(status.as_deref())
}

/// Reads the refresh of the stored answer `stored` (whose intent is
/// `intent_id`): the intent as it is now, as the key's new answer (status
/// 200, compact JSON for the passthrough list, the backend's bytes for
/// Stripe), or `None` when the refresh says nothing new (a failure, another
/// intent, or the same status), and the stored answer stands.
pub fn classify_refresh(
    kind: BackendKind,
    stored: &StoredResponse,
    intent_id: &str,
    status: u16,
    body: &[u8],
) -> Option<StoredResponse> {
    if status != 200 || body.len() > MAX_STORED_BODY_BYTES {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_slice(body).ok()?;
    let intent = match kind {
        BackendKind::Stripe => answer,
        BackendKind::Passthrough => answer
            .get("data")?
            .as_array()?
            .iter()
            .find(|i| i.get("id").and_then(|id| id.as_str()) == Some(intent_id))?
            .clone(),
    };
    if intent.get("id").and_then(|id| id.as_str()) != Some(intent_id) {
        return None;
    }
    let status_of =
        |v: &serde_json::Value| v.get("status").and_then(|s| s.as_str()).map(str::to_owned);
    let before: Option<serde_json::Value> = serde_json::from_str(&stored.body).ok();
    if before.as_ref().and_then(status_of) == status_of(&intent) {
        return None;
    }
    let body = match kind {
        BackendKind::Stripe => String::from_utf8(body.to_vec()).ok()?,
        BackendKind::Passthrough => intent.to_string(),
    };
    Some(StoredResponse {
        status: 200,
        content_type: "application/json".into(),
        body,
    })
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

    fn classify(
        status: u16,
        content_type: Option<&str>,
        body: Vec<u8>,
        retry_after: Option<&str>,
    ) -> BackendOutcome {
        classify_response(BackendResponse {
            content_type: content_type.map(str::to_owned),
            retry_after: retry_after.map(str::to_owned),
            ..BackendResponse::new(status, body)
        })
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
            LookupOutcome::Answered(StoredResponse {
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
        match classify(
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
            classify(402, None, b"{}".to_vec(), None),
            BackendOutcome::Final(_)
        ));
        assert!(matches!(
            classify(400, None, b"{}".to_vec(), None),
            BackendOutcome::Final(_)
        ));
    }

    #[test]
    fn answers_say_whether_the_key_may_have_charged() {
        let kind = |status| match classify(status, None, vec![], None) {
            BackendOutcome::Final(_) => "final",
            BackendOutcome::NotCharged(_) => "not charged",
            BackendOutcome::Unknown(_) => "unknown",
            BackendOutcome::SavedUnknown(_) => "saved unknown",
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
        assert_eq!(status_of(classify(500, None, vec![], None)), 502);
        assert_eq!(status_of(classify(503, None, vec![], None)), 503);
        assert_eq!(status_of(classify(429, None, vec![], None)), 503);
        assert_eq!(status_of(classify(504, None, vec![], None)), 504);
        assert_eq!(status_of(classify(409, None, vec![], None)), 409);
    }

    #[test]
    fn a_replayed_server_error_is_a_saved_unknown_and_other_replays_are_as_they_were() {
        let replayed = |status| {
            classify_response(BackendResponse {
                replayed: true,
                ..BackendResponse::new(status, "{}")
            })
        };
        let saved = replayed(500);
        assert!(
            matches!(saved, BackendOutcome::SavedUnknown(_)),
            "{saved:?}"
        );
        assert_eq!(saved.problem().unwrap().status(), 502);
        assert!(matches!(replayed(200), BackendOutcome::Final(_)));
        assert!(matches!(replayed(402), BackendOutcome::Final(_)));
        assert!(matches!(
            classify(500, None, vec![], None),
            BackendOutcome::Unknown(_)
        ));
    }

    #[test]
    fn a_lookup_reads_intents_as_a_forward_does() {
        let list = |status: &str| format!(r#"{{"data":[{{"id":"pi_1","status":"{status}"}}]}}"#);
        for status in [
            "succeeded",
            "processing",
            "requires_capture",
            "requires_action",
        ] {
            assert!(
                matches!(
                    classify_lookup(200, list(status).as_bytes()),
                    LookupOutcome::Answered(_)
                ),
                "{status}"
            );
        }
        for status in [
            "requires_payment_method",
            "requires_confirmation",
            "canceled",
        ] {
            assert_eq!(
                classify_lookup(200, list(status).as_bytes()),
                LookupOutcome::NotCharged,
                "{status}"
            );
        }
    }

    fn stored(body: &str) -> StoredResponse {
        StoredResponse {
            status: 200,
            content_type: "application/json".into(),
            body: body.into(),
        }
    }

    #[test]
    fn only_an_intent_that_may_still_change_is_refreshed() {
        let action =
            r#"{"id":"pi_7","status":"requires_action","next_action":{"type":"use_stripe_sdk"}}"#;
        assert_eq!(unsettled_intent(&stored(action)), Some("pi_7".into()));
        assert_eq!(
            unsettled_intent(&stored(r#"{"id":"pi_7","status":"processing"}"#)),
            Some("pi_7".into())
        );
        for settled in [
            r#"{"id":"pi_7","status":"succeeded","description":"processing fee"}"#,
            r#"{"id":"pi_7","status":"requires_payment_method"}"#,
            r#"{"status":"requires_action"}"#,
            "requires_action, not json",
        ] {
            assert_eq!(unsettled_intent(&stored(settled)), None, "{settled}");
        }
        let problem = StoredResponse {
            status: 402,
            ..stored(action)
        };
        assert_eq!(unsettled_intent(&problem), None);
    }

    #[test]
    fn a_refresh_is_the_intent_as_it_is_now_when_its_status_changed() {
        let before = stored(r#"{"id":"pi_7","status":"requires_action"}"#);
        let now = br#"{"id": "pi_7", "status": "succeeded"}"#;
        assert_eq!(
            classify_refresh(BackendKind::Stripe, &before, "pi_7", 200, now),
            Some(stored(r#"{"id": "pi_7", "status": "succeeded"}"#))
        );
        let listed = br#"{"data":[{"id":"pi_8","status":"succeeded"},{"id":"pi_7","status":"requires_payment_method"}]}"#;
        assert_eq!(
            classify_refresh(BackendKind::Passthrough, &before, "pi_7", 200, listed),
            Some(stored(
                r#"{"id":"pi_7","status":"requires_payment_method"}"#
            ))
        );
        let unchanged = br#"{"id":"pi_7","status":"requires_action","x":1}"#;
        for (status, body) in [
            (200, &unchanged[..]),
            (404, &now[..]),
            (200, br#"{"id":"pi_8","status":"succeeded"}"#),
            (200, b"not json"),
        ] {
            assert_eq!(
                classify_refresh(BackendKind::Stripe, &before, "pi_7", status, body),
                None
            );
        }
        assert_eq!(
            BackendKind::Stripe.refresh_url("https://api.stripe.com/", "pi_7", KEY),
            "https://api.stripe.com/v1/payment_intents/pi_7"
        );
        assert_eq!(
            BackendKind::Passthrough.refresh_url("http://sim/v1/orders", "pi_7", KEY),
            "http://sim/v1/orders?idempotency_key=chargeonce_00ff"
        );
    }

    #[test]
    fn retry_after_is_passed_on_within_bounds() {
        let after = |v| match classify(503, None, vec![], Some(v)) {
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
            classify(200, None, vec![0xff, 0xfe], None),
            BackendOutcome::Unknown(_)
        ));
        let huge = vec![b' '; MAX_STORED_BODY_BYTES + 1];
        assert!(matches!(
            classify(200, None, huge, None),
            BackendOutcome::Unknown(_)
        ));
        let largest = vec![b' '; MAX_STORED_BODY_BYTES];
        assert!(matches!(
            classify(200, None, largest, None),
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
