//! A property test of the edge in front of a *naive* payment backend, one
//! that charges every request it runs and ignores idempotency keys, so
//! nothing but the key's record and the reconciliation lookup stands between
//! a lost response and a second charge.
//!
//! It drives the edge's own code: each worker is a [`flow`] driver, the key's
//! object is a [`KeyRecord`] (whose alarm reconciles by itself), the KV copy
//! is filled from the flow's cache writes, and backend answers go through
//! [`classify_response`] and [`classify_lookup`]. The world has duplicate and
//! conflicting requests arriving at any moment, some with expired order
//! tokens; backend answers that succeed, decline, fail before or after
//! charging, or are lost after the charge; lookups that fail or lag behind
//! the charge (by at most the settle window); calls to the key's object that
//! fail before or after it acted; workers that crash at any step; and time
//! passing past backend timeouts, leases, settle windows and alarms. The one
//! assumption is the one the edge documents: the backend finishes any request
//! it received within the lease of the claim that sent it.
//!
//! After every step it checks:
//! - the backend never charged the key twice;
//! - at most one request for the key runs at the backend at a time;
//! - every replay equals the stored final answer, which never changes;
//! - a stored success means exactly one charge, a stored decline or "not
//!   charged" none.
//!
//! A second property drains the world (time passes, the backend recovers,
//! the client keeps retrying) and checks that the key reaches a final answer.
#![allow(clippy::unwrap_used, missing_docs)]

use chargeonce_protocol::backend::{
    classify_failure, classify_lookup, classify_response, client_view, BackendResponse,
    ExpectedCharge,
};
use chargeonce_protocol::flow::{self, Done, Reply, Secrets, StoreFailure};
use chargeonce_protocol::{
    ClaimToken, Completed, Decision, EdgeConfig, KeyPolicy, KeyRecord, OrderClaims, OrderDecision,
    OrderPolicy, OrderRecord, RequestHead, Step, StoredResponse, TransportFailure, UnixMs,
};
use proptest::prelude::*;
use std::time::Duration;

const SECRET: &[u8] = b"property-test-order-token-secret-0001";
const LEASE_SECS: u64 = 30;
const TIMEOUT_SECS: u64 = 10;
const SETTLE_SECS: u64 = 20;
const KEY: &str = "attempt-key-0000000001";

fn config() -> EdgeConfig {
    let vars = [
        ("PAYMENT_BACKEND", "passthrough".to_owned()),
        (
            "PAYMENT_BACKEND_URL",
            "http://backend.test/v1/orders".to_owned(),
        ),
        ("CLAIM_LEASE_SECS", LEASE_SECS.to_string()),
        ("BACKEND_TIMEOUT_MS", (TIMEOUT_SECS * 1000).to_string()),
        ("LOOKUP_SETTLE_SECS", SETTLE_SECS.to_string()),
        ("IDEMPOTENCY_TTL_SECS", "3600".to_owned()),
    ];
    EdgeConfig::from_vars(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
}

fn secrets() -> Secrets {
    Secrets {
        order_token: Some(SECRET.to_vec()),
        backend: None,
    }
}

/// The order's body, signed by the storefront; `amount` 2 is another payload.
fn body(amount: u64, expires_at_secs: u64) -> Vec<u8> {
    let claims = OrderClaims {
        order_ref: "ord_1".into(),
        amount,
        currency: "usd".into(),
        customer: "cus_1".into(),
        expires_at: expires_at_secs,
    };
    serde_json::json!({
        "amount": amount,
        "currency": "usd",
        "customer": "cus_1",
        "order_ref": "ord_1",
        "order_token": claims.sign(SECRET),
        "payment_method": "pm_card_visa",
    })
    .to_string()
    .into_bytes()
}

/// What the backend does with one request, and what the edge hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Charged; the edge gets the 200.
    Success,
    /// Declined; the edge gets the 402.
    Decline,
    /// 503 before doing anything.
    Busy,
    /// Charged, then a 500.
    FailAfterCharge,
    /// Charged, then the connection dropped.
    LostAfterCharge,
}

/// How a call to the key's object goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreCall {
    Ok,
    /// Never reached the object.
    Unreachable,
    /// The object acted and saved, and its reply was lost.
    ReplyLost,
}

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        other_payload: bool,
        expired: bool,
    },
    Advance {
        ms: u64,
    },
    Step {
        pick: usize,
        store: StoreCall,
        lookup_fails: bool,
    },
    Answer {
        pick: usize,
        outcome: Outcome,
    },
    Crash {
        pick: usize,
    },
    Alarm {
        lookup_fails: bool,
    },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Decline),
        Just(Outcome::Busy),
        Just(Outcome::FailAfterCharge),
        Just(Outcome::LostAfterCharge),
    ]
}

fn store_call() -> impl Strategy<Value = StoreCall> {
    prop_oneof![
        10 => Just(StoreCall::Ok),
        1 => Just(StoreCall::Unreachable),
        1 => Just(StoreCall::ReplyLost),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Mostly duplicates of one payload, sometimes the key reused for
        // another, sometimes with a token that has expired.
        4 => Just(Op::Arrive { other_payload: false, expired: false }),
        1 => Just(Op::Arrive { other_payload: true, expired: false }),
        1 => Just(Op::Arrive { other_payload: false, expired: true }),
        2 => prop_oneof![0..2_000u64, 9_000..12_000u64, 19_000..35_000u64]
            .prop_map(|ms| Op::Advance { ms }),
        10 => (any::<usize>(), store_call(), prop::bool::weighted(0.15))
            .prop_map(|(pick, store, lookup_fails)| Op::Step { pick, store, lookup_fails }),
        4 => (any::<usize>(), outcome()).prop_map(|(pick, outcome)| Op::Answer { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Op::Crash { pick }),
        1 => prop::bool::weighted(0.3).prop_map(|lookup_fails| Op::Alarm { lookup_fails }),
    ]
}

/// A request at the backend, and when the backend has finished it by.
struct Call {
    finish_by: UnixMs,
    /// What its charge shows a lookup: amount, key and order.
    charge: String,
}

/// The members of a charge made by `forward` that a lookup checks
/// ([`chargeonce_protocol::backend::ExpectedCharge`]).
fn charge_of(forward: &flow::Forward) -> String {
    // The passthrough backend's body is the order as JSON.
    let order: serde_json::Value =
        serde_json::from_str(&forward.request().body).expect("the order as JSON");
    let amount = order["amount"].as_u64().expect("an order names its amount");
    // Members in the order serde_json writes them, so the lookup's copy
    // of a charge is the charge's own bytes.
    format!(
        r#"{{"amount":{amount},"id":"pi_{{id}}","metadata":{{"chargeonce_key":"{}","order_ref":"ord_1"}},"status":"succeeded"}}"#,
        forward.backend_key()
    )
}

/// One Worker running one request.
struct Worker {
    step: Step,
    body: Vec<u8>,
    /// The forward it is waiting on, and when it stops waiting.
    waiting: Option<(Call, UnixMs)>,
    /// When the key's object last granted or renewed its claim: the lease
    /// the backend finishes a forward within counts from then, not from the
    /// forward (the order's record is asked in between).
    granted_at: UnixMs,
}

/// The naive backend: charges every request it runs.
#[derive(Default)]
struct Backend {
    /// The charges, with when each becomes visible to the lookup.
    charges: Vec<(StoredResponse, UnixMs)>,
    /// Requests still running whose worker stopped waiting.
    orphans: Vec<Call>,
}

impl Backend {
    /// Runs one request at `now`; what the edge would hear.
    fn run(
        &mut self,
        outcome: Outcome,
        now: UnixMs,
        lag: Duration,
        charge: &str,
    ) -> Result<(u16, String), ()> {
        match outcome {
            Outcome::Busy => Ok((503, r#"{"error":{"type":"api_error"}}"#.into())),
            Outcome::Decline => Ok((402, r#"{"error":{"code":"card_declined"}}"#.into())),
            Outcome::Success | Outcome::FailAfterCharge | Outcome::LostAfterCharge => {
                let body = charge.replace("{id}", &self.charges.len().to_string());
                self.charges.push((json(200, &body), now.plus(lag)));
                match outcome {
                    Outcome::Success => Ok((200, body)),
                    Outcome::FailAfterCharge => Ok((500, "{}".into())),
                    _ => Err(()),
                }
            }
        }
    }

    /// The lookup at `now`: what it can see of the charges, as the backend
    /// would list it.
    fn lookup(&self, now: UnixMs) -> (u16, String) {
        let visible: Vec<&str> = self
            .charges
            .iter()
            .filter(|(_, visible_at)| *visible_at <= now)
            .map(|(charge, _)| charge.body.as_str())
            .collect();
        (200, format!(r#"{{"data":[{}]}}"#, visible.join(",")))
    }
}

fn json(status: u16, body: &str) -> StoredResponse {
    StoredResponse {
        status,
        content_type: "application/json".into(),
        body: body.into(),
    }
}

struct World {
    config: EdgeConfig,
    policy: KeyPolicy,
    order_policy: OrderPolicy,
    /// What the key's object kept at its last claim, for its own lookups.
    expected: Option<ExpectedCharge>,
    now: UnixMs,
    record: KeyRecord,
    /// The order's record: with one key, it always lets the key attempt.
    order: OrderRecord,
    /// The KV copy of final answers, by object name.
    kv: Option<Completed>,
    workers: Vec<Worker>,
    backend: Backend,
    /// The first final answer stored; it must never change.
    stored: Option<StoredResponse>,
    next_token: u64,
    /// How far behind the lookup is for the next charge.
    lag: Duration,
    /// Replies the clients got, for the drain's check.
    replies: Vec<Reply>,
}

impl World {
    fn new() -> Self {
        let config = config();
        Self {
            policy: config.key_policy(),
            order_policy: config.order_policy(),
            expected: None,
            config,
            now: UnixMs(1_000_000),
            record: KeyRecord::default(),
            order: OrderRecord::default(),
            kv: None,
            workers: Vec::new(),
            backend: Backend::default(),
            stored: None,
            next_token: 0,
            lag: Duration::ZERO,
            replies: Vec::new(),
        }
    }

    fn fresh_token(&mut self) -> ClaimToken {
        self.next_token += 1;
        ClaimToken(self.next_token)
    }

    fn arrive(&mut self, amount: u64, expired: bool) -> Result<(), TestCaseError> {
        let expires = if expired {
            self.now.as_secs()
        } else {
            self.now.as_secs() + 3_600
        };
        let head = RequestHead {
            method: "POST",
            content_type: Some("application/json"),
            content_length: None,
            idempotency_key: Some(KEY),
        };
        let step = flow::order(head, Some("198.51.100.7"), &self.config, secrets());
        self.workers.push(Worker {
            step,
            body: body(amount, expires),
            waiting: None,
            granted_at: self.now,
        });
        self.settle_done()
    }

    /// A call to the key's object, as `store` goes.
    fn object<T>(
        &mut self,
        store: StoreCall,
        act: impl FnOnce(&mut KeyRecord, UnixMs, ClaimToken, &KeyPolicy) -> T,
    ) -> Result<T, StoreFailure> {
        if store == StoreCall::Unreachable {
            return Err(StoreFailure("unreachable".into()));
        }
        let fresh = self.fresh_token();
        let result = act(&mut self.record, self.now, fresh, &self.policy);
        match store {
            StoreCall::ReplyLost => Err(StoreFailure("reply lost".into())),
            _ => Ok(result),
        }
    }

    /// Performs the I/O of one worker's current step.
    fn step(
        &mut self,
        pick: usize,
        store: StoreCall,
        lookup_fails: bool,
    ) -> Result<(), TestCaseError> {
        let idle: Vec<usize> = (0..self.workers.len())
            .filter(|i| self.workers[*i].waiting.is_none())
            .collect();
        if idle.is_empty() {
            return Ok(());
        }
        let i = idle[pick % idle.len()];
        let now = self.now;
        let step = std::mem::replace(&mut self.workers[i].step, placeholder());
        let next = match step {
            Step::ReadBody(s) => s.handle_body(Ok(self.workers[i].body.clone())),
            Step::ReadCache(s) => s.handle_cached(self.kv.clone(), now),
            Step::Claim(s) => {
                let fp = s.fingerprint().clone();
                // The object keeps what its lookups must find with a claim it
                // grants, whether or not its reply arrives.
                let (expected, mut kept) = (s.expected(), None);
                let decided = self.object(store, |r, now, fresh, p| {
                    let decision = r.claim(&fp, now, fresh, p);
                    if let Decision::Forward { .. } = decision {
                        kept = Some(expected);
                    }
                    decision
                });
                if kept.is_some() {
                    self.expected = kept;
                }
                self.workers[i].granted_at = now;
                s.handle_claim(decided, now)
            }
            // The rate limits: a reply lost stands for a refusal, an
            // unreachable limiter for one that cannot answer (the request
            // goes on).
            Step::Limit(s) => match store {
                StoreCall::Ok => s.handle_limit(Ok(true), now),
                StoreCall::ReplyLost => s.handle_limit(Ok(false), now),
                StoreCall::Unreachable => {
                    s.handle_limit(Err(StoreFailure("unreachable".into())), now)
                }
            },
            Step::Peek(s) => {
                let fp = s.fingerprint().clone();
                let peeked = self.object(store, |r, now, _, p| r.peek(&fp, now, p));
                s.handle_peek(peeked)
            }
            Step::BeginOrder(s) => {
                let decided = match store {
                    StoreCall::Unreachable => Err(StoreFailure("unreachable".into())),
                    _ => {
                        let decided = self.order.begin(&s.attempt(), now, &self.order_policy);
                        prop_assert_eq!(&decided, &OrderDecision::Attempt, "one key, one attempt");
                        if store == StoreCall::ReplyLost {
                            Err(StoreFailure("reply lost".into()))
                        } else {
                            Ok(decided)
                        }
                    }
                };
                s.handle_begin(decided, now)
            }
            step @ (Step::AskAttempt(_) | Step::SettleOrder(_)) => {
                unreachable!("one key never asks about another: {step:?}")
            }
            Step::Lookup(s) => {
                let (status, body) = if lookup_fails {
                    (503, String::new())
                } else {
                    self.backend.lookup(now)
                };
                let found = classify_lookup(status, body.as_bytes(), &s.expected()).outcome;
                s.handle_lookup(found, now)
            }
            Step::Settle(s) => {
                let (token, fp, found) = (s.token(), s.fingerprint().clone(), s.found().clone());
                let settled = self.object(store, |r, now, _, p| {
                    r.handle_lookup(token, &fp, found, now, p)
                });
                self.workers[i].granted_at = now;
                s.handle_settlement(settled, now)
            }
            // Sent the moment it was decided (below), so never idle.
            forward @ Step::Forward(_) => forward,
            Step::Complete(s) => {
                let (token, fp, response) =
                    (s.token(), s.fingerprint().clone(), s.response().clone());
                let stored = self.object(store, |r, now, _, p| {
                    r.complete(token, &fp, response, now, p)
                });
                s.handle_complete(stored, now)
            }
            Step::Release(s) => {
                let token = s.token();
                let released = self.object(store, |r, now, _, p| r.release(token, now, p));
                s.handle_release(released)
            }
            Step::Abandon(s) => {
                let token = s.token();
                let ran = s.ran();
                let abandoned = self.object(store, |r, now, _, p| r.abandon(token, ran, now, p));
                s.handle_abandon(abandoned)
            }
            Step::QueryStatus(s) => {
                let status = self.object(store, |r, now, _, p| r.status(now, p));
                s.handle_status(status)
            }
            // Its answers are all settled intents, so nothing is refreshed.
            step @ (Step::Refresh(_) | Step::SaveRefresh(_)) => {
                unreachable!("a refresh of a settled answer: {step:?}")
            }
            done @ Step::Done(_) => done,
        };
        if let Step::Forward(forward) = &next {
            // The shell sends a forward the moment the flow asks for it.
            prop_assert!(
                self.stored.is_none(),
                "forwarded after a final answer was stored"
            );
            let call = Call {
                // The backend is done by the end of the claim's lease.
                finish_by: self.workers[i].granted_at.plus(self.policy.lease),
                charge: charge_of(forward),
            };
            self.workers[i].waiting = Some((call, now.plus(self.config.backend_timeout)));
        }
        self.workers[i].step = next;
        self.note_stored()?;
        self.settle_done()
    }

    /// A worker waiting on its forward hears `outcome`.
    fn answer(&mut self, pick: usize, outcome: Outcome) -> Result<(), TestCaseError> {
        if !self.backend.orphans.is_empty() && pick.is_multiple_of(2) {
            // An orphan finishes early, with whatever outcome.
            let orphan = self
                .backend
                .orphans
                .remove(pick % self.backend.orphans.len());
            let _ = self
                .backend
                .run(outcome, self.now, self.lag, &orphan.charge);
            return Ok(());
        }
        let waiting: Vec<usize> = (0..self.workers.len())
            .filter(|i| self.workers[*i].waiting.is_some())
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        let i = waiting[pick % waiting.len()];
        let (call, _) = self.workers[i].waiting.take().expect("picked as waiting");
        let heard = match self.backend.run(outcome, self.now, self.lag, &call.charge) {
            Ok((status, body)) => classify_response(BackendResponse::new(status, body)),
            Err(()) => classify_failure(&TransportFailure::Unreachable("reset".into())),
        };
        let Step::Forward(s) = std::mem::replace(&mut self.workers[i].step, placeholder()) else {
            unreachable!("only a forward waits on the backend")
        };
        self.workers[i].step = s.handle_forward(heard);
        self.settle_done()
    }

    /// The key's alarm, if due: a reconciliation by the object itself.
    fn alarm(&mut self, lookup_fails: bool) -> Result<(), TestCaseError> {
        let now = self.now;
        if self.record.poll_timeout().is_none_or(|at| at > now) {
            return Ok(());
        }
        let fresh = self.fresh_token();
        let _ = self.record.handle_timeout(now, &self.policy);
        if let Some(token) = self.record.begin_check(now, fresh, &self.policy) {
            let (status, body) = if lookup_fails {
                (503, String::new())
            } else {
                self.backend.lookup(now)
            };
            // The object checks the lookup against what it kept at the claim.
            let expected = self.expected.clone().expect("a claim kept it");
            let (found, _) = classify_lookup(status, body.as_bytes(), &expected)
                .outcome
                .found(now);
            let fp = self.record.fingerprint().unwrap().clone();
            let _ = self
                .record
                .handle_lookup(token, &fp, found, now, &self.policy);
        }
        self.note_stored()
    }

    fn crash(&mut self, pick: usize) {
        if self.workers.is_empty() {
            return;
        }
        // The worker is gone mid-step. A request it sent runs on.
        let worker = self.workers.remove(pick % self.workers.len());
        if let Some((call, _)) = worker.waiting {
            self.backend.orphans.push(call);
        }
    }

    /// Moves the clock to `target`, letting workers give up at their
    /// deadlines and orphans finish by their leases' ends, in time order.
    fn advance_to(&mut self, target: UnixMs) -> Result<(), TestCaseError> {
        loop {
            let deadline = self
                .workers
                .iter()
                .filter_map(|w| w.waiting.as_ref().map(|(_, d)| *d))
                .min();
            let finish = self.backend.orphans.iter().map(|o| o.finish_by).min();
            let Some(next) = deadline.into_iter().chain(finish).min() else {
                break;
            };
            if next > target {
                break;
            }
            self.now = self.now.max(next);
            if let Some(i) = self
                .backend
                .orphans
                .iter()
                .position(|o| o.finish_by == next)
            {
                // The worst case: it charges, and nobody hears about it.
                let orphan = self.backend.orphans.remove(i);
                let _ = self
                    .backend
                    .run(Outcome::Success, next, self.lag, &orphan.charge);
            } else if let Some(i) = self
                .workers
                .iter()
                .position(|w| w.waiting.as_ref().is_some_and(|(_, d)| *d == next))
            {
                // The worker times out; the request goes on without it.
                let (call, _) = self.workers[i].waiting.take().unwrap();
                self.backend.orphans.push(call);
                let Step::Forward(s) = std::mem::replace(&mut self.workers[i].step, placeholder())
                else {
                    unreachable!("only a forward waits on the backend")
                };
                let after_ms = self.config.backend_timeout.as_millis() as u64;
                self.workers[i].step =
                    s.handle_forward(classify_failure(&TransportFailure::Timeout { after_ms }));
                self.settle_done()?;
            }
        }
        self.now = self.now.max(target);
        Ok(())
    }

    /// Records the first final answer the object stored.
    fn note_stored(&mut self) -> Result<(), TestCaseError> {
        if let Some(done) = self.record.completed() {
            match &self.stored {
                None => self.stored = Some(done.response.clone()),
                Some(first) => prop_assert_eq!(first, &done.response, "the final answer changed"),
            }
        }
        Ok(())
    }

    /// Delivers the replies of finished workers.
    fn settle_done(&mut self) -> Result<(), TestCaseError> {
        let mut i = 0;
        while i < self.workers.len() {
            if let Step::Done(_) = self.workers[i].step {
                let Step::Done(Done { reply, cache }) = self.workers.remove(i).step else {
                    unreachable!()
                };
                if let Some(write) = cache {
                    self.kv = Some(write.completed);
                }
                if let Reply::Stored {
                    response,
                    replayed: true,
                } = &reply
                {
                    // Byte for byte what the browser was first shown.
                    let shown = self.stored.as_ref().map(client_view);
                    prop_assert_eq!(Some(response), shown.as_ref(), "a replay differs");
                }
                self.replies.push(reply);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Arrive {
                other_payload,
                expired,
            } => self.arrive(if other_payload { 2 } else { 1 }, expired)?,
            Op::Advance { ms } => {
                // Each step of time brings a new lookup lag within the window.
                self.lag = Duration::from_millis(ms % (SETTLE_SECS * 1000));
                self.advance_to(self.now.plus(Duration::from_millis(ms)))?;
            }
            Op::Step {
                pick,
                store,
                lookup_fails,
            } => self.step(pick, store, lookup_fails)?,
            Op::Answer { pick, outcome } => self.answer(pick, outcome)?,
            Op::Crash { pick } => self.crash(pick),
            Op::Alarm { lookup_fails } => self.alarm(lookup_fails)?,
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        let charges = self.backend.charges.len();
        prop_assert!(charges <= 1, "the naive backend charged the key twice");
        let running = self.workers.iter().filter(|w| w.waiting.is_some()).count()
            + self.backend.orphans.len();
        prop_assert!(
            running <= 1,
            "two requests for one key running at the backend"
        );
        match self.stored.as_ref().map(|r| r.status) {
            Some(200) => prop_assert_eq!(charges, 1, "a success without a charge"),
            Some(402) => prop_assert_eq!(charges, 0, "declined but charged"),
            Some(410) => prop_assert_eq!(charges, 0, "told 'not charged' while a charge exists"),
            _ => {}
        }
        Ok(())
    }

    /// The client keeps retrying while time passes, the backend recovers and
    /// the alarm runs, until the key has a final answer.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..30 {
            if self.stored.is_some() {
                return Ok(());
            }
            self.arrive(1, false)?;
            for _ in 0..50 {
                if self.workers.is_empty() {
                    break;
                }
                self.step(0, StoreCall::Ok, false)?;
                self.answer(1, Outcome::Success)?;
                self.check()?;
            }
            if self.stored.is_none() {
                let later = self.now.plus(self.policy.lease + self.policy.lookup_settle);
                self.advance_to(later)?;
                self.alarm(false)?;
                self.check()?;
            }
        }
        Err(TestCaseError::fail(
            "no final answer after 30 rounds of retries",
        ))
    }
}

/// Stands in for a step while its I/O is being performed.
fn placeholder() -> Step {
    Step::Done(Done {
        reply: Reply::Problem(chargeonce_protocol::Problem::new(
            chargeonce_protocol::ProblemType::EdgeMisconfigured,
            "placeholder",
        )),
        cache: None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn a_naive_backend_is_charged_at_most_once_and_replays_equal_the_stored_answer(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op)?;
        }
    }

    #[test]
    fn retrying_always_reaches_a_final_answer_with_exactly_one_charge_for_a_success(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op)?;
        }
        world.drain()?;
        let stored = world.stored.clone().unwrap();
        if stored.status == 200 {
            prop_assert_eq!(world.backend.charges.len(), 1);
        }
    }
}

/// Runs every idle worker until it waits on the backend or is done.
fn run_idle(world: &mut World) {
    for _ in 0..20 {
        world.step(0, StoreCall::Ok, false).unwrap();
    }
}

/// The story the soak plays thousands of times: the response to a charge is
/// lost, the retry asks the backend, and the charge it finds is the answer.
#[test]
fn a_lost_response_is_reconciled_not_charged_again() {
    let mut world = World::new();
    world.arrive(1, false).unwrap();
    run_idle(&mut world);
    world.answer(1, Outcome::LostAfterCharge).unwrap();
    run_idle(&mut world);
    assert_eq!(world.backend.charges.len(), 1);
    world.arrive(1, false).unwrap();
    run_idle(&mut world);
    assert!(world.workers.is_empty(), "the retry must not forward");
    assert_eq!(
        world.stored.as_ref(),
        world.backend.charges.first().map(|(c, _)| c)
    );
    world.check().unwrap();
}

/// A worker that crashes after forwarding holds the key for the lease; the
/// object's alarm then reconciles by itself and finds the orphan's charge.
#[test]
fn a_key_abandoned_by_a_crashed_worker_is_reconciled_by_the_alarm() {
    let mut world = World::new();
    world.arrive(1, false).unwrap();
    run_idle(&mut world);
    world.crash(0);
    world.arrive(1, false).unwrap();
    run_idle(&mut world);
    assert!(world.workers.is_empty(), "the retry got a 409");
    let lease_end = world.now.plus(world.policy.lease);
    world.advance_to(lease_end).unwrap();
    assert_eq!(world.backend.charges.len(), 1, "the orphan charged");
    world.alarm(false).unwrap();
    assert_eq!(
        world.stored.as_ref(),
        world.backend.charges.first().map(|(c, _)| c),
        "no client retried, and the key holds its charge"
    );
}

/// A charge the lookup cannot see yet is not taken for "not charged": the
/// key stays unknown until the settle window has passed.
#[test]
fn a_lagging_lookup_is_not_taken_for_no_charge() {
    let mut world = World::new();
    world.lag = Duration::from_secs(SETTLE_SECS - 1);
    world.arrive(1, false).unwrap();
    run_idle(&mut world);
    world.answer(1, Outcome::LostAfterCharge).unwrap();
    run_idle(&mut world);
    world.arrive(1, false).unwrap();
    run_idle(&mut world);
    assert!(
        world.stored.is_none(),
        "nothing conclusive before the window"
    );
    assert!(world.record.is_unknown());
    let later = world.now.plus(Duration::from_secs(SETTLE_SECS));
    world.advance_to(later).unwrap();
    world.alarm(false).unwrap();
    assert_eq!(world.stored.as_ref().map(|r| r.status), Some(200));
    world.check().unwrap();
}
