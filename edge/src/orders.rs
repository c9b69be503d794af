//! `POST /v1/orders`: from the bytes on the wire to the response, in the
//! contract's order. Refuse bad input; replay from KV; claim in the key's
//! Durable Object; forward once; store the final answer or release the key.

use crate::backend;
use crate::http;
use crate::key_lock::KeyLockClient;
use crate::replay_cache;
use chargeonce_protocol::{
    backend::classify_failure, check_head, check_order_request, BackendOutcome, CompleteOutcome,
    Decision, EdgeConfig, IdempotencyKey, OrderRequest, Problem, ProblemType, RequestHead,
    StoredResponse, MAX_BODY_BYTES,
};
use futures_util::StreamExt;
use worker::{console_error, console_warn, Context, Date, Env, Request, Response, Result};

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
    let response = match answer(&mut req, head, env, ctx, config).await {
        Answer::Problem(problem) => http::problem(&problem),
        Answer::Result { response, replayed } => http::stored(&response, replayed),
    }?;
    http::with_key(response, echoed.as_ref())
}

async fn answer(
    req: &mut Request,
    head: RequestHead<'_>,
    env: &Env,
    ctx: &Context,
    config: &EdgeConfig,
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
    let authorization = match backend_secret(env, config) {
        Ok(secret) => secret,
        Err(problem) => return problem.into(),
    };
    let name = request.key.storage_name();

    // Fast path: a final result cached in KV. Only a hit is trusted; anything
    // else goes to the authoritative record.
    let kv = replay_cache::store(env);
    if let Some(kv) = &kv {
        if let Some(cached) = replay_cache::get(kv, &name).await {
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
    let token = match lock
        .claim(&request.fingerprint, config.lease_secs * 1000)
        .await
    {
        Ok(Decision::Forward { token }) => token,
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

    let outcome = forward(&request, &body, authorization.as_deref(), config).await;
    match outcome {
        BackendOutcome::Final(response) => {
            let ttl_ms = config.ttl_secs * 1000;
            match lock
                .complete(token, &request.fingerprint, response.clone(), ttl_ms)
                .await
            {
                Ok(CompleteOutcome::Stored) => {
                    if let Some(kv) = kv {
                        let completed = chargeonce_protocol::Completed {
                            fingerprint: request.fingerprint.clone(),
                            response: response.clone(),
                            expires_at_ms: Date::now().as_millis() + ttl_ms,
                        };
                        // Off the response path: the object already holds the result.
                        ctx.wait_until(replay_cache::put(kv, name, completed, config.ttl_secs));
                    }
                    Answer::Result {
                        response,
                        replayed: false,
                    }
                }
                Ok(CompleteOutcome::AlreadyCompleted { response }) => Answer::Result {
                    response,
                    replayed: true,
                },
                Ok(CompleteOutcome::NotStored) => Answer::Result {
                    response,
                    replayed: false,
                },
                Err(e) => {
                    // The backend answered; the customer must hear it. The claim
                    // stays until its lease runs out, and a retry after that
                    // forwards the same key, which the backend deduplicates.
                    console_error!("could not store the result for {name}: {e}");
                    Answer::Result {
                        response,
                        replayed: false,
                    }
                }
            }
        }
        BackendOutcome::Retry(problem) => {
            match lock.release(token).await {
                Ok(true) => {}
                Ok(false) => console_warn!("claim on {name} was no longer held at release"),
                Err(e) => console_error!("could not release {name} (the lease will free it): {e}"),
            }
            problem.into()
        }
    }
}

/// Forwards the order and reduces every way it can go to an outcome.
async fn forward(
    request: &OrderRequest,
    body: &[u8],
    authorization: Option<&str>,
    config: &EdgeConfig,
) -> BackendOutcome {
    // The body passed validation as JSON, so it is UTF-8.
    let raw = String::from_utf8_lossy(body);
    let backend_request = config
        .backend
        .request(&config.backend_url, &request.order, &raw);
    match backend::call(
        &backend_request,
        request.key.key(),
        authorization,
        config.backend_timeout_ms,
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(failure) => BackendOutcome::Retry(classify_failure(&failure)),
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
async fn read_at_most(req: &mut Request, limit: usize) -> Result<Vec<u8>> {
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
