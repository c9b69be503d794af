//! The chaos soak: many customers check out at once against the real Worker
//! under workerd, in front of the payment simulator in its *naive* mode (it
//! charges every request it runs and ignores idempotency keys), so nothing
//! but the edge stands between a fault and a second charge.
//!
//! Each checkout attempt is driven by the protocol crate's [`Attempt`], the
//! same state machine and retry schedule the widget runs. On top of that,
//! some customers double-click (the attempt must ignore the second click) and
//! some send parallel duplicates outside the state machine, as a second tab
//! or a buggy integration would. Faults are injected at random: a response
//! dropped after the charge, a backend 503, the backend running past the
//! edge's timeout; and the Worker process itself is killed and restarted
//! mid-run with its local Durable Object and KV state kept.
//!
//! After the run, attempts whose retry budget ran out are retried once the
//! leases have run out, and the simulator's ledger is checked: one charge per
//! attempt that was told it succeeded, none for a decline, none charged
//! twice, none left unknown. It prints a Markdown table and exits non-zero on
//! any double charge, loss or unresolved attempt.
//!
//! `cargo test -p chargeonce-tests --test soak` runs a small soak (part of
//! `make test`); `make soak ATTEMPTS=10000` a large one. Settings come from
//! the environment: `ATTEMPTS`, `CONCURRENCY`, `FAULT_RATE`, `KILLS`, `SEED`.

// This file runs without libtest (`harness = false`); a panic is the report.
#![allow(clippy::unwrap_used)]

use chargeonce_protocol::{Answer, Attempt, IgnoreReason, Next, Phase, RetryPolicy, Submit};
use chargeonce_tests::shop::{now_secs, order_token, TOKEN_LIFETIME_SECS};
use chargeonce_tests::sim::{Faults, Ledger, DEFAULT_SECRET};
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
/// How long the slow fault holds a request: past the edge's timeout, within
/// the lease.
const SLOW_MS: u64 = BACKEND_TIMEOUT_MS + 700;

struct Settings {
    attempts: usize,
    concurrency: usize,
    fault_rate: f64,
    kills: usize,
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
            seed: var(
                "SEED",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64),
            ),
        }
    }
}

/// The kinds of fault, in the order the table prints them.
#[derive(Debug, Clone, Copy)]
enum Fault {
    DroppedAfterCharge,
    Backend503,
    SlowPastTimeout,
}

const FAULTS: [Fault; 3] = [
    Fault::DroppedAfterCharge,
    Fault::Backend503,
    Fault::SlowPastTimeout,
];

impl Fault {
    fn armed(self, faults: &Faults) -> u32 {
        match self {
            Self::DroppedAfterCharge => faults.drop_after_commit_next,
            Self::Backend503 => faults.fail_next,
            Self::SlowPastTimeout => faults.slow_next,
        }
    }

    fn arm(self) -> Value {
        match self {
            Self::DroppedAfterCharge => json!({"drop_after_commit_next": 1}),
            Self::Backend503 => json!({"fail_next": 1}),
            Self::SlowPastTimeout => json!({"slow_next": 1, "slow_ms": SLOW_MS}),
        }
    }
}

/// Arms one fault at a time in the simulator, and counts them. The faults
/// are the simulator's global "next request" counters, so a fault is armed
/// only when its counter is at 0; the ones never used are subtracted at the
/// end.
struct Injector {
    http: reqwest::Client,
    sim_url: String,
    gate: tokio::sync::Mutex<()>,
    armed: [AtomicU64; 3],
}

impl Injector {
    async fn faults(&self) -> Faults {
        self.http
            .get(format!("{}/__sim/faults", self.sim_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
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
    async fn finish(&self) -> [u64; 3] {
        let _gate = self.gate.lock().await;
        let left = self.faults().await;
        self.set(json!({"fail_next": 0, "drop_after_commit_next": 0, "slow_next": 0}))
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
    /// The retry budget ran out without an answer.
    Unconfirmed,
}

struct Checkout {
    order_ref: String,
    declined_card: bool,
    body: String,
    attempt: Attempt,
    outcome: Outcome,
    /// 200 bodies the parallel duplicates got; each must equal the answer.
    duplicate_bodies: Vec<String>,
    time_to_answer: Option<Duration>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    duplicates: AtomicU64,
    double_clicks: AtomicU64,
    retries: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Client {
    http: reqwest::Client,
    url: String,
    policy: RetryPolicy,
    counters: Counters,
}

impl Client {
    /// One request; `None` when no answer came (connection refused or lost,
    /// or the per-request timeout).
    async fn send(&self, key: &str, body: &str) -> Option<(u16, bool, Option<u64>, String)> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let res = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", key)
            .timeout(Duration::from_millis(self.policy.request_timeout_ms))
            .body(body.to_owned())
            .send()
            .await
            .ok()?;
        let status = res.status().as_u16();
        let replayed = res
            .headers()
            .get("Idempotent-Replayed")
            .is_some_and(|v| v == "true");
        let retry_after = res
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let text = res.text().await.ok()?;
        Some((status, replayed, retry_after, text))
    }

    /// Drives `attempt` from `next` until it stops, as the widget would.
    async fn drive(&self, attempt: &mut Attempt, mut next: Next, body: &str, rng: &mut StdRng) {
        loop {
            next = match next {
                Next::Send { key } => {
                    if attempt.sends() > 1 {
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    match self.send(&key, body).await {
                        Some((status, replayed, retry_after_secs, text)) => {
                            let message = serde_json::from_str::<Value>(&text)
                                .ok()
                                .and_then(|v| v["detail"].as_str().map(str::to_owned));
                            let answer = Answer {
                                status,
                                body: &text,
                                message: message.as_deref(),
                                replayed,
                                retry_after_secs,
                            };
                            attempt.handle_response(&answer, now_ms(), rng.random(), &self.policy)
                        }
                        None => attempt.handle_transport_failure(
                            now_ms(),
                            true,
                            rng.random(),
                            &self.policy,
                        ),
                    }
                }
                Next::Wait => {
                    let at = attempt.poll_timeout().unwrap_or_else(now_ms);
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
                    attempt.handle_timeout(now_ms(), true)
                }
                Next::WaitForOnline => unreachable!("the soak's customers are always online"),
                Next::Stop => return,
            }
        }
    }

    fn outcome(attempt: &Attempt) -> Outcome {
        match attempt.phase() {
            Phase::Placed { body, .. } => Outcome::Placed { body: body.clone() },
            Phase::Refused { status, message } => Outcome::Refused {
                status: *status,
                message: message.clone(),
            },
            _ => Outcome::Unconfirmed,
        }
    }

    /// One customer's checkout: a click (sometimes two), sometimes parallel
    /// duplicates, and the widget's retries.
    async fn checkout(
        self: Arc<Self>,
        index: usize,
        seed: u64,
        injector: Arc<Injector>,
        fault_rate: f64,
    ) -> Checkout {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let order_ref = format!("soak-{index}");
        let customer = format!("cus_{}", index % 97);
        let amount = rng.random_range(100..=50_000);
        let declined_card = rng.random_bool(0.1);
        let body = json!({
            "order_ref": order_ref,
            "amount": amount,
            "currency": "usd",
            "customer": customer,
            "payment_method": if declined_card { "pm_card_chargeDeclined" } else { "pm_card_visa" },
            "order_token": order_token(&order_ref, amount, &customer, now_secs() + TOKEN_LIFETIME_SECS),
        })
        .to_string();
        if rng.random_bool(fault_rate) {
            injector.inject(rng.random_range(0..FAULTS.len())).await;
        }

        let started = Instant::now();
        let key_seed: u128 = rng.random();
        let (mut attempt, submit) = Attempt::submit(None, &order_ref, now_ms(), true, || {
            format!("{key_seed:032x}")
        });
        let Submit::Send { key } = submit else {
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
                Submit::Ignore(IgnoreReason::Busy),
                "a double click was not ignored"
            );
            self.counters.double_clicks.fetch_add(1, Ordering::Relaxed);
        }
        let duplicates = if rng.random_bool(0.3) {
            rng.random_range(1..=3)
        } else {
            0
        };
        let parallel: Vec<_> = (0..duplicates)
            .map(|_| {
                let (client, key, body) = (Arc::clone(&self), key.clone(), body.clone());
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move { client.send(&key, &body).await })
            })
            .collect();
        self.drive(&mut attempt, Next::Send { key }, &body, &mut rng)
            .await;
        let outcome = Self::outcome(&attempt);
        let time_to_answer = (!matches!(outcome, Outcome::Unconfirmed)).then(|| started.elapsed());
        let mut duplicate_bodies = Vec::new();
        for dup in parallel {
            if let Some((200, _, _, text)) = dup.await.unwrap() {
                duplicate_bodies.push(text);
            }
        }
        Checkout {
            order_ref,
            declined_card,
            body,
            attempt,
            outcome,
            duplicate_bodies,
            time_to_answer,
        }
    }

    /// After the run: the customer of an unconfirmed attempt clicks again,
    /// which retries with the same key.
    async fn settle(&self, checkout: &mut Checkout, rng: &mut StdRng) {
        for _ in 0..3 {
            if !matches!(checkout.outcome, Outcome::Unconfirmed) {
                return;
            }
            let (attempt, submit) = Attempt::submit(
                Some(checkout.attempt.clone()),
                &checkout.order_ref,
                now_ms(),
                true,
                || unreachable!("an unconfirmed attempt keeps its key"),
            );
            checkout.attempt = attempt;
            let Submit::Send { key } = submit else {
                panic!("a click on an unconfirmed order must send")
            };
            let body = checkout.body.clone();
            self.drive(&mut checkout.attempt, Next::Send { key }, &body, rng)
                .await;
            checkout.outcome = Self::outcome(&checkout.attempt);
        }
    }
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
        ],
        ..StackOptions::default()
    };
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
        "soak: {} attempts, {} at a time, fault rate {}, {} worker kill(s), SEED={}",
        settings.attempts, settings.concurrency, settings.fault_rate, settings.kills, settings.seed
    );
    let run_started = Instant::now();
    let (checkouts, fired, kills) = rt.block_on(async {
        let injector = Arc::new(Injector {
            http: http.clone(),
            sim_url: sim_url.clone(),
            gate: tokio::sync::Mutex::new(()),
            armed: Default::default(),
        });
        injector.set(json!({"honor_idempotency": false})).await;
        let client = Arc::new(Client {
            http: http.clone(),
            url: format!("{edge_url}/v1/orders"),
            policy: RetryPolicy::default(),
            counters: Counters::default(),
        });

        // The Worker is killed and restarted at evenly spaced points of the run.
        let done = Arc::new(AtomicUsize::new(0));
        let killer = {
            let (done, stack) = (Arc::clone(&done), Arc::clone(&stack));
            let (attempts, kills) = (settings.attempts, settings.kills);
            tokio::spawn(async move {
                let mut restarted = 0;
                for k in 1..=kills {
                    let at = attempts * k / (kills + 1);
                    while done.load(Ordering::Relaxed) < at {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let stack = Arc::clone(&stack);
                    tokio::task::spawn_blocking(move || stack.lock().unwrap().restart_edge())
                        .await
                        .unwrap()
                        .expect("the Worker restarts");
                    restarted += 1;
                }
                restarted
            })
        };

        let gate = Arc::new(tokio::sync::Semaphore::new(settings.concurrency));
        let tasks: Vec<_> = (0..settings.attempts)
            .map(|i| {
                let (client, injector, gate, done) = (
                    Arc::clone(&client),
                    Arc::clone(&injector),
                    Arc::clone(&gate),
                    Arc::clone(&done),
                );
                let (seed, rate, attempts) =
                    (settings.seed, settings.fault_rate, settings.attempts);
                tokio::spawn(async move {
                    let _slot = gate.acquire_owned().await.unwrap();
                    let checkout = client.checkout(i, seed, injector, rate).await;
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
        let kills = killer.await.unwrap();
        let fired = injector.finish().await;

        // Every lease taken during the run has run out by now, and every
        // request the backend received has finished.
        tokio::time::sleep(Duration::from_millis(LEASE_SECS * 1000 + SLOW_MS)).await;
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let mut settled = 0;
        for checkout in checkouts.iter_mut() {
            if matches!(checkout.outcome, Outcome::Unconfirmed) {
                client.settle(checkout, &mut rng).await;
                settled += 1;
            }
        }
        let counters = &client.counters;
        let line = |name: &str, value: String| println!("| {name} | {value} |");
        println!();
        println!("| Chaos soak | |");
        println!("|---|---|");
        line("Checkout attempts", settings.attempts.to_string());
        line(
            "Requests sent",
            format!(
                "{} ({} parallel duplicates, {} widget retries; {} double clicks ignored by the widget)",
                counters.requests.load(Ordering::Relaxed),
                counters.duplicates.load(Ordering::Relaxed),
                counters.retries.load(Ordering::Relaxed),
                counters.double_clicks.load(Ordering::Relaxed),
            ),
        );
        line(
            "Faults",
            format!(
                "{} responses dropped after the charge, {} backend 503s, {} backend answers past the edge's timeout, {kills} Worker kills",
                fired[0], fired[1], fired[2]
            ),
        );
        line(
            "Unconfirmed after the retry budget, settled by a later click",
            settled.to_string(),
        );
        (checkouts, fired, kills)
    });

    // The ledger: the backend's own record of what it charged.
    let ledger: Ledger = rt.block_on(async {
        http.get(format!("{sim_url}/__sim/ledger"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    let mut charges: HashMap<&str, Vec<&str>> = HashMap::new();
    for charge in &ledger.charges {
        charges
            .entry(charge.order_ref.as_deref().unwrap_or(""))
            .or_default()
            .push(&charge.id);
    }
    let (mut placed, mut declined, mut double, mut lost, mut unresolved, mut wrong) =
        (0, 0, 0, 0, 0, Vec::new());
    let mut times: Vec<Duration> = Vec::new();
    for c in &checkouts {
        let made = charges
            .get(c.order_ref.as_str())
            .map_or(&[][..], Vec::as_slice);
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
                    wrong.push(format!("{}: told {id:?}, ledger {made:?}", c.order_ref));
                }
                if c.declined_card {
                    wrong.push(format!("{}: a declining card was charged", c.order_ref));
                }
                if let Some(other) = c.duplicate_bodies.iter().find(|d| *d != body) {
                    wrong.push(format!(
                        "{}: a duplicate got another answer: {other}",
                        c.order_ref
                    ));
                }
            }
            Outcome::Refused { status: 402, .. } if c.declined_card => {
                declined += 1;
                if !made.is_empty() {
                    lost += 1;
                    wrong.push(format!("{}: declined but charged {made:?}", c.order_ref));
                }
            }
            Outcome::Refused { status, message } => {
                wrong.push(format!("{}: refused {status}: {message}", c.order_ref));
            }
            Outcome::Unconfirmed => {
                unresolved += 1;
                wrong.push(format!("{}: still unconfirmed after settling", c.order_ref));
            }
        }
    }
    times.sort();
    let line = |name: &str, value: String| println!("| {name} | {value} |");
    line(
        "Final answers",
        format!("{placed} charged, {declined} declined, {unresolved} unresolved"),
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
    let _ = (fired, kills);
    drop(rt);
    drop(stack);
    if double == 0 && lost == 0 && unresolved == 0 && wrong.is_empty() {
        println!("soak: every attempt charged at most once and nothing was lost");
        ExitCode::SUCCESS
    } else {
        for w in wrong.iter().take(20) {
            eprintln!("soak: {w}");
        }
        eprintln!(
            "soak: FAILED ({} problems, SEED={})",
            wrong.len(),
            settings.seed
        );
        ExitCode::FAILURE
    }
}
