//! The pass-through floor for idempotent-proxy-server: the same stack it is
//! built on (axum 0.7 serving, reqwest 0.12 forwarding, tokio), forwarding
//! every request to `BACKEND_URL` with its headers and body and answering
//! with the backend's status, headers and body, with no idempotency. Its
//! cost is the runtime's; the peer's cost over it is the peer's.
//!
//! Listens on `SERVER_ADDR` (127.0.0.1:PORT).

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::sync::Arc;

struct Forward {
    client: reqwest::Client,
    backend: reqwest::Url,
}

#[tokio::main]
async fn main() {
    let backend = std::env::var("BACKEND_URL").expect("BACKEND_URL is required");
    let addr = std::env::var("SERVER_ADDR").expect("SERVER_ADDR is required");
    let state = Arc::new(Forward {
        client: reqwest::Client::new(),
        backend: backend.parse().expect("BACKEND_URL is not a URL"),
    });
    let app = Router::new().fallback(forward).with_state(state);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    println!("rust-floor listening on {addr}");
    axum::serve(listener, app).await.expect("server failed");
}

async fn forward(State(to): State<Arc<Forward>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, 1024 * 1024).await {
        Ok(body) => body,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut headers = parts.headers;
    headers.remove(header::HOST);
    let sent = to
        .client
        .request(parts.method, to.backend.clone())
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    match answer.bytes().await {
        Ok(bytes) => {
            let mut res = Response::new(Body::from(bytes));
            *res.status_mut() = status;
            *res.headers_mut() = headers;
            res
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
