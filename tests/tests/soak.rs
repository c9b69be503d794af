//! The chaos soak: many customers check out at once against the real Worker
//! under workerd, in front of the payment simulator in its *naive* mode (it
//! charges every request it runs and ignores idempotency keys), so nothing
//! but the edge stands between a fault and a second charge.
//!
//! Each checkout attempt is driven by the protocol crate's [`Attempt`] through
//! the shared [`CheckoutClient`], the same state machine and retry schedule
//! the widget runs, status lookups and token refreshes included. On top of
//! that, some customers double-click (the attempt must ignore the second
//! click) and some send parallel duplicates outside the state machine, as a
//! second tab or a buggy integration would. The simulator's lookups lag
//! behind its charges for the whole run (`SEARCH_LAG_MS`, within the edge's
//! settle window), as Stripe's Search does. One card in ten is declined and
//! one in ten needs 3-D Secure, which a third of those customers fail at
//! their bank (played through paysim's hook). Faults are injected at random:
//! a response dropped after the charge, a backend 503, a backend 500 (which
//! Stripe would save under the key; the naive simulator saves nothing), the
//! backend running past the edge's timeout, a 429 `rate_limit`, and an order
//! token that expires a second into the attempt; and the Worker process
//! itself is killed and restarted mid-run
//! with its local Durable Object and KV state kept, each time while the
//! simulator holds lookups open, so kills land during reconciliations.
//!
//! After the run and a settle wait, every attempt left unconfirmed is picked
//! up as a reload would: a status lookup first, which shows whether the edge
//! settled the key on its own. One customer in ten also opens the same order
//! on a second device, which checks out at the same time under a key of its
//! own, as a phone and a laptop would: the edge's order record must hold the
//! order to one charge, and both devices must be told that charge. Then the
//! simulator's ledger is checked: one charge per order that was told it
//! succeeded, none for a decline or a failed authentication, none charged
//! twice, none left unknown. It prints a Markdown table and exits
//! non-zero on any double charge, loss or unresolved attempt.
//!
//! `cargo test -p chargeonce-tests --test soak` runs a small soak (part of
//! `make test`); `make soak ATTEMPTS=10000` a large one. Settings come from
//! the environment: `ATTEMPTS`, `CONCURRENCY`, `FAULT_RATE`, `KILLS`,
//! `SEARCH_LAG_MS`, `SEED`.

// This file runs without libtest (`harness = false`); a panic is the report.
#![allow(clippy::unwrap_used)]

use chargeonce_protocol::{Attempt, IgnoreReason, Next, Phase, RetryPolicy};
use chargeonce_tests::client::{now_ms, Bank, CheckoutClient, PageOrder};
use chargeonce_tests::shop::{now_secs, TOKEN_LIFETIME_SECS};
use chargeonce_tests::sim::{Faults, Ledger, LookupLog, DEFAULT_SECRET};
use chargeonce_tests::stack::{Stack, StackOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The edge's settings for the soak: a short timeout and lease, so the
/// faults that hold a key (a slow backend, a killed Worker) resolve within
/// seconds. The lease outlasts the timeout plus the slow fault's delay, which
/// is the assumption reconciliation rests on.
const BACKEND_TIMEOUT_MS: u64 = 1_000;
const LEASE_SECS: u64 = 3;
/// How long after a forward ended a lookup that finds nothing is believed:
/// longer than the simulator's lookup lag, as the edge requires.
const SETTLE_SECS: u64 = 2;
/// How long the slow fault holds a request: past the edge's timeout, within
/// the lease.
const SLOW_MS: u64 = BACKEND_TIMEOUT_MS + 700;
/// How long the simulator holds lookups open around a Worker kill.
const KILL_LOOKUP_HOLD_MS: u64 = 1_500;
/// The life of a token the expiry fault hands out: it runs out during the
/// attempt's retries.
const SHORT_TOKEN: Duration = Duration::from_secs(1);

struct Settings {
    attempts: usize,
    concurrency: usize,
    fault_rate: f64,
    kills: usize,
    search_lag_ms: u64,
    seed: u64,
}

impl Settings {
    fn from_env() -> Self {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v.trim().parse().unwrap_or_else(|_| {
                    panic!("{name}={v:?} is not a valid value");
                }),
                _ => default,
            }
        }
        let attempts = var("ATTEMPTS", 300usize);
        Self {
            attempts,
            concurrency: var("CONCURRENCY", 24usize),
            fault_rate: var("FAULT_RATE", 0.2f64),
            // At least one kill in every run; one more per 3,000 attempts.
            kills: var("KILLS", 1 + attempts / 3_000),
            search_lag_ms: var("SEARCH_LAG_MS", 1_000u64),
            seed: var(
                "SEED",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64),
            ),
        }
    }
}

/// The kinds of backend fault, in the order the table prints them.
#[derive(Debug, Clone, Copy)]
enum Fault {
    DroppedAfterCharge,
    Backend503,
    SlowPastTimeout,
    Saved500,
    RateLimited,
}

/// A 409 `idempotency_key_in_use` is not among them: a naive backend holds
/// no keys, so it never answers one (the edge tests cover it against a
/// backend that does).
const FAULTS: [Fault; 5] = [
    Fault::DroppedAfterCharge,
    Fault::Backend503,
    Fault::SlowPastTimeout,
    Fault::Saved500,
    Fault::RateLimited,
];

impl Fault {
    fn armed(self, faults: &Faults) -> u32 {
        match self {
            Self::DroppedAfterCharge => faults.drop_after_commit_next,
            Self::Backend503 => faults.fail_next,
            Self::SlowPastTimeout => faults.slow_next,
            Self::Saved500 => faults.fail_saved_next,
            Self::RateLimited => faults.rate_limit_next,
        }
    }

    fn arm(self) -> Value {
        match self {
            Self::DroppedAfterCharge => json!({"drop_after_commit_next": 1}),
            Self::Backend503 => json!({"fail_next": 1}),
            Self::SlowPastTimeout => json!({"slow_next": 1, "slow_ms": SLOW_MS}),
            Self::Saved500 => json!({"fail_saved_next": 1}),
            Self::RateLimited => json!({"rate_limit_next": 1}),
        }
    }
}

/// The card a customer pays with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Visa,
    Declined,
    /// Needs 3-D Secure; whether the customer fails the bank's challenge.
    ThreeDSecure {
        fails: bool,
    },
}

impl Card {
    fn payment_method(self) -> &'static str {
        match self {
            Self::Visa => "pm_card_visa",
            Self::Declined => "pm_card_chargeDeclined",
            Self::ThreeDSecure { .. } => "pm_card_threeDSecure2Required",
        }
    }
}

/// The order references of customers who fail their bank's challenge end
/// in this, which is how the client's [`Bank`] knows.
const FAILS_3DS: &str = "-fails-3ds";

/// Arms one fault at a time in the simulator, and counts them. The faults
/// are the simulator's global "next request" counters, so a fault is armed
/// only when its counter is at 0; the ones never used are subtracted at the
/// end.
struct Injector {
    http: reqwest::Client,
    sim_url: String,
    gate: tokio::sync::Mutex<()>,
    armed: [AtomicU64; FAULTS.len()],
}

impl Injector {
    async fn faults(&self) -> Faults {
        sim_get(&self.http, &self.sim_url, "faults").await
    }

    async fn set(&self, patch: Value) {
        let res = self
            .http
            .post(format!("{}/__sim/faults", self.sim_url))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "the simulator refused {patch}");
    }

    async fn inject(&self, which: usize) {
        let _one_at_a_time = self.gate.lock().await;
        let fault = FAULTS[which];
        if fault.armed(&self.faults().await) == 0 {
            self.set(fault.arm()).await;
            self.armed[which].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Disarms what is left and returns how many of each fault fired.
    async fn finish(&self) -> [u64; FAULTS.len()] {
        let _gate = self.gate.lock().await;
        let left = self.faults().await;
        self.set(json!({
            "fail_next": 0,
            "drop_after_commit_next": 0,
            "slow_next": 0,
            "fail_saved_next": 0,
            "rate_limit_next": 0
        }))
        .await;
        std::array::from_fn(|i| {
            self.armed[i]
                .load(Ordering::Relaxed)
                .saturating_sub(u64::from(FAULTS[i].armed(&left)))
        })
    }
}

/// How an attempt ended, as its customer saw it.
#[derive(Debug, Clone)]
enum Outcome {
    Placed {
        body: String,
    },
    Refused {
        status: u16,
        message: String,
    },
    /// The retry budget ran out without an answer (or while another
    /// device's attempt at the order was in progress).
    Unconfirmed,
}

impl Outcome {
    /// The edge's final "not charged": the order needs a new attempt.
    fn not_charged(&self) -> bool {
        matches!(self, Self::Refused { status: 410, .. })
    }

    fn of(attempt: &Attempt) -> Self {
        match attempt.phase() {
            Phase::Placed { body, .. } => Self::Placed { body: body.clone() },
            Phase::Refused { status, message } => Self::Refused {
                status: *status,
                message: message.clone(),
            },
            _ => Self::Unconfirmed,
        }
    }
}

/// The same order checked out on a second device, under its own key.
struct SecondDevice {
    order: PageOrder,
    attempt: Attempt,
    outcome: Outcome,
}

struct Checkout {
    order: PageOrder,
    card: Card,
    attempt: Attempt,
    outcome: Outcome,
    second: Option<SecondDevice>,
    /// 200 bodies the parallel duplicates got; each must equal the answer.
    duplicate_bodies: Vec<String>,
    time_to_answer: Option<Duration>,
}

#[derive(Default)]
struct Tally {
    duplicates: AtomicU64,
    double_clicks: AtomicU64,
    short_tokens: AtomicU64,
    /// Clicks after the edge settled an attempt as "not charged".
    clicks_again: AtomicU64,
    /// Orders checked out on a second device too.
    second_devices: AtomicU64,
}

/// One customer's checkout: a click (sometimes two), sometimes parallel
/// duplicates, and the widget's retries.
async fn checkout(
    client: Arc<CheckoutClient>,
    tally: Arc<Tally>,
    index: usize,
    seed: u64,
    injector: Arc<Injector>,
    fault_rate: f64,
) -> Checkout {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let customer = format!("cus_{}", index % 97);
    let amount = rng.random_range(100..=50_000);
    let card = match rng.random_range(0..10) {
        0 => Card::Declined,
        1 => Card::ThreeDSecure {
            fails: rng.random_bool(1.0 / 3.0),
        },
        _ => Card::Visa,
    };
    let order_ref = match card {
        Card::ThreeDSecure { fails: true } => format!("soak-{index}{FAILS_3DS}"),
        _ => format!("soak-{index}"),
    };
    let mut first_token = Duration::from_secs(TOKEN_LIFETIME_SECS);
    if rng.random_bool(fault_rate) {
        // One in four faults is a token that expires mid-attempt; the others
        // are the backend's.
        match rng.random_range(0..=FAULTS.len()) {
            n if n == FAULTS.len() => {
                // The backend refuses the first request with a 503, and the
                // retry (a second later at least, its Retry-After) meets the
                // expired token.
                first_token = SHORT_TOKEN;
                injector.inject(1).await;
                tally.short_tokens.fetch_add(1, Ordering::Relaxed);
            }
            n => injector.inject(n).await,
        }
    }
    // What the shop hands out when asked for a fresh token.
    let life = Duration::from_secs(TOKEN_LIFETIME_SECS);
    let mut order = PageOrder::new(
        &order_ref,
        amount,
        &customer,
        card.payment_method(),
        now_secs() + first_token.as_secs(),
    );

    let started = Instant::now();
    let key_seed: u128 = rng.random();
    let (mut attempt, first) = Attempt::submit(None, &order_ref, now_ms(), true, || {
        format!("{key_seed:032x}")
    });
    let Next::Send { key } = first.clone() else {
        panic!("a first click must send")
    };
    if rng.random_bool(0.3) {
        // A double click: the attempt is busy and must ignore it.
        let (_, again) = Attempt::submit(
            Some(attempt.clone()),
            &order_ref,
            now_ms(),
            true,
            String::new,
        );
        assert_eq!(
            again,
            Next::Ignore(IgnoreReason::Busy),
            "a double click was not ignored"
        );
        tally.double_clicks.fetch_add(1, Ordering::Relaxed);
    }
    let duplicates = if rng.random_bool(0.3) {
        rng.random_range(1..=3)
    } else {
        0
    };
    // The same order on a second device, a moment later, with its own key
    // and a token of its own; the customer answers the bank on whichever
    // device asks.
    let second = rng.random_bool(0.1).then(|| {
        tally.second_devices.fetch_add(1, Ordering::Relaxed);
        let (client, order_ref, customer) =
            (Arc::clone(&client), order_ref.clone(), customer.clone());
        let (delay_ms, key_seed, jitter_seed): (u64, u128, u64) =
            (rng.random_range(0..300), rng.random(), rng.random());
        let payment_method = card.payment_method();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let mut rng = StdRng::seed_from_u64(jitter_seed);
            let mut order = PageOrder::new(
                &order_ref,
                amount,
                &customer,
                payment_method,
                now_secs() + TOKEN_LIFETIME_SECS,
            );
            let (mut attempt, first) = Attempt::submit(None, &order_ref, now_ms(), true, || {
                format!("{key_seed:032x}")
            });
            let life = Duration::from_secs(TOKEN_LIFETIME_SECS);
            client
                .drive(&mut attempt, first, &mut order, || rng.random(), life)
                .await;
            click_again_if_not_charged(&client, &mut attempt, &mut order, &mut rng).await;
            let outcome = Outcome::of(&attempt);
            SecondDevice {
                order,
                attempt,
                outcome,
            }
        })
    });
    let parallel: Vec<_> = (0..duplicates)
        .map(|_| {
            let (client, key, body) = (Arc::clone(&client), key.clone(), order.body());
            tally.duplicates.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move { client.post(&key, &body).await })
        })
        .collect();
    client
        .drive(&mut attempt, first, &mut order, || rng.random(), life)
        .await;
    let clicks = click_again_if_not_charged(&client, &mut attempt, &mut order, &mut rng).await;
    tally.clicks_again.fetch_add(clicks, Ordering::Relaxed);
    let outcome = Outcome::of(&attempt);
    let time_to_answer = (!matches!(outcome, Outcome::Unconfirmed)).then(|| started.elapsed());
    let mut duplicate_bodies = Vec::new();
    for dup in parallel {
        if let Some(received) = dup.await.unwrap() {
            if received.status == 200 {
                duplicate_bodies.push(received.body);
            }
        }
    }
    let second = match second {
        Some(task) => Some(task.await.unwrap()),
        None => None,
    };
    Checkout {
        order,
        card,
        attempt,
        outcome,
        second,
        duplicate_bodies,
        time_to_answer,
    }
}

/// Told "not charged" (an attempt whose outcome the edge settled that way),
/// the customer clicks again, and a new attempt gets a new key; a few times
/// at most. Returns the clicks.
async fn click_again_if_not_charged(
    client: &CheckoutClient,
    attempt: &mut Attempt,
    order: &mut PageOrder,
    rng: &mut StdRng,
) -> u64 {
    let life = Duration::from_secs(TOKEN_LIFETIME_SECS);
    let mut clicks = 0;
    while clicks < 3 && Outcome::of(attempt).not_charged() {
        let fresh: u128 = rng.random();
        let (again, next) = Attempt::submit(
            Some(attempt.clone()),
            order.order_ref(),
            now_ms(),
            true,
            || format!("{fresh:032x}"),
        );
        *attempt = again;
        clicks += 1;
        client
            .drive(attempt, next, order, || rng.random(), life)
            .await;
    }
    clicks
}

/// After the run: an unconfirmed attempt is picked up as a reload would, a
/// status lookup first. Returns whether the edge had settled the key on its
/// own (the lookup replayed a final answer).
async fn settle(
    client: &CheckoutClient,
    tally: &Tally,
    (attempt, order, outcome): (&mut Attempt, &mut PageOrder, &mut Outcome),
    rng: &mut StdRng,
) -> bool {
    order.refresh_token(now_secs() + TOKEN_LIFETIME_SECS);
    let by_itself = client
        .status(attempt.key(), order.token())
        .await
        .is_some_and(|r| r.replayed);
    let life = Duration::from_secs(TOKEN_LIFETIME_SECS);
    for _ in 0..3 {
        let next = match &*outcome {
            // A reload; or, for an attempt that gave up waiting on the
            // order's other device, a click, which asks again with its key.
            Outcome::Unconfirmed if attempt.phase() == &Phase::OtherDevice => {
                let (again, next) = Attempt::submit(
                    Some(attempt.clone()),
                    order.order_ref(),
                    now_ms(),
                    true,
                    String::new,
                );
                *attempt = again;
                next
            }
            Outcome::Unconfirmed => attempt.resume(now_ms(), true),
            refused if refused.not_charged() => {
                let clicks = click_again_if_not_charged(client, attempt, order, rng).await;
                tally.clicks_again.fetch_add(clicks, Ordering::Relaxed);
                *outcome = Outcome::of(attempt);
                continue;
            }
            _ => break,
        };
        client
            .drive(attempt, next, order, || rng.random(), life)
            .await;
        *outcome = Outcome::of(attempt);
    }
    by_itself
}

/// Copies the stack's logs into `tests/artifacts/`, where a failed run's
/// evidence outlasts the stack's temporary folder.
fn keep_logs(stack: &Stack) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("soak: could not keep the logs in {}: {e}", dir.display());
        return;
    }
    for (from, name) in [
        (stack.wrangler_log_path(), "soak-wrangler.log"),
        (stack.paysim_log_path(), "soak-paysim.log"),
    ] {
        match std::fs::copy(&from, dir.join(name)) {
            Ok(_) => eprintln!("soak: kept {}", dir.join(name).display()),
            Err(e) => eprintln!("soak: could not keep {}: {e}", from.display()),
        }
    }
}

/// One of the simulator's inspection routes, `GET /__sim/{what}`, as JSON.
async fn sim_get<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    sim_url: &str,
    what: &str,
) -> T {
    http.get(format!("{sim_url}/__sim/{what}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "–".into();
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    format!("{} ms", sorted[i].as_millis())
}

fn main() -> ExitCode {
    let settings = Settings::from_env();
    let options = StackOptions {
        vars: vec![
            ("BACKEND_TIMEOUT_MS".into(), BACKEND_TIMEOUT_MS.to_string()),
            ("CLAIM_LEASE_SECS".into(), LEASE_SECS.to_string()),
            ("LOOKUP_SETTLE_SECS".into(), SETTLE_SECS.to_string()),
            // The simulator runs naive: nothing may rely on its own
            // deduplication.
            ("BACKEND_KEY_RETENTION_SECS".into(), "0".into()),
        ],
        ..StackOptions::default()
    };
    assert!(
        settings.search_lag_ms < SETTLE_SECS * 1000,
        "SEARCH_LAG_MS must stay within the edge's settle window ({SETTLE_SECS} s): the edge's documented assumption"
    );
    let paysim = Path::new(env!("CARGO_BIN_EXE_paysim"));
    let stack = match Stack::start(paysim, DEFAULT_SECRET, &options) {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("soak: could not start the stack: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (edge_url, sim_url) = (stack.edge_url.clone(), stack.sim_url.clone());
    let stack = Arc::new(Mutex::new(stack));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.concurrency * 2)
        .build()
        .unwrap();
    println!(
        "soak: {} attempts, {} at a time, fault rate {}, {} worker kill(s), lookups {} ms behind, SEED={}",
        settings.attempts,
        settings.concurrency,
        settings.fault_rate,
        settings.kills,
        settings.search_lag_ms,
        settings.seed
    );
    let run_started = Instant::now();
    let (checkouts, ledger, client, kill_times) = rt.block_on(async {
        let injector = Arc::new(Injector {
            http: http.clone(),
            sim_url: sim_url.clone(),
            gate: tokio::sync::Mutex::new(()),
            armed: Default::default(),
        });
        injector
            .set(json!({"honor_idempotency": false, "search_lag_ms": settings.search_lag_ms}))
            .await;
        let client = Arc::new(
            CheckoutClient::new(
                http.clone(),
                format!("{edge_url}/v1/orders"),
                RetryPolicy::default(),
            )
            .with_bank(Bank {
                url: sim_url.clone(),
                fails: |order_ref| order_ref.ends_with(FAILS_3DS),
            }),
        );
        let tally = Arc::new(Tally::default());

        // The Worker is killed and restarted at evenly spaced points of the
        // run, each time while the simulator holds lookups open, so a kill
        // lands in the middle of reconciliations.
        let done = Arc::new(AtomicUsize::new(0));
        let killer = {
            let (done, stack, injector) =
                (Arc::clone(&done), Arc::clone(&stack), Arc::clone(&injector));
            let (attempts, kills) = (settings.attempts, settings.kills);
            tokio::spawn(async move {
                let mut kill_times = Vec::new();
                for k in 1..=kills {
                    let at = attempts * k / (kills + 1);
                    while done.load(Ordering::Relaxed) < at {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    injector
                        .set(json!({"lookup_slow_next": 1_000, "lookup_slow_ms": KILL_LOOKUP_HOLD_MS}))
                        .await;
                    tokio::time::sleep(Duration::from_millis(KILL_LOOKUP_HOLD_MS / 2)).await;
                    kill_times.push(now_ms());
                    let stack = Arc::clone(&stack);
                    tokio::task::spawn_blocking(move || stack.lock().unwrap().restart_edge())
                        .await
                        .unwrap()
                        .expect("the Worker restarts");
                    injector.set(json!({"lookup_slow_next": 0})).await;
                }
                kill_times
            })
        };

        let gate = Arc::new(tokio::sync::Semaphore::new(settings.concurrency));
        let tasks: Vec<_> = (0..settings.attempts)
            .map(|i| {
                let (client, tally, injector, gate, done) = (
                    Arc::clone(&client),
                    Arc::clone(&tally),
                    Arc::clone(&injector),
                    Arc::clone(&gate),
                    Arc::clone(&done),
                );
                let (seed, rate, attempts) =
                    (settings.seed, settings.fault_rate, settings.attempts);
                tokio::spawn(async move {
                    let _slot = gate.acquire_owned().await.unwrap();
                    let checkout = checkout(client, tally, i, seed, injector, rate).await;
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    // A sign of life every tenth of the run.
                    if finished % (attempts / 10).max(1) == 0 {
                        println!("soak: {finished} of {attempts} attempts finished");
                    }
                    checkout
                })
            })
            .collect();
        let mut checkouts = Vec::with_capacity(tasks.len());
        for task in tasks {
            checkouts.push(task.await.unwrap());
        }
        let kill_times = killer.await.unwrap();
        let fired = injector.finish().await;
        let unconfirmed = checkouts
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Unconfirmed))
            .count();

        // Every lease taken during the run has run out by now, every request
        // the backend received has finished, and each key left unknown has
        // had its object's first checks, at once and 5 s later.
        tokio::time::sleep(Duration::from_millis(
            LEASE_SECS * 1000 + SLOW_MS + SETTLE_SECS * 1000 + 5_000,
        ))
        .await;
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let mut settled_by_edge = 0;
        for checkout in checkouts.iter_mut() {
            if matches!(checkout.outcome, Outcome::Unconfirmed) {
                let device = (&mut checkout.attempt, &mut checkout.order, &mut checkout.outcome);
                if settle(&client, &tally, device, &mut rng).await {
                    settled_by_edge += 1;
                }
            }
            if let Some(second) = checkout.second.as_mut() {
                if matches!(second.outcome, Outcome::Unconfirmed) || second.outcome.not_charged() {
                    let device = (&mut second.attempt, &mut second.order, &mut second.outcome);
                    let _ = settle(&client, &tally, device, &mut rng).await;
                }
            }
        }
        let lookups: LookupLog = sim_get(&http, &sim_url, "lookups").await;
        // A lookup answered within the hold after a kill was open at the kill.
        let open_at_kills = lookups
            .lookups
            .iter()
            .filter(|l| {
                kill_times
                    .iter()
                    .any(|k| l.at_ms > *k && l.at_ms <= k + KILL_LOOKUP_HOLD_MS + 200)
            })
            .count();

        let counters = &client.counters;
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let line = |name: &str, value: String| println!("| {name} | {value} |");
        println!();
        println!("| Chaos soak | |");
        println!("|---|---|");
        line("Checkout attempts", settings.attempts.to_string());
        line(
            "Requests sent",
            format!(
                "{} ({} parallel duplicates, {} widget retries, {} status lookups; {} double clicks ignored by the widget)",
                count(&counters.requests) + count(&tally.duplicates),
                count(&tally.duplicates),
                count(&counters.retries),
                count(&counters.status_lookups),
                count(&tally.double_clicks),
            ),
        );
        line(
            "Faults",
            format!(
                "{} responses dropped after the charge, {} backend 503s, {} backend answers past the edge's timeout, {} backend 500s, {} 429 rate_limit, {} order tokens expiring mid-attempt ({} refreshed with the same key), lookups {} ms behind the charges throughout",
                fired[0],
                fired[1],
                fired[2],
                fired[3],
                fired[4],
                count(&tally.short_tokens),
                count(&counters.token_refreshes),
                settings.search_lag_ms,
            ),
        );
        line(
            "Orders checked out on two devices at once",
            format!(
                "{}, each device under its own key",
                count(&tally.second_devices)
            ),
        );
        line(
            "3-D Secure challenges answered",
            count(&counters.authentications).to_string(),
        );
        line(
            "Attempts the edge settled as \"not charged\"",
            format!(
                "{}, each followed by a new click under a new key",
                count(&tally.clicks_again)
            ),
        );
        line(
            "Worker kills",
            format!(
                "{}, each while the simulator held lookups open ({open_at_kills} lookups were open at a kill)",
                kill_times.len()
            ),
        );
        line(
            "Unconfirmed when the retry budget ran out",
            format!("{unconfirmed}; after the settle wait the edge had settled {settled_by_edge} of them on its own"),
        );
        let ledger: Ledger = sim_get(&http, &sim_url, "ledger").await;
        (checkouts, ledger, client, kill_times)
    });

    // The ledger: the backend's own record of what it charged.
    let mut charges: HashMap<&str, Vec<&str>> = HashMap::new();
    for charge in &ledger.charges {
        charges
            .entry(charge.order_ref.as_deref().unwrap_or(""))
            .or_default()
            .push(&charge.id);
    }
    let (mut placed, mut declined, mut failed_3ds, mut double, mut lost, mut unresolved) =
        (0, 0, 0, 0, 0, 0);
    let mut wrong = Vec::new();
    let mut times: Vec<Duration> = Vec::new();
    for c in &checkouts {
        let order_ref = c.order.order_ref();
        let made = charges.get(order_ref).map_or(&[][..], Vec::as_slice);
        if made.len() > 1 {
            double += 1;
        }
        times.extend(c.time_to_answer);
        match &c.outcome {
            Outcome::Placed { body } => {
                placed += 1;
                let id = serde_json::from_str::<Value>(body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_owned));
                if made.is_empty() || id.as_deref() != made.first().copied() {
                    lost += 1;
                    wrong.push(format!("{order_ref}: told {id:?}, ledger {made:?}"));
                }
                if matches!(c.card, Card::Declined | Card::ThreeDSecure { fails: true }) {
                    wrong.push(format!("{order_ref}: placed with {:?}", c.card));
                }
                // A duplicate gets the key's answer, or, for an intent that
                // awaited authentication, that same intent in an earlier
                // state (the refresh after authentication replaced it).
                let intent = |body: &str| {
                    serde_json::from_str::<Value>(body)
                        .ok()
                        .map(|v| (v["id"].clone(), v["status"].clone()))
                };
                let earlier_state = |dup: &str| match (intent(dup), intent(body)) {
                    (Some((dup_id, dup_status)), Some((id, _))) => {
                        dup_id == id && dup_status == "requires_action"
                    }
                    _ => false,
                };
                if let Some(other) = c
                    .duplicate_bodies
                    .iter()
                    .find(|d| *d != body && !earlier_state(d))
                {
                    wrong.push(format!(
                        "{order_ref}: a duplicate got another answer: {other}"
                    ));
                }
            }
            Outcome::Refused { status: 402, .. } if c.card == Card::Declined => {
                declined += 1;
                if !made.is_empty() {
                    lost += 1;
                    wrong.push(format!("{order_ref}: declined but charged {made:?}"));
                }
            }
            // A failed challenge: the intent's 2xx answer, refused.
            Outcome::Refused { status: 200, .. }
                if c.card == (Card::ThreeDSecure { fails: true }) =>
            {
                failed_3ds += 1;
                if !made.is_empty() {
                    lost += 1;
                    wrong.push(format!(
                        "{order_ref}: failed 3-D Secure but charged {made:?}"
                    ));
                }
            }
            Outcome::Refused { status, message } => {
                wrong.push(format!("{order_ref}: refused {status}: {message}"));
            }
            Outcome::Unconfirmed => {
                unresolved += 1;
                wrong.push(format!("{order_ref}: still unconfirmed after settling"));
            }
        }
        // The second device is told the order's one charge, or the same
        // refusal its card earns.
        if let Some(second) = &c.second {
            match &second.outcome {
                Outcome::Placed { body } => {
                    let id = serde_json::from_str::<Value>(body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_owned));
                    if made.len() != 1 || id.as_deref() != made.first().copied() {
                        lost += 1;
                        wrong.push(format!(
                            "{order_ref}: the second device was told {id:?}, ledger {made:?}"
                        ));
                    }
                }
                Outcome::Refused { status: 402, .. } if c.card == Card::Declined => {}
                Outcome::Refused { status: 200, .. }
                    if c.card == (Card::ThreeDSecure { fails: true }) => {}
                Outcome::Refused { status, message } => wrong.push(format!(
                    "{order_ref}: the second device was refused {status}: {message}"
                )),
                Outcome::Unconfirmed => {
                    unresolved += 1;
                    wrong.push(format!(
                        "{order_ref}: the second device is still unconfirmed after settling"
                    ));
                }
            }
        }
    }
    times.sort();
    let line = |name: &str, value: String| println!("| {name} | {value} |");
    line(
        "Final answers",
        format!("{placed} charged, {declined} declined, {failed_3ds} failed 3-D Secure, {unresolved} unresolved"),
    );
    line(
        "Ledger",
        format!(
            "{} charges; **{double} double charges, {lost} lost**",
            ledger.charges.len()
        ),
    );
    line(
        "Time to a final answer",
        format!(
            "p50 {}, p99 {}",
            percentile(&times, 0.50),
            percentile(&times, 0.99)
        ),
    );
    line(
        "Run time",
        format!("{:.0} s", run_started.elapsed().as_secs_f64()),
    );
    println!();
    drop(rt);
    if double == 0 && lost == 0 && unresolved == 0 && wrong.is_empty() {
        println!("soak: every attempt charged at most once and nothing was lost");
        ExitCode::SUCCESS
    } else {
        // What each failed order went through, beside the Worker's kills and
        // its log: a failure one run in many cannot be run again at will.
        eprintln!("soak: the Worker was killed at (Unix ms) {kill_times:?}");
        for w in wrong.iter().take(20) {
            eprintln!("soak: {w}");
            let order_ref = w.split(':').next().unwrap_or_default();
            for exchange in client.journal.of(order_ref) {
                eprintln!("soak:     {exchange}");
            }
        }
        keep_logs(&stack.lock().unwrap_or_else(|e| e.into_inner()));
        eprintln!(
            "soak: FAILED ({} problems, SEED={})",
            wrong.len(),
            settings.seed
        );
        ExitCode::FAILURE
    }
}
