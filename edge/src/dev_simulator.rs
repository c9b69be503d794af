//! `/__sim/*`: the payment simulator's test hooks (ledger, faults, reset,
//! and the bank's 3-D Secure challenge), passed through so the demo page can
//! show the ledger, inject chaos and play the bank from the Worker's own
//! origin.
//!
//! Only in the `dev` build, and only when `DEV_SIMULATOR_URL` is set, which
//! `make dev` and the tests do with `--var` and wrangler.toml never does: a
//! deployed Worker has no such code, and answers these paths with the same
//! 404 as any unknown path.
//!
//! A POST must be `Content-Type: application/json` from the Worker's own
//! origin: a page on another site could otherwise reset the ledger or inject
//! faults with a `no-cors` form post while the developer's `make dev` runs
//! (a simple cross-site request reaches the server even though its answer
//! is hidden from the page).

use crate::http;
use chargeonce_protocol::{EdgeConfig, Problem, ProblemType};
use worker::{
    wasm_bindgen::JsValue, Fetch, Headers, Method, Request, RequestInit, Response, Result,
};

/// The paths this module answers.
pub const PREFIX: &str = "/__sim/";

/// Handles a request under [`PREFIX`], from a Worker whose origin is
/// `own_origin`.
pub async fn handle(mut req: Request, config: &EdgeConfig, own_origin: &str) -> Result<Response> {
    let path = req.path();
    let method = req.method();
    if method == Method::Post {
        let header = |name: &str| req.headers().get(name).ok().flatten();
        let json = header("Content-Type").is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return http::problem(&Problem::new(
                ProblemType::UnsupportedMediaType,
                "the simulator's hooks take Content-Type: application/json",
            ));
        }
        if header("Origin").as_deref() != Some(own_origin) {
            return http::problem(&Problem::new(
                ProblemType::OriginNotAllowed,
                "the simulator's hooks take POSTs from the Worker's own pages only",
            ));
        }
    }
    let challenge = path
        .strip_prefix("/__sim/payment_intents/")
        .and_then(|rest| rest.strip_suffix("/authenticate"))
        .is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    let allowed = matches!(
        (path.as_str(), &method),
        ("/__sim/ledger", Method::Get)
            | ("/__sim/faults", Method::Get | Method::Post)
            | ("/__sim/reset", Method::Post)
    ) || (challenge && method == Method::Post);
    let Some(base) = config.dev_simulator_url.as_deref().filter(|_| allowed) else {
        return http::not_found(&path);
    };
    let mut init = RequestInit::new();
    init.with_method(method.clone());
    if method == Method::Post {
        let headers = Headers::new();
        headers.set("Content-Type", "application/json")?;
        init.with_headers(headers)
            .with_body(Some(JsValue::from_str(&req.text().await?)));
    }
    let forwarded = Request::new_with_init(&format!("{base}{path}"), &init)?;
    match Fetch::Request(forwarded).send().await {
        Ok(mut res) => {
            let headers = Headers::new();
            if let Some(content_type) = res.headers().get("Content-Type")? {
                headers.set("Content-Type", &content_type)?;
            }
            Ok(Response::from_bytes(res.bytes().await?)?
                .with_status(res.status_code())
                .with_headers(headers))
        }
        Err(e) => {
            worker::console_error!("the payment simulator at {base} could not be reached: {e}");
            http::problem(&Problem::new(
                ProblemType::BackendError,
                "the payment simulator could not be reached; the Worker's log says why",
            ))
        }
    }
}
