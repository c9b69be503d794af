//! paysim, the payment simulator: a Stripe-compatible subset that the demo and every black-box
//! test pay through.
//!
//! It owns a ledger of executed charges, Stripe-style idempotency (`Idempotency-Key`, scoped per
//! endpoint, kept for `key_retention_ms`) that can be switched off to play a naive backend, a
//! record of every PaymentIntent it created that two lookups search, a log of those lookups, and
//! injectable faults (latency, slow requests, 503s and saved 500s, responses lost after commit,
//! keys in use, rate limiting; lookups that lag, fail or are slow, an account without Search;
//! and a misbehaving backend's: payments redirected to another host, answers that never end,
//! lookups that ignore their filter), all inspectable and resettable under `/__sim/*`. It must
//! not depend on the edge or the protocol crate: it stands in for the real payment provider, and
//! tests prove the edge's behaviour by reading this ledger.
//!
//! Endpoints, all answering JSON:
//!
//! - `POST /v1/payment_intents`: Stripe's form-encoded create-and-confirm; `metadata[...]` is kept.
//!   The test payment method decides the outcome, as in Stripe's test mode (see `cards`): a
//!   charge, a decline (402), or `requires_action` for a 3-D Secure card.
//! - `POST /v1/orders`: the JSON twin for the edge's passthrough backend.
//! - `GET /v1/payment_intents/{id}`: the intent's current state, strongly consistent.
//! - `GET /v1/payment_intents/search?query=metadata['KEY']:'VALUE'`: Stripe's Search API, limited
//!   to metadata equality; a `search_result` of the intents created through
//!   `/v1/payment_intents`, newest first.
//! - `GET /v1/orders?idempotency_key=KEY`: a `list` of the intents created through `/v1/orders`
//!   with that `Idempotency-Key`, newest first.
//! - `POST /__sim/payment_intents/{id}/authenticate` with `{"outcome": "succeed" | "fail"}`: the
//!   bank's 3-D Secure challenge that Stripe.js would show, for an intent in `requires_action`.
//! - `POST /__sim/elsewhere`: "another host", where the `redirect_next` fault's 307 sends a
//!   payment. It answers 200 with a `succeeded` PaymentIntent, `pi_elsewhere`, charging nothing,
//!   and counts the POSTs it received, so a test can prove a client never followed.
//! - `GET /__sim/ledger`, `GET /__sim/lookups`, `GET`/`POST /__sim/faults`, `POST /__sim/reset`:
//!   inspection and control, without authentication. `/__sim/ledger` is
//!   `{"charges":[...],"redirected_posts":N}`, N the POSTs `/__sim/elsewhere` received.
//!   `/__sim/lookups` lists every lookup answered since the last reset,
//!   `{"lookups":[{"path","query","status","at_ms"}]}`, oldest first.
//!
//! The five `/v1` endpoints need `Authorization: Bearer <secret>`. The lookups exist so that an
//! edge that lost a payment's outcome can ask whether it was charged before forwarding it again;
//! they see a payment as soon as it executed, and each later change of it, unless
//! `search_lag_ms` is set, whether or not its response reached anyone.
//!
//! `params` parses requests, `cards` names what each test payment method does, `state` holds the
//! rules and no I/O, `wire` renders the JSON, and `server` is the HTTP shell over them.

mod cards;
mod ids;
mod params;
mod server;
mod state;
mod wire;

pub use server::{serve, RunningSim, MAX_BODY_BYTES};
pub use state::{
    Begin, Charge, Delivery, Endpoint, Executed, Faults, FaultsPatch, Ledger, Lookup, LookupCall,
    LookupEntry, LookupLog, LookupTicket, PaymentCall, Reply, Simulator, Ticket,
    STRIPE_KEY_RETENTION_MS,
};

/// The bearer secret paysim accepts unless told otherwise.
pub const DEFAULT_SECRET: &str = "sk_test_chargeonce_local";

/// How a simulator is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// The API key clients must send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            secret: DEFAULT_SECRET.to_owned(),
        }
    }
}
