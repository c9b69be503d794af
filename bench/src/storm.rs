//! The duplicate storm: M keys, each sent K times at once, identical, to a
//! contender in front of the naive backend; then the backend's ledger says
//! how many charges each key cost. Also the small HTTP helpers the
//! benchmark shares.

use crate::{Contender, Target};
use chargeonce_tests::sim::Ledger;
use futures_util::future::join_all;
use serde_json::json;
use std::collections::BTreeMap;

/// Charges per key in one contender's storm.
#[derive(Debug, Clone)]
pub struct Storm {
    /// Whose storm.
    pub contender: Contender,
    /// Keys sent.
    pub keys: usize,
    /// Identical requests per key.
    pub copies: usize,
    /// How many keys were charged exactly once.
    pub exactly_once: usize,
    /// The fewest and most charges one key cost.
    pub min: usize,
    /// See `min`.
    pub max: usize,
    /// All charges.
    pub charges: usize,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
}

/// POSTs JSON and requires a 2xx.
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let res = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", res.status()))
    }
}

/// An order POST to `url` (base and path), ready to send.
fn order_post(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: String,
    authorization: &str,
) -> reqwest::RequestBuilder {
    let req = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", key)
        .body(body);
    if authorization.is_empty() {
        req
    } else {
        req.header("Authorization", authorization)
    }
}

/// `target`'s order `order_ref` under `key`, ready to send.
pub fn order_request(
    http: &reqwest::Client,
    target: &Target,
    key: &str,
    order_ref: &str,
) -> reqwest::RequestBuilder {
    let url = format!("{}{}", target.url, target.path);
    order_post(
        http,
        &url,
        key,
        (target.body)(order_ref),
        &target.authorization,
    )
}

/// POSTs one order to `url` (base and path); returns the status.
pub async fn post_order(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: String,
    authorization: &str,
) -> Result<u16, String> {
    let res = order_post(http, url, key, body, authorization)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = res.status().as_u16();
    let _ = res.bytes().await;
    Ok(status)
}

/// Sends one order to `target` and requires a 200.
pub async fn send(
    http: &reqwest::Client,
    target: &Target,
    key: &str,
    order_ref: &str,
) -> Result<(), String> {
    let res = order_request(http, target, key, order_ref)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", target.contender.name()))?;
    match res.status().as_u16() {
        200 => Ok(()),
        other => Err(format!(
            "{} answered {other}: {}",
            target.contender.name(),
            res.text().await.unwrap_or_default()
        )),
    }
}

/// The storm against one contender.
pub async fn storm(
    http: &reqwest::Client,
    sim_url: &str,
    target: &Target,
    keys: usize,
    copies: usize,
) -> Result<Storm, String> {
    // A fresh ledger, the naive backend, and enough latency that the copies
    // of a key overlap.
    post_json(http, &format!("{sim_url}/__sim/reset"), &json!({})).await?;
    post_json(
        http,
        &format!("{sim_url}/__sim/faults"),
        &json!({"honor_idempotency": false, "latency_ms": 200}),
    )
    .await?;
    let tag = format!("{:?}", target.contender).to_lowercase();
    let requests = (0..keys).flat_map(|k| {
        let order_ref = format!("storm-{tag}-{k}");
        let key = format!("storm-key-{tag}-{k:06}");
        let body = (target.body)(&order_ref);
        (0..copies).map(move |_| (key.clone(), body.clone()))
    });
    let url = format!("{}{}", target.url, target.path);
    let url = &url;
    let answers = join_all(requests.map(|(key, body)| async move {
        post_order(http, url, &key, body, &target.authorization).await
    }))
    .await;
    let mut statuses = BTreeMap::new();
    for answer in answers {
        *statuses.entry(answer.unwrap_or(0)).or_insert(0) += 1;
    }
    let ledger: Ledger = http
        .get(format!("{sim_url}/__sim/ledger"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    post_json(
        http,
        &format!("{sim_url}/__sim/faults"),
        &json!({"honor_idempotency": false, "latency_ms": 0}),
    )
    .await?;
    let per_key: Vec<usize> = (0..keys)
        .map(|k| {
            let order_ref = format!("storm-{tag}-{k}");
            ledger
                .charges
                .iter()
                .filter(|c| c.order_ref.as_deref() == Some(order_ref.as_str()))
                .count()
        })
        .collect();
    Ok(Storm {
        contender: target.contender,
        keys,
        copies,
        exactly_once: per_key.iter().filter(|n| **n == 1).count(),
        min: per_key.iter().copied().min().unwrap_or(0),
        max: per_key.iter().copied().max().unwrap_or(0),
        charges: ledger.charges.len(),
        statuses,
    })
}
