//! The HTTP call to the payment backend, bounded by the configured timeout.
//! What to send and what the answer means are decided in
//! `chargeonce_protocol::backend`.

use chargeonce_protocol::{
    backend::classify_response, BackendOutcome, BackendRequest, IdempotencyKey, TransportFailure,
};
use futures_util::future::{select, Either};
use std::time::Duration;
use worker::{wasm_bindgen, AbortController, Delay, Fetch, Headers, Method, Request, RequestInit};

/// Sends `request` with the client's key (so an idempotent backend is a second
/// safety net) and the backend credential, and waits at most `timeout_ms` for
/// the whole response, body included.
pub async fn call(
    request: &BackendRequest,
    key: &IdempotencyKey,
    authorization: Option<&str>,
    timeout_ms: u64,
) -> Result<BackendOutcome, TransportFailure> {
    let unreachable = |e: worker::Error| TransportFailure::Unreachable(e.to_string());
    let headers = Headers::new();
    headers
        .set("Content-Type", request.content_type)
        .map_err(unreachable)?;
    headers
        .set("Idempotency-Key", key.as_str())
        .map_err(unreachable)?;
    if let Some(secret) = authorization {
        headers
            .set("Authorization", &format!("Bearer {secret}"))
            .map_err(unreachable)?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(wasm_bindgen::JsValue::from_str(&request.body)));
    let req = Request::new_with_init(&request.url, &init).map_err(unreachable)?;

    let controller = AbortController::default();
    let signal = controller.signal();
    let exchange = async {
        let mut res = Fetch::Request(req).send_with_signal(&signal).await?;
        let header = |name: &str| res.headers().get(name).ok().flatten();
        let (content_type, retry_after) = (header("Content-Type"), header("Retry-After"));
        let body = res.bytes().await?;
        Ok::<_, worker::Error>(classify_response(
            res.status_code(),
            content_type.as_deref(),
            body,
            retry_after.as_deref(),
        ))
    };
    let deadline = Delay::from(Duration::from_millis(timeout_ms));
    futures_util::pin_mut!(exchange);
    match select(exchange, deadline).await {
        Either::Left((outcome, _)) => outcome.map_err(unreachable),
        Either::Right(((), _)) => {
            controller.abort();
            Err(TransportFailure::Timeout {
                after_ms: timeout_ms,
            })
        }
    }
}
