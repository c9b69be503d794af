//! The simulator's state and rules, with no I/O: the ledger, the idempotency store and the faults.
//!
//! A payment request is handled in two steps so that the HTTP shell can sleep in between without
//! holding a lock: [`Simulator::begin`] authenticates, validates and claims the idempotency key,
//! and either answers at once or hands back a [`Ticket`]; after waiting [`Ticket::latency`], the
//! shell passes the ticket and the current time to [`Simulator::execute`], which applies the
//! faults, charges and stores the result. This module reads no clock and sleeps nowhere.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::ids;
use super::params::{self, Fingerprint, PaymentParams};
use super::wire::{json_bytes, status, ApiError, PaymentIntent};
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
    /// How long to wait before executing, from the `latency_ms` fault; the key stays in progress.
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
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            honor_idempotency: true,
            fail_next: 0,
            drop_after_commit_next: 0,
            latency_ms: 0,
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
        *faults
    }

    /// Every charge executed since the last reset.
    pub fn ledger(&self) -> Ledger {
        Ledger {
            charges: self.ledger.clone(),
        }
    }

    /// Empties the ledger and the idempotency store and restores the default faults.
    ///
    /// Requests in flight at that moment answer 503 and charge nothing when they reach
    /// [`Simulator::execute`].
    pub fn reset(&mut self) {
        self.faults = Faults::default();
        self.ledger.clear();
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

        Begin::Execute(Ticket {
            endpoint: call.endpoint,
            idempotency_key: call.idempotency_key.map(str::to_owned),
            claimed,
            params,
            latency: Duration::from_millis(self.faults.latency_ms),
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

        let (status, body) = self.pay(&ticket.params, ticket.idempotency_key, now_unix);
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
    fn pay(
        &mut self,
        params: &PaymentParams,
        idempotency_key: Option<String>,
        now_unix: u64,
    ) -> (u16, Bytes) {
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
                (
                    status::OK,
                    json_bytes(&intent("requires_confirmation", Some(method))),
                )
            }
            "pm_card_visa" | "pm_card_mastercard" => {
                let intent = intent("succeeded", Some(method));
                self.ledger.push(Charge {
                    id: intent.id.clone(),
                    amount: intent.amount,
                    currency: intent.currency.clone(),
                    idempotency_key,
                    order_ref: params.order_ref().map(str::to_owned),
                    customer: params.customer().map(str::to_owned),
                    created: now_unix,
                });
                (status::OK, json_bytes(&intent))
            }
            "pm_card_chargeDeclined" => {
                // Stripe detaches the failed method, so the intent asks for a new one.
                let error = ApiError::card_declined(intent("requires_payment_method", None));
                (status::PAYMENT_REQUIRED, error.to_body())
            }
            unknown => (
                status::BAD_REQUEST,
                ApiError::no_such_payment_method(unknown).to_body(),
            ),
        }
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
    }
}
