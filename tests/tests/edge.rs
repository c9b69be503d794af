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

use chargeonce_tests::shop::{self, now_secs, order_token, signed_order, signed_order_for};
use chargeonce_tests::sim::{Charge, Faults, Ledger, DEFAULT_SECRET};
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
/// The suite's lease: longer than the timeout, as the edge requires.
const LEASE_SECS: u64 = 6;
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
                assert_eq!(reply.header("Allow"), Some("POST, OPTIONS"), "{name}");
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
        let retry = s.post("lost-key-0000000001", &body).await;
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
            ["read", "kv", "claim", "backend", "complete"],
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
        // Refused before the first step: nothing to report.
        let refused = s
            .send(
                s.http
                    .post(format!("{}/v1/orders", s.stack.edge_url))
                    .header("Content-Type", "application/json")
                    .body(body.to_string()),
            )
            .await;
        assert_eq!(refused.status, 400);
        assert_eq!(refused.header("Server-Timing"), None);
    });
}

fn a_duplicate_while_in_flight_gets_409_with_retry_after(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false, "latency_ms": 1000}))
            .await;
        let body = order("flight-1", 700);
        let first = s.post("flight-key-00000001", &body);
        let second = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            s.post("flight-key-00000001", &body).await
        };
        let (first, second) = tokio::join!(first, second);
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
        assert_eq!(
            retry.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&retry.body)
        );
        assert!(retry.replayed(), "the charge came from the first request");
        let charges = s.charges("timeout-1").await;
        assert_eq!(charges.len(), 1, "the lookup kept it to one charge");
        assert_eq!(retry.json()["id"], charges[0].id);
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
            ("GET", s.http.get(&url), 405),
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
        for method in ["GET", "PUT", "PATCH", "DELETE"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            add(method, s.http.request(m, &url).body(good.to_string()), 405);
        }
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
        let denied = s.send(preflight("http://evil.test")).await;
        assert_eq!(denied.header("Access-Control-Allow-Origin"), None);

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

        // A page on another site: no CORS headers, a 403, nothing forwarded.
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
        assert_eq!(foreign.header("Access-Control-Allow-Origin"), None);
        assert!(s.charges("cors-2").await.is_empty());
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
        let faults = s
            .send(s.http.post(edge("faults")).body(r#"{"latency_ms": 5}"#))
            .await;
        assert_eq!(faults.json()["latency_ms"], 5);
        assert_eq!(
            s.sim_faults().await.latency_ms,
            5,
            "the edge set the simulator's faults"
        );
        assert_eq!(s.send(s.http.post(edge("reset"))).await.status, 204);
        assert!(s.ledger().await.charges.is_empty());
        // Only the three hooks, with their methods.
        s.send(s.http.get(edge("reset"))).await.problem(404);
        s.send(s.http.post(edge("ledger"))).await.problem(404);
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
    let (http, url, payload) = (
        s.http.clone(),
        format!("{}/v1/orders", s.stack.edge_url),
        body.to_string(),
    );
    let doomed = s.rt.spawn(async move {
        http.post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", key)
            .body(payload)
            .send()
            .await
    });
    // The edge has claimed the key and forwarded; the backend is working.
    std::thread::sleep(Duration::from_millis(1_000));
    s.stack.kill_edge();
    assert!(
        s.block_on(doomed).unwrap().is_err(),
        "the killed Worker must not have answered"
    );
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
        assert_eq!(
            retry.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&retry.body)
        );
        assert!(retry.replayed());
        assert_eq!(retry.json()["id"], charges[0].id, "the backend's answer");
        let again = s.post(key, &body).await;
        assert!(again.replayed());
        assert_eq!(again.body, retry.body);
        assert_eq!(s.charges("crash-1").await.len(), 1, "one charge");
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
            s.post("secrets-key-0000001", &body).await,
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
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            leaks(&path.display().to_string(), &std::fs::read(&path).unwrap());
            searched += 1;
        }
    }
    assert!(searched > 0, "no stored state to search");
}

fn main() {
    let args = Arguments::from_args();
    let options = StackOptions {
        vars: vec![
            ("BACKEND_TIMEOUT_MS".into(), BACKEND_TIMEOUT_MS.to_string()),
            ("CLAIM_LEASE_SECS".into(), LEASE_SECS.to_string()),
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
        customers_never_see_each_others_results,
        the_quoted_key_form_is_the_same_key,
        malformed_requests_get_their_status_and_are_never_forwarded,
        a_matrix_of_hostile_requests_gets_clear_4xx_answers_and_reaches_no_backend,
        absurd_content_lengths_are_refused_and_never_forwarded,
        an_invalid_order_names_each_bad_field,
        unknown_paths_get_a_404_problem,
        cors_answers_allowed_origins_only,
        the_passthrough_backend_gets_the_json_body_and_the_key,
        the_simulator_hooks_pass_through_the_edge_in_development,
        the_demo_storefront_prices_the_cart_and_signs_the_order,
        a_worker_killed_after_forwarding_recovers_after_the_lease_with_one_charge,
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
