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
const BACKEND_TIMEOUT_MS: u64 = 1_500;
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

fn order(order_ref: &str, amount: u64) -> Value {
    json!({"order_ref": order_ref, "amount": amount, "currency": "usd", "payment_method": "pm_card_visa"})
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
        assert_eq!(
            first.len(),
            1,
            "exactly one response is the first, not replayed"
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

fn a_response_lost_after_the_charge_is_replayed_on_retry(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"drop_after_commit_next": 1})).await;
        let body = order("lost-1", 1500);
        let lost = s.post("lost-key-0000000001", &body).await;
        lost.problem(502);
        assert!(
            lost.header("Retry-After").is_some(),
            "the client is told to retry"
        );
        let retry = s.post("lost-key-0000000001", &body).await;
        assert_eq!(retry.status, 200);
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

fn a_backend_timeout_gives_504_and_the_retry_charges_once(s: &Suite) {
    s.block_on(async {
        // The simulator answers after the edge gave up, but charges anyway:
        // the outcome is unknown to the edge, which releases the key.
        let slow = BACKEND_TIMEOUT_MS + 1_000;
        s.reset(json!({"latency_ms": slow})).await;
        let body = order("timeout-1", 1234);
        let timed_out = s.post("timeout-key-0000001", &body).await;
        timed_out.problem(504);
        assert!(timed_out.header("Retry-After").is_some());
        s.sim("/__sim/faults", json!({"latency_ms": 0})).await;
        // Until the backend finishes the first request it answers 409 (its
        // own in-progress rule), which the edge passes on as retryable.
        let mut retry = s.post("timeout-key-0000001", &body).await;
        for _ in 0..20 {
            if retry.status != 409 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            retry = s.post("timeout-key-0000001", &body).await;
        }
        assert_eq!(
            retry.status,
            200,
            "body: {}",
            String::from_utf8_lossy(&retry.body)
        );
        let charges = s.charges("timeout-1").await;
        assert_eq!(
            charges.len(),
            1,
            "the backend's own dedup kept it to one charge"
        );
        assert_eq!(retry.json()["id"], charges[0].id);
    });
}

fn customers_never_see_each_others_results(s: &Suite) {
    s.block_on(async {
        s.reset(json!({"honor_idempotency": false})).await;
        let mut alice = order("tenant-1", 100);
        alice["customer"] = json!("cus_alice");
        let mut bob = alice.clone();
        bob["customer"] = json!("cus_bob");
        let a = s.post("shared-key-00000001", &alice).await;
        let b = s.post("shared-key-00000001", &bob).await;
        assert_eq!((a.status, b.status), (200, 200));
        assert!(!b.replayed(), "bob must not get alice's stored response");
        assert_eq!(b.json()["metadata"]["customer"], "cus_bob");
        assert_ne!(a.json()["id"], b.json()["id"]);
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

        assert!(cases.len() >= 60, "the matrix has {} cases", cases.len());
        s.assert_refused_and_not_forwarded(cases).await;
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
        let mut body = order("pass-1", 2500);
        body["customer"] = json!("cus_pass");
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
        assert_eq!(
            charges[0].idempotency_key.as_deref(),
            Some("pass-key-000000001")
        );
        assert_eq!(charges[0].customer.as_deref(), Some("cus_pass"));
        assert_eq!(charges[0].amount, 2500);
        let hidden = s
            .send(s.http.get(format!("{}/__sim/ledger", s.stack.edge_url)))
            .await;
        hidden.problem(404);
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

fn main() {
    let args = Arguments::from_args();
    let options = StackOptions {
        vars: vec![
            ("BACKEND_TIMEOUT_MS".into(), BACKEND_TIMEOUT_MS.to_string()),
            ("CLAIM_LEASE_SECS".into(), "5".into()),
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
        a_response_lost_after_the_charge_is_replayed_on_retry,
        a_backend_failure_then_a_retry_charges_once,
        the_same_key_with_another_amount_is_refused_with_422,
        a_decline_is_final_and_replayed_without_a_charge,
        a_duplicate_while_in_flight_gets_409_with_retry_after,
        a_backend_timeout_gives_504_and_the_retry_charges_once,
        customers_never_see_each_others_results,
        the_quoted_key_form_is_the_same_key,
        malformed_requests_get_their_status_and_are_never_forwarded,
        a_matrix_of_hostile_requests_gets_clear_4xx_answers_and_reaches_no_backend,
        an_invalid_order_names_each_bad_field,
        unknown_paths_get_a_404_problem,
        cors_answers_allowed_origins_only,
        the_passthrough_backend_gets_the_json_body_and_the_key,
        the_simulator_hooks_pass_through_the_edge_in_development,
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
