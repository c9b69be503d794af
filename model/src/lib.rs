//! An exhaustive model check of exactly-once checkout, run on the protocol
//! crate's own code.
//!
//! [`Checkout`] is a [`stateright`] model of one customer placing one order.
//! Nothing of the protocol is copied here: every decision is made by the code
//! the product runs.
//!
//! - **The customer's widget** runs [`Attempt`] with a [`RetryPolicy`]: it
//!   clicks, retries, waits out leases, asks for a fresh order token when
//!   the edge says the old one expired (the token it starts with expires
//!   mid-attempt), reloads (which settles through the status lookup), and
//!   clicks again after a final refusal, with a new key.
//! - **Edge workers**, one per request that reaches the edge (the
//!   widget's, and every duplicate the network makes), each run their
//!   request through the [`flow`] driver, step by step; any can crash at
//!   any step.
//! - **A second device** (in [`Scenario::TwoDevices`]) sends the same
//!   order once, under a key of its own, at any moment the customer may
//!   act.
//! - **The order's object** runs [`OrderRecord`] for every attempt about to
//!   forward, whatever its key; a crash before its one write loses the
//!   change.
//! - **The key's object** runs [`KeyRecord`] for every command and persists
//!   each change in the order [`KeyRecord::writes`] gives, one write at a
//!   time: it may crash between two writes. Its alarm reconciles unknown keys
//!   ([`KeyRecord::begin_check`], [`KeyRecord::handle_lookup`]).
//! - **The backend** is naive (charges every request) or keeps keys as
//!   Stripe does: it saves each answer, 500s included, and replays it under
//!   the key until the key is pruned after its retention. Its lookup lags
//!   behind each charge by up to the edge's settle window. Answers are
//!   classified by [`classify_response`] and [`classify_lookup`].
//! - **The network** may drop or duplicate any message (the forward to the
//!   backend excepted: nothing duplicates a POST on the way to a payment
//!   provider). Requests to the backend (a forward, a lookup) may be late by
//!   up to [`MAX_DELAY_SECS`], and so may an object's answer (a fault).
//!   Every other message is handled before anything else happens: a call to
//!   a key's object and a reply take milliseconds where the backend takes
//!   seconds. Calls from different workers still reach the object in every
//!   order.
//!
//! Time moves in whole seconds. Faults (drops, duplicates, crashes, a
//! backend that answers 503 or whose lookup fails) come from a budget and
//! only before the fault horizon; the checker explores every interleaving up
//! to the horizon. The properties are in [`Checkout::properties`].
//!
//! The assumptions the edge documents are the model's too: the backend
//! finishes any request it received within the lease of the claim that sent
//! it, and its lookup shows a charge within the settle window.

use chargeonce_protocol::backend::{
    classify_failure, classify_lookup, classify_lookup_failure, classify_response, BackendResponse,
    ExpectedCharge,
};
use chargeonce_protocol::flow::{self, Reply, Secrets, StatusHead, StoreFailure};
use chargeonce_protocol::{
    Attempt, AttemptFinding, BackendKind, ClaimToken, CompleteOutcome, Completed, Decision,
    EdgeConfig, EdgeResponse, Exchange, Fingerprint, Found, IdempotencyKey, KeyRecord, KeyStatus,
    Next, OrderAttempt, OrderClaims, OrderDecision, OrderRecord, Peek, Phase, ProblemType,
    RequestHead, RetryPolicy, ScopedKey, Settlement, Step, StoredResponse, TransportFailure,
    UnixMs, Write,
};
use stateright::{Model, Property};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

/// The order-token secret the storefront and the edge share in the model.
const SECRET: &[u8] = b"model-check-order-token-secret-0001";
const CUSTOMER: &str = "cus_model";
const ORDER_REF: &str = "ord_model";
const AMOUNT: u64 = 1_000;
/// A token the page gets when it asks for a fresh one: it outlives the run.
const FOREVER_SECS: u64 = 1_000_000;

/// How long a message may be in flight before it is delivered or lost.
pub const MAX_DELAY_SECS: u64 = 1;

/// The backend the edge is in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Charges every request it runs; the edge relies on nothing of it.
    Naive,
    /// Keeps keys as Stripe does, and the edge relies on that within the
    /// retention.
    KeepsKeys,
}

/// A setting of the world in which the model is checked; each is where
/// some problem would show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// A 2 s lease over a 1 s backend timeout, and keys kept 8 s by a
    /// backend that keeps them.
    Base,
    /// A 4 s lease: long against the widget's 1 s retries, as 30 s is
    /// against the product's.
    LongLease,
    /// The backend's lookup fails for the first 7 s, longer than the 6 s
    /// TTL, and the customer may come back until 9 s. A key unresolved for
    /// its whole TTL may end as a (logged) tombstone here: the design's end
    /// for it until someone asks.
    Outage,
    /// The base world, and the same order sent once from a second device
    /// under a key of its own, at any moment before the customer horizon.
    TwoDevices,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Self; 4] = [Self::Base, Self::LongLease, Self::Outage, Self::TwoDevices];

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::LongLease => "long-lease",
            Self::Outage => "outage",
            Self::TwoDevices => "two-devices",
        }
    }

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The model: one customer, one order (on one device, or two), one backend.
#[derive(Debug, Clone)]
pub struct Checkout {
    /// The backend.
    pub backend: Backend,
    /// The setting.
    pub scenario: Scenario,
    /// How many faults the world may inject.
    pub faults: u8,
    /// No fault happens at or after this second.
    pub fault_horizon: u64,
    /// The customer clicks and reloads only before this second.
    pub customer_horizon: u64,
    /// The backend's lookup fails before this second (an outage, not a
    /// fault of the budget).
    pub lookup_outage_until: u64,
    /// The checker explores up to this second.
    pub horizon: u64,
    /// The edge's settings.
    pub config: EdgeConfig,
    /// The widget's retry policy.
    pub policy: RetryPolicy,
    /// When the page's first order token expires (Unix seconds).
    pub first_token_expires: u64,
    /// Clicks after the first (each after a final refusal or a stop).
    pub extra_clicks: u8,
    /// Page reloads.
    pub reloads: u8,
    /// Whether a second device sends the order once under its own key.
    pub second_device: bool,
}

impl Checkout {
    /// The model with the product's rules at a scale the checker can
    /// exhaust: a 2 s lease (4 s in [`Scenario::LongLease`]) over a 1 s
    /// backend timeout, a 2 s settle window, keys kept 8 s by a backend that
    /// keeps them, answers kept 6 s, and a widget whose time budget outlasts
    /// a lease, the settle window and two backend calls.
    pub fn new(
        backend: Backend,
        scenario: Scenario,
        faults: u8,
        fault_horizon: u64,
        horizon: u64,
    ) -> Self {
        let kind = BackendKind::Stripe;
        let retention = match backend {
            Backend::Naive => Duration::ZERO,
            Backend::KeepsKeys => Duration::from_secs(8),
        };
        let lease = Duration::from_secs(if scenario == Scenario::LongLease {
            4
        } else {
            2
        });
        let config = EdgeConfig {
            backend: kind,
            backend_url: "https://backend.model".into(),
            answer_ttl: Duration::from_secs(6),
            lease,
            backend_timeout: Duration::from_secs(1),
            lookup_settle: Duration::from_secs(2),
            backend_key_retention: retention,
            allowed_origins: Vec::new(),
            dev_simulator_url: None,
            demo_storefront: false,
            max_attempts_per_order: 5,
            // The limits refuse requests before anything is claimed or
            // forwarded; the property test drives them.
            rate_limits: false,
        };
        // The widget's budget outlasts a lease, the settle window and two
        // backend calls, and a second: the longest a key whose answer was
        // lost takes to settle when nothing of the backend's deduplication
        // is relied on.
        let settles_within = config.lease + config.lookup_settle + config.backend_timeout * 2;
        let policy = RetryPolicy {
            base_ms: 1_000,
            cap_ms: 1_000,
            max_retries: 2,
            max_total_ms: chargeonce_protocol::time::millis(settles_within) + 2_000,
            request_timeout_ms: 2_000,
        };
        let (customer_horizon, lookup_outage_until) = match scenario {
            Scenario::Outage => (fault_horizon.max(9), 7),
            _ => (fault_horizon, 0),
        };
        Self {
            backend,
            scenario,
            faults,
            fault_horizon,
            customer_horizon,
            lookup_outage_until,
            horizon,
            config,
            policy,
            first_token_expires: 3,
            extra_clicks: 1,
            reloads: 1,
            second_device: scenario == Scenario::TwoDevices,
        }
    }

    fn secrets(&self) -> Secrets {
        Secrets {
            order_token: Some(SECRET.to_vec()),
            backend: Some("sk_model".into()),
        }
    }
}

/// The key the second device sends the order under (the page's keys count
/// up from 0, one per click).
const SECOND_DEVICE_KEY: u8 = 7;

/// The request the second device sends.
const SECOND_DEVICE_REQ: u8 = 200;

/// The order's object, addressed as a key's is.
const ORDER_OBJECT: u8 = u8::MAX;

/// The key a widget makes for its `n`th attempt.
fn key_name(n: u8) -> String {
    format!("model-attempt-key-{n:04}")
}

fn key_index(name: &str) -> u8 {
    name.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the model makes every key with key_name")
}

fn ms(secs: u64) -> UnixMs {
    UnixMs(secs * 1000)
}

fn order_token(expires_at: u64) -> String {
    OrderClaims {
        order_ref: ORDER_REF.into(),
        amount: AMOUNT,
        currency: "usd".into(),
        customer: CUSTOMER.into(),
        expires_at,
    }
    .sign(SECRET)
}

fn order_body(expires_at: u64) -> Vec<u8> {
    format!(
        r#"{{"amount":{AMOUNT},"currency":"usd","customer":"{CUSTOMER}","order_ref":"{ORDER_REF}","order_token":"{}","payment_method":"pm_card_visa"}}"#,
        order_token(expires_at)
    )
    .into_bytes()
}

/// A command to a key's object, as the edge's shell sends it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Command {
    /// Decide and claim.
    Claim(Fingerprint),
    /// Settle a reconciling claim.
    Settle(ClaimToken, Fingerprint, Found),
    /// Store a final answer.
    Complete(ClaimToken, Fingerprint, StoredResponse),
    /// Give the key back.
    Release(ClaimToken),
    /// End the claim, outcome unknown; whether its forward may have run.
    Abandon(ClaimToken, bool),
    /// A status lookup, or an order's question about its attempt.
    Status,
    /// A look at the key for a request whose order token expired.
    Peek(Fingerprint),
    /// To the order's object: an attempt asks for the order.
    Begin(OrderAttempt),
    /// To the order's object: what the asked attempt's key said, for an
    /// attempt.
    SettleOrder(OrderAttempt, AttemptFinding, OrderAttempt),
}

/// An object's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandResult {
    /// To a claim.
    Decision(Decision),
    /// To a settlement.
    Settlement(Settlement),
    /// To a completion.
    Complete(CompleteOutcome),
    /// To a release or an abandon.
    Held(bool),
    /// To a status lookup.
    Status(KeyStatus),
    /// To a look.
    Peek(Peek),
    /// From the order's object.
    Order(OrderDecision),
}

/// Who asked the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Asker {
    /// A worker, on its `call`th call.
    Worker(u8, u8),
    /// A key's alarm: the key, the claim its check holds, and when the
    /// lookup was sent.
    Alarm(u8, ClaimToken, u64),
}

/// A message on the network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Msg {
    /// The widget's request `req`: an order, or a status lookup.
    Request {
        /// Which request.
        req: u8,
        /// The key's index.
        key: u8,
        /// The status lookup, or the order.
        exchange: Exchange,
        /// When the order token it carries expires.
        token_expires: u64,
    },
    /// The edge's reply to request `req`.
    Reply {
        /// Which request.
        req: u8,
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
        /// `Idempotent-Replayed: true`.
        replayed: bool,
        /// `Retry-After`.
        retry_after_secs: Option<u32>,
        /// `Original-Idempotency-Key`: the order was paid under that key.
        original_key: Option<String>,
    },
    /// A worker's call to a key's object.
    Call {
        /// The worker.
        worker: u8,
        /// The worker's call number.
        call: u8,
        /// The key's index.
        key: u8,
        /// The command.
        command: Command,
    },
    /// The object's answer.
    Answered {
        /// The worker.
        worker: u8,
        /// The call it answers.
        call: u8,
        /// The answer.
        answer: CommandResult,
        /// Whether the network holds it back (a fault): it may then arrive
        /// in the next second.
        late: bool,
    },
    /// A worker's forward to the backend, which the backend finishes by
    /// `finish_by` (the end of the claim's lease) or never runs.
    Forward {
        /// The worker.
        worker: u8,
        /// The worker's call number.
        call: u8,
        /// The key's index.
        key: u8,
        /// The end of the lease it was sent under.
        finish_by: u64,
        /// Whether the backend takes as long as the worker waits: its answer
        /// then comes after the worker's timeout.
        late: bool,
    },
    /// A lookup to the backend.
    Lookup {
        /// Who asks.
        asker: Asker,
        /// The key's index.
        key: u8,
        /// Whether it is held up as long as its asker waits (a fault: to
        /// the asker, a lookup that slow failed).
        late: bool,
    },
    /// The backend's answer to a forward or a lookup.
    Backend {
        /// Who gets it: a worker's call, or an alarm.
        to: Asker,
        /// The status.
        status: u16,
        /// The body.
        body: String,
        /// `Idempotent-Replayed: true`: an answer saved under the key.
        replayed: bool,
    },
}

/// A message and when it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Envelope {
    sent: u64,
    msg: Msg,
}

/// What a worker is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Waiting {
    /// An object's answer to `call`.
    Object { call: u8 },
    /// The backend's answer to `call`, until `timeout_at`.
    Backend { call: u8, timeout_at: u64 },
}

/// One edge worker running one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Worker {
    /// Unique in the run, so a late answer never reaches a later worker.
    id: u8,
    req: u8,
    key: u8,
    step: Step,
    waiting: Waiting,
    calls: u8,
    /// When the object last granted or renewed this worker's claim.
    granted_at: u64,
}

/// A key's Durable Object: what its storage holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Object {
    record: KeyRecord,
    alarm: Option<UnixMs>,
}

/// A charge the backend made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Charge {
    key: u8,
    id: u8,
    /// When its lookup first shows it.
    visible_at: u64,
    /// Whether its key's object ever stored it as the key's answer.
    recorded: bool,
}

/// An answer the backend saved under a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Saved {
    key: u8,
    status: u16,
    body: String,
    at: u64,
}

/// The customer's page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Page {
    attempt: Option<Attempt>,
    /// The request awaited, and when it was sent.
    waiting: Option<(u8, u64, Exchange)>,
    token_expires: u64,
    next_req: u8,
    next_key: u8,
    clicks_left: u8,
    reloads_left: u8,
}

/// The whole world at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct World {
    now: u64,
    page: Page,
    /// The edge's workers, oldest first; a request always finds one (the
    /// platform has plenty).
    workers: Vec<Worker>,
    next_worker: u8,
    objects: Vec<Object>,
    /// The order's object: its record (one write, so nothing to order).
    order: OrderRecord,
    /// The second device's answer, once it has one: status and body.
    second_told: Option<(u16, String)>,
    /// Whether the second device has sent its order.
    second_sent: bool,
    kv: Vec<Option<Completed>>,
    charges: Vec<Charge>,
    saved: Vec<Saved>,
    net: Vec<Envelope>,
    faults_left: u8,
    faults_used: u8,
    /// Forwards the backend may still run late without it counting as a
    /// fault: one, the slow answer problem 2 is about. A backend that times
    /// out again and again is failing.
    slow_left: u8,
    /// Set when the backend charged the order again while an earlier charge
    /// was unrecorded or its recorded answer still kept: a double charge the
    /// contract does not allow. (A charge whose answer was recorded and then
    /// expired after the TTL is forgotten by contract, as Stripe forgets
    /// keys.)
    charged_twice: bool,
}

/// How a backend request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Charged; the lookup shows it at once.
    Charged,
    /// Charged; the lookup shows it only after the whole settle window.
    ChargedLagging,
    /// Declined.
    Declined,
    /// Charged, then a 500 (which a key-keeping backend saves).
    FailedAfterCharge,
    /// 503 before doing anything (a fault).
    Busy,
    /// A lookup that answers what it sees.
    Answers,
    /// A lookup that fails (a fault).
    LookupFails,
    /// An object's answer the network holds back (a fault).
    AnswerLate,
}

/// One step of the world.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// A second passes.
    Tick,
    /// The customer clicks "Place order" again.
    Click,
    /// The customer reloads the page.
    Reload,
    /// The widget's backoff timer fires.
    WidgetTimer,
    /// The widget's request timed out.
    WidgetTimeout,
    /// A message is delivered; `Outcome` for backend requests, and for an
    /// object, the write before which it crashes (a fault).
    Deliver(usize, Option<Outcome>, Option<usize>),
    /// A message is lost (a fault).
    Drop(usize),
    /// A message is delivered twice (a fault).
    Duplicate(usize),
    /// A backend request is held up until its asker's timeout (a fault,
    /// but for one slow forward).
    Delay(usize),
    /// A worker's backend call times out.
    Timeout(u8),
    /// A worker's call to the object fails (a fault).
    CallFails(u8),
    /// A worker crashes (a fault).
    Crash(u8),
    /// A key's alarm fires; the object may crash before a write (a fault).
    Alarm(u8, Option<usize>),
    /// The second device sends the order under its own key.
    SecondDevice,
}

impl World {
    fn send(&mut self, msg: Msg) {
        self.put(Envelope {
            sent: self.now,
            msg,
        });
    }

    fn put(&mut self, envelope: Envelope) {
        self.net.push(envelope);
        // One canonical order, so interleavings that reach the same world
        // are one state.
        self.net.sort_by_key(|e| {
            let mut h = DefaultHasher::new();
            e.hash(&mut h);
            h.finish()
        });
    }

    fn object(&mut self, key: u8) -> &mut Object {
        let i = usize::from(key);
        if self.objects.len() <= i {
            self.objects.resize_with(i + 1, Object::default);
            self.kv.resize(i + 1, None);
        }
        &mut self.objects[i]
    }

    fn spend_fault(&mut self) {
        self.faults_left -= 1;
        self.faults_used += 1;
    }

    /// Persists `after` in `key`'s object, in the record's order, crashing
    /// before write `crash` if asked. `Ok(false)` when it crashed; `Err`
    /// when there is no such write (the action does not exist).
    fn persist(
        &mut self,
        key: u8,
        after: &KeyRecord,
        changed: bool,
        armed: Option<UnixMs>,
        crash: Option<usize>,
    ) -> Result<bool, NoSuchWrite> {
        let writes = after.writes(changed, armed);
        if crash.is_some_and(|i| i >= writes.len()) {
            return Err(NoSuchWrite);
        }
        let object = self.object(key);
        for (i, write) in writes.into_iter().enumerate() {
            if crash == Some(i) {
                return Ok(false);
            }
            match write {
                Write::SetAlarm(at) => object.alarm = Some(at),
                Write::PutRecord => object.record = after.clone(),
                Write::DeleteRecord => object.record = KeyRecord::default(),
                Write::DeleteAlarm => object.alarm = None,
            }
        }
        Ok(true)
    }

    fn charges_under(&self, key: u8) -> impl Iterator<Item = &Charge> {
        self.charges.iter().filter(move |c| c.key == key)
    }

    /// Marks the charges whose keys' objects now store them as answers.
    fn note_recorded(&mut self) {
        for charge in &mut self.charges {
            let answer = self
                .objects
                .get(usize::from(charge.key))
                .and_then(|o| o.record.completed());
            if answer.is_some_and(|done| done.response.body == intent(charge.id, charge.key)) {
                charge.recorded = true;
            }
        }
    }
}

/// A crash before a write that a change does not make: not an action.
#[derive(Debug)]
struct NoSuchWrite;

/// The most writes one change makes ([`KeyRecord::writes`]).
const MAX_WRITES: usize = 2;

/// A claim token no other claim in the run has: the shell draws them at
/// random; here the moment and the caller make them unique.
fn token(now: u64, caller: u16) -> ClaimToken {
    ClaimToken((now << 16) | u64::from(caller))
}

impl Checkout {
    /// What may happen to message `i`.
    fn message_actions(
        &self,
        world: &World,
        i: usize,
        envelope: &Envelope,
        actions: &mut Vec<Action>,
    ) {
        let faults = self.faults_allowed(world);
        match &envelope.msg {
            Msg::Forward { late, .. } => {
                for outcome in self.backend_outcomes(world, true) {
                    actions.push(Action::Deliver(i, outcome, None));
                }
                if !late && (world.slow_left > 0 || faults) {
                    actions.push(Action::Delay(i));
                }
            }
            Msg::Lookup { late, .. } => {
                for outcome in self.backend_outcomes(world, false) {
                    actions.push(Action::Deliver(i, outcome, None));
                }
                if faults && !late {
                    actions.push(Action::Delay(i));
                }
            }
            Msg::Call { .. } => {
                for crash in self.crash_choices(world) {
                    actions.push(Action::Deliver(i, None, crash));
                }
                if faults {
                    actions.push(Action::Deliver(i, Some(Outcome::AnswerLate), None));
                }
            }
            Msg::Backend {
                to: Asker::Alarm(..),
                ..
            } => {
                for crash in self.crash_choices(world) {
                    actions.push(Action::Deliver(i, None, crash));
                }
            }
            _ => actions.push(Action::Deliver(i, None, None)),
        }
        if faults {
            actions.push(Action::Drop(i));
            if !matches!(envelope.msg, Msg::Forward { .. }) {
                actions.push(Action::Duplicate(i));
            }
        }
    }

    fn faults_allowed(&self, world: &World) -> bool {
        world.faults_left > 0 && world.now < self.fault_horizon
    }

    /// Follows the widget's `next` until it waits.
    fn follow(&self, world: &mut World, mut next: Next) {
        loop {
            next = match next {
                Next::Send { key } => return self.request(world, &key, Exchange::Order),
                Next::FetchStatus { key } => return self.request(world, &key, Exchange::Status),
                // The page fetches a fresh token from its server at once.
                Next::NeedToken => {
                    world.page.token_expires = FOREVER_SECS;
                    self.with_attempt(world, |a| a.handle_token(true))
                }
                Next::Wait | Next::WaitForOnline | Next::Stop | Next::Ignore(_) => return,
                Next::HandleAction => {
                    unreachable!("the model's backend asks for no authentication")
                }
            }
        }
    }

    fn request(&self, world: &mut World, key: &str, exchange: Exchange) {
        let req = world.page.next_req;
        world.page.next_req += 1;
        world.page.waiting = Some((req, world.now, exchange));
        let msg = Msg::Request {
            req,
            key: key_index(key),
            exchange,
            token_expires: world.page.token_expires,
        };
        world.send(msg);
    }

    fn with_attempt(&self, world: &mut World, f: impl FnOnce(&mut Attempt) -> Next) -> Next {
        world.page.attempt.as_mut().map_or(Next::Stop, f)
    }

    fn click(&self, world: &mut World) {
        let fresh = world.page.next_key;
        let current = world.page.attempt.take();
        let (attempt, next) = Attempt::submit(current, ORDER_REF, world.now * 1000, true, || {
            key_name(fresh)
        });
        if attempt.key() == key_name(fresh) {
            world.page.next_key += 1;
        }
        world.page.attempt = Some(attempt);
        self.follow(world, next);
    }

    /// A request reaches the edge: a worker starts it, running the flow's
    /// steps that wait on nothing but the Worker itself (the body, KV).
    fn start_worker(&self, world: &mut World, req: u8, key: u8, exchange: Exchange, expires: u64) {
        let now = ms(world.now);
        let name = key_name(key);
        let step = match exchange {
            Exchange::Order => {
                let head = RequestHead {
                    method: "POST",
                    content_type: Some("application/json"),
                    content_length: None,
                    idempotency_key: Some(&name),
                };
                match flow::order(head, None, &self.config, self.secrets()) {
                    Step::ReadBody(s) => s.handle_body(Ok(order_body(expires))),
                    other => other,
                }
            }
            Exchange::Status => {
                let bearer = format!("Bearer {}", order_token(expires));
                let head = StatusHead {
                    idempotency_key: Some(&name),
                    authorization: Some(&bearer),
                    customer: None,
                };
                flow::status(head, None, &self.config, &self.secrets(), now)
            }
        };
        let step = match step {
            Step::ReadCache(s) => {
                world.object(key);
                let hit = world.kv[usize::from(key)].clone();
                s.handle_cached(hit, now)
            }
            other => other,
        };
        let id = world.next_worker;
        world.next_worker += 1;
        let worker = Worker {
            id,
            req,
            key,
            step,
            waiting: Waiting::Object { call: 0 },
            calls: 0,
            granted_at: world.now,
        };
        self.run(world, worker);
    }

    /// Runs a worker's step at once, as the shell does: sends its call, or
    /// replies when done (and the worker ends).
    fn run(&self, world: &mut World, mut worker: Worker) {
        let step = std::mem::replace(&mut worker.step, placeholder());
        worker.calls += 1;
        let call = worker.calls;
        let id = worker.id;
        let key = worker.key;
        let command = match &step {
            Step::Claim(s) => Some(Command::Claim(s.fingerprint().clone())),
            Step::Settle(s) => Some(Command::Settle(
                s.token(),
                s.fingerprint().clone(),
                s.found().clone(),
            )),
            Step::Complete(s) => Some(Command::Complete(
                s.token(),
                s.fingerprint().clone(),
                s.response().clone(),
            )),
            Step::Release(s) => Some(Command::Release(s.token())),
            Step::Abandon(s) => Some(Command::Abandon(s.token(), s.ran())),
            Step::QueryStatus(_) => Some(Command::Status),
            Step::Peek(s) => Some(Command::Peek(s.fingerprint().clone())),
            Step::BeginOrder(s) => Some(Command::Begin(s.attempt())),
            Step::AskAttempt(_) => Some(Command::Status),
            Step::SettleOrder(s) => Some(Command::SettleOrder(
                s.asked().clone(),
                s.found().clone(),
                s.attempt(),
            )),
            _ => None,
        };
        let key = match &step {
            Step::BeginOrder(_) | Step::SettleOrder(_) => ORDER_OBJECT,
            Step::AskAttempt(s) => key_index(&s.asked().key),
            _ => key,
        };
        if let Some(command) = command {
            worker.waiting = Waiting::Object { call };
            worker.step = step;
            world.send(Msg::Call {
                worker: id,
                call,
                key,
                command,
            });
            world.workers.push(worker);
            return;
        }
        match step {
            Step::Lookup(s) => {
                worker.waiting = Waiting::Backend {
                    call,
                    timeout_at: world.now + self.config.backend_timeout.as_secs(),
                };
                worker.step = Step::Lookup(s);
                world.send(Msg::Lookup {
                    asker: Asker::Worker(id, call),
                    key,
                    late: false,
                });
                world.workers.push(worker);
            }
            Step::Forward(s) => {
                worker.waiting = Waiting::Backend {
                    call,
                    timeout_at: world.now + self.config.backend_timeout.as_secs(),
                };
                let finish_by = worker.granted_at + self.config.lease.as_secs();
                worker.step = Step::Forward(s);
                world.send(Msg::Forward {
                    worker: id,
                    call,
                    key,
                    finish_by,
                    late: false,
                });
                world.workers.push(worker);
            }
            Step::Done(done) => {
                if let Some(write) = done.cache {
                    world.object(key);
                    world.kv[usize::from(key)] = Some(write.completed);
                }
                let (status, body, replayed, retry_after_secs, original_key) = match done.reply {
                    Reply::Problem(p) => (p.status(), p.to_json(), false, p.retry_after_secs, None),
                    Reply::Stored { response, replayed } => {
                        (response.status, response.body, replayed, None, None)
                    }
                    Reply::OrderPaid { response, key } => {
                        (response.status, response.body, true, None, Some(key))
                    }
                };
                world.send(Msg::Reply {
                    req: worker.req,
                    status,
                    body,
                    replayed,
                    retry_after_secs,
                    original_key,
                });
            }
            other => unreachable!(
                "the worker ran the body and KV steps at its start, and the model's intents are all settled, so nothing is refreshed: {other:?}"
            ),
        }
    }

    /// A worker hears its call's outcome, and runs its next step at once.
    fn hear(&self, world: &mut World, id: u8, heard: Heard) {
        let Some(i) = world.workers.iter().position(|w| w.id == id) else {
            return;
        };
        let mut worker = world.workers.remove(i);
        let now = ms(world.now);
        let step = std::mem::replace(&mut worker.step, placeholder());
        if matches!(
            heard,
            Heard::Object(Ok(CommandResult::Decision(_) | CommandResult::Settlement(_)))
        ) {
            worker.granted_at = world.now;
        }
        worker.step = match (step, heard) {
            (Step::Claim(s), Heard::Object(r)) => s.handle_claim(
                r.map(|a| match a {
                    CommandResult::Decision(d) => d,
                    other => unreachable!("{other:?}"),
                }),
                now,
            ),
            (Step::Settle(s), Heard::Object(r)) => s.handle_settlement(
                r.map(|a| match a {
                    CommandResult::Settlement(d) => d,
                    other => unreachable!("{other:?}"),
                }),
                now,
            ),
            (Step::Complete(s), Heard::Object(r)) => s.handle_complete(
                r.map(|a| match a {
                    CommandResult::Complete(d) => d,
                    other => unreachable!("{other:?}"),
                }),
                now,
            ),
            (Step::Release(s), Heard::Object(r)) => s.handle_release(r.map(|a| match a {
                CommandResult::Held(b) => b,
                other => unreachable!("{other:?}"),
            })),
            (Step::Abandon(s), Heard::Object(r)) => s.handle_abandon(r.map(|a| match a {
                CommandResult::Held(b) => b,
                other => unreachable!("{other:?}"),
            })),
            (Step::Peek(s), Heard::Object(r)) => s.handle_peek(r.map(|a| match a {
                CommandResult::Peek(p) => p,
                other => unreachable!("{other:?}"),
            })),
            (Step::QueryStatus(s), Heard::Object(r)) => s.handle_status(r.map(|a| match a {
                CommandResult::Status(d) => d,
                other => unreachable!("{other:?}"),
            })),
            (Step::BeginOrder(s), Heard::Object(r)) => s.handle_begin(
                r.map(|a| match a {
                    CommandResult::Order(d) => d,
                    other => unreachable!("{other:?}"),
                }),
                now,
            ),
            (Step::AskAttempt(s), Heard::Object(r)) => s.handle_status(r.map(|a| match a {
                CommandResult::Status(d) => d,
                other => unreachable!("{other:?}"),
            })),
            (Step::SettleOrder(s), Heard::Object(r)) => s.handle_settled(
                r.map(|a| match a {
                    CommandResult::Order(d) => d,
                    other => unreachable!("{other:?}"),
                }),
                now,
            ),
            (Step::Lookup(s), Heard::Backend(r)) => {
                let expected = s.expected();
                let outcome = match r {
                    Some(answer) => classify_lookup(answer.status, &answer.body, &expected).outcome,
                    None => classify_lookup_failure(&TransportFailure::Timeout { after_ms: 1_000 }),
                };
                s.handle_lookup(outcome, now)
            }
            (Step::Forward(s), Heard::Backend(r)) => {
                let outcome = match r {
                    Some(answer) => classify_response(answer),
                    None => classify_failure(&TransportFailure::Timeout { after_ms: 1_000 }),
                };
                s.handle_forward(outcome)
            }
            (step, heard) => unreachable!("{heard:?} for {step:?}"),
        };
        self.run(world, worker);
    }

    /// A worker's call to an object failed.
    fn call_failed(&self, world: &mut World, worker: u8, call: u8) {
        if world
            .workers
            .iter()
            .any(|w| w.id == worker && w.waiting == Waiting::Object { call })
        {
            let failure = StoreFailure("the object failed".into());
            self.hear(world, worker, Heard::Object(Err(failure)));
        }
    }

    /// A key's object handles a worker's command. `Ok(None)` when it
    /// crashed before answering.
    fn handle(
        &self,
        world: &mut World,
        caller: (u8, u8),
        key: u8,
        command: Command,
        crash: Option<usize>,
    ) -> Result<Option<CommandResult>, NoSuchWrite> {
        let policy = self.config.key_policy();
        let now = ms(world.now);
        if key == ORDER_OBJECT {
            let policy = self.config.order_policy();
            let mut order = world.order.clone();
            let decision = match command {
                Command::Begin(attempt) => order.begin(&attempt, now, &policy),
                Command::SettleOrder(asked, found, attempt) => {
                    order.settle(&asked, found, &attempt, now, &policy)
                }
                other => unreachable!("{other:?} to the order's object"),
            };
            // One write: a crash before it changes nothing.
            let writes = usize::from(order != world.order);
            return match crash {
                Some(i) if i >= writes => Err(NoSuchWrite),
                Some(_) => Ok(None),
                None => {
                    world.order = order;
                    Ok(Some(CommandResult::Order(decision)))
                }
            };
        }
        let fresh = token(world.now, (u16::from(caller.0) << 8) | u16::from(caller.1));
        let before = world.object(key).record.clone();
        if let Command::Peek(fp) = &command {
            // Read only, as the shell: nothing is written, so nothing can
            // crash between writes.
            let peeked = before.peek(fp, now, &policy);
            return match crash {
                Some(_) => Err(NoSuchWrite),
                None => Ok(Some(CommandResult::Peek(peeked))),
            };
        }
        let mut record = before.clone();
        let _ = record.handle_timeout(now, &policy);
        let answer = match command {
            Command::Claim(fp) => CommandResult::Decision(record.claim(&fp, now, fresh, &policy)),
            Command::Settle(token, fp, found) => {
                CommandResult::Settlement(record.handle_lookup(token, &fp, found, now, &policy))
            }
            Command::Complete(token, fp, response) => {
                CommandResult::Complete(record.complete(token, &fp, response, now, &policy))
            }
            Command::Release(token) => CommandResult::Held(record.release(token, now, &policy)),
            Command::Abandon(token, ran) => {
                CommandResult::Held(record.abandon(token, ran, now, &policy))
            }
            Command::Status => CommandResult::Status(record.status(now, &policy)),
            other => unreachable!("{other:?} to a key's object"),
        };
        let changed = record != before;
        Ok(world
            .persist(key, &record, changed, before.poll_timeout(), crash)?
            .then_some(answer))
    }

    fn crash_choices(&self, world: &World) -> Vec<Option<usize>> {
        let mut choices = vec![None];
        if self.faults_allowed(world) {
            choices.extend((0..MAX_WRITES).map(Some));
        }
        choices
    }

    fn backend_outcomes(&self, world: &World, forward: bool) -> Vec<Option<Outcome>> {
        let mut outcomes = if forward {
            vec![
                Outcome::Charged,
                Outcome::ChargedLagging,
                Outcome::Declined,
                Outcome::FailedAfterCharge,
            ]
        } else {
            vec![Outcome::Answers]
        };
        if self.faults_allowed(world) {
            outcomes.push(if forward {
                Outcome::Busy
            } else {
                Outcome::LookupFails
            });
        }
        outcomes.into_iter().map(Some).collect()
    }

    /// The backend runs a forward under `key`.
    fn execute(&self, world: &mut World, key: u8, outcome: Outcome) -> (u16, String, bool) {
        let retention = self.config.backend_key_retention.as_secs();
        if self.backend == Backend::KeepsKeys {
            world.saved.retain(|s| world.now < s.at + retention);
            if let Some(saved) = world.saved.iter().find(|s| s.key == key) {
                return (saved.status, saved.body.clone(), true);
            }
        }
        let charge = |world: &mut World, lag: u64| {
            let id = u8::try_from(world.charges.len()).expect("few charges");
            let forgotten_by_contract = |c: &Charge| {
                c.recorded
                    && world
                        .objects
                        .get(usize::from(c.key))
                        .is_none_or(|o| o.record.is_vacant())
            };
            if !world.charges.iter().all(forgotten_by_contract) {
                world.charged_twice = true;
            }
            world.charges.push(Charge {
                key,
                id,
                visible_at: world.now + lag,
                recorded: false,
            });
            id
        };
        let settle = self.config.lookup_settle.as_secs();
        let (status, body, saved) = match outcome {
            Outcome::Charged | Outcome::ChargedLagging => {
                let lag = if outcome == Outcome::Charged {
                    0
                } else {
                    settle
                };
                let id = charge(world, lag);
                (200, intent(id, key), true)
            }
            Outcome::Declined => (
                402,
                r#"{"error":{"type":"card_error","code":"card_declined"}}"#.to_owned(),
                true,
            ),
            Outcome::FailedAfterCharge => {
                charge(world, settle);
                (500, r#"{"error":{"type":"api_error"}}"#.to_owned(), true)
            }
            // Nothing ran, so nothing is saved (Stripe saves an answer only
            // once the endpoint began to run).
            Outcome::Busy => (503, r#"{"error":{"type":"api_error"}}"#.to_owned(), false),
            Outcome::Answers | Outcome::LookupFails | Outcome::AnswerLate => {
                unreachable!("a forward's outcome")
            }
        };
        if saved && self.backend == Backend::KeepsKeys {
            world.saved.push(Saved {
                key,
                status,
                body: body.clone(),
                at: world.now,
            });
        }
        (status, body, false)
    }

    fn lookup(&self, world: &mut World, key: u8, outcome: Outcome) -> (u16, String) {
        if world.now < self.lookup_outage_until {
            // Not from the budget, but a customer who met it met a fault.
            world.faults_used += 1;
            return (503, String::new());
        }
        if outcome == Outcome::LookupFails {
            return (503, String::new());
        }
        let found: Vec<String> = world
            .charges_under(key)
            .filter(|c| c.visible_at <= world.now)
            .map(|c| intent(c.id, c.key))
            .collect();
        (200, format!(r#"{{"data":[{}]}}"#, found.join(",")))
    }

    fn deliver(
        &self,
        world: &mut World,
        envelope: Envelope,
        outcome: Option<Outcome>,
        crash: Option<usize>,
    ) -> Result<(), NoSuchWrite> {
        match envelope.msg {
            Msg::Request {
                req,
                key,
                exchange,
                token_expires,
            } => self.start_worker(world, req, key, exchange, token_expires),
            Msg::Reply {
                req,
                status,
                body,
                replayed,
                retry_after_secs,
                original_key,
            } => {
                if req == SECOND_DEVICE_REQ {
                    world.second_told = Some((status, body));
                    return Ok(());
                }
                let Some((awaited, _, exchange)) = world.page.waiting else {
                    return Ok(());
                };
                if awaited != req {
                    return Ok(());
                }
                world.page.waiting = None;
                let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
                let member = |name| parsed.as_ref().and_then(|v| v[name].as_str());
                let response = EdgeResponse {
                    status,
                    body: &body,
                    message: None,
                    problem: member("type").and_then(ProblemType::from_uri),
                    replayed,
                    retry_after_secs: retry_after_secs.map(u64::from),
                    payment_status: member("status"),
                    original_key: original_key.as_deref(),
                };
                let now = world.now * 1000;
                let policy = self.policy;
                let next = self.with_attempt(world, |a| match exchange {
                    Exchange::Order => a.handle_response(&response, now, 0.0, &policy),
                    Exchange::Status => a.handle_status(&response, now, 0.0, &policy, true),
                });
                self.follow(world, next);
            }
            Msg::Call {
                worker,
                call,
                key,
                command,
            } => {
                match self.handle(world, (worker, call), key, command, crash)? {
                    Some(answer) => world.send(Msg::Answered {
                        worker,
                        call,
                        answer,
                        late: outcome == Some(Outcome::AnswerLate),
                    }),
                    // The runtime tells the caller its object failed.
                    None => self.call_failed(world, worker, call),
                }
            }
            Msg::Answered {
                worker,
                call,
                answer,
                ..
            } => {
                if world
                    .workers
                    .iter()
                    .any(|w| w.id == worker && w.waiting == Waiting::Object { call })
                {
                    self.hear(world, worker, Heard::Object(Ok(answer)));
                }
            }
            Msg::Forward {
                worker, call, key, ..
            } => {
                let (status, body, replayed) =
                    self.execute(world, key, outcome.expect("a forward has an outcome"));
                world.send(Msg::Backend {
                    to: Asker::Worker(worker, call),
                    status,
                    body,
                    replayed,
                });
            }
            Msg::Lookup { asker, key, .. } => {
                let (status, body) =
                    self.lookup(world, key, outcome.expect("a lookup has an outcome"));
                world.send(Msg::Backend {
                    to: asker,
                    status,
                    body,
                    replayed: false,
                });
            }
            Msg::Backend {
                to,
                status,
                body,
                replayed,
            } => match to {
                Asker::Worker(worker, call) => {
                    if world.workers.iter().any(|w| {
                        w.id == worker
                            && matches!(w.waiting, Waiting::Backend { call: c, .. } if c == call)
                    }) {
                        let answer = BackendResponse {
                            replayed,
                            ..BackendResponse::new(status, body)
                        };
                        self.hear(world, worker, Heard::Backend(Some(answer)));
                    }
                }
                Asker::Alarm(key, token, sent) => {
                    self.settle_check(world, key, token, sent, status, &body, crash)?;
                }
            },
        }
        Ok(())
    }

    /// The alarm's lookup answered: the object settles its check, as the
    /// shell's alarm handler does after its lookup.
    #[allow(clippy::too_many_arguments)]
    fn settle_check(
        &self,
        world: &mut World,
        key: u8,
        token: ClaimToken,
        sent: u64,
        status: u16,
        body: &str,
        crash: Option<usize>,
    ) -> Result<(), NoSuchWrite> {
        let policy = self.config.key_policy();
        let before = world.object(key).record.clone();
        let Some(fingerprint) = before.fingerprint().cloned() else {
            return Ok(());
        };
        let mut record = before.clone();
        // Looked up when the check began, as the shell records it.
        let (found, _) = classify_lookup(status, body.as_bytes(), &expected(key))
            .outcome
            .found(ms(sent));
        let _ = record.handle_lookup(token, &fingerprint, found, ms(world.now), &policy);
        world.persist(key, &record, true, before.poll_timeout(), crash)?;
        Ok(())
    }

    fn alarm(&self, world: &mut World, key: u8, crash: Option<usize>) -> Result<(), NoSuchWrite> {
        let policy = self.config.key_policy();
        let now = ms(world.now);
        let fresh = token(world.now, 0xFF00 | u16::from(key));
        let before = world.object(key).record.clone();
        let mut record = before.clone();
        let _ = record.handle_timeout(now, &policy);
        let check = record.begin_check(now, fresh, &policy);
        // The alarm that woke the object is spent, unless the handler fails:
        // the platform then runs it again.
        let armed = world.object(key).alarm.take();
        let complete = world.persist(key, &record, record != before, None, crash)?;
        if !complete {
            world.object(key).alarm = armed;
        }
        if let (true, Some(token)) = (complete, check) {
            world.send(Msg::Lookup {
                asker: Asker::Alarm(key, token, world.now),
                key,
                late: false,
            });
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Heard {
    Object(Result<CommandResult, StoreFailure>),
    Backend(Option<BackendResponse>),
}

/// Stands in for a worker's step while the step is being run.
fn placeholder() -> Step {
    Step::Done(flow::Done {
        reply: Reply::Problem(chargeonce_protocol::Problem::new(
            ProblemType::EdgeMisconfigured,
            "",
        )),
        cache: None,
    })
}

/// The charge `id` made under `key`, as the backend answers and lists it:
/// with the members a lookup checks ([`ExpectedCharge`]), in the order
/// serde_json writes them, so a lookup's copy is the forward's bytes.
fn intent(id: u8, key: u8) -> String {
    format!(
        r#"{{"amount":{AMOUNT},"id":"pi_{id}","metadata":{{"chargeonce_key":"{}","order_ref":"{ORDER_REF}"}},"object":"payment_intent","status":"succeeded"}}"#,
        backend_key(key)
    )
}

/// The key the backend knows for `key` ([`ScopedKey::backend_key`]),
/// worked out once per key: a property reads it in every state.
fn backend_key(key: u8) -> &'static str {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    &KEYS.get_or_init(|| {
        (0..=u8::MAX)
            .map(|n| {
                let name = key_name(n);
                let parsed = IdempotencyKey::parse(Some(&name)).expect("key_name makes valid keys");
                ScopedKey::new(Some(CUSTOMER), parsed).backend_key()
            })
            .collect()
    })[usize::from(key)]
}

/// What a lookup under `key` must find: the object keeps it at the claim.
fn expected(key: u8) -> ExpectedCharge {
    ExpectedCharge {
        backend_key: backend_key(key).to_owned(),
        order: Some((AMOUNT, ORDER_REF.to_owned())),
    }
}

impl Model for Checkout {
    type State = World;
    type Action = Action;

    fn init_states(&self) -> Vec<World> {
        let mut world = World {
            now: 0,
            page: Page {
                attempt: None,
                waiting: None,
                token_expires: self.first_token_expires,
                next_req: 0,
                next_key: 0,
                clicks_left: self.extra_clicks,
                reloads_left: self.reloads,
            },
            workers: Vec::new(),
            next_worker: 0,
            objects: Vec::new(),
            order: OrderRecord::default(),
            second_told: None,
            second_sent: false,
            kv: Vec::new(),
            charges: Vec::new(),
            saved: Vec::new(),
            net: Vec::new(),
            faults_left: self.faults,
            faults_used: 0,
            slow_left: 1,
            charged_twice: false,
        };
        self.click(&mut world);
        vec![world]
    }

    fn actions(&self, world: &World, actions: &mut Vec<Action>) {
        let faults = self.faults_allowed(world);
        // Messages that are handled before anything else happens.
        let urgent = |e: &Envelope| match &e.msg {
            Msg::Answered { late, .. } | Msg::Lookup { late, .. } | Msg::Forward { late, .. } => {
                !late
            }
            _ => true,
        };
        if world.net.iter().any(urgent) {
            for (i, envelope) in world.net.iter().enumerate() {
                if urgent(envelope) {
                    self.message_actions(world, i, envelope, actions);
                }
            }
            return;
        }
        let customer = world.now < self.customer_horizon;
        // Time moves on only once every message due has been delivered or
        // lost, every forward has been run or lost by its lease's end, and
        // everything on a timer (the widget, a worker's timeout, an alarm)
        // has acted.
        let now_ms = ms(world.now);
        let overdue = world.net.iter().any(|e| {
            e.sent + MAX_DELAY_SECS <= world.now
                || matches!(e.msg, Msg::Forward { finish_by, .. } if finish_by <= world.now)
        }) || world.workers.iter().any(
            |w| matches!(w.waiting, Waiting::Backend { timeout_at, .. } if timeout_at <= world.now),
        ) || world
            .page
            .attempt
            .as_ref()
            .is_some_and(|a| a.poll_timeout().is_some_and(|at| at <= now_ms.0))
            || world.page.waiting.is_some_and(|(_, sent, _)| {
                sent * 1000 + self.policy.request_timeout_ms <= now_ms.0
            })
            || world
                .objects
                .iter()
                .any(|o| o.alarm.is_some_and(|at| at <= now_ms));
        if !overdue {
            actions.push(Action::Tick);
        }
        let page = &world.page;
        if let Some(attempt) = &page.attempt {
            // The customer clicks again once the attempt has stopped without
            // an order, and reloads while a request is out (the case that
            // leaves an outcome unknown).
            if customer
                && page.clicks_left > 0
                && matches!(
                    attempt.phase(),
                    Phase::Refused { .. } | Phase::Unconfirmed | Phase::OtherDevice
                )
            {
                actions.push(Action::Click);
            }
            if customer && page.reloads_left > 0 && page.waiting.is_some() {
                actions.push(Action::Reload);
            }
            if customer && self.second_device && !world.second_sent {
                actions.push(Action::SecondDevice);
            }
            if attempt.poll_timeout().is_some_and(|at| at <= now_ms.0) {
                actions.push(Action::WidgetTimer);
            }
        }
        if let Some((_, sent, _)) = page.waiting {
            if sent * 1000 + self.policy.request_timeout_ms <= now_ms.0 {
                actions.push(Action::WidgetTimeout);
            }
        }
        for (i, envelope) in world.net.iter().enumerate() {
            self.message_actions(world, i, envelope, actions);
        }
        for worker in &world.workers {
            let id = worker.id;
            match worker.waiting {
                Waiting::Backend { timeout_at, .. } if timeout_at <= world.now => {
                    actions.push(Action::Timeout(id));
                }
                Waiting::Object { .. } if faults => actions.push(Action::CallFails(id)),
                _ => {}
            }
            if faults {
                actions.push(Action::Crash(id));
            }
        }
        for (key, object) in world.objects.iter().enumerate() {
            if object.alarm.is_some_and(|at| at <= now_ms) {
                let key = u8::try_from(key).expect("few keys");
                for crash in self.crash_choices(world) {
                    actions.push(Action::Alarm(key, crash));
                }
            }
        }
    }

    fn next_state(&self, last: &World, action: Action) -> Option<World> {
        let mut world = last.clone();
        match action {
            Action::Tick => world.now += 1,
            Action::Click => {
                world.page.clicks_left -= 1;
                self.click(&mut world);
            }
            Action::Reload => {
                world.page.reloads_left -= 1;
                world.page.waiting = None;
                let now = world.now * 1000;
                let next = self.with_attempt(&mut world, |a| a.resume(now, true));
                self.follow(&mut world, next);
            }
            Action::WidgetTimer => {
                let now = world.now * 1000;
                let next = self.with_attempt(&mut world, |a| a.handle_timeout(now, true));
                self.follow(&mut world, next);
            }
            Action::WidgetTimeout => {
                world.page.waiting = None;
                let (now, policy) = (world.now * 1000, self.policy);
                let next = self.with_attempt(&mut world, |a| {
                    a.handle_transport_failure(now, true, 0.0, &policy)
                });
                self.follow(&mut world, next);
            }
            Action::Deliver(i, outcome, crash) => {
                let envelope = world.net.remove(i);
                if crash.is_some()
                    || matches!(
                        outcome,
                        Some(Outcome::Busy | Outcome::LookupFails | Outcome::AnswerLate)
                    )
                {
                    world.spend_fault();
                }
                self.deliver(&mut world, envelope, outcome, crash).ok()?;
            }
            Action::Drop(i) => {
                world.spend_fault();
                // A call to an object, or its answer, lost: the caller's
                // fetch fails. Anything else lost is met by a timeout.
                match world.net.remove(i).msg {
                    Msg::Call { worker, call, .. } | Msg::Answered { worker, call, .. } => {
                        self.call_failed(&mut world, worker, call);
                    }
                    _ => {}
                }
            }
            Action::Duplicate(i) => {
                world.spend_fault();
                let copy = world.net[i].msg.clone();
                world.send(copy);
            }
            Action::Delay(i) => {
                let mut envelope = world.net.remove(i);
                match &mut envelope.msg {
                    Msg::Forward { late, .. } if world.slow_left > 0 => {
                        world.slow_left -= 1;
                        *late = true;
                    }
                    Msg::Forward { late, .. } | Msg::Lookup { late, .. } => {
                        world.spend_fault();
                        *late = true;
                    }
                    _ => unreachable!("only backend requests are held up"),
                }
                // It keeps its sending time, so it is due in the next second.
                world.put(envelope);
            }
            Action::Timeout(id) => self.hear(&mut world, id, Heard::Backend(None)),
            Action::CallFails(id) => {
                world.spend_fault();
                let failure = StoreFailure("the object did not answer".into());
                self.hear(&mut world, id, Heard::Object(Err(failure)));
            }
            Action::Crash(id) => {
                world.spend_fault();
                world.workers.retain(|w| w.id != id);
            }
            Action::Alarm(key, crash) => {
                if crash.is_some() {
                    world.spend_fault();
                }
                self.alarm(&mut world, key, crash).ok()?;
            }
            Action::SecondDevice => {
                world.second_sent = true;
                world.send(Msg::Request {
                    req: SECOND_DEVICE_REQ,
                    key: SECOND_DEVICE_KEY,
                    exchange: Exchange::Order,
                    token_expires: FOREVER_SECS,
                });
            }
        }
        world.note_recorded();
        Some(world)
    }

    fn within_boundary(&self, world: &World) -> bool {
        world.now <= self.horizon
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "one order is charged at most once",
                |_: &Checkout, w: &World| !w.charged_twice,
            ),
            Property::always(
                "a customer told 'placed' was charged, with that charge",
                |_: &Checkout, w: &World| match w.page.attempt.as_ref().map(Attempt::phase) {
                    Some(Phase::Placed { body, .. }) => {
                        w.charges.iter().any(|c| *body == intent(c.id, c.key))
                    }
                    _ => true,
                },
            ),
            Property::always(
                "a second device told 'paid' was told of the order's charge",
                |_: &Checkout, w: &World| match &w.second_told {
                    Some((200, body)) => w.charges.iter().any(|c| *body == intent(c.id, c.key)),
                    _ => true,
                },
            ),
            Property::always(
                "no key is finally 'not charged' while it has a charge",
                |_: &Checkout, w: &World| {
                    let refused_with_charge = w.objects.iter().enumerate().any(|(key, o)| {
                        o.record.completed().is_some_and(|done| {
                            done.response.status == 410
                                && w.charges.iter().any(|c| usize::from(c.key) == key)
                        })
                    });
                    let told_with_charge = match w.page.attempt.as_ref() {
                        Some(a) => {
                            matches!(a.phase(), Phase::Refused { .. })
                                && w.charges_under(key_index(a.key())).next().is_some()
                        }
                        None => false,
                    };
                    !refused_with_charge && !told_with_charge
                },
            ),
            Property::always(
                "a key is forwarded by one worker at a time",
                |_: &Checkout, w: &World| {
                    let mut keys: Vec<u8> = w
                        .net
                        .iter()
                        .filter_map(|e| match e.msg {
                            Msg::Forward { key, .. } => Some(key),
                            _ => None,
                        })
                        .collect();
                    let forwards = keys.len();
                    keys.sort_unstable();
                    keys.dedup();
                    keys.len() == forwards
                },
            ),
            Property::always(
                "a customer who met no fault is told the outcome",
                |_: &Checkout, w: &World| {
                    w.faults_used > 0
                        || !matches!(
                            w.page.attempt.as_ref().map(Attempt::phase),
                            Some(Phase::Unconfirmed)
                        )
                },
            ),
            Property::eventually(
                "every key settles, and every charge is its key's answer",
                |model: &Checkout, w: &World| {
                    w.now >= model.fault_horizon.max(model.customer_horizon)
                        && settled(w, model.scenario == Scenario::Outage)
                },
            ),
            Property::sometimes(
                "a second device is told of the order paid on the first",
                |model: &Checkout, w: &World| {
                    !model.second_device
                        || matches!(&w.second_told, Some((200, body))
                            if w.charges.iter().any(|c| c.key != SECOND_DEVICE_KEY && *body == intent(c.id, c.key)))
                },
            ),
            Property::sometimes(
                "a second device waits while the first attempt is in progress",
                |model: &Checkout, w: &World| {
                    !model.second_device
                        || matches!(&w.second_told, Some((409, body)) if body.contains("order-in-progress"))
                },
            ),
            Property::sometimes("an order is placed", |_: &Checkout, w: &World| {
                matches!(
                    w.page.attempt.as_ref().map(Attempt::phase),
                    Some(Phase::Placed { .. })
                )
            }),
            Property::sometimes(
                "a key's alarm settles it with a charge",
                |_: &Checkout, w: &World| {
                    w.objects.iter().any(|o| {
                        o.record
                            .completed()
                            .is_some_and(|d| d.response.status == 200)
                    }) && w.workers.is_empty()
                        && w.page
                            .attempt
                            .as_ref()
                            .is_some_and(|a| matches!(a.phase(), Phase::Unconfirmed))
                },
            ),
            Property::sometimes(
                "an expired token is refreshed and the order placed",
                |_: &Checkout, w: &World| {
                    w.page.token_expires == FOREVER_SECS
                        && matches!(
                            w.page.attempt.as_ref().map(Attempt::phase),
                            Some(Phase::Placed { .. })
                        )
                },
            ),
        ]
    }
}

/// Nothing is in flight, no worker runs, the widget is idle, every key is
/// final or free (or, where `tombstones` are an end, given up on), and every
/// charge is its key's stored answer or its given-up key's. Past the fault
/// and customer horizons nothing can disturb such a world again.
fn settled(w: &World, tombstones: bool) -> bool {
    let given_up = |o: &Object| tombstones && o.record.is_tombstone();
    w.net.is_empty()
        && w.workers.is_empty()
        && w.page.waiting.is_none()
        && !w.page.attempt.as_ref().is_some_and(Attempt::is_busy)
        && w.objects
            .iter()
            .all(|o| o.record.is_vacant() || o.record.completed().is_some() || given_up(o))
        && w.charges.iter().all(|c| {
            w.objects.get(usize::from(c.key)).is_some_and(|o| {
                given_up(o)
                    || o.record
                        .completed()
                        .is_some_and(|d| d.response.body == intent(c.id, c.key))
                    // Recorded, then forgotten after the TTL, by contract.
                    || (c.recorded && o.record.is_vacant())
            })
        })
}

/// How a run of the checker went.
#[derive(Debug)]
pub struct Report {
    /// The model's backend.
    pub backend: Backend,
    /// Distinct states explored.
    pub states: usize,
    /// The longest path explored.
    pub max_depth: usize,
    /// Each property the checker found a counterexample to (or, for a
    /// `sometimes` property, found no example of), with the path.
    pub failures: Vec<(&'static str, String, usize)>,
    /// How long it took.
    pub elapsed: std::time::Duration,
}

/// Checks `model` exhaustively (breadth first, on `threads` threads), or
/// until the first property fails when `stop_at_first_failure` (the
/// mutation runs: breadth first, that failure's trace is a shortest one).
pub fn check(model: Checkout, threads: usize, stop_at_first_failure: bool) -> Report {
    use stateright::{Checker, HasDiscoveries};
    let started = std::time::Instant::now();
    let backend = model.backend;
    let properties = model.properties();
    let mut builder = model.checker().threads(threads);
    if stop_at_first_failure {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let checker = builder.spawn_bfs().join();
    let mut failures = Vec::new();
    for property in &properties {
        let found = checker.discovery(property.name);
        let failed = match property.expectation {
            // Stopped early, the checker may not have reached an example.
            stateright::Expectation::Sometimes => found.is_none() && !stop_at_first_failure,
            _ => found.is_some(),
        };
        if failed {
            let (trace, steps) = match found {
                Some(path) => {
                    let steps = path.clone().into_actions().len();
                    (format_trace(checker.model(), path), steps)
                }
                None => ("no example was found".to_owned(), 0),
            };
            failures.push((property.name, trace, steps));
        }
    }
    Report {
        backend,
        states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        failures,
        elapsed: started.elapsed(),
    }
}

/// A counterexample, one line per step, with the second it happened in.
fn format_trace(model: &Checkout, path: stateright::Path<World, Action>) -> String {
    let mut lines = Vec::new();
    for (state, action) in path.into_vec() {
        if let Some(action) = action {
            lines.push(format!(
                "  t={}s {}",
                state.now,
                describe(model, &state, &action)
            ));
        }
    }
    lines.join("\n")
}

/// What an action does, in the words of the world it acts on.
fn describe(_model: &Checkout, world: &World, action: &Action) -> String {
    let (i, what, outcome, crash) = match action {
        Action::Deliver(i, outcome, crash) => (*i, "delivered", *outcome, *crash),
        Action::Drop(i) => (*i, "lost", None, None),
        Action::Duplicate(i) => (*i, "duplicated", None, None),
        Action::Delay(i) => (*i, "held up", None, None),
        Action::Alarm(key, crash) => {
            return format!(
                "the alarm of key {key} fires{}",
                crash.map_or(String::new(), |c| format!(
                    " (the object crashes before write {c})"
                ))
            )
        }
        other => return format!("{other:?}"),
    };
    let Some(envelope) = world.net.get(i) else {
        return format!("{action:?}");
    };
    let mut line = format!("{what}: {}", summarize(&envelope.msg));
    if let Some(outcome) = outcome {
        line.push_str(&format!(" -> {outcome:?}"));
    }
    if let Some(crash) = crash {
        line.push_str(&format!(" (the object crashes before write {crash})"));
    }
    line
}

fn summarize(msg: &Msg) -> String {
    match msg {
        Msg::Request {
            req,
            key,
            exchange,
            token_expires,
        } => {
            format!("widget request {req} ({exchange:?}, key {key}, token until {token_expires}s)")
        }
        Msg::Reply {
            req,
            status,
            replayed,
            ..
        } => {
            format!(
                "reply {status}{} to widget request {req}",
                if *replayed { " (replayed)" } else { "" }
            )
        }
        Msg::Call {
            worker,
            key,
            command,
            ..
        } => {
            let command = match command {
                Command::Claim(_) => "claim".to_owned(),
                Command::Settle(t, _, found) => format!("settle claim {} with {found:?}", t.0),
                Command::Complete(t, _, r) => format!("complete claim {} with {}", t.0, r.status),
                Command::Release(t) => format!("release claim {}", t.0),
                Command::Abandon(t, ran) => format!(
                    "abandon claim {}{}",
                    t.0,
                    if *ran {
                        ""
                    } else {
                        " (its forward was answered by a replay)"
                    }
                ),
                Command::Status => "status".to_owned(),
                Command::Peek(_) => "peek (the order token expired)".to_owned(),
                Command::Begin(a) => format!("begin the order for key {}", a.key),
                Command::SettleOrder(asked, found, a) => format!(
                    "settle the order's attempt under key {} with {found:?}, for key {}",
                    asked.key, a.key
                ),
            };
            if *key == ORDER_OBJECT {
                return format!("worker {worker} -> the order's object: {command}");
            }
            format!("worker {worker} -> object {key}: {command}")
        }
        Msg::Answered { worker, answer, .. } => format!("object -> worker {worker}: {answer:?}"),
        Msg::Forward {
            worker,
            key,
            finish_by,
            ..
        } => {
            format!("worker {worker} forwards key {key} (the backend finishes by {finish_by}s)")
        }
        Msg::Lookup { asker, key, late } => format!(
            "{asker:?} looks up key {key}{}",
            if *late { " (held up)" } else { "" }
        ),
        Msg::Backend {
            to,
            status,
            body,
            replayed,
        } => format!(
            "backend -> {to:?}: {status} {body}{}",
            if *replayed { " (replayed)" } else { "" }
        ),
    }
}
