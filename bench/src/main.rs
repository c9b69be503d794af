//! `make bench`: ChargeOnce against a pass-through floor and the naive KV
//! get-then-put Worker, on the same local workerd, in front of the same
//! payment simulator, driven by the same load tool (`wrk`), contenders
//! alternating so that drift hits all alike; then a duplicate storm against
//! each, the widget in headless Chromium, and the Worker's size and cold
//! start. It prints what it measures and writes `BENCHMARKS.md`.
//!
//! Settings from the environment: `ROUNDS` (3), `SECS` per run (5),
//! `CONNECTIONS` (16), `STORM_KEYS` (20), `STORM_COPIES` (20).

mod machine;
mod report;
mod storm;
mod wrk;

use chargeonce_tests::shop::{now_secs, order_token};
use chargeonce_tests::sim::DEFAULT_SECRET;
use chargeonce_tests::stack::{workspace_root, Paysim, WranglerDev, ORDER_TOKEN_SECRET};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Flags every Worker runs with, so they pay the same: wrangler's own
/// per-request logging off.
const WRANGLER_FLAGS: &[&str] = &["--log-level", "warn"];

/// The contenders on workerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contender {
    /// The pass-through Worker: no idempotency.
    Floor,
    /// ChargeOnce's edge.
    ChargeOnce,
    /// The hand-written KV get-then-put Worker.
    NaiveKv,
}

impl Contender {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Floor => "Floor (pass-through Worker)",
            Self::ChargeOnce => "ChargeOnce",
            Self::NaiveKv => "Naive KV Worker (anti-pattern)",
        }
    }
}

/// What a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// Every request with a new key: claim, forward, store.
    First,
    /// Every request with one key whose answer is stored.
    Replay,
    /// Every request with one key whose first request is still in flight.
    Conflict,
}

impl Scenario {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::First => "first request",
            Self::Replay => "replay",
            Self::Conflict => "conflict",
        }
    }
}

struct Settings {
    rounds: usize,
    secs: u64,
    connections: usize,
    storm_keys: usize,
    storm_copies: usize,
}

fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// One contender's request: where, which body, which credential.
pub struct Target {
    /// The contender.
    pub contender: Contender,
    /// Its base URL.
    pub url: String,
    /// The JSON body for `order_ref`.
    pub body: Box<dyn Fn(&str) -> String + Send + Sync>,
    /// The `Authorization` header the client sends ("" for none).
    pub authorization: String,
}

fn order(order_ref: &str, token: Option<String>) -> String {
    let mut body = json!({
        "order_ref": order_ref,
        "amount": 1999,
        "currency": "usd",
        "customer": "cus_bench",
        "payment_method": "pm_card_visa",
    });
    if let Some(token) = token {
        body["order_token"] = json!(token);
    }
    body.to_string()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let settings = Settings {
        rounds: var("ROUNDS", 3),
        secs: var("SECS", 5),
        connections: var("CONNECTIONS", 16),
        storm_keys: var("STORM_KEYS", 20),
        storm_copies: var("STORM_COPIES", 20),
    };
    let root = workspace_root();
    let started = Instant::now();
    let paysim = root.join("target/debug/paysim");
    let sim = Paysim::start(&paysim, DEFAULT_SECRET).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let http = reqwest::Client::new();
    let sim_faults = |patch: serde_json::Value| {
        rt.block_on(storm::post_json(
            &http,
            &format!("{}/__sim/faults", sim.url),
            &patch,
        ))
    };
    // The naive backend for every contender: the simulator then does no
    // deduplication work of its own, and the storm shows who prevents a
    // second charge.
    sim_faults(json!({"honor_idempotency": false}))?;

    let backend = format!("{}/v1/orders", sim.url);
    let workers_toml = root.join("bench/workers/wrangler.toml");
    eprintln!("bench: starting the three Workers under wrangler dev");
    let start = |contender: Contender| -> Result<WranglerDev, String> {
        start_worker(contender, &workers_toml, &backend)
    };
    let floor = start(Contender::Floor)?;
    let chargeonce = start(Contender::ChargeOnce)?;
    let naive = start(Contender::NaiveKv)?;
    let bearer = format!("Bearer {DEFAULT_SECRET}");
    let targets = [
        Target {
            contender: Contender::Floor,
            url: floor.url.clone(),
            body: Box::new(|r| order(r, None)),
            authorization: bearer.clone(),
        },
        Target {
            contender: Contender::ChargeOnce,
            url: chargeonce.url.clone(),
            // The token is the shop's; the client only carries it.
            body: Box::new(|r| {
                order(
                    r,
                    Some(order_token(r, 1999, "cus_bench", now_secs() + 3_600)),
                )
            }),
            authorization: String::new(),
        },
        Target {
            contender: Contender::NaiveKv,
            url: naive.url.clone(),
            body: Box::new(|r| order(r, None)),
            authorization: bearer.clone(),
        },
    ];

    // Throughput and latency: rounds of every contender on every path, the
    // order rotating each round.
    let mut runs: BTreeMap<(Contender, Scenario), Vec<wrk::Run>> = BTreeMap::new();
    let mut unloaded: BTreeMap<(Contender, Scenario), Vec<wrk::Run>> = BTreeMap::new();
    for round in 0..settings.rounds {
        for path in [Scenario::First, Scenario::Replay, Scenario::Conflict] {
            for i in 0..targets.len() {
                let target = &targets[(i + round) % targets.len()];
                // The floor forwards everything: its paths are all the same.
                if target.contender == Contender::Floor && path != Scenario::First {
                    continue;
                }
                let tag = format!("r{round}-{:?}-{:?}", target.contender, path).to_lowercase();
                let key = match path {
                    Scenario::First => format!("bench-{tag}"),
                    Scenario::Replay => {
                        let key = format!("bench-replay-{tag}");
                        rt.block_on(storm::send(&http, target, &key, &format!("o-{tag}")))?;
                        key
                    }
                    Scenario::Conflict => {
                        // A first request the backend holds for a minute:
                        // every run request finds it in flight.
                        let key = format!("bench-conflict-{tag}");
                        sim_faults(json!({"slow_next": 1, "slow_ms": 60_000}))?;
                        let (http, url, body, auth, k) = (
                            http.clone(),
                            target.url.clone(),
                            (target.body)(&format!("o-{tag}")),
                            target.authorization.clone(),
                            key.clone(),
                        );
                        rt.spawn(async move {
                            let _ = storm::post_order(&http, &url, &k, body, &auth).await;
                        });
                        std::thread::sleep(Duration::from_millis(500));
                        key
                    }
                };
                let mode = if path == Scenario::First {
                    "unique"
                } else {
                    "same"
                };
                let body = (target.body)(&format!("o-{tag}"));
                eprintln!(
                    "bench: round {} of {}: {} / {}",
                    round + 1,
                    settings.rounds,
                    target.contender.name(),
                    path.name()
                );
                // Loaded (throughput), then one connection at a time (the
                // latency a single customer sees, without queueing).
                for (connections, into) in [(settings.connections, &mut runs), (1, &mut unloaded)] {
                    let key = if mode == "unique" {
                        format!("{key}-c{connections}")
                    } else {
                        key.clone()
                    };
                    let result = wrk::run(
                        &target.url,
                        mode,
                        &key,
                        &body,
                        &target.authorization,
                        connections,
                        settings.secs,
                    )?;
                    eprintln!(
                        "bench:   {connections} connection(s): {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} of {} not 2xx",
                        result.rps, result.p50_ms, result.p99_ms, result.non_2xx, result.requests
                    );
                    into.entry((target.contender, path))
                        .or_default()
                        .push(result);
                }
            }
        }
    }
    sim_faults(json!({"slow_next": 0, "slow_ms": 0}))?;

    eprintln!("bench: duplicate storms");
    let mut storms = Vec::new();
    for target in &targets {
        storms.push(rt.block_on(storm::storm(
            &http,
            &sim.url,
            target,
            settings.storm_keys,
            settings.storm_copies,
        ))?);
    }
    for storm in &storms {
        eprintln!(
            "bench:   {}: {} of {} keys charged exactly once, {}-{} charges per key",
            storm.contender.name(),
            storm.exactly_once,
            storm.keys,
            storm.min,
            storm.max
        );
    }
    drop((floor, chargeonce, naive));

    eprintln!("bench: cold starts");
    let mut cold: BTreeMap<Contender, Vec<Duration>> = BTreeMap::new();
    for _ in 0..3 {
        for contender in [Contender::Floor, Contender::ChargeOnce] {
            let t0 = Instant::now();
            let worker = start_worker(contender, &workers_toml, &backend)?;
            cold.entry(contender).or_default().push(t0.elapsed());
            drop(worker);
        }
    }

    eprintln!("bench: the Worker bundle and the widget");
    let bundle = machine::worker_bundle(&root)?;
    let widget = machine::widget(&root)?;
    let machine = machine::describe(&root);
    let markdown = report::write(&report::Inputs {
        runs: &runs,
        unloaded: &unloaded,
        storms: &storms,
        cold: &cold,
        bundle: &bundle,
        widget: &widget,
        machine: &machine,
        settings: format!(
            "{} rounds of {} s per contender and path, {} connections, wrk -t1; storms of {} keys × {} identical requests",
            settings.rounds, settings.secs, settings.connections, settings.storm_keys, settings.storm_copies
        ),
        elapsed: started.elapsed(),
    });
    std::fs::write(root.join("BENCHMARKS.md"), &markdown).map_err(|e| e.to_string())?;
    println!("{markdown}");
    eprintln!("bench: wrote BENCHMARKS.md");
    Ok(())
}

fn start_worker(
    contender: Contender,
    workers_toml: &Path,
    backend: &str,
) -> Result<WranglerDev, String> {
    let var = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let (config, vars): (Option<PathBuf>, Vec<(String, String)>) = match contender {
        Contender::Floor => (
            Some(workers_toml.to_owned()),
            vec![var("MODE", "floor"), var("PAYMENT_BACKEND_URL", backend)],
        ),
        Contender::NaiveKv => (
            Some(workers_toml.to_owned()),
            vec![var("MODE", "naive-kv"), var("PAYMENT_BACKEND_URL", backend)],
        ),
        Contender::ChargeOnce => (
            None,
            vec![
                var("PAYMENT_BACKEND", "passthrough"),
                var("PAYMENT_BACKEND_URL", backend),
                var("PASSTHROUGH_SECRET", DEFAULT_SECRET),
                var("ORDER_TOKEN_SECRET", ORDER_TOKEN_SECRET),
            ],
        ),
    };
    WranglerDev::start(config.as_deref(), WRANGLER_FLAGS, &vars)
        .map_err(|e| format!("{}: {e}", contender.name()))
}
