//! The Workers that `make bench` puts beside ChargeOnce on the same local
//! workerd, both forwarding `POST /v1/orders` to the payment backend's JSON
//! endpoint (`PAYMENT_BACKEND_URL`), chosen by the `MODE` variable:
//!
//! - `floor`: forwards every request and does nothing else. The cost of
//!   being a Worker at all; ChargeOnce's overhead is measured against it.
//! - `naive-kv`: **the anti-pattern people write by hand**: look the key up
//!   in Workers KV, forward on a miss, put the answer. KV has no
//!   compare-and-set and is eventually consistent, so concurrent duplicates
//!   all miss and all forward. It is here to be measured, not used.

use worker::{event, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response, Result};

/// Handles every request.
#[event(fetch)]
pub async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    if req.path() == "/healthz" {
        return Response::ok("ok");
    }
    if req.method() != Method::Post {
        return Response::error("POST only", 405);
    }
    let backend = env.var("PAYMENT_BACKEND_URL")?.to_string();
    let naive = env.var("MODE").map(|m| m.to_string()).unwrap_or_default() == "naive-kv";
    let key = req.headers().get("Idempotency-Key")?;
    let authorization = req.headers().get("Authorization")?;
    let body = req.text().await?;

    let kv = if naive {
        let Some(key) = key.as_deref() else {
            return Response::error("Idempotency-Key is required", 400);
        };
        let kv = env.kv("REPLAYS")?;
        // Get...
        if let Some(cached) = kv.get(key).text().await? {
            let (status, body) = cached.split_once('\n').unwrap_or(("200", ""));
            return json(body.to_owned(), status.parse().unwrap_or(200));
        }
        Some(kv)
    } else {
        None
    };

    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    if let Some(key) = &key {
        headers.set("Idempotency-Key", key)?;
    }
    if let Some(authorization) = &authorization {
        headers.set("Authorization", authorization)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(body.into()));
    let mut answer = Fetch::Request(Request::new_with_init(&backend, &init)?)
        .send()
        .await?;
    let status = answer.status_code();
    let text = answer.text().await?;

    // ...then put: by now any duplicate that arrived meanwhile has missed.
    if let (Some(kv), Some(key)) = (kv, key.as_deref()) {
        if status < 500 {
            kv.put(key, format!("{status}\n{text}"))?
                .expiration_ttl(86_400)
                .execute()
                .await?;
        }
    }
    json(text, status)
}

fn json(body: String, status: u16) -> Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", "application/json")?;
    Ok(Response::ok(body)?
        .with_status(status)
        .with_headers(headers))
}
