//! # ChargeOnce's edge
//!
//! A Cloudflare Worker that deduplicates `POST /v1/orders` by
//! `Idempotency-Key` before the payment backend sees it. Every rule it follows
//! lives in `chargeonce-protocol`; this crate is the shell that does the I/O:
//!
//! - [`orders`]: `/v1/orders`, running the protocol's request flow: placing
//!   an order, and the read-only status lookup.
//! - [`key_lock`]: the Durable Object that makes claims atomic, one per key,
//!   and reconciles unknown outcomes by itself.
//! - [`order_lock`]: the Durable Object that holds one order (customer and
//!   `order_ref`) to at most one attempt in flight and one charge, whatever
//!   keys its attempts use.
//! - [`replay_cache`]: the Workers KV copy of final results, read first.
//! - [`backend`]: the HTTP call to the payment backend, with its timeout.
//! - [`http`]: responses, headers and CORS.
//! - [`timing`]: the `Server-Timing` header of the orders route.
//! - `dev_simulator`: the simulator's test hooks, and `demo`: the demo
//!   shop's token issuer. Both exist only in the `dev` build (the cargo
//!   feature `dev`, which `make dev` and the tests build and `wrangler
//!   deploy` does not), and answer only when their settings are given.

pub mod backend;
#[cfg(feature = "dev")]
pub mod demo;
#[cfg(feature = "dev")]
pub mod dev_simulator;
pub mod http;
// The #[durable_object] macro generates public glue without docs.
#[allow(missing_docs)]
pub mod key_lock;
// The #[durable_object] macro generates public glue without docs.
#[allow(missing_docs)]
pub mod order_lock;
pub mod orders;
pub mod replay_cache;
pub mod timing;

use chargeonce_protocol::{EdgeConfig, Problem, ProblemType, ORDERS_PATH};
use worker::{event, Context, Env, Method, Request, Response, Result};

/// The Worker's entry point.
///
/// Routing is a plain match rather than `worker::Router` because the Router
/// answers unknown paths and methods with plain-text bodies, and the contract
/// wants problem+json for every error.
#[event(fetch)]
pub async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    let config = match EdgeConfig::from_vars(|name| env.var(name).ok().map(|v| v.to_string())) {
        Ok(config) => config,
        Err(e) => {
            worker::console_error!("configuration error: {e}");
            return http::problem(&Problem::new(
                ProblemType::EdgeMisconfigured,
                e.public_detail(),
            ));
        }
    };
    let path = req.path();
    let origin = req.headers().get("Origin").ok().flatten();
    let own_origin = req.url()?.origin().ascii_serialization();
    let response = match (path.as_str(), req.method()) {
        // Every origin's preflight is answered, so that a page on a site the
        // edge does not take orders from sends its request and can read the
        // 403 below, and its widget can say what is wrong, where a refused
        // preflight would be a bare network error, retried in vain.
        (ORDERS_PATH, Method::Options) => http::preflight(),
        // A page on another site may neither place orders here nor ask
        // about them: refused before anything else, nothing reaches the
        // backend.
        (ORDERS_PATH, _) if !config.accepts_requests_from(origin.as_deref(), &own_origin) => {
            http::problem(&Problem::new(
                ProblemType::OriginNotAllowed,
                format!(
                    "orders from {} are not accepted; add the origin to ALLOWED_ORIGINS",
                    origin.as_deref().unwrap_or_default()
                ),
            ))
        }
        (ORDERS_PATH, _) => orders::handle(req, &env, &ctx, &config).await,
        ("/healthz", Method::Get | Method::Head) => Response::ok("ok"),
        #[cfg(feature = "dev")]
        (demo::PATH, _) => demo::handle(req, &env, &config).await,
        #[cfg(feature = "dev")]
        (p, _) if p.starts_with(dev_simulator::PREFIX) => {
            dev_simulator::handle(req, &config, &own_origin).await
        }
        _ => http::not_found(&path),
    }?;
    // On the orders route every origin reads the answer: one not allowed
    // only ever gets the preflight and the refusal. Elsewhere, only the
    // allowed ones.
    let readable_by = origin
        .as_deref()
        .filter(|o| path == ORDERS_PATH || config.allows_origin(o));
    http::with_cors(http::not_cached(response)?, readable_by)
}
