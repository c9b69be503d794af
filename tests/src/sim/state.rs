//! The simulator's state and rules, with no I/O: the ledger, the idempotency store, the record of
//! created PaymentIntents that the lookups search (and that [`Simulator::retrieve`] reads and
//! [`Simulator::authenticate`] completes), and the faults.
//!
//! A payment request is handled in two steps so that the HTTP shell can sleep in between without
//! holding a lock: [`Simulator::begin`] authenticates, rate-limits, validates and claims the
//! idempotency key, and either answers at once or hands back a [`Ticket`]; after waiting
//! [`Ticket::latency`], the shell passes the ticket and the current time to
//! [`Simulator::execute`], which applies the faults, charges and stores the result. A lookup has
//! two steps for the same reason: [`Simulator::begin_lookup`] authenticates, parses and decides
//! the `lookup_slow_next` delay, and after [`LookupTicket::delay`] [`Simulator::lookup`] answers
//! from the state at that moment. Retrieval and the 3-D Secure hook are one step each. This
//! module reads no clock and sleeps nowhere: the shell passes the time in.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::cards::{self, CardOutcome};
use super::ids;
use super::params::{self, Fingerprint, PaymentParams};
use super::wire::{
    json_bytes, raw_json, status, ApiError, CardMethod, List, NextAction, PaymentError,
    PaymentIntent, SearchResult,
};
use super::SimConfig;

/// One of the two payment endpoints; idempotency keys are scoped per endpoint, like Stripe's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `POST /v1/payment_intents`, Stripe's form-encoded API.
    PaymentIntents,
    /// `POST /v1/orders`, the JSON twin for the edge's passthrough backend.
    Orders,
}

impl Endpoint {
    /// The request path this endpoint is served at.
    pub fn path(self) -> &'static str {
        match self {
            Self::PaymentIntents => "/v1/payment_intents",
            Self::Orders => "/v1/orders",
        }
    }

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        [Self::PaymentIntents, Self::Orders]
            .into_iter()
            .find(|endpoint| endpoint.path() == path)
    }
}

/// One of the two lookups that tell whether a payment was made, for reconciling an unknown outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lookup {
    /// `GET /v1/payment_intents/search?query=metadata['KEY']:'VALUE'`, Stripe's Search API:
    /// PaymentIntents created through [`Endpoint::PaymentIntents`] by metadata.
    PaymentIntentSearch,
    /// `GET /v1/orders?idempotency_key=KEY`: PaymentIntents created through [`Endpoint::Orders`]
    /// by the `Idempotency-Key` they were created with.
    OrdersByKey,
}

impl Lookup {
    /// The request path this lookup is served at.
    pub fn path(self) -> &'static str {
        match self {
            Self::PaymentIntentSearch => "/v1/payment_intents/search",
            Self::OrdersByKey => "/v1/orders",
        }
    }

    /// The lookup served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        [Self::PaymentIntentSearch, Self::OrdersByKey]
            .into_iter()
            .find(|lookup| lookup.path() == path)
    }
}

/// The parts of an HTTP request to a lookup that the simulator looks at.
#[derive(Debug, Clone, Copy)]
pub struct LookupCall<'a> {
    /// Which lookup was called.
    pub lookup: Lookup,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The URL's query string, without the `?`, if it had one.
    pub query: Option<&'a str>,
}

/// The parts of an HTTP request to a payment endpoint that the simulator looks at.
#[derive(Debug, Clone, Copy)]
pub struct PaymentCall<'a> {
    /// Which endpoint was called.
    pub endpoint: Endpoint,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a str>,
    /// The raw `Idempotency-Key` header, if any.
    pub idempotency_key: Option<&'a str>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The whole request body.
    pub body: &'a [u8],
}

/// A complete answer: status and the exact body bytes (always JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body, byte for byte.
    pub body: Bytes,
    /// Whether this is a stored result answered again (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

impl Reply {
    fn fresh(status: u16, body: Bytes) -> Self {
        Self {
            status,
            body,
            replayed: false,
        }
    }

    pub(crate) fn error(status: u16, error: &ApiError) -> Self {
        Self::fresh(status, error.to_body())
    }
}

/// What [`Simulator::begin`] decided.
#[derive(Debug)]
#[must_use]
pub enum Begin {
    /// Answer now: an auth or validation error, an idempotent replay or an idempotency conflict.
    Respond(Reply),
    /// Wait [`Ticket::latency`], then pass the ticket to [`Simulator::execute`].
    Execute(Ticket),
}

/// A payment request that passed validation and holds its idempotency key, if it claimed one.
///
/// Deliberately not `Clone`: a ticket is executed once. A ticket that is dropped instead leaves its
/// key in progress until the next reset, which is why the shell runs tickets to completion even
/// when the client goes away.
#[derive(Debug)]
pub struct Ticket {
    endpoint: Endpoint,
    idempotency_key: Option<String>,
    claimed: bool,
    params: PaymentParams,
    latency: Duration,
    epoch: u64,
}

impl Ticket {
    /// How long to wait before executing: the `latency_ms` fault, plus `slow_ms` when the
    /// `slow_next` fault picked this request. The key stays in progress meanwhile.
    pub fn latency(&self) -> Duration {
        self.latency
    }
}

/// What [`Simulator::execute`] produced.
#[derive(Debug)]
#[must_use]
pub struct Executed {
    /// The answer, already stored under the idempotency key where one was claimed.
    pub reply: Reply,
    /// How the shell is to deliver `reply`: as it is, unless a fault picked this request to lose,
    /// redirect or never finish its answer.
    pub delivery: Delivery,
}

/// How the shell delivers an [`Executed`] answer: the ways other than [`Delivery::Send`] are
/// faults that only the shell can play, since they concern the connection, the request's `Host`
/// or a body that is never complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Send the reply as it is.
    Send,
    /// The `drop_after_commit_next` fault: close the connection without sending the reply.
    DropConnection,
    /// The `redirect_next` fault: send the reply, a 307, with a `Location` naming paysim's own
    /// `/__sim/elsewhere` at the `Host` the request came to.
    RedirectElsewhere,
    /// The `oversized_next` fault: send the reply's status with a JSON `Content-Type` and, instead
    /// of its body, one that never ends.
    EndlessBody,
}

/// A lookup that [`Simulator::begin_lookup`] took in: answer it with [`Simulator::lookup`] after
/// waiting [`LookupTicket::delay`].
///
/// Not `Clone`, like [`Ticket`]: each lookup is answered, and logged, once.
#[derive(Debug)]
#[must_use]
pub struct LookupTicket {
    lookup: Lookup,
    /// The raw query string, for the log.
    query: String,
    /// What to look for, or the refusal already decided (authentication or query).
    question: Result<Question, Reply>,
    delay: Duration,
    epoch: u64,
}

impl LookupTicket {
    /// How long to wait before answering: `lookup_slow_ms` when the `lookup_slow_next` fault
    /// picked this lookup, otherwise zero.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

/// What a well-formed, authenticated lookup asks for.
#[derive(Debug)]
enum Question {
    /// PaymentIntents created through [`Endpoint::PaymentIntents`] with this metadata.
    Metadata(params::MetadataEquals),
    /// PaymentIntents created through [`Endpoint::Orders`] with this `Idempotency-Key`.
    IdempotencyKey(String),
}

/// One lookup paysim answered, an element of [`LookupLog`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupEntry {
    /// The request path, e.g. `/v1/payment_intents/search`.
    pub path: String,
    /// The URL's query string as received, still percent-encoded, without the `?`; empty when
    /// there was none.
    pub query: String,
    /// The status it was answered with.
    pub status: u16,
    /// Unix milliseconds when it was answered, after any `lookup_slow_ms`.
    pub at_ms: u64,
}

/// Every lookup answered since the last reset, oldest first; `GET /__sim/lookups`.
///
/// It exists because an edge's responses cannot show whether it asked the backend before
/// answering: a black-box test reads it here. A lookup whose client hung up while it was delayed
/// is still answered, and listed, as a server would; one begun before a reset is not listed, so
/// that a test never sees its predecessor's lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupLog {
    /// The lookups, oldest first.
    pub lookups: Vec<LookupEntry>,
}

/// The injectable faults and the idempotency switch, as `GET /__sim/faults` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Store results under `Idempotency-Key` and replay them; `false` is the naive backend.
    pub honor_idempotency: bool,
    /// How many of the next executing requests answer 503 without charging or storing: a
    /// failure before the endpoint's execution begins, which Stripe does not save ("We save
    /// results only after the execution of an endpoint begins",
    /// <https://docs.stripe.com/idempotency>).
    pub fail_next: u32,
    /// How many of the next executing requests answer 500 `api_error` without charging, and
    /// save that answer under their key: a failure once execution began. Stripe "saves the
    /// resulting status code and body of the first request made for any given idempotency key,
    /// regardless of whether it succeeds or fails. Subsequent requests with the same key return
    /// the same result, including 500 errors" (<https://docs.stripe.com/idempotency>), so every
    /// retry with the key gets this 500 again, replayed, until the key is pruned.
    pub fail_saved_next: u32,
    /// How many of the next executed requests commit and then lose their response.
    pub drop_after_commit_next: u32,
    /// Delay before each executing request is handled, while its key is in progress.
    pub latency_ms: u64,
    /// How many of the next requests that reach execution wait an extra `slow_ms` first.
    pub slow_next: u32,
    /// The extra delay of a request picked by `slow_next`, on top of `latency_ms`.
    pub slow_ms: u64,
    /// How long a PaymentIntent stays invisible to both lookups after it was created (executed),
    /// in milliseconds; 0 shows it at once.
    ///
    /// Stripe's Search is eventually consistent, and an edge that trusts a "not found" read right
    /// after a lost response charges twice. <https://docs.stripe.com/search>, "Data freshness":
    /// "Don’t use search for read-after-write flows (for example, searching immediately after a
    /// charge is made) because the data won’t be immediately available to search. Under normal
    /// operating conditions, data is searchable in under 1 minute. Propagation of new or updated
    /// data could be delayed during an outage." Stripe's list APIs are not delayed, but the
    /// `/v1/orders` lookup lags too: it stands for any backend, whose lookup may read a replica.
    ///
    /// Visibility is decided when a lookup answers, as `now >= created + search_lag_ms` with the
    /// current value, so changing it hides or shows intents created earlier at once.
    pub search_lag_ms: u64,
    /// Every lookup that authenticates and asks a well-formed question answers 503 (`api_error`)
    /// until this is turned off; payments are unaffected. A search outage, during which an edge
    /// can learn nothing about an unknown outcome and must not take that for "not charged".
    pub lookups_down: bool,
    /// How many of the next well-formed, authenticated lookups wait an extra `lookup_slow_ms`
    /// before answering, to push a lookup past the edge's timeout.
    pub lookup_slow_next: u32,
    /// The extra delay of a lookup picked by `lookup_slow_next`.
    pub lookup_slow_ms: u64,
    /// Whether this account has Stripe's Search. When `false`, every authenticated
    /// `GET /v1/payment_intents/search` answers 404, an `invalid_request_error` saying search is
    /// not available for this account, as for an account without Search:
    /// <https://docs.stripe.com/api/payment_intents/search>, "Search functionality is not
    /// available to merchants in India." Payments, `GET /v1/payment_intents/{id}` and the
    /// `/v1/orders` lookup are unaffected.
    pub search_enabled: bool,
    /// How long an idempotency key and its saved result are kept, in milliseconds from the key's
    /// first use; a request that reuses a key older than this executes anew, as a new request.
    /// <https://docs.stripe.com/idempotency>: "You can remove keys from the system automatically
    /// after they’re at least 24 hours old. We generate a new request if a key is reused after
    /// the original is pruned." Hence the default, 86,400,000 (24 h). A key whose first request
    /// is still executing is never pruned.
    pub key_retention_ms: u64,
    /// How many of the next requests with an honoured `Idempotency-Key` answer 409
    /// `idempotency_key_in_use` as if another request held the key: nothing executed, nothing
    /// saved, so a retry with the key executes. <https://docs.stripe.com/error-codes>: "The
    /// idempotency key provided is currently being used in another request. This occurs if your
    /// integration is making duplicate requests simultaneously", and
    /// <https://docs.stripe.com/idempotency>: "If incoming parameters fail validation, or the
    /// request conflicts with another request that’s executing concurrently, we don’t save the
    /// idempotent result". Authentication, rate limiting and validation refuse first.
    pub in_use_next: u32,
    /// How many of the next authenticated `/v1` requests (payments, lookups, retrievals) answer
    /// 429 `rate_limit` before anything else is looked at: nothing validated, executed, saved or
    /// replayed. <https://docs.stripe.com/rate-limits>: "If you send many requests in quick
    /// succession, you might receive 429 error responses."
    pub rate_limit_next: u32,
    /// How many of the next executing requests (on both payment endpoints) answer
    /// `307 Temporary Redirect` with `Location: http://HOST/__sim/elsewhere`, `HOST` being the
    /// `Host` the request came to, without charging or saving anything under their key: a failure
    /// before execution began, like `fail_next`, which picks a request first, so a retry with the
    /// key executes. Stripe answers an API request itself: "Codes in the `2xx` range indicate
    /// success", and its "HTTP Status Code Summary" lists no 3xx
    /// (<https://docs.stripe.com/api/errors>). This plays a misbehaving backend, or a proxy, load
    /// balancer or moved deployment in front of it, that sends the payment to another host. A
    /// client that follows re-sends the payment there, to a host it never chose, and
    /// `/__sim/elsewhere`, that other host, answers a `succeeded` PaymentIntent without charging;
    /// [`Ledger::redirected_posts`] counts what it received, so a test can prove that an edge
    /// never followed.
    pub redirect_next: u32,
    /// How many of the next executing requests execute as usual (charged, recorded for the
    /// lookups and saved under their key, so a replay or a lookup finds them) and then answer
    /// with their status and `Content-Type: application/json` but, instead of their body, one
    /// that never ends: 16 KiB of spaces at a time, chunked, until the client goes away. Stripe
    /// answers a payment with the one PaymentIntent it made, whose example response in
    /// <https://docs.stripe.com/api/payment_intents/create> is that object alone; this plays a
    /// misbehaving backend (or a proxy in front of it) whose answer is far too large, on which a
    /// client that reads bodies whole waits until its own timeout, if it has one, with the
    /// payment made. A request picked by `drop_after_commit_next` is not picked by this.
    pub oversized_next: u32,
    /// While true, both lookups ignore their filter: every well-formed, authenticated Search
    /// lists every PaymentIntent created through `/v1/payment_intents`, and every
    /// `GET /v1/orders?idempotency_key=` every PaymentIntent created through `/v1/orders`,
    /// whatever their metadata or key, newest first and still hidden for `search_lag_ms`.
    /// Stripe's Search returns the objects that match its query
    /// (<https://docs.stripe.com/search>); this plays a misbehaving backend whose list drops its
    /// filter (a parameter it does not know, silently skipped; a query built wrong), which an edge
    /// that takes any element of the answer for its own payment reads as "charged" for a payment
    /// that never happened, or for someone else's.
    pub lookups_ignore_filter: bool,
}

/// Stripe's idempotency key retention, 24 hours, the default of [`Faults::key_retention_ms`].
pub const STRIPE_KEY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;

impl Default for Faults {
    fn default() -> Self {
        Self {
            honor_idempotency: true,
            fail_next: 0,
            fail_saved_next: 0,
            drop_after_commit_next: 0,
            latency_ms: 0,
            slow_next: 0,
            slow_ms: 0,
            search_lag_ms: 0,
            lookups_down: false,
            lookup_slow_next: 0,
            lookup_slow_ms: 0,
            search_enabled: true,
            key_retention_ms: STRIPE_KEY_RETENTION_MS,
            in_use_next: 0,
            rate_limit_next: 0,
            redirect_next: 0,
            oversized_next: 0,
            lookups_ignore_filter: false,
        }
    }
}

/// A partial update of [`Faults`], the body of `POST /__sim/faults`; absent fields stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsPatch {
    /// New value of [`Faults::honor_idempotency`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_idempotency: Option<bool>,
    /// New value of [`Faults::fail_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_next: Option<u32>,
    /// New value of [`Faults::fail_saved_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_saved_next: Option<u32>,
    /// New value of [`Faults::drop_after_commit_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_after_commit_next: Option<u32>,
    /// New value of [`Faults::latency_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// New value of [`Faults::slow_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_next: Option<u32>,
    /// New value of [`Faults::slow_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_ms: Option<u64>,
    /// New value of [`Faults::search_lag_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_lag_ms: Option<u64>,
    /// New value of [`Faults::lookups_down`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookups_down: Option<bool>,
    /// New value of [`Faults::lookup_slow_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_slow_next: Option<u32>,
    /// New value of [`Faults::lookup_slow_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_slow_ms: Option<u64>,
    /// New value of [`Faults::search_enabled`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_enabled: Option<bool>,
    /// New value of [`Faults::key_retention_ms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_retention_ms: Option<u64>,
    /// New value of [`Faults::in_use_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use_next: Option<u32>,
    /// New value of [`Faults::rate_limit_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_next: Option<u32>,
    /// New value of [`Faults::redirect_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_next: Option<u32>,
    /// New value of [`Faults::oversized_next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversized_next: Option<u32>,
    /// New value of [`Faults::lookups_ignore_filter`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookups_ignore_filter: Option<bool>,
}

/// One executed charge: a PaymentIntent that succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// The PaymentIntent id, `pi_...`.
    pub id: String,
    /// Amount in the currency's minor unit.
    pub amount: u64,
    /// Three lowercase letters.
    pub currency: String,
    /// The `Idempotency-Key` the request carried, honoured or not.
    pub idempotency_key: Option<String>,
    /// `metadata[order_ref]` (form) or `order_ref` (JSON).
    pub order_ref: Option<String>,
    /// `metadata[customer]` (form) or `customer` (JSON).
    pub customer: Option<String>,
    /// Unix seconds at execution.
    pub created: u64,
}

/// Every charge executed since the last reset, in execution order; `GET /__sim/ledger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The charges, oldest first.
    pub charges: Vec<Charge>,
    /// How many payment requests executed since the last reset, whatever their outcome: a card
    /// charged, declined or sent to 3-D Secure, or a saved 500. Declines are not charges, so
    /// only this shows how many cards a client got to try.
    pub payments_executed: u64,
    /// How many POSTs `/__sim/elsewhere` received since the last reset: payments a client sent
    /// again to where a [`Faults::redirect_next`] 307 pointed. None of them was charged; an edge
    /// that never follows a backend's redirect leaves this at 0.
    pub redirected_posts: u64,
}

/// A PaymentIntent the simulator created, kept for the lookups, retrieval and authentication.
#[derive(Debug)]
struct CreatedIntent {
    endpoint: Endpoint,
    /// The `Idempotency-Key` the creating request carried, honoured or not.
    idempotency_key: Option<String>,
    /// The intent as it is now.
    intent: PaymentIntent,
    /// Every state the intent was answered in, oldest first: the creating request's, then one
    /// per change (an authentication). Never empty.
    versions: Vec<IntentVersion>,
}

/// One state of a [`CreatedIntent`], as the lookups show it.
#[derive(Debug)]
struct IntentVersion {
    /// Unix milliseconds when the intent took this state, from which `search_lag_ms` counts.
    at_ms: u64,
    /// The intent's JSON exactly as answered then (for a decline, inside the error body), so
    /// that a lookup shows a client what it missed, byte for byte.
    json: Box<RawValue>,
}

impl CreatedIntent {
    fn new(endpoint: Endpoint, idempotency_key: Option<String>, intent: PaymentIntent) -> Self {
        Self {
            endpoint,
            idempotency_key,
            intent,
            versions: Vec::new(),
        }
    }

    /// Records the intent's current state as of `at_ms` and returns its JSON.
    fn snapshot(&mut self, at_ms: u64) -> Bytes {
        let json = raw_json(&self.intent);
        let bytes = Bytes::copy_from_slice(json.get().as_bytes());
        self.versions.push(IntentVersion { at_ms, json });
        bytes
    }

    /// The intent's JSON as it is now, what `GET /v1/payment_intents/{id}` answers.
    fn current(&self) -> &RawValue {
        // Every CreatedIntent is snapshotted once as it is recorded, before anyone can read it.
        &self
            .versions
            .last()
            .expect("a recorded intent has its first version")
            .json
    }

    /// The newest state the lookups show at `now_ms` under a `lag_ms` search lag: the intent is
    /// invisible until its creation is `lag_ms` old, and each later change shows once it is.
    fn visible(&self, now_ms: u64, lag_ms: u64) -> Option<&RawValue> {
        // Saturating: with no lag, a wall clock stepped back must not hide what just executed.
        self.versions
            .iter()
            .rev()
            .find(|version| now_ms.saturating_sub(version.at_ms) >= lag_ms)
            .map(|version| &*version.json)
    }
}

#[derive(Debug)]
struct StoredKey {
    fingerprint: Fingerprint,
    /// Unix milliseconds of the key's first use, from which `key_retention_ms` counts.
    claimed_at_ms: u64,
    /// `None` while the first request with this key is still executing.
    result: Option<(u16, Bytes)>,
}

/// The payment backend's whole state. Cheap to construct; one per served listener.
#[derive(Debug)]
pub struct Simulator {
    secret: String,
    faults: Faults,
    ledger: Vec<Charge>,
    /// Every PaymentIntent created since the last reset, oldest first, whatever its status.
    created: Vec<CreatedIntent>,
    /// The index in `created` of each intent id.
    by_id: HashMap<String, usize>,
    /// Every lookup answered since the last reset, oldest first.
    lookups: Vec<LookupEntry>,
    keys: HashMap<(Endpoint, String), StoredKey>,
    /// How many payment requests executed since the last reset.
    payments_executed: u64,
    /// How many POSTs `/__sim/elsewhere` received since the last reset.
    redirected_posts: u64,
    /// Bumped by [`Simulator::reset`] so that a request in flight across a reset cannot write
    /// into the fresh state.
    epoch: u64,
}

impl Simulator {
    /// A simulator with an empty ledger and default faults.
    pub fn new(config: SimConfig) -> Self {
        Self {
            secret: config.secret,
            faults: Faults::default(),
            ledger: Vec::new(),
            created: Vec::new(),
            by_id: HashMap::new(),
            lookups: Vec::new(),
            keys: HashMap::new(),
            payments_executed: 0,
            redirected_posts: 0,
            epoch: 0,
        }
    }

    /// The current faults.
    pub fn faults(&self) -> Faults {
        self.faults
    }

    /// Merges `patch` into the faults and returns the result.
    pub fn apply_faults(&mut self, patch: FaultsPatch) -> Faults {
        let faults = &mut self.faults;
        faults.honor_idempotency = patch.honor_idempotency.unwrap_or(faults.honor_idempotency);
        faults.fail_next = patch.fail_next.unwrap_or(faults.fail_next);
        faults.fail_saved_next = patch.fail_saved_next.unwrap_or(faults.fail_saved_next);
        faults.drop_after_commit_next = patch
            .drop_after_commit_next
            .unwrap_or(faults.drop_after_commit_next);
        faults.latency_ms = patch.latency_ms.unwrap_or(faults.latency_ms);
        faults.slow_next = patch.slow_next.unwrap_or(faults.slow_next);
        faults.slow_ms = patch.slow_ms.unwrap_or(faults.slow_ms);
        faults.search_lag_ms = patch.search_lag_ms.unwrap_or(faults.search_lag_ms);
        faults.lookups_down = patch.lookups_down.unwrap_or(faults.lookups_down);
        faults.lookup_slow_next = patch.lookup_slow_next.unwrap_or(faults.lookup_slow_next);
        faults.lookup_slow_ms = patch.lookup_slow_ms.unwrap_or(faults.lookup_slow_ms);
        faults.search_enabled = patch.search_enabled.unwrap_or(faults.search_enabled);
        faults.key_retention_ms = patch.key_retention_ms.unwrap_or(faults.key_retention_ms);
        faults.in_use_next = patch.in_use_next.unwrap_or(faults.in_use_next);
        faults.rate_limit_next = patch.rate_limit_next.unwrap_or(faults.rate_limit_next);
        faults.redirect_next = patch.redirect_next.unwrap_or(faults.redirect_next);
        faults.oversized_next = patch.oversized_next.unwrap_or(faults.oversized_next);
        faults.lookups_ignore_filter = patch
            .lookups_ignore_filter
            .unwrap_or(faults.lookups_ignore_filter);
        *faults
    }

    /// Every charge executed since the last reset.
    pub fn ledger(&self) -> Ledger {
        Ledger {
            charges: self.ledger.clone(),
            payments_executed: self.payments_executed,
            redirected_posts: self.redirected_posts,
        }
    }

    /// Every lookup answered since the last reset.
    pub fn lookup_log(&self) -> LookupLog {
        LookupLog {
            lookups: self.lookups.clone(),
        }
    }

    /// Empties the ledger (and its count of redirected POSTs), the record of created
    /// PaymentIntents, the lookup log and the idempotency store, and restores the default faults.
    ///
    /// Requests in flight at that moment answer 503 and charge nothing when they reach
    /// [`Simulator::execute`]; lookups in flight are answered from the fresh state and not logged.
    pub fn reset(&mut self) {
        self.faults = Faults::default();
        self.ledger.clear();
        self.created.clear();
        self.by_id.clear();
        self.lookups.clear();
        self.keys.clear();
        self.payments_executed = 0;
        self.redirected_posts = 0;
        self.epoch += 1;
    }

    /// First step of a payment request: authentication, the `rate_limit_next` fault, validation
    /// and the idempotency decision.
    ///
    /// `now_ms` is the arrival time in Unix milliseconds: a key is first used then, and
    /// `key_retention_ms` decides from it whether the key was pruned.
    pub fn begin(&mut self, call: PaymentCall<'_>, now_ms: u64) -> Begin {
        if let Err(refused) = self.admit(call.authorization) {
            return Begin::Respond(refused);
        }
        let parsed = match call.endpoint {
            Endpoint::PaymentIntents => params::parse_form(call.content_type, call.body),
            Endpoint::Orders => params::parse_order_json(call.content_type, call.body),
        };
        let (params, fingerprint) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => return Begin::Respond(Reply::error(status::BAD_REQUEST, &error)),
        };

        let mut claimed = false;
        if let (true, Some(key)) = (self.faults.honor_idempotency, call.idempotency_key) {
            if self.faults.in_use_next > 0 {
                self.faults.in_use_next -= 1;
                let error = ApiError::idempotency_key_in_use(key);
                return Begin::Respond(Reply::error(status::CONFLICT, &error));
            }
            let scope = (call.endpoint, key.to_owned());
            let retention = self.faults.key_retention_ms;
            // Pruned lazily, when the key is next used, which no client can tell from pruning on
            // time: the key answers as unknown either way.
            let pruned = self.keys.get(&scope).is_some_and(|stored| {
                stored.result.is_some() && now_ms.saturating_sub(stored.claimed_at_ms) >= retention
            });
            if pruned {
                self.keys.remove(&scope);
            }
            match self.keys.get(&scope) {
                Some(StoredKey { result: None, .. }) => {
                    let error = ApiError::idempotency_key_in_use(key);
                    return Begin::Respond(Reply::error(status::CONFLICT, &error));
                }
                Some(stored) if stored.fingerprint != fingerprint => {
                    return Begin::Respond(Reply::error(status::BAD_REQUEST, &mismatch(key)));
                }
                Some(StoredKey {
                    result: Some((status, body)),
                    ..
                }) => {
                    return Begin::Respond(Reply {
                        status: *status,
                        body: body.clone(),
                        replayed: true,
                    });
                }
                None => {
                    self.keys.insert(
                        scope,
                        StoredKey {
                            fingerprint,
                            claimed_at_ms: now_ms,
                            result: None,
                        },
                    );
                    claimed = true;
                }
            }
        }

        let mut latency = Duration::from_millis(self.faults.latency_ms);
        if self.faults.slow_next > 0 {
            self.faults.slow_next -= 1;
            latency = latency.saturating_add(Duration::from_millis(self.faults.slow_ms));
        }
        Begin::Execute(Ticket {
            endpoint: call.endpoint,
            idempotency_key: call.idempotency_key.map(str::to_owned),
            claimed,
            params,
            latency,
            epoch: self.epoch,
        })
    }

    /// Second step: the `fail_next`, `redirect_next` and `fail_saved_next` faults, the payment
    /// itself, storing, and `drop_after_commit_next` or `oversized_next`.
    ///
    /// `now_ms` is the execution time in Unix milliseconds: in seconds it is the intent's
    /// `created`, and `search_lag_ms` counts from it.
    pub fn execute(&mut self, ticket: Ticket, now_ms: u64) -> Executed {
        let scope = ticket
            .idempotency_key
            .clone()
            .map(|key| (ticket.endpoint, key));
        if ticket.epoch != self.epoch {
            // The store this ticket claimed its key in is gone; charging now would leak a charge
            // from before the reset into the fresh ledger.
            let error = ApiError::api(
                "The simulator was reset while this request was in flight; nothing was charged.",
            );
            return Executed {
                reply: Reply::error(status::SERVICE_UNAVAILABLE, &error),
                delivery: Delivery::Send,
            };
        }
        if self.faults.fail_next > 0 {
            self.faults.fail_next -= 1;
            if let (true, Some(scope)) = (ticket.claimed, &scope) {
                // Failed before execution began: nothing is saved, so a retry with the key
                // executes.
                self.keys.remove(scope);
            }
            let error = ApiError::api(
                "The payment backend failed this request (injected fail_next fault); nothing was \
                 charged. Retrying is safe.",
            );
            return Executed {
                reply: Reply::error(status::SERVICE_UNAVAILABLE, &error),
                delivery: Delivery::Send,
            };
        }
        if self.faults.redirect_next > 0 {
            self.faults.redirect_next -= 1;
            if let (true, Some(scope)) = (ticket.claimed, &scope) {
                // Sent elsewhere before execution began: nothing is saved here either.
                self.keys.remove(scope);
            }
            let error = ApiError::api(
                "This request is served elsewhere (injected redirect_next fault): see the Location \
                 header. Nothing was charged or saved here.",
            );
            return Executed {
                reply: Reply::error(status::TEMPORARY_REDIRECT, &error),
                delivery: Delivery::RedirectElsewhere,
            };
        }

        self.payments_executed = self.payments_executed.saturating_add(1);
        let (status, body) = if self.faults.fail_saved_next > 0 {
            self.faults.fail_saved_next -= 1;
            let error = ApiError::api(
                "The payment backend failed this request after it began (injected \
                 fail_saved_next fault); nothing was charged, and this answer is saved under the \
                 idempotency key.",
            );
            (status::INTERNAL_SERVER_ERROR, error.to_body())
        } else {
            self.pay(&ticket, now_ms)
        };
        if let (true, Some(scope)) = (ticket.claimed, &scope) {
            if let Some(stored) = self.keys.get_mut(scope) {
                stored.result = Some((status, body.clone()));
            }
        }
        let delivery = if self.faults.drop_after_commit_next > 0 {
            self.faults.drop_after_commit_next -= 1;
            Delivery::DropConnection
        } else if self.faults.oversized_next > 0 {
            self.faults.oversized_next -= 1;
            Delivery::EndlessBody
        } else {
            Delivery::Send
        };
        Executed {
            reply: Reply::fresh(status, body),
            delivery,
        }
    }

    /// First step of a lookup: authentication, the `rate_limit_next` fault, whether the account
    /// has Search (`search_enabled`), the query, and the `lookup_slow_next` fault.
    ///
    /// Nothing is searched yet: [`Simulator::lookup`] reads the intents when it answers, so a
    /// delayed lookup sees what was created while it waited, as a slow server would.
    pub fn begin_lookup(&mut self, call: LookupCall<'_>) -> LookupTicket {
        let question = self.admit(call.authorization).and_then(|()| {
            match call.lookup {
                Lookup::PaymentIntentSearch if !self.faults.search_enabled => {
                    return Err(Reply::error(status::NOT_FOUND, &search_unavailable()));
                }
                Lookup::PaymentIntentSearch => {
                    params::parse_search(call.query).map(Question::Metadata)
                }
                Lookup::OrdersByKey => {
                    params::parse_orders_lookup(call.query).map(Question::IdempotencyKey)
                }
            }
            .map_err(|error| Reply::error(status::BAD_REQUEST, &error))
        });
        let mut delay = Duration::ZERO;
        // Like slow_next, refused requests are not picked, so a test knows which lookup is slow.
        if question.is_ok() && self.faults.lookup_slow_next > 0 {
            self.faults.lookup_slow_next -= 1;
            delay = Duration::from_millis(self.faults.lookup_slow_ms);
        }
        LookupTicket {
            lookup: call.lookup,
            query: call.query.unwrap_or_default().to_owned(),
            question,
            delay,
            epoch: self.epoch,
        }
    }

    /// Second step of a lookup: answers it as of `now_ms` (Unix milliseconds) and logs it.
    ///
    /// Finds the PaymentIntents created at least `search_lag_ms` before `now_ms`, whether their
    /// response reached the client or not, and whatever `honor_idempotency` says; a request still
    /// waiting to execute is not there yet. Matches come newest first, as Stripe orders search
    /// results, each element byte for byte the intent's JSON in the response that created it.
    /// Under `lookups_down` every lookup that got this far answers 503 instead; under
    /// `lookups_ignore_filter` it lists every intent of its endpoint, whatever it asked for.
    #[must_use]
    pub fn lookup(&mut self, ticket: LookupTicket, now_ms: u64) -> Reply {
        let LookupTicket {
            lookup,
            query,
            question,
            epoch,
            ..
        } = ticket;
        let reply = match question {
            Err(refused) => refused,
            Ok(_) if self.faults.lookups_down => {
                Reply::error(status::SERVICE_UNAVAILABLE, &lookups_down())
            }
            Ok(question) => self.search(lookup, &question, now_ms),
        };
        if epoch == self.epoch {
            self.lookups.push(LookupEntry {
                path: lookup.path().to_owned(),
                query,
                status: reply.status,
                at_ms: now_ms,
            });
        }
        reply
    }

    fn search(&self, lookup: Lookup, question: &Question, now_ms: u64) -> Reply {
        let url = lookup.path();
        let body = match question {
            Question::Metadata(wanted) => {
                let found =
                    self.visible_newest_first(Endpoint::PaymentIntents, now_ms, |created| {
                        created.intent.metadata.get(&wanted.key) == Some(&wanted.value)
                    });
                json_bytes(&SearchResult::complete(url, found))
            }
            Question::IdempotencyKey(key) => {
                let found = self.visible_newest_first(Endpoint::Orders, now_ms, |created| {
                    created.idempotency_key.as_deref() == Some(key.as_str())
                });
                json_bytes(&List::complete(url, found))
            }
        };
        Reply::fresh(status::OK, body)
    }

    /// The intents created through `endpoint` that match (all of them under
    /// `lookups_ignore_filter`), newest first, each in the newest state `search_lag_ms` lets the
    /// lookups see at `now_ms`; those not visible yet are left out.
    fn visible_newest_first(
        &self,
        endpoint: Endpoint,
        now_ms: u64,
        matches: impl Fn(&CreatedIntent) -> bool,
    ) -> Vec<&RawValue> {
        let lag = self.faults.search_lag_ms;
        let ignore_filter = self.faults.lookups_ignore_filter;
        self.created
            .iter()
            .rev()
            .filter(|created| created.endpoint == endpoint && (ignore_filter || matches(created)))
            .filter_map(|created| created.visible(now_ms, lag))
            .collect()
    }

    /// `GET /v1/payment_intents/{id}`: the intent's current state, whichever endpoint created it.
    ///
    /// Strongly consistent, unlike the lookups: `search_lag_ms` does not apply, as Stripe's
    /// retrieval reads the object itself (<https://docs.stripe.com/api/payment_intents/retrieve>:
    /// "Retrieves the details of a PaymentIntent that has previously been created."). An unknown
    /// id answers 404 `resource_missing`. Authentication and `rate_limit_next` apply first.
    #[must_use]
    pub fn retrieve(&mut self, authorization: Option<&str>, id: &str) -> Reply {
        if let Err(refused) = self.admit(authorization) {
            return refused;
        }
        match self.by_id.get(id) {
            Some(&index) => {
                let json = self.created[index].current();
                Reply::fresh(status::OK, Bytes::copy_from_slice(json.get().as_bytes()))
            }
            None => Reply::error(status::NOT_FOUND, &ApiError::no_such_payment_intent(id)),
        }
    }

    /// `POST /__sim/elsewhere`: the other host a [`Faults::redirect_next`] 307 points at, which a
    /// client that follows the redirect sends the payment to again.
    ///
    /// It counts the POST in [`Ledger::redirected_posts`] and answers 200 with a `succeeded`
    /// PaymentIntent, `pi_elsewhere`, without charging or recording anything: a client that
    /// followed takes it for its payment while the ledger has nothing. It looks at neither the
    /// request's body nor its `Authorization`, as another host would not know this account.
    #[must_use]
    pub fn elsewhere(&mut self, now_ms: u64) -> Reply {
        self.redirected_posts = self.redirected_posts.saturating_add(1);
        let id = "pi_elsewhere";
        let intent = PaymentIntent {
            id: id.to_owned(),
            object: "payment_intent",
            amount: 0,
            currency: "usd".to_owned(),
            status: "succeeded",
            payment_method: None,
            metadata: BTreeMap::new(),
            created: now_ms / 1000,
            client_secret: ids::client_secret(id),
            last_payment_error: None,
            next_action: None,
            idempotency_key: None,
        };
        Reply::fresh(status::OK, json_bytes(&intent))
    }

    /// `POST /__sim/payment_intents/{id}/authenticate`: plays the bank's 3-D Secure challenge
    /// that Stripe.js would show the customer, with `body` `{"outcome": "succeed" | "fail"}`.
    ///
    /// Only an intent in `requires_action` has a challenge.
    /// <https://docs.stripe.com/payments/3d-secure/authentication-flow>: "Authenticated: Stripe
    /// attempts the charge" (the ledger gets the charge, the intent `succeeded`); "Failure: The
    /// PaymentIntent transitions to a status of `requires_payment_method`", with
    /// `last_payment_error` `payment_intent_authentication_failure`
    /// (<https://docs.stripe.com/error-codes>: "The provided payment method has failed
    /// authentication. Provide a new payment method to attempt to fulfill this PaymentIntent
    /// again."). Either way `next_action` is cleared, the lookups see the new state (after
    /// `search_lag_ms`, counted from now) and the answer is the intent. What is saved under the
    /// creating request's idempotency key does not change: a replay answers the saved
    /// `requires_action` response, as Stripe replays saved responses.
    #[must_use]
    pub fn authenticate(&mut self, id: &str, body: &[u8], now_ms: u64) -> Reply {
        let outcome = match serde_json::from_slice::<Authentication>(body) {
            Ok(authentication) => authentication.outcome,
            Err(e) => {
                let error = ApiError::invalid_request(format!(
                    "Invalid authentication: {e}. Send {{\"outcome\": \"succeed\"}} to pass the \
                     3-D Secure challenge or {{\"outcome\": \"fail\"}} to fail it."
                ));
                return Reply::error(status::BAD_REQUEST, &error);
            }
        };
        let Some(&index) = self.by_id.get(id) else {
            return Reply::error(status::NOT_FOUND, &ApiError::no_such_payment_intent(id));
        };
        let created = &mut self.created[index];
        let intent = &mut created.intent;
        if intent.status != "requires_action" {
            let error = ApiError::payment_intent_unexpected_state(format!(
                "This PaymentIntent's status is {}: only a PaymentIntent in requires_action has a \
                 3-D Secure challenge to authenticate.",
                intent.status
            ));
            return Reply::error(status::BAD_REQUEST, &error);
        }
        intent.next_action = None;
        match outcome {
            AuthenticationOutcome::Succeed => {
                intent.status = "succeeded";
                self.ledger
                    .push(charge_of(intent, created.idempotency_key.clone(), now_ms));
            }
            AuthenticationOutcome::Fail => {
                // Like a decline, the failed method is detached and a new one is asked for.
                intent.status = "requires_payment_method";
                intent.payment_method = None;
                intent.last_payment_error = Some(PaymentError {
                    kind: "invalid_request_error",
                    code: "payment_intent_authentication_failure",
                    decline_code: None,
                    message: "The provided payment method has failed authentication. Provide a \
                              new payment method to attempt to fulfill this PaymentIntent again."
                        .to_owned(),
                    payment_method: None,
                });
            }
        }
        Reply::fresh(status::OK, created.snapshot(now_ms))
    }

    /// Authentication, then the `rate_limit_next` fault: what every `/v1` request goes through
    /// before anything else. The refusal is the complete answer.
    fn admit(&mut self, authorization: Option<&str>) -> Result<(), Reply> {
        self.authenticate_key(authorization)
            .map_err(|error| Reply::error(status::UNAUTHORIZED, &error))?;
        if self.faults.rate_limit_next > 0 {
            self.faults.rate_limit_next -= 1;
            return Err(Reply::error(
                status::TOO_MANY_REQUESTS,
                &ApiError::rate_limited(),
            ));
        }
        Ok(())
    }

    fn authenticate_key(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let presented = authorization.and_then(|value| {
            let (scheme, key) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        });
        match presented {
            Some(key) if key == self.secret => Ok(()),
            Some(key) => Err(ApiError::invalid_request(format!(
                "Invalid API Key provided: {}",
                redact(key)
            ))),
            None => Err(ApiError::invalid_request(
                "Invalid API Key provided: no key found in an `Authorization: Bearer` header.",
            )),
        }
    }

    /// The payment itself: the outcome is decided by the test payment method, as on Stripe
    /// (see `cards`).
    fn pay(&mut self, ticket: &Ticket, now_ms: u64) -> (u16, Bytes) {
        let params = &ticket.params;
        let method = params.payment_method.as_str();
        let Some(outcome) = cards::outcome(method) else {
            return (
                status::BAD_REQUEST,
                ApiError::no_such_payment_method(method).to_body(),
            );
        };
        let id = ids::payment_intent_id();
        let mut intent = PaymentIntent {
            client_secret: ids::client_secret(&id),
            id,
            object: "payment_intent",
            amount: params.amount,
            currency: params.currency.clone(),
            status: "requires_confirmation",
            payment_method: Some(method.to_owned()),
            metadata: params.metadata.clone(),
            created: now_ms / 1000,
            last_payment_error: None,
            next_action: None,
            idempotency_key: match ticket.endpoint {
                Endpoint::Orders => ticket.idempotency_key.clone(),
                Endpoint::PaymentIntents => None,
            },
        };
        if !params.confirm {
            return (status::OK, self.record(ticket, intent, now_ms));
        }
        match outcome {
            CardOutcome::Succeeds => {
                intent.status = "succeeded";
                self.ledger
                    .push(charge_of(&intent, ticket.idempotency_key.clone(), now_ms));
                (status::OK, self.record(ticket, intent, now_ms))
            }
            CardOutcome::RequiresAuthentication => {
                // Nothing is charged until the challenge is passed (`authenticate`).
                intent.status = "requires_action";
                intent.next_action = Some(NextAction::three_d_secure(
                    &intent.id,
                    params.return_url.as_deref(),
                ));
                (status::OK, self.record(ticket, intent, now_ms))
            }
            CardOutcome::Declines(decline) => {
                // Stripe detaches the failed method, so the intent asks for a new one.
                intent.status = "requires_payment_method";
                intent.payment_method = None;
                intent.last_payment_error = Some(PaymentError {
                    kind: "card_error",
                    code: decline.code,
                    decline_code: decline.decline_code,
                    message: decline.message.to_owned(),
                    payment_method: Some(CardMethod::visa(method, decline.last4)),
                });
                self.record(ticket, intent.clone(), now_ms);
                // Serialized again inside the error, by the same serializer: the same bytes.
                let error = ApiError::payment_failed(intent);
                (status::PAYMENT_REQUIRED, error.to_body())
            }
        }
    }

    /// Keeps `intent` for the lookups, retrieval and authentication, and returns its JSON, the
    /// very bytes they will answer until it changes.
    fn record(&mut self, ticket: &Ticket, intent: PaymentIntent, now_ms: u64) -> Bytes {
        self.by_id.insert(intent.id.clone(), self.created.len());
        let mut created =
            CreatedIntent::new(ticket.endpoint, ticket.idempotency_key.clone(), intent);
        let bytes = created.snapshot(now_ms);
        self.created.push(created);
        bytes
    }
}

/// The ledger's record of charging `intent` at `now_ms`, for the request that carried
/// `idempotency_key`.
fn charge_of(intent: &PaymentIntent, idempotency_key: Option<String>, now_ms: u64) -> Charge {
    Charge {
        id: intent.id.clone(),
        amount: intent.amount,
        currency: intent.currency.clone(),
        idempotency_key,
        order_ref: intent.metadata.get("order_ref").cloned(),
        customer: intent.metadata.get("customer").cloned(),
        created: now_ms / 1000,
    }
}

/// The body of `POST /__sim/payment_intents/{id}/authenticate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Authentication {
    outcome: AuthenticationOutcome,
}

/// How the customer answers the bank's 3-D Secure challenge.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum AuthenticationOutcome {
    /// The customer authenticates: the payment goes on and is charged.
    Succeed,
    /// The customer fails (or cancels) the challenge: nothing is charged.
    Fail,
}

fn redact(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("****{tail}")
}

fn lookups_down() -> ApiError {
    ApiError::api(
        "The lookup is unavailable (injected lookups_down fault). This says nothing about whether \
         the payment was made; payments are still accepted.",
    )
}

fn search_unavailable() -> ApiError {
    ApiError::invalid_request(
        "Search is not available for this account (injected search_enabled: false fault; Stripe: \
         \"Search functionality is not available to merchants in India\"). Retrieve the \
         PaymentIntent by id (GET /v1/payment_intents/{id}) instead.",
    )
}

fn mismatch(key: &str) -> ApiError {
    ApiError::idempotency(format!(
        "Keys for idempotent requests can only be used with the same parameters they were first \
         used with. Try using a key other than '{key}' if you meant to execute a different \
         request."
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::Value;

    use super::*;

    const SECRET: &str = "sk_test_unit";
    const AUTH: &str = "Bearer sk_test_unit";
    const FORM: &str = "application/x-www-form-urlencoded";
    const VISA: &str = "amount=1999&currency=usd&payment_method=pm_card_visa&confirm=true\
        &automatic_payment_methods[enabled]=true&automatic_payment_methods[allow_redirects]=never\
        &metadata[order_ref]=ord_1&metadata[customer]=cus_1";
    const DECLINED: &str = "amount=1999&currency=usd&payment_method=pm_card_chargeDeclined\
        &confirm=true&return_url=https%3A%2F%2Fshop.example%2Fdone";
    /// When every step of a test happens unless it says otherwise, in Unix milliseconds.
    const NOW_MS: u64 = 1_700_000_000_123;
    /// [`NOW_MS`] in Unix seconds, as Stripe's `created`.
    const NOW: u64 = 1_700_000_000;

    fn sim() -> Simulator {
        Simulator::new(SimConfig {
            secret: SECRET.to_owned(),
        })
    }

    fn call<'a>(body: &'a str, key: Option<&'a str>) -> PaymentCall<'a> {
        PaymentCall {
            endpoint: Endpoint::PaymentIntents,
            authorization: Some(AUTH),
            idempotency_key: key,
            content_type: Some(FORM),
            body: body.as_bytes(),
        }
    }

    /// Runs both steps back to back, as the shell does with zero latency.
    fn run(sim: &mut Simulator, call: PaymentCall<'_>) -> (Reply, Delivery) {
        match sim.begin(call, NOW_MS) {
            Begin::Respond(reply) => (reply, Delivery::Send),
            Begin::Execute(ticket) => {
                let executed = sim.execute(ticket, NOW_MS);
                (executed.reply, executed.delivery)
            }
        }
    }

    fn json(reply: &Reply) -> Value {
        serde_json::from_slice(&reply.body).unwrap()
    }

    fn ticket(begin: Begin) -> Ticket {
        match begin {
            Begin::Execute(ticket) => ticket,
            Begin::Respond(reply) => panic!("expected a ticket, got {reply:?}"),
        }
    }

    #[test]
    fn confirmed_visa_succeeds_and_is_charged() {
        let mut sim = sim();
        let (reply, delivery) = run(&mut sim, call(VISA, Some("k1")));
        assert_eq!(reply.status, 200);
        assert_eq!(delivery, Delivery::Send);
        let intent = json(&reply);
        assert_eq!(intent["status"], "succeeded");
        assert_eq!(intent["amount"], 1999);
        assert_eq!(intent["metadata"]["order_ref"], "ord_1");
        assert_eq!(intent["created"], NOW);
        let charges = sim.ledger().charges;
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].id, intent["id"].as_str().unwrap());
        assert_eq!(charges[0].idempotency_key.as_deref(), Some("k1"));
        assert_eq!(charges[0].customer.as_deref(), Some("cus_1"));
    }

    #[test]
    fn unconfirmed_intent_is_not_charged() {
        let mut sim = sim();
        let body = "amount=100&currency=eur&payment_method=pm_card_mastercard";
        let (reply, _) = run(&mut sim, call(body, None));
        assert_eq!(json(&reply)["status"], "requires_confirmation");
        assert!(sim.ledger().charges.is_empty());
    }

    #[test]
    fn decline_is_stored_and_replayed_but_never_charged() {
        let mut sim = sim();
        let (first, _) = run(&mut sim, call(DECLINED, Some("k")));
        assert_eq!(first.status, 402);
        let error = &json(&first)["error"];
        assert_eq!(error["code"], "card_declined");
        assert_eq!(error["payment_intent"]["status"], "requires_payment_method");
        let (again, _) = run(&mut sim, call(DECLINED, Some("k")));
        assert_eq!(
            (again.status, &again.body, again.replayed),
            (402, &first.body, true)
        );
        assert!(sim.ledger().charges.is_empty());
    }

    #[test]
    fn unknown_payment_method_is_executed_and_stored() {
        let mut sim = sim();
        let body = "amount=100&currency=usd&payment_method=pm_nope";
        let (first, _) = run(&mut sim, call(body, Some("k")));
        assert_eq!(first.status, 400);
        assert_eq!(json(&first)["error"]["code"], "resource_missing");
        assert!(run(&mut sim, call(body, Some("k"))).0.replayed);
    }

    #[test]
    fn auth_and_validation_errors_do_not_bind_the_key() {
        let mut sim = sim();
        let wrong_key = PaymentCall {
            authorization: Some("Bearer sk_test_wrong"),
            ..call(VISA, Some("k"))
        };
        assert_eq!(run(&mut sim, wrong_key).0.status, 401);
        let no_key = PaymentCall {
            authorization: None,
            ..call(VISA, Some("k"))
        };
        assert_eq!(run(&mut sim, no_key).0.status, 401);
        let invalid = run(&mut sim, call("amount=1&currency=usd", Some("k"))).0;
        assert_eq!(invalid.status, 400);

        let (reply, _) = run(&mut sim, call(VISA, Some("k")));
        assert_eq!((reply.status, reply.replayed), (200, false));
        assert_eq!(sim.ledger().charges.len(), 1);
    }

    #[test]
    fn same_key_with_reordered_params_replays_and_other_params_conflict() {
        let mut sim = sim();
        let first = run(&mut sim, call(VISA, Some("k"))).0;
        let reordered: String = VISA.split('&').rev().collect::<Vec<_>>().join("&");
        let replay = run(&mut sim, call(&reordered, Some("k"))).0;
        assert_eq!(
            replay,
            Reply {
                replayed: true,
                ..first
            }
        );

        let other = VISA.replace("amount=1999", "amount=2000");
        let conflict = run(&mut sim, call(&other, Some("k"))).0;
        assert_eq!(conflict.status, 400);
        assert_eq!(json(&conflict)["error"]["type"], "idempotency_error");
        assert_eq!(sim.ledger().charges.len(), 1);
    }

    #[test]
    fn keys_are_scoped_per_endpoint() {
        let mut sim = sim();
        run(&mut sim, call(VISA, Some("k")));
        let order =
            br#"{"order_ref":"o","amount":5,"currency":"usd","payment_method":"pm_card_visa"}"#;
        let json_call = PaymentCall {
            endpoint: Endpoint::Orders,
            content_type: Some("application/json"),
            body: order,
            ..call("", Some("k"))
        };
        let reply = run(&mut sim, json_call).0;
        assert_eq!((reply.status, reply.replayed), (200, false));
        assert_eq!(sim.ledger().charges.len(), 2);
    }

    #[test]
    fn key_in_progress_conflicts_until_executed() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            latency_ms: Some(250),
            ..FaultsPatch::default()
        });
        let first = ticket(sim.begin(call(VISA, Some("k")), NOW_MS));
        assert_eq!(first.latency(), Duration::from_millis(250));
        let Begin::Respond(busy) = sim.begin(call(VISA, Some("k")), NOW_MS) else {
            panic!("second request with an in-progress key must not execute");
        };
        assert_eq!(busy.status, 409);
        // https://docs.stripe.com/error-codes: `idempotency_key_in_use`.
        let error = &json(&busy)["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "idempotency_key_in_use");
        assert_eq!(sim.execute(first, NOW_MS).reply.status, 200);
        assert!(run(&mut sim, call(VISA, Some("k"))).0.replayed);
        assert_eq!(sim.ledger().charges.len(), 1);
    }

    #[test]
    fn fail_next_answers_503_and_frees_the_key() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            fail_next: Some(1),
            ..FaultsPatch::default()
        });
        let failed = run(&mut sim, call(VISA, Some("k"))).0;
        assert_eq!(failed.status, 503);
        assert_eq!(json(&failed)["error"]["type"], "api_error");
        assert!(sim.ledger().charges.is_empty());
        assert_eq!(sim.faults().fail_next, 0);
        let retried = run(&mut sim, call(VISA, Some("k"))).0;
        assert_eq!((retried.status, retried.replayed), (200, false));
        assert_eq!(sim.ledger().charges.len(), 1);
    }

    #[test]
    fn fail_saved_next_answers_500_and_replays_it_under_the_key() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            fail_saved_next: Some(1),
            ..FaultsPatch::default()
        });
        let failed = run(&mut sim, call(VISA, Some("k"))).0;
        assert_eq!((failed.status, failed.replayed), (500, false));
        assert_eq!(json(&failed)["error"]["type"], "api_error");
        assert_eq!(sim.faults().fail_saved_next, 0);
        // The fault is spent, yet the key answers with its saved 500, byte for byte.
        let retried = run(&mut sim, call(VISA, Some("k"))).0;
        assert_eq!(
            (retried.status, &retried.body, retried.replayed),
            (500, &failed.body, true)
        );
        assert!(sim.ledger().charges.is_empty());
        // Another key is not affected.
        let other = run(&mut sim, call(VISA, Some("k2"))).0;
        assert_eq!((other.status, other.replayed), (200, false));
        assert_eq!(sim.ledger().charges.len(), 1);
    }

    #[test]
    fn drop_after_commit_charges_stores_and_asks_to_drop_once() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            drop_after_commit_next: Some(1),
            ..FaultsPatch::default()
        });
        let (lost, delivery) = run(&mut sim, call(VISA, Some("k")));
        assert_eq!(delivery, Delivery::DropConnection);
        assert_eq!(sim.ledger().charges.len(), 1);
        let (replay, delivery_again) = run(&mut sim, call(VISA, Some("k")));
        assert_eq!(delivery_again, Delivery::Send);
        assert_eq!(
            replay,
            Reply {
                replayed: true,
                ..lost
            }
        );
    }

    #[test]
    fn naive_backend_charges_every_request() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            honor_idempotency: Some(false),
            ..FaultsPatch::default()
        });
        let a = run(&mut sim, call(VISA, Some("k"))).0;
        let b = run(&mut sim, call(VISA, Some("k"))).0;
        assert!(!a.replayed && !b.replayed);
        assert_ne!(json(&a)["id"], json(&b)["id"]);
        assert_eq!(sim.ledger().charges.len(), 2);
    }

    #[test]
    fn request_in_flight_across_a_reset_charges_nothing() {
        let mut sim = sim();
        let in_flight = ticket(sim.begin(call(VISA, Some("k")), NOW_MS));
        sim.reset();
        assert_eq!(sim.execute(in_flight, NOW_MS).reply.status, 503);
        assert!(sim.ledger().charges.is_empty());
        assert!(!run(&mut sim, call(VISA, Some("k"))).0.replayed);
    }

    #[test]
    fn reset_restores_defaults_and_forgets_keys() {
        let mut sim = sim();
        run(&mut sim, call(VISA, Some("k")));
        sim.apply_faults(FaultsPatch {
            honor_idempotency: Some(false),
            fail_next: Some(3),
            fail_saved_next: Some(1),
            drop_after_commit_next: Some(2),
            latency_ms: Some(9),
            slow_next: Some(4),
            slow_ms: Some(300),
            search_lag_ms: Some(60_000),
            lookups_down: Some(true),
            lookup_slow_next: Some(5),
            lookup_slow_ms: Some(700),
            search_enabled: Some(false),
            key_retention_ms: Some(1),
            in_use_next: Some(6),
            rate_limit_next: Some(7),
            redirect_next: Some(8),
            oversized_next: Some(9),
            lookups_ignore_filter: Some(true),
        });
        let _ = sim.elsewhere(NOW_MS);
        sim.reset();
        assert_eq!(sim.faults(), Faults::default());
        assert_eq!(sim.ledger(), Ledger::default());
        assert!(!run(&mut sim, call(VISA, Some("k"))).0.replayed);
    }

    #[test]
    fn faults_patch_rejects_unknown_fields_and_wrong_types() {
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"fail_nxt":1}"#).is_err());
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"fail_next":"1"}"#).is_err());
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"fail_next":-1}"#).is_err());
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"slow_ms":-1}"#).is_err());
        let patch: FaultsPatch = serde_json::from_str(r#"{"latency_ms":5}"#).unwrap();
        let mut sim = sim();
        let faults = sim.apply_faults(patch);
        assert_eq!(
            faults,
            Faults {
                latency_ms: 5,
                ..Faults::default()
            }
        );
        let patch: FaultsPatch = serde_json::from_str(r#"{"slow_next":2,"slow_ms":300}"#).unwrap();
        assert_eq!(
            sim.apply_faults(patch),
            Faults {
                latency_ms: 5,
                slow_next: 2,
                slow_ms: 300,
                ..Faults::default()
            }
        );
    }

    #[test]
    fn slow_next_delays_only_that_many_executing_requests() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            latency_ms: Some(10),
            slow_next: Some(2),
            slow_ms: Some(300),
            ..FaultsPatch::default()
        });
        let slow = Duration::from_millis(310);
        let first = ticket(sim.begin(call(VISA, Some("k1")), NOW_MS));
        assert_eq!(first.latency(), slow);
        assert_eq!(sim.faults().slow_next, 1);
        let _ = sim.execute(first, NOW_MS);

        // Requests answered without executing are not picked.
        let unauthorized = PaymentCall {
            authorization: None,
            ..call(VISA, Some("k2"))
        };
        assert_eq!(run(&mut sim, unauthorized).0.status, 401);
        assert_eq!(run(&mut sim, call("amount=1", None)).0.status, 400);
        assert!(run(&mut sim, call(VISA, Some("k1"))).0.replayed);
        assert_eq!(sim.faults().slow_next, 1);

        assert_eq!(
            ticket(sim.begin(call(VISA, Some("k2")), NOW_MS)).latency(),
            slow
        );
        assert_eq!(sim.faults().slow_next, 0);
        let third = ticket(sim.begin(call(VISA, Some("k3")), NOW_MS));
        assert_eq!(third.latency(), Duration::from_millis(10));
        assert_eq!(sim.faults().slow_ms, 300);
    }

    /// Both steps of a lookup back to back, answered at `now_ms`, as the shell does without delay.
    fn answer(sim: &mut Simulator, call: LookupCall<'_>, now_ms: u64) -> Reply {
        let ticket = sim.begin_lookup(call);
        sim.lookup(ticket, now_ms)
    }

    fn lookup_call<'a>(lookup: Lookup, query: &'a str) -> LookupCall<'a> {
        LookupCall {
            lookup,
            authorization: Some(AUTH),
            query: Some(query),
        }
    }

    fn lookup(sim: &mut Simulator, lookup: Lookup, query: &str) -> Reply {
        answer(sim, lookup_call(lookup, query), NOW_MS)
    }

    fn search_query(key: &str, value: &str) -> String {
        let query = format!("metadata['{key}']:'{value}'");
        serde_urlencoded::to_string([("query", query)]).unwrap()
    }

    fn orders_query(key: &str) -> String {
        serde_urlencoded::to_string([("idempotency_key", key)]).unwrap()
    }

    fn search(sim: &mut Simulator, key: &str, value: &str) -> Reply {
        lookup(sim, Lookup::PaymentIntentSearch, &search_query(key, value))
    }

    fn orders_by_key(sim: &mut Simulator, key: &str) -> Reply {
        lookup(sim, Lookup::OrdersByKey, &orders_query(key))
    }

    /// The elements of a lookup's `data`, as raw JSON text.
    fn found(reply: &Reply) -> Vec<String> {
        #[derive(Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            data: Vec<&'a RawValue>,
        }
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let page: Page<'_> = serde_json::from_slice(&reply.body).unwrap();
        page.data.iter().map(|raw| raw.get().to_owned()).collect()
    }

    fn text(reply: &Reply) -> String {
        String::from_utf8(reply.body.to_vec()).unwrap()
    }

    fn order_call<'a>(body: &'a str, key: Option<&'a str>) -> PaymentCall<'a> {
        PaymentCall {
            endpoint: Endpoint::Orders,
            content_type: Some("application/json"),
            ..call(body, key)
        }
    }

    const ORDER: &str =
        r#"{"order_ref":"ord_1","amount":5,"currency":"usd","payment_method":"pm_card_visa"}"#;

    #[test]
    fn order_intents_show_their_key_and_every_executed_payment_is_counted() {
        let mut sim = sim();
        let (order, _) = run(&mut sim, order_call(ORDER, Some("k-order")));
        assert_eq!(json(&order)["idempotency_key"], "k-order");
        // Stripe's intents have no such member.
        let (intent, _) = run(&mut sim, call(VISA, Some("k-stripe")));
        assert!(json(&intent).get("idempotency_key").is_none());
        let (declined, _) = run(&mut sim, call(DECLINED, Some("k-declined")));
        assert_eq!(declined.status, 402);
        // A replay executes nothing.
        let _ = run(&mut sim, call(DECLINED, Some("k-declined")));
        let ledger = sim.ledger();
        assert_eq!((ledger.charges.len(), ledger.payments_executed), (2, 3));
        sim.reset();
        assert_eq!(sim.ledger().payments_executed, 0);
    }

    #[test]
    fn every_created_intent_is_recorded_with_its_request_and_answered_bytes() {
        let mut sim = sim();
        let succeeded = run(&mut sim, call(VISA, Some("k1"))).0;
        let unconfirmed = "amount=100&currency=eur&payment_method=pm_card_mastercard\
            &metadata[chargeonce_key]=ck";
        let unconfirmed = run(&mut sim, call(unconfirmed, None)).0;
        let declined = run(&mut sim, call(DECLINED, Some("k3"))).0;
        let order = run(&mut sim, order_call(ORDER, Some("k4"))).0;

        // None of these creates an intent.
        let unauthorized = PaymentCall {
            authorization: None,
            ..call(VISA, Some("k5"))
        };
        assert_eq!(run(&mut sim, unauthorized).0.status, 401);
        assert_eq!(run(&mut sim, call("amount=1", Some("k5"))).0.status, 400);
        let unknown = "amount=100&currency=usd&payment_method=pm_nope";
        assert_eq!(run(&mut sim, call(unknown, Some("k5"))).0.status, 400);
        assert!(run(&mut sim, call(VISA, Some("k1"))).0.replayed);
        let other = VISA.replace("amount=1999", "amount=1");
        assert_eq!(run(&mut sim, call(&other, Some("k1"))).0.status, 400);
        sim.apply_faults(FaultsPatch {
            fail_next: Some(1),
            ..FaultsPatch::default()
        });
        assert_eq!(run(&mut sim, call(VISA, Some("k6"))).0.status, 503);

        let created = &sim.created;
        let endpoints: Vec<_> = created.iter().map(|intent| intent.endpoint).collect();
        assert_eq!(
            endpoints,
            [
                Endpoint::PaymentIntents,
                Endpoint::PaymentIntents,
                Endpoint::PaymentIntents,
                Endpoint::Orders
            ]
        );
        let keys: Vec<_> = created
            .iter()
            .map(|intent| intent.idempotency_key.as_deref())
            .collect();
        assert_eq!(keys, [Some("k1"), None, Some("k3"), Some("k4")]);
        assert_eq!(created[0].intent.metadata["customer"], "cus_1");
        assert_eq!(created[1].intent.metadata["chargeonce_key"], "ck");
        assert!(created[2].intent.metadata.is_empty());
        assert_eq!(created[3].intent.metadata["order_ref"], "ord_1");

        for (intent, reply) in [(0, &succeeded), (1, &unconfirmed), (3, &order)] {
            assert_eq!(
                created[intent].current().get(),
                text(reply),
                "intent {intent}"
            );
        }
        // A decline answers an error; the intent inside it is what was stored, byte for byte.
        let stored = created[2].current().get();
        assert!(
            text(&declined).contains(&format!(r#""payment_intent":{stored},"payment_method":{{"#))
        );
        let stored: Value = serde_json::from_str(stored).unwrap();
        assert_eq!(stored, json(&declined)["error"]["payment_intent"]);
        assert_eq!(stored["status"], "requires_payment_method");
        // The card rides along, as in Stripe's error object, and in the intent's last error.
        let card = &json(&declined)["error"]["payment_method"]["card"];
        assert_eq!(
            (card["brand"].as_str(), card["last4"].as_str()),
            (Some("visa"), Some("0002"))
        );
        assert_eq!(
            stored["last_payment_error"]["payment_method"]["card"],
            *card
        );
    }

    #[test]
    fn search_finds_metadata_matches_newest_first_on_the_form_endpoint_only() {
        let mut sim = sim();
        let tagged = |tag: &str| format!("{VISA}&metadata[chargeonce_key]={tag}");
        let older = run(&mut sim, call(&tagged("ck_1"), Some("a"))).0;
        run(&mut sim, call(&tagged("ck_2"), Some("b")));
        let newer = run(&mut sim, call(&tagged("ck_1"), Some("c"))).0;
        run(&mut sim, order_call(ORDER, Some("a")));

        assert_eq!(
            found(&search(&mut sim, "chargeonce_key", "ck_1")),
            [text(&newer), text(&older)]
        );
        assert_eq!(found(&search(&mut sim, "chargeonce_key", "ck_2")).len(), 1);
        // The order shares order_ref and a key with the form intents but is not searched.
        assert_eq!(found(&search(&mut sim, "order_ref", "ord_1")).len(), 3);
        assert!(found(&search(&mut sim, "chargeonce_key", "ck_")).is_empty());
        assert!(found(&search(&mut sim, "chargeonce_key", "CK_1")).is_empty());
        assert!(found(&search(&mut sim, "a", "ck_1")).is_empty());

        let nothing = search(&mut sim, "chargeonce_key", "ck_3");
        assert_eq!(
            text(&nothing),
            r#"{"object":"search_result","url":"/v1/payment_intents/search","has_more":false,"next_page":null,"data":[]}"#
        );
        let one = search(&mut sim, "chargeonce_key", "ck_2");
        let found_one = &found(&one)[0];
        assert_eq!(
            text(&one),
            format!(
                r#"{{"object":"search_result","url":"/v1/payment_intents/search","has_more":false,"next_page":null,"data":[{found_one}]}}"#
            )
        );
    }

    #[test]
    fn search_finds_a_decline_as_requires_payment_method() {
        let mut sim = sim();
        let declined = format!("{DECLINED}&metadata[chargeonce_key]=ck_d");
        let reply = run(&mut sim, call(&declined, Some("k"))).0;
        assert_eq!(reply.status, 402);
        let found = found(&search(&mut sim, "chargeonce_key", "ck_d"));
        assert_eq!(found.len(), 1);
        let intent: Value = serde_json::from_str(&found[0]).unwrap();
        assert_eq!(intent["status"], "requires_payment_method");
        assert_eq!(intent["id"], json(&reply)["error"]["payment_intent"]["id"]);
        assert!(sim.ledger().charges.is_empty());
    }

    #[test]
    fn lookups_find_a_charge_whose_response_was_dropped_even_on_a_naive_backend() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            honor_idempotency: Some(false),
            drop_after_commit_next: Some(1),
            ..FaultsPatch::default()
        });
        let form = format!("{VISA}&metadata[chargeonce_key]=ck_lost");
        let (lost, delivery) = run(&mut sim, call(&form, Some("ck_lost")));
        assert_eq!(delivery, Delivery::DropConnection);
        assert_eq!(
            found(&search(&mut sim, "chargeonce_key", "ck_lost")),
            [text(&lost)]
        );
        let (lost_order, delivery) = {
            sim.apply_faults(FaultsPatch {
                drop_after_commit_next: Some(1),
                ..FaultsPatch::default()
            });
            run(&mut sim, order_call(ORDER, Some("ck_lost")))
        };
        assert_eq!(delivery, Delivery::DropConnection);
        assert_eq!(
            found(&orders_by_key(&mut sim, "ck_lost")),
            [text(&lost_order)]
        );

        // The naive backend charges the retry again; both charges are there to see.
        let again = run(&mut sim, call(&form, Some("ck_lost"))).0;
        assert_eq!(
            found(&search(&mut sim, "chargeonce_key", "ck_lost")),
            [text(&again), text(&lost)]
        );
        assert_eq!(sim.ledger().charges.len(), 3);
    }

    #[test]
    fn lookups_see_a_payment_once_it_executes_and_not_before() {
        let mut sim = sim();
        let pending = ticket(sim.begin(order_call(ORDER, Some("k")), NOW_MS));
        assert!(found(&orders_by_key(&mut sim, "k")).is_empty());
        let executed = sim.execute(pending, NOW_MS);
        assert_eq!(
            found(&orders_by_key(&mut sim, "k")),
            [text(&executed.reply)]
        );
    }

    #[test]
    fn orders_lookup_matches_the_idempotency_key_newest_first() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            honor_idempotency: Some(false),
            ..FaultsPatch::default()
        });
        let first = run(&mut sim, order_call(ORDER, Some("k"))).0;
        run(&mut sim, order_call(ORDER, Some("other")));
        run(&mut sim, order_call(ORDER, None));
        run(&mut sim, call(VISA, Some("k")));
        let second = run(&mut sim, order_call(ORDER, Some("k"))).0;

        let reply = orders_by_key(&mut sim, "k");
        assert_eq!(
            text(&reply),
            format!(
                r#"{{"object":"list","url":"/v1/orders","has_more":false,"data":[{},{}]}}"#,
                text(&second),
                text(&first)
            )
        );
        assert_eq!(found(&orders_by_key(&mut sim, "other")).len(), 1);
        assert!(found(&orders_by_key(&mut sim, "K")).is_empty());
        assert_eq!(
            text(&orders_by_key(&mut sim, "unknown")),
            r#"{"object":"list","url":"/v1/orders","has_more":false,"data":[]}"#
        );
    }

    #[test]
    fn lookups_need_the_api_key_and_a_supported_query() {
        let mut sim = sim();
        run(&mut sim, order_call(ORDER, Some("k")));
        for lookup in [Lookup::PaymentIntentSearch, Lookup::OrdersByKey] {
            for authorization in [None, Some("Bearer sk_test_wrong")] {
                let call = LookupCall {
                    lookup,
                    authorization,
                    query: Some("idempotency_key=k&query=metadata['order_ref']:'ord_1'"),
                };
                let reply = answer(&mut sim, call, NOW_MS);
                assert_eq!(reply.status, 401, "{lookup:?} {authorization:?}");
                assert_eq!(json(&reply)["error"]["type"], "invalid_request_error");
            }
        }
        let bad = lookup(
            &mut sim,
            Lookup::PaymentIntentSearch,
            "query=status:'succeeded'",
        );
        assert_eq!(bad.status, 400);
        assert_eq!(json(&bad)["error"]["param"], "query");
        let bad = lookup(&mut sim, Lookup::OrdersByKey, "key=k");
        assert_eq!(bad.status, 400);
        assert_eq!(json(&bad)["error"]["param"], "idempotency_key");
    }

    #[test]
    fn reset_forgets_created_intents_and_a_request_in_flight_adds_none() {
        let mut sim = sim();
        let form = format!("{VISA}&metadata[chargeonce_key]=ck");
        run(&mut sim, call(&form, Some("k1")));
        run(&mut sim, order_call(ORDER, Some("k1")));
        let in_flight = ticket(sim.begin(call(&form, Some("k2")), NOW_MS));
        let order_in_flight = ticket(sim.begin(order_call(ORDER, Some("k2")), NOW_MS));
        sim.reset();
        assert!(found(&search(&mut sim, "chargeonce_key", "ck")).is_empty());
        assert!(found(&orders_by_key(&mut sim, "k1")).is_empty());

        assert_eq!(sim.execute(in_flight, NOW_MS).reply.status, 503);
        assert_eq!(sim.execute(order_in_flight, NOW_MS).reply.status, 503);
        assert!(found(&search(&mut sim, "chargeonce_key", "ck")).is_empty());
        assert!(found(&orders_by_key(&mut sim, "k2")).is_empty());
    }

    fn search_at(sim: &mut Simulator, value: &str, now_ms: u64) -> Vec<String> {
        let query = search_query("chargeonce_key", value);
        found(&answer(
            sim,
            lookup_call(Lookup::PaymentIntentSearch, &query),
            now_ms,
        ))
    }

    fn orders_at(sim: &mut Simulator, key: &str, now_ms: u64) -> Vec<String> {
        let query = orders_query(key);
        found(&answer(
            sim,
            lookup_call(Lookup::OrdersByKey, &query),
            now_ms,
        ))
    }

    #[test]
    fn search_lag_hides_each_intent_from_both_lookups_until_it_has_passed() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            search_lag_ms: Some(1000),
            ..FaultsPatch::default()
        });
        let form = format!("{VISA}&metadata[chargeonce_key]=ck");
        let paid = text(&run(&mut sim, call(&form, Some("ck"))).0);
        let order = text(&run(&mut sim, order_call(ORDER, Some("ck"))).0);
        let later = ticket(sim.begin(call(&form, Some("ck_later")), NOW_MS));
        let later = text(&sim.execute(later, NOW_MS + 500).reply);
        assert_eq!(sim.created[0].versions[0].at_ms, NOW_MS);
        // The charge itself is not lagged: only what the lookups see is.
        assert_eq!(sim.ledger().charges.len(), 3);

        for now_ms in [NOW_MS, NOW_MS + 999] {
            assert!(search_at(&mut sim, "ck", now_ms).is_empty(), "{now_ms}");
            assert!(orders_at(&mut sim, "ck", now_ms).is_empty(), "{now_ms}");
        }
        assert_eq!(search_at(&mut sim, "ck", NOW_MS + 1000), [paid.as_str()]);
        assert_eq!(orders_at(&mut sim, "ck", NOW_MS + 1000), [order.as_str()]);
        assert_eq!(
            search_at(&mut sim, "ck", NOW_MS + 1500),
            [later.as_str(), paid.as_str()]
        );
        // A wall clock stepped back hides, it does not wrap around and show.
        assert!(search_at(&mut sim, "ck", NOW_MS - 5000).is_empty());

        // The lag in force when a lookup answers decides, whatever it was at creation.
        sim.apply_faults(FaultsPatch {
            search_lag_ms: Some(0),
            ..FaultsPatch::default()
        });
        assert_eq!(
            search_at(&mut sim, "ck", NOW_MS - 5000),
            [later.as_str(), paid.as_str()]
        );
        assert_eq!(orders_at(&mut sim, "ck", NOW_MS), [order.as_str()]);
        sim.apply_faults(FaultsPatch {
            search_lag_ms: Some(60_000),
            ..FaultsPatch::default()
        });
        assert!(search_at(&mut sim, "ck", NOW_MS + 59_999).is_empty());
        assert_eq!(search_at(&mut sim, "ck", NOW_MS + 60_000), [paid.as_str()]);
    }

    #[test]
    fn lookups_down_answers_503_until_turned_off_and_payments_still_charge() {
        let mut sim = sim();
        let order = text(&run(&mut sim, order_call(ORDER, Some("k"))).0);
        sim.apply_faults(FaultsPatch {
            lookups_down: Some(true),
            ..FaultsPatch::default()
        });
        for _ in 0..3 {
            for reply in [
                orders_by_key(&mut sim, "k"),
                search(&mut sim, "order_ref", "ord_1"),
            ] {
                assert_eq!(reply.status, 503);
                let error = &json(&reply)["error"];
                assert_eq!(error["type"], "api_error");
                assert!(error["message"].as_str().unwrap().contains("lookups_down"));
            }
        }
        // Not a counter: it stays down until turned off.
        assert!(sim.faults().lookups_down);
        // Refusals are decided before the search is reached.
        let unauthorized = LookupCall {
            authorization: None,
            ..lookup_call(Lookup::OrdersByKey, "idempotency_key=k")
        };
        assert_eq!(answer(&mut sim, unauthorized, NOW_MS).status, 401);
        assert_eq!(lookup(&mut sim, Lookup::OrdersByKey, "key=k").status, 400);

        let paid = run(&mut sim, call(VISA, Some("k2"))).0;
        assert_eq!((paid.status, sim.ledger().charges.len()), (200, 2));

        sim.apply_faults(FaultsPatch {
            lookups_down: Some(false),
            ..FaultsPatch::default()
        });
        assert_eq!(found(&orders_by_key(&mut sim, "k")), [order]);
        assert_eq!(found(&search(&mut sim, "customer", "cus_1")), [text(&paid)]);
    }

    #[test]
    fn lookup_slow_next_delays_only_that_many_lookups_which_answer_what_is_there_after() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            latency_ms: Some(10),
            lookup_slow_next: Some(2),
            lookup_slow_ms: Some(400),
            ..FaultsPatch::default()
        });
        let slow = Duration::from_millis(400);
        let query = search_query("chargeonce_key", "ck");
        let first = sim.begin_lookup(lookup_call(Lookup::PaymentIntentSearch, &query));
        assert_eq!(first.delay(), slow);
        assert_eq!(sim.faults().lookup_slow_next, 1);

        // Refused lookups and payments are not picked, and payments get no lookup delay.
        let unauthorized = LookupCall {
            authorization: None,
            ..lookup_call(Lookup::OrdersByKey, "idempotency_key=k")
        };
        assert!(sim.begin_lookup(unauthorized).delay().is_zero());
        let bad = lookup_call(Lookup::OrdersByKey, "key=k");
        assert!(sim.begin_lookup(bad).delay().is_zero());
        let form = format!("{VISA}&metadata[chargeonce_key]=ck");
        let payment = ticket(sim.begin(call(&form, Some("ck")), NOW_MS));
        assert_eq!(payment.latency(), Duration::from_millis(10));
        assert_eq!(sim.faults().lookup_slow_next, 1);

        // What executed while the slow lookup waited is in its answer.
        let paid = text(&sim.execute(payment, NOW_MS).reply);
        assert_eq!(found(&sim.lookup(first, NOW_MS + 400)), [paid]);

        let orders = orders_query("k");
        let second = sim.begin_lookup(lookup_call(Lookup::OrdersByKey, &orders));
        assert_eq!(second.delay(), slow);
        assert_eq!(sim.faults().lookup_slow_next, 0);
        let third = sim.begin_lookup(lookup_call(Lookup::OrdersByKey, &orders));
        assert!(third.delay().is_zero());
        assert_eq!(sim.faults().lookup_slow_ms, 400);
    }

    #[test]
    fn lookup_log_lists_answered_lookups_in_answer_order_until_reset() {
        let mut sim = sim();
        assert!(sim.lookup_log().lookups.is_empty());
        run(&mut sim, order_call(ORDER, Some("k")));
        let search_k = search_query("chargeonce_key", "k");
        let slow = {
            sim.apply_faults(FaultsPatch {
                lookup_slow_next: Some(1),
                lookup_slow_ms: Some(900),
                ..FaultsPatch::default()
            });
            sim.begin_lookup(lookup_call(Lookup::PaymentIntentSearch, &search_k))
        };
        fn answered(sim: &mut Simulator, call: LookupCall<'_>, now_ms: u64) -> u16 {
            answer(sim, call, now_ms).status
        }
        let orders = lookup_call(Lookup::OrdersByKey, "idempotency_key=k");
        assert_eq!(answered(&mut sim, orders, NOW_MS + 1), 200);
        let unauthorized = LookupCall {
            authorization: Some("Bearer sk_test_wrong"),
            ..orders
        };
        assert_eq!(answered(&mut sim, unauthorized, NOW_MS + 2), 401);
        let no_query = LookupCall {
            query: None,
            ..orders
        };
        assert_eq!(answered(&mut sim, no_query, NOW_MS + 3), 400);
        sim.apply_faults(FaultsPatch {
            lookups_down: Some(true),
            ..FaultsPatch::default()
        });
        assert_eq!(answered(&mut sim, orders, NOW_MS + 4), 503);
        assert_eq!(sim.lookup(slow, NOW_MS + 900).status, 503);

        let entry = |path: &str, query: &str, status, at_ms| LookupEntry {
            path: path.to_owned(),
            query: query.to_owned(),
            status,
            at_ms,
        };
        let orders_path = "/v1/orders";
        assert_eq!(
            sim.lookup_log().lookups,
            [
                entry(orders_path, "idempotency_key=k", 200, NOW_MS + 1),
                entry(orders_path, "idempotency_key=k", 401, NOW_MS + 2),
                entry(orders_path, "", 400, NOW_MS + 3),
                entry(orders_path, "idempotency_key=k", 503, NOW_MS + 4),
                entry("/v1/payment_intents/search", &search_k, 503, NOW_MS + 900),
            ]
        );
        assert_eq!(
            serde_json::to_value(sim.lookup_log()).unwrap()["lookups"][0],
            serde_json::json!({
                "path": "/v1/orders", "query": "idempotency_key=k", "status": 200,
                "at_ms": NOW_MS + 1
            })
        );

        // A lookup begun before a reset is answered, from the fresh state, but not logged.
        let in_flight = sim.begin_lookup(orders);
        sim.reset();
        assert!(sim.lookup_log().lookups.is_empty());
        assert!(found(&sim.lookup(in_flight, NOW_MS)).is_empty());
        assert!(sim.lookup_log().lookups.is_empty());
        assert_eq!(answered(&mut sim, orders, NOW_MS + 5), 200);
        assert_eq!(
            sim.lookup_log().lookups,
            [entry(orders_path, "idempotency_key=k", 200, NOW_MS + 5)]
        );
    }

    #[test]
    fn lookup_faults_parse_merge_and_show_every_field() {
        for bad in [
            r#"{"search_lag_ms":-1}"#,
            r#"{"lookups_down":1}"#,
            r#"{"lookup_slow_next":"1"}"#,
            r#"{"lookup_slow":1}"#,
        ] {
            assert!(serde_json::from_str::<FaultsPatch>(bad).is_err(), "{bad}");
        }
        let mut sim = sim();
        let patch = r#"{"search_lag_ms":1500,"lookups_down":true,"lookup_slow_next":2}"#;
        sim.apply_faults(serde_json::from_str(patch).unwrap());
        let faults = sim.apply_faults(serde_json::from_str(r#"{"lookup_slow_ms":300}"#).unwrap());
        assert_eq!(
            serde_json::to_value(faults).unwrap(),
            serde_json::json!({
                "honor_idempotency": true, "fail_next": 0, "fail_saved_next": 0,
                "drop_after_commit_next": 0, "latency_ms": 0, "slow_next": 0, "slow_ms": 0, "search_lag_ms": 1500,
                "lookups_down": true, "lookup_slow_next": 2, "lookup_slow_ms": 300,
                "search_enabled": true, "key_retention_ms": 86_400_000, "in_use_next": 0,
                "rate_limit_next": 0, "redirect_next": 0, "oversized_next": 0,
                "lookups_ignore_filter": false
            })
        );
        let patch = FaultsPatch {
            lookups_down: Some(false),
            ..FaultsPatch::default()
        };
        assert_eq!(
            serde_json::to_string(&patch).unwrap(),
            r#"{"lookups_down":false}"#
        );
    }

    /// `VISA` paid with another test payment method.
    fn form_with(method: &str) -> String {
        VISA.replace("pm_card_visa", method)
    }

    /// Plays the 3-D Secure challenge of the intent `id` at [`NOW_MS`] + `after_ms`.
    fn authenticate_at(sim: &mut Simulator, id: &str, outcome: &str, after_ms: u64) -> Reply {
        let body = format!(r#"{{"outcome":"{outcome}"}}"#);
        sim.authenticate(id, body.as_bytes(), NOW_MS + after_ms)
    }

    fn retrieve(sim: &mut Simulator, id: &str) -> Reply {
        sim.retrieve(Some(AUTH), id)
    }

    fn id_of(reply: &Reply) -> String {
        json(reply)["id"].as_str().unwrap().to_owned()
    }

    #[test]
    fn three_d_secure_cards_require_action_with_a_client_secret_and_charge_nothing() {
        for method in [
            "pm_card_authenticationRequired",
            "pm_card_threeDSecure2Required",
        ] {
            let mut sim = sim();
            let (reply, _) = run(&mut sim, call(&form_with(method), Some("k")));
            assert_eq!((reply.status, reply.replayed), (200, false), "{method}");
            let intent = json(&reply);
            let id = intent["id"].as_str().unwrap();
            assert_eq!(intent["status"], "requires_action", "{method}");
            assert_eq!(intent["payment_method"], method);
            assert_eq!(intent["last_payment_error"], Value::Null);
            let secret = intent["client_secret"].as_str().unwrap();
            assert!(secret.starts_with(&format!("{id}_secret_")), "{secret}");
            let next_action = &intent["next_action"];
            assert_eq!(next_action["type"], "use_stripe_sdk");
            assert_eq!(
                next_action["use_stripe_sdk"]["authenticate_url"],
                format!("/__sim/payment_intents/{id}/authenticate")
            );
            assert!(sim.ledger().charges.is_empty(), "{method}");
            let again = run(&mut sim, call(&form_with(method), Some("k"))).0;
            assert_eq!((again.body, again.replayed), (reply.body, true));
        }
    }

    #[test]
    fn a_return_url_makes_the_challenge_a_redirect_and_unconfirmed_intents_wait() {
        let mut sim = sim();
        let form = "amount=500&currency=eur&payment_method=pm_card_threeDSecure2Required\
            &confirm=true&return_url=https%3A%2F%2Fshop.example%2Fdone";
        let intent = json(&run(&mut sim, call(form, None)).0);
        let id = intent["id"].as_str().unwrap();
        assert_eq!(
            intent["next_action"],
            serde_json::json!({"type": "redirect_to_url", "redirect_to_url": {
                "url": format!("/__sim/payment_intents/{id}/authenticate"),
                "return_url": "https://shop.example/done"
            }})
        );
        for method in [
            "pm_card_threeDSecure2Required",
            "pm_card_visa_chargeDeclinedInsufficientFunds",
        ] {
            let unconfirmed = format!("amount=500&currency=eur&payment_method={method}");
            let intent = json(&run(&mut sim, call(&unconfirmed, None)).0);
            assert_eq!(intent["status"], "requires_confirmation", "{method}");
            assert_eq!(intent["next_action"], Value::Null);
        }
        assert!(sim.ledger().charges.is_empty());
    }

    #[test]
    fn declines_answer_the_codes_of_stripes_test_cards_and_record_last_payment_error() {
        for (method, code, decline_code) in [
            (
                "pm_card_visa_chargeDeclinedInsufficientFunds",
                "card_declined",
                Some("insufficient_funds"),
            ),
            ("pm_card_chargeDeclinedExpiredCard", "expired_card", None),
            (
                "pm_card_chargeDeclinedProcessingError",
                "processing_error",
                None,
            ),
            (
                "pm_card_chargeDeclined",
                "card_declined",
                Some("generic_decline"),
            ),
        ] {
            let mut sim = sim();
            let form = format!("{}&metadata[chargeonce_key]=ck", form_with(method));
            let (first, _) = run(&mut sim, call(&form, Some("k")));
            assert_eq!(first.status, 402, "{method}");
            let error = &json(&first)["error"];
            assert_eq!(error["type"], "card_error", "{method}");
            assert_eq!(error["code"], code, "{method}");
            assert_eq!(error["decline_code"].as_str(), decline_code, "{method}");
            let intent = &error["payment_intent"];
            assert_eq!(intent["status"], "requires_payment_method", "{method}");
            assert_eq!(intent["payment_method"], Value::Null);
            let last = &intent["last_payment_error"];
            assert_eq!(
                (&last["type"], &last["code"], &last["message"]),
                (&error["type"], &error["code"], &error["message"]),
                "{method}"
            );
            assert_eq!(last["decline_code"].as_str(), decline_code, "{method}");

            let again = run(&mut sim, call(&form, Some("k"))).0;
            assert_eq!((again.status, again.replayed), (402, true));
            assert_eq!(again.body, first.body);
            let found = found(&search(&mut sim, "chargeonce_key", "ck"));
            assert_eq!(serde_json::from_str::<Value>(&found[0]).unwrap(), *intent);
            assert!(sim.ledger().charges.is_empty(), "{method}");
        }
    }

    #[test]
    fn passing_the_challenge_charges_once_and_every_reader_but_the_replay_sees_succeeded() {
        let mut sim = sim();
        let form = format!(
            "{}&metadata[chargeonce_key]=ck",
            form_with("pm_card_threeDSecure2Required")
        );
        let created = run(&mut sim, call(&form, Some("k"))).0;
        let id = id_of(&created);

        let passed = authenticate_at(&mut sim, &id, "succeed", 5_000);
        assert_eq!(passed.status, 200);
        let intent = json(&passed);
        assert_eq!(intent["status"], "succeeded");
        assert_eq!(intent["next_action"], Value::Null);
        assert_eq!(intent["client_secret"], json(&created)["client_secret"]);
        assert_eq!(intent["created"], NOW);

        let charges = sim.ledger().charges;
        assert_eq!(charges.len(), 1);
        let charge = &charges[0];
        assert_eq!(charge.id, id);
        assert_eq!((charge.amount, charge.currency.as_str()), (1999, "usd"));
        assert_eq!(charge.idempotency_key.as_deref(), Some("k"));
        assert_eq!(charge.order_ref.as_deref(), Some("ord_1"));
        assert_eq!(charge.customer.as_deref(), Some("cus_1"));
        assert_eq!(charge.created, (NOW_MS + 5_000) / 1000);

        assert_eq!(retrieve(&mut sim, &id).body, passed.body);
        assert_eq!(
            found(&search(&mut sim, "chargeonce_key", "ck")),
            [text(&passed)]
        );
        // The key still answers what was saved when the request executed.
        let replay = run(&mut sim, call(&form, Some("k"))).0;
        assert_eq!((replay.body, replay.replayed), (created.body, true));

        // There is no second challenge to pass.
        let again = authenticate_at(&mut sim, &id, "succeed", 6_000);
        assert_eq!(again.status, 400);
        let error = &json(&again)["error"];
        assert_eq!(error["code"], "payment_intent_unexpected_state");
        assert!(error["message"].as_str().unwrap().contains("succeeded"));
        assert_eq!(sim.ledger().charges.len(), 1);
    }

    #[test]
    fn failing_the_challenge_asks_for_a_new_payment_method_and_charges_nothing() {
        let mut sim = sim();
        let created = run(
            &mut sim,
            order_call(
                &ORDER.replace("pm_card_visa", "pm_card_authenticationRequired"),
                Some("k"),
            ),
        )
        .0;
        assert_eq!(json(&created)["status"], "requires_action");
        let id = id_of(&created);

        let failed = authenticate_at(&mut sim, &id, "fail", 0);
        assert_eq!(failed.status, 200);
        let intent = json(&failed);
        assert_eq!(intent["status"], "requires_payment_method");
        assert_eq!(intent["payment_method"], Value::Null);
        assert_eq!(intent["next_action"], Value::Null);
        let last = &intent["last_payment_error"];
        assert_eq!(last["code"], "payment_intent_authentication_failure");
        assert_eq!(last["type"], "invalid_request_error");
        assert!(sim.ledger().charges.is_empty());
        // The orders lookup reports the new state.
        assert_eq!(found(&orders_by_key(&mut sim, "k")), [text(&failed)]);
        assert_eq!(authenticate_at(&mut sim, &id, "succeed", 0).status, 400);
        assert!(sim.ledger().charges.is_empty());
    }

    #[test]
    fn the_challenge_hook_refuses_bad_bodies_unknown_ids_and_intents_not_awaiting_action() {
        let mut sim = sim();
        let waiting = id_of(
            &run(
                &mut sim,
                call(&form_with("pm_card_threeDSecure2Required"), None),
            )
            .0,
        );
        for body in [
            "",
            "{",
            "[]",
            r#"{}"#,
            r#"{"outcome":"maybe"}"#,
            r#"{"outcome":"Succeed"}"#,
            r#"{"outcome":true}"#,
            r#"{"outcome":"succeed","extra":1}"#,
        ] {
            let reply = sim.authenticate(&waiting, body.as_bytes(), NOW_MS);
            assert_eq!(reply.status, 400, "{body}");
            let message = json(&reply)["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(message.starts_with("Invalid authentication: "), "{message}");
            assert!(message.contains(r#"{"outcome": "succeed"}"#), "{message}");
        }
        let unknown = authenticate_at(&mut sim, "pi_nope", "succeed", 0);
        assert_eq!(unknown.status, 404);
        assert_eq!(json(&unknown)["error"]["code"], "resource_missing");
        let paid = id_of(&run(&mut sim, call(VISA, None)).0);
        let not_waiting = authenticate_at(&mut sim, &paid, "fail", 0);
        assert_eq!(not_waiting.status, 400);
        assert_eq!(json(&retrieve(&mut sim, &paid))["status"], "succeeded");
        // None of the refusals touched the waiting intent.
        assert_eq!(
            json(&retrieve(&mut sim, &waiting))["status"],
            "requires_action"
        );
        assert_eq!(sim.ledger().charges.len(), 1);
    }

    #[test]
    fn retrieve_answers_the_current_state_at_once_and_404_for_unknown_ids() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            search_lag_ms: Some(60_000),
            ..FaultsPatch::default()
        });
        let paid = run(&mut sim, call(VISA, Some("k"))).0;
        let id = id_of(&paid);
        // Search lags; retrieval does not.
        assert!(found(&search(&mut sim, "customer", "cus_1")).is_empty());
        let retrieved = retrieve(&mut sim, &id);
        assert_eq!((retrieved.status, &retrieved.body), (200, &paid.body));
        let declined = run(&mut sim, call(DECLINED, None)).0;
        let declined_id = json(&declined)["error"]["payment_intent"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            json(&retrieve(&mut sim, &declined_id))["status"],
            "requires_payment_method"
        );
        let order = run(&mut sim, order_call(ORDER, None)).0;
        assert_eq!(retrieve(&mut sim, &id_of(&order)).body, order.body);

        let unknown = retrieve(&mut sim, "pi_unknown");
        assert_eq!(unknown.status, 404);
        let error = &json(&unknown)["error"];
        assert_eq!(
            (&error["type"], &error["code"], &error["param"]),
            (
                &Value::from("invalid_request_error"),
                &Value::from("resource_missing"),
                &Value::from("intent")
            )
        );
        assert_eq!(error["message"], "No such payment_intent: 'pi_unknown'");
        for authorization in [None, Some("Bearer sk_test_wrong")] {
            assert_eq!(sim.retrieve(authorization, &id).status, 401);
        }
        sim.reset();
        assert_eq!(retrieve(&mut sim, &id).status, 404);
    }

    #[test]
    fn search_lag_shows_a_changed_intent_in_its_old_state_until_the_change_is_old_enough() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            search_lag_ms: Some(1_000),
            ..FaultsPatch::default()
        });
        let form = format!(
            "{}&metadata[chargeonce_key]=ck",
            form_with("pm_card_threeDSecure2Required")
        );
        let waiting = text(&run(&mut sim, call(&form, Some("k"))).0);
        let id = json(&run(&mut sim, call(&form, Some("k"))).0)["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let passed = text(&authenticate_at(&mut sim, &id, "succeed", 500));
        // Retrieval reads the intent itself: the new state at once.
        assert_eq!(text(&retrieve(&mut sim, &id)), passed);
        assert!(search_at(&mut sim, "ck", NOW_MS + 999).is_empty());
        assert_eq!(
            search_at(&mut sim, "ck", NOW_MS + 1_000),
            [waiting.as_str()]
        );
        assert_eq!(
            search_at(&mut sim, "ck", NOW_MS + 1_499),
            [waiting.as_str()]
        );
        assert_eq!(search_at(&mut sim, "ck", NOW_MS + 1_500), [passed.as_str()]);
    }

    #[test]
    fn search_disabled_answers_404_to_search_alone_until_enabled() {
        let mut sim = sim();
        let form = format!("{VISA}&metadata[chargeonce_key]=ck");
        let paid = text(&run(&mut sim, call(&form, Some("k"))).0);
        run(&mut sim, order_call(ORDER, Some("k")));
        sim.apply_faults(FaultsPatch {
            search_enabled: Some(false),
            ..FaultsPatch::default()
        });
        let refused = search(&mut sim, "chargeonce_key", "ck");
        assert_eq!(refused.status, 404);
        let error = &json(&refused)["error"];
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("Search is not available for this account"),
            "{message}"
        );
        // Even a query paysim could not parse gets the 404: the endpoint is not there.
        assert_eq!(
            lookup(&mut sim, Lookup::PaymentIntentSearch, "q=1").status,
            404
        );
        // Authentication still comes first.
        let unauthorized = LookupCall {
            authorization: None,
            ..lookup_call(Lookup::PaymentIntentSearch, "q=1")
        };
        assert_eq!(answer(&mut sim, unauthorized, NOW_MS).status, 401);
        // Payments, retrieval and the orders lookup go on.
        assert_eq!(run(&mut sim, call(VISA, Some("k2"))).0.status, 200);
        assert_eq!(retrieve(&mut sim, &json_id(&paid)).status, 200);
        assert_eq!(found(&orders_by_key(&mut sim, "k")).len(), 1);
        assert_eq!(sim.lookup_log().lookups[0].status, 404);

        sim.apply_faults(FaultsPatch {
            search_enabled: Some(true),
            ..FaultsPatch::default()
        });
        assert_eq!(found(&search(&mut sim, "chargeonce_key", "ck")), [paid]);
    }

    fn json_id(text: &str) -> String {
        serde_json::from_str::<Value>(text).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn keys_older_than_key_retention_are_pruned_and_their_reuse_executes_anew() {
        let mut sim = sim();
        assert_eq!(sim.faults().key_retention_ms, 86_400_000);
        let at = |sim: &mut Simulator, form: &str, now_ms: u64| match sim
            .begin(call(form, Some("k")), now_ms)
        {
            Begin::Respond(reply) => reply,
            Begin::Execute(ticket) => sim.execute(ticket, now_ms).reply,
        };
        let first = at(&mut sim, VISA, NOW_MS);
        let day = STRIPE_KEY_RETENTION_MS;
        let kept = at(&mut sim, VISA, NOW_MS + day - 1);
        assert_eq!(
            (kept.body.clone(), kept.replayed),
            (first.body.clone(), true)
        );
        // Once pruned, the key is new: other parameters are no conflict, and it charges again.
        let other = VISA.replace("amount=1999", "amount=2500");
        let anew = at(&mut sim, &other, NOW_MS + day);
        assert_eq!((anew.status, anew.replayed), (200, false));
        assert_ne!(json(&anew)["id"], json(&first)["id"]);
        assert_eq!(sim.ledger().charges.len(), 2);
        // The new use starts a new retention period.
        let replay = at(&mut sim, &other, NOW_MS + 2 * day - 1);
        assert_eq!((replay.body, replay.replayed), (anew.body, true));

        // A shorter retention, counted from the key's first use; a key whose request is still
        // executing is never pruned, however old.
        sim.apply_faults(FaultsPatch {
            key_retention_ms: Some(2_000),
            ..FaultsPatch::default()
        });
        let slow = ticket(sim.begin(call(VISA, Some("slow")), NOW_MS));
        let Begin::Respond(busy) = sim.begin(call(VISA, Some("slow")), NOW_MS + 2_500) else {
            panic!("a key in progress must not be pruned");
        };
        assert_eq!(busy.status, 409);
        let done = sim.execute(slow, NOW_MS + 2_500).reply;
        let reused = at_key(&mut sim, "slow", NOW_MS + 2_600);
        assert_eq!((reused.status, reused.replayed), (200, false));
        assert_ne!(reused.body, done.body);
        let within = at_key(&mut sim, "slow", NOW_MS + 4_599);
        assert_eq!((within.body, within.replayed), (reused.body, true));
    }

    fn at_key(sim: &mut Simulator, key: &str, now_ms: u64) -> Reply {
        match sim.begin(call(VISA, Some(key)), now_ms) {
            Begin::Respond(reply) => reply,
            Begin::Execute(ticket) => sim.execute(ticket, now_ms).reply,
        }
    }

    #[test]
    fn in_use_next_answers_409_for_keyed_requests_without_executing_or_saving() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            in_use_next: Some(2),
            ..FaultsPatch::default()
        });
        // Refused before the fault: not counted.
        assert_eq!(run(&mut sim, call("amount=1", Some("k"))).0.status, 400);
        // Without a key there is nothing in use.
        assert_eq!(run(&mut sim, call(VISA, None)).0.status, 200);
        for _ in 0..2 {
            let busy = run(&mut sim, call(VISA, Some("k"))).0;
            assert_eq!((busy.status, busy.replayed), (409, false));
            let error = &json(&busy)["error"];
            assert_eq!(error["type"], "invalid_request_error");
            assert_eq!(error["code"], "idempotency_key_in_use");
            assert!(error["message"].as_str().unwrap().contains(": k."));
        }
        assert_eq!(sim.faults().in_use_next, 0);
        assert_eq!(sim.ledger().charges.len(), 1);
        // Nothing was saved: the retry executes.
        let retried = run(&mut sim, call(VISA, Some("k"))).0;
        assert_eq!((retried.status, retried.replayed), (200, false));
        assert_eq!(sim.ledger().charges.len(), 2);

        // A naive backend holds no keys, so it is never in use.
        sim.apply_faults(FaultsPatch {
            honor_idempotency: Some(false),
            in_use_next: Some(1),
            ..FaultsPatch::default()
        });
        assert_eq!(run(&mut sim, call(VISA, Some("k"))).0.status, 200);
        assert_eq!(sim.faults().in_use_next, 1);
    }

    #[test]
    fn rate_limit_next_answers_429_before_validation_replay_or_search() {
        let mut sim = sim();
        let saved = run(&mut sim, call(VISA, Some("k"))).0;
        sim.apply_faults(FaultsPatch {
            rate_limit_next: Some(4),
            ..FaultsPatch::default()
        });
        // Unauthenticated requests are refused first, and not counted.
        let unauthorized = PaymentCall {
            authorization: None,
            ..call(VISA, Some("k"))
        };
        assert_eq!(run(&mut sim, unauthorized).0.status, 401);
        let limited = [
            run(&mut sim, call(VISA, Some("k"))).0,
            run(&mut sim, call("amount=1", Some("k2"))).0,
            search(&mut sim, "customer", "cus_1"),
            retrieve(&mut sim, &id_of(&saved)),
        ];
        for reply in &limited {
            assert_eq!((reply.status, reply.replayed), (429, false));
            let error = &json(reply)["error"];
            assert_eq!(error["type"], "invalid_request_error");
            assert_eq!(error["code"], "rate_limit");
        }
        assert_eq!(sim.faults().rate_limit_next, 0);
        assert_eq!(sim.ledger().charges.len(), 1);
        // Nothing was saved under k2, and k still replays.
        assert!(run(&mut sim, call(VISA, Some("k"))).0.replayed);
        let fresh = run(&mut sim, call(VISA, Some("k2"))).0;
        assert_eq!((fresh.status, fresh.replayed), (200, false));
        assert_eq!(sim.lookup_log().lookups[0].status, 429);
    }

    #[test]
    fn new_faults_parse_merge_and_reset() {
        for bad in [
            r#"{"search_enabled":"no"}"#,
            r#"{"key_retention_ms":-1}"#,
            r#"{"in_use_next":1.5}"#,
            r#"{"rate_limit_next":"2"}"#,
            r#"{"rate_limit":1}"#,
        ] {
            assert!(serde_json::from_str::<FaultsPatch>(bad).is_err(), "{bad}");
        }
        let mut sim = sim();
        let patch =
            r#"{"search_enabled":false,"key_retention_ms":5,"in_use_next":1,"rate_limit_next":2}"#;
        let faults = sim.apply_faults(serde_json::from_str(patch).unwrap());
        assert_eq!(
            faults,
            Faults {
                search_enabled: false,
                key_retention_ms: 5,
                in_use_next: 1,
                rate_limit_next: 2,
                ..Faults::default()
            }
        );
        sim.reset();
        assert_eq!(sim.faults(), Faults::default());
        assert!(sim.faults().search_enabled);
    }

    #[test]
    fn redirect_next_answers_307_on_both_endpoints_without_charging_or_saving() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            redirect_next: Some(2),
            ..FaultsPatch::default()
        });
        // Refused before execution: not counted.
        assert_eq!(run(&mut sim, call("amount=1", Some("k"))).0.status, 400);
        for payment in [call(VISA, Some("k")), order_call(ORDER, Some("k"))] {
            let (moved, delivery) = run(&mut sim, payment);
            assert_eq!((moved.status, moved.replayed), (307, false));
            assert_eq!(delivery, Delivery::RedirectElsewhere);
            let error = &json(&moved)["error"];
            assert_eq!(error["type"], "api_error");
            assert!(error["message"].as_str().unwrap().contains("redirect_next"));
        }
        assert_eq!(sim.faults().redirect_next, 0);
        assert!(sim.ledger().charges.is_empty());
        assert!(found(&search(&mut sim, "customer", "cus_1")).is_empty());
        assert!(found(&orders_by_key(&mut sim, "k")).is_empty());
        // Nothing was saved under the key: the retry executes.
        let (retried, delivery) = run(&mut sim, call(VISA, Some("k")));
        assert_eq!((retried.status, retried.replayed), (200, false));
        assert_eq!(delivery, Delivery::Send);
        assert_eq!(sim.ledger().charges.len(), 1);
        // fail_next picks a request first.
        sim.apply_faults(FaultsPatch {
            fail_next: Some(1),
            redirect_next: Some(1),
            ..FaultsPatch::default()
        });
        assert_eq!(run(&mut sim, call(VISA, None)).0.status, 503);
        assert_eq!(run(&mut sim, call(VISA, None)).0.status, 307);
        assert_eq!(sim.ledger().redirected_posts, 0);
    }

    #[test]
    fn elsewhere_counts_posts_answers_a_succeeded_intent_and_charges_nothing() {
        let mut sim = sim();
        for count in 1..=2 {
            let reply = sim.elsewhere(NOW_MS);
            assert_eq!((reply.status, reply.replayed), (200, false));
            let intent = json(&reply);
            assert_eq!(intent["id"], "pi_elsewhere");
            assert_eq!(intent["object"], "payment_intent");
            assert_eq!(intent["status"], "succeeded");
            assert_eq!(intent["created"], NOW);
            assert_eq!(sim.ledger().redirected_posts, count);
        }
        assert!(sim.ledger().charges.is_empty());
        assert_eq!(retrieve(&mut sim, "pi_elsewhere").status, 404);
        sim.reset();
        assert_eq!(sim.ledger(), Ledger::default());
    }

    #[test]
    fn oversized_next_commits_and_saves_as_usual_and_asks_for_an_endless_body() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            oversized_next: Some(1),
            drop_after_commit_next: Some(1),
            ..FaultsPatch::default()
        });
        // drop_after_commit_next picks a request first.
        let (_, delivery) = run(&mut sim, call(VISA, Some("k0")));
        assert_eq!(delivery, Delivery::DropConnection);
        assert_eq!(sim.faults().oversized_next, 1);
        let (paid, delivery) = run(&mut sim, order_call(ORDER, Some("k")));
        assert_eq!(delivery, Delivery::EndlessBody);
        assert_eq!((paid.status, paid.replayed), (200, false));
        assert_eq!(sim.faults().oversized_next, 0);
        assert_eq!(sim.ledger().charges.len(), 2);
        assert_eq!(sim.ledger().charges[1].id, id_of(&paid));
        // The answer it could not send is saved and found.
        let (replay, delivery) = run(&mut sim, order_call(ORDER, Some("k")));
        assert_eq!((replay.body, replay.replayed), (paid.body.clone(), true));
        assert_eq!(delivery, Delivery::Send);
        assert_eq!(found(&orders_by_key(&mut sim, "k")), [text(&paid)]);
    }

    #[test]
    fn lookups_ignore_filter_lists_every_intent_of_the_endpoint_still_lagged() {
        let mut sim = sim();
        let tagged = |tag: &str| format!("{VISA}&metadata[chargeonce_key]={tag}");
        let a = text(&run(&mut sim, call(&tagged("a"), Some("a"))).0);
        let b = text(&run(&mut sim, call(&tagged("b"), Some("b"))).0);
        let order_a = text(&run(&mut sim, order_call(ORDER, Some("a"))).0);
        let order_b = text(&run(&mut sim, order_call(ORDER, Some("b"))).0);
        assert_eq!(search_at(&mut sim, "a", NOW_MS), [a.as_str()]);
        sim.apply_faults(FaultsPatch {
            lookups_ignore_filter: Some(true),
            ..FaultsPatch::default()
        });
        for value in ["a", "b", "nobody"] {
            assert_eq!(search_at(&mut sim, value, NOW_MS), [b.as_str(), a.as_str()]);
            assert_eq!(
                orders_at(&mut sim, value, NOW_MS),
                [order_b.as_str(), order_a.as_str()]
            );
        }
        // A question it cannot parse is still refused; lookups_down still wins.
        assert_eq!(lookup(&mut sim, Lookup::OrdersByKey, "key=a").status, 400);
        sim.apply_faults(FaultsPatch {
            search_lag_ms: Some(1_000),
            ..FaultsPatch::default()
        });
        assert!(search_at(&mut sim, "a", NOW_MS + 999).is_empty());
        assert_eq!(
            orders_at(&mut sim, "a", NOW_MS + 1_000),
            [order_b.as_str(), order_a.as_str()]
        );
        sim.apply_faults(FaultsPatch {
            lookups_down: Some(true),
            ..FaultsPatch::default()
        });
        assert_eq!(orders_by_key(&mut sim, "a").status, 503);
        sim.apply_faults(FaultsPatch {
            lookups_down: Some(false),
            search_lag_ms: Some(0),
            lookups_ignore_filter: Some(false),
            ..FaultsPatch::default()
        });
        assert_eq!(orders_at(&mut sim, "a", NOW_MS), [order_a.as_str()]);
    }

    #[test]
    fn misbehaving_backend_faults_parse_merge_and_reset() {
        for bad in [
            r#"{"redirect_next":true}"#,
            r#"{"oversized_next":-1}"#,
            r#"{"lookups_ignore_filter":1}"#,
            r#"{"redirect":1}"#,
        ] {
            assert!(serde_json::from_str::<FaultsPatch>(bad).is_err(), "{bad}");
        }
        let mut sim = sim();
        let patch = r#"{"redirect_next":1,"oversized_next":2,"lookups_ignore_filter":true}"#;
        let faults = sim.apply_faults(serde_json::from_str(patch).unwrap());
        assert_eq!(
            faults,
            Faults {
                redirect_next: 1,
                oversized_next: 2,
                lookups_ignore_filter: true,
                ..Faults::default()
            }
        );
        let _ = sim.elsewhere(NOW_MS);
        sim.reset();
        assert_eq!(sim.faults(), Faults::default());
        assert_eq!(sim.ledger().redirected_posts, 0);
    }
}
