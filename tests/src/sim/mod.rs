//! paysim, the payment simulator: a Stripe-compatible subset that the demo and every black-box
//! test pay through.
//!
//! It owns a ledger of executed charges, Stripe-style idempotency (`Idempotency-Key`, scoped per
//! endpoint) that can be switched off to play a naive backend, and injectable faults (latency,
//! 503s, responses lost after commit), all inspectable and resettable under `/__sim/*`. It must
//! not depend on the edge or the protocol crate: it stands in for the real payment provider, and
//! tests prove the edge's behaviour by reading this ledger.
//!
//! `state` holds the rules and no I/O; `server` is the HTTP shell over it.

mod ids;
mod params;
mod server;
mod state;
mod wire;

pub use server::{serve, RunningSim, MAX_BODY_BYTES};
pub use state::{
    Begin, Charge, Endpoint, Executed, Faults, FaultsPatch, Ledger, PaymentCall, Reply, Simulator,
    Ticket,
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
