//! # ChargeOnce's protocol
//!
//! The rules of exactly-once checkout, with no I/O, no clock, no randomness and
//! no async: time comes in as [`UnixMs`], claim tokens and jitter come in as
//! values, bytes come in as slices. The Worker (`edge/`) and the widget
//! (`widget/`) are thin shells around this crate. Read it in this order:
//!
//! 1. [`key`]: the `Idempotency-Key` header, parsed once, and its scope.
//! 2. [`order`]: the body of `POST /v1/orders`, validated and made canonical.
//! 3. [`fingerprint`]: what makes two requests the same request.
//! 4. [`request`]: the contract's first step, refusing bad requests in order.
//!    [`token`]: the storefront's signature over what the customer pays.
//! 5. [`record`]: the per-key state machine, its reconciliation of unknown
//!    outcomes, and the edge's [`Decision`]. [`order_record`]: one order,
//!    paid at most once whatever keys its attempts use.
//! 6. [`backend`]: what the edge sends the payment backend and which answers
//!    are final. [`payment`]: what a PaymentIntent's status means for the
//!    customer.
//! 7. [`flow`]: one request at the edge, from its head to its reply, as a
//!    driver the Worker runs step by step.
//! 8. [`problem`]: RFC 9457 problem+json bodies for every error.
//! 9. [`config`]: the edge's settings. [`time`]: instants and spans.
//! 10. [`attempt`]: the client's side: one checkout attempt, its key, and its
//!     retries.
//!
//! ## Driving a request
//!
//! The Worker performs what each [`Step`] asks for and hands the result back;
//! every decision is the flow's. The whole shell, minus error plumbing:
//!
//! ```no_run
//! use chargeonce_protocol::{flow, EdgeConfig, RequestHead, Step, UnixMs};
//! # use chargeonce_protocol::{backend::classify_failure, backend::TransportFailure, LookupOutcome};
//! # fn now() -> UnixMs { UnixMs(0) }
//! # fn read_body(limit: usize) -> Result<Vec<u8>, String> { Ok(Vec::new()) }
//! # fn send(reply: chargeonce_protocol::flow::Done) {}
//! # struct Object;
//! # impl Object {
//! #     fn ask<T>(&self, _: &str) -> Result<T, flow::StoreFailure> { Err(flow::StoreFailure("offline".into())) }
//! # }
//! # let object = Object;
//! # let order = Object;
//! let config = EdgeConfig::from_vars(|name| std::env::var(name).ok()).expect("valid settings");
//! let head = RequestHead { method: "POST", content_type: Some("application/json"), ..Default::default() };
//! let mut step = flow::order(head, Some("198.51.100.7"), &config, flow::Secrets::default());
//! let done = loop {
//!     step = match step {
//!         Step::Limit(s) => s.handle_limit(Ok(true), now()),
//!         Step::ReadBody(s) => { let body = read_body(s.limit()); s.handle_body(body) }
//!         Step::ReadCache(s) => s.handle_cached(None, now()),
//!         Step::Claim(s) => s.handle_claim(object.ask("claim"), now()),
//!         Step::Peek(s) => s.handle_peek(object.ask("peek")),
//!         Step::BeginOrder(s) => s.handle_begin(order.ask("begin"), now()),
//!         Step::AskAttempt(s) => s.handle_status(object.ask("status")),
//!         Step::SettleOrder(s) => s.handle_settled(order.ask("settle"), now()),
//!         Step::Lookup(s) => s.handle_lookup(LookupOutcome::NotCharged, now()),
//!         Step::Settle(s) => s.handle_settlement(object.ask("settle"), now()),
//!         Step::Forward(s) => {
//!             let outcome = classify_failure(&TransportFailure::Timeout { after_ms: 10_000 });
//!             s.handle_forward(outcome)
//!         }
//!         Step::Complete(s) => s.handle_complete(object.ask("complete"), now()),
//!         Step::Release(s) => s.handle_release(object.ask("release")),
//!         Step::Abandon(s) => s.handle_abandon(object.ask("abandon")),
//!         Step::Refresh(s) => s.handle_refresh(Err(TransportFailure::Unreachable("offline".into()))),
//!         Step::SaveRefresh(s) => s.handle_saved(object.ask("refresh")),
//!         Step::QueryStatus(s) => s.handle_status(object.ask("status")),
//!         Step::Done(done) => break done,
//!     };
//! };
//! send(done);
//! ```
//!
//! The key's object runs [`KeyRecord`]'s methods for `claim`, `peek`, `settle`,
//! `complete`, `release`, `abandon`, `refresh` and `status`, and its alarm
//! reconciles an unknown key by itself ([`KeyRecord::begin_check`]). The
//! order's object runs [`OrderRecord`]'s `begin` and `settle`; `AskAttempt`
//! asks another key's object for its `status`.

pub mod attempt;
pub mod backend;
pub mod config;
pub mod fingerprint;
pub mod flow;
pub mod key;
pub mod order;
pub mod order_record;
pub mod payment;
pub mod problem;
pub mod record;
pub mod request;
pub mod time;
pub mod token;

pub use attempt::{
    Attempt, EdgeResponse, Exchange, IgnoreReason, Next, Phase, RetryPolicy, RetryReason,
};
pub use backend::{
    BackendKind, BackendOutcome, BackendRequest, BackendResponse, LookupOutcome, TransportFailure,
};
pub use config::{ConfigError, EdgeConfig};
pub use fingerprint::Fingerprint;
pub use flow::Step;
pub use key::{IdempotencyKey, KeyError, ScopedKey};
pub use order::{Order, OrderDraft, OrderError};
pub use order_record::{
    AttemptFinding, OrderAttempt, OrderDecision, OrderPolicy, OrderRecord, OrderTerms,
};
pub use payment::{IntentStatus, PaymentOutcome};
pub use problem::{Problem, ProblemType, PROBLEM_CONTENT_TYPE};
pub use record::{
    ClaimToken, CompleteOutcome, Completed, Decision, Found, KeyPolicy, KeyRecord, KeyStatus, Peek,
    Refreshed, Settlement, StoredResponse, Write,
};
pub use request::{
    check_head, check_order_request, OrderRequest, RequestHead, MAX_BODY_BYTES, ORDERS_PATH,
};
pub use time::UnixMs;
pub use token::{OrderClaims, TokenError};
