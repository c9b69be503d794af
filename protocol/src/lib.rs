//! # ChargeOnce's protocol
//!
//! The rules of exactly-once checkout, with no I/O, no clock, no randomness and
//! no async: time comes in as Unix milliseconds, bytes come in as slices. The
//! Worker (`edge/`) and the widget (`widget/`) are thin shells around this
//! crate. Read it in this order:
//!
//! 1. [`key`]: the `Idempotency-Key` header, parsed once, and its scope.
//! 2. [`order`]: the body of `POST /v1/orders`, validated and made canonical.
//! 3. [`fingerprint`]: what makes two requests the same request.
//! 4. [`request`]: the contract's first step, refusing bad requests in order.
//!    [`token`]: the storefront's signature over what the customer pays.
//! 5. [`record`]: the per-key state machine and the edge's [`Decision`].
//! 6. [`backend`]: what the edge sends the payment backend and which answers
//!    are final.
//! 7. [`problem`]: RFC 9457 problem+json bodies for every error.
//! 8. [`config`]: the edge's settings.
//! 9. [`attempt`]: the client's side: one checkout attempt, its key, and its
//!    retries.

pub mod attempt;
pub mod backend;
pub mod config;
pub mod fingerprint;
pub mod key;
pub mod order;
pub mod problem;
pub mod record;
pub mod request;
pub mod token;

pub use attempt::{Answer, Attempt, IgnoreReason, Next, Phase, RetryPolicy, RetryReason, Submit};
pub use backend::{BackendKind, BackendOutcome, BackendRequest, LookupOutcome, TransportFailure};
pub use config::{ConfigError, EdgeConfig};
pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, KeyError, ScopedKey};
pub use order::{Order, OrderDraft, OrderError};
pub use problem::{Problem, ProblemType, PROBLEM_CONTENT_TYPE};
pub use record::{ClaimToken, CompleteOutcome, Completed, Decision, KeyRecord, StoredResponse};
pub use request::{
    check_head, check_order_request, OrderRequest, RequestHead, MAX_BODY_BYTES, ORDERS_PATH,
};
pub use token::{OrderClaims, TokenError};
