//! One request at the edge, from its head to its reply, as a pure driver.
//!
//! The shell (the Worker) performs the I/O that each [`Step`] names and feeds
//! the result to that step's `handle_*` method, which answers the next step,
//! until [`Step::Done`]. Each step owns the flow's state and is consumed by
//! its handler, so results cannot be fed out of order. Every decision of the
//! request path is here: the order of the contract's checks, when KV is
//! trusted, what a claim's decision means, when to reconcile, that every
//! forward first asks the order's record (one order, one charge, whatever
//! the keys), that an expired order token only peeks (a stored answer is
//! replayed whatever the token's age, but nothing is claimed or written for
//! it), what the browser is shown of a refusal, and how each backend outcome
//! ends the claim. The property test and the model check drive this same
//! type.
//!
//! ```text
//! POST /v1/orders (each request first asks the client's rate limit, Limit):
//!   ReadBody ─▶ ReadCache ─▶ Claim ─┬────────────────────────┬─▶ BeginOrder ─┬───────────────────────────┬─▶ Forward
//!                   │            │  └─▶ Lookup ─▶ Settle ────┘       │       └▶ AskAttempt ─▶ SettleOrder ┤
//!                   │            │                                   │          (another key's attempt)  │
//!                   │            │                                   └── paid, in progress, exhausted ───┴─▶ Release ─▶ Done
//!                   │            └─ replay, mismatch, in flight ─▶ Done
//!                   ├─ hit: replay, mismatch ─▶ Done
//!                   └─ miss, the order token expired ─▶ Peek ─▶ Done
//!                                   (replay, mismatch, in flight, or 403)
//!   any replay of an intent that may have changed:
//!                                      Refresh ─┬─ unchanged ─▶ Done
//!                                               └─ changed ─▶ SaveRefresh ─▶ Done
//!   (BeginOrder or SettleOrder says attempt ─▶ Limit, the customer's ─▶ Forward, or Release)
//!   Forward ─┬─▶ Complete ─▶ Done
//!            ├─▶ Release ─▶ Done   (nothing was charged)
//!            └─▶ Abandon ─▶ Done   (the outcome is unknown)
//! GET /v1/orders (status lookup, never forwards):
//!   Limit ─▶ ReadCache ─▶ QueryStatus ─▶ Done
//! ```

use crate::backend::{
    classify_refresh, client_view, unsettled_intent, BackendOutcome, BackendRequest,
    BackendResponse, ExpectedCharge, LookupOutcome, TransportFailure,
};
use crate::config::EdgeConfig;
use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, ScopedKey};
use crate::order_record::{self, AttemptFinding, OrderAttempt, OrderDecision, OrderTerms};
use crate::problem::{Problem, ProblemType};
use crate::record::{
    ClaimToken, CompleteOutcome, Completed, Decision, Found, KeyStatus, Peek, Refreshed,
    Settlement, StoredResponse,
};
use crate::request::{check_head, check_order_request, OrderRequest, RequestHead, MAX_BODY_BYTES};
use crate::time::UnixMs;
use crate::token::{self, OrderClaims};
use sha2::{Digest, Sha256};
use std::time::Duration;
use thiserror::Error;

/// The secrets a flow needs, read from the Worker's environment.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Secrets {
    /// `ORDER_TOKEN_SECRET`, the storefront's signing secret.
    pub order_token: Option<Vec<u8>>,
    /// The backend credential ([`crate::BackendKind::secret_name`]).
    pub backend: Option<String>,
}

impl std::fmt::Debug for Secrets {
    // Secrets never reach a log line, even through a debug print of a step.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("order_token", &self.order_token.as_ref().map(|_| "…"))
            .field("backend", &self.backend.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The key's object could not be reached or answered nonsense.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Error)]
#[error("{0}")]
pub struct StoreFailure(pub String);

/// What the client is told.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reply {
    /// An error, as problem+json.
    Problem(Problem),
    /// A backend answer, or the key's stored answer.
    Stored {
        /// The response, byte for byte.
        response: StoredResponse,
        /// Whether to send `Idempotent-Replayed: true`.
        replayed: bool,
    },
    /// The order's paid answer, for a request under another key: sent as a
    /// replay (`Idempotent-Replayed: true`) that names the key it was paid
    /// under in `Original-Idempotency-Key`.
    OrderPaid {
        /// The paid attempt's answer, byte for byte.
        response: StoredResponse,
        /// The `Idempotency-Key` it was paid under.
        key: String,
    },
}

/// The flow's end: the reply, and a final answer to copy to KV.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct Done {
    /// What the client is told.
    pub reply: Reply,
    /// A final answer just stored in the key's object, for the shell to
    /// copy to KV off the response path.
    pub cache: Option<CacheWrite>,
}

/// A final answer for the KV fast path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheWrite {
    /// The KV key ([`ScopedKey::storage_name`]).
    pub name: String,
    /// The answer.
    pub completed: Completed,
    /// How long KV keeps it.
    pub ttl: Duration,
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub enum Step {
    /// Ask one of the Worker's rate limits whether the request may go on.
    Limit(Limit),
    /// Read at most [`ReadBody::limit`] bytes of the body.
    ReadBody(ReadBody),
    /// Read the KV copy of the key's final answer.
    ReadCache(ReadCache),
    /// Ask the key's object to decide and claim.
    Claim(Claim),
    /// Ask the key's object what it holds, without claiming (an expired
    /// order token).
    Peek(PeekKey),
    /// Ask the order's object whether this attempt may have the order.
    BeginOrder(BeginOrder),
    /// Ask the object of the key whose attempt holds the order what became
    /// of it.
    AskAttempt(AskAttempt),
    /// Tell the order's object what that key said.
    SettleOrder(SettleOrder),
    /// Ask the backend whether it charged under the key.
    Lookup(Lookup),
    /// Tell the key's object what the lookup found.
    Settle(Settle),
    /// Send the order to the backend.
    Forward(Forward),
    /// Store the backend's final answer in the key's object.
    Complete(Complete),
    /// Give the key back: nothing was charged.
    Release(Release),
    /// End the claim without knowing whether it charged.
    Abandon(Abandon),
    /// Ask the backend how the intent of a stored answer stands now.
    Refresh(Refresh),
    /// Store the refreshed answer in the key's object.
    SaveRefresh(SaveRefresh),
    /// Ask the key's object what it knows (status lookups).
    QueryStatus(QueryStatus),
    /// Send the reply.
    Done(Done),
}

impl Step {
    /// The step's name in `Server-Timing`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Limit(_) => "limit",
            Self::ReadBody(_) => "read",
            Self::ReadCache(_) => "kv",
            Self::Claim(_) => "claim",
            Self::Peek(_) => "peek",
            Self::BeginOrder(_) => "order",
            Self::AskAttempt(_) => "ask-attempt",
            Self::SettleOrder(_) => "settle-order",
            Self::Lookup(_) => "lookup",
            Self::Settle(_) => "settle",
            Self::Forward(_) => "backend",
            Self::Complete(_) => "complete",
            Self::Release(_) => "release",
            Self::Abandon(_) => "abandon",
            Self::Refresh(_) => "refresh",
            Self::SaveRefresh(_) => "save-refresh",
            Self::QueryStatus(_) => "status",
            Self::Done(_) => "done",
        }
    }
}

fn done(reply: Reply) -> Step {
    Step::Done(Done { reply, cache: None })
}

fn problem(problem: Problem) -> Step {
    done(Reply::Problem(problem))
}

/// Who a stored answer is shown to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum View {
    /// The customer's browser: a refusal is reduced
    /// ([`crate::backend::client_view`]).
    Customer,
    /// The merchant, with the backend secret: the backend's answer whole.
    Merchant,
}

/// A stored answer as `view` is shown it.
fn shown(response: StoredResponse, replayed: bool, view: View) -> Reply {
    let response = match view {
        View::Customer => client_view(&response),
        View::Merchant => response,
    };
    Reply::Stored { response, replayed }
}

fn replay(response: StoredResponse, view: View) -> Step {
    done(shown(response, true, view))
}

fn store_unavailable_reply() -> Reply {
    Reply::Problem(
        Problem::new(
            ProblemType::StoreUnavailable,
            "the idempotency store is unavailable, so the order was not forwarded; retry with the same key",
        )
        .retry_after(1),
    )
}

fn store_unavailable() -> Step {
    done(store_unavailable_reply())
}

fn order_in_progress(retry_after_secs: u32) -> Problem {
    Problem::new(
        ProblemType::OrderInProgress,
        "this order (customer and order_ref) is being placed under another Idempotency-Key, or that attempt's outcome is being confirmed or awaits the customer's authentication; nothing was forwarded; retry with the same key to get its outcome",
    )
    .retry_after(retry_after_secs)
}

fn mismatch() -> Step {
    problem(Problem::new(
        ProblemType::KeyReused,
        "this Idempotency-Key was already used for a different order; use a new key for a new order",
    ))
}

/// Another request's claim holds the key.
fn key_held(retry_after_secs: u32) -> Step {
    in_flight(
        "another request with this Idempotency-Key is being processed; retry with the same key",
        retry_after_secs,
    )
}

fn in_flight(detail: &str, retry_after_secs: u32) -> Step {
    problem(Problem::new(ProblemType::RequestInFlight, detail).retry_after(retry_after_secs))
}

/// The order token's signing secret, or the problem of its absence (a 500:
/// the edge is deployed without it, or with the public example's, with
/// which anyone could sign an order).
pub fn signing_secret(secrets: &Secrets) -> Result<&[u8], Problem> {
    match secrets.order_token.as_deref() {
        Some(secret) if secret == token::EXAMPLE_SECRET.as_bytes() => Err(Problem::new(
            ProblemType::EdgeMisconfigured,
            "the secret ORDER_TOKEN_SECRET is the public example from .dev.vars.example, with which anyone could sign orders; set a secret of your own (wrangler secret put ORDER_TOKEN_SECRET); nothing was forwarded",
        )),
        Some(secret) if secret.len() >= token::MIN_SECRET_LEN => Ok(secret),
        _ => Err(Problem::new(
            ProblemType::EdgeMisconfigured,
            format!(
                "the secret ORDER_TOKEN_SECRET is not set or shorter than {} bytes; nothing was forwarded",
                token::MIN_SECRET_LEN
            ),
        )),
    }
}

/// The owned parts of a request head.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Head {
    method: String,
    content_type: Option<String>,
    content_length: Option<String>,
    idempotency_key: Option<String>,
}

impl Head {
    fn borrow(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            content_type: self.content_type.as_deref(),
            content_length: self.content_length.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
        }
    }
}

/// Starts the flow of `POST /v1/orders` (any method but OPTIONS and GET)
/// from the client at `client` (`CF-Connecting-IP`).
pub fn order(
    head: RequestHead<'_>,
    client: Option<&str>,
    config: &EdgeConfig,
    secrets: Secrets,
) -> Step {
    limit_client(client, config, checked_head(head, config, secrets))
}

/// The first step of every request when rate limits are on: the client's
/// limit, counting every request, well formed or not, before anything else
/// is done for it.
fn limit_client(client: Option<&str>, config: &EdgeConfig, then: Step) -> Step {
    if !config.rate_limits {
        return then;
    }
    Step::Limit(Limit {
        limiter: Limiter::Client,
        key: format!("client:{}", client.unwrap_or("unknown")),
        then: Then::Start(Box::new(then)),
    })
}

fn checked_head(head: RequestHead<'_>, config: &EdgeConfig, secrets: Secrets) -> Step {
    if let Err(refused) = check_head(&head) {
        return problem(refused);
    }
    Step::ReadBody(ReadBody {
        config: config.clone(),
        secrets,
        head: Head {
            method: head.method.to_owned(),
            content_type: head.content_type.map(str::to_owned),
            content_length: head.content_length.map(str::to_owned),
            idempotency_key: head.idempotency_key.map(str::to_owned),
        },
    })
}

/// The parts of a status lookup (`GET /v1/orders`) the edge reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusHead<'a> {
    /// The `Idempotency-Key` header of the attempt asked about.
    pub idempotency_key: Option<&'a str>,
    /// The `Authorization` header: `Bearer <order token>`, or `Bearer
    /// <backend secret>` for the merchant.
    pub authorization: Option<&'a str>,
    /// The `customer` query parameter: whose key it is, when the merchant
    /// asks with the backend secret.
    pub customer: Option<&'a str>,
}

/// Starts a status lookup: what became of the attempt under a key. Any
/// valid, unexpired order token for the key's customer will do: it proves
/// the customer, who scopes the key, and the answer is what the customer's
/// browser is shown. The merchant may ask with the backend secret instead,
/// naming the customer (`?customer=`), and gets the backend's answer whole.
/// It never forwards anything; a stored intent that may have changed is
/// refreshed, as for an order.
pub fn status(
    head: StatusHead<'_>,
    client: Option<&str>,
    config: &EdgeConfig,
    secrets: &Secrets,
    now: UnixMs,
) -> Step {
    limit_client(client, config, status_lookup(head, config, secrets, now))
}

fn status_lookup(
    head: StatusHead<'_>,
    config: &EdgeConfig,
    secrets: &Secrets,
    now: UnixMs,
) -> Step {
    let key = match IdempotencyKey::parse(head.idempotency_key) {
        Ok(key) => key,
        Err(e) => {
            return problem(Problem::new(
                ProblemType::InvalidIdempotencyKey,
                e.to_string(),
            ))
        }
    };
    let Some(bearer) = head.authorization.map(str::trim).filter(|a| !a.is_empty()) else {
        return problem(Problem::new(
            ProblemType::AuthorizationRequired,
            "a status lookup needs Authorization: Bearer <order token>, any unexpired order token the storefront signed for this customer",
        ));
    };
    let Some(order_token) = bearer
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
    else {
        return problem(Problem::new(
            ProblemType::AuthorizationRequired,
            "the Authorization header must be Bearer <order token>",
        ));
    };
    let backend_secret = secrets.backend.as_deref().filter(|s| !s.is_empty());
    let (customer, view) = if backend_secret.is_some_and(|s| same_secret(s, order_token)) {
        match head.customer.filter(|c| !c.is_empty()) {
            Some(customer) => (customer.to_owned(), View::Merchant),
            None => {
                return problem(Problem::new(
                    ProblemType::AuthorizationRequired,
                    "a status lookup with the backend secret names the key's customer: GET /v1/orders?customer=<customer>",
                ))
            }
        }
    } else {
        let secret = match signing_secret(secrets) {
            Ok(secret) => secret,
            Err(refused) => return problem(refused),
        };
        let claims = match OrderClaims::verify(order_token, secret) {
            Ok(claims) => claims,
            Err(e) => return problem(e.to_problem()),
        };
        if let Err(e) = claims.check_fresh(now.as_secs()) {
            return problem(e.to_problem());
        }
        (claims.customer, View::Customer)
    };
    let scoped = ScopedKey::new(Some(&customer), key);
    Step::ReadCache(ReadCache {
        purpose: CachePurpose::Status(Box::new(RefreshTarget {
            config: config.clone(),
            authorization: backend_secret.map(str::to_owned),
            name: scoped.storage_name(),
            backend_key: scoped.backend_key(),
            view,
        })),
    })
}

/// Whether `presented` is `secret`, compared through their digests so the
/// time taken says nothing of how much of it matched.
fn same_secret(secret: &str, presented: &str) -> bool {
    Sha256::digest(secret.as_bytes()) == Sha256::digest(presented.as_bytes())
}

/// The Worker's rate limits (README, "Security"); the shell names the
/// binding of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limiter {
    /// Requests to `/v1/orders` per client address, counted first.
    Client,
    /// Forwards to the backend per customer, counted just before one.
    Customer,
}

/// How long a client told "too many requests" waits: the period of the
/// limits (60 s in wrangler.toml; Cloudflare allows 10 or 60).
pub const RATE_LIMIT_RETRY_AFTER_SECS: u32 = 60;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Then {
    /// A request's first step.
    Start(Box<Step>),
    /// The forward of a held claim, whose lease is checked again after the
    /// limit answered.
    Forward { held: Box<Held>, asked_at: UnixMs },
}

/// Asking a rate limit; then [`Limit::handle_limit`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limit {
    limiter: Limiter,
    key: String,
    then: Then,
}

impl Limit {
    /// Which limit to ask.
    pub fn limiter(&self) -> Limiter {
        self.limiter
    }

    /// What it counts by: `client:<address>` or `customer:<id>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Goes on if the limit allows the request; otherwise 429 `rate-limited`
    /// with `Retry-After`, and a claim held for a forward is given back.
    /// A limit that cannot be asked lets the request through: it guards
    /// against abuse, not against double charges, and its outage must not
    /// stop checkout.
    pub fn handle_limit(self, allowed: Result<bool, StoreFailure>, now: UnixMs) -> Step {
        let limited = || {
            Problem::new(
                ProblemType::RateLimited,
                match self.limiter {
                    Limiter::Client => "too many requests from this address; nothing was done; retry after Retry-After",
                    Limiter::Customer => "too many payments for this customer in a short time; nothing was forwarded; retry with the same key after Retry-After",
                },
            )
            .retry_after(RATE_LIMIT_RETRY_AFTER_SECS)
        };
        let allowed = allowed.unwrap_or(true);
        match self.then {
            Then::Start(step) if allowed => *step,
            Then::Start(_) => problem(limited()),
            Then::Forward { held, asked_at } if allowed => held.forward(asked_at, now),
            Then::Forward { held, .. } => held.release(Reply::Problem(limited())),
        }
    }
}

/// Reading the body; then [`ReadBody::handle_body`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadBody {
    config: EdgeConfig,
    secrets: Secrets,
    head: Head,
}

impl ReadBody {
    /// How many bytes to read at most: one past the limit, so an oversized
    /// body is recognised without reading all of it.
    pub fn limit(&self) -> usize {
        MAX_BODY_BYTES + 1
    }

    /// Runs the contract's checks on the body read (or the reason it could
    /// not be read), then the order token's.
    pub fn handle_body(self, body: Result<Vec<u8>, String>) -> Step {
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                return problem(Problem::new(
                    ProblemType::InvalidOrder,
                    format!("the body could not be read: {e}"),
                ))
            }
        };
        let request = match check_order_request(&self.head.borrow(), &body) {
            Ok(request) => request,
            Err(refused) => return problem(refused),
        };
        // The token is checked before the store is touched: an order the
        // storefront did not sign never claims a key. Its customer is the
        // request's customer, which scopes the key.
        let claims = match signing_secret(&self.secrets)
            .and_then(|secret| token::authorize(&request.order, secret).map_err(|e| e.to_problem()))
        {
            Ok(claims) => claims,
            Err(refused) => return problem(refused),
        };
        let kind = self.config.backend;
        let authorization = match self.secrets.backend.clone().filter(|s| !s.is_empty()) {
            None if kind.requires_secret() => {
                return problem(Problem::new(
                    ProblemType::EdgeMisconfigured,
                    format!(
                        "the secret {} is not set; nothing was forwarded",
                        kind.secret_name()
                    ),
                ))
            }
            secret => secret,
        };
        let name = request.key.storage_name();
        Step::ReadCache(ReadCache {
            purpose: CachePurpose::Order(Box::new(Checked {
                config: self.config,
                request,
                claims,
                authorization,
                name,
            })),
        })
    }
}

/// A request that passed every check, on its way through the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Checked {
    config: EdgeConfig,
    request: OrderRequest,
    claims: OrderClaims,
    authorization: Option<String>,
    name: String,
}

impl Checked {
    fn refresh_target(&self) -> RefreshTarget {
        RefreshTarget {
            config: self.config.clone(),
            authorization: self.authorization.clone(),
            name: self.name.clone(),
            backend_key: self.request.key.backend_key(),
            view: View::Customer,
        }
    }

    /// What a lookup under this request's key must find.
    fn expected(&self) -> ExpectedCharge {
        ExpectedCharge::of(&self.request.order, &self.request.key.backend_key())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CachePurpose {
    Order(Box<Checked>),
    Status(Box<RefreshTarget>),
}

/// Reading KV; then [`ReadCache::handle_cached`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReadCache {
    purpose: CachePurpose,
}

impl ReadCache {
    /// The KV key.
    pub fn name(&self) -> &str {
        match &self.purpose {
            CachePurpose::Order(checked) => &checked.name,
            CachePurpose::Status(target) => &target.name,
        }
    }

    /// Acts on the cached answer, if any. Only a hit is trusted: a final
    /// answer never changes once stored. A miss, a stale entry or a KV
    /// failure (which the shell reports as `None`) asks the key's object:
    /// to claim the key, or, when the order token has expired (nothing can
    /// be forwarded for it), only to look, so that an expired token never
    /// costs a write.
    pub fn handle_cached(self, cached: Option<Completed>, now: UnixMs) -> Step {
        match self.purpose {
            CachePurpose::Order(checked) => {
                match cached.and_then(|c| c.decide(&checked.request.fingerprint, now)) {
                    Some(Decision::Replay { response }) => {
                        replay_or_refresh(checked.refresh_target(), response)
                    }
                    Some(Decision::Mismatch) => mismatch(),
                    _ => match checked.claims.check_fresh(now.as_secs()) {
                        Ok(()) => Step::Claim(Claim {
                            checked,
                            asked_at: now,
                        }),
                        Err(expired) => Step::Peek(PeekKey {
                            checked,
                            expired: expired.to_problem(),
                        }),
                    },
                }
            }
            CachePurpose::Status(target) => match cached.filter(|c| now < c.expires_at) {
                Some(completed) => replay_or_refresh(*target, completed.response),
                None => Step::QueryStatus(QueryStatus { target: *target }),
            },
        }
    }
}

/// Looking at the key without claiming it, for a request whose order token
/// has expired; then [`PeekKey::handle_peek`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeekKey {
    checked: Box<Checked>,
    /// The token's expiry, told unless the key holds an answer for it.
    expired: Problem,
}

impl PeekKey {
    /// The name of the key's object.
    pub fn name(&self) -> &str {
        &self.checked.name
    }

    /// The request's fingerprint.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.checked.request.fingerprint
    }

    /// Replays the key's answer, refuses another payload or waits on a
    /// claim, as for a fresh token; otherwise tells the client the token
    /// expired. A key whose outcome is unknown is reconciled by the claim
    /// of the same key under a fresh token.
    pub fn handle_peek(self, peeked: Result<Peek, StoreFailure>) -> Step {
        match peeked {
            Err(_) => store_unavailable(),
            Ok(Peek::Replay { response }) => {
                replay_or_refresh(self.checked.refresh_target(), response)
            }
            Ok(Peek::Mismatch) => mismatch(),
            Ok(Peek::InFlight { retry_after_secs }) => key_held(retry_after_secs),
            Ok(Peek::Nothing) => problem(self.expired),
        }
    }
}

/// Claiming the key; then [`Claim::handle_claim`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    checked: Box<Checked>,
    /// When the claim was asked for: the lease counts from a moment no
    /// earlier than this.
    asked_at: UnixMs,
}

impl Claim {
    /// The name of the key's object.
    pub fn name(&self) -> &str {
        &self.checked.name
    }

    /// The request's fingerprint.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.checked.request.fingerprint
    }

    /// What a lookup under the key must find: the object keeps it, for its
    /// own reconciliation.
    pub fn expected(&self) -> ExpectedCharge {
        self.checked.expected()
    }

    /// Acts on the object's decision.
    pub fn handle_claim(self, decided: Result<Decision, StoreFailure>, now: UnixMs) -> Step {
        match decided {
            Err(_) => store_unavailable(),
            Ok(Decision::Forward {
                token,
                reconcile: true,
            }) => Step::Lookup(Lookup {
                held: Held {
                    checked: self.checked,
                    token,
                },
                sent_at: now,
            }),
            Ok(Decision::Forward {
                token,
                reconcile: false,
            }) => Held {
                checked: self.checked,
                token,
            }
            .begin_order(self.asked_at, now),
            Ok(Decision::Replay { response }) => {
                replay_or_refresh(self.checked.refresh_target(), response)
            }
            Ok(Decision::Mismatch) => mismatch(),
            Ok(Decision::InFlight { retry_after_secs }) => key_held(retry_after_secs),
        }
    }
}

/// A checked request and the claim it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Held {
    checked: Box<Checked>,
    token: ClaimToken,
}

impl Held {
    /// Every forward asks for the order first, unless the order token has
    /// expired: an attempt that cannot be forwarded never touches the order.
    fn begin_order(self, asked_at: UnixMs, now: UnixMs) -> Step {
        if let Err(e) = self.checked.claims.check_fresh(now.as_secs()) {
            return self.release(Reply::Problem(e.to_problem()));
        }
        Step::BeginOrder(BeginOrder {
            held: self,
            asked_at,
        })
    }

    /// Gives the key back with `reply`: nothing was forwarded.
    fn release(self, reply: Reply) -> Step {
        Step::Release(Release {
            token: self.token,
            reply,
        })
    }

    /// This attempt, as the order's record knows it.
    fn attempt(&self) -> OrderAttempt {
        OrderAttempt {
            key: self.checked.request.key.key().as_str().to_owned(),
            token: self.token,
            terms: OrderTerms::of(&self.checked.claims),
            authorized_until: UnixMs::from_secs(self.checked.claims.expires_at),
        }
    }

    /// Acts on what the order's record said to this attempt: forward, or
    /// give the key back with the order's answer.
    fn follow_order(self, decided: OrderDecision, asked_at: UnixMs, now: UnixMs) -> Step {
        match decided {
            OrderDecision::Attempt => self.limit_customer(asked_at, now),
            OrderDecision::Ask { attempt } => {
                let key = match IdempotencyKey::parse(Some(&attempt.key)) {
                    Ok(key) => key,
                    Err(_) => return self.release(store_unavailable_reply()),
                };
                let name = ScopedKey::new(Some(&self.checked.claims.customer), key).storage_name();
                Step::AskAttempt(AskAttempt {
                    held: self,
                    asked_at,
                    attempt,
                    name,
                })
            }
            OrderDecision::InProgress { retry_after_secs } => {
                self.release(Reply::Problem(order_in_progress(retry_after_secs)))
            }
            OrderDecision::Paid { key, response } => {
                self.release(Reply::OrderPaid { response, key })
            }
            OrderDecision::Exhausted { refused } => self.release(Reply::Problem(Problem::new(
                ProblemType::OrderAttemptsExhausted,
                format!(
                    "this order (customer and order_ref) was refused {refused} times, as many as the store allows; nothing was forwarded. The customer should contact the store"
                ),
            ))),
            OrderDecision::PaidOtherTerms { key } => self.release(Reply::Problem(Problem::new(
                ProblemType::OrderAlreadyPaid,
                format!(
                    "this order (customer and order_ref) was already paid under Idempotency-Key {key}, for another amount or currency; nothing was charged. A second charge for one order needs a new order_ref"
                ),
            ))),
        }
    }

    /// Asks the customer's rate limit, which counts forwards, before the
    /// forward: a customer's retries that are answered without one, and
    /// another device waiting on the order, cost it nothing.
    fn limit_customer(self, asked_at: UnixMs, now: UnixMs) -> Step {
        if !self.checked.config.rate_limits {
            return self.forward(asked_at, now);
        }
        Step::Limit(Limit {
            limiter: Limiter::Customer,
            key: format!("customer:{}", self.checked.claims.customer),
            then: Then::Forward {
                held: Box::new(self),
                asked_at,
            },
        })
    }

    /// Forwards under a lease asked for at `asked_at`, unless the order
    /// token has expired (a stored answer is replayed whatever the token's
    /// age, but nothing is charged on an expired one) or too little of the
    /// lease is left. The backend must have finished the forward before the
    /// lease ends, so a forward starts only while a whole backend timeout of
    /// the lease remains; the reply that granted the claim may have been slow.
    fn forward(self, asked_at: UnixMs, now: UnixMs) -> Step {
        let config = &self.checked.config;
        if now.plus(config.backend_timeout) >= asked_at.plus(config.lease) {
            return self.release(Reply::Problem(
                Problem::new(
                    ProblemType::StoreUnavailable,
                    "the idempotency store confirmed the claim too late to forward within its lease; nothing was forwarded; retry with the same key",
                )
                .retry_after(1),
            ));
        }
        if let Err(e) = self.checked.claims.check_fresh(now.as_secs()) {
            return self.release(Reply::Problem(e.to_problem()));
        }
        let backend_key = self.checked.request.key.backend_key();
        let config = &self.checked.config;
        let request = config.backend.request(
            &config.backend_url,
            &self.checked.request.order,
            &backend_key,
        );
        Step::Forward(Forward {
            held: self,
            request,
            backend_key,
        })
    }
}

/// Asking the order's object for the order; then
/// [`BeginOrder::handle_begin`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BeginOrder {
    held: Held,
    /// When the key's claim was asked for: its lease counts from then.
    asked_at: UnixMs,
}

impl BeginOrder {
    /// The name of the order's object ([`order_record::storage_name`]).
    pub fn name(&self) -> String {
        order_record::storage_name(&self.held.checked.claims)
    }

    /// The attempt asking.
    pub fn attempt(&self) -> OrderAttempt {
        self.held.attempt()
    }

    /// Acts on the order's decision. Without one (the object failed),
    /// nothing is forwarded: forwarding unguarded could pay the order twice.
    pub fn handle_begin(self, decided: Result<OrderDecision, StoreFailure>, now: UnixMs) -> Step {
        match decided {
            Ok(decided) => self.held.follow_order(decided, self.asked_at, now),
            Err(_) => self.held.release(store_unavailable_reply()),
        }
    }
}

/// Asking the object of the key whose attempt holds the order what became
/// of that attempt; then [`AskAttempt::handle_status`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AskAttempt {
    held: Held,
    asked_at: UnixMs,
    /// The attempt asked about.
    attempt: OrderAttempt,
    /// Its key's object ([`ScopedKey::storage_name`]).
    name: String,
}

impl AskAttempt {
    /// The name of the object of the key asked about.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The attempt asked about.
    pub fn asked(&self) -> &OrderAttempt {
        &self.attempt
    }

    /// Reads what the key's object says ([`crate::KeyRecord::status`]). An
    /// attempt that is not over blocks the order, and the order's object
    /// need not hear it.
    pub fn handle_status(self, status: Result<KeyStatus, StoreFailure>) -> Step {
        match status.map(AttemptFinding::of) {
            Err(_) => self.held.release(store_unavailable_reply()),
            Ok(AttemptFinding::NotOver { retry_after_secs }) => self
                .held
                .release(Reply::Problem(order_in_progress(retry_after_secs))),
            Ok(found) => Step::SettleOrder(SettleOrder {
                held: self.held,
                asked_at: self.asked_at,
                asked: self.attempt,
                found,
            }),
        }
    }
}

/// Telling the order's object what the attempt's key said; then
/// [`SettleOrder::handle_settled`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SettleOrder {
    held: Held,
    asked_at: UnixMs,
    asked: OrderAttempt,
    found: AttemptFinding,
}

impl SettleOrder {
    /// The name of the order's object.
    pub fn name(&self) -> String {
        order_record::storage_name(&self.held.checked.claims)
    }

    /// The attempt asked about.
    pub fn asked(&self) -> &OrderAttempt {
        &self.asked
    }

    /// What its key said.
    pub fn found(&self) -> &AttemptFinding {
        &self.found
    }

    /// The attempt asking.
    pub fn attempt(&self) -> OrderAttempt {
        self.held.attempt()
    }

    /// Acts on the order's decision, as [`BeginOrder::handle_begin`].
    pub fn handle_settled(self, decided: Result<OrderDecision, StoreFailure>, now: UnixMs) -> Step {
        match decided {
            Ok(decided) => self.held.follow_order(decided, self.asked_at, now),
            Err(_) => self.held.release(store_unavailable_reply()),
        }
    }
}

/// Asking the backend what it did under the key; then
/// [`Lookup::handle_lookup`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lookup {
    held: Held,
    /// When the lookup is sent: the shell sends it as soon as it is asked.
    sent_at: UnixMs,
}

impl Lookup {
    /// The lookup's URL.
    pub fn url(&self) -> String {
        let config = &self.held.checked.config;
        config.backend.lookup_url(
            &config.backend_url,
            &self.held.checked.request.key.backend_key(),
        )
    }

    /// The backend credential, sent as `Authorization: Bearer`.
    pub fn authorization(&self) -> Option<&str> {
        self.held.checked.authorization.as_deref()
    }

    /// How long to wait for the answer.
    pub fn timeout(&self) -> Duration {
        self.held.checked.config.backend_timeout
    }

    /// What the lookup must find to be the key's charge.
    pub fn expected(&self) -> ExpectedCharge {
        self.held.checked.expected()
    }

    /// Hands what the lookup found to the key's object at `now`.
    pub fn handle_lookup(self, found: LookupOutcome, now: UnixMs) -> Step {
        let (found, failure) = found.found(self.sent_at);
        Step::Settle(Settle {
            held: self.held,
            found,
            failure,
            asked_at: now,
        })
    }
}

/// Settling the claim with what the lookup found; then
/// [`Settle::handle_settlement`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Settle {
    held: Held,
    found: Found,
    failure: Option<Problem>,
    /// When the settlement was asked for: a renewed lease counts from a
    /// moment no earlier than this.
    asked_at: UnixMs,
}

impl Settle {
    /// The claim being settled.
    pub fn token(&self) -> ClaimToken {
        self.held.token
    }

    /// The request's fingerprint.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.held.checked.request.fingerprint
    }

    /// What the lookup found.
    pub fn found(&self) -> &Found {
        &self.found
    }

    /// Acts on what the key's object made of the lookup.
    pub fn handle_settlement(self, settled: Result<Settlement, StoreFailure>, now: UnixMs) -> Step {
        let cache = |response: &StoredResponse| CacheWrite {
            name: self.held.checked.name.clone(),
            completed: Completed {
                fingerprint: self.held.checked.request.fingerprint.clone(),
                response: response.clone(),
                expires_at: now.plus(self.held.checked.config.answer_ttl),
            },
            ttl: self.held.checked.config.answer_ttl,
        };
        match settled {
            // The claim stays until its lease runs out; then the key is
            // unknown again and the object reconciles it itself.
            Err(_) => store_unavailable(),
            Ok(Settlement::Answered { response } | Settlement::AlreadyAnswered { response }) => {
                Step::Done(Done {
                    cache: Some(cache(&response)),
                    reply: shown(response, true, View::Customer),
                })
            }
            Ok(Settlement::NotCharged { response }) => Step::Done(Done {
                cache: Some(cache(&response)),
                reply: shown(response, false, View::Customer),
            }),
            // A key in doubt may never have asked for its order (its claim
            // ran out before it did): it asks now, like any forward.
            Ok(Settlement::Forward) => self.held.begin_order(self.asked_at, now),
            Ok(Settlement::Pending { retry_after_secs }) => in_flight(
                "the outcome of an earlier request with this Idempotency-Key is being confirmed with the payment backend; nothing was forwarded; retry with the same key",
                retry_after_secs,
            ),
            Ok(Settlement::LookupFailed) => problem(self.failure.unwrap_or_else(|| {
                Problem::new(
                    ProblemType::BackendUnavailable,
                    "the payment backend could not confirm an earlier attempt; retry with the same key",
                )
                .retry_after(1)
            })),
            Ok(Settlement::NotHeld) => in_flight(
                "another request took this Idempotency-Key over while its outcome was being confirmed; retry with the same key",
                1,
            ),
        }
    }
}

/// Sending the order to the backend; then [`Forward::handle_forward`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Forward {
    held: Held,
    request: BackendRequest,
    backend_key: String,
}

impl Forward {
    /// What to send.
    pub fn request(&self) -> &BackendRequest {
        &self.request
    }

    /// The `Idempotency-Key` the backend gets: scoped to the customer, so an
    /// idempotent backend is a second safety net that never joins customers.
    pub fn backend_key(&self) -> &str {
        &self.backend_key
    }

    /// The backend credential, sent as `Authorization: Bearer`.
    pub fn authorization(&self) -> Option<&str> {
        self.held.checked.authorization.as_deref()
    }

    /// How long to wait for the answer.
    pub fn timeout(&self) -> Duration {
        self.held.checked.config.backend_timeout
    }

    /// Ends the claim as the backend's answer says.
    pub fn handle_forward(self, outcome: BackendOutcome) -> Step {
        let token = self.held.token;
        match outcome {
            BackendOutcome::Final(response) => Step::Complete(Complete {
                held: self.held,
                response,
            }),
            BackendOutcome::NotCharged(problem) => Step::Release(Release {
                token,
                reply: Reply::Problem(problem),
            }),
            BackendOutcome::Unknown(problem) => Step::Abandon(Abandon {
                token,
                ran: true,
                problem,
            }),
            BackendOutcome::SavedUnknown(problem) => Step::Abandon(Abandon {
                token,
                ran: false,
                problem,
            }),
            // The request may still be running at the backend: the claim
            // stays until its lease runs out; then the key is unknown and
            // reconciled.
            BackendOutcome::StillRunning(refused) => problem(refused),
        }
    }
}

/// Storing the backend's final answer; then [`Complete::handle_complete`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Complete {
    held: Held,
    response: StoredResponse,
}

impl Complete {
    /// The claim being completed.
    pub fn token(&self) -> ClaimToken {
        self.held.token
    }

    /// The fingerprint of the request that was forwarded.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.held.checked.request.fingerprint
    }

    /// The backend's answer.
    pub fn response(&self) -> &StoredResponse {
        &self.response
    }

    /// Says what the client gets once the object has the answer.
    pub fn handle_complete(
        self,
        stored: Result<CompleteOutcome, StoreFailure>,
        now: UnixMs,
    ) -> Step {
        let reply = |response| shown(response, false, View::Customer);
        match stored {
            Ok(CompleteOutcome::Stored) => {
                let config = &self.held.checked.config;
                Step::Done(Done {
                    cache: Some(CacheWrite {
                        name: self.held.checked.name.clone(),
                        completed: Completed {
                            fingerprint: self.held.checked.request.fingerprint.clone(),
                            response: self.response.clone(),
                            expires_at: now.plus(config.answer_ttl),
                        },
                        ttl: config.answer_ttl,
                    }),
                    reply: reply(self.response),
                })
            }
            // Every client of the key sees the answer stored first.
            Ok(CompleteOutcome::AlreadyCompleted { response }) => replay(response, View::Customer),
            Ok(CompleteOutcome::NotStored) => done(reply(self.response)),
            // The backend answered, and the customer must hear it. The claim
            // stays until its lease runs out; then the object reconciles the
            // key and finds this very answer.
            Err(_) => done(reply(self.response)),
        }
    }
}

/// Giving the key back; then [`Release::handle_release`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Release {
    token: ClaimToken,
    reply: Reply,
}

impl Release {
    /// The claim being released.
    pub fn token(&self) -> ClaimToken {
        self.token
    }

    /// Replies with what ended the claim: a problem, or the order's paid
    /// answer. A failed release changes nothing for the client: the lease
    /// frees the key instead.
    pub fn handle_release(self, _released: Result<bool, StoreFailure>) -> Step {
        done(self.reply)
    }
}

/// Ending the claim with an unknown outcome; then
/// [`Abandon::handle_abandon`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Abandon {
    token: ClaimToken,
    ran: bool,
    problem: Problem,
}

impl Abandon {
    /// The claim being abandoned.
    pub fn token(&self) -> ClaimToken {
        self.token
    }

    /// Whether the forward may have run at the backend: false when the
    /// backend replayed a failure saved for an earlier request (see
    /// [`crate::KeyRecord::abandon`]).
    pub fn ran(&self) -> bool {
        self.ran
    }

    /// Replies with the problem that ended the claim. A failed abandon
    /// changes nothing for the client: when the lease runs out the key is
    /// unknown all the same.
    pub fn handle_abandon(self, _abandoned: Result<bool, StoreFailure>) -> Step {
        problem(self.problem)
    }
}

/// What a refresh needs: where the backend is, and which key's object holds
/// the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefreshTarget {
    config: EdgeConfig,
    authorization: Option<String>,
    /// The key's object ([`ScopedKey::storage_name`]).
    name: String,
    /// The key the backend knows ([`ScopedKey::backend_key`]).
    backend_key: String,
    /// Who is shown the answer.
    view: View,
}

/// The key's stored answer, refreshed first when its intent may have
/// changed since (it awaited the customer's authentication, or was
/// processing): the retry after authentication then reports the outcome
/// under the same key, and so does the status lookup.
fn replay_or_refresh(target: RefreshTarget, stored: StoredResponse) -> Step {
    match unsettled_intent(&stored) {
        Some(intent_id) => Step::Refresh(Refresh {
            target,
            stored,
            intent_id,
        }),
        None => replay(stored, target.view),
    }
}

/// Asking the backend how a stored answer's intent stands now; then
/// [`Refresh::handle_refresh`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Refresh {
    target: RefreshTarget,
    stored: StoredResponse,
    intent_id: String,
}

impl Refresh {
    /// The `GET` to send ([`crate::BackendKind::refresh_url`]).
    pub fn url(&self) -> String {
        let config = &self.target.config;
        config.backend.refresh_url(
            &config.backend_url,
            &self.intent_id,
            &self.target.backend_key,
        )
    }

    /// The backend credential, sent as `Authorization: Bearer`.
    pub fn authorization(&self) -> Option<&str> {
        self.target.authorization.as_deref()
    }

    /// How long to wait for the answer.
    pub fn timeout(&self) -> Duration {
        self.target.config.backend_timeout
    }

    /// Stores the intent as it is now if it changed; replays the stored
    /// answer if it did not, or if the backend could not say (the client
    /// asks again).
    pub fn handle_refresh(self, answer: Result<BackendResponse, TransportFailure>) -> Step {
        let refreshed = answer.ok().and_then(|answer| {
            classify_refresh(
                self.target.config.backend,
                &self.stored,
                &self.intent_id,
                answer.status,
                &answer.body,
            )
        });
        match refreshed {
            Some(response) => Step::SaveRefresh(SaveRefresh {
                target: self.target,
                previous: self.stored,
                response,
            }),
            None => replay(self.stored, self.target.view),
        }
    }
}

/// Storing a refreshed answer; then [`SaveRefresh::handle_saved`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SaveRefresh {
    target: RefreshTarget,
    previous: StoredResponse,
    response: StoredResponse,
}

impl SaveRefresh {
    /// The name of the key's object.
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// The stored answer that was refreshed.
    pub fn previous(&self) -> &StoredResponse {
        &self.previous
    }

    /// The refreshed answer.
    pub fn response(&self) -> &StoredResponse {
        &self.response
    }

    /// Replies with the key's answer as the object now holds it, copied to
    /// KV when this refresh stored it. A failed save still tells the client
    /// what the backend said; the next replay refreshes again.
    pub fn handle_saved(self, saved: Result<Refreshed, StoreFailure>) -> Step {
        match saved {
            Ok(Refreshed::Stored(completed)) => Step::Done(Done {
                cache: Some(CacheWrite {
                    name: self.target.name,
                    ttl: self.target.config.answer_ttl,
                    completed,
                }),
                reply: shown(self.response, true, self.target.view),
            }),
            Ok(Refreshed::Superseded { response }) => replay(response, self.target.view),
            Ok(Refreshed::NotStored) | Err(_) => replay(self.response, self.target.view),
        }
    }
}

/// Asking the key's object for its status; then
/// [`QueryStatus::handle_status`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryStatus {
    target: RefreshTarget,
}

impl QueryStatus {
    /// The name of the key's object.
    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// Replies with what the object knows.
    pub fn handle_status(self, status: Result<KeyStatus, StoreFailure>) -> Step {
        match status {
            Err(_) => store_unavailable(),
            Ok(KeyStatus::Answered { response }) => replay_or_refresh(self.target, response),
            Ok(KeyStatus::Pending { retry_after_secs }) => problem(
                Problem::new(
                    ProblemType::OrderPending,
                    "the order under this Idempotency-Key is being placed or its outcome confirmed; ask again later",
                )
                .retry_after(retry_after_secs),
            ),
            Ok(KeyStatus::NotFound) => problem(Problem::new(
                ProblemType::OrderNotFound,
                "nothing is recorded under this Idempotency-Key for this customer: no order was placed with it, or its answer has expired",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> EdgeConfig {
        EdgeConfig::from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
    }

    fn head() -> RequestHead<'static> {
        RequestHead {
            method: "POST",
            content_type: Some("application/json"),
            content_length: None,
            idempotency_key: Some("rate-limit-key-000001"),
        }
    }

    fn limit(step: Step) -> Limit {
        match step {
            Step::Limit(limit) => limit,
            other => panic!("expected the client's limit first, got {other:?}"),
        }
    }

    #[test]
    fn every_request_first_asks_the_clients_limit() {
        let on = config(&[]);
        let asked = limit(order(head(), Some("203.0.113.9"), &on, Secrets::default()));
        assert_eq!(asked.limiter(), Limiter::Client);
        assert_eq!(asked.key(), "client:203.0.113.9");
        // Allowed, or the limit cannot answer: the request goes on.
        assert!(matches!(
            asked.clone().handle_limit(Ok(true), UnixMs(0)),
            Step::ReadBody(_)
        ));
        assert!(matches!(
            asked
                .clone()
                .handle_limit(Err(StoreFailure("down".into())), UnixMs(0)),
            Step::ReadBody(_)
        ));
        // Refused: 429 with the limits' period as Retry-After.
        let Step::Done(Done {
            reply: Reply::Problem(refused),
            cache: None,
        }) = asked.handle_limit(Ok(false), UnixMs(0))
        else {
            panic!("a refusal ends the request")
        };
        assert_eq!(refused.kind, ProblemType::RateLimited);
        assert_eq!(refused.retry_after_secs, Some(RATE_LIMIT_RETRY_AFTER_SECS));
        // A malformed request is counted too, before its refusal.
        let bad = RequestHead {
            method: "PUT",
            ..head()
        };
        let asked = limit(order(bad, None, &on, Secrets::default()));
        assert_eq!(asked.key(), "client:unknown");
        assert!(matches!(
            asked.handle_limit(Ok(true), UnixMs(0)),
            Step::Done(_)
        ));
        // A status lookup too.
        let lookup = StatusHead::default();
        let asked = limit(status(
            lookup,
            Some("203.0.113.9"),
            &on,
            &Secrets::default(),
            UnixMs(0),
        ));
        assert_eq!(asked.limiter(), Limiter::Client);
    }

    #[test]
    fn without_rate_limits_nothing_is_asked() {
        let off = config(&[("RATE_LIMITS", "off")]);
        assert!(matches!(
            order(head(), Some("203.0.113.9"), &off, Secrets::default()),
            Step::ReadBody(_)
        ));
    }
}
