//! `make bench`: ChargeOnce against its floor and its peers, all in front of
//! the same payment simulator, driven by the same load tool (`wrk`),
//! contenders alternating so that drift hits all alike. Every peer also runs
//! beside a pass-through floor on its own runtime, so each one's cost over
//! its floor can be compared. Then a duplicate storm against each, the
//! widget in headless Chromium, and the Worker's size and cold start. It
//! prints what it measures and writes `BENCHMARKS.md`.
//!
//! Settings from the environment: `ROUNDS` (3), `SECS` per run (2),
//! `CONNECTIONS` (16), `STORM_KEYS` (20), `STORM_COPIES` (20),
//! `PROFILE_REQUESTS` (200).

mod machine;
mod profile;
mod report;
mod servers;
mod storm;
mod wrk;

use chargeonce_tests::shop::{now_secs, order_token};
use chargeonce_tests::sim::DEFAULT_SECRET;
use chargeonce_tests::stack::{workspace_root, Paysim};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How many new orders per second of a run ChargeOnce's first-request path
/// is given: several times what it answers here, and the run fails if it
/// ever answers more.
const FIRST_ORDERS_PER_SEC: u64 = 2_500;

/// Everything measured. The floors forward without any idempotency; every
/// other contender has one of them as its own floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contender {
    /// The pass-through Rust Worker on workerd.
    WorkerFloor,
    /// ChargeOnce's edge.
    ChargeOnce,
    /// The hand-written KV get-then-put Worker.
    NaiveKv,
    /// A pass-through axum + reqwest proxy: idempotent-proxy-server's stack.
    RustFloor,
    /// idempotent-proxy-server (crates.io) with Redis.
    IdempotentProxy,
    /// A pass-through `node:http` proxy.
    NodeFloor,
    /// @node-idempotency/core in that proxy.
    NodeIdempotency,
    /// A pass-through Express proxy.
    ExpressFloor,
    /// express-idempotency in that proxy.
    ExpressIdempotency,
}

impl Contender {
    /// Every contender, floors first within each runtime.
    pub const ALL: [Contender; 9] = [
        Self::WorkerFloor,
        Self::ChargeOnce,
        Self::NaiveKv,
        Self::RustFloor,
        Self::IdempotentProxy,
        Self::NodeFloor,
        Self::NodeIdempotency,
        Self::ExpressFloor,
        Self::ExpressIdempotency,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::WorkerFloor => "Worker floor",
            Self::ChargeOnce => "ChargeOnce",
            Self::NaiveKv => "Naive KV Worker (anti-pattern)",
            Self::RustFloor => "Rust floor (axum + reqwest)",
            Self::IdempotentProxy => "idempotent-proxy-server + Redis",
            Self::NodeFloor => "Node floor (node:http)",
            Self::NodeIdempotency => "@node-idempotency/core",
            Self::ExpressFloor => "Express floor",
            Self::ExpressIdempotency => "express-idempotency",
        }
    }

    /// The pass-through on the same runtime (a floor is its own).
    pub fn floor(self) -> Contender {
        match self {
            Self::WorkerFloor | Self::ChargeOnce | Self::NaiveKv => Self::WorkerFloor,
            Self::RustFloor | Self::IdempotentProxy => Self::RustFloor,
            Self::NodeFloor | Self::NodeIdempotency => Self::NodeFloor,
            Self::ExpressFloor | Self::ExpressIdempotency => Self::ExpressFloor,
        }
    }

    /// Whether it forwards without idempotency.
    pub fn is_floor(self) -> bool {
        self.floor() == self
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
    profile_requests: usize,
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
    /// The path orders are POSTed to.
    pub path: String,
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
        secs: var("SECS", 2),
        connections: var("CONNECTIONS", 16),
        storm_keys: var("STORM_KEYS", 20),
        storm_copies: var("STORM_COPIES", 20),
        profile_requests: var("PROFILE_REQUESTS", 200),
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
    let redis = servers::redis()?;
    let redis_url = redis.url.replacen("http://", "redis://", 1);
    eprintln!("bench: starting the contenders (three Workers under wrangler dev, the peers and their floors)");
    let mut running = Vec::new();
    for contender in Contender::ALL {
        running.push((contender, servers::start(contender, &backend, &redis_url)?));
    }
    let bearer = format!("Bearer {DEFAULT_SECRET}");
    let targets: Vec<Target> = running
        .iter()
        .map(|(contender, server)| target(*contender, server.url(), &bearer))
        .collect();
    for target in &targets {
        // One order through each, so a broken contender stops the run here
        // rather than as a table of errors.
        let key = format!("bench-smoke-{:?}-0001", target.contender).to_lowercase();
        rt.block_on(storm::send(&http, target, &key, "o-smoke"))?;
    }

    // Throughput and latency: rounds of every contender on every path, the
    // order rotating each round.
    let mut runs: BTreeMap<(Contender, Scenario), Vec<wrk::Run>> = BTreeMap::new();
    let mut unloaded: BTreeMap<(Contender, Scenario), Vec<wrk::Run>> = BTreeMap::new();
    for round in 0..settings.rounds {
        for path in [Scenario::First, Scenario::Replay, Scenario::Conflict] {
            for i in 0..targets.len() {
                let target = &targets[(i + round) % targets.len()];
                // A floor forwards everything: its paths are all the same.
                if target.contender.is_floor() && path != Scenario::First {
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
                        // A first request the backend holds until both
                        // runs are over: every run request finds it in
                        // flight, and whatever a contender holds for it
                        // (idempotent-proxy-server's pollers keep a Redis
                        // connection each) is released before the next run.
                        let key = format!("bench-conflict-{tag}");
                        let hold_ms = (2 * settings.secs + 2) * 1000;
                        sim_faults(json!({"slow_next": 1, "slow_ms": hold_ms}))?;
                        let (http, url, body, auth, k) = (
                            http.clone(),
                            format!("{}{}", target.url, target.path),
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
                    // ChargeOnce holds an order to one charge whatever its
                    // keys, so its first requests are each a new order: a
                    // file of bodies, more than a run can send.
                    let bodies = (mode == "unique" && target.contender == Contender::ChargeOnce)
                        .then(|| {
                            let file = workspace_root()
                                .join(format!("target/bench/bodies-{tag}-c{connections}.txt"));
                            let lines: Vec<String> = (0..FIRST_ORDERS_PER_SEC * settings.secs)
                                .map(|i| (target.body)(&format!("o-{tag}-c{connections}-{i}")))
                                .collect();
                            std::fs::create_dir_all(file.parent().expect("a folder"))
                                .and_then(|()| std::fs::write(&file, lines.join("\n")))
                                .map(|()| file)
                                .map_err(|e| format!("could not write the bodies: {e}"))
                        })
                        .transpose()?;
                    let result = wrk::run(&wrk::Load {
                        url: &target.url,
                        path: &target.path,
                        mode,
                        key: &key,
                        body: &body,
                        bodies: bodies.as_deref(),
                        authorization: &target.authorization,
                        connections,
                        secs: settings.secs,
                    })?;
                    eprintln!(
                        "bench:   {connections} connection(s): {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} of {} not 2xx",
                        result.rps, result.p50_ms, result.p99_ms, result.non_2xx, result.requests
                    );
                    if bodies.is_some() && result.requests > FIRST_ORDERS_PER_SEC * settings.secs {
                        return Err(format!(
                            "ChargeOnce answered {} first requests, more orders than the {} written: raise FIRST_ORDERS_PER_SEC",
                            result.requests,
                            FIRST_ORDERS_PER_SEC * settings.secs
                        ));
                    }
                    into.entry((target.contender, path))
                        .or_default()
                        .push(result);
                }
            }
        }
    }
    sim_faults(json!({"slow_next": 0, "slow_ms": 0}))?;

    eprintln!(
        "bench: ChargeOnce's Server-Timing, {} sequential orders per path",
        settings.profile_requests
    );
    let find = |c: Contender| targets.iter().find(|t| t.contender == c);
    let (Some(chargeonce), Some(floor)) =
        (find(Contender::ChargeOnce), find(Contender::WorkerFloor))
    else {
        return Err("ChargeOnce and its floor must both run".into());
    };
    let mut profiles = Vec::new();
    for scenario in [Scenario::First, Scenario::Replay] {
        let p = rt.block_on(profile::profile(
            &http,
            chargeonce,
            floor,
            scenario,
            settings.profile_requests,
        ))?;
        eprintln!(
            "bench:   {}: {:?}, client {:.2} ms, floor {:.2} ms",
            scenario.name(),
            p.steps,
            p.client_ms,
            p.floor_ms
        );
        profiles.push(p);
    }

    eprintln!("bench: duplicate storms");
    let mut storms = Vec::new();
    for target in &targets {
        // One floor shows what no idempotency does; the others would repeat it.
        if target.contender.is_floor() && target.contender != Contender::WorkerFloor {
            continue;
        }
        let storm = rt.block_on(storm::storm(
            &http,
            &sim.url,
            target,
            settings.storm_keys,
            settings.storm_copies,
        ))?;
        eprintln!(
            "bench:   {}: {} of {} keys charged exactly once, {}-{} charges per key",
            storm.contender.name(),
            storm.exactly_once,
            storm.keys,
            storm.min,
            storm.max
        );
        storms.push(storm);
    }
    drop(running);
    drop(redis);

    eprintln!("bench: cold starts");
    let mut cold: BTreeMap<Contender, Vec<Duration>> = BTreeMap::new();
    for _ in 0..3 {
        for contender in [Contender::WorkerFloor, Contender::ChargeOnce] {
            let t0 = Instant::now();
            let worker = servers::worker(contender, &backend)?;
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
        profiles: &profiles,
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

/// How `contender` at `url` is called: ChargeOnce's client carries the
/// shop's order token and no credential; the others carry the backend's
/// API key for the proxy to pass on.
fn target(contender: Contender, url: &str, bearer: &str) -> Target {
    let path = match contender {
        // It picks the upstream by the path's name (`URL_ORDERS`).
        Contender::IdempotentProxy => "/URL_ORDERS",
        _ => "/v1/orders",
    };
    Target {
        contender,
        url: url.to_owned(),
        path: path.to_owned(),
        body: match contender {
            Contender::ChargeOnce => Box::new(|r| {
                order(
                    r,
                    Some(order_token(r, 1999, "cus_bench", now_secs() + 3_600)),
                )
            }),
            _ => Box::new(|r| order(r, None)),
        },
        authorization: match contender {
            Contender::ChargeOnce => String::new(),
            _ => bearer.to_owned(),
        },
    }
}
