//! The simulator's state and rules, with no I/O: the ledger, the idempotency store, the record of
//! created PaymentIntents that the lookups search, and the faults.
//!
//! A payment request is handled in two steps so that the HTTP shell can sleep in between without
//! holding a lock: [`Simulator::begin`] authenticates, validates and claims the idempotency key,
//! and either answers at once or hands back a [`Ticket`]; after waiting [`Ticket::latency`], the
//! shell passes the ticket and the current time to [`Simulator::execute`], which applies the
//! faults, charges and stores the result. A lookup ([`Simulator::lookup`]) is one step: it only
//! reads. This module reads no clock and sleeps nowhere.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ids;
use super::params::{self, Fingerprint, PaymentParams};
use super::wire::{json_bytes, raw_json, status, ApiError, List, PaymentIntent, SearchResult};
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
    /// Set by the `drop_after_commit_next` fault: close the connection without sending `reply`.
    pub drop_connection: bool,
}

/// The injectable faults and the idempotency switch, as `GET /__sim/faults` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// Store results under `Idempotency-Key` and replay them; `false` is the naive backend.
    pub honor_idempotency: bool,
    /// How many of the next executing requests answer 503 without charging or storing.
    pub fail_next: u32,
    /// How many of the next executed requests commit and then lose their response.
    pub drop_after_commit_next: u32,
    /// Delay before each executing request is handled, while its key is in progress.
    pub latency_ms: u64,
    /// How many of the next requests that reach execution wait an extra `slow_ms` first.
    pub slow_next: u32,
    /// The extra delay of a request picked by `slow_next`, on top of `latency_ms`.
    pub slow_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            honor_idempotency: true,
            fail_next: 0,
            drop_after_commit_next: 0,
            latency_ms: 0,
            slow_next: 0,
            slow_ms: 0,
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
}

/// A PaymentIntent the simulator created, kept for the lookups.
#[derive(Debug)]
struct CreatedIntent {
    endpoint: Endpoint,
    /// The `Idempotency-Key` the creating request carried, honoured or not.
    idempotency_key: Option<String>,
    metadata: BTreeMap<String, String>,
    /// The intent's JSON exactly as in the response to the creating request (for a decline,
    /// inside the error body), so that a lookup shows a client what it missed, byte for byte.
    json: Box<RawValue>,
}

#[derive(Debug)]
struct StoredKey {
    fingerprint: Fingerprint,
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
    keys: HashMap<(Endpoint, String), StoredKey>,
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
            keys: HashMap::new(),
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
        faults.drop_after_commit_next = patch
            .drop_after_commit_next
            .unwrap_or(faults.drop_after_commit_next);
        faults.latency_ms = patch.latency_ms.unwrap_or(faults.latency_ms);
        faults.slow_next = patch.slow_next.unwrap_or(faults.slow_next);
        faults.slow_ms = patch.slow_ms.unwrap_or(faults.slow_ms);
        *faults
    }

    /// Every charge executed since the last reset.
    pub fn ledger(&self) -> Ledger {
        Ledger {
            charges: self.ledger.clone(),
        }
    }

    /// Empties the ledger, the record of created PaymentIntents and the idempotency store, and
    /// restores the default faults.
    ///
    /// Requests in flight at that moment answer 503 and charge nothing when they reach
    /// [`Simulator::execute`].
    pub fn reset(&mut self) {
        self.faults = Faults::default();
        self.ledger.clear();
        self.created.clear();
        self.keys.clear();
        self.epoch += 1;
    }

    /// First step of a payment request: authentication, validation and the idempotency decision.
    pub fn begin(&mut self, call: PaymentCall<'_>) -> Begin {
        if let Err(error) = self.authenticate(call.authorization) {
            return Begin::Respond(Reply::error(status::UNAUTHORIZED, &error));
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
            let scope = (call.endpoint, key.to_owned());
            match self.keys.get(&scope) {
                Some(StoredKey { result: None, .. }) => {
                    return Begin::Respond(Reply::error(status::CONFLICT, &in_progress(key)));
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

    /// Second step: the `fail_next` fault, the payment itself, storing, and `drop_after_commit_next`.
    ///
    /// `now_unix` is the execution time in Unix seconds, recorded as `created`.
    pub fn execute(&mut self, ticket: Ticket, now_unix: u64) -> Executed {
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
                drop_connection: false,
            };
        }
        if self.faults.fail_next > 0 {
            self.faults.fail_next -= 1;
            if let (true, Some(scope)) = (ticket.claimed, &scope) {
                // Like Stripe after a 5xx: nothing is stored, so a retry with the key executes.
                self.keys.remove(scope);
            }
            let error = ApiError::api(
                "The payment backend failed this request (injected fail_next fault); nothing was \
                 charged. Retrying is safe.",
            );
            return Executed {
                reply: Reply::error(status::SERVICE_UNAVAILABLE, &error),
                drop_connection: false,
            };
        }

        let (status, body) = self.pay(&ticket, now_unix);
        if let (true, Some(scope)) = (ticket.claimed, &scope) {
            if let Some(stored) = self.keys.get_mut(scope) {
                stored.result = Some((status, body.clone()));
            }
        }
        let drop_connection = self.faults.drop_after_commit_next > 0;
        if drop_connection {
            self.faults.drop_after_commit_next -= 1;
        }
        Executed {
            reply: Reply::fresh(status, body),
            drop_connection,
        }
    }

    /// A lookup: which PaymentIntents were created under a metadata value or an idempotency key.
    ///
    /// Answers from everything executed so far, whether its response reached the client or not,
    /// and whatever `honor_idempotency` says; a request still waiting to execute is not there yet.
    /// Matches come newest first, as Stripe orders search results, each element byte for byte
    /// the intent's JSON in the response that created it.
    pub fn lookup(&self, call: LookupCall<'_>) -> Reply {
        if let Err(error) = self.authenticate(call.authorization) {
            return Reply::error(status::UNAUTHORIZED, &error);
        }
        let url = call.lookup.path();
        let body = match call.lookup {
            Lookup::PaymentIntentSearch => params::parse_search(call.query).map(|wanted| {
                let found = self.created_newest_first(Endpoint::PaymentIntents, |intent| {
                    intent.metadata.get(&wanted.key) == Some(&wanted.value)
                });
                json_bytes(&SearchResult::complete(url, found))
            }),
            Lookup::OrdersByKey => params::parse_orders_lookup(call.query).map(|key| {
                let found = self.created_newest_first(Endpoint::Orders, |intent| {
                    intent.idempotency_key.as_deref() == Some(key.as_str())
                });
                json_bytes(&List::complete(url, found))
            }),
        };
        match body {
            Ok(body) => Reply::fresh(status::OK, body),
            Err(error) => Reply::error(status::BAD_REQUEST, &error),
        }
    }

    fn created_newest_first(
        &self,
        endpoint: Endpoint,
        matches: impl Fn(&CreatedIntent) -> bool,
    ) -> Vec<&RawValue> {
        self.created
            .iter()
            .rev()
            .filter(|intent| intent.endpoint == endpoint && matches(intent))
            .map(|intent| &*intent.json)
            .collect()
    }

    fn authenticate(&self, authorization: Option<&str>) -> Result<(), ApiError> {
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

    /// The payment itself: the outcome is decided by the test payment method, as on Stripe.
    fn pay(&mut self, ticket: &Ticket, now_unix: u64) -> (u16, Bytes) {
        let params = &ticket.params;
        let intent = |status, payment_method: Option<&str>| PaymentIntent {
            id: ids::payment_intent_id(),
            object: "payment_intent",
            amount: params.amount,
            currency: params.currency.clone(),
            status,
            payment_method: payment_method.map(str::to_owned),
            metadata: params.metadata.clone(),
            created: now_unix,
        };
        let method = params.payment_method.as_str();
        match method {
            "pm_card_visa" | "pm_card_mastercard" | "pm_card_chargeDeclined" if !params.confirm => {
                let intent = intent("requires_confirmation", Some(method));
                (status::OK, self.record(ticket, &intent))
            }
            "pm_card_visa" | "pm_card_mastercard" => {
                let intent = intent("succeeded", Some(method));
                self.ledger.push(Charge {
                    id: intent.id.clone(),
                    amount: intent.amount,
                    currency: intent.currency.clone(),
                    idempotency_key: ticket.idempotency_key.clone(),
                    order_ref: params.order_ref().map(str::to_owned),
                    customer: params.customer().map(str::to_owned),
                    created: now_unix,
                });
                (status::OK, self.record(ticket, &intent))
            }
            "pm_card_chargeDeclined" => {
                // Stripe detaches the failed method, so the intent asks for a new one.
                let intent = intent("requires_payment_method", None);
                self.record(ticket, &intent);
                // Serialized again inside the error, by the same serializer: the same bytes.
                let error = ApiError::card_declined(intent);
                (status::PAYMENT_REQUIRED, error.to_body())
            }
            unknown => (
                status::BAD_REQUEST,
                ApiError::no_such_payment_method(unknown).to_body(),
            ),
        }
    }

    /// Keeps `intent` for the lookups and returns its JSON, the very bytes they will answer.
    fn record(&mut self, ticket: &Ticket, intent: &PaymentIntent) -> Bytes {
        let json = raw_json(intent);
        let bytes = Bytes::copy_from_slice(json.get().as_bytes());
        self.created.push(CreatedIntent {
            endpoint: ticket.endpoint,
            idempotency_key: ticket.idempotency_key.clone(),
            metadata: intent.metadata.clone(),
            json,
        });
        bytes
    }
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

fn in_progress(key: &str) -> ApiError {
    ApiError::idempotency(format!(
        "There is currently another in-progress request using this Idempotency Key (that \
         probably means you submitted twice, and the other request is still going through): \
         {key}. Please try again later."
    ))
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
    fn run(sim: &mut Simulator, call: PaymentCall<'_>) -> (Reply, bool) {
        match sim.begin(call) {
            Begin::Respond(reply) => (reply, false),
            Begin::Execute(ticket) => {
                let executed = sim.execute(ticket, NOW);
                (executed.reply, executed.drop_connection)
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
        let (reply, dropped) = run(&mut sim, call(VISA, Some("k1")));
        assert_eq!(reply.status, 200);
        assert!(!dropped);
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
        let first = ticket(sim.begin(call(VISA, Some("k"))));
        assert_eq!(first.latency(), Duration::from_millis(250));
        let Begin::Respond(busy) = sim.begin(call(VISA, Some("k"))) else {
            panic!("second request with an in-progress key must not execute");
        };
        assert_eq!(busy.status, 409);
        assert_eq!(json(&busy)["error"]["type"], "idempotency_error");
        assert_eq!(sim.execute(first, NOW).reply.status, 200);
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
    fn drop_after_commit_charges_stores_and_asks_to_drop_once() {
        let mut sim = sim();
        sim.apply_faults(FaultsPatch {
            drop_after_commit_next: Some(1),
            ..FaultsPatch::default()
        });
        let (lost, dropped) = run(&mut sim, call(VISA, Some("k")));
        assert!(dropped);
        assert_eq!(sim.ledger().charges.len(), 1);
        let (replay, dropped_again) = run(&mut sim, call(VISA, Some("k")));
        assert!(!dropped_again);
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
        let in_flight = ticket(sim.begin(call(VISA, Some("k"))));
        sim.reset();
        assert_eq!(sim.execute(in_flight, NOW).reply.status, 503);
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
            drop_after_commit_next: Some(2),
            latency_ms: Some(9),
            slow_next: Some(4),
            slow_ms: Some(300),
        });
        sim.reset();
        assert_eq!(sim.faults(), Faults::default());
        assert!(sim.ledger().charges.is_empty());
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
        let first = ticket(sim.begin(call(VISA, Some("k1"))));
        assert_eq!(first.latency(), slow);
        assert_eq!(sim.faults().slow_next, 1);
        let _ = sim.execute(first, NOW);

        // Requests answered without executing are not picked.
        let unauthorized = PaymentCall {
            authorization: None,
            ..call(VISA, Some("k2"))
        };
        assert_eq!(run(&mut sim, unauthorized).0.status, 401);
        assert_eq!(run(&mut sim, call("amount=1", None)).0.status, 400);
        assert!(run(&mut sim, call(VISA, Some("k1"))).0.replayed);
        assert_eq!(sim.faults().slow_next, 1);

        assert_eq!(ticket(sim.begin(call(VISA, Some("k2")))).latency(), slow);
        assert_eq!(sim.faults().slow_next, 0);
        let third = ticket(sim.begin(call(VISA, Some("k3"))));
        assert_eq!(third.latency(), Duration::from_millis(10));
        assert_eq!(sim.faults().slow_ms, 300);
    }

    fn lookup(sim: &Simulator, lookup: Lookup, query: &str) -> Reply {
        sim.lookup(LookupCall {
            lookup,
            authorization: Some(AUTH),
            query: Some(query),
        })
    }

    fn search(sim: &Simulator, key: &str, value: &str) -> Reply {
        let query = format!("metadata['{key}']:'{value}'");
        let query_string = serde_urlencoded::to_string([("query", query)]).unwrap();
        lookup(sim, Lookup::PaymentIntentSearch, &query_string)
    }

    fn orders_by_key(sim: &Simulator, key: &str) -> Reply {
        let query_string = serde_urlencoded::to_string([("idempotency_key", key)]).unwrap();
        lookup(sim, Lookup::OrdersByKey, &query_string)
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
        assert_eq!(created[0].metadata["customer"], "cus_1");
        assert_eq!(created[1].metadata["chargeonce_key"], "ck");
        assert!(created[2].metadata.is_empty());
        assert_eq!(created[3].metadata["order_ref"], "ord_1");

        for (intent, reply) in [(0, &succeeded), (1, &unconfirmed), (3, &order)] {
            assert_eq!(created[intent].json.get(), text(reply), "intent {intent}");
        }
        // A decline answers an error; the intent inside it is what was stored, byte for byte.
        let stored = created[2].json.get();
        assert!(text(&declined).contains(&format!(r#""payment_intent":{stored}}}"#)));
        let stored: Value = serde_json::from_str(stored).unwrap();
        assert_eq!(stored, json(&declined)["error"]["payment_intent"]);
        assert_eq!(stored["status"], "requires_payment_method");
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
            found(&search(&sim, "chargeonce_key", "ck_1")),
            [text(&newer), text(&older)]
        );
        assert_eq!(found(&search(&sim, "chargeonce_key", "ck_2")).len(), 1);
        // The order shares order_ref and a key with the form intents but is not searched.
        assert_eq!(found(&search(&sim, "order_ref", "ord_1")).len(), 3);
        assert!(found(&search(&sim, "chargeonce_key", "ck_")).is_empty());
        assert!(found(&search(&sim, "chargeonce_key", "CK_1")).is_empty());
        assert!(found(&search(&sim, "a", "ck_1")).is_empty());

        let nothing = search(&sim, "chargeonce_key", "ck_3");
        assert_eq!(
            text(&nothing),
            r#"{"object":"search_result","url":"/v1/payment_intents/search","has_more":false,"next_page":null,"data":[]}"#
        );
        let one = search(&sim, "chargeonce_key", "ck_2");
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
        let found = found(&search(&sim, "chargeonce_key", "ck_d"));
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
        let (lost, dropped) = run(&mut sim, call(&form, Some("ck_lost")));
        assert!(dropped);
        assert_eq!(
            found(&search(&sim, "chargeonce_key", "ck_lost")),
            [text(&lost)]
        );
        let (lost_order, dropped) = {
            sim.apply_faults(FaultsPatch {
                drop_after_commit_next: Some(1),
                ..FaultsPatch::default()
            });
            run(&mut sim, order_call(ORDER, Some("ck_lost")))
        };
        assert!(dropped);
        assert_eq!(found(&orders_by_key(&sim, "ck_lost")), [text(&lost_order)]);

        // The naive backend charges the retry again; both charges are there to see.
        let again = run(&mut sim, call(&form, Some("ck_lost"))).0;
        assert_eq!(
            found(&search(&sim, "chargeonce_key", "ck_lost")),
            [text(&again), text(&lost)]
        );
        assert_eq!(sim.ledger().charges.len(), 3);
    }

    #[test]
    fn lookups_see_a_payment_once_it_executes_and_not_before() {
        let mut sim = sim();
        let pending = ticket(sim.begin(order_call(ORDER, Some("k"))));
        assert!(found(&orders_by_key(&sim, "k")).is_empty());
        let executed = sim.execute(pending, NOW);
        assert_eq!(found(&orders_by_key(&sim, "k")), [text(&executed.reply)]);
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

        let reply = orders_by_key(&sim, "k");
        assert_eq!(
            text(&reply),
            format!(
                r#"{{"object":"list","url":"/v1/orders","has_more":false,"data":[{},{}]}}"#,
                text(&second),
                text(&first)
            )
        );
        assert_eq!(found(&orders_by_key(&sim, "other")).len(), 1);
        assert!(found(&orders_by_key(&sim, "K")).is_empty());
        assert_eq!(
            text(&orders_by_key(&sim, "unknown")),
            r#"{"object":"list","url":"/v1/orders","has_more":false,"data":[]}"#
        );
    }

    #[test]
    fn lookups_need_the_api_key_and_a_supported_query() {
        let mut sim = sim();
        run(&mut sim, order_call(ORDER, Some("k")));
        for lookup in [Lookup::PaymentIntentSearch, Lookup::OrdersByKey] {
            for authorization in [None, Some("Bearer sk_test_wrong")] {
                let reply = sim.lookup(LookupCall {
                    lookup,
                    authorization,
                    query: Some("idempotency_key=k&query=metadata['order_ref']:'ord_1'"),
                });
                assert_eq!(reply.status, 401, "{lookup:?} {authorization:?}");
                assert_eq!(json(&reply)["error"]["type"], "invalid_request_error");
            }
        }
        let bad = lookup(
            &sim,
            Lookup::PaymentIntentSearch,
            "query=status:'succeeded'",
        );
        assert_eq!(bad.status, 400);
        assert_eq!(json(&bad)["error"]["param"], "query");
        let bad = lookup(&sim, Lookup::OrdersByKey, "key=k");
        assert_eq!(bad.status, 400);
        assert_eq!(json(&bad)["error"]["param"], "idempotency_key");
    }

    #[test]
    fn reset_forgets_created_intents_and_a_request_in_flight_adds_none() {
        let mut sim = sim();
        let form = format!("{VISA}&metadata[chargeonce_key]=ck");
        run(&mut sim, call(&form, Some("k1")));
        run(&mut sim, order_call(ORDER, Some("k1")));
        let in_flight = ticket(sim.begin(call(&form, Some("k2"))));
        let order_in_flight = ticket(sim.begin(order_call(ORDER, Some("k2"))));
        sim.reset();
        assert!(found(&search(&sim, "chargeonce_key", "ck")).is_empty());
        assert!(found(&orders_by_key(&sim, "k1")).is_empty());

        assert_eq!(sim.execute(in_flight, NOW).reply.status, 503);
        assert_eq!(sim.execute(order_in_flight, NOW).reply.status, 503);
        assert!(found(&search(&sim, "chargeonce_key", "ck")).is_empty());
        assert!(found(&orders_by_key(&sim, "k2")).is_empty());
    }
}
