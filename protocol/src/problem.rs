//! RFC 9457 problem details: every error the edge returns, as a type with a
//! fixed status and title and a per-request `detail`.
//!
//! The shells never write an error body by hand; they build a [`Problem`] and
//! send [`Problem::to_json`] with [`PROBLEM_CONTENT_TYPE`].

use crate::order::FieldProblem;
use serde::Serialize;

/// The media type of every error body the edge sends.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// What every problem `type` URI starts with.
const URI_PREFIX: &str = "tag:chargeonce.dev,2026:problem:";

/// The kinds of problem the edge reports. Each has a stable `type` URI that
/// clients can branch on; titles and details are for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemType {
    /// No route for this path.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The body is not `application/json`.
    UnsupportedMediaType,
    /// The body exceeds [`crate::MAX_BODY_BYTES`].
    PayloadTooLarge,
    /// The `Idempotency-Key` header is missing or malformed.
    InvalidIdempotencyKey,
    /// The body is not valid JSON or not a valid order.
    InvalidOrder,
    /// The key was already used for a different payload.
    KeyReused,
    /// The order's token is missing, malformed or not signed by the storefront.
    OrderTokenInvalid,
    /// The order's token has expired.
    OrderTokenExpired,
    /// The body asks for another amount, currency, reference or customer
    /// than its token vouches for.
    OrderTokenMismatch,
    /// A browser on an origin that is not allowed tried to place an order.
    OriginNotAllowed,
    /// Another request with this key is being processed, or the outcome of
    /// an earlier one is being confirmed with the backend.
    RequestInFlight,
    /// An earlier request with this key could not be confirmed, and the
    /// backend holds no charge for it: a final "not charged".
    AttemptNotCharged,
    /// Another key's attempt at the same order (customer and `order_ref`)
    /// is in flight, unknown or awaiting the customer's authentication.
    OrderInProgress,
    /// The order (customer and `order_ref`) is already paid, for other terms
    /// than this request's.
    OrderAlreadyPaid,
    /// The order (customer and `order_ref`) was refused as many times as
    /// `MAX_ATTEMPTS_PER_ORDER` allows (declines, failed authentication):
    /// nothing more is forwarded for it. Card testing looks like this.
    OrderAttemptsExhausted,
    /// Too many requests from this customer or client address in a short
    /// span (the Worker's rate limits); retry after `Retry-After`.
    RateLimited,
    /// A status lookup without an order token.
    AuthorizationRequired,
    /// A status lookup for a key that is claimed or being reconciled.
    OrderPending,
    /// A status lookup for a key with nothing recorded under it.
    OrderNotFound,
    /// The payment backend answered with a server error or could not be reached.
    BackendError,
    /// The payment backend said it is overloaded or busy; try again.
    BackendUnavailable,
    /// The payment backend did not answer in time.
    BackendTimeout,
    /// The edge's own coordination store (Durable Object or KV) failed, so the
    /// request was not forwarded: forwarding unguarded could charge twice.
    StoreUnavailable,
    /// The edge is deployed with a configuration it cannot run with.
    EdgeMisconfigured,
}

impl ProblemType {
    /// The HTTP status this problem is sent with.
    pub fn status(self) -> u16 {
        match self {
            Self::NotFound | Self::OrderNotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::OrderPending => 202,
            Self::AuthorizationRequired => 401,
            Self::AttemptNotCharged => 410,
            Self::UnsupportedMediaType => 415,
            Self::PayloadTooLarge => 413,
            Self::InvalidIdempotencyKey => 400,
            Self::InvalidOrder | Self::KeyReused => 422,
            Self::OrderTokenInvalid
            | Self::OrderTokenExpired
            | Self::OrderTokenMismatch
            | Self::OriginNotAllowed => 403,
            Self::RequestInFlight | Self::OrderInProgress | Self::OrderAlreadyPaid => 409,
            Self::OrderAttemptsExhausted | Self::RateLimited => 429,
            Self::BackendError => 502,
            Self::BackendUnavailable | Self::StoreUnavailable => 503,
            Self::BackendTimeout => 504,
            Self::EdgeMisconfigured => 500,
        }
    }

    /// A short, fixed summary of the problem type.
    pub fn title(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::PayloadTooLarge => "Request body too large",
            Self::InvalidIdempotencyKey => "Invalid Idempotency-Key",
            Self::InvalidOrder => "Invalid order",
            Self::KeyReused => "Idempotency-Key reused with a different payload",
            Self::OrderTokenInvalid => "Invalid order token",
            Self::OrderTokenExpired => "Order token expired",
            Self::OrderTokenMismatch => "Order does not match its token",
            Self::OriginNotAllowed => "Origin not allowed",
            Self::RequestInFlight => "A request with this Idempotency-Key is in progress",
            Self::AttemptNotCharged => "Attempt ended without a charge",
            Self::OrderInProgress => "This order is being placed under another Idempotency-Key",
            Self::OrderAlreadyPaid => "This order is already paid",
            Self::OrderAttemptsExhausted => "Too many refused attempts for this order",
            Self::RateLimited => "Too many requests",
            Self::AuthorizationRequired => "Order token required",
            Self::OrderPending => "Order pending",
            Self::OrderNotFound => "No order under this Idempotency-Key",
            Self::BackendError => "Payment backend error",
            Self::BackendUnavailable => "Payment backend unavailable",
            Self::BackendTimeout => "Payment backend timed out",
            Self::StoreUnavailable => "Idempotency store unavailable",
            Self::EdgeMisconfigured => "Edge misconfigured",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge => "payload-too-large",
            Self::InvalidIdempotencyKey => "invalid-idempotency-key",
            Self::InvalidOrder => "invalid-order",
            Self::KeyReused => "idempotency-key-reused",
            Self::OrderTokenInvalid => "order-token-invalid",
            Self::OrderTokenExpired => "order-token-expired",
            Self::OrderTokenMismatch => "order-token-mismatch",
            Self::OriginNotAllowed => "origin-not-allowed",
            Self::RequestInFlight => "request-in-flight",
            Self::AttemptNotCharged => "attempt-not-charged",
            Self::OrderInProgress => "order-in-progress",
            Self::OrderAlreadyPaid => "order-already-paid",
            Self::OrderAttemptsExhausted => "order-attempts-exhausted",
            Self::RateLimited => "rate-limited",
            Self::AuthorizationRequired => "authorization-required",
            Self::OrderPending => "order-pending",
            Self::OrderNotFound => "order-not-found",
            Self::BackendError => "backend-error",
            Self::BackendUnavailable => "backend-unavailable",
            Self::BackendTimeout => "backend-timeout",
            Self::StoreUnavailable => "store-unavailable",
            Self::EdgeMisconfigured => "edge-misconfigured",
        }
    }

    /// Every problem type, for lookups by URI.
    pub const ALL: [Self; 25] = [
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::InvalidIdempotencyKey,
        Self::InvalidOrder,
        Self::KeyReused,
        Self::OrderTokenInvalid,
        Self::OrderTokenExpired,
        Self::OrderTokenMismatch,
        Self::OriginNotAllowed,
        Self::RequestInFlight,
        Self::AttemptNotCharged,
        Self::OrderInProgress,
        Self::OrderAlreadyPaid,
        Self::OrderAttemptsExhausted,
        Self::RateLimited,
        Self::AuthorizationRequired,
        Self::OrderPending,
        Self::OrderNotFound,
        Self::BackendError,
        Self::BackendUnavailable,
        Self::BackendTimeout,
        Self::StoreUnavailable,
        Self::EdgeMisconfigured,
    ];

    /// The `type` member: a tag URI (RFC 4151), stable and not meant to be
    /// dereferenced; the README lists them all.
    pub fn uri(self) -> String {
        format!("{URI_PREFIX}{}", self.slug())
    }

    /// The problem type whose [`Self::uri`] is `uri`, as a client reads it
    /// back from a body.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let slug = uri.strip_prefix(URI_PREFIX)?;
        Self::ALL.into_iter().find(|kind| kind.slug() == slug)
    }

    /// Whether a client should retry the same request, with the same key.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RequestInFlight
                | Self::OrderInProgress
                | Self::OrderPending
                | Self::RateLimited
                | Self::BackendError
                | Self::BackendUnavailable
                | Self::BackendTimeout
                | Self::StoreUnavailable
        )
    }
}

/// One problem occurrence: a type plus what happened this time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct Problem {
    /// What kind of problem this is.
    pub kind: ProblemType,
    /// What happened, for the developer reading the response.
    pub detail: String,
    /// Seconds the client should wait before retrying (sent as `Retry-After`).
    pub retry_after_secs: Option<u32>,
    /// Per-field problems, for [`ProblemType::InvalidOrder`].
    pub invalid_params: Vec<FieldProblem>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    type_uri: String,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    invalid_params: &'a [FieldProblem],
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u32>,
}

impl Problem {
    /// A problem of `kind` with the given detail.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            retry_after_secs: None,
            invalid_params: Vec::new(),
        }
    }

    /// Adds a `Retry-After` hint.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds per-field problems.
    pub fn with_invalid_params(mut self, params: Vec<FieldProblem>) -> Self {
        self.invalid_params = params;
        self
    }

    /// The HTTP status to send.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The `application/problem+json` body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&Body {
            type_uri: self.kind.uri(),
            title: self.kind.title(),
            status: self.status(),
            detail: &self.detail,
            invalid_params: &self.invalid_params,
            retry_after: self.retry_after_secs,
        })
        .expect("a problem body holds only strings and integers")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn body_has_the_rfc_9457_members() {
        let body: Value =
            serde_json::from_str(&Problem::new(ProblemType::KeyReused, "amount differs").to_json())
                .unwrap();
        assert_eq!(
            body["type"],
            "tag:chargeonce.dev,2026:problem:idempotency-key-reused"
        );
        assert_eq!(
            body["title"],
            "Idempotency-Key reused with a different payload"
        );
        assert_eq!(body["status"], 422);
        assert_eq!(body["detail"], "amount differs");
        assert!(body.get("invalid_params").is_none());
    }

    #[test]
    fn retry_after_and_invalid_params_appear_when_set() {
        let p = Problem::new(ProblemType::InvalidOrder, "bad")
            .with_invalid_params(vec![FieldProblem {
                name: "amount".into(),
                reason: "is required".into(),
            }])
            .retry_after(2);
        let body: Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(body["invalid_params"][0]["name"], "amount");
        assert_eq!(body["retry_after"], 2);
    }

    #[test]
    fn every_type_reads_back_from_its_uri_and_no_two_share_one() {
        for kind in ProblemType::ALL {
            assert_eq!(ProblemType::from_uri(&kind.uri()), Some(kind));
        }
        let mut uris: Vec<_> = ProblemType::ALL.iter().map(|k| k.uri()).collect();
        uris.sort();
        uris.dedup();
        assert_eq!(uris.len(), ProblemType::ALL.len());
        assert_eq!(ProblemType::from_uri("about:blank"), None);
        assert_eq!(
            ProblemType::from_uri("tag:chargeonce.dev,2026:problem:nope"),
            None
        );
    }

    #[test]
    fn only_transient_problems_are_retryable() {
        assert!(ProblemType::RequestInFlight.is_retryable());
        assert!(ProblemType::BackendTimeout.is_retryable());
        assert!(!ProblemType::KeyReused.is_retryable());
        assert!(!ProblemType::InvalidOrder.is_retryable());
        // Both are 429s; only the rate limit passes.
        assert!(ProblemType::RateLimited.is_retryable());
        assert!(!ProblemType::OrderAttemptsExhausted.is_retryable());
    }
}
