//! Black-box tests of the edge: real HTTP to the real Worker under workerd
//! (`wrangler dev`, local KV and Durable Objects) in front of the real payment
//! simulator process. Every test reads the simulator's ledger, so "charged
//! once" means the backend executed one charge, not that the edge said so.
//!
//! One stack serves the whole suite (wrangler takes seconds to start); tests
//! run one at a time because simulator faults are global, and each uses its
//! own order references and keys.

// This file runs without libtest (`harness = false`), so clippy's
// allow-unwrap-in-tests does not reach it; a panic is the failure report here.
#![allow(clippy::unwrap_used)]

use chargeonce_protocol::token::EXAMPLE_SECRET;
use chargeonce_protocol::{Attempt, IdempotencyKey, OrderClaims, Phase, RetryPolicy, ScopedKey};
use chargeonce_tests::client::{now_ms, Bank, CheckoutClient, PageOrder};
use chargeonce_tests::shop::{self, now_secs, order_token, signed_order, signed_order_for};
use chargeonce_tests::signers::Signer;
use chargeonce_tests::sim::{Charge, Faults, Ledger, LookupLog, DEFAULT_SECRET};
use chargeonce_tests::stack::{Stack, StackOptions};
use futures_util::future::join_all;
use libtest_mimic::{Arguments, Failed, Trial};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The edge's backend timeout in this suite: short, so the timeout test is quick.
/// Long enough that the storm's one forward, queued behind 199 duplicates in
/// one isolate on a 2-core machine, still gets its answer.
const BACKEND_TIMEOUT_MS: u64 = 3_000;
/// The suite's lease: longer than the timeout, as the edge requires, and
/// longer than a widget that counts 409s as retries would keep trying.
const LEASE_SECS: u64 = 12;
/// The suite's TTL: KV's minimum, so an answer (or a doubt) outlives it
/// within one test.
const TTL_SECS: u64 = 60;
/// How long after a forward a lookup that finds nothing is believed: longer
/// than any lookup lag a test sets.
const SETTLE_SECS: u64 = 12;
const ALLOWED_ORIGIN: &str = "http://shop.test";

struct Suite {
    stack: Stack,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

/// What came back from the edge.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn replayed(&self) -> bool {
        self.header("Idempotent-Replayed") == Some("true")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts an RFC 9457 body with this status and returns it.
    fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("Content-Type"),
            Some("application/problem+json")
        );
        let body = self.json();
        for member in ["type", "title", "detail"] {
            assert!(body[member].is_string(), "problem lacks {member}: {body}");
        }
        assert_eq!(body["status"], status);
        body
    }
}

/// An order the shop's server signed, for the tests' customer.
fn order(order_ref: &str, amount: u64) -> Value {
    signed_order(order_ref, amount)
}

fn paysim() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_paysim"))
}

impl Suite {
    fn new(stack: Stack) -> Self {
        Self {
            stack,
            rt: tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        }
    }

    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    async fn sim(&self, path: &str, body: Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.stack.sim_url))
            .json(&body)
            .send()
            .await
            .expect("the simulator answers");
        assert!(
            res.status().is_success(),
            "simulator {path}: {}",
            res.status()
        );
    }

    async fn reset(&self, faults: Value) {
        self.sim("/__sim/reset", json!({})).await;
        self.sim("/__sim/faults", faults).await;
    }

    async fn charges(&self, order_ref: &str) -> Vec<Charge> {
        self.ledger()
            .await
            .charges
            .into_iter()
            .filter(|c| c.order_ref.as_deref() == Some(order_ref))
            .collect()
    }

    async fn ledger(&self) -> Ledger {
        self.http
            .get(format!("{}/__sim/ledger", self.stack.sim_url))
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("the ledger is JSON")
    }

    /// The simulator's faults, read from the simulator itself.
    async fn sim_faults(&self) -> Faults {
        self.http
            .get(format!("{}/__sim/faults", self.stack.sim_url))
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("the faults are JSON")
    }

    /// Sends each request and checks it is refused with its 4xx status as
    /// problem+json (never a 5xx; `Allow` with a 405), then that none of them
    /// reached the backend.
    async fn assert_refused_and_not_forwarded(
        &self,
        cases: Vec<(String, reqwest::RequestBuilder, u16)>,
    ) {
        for (name, req, status) in cases {
            let reply = self.send(req).await;
            assert!(reply.status < 500, "{name} caused a {}", reply.status);
            assert_eq!(
                reply.status,
                status,
                "{name}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            reply.problem(status);
            if status == 405 {
                assert_eq!(reply.header("Allow"), Some("GET, POST, OPTIONS"), "{name}");
            }
        }
        let ledger = self.ledger().await;
        assert!(
            ledger.charges.is_empty(),
            "a refused request reached the backend: {:?}",
            ledger.charges
        );
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("the edge answers");
        Reply {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.bytes().await.expect("the body arrives").to_vec(),
        }
    }

    /// The status lookup: `GET /v1/orders` with a key and an order token.
    async fn status(&self, key: &str, token: &str) -> Reply {
        self.send(
            self.http
                .get(format!("{}/v1/orders", self.stack.edge_url))
                .header("Idempotency-Key", key)
                .header("Authorization", format!("Bearer {token}")),
        )
        .await
    }

    /// The lookups the simulator answered since the last reset.
    async fn lookups(&self) -> LookupLog {
        self.http
            .get(format!("{}/__sim/lookups", self.stack.sim_url))
            .send()
            .await
            .expect("the simulator answers")
            .json()
            .await
            .expect("the lookup log is JSON")
    }

    /// The lookups the simulator answered for `key` of `customer`, found by
    /// the backend key the edge derives from them.
    async fn lookups_for(&self, customer: &str, key: &str) -> Vec<u16> {
        let key = IdempotencyKey::parse(Some(key)).unwrap();
        let backend_key = ScopedKey::new(Some(customer), key).backend_key();
        self.lookups()
            .await
            .lookups
            .into_iter()
            .filter(|l| l.query.contains(&backend_key))
            .map(|l| l.status)
            .collect()
    }

    /// Posts as a client retries: a 409 (another request holds the key,
    /// here perhaps the key's object checking an unknown outcome at once) is
    /// waited out for its `Retry-After`, a few times at most.
    async fn retry_past_409s(&self, key: &str, body: &Value) -> Reply {
        let mut reply = self.post(key, body).await;
        for _ in 0..5 {
            if reply.status != 409 {
                break;
            }
            let wait: u64 = reply.header("Retry-After").unwrap().parse().unwrap();
            tokio::time::sleep(Duration::from_secs(wait)).await;
            reply = self.post(key, body).await;
        }
        reply
    }

    /// Posts `body` under `key` and, `after` the post started, sends `then`
    /// while the post is in flight; returns both replies.
    async fn while_posting(
        &self,
        key: &str,
        body: &Value,
        after: Duration,
        then: impl std::future::Future<Output = Reply>,
    ) -> (Reply, Reply) {
        let later = async {
            tokio::time::sleep(after).await;
            then.await
        };
        tokio::join!(self.post(key, body), later)
    }

    /// Asserts that `reply` is the key's stored charge (200, replayed) and
    /// that the simulator made exactly that one charge for `order_ref`.
    async fn assert_the_one_charge(&self, reply: &Reply, order_ref: &str) {
        assert_eq!(
            reply.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(reply.replayed(), "the charge was an earlier request's");
        let charges = self.charges(order_ref).await;
        assert_eq!(charges.len(), 1, "one charge for {order_ref}: {charges:?}");
        assert_eq!(reply.json()["id"], charges[0].id);
    }

    /// A checkout client that behaves as the widget does with its defaults.
    fn widget(&self) -> CheckoutClient {
        CheckoutClient::new(
            self.http.clone(),
            format!("{}/v1/orders", self.stack.edge_url),
            RetryPolicy::default(),
        )
    }

    /// `POST /v1/orders` with a JSON body and a key.
    async fn post(&self, key: &str, body: &Value) -> Reply {
        self.send(
            self.http
                .post(format!("{}/v1/orders", self.stack.edge_url))
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", key)
                .body(body.to_string()),
        )
        .await
    }
}

fn two_hundred_parallel_duplicates_charge_once_with_a_naive_backend(s: &Suite) {
    s.block_on(async {
        // A little backend latency makes the duplicates overlap the first.
        s.reset(json!({"honor_idempotency": false, "latency_ms": 300}))
            .await;
        let body = order("storm-1", 4200);
        let replies = join_all((0..200).map(|_| s.post("storm-key-000000001", &body))).await;
        let charges = s.charges("storm-1").await;
        assert_eq!(
            charges.len(),
            1,
            "the backend charged {} times",
            charges.len()
        );
        let first: Vec<_> = replies
            .iter()
            .filter(|r| r.status == 200 && !r.replayed())
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        for reply in &replies {
            *statuses.entry(reply.status).or_insert(0) += 1;
        }
        assert_eq!(
            first.len(),
            1,
            "exactly one response is the first, not replayed; statuses: {statuses:?}"
        );
        let charge_body = &first[0].body;
        assert_eq!(
            serde_json::from_slice::<Value>(charge_body).unwrap()["id"],
            charges[0].id
        );
        for reply in &replies {
            match reply.status {
                200 => assert_eq!(&reply.body, charge_body, "a replay differs from the charge"),
                409 => {
                    reply.problem(409);
                    assert!(reply.header("Retry-After").is_some());
                }
                other => panic!(
                    "unexpected {other}: {}",
                    String::from_utf8_lossy(&reply.body)
                ),
            }
            assert_eq!(reply.header("Idempotency-Key"), Some("storm-key-000000001"));
        }
    });
}

fn a_response_lost_after_the_charge_is_reconciled_not_charged_again(s: &Suite) {
    s.block_on(async {
        // A naive backend: the retry is saved by the edge's lookup alone.
        s.reset(json!({"honor_idempotency": false, "drop_after_commit_next": 1}))
            .await;
        let body = order("lost-1", 1500);
        let lost = s.post("lost-key-0000000001", &body).await;
        lost.problem(502);
        assert!(
            lost.header("Retry-After").is_some(),
            "the client is told to retry"
        );
        let retry = s.retry_past_409s("lost-key-0000000001", &body).await;
        assert_eq!(retry.status, 200);
        assert!(retry.replayed(), "the charge was made by the first request");
        let charges = s.charges("lost-1").await;
        assert_eq!(charges.len(), 1, "the retry must not charge again");
        assert_eq!(
            retry.json()["id"],
            charges[0].id,
            "the retry gets the original charge"
        );
        let again = s.post("lost-key-0000000001", &body).await;
        assert!(again.replayed());
        assert_eq!(again.body, retry.body);
    });
}

fn a_backend_failure_then_a_retry_charges_once(s: &Suite) {
    s.block_on(async {
        // A naive backend: only the edge stands between the retry and a
        // second charge.
        s.reset(json!({"honor_idempotency": false, "fail_next": 1}))
            .await;
        let body = order("fail-1", 990);
        let failed = s.post("fail-key-0000000001", &body).await;
        failed.problem(503);
        assert!(failed.header("Retry-After").is_some());
        assert!(
            s.charges("fail-1").await.is_empty(),
            "a 503 charged nothing"
        );
        let retry = s.post("fail-key-0000000001", &body).await;
        assert_eq!(retry.status, 200);
        assert!(
            !retry.replayed(),
            "the failure was not stored, so this is the first answer"
        );
        let again = s.post("fail-key-0000000001", &body).await;
        assert!(again.replayed());
        assert_eq!(s.charges("fail-1").await.len(), 1);
    });
}

fn the_same_key_with_another_amount_is_refused_with_422(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        assert_eq!(
            s.post("reuse-key-000000001", &order("reuse-1", 1000))
                .await
                .status,
            200
        );
        let reused = s.post("reuse-key-000000001", &order("reuse-1", 2000)).await;
        let problem = reused.problem(422);
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .ends_with("idempotency-key-reused"));
        assert_eq!(s.charges("reuse-1").await.len(), 1);
    });
}

fn a_decline_is_final_and_replayed_without_a_charge(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let mut body = order("decline-1", 500);
        body["payment_method"] = json!("pm_card_chargeDeclined");
        let declined = s.post("decline-key-0000001", &body).await;
        assert_eq!(declined.status, 402);
        assert_eq!(declined.json()["error"]["code"], "card_declined");
        let again = s.post("decline-key-0000001", &body).await;
        assert_eq!(again.status, 402);
        assert!(again.replayed(), "a decline is a final answer");
        assert_eq!(again.body, declined.body);
        assert!(s.charges("decline-1").await.is_empty());
    });
}

/// The step names in a `Server-Timing` value, each checked to carry a whole
/// number of milliseconds.
fn timing_steps(reply: &Reply) -> Vec<String> {
    let value = reply.header("Server-Timing").unwrap_or_default();
    value
        .split(", ")
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, dur) = entry
                .split_once(";dur=")
                .unwrap_or_else(|| panic!("a Server-Timing entry without dur: {value}"));
            assert!(dur.parse::<u64>().is_ok(), "dur is not whole ms: {value}");
            name.to_owned()
        })
        .collect()
}

fn server_timing_names_each_step_a_request_waited_on(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let body = order("timing-1", 1999);
        let first = s.post("timing-key-00000001", &body).await;
        assert_eq!(first.status, 200);
        assert_eq!(
            timing_steps(&first),
            ["read", "kv", "claim", "order", "backend", "complete"],
            "a first request waits on each of these once"
        );
        let again = s.post("timing-key-00000001", &body).await;
        assert!(again.replayed());
        // Answered from the replay cache, or (if its write is not visible
        // yet) by the object: never by the backend.
        let steps = timing_steps(&again);
        assert_eq!(steps[..2], ["read", "kv"]);
        assert!(
            steps[2..].iter().all(|s| s == "claim"),
            "a replay never calls the backend: {steps:?}"
        );
        let without_key = |method| {
            s.send(
                s.http
                    .request(method, format!("{}/v1/orders", s.stack.edge_url))
                    .header("Content-Type", "application/json")
                    .body(body.to_string()),
            )
        };
        // Refused by the checks: it waited on nothing but its own body.
        let refused = without_key(reqwest::Method::POST).await;
        assert_eq!(refused.status, 400);
        assert_eq!(timing_steps(&refused), ["read"]);
        // Refused before its body is read: nothing to report.
        let early = without_key(reqwest::Method::PUT).await;
        assert_eq!(early.status, 405);
        assert_eq!(early.header("Server-Timing"), None);
    });
}

fn a_duplicate_while_in_flight_gets_409_with_retry_after(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false, "latency_ms": 1000}))
            .await;
        let body = order("flight-1", 700);
        let again = s.post("flight-key-00000001", &body);
        let (first, second) = s
            .while_posting(
                "flight-key-00000001",
                &body,
                Duration::from_millis(400),
                again,
            )
            .await;
        assert_eq!(first.status, 200);
        second.problem(409);
        assert_eq!(second.header("Retry-After"), Some("1"));
        assert_eq!(s.charges("flight-1").await.len(), 1);
    });
}

fn a_backend_timeout_holds_the_key_for_the_lease_then_reconciles(s: &Suite) {
    s.block_on(async {
        // A naive backend that answers after the edge gave up, and charges
        // anyway. The edge cannot know, so it holds the key for the lease
        // and then asks the backend before forwarding again.
        let slow = BACKEND_TIMEOUT_MS + 1_000;
        s.reset(json!({"honor_idempotency": false, "latency_ms": slow}))
            .await;
        let body = order("timeout-1", 1234);
        let started = std::time::Instant::now();
        let timed_out = s.post("timeout-key-0000001", &body).await;
        timed_out.problem(504);
        assert!(timed_out.header("Retry-After").is_some());
        s.sim("/__sim/faults", json!({"latency_ms": 0})).await;
        let mut retry = s.post("timeout-key-0000001", &body).await;
        retry.problem(409);
        while retry.status == 409 && started.elapsed() < Duration::from_secs(LEASE_SECS + 10) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            retry = s.post("timeout-key-0000001", &body).await;
        }
        assert!(
            started.elapsed() >= Duration::from_secs(LEASE_SECS),
            "the key was free before the lease ran out"
        );
        s.assert_the_one_charge(&retry, "timeout-1").await;
    });
}

/// Problem 1 of the settling-keys issue: an unknown outcome was forgotten
/// once its TTL passed, and a retry then forwarded unchecked. Now it becomes
/// a tombstone that still forces a reconciliation, however late the retry.
fn an_unknown_outcome_outlives_its_ttl_and_a_late_retry_still_reconciles(s: &Suite) {
    s.block_on(async {
        // A naive backend whose lookup is down: the edge cannot settle the
        // key, however often it asks.
        s.reset(json!({
            "honor_idempotency": false,
            "drop_after_commit_next": 1,
            "lookups_down": true
        }))
        .await;
        let body = order("tomb-1", 3300);
        let key = "tomb-key-000000001";
        s.post(key, &body).await.problem(502);
        assert_eq!(s.charges("tomb-1").await.len(), 1);
        // Past the TTL (and the object's last check) the key is unresolved.
        tokio::time::sleep(Duration::from_secs(TTL_SECS + 6)).await;
        let asked = s.lookups_for(shop::CUSTOMER, key).await;
        s.sim("/__sim/faults", json!({"lookups_down": false})).await;
        let retry = s.post(key, &body).await;
        // The late retry reconciles; it must not charge again.
        s.assert_the_one_charge(&retry, "tomb-1").await;
        let token = order_token("tomb-2", 1, shop::CUSTOMER, now_secs() + 3_600);
        let status = s.status(key, &token).await;
        assert!(status.replayed());
        assert_eq!(status.body, retry.body);
        // Meanwhile the object kept asking on its own (at once, 5 s and
        // 60 s later: the last check, at the TTL's end), and then logged
        // the key as a tombstone.
        assert!(
            asked.len() >= 3 && asked.iter().all(|status| *status == 503),
            "the edge did not keep reconciling by itself: {asked:?}"
        );
        assert!(
            s.stack.wrangler_log().contains("kept as a tombstone"),
            "the unresolved key was not logged"
        );
    });
}

/// Stripe saves a 500 under its key and replays it to every retry with the
/// key ("including 500 errors", docs.stripe.com/idempotency), so a
/// reconciling forward gets the same 500 again. The key must not stay
/// unknown: once a lookup made a settle window after the last forward finds
/// nothing, the key's object settles it as "not charged" by itself, and a
/// new click, under a new key, charges once. A forward answered with the
/// saved 500 ran nothing at the backend, so the customer's retries do not
/// start the settle window again.
fn a_saved_500_settles_as_not_charged_while_the_customer_retries_and_a_new_key_charges_once(
    s: &Suite,
) {
    s.block_on(async {
        s.reset(json!({"fail_saved_next": 1})).await;
        let body = order("saved-500", 2900);
        let key = "saved-500-key-0001";
        s.post(key, &body).await.problem(502);
        // The retry reconciles, finds nothing yet, forwards again under the
        // same key, and gets the saved 500 replayed (after a 409 if the
        // object's own check holds the key just then).
        let retry = s.retry_past_409s(key, &body).await;
        let replayed_500 = retry.problem(502);
        assert!(
            replayed_500["detail"]
                .as_str()
                .unwrap()
                .contains("replayed the 500 it saved"),
            "{replayed_500}"
        );
        assert!(s.charges("saved-500").await.is_empty());
        // The customer keeps retrying. Each retry gets the saved 500 again,
        // which ran nothing: it does not restart the settle window, so the
        // key settles once the window after the first forward has passed.
        let deadline = std::time::Instant::now() + Duration::from_secs(SETTLE_SECS + 8);
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let retry = s.post(key, &body).await;
            if retry.status == 410 {
                break;
            }
            assert!(
                matches!(retry.status, 409 | 502),
                "{} {}",
                retry.status,
                String::from_utf8_lossy(&retry.body)
            );
            assert!(
                std::time::Instant::now() < deadline,
                "still {} after the settle window: retries keep the key from settling",
                retry.status
            );
        }
        let token = order_token("saved-500-status", 1, shop::CUSTOMER, now_secs() + 600);
        let status = s.status(key, &token).await;
        assert_eq!((status.status, status.replayed()), (410, true));
        assert!(status.problem(410)["type"]
            .as_str()
            .unwrap()
            .ends_with(":attempt-not-charged"));
        let again = s.post(key, &body).await;
        assert_eq!((again.status, again.replayed()), (410, true));
        assert!(s.charges("saved-500").await.is_empty());
        // The customer clicks again: a new key, one charge.
        let placed = s.post("saved-500-key-0002", &body).await;
        assert_eq!((placed.status, placed.replayed()), (200, false));
        let charges = s.charges("saved-500").await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(placed.json()["id"], charges[0].id);
    });
}

/// Problem 2: the widget gave up before the lease ended, leaving the charge
/// unrecorded unless the customer clicked again. Now a 409's `Retry-After`
/// is the lease time left and 409s spend no retries: the widget's defaults
/// wait the lease out and get the charge, without a second click.
fn the_widget_waits_out_a_lease_and_gets_the_charge_without_a_second_click(s: &Suite) {
    s.block_on(async {
        // A backend that answers after the edge gave up (and charges).
        s.reset(json!({
            "honor_idempotency": false,
            "slow_next": 1,
            "slow_ms": BACKEND_TIMEOUT_MS + 2_000
        }))
        .await;
        let widget = s.widget();
        let mut page = PageOrder::new(
            "wait-1",
            2100,
            shop::CUSTOMER,
            "pm_card_visa",
            now_secs() + 3_600,
        );
        let started = std::time::Instant::now();
        let (mut attempt, first) = Attempt::submit(None, "wait-1", now_ms(), true, || {
            "wait-key-000000001".into()
        });
        // Another tab, after the edge's timeout, reads the lease from the 409.
        let probe = async {
            tokio::time::sleep(Duration::from_millis(BACKEND_TIMEOUT_MS + 500)).await;
            s.post(
                "wait-key-000000001",
                &serde_json::from_str(&page.body()).unwrap(),
            )
            .await
        };
        let life = Duration::from_secs(3_600);
        let mut driven = page.clone();
        let ((), probe) = tokio::join!(
            widget.drive(&mut attempt, first, &mut driven, || 0.0, life),
            probe
        );
        probe.problem(409);
        let retry_after: u64 = probe.header("Retry-After").unwrap().parse().unwrap();
        assert!(
            retry_after > 5 && retry_after <= LEASE_SECS,
            "a 409 past the timeout must say when the lease ends, not {retry_after}"
        );
        assert!(
            matches!(attempt.phase(), Phase::Placed { .. }),
            "the widget gave up: {:?}",
            attempt.phase()
        );
        assert!(started.elapsed() >= Duration::from_secs(LEASE_SECS));
        let charges = s.charges("wait-1").await;
        assert_eq!(charges.len(), 1);
        let Phase::Placed { body, .. } = attempt.phase() else {
            unreachable!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap()["id"],
            charges[0].id
        );
        page.refresh_token(now_secs() + 60);
        assert!(s.status(attempt.key(), page.token()).await.replayed());
    });
}

/// Problem 3: an order token that expired during reconciliation made the
/// widget treat the 403 as final, and the next click used a new key, which a
/// backend that honours keys charges again. Now the widget asks the page
/// for a fresh token and resends with the same key.
fn an_expired_token_mid_reconciliation_keeps_the_key_and_charges_once(s: &Suite) {
    s.block_on(async {
        // Stripe-like: keys honoured, lookups a while behind the charges
        // (within the edge's settle window), the first answer lost.
        s.reset(json!({
            "drop_after_commit_next": 1,
            "search_lag_ms": (SETTLE_SECS - 2) * 1000
        }))
        .await;
        let widget = s.widget();
        // A token that expires before the first retry.
        let mut page = PageOrder::new(
            "renew-1",
            5600,
            shop::CUSTOMER,
            "pm_card_visa",
            now_secs() + 1,
        );
        let key = "renew-key-00000001";
        let (mut attempt, first) = Attempt::submit(None, "renew-1", now_ms(), true, || key.into());
        widget
            .drive(
                &mut attempt,
                first,
                &mut page,
                || 1.0,
                Duration::from_secs(3_600),
            )
            .await;
        assert!(
            matches!(attempt.phase(), Phase::Placed { .. }),
            "{:?}",
            attempt.phase()
        );
        assert_eq!(attempt.key(), key, "the key never changed");
        assert_eq!(
            widget
                .counters
                .token_refreshes
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "the expired token was refreshed once"
        );
        let charges = s.charges("renew-1").await;
        assert_eq!(charges.len(), 1, "one charge for the order");
        let Phase::Placed { body, .. } = attempt.phase() else {
            unreachable!()
        };
        assert_eq!(
            serde_json::from_str::<Value>(body).unwrap()["id"],
            charges[0].id
        );
    });
}

/// The read-only status lookup: what became of a key, for the customer who
/// holds any fresh order token; it never forwards anything.
fn the_status_lookup_tells_what_became_of_a_key_and_forwards_nothing(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let placed = s.post("status-key-0000001", &order("status-1", 4400)).await;
        assert_eq!(placed.status, 200);
        // Any unexpired token the shop signed for this customer will do.
        let other_order = order_token("status-other", 1, shop::CUSTOMER, now_secs() + 600);
        let answered = s.status("status-key-0000001", &other_order).await;
        assert_eq!(answered.status, 200);
        assert!(answered.replayed());
        assert_eq!(answered.body, placed.body);
        let unknown = s.status("status-key-0000002", &other_order).await;
        unknown.problem(404);
        assert!(unknown.json()["type"]
            .as_str()
            .unwrap()
            .ends_with(":order-not-found"));

        // In flight: pending, come back later.
        s.sim("/__sim/faults", json!({"latency_ms": 1_500})).await;
        let body = order("status-3", 10);
        let asked = s.status("status-key-0000003", &other_order);
        let (slow, pending) = s
            .while_posting(
                "status-key-0000003",
                &body,
                Duration::from_millis(500),
                asked,
            )
            .await;
        assert_eq!(slow.status, 200);
        pending.problem(202);
        assert!(pending.json()["type"]
            .as_str()
            .unwrap()
            .ends_with(":order-pending"));
        assert!(pending.header("Retry-After").is_some());
        s.sim("/__sim/faults", json!({"latency_ms": 0})).await;

        // Bad input: a clear 4xx, never a 5xx, and nothing reaches the backend.
        let charges_before = s.ledger().await.charges.len();
        let lookups_before = s.lookups().await.lookups.len();
        let expired = order_token("status-1", 4400, shop::CUSTOMER, now_secs() - 1);
        let bobs = order_token("status-1", 4400, "cus_bob", now_secs() + 600);
        let mut forged = other_order.clone();
        forged.replace_range(forged.len() - 4.., "AAAA");
        let bearer = |token: &str| Some(format!("Bearer {token}"));
        let key = Some("status-key-0000001");
        let cases = [
            ("no token", key, None, 401),
            (
                "not a bearer token",
                key,
                Some("Basic YWxhZGRpbjpvcGVu".into()),
                401,
            ),
            ("a forged token", key, bearer(&forged), 403),
            ("garbage for a token", key, bearer("v1.e30"), 403),
            ("an expired token", key, bearer(&expired), 403),
            ("another customer's token", key, bearer(&bobs), 404),
            ("no key", None, bearer(&other_order), 400),
            ("a malformed key", Some("short"), bearer(&other_order), 400),
            (
                "a guessable key",
                Some("aaaaaaaaaaaaaaaa"),
                bearer(&other_order),
                404,
            ),
        ];
        let url = format!("{}/v1/orders", s.stack.edge_url);
        for (name, key, authorization, status) in cases {
            let mut request = s.http.get(&url);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(authorization) = authorization {
                request = request.header("Authorization", authorization);
            }
            let reply = s.send(request).await;
            assert!(reply.status < 500, "{name} caused a {}", reply.status);
            assert_eq!(
                reply.status,
                status,
                "{name}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            reply.problem(status);
            assert!(
                !reply.replayed(),
                "{name} was shown another customer's answer"
            );
        }
        assert_eq!(s.ledger().await.charges.len(), charges_before);
        assert_eq!(s.lookups().await.lookups.len(), lookups_before);
    });
}

/// Problem 4: the lease covered one backend timeout, but a reconciling
/// request may spend one on its lookup and another on its forward, so its
/// forward could still be running when another request took the key over.
/// Now the claim is renewed just before the forward.
fn a_reconciling_forward_keeps_the_key_for_a_whole_lease(_: &Suite) {
    // Its own stack: a lease shorter than two backend timeouts, which the
    // edge accepts. The backend is naive, but the edge is told it keeps keys
    // (as Stripe does), so it may forward again before the settle window
    // ends; the test is about the lease alone.
    let options = StackOptions {
        vars: vec![
            ("BACKEND_TIMEOUT_MS".into(), "3000".into()),
            ("CLAIM_LEASE_SECS".into(), "5".into()),
            ("LOOKUP_SETTLE_SECS".into(), "60".into()),
            ("BACKEND_KEY_RETENTION_SECS".into(), "3600".into()),
        ],
        dev_simulator_routes: false,
        ..StackOptions::default()
    };
    let s = Suite::new(Stack::start(paysim(), DEFAULT_SECRET, &options).expect("a stack"));
    s.block_on(async {
        // The first forward runs past the edge's timeout and fails without
        // charging: after its lease the key is unknown, with nothing to find.
        s.reset(json!({
            "honor_idempotency": false,
            "slow_next": 1,
            "slow_ms": 3_500,
            "fail_next": 1
        }))
        .await;
        let body = order("renew-lease-1", 7100);
        let key = "renew-lease-key-01";
        let started = std::time::Instant::now();
        s.post(key, &body).await.problem(504);
        // Past the lease: the key is unknown, and the object's own first
        // check (at once) has found nothing; its next is after the settle
        // window, so the faults below are the retry's alone.
        tokio::time::sleep(Duration::from_millis(6_500).saturating_sub(started.elapsed())).await;
        // The retry: a lookup and a forward, each just under the timeout.
        s.sim(
            "/__sim/faults",
            json!({"lookup_slow_next": 1, "lookup_slow_ms": 2_900, "slow_next": 1, "slow_ms": 2_900}),
        )
        .await;
        // Another request just after the first one's original lease.
        let (slow, other) = s
            .while_posting(key, &body, Duration::from_millis(5_250), s.post(key, &body))
            .await;
        assert_eq!(
            slow.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&slow.body)
        );
        let charges = s.charges("renew-lease-1").await;
        assert_eq!(
            charges.len(),
            1,
            "two forwards of one key ran at once: {charges:?}"
        );
        assert_eq!(slow.json()["id"], charges[0].id);
        assert!(
            other.status == 409 || (other.status == 200 && other.replayed()),
            "the second request must wait or replay, not forward: {} {}",
            other.status,
            String::from_utf8_lossy(&other.body)
        );
    });
}

fn customers_never_see_each_others_results(s: &Suite) {
    s.block_on(async {
        // An idempotent backend: the key it is sent is scoped per customer
        // too, so its own deduplication does not join the two either.
        s.reset(json!({})).await;
        let alice = signed_order_for("tenant-1", 100, "cus_alice");
        let bob = signed_order_for("tenant-1", 100, "cus_bob");
        let a = s.post("shared-key-00000001", &alice).await;
        let b = s.post("shared-key-00000001", &bob).await;
        assert_eq!((a.status, b.status), (200, 200), "{:?}", b.json());
        assert!(!b.replayed(), "bob must not get alice's stored response");
        assert_eq!(b.json()["metadata"]["customer"], "cus_bob");
        assert_ne!(a.json()["id"], b.json()["id"]);
        let again = s.post("shared-key-00000001", &alice).await;
        assert_eq!(again.body, a.body, "alice still gets her own answer");
        let charges = s.charges("tenant-1").await;
        assert_eq!(charges.len(), 2);
        assert_ne!(charges[0].idempotency_key, charges[1].idempotency_key);
        // Bob cannot claim to be alice: the token names the customer.
        let mut forged = bob.clone();
        forged["customer"] = json!("cus_alice");
        s.post("shared-key-00000001", &forged).await.problem(403);
    });
}

fn the_quoted_key_form_is_the_same_key(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let body = order("quoted-1", 300);
        assert_eq!(s.post("quoted-key-00000001", &body).await.status, 200);
        let quoted = s.post("\"quoted-key-00000001\"", &body).await;
        assert!(quoted.replayed());
        assert_eq!(
            quoted.header("Idempotency-Key"),
            Some("quoted-key-00000001")
        );
        assert_eq!(s.charges("quoted-1").await.len(), 1);
    });
}

fn malformed_requests_get_their_status_and_are_never_forwarded(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let url = format!("{}/v1/orders", s.stack.edge_url);
        let good = order("bad-input-1", 100).to_string();
        let with = |body: &str, key: Option<&str>, content_type: Option<&str>| {
            let mut req = s.http.post(&url).body(body.to_owned());
            if let Some(key) = key {
                req = req.header("Idempotency-Key", key);
            }
            if let Some(ct) = content_type {
                req = req.header("Content-Type", ct);
            }
            req
        };
        let json_ct = Some("application/json");
        let key = Some("bad-input-key-00001");
        let field = |name: &str, value: Value| {
            let mut body = order("bad-input-1", 100);
            body[name] = value;
            body.to_string()
        };
        let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
            // A GET is the status lookup, which needs a key first.
            ("GET", s.http.get(&url), 400),
            (
                "PUT",
                s.http
                    .put(&url)
                    .header("Content-Type", "application/json")
                    .body(good.clone()),
                405,
            ),
            ("DELETE", s.http.delete(&url), 405),
            ("no content type", with(&good, key, None), 415),
            ("text/plain", with(&good, key, Some("text/plain")), 415),
            (
                "form",
                with(&good, key, Some("application/x-www-form-urlencoded")),
                415,
            ),
            (
                "latin-1 JSON",
                with(&good, key, Some("application/json; charset=latin1")),
                415,
            ),
            (
                "17 KiB body",
                with(&" ".repeat(17 * 1024), key, json_ct),
                413,
            ),
            ("no key", with(&good, None, json_ct), 400),
            ("empty key", with(&good, Some(""), json_ct), 400),
            (
                "256-character key",
                with(&good, Some(&"k".repeat(256)), json_ct),
                400,
            ),
            (
                "key with a space",
                with(&good, Some("bad key"), json_ct),
                400,
            ),
            (
                "unclosed quoted key",
                with(&good, Some("\"abc"), json_ct),
                400,
            ),
            ("empty body", with("", key, json_ct), 422),
            (
                "truncated JSON",
                with(&good[..good.len() - 3], key, json_ct),
                422,
            ),
            ("array body", with("[]", key, json_ct), 422),
            (
                "zero amount",
                with(&field("amount", json!(0)), key, json_ct),
                422,
            ),
            (
                "negative amount",
                with(&field("amount", json!(-1)), key, json_ct),
                422,
            ),
            (
                "fractional amount",
                with(&field("amount", json!(19.99)), key, json_ct),
                422,
            ),
            (
                "amount as string",
                with(&field("amount", json!("1999")), key, json_ct),
                422,
            ),
            (
                "upper-case currency",
                with(&field("currency", json!("USD")), key, json_ct),
                422,
            ),
            (
                "missing order_ref",
                with(
                    r#"{"amount":1,"currency":"usd","payment_method":"pm"}"#,
                    key,
                    json_ct,
                ),
                422,
            ),
            (
                "unknown field",
                with(&field("coupon", json!("FREE")), key, json_ct),
                422,
            ),
        ];
        s.assert_refused_and_not_forwarded(
            cases
                .into_iter()
                .map(|(name, req, status)| (name.to_owned(), req, status))
                .collect(),
        )
        .await;
    });
}

/// The wider matrix of hostile and broken requests: every one gets a 4xx
/// problem+json (never a 5xx), and none reaches the backend.
fn a_matrix_of_hostile_requests_gets_clear_4xx_answers_and_reaches_no_backend(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let url = format!("{}/v1/orders", s.stack.edge_url);
        let good = order("hostile-1", 100);
        let key = "hostile-key-0000001";
        let json_post = |body: Vec<u8>| {
            s.http
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", key)
                .body(body)
        };
        let with_key = |key: reqwest::header::HeaderValue| {
            s.http
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", key)
                .body(good.to_string())
        };
        let field = |name: &str, value: Value| {
            let mut body = good.clone();
            body[name] = value;
            json_post(body.to_string().into_bytes())
        };
        let raw_key = |bytes: &[u8]| reqwest::header::HeaderValue::from_bytes(bytes).unwrap();
        let mut cases: Vec<(String, reqwest::RequestBuilder, u16)> = Vec::new();
        let mut add = |name: &str, req, status| cases.push((name.to_owned(), req, status));

        // Keys.
        add(
            "no key",
            s.http
                .post(&url)
                .header("Content-Type", "application/json")
                .body(good.to_string()),
            400,
        );
        for (name, bytes) in [
            ("empty key", &b""[..]),
            ("blank key", b"   "),
            ("256-character key", &[b'k'; 256][..]),
            ("4096-character key", &[b'k'; 4096][..]),
            ("15-character key, guessable", b"hostile-key-015"),
            ("quoted 13-character key", b"\"hostilekey-13\""),
            ("key with a space", b"hostile key 00001"),
            ("key with a tab", b"hostile\tkey00001"),
            ("key with UTF-8", "clé-hostile-00001".as_bytes()),
            ("key with obs-text", b"hostile-\xff-000001"),
            ("key joined from two", b"hostile-key-01, hostile-key-02"),
            ("unclosed quoted key", b"\"hostile-key-0001"),
            ("quoted key with junk after", b"\"hostile-key\"-01"),
            ("quoted key with a bad escape", b"\"hostile\\x-key01\""),
            ("empty quoted key", b"\"\""),
        ] {
            add(name, with_key(raw_key(bytes)), 400);
        }
        add(
            "key header sent twice",
            with_key(raw_key(b"hostile-key-0000001"))
                .header("Idempotency-Key", "hostile-key-0000002"),
            400,
        );

        // Bodies that are not JSON objects.
        for (name, body) in [
            ("empty body", Vec::new()),
            ("null", b"null".to_vec()),
            ("array", b"[]".to_vec()),
            ("string", b"\"order\"".to_vec()),
            ("number", b"1999".to_vec()),
            ("unclosed object", b"{".to_vec()),
            ("truncated", good.to_string().as_bytes()[..20].to_vec()),
            ("trailing garbage", format!("{good}}}").into_bytes()),
            (
                "deeply nested",
                format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
            ),
            (
                "bad UTF-8",
                b"{\"order_ref\":\"\xff\xfe\",\"amount\":1}".to_vec(),
            ),
            (
                "byte-order mark",
                [&b"\xef\xbb\xbf"[..], good.to_string().as_bytes()].concat(),
            ),
            (
                "number too large for JSON",
                br#"{"order_ref":"o","amount":1e400,"currency":"usd","payment_method":"pm"}"#
                    .to_vec(),
            ),
            ("single quotes", b"{'order_ref':'o'}".to_vec()),
            ("comments", b"{/* */}".to_vec()),
        ] {
            add(name, json_post(body), 422);
        }
        add("10 MB body", json_post(vec![b' '; 10 * 1024 * 1024]), 413);
        add(
            "16 KiB + 1 of padding",
            json_post(vec![b' '; 16 * 1024 + 1]),
            413,
        );

        // Fields.
        for (name, field_name, value) in [
            ("amount zero", "amount", json!(0)),
            ("amount negative", "amount", json!(-500)),
            ("amount fractional", "amount", json!(19.99)),
            ("amount exponent", "amount", json!(1e3)),
            (
                "amount 2^64",
                "amount",
                json!(18_446_744_073_709_551_615u64),
            ),
            ("amount above the limit", "amount", json!(100_000_000)),
            ("amount as string", "amount", json!("1999")),
            ("amount as boolean", "amount", json!(true)),
            ("amount null", "amount", Value::Null),
            ("amount as object", "amount", json!({"value": 1})),
            ("currency upper case", "currency", json!("USD")),
            ("currency too short", "currency", json!("us")),
            ("currency with a digit", "currency", json!("us1")),
            ("currency as number", "currency", json!(840)),
            ("order_ref empty", "order_ref", json!("")),
            ("order_ref blank", "order_ref", json!("   ")),
            ("order_ref with a newline", "order_ref", json!("ord\n1")),
            ("order_ref too long", "order_ref", json!("o".repeat(300))),
            ("order_ref as array", "order_ref", json!(["o"])),
            ("payment_method empty", "payment_method", json!("")),
            ("payment_method as number", "payment_method", json!(4242)),
            ("customer empty", "customer", json!("")),
            ("customer as number", "customer", json!(7)),
            ("customer with a NUL", "customer", json!("cus\u{0}1")),
            ("order_token empty", "order_token", json!("")),
            ("order_token as number", "order_token", json!(1)),
            ("order_token with a space", "order_token", json!("v1.a b.c")),
            (
                "order_token over 2 KB",
                "order_token",
                json!("t".repeat(2049)),
            ),
            ("unknown field", "coupon", json!("FREE")),
            ("misspelt field", "ammount", json!(1)),
        ] {
            add(name, field(field_name, value), 422);
        }

        // Methods and media types.
        for method in ["PUT", "PATCH", "DELETE"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            add(method, s.http.request(m, &url).body(good.to_string()), 405);
        }
        // A GET is the status lookup: without a key it is refused first.
        add("GET", s.http.get(&url).body(good.to_string()), 400);
        for content_type in [
            None,
            Some("text/plain"),
            Some("text/json"),
            Some("application/xml"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/json; charset=latin1"),
            Some("application/jsonp"),
        ] {
            let mut req = s
                .http
                .post(&url)
                .header("Idempotency-Key", key)
                .body(good.to_string());
            if let Some(ct) = content_type {
                req = req.header("Content-Type", ct);
            }
            add(&format!("content type {content_type:?}"), req, 415);
        }

        let twice = good.to_string().replacen('}', r#","amount":1}"#, 1);
        add("amount sent twice", json_post(twice.into_bytes()), 422);

        // Orders the shop did not sign, or signed for something else.
        let body_with = |token: Option<String>, amount: u64| {
            let mut body = order("hostile-1", amount);
            match token {
                Some(token) => body["order_token"] = json!(token),
                None => {
                    body.as_object_mut().unwrap().remove("order_token");
                }
            }
            body.to_string()
        };
        let later = now_secs() + 600;
        let signed_with_another_secret = chargeonce_protocol::OrderClaims {
            order_ref: "hostile-1".into(),
            amount: 100,
            currency: "usd".into(),
            customer: shop::CUSTOMER.into(),
            expires_at: later,
        }
        .sign(b"a secret the worker does not know, 32+ bytes");
        let genuine = order_token("hostile-1", 100, shop::CUSTOMER, later);
        let mut tampered = genuine.clone().into_bytes();
        let at = tampered.len() - 3;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        for (name, body) in [
            ("no order token", body_with(None, 100)),
            (
                "token for 100, body says 1",
                body_with(Some(genuine.clone()), 1),
            ),
            (
                "token signed with another secret",
                body_with(Some(signed_with_another_secret), 100),
            ),
            (
                "token with one signature byte changed",
                body_with(Some(String::from_utf8(tampered).unwrap()), 100),
            ),
            (
                "expired token",
                body_with(Some(order_token("hostile-1", 100, shop::CUSTOMER, 1)), 100),
            ),
            (
                "token for another customer",
                body_with(Some(order_token("hostile-1", 100, "cus_other", later)), 100),
            ),
            (
                "token for another order",
                body_with(
                    Some(order_token("hostile-2", 100, shop::CUSTOMER, later)),
                    100,
                ),
            ),
            (
                "token of version 2",
                body_with(Some(genuine.replacen("v1.", "v2.", 1)), 100),
            ),
            (
                "token that is not a token",
                body_with(Some("v1.x.y".into()), 100),
            ),
        ] {
            add(name, json_post(body.into_bytes()), 403);
        }
        add(
            "POST from an origin that is not allowed",
            json_post(good.to_string().into_bytes()).header("Origin", "http://evil.test"),
            403,
        );

        assert!(cases.len() >= 60, "the matrix has {} cases", cases.len());
        s.assert_refused_and_not_forwarded(cases).await;
    });
}

/// Writes one request by hand, with whatever `Content-Length` it is given,
/// and returns the response as text (empty if none came within `wait`).
fn raw_post(edge_url: &str, content_length: &str, body: &str, wait: Duration) -> String {
    use std::io::{Read, Write};
    let host = edge_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    write!(
        stream,
        "POST /v1/orders HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: raw-length-key-00001\r\nContent-Length: {content_length}\r\n\
         Connection: close\r\n\r\n{body}"
    )
    .unwrap();
    let mut answer = Vec::new();
    // What arrived before the server closed, or before `wait` ran out.
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn absurd_content_lengths_are_refused_and_never_forwarded(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
    });
    let body = order("length-1", 100).to_string();
    let wait = Duration::from_secs(10);
    // Values that are not a length at all never reach the Worker: the
    // runtime's HTTP parser refuses them (with a plain-text 400, not ours).
    for absurd in ["99999999999999999999", "-1", "abc", "1, 2", "0x10"] {
        let response = raw_post(&s.stack.edge_url, absurd, &body, wait);
        assert!(
            status_of(&response).is_some_and(|status| (400..500).contains(&status)),
            "Content-Length {absurd:?} got {response:?}"
        );
    }
    // A length over the limit, with that many bytes: our 413.
    let padded = format!("{body}{}", " ".repeat(20_000 - body.len()));
    let response = raw_post(&s.stack.edge_url, "20000", &padded, wait);
    assert_eq!(status_of(&response), Some(413), "{response}");
    assert!(response.contains("application/problem+json"), "{response}");
    // A length larger than the bytes sent: HTTP waits for the rest, which
    // never comes; the client gives up, and nothing was forwarded.
    let response = raw_post(&s.stack.edge_url, "99999999", &body, Duration::from_secs(2));
    assert!(
        status_of(&response).is_none_or(|status| status >= 400),
        "{response}"
    );
    s.block_on(async {
        assert!(
            s.charges("length-1").await.is_empty(),
            "an order got through"
        );
    });
}

fn an_invalid_order_names_each_bad_field(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let reply = s
            .post(
                "fields-key-00000001",
                &json!({"amount": 0, "currency": "EUR"}),
            )
            .await;
        let problem = reply.problem(422);
        let names: Vec<_> = problem["invalid_params"]
            .as_array()
            .expect("invalid_params lists the fields")
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["order_ref", "amount", "currency", "payment_method"]);
    });
}

fn unknown_paths_get_a_404_problem(s: &Suite) {
    s.block_on(async {
        let reply = s
            .send(s.http.get(format!("{}/v1/nope", s.stack.edge_url)))
            .await;
        reply.problem(404);
    });
}

fn cors_answers_allowed_origins_only(s: &Suite) {
    s.block_on(async {
        let url = format!("{}/v1/orders", s.stack.edge_url);
        let preflight = |origin: &str| {
            s.http
                .request(reqwest::Method::OPTIONS, &url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "POST")
                .header(
                    "Access-Control-Request-Headers",
                    "content-type, idempotency-key",
                )
        };
        let allowed = s.send(preflight(ALLOWED_ORIGIN)).await;
        assert_eq!(
            allowed.header("Access-Control-Allow-Origin"),
            Some(ALLOWED_ORIGIN)
        );
        let headers = allowed
            .header("Access-Control-Allow-Headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(headers.contains("idempotency-key"), "{headers}");
        // Another site's preflight is answered too, so that its page sends
        // the request and reads the refusal below, not a network error.
        let foreign_preflight = s.send(preflight("http://evil.test")).await;
        assert_eq!(foreign_preflight.status, 204);
        assert_eq!(
            foreign_preflight.header("Access-Control-Allow-Origin"),
            Some("http://evil.test")
        );

        s.reset(json!({})).await;
        let post = s
            .send(
                s.http
                    .post(&url)
                    .header("Origin", ALLOWED_ORIGIN)
                    .header("Content-Type", "application/json")
                    .header("Idempotency-Key", "cors-key-000000001")
                    .body(order("cors-1", 100).to_string()),
            )
            .await;
        assert_eq!(post.status, 200);
        let exposed = post
            .header("Access-Control-Expose-Headers")
            .unwrap_or_default();
        for name in ["Idempotent-Replayed", "Retry-After", "Idempotency-Key"] {
            assert!(exposed.contains(name), "{name} is not exposed: {exposed}");
        }

        // A page on another site: a 403 it can read, nothing forwarded.
        let foreign = s
            .send(
                s.http
                    .post(&url)
                    .header("Origin", "http://evil.test")
                    .header("Content-Type", "application/json")
                    .header("Idempotency-Key", "cors-key-000000002")
                    .body(order("cors-2", 100).to_string()),
            )
            .await;
        let problem = foreign.problem(403);
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .ends_with("origin-not-allowed"));
        assert_eq!(
            foreign.header("Access-Control-Allow-Origin"),
            Some("http://evil.test")
        );
        assert!(s.charges("cors-2").await.is_empty());
        assert_eq!(s.ledger().await.payments_executed, 1);

        // Nor may it ask about an order: the lookup is refused before the
        // token is even read.
        let lookup = s
            .send(
                s.http
                    .get(&url)
                    .header("Origin", "http://evil.test")
                    .header("Idempotency-Key", "cors-key-000000001")
                    .header("Authorization", "Bearer v1.any.token"),
            )
            .await;
        let problem = lookup.problem(403);
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .ends_with("origin-not-allowed"));

        // Off the orders route, another site reads nothing.
        let health = s
            .send(
                s.http
                    .get(format!("{}/healthz", s.stack.edge_url))
                    .header("Origin", "http://evil.test"),
            )
            .await;
        assert_eq!(health.status, 200);
        assert_eq!(health.header("Access-Control-Allow-Origin"), None);
    });
}

/// A storefront's server in JavaScript, Python or PHP signs with the
/// signer of `tokens/` for its language: the edge takes each one's token,
/// and each refuses a short secret and amounts the edge would never charge.
fn orders_signed_by_each_storefront_signer_are_accepted_and_bad_claims_refused(s: &Suite) {
    use chargeonce_tests::stack::ORDER_TOKEN_SECRET;
    s.block_on(async {
        s.reset(json!({})).await;
        for signer in Signer::ALL {
            let name = signer.name();
            let order_ref = format!("signed-by-{name}");
            let claims = json!({
                "order_ref": order_ref, "amount": 1250, "currency": "usd",
                "customer": shop::CUSTOMER, "expires_at": now_secs() + 600,
            });
            let token = signer
                .sign(&claims, ORDER_TOKEN_SECRET)
                .unwrap_or_else(|e| panic!("the {name} signer refused a good order: {e}"));
            let body = json!({
                "order_ref": order_ref, "amount": 1250, "currency": "usd",
                "customer": shop::CUSTOMER, "payment_method": "pm_card_visa",
                "order_token": token,
            });
            let reply = s.post(&format!("signer-key-{name}-000001"), &body).await;
            assert_eq!(
                reply.status,
                200,
                "{name}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(s.charges(&order_ref).await.len(), 1, "{name}");

            let short = &ORDER_TOKEN_SECRET[..31];
            let refusal = signer
                .sign(&claims, short)
                .expect_err("a 31-byte secret is refused");
            assert!(refusal.contains("secret"), "{name}: {refusal}");
            for amount in [json!(0), json!(-1250), json!(12.5), json!("1250")] {
                let mut bad = claims.clone();
                bad["amount"] = amount.clone();
                let refusal = signer
                    .sign(&bad, ORDER_TOKEN_SECRET)
                    .expect_err("a bad amount is refused");
                assert!(refusal.contains("amount"), "{name}, {amount}: {refusal}");
            }
        }
        assert_eq!(s.ledger().await.payments_executed, 3);
    });
}

/// An order for [`shop::CUSTOMER`] paid with `payment_method` (which the
/// order token does not sign).
fn paid_with(order_ref: &str, amount: u64, payment_method: &str) -> Value {
    let mut body = order(order_ref, amount);
    body["payment_method"] = json!(payment_method);
    body
}

impl Suite {
    /// One checkout the widget's way (its default retries, no jitter):
    /// `client` places `order_ref` for 45.00, paid with `payment_method`,
    /// under `key`, with an order token good for an hour.
    async fn check_out(
        &self,
        client: &CheckoutClient,
        order_ref: &str,
        payment_method: &str,
        key: &str,
    ) -> Attempt {
        let life = Duration::from_secs(3_600);
        let mut page = PageOrder::new(
            order_ref,
            4500,
            shop::CUSTOMER,
            payment_method,
            now_secs() + life.as_secs(),
        );
        let (mut attempt, first) = Attempt::submit(None, order_ref, now_ms(), true, || key.into());
        client
            .drive(&mut attempt, first, &mut page, || 0.0, life)
            .await;
        attempt
    }

    /// Plays the customer's answer to the bank's challenge for `intent`.
    async fn authenticate(&self, intent: &Value, outcome: &str) {
        let id = intent["id"].as_str().expect("an intent id");
        self.sim(
            &format!("/__sim/payment_intents/{id}/authenticate"),
            json!({ "outcome": outcome }),
        )
        .await;
    }
}

/// Stripe answers a card that needs 3-D Secure with 200 `requires_action`,
/// having charged nothing. The edge stores that answer; a replay of it asks
/// the backend how the intent stands now (`GET /v1/payment_intents/{id}`),
/// so the retry after authentication reports the charge under the same key.
fn three_d_secure_is_placed_only_after_authentication_under_the_same_key(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let body = paid_with("3ds-ok", 4100, "pm_card_threeDSecure2Required");
        let key = "3ds-ok-key-000001";
        let first = s.post(key, &body).await;
        assert_eq!((first.status, first.replayed()), (200, false));
        let intent = first.json();
        assert_eq!(intent["status"], "requires_action");
        assert_eq!(intent["next_action"]["type"], "use_stripe_sdk");
        assert!(intent["client_secret"].as_str().unwrap().starts_with("pi_"));
        assert!(s.charges("3ds-ok").await.is_empty(), "nothing charged yet");
        // A retry before the customer authenticated: still awaiting them.
        let early = s.post(key, &body).await;
        assert_eq!((early.status, early.replayed()), (200, true));
        assert_eq!(early.json()["status"], "requires_action");
        s.authenticate(&intent, "succeed").await;
        let after = s.post(key, &body).await;
        assert_eq!((after.status, after.replayed()), (200, true));
        let placed = after.json();
        assert_eq!(placed["status"], "succeeded");
        assert_eq!(placed["id"], intent["id"]);
        let charges = s.charges("3ds-ok").await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(charges[0].id, placed["id"].as_str().unwrap());
        // The refreshed answer is the key's answer now, byte for byte, on
        // every path.
        let again = s.post(key, &body).await;
        assert_eq!((again.replayed(), &again.body), (true, &after.body));
        let token = order_token("3ds-ok-status", 1, shop::CUSTOMER, now_secs() + 600);
        let status = s.status(key, &token).await;
        assert_eq!((status.status, &status.body), (200, &after.body));
        assert_eq!(s.charges("3ds-ok").await.len(), 1);
    });
}

/// A failed challenge leaves the intent `requires_payment_method`: a final
/// refusal under the key (learnt here through the status lookup's refresh,
/// then replayed to the order), nothing charged, and the customer's next
/// attempt (another card, a new key) charges once.
fn a_failed_three_d_secure_challenge_is_refused_and_a_new_key_charges_once(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let body = paid_with("3ds-fail", 4200, "pm_card_authenticationRequired");
        let key = "3ds-fail-key-00001";
        let first = s.post(key, &body).await;
        assert_eq!(first.status, 200);
        let intent = first.json();
        assert_eq!(intent["status"], "requires_action");
        s.authenticate(&intent, "fail").await;
        // The status lookup, which never forwards, refreshes too.
        let token = order_token("3ds-fail-status", 1, shop::CUSTOMER, now_secs() + 600);
        let looked = s.status(key, &token).await;
        assert_eq!((looked.status, looked.replayed()), (200, true));
        let refused = looked.json();
        assert_eq!(refused["status"], "requires_payment_method");
        assert_eq!(
            refused["last_payment_error"]["code"],
            "payment_intent_authentication_failure"
        );
        let after = s.post(key, &body).await;
        assert_eq!((after.replayed(), &after.body), (true, &looked.body));
        assert!(s.charges("3ds-fail").await.is_empty());
        let visa = paid_with("3ds-fail", 4200, "pm_card_visa");
        let placed = s.post("3ds-fail-key-00002", &visa).await;
        assert_eq!(
            (placed.status, placed.json()["status"].clone()),
            (200, json!("succeeded"))
        );
        assert_eq!(s.charges("3ds-fail").await.len(), 1);
    });
}

/// The widget's side of 3-D Secure, over real HTTP: the attempt asks the
/// page to authenticate, sends the order again with the same key, and is
/// placed once; a failed challenge is refused, and without a handler the
/// attempt says what is missing.
fn the_widget_completes_three_d_secure_with_the_pages_handler(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let bank = |fails: fn(&str) -> bool| Bank {
            url: s.stack.sim_url.clone(),
            fails,
        };
        let card = "pm_card_threeDSecure2Required";
        let client = s.widget().with_bank(bank(|_| false));
        let key = "3ds-widget-ok-key-01";
        let placed = s.check_out(&client, "3ds-widget-ok", card, key).await;
        assert!(
            matches!(placed.phase(), Phase::Placed { .. }),
            "{:?}",
            placed.phase()
        );
        assert_eq!(placed.key(), key);
        let authenticated = &client.counters.authentications;
        assert_eq!(authenticated.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(s.charges("3ds-widget-ok").await.len(), 1);

        let client = s.widget().with_bank(bank(|_| true));
        let failed = s
            .check_out(&client, "3ds-widget-no", card, "3ds-widget-no-key-01")
            .await;
        let Phase::Refused { status, message } = failed.phase() else {
            panic!("{:?}", failed.phase())
        };
        assert_eq!(*status, 200);
        // The generic words the browser is shown, not the backend's.
        assert_eq!(message, "The card's authentication failed.");
        assert!(s.charges("3ds-widget-no").await.is_empty());

        let unhandled = s
            .check_out(
                &s.widget(),
                "3ds-widget-none",
                card,
                "3ds-widget-none-key-01",
            )
            .await;
        assert_eq!(
            unhandled.phase(),
            &Phase::Refused {
                status: 200,
                message: chargeonce_protocol::attempt::NO_ACTION_HANDLER.into()
            }
        );
        assert!(s.charges("3ds-widget-none").await.is_empty());
    });
}

/// Stripe's Search lags the charges ("under normal operating conditions
/// ... in under 1 minute"). A retry after a lost response finds nothing yet
/// and forwards again under the same backend key, which Stripe answers with
/// the saved charge: one charge, reported under the key.
fn search_lag_during_reconciliation_charges_once(s: &Suite) {
    s.block_on(async {
        s.reset(json!({
            "drop_after_commit_next": 1,
            "search_lag_ms": (SETTLE_SECS - 2) * 1000
        }))
        .await;
        let body = order("lag-1", 4400);
        let key = "lag-key-000000001";
        s.post(key, &body).await.problem(502);
        let retry = s.retry_past_409s(key, &body).await;
        assert_eq!(
            retry.status,
            200,
            "{}",
            String::from_utf8_lossy(&retry.body)
        );
        let charges = s.charges("lag-1").await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(retry.json()["id"], charges[0].id);
        // The retry did look, and the lookup could not see the charge yet.
        let looked = s.lookups_for(shop::CUSTOMER, key).await;
        assert!(!looked.is_empty(), "no lookup was made");
    });
}

/// Stripe answers 409 `idempotency_key_in_use` while another request with
/// the key executes. Nothing ran for this one, and the other may still
/// charge: the edge keeps the claim as for its own timeout, its retries wait
/// the lease out, and the order is placed once.
fn a_key_in_use_at_the_backend_waits_like_a_lease_and_charges_once(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"in_use_next": 1})).await;
        let body = order("in-use-1", 4500);
        let key = "in-use-key-000001";
        let first = s.post(key, &body).await;
        let problem = first.problem(409);
        assert!(problem["type"]
            .as_str()
            .unwrap()
            .ends_with(":request-in-flight"));
        assert!(first.header("Retry-After").is_some());
        let attempt = s
            .check_out(&s.widget(), "in-use-1", "pm_card_visa", key)
            .await;
        assert!(
            matches!(attempt.phase(), Phase::Placed { .. }),
            "{:?}",
            attempt.phase()
        );
        assert_eq!(s.charges("in-use-1").await.len(), 1);
    });
}

/// A 429 (`rate_limit`) ran nothing: the edge gives the key back at once,
/// and the client's retry, after the backend's `Retry-After`, charges once.
fn a_rate_limited_forward_is_released_and_retried_into_one_charge(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"rate_limit_next": 2})).await;
        let body = order("limited-1", 4600);
        let key = "limited-key-00001";
        let first = s.post(key, &body).await;
        let problem = first.problem(503);
        assert!(
            problem["detail"].as_str().unwrap().contains("429"),
            "{problem}"
        );
        assert!(first.header("Retry-After").is_some());
        // Released, not held: the very next request forwards (and meets
        // the second 429), and the one after that charges.
        s.post(key, &body).await.problem(503);
        let placed = s.post(key, &body).await;
        assert_eq!((placed.status, placed.replayed()), (200, false));
        assert_eq!(s.charges("limited-1").await.len(), 1);
    });
}

/// Pairs each test function with its name.
macro_rules! named {
    ($($test:ident),* $(,)?) => {
        [$((stringify!($test), $test as fn(&Suite))),*]
    };
}

fn the_passthrough_backend_gets_the_json_body_and_the_key(_: &Suite) {
    // Its own stack: the backend adapter is a deployment setting.
    let options = StackOptions {
        vars: vec![("PAYMENT_BACKEND".into(), "passthrough".into())],
        backend_path: "/v1/orders".into(),
        // As deployed: no simulator routes.
        dev_simulator_routes: false,
    };
    let s =
        Suite::new(Stack::start(paysim(), DEFAULT_SECRET, &options).expect("a passthrough stack"));
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let body = signed_order_for("pass-1", 2500, "cus_pass");
        let first = s.post("pass-key-000000001", &body).await;
        assert_eq!(
            first.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&first.body)
        );
        let again = s.post("pass-key-000000001", &body).await;
        assert!(again.replayed());
        assert_eq!(again.body, first.body);
        let charges = s.charges("pass-1").await;
        assert_eq!(charges.len(), 1);
        // The backend gets the key scoped to the customer, not the raw one.
        let sent = charges[0].idempotency_key.as_deref().unwrap();
        assert!(
            sent.starts_with("chargeonce_") && sent.len() == 75,
            "{sent}"
        );
        assert_eq!(charges[0].customer.as_deref(), Some("cus_pass"));
        assert_eq!(charges[0].amount, 2500);
        // 3-D Secure through the passthrough contract: the refresh after
        // authentication is the lookup, which lists the intent as it is now.
        let mut card = signed_order_for("pass-3ds", 2600, "cus_pass");
        card["payment_method"] = json!("pm_card_threeDSecure2Required");
        let action = s.post("pass-key-000000002", &card).await;
        let intent = action.json();
        assert_eq!(intent["status"], "requires_action");
        s.authenticate(&intent, "succeed").await;
        let placed = s.post("pass-key-000000002", &card).await;
        assert_eq!((placed.status, placed.replayed()), (200, true));
        assert_eq!(placed.json()["status"], "succeeded");
        assert_eq!(placed.json()["id"], intent["id"]);
        assert_eq!(s.charges("pass-3ds").await.len(), 1);
        let hidden = s
            .send(s.http.get(format!("{}/__sim/ledger", s.stack.edge_url)))
            .await;
        hidden.problem(404);
        let no_demo = s
            .send(
                s.http
                    .post(format!("{}/demo/order-token", s.stack.edge_url)),
            )
            .await;
        no_demo.problem(404);
    });
}

fn the_simulator_hooks_pass_through_the_edge_in_development(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        assert_eq!(
            s.post("hooks-key-00000001", &order("hooks-1", 800))
                .await
                .status,
            200
        );
        let edge = |path: &str| format!("{}/__sim/{path}", s.stack.edge_url);
        let ledger = s.send(s.http.get(edge("ledger"))).await;
        assert_eq!(ledger.status, 200);
        assert_eq!(ledger.json()["charges"][0]["order_ref"], "hooks-1");
        // A POST is JSON from the Worker's own pages, as the shop sends it.
        let post = |path: &str| {
            s.http
                .post(edge(path))
                .header("Content-Type", "application/json")
                .header("Origin", &s.stack.edge_url)
        };
        let faults = s.send(post("faults").body(r#"{"latency_ms": 5}"#)).await;
        assert_eq!(faults.json()["latency_ms"], 5);
        assert_eq!(
            s.sim_faults().await.latency_ms,
            5,
            "the edge set the simulator's faults"
        );
        // What a page on another site can send without asking (a no-cors
        // form post) never reaches the simulator.
        let cross_site = s
            .send(
                s.http
                    .post(edge("reset"))
                    .header("Content-Type", "text/plain")
                    .header("Origin", "http://evil.test")
                    .body("{}"),
            )
            .await;
        cross_site.problem(415);
        let other_origin = s
            .send(
                post("reset")
                    .header("Origin", "http://evil.test")
                    .body("{}"),
            )
            .await;
        other_origin.problem(403);
        let no_origin = s
            .send(
                s.http
                    .post(edge("reset"))
                    .header("Content-Type", "application/json")
                    .body("{}"),
            )
            .await;
        no_origin.problem(403);
        assert_eq!(s.ledger().await.charges.len(), 1, "nothing was reset");
        assert_eq!(s.send(post("reset")).await.status, 204);
        assert!(s.ledger().await.charges.is_empty());
        // Only the three hooks, with their methods.
        s.send(s.http.get(edge("reset"))).await.problem(404);
        s.send(post("ledger")).await.problem(404);
        s.send(s.http.get(edge("charges"))).await.problem(404);
    });
}

fn the_demo_storefront_prices_the_cart_and_signs_the_order(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let issue = |cart: Value| {
            s.send(
                s.http
                    .post(format!("{}/demo/order-token", s.stack.edge_url))
                    .header("Content-Type", "application/json")
                    .body(cart.to_string()),
            )
        };
        let issued = issue(json!({
            "customer": "cus_demo",
            "order_ref": "demo-1",
            "items": {"kettle": 2, "filters": 1},
        }))
        .await;
        assert_eq!(issued.status, 200);
        let issued = issued.json();
        assert_eq!(
            issued["amount"],
            2 * 5900 + 600,
            "priced from the catalogue"
        );
        let body = json!({
            "order_ref": "demo-1",
            "amount": issued["amount"],
            "currency": "usd",
            "customer": "cus_demo",
            "payment_method": "pm_card_visa",
            "order_token": issued["order_token"],
        });
        assert_eq!(s.post("demo-key-000000001", &body).await.status, 200);
        assert_eq!(s.charges("demo-1").await[0].amount, 12_400);
        // The browser cannot lower the price, nor order what is not sold.
        let mut cheaper = body.clone();
        cheaper["amount"] = json!(100);
        s.post("demo-key-000000002", &cheaper).await.problem(403);
        let huge = s
            .send(
                s.http
                    .post(format!("{}/demo/order-token", s.stack.edge_url))
                    .body(" ".repeat(17 * 1024)),
            )
            .await;
        huge.problem(413);
        let yacht = issue(json!({"customer": "c", "order_ref": "o", "items": {"yacht": 1}}));
        assert!(yacht.await.problem(422)["detail"]
            .as_str()
            .unwrap()
            .contains("yacht"));
        assert_eq!(s.charges("demo-1").await.len(), 1);
    });
}

fn a_worker_killed_after_forwarding_recovers_after_the_lease_with_one_charge(_: &Suite) {
    // Its own stack, with a lease long enough to outlast a restart.
    const LEASE_SECS: u64 = 25;
    let options = StackOptions {
        vars: vec![
            ("BACKEND_TIMEOUT_MS".into(), "5000".into()),
            ("CLAIM_LEASE_SECS".into(), LEASE_SECS.to_string()),
        ],
        dev_simulator_routes: false,
        ..StackOptions::default()
    };
    let mut s = Suite::new(Stack::start(paysim(), DEFAULT_SECRET, &options).expect("a stack"));
    let body = order("crash-1", 3100);
    let key = "crash-key-00000001";
    s.block_on(async {
        s.reset(json!({})).await;
        // A first order, so the Worker and its Durable Objects are warm.
        assert_eq!(
            s.post("crash-warmup-000001", &order("crash-0", 1))
                .await
                .status,
            200
        );
        s.sim("/__sim/faults", json!({"latency_ms": 2_000})).await;
    });
    let claimed_at = std::time::Instant::now();
    // Two orders in flight when the Worker dies. The first is retried by its
    // customer; the second by nobody (problem 5 of the settling-keys issue:
    // a claim whose answer was lost used to hold its key with nothing to move
    // it on, and the charge stayed unrecorded).
    let abandoned = order("crash-2", 3200);
    let abandoned_key = "crash-key-00000002";
    let doomed: Vec<_> = [
        (key, body.to_string()),
        (abandoned_key, abandoned.to_string()),
    ]
    .into_iter()
    .map(|(key, payload)| {
        let (http, url) = (s.http.clone(), format!("{}/v1/orders", s.stack.edge_url));
        s.rt.spawn(async move {
            http.post(url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", key)
                .body(payload)
                .send()
                .await
        })
    })
    .collect();
    // The edge has claimed the keys and forwarded; the backend is working.
    std::thread::sleep(Duration::from_millis(1_000));
    s.stack.kill_edge();
    for doomed in doomed {
        assert!(
            s.block_on(doomed).unwrap().is_err(),
            "the killed Worker must not have answered"
        );
    }
    s.stack.restart_edge().expect("the Worker starts again");
    s.block_on(async {
        s.sim("/__sim/faults", json!({"latency_ms": 0})).await;
        // The backend finished the orphaned request and charged.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let charges = s.charges("crash-1").await;
        assert_eq!(charges.len(), 1, "the orphaned request charged once");
        assert!(
            claimed_at.elapsed() < Duration::from_secs(LEASE_SECS),
            "the restart outlasted the lease; the test cannot check the 409"
        );
        s.post(key, &body).await.problem(409);
        let mut retry = s.post(key, &body).await;
        while retry.status == 409 && claimed_at.elapsed() < Duration::from_secs(LEASE_SECS + 30) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            retry = s.post(key, &body).await;
        }
        assert!(claimed_at.elapsed() >= Duration::from_secs(LEASE_SECS));
        s.assert_the_one_charge(&retry, "crash-1").await;
        let again = s.post(key, &body).await;
        assert!(again.replayed());
        assert_eq!(again.body, retry.body);
        assert_eq!(s.charges("crash-1").await.len(), 1, "one charge");

        // Nobody retried the second order. Once its lease ran out, the key's
        // object asked the backend by itself and recorded the charge.
        let charged = s.charges("crash-2").await;
        assert_eq!(charged.len(), 1, "the second orphan charged once");
        let deadline = claimed_at + Duration::from_secs(LEASE_SECS + 20);
        while s
            .lookups_for(shop::CUSTOMER, abandoned_key)
            .await
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the edge never reconciled the abandoned key by itself"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let token = order_token("crash-2", 3200, shop::CUSTOMER, now_secs() + 600);
        let mut status = s.status(abandoned_key, &token).await;
        while status.status == 202 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(250)).await;
            status = s.status(abandoned_key, &token).await;
        }
        s.assert_the_one_charge(&status, "crash-2").await;
        let late = s.post(abandoned_key, &abandoned).await;
        assert!(late.replayed());
        assert_eq!(late.body, status.body);
        assert_eq!(s.charges("crash-2").await.len(), 1, "still one charge");
    });
}

fn secrets_never_reach_a_response_a_log_or_the_store(s: &Suite) {
    use chargeonce_tests::stack::ORDER_TOKEN_SECRET;
    let secrets = [DEFAULT_SECRET, ORDER_TOKEN_SECRET];
    let leaks = |what: &str, bytes: &[u8]| {
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{what} holds the secret {secret:?}"
            );
        }
    };
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false, "drop_after_commit_next": 1}))
            .await;
        let body = order("secrets-1", 4100);
        let mut declined = order("secrets-2", 4200);
        declined["payment_method"] = json!("pm_card_chargeDeclined");
        let mut replies = vec![
            s.post("secrets-key-0000001", &body).await,
            s.retry_past_409s("secrets-key-0000001", &body).await,
            s.post("secrets-key-0000001", &body).await,
            s.post("secrets-key-0000002", &declined).await,
            s.post("secrets-key-0000001", &order("secrets-1", 1)).await,
            s.post("short", &body).await,
        ];
        let mut forged = order("secrets-3", 5);
        forged["order_token"] = json!("v1.e30.AAAA");
        replies.push(s.post("secrets-key-0000003", &forged).await);
        s.reset(json!({"fail_next": 1})).await;
        replies.push(s.post("secrets-key-0000004", &order("secrets-4", 1)).await);
        for reply in &replies {
            leaks("a response body", &reply.body);
            for (name, value) in &reply.headers {
                leaks(&format!("the {name} header"), value.as_bytes());
            }
            // The backend's own headers are never passed on or stored.
            assert!(reply.header("Set-Cookie").is_none());
            assert!(
                reply.header("Request-Id").is_none(),
                "a backend header leaked"
            );
        }
        assert!(replies[2].replayed(), "{:?}", replies[2].status);
    });
    leaks("the Worker's log", s.stack.wrangler_log().as_bytes());
    let mut files = vec![s.stack.state_dir()];
    let mut searched = 0;
    // workerd removes its SQLite journals as it goes: a file listed and gone
    // before it is read is no longer stored state (a CI run met one).
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            match std::fs::read_dir(&path) {
                Ok(entries) => files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path())),
                Err(e) if gone(&e) => {}
                Err(e) => panic!("reading {}: {e}", path.display()),
            }
        } else {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    leaks(&path.display().to_string(), &bytes);
                    searched += 1;
                }
                Err(e) if gone(&e) => {}
                Err(e) => panic!("reading {}: {e}", path.display()),
            }
        }
    }
    assert!(searched > 0, "no stored state to search");
}

/// The order's paid answer under another key: a replay, byte for byte, that
/// names the key it was paid under.
fn assert_paid_under(reply: &Reply, paid: &Reply, key: &str) {
    assert_eq!(
        reply.status,
        200,
        "body: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.replayed(), "the order's answer is a replay");
    assert_eq!(reply.header("Original-Idempotency-Key"), Some(key));
    assert_eq!(reply.body, paid.body, "the paid answer, byte for byte");
}

/// One order, two keys, one after the other (a phone, then a laptop; a
/// private window; cleared storage): the second gets the first's paid answer
/// and nothing is forwarded. The same order for another amount is refused:
/// it is already paid.
fn two_keys_for_one_order_in_turn_charge_once_and_the_second_is_a_replay(s: &Suite) {
    s.block_on(async {
        // A naive backend: nothing but the edge joins the two keys.
        s.reset(json!({"honor_idempotency": false})).await;
        let body = order("once-seq", 2500);
        let first = s.post("once-seq-phone-0001", &body).await;
        assert_eq!((first.status, first.replayed()), (200, false));
        assert_eq!(first.header("Original-Idempotency-Key"), None);
        let second = s.post("once-seq-laptop-001", &body).await;
        assert_paid_under(&second, &first, "once-seq-phone-0001");
        // Asked again, and by a third key: the same answer, still no charge.
        let again = s.post("once-seq-laptop-001", &body).await;
        assert_paid_under(&again, &first, "once-seq-phone-0001");
        let third = s.post("once-seq-tablet-001", &body).await;
        assert_paid_under(&third, &first, "once-seq-phone-0001");
        // Another amount for the paid order needs a new order_ref.
        let more = s
            .post("once-seq-laptop-002", &order("once-seq", 2600))
            .await;
        let refused = more.problem(409);
        assert!(refused["type"]
            .as_str()
            .unwrap()
            .ends_with(":order-already-paid"));
        assert!(refused["detail"]
            .as_str()
            .unwrap()
            .contains("once-seq-phone-0001"));
        assert_eq!(more.header("Retry-After"), None);
        let charges = s.charges("once-seq").await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(first.json()["id"], charges[0].id);
    });
}

/// One order, two keys at once: the second finds the first in flight and
/// gets 409 `order-in-progress` with `Retry-After`; asked again once the
/// first is paid, it gets the paid answer.
fn two_keys_for_one_order_at_once_charge_once_and_the_other_waits(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false, "latency_ms": 1500}))
            .await;
        let body = order("once-par", 2700);
        let other = s.post("once-par-tab-000002", &body);
        let (first, second) = s
            .while_posting(
                "once-par-tab-000001",
                &body,
                Duration::from_millis(500),
                other,
            )
            .await;
        assert_eq!((first.status, first.replayed()), (200, false));
        let waiting = second.problem(409);
        assert!(waiting["type"]
            .as_str()
            .unwrap()
            .ends_with(":order-in-progress"));
        assert!(second.header("Retry-After").is_some());
        let later = s.retry_past_409s("once-par-tab-000002", &body).await;
        assert_paid_under(&later, &first, "once-par-tab-000001");
        assert_eq!(s.charges("once-par").await.len(), 1);
    });
}

/// A decline charges nothing: a new key for the order (another card) may
/// try again, and it charges once.
fn a_decline_then_a_new_key_for_the_order_charges_once(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let declined = s
            .post(
                "once-decl-key-0001",
                &paid_with("once-decl", 1900, "pm_card_chargeDeclined"),
            )
            .await;
        assert_eq!(declined.status, 402);
        let placed = s
            .post(
                "once-decl-key-0002",
                &paid_with("once-decl", 1900, "pm_card_visa"),
            )
            .await;
        assert_eq!((placed.status, placed.replayed()), (200, false));
        let charges = s.charges("once-decl").await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(placed.json()["id"], charges[0].id);
        // The declined key still replays its decline; the order is paid.
        let old = s
            .post(
                "once-decl-key-0001",
                &paid_with("once-decl", 1900, "pm_card_chargeDeclined"),
            )
            .await;
        assert_eq!((old.status, old.replayed()), (402, true));
    });
}

/// The first attempt's response is lost after the charge: its outcome is
/// unknown, so a second key for the order waits (409 `order-in-progress`)
/// instead of charging, until the first key's object has reconciled it by
/// itself; then the second key gets that charge.
fn an_unknown_attempt_blocks_its_order_until_reconciled_then_a_new_key_gets_its_charge(s: &Suite) {
    s.block_on(async {
        // The backend's search shows the charge 4 s late (within the
        // settle window), so the first key stays unknown that long.
        s.reset(json!({
            "honor_idempotency": false,
            "drop_after_commit_next": 1,
            "search_lag_ms": 4_000
        }))
        .await;
        let body = order("once-unk", 3100);
        let lost = s.post("once-unk-key-000001", &body).await;
        lost.problem(502);
        assert_eq!(s.charges("once-unk").await.len(), 1);
        // Until the first key's object has found the charge, the order is
        // in progress; it never forwards the second key.
        let deadline = std::time::Instant::now() + Duration::from_secs(SETTLE_SECS + 10);
        let mut waited = 0;
        let second = loop {
            let reply = s.post("once-unk-key-000002", &body).await;
            if reply.status != 409 {
                break reply;
            }
            let refused = reply.problem(409);
            assert!(
                refused["type"]
                    .as_str()
                    .unwrap()
                    .ends_with(":order-in-progress"),
                "{refused}"
            );
            waited += 1;
            assert!(std::time::Instant::now() < deadline, "never reconciled");
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let charges = s.charges("once-unk").await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        assert_eq!(
            second.status,
            200,
            "{}",
            String::from_utf8_lossy(&second.body)
        );
        assert!(second.replayed());
        assert_eq!(
            second.header("Original-Idempotency-Key"),
            Some("once-unk-key-000001")
        );
        assert_eq!(second.json()["id"], charges[0].id);
        assert!(waited > 0, "the second key never waited for the first");
        // The first key has the same answer, byte for byte.
        let first = s.post("once-unk-key-000001", &body).await;
        assert_eq!((first.replayed(), &first.body), (true, &second.body));
    });
}

/// An unknown attempt that charged nothing settles as "not charged" after
/// the settle window; then the order is free, and a new key charges once.
fn an_unknown_attempt_that_charged_nothing_frees_its_order_once_settled(s: &Suite) {
    s.block_on(async {
        // A 500 once the request began to run, having charged nothing: the
        // edge cannot tell, so the outcome is unknown.
        s.reset(json!({"honor_idempotency": false, "fail_saved_next": 1}))
            .await;
        let body = order("once-none", 3200);
        s.post("once-none-key-0001", &body).await.problem(502);
        assert!(s.charges("once-none").await.is_empty());
        s.post("once-none-key-0002", &body).await.problem(409);
        let deadline = std::time::Instant::now() + Duration::from_secs(SETTLE_SECS + 20);
        let placed = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let reply = s.post("once-none-key-0002", &body).await;
            if reply.status != 409 {
                break reply;
            }
            assert!(std::time::Instant::now() < deadline, "never settled");
        };
        assert_eq!(
            (placed.status, placed.replayed()),
            (200, false),
            "{}",
            String::from_utf8_lossy(&placed.body)
        );
        let charges = s.charges("once-none").await;
        assert_eq!(charges.len(), 1, "{charges:?}");
        let token = order_token("once-none", 3200, shop::CUSTOMER, now_secs() + 600);
        let first = s.status("once-none-key-0001", &token).await;
        assert_eq!((first.status, first.replayed()), (410, true));
    });
}

/// An order is a customer's: two customers with one `order_ref` are two
/// orders, each charged once.
fn two_customers_with_one_order_ref_are_two_orders(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let alice = signed_order_for("once-shared-ref", 800, "cus_alice");
        let bob = signed_order_for("once-shared-ref", 800, "cus_bob");
        let a = s.post("once-shared-alice-1", &alice).await;
        let b = s.post("once-shared-bob-001", &bob).await;
        assert_eq!((a.status, a.replayed()), (200, false));
        assert_eq!((b.status, b.replayed()), (200, false));
        assert_ne!(a.json()["id"], b.json()["id"]);
        // Each customer's second key gets their own order's answer.
        let a2 = s.post("once-shared-alice-2", &alice).await;
        assert_paid_under(&a2, &a, "once-shared-alice-1");
        let b2 = s.post("once-shared-bob-002", &bob).await;
        assert_paid_under(&b2, &b, "once-shared-bob-001");
        assert_eq!(s.charges("once-shared-ref").await.len(), 2);
    });
}

/// The cards a card tester would try, in turn: each declines.
const DECLINING_CARDS: [&str; 4] = [
    "pm_card_chargeDeclined",
    "pm_card_visa_chargeDeclinedInsufficientFunds",
    "pm_card_chargeDeclinedExpiredCard",
    "pm_card_chargeDeclinedProcessingError",
];

/// Card testing: one order token, twenty keys, twenty declining cards. The
/// order's record counts each refusal, and past MAX_ATTEMPTS_PER_ORDER (5)
/// nothing more reaches the backend. No answer shows the card; the merchant
/// reads the backend's whole answer with the backend secret.
fn card_testing_through_one_token_reaches_the_backend_five_times(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let token = order("card-test-1", 600);
        let mut statuses = Vec::new();
        for n in 0..20 {
            let mut body = token.clone();
            body["payment_method"] = json!(DECLINING_CARDS[n % DECLINING_CARDS.len()]);
            let reply = s.post(&format!("card-test-key-{n:06}"), &body).await;
            let text = String::from_utf8_lossy(&reply.body).into_owned();
            // As members: `requires_payment_method` is a status.
            for detail in ["\"payment_method\":", "last4", "brand", "checks", "country"] {
                assert!(!text.contains(detail), "attempt {n} shows {detail}: {text}");
            }
            if reply.status == 429 {
                let problem = reply.problem(429);
                assert_eq!(
                    problem["type"],
                    "tag:chargeonce.dev,2026:problem:order-attempts-exhausted"
                );
                assert_eq!(reply.header("Retry-After"), None, "no retry can help");
            } else {
                let error = &reply.json()["error"];
                assert!(error["code"].is_string(), "attempt {n}: {text}");
                assert!(error["payment_intent"]["id"].is_string(), "{text}");
            }
            statuses.push(reply.status);
        }
        assert_eq!(statuses[..5], [402; 5], "the first five are declined");
        assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
        let ledger = s.ledger().await;
        assert_eq!(
            ledger.payments_executed, 5,
            "five cards reached the backend"
        );
        assert!(ledger.charges.is_empty());
        // A good card is refused too now: the order, not the card, is
        // exhausted while the token lives.
        let good = s.post("card-test-key-good01", &token).await;
        good.problem(429);
        assert_eq!(s.ledger().await.payments_executed, 5);

        // The customer's status lookup shows what the browser was shown;
        // the merchant's, with the backend secret, the backend's answer.
        let first_key = "card-test-key-000000";
        let shown = s
            .status(first_key, token["order_token"].as_str().unwrap())
            .await;
        assert_eq!(shown.status, 402);
        assert!(!String::from_utf8_lossy(&shown.body).contains("last4"));
        let merchant = s
            .send(
                s.http
                    .get(format!(
                        "{}/v1/orders?customer={}",
                        s.stack.edge_url,
                        shop::CUSTOMER
                    ))
                    .header("Idempotency-Key", first_key)
                    .header("Authorization", format!("Bearer {DEFAULT_SECRET}")),
            )
            .await;
        assert_eq!(merchant.status, 402);
        assert_eq!(
            merchant.json()["error"]["payment_method"]["card"]["last4"],
            "0002"
        );
        // The backend secret without a customer names what is missing.
        let nameless = s
            .send(
                s.http
                    .get(format!("{}/v1/orders", s.stack.edge_url))
                    .header("Idempotency-Key", first_key)
                    .header("Authorization", format!("Bearer {DEFAULT_SECRET}")),
            )
            .await;
        assert!(nameless.problem(401)["detail"]
            .as_str()
            .unwrap()
            .contains("customer"));
    });
}

/// An order signed for the tests' customer with a token that expired.
fn expired_order(order_ref: &str, amount: u64) -> Value {
    let mut body = order(order_ref, amount);
    body["order_token"] = json!(order_token(
        order_ref,
        amount,
        shop::CUSTOMER,
        now_secs() - 1
    ));
    body
}

/// An expired order token claims nothing: it only peeks at the key's
/// object. A stored answer is replayed, another payload gets 422, a claim
/// in flight 409; anything else 403, with nothing written and nothing sent.
fn an_expired_token_only_peeks_and_writes_nothing(s: &Suite) {
    s.block_on(async {
        s.reset(json!({})).await;
        let key = "expired-key-0000001";
        let stale = s.post(key, &expired_order("expired-1", 700)).await;
        let problem = stale.problem(403);
        assert_eq!(
            problem["type"],
            "tag:chargeonce.dev,2026:problem:order-token-expired"
        );
        let steps = timing_steps(&stale);
        assert_eq!(
            steps,
            ["read", "kv", "peek"],
            "no claim, no order, no backend"
        );
        assert_eq!(s.ledger().await.payments_executed, 0);
        // The same key with a fresh token is placed as if nothing came before.
        let placed = s.post(key, &order("expired-1", 700)).await;
        assert_eq!((placed.status, placed.replayed()), (200, false));
        // Its answer is replayed to the expired token, byte for byte.
        let replay = s.post(key, &expired_order("expired-1", 700)).await;
        assert_eq!((replay.status, replay.replayed()), (200, true));
        assert_eq!(replay.body, placed.body);
        // Another payload under the key: 422.
        s.post(key, &expired_order("expired-1", 701))
            .await
            .problem(422);
        assert_eq!(s.charges("expired-1").await.len(), 1);

        // A claim in flight: 409, and the claim is not disturbed.
        s.sim("/__sim/faults", json!({"slow_next": 1, "slow_ms": 1_500}))
            .await;
        let busy = "expired-key-0000002";
        let (first, peeked) = s
            .while_posting(
                busy,
                &order("expired-2", 800),
                Duration::from_millis(500),
                s.post(busy, &expired_order("expired-2", 800)),
            )
            .await;
        assert_eq!(first.status, 200);
        peeked.problem(409);
        assert_eq!(timing_steps(&peeked), ["read", "kv", "peek"]);
        assert_eq!(s.charges("expired-2").await.len(), 1);
    });
}

/// A backend that answers with a redirect is misconfigured: the edge does
/// not follow it (which would send the order and the credential to another
/// host, and store that host's answer), charges nothing and frees the key.
fn a_redirecting_backend_is_not_followed(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"redirect_next": 1})).await;
        let key = "redirect-key-000001";
        let body = order("redirect-1", 900);
        let refused = s.post(key, &body).await;
        let problem = refused.problem(502);
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("redirect"), "{detail}");
        assert!(
            !detail.contains("127.0.0.1"),
            "no URL reaches a client: {detail}"
        );
        let ledger = s.ledger().await;
        assert_eq!(ledger.redirected_posts, 0, "the redirect was not followed");
        assert!(ledger.charges.is_empty());
        // Nothing was charged, so the key is free: the retry pays once.
        let placed = s.post(key, &body).await;
        assert_eq!((placed.status, placed.replayed()), (200, false));
        assert_eq!(s.charges("redirect-1").await.len(), 1);
    });
}

/// A backend whose answer never ends: the edge reads one byte past what it
/// would store and stops, so the request does not hang until the backend
/// timeout (504); the outcome is unknown (the charge may have been made),
/// and the retry reconciles it into the one charge.
fn an_endless_backend_answer_is_cut_off_and_reconciled(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"oversized_next": 1})).await;
        let key = "endless-key-0000001";
        let body = order("endless-1", 1000);
        let cut = s.post(key, &body).await;
        let problem = cut.problem(502);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("more than the 65536 bytes"),
            "{problem}"
        );
        let again = s.retry_past_409s(key, &body).await;
        s.assert_the_one_charge(&again, "endless-1").await;
    });
}

/// A backend whose lookup ignores its filter lists other keys' charges: the
/// edge takes only an item that shows its key, amount and order_ref, so an
/// unknown attempt that charged nothing never becomes someone else's charge.
fn a_lookup_that_ignores_its_filter_never_answers_with_another_charge(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"lookups_ignore_filter": true})).await;
        let other = s
            .post(
                "filter-other-key-01",
                &signed_order_for("filter-other", 1100, "cus_filter_other"),
            )
            .await;
        assert_eq!(other.status, 200);
        // Ours fails after execution began: a saved 500, nothing charged.
        s.sim("/__sim/faults", json!({"fail_saved_next": 1})).await;
        let key = "filter-key-00000001";
        let body = order("filter-1", 1100);
        assert_eq!(s.post(key, &body).await.status, 502);
        // The customer retries until the edge settles it.
        let deadline = std::time::Instant::now() + Duration::from_secs(SETTLE_SECS + 20);
        let settled = loop {
            let reply = s.post(key, &body).await;
            assert_ne!(
                reply.status,
                200,
                "another customer's charge became this key's answer: {}",
                String::from_utf8_lossy(&reply.body)
            );
            if ![409, 502, 503].contains(&reply.status) {
                break reply;
            }
            assert!(std::time::Instant::now() < deadline, "never settled");
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        settled.problem(410);
        assert!(s.charges("filter-1").await.is_empty());
        assert!(
            s.stack
                .wrangler_log()
                .contains("ignored (does its list honour the filter?)"),
            "the edge logs what it ignored"
        );
    });
}

/// The order-token secret of `.dev.vars.example` is public: an edge
/// deployed with it refuses every order (500, naming the setting), since
/// anyone could sign one.
fn the_public_example_secret_is_refused(_: &Suite) {
    let options = StackOptions {
        vars: vec![("ORDER_TOKEN_SECRET".into(), EXAMPLE_SECRET.into())],
        ..StackOptions::default()
    };
    let s = Suite::new(Stack::start(paysim(), DEFAULT_SECRET, &options).expect("a stack"));
    s.block_on(async {
        s.reset(json!({})).await;
        let mut body = order("example-1", 1200);
        body["order_token"] = json!(OrderClaims {
            order_ref: "example-1".into(),
            amount: 1200,
            currency: "usd".into(),
            customer: shop::CUSTOMER.into(),
            expires_at: now_secs() + 600,
        }
        .sign(EXAMPLE_SECRET.as_bytes()));
        let refused = s.post("example-key-0000001", &body).await;
        let problem = refused.problem(500);
        assert_eq!(
            problem["type"],
            "tag:chargeonce.dev,2026:problem:edge-misconfigured"
        );
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("ORDER_TOKEN_SECRET"), "{detail}");
        assert!(!detail.contains(EXAMPLE_SECRET), "{detail}");
        assert_eq!(s.ledger().await.payments_executed, 0);
    });
}

/// The Worker's rate limits (wrangler.toml): 120 requests a minute per
/// client address, counted before anything else, and 10 forwards a minute
/// per customer, counted just before each. Over either: 429 `rate-limited`
/// with `Retry-After`, and nothing forwarded.
fn the_rate_limits_answer_429_past_their_counts(_: &Suite) {
    let options = StackOptions {
        vars: vec![("RATE_LIMITS".into(), "on".into())],
        ..StackOptions::default()
    };
    let s = Suite::new(Stack::start(paysim(), DEFAULT_SECRET, &options).expect("a stack"));
    s.block_on(async {
        s.reset(json!({})).await;
        // The limits count in windows of a minute: start early in one, so
        // that the counts below fall in the same window.
        let into_window = now_secs() % 60;
        if into_window > 40 {
            tokio::time::sleep(Duration::from_secs(61 - into_window)).await;
        }
        let customer = "cus_rate_limited";
        let placed = |n: usize| signed_order_for(&format!("limited-{n}"), 1300, customer);
        for n in 0..10 {
            let reply = s.post(&format!("limited-key-{n:07}"), &placed(n)).await;
            assert_eq!(reply.status, 200, "forward {n}");
        }
        // Answered without a forward: not counted.
        let replay = s.post("limited-key-0000000", &placed(0)).await;
        assert_eq!((replay.status, replay.replayed()), (200, true));
        let limited = s.post("limited-key-0000010", &placed(10)).await;
        let problem = limited.problem(429);
        assert_eq!(
            problem["type"],
            "tag:chargeonce.dev,2026:problem:rate-limited"
        );
        assert_eq!(limited.header("Retry-After"), Some("60"));
        assert_eq!(
            timing_steps(&limited).last().map(String::as_str),
            Some("release"),
            "the claim was given back: {:?}",
            timing_steps(&limited)
        );
        let ledger = s.ledger().await;
        assert_eq!(
            ledger.payments_executed, 10,
            "the eleventh was not forwarded"
        );
        // Another customer is not limited by this one.
        let other = s
            .post(
                "limited-other-0001",
                &signed_order_for("limited-other", 1300, "cus_not_limited"),
            )
            .await;
        assert_eq!(other.status, 200);

        // 120 requests from one address, whatever they are, then 429;
        // another address is counted apart.
        let from = |address: &str| {
            s.http
                .get(format!("{}/v1/orders", s.stack.edge_url))
                .header("CF-Connecting-IP", address)
        };
        for n in 0..120 {
            let reply = s.send(from("203.0.113.9")).await;
            assert_eq!(
                reply.status, 400,
                "request {n} is refused for its missing key"
            );
        }
        let flooded = s.send(from("203.0.113.9")).await;
        flooded.problem(429);
        assert_eq!(
            timing_steps(&flooded),
            ["limit"],
            "nothing else was done for it"
        );
        assert_eq!(s.send(from("203.0.113.10")).await.status, 400);
    });
}

fn main() {
    let args = Arguments::from_args();
    let options = StackOptions {
        vars: vec![
            ("BACKEND_TIMEOUT_MS".into(), BACKEND_TIMEOUT_MS.to_string()),
            ("CLAIM_LEASE_SECS".into(), LEASE_SECS.to_string()),
            ("IDEMPOTENCY_TTL_SECS".into(), TTL_SECS.to_string()),
            ("LOOKUP_SETTLE_SECS".into(), SETTLE_SECS.to_string()),
            ("ALLOWED_ORIGINS".into(), ALLOWED_ORIGIN.into()),
        ],
        dev_simulator_routes: true,
        ..StackOptions::default()
    };
    let stack = match Stack::start(paysim(), DEFAULT_SECRET, &options) {
        Ok(stack) => stack,
        Err(e) => {
            eprintln!("could not start the stack: {e}");
            std::process::exit(1);
        }
    };
    let suite = Arc::new(Suite::new(stack));
    let tests = named![
        two_hundred_parallel_duplicates_charge_once_with_a_naive_backend,
        a_response_lost_after_the_charge_is_reconciled_not_charged_again,
        a_backend_failure_then_a_retry_charges_once,
        the_same_key_with_another_amount_is_refused_with_422,
        a_decline_is_final_and_replayed_without_a_charge,
        a_duplicate_while_in_flight_gets_409_with_retry_after,
        server_timing_names_each_step_a_request_waited_on,
        a_backend_timeout_holds_the_key_for_the_lease_then_reconciles,
        the_widget_waits_out_a_lease_and_gets_the_charge_without_a_second_click,
        an_expired_token_mid_reconciliation_keeps_the_key_and_charges_once,
        the_status_lookup_tells_what_became_of_a_key_and_forwards_nothing,
        an_unknown_outcome_outlives_its_ttl_and_a_late_retry_still_reconciles,
        a_saved_500_settles_as_not_charged_while_the_customer_retries_and_a_new_key_charges_once,
        three_d_secure_is_placed_only_after_authentication_under_the_same_key,
        a_failed_three_d_secure_challenge_is_refused_and_a_new_key_charges_once,
        the_widget_completes_three_d_secure_with_the_pages_handler,
        search_lag_during_reconciliation_charges_once,
        a_key_in_use_at_the_backend_waits_like_a_lease_and_charges_once,
        a_rate_limited_forward_is_released_and_retried_into_one_charge,
        a_reconciling_forward_keeps_the_key_for_a_whole_lease,
        two_keys_for_one_order_in_turn_charge_once_and_the_second_is_a_replay,
        two_keys_for_one_order_at_once_charge_once_and_the_other_waits,
        a_decline_then_a_new_key_for_the_order_charges_once,
        an_unknown_attempt_blocks_its_order_until_reconciled_then_a_new_key_gets_its_charge,
        an_unknown_attempt_that_charged_nothing_frees_its_order_once_settled,
        two_customers_with_one_order_ref_are_two_orders,
        customers_never_see_each_others_results,
        the_quoted_key_form_is_the_same_key,
        malformed_requests_get_their_status_and_are_never_forwarded,
        a_matrix_of_hostile_requests_gets_clear_4xx_answers_and_reaches_no_backend,
        absurd_content_lengths_are_refused_and_never_forwarded,
        an_invalid_order_names_each_bad_field,
        unknown_paths_get_a_404_problem,
        cors_answers_allowed_origins_only,
        orders_signed_by_each_storefront_signer_are_accepted_and_bad_claims_refused,
        the_passthrough_backend_gets_the_json_body_and_the_key,
        the_simulator_hooks_pass_through_the_edge_in_development,
        the_demo_storefront_prices_the_cart_and_signs_the_order,
        a_worker_killed_after_forwarding_recovers_after_the_lease_with_one_charge,
        card_testing_through_one_token_reaches_the_backend_five_times,
        an_expired_token_only_peeks_and_writes_nothing,
        a_redirecting_backend_is_not_followed,
        an_endless_backend_answer_is_cut_off_and_reconciled,
        a_lookup_that_ignores_its_filter_never_answers_with_another_charge,
        the_public_example_secret_is_refused,
        the_rate_limits_answer_429_past_their_counts,
        // Last: it searches everything the suite left behind.
        secrets_never_reach_a_response_a_log_or_the_store,
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let suite = Arc::clone(&suite);
            Trial::test(name, move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&suite))).map_err(
                    |panic| {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Failed::from(format!(
                            "{why}\n--- wrangler log tail ---\n{}",
                            suite.stack.wrangler_log_tail()
                        ))
                    },
                )
            })
        })
        .collect();
    // Simulator faults are global: run the tests one at a time.
    let conclusion = libtest_mimic::run(
        &Arguments {
            test_threads: Some(1),
            ..args
        },
        trials,
    );
    drop(suite);
    conclusion.exit();
}
