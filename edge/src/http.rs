//! Responses: problem+json, stored responses, and the headers every response
//! carries (the echoed key, CORS); and bodies read with a cap.

use chargeonce_protocol::{
    IdempotencyKey, Problem, ProblemType, StoredResponse, ORDERS_PATH, PROBLEM_CONTENT_TYPE,
};
use futures_util::StreamExt;
use worker::{ByteStream, Headers, Response, Result};

/// The methods of the orders route: placing an order, and its status lookup.
const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";

/// Headers a browser script may read from our responses.
const EXPOSED_HEADERS: &str =
    "Idempotent-Replayed, Retry-After, Idempotency-Key, Original-Idempotency-Key";

/// The header of an order's paid answer replayed to another key: the key it
/// was paid under.
pub const ORIGINAL_KEY: &str = "Original-Idempotency-Key";

/// Reads a body from its stream but stops after `limit` bytes, so a body of
/// any length (a 10 MB request, a backend's answer that never ends) costs
/// no more than the limit. The protocol reads one byte past what it takes
/// as "too long".
pub async fn read_capped(mut stream: ByteStream, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk?);
        if body.len() >= limit {
            body.truncate(limit);
            break;
        }
    }
    Ok(body)
}

/// A problem+json response, with `Retry-After` when the problem has one.
pub fn problem(problem: &Problem) -> Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", PROBLEM_CONTENT_TYPE)?;
    if problem.kind == ProblemType::MethodNotAllowed {
        // RFC 9110 requires Allow with a 405; only the orders route sends one.
        headers.set("Allow", ALLOWED_METHODS)?;
    }
    if let Some(secs) = problem.retry_after_secs {
        headers.set("Retry-After", &secs.to_string())?;
    }
    Ok(Response::from_bytes(problem.to_json().into_bytes())?
        .with_status(problem.status())
        .with_headers(headers))
}

/// The 404 for any path the Worker does not serve.
pub fn not_found(path: &str) -> Result<Response> {
    problem(&Problem::new(
        ProblemType::NotFound,
        format!("there is nothing at {path}; orders are placed with POST {ORDERS_PATH}"),
    ))
}

/// A final result, byte for byte as stored; `replayed` adds
/// `Idempotent-Replayed: true`.
pub fn stored(response: &StoredResponse, replayed: bool) -> Result<Response> {
    let headers = Headers::new();
    headers.set("Content-Type", &response.content_type)?;
    if replayed {
        headers.set("Idempotent-Replayed", "true")?;
    }
    Ok(Response::from_bytes(response.body.clone().into_bytes())?
        .with_status(response.status)
        .with_headers(headers))
}

/// The order's paid answer, for a request under another key: a replay
/// that names the key it was paid under.
pub fn order_paid(response: &StoredResponse, key: &str) -> Result<Response> {
    let mut sent = stored(response, true)?;
    sent.headers_mut().set(ORIGINAL_KEY, key)?;
    Ok(sent)
}

/// Marks a response of the Worker's own (never an asset) as one no cache
/// keeps and no browser reads as anything but its `Content-Type`: it may be
/// one customer's payment.
pub fn not_cached(mut response: Response) -> Result<Response> {
    let headers = response.headers_mut();
    headers.set("Cache-Control", "no-store")?;
    headers.set("X-Content-Type-Options", "nosniff")?;
    Ok(response)
}

/// Echoes the key, so a client (and a log reader) can tie a response to the
/// attempt that produced it.
pub fn with_key(mut response: Response, key: Option<&IdempotencyKey>) -> Result<Response> {
    if let Some(key) = key {
        response
            .headers_mut()
            .set("Idempotency-Key", key.as_str())?;
    }
    Ok(response)
}

/// Answers a CORS preflight for the orders route; [`with_cors`] adds the
/// origin.
pub fn preflight() -> Result<Response> {
    let headers = Headers::new();
    headers.set("Access-Control-Allow-Methods", "GET, POST")?;
    headers.set(
        "Access-Control-Allow-Headers",
        "Content-Type, Idempotency-Key, Authorization",
    )?;
    headers.set("Access-Control-Max-Age", "600")?;
    Ok(Response::empty()?.with_status(204).with_headers(headers))
}

/// Lets a page at `origin` read `response` (with the headers the widget
/// needs); `None` adds nothing, and the browser hides the answer.
pub fn with_cors(mut response: Response, origin: Option<&str>) -> Result<Response> {
    let headers = response.headers_mut();
    headers.append("Vary", "Origin")?;
    if let Some(origin) = origin {
        headers.set("Access-Control-Allow-Origin", origin)?;
        headers.set("Access-Control-Expose-Headers", EXPOSED_HEADERS)?;
    }
    Ok(response)
}
