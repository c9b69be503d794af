//! Black-box tests of paysim over real HTTP: in-process on 127.0.0.1:0, and once as the binary.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chargeonce_tests::sim::{
    Faults, Ledger, LookupEntry, LookupLog, RunningSim, SimConfig, DEFAULT_SECRET,
    STRIPE_KEY_RETENTION_MS,
};
use chargeonce_tests::stack::Paysim;
use reqwest::{Client, Response, StatusCode};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

const VISA: &str = "amount=1999&currency=usd&payment_method=pm_card_visa&confirm=true\
    &automatic_payment_methods[enabled]=true&automatic_payment_methods[allow_redirects]=never\
    &metadata[order_ref]=ord_42&metadata[customer]=cus_7";
const DECLINED: &str = "amount=1999&currency=usd&payment_method=pm_card_chargeDeclined\
    &confirm=true&return_url=https%3A%2F%2Fshop.example%2Fdone&metadata[order_ref]=ord_43";

struct Harness {
    sim: RunningSim,
    http: Client,
}

impl Harness {
    async fn start() -> Self {
        let sim = RunningSim::start(SimConfig::default()).await.unwrap();
        Self {
            sim,
            http: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sim.url())
    }

    async fn payment_intent(&self, form: &str, key: Option<&str>) -> Response {
        payment_intent_with(&self.http, &self.sim.url(), form, key)
            .await
            .unwrap()
    }

    async fn order(&self, body: &Value, key: Option<&str>) -> Response {
        let mut request = self
            .http
            .post(self.url("/v1/orders"))
            .bearer_auth(DEFAULT_SECRET)
            .json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    async fn ledger(&self) -> Ledger {
        let response = self
            .http
            .get(self.url("/__sim/ledger"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// `GET /v1/payment_intents/search` with `query` URL-encoded, as a Stripe client sends it.
    async fn search(&self, query: &str) -> Response {
        self.http
            .get(self.url("/v1/payment_intents/search"))
            .bearer_auth(DEFAULT_SECRET)
            .query(&[("query", query)])
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/orders?idempotency_key=KEY`.
    async fn orders_by_key(&self, key: &str) -> Response {
        self.http
            .get(self.url("/v1/orders"))
            .bearer_auth(DEFAULT_SECRET)
            .query(&[("idempotency_key", key)])
            .send()
            .await
            .unwrap()
    }

    /// The body of a successful search, as text.
    async fn search_body(&self, query: &str) -> String {
        ok_text(self.search(query).await).await
    }

    /// `GET` a path with the API key, as is: the query string goes out exactly as written.
    async fn get_raw(&self, path_and_query: &str) -> Response {
        self.http
            .get(self.url(path_and_query))
            .bearer_auth(DEFAULT_SECRET)
            .send()
            .await
            .unwrap()
    }

    async fn lookup_log(&self) -> LookupLog {
        let response = self
            .http
            .get(self.url("/__sim/lookups"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    async fn faults(&self, patch: Value) -> Faults {
        let response = self
            .http
            .post(self.url("/__sim/faults"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{patch}");
        response.json().await.unwrap()
    }
}

async fn payment_intent_with(
    http: &Client,
    base: &str,
    form: &str,
    key: Option<&str>,
) -> reqwest::Result<Response> {
    let mut request = http
        .post(format!("{base}/v1/payment_intents"))
        .bearer_auth(DEFAULT_SECRET)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await
}

/// A client that opens a new connection per request, so a dropped connection is never a pooled
/// one that the client might transparently retry on.
fn unpooled_client() -> Client {
    Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn ok_text(response: Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    response.text().await.unwrap()
}

/// The exact body a search answers with for these elements, newest first.
fn search_result(data: &[&str]) -> String {
    format!(
        r#"{{"object":"search_result","url":"/v1/payment_intents/search","has_more":false,"next_page":null,"data":[{}]}}"#,
        data.join(",")
    )
}

/// The exact body the orders lookup answers with for these elements, newest first.
fn orders_list(data: &[&str]) -> String {
    format!(
        r#"{{"object":"list","url":"/v1/orders","has_more":false,"data":[{}]}}"#,
        data.join(",")
    )
}

/// The PaymentIntent inside a decline's error body, byte for byte.
fn declined_intent(body: &str) -> String {
    let error: HashMap<String, HashMap<String, Box<RawValue>>> =
        serde_json::from_str(body).unwrap();
    error["error"]["payment_intent"].get().to_owned()
}

async fn error_of(response: Response) -> Value {
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let body: Value = response.json().await.unwrap();
    body["error"].clone()
}

#[tokio::test]
async fn visa_payment_succeeds_and_is_in_the_ledger() {
    let h = Harness::start().await;
    let response = h.payment_intent(VISA, Some("key-visa")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header(&response, "request-id").unwrap().starts_with("req_"));
    assert_eq!(header(&response, "idempotent-replayed"), None);
    let intent: Value = response.json().await.unwrap();
    assert_eq!(intent["object"], "payment_intent");
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(intent["amount"], 1999);
    assert_eq!(intent["currency"], "usd");
    assert_eq!(intent["payment_method"], "pm_card_visa");
    assert_eq!(
        intent["metadata"],
        json!({"order_ref": "ord_42", "customer": "cus_7"})
    );
    let id = intent["id"].as_str().unwrap();
    assert_eq!(id.len(), "pi_".len() + 24);

    let ledger = h.ledger().await;
    assert_eq!(ledger.charges.len(), 1);
    let charge = &ledger.charges[0];
    assert_eq!(charge.id, id);
    assert_eq!((charge.amount, charge.currency.as_str()), (1999, "usd"));
    assert_eq!(charge.idempotency_key.as_deref(), Some("key-visa"));
    assert_eq!(charge.order_ref.as_deref(), Some("ord_42"));
    assert_eq!(charge.customer.as_deref(), Some("cus_7"));
    assert_eq!(Some(charge.created), intent["created"].as_u64());
}

#[tokio::test]
async fn unconfirmed_intent_is_not_charged() {
    let h = Harness::start().await;
    let form = "amount=500&currency=eur&payment_method=pm_card_mastercard";
    let response = h.payment_intent(form, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let intent: Value = response.json().await.unwrap();
    assert_eq!(intent["status"], "requires_confirmation");
    assert!(h.ledger().await.charges.is_empty());
}

#[tokio::test]
async fn declined_card_gets_402_and_no_charge() {
    let h = Harness::start().await;
    let response = h.payment_intent(DECLINED, Some("key-decline")).await;
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    let error = error_of(response).await;
    assert_eq!(error["type"], "card_error");
    assert_eq!(error["code"], "card_declined");
    assert_eq!(error["decline_code"], "generic_decline");
    assert_eq!(error["message"], "Your card was declined.");
    assert_eq!(error["payment_intent"]["status"], "requires_payment_method");
    assert!(h.ledger().await.charges.is_empty());
}

#[tokio::test]
async fn unknown_payment_method_is_resource_missing() {
    let h = Harness::start().await;
    let form = VISA.replace("pm_card_visa", "pm_card_amex");
    let response = h.payment_intent(&form, None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"], "resource_missing");
    assert_eq!(error["param"], "payment_method");
    assert_eq!(error["message"], "No such PaymentMethod: 'pm_card_amex'");
    assert!(h.ledger().await.charges.is_empty());
}

#[tokio::test]
async fn missing_or_wrong_api_key_gets_401() {
    let h = Harness::start().await;
    for auth in [
        None,
        Some("Bearer sk_test_wrong"),
        Some("Basic c2tfdGVzdA=="),
    ] {
        let mut request = h
            .http
            .post(h.url("/v1/payment_intents"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(VISA);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(header(&response, "request-id").is_some());
        let error = error_of(response).await;
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().unwrap();
        assert!(message.starts_with("Invalid API Key provided"), "{message}");
    }
    assert!(h.ledger().await.charges.is_empty());
}

#[tokio::test]
async fn confirm_without_return_url_gets_400() {
    let h = Harness::start().await;
    let form = "amount=1999&currency=usd&payment_method=pm_card_visa&confirm=true";
    let response = h.payment_intent(form, Some("key-no-url")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("return_url"));
    assert!(h.ledger().await.charges.is_empty());

    // A validation error is not stored: the key is still free for a valid request.
    let response = h.payment_intent(VISA, Some("key-no-url")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "idempotent-replayed"), None);
}

#[tokio::test]
async fn invalid_params_get_400_naming_the_param() {
    let h = Harness::start().await;
    for (form, param) in [
        ("currency=usd&payment_method=pm_card_visa", "amount"),
        (
            "amount=abc&currency=usd&payment_method=pm_card_visa",
            "amount",
        ),
        (
            "amount=100&currency=dollars&payment_method=pm_card_visa",
            "currency",
        ),
        ("amount=100&currency=usd", "payment_method"),
    ] {
        let response = h.payment_intent(form, None).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{form}");
        let error = error_of(response).await;
        assert_eq!(error["type"], "invalid_request_error", "{form}");
        assert_eq!(error["param"], param, "{form}");
    }
}

#[tokio::test]
async fn same_key_same_params_replays_byte_identical() {
    let h = Harness::start().await;
    let first = h.payment_intent(VISA, Some("key-replay")).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first_id = header(&first, "request-id").unwrap().to_owned();
    let first_body = first.bytes().await.unwrap();

    // Same parameters in another order are the same request.
    let reordered: String = VISA.split('&').rev().collect::<Vec<_>>().join("&");
    let second = h.payment_intent(&reordered, Some("key-replay")).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(header(&second, "idempotent-replayed"), Some("true"));
    assert_ne!(header(&second, "request-id").unwrap(), first_id);
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(h.ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn declines_are_replayed_too() {
    let h = Harness::start().await;
    let first = h.payment_intent(DECLINED, Some("key-d")).await;
    assert_eq!(first.status(), StatusCode::PAYMENT_REQUIRED);
    let first_body = first.bytes().await.unwrap();
    let second = h.payment_intent(DECLINED, Some("key-d")).await;
    assert_eq!(second.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(header(&second, "idempotent-replayed"), Some("true"));
    assert_eq!(second.bytes().await.unwrap(), first_body);
}

#[tokio::test]
async fn same_key_other_params_is_an_idempotency_error() {
    let h = Harness::start().await;
    assert_eq!(
        h.payment_intent(VISA, Some("key-x")).await.status(),
        StatusCode::OK
    );
    let other = VISA.replace("amount=1999", "amount=2999");
    let response = h.payment_intent(&other, Some("key-x")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error = error_of(response).await;
    assert_eq!(error["type"], "idempotency_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("Keys for idempotent requests can only be used with the same parameters"));
    assert_eq!(h.ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn concurrent_same_key_during_latency_gets_one_success_and_409s() {
    let h = Harness::start().await;
    h.faults(json!({"latency_ms": 1000})).await;
    let base = h.sim.url();
    let attempts: Vec<_> = (0..3)
        .map(|_| {
            let (http, base) = (h.http.clone(), base.clone());
            tokio::spawn(async move {
                let response = payment_intent_with(&http, &base, VISA, Some("key-race"))
                    .await
                    .unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        if status == StatusCode::CONFLICT {
            assert_eq!(body["error"]["type"], "invalid_request_error");
            assert_eq!(body["error"]["code"], "idempotency_key_in_use");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("another in-progress request"), "{message}");
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT, StatusCode::CONFLICT]
    );
    assert_eq!(h.ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn naive_backend_charges_twice_for_the_same_key() {
    let h = Harness::start().await;
    let faults = h.faults(json!({"honor_idempotency": false})).await;
    assert!(!faults.honor_idempotency);
    let a = h.payment_intent(VISA, Some("key-naive")).await;
    let b = h.payment_intent(VISA, Some("key-naive")).await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(header(&b, "idempotent-replayed"), None);
    let charges = h.ledger().await.charges;
    assert_eq!(charges.len(), 2);
    assert_ne!(charges[0].id, charges[1].id);
    assert!(charges
        .iter()
        .all(|c| c.idempotency_key.as_deref() == Some("key-naive")));
}

#[tokio::test]
async fn fail_next_answers_503_once_then_the_retry_charges() {
    let h = Harness::start().await;
    assert_eq!(h.faults(json!({"fail_next": 1})).await.fail_next, 1);
    let failed = h.payment_intent(VISA, Some("key-503")).await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_of(failed).await["type"], "api_error");
    assert!(h.ledger().await.charges.is_empty());

    let retried = h.payment_intent(VISA, Some("key-503")).await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(header(&retried, "idempotent-replayed"), None);
    assert_eq!(h.ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn fail_saved_next_answers_500_and_every_retry_with_the_key_gets_it_replayed() {
    let h = Harness::start().await;
    h.faults(json!({"fail_saved_next": 1})).await;
    let failed = h.payment_intent(VISA, Some("key-500")).await;
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&failed, "idempotent-replayed"), None);
    let first = failed.bytes().await.unwrap();

    for _ in 0..2 {
        let retried = h.payment_intent(VISA, Some("key-500")).await;
        assert_eq!(retried.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(header(&retried, "idempotent-replayed"), Some("true"));
        assert_eq!(retried.bytes().await.unwrap(), first);
    }
    assert!(h.ledger().await.charges.is_empty());
}

#[tokio::test]
async fn drop_after_commit_loses_the_response_and_the_retry_replays() {
    let h = Harness::start().await;
    h.faults(json!({"drop_after_commit_next": 1})).await;
    let lost = payment_intent_with(&unpooled_client(), &h.sim.url(), VISA, Some("key-drop")).await;
    let error = lost.expect_err("the response must be lost");
    assert!(error.status().is_none(), "{error:?}");
    let charges = h.ledger().await.charges;
    assert_eq!(charges.len(), 1);
    assert_eq!(h.faults(json!({})).await.drop_after_commit_next, 0);

    let retried = h.payment_intent(VISA, Some("key-drop")).await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(header(&retried, "idempotent-replayed"), Some("true"));
    let intent: Value = retried.json().await.unwrap();
    assert_eq!(intent["id"], charges[0].id.as_str());
    assert_eq!(h.ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn drop_after_commit_on_a_naive_backend_charges_again_on_retry() {
    let h = Harness::start().await;
    h.faults(json!({"drop_after_commit_next": 1, "honor_idempotency": false}))
        .await;
    let lost = payment_intent_with(&unpooled_client(), &h.sim.url(), VISA, Some("key-drop")).await;
    assert!(lost.is_err());
    let retried = h.payment_intent(VISA, Some("key-drop")).await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(h.ledger().await.charges.len(), 2);
}

#[tokio::test]
async fn dropped_connection_carries_no_http_response_at_all() {
    let h = Harness::start().await;
    h.faults(json!({"drop_after_commit_next": 1})).await;
    let addr = h.sim.addr();
    let received = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!(
            "POST /v1/payment_intents HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {DEFAULT_SECRET}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{VISA}",
            VISA.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut received = Vec::new();
        // EOF (or a reset) with nothing read is the point; a timeout would fail the test.
        match stream.read_to_end(&mut received) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected the connection to close, got {e}"),
        }
        received
    })
    .await
    .unwrap();
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
    assert_eq!(h.ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn reset_clears_ledger_keys_and_faults() {
    let h = Harness::start().await;
    assert_eq!(
        h.payment_intent(VISA, Some("key-r")).await.status(),
        StatusCode::OK
    );
    h.faults(json!({"honor_idempotency": false, "fail_next": 2, "latency_ms": 5, "slow_next": 1}))
        .await;
    let by_order_ref = "metadata['order_ref']:'ord_42'";
    assert_ne!(h.search_body(by_order_ref).await, search_result(&[]));
    let lookup_faults =
        json!({"search_lag_ms": 60_000, "lookups_down": true, "lookup_slow_next": 1});
    h.faults(lookup_faults).await;
    let misbehaving =
        json!({"redirect_next": 1, "oversized_next": 1, "lookups_ignore_filter": true});
    h.faults(misbehaving).await;
    h.http.post(h.url("/__sim/elsewhere")).send().await.unwrap();
    assert_eq!(h.ledger().await.redirected_posts, 1);
    let response = h.http.post(h.url("/__sim/reset")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(header(&response, "request-id").is_some());

    assert_eq!(h.ledger().await, Ledger::default());
    assert_eq!(h.search_body(by_order_ref).await, search_result(&[]));
    let faults: Faults = h
        .http
        .get(h.url("/__sim/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults, Faults::default());
    assert!(faults.honor_idempotency);
    // The key was forgotten: the same request executes again instead of replaying.
    let again = h.payment_intent(VISA, Some("key-r")).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(header(&again, "idempotent-replayed"), None);
}

#[tokio::test]
async fn faults_merge_and_reject_unknown_fields_or_wrong_types() {
    let h = Harness::start().await;
    h.faults(json!({"fail_next": 2})).await;
    let merged = h.faults(json!({"latency_ms": 10})).await;
    assert_eq!(
        merged,
        Faults {
            honor_idempotency: true,
            fail_next: 2,
            fail_saved_next: 0,
            drop_after_commit_next: 0,
            latency_ms: 10,
            slow_next: 0,
            slow_ms: 0,
            search_lag_ms: 0,
            lookups_down: false,
            lookup_slow_next: 0,
            lookup_slow_ms: 0,
            search_enabled: true,
            key_retention_ms: STRIPE_KEY_RETENTION_MS,
            in_use_next: 0,
            rate_limit_next: 0,
            redirect_next: 0,
            oversized_next: 0,
            lookups_ignore_filter: false,
        }
    );
    for bad in [
        json!({"fail_nxt": 1}),
        json!({"fail_next": "1"}),
        json!({"lookups_down": 1}),
        json!({"search_lag_ms": -1}),
        json!({"redirect_next": true}),
        json!({"lookups_ignore_filter": "yes"}),
        json!([1]),
    ] {
        let response = h
            .http
            .post(h.url("/__sim/faults"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let message = error_of(response).await["message"].to_string();
        assert!(message.contains("Invalid faults"), "{message}");
        assert!(message.contains("slow_next, slow_ms"), "{message}");
        assert!(message.contains("lookups_down"), "{message}");
        assert!(
            message.contains("redirect_next, oversized_next"),
            "{message}"
        );
    }
    assert_eq!(h.faults(json!({})).await, merged);
}

#[tokio::test]
async fn json_orders_twin_charges_replays_and_declines() {
    let h = Harness::start().await;
    let order = json!({
        "order_ref": "ord_9", "amount": 4200, "currency": "eur",
        "payment_method": "pm_card_mastercard", "customer": "cus_9", "note": "ignored"
    });
    let first = h.order(&order, Some("key-o")).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first_body = first.bytes().await.unwrap();
    let intent: Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(
        intent["metadata"],
        json!({"order_ref": "ord_9", "customer": "cus_9"})
    );

    let replay = h.order(&order, Some("key-o")).await;
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    assert_eq!(replay.bytes().await.unwrap(), first_body);

    let mut other = order.clone();
    other["amount"] = json!(1);
    let conflict = h.order(&other, Some("key-o")).await;
    assert_eq!(conflict.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(conflict).await["type"], "idempotency_error");

    let mut declined = order.clone();
    declined["payment_method"] = json!("pm_card_chargeDeclined");
    let response = h.order(&declined, Some("key-o2")).await;
    assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(error_of(response).await["code"], "card_declined");

    let mut invalid = order.clone();
    invalid["amount"] = json!(0);
    let response = h.order(&invalid, None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_of(response).await["param"], "amount");

    let charges = h.ledger().await.charges;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].order_ref.as_deref(), Some("ord_9"));
    assert_eq!(charges[0].customer.as_deref(), Some("cus_9"));
    assert_eq!(charges[0].id, intent["id"].as_str().unwrap());
}

#[tokio::test]
async fn unknown_paths_404_and_wrong_methods_405() {
    let h = Harness::start().await;
    let response = h.http.get(h.url("/v1/charges")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(header(&response, "request-id").is_some());
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .starts_with("Unrecognized request URL"));

    let response = h
        .http
        .get(h.url("/v1/payment_intents"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("POST"));
    assert_eq!(error_of(response).await["type"], "invalid_request_error");
    let response = h.http.delete(h.url("/__sim/faults")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn lookup_paths_answer_405_to_other_methods() {
    let h = Harness::start().await;
    let response = h
        .http
        .post(h.url("/v1/payment_intents/search"))
        .bearer_auth(DEFAULT_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("GET"));
    assert_eq!(error_of(response).await["type"], "invalid_request_error");
    for request in [
        h.http.delete(h.url("/v1/orders")),
        h.http.put(h.url("/v1/orders?idempotency_key=k")),
    ] {
        let response = request.bearer_auth(DEFAULT_SECRET).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&response, "allow"), Some("GET, POST"));
    }
}

#[tokio::test]
async fn lookups_without_the_api_key_get_401() {
    let h = Harness::start().await;
    for path in [
        "/v1/payment_intents/search?query=metadata%5B%27k%27%5D%3A%27v%27",
        "/v1/orders?idempotency_key=k",
    ] {
        for auth in [None, Some("Bearer sk_test_wrong")] {
            let mut request = h.http.get(h.url(path));
            if let Some(auth) = auth {
                request = request.header("Authorization", auth);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{path} {auth:?}"
            );
            let error = error_of(response).await;
            assert_eq!(error["type"], "invalid_request_error");
            let message = error["message"].as_str().unwrap();
            assert!(message.starts_with("Invalid API Key provided"), "{message}");
        }
    }
}

#[tokio::test]
async fn unsupported_search_queries_get_400_naming_the_supported_form() {
    let h = Harness::start().await;
    h.payment_intent(VISA, None).await;
    for query in [
        "",
        "status:'succeeded'",
        "metadata['order_ref']:'ord_42' AND metadata['customer']:'cus_7'",
        "metadata['order_ref']:'ord_42' OR metadata['customer']:'cus_7'",
        "metadata['order_ref']:'ord_42\"",
        "metadata[order_ref]:'ord_42'",
        "metadata['order_ref']:ord_42",
    ] {
        let response = h.search(query).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let error = error_of(response).await;
        assert_eq!(error["type"], "invalid_request_error", "{query}");
        assert_eq!(error["param"], "query", "{query}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("metadata['KEY']:'VALUE'"), "{message}");
    }
    let response = h
        .http
        .get(h.url("/v1/payment_intents/search"))
        .bearer_auth(DEFAULT_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let message = error_of(response).await["message"].to_string();
    assert!(
        message.contains("Missing required param: query."),
        "{message}"
    );
    assert!(message.contains("metadata['KEY']:'VALUE'"), "{message}");
}

#[tokio::test]
async fn search_finds_intents_by_metadata_newest_first_byte_for_byte() {
    let h = Harness::start().await;
    let tagged = |form: &str, tag: &str| format!("{form}&metadata[chargeonce_key]={tag}");
    let charged = h
        .payment_intent(&tagged(VISA, "ck_1"), Some("ck_1"))
        .await
        .text()
        .await
        .unwrap();
    h.payment_intent(&tagged(VISA, "ck_2"), Some("ck_2")).await;
    let declined = h
        .payment_intent(&tagged(DECLINED, "ck_1"), Some("ck_1-retry"))
        .await;
    assert_eq!(declined.status(), StatusCode::PAYMENT_REQUIRED);
    let declined = declined_intent(&declined.text().await.unwrap());
    // Same order_ref through the JSON twin: not a PaymentIntent the search covers.
    let order = json!({"order_ref": "ord_42", "amount": 5, "currency": "usd",
        "payment_method": "pm_card_visa"});
    assert_eq!(h.order(&order, Some("ck_1")).await.status(), StatusCode::OK);

    let expected = search_result(&[&declined, &charged]);
    assert_eq!(
        h.search_body("metadata['chargeonce_key']:'ck_1'").await,
        expected
    );
    assert_eq!(
        h.search_body(r#"  metadata["chargeonce_key"]:"ck_1"  "#)
            .await,
        expected
    );
    let declined: Value = serde_json::from_str(&declined).unwrap();
    assert_eq!(declined["status"], "requires_payment_method");

    let by_order_ref = h.search_body("metadata['order_ref']:'ord_42'").await;
    let by_order_ref: Value = serde_json::from_str(&by_order_ref).unwrap();
    let statuses: Vec<_> = by_order_ref["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|intent| intent["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "succeeded"]);
}

#[tokio::test]
async fn lookups_for_unknown_values_answer_empty_data() {
    let h = Harness::start().await;
    h.payment_intent(VISA, Some("key-1")).await;
    h.order(
        &json!({"order_ref": "o", "amount": 5, "currency": "usd", "payment_method": "pm_card_visa"}),
        Some("key-1"),
    )
    .await;
    assert_eq!(
        h.search_body("metadata['order_ref']:'ord_41'").await,
        search_result(&[])
    );
    assert_eq!(
        h.search_body("metadata['chargeonce_key']:'key-1'").await,
        search_result(&[])
    );
    assert_eq!(
        ok_text(h.orders_by_key("key-2").await).await,
        orders_list(&[])
    );
}

#[tokio::test]
async fn search_finds_a_charge_whose_response_was_dropped_on_a_naive_backend() {
    let h = Harness::start().await;
    h.faults(json!({"drop_after_commit_next": 1, "honor_idempotency": false}))
        .await;
    let form = format!("{VISA}&metadata[chargeonce_key]=ck_lost");
    let lost = payment_intent_with(&unpooled_client(), &h.sim.url(), &form, Some("ck_lost")).await;
    assert!(lost.is_err());

    let query = "metadata['chargeonce_key']:'ck_lost'";
    let found: Value = serde_json::from_str(&h.search_body(query).await).unwrap();
    let charges = h.ledger().await.charges;
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["id"], charges[0].id.as_str());
    assert_eq!(found["data"][0]["status"], "succeeded");

    // What the lookup is for: without it, the naive backend charges the retry again.
    let retried = h.payment_intent(&form, Some("ck_lost")).await;
    let retried = retried.text().await.unwrap();
    let found: Value = serde_json::from_str(&h.search_body(query).await).unwrap();
    assert_eq!(
        found["data"][0],
        serde_json::from_str::<Value>(&retried).unwrap()
    );
    assert_eq!(found["data"][1]["id"], charges[0].id.as_str());
    assert_eq!(h.ledger().await.charges.len(), 2);
}

#[tokio::test]
async fn orders_lookup_finds_by_idempotency_key_newest_first_byte_for_byte() {
    let h = Harness::start().await;
    h.faults(json!({"honor_idempotency": false})).await;
    let order = json!({"order_ref": "ord_9", "amount": 4200, "currency": "eur",
        "payment_method": "pm_card_mastercard"});
    let first = h.order(&order, Some("key-o")).await.text().await.unwrap();
    h.order(&order, Some("key-other")).await;
    h.order(&order, None).await;
    h.payment_intent(VISA, Some("key-o")).await;
    let mut declined = order.clone();
    declined["payment_method"] = json!("pm_card_chargeDeclined");
    let declined = h.order(&declined, Some("key-o")).await;
    assert_eq!(declined.status(), StatusCode::PAYMENT_REQUIRED);
    let declined = declined_intent(&declined.text().await.unwrap());

    assert_eq!(
        ok_text(h.orders_by_key("key-o").await).await,
        orders_list(&[&declined, &first])
    );
    let other = ok_text(h.orders_by_key("key-other").await).await;
    let other: Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["data"].as_array().unwrap().len(), 1);

    for path in [
        "/v1/orders",
        "/v1/orders?idempotency_key=",
        "/v1/orders?key=key-o",
    ] {
        let response = h
            .http
            .get(h.url(path))
            .bearer_auth(DEFAULT_SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let error = error_of(response).await;
        assert_eq!(error["param"], "idempotency_key", "{path}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("Missing required param: idempotency_key"),
            "{message}"
        );
    }
}

#[tokio::test]
async fn lookup_sees_a_charge_committed_after_its_client_hung_up() {
    let h = Harness::start().await;
    h.faults(json!({"latency_ms": 1500})).await;
    let impatient = Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let order = json!({"order_ref": "ord_1", "amount": 5, "currency": "usd",
        "payment_method": "pm_card_visa"});
    let gone = impatient
        .post(h.url("/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .header("Idempotency-Key", "key-gone")
        .json(&order)
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    // Still waiting to execute: not charged yet, so not found yet.
    assert_eq!(
        ok_text(h.orders_by_key("key-gone").await).await,
        orders_list(&[])
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let body = ok_text(h.orders_by_key("key-gone").await).await;
        if body != orders_list(&[]) {
            break body;
        }
        assert!(Instant::now() < deadline, "the charge never showed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let found: Value = serde_json::from_str(&found).unwrap();
    let charges = h.ledger().await.charges;
    assert_eq!(charges.len(), 1);
    assert_eq!(found["data"][0]["id"], charges[0].id.as_str());
}

#[tokio::test]
async fn slow_next_delays_only_that_many_requests_on_top_of_latency() {
    const LATENCY: Duration = Duration::from_millis(100);
    const SLOW: Duration = Duration::from_millis(300);
    let h = Harness::start().await;
    let faults = h
        .faults(json!({"latency_ms": 100, "slow_next": 2, "slow_ms": 300}))
        .await;
    assert_eq!((faults.slow_next, faults.slow_ms), (2, 300));

    let mut elapsed = Vec::new();
    for key in ["key-s1", "key-s2", "key-s3"] {
        let started = Instant::now();
        let response = h.payment_intent(VISA, Some(key)).await;
        assert_eq!(response.status(), StatusCode::OK);
        elapsed.push(started.elapsed());
    }
    assert!(elapsed[0] >= LATENCY + SLOW, "{elapsed:?}");
    assert!(elapsed[1] >= LATENCY + SLOW, "{elapsed:?}");
    assert!(elapsed[2] >= LATENCY, "{elapsed:?}");
    assert!(elapsed[2] < LATENCY + SLOW, "{elapsed:?}");
    let faults = h.faults(json!({})).await;
    assert_eq!((faults.slow_next, faults.slow_ms), (0, 300));
    assert_eq!(h.ledger().await.charges.len(), 3);
}

fn unix_ms() -> u64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(elapsed.as_millis()).unwrap()
}

const BY_CK_1: &str = "metadata['chargeonce_key']:'ck_1'";

fn tagged_visa() -> String {
    format!("{VISA}&metadata[chargeonce_key]=ck_1")
}

fn visa_order() -> Value {
    json!({"order_ref": "ord_1", "amount": 5, "currency": "usd", "payment_method": "pm_card_visa"})
}

#[tokio::test]
async fn search_lag_hides_new_intents_from_both_lookups_until_lowered() {
    let h = Harness::start().await;
    // Stripe's "under 1 minute": far longer than this test takes to look.
    let faults = h.faults(json!({"search_lag_ms": 60_000})).await;
    assert_eq!(faults.search_lag_ms, 60_000);
    let paid = h.payment_intent(&tagged_visa(), Some("ck_1")).await;
    assert_eq!(paid.status(), StatusCode::OK);
    let paid = paid.text().await.unwrap();
    let order = h.order(&visa_order(), Some("ck_1")).await;
    let order = order.text().await.unwrap();
    assert_eq!(h.ledger().await.charges.len(), 2);

    assert_eq!(h.search_body(BY_CK_1).await, search_result(&[]));
    assert_eq!(
        ok_text(h.orders_by_key("ck_1").await).await,
        orders_list(&[])
    );

    // The lag is read when a lookup answers, so lowering it shows what it hid.
    h.faults(json!({"search_lag_ms": 0})).await;
    assert_eq!(h.search_body(BY_CK_1).await, search_result(&[&paid]));
    assert_eq!(
        ok_text(h.orders_by_key("ck_1").await).await,
        orders_list(&[&order])
    );
}

#[tokio::test]
async fn search_lag_lapses_no_sooner_than_its_length() {
    const LAG_MS: u64 = 400;
    let h = Harness::start().await;
    h.faults(json!({"search_lag_ms": LAG_MS})).await;
    let started = Instant::now();
    let paid = h.payment_intent(&tagged_visa(), Some("ck_1")).await;
    let paid = paid.text().await.unwrap();
    let deadline = started + Duration::from_secs(10);
    let found = loop {
        let body = h.search_body(BY_CK_1).await;
        if body != search_result(&[]) {
            break body;
        }
        assert!(Instant::now() < deadline, "the intent never showed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    assert_eq!(found, search_result(&[&paid]));
    // Both instants are whole wall-clock milliseconds on the server: 1 ms of slack.
    assert!(elapsed >= Duration::from_millis(LAG_MS - 1), "{elapsed:?}");
}

#[tokio::test]
async fn lookups_down_answers_503_to_both_lookups_until_off_and_payments_go_on() {
    let h = Harness::start().await;
    assert!(h.faults(json!({"lookups_down": true})).await.lookups_down);
    let paid = h.payment_intent(&tagged_visa(), Some("ck_1")).await;
    assert_eq!(paid.status(), StatusCode::OK);
    let paid = paid.text().await.unwrap();
    let order = h.order(&visa_order(), Some("ck_1")).await;
    assert_eq!(order.status(), StatusCode::OK);
    assert_eq!(h.ledger().await.charges.len(), 2);

    for _ in 0..2 {
        for response in [h.search(BY_CK_1).await, h.orders_by_key("ck_1").await] {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let error = error_of(response).await;
            assert_eq!(error["type"], "api_error");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains("lookups_down"), "{message}");
        }
    }
    assert!(h.faults(json!({})).await.lookups_down);

    h.faults(json!({"lookups_down": false})).await;
    assert_eq!(h.search_body(BY_CK_1).await, search_result(&[&paid]));
    let orders = ok_text(h.orders_by_key("ck_1").await).await;
    let orders: Value = serde_json::from_str(&orders).unwrap();
    assert_eq!(orders["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn lookup_slow_next_delays_a_lookup_without_holding_up_payments() {
    const SLOW: Duration = Duration::from_millis(2000);
    let h = Harness::start().await;
    let faults = h
        .faults(json!({"lookup_slow_next": 1, "lookup_slow_ms": 2000}))
        .await;
    assert_eq!((faults.lookup_slow_next, faults.lookup_slow_ms), (1, 2000));

    let started = Instant::now();
    let slow = {
        let (http, url) = (h.http.clone(), h.url("/v1/payment_intents/search"));
        tokio::spawn(async move {
            let response = http
                .get(url)
                .bearer_auth(DEFAULT_SECRET)
                .query(&[("query", BY_CK_1)])
                .send()
                .await
                .unwrap();
            let body = ok_text(response).await;
            (started.elapsed(), body)
        })
    };
    // The slow lookup has begun once it took the fault.
    let deadline = started + Duration::from_secs(10);
    while h.faults(json!({})).await.lookup_slow_next > 0 {
        assert!(Instant::now() < deadline, "the slow lookup never began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let paid = h.payment_intent(&tagged_visa(), Some("ck_1")).await;
    assert_eq!(paid.status(), StatusCode::OK);
    let paid = paid.text().await.unwrap();

    let (elapsed, body) = slow.await.unwrap();
    assert!(elapsed >= SLOW, "{elapsed:?}");
    // It answers what was there when it answered: the payment made while it waited, which would
    // have had to wait for it instead if the delay held the simulator.
    assert_eq!(body, search_result(&[&paid]));
    let faults = h.faults(json!({})).await;
    assert_eq!((faults.lookup_slow_next, faults.lookup_slow_ms), (0, 2000));
}

#[tokio::test]
async fn lookup_log_lists_each_lookup_answered_with_its_raw_query_until_reset() {
    let h = Harness::start().await;
    assert_eq!(h.lookup_log().await, LookupLog::default());
    let before = unix_ms();
    h.payment_intent(VISA, Some("key-1")).await;
    let search = "/v1/payment_intents/search";
    let raw_search = "query=metadata%5B%27order_ref%27%5D%3A%27ord_42%27";
    let response = h.get_raw(&format!("{search}?{raw_search}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = h.get_raw("/v1/orders?idempotency_key=key+1&limit=3").await;
    assert_eq!(response.status(), StatusCode::OK);
    let unauthorized = h.http.get(h.url("/v1/orders?idempotency_key=k"));
    let unauthorized = unauthorized.send().await.unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(h.get_raw(search).await.status(), StatusCode::BAD_REQUEST);
    h.faults(json!({"lookups_down": true})).await;
    let down = h.get_raw("/v1/orders?idempotency_key=k").await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    let after = unix_ms();

    let response = h.http.get(h.url("/__sim/lookups")).send().await.unwrap();
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let raw: Value = response.json().await.unwrap();
    let mut fields: Vec<_> = raw["lookups"][0].as_object().unwrap().keys().collect();
    fields.sort();
    assert_eq!(fields, ["at_ms", "path", "query", "status"]);
    let log: LookupLog = serde_json::from_value(raw).unwrap();
    let asked: Vec<_> = log
        .lookups
        .iter()
        .map(|entry| (entry.path.as_str(), entry.query.as_str(), entry.status))
        .collect();
    assert_eq!(
        asked,
        [
            (search, raw_search, 200),
            ("/v1/orders", "idempotency_key=key+1&limit=3", 200),
            ("/v1/orders", "idempotency_key=k", 401),
            (search, "", 400),
            ("/v1/orders", "idempotency_key=k", 503),
        ]
    );
    let times: Vec<u64> = log.lookups.iter().map(|entry| entry.at_ms).collect();
    assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
    assert!(
        times.iter().all(|at| (before..=after).contains(at)),
        "{times:?}"
    );

    let response = h.http.post(h.url("/__sim/lookups")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("GET"));
    h.http.post(h.url("/__sim/reset")).send().await.unwrap();
    assert_eq!(h.lookup_log().await, LookupLog::default());
    h.orders_by_key("key-2").await;
    let log = h.lookup_log().await;
    assert_eq!(log.lookups.len(), 1);
    assert_eq!(
        log.lookups[0],
        LookupEntry {
            at_ms: log.lookups[0].at_ms,
            path: "/v1/orders".to_owned(),
            query: "idempotency_key=key-2".to_owned(),
            status: 200,
        }
    );
}

#[tokio::test]
async fn a_slow_lookup_whose_client_hung_up_is_still_answered_and_logged() {
    let h = Harness::start().await;
    h.faults(json!({"lookup_slow_next": 1, "lookup_slow_ms": 600}))
        .await;
    let impatient = Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let gone = impatient
        .get(h.url("/v1/orders?idempotency_key=k"))
        .bearer_auth(DEFAULT_SECRET)
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());

    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = h.lookup_log().await;
        if !log.lookups.is_empty() {
            break log;
        }
        assert!(Instant::now() < deadline, "the lookup was never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(log.lookups.len(), 1);
    assert_eq!(log.lookups[0].query, "idempotency_key=k");
    assert_eq!(log.lookups[0].status, 200);
}

#[tokio::test]
async fn bodies_over_one_mib_get_413() {
    let h = Harness::start().await;
    let padding = "x".repeat(1024 * 1024);
    let response = h
        .http
        .post(h.url("/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"pad":"{padding}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(response).await["type"], "invalid_request_error");
}

#[tokio::test]
async fn paysim_binary_announces_its_port_serves_and_exits_on_sigterm() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_paysim"))
        .args(["--listen", "127.0.0.1:0", "--secret", "sk_test_binary"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        BufReader::new(stdout).lines().next_line().await
    })
    .await
    .expect("paysim announces itself")
    .unwrap()
    .expect("a line on stdout");
    let base = line
        .strip_prefix("paysim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    assert!(!base.ends_with(":0"), "{line}");

    let http = Client::new();
    let response = http
        .post(format!("{base}/v1/payment_intents"))
        .bearer_auth("sk_test_binary")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(VISA)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let wrong = payment_intent_with(&http, base, VISA, None).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let ledger: Ledger = http
        .get(format!("{base}/__sim/ledger"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger.charges.len(), 1);

    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("paysim exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// `VISA` paid with another test payment method.
fn visa_with(method: &str) -> String {
    VISA.replace("pm_card_visa", method)
}

/// `POST /__sim/payment_intents/{id}/authenticate` with `body`, as is.
async fn authenticate(http: &Client, base: &str, id: &str, body: &str) -> Response {
    http.post(format!("{base}/__sim/payment_intents/{id}/authenticate"))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// `GET /v1/payment_intents/{id}` with `secret`, if any.
async fn retrieve(http: &Client, base: &str, id: &str, secret: Option<&str>) -> Response {
    let mut request = http.get(format!("{base}/v1/payment_intents/{id}"));
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn retrieve_and_the_three_d_secure_hook_work_through_the_paysim_process() {
    let paysim = Paysim::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_paysim")),
        DEFAULT_SECRET,
    )
    .unwrap();
    let (base, http) = (paysim.url.as_str(), Client::new());
    let ledger = || async {
        let ledger: Ledger = http
            .get(format!("{base}/__sim/ledger"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ledger
    };
    let form = format!(
        "{}&metadata[chargeonce_key]=ck_3ds",
        visa_with("pm_card_threeDSecure2Required")
    );
    let created = payment_intent_with(&http, base, &form, Some("key-3ds"))
        .await
        .unwrap();
    let created = ok_text(created).await;
    let intent: Value = serde_json::from_str(&created).unwrap();
    let id = intent["id"].as_str().unwrap();
    assert_eq!(intent["status"], "requires_action");
    assert_eq!(intent["next_action"]["type"], "use_stripe_sdk");
    let secret = intent["client_secret"].as_str().unwrap();
    assert!(secret.starts_with(&format!("{id}_secret_")), "{secret}");
    assert!(ledger().await.charges.is_empty());

    // Retrieval: the current state, authenticated like every /v1 endpoint.
    let retrieved = retrieve(&http, base, id, Some(DEFAULT_SECRET)).await;
    assert_eq!(ok_text(retrieved).await, created);
    for secret in [None, Some("sk_test_wrong")] {
        let response = retrieve(&http, base, id, secret).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{secret:?}");
    }
    let missing = retrieve(&http, base, "pi_missing", Some(DEFAULT_SECRET)).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let error = error_of(missing).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("invalid_request_error"), Some("resource_missing"))
    );

    // The challenge refuses what is not an outcome, and touches nothing.
    for (body, expected) in [
        ("{", "Invalid authentication: "),
        (r#"{"outcome":"perhaps"}"#, "unknown variant `perhaps`"),
    ] {
        let response = authenticate(&http, base, id, body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let message = error_of(response).await["message"].to_string();
        assert!(message.contains(expected), "{body}: {message}");
    }
    let response = authenticate(&http, base, "pi_missing", r#"{"outcome":"succeed"}"#).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Passing it charges once, and every reader sees succeeded.
    let passed = authenticate(&http, base, id, r#"{"outcome":"succeed"}"#).await;
    let passed = ok_text(passed).await;
    let intent: Value = serde_json::from_str(&passed).unwrap();
    assert_eq!(intent["status"], "succeeded");
    assert_eq!(intent["next_action"], Value::Null);
    let charges = ledger().await.charges;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].id, id);
    assert_eq!(charges[0].idempotency_key.as_deref(), Some("key-3ds"));
    let retrieved = retrieve(&http, base, id, Some(DEFAULT_SECRET)).await;
    assert_eq!(ok_text(retrieved).await, passed);
    let found = http
        .get(format!("{base}/v1/payment_intents/search"))
        .bearer_auth(DEFAULT_SECRET)
        .query(&[("query", "metadata['chargeonce_key']:'ck_3ds'")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok_text(found).await, search_result(&[&passed]));

    // The key replays what was saved: requires_action, as Stripe replays saved responses.
    let replay = payment_intent_with(&http, base, &form, Some("key-3ds"))
        .await
        .unwrap();
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    assert_eq!(ok_text(replay).await, created);

    // No second challenge.
    let again = authenticate(&http, base, id, r#"{"outcome":"fail"}"#).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_of(again).await["code"],
        "payment_intent_unexpected_state"
    );

    // Failing the challenge of an order: nothing charged, and the orders lookup says so.
    let order = json!({"order_ref": "ord_3ds", "amount": 700, "currency": "usd",
        "payment_method": "pm_card_authenticationRequired"});
    let created = http
        .post(format!("{base}/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .header("Idempotency-Key", "order-3ds")
        .json(&order)
        .send()
        .await
        .unwrap();
    let created: Value = serde_json::from_str(&ok_text(created).await).unwrap();
    let order_id = created["id"].as_str().unwrap();
    let failed = authenticate(&http, base, order_id, r#"{"outcome":"fail"}"#).await;
    let failed = ok_text(failed).await;
    let intent: Value = serde_json::from_str(&failed).unwrap();
    assert_eq!(intent["status"], "requires_payment_method");
    assert_eq!(
        intent["last_payment_error"]["code"],
        "payment_intent_authentication_failure"
    );
    let listed = http
        .get(format!("{base}/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .query(&[("idempotency_key", "order-3ds")])
        .send()
        .await
        .unwrap();
    assert_eq!(ok_text(listed).await, orders_list(&[&failed]));
    assert_eq!(ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn declines_of_stripes_test_cards_answer_402_with_their_codes() {
    let h = Harness::start().await;
    for (method, code, decline_code) in [
        (
            "pm_card_visa_chargeDeclinedInsufficientFunds",
            "card_declined",
            Some("insufficient_funds"),
        ),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", None),
        (
            "pm_card_chargeDeclinedProcessingError",
            "processing_error",
            None,
        ),
    ] {
        let key = format!("key-{method}");
        let response = h.payment_intent(&visa_with(method), Some(&key)).await;
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED, "{method}");
        let body = response.text().await.unwrap();
        let error: Value = serde_json::from_str::<Value>(&body).unwrap()["error"].clone();
        assert_eq!(error["type"], "card_error", "{method}");
        assert_eq!(error["code"], code, "{method}");
        assert_eq!(error["decline_code"].as_str(), decline_code, "{method}");
        assert_eq!(
            error["payment_intent"]["last_payment_error"]["code"], code,
            "{method}"
        );
        let replay = h.payment_intent(&visa_with(method), Some(&key)).await;
        assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
        assert_eq!(replay.text().await.unwrap(), body);
    }
    assert!(h.ledger().await.charges.is_empty());
}

#[tokio::test]
async fn the_new_paths_route_and_answer_405_to_other_methods() {
    let h = Harness::start().await;
    let response = h
        .http
        .get(h.url("/__sim/payment_intents/pi_x/authenticate"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("POST"));
    let response = h
        .http
        .post(h.url("/v1/payment_intents/pi_x"))
        .bearer_auth(DEFAULT_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("GET"));
    for path in [
        "/v1/payment_intents/",
        "/v1/payment_intents/pi_x/capture",
        "/__sim/payment_intents//authenticate",
    ] {
        let response = h.get_raw(path).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let message = error_of(response).await["message"].to_string();
        assert!(
            message.contains("Unrecognized request URL"),
            "{path}: {message}"
        );
    }
}

#[tokio::test]
async fn rate_limit_in_use_search_disabled_and_key_retention_over_http() {
    let h = Harness::start().await;
    let paid = ok_text(h.payment_intent(&tagged_visa(), Some("k1")).await).await;
    let id = serde_json::from_str::<Value>(&paid).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    h.faults(json!({"rate_limit_next": 2})).await;
    let limited = h.payment_intent(VISA, Some("k1")).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&limited, "idempotent-replayed"), None);
    assert_eq!(error_of(limited).await["code"], "rate_limit");
    let limited = retrieve(&h.http, &h.sim.url(), &id, Some(DEFAULT_SECRET)).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retrieved = retrieve(&h.http, &h.sim.url(), &id, Some(DEFAULT_SECRET)).await;
    assert_eq!(ok_text(retrieved).await, paid);

    h.faults(json!({"in_use_next": 1})).await;
    let busy = h.payment_intent(VISA, Some("k2")).await;
    assert_eq!(busy.status(), StatusCode::CONFLICT);
    assert_eq!(error_of(busy).await["code"], "idempotency_key_in_use");
    let executed = h.payment_intent(VISA, Some("k2")).await;
    assert_eq!(executed.status(), StatusCode::OK);
    assert_eq!(header(&executed, "idempotent-replayed"), None);

    h.faults(json!({"search_enabled": false})).await;
    let refused = h.search("metadata['chargeonce_key']:'ck_1'").await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let message = error_of(refused).await["message"].to_string();
    assert!(message.contains("Search is not available"), "{message}");
    assert_eq!(
        h.orders_by_key("k1").await.status(),
        StatusCode::OK,
        "the orders lookup is not Search"
    );

    // With no retention, a finished key is pruned by its next use, which executes anew.
    h.faults(json!({"key_retention_ms": 0})).await;
    let anew = h.payment_intent(VISA, Some("k2")).await;
    assert_eq!(anew.status(), StatusCode::OK);
    assert_eq!(header(&anew, "idempotent-replayed"), None);
    assert_eq!(h.ledger().await.charges.len(), 3);
}

/// A client that never follows a redirect, so that a test sees the 307 itself.
fn not_following_client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn redirect_next_answers_307_to_elsewhere_on_both_endpoints_and_charges_nothing() {
    let h = Harness::start().await;
    assert_eq!(h.faults(json!({"redirect_next": 3})).await.redirect_next, 3);
    let direct = not_following_client();
    let elsewhere = format!("{}/__sim/elsewhere", h.sim.url());
    let moved = payment_intent_with(&direct, &h.sim.url(), &tagged_visa(), Some("key-moved"))
        .await
        .unwrap();
    let order = direct
        .post(h.url("/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .header("Idempotency-Key", "key-moved")
        .json(&visa_order())
        .send()
        .await
        .unwrap();
    for response in [moved, order] {
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(header(&response, "location"), Some(elsewhere.as_str()));
        assert_eq!(header(&response, "idempotent-replayed"), None);
        let error = error_of(response).await;
        assert_eq!(error["type"], "api_error");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("redirect_next"), "{message}");
    }
    // The Location names the host the request came to, whatever it was.
    let proxied = direct
        .post(h.url("/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .header("Host", "paysim.example:4242")
        .json(&visa_order())
        .send()
        .await
        .unwrap();
    assert_eq!(proxied.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        header(&proxied, "location"),
        Some("http://paysim.example:4242/__sim/elsewhere")
    );
    assert_eq!(h.faults(json!({})).await.redirect_next, 0);

    // Nothing was charged, recorded or saved: the lookups find nothing, the key executes anew.
    let ledger = h.ledger().await;
    assert!(ledger.charges.is_empty());
    assert_eq!(ledger.redirected_posts, 0);
    assert_eq!(h.search_body(BY_CK_1).await, search_result(&[]));
    assert_eq!(
        ok_text(h.orders_by_key("key-moved").await).await,
        orders_list(&[])
    );
    let retried = h.payment_intent(&tagged_visa(), Some("key-moved")).await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(header(&retried, "idempotent-replayed"), None);
    assert_eq!(h.ledger().await.charges.len(), 1);
}

#[tokio::test]
async fn a_client_that_follows_the_redirect_gets_pi_elsewhere_and_elsewhere_counts_it() {
    let h = Harness::start().await;
    h.faults(json!({"redirect_next": 1})).await;
    // reqwest follows a 307 as fetch does: the same POST, body and all, to the Location.
    let followed = h.payment_intent(VISA, Some("key-followed")).await;
    assert_eq!(followed.url().path(), "/__sim/elsewhere");
    let intent: Value = serde_json::from_str(&ok_text(followed).await).unwrap();
    assert_eq!(intent["id"], "pi_elsewhere");
    assert_eq!(intent["object"], "payment_intent");
    assert_eq!(intent["status"], "succeeded");
    let ledger = h.ledger().await;
    assert!(ledger.charges.is_empty());
    assert_eq!(ledger.redirected_posts, 1);

    // It counts every POST it receives, whoever sends it, and only POSTs.
    let direct = h
        .http
        .post(h.url("/__sim/elsewhere"))
        .body("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::OK);
    let response = h.http.get(h.url("/__sim/elsewhere")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(header(&response, "allow"), Some("POST"));
    let raw: Value = h
        .http
        .get(h.url("/__sim/ledger"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw,
        json!({"charges": [], "payments_executed": 0, "redirected_posts": 2})
    );
    h.http.post(h.url("/__sim/reset")).send().await.unwrap();
    assert_eq!(h.ledger().await.redirected_posts, 0);
}

#[tokio::test]
async fn oversized_next_charges_and_saves_then_sends_a_body_that_never_ends() {
    /// Far more than any payment's answer.
    const PAST: usize = 1 << 20;
    let h = Harness::start().await;
    assert_eq!(
        h.faults(json!({"oversized_next": 2})).await.oversized_next,
        2
    );
    let mut response = unpooled_client()
        .post(h.url("/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .header("Idempotency-Key", "key-huge")
        .json(&visa_order())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert_eq!(header(&response, "content-length"), None);
    assert_eq!(header(&response, "idempotent-replayed"), None);
    // Committed before the first byte of the body.
    let charges = h.ledger().await.charges;
    assert_eq!(charges.len(), 1);

    let mut received = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while received <= PAST {
            let chunk = response
                .chunk()
                .await
                .unwrap()
                .expect("the body never ends");
            assert!(chunk.iter().all(|&byte| byte == b' '), "{chunk:?}");
            received += chunk.len();
        }
    })
    .await
    .expect("the body keeps coming");
    // Hanging up ends it.
    drop(response);

    // A client that reads bodies whole waits until its own timeout.
    let impatient = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let whole = impatient
        .post(h.url("/v1/orders"))
        .bearer_auth(DEFAULT_SECRET)
        .json(&visa_order())
        .send()
        .await
        .unwrap()
        .text()
        .await;
    assert!(whole.unwrap_err().is_timeout());
    assert_eq!(h.faults(json!({})).await.oversized_next, 0);
    assert_eq!(h.ledger().await.charges.len(), 2);

    // The answer the body never carried is saved under the key and found by the lookup.
    let replay = h.order(&visa_order(), Some("key-huge")).await;
    assert_eq!(header(&replay, "idempotent-replayed"), Some("true"));
    let saved = ok_text(replay).await;
    let intent: Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(intent["id"], charges[0].id.as_str());
    assert_eq!(
        ok_text(h.orders_by_key("key-huge").await).await,
        orders_list(&[&saved])
    );
    // The fault is spent: the next answer is whole.
    let next = h.order(&visa_order(), Some("key-next")).await;
    let next: Value = serde_json::from_str(&ok_text(next).await).unwrap();
    assert_eq!(next["status"], "succeeded");
    assert_eq!(h.ledger().await.charges.len(), 3);
}

#[tokio::test]
async fn lookups_ignore_filter_lists_every_intent_of_the_endpoint_for_any_key() {
    let h = Harness::start().await;
    let tagged = |tag: &str| format!("{VISA}&metadata[chargeonce_key]={tag}");
    let a = ok_text(h.payment_intent(&tagged("ck_a"), Some("key-a")).await).await;
    let b = ok_text(h.payment_intent(&tagged("ck_b"), Some("key-b")).await).await;
    let order_a = ok_text(h.order(&visa_order(), Some("key-a")).await).await;
    let order_b = ok_text(h.order(&visa_order(), Some("key-b")).await).await;
    let by_a = "metadata['chargeonce_key']:'ck_a'";
    assert_eq!(h.search_body(by_a).await, search_result(&[&a]));
    assert_eq!(
        ok_text(h.orders_by_key("key-a").await).await,
        orders_list(&[&order_a])
    );

    let faults = h.faults(json!({"lookups_ignore_filter": true})).await;
    assert!(faults.lookups_ignore_filter);
    // A lookup for A lists B's intent too, and one for nobody lists both; each lookup only its
    // own endpoint's intents, newest first.
    for (query, key) in [
        (by_a, "key-a"),
        ("metadata['chargeonce_key']:'ck_nobody'", "key-nobody"),
    ] {
        assert_eq!(h.search_body(query).await, search_result(&[&b, &a]));
        assert_eq!(
            ok_text(h.orders_by_key(key).await).await,
            orders_list(&[&order_b, &order_a])
        );
    }
    // Still a lookup: a query it cannot parse is refused, and search_lag_ms still hides.
    let refused = h.search("status:'succeeded'").await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    h.faults(json!({"search_lag_ms": 60_000})).await;
    assert_eq!(h.search_body(by_a).await, search_result(&[]));
    assert_eq!(
        ok_text(h.orders_by_key("key-a").await).await,
        orders_list(&[])
    );

    h.faults(json!({"search_lag_ms": 0, "lookups_ignore_filter": false}))
        .await;
    assert_eq!(h.search_body(by_a).await, search_result(&[&a]));
    assert_eq!(
        ok_text(h.orders_by_key("key-b").await).await,
        orders_list(&[&order_b])
    );
}
