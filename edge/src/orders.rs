//! `POST /v1/orders`: from the bytes on the wire to the response, in the
//! contract's order. Refuse bad input and unsigned orders; replay from KV;
//! claim in the key's Durable Object; reconcile if an earlier forward may
//! have charged; forward once; store the final answer, or release or abandon
//! the key.

use crate::backend;
use crate::http;
use crate::key_lock::KeyLockClient;
use crate::replay_cache;
use crate::timing::Steps;
use chargeonce_protocol::{
    check_head, check_order_request, token, BackendOutcome, ClaimToken, CompleteOutcome, Completed,
    Decision, EdgeConfig, IdempotencyKey, LookupOutcome, OrderRequest, Problem, ProblemType,
    RequestHead, StoredResponse, MAX_BODY_BYTES,
};
use futures_util::StreamExt;
use worker::{console_error, console_warn, Context, Date, Env, KvStore, Request, Response, Result};

/// The Worker secret the storefront's server signs order tokens with.
pub const ORDER_TOKEN_SECRET: &str = "ORDER_TOKEN_SECRET";

/// What the client is told.
enum Answer {
    Problem(Problem),
    Result {
        response: StoredResponse,
        replayed: bool,
    },
}

impl From<Problem> for Answer {
    fn from(problem: Problem) -> Self {
        Self::Problem(problem)
    }
}

/// Handles one request to the orders route (any method but OPTIONS).
pub async fn handle(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    config: &EdgeConfig,
) -> Result<Response> {
    let header = |name: &str| req.headers().get(name).ok().flatten();
    let (content_type, content_length, key) = (
        header("Content-Type"),
        header("Content-Length"),
        header("Idempotency-Key"),
    );
    let method = req.method().to_string();
    let head = RequestHead {
        method: &method,
        content_type: content_type.as_deref(),
        content_length: content_length.as_deref(),
        idempotency_key: key.as_deref(),
    };
    // Parsed here as well as in the contract's checks because the key is
    // echoed even on errors that come before the key check (405, 415, 413).
    let echoed = IdempotencyKey::parse(key.as_deref()).ok();
    let mut steps = Steps::start();
    let mut response = match answer(&mut req, head, env, ctx, config, &mut steps).await {
        Answer::Problem(problem) => http::problem(&problem),
        Answer::Result { response, replayed } => http::stored(&response, replayed),
    }?;
    if let Some(timing) = steps.header() {
        response.headers_mut().set("Server-Timing", &timing)?;
    }
    http::with_key(response, echoed.as_ref())
}

async fn answer(
    req: &mut Request,
    head: RequestHead<'_>,
    env: &Env,
    ctx: &Context,
    config: &EdgeConfig,
    steps: &mut Steps,
) -> Answer {
    if let Err(problem) = check_head(&head) {
        return problem.into();
    }
    let body = match read_at_most(req, MAX_BODY_BYTES + 1).await {
        Ok(body) => body,
        Err(e) => {
            return Problem::new(
                ProblemType::InvalidOrder,
                format!("the body could not be read: {e}"),
            )
            .into()
        }
    };
    let request = match check_order_request(&head, &body) {
        Ok(request) => request,
        Err(problem) => return problem.into(),
    };
    // The token is checked before the store is touched: an order the
    // storefront did not sign never claims a key. Its customer is the
    // request's customer, which scopes the key.
    let claims = match order_token_secret(env) {
        Ok(secret) => match token::authorize(&request.order, &secret) {
            Ok(claims) => claims,
            Err(e) => return e.to_problem().into(),
        },
        Err(problem) => return problem.into(),
    };
    let authorization = match backend_secret(env, config) {
        Ok(secret) => secret,
        Err(problem) => return problem.into(),
    };
    let name = request.key.storage_name();
    steps.mark("read");

    // Fast path: a final result cached in KV. Only a hit is trusted; anything
    // else goes to the authoritative record.
    let kv = replay_cache::store(env);
    if let Some(kv) = &kv {
        let cached = replay_cache::get(kv, &name).await;
        steps.mark("kv");
        if let Some(cached) = cached {
            match cached.decide(&request.fingerprint, Date::now().as_millis()) {
                Some(Decision::Replay { response }) => {
                    return Answer::Result {
                        response,
                        replayed: true,
                    }
                }
                Some(Decision::Mismatch) => return mismatch(),
                _ => {}
            }
        }
    }

    let lock = match KeyLockClient::for_key(env, &name) {
        Ok(lock) => lock,
        Err(e) => return store_unavailable(&e),
    };
    let ttl_ms = config.ttl_secs * 1000;
    let claimed = lock
        .claim(&request.fingerprint, config.lease_secs * 1000, ttl_ms)
        .await;
    steps.mark("claim");
    let (token, reconcile) = match claimed {
        Ok(Decision::Forward { token, reconcile }) => (token, reconcile),
        Ok(Decision::Replay { response }) => {
            return Answer::Result {
                response,
                replayed: true,
            }
        }
        Ok(Decision::Mismatch) => return mismatch(),
        Ok(Decision::InFlight { retry_after_secs }) => return Problem::new(
            ProblemType::RequestInFlight,
            "another request with this Idempotency-Key is being processed; retry with the same key",
        )
        .retry_after(retry_after_secs)
        .into(),
        Err(e) => return store_unavailable(&e),
    };
    let settle = Settle {
        lock: &lock,
        token,
        request: &request,
        name: &name,
    };
    let backend_key = request.key.backend_key();

    // An earlier forward with this key may have charged: ask before sending
    // it again, or a backend that ignores keys would charge twice.
    if reconcile {
        let url = config.backend.lookup_url(&config.backend_url, &backend_key);
        let found =
            backend::lookup(&url, authorization.as_deref(), config.backend_timeout_ms).await;
        steps.mark("lookup");
        match found {
            LookupOutcome::Charged(response) => {
                let answer = settle.final_answer(response, true, kv, ctx, config).await;
                steps.mark("complete");
                return answer;
            }
            LookupOutcome::NotCharged => {}
            LookupOutcome::Failed(problem) => return settle.release(problem).await,
        }
    }
    // Checked only now: a stored answer is replayed whatever the token's
    // age, but nothing is charged on an expired one.
    if let Err(e) = claims.check_fresh(Date::now().as_millis() / 1000) {
        return settle.release(e.to_problem()).await;
    }

    let backend_request = config
        .backend
        .request(&config.backend_url, &request.order, &backend_key);
    let outcome = backend::forward(
        &backend_request,
        &backend_key,
        authorization.as_deref(),
        config.backend_timeout_ms,
    )
    .await;
    steps.mark("backend");
    match outcome {
        BackendOutcome::Final(response) => {
            let answer = settle.final_answer(response, false, kv, ctx, config).await;
            steps.mark("complete");
            answer
        }
        BackendOutcome::NotCharged(problem) => settle.release(problem).await,
        BackendOutcome::Unknown(problem) => {
            match lock.abandon(token).await {
                Ok(true) => {}
                Ok(false) => console_warn!("claim on {name} was no longer held when abandoned"),
                // The lease runs out instead, with the same effect.
                Err(e) => console_error!("could not abandon {name}: {e}"),
            }
            problem.into()
        }
        // The request may still be running at the backend: the claim stays
        // until its lease runs out, then the key is reconciled.
        BackendOutcome::StillRunning(problem) => problem.into(),
    }
}

/// Ends one claim.
struct Settle<'a> {
    lock: &'a KeyLockClient,
    token: ClaimToken,
    request: &'a OrderRequest,
    name: &'a str,
}

impl Settle<'_> {
    /// Stores a final answer (from the forward, or found by the lookup) and
    /// says what the client gets.
    async fn final_answer(
        &self,
        response: StoredResponse,
        replayed: bool,
        kv: Option<KvStore>,
        ctx: &Context,
        config: &EdgeConfig,
    ) -> Answer {
        let ttl_ms = config.ttl_secs * 1000;
        let fingerprint = &self.request.fingerprint;
        match self
            .lock
            .complete(self.token, fingerprint, response.clone(), ttl_ms)
            .await
        {
            Ok(CompleteOutcome::Stored) => {
                if let Some(kv) = kv {
                    let completed = Completed {
                        fingerprint: fingerprint.clone(),
                        response: response.clone(),
                        expires_at_ms: Date::now().as_millis() + ttl_ms,
                    };
                    // Off the response path: the object already holds the result.
                    ctx.wait_until(replay_cache::put(
                        kv,
                        self.name.to_owned(),
                        completed,
                        config.ttl_secs,
                    ));
                }
                Answer::Result { response, replayed }
            }
            Ok(CompleteOutcome::AlreadyCompleted { response }) => Answer::Result {
                response,
                replayed: true,
            },
            Ok(CompleteOutcome::NotStored) => Answer::Result { response, replayed },
            Err(e) => {
                // The backend answered; the customer must hear it. The claim
                // stays until its lease runs out, and the retry after that
                // reconciles and finds this very answer.
                console_error!("could not store the result for {}: {e}", self.name);
                Answer::Result { response, replayed }
            }
        }
    }

    /// Gives the key back after an attempt that charged nothing.
    async fn release(&self, problem: Problem) -> Answer {
        match self.lock.release(self.token).await {
            Ok(true) => {}
            Ok(false) => console_warn!("claim on {} was no longer held at release", self.name),
            Err(e) => console_error!(
                "could not release {} (the lease will free it): {e}",
                self.name
            ),
        }
        problem.into()
    }
}

/// The secret the storefront's server signs order tokens with.
pub(crate) fn order_token_secret(env: &Env) -> std::result::Result<Vec<u8>, Problem> {
    match env.secret(ORDER_TOKEN_SECRET).map(|s| s.to_string()) {
        Ok(secret) if secret.len() >= token::MIN_SECRET_LEN => Ok(secret.into_bytes()),
        _ => Err(Problem::new(
            ProblemType::EdgeMisconfigured,
            format!(
                "the secret {ORDER_TOKEN_SECRET} is not set or shorter than {} bytes; nothing was forwarded",
                token::MIN_SECRET_LEN
            ),
        )),
    }
}

/// The backend credential: required for Stripe, optional for passthrough.
fn backend_secret(env: &Env, config: &EdgeConfig) -> std::result::Result<Option<String>, Problem> {
    let name = config.backend.secret_name();
    match env.secret(name).map(|s| s.to_string()) {
        Ok(secret) if !secret.is_empty() => Ok(Some(secret)),
        _ if config.backend.requires_secret() => Err(Problem::new(
            ProblemType::EdgeMisconfigured,
            format!("the secret {name} is not set; nothing was forwarded"),
        )),
        _ => Ok(None),
    }
}

fn mismatch() -> Answer {
    Problem::new(
        ProblemType::KeyReused,
        "this Idempotency-Key was already used for a different order; use a new key for a new order",
    )
    .into()
}

fn store_unavailable(e: &crate::key_lock::StoreError) -> Answer {
    console_error!("{e}");
    Problem::new(
        ProblemType::StoreUnavailable,
        "the idempotency store is unavailable, so the order was not forwarded; retry with the same key",
    )
    .retry_after(1)
    .into()
}

/// Reads the body but stops after `limit` bytes, so a 10 MB body costs no
/// more than a 16 KiB one.
pub(crate) async fn read_at_most(req: &mut Request, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    if req.inner().body().is_none() {
        return Ok(body);
    }
    let mut stream = req.stream()?;
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk?);
        if body.len() >= limit {
            body.truncate(limit);
            break;
        }
    }
    Ok(body)
}
