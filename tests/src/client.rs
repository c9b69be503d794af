//! A checkout client that behaves as the widget does, over real HTTP: it
//! runs the protocol's [`Attempt`] (the same state machine and retry
//! schedule the widget runs) and performs each request it asks for, the
//! order (`POST`) and the status lookup (`GET`), asking the storefront for a
//! fresh order token when the edge says the old one expired, and answering
//! the bank's 3-D Secure challenge through paysim's hook ([`Bank`]) when the
//! payment needs it.
//!
//! The soak runs thousands of these at once; the edge tests run one at a
//! time with the jitter fixed, so their timing is what the widget's defaults
//! would do.

use crate::shop::order_token;
use chargeonce_protocol::{Attempt, EdgeResponse, Next, Phase, ProblemType, RetryPolicy};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the client counted, for reports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Orders and status lookups sent.
    pub requests: AtomicU64,
    /// Orders sent again by the attempt's retries.
    pub retries: AtomicU64,
    /// Status lookups sent.
    pub status_lookups: AtomicU64,
    /// Fresh order tokens asked for after one expired.
    pub token_refreshes: AtomicU64,
    /// 3-D Secure challenges answered (each through paysim's hook).
    pub authentications: AtomicU64,
}

/// A response from the edge, read whole.
#[derive(Debug, Clone)]
pub struct Received {
    /// The status.
    pub status: u16,
    /// Whether `Idempotent-Replayed: true` came with it.
    pub replayed: bool,
    /// `Retry-After`, in seconds.
    pub retry_after_secs: Option<u64>,
    /// The body.
    pub body: String,
    /// Every response's headers, for tests that look closer.
    pub headers: reqwest::header::HeaderMap,
}

impl Received {
    /// The problem+json `detail` (or Stripe's `error.message`, or a
    /// refused intent's `last_payment_error.message`), if any: what the
    /// widget's shell reads.
    pub fn message(&self) -> Option<String> {
        let value: Value = serde_json::from_str(&self.body).ok()?;
        value["detail"]
            .as_str()
            .or_else(|| value["error"]["message"].as_str())
            .or_else(|| value["last_payment_error"]["message"].as_str())
            .map(str::to_owned)
    }

    /// The body's `status` member when it is text: a PaymentIntent's status.
    pub fn payment_status(&self) -> Option<String> {
        let value: Value = serde_json::from_str(&self.body).ok()?;
        value["status"].as_str().map(str::to_owned)
    }

    /// The problem+json `type`, read back.
    pub fn problem(&self) -> Option<ProblemType> {
        let value: Value = serde_json::from_str(&self.body).ok()?;
        ProblemType::from_uri(value["type"].as_str()?)
    }
}

/// An order as the storefront's page holds it: the body the widget sends,
/// with the order token the storefront's server signed.
#[derive(Debug, Clone)]
pub struct PageOrder {
    body: Value,
}

impl PageOrder {
    /// An order for `customer`, signed with a token valid until
    /// `expires_at` (Unix seconds).
    pub fn new(
        order_ref: &str,
        amount: u64,
        customer: &str,
        payment_method: &str,
        expires_at: u64,
    ) -> Self {
        Self {
            body: serde_json::json!({
                "order_ref": order_ref,
                "amount": amount,
                "currency": "usd",
                "customer": customer,
                "payment_method": payment_method,
                "order_token": order_token(order_ref, amount, customer, expires_at),
            }),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        self.body.to_string()
    }

    /// The order reference: the attempt's fingerprint for these tests (one
    /// payload per reference).
    pub fn order_ref(&self) -> &str {
        self.body["order_ref"].as_str().unwrap_or_default()
    }

    /// The current order token.
    pub fn token(&self) -> &str {
        self.body["order_token"].as_str().unwrap_or_default()
    }

    /// What the storefront does when asked for a fresh token: signs the
    /// same order again, valid until `expires_at`.
    pub fn refresh_token(&mut self, expires_at: u64) {
        let field = |name: &str| self.body[name].clone();
        let token = order_token(
            field("order_ref").as_str().unwrap_or_default(),
            field("amount").as_u64().unwrap_or_default(),
            field("customer").as_str().unwrap_or_default(),
            expires_at,
        );
        self.body["order_token"] = Value::String(token);
    }
}

/// The customer's bank, as paysim plays it: the page's `handleAction`
/// shows the 3-D Secure challenge, and the customer passes or fails it
/// (`POST /__sim/payment_intents/{id}/authenticate`).
pub struct Bank {
    /// paysim's base URL.
    pub url: String,
    /// Whether the customer fails the challenge for this order reference.
    pub fails: fn(&str) -> bool,
}

impl Bank {
    /// Answers the challenge of intent `id` for the order `order_ref`;
    /// whether paysim took the answer.
    pub async fn authenticate(&self, http: &reqwest::Client, id: &str, order_ref: &str) -> bool {
        let outcome = if (self.fails)(order_ref) {
            "fail"
        } else {
            "succeed"
        };
        http.post(format!(
            "{}/__sim/payment_intents/{id}/authenticate",
            self.url
        ))
        .json(&serde_json::json!({ "outcome": outcome }))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    }
}

/// Sends orders and status lookups to one edge.
pub struct CheckoutClient {
    http: reqwest::Client,
    url: String,
    /// The widget's policy.
    pub policy: RetryPolicy,
    /// What was sent.
    pub counters: Counters,
    /// The page's `handleAction`: without one, a payment that needs the
    /// customer to authenticate is refused, as the widget refuses it.
    pub bank: Option<Bank>,
    /// Every exchange `drive` made, by order: what a failed check prints,
    /// so that a rare failure in a long run says how it came about.
    pub journal: Journal,
}

/// The exchanges of each order, one line each: when, the method and key,
/// and what came back (status, problem type, replayed).
#[derive(Debug, Default)]
pub struct Journal(Mutex<HashMap<String, Vec<String>>>);

impl Journal {
    fn record(&self, order_ref: &str, method: &str, key: &str, received: Option<&Received>) {
        let answer = match received {
            None => "no answer".to_owned(),
            Some(r) => format!(
                "{}{}{}",
                r.status,
                r.problem().map_or(String::new(), |p| format!(" {p:?}")),
                if r.replayed { " (replayed)" } else { "" }
            ),
        };
        let line = format!("{} {method} {key} -> {answer}", now_ms());
        let mut orders = self.0.lock().unwrap_or_else(|e| e.into_inner());
        orders.entry(order_ref.to_owned()).or_default().push(line);
    }

    /// The order's exchanges, in the order they were made.
    pub fn of(&self, order_ref: &str) -> Vec<String> {
        let orders = self.0.lock().unwrap_or_else(|e| e.into_inner());
        orders.get(order_ref).cloned().unwrap_or_default()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CheckoutClient {
    /// A client of the orders route at `url`, with the widget's `policy`.
    pub fn new(http: reqwest::Client, url: String, policy: RetryPolicy) -> Self {
        Self {
            http,
            url,
            policy,
            counters: Counters::default(),
            bank: None,
            journal: Journal::default(),
        }
    }

    /// This client, with a page that shows the bank's challenge.
    pub fn with_bank(self, bank: Bank) -> Self {
        Self {
            bank: Some(bank),
            ..self
        }
    }

    /// One order; `None` when no answer came (connection refused or lost, or
    /// the per-request timeout).
    pub async fn post(&self, key: &str, body: &str) -> Option<Received> {
        let request = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", key)
            .body(body.to_owned());
        self.send(request).await
    }

    /// One status lookup.
    pub async fn status(&self, key: &str, token: &str) -> Option<Received> {
        self.counters.status_lookups.fetch_add(1, Ordering::Relaxed);
        let request = self
            .http
            .get(&self.url)
            .header("Idempotency-Key", key)
            .header("Authorization", format!("Bearer {token}"));
        self.send(request).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Option<Received> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let res = request
            .timeout(Duration::from_millis(self.policy.request_timeout_ms))
            .send()
            .await
            .ok()?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let replayed = header("Idempotent-Replayed") == Some("true");
        let retry_after_secs = header("Retry-After").and_then(|v| v.parse().ok());
        let body = res.text().await.ok()?;
        Some(Received {
            status,
            replayed,
            retry_after_secs,
            body,
            headers,
        })
    }

    /// Drives `attempt` from `next` until it stops, as the widget would for
    /// the page's `order`. `jitter` picks each backoff's jitter; a fresh
    /// order token, when the edge asks for one, is valid for `token_life`.
    pub async fn drive(
        &self,
        attempt: &mut Attempt,
        mut next: Next,
        order: &mut PageOrder,
        mut jitter: impl FnMut() -> f64,
        token_life: Duration,
    ) {
        loop {
            next = match next {
                Next::Send { key } => {
                    if attempt.sends() > 1 {
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    }
                    let received = self.post(&key, &order.body()).await;
                    self.journal
                        .record(order.order_ref(), "POST", &key, received.as_ref());
                    match received {
                        Some(r) => attempt.handle_response(
                            &edge_response(&r, &r.message(), &r.payment_status()),
                            now_ms(),
                            jitter(),
                            &self.policy,
                        ),
                        None => {
                            attempt.handle_transport_failure(now_ms(), true, jitter(), &self.policy)
                        }
                    }
                }
                Next::FetchStatus { key } => {
                    let received = self.status(&key, order.token()).await;
                    self.journal
                        .record(order.order_ref(), "GET", &key, received.as_ref());
                    match received {
                        Some(r) => {
                            let same_payload = attempt.fingerprint() == order.order_ref();
                            attempt.handle_status(
                                &edge_response(&r, &r.message(), &r.payment_status()),
                                now_ms(),
                                jitter(),
                                &self.policy,
                                same_payload,
                            )
                        }
                        None => {
                            attempt.handle_transport_failure(now_ms(), true, jitter(), &self.policy)
                        }
                    }
                }
                Next::NeedToken => {
                    self.counters
                        .token_refreshes
                        .fetch_add(1, Ordering::Relaxed);
                    order.refresh_token(now_ms() / 1000 + token_life.as_secs().max(1));
                    attempt.handle_token(true)
                }
                Next::Wait => {
                    let at = attempt.poll_timeout().unwrap_or_else(now_ms);
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
                    attempt.handle_timeout(now_ms(), true)
                }
                Next::WaitForOnline => unreachable!("these customers are always online"),
                Next::HandleAction => {
                    let intent = match attempt.phase() {
                        Phase::ActionRequired { body } => serde_json::from_str::<Value>(body)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned)),
                        _ => None,
                    };
                    match (&self.bank, intent) {
                        (Some(bank), Some(id)) => {
                            self.counters
                                .authentications
                                .fetch_add(1, Ordering::Relaxed);
                            // Whatever the bank made of it, the order is sent
                            // again and the edge says how the payment stands.
                            let _ = bank.authenticate(&self.http, &id, order.order_ref()).await;
                            attempt.handle_action_done(now_ms(), true)
                        }
                        _ => attempt.handle_no_action_handler(),
                    }
                }
                Next::Stop | Next::Ignore(_) => return,
            }
        }
    }
}

fn edge_response<'a>(
    received: &'a Received,
    message: &'a Option<String>,
    payment_status: &'a Option<String>,
) -> EdgeResponse<'a> {
    EdgeResponse {
        status: received.status,
        body: &received.body,
        message: message.as_deref(),
        problem: received.problem(),
        replayed: received.replayed,
        retry_after_secs: received.retry_after_secs,
        payment_status: payment_status.as_deref(),
        original_key: received
            .headers
            .get("Original-Idempotency-Key")
            .and_then(|v| v.to_str().ok()),
    }
}
