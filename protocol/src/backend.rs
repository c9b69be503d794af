//! The payment backend as the protocol sees it: what request each adapter
//! sends, which answers are final (stored and replayed), which leave the key
//! free for a retry, and which leave it unknown; and how the edge asks the
//! backend whether an earlier forward charged (the reconciliation lookup).
//!
//! The HTTP call itself is the edge's; everything decided about it is here.

use crate::order::Order;
use crate::payment::{self, IntentStatus, PaymentOutcome};
use crate::problem::{Problem, ProblemType, PROBLEM_CONTENT_TYPE};
use crate::record::{Found, StoredResponse};
use crate::time::UnixMs;
use serde::{Deserialize, Serialize};

/// The `Retry-After` sent when the backend gave none.
pub const DEFAULT_RETRY_AFTER_SECS: u32 = 1;

/// The largest backend body the edge stores for replay. A PaymentIntent is a
/// few KB; a backend answering with more is misbehaving, and one key must not
/// be able to fill the store.
pub const MAX_STORED_BODY_BYTES: usize = 64 * 1024;

/// How many bytes of a backend answer the shell reads at most: one past
/// what is stored, so an oversized answer is recognised without reading
/// all of it (a backend could send an endless body).
pub const MAX_BACKEND_READ_BYTES: usize = MAX_STORED_BODY_BYTES + 1;

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
            // The shell reads at most one byte past the limit
            // ([`MAX_BACKEND_READ_BYTES`]), so the length is not known.
            if body.len() > MAX_STORED_BODY_BYTES {
                return BackendOutcome::Unknown(problem(
                    ProblemType::BackendError,
                    format!(
                        "the payment backend answered {status} with a body of more than the {MAX_STORED_BODY_BYTES} bytes the edge stores; its outcome is being confirmed; retry with the same Idempotency-Key"
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
        // The edge never follows a redirect: following one would re-send the
        // order (and the backend credential) to another host, and store that
        // host's answer as final. A backend that redirects is misconfigured;
        // the redirect itself ran nothing.
        300..=399 => BackendOutcome::NotCharged(problem(
            ProblemType::BackendError,
            format!(
                "the payment backend answered {status}, a redirect, which the edge does not follow; nothing was charged; the backend URL setting needs fixing"
            ),
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
        TransportFailure::Unreachable(_) => BackendOutcome::Unknown(
            // `why` may name the backend's host: the shell logs it, the
            // client never sees it.
            Problem::new(
                ProblemType::BackendError,
                "the payment backend could not be reached or dropped the connection; retry with the same Idempotency-Key",
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
        TransportFailure::Unreachable(_) => "its lookup could not reach the backend".to_owned(),
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

/// What a lookup's item must show to be the key's charge: a backend whose
/// list ignores its filter would otherwise hand the edge another
/// customer's charge as this key's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExpectedCharge {
    /// The key the edge sent ([`crate::ScopedKey::backend_key`]): the item's
    /// `metadata.chargeonce_key` (Stripe) or `idempotency_key`
    /// (passthrough).
    pub backend_key: String,
    /// The order's amount and reference: the item's `amount`, and its
    /// `metadata.order_ref` or `order_ref`. `None` in a key's record saved
    /// before the order was kept beside it: its lookups check the key alone.
    pub order: Option<(u64, String)>,
}

impl ExpectedCharge {
    /// What the lookup for `order` under `backend_key` must find.
    pub fn of(order: &Order, backend_key: &str) -> Self {
        Self {
            backend_key: backend_key.to_owned(),
            order: Some((order.amount, order.order_ref.clone())),
        }
    }

    /// What a lookup must find when only the key is known (a key's record
    /// saved before the order was kept beside it).
    pub fn key_only(backend_key: &str) -> Self {
        Self {
            backend_key: backend_key.to_owned(),
            order: None,
        }
    }

    /// Whether `intent` shows this key, amount and reference (the key
    /// alone for [`Self::key_only`]).
    fn matches(&self, intent: &serde_json::Map<String, serde_json::Value>) -> bool {
        fn text(value: Option<&serde_json::Value>) -> Option<&str> {
            value.and_then(|v| v.as_str())
        }
        let metadata = intent.get("metadata");
        let field = |name: &str| {
            text(metadata.and_then(|m| m.get(name))).or_else(|| text(intent.get(name)))
        };
        let key = text(metadata.and_then(|m| m.get(STRIPE_KEY_METADATA)))
            .or_else(|| text(intent.get("idempotency_key")));
        key == Some(self.backend_key.as_str())
            && self.order.as_ref().is_none_or(|(amount, order_ref)| {
                intent.get("amount").and_then(|a| a.as_u64()) == Some(*amount)
                    && field("order_ref") == Some(order_ref.as_str())
            })
    }
}

/// A lookup's answer, read: what it says of the key, and how many items it
/// listed that were not the key's charge (which the shell logs: the
/// backend's list ignored its filter).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupReading {
    /// What it says of the key.
    pub outcome: LookupOutcome,
    /// Items that showed another key, amount or reference, ignored.
    pub ignored: usize,
}

/// Reads the lookup's answer: both adapters answer a JSON object whose `data`
/// lists PaymentIntents, newest first. Only an item that shows the key, the
/// amount and the reference `expected` is read ([`ExpectedCharge`]); any
/// other is ignored, as not found. The first that is the key's answer
/// (placed, or awaiting the customer's authentication, read as a forward's
/// answer is read: [`payment::outcome_of`]), as compact JSON, becomes the
/// key's final answer (status 200, as its POST would have been), replayed
/// byte for byte from then on. A refused intent (a decline) charged nothing:
/// forwarding again cannot charge twice. It is re-serialised rather than
/// cut out of the answer byte for byte because serde_json's `raw_value`
/// feature would cost the widget, which shares this crate, 1.4 KB of its
/// 60 KB budget; no client has seen the original bytes anyway.
pub fn classify_lookup(status: u16, body: &[u8], expected: &ExpectedCharge) -> LookupReading {
    let mut ignored = 0;
    let outcome = read_lookup(status, body, expected, &mut ignored);
    LookupReading { outcome, ignored }
}

fn read_lookup(
    status: u16,
    body: &[u8],
    expected: &ExpectedCharge,
    ignored: &mut usize,
) -> LookupOutcome {
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
        if !expected.matches(fields) {
            *ignored += 1;
            continue;
        }
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

/// The fields of a refused intent a browser is shown.
const INTENT_FIELDS: [&str; 5] = ["id", "object", "status", "amount", "currency"];

/// The fields of a backend error a browser is shown, besides a generic
/// message.
const ERROR_FIELDS: [&str; 3] = ["type", "code", "decline_code"];

/// What a browser is shown of a key's final answer. A refusal (a decline, a
/// failed authentication, any other error the backend answered) is reduced
/// to the intent's `id`, `object`, `status`, `amount` and `currency`, and
/// the error's `type`, `code`, `decline_code` and a generic message: the
/// backend's full answer names the card's brand, country, last digits and
/// which checks failed, which is what card testing looks for. The full
/// answer stays in the key's record, where the merchant can read it (the
/// status lookup with the backend secret). A charge, or an intent awaiting
/// the customer's authentication (whose `client_secret` and `next_action`
/// the page needs), is shown as the backend sent it, and so are the edge's
/// own problems. The same answer always reduces to the same bytes, so a
/// replay is byte for byte what the browser was first shown.
pub fn client_view(response: &StoredResponse) -> StoredResponse {
    if response.content_type.starts_with(PROBLEM_CONTENT_TYPE)
        || response_outcome(response) != PaymentOutcome::Refused
    {
        return response.clone();
    }
    let view = match serde_json::from_str::<serde_json::Value>(&response.body) {
        Ok(serde_json::Value::Object(answer)) => match answer.get("error") {
            Some(serde_json::Value::Object(error)) => {
                let mut view = serde_json::Map::new();
                view.insert("error".into(), reduce_error(error));
                view
            }
            _ => reduce_intent(&answer),
        },
        // Not JSON: nothing of it can be vouched for.
        _ => {
            let mut error = serde_json::Map::new();
            error.insert("type".into(), "api_error".into());
            error.insert("message".into(), GENERIC_REFUSAL.into());
            let mut view = serde_json::Map::new();
            view.insert("error".into(), error.into());
            view
        }
    };
    StoredResponse {
        status: response.status,
        content_type: "application/json".into(),
        body: serde_json::Value::Object(view).to_string(),
    }
}

/// The message of a refusal that is not a card's.
const GENERIC_REFUSAL: &str = "The payment could not be completed.";

fn copy_fields(
    from: &serde_json::Map<String, serde_json::Value>,
    names: &[&str],
) -> serde_json::Map<String, serde_json::Value> {
    names
        .iter()
        .filter_map(|&name| {
            let value = from.get(name)?;
            (value.is_string() || value.is_number()).then(|| (name.to_owned(), value.clone()))
        })
        .collect()
}

fn reduce_intent(
    intent: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut view = copy_fields(intent, &INTENT_FIELDS);
    if let Some(serde_json::Value::Object(error)) = intent.get("last_payment_error") {
        view.insert("last_payment_error".into(), reduce_error(error));
    }
    view
}

fn reduce_error(error: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let mut view = copy_fields(error, &ERROR_FIELDS);
    let text = |name: &str| error.get(name).and_then(|v| v.as_str());
    let message = match (text("type"), text("code")) {
        (_, Some("payment_intent_authentication_failure")) => "The card's authentication failed.",
        (Some("card_error"), _) => "Your card was declined.",
        _ => GENERIC_REFUSAL,
    };
    view.insert("message".into(), message.into());
    if let Some(serde_json::Value::Object(intent)) = error.get("payment_intent") {
        view.insert("payment_intent".into(), reduce_intent(intent).into());
    }
    view.into()
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

    /// What a lookup for `order()` under `KEY` must find.
    fn expected() -> ExpectedCharge {
        ExpectedCharge::of(&order(), KEY)
    }

    /// The lookup's answer, read for `order()` under `KEY`.
    fn look(status: u16, body: &[u8]) -> LookupOutcome {
        classify_lookup(status, body, &expected()).outcome
    }

    /// An intent of `order()` under `KEY`, as Stripe lists it, with `extra`
    /// members.
    fn mine(extra: &str) -> String {
        format!(
            r#"{{{extra},"amount":1999,"metadata":{{"chargeonce_key":"{KEY}","order_ref":"ord_1"}}}}"#
        )
    }

    #[test]
    fn a_redirect_charged_nothing_and_is_not_followed() {
        for status in [301, 302, 303, 307, 308] {
            let outcome = classify(status, None, b"{}".to_vec(), None);
            assert!(
                matches!(outcome, BackendOutcome::NotCharged(_)),
                "{status}: {outcome:?}"
            );
            let problem = outcome.problem().unwrap();
            assert_eq!(problem.status(), 502);
            assert!(problem.detail.contains("redirect"), "{}", problem.detail);
        }
    }

    #[test]
    fn an_answer_longer_than_what_is_stored_is_unknown() {
        let outcome = classify(200, None, vec![b' '; MAX_BACKEND_READ_BYTES], None);
        assert!(matches!(outcome, BackendOutcome::Unknown(_)), "{outcome:?}");
        let at_limit = classify(200, None, vec![b' '; MAX_STORED_BODY_BYTES], None);
        assert!(matches!(at_limit, BackendOutcome::Final(_)));
    }

    /// Stripe's answer to a declined card, as the API reference shows it
    /// (<https://docs.stripe.com/api/errors>): the card's details ride
    /// along in `payment_method`, and which checks failed.
    const DECLINE: &str = r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds.","doc_url":"https://docs.stripe.com/error-codes/card-declined","payment_intent":{"id":"pi_1","object":"payment_intent","status":"requires_payment_method","amount":1999,"currency":"usd","client_secret":"pi_1_secret_x","metadata":{"customer":"cus_1"}},"payment_method":{"id":"pm_1","card":{"brand":"visa","last4":"0341","country":"US","checks":{"cvc_check":"fail"}}}}}"#;

    #[test]
    fn a_browser_is_shown_a_refusal_reduced() {
        let refusal = StoredResponse {
            status: 402,
            content_type: "application/json".into(),
            body: DECLINE.into(),
        };
        let shown = client_view(&refusal);
        assert_eq!(shown.status, 402);
        assert_eq!(
            shown.body,
            r#"{"error":{"code":"card_declined","decline_code":"insufficient_funds","message":"Your card was declined.","payment_intent":{"amount":1999,"currency":"usd","id":"pi_1","object":"payment_intent","status":"requires_payment_method"},"type":"card_error"}}"#
        );
        // The same answer, the same bytes: replays stay byte for byte.
        assert_eq!(client_view(&refusal), shown);
        // A refused intent (a lookup's, or a refresh after a failed
        // challenge) keeps its reduced last error.
        let failed = stored(
            r#"{"id":"pi_2","status":"requires_payment_method","amount":5,"currency":"eur","client_secret":"s","last_payment_error":{"type":"card_error","code":"payment_intent_authentication_failure","payment_method":{"card":{"last4":"3155"}}}}"#,
        );
        assert_eq!(
            client_view(&failed).body,
            r#"{"amount":5,"currency":"eur","id":"pi_2","last_payment_error":{"code":"payment_intent_authentication_failure","message":"The card's authentication failed.","type":"card_error"},"status":"requires_payment_method"}"#
        );
        // Not JSON: a generic error.
        let text = StoredResponse {
            status: 400,
            content_type: "text/plain".into(),
            body: "card 4000000000000002 declined at bank X".into(),
        };
        let shown = client_view(&text);
        assert_eq!(shown.content_type, "application/json");
        assert!(!shown.body.contains("4000"), "{}", shown.body);
    }

    #[test]
    fn a_charge_an_intent_awaiting_the_customer_and_the_edges_own_problems_are_shown_whole() {
        let charge = stored(r#"{"id":"pi_1","status":"succeeded","metadata":{"order_ref":"o"}}"#);
        assert_eq!(client_view(&charge), charge);
        let challenge = stored(
            r#"{"id":"pi_1","status":"requires_action","client_secret":"s","next_action":{"type":"redirect_to_url"}}"#,
        );
        assert_eq!(client_view(&challenge), challenge);
        let not_charged = StoredResponse::not_charged();
        assert_eq!(client_view(&not_charged), not_charged);
    }

    #[test]
    fn a_lookup_finds_the_newest_charge() {
        let body = format!(
            r#"{{"object":"search_result","data":[{},{},{}]}}"#,
            mine(r#""id":"pi_3","status":"requires_payment_method""#),
            mine(r#""id": "pi_2", "status": "succeeded""#),
            mine(r#""id":"pi_1","status":"succeeded""#)
        );
        assert_eq!(
            look(200, body.as_bytes()),
            LookupOutcome::Answered(StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body: r#"{"amount":1999,"id":"pi_2","metadata":{"chargeonce_key":"chargeonce_00ff","order_ref":"ord_1"},"status":"succeeded"}"#.into(),
            })
        );
    }

    #[test]
    fn a_lookup_without_a_charge_allows_a_forward() {
        assert_eq!(look(200, br#"{"data":[]}"#), LookupOutcome::NotCharged);
        let refused = format!(
            r#"{{"data":[{}]}}"#,
            mine(r#""status":"requires_payment_method""#)
        );
        assert_eq!(look(200, refused.as_bytes()), LookupOutcome::NotCharged);
    }

    #[test]
    fn a_lookup_counts_only_an_item_of_this_key_amount_and_order() {
        // A backend whose list ignores its filter: every item but the last
        // is another key's, amount's or order's charge.
        let other_key = r#"{"id":"pi_9","status":"succeeded","amount":1999,"metadata":{"chargeonce_key":"chargeonce_other","order_ref":"ord_1"}}"#;
        let other_amount = r#"{"id":"pi_8","status":"succeeded","amount":5,"metadata":{"chargeonce_key":"chargeonce_00ff","order_ref":"ord_1"}}"#;
        let other_order = r#"{"id":"pi_7","status":"succeeded","amount":1999,"metadata":{"chargeonce_key":"chargeonce_00ff","order_ref":"ord_2"}}"#;
        let no_key =
            r#"{"id":"pi_6","status":"succeeded","amount":1999,"metadata":{"order_ref":"ord_1"}}"#;
        let body = format!(r#"{{"data":[{other_key},{other_amount},{other_order},{no_key}]}}"#);
        let read = classify_lookup(200, body.as_bytes(), &expected());
        assert_eq!(read.outcome, LookupOutcome::NotCharged);
        assert_eq!(read.ignored, 4);
        // The passthrough backend's members, at the top level.
        let passthrough = format!(
            r#"{{"data":[{other_key},{{"id":"pi_1","status":"succeeded","amount":1999,"order_ref":"ord_1","idempotency_key":"{KEY}"}}]}}"#
        );
        let read = classify_lookup(200, passthrough.as_bytes(), &expected());
        assert!(matches!(read.outcome, LookupOutcome::Answered(ref r) if r.body.contains("pi_1")));
        assert_eq!(read.ignored, 1);
        // A record that kept only the key checks the key alone.
        let read = classify_lookup(200, body.as_bytes(), &ExpectedCharge::key_only(KEY));
        assert!(matches!(read.outcome, LookupOutcome::Answered(ref r) if r.body.contains("pi_8")));
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
            match look(status, body) {
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
        let list = |status: &str| {
            format!(
                r#"{{"data":[{}]}}"#,
                mine(&format!(r#""id":"pi_1","status":"{status}""#))
            )
        };
        for status in [
            "succeeded",
            "processing",
            "requires_capture",
            "requires_action",
        ] {
            assert!(
                matches!(
                    look(200, list(status).as_bytes()),
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
                look(200, list(status).as_bytes()),
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
