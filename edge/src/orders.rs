//! `/v1/orders`: the shell that runs the protocol's request flow. A `POST`
//! places an order ([`flow::order`]); a `GET` is the read-only status lookup
//! ([`flow::status`]). This module decides nothing: it performs the I/O each
//! [`Step`] names (the body, KV, the key's object, the order's object, the
//! backend) and hands the result back, until the flow is done.

use crate::backend;
use crate::http;
use crate::key_lock::{self, KeyLockClient};
use crate::order_lock::OrderLockClient;
use crate::replay_cache;
use crate::timing::Steps;
use chargeonce_protocol::flow::{self, Done, Limiter, Reply, Secrets, StatusHead, StoreFailure};
use chargeonce_protocol::{EdgeConfig, IdempotencyKey, RequestHead, Step, UnixMs};
use worker::{console_warn, Context, Date, Env, Request, Response, Result};

/// The rate-limit binding counting requests per client address
/// (wrangler.toml `[[ratelimits]]`).
pub const CLIENT_LIMIT: &str = "CLIENT_LIMIT";

/// The rate-limit binding counting forwards per customer.
pub const CUSTOMER_LIMIT: &str = "CUSTOMER_LIMIT";

/// The Worker secret the storefront's server signs order tokens with.
pub const ORDER_TOKEN_SECRET: &str = "ORDER_TOKEN_SECRET";

/// Handles one request to the orders route (any method but OPTIONS).
pub async fn handle(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    config: &EdgeConfig,
) -> Result<Response> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let (content_type, content_length, key, authorization, client) = (
        header("Content-Type"),
        header("Content-Length"),
        header("Idempotency-Key"),
        header("Authorization"),
        // Set by Cloudflare from the connection; a client cannot forge it.
        header("CF-Connecting-IP"),
    );
    let method = req.method().to_string();
    let customer = req
        .url()?
        .query_pairs()
        .find_map(|(name, value)| (name == "customer").then(|| value.into_owned()));
    let secrets = Secrets {
        order_token: order_token_secret(env),
        backend: key_lock::backend_secret(env, config),
    };
    let step = if method == "GET" {
        let head = StatusHead {
            idempotency_key: key.as_deref(),
            authorization: authorization.as_deref(),
            customer: customer.as_deref(),
        };
        flow::status(head, client.as_deref(), config, &secrets, now())
    } else {
        let head = RequestHead {
            method: &method,
            content_type: content_type.as_deref(),
            content_length: content_length.as_deref(),
            idempotency_key: key.as_deref(),
        };
        flow::order(head, client.as_deref(), config, secrets)
    };
    let mut steps = Steps::start();
    let Done { reply, cache } = drive(step, &mut req, env, &mut steps).await;
    if let (Some(write), Some(kv)) = (cache, replay_cache::store(env)) {
        // Off the response path: the object already holds the answer.
        ctx.wait_until(replay_cache::put(kv, write));
    }
    let mut response = match reply {
        Reply::Problem(problem) => http::problem(&problem),
        Reply::Stored { response, replayed } => http::stored(&response, replayed),
        Reply::OrderPaid { response, key } => http::order_paid(&response, &key),
    }?;
    if let Some(timing) = steps.header() {
        response.headers_mut().set("Server-Timing", &timing)?;
    }
    // Echoed even on errors that come before the key check (405, 415, 413),
    // so a client can tie any response to its attempt.
    http::with_key(
        response,
        IdempotencyKey::parse(key.as_deref()).ok().as_ref(),
    )
}

/// Performs each step the flow asks for until it is done, marking each wait
/// on I/O in `Server-Timing`.
async fn drive(mut step: Step, req: &mut Request, env: &Env, steps: &mut Steps) -> Done {
    // The key's object, once a step named it.
    let mut lock: Option<KeyLockClient> = None;
    loop {
        let name = step.name();
        step = match step {
            Step::Done(done) => return done,
            Step::Limit(s) => {
                let binding = match s.limiter() {
                    Limiter::Client => CLIENT_LIMIT,
                    Limiter::Customer => CUSTOMER_LIMIT,
                };
                let allowed = match env.rate_limiter(binding) {
                    Ok(limiter) => limiter
                        .limit(s.key().to_owned())
                        .await
                        .map(|outcome| outcome.success),
                    Err(e) => Err(e),
                };
                if let Err(e) = &allowed {
                    console_warn!(
                        "the rate limit {binding} could not be asked ({e}); the request goes on"
                    );
                }
                s.handle_limit(allowed.map_err(|e| StoreFailure(e.to_string())), now())
            }
            Step::ReadBody(s) => {
                let body = read_at_most(req, s.limit()).await;
                s.handle_body(body.map_err(|e| e.to_string()))
            }
            Step::ReadCache(s) => {
                let cached = match replay_cache::store(env) {
                    Some(kv) => replay_cache::get(&kv, s.name()).await,
                    None => None,
                };
                s.handle_cached(cached, now())
            }
            Step::Claim(s) => {
                let decided = match KeyLockClient::for_key(env, s.name()) {
                    Ok(client) => {
                        let decided = client.claim(s.name(), s.fingerprint(), s.expected()).await;
                        lock = Some(client);
                        decided.map_err(StoreFailure::from)
                    }
                    Err(e) => Err(e.into()),
                };
                s.handle_claim(decided, now())
            }
            Step::Peek(s) => {
                let peeked = match KeyLockClient::for_key(env, s.name()) {
                    Ok(client) => client
                        .peek(s.fingerprint())
                        .await
                        .map_err(StoreFailure::from),
                    Err(e) => Err(e.into()),
                };
                s.handle_peek(peeked)
            }
            Step::BeginOrder(s) => {
                let decided = match OrderLockClient::for_order(env, &s.name()) {
                    Ok(order) => order.begin(s.attempt()).await.map_err(StoreFailure::from),
                    Err(e) => Err(e.into()),
                };
                s.handle_begin(decided, now())
            }
            Step::AskAttempt(s) => {
                let status = match KeyLockClient::for_key(env, s.name()) {
                    Ok(client) => client.status().await.map_err(StoreFailure::from),
                    Err(e) => Err(e.into()),
                };
                s.handle_status(status)
            }
            Step::SettleOrder(s) => {
                let decided = match OrderLockClient::for_order(env, &s.name()) {
                    Ok(order) => order
                        .settle(s.asked(), s.found(), s.attempt())
                        .await
                        .map_err(StoreFailure::from),
                    Err(e) => Err(e.into()),
                };
                s.handle_settled(decided, now())
            }
            Step::Lookup(s) => {
                let found =
                    backend::lookup(&s.url(), s.authorization(), s.timeout(), &s.expected()).await;
                s.handle_lookup(found, now())
            }
            Step::Settle(s) => {
                let settled = match &lock {
                    Some(lock) => lock
                        .settle(s.token(), s.fingerprint(), s.found())
                        .await
                        .map_err(StoreFailure::from),
                    None => Err(no_lock()),
                };
                s.handle_settlement(settled, now())
            }
            Step::Forward(s) => {
                let outcome = backend::forward(&s).await;
                s.handle_forward(outcome)
            }
            Step::Complete(s) => {
                let stored = match &lock {
                    Some(lock) => lock
                        .complete(s.token(), s.fingerprint(), s.response())
                        .await
                        .map_err(StoreFailure::from),
                    None => Err(no_lock()),
                };
                s.handle_complete(stored, now())
            }
            Step::Release(s) => {
                let released = match &lock {
                    Some(lock) => lock.release(s.token()).await.map_err(StoreFailure::from),
                    None => Err(no_lock()),
                };
                if released == Ok(false) {
                    console_warn!("a claim was no longer held when released");
                }
                s.handle_release(released)
            }
            Step::Abandon(s) => {
                let abandoned = match &lock {
                    Some(lock) => lock
                        .abandon(s.token(), s.ran())
                        .await
                        .map_err(StoreFailure::from),
                    None => Err(no_lock()),
                };
                if abandoned == Ok(false) {
                    console_warn!("a claim was no longer held when abandoned");
                }
                s.handle_abandon(abandoned)
            }
            Step::Refresh(s) => {
                let answer = backend::refresh(&s).await;
                s.handle_refresh(answer)
            }
            Step::SaveRefresh(s) => {
                // A KV hit (and a status lookup) is refreshed without a
                // claim: the object is named here.
                let saved = match KeyLockClient::for_key(env, s.name()) {
                    Ok(client) => client
                        .refresh(s.previous(), s.response())
                        .await
                        .map_err(StoreFailure::from),
                    Err(e) => Err(e.into()),
                };
                s.handle_saved(saved)
            }
            Step::QueryStatus(s) => {
                let status = match KeyLockClient::for_key(env, s.name()) {
                    Ok(client) => client.status().await.map_err(StoreFailure::from),
                    Err(e) => Err(e.into()),
                };
                s.handle_status(status)
            }
        };
        steps.mark(name);
    }
}

/// The Worker's clock, as the protocol takes it.
pub(crate) fn now() -> UnixMs {
    UnixMs(Date::now().as_millis())
}

/// The flow asks the key's object to settle a claim only after the claim.
fn no_lock() -> StoreFailure {
    StoreFailure("no claim was made through the key's object".into())
}

/// The secret the storefront's server signs order tokens with, if set.
pub(crate) fn order_token_secret(env: &Env) -> Option<Vec<u8>> {
    env.secret(ORDER_TOKEN_SECRET)
        .ok()
        .map(|s| s.to_string().into_bytes())
}

/// Reads the request's body but stops after `limit` bytes, so a 10 MB body
/// costs no more than a 16 KiB one.
pub(crate) async fn read_at_most(req: &mut Request, limit: usize) -> Result<Vec<u8>> {
    if req.inner().body().is_none() {
        return Ok(Vec::new());
    }
    http::read_capped(req.stream()?, limit).await
}
