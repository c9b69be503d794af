//! The HTTP calls to the payment backend, each bounded by the configured
//! timeout: the forward, the reconciliation lookup and the refresh of a
//! stored intent. What to send and what the answers mean are decided in
//! `chargeonce_protocol::backend`.

use crate::http;
use chargeonce_protocol::{
    backend::{
        classify_failure, classify_lookup, classify_lookup_failure, classify_response,
        ExpectedCharge, MAX_BACKEND_READ_BYTES,
    },
    flow, BackendOutcome, BackendResponse, LookupOutcome, TransportFailure,
};
use futures_util::future::{select, Either};
use std::time::Duration;
use worker::{
    console_warn, wasm_bindgen, AbortController, Delay, Fetch, Headers, Method, Request,
    RequestInit, RequestRedirect,
};

/// Sends the flow's forward with the backend key (so an idempotent backend
/// is a second safety net) and the backend credential.
pub async fn forward(step: &flow::Forward) -> BackendOutcome {
    let request = step.request();
    let sent = send(
        Method::Post,
        &request.url,
        Some((request.content_type, &request.body)),
        Some(step.backend_key()),
        step.authorization(),
        step.timeout(),
    )
    .await;
    match sent {
        Ok(answer) => classify_response(answer),
        Err(failure) => classify_failure(&failure),
    }
}

/// Asks the backend how a stored answer's intent stands now.
pub async fn refresh(step: &flow::Refresh) -> Result<BackendResponse, TransportFailure> {
    send(
        Method::Get,
        &step.url(),
        None,
        None,
        step.authorization(),
        step.timeout(),
    )
    .await
}

/// Asks the backend what it did under the backend key (`url` from
/// `BackendKind::lookup_url`); only an item showing `expected` counts.
pub async fn lookup(
    url: &str,
    authorization: Option<&str>,
    timeout: Duration,
    expected: &ExpectedCharge,
) -> LookupOutcome {
    match send(Method::Get, url, None, None, authorization, timeout).await {
        Ok(answer) => {
            let read = classify_lookup(answer.status, &answer.body, expected);
            if read.ignored > 0 {
                console_warn!(
                    "the backend's lookup for {} listed {} intents of another key, amount or order_ref; ignored (does its list honour the filter?)",
                    expected.backend_key,
                    read.ignored
                );
            }
            read.outcome
        }
        Err(failure) => classify_lookup_failure(&failure),
    }
}

/// One exchange, body included, within `timeout_ms`. Redirects are not
/// followed (the protocol reads a 3xx as a misconfiguration), and at most
/// [`MAX_BACKEND_READ_BYTES`] of the body are read. A failure is logged
/// here, where its text (which may name the backend's host) stays.
async fn send(
    method: Method,
    url: &str,
    body: Option<(&str, &str)>,
    idempotency_key: Option<&str>,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<BackendResponse, TransportFailure> {
    let unreachable = |e: worker::Error| TransportFailure::Unreachable(e.to_string());
    let headers = Headers::new();
    if let Some(key) = idempotency_key {
        headers.set("Idempotency-Key", key).map_err(unreachable)?;
    }
    if let Some(secret) = authorization {
        headers
            .set("Authorization", &format!("Bearer {secret}"))
            .map_err(unreachable)?;
    }
    let mut init = RequestInit::new();
    init.with_method(method)
        .with_redirect(RequestRedirect::Manual);
    if let Some((content_type, body)) = body {
        headers
            .set("Content-Type", content_type)
            .map_err(unreachable)?;
        init.with_body(Some(wasm_bindgen::JsValue::from_str(body)));
    }
    init.with_headers(headers);
    let req = Request::new_with_init(url, &init).map_err(unreachable)?;

    let controller = AbortController::default();
    let signal = controller.signal();
    let exchange = async {
        let mut res = Fetch::Request(req).send_with_signal(&signal).await?;
        let header = |name: &str| res.headers().get(name).ok().flatten();
        let (content_type, retry_after) = (header("Content-Type"), header("Retry-After"));
        let replayed = header("Idempotent-Replayed").is_some_and(|v| v.trim() == "true");
        // A body-less answer (a 204, a bare redirect) is not streamable.
        let body = match res.stream() {
            Ok(stream) => http::read_capped(stream, MAX_BACKEND_READ_BYTES).await?,
            Err(_) => Vec::new(),
        };
        Ok::<_, worker::Error>(BackendResponse {
            status: res.status_code(),
            content_type,
            retry_after,
            replayed,
            body,
        })
    };
    let deadline = Delay::from(timeout);
    futures_util::pin_mut!(exchange);
    let sent = match select(exchange, deadline).await {
        Either::Left((answer, _)) => answer.map_err(unreachable),
        Either::Right(((), _)) => Err(TransportFailure::Timeout {
            after_ms: chargeonce_protocol::time::millis(timeout),
        }),
    };
    // Ends the exchange whatever became of it: a body left unread (an
    // oversized one) is not downloaded on.
    controller.abort();
    if let Err(failure) = &sent {
        console_warn!("the backend call to {url} failed: {failure:?}");
    }
    sent
}
