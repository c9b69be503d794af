//! The client's side of exactly-once checkout: one checkout attempt, its
//! idempotency key, and when to send, ask, retry, wait or stop.
//!
//! The widget owns the I/O (fetch, timers, storage, the DOM) and feeds this
//! state machine its inputs: a click ([`Attempt::submit`]), a reload
//! ([`Attempt::resume`]), an answer to an order
//! ([`Attempt::handle_response`]) or to a status lookup
//! ([`Attempt::handle_status`]), a request that produced no answer
//! ([`Attempt::handle_transport_failure`]), a timer
//! ([`Attempt::handle_timeout`], armed from [`Attempt::poll_timeout`]), the
//! browser coming back online ([`Attempt::handle_online`]) and a fresh order
//! token from the page ([`Attempt::handle_token`]). Time (Unix ms), the fresh
//! key and the jitter are passed in.
//!
//! The rules: a key lives as long as its attempt. It is kept across every
//! retry and reload, across an unknown outcome (network error, timeout, 5xx,
//! retries exhausted) and across an expired order token, because the first
//! request may have charged and only the same key lets the edge answer with
//! that charge. It is replaced only after a final answer (the order was
//! placed, or definitively refused), and the payload may change only once the
//! attempt has one: an unconfirmed attempt is first settled through the
//! edge's status lookup, which never charges.

use crate::payment::{self, PaymentOutcome};
use crate::problem::ProblemType;

/// The first line of [`Attempt::encode`]'s form; a change of format bumps it.
const STORAGE_VERSION: &str = "chargeonce-attempt/2";
/// The previous form, still read so an attempt saved before an upgrade keeps
/// its key.
const STORAGE_VERSION_1: &str = "chargeonce-attempt/1";

/// Fresh order tokens asked for in one run of sends, at most: a page that
/// keeps handing out expired ones cannot keep the widget sending for ever.
pub const MAX_TOKEN_REFRESHES: u32 = 3;

/// Times the page is asked to authenticate one run's payment: a handler that
/// returns without the customer authenticating cannot keep the widget
/// asking for ever.
pub const MAX_ACTIONS: u32 = 2;

/// What a refused attempt says when the payment needs the customer to
/// authenticate and the page gave the widget no way to ask them.
pub const NO_ACTION_HANDLER: &str =
    "The card needs confirming with the bank, and this page has no handleAction.";

/// What a refused attempt says when the edge takes no orders from the
/// page's origin (403 `origin-not-allowed`): the store's setup must change,
/// not the customer's order.
pub const ORIGIN_NOT_ALLOWED: &str = "This store is not set up to take orders here.";

/// How a client retries. The defaults follow Stripe's clients: 0.5 s
/// doubling to 5 s, with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// The first backoff ceiling, in ms.
    pub base_ms: u64,
    /// The largest backoff ceiling, in ms.
    pub cap_ms: u64,
    /// Retries after the first send, at most. Waits the edge asks for (a
    /// 409 while another request holds the key, a 202 while an outcome is
    /// confirmed) are not retries.
    pub max_retries: u32,
    /// No retry is scheduled to start later than this after the first send.
    /// It must outlast the edge's lease plus two backend timeouts (a lookup
    /// and a forward): a client that gives up sooner leaves a key unsettled
    /// while the customer watches.
    pub max_total_ms: u64,
    /// How long one request may take before it is abandoned.
    pub request_timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_ms: 500,
            cap_ms: 5_000,
            max_retries: 5,
            max_total_ms: 60_000,
            request_timeout_ms: 10_000,
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the delay before retry number `retry` (1-based):
    /// `min(cap, base * 2^(retry-1))`.
    pub fn ceiling_ms(&self, retry: u32) -> u64 {
        let doublings = retry.saturating_sub(1).min(63);
        self.base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.cap_ms)
    }

    /// The delay before retry number `retry`: "full jitter" (a uniform pick in
    /// `[0, ceiling]`, with `jitter` in `[0, 1]` supplied by the caller), but
    /// never sooner than the server's `Retry-After`.
    pub fn next_delay_ms(&self, retry: u32, jitter: f64, retry_after_ms: Option<u64>) -> u64 {
        let jittered = (self.ceiling_ms(retry) as f64 * jitter.clamp(0.0, 1.0)).round() as u64;
        jittered.max(retry_after_ms.unwrap_or(0))
    }
}

/// Which request an attempt sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exchange {
    /// `POST /v1/orders`: place the order (or get its stored answer).
    Order,
    /// `GET /v1/orders`: ask what became of the key, never charging.
    Status,
}

impl Exchange {
    fn as_str(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::Status => "status",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Order, Self::Status]
            .into_iter()
            .find(|e| e.as_str() == name)
    }
}

/// Where an attempt stands.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The order is on its way (or was, when the page was unloaded).
    Sending,
    /// A status lookup is on its way.
    Checking,
    /// Waiting before the next request.
    Backoff {
        /// When to send again (Unix ms).
        until_ms: u64,
        /// Why the last request did not succeed.
        reason: RetryReason,
        /// What to send then.
        then: Exchange,
    },
    /// The browser is offline; the next request waits for the `online` event.
    Offline {
        /// What to send then.
        then: Exchange,
    },
    /// The order token expired; waiting for the page to supply a fresh one.
    NeedsToken {
        /// What to send again with it.
        then: Exchange,
    },
    /// The order was placed. Final.
    Placed {
        /// The backend's answer, as the edge sent it.
        body: String,
        /// Whether the edge replayed it.
        replayed: bool,
        /// The key the order was paid under, when it was another attempt's
        /// (another device, a private window): the edge's
        /// `Original-Idempotency-Key`.
        original_key: Option<String>,
    },
    /// The payment awaits the customer's authentication with their bank
    /// (3-D Secure): nothing is charged until they do. The page's handler
    /// is showing the challenge; then the order is sent again with the same
    /// key for the outcome. A click meanwhile is ignored.
    ActionRequired {
        /// The intent, as the edge sent it: its `id`, `client_secret` and
        /// `next_action`.
        body: String,
    },
    /// The order was definitively refused (a decline, a failed
    /// authentication, another 4xx, or a final "not charged"). Final: the
    /// next submit starts a new attempt with a new key.
    Refused {
        /// The HTTP status.
        status: u16,
        /// What the server said, for the customer.
        message: String,
    },
    /// Retries stopped without an answer. The charge may or may not have
    /// happened; the next submit asks again with the same key.
    Unconfirmed,
    /// Another tab is placing this order, so this one sent nothing. The next
    /// submit tries again with the same key (which the tabs share).
    OtherTab,
    /// Another device's attempt at this order (same customer and order,
    /// another key) was still in progress when the time budget ran out.
    /// Nothing was charged under this key; the next submit asks again with
    /// it, and gets that attempt's outcome once it is over.
    OtherDevice,
}

/// Why a retry was needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    /// No answer: connection failure or timeout.
    ConnectionLost,
    /// The server answered that it is busy or the key is in use.
    ServerBusy,
    /// Another device's attempt at the order is in progress (409
    /// `order-in-progress`).
    OtherDevice,
}

impl RetryReason {
    /// The reason's name (`connection_lost`, `server_busy`), as events
    /// report it and [`Attempt::encode`] stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLost => "connection_lost",
            Self::ServerBusy => "server_busy",
            Self::OtherDevice => "other_device",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::ConnectionLost, Self::ServerBusy, Self::OtherDevice]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

/// One checkout attempt: the key, what it is for, and where it stands.
/// [`Attempt::encode`] and [`Attempt::decode`] let the widget keep it in
/// `sessionStorage` and resume it after a reload with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attempt {
    key: String,
    fingerprint: String,
    phase: Phase,
    /// Requests sent so far in the current run of retries.
    sends: u32,
    /// Fresh order tokens asked for in the current run (not stored: a
    /// reload starts a new run).
    refreshes: u32,
    /// Authentications asked for in the current run (not stored).
    actions: u32,
    /// When the current run of retries started (Unix ms).
    started_at_ms: u64,
}

/// An HTTP response from the edge, as the client reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeResponse<'a> {
    /// The status.
    pub status: u16,
    /// The body, as text.
    pub body: &'a str,
    /// The server's words for a refusal, if the shell found any in the body:
    /// a problem+json `detail` or a Stripe-style `error.message`. (The
    /// shell reads the JSON; the widget uses the browser's parser, which
    /// keeps a Rust one out of its bundle.)
    pub message: Option<&'a str>,
    /// The problem+json `type`, read back with [`ProblemType::from_uri`].
    pub problem: Option<ProblemType>,
    /// Whether `Idempotent-Replayed: true` was sent: the key's stored answer.
    pub replayed: bool,
    /// The `Retry-After` header, in seconds, if any.
    pub retry_after_secs: Option<u64>,
    /// The body's `status` member, if the shell found one: a PaymentIntent's
    /// status, which says what a 2xx means ([`payment::outcome_of`]).
    pub payment_status: Option<&'a str>,
    /// The `Original-Idempotency-Key` header: the order was paid under that
    /// key, another attempt's.
    pub original_key: Option<&'a str>,
}

impl<'a> EdgeResponse<'a> {
    /// A response with this status and body, not replayed, no
    /// `Retry-After`, no problem type.
    pub fn new(status: u16, body: &'a str) -> Self {
        Self {
            status,
            body,
            message: None,
            problem: None,
            replayed: false,
            retry_after_secs: None,
            payment_status: None,
            original_key: None,
        }
    }

    fn token_expired(&self) -> bool {
        self.status == 403 && !self.replayed && self.problem == Some(ProblemType::OrderTokenExpired)
    }
}

/// Why a click was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IgnoreReason {
    /// A request for this attempt is in flight or scheduled.
    Busy,
    /// This exact order was already placed.
    AlreadyPlaced,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub enum Next {
    /// Send the order now, with this key.
    Send {
        /// The `Idempotency-Key`.
        key: String,
    },
    /// Ask the edge's status lookup what became of this key.
    FetchStatus {
        /// The `Idempotency-Key`.
        key: String,
    },
    /// Ask the page for a fresh order token, then call
    /// [`Attempt::handle_token`] (or [`Attempt::handle_no_token`]).
    NeedToken,
    /// Wait; call [`Attempt::handle_timeout`] at [`Attempt::poll_timeout`].
    Wait,
    /// Wait for the browser to come online.
    WaitForOnline,
    /// Ask the customer to authenticate the payment in
    /// [`Phase::ActionRequired`] (the page's `handleAction`), then call
    /// [`Attempt::handle_action_done`], or
    /// [`Attempt::handle_no_action_handler`] if the page has none.
    HandleAction,
    /// The attempt reached a final phase or gave up; see [`Attempt::phase`].
    Stop,
    /// Do nothing: the click is a duplicate or the order is already placed.
    Ignore(IgnoreReason),
}

impl Attempt {
    /// Handles a click on "Place order" for a payload with `fingerprint`.
    /// `current` is the attempt so far (from memory or storage), `new_key`
    /// makes a fresh key if one is needed, `online` is `navigator.onLine`.
    pub fn submit(
        current: Option<Self>,
        fingerprint: &str,
        now_ms: u64,
        online: bool,
        new_key: impl FnOnce() -> String,
    ) -> (Self, Next) {
        let (key, exchange) = match current {
            Some(a) if a.is_busy() => return (a, Next::Ignore(IgnoreReason::Busy)),
            Some(a) if a.fingerprint == fingerprint && matches!(a.phase, Phase::Placed { .. }) => {
                return (a, Next::Ignore(IgnoreReason::AlreadyPlaced))
            }
            Some(a) if matches!(a.phase, Phase::Placed { .. } | Phase::Refused { .. }) => {
                (new_key(), Exchange::Order)
            }
            // Unconfirmed: the same payload retries with its key; another
            // payload waits until the earlier one is settled.
            Some(a) if a.fingerprint == fingerprint => (a.key, Exchange::Order),
            Some(mut a) => {
                a.new_run(now_ms);
                let next = a.send_or_wait(online, Exchange::Status);
                return (a, next);
            }
            None => (new_key(), Exchange::Order),
        };
        let mut attempt = Self {
            key,
            fingerprint: fingerprint.to_owned(),
            phase: Phase::Sending,
            sends: 0,
            refreshes: 0,
            actions: 0,
            started_at_ms: now_ms,
        };
        let next = attempt.send_or_wait(online, exchange);
        (attempt, next)
    }

    /// Picks an attempt up after a reload. An attempt without a final answer
    /// is settled first through the status lookup: the earlier request may
    /// have charged, and nothing is sent until the edge says what became of
    /// it. Final phases stay as they are.
    pub fn resume(&mut self, now_ms: u64, online: bool) -> Next {
        if matches!(self.phase, Phase::Placed { .. } | Phase::Refused { .. }) {
            return Next::Stop;
        }
        self.new_run(now_ms);
        self.send_or_wait(online, Exchange::Status)
    }

    /// The page's handler for [`Next::HandleAction`] returned (whether the
    /// customer authenticated or not): the order is sent again with the
    /// same key, and the edge answers with the payment as it is now.
    pub fn handle_action_done(&mut self, now_ms: u64, online: bool) -> Next {
        if !matches!(self.phase, Phase::ActionRequired { .. }) {
            return Next::Stop;
        }
        let actions = self.actions;
        self.new_run(now_ms);
        self.actions = actions;
        self.send_or_wait(online, Exchange::Order)
    }

    /// The page has no handler for [`Next::HandleAction`]: the customer
    /// cannot authenticate, so nothing will be charged under this attempt,
    /// and the next click starts a new one (another card, say).
    pub fn handle_no_action_handler(&mut self) -> Next {
        if matches!(self.phase, Phase::ActionRequired { .. }) {
            self.refuse(200, Some(NO_ACTION_HANDLER));
        }
        Next::Stop
    }

    fn new_run(&mut self, now_ms: u64) {
        self.started_at_ms = now_ms;
        self.sends = 0;
        self.refreshes = 0;
        self.actions = 0;
    }

    /// An answer that is the key's 2xx: what its payment status means.
    /// `same_payload` is false for a status lookup of an attempt whose cart
    /// the page no longer shows: its payment cannot be authenticated from
    /// here (the order cannot be sent again), so it will charge nothing.
    fn handle_success(&mut self, response: &EdgeResponse<'_>, same_payload: bool) -> Next {
        match payment::outcome_of(response.payment_status) {
            PaymentOutcome::Placed => {
                self.phase = Phase::Placed {
                    body: response.body.to_owned(),
                    replayed: response.replayed,
                    original_key: response.original_key.map(str::to_owned),
                };
                Next::Stop
            }
            PaymentOutcome::ActionRequired if same_payload && self.actions < MAX_ACTIONS => {
                self.actions += 1;
                self.phase = Phase::ActionRequired {
                    body: response.body.to_owned(),
                };
                Next::HandleAction
            }
            // Asked often enough in this run, and still not authenticated:
            // the next click sends the order again with the key and asks
            // again.
            PaymentOutcome::ActionRequired if same_payload => {
                self.phase = Phase::Unconfirmed;
                Next::Stop
            }
            PaymentOutcome::ActionRequired | PaymentOutcome::Refused => {
                self.refuse(response.status, response.message);
                Next::Stop
            }
        }
    }

    /// Handles the edge's response to the order; `jitter` is a uniform pick
    /// in `[0, 1]`.
    pub fn handle_response(
        &mut self,
        response: &EdgeResponse<'_>,
        now_ms: u64,
        jitter: f64,
        policy: &RetryPolicy,
    ) -> Next {
        if self.phase != Phase::Sending {
            // A late answer to a request we already gave up on.
            return Next::Stop;
        }
        let wait = |counts| Wait {
            reason: RetryReason::ServerBusy,
            retry_after_ms: response.retry_after_secs.map(|s| s.saturating_mul(1000)),
            counts,
            then: Exchange::Order,
        };
        match response.status {
            200..=299 => self.handle_success(response, true),
            _ if response.token_expired() => self.need_token(Exchange::Order, now_ms, policy),
            // The order was paid under another key, for another total:
            // nothing was charged now, and nothing will be.
            409 if response.problem == Some(ProblemType::OrderAlreadyPaid) => {
                self.refuse(409, response.message);
                Next::Stop
            }
            // Another device's attempt at the order is in progress: wait
            // for its outcome as for a lease, for as long as the budget
            // allows.
            409 if response.problem == Some(ProblemType::OrderInProgress) => {
                let wait = Wait {
                    reason: RetryReason::OtherDevice,
                    ..wait(false)
                };
                self.schedule(wait, now_ms, jitter, policy)
            }
            // Another request holds the key: its `Retry-After` is when its
            // lease ends, and waiting it out is not a failed retry.
            409 => self.schedule(wait(false), now_ms, jitter, policy),
            // The edge takes no orders from this page's origin
            // (ALLOWED_ORIGINS). Nothing was sent on, and no retry can help;
            // the edge's words are for the merchant, not the customer.
            403 if response.problem == Some(ProblemType::OriginNotAllowed) => {
                self.refuse(403, Some(ORIGIN_NOT_ALLOWED));
                Next::Stop
            }
            // Refused as often as the store allows: no retry can help.
            429 if response.problem == Some(ProblemType::OrderAttemptsExhausted) => {
                self.refuse(429, response.message);
                Next::Stop
            }
            // A rate limit, or a busy backend.
            429 | 502..=504 => self.schedule(wait(true), now_ms, jitter, policy),
            status @ 400..=499 => {
                self.refuse(status, response.message);
                Next::Stop
            }
            // Any other answer says nothing certain about the charge.
            _ => {
                self.phase = Phase::Unconfirmed;
                Next::Stop
            }
        }
    }

    /// Handles the edge's response to a status lookup. `same_payload` says
    /// whether the page still shows this attempt's payload: if nothing was
    /// recorded under the key, that payload is sent with it; another payload
    /// learns that the earlier attempt charged nothing.
    pub fn handle_status(
        &mut self,
        response: &EdgeResponse<'_>,
        now_ms: u64,
        jitter: f64,
        policy: &RetryPolicy,
        same_payload: bool,
    ) -> Next {
        if self.phase != Phase::Checking {
            return Next::Stop;
        }
        let wait = |counts| Wait {
            reason: RetryReason::ServerBusy,
            retry_after_ms: response.retry_after_secs.map(|s| s.saturating_mul(1000)),
            counts,
            then: Exchange::Status,
        };
        match response.status {
            // An intent still awaiting authentication (the edge's refresh
            // failed, or the customer has not authenticated yet): the order
            // sent again with the key asks once more before the page is
            // asked to authenticate it a second time.
            200..=299
                if response.replayed
                    && same_payload
                    && payment::outcome_of(response.payment_status)
                        == PaymentOutcome::ActionRequired =>
            {
                self.phase = Phase::Sending;
                Next::Send {
                    key: self.key.clone(),
                }
            }
            // The key's stored answer, whatever its status.
            200..=299 if response.replayed => self.handle_success(response, same_payload),
            status if response.replayed => {
                self.refuse(status, response.message);
                Next::Stop
            }
            202 => self.schedule(wait(false), now_ms, jitter, policy),
            404 if same_payload => {
                self.phase = Phase::Sending;
                Next::Send {
                    key: self.key.clone(),
                }
            }
            404 => {
                self.refuse(404, response.message);
                Next::Stop
            }
            _ if response.token_expired() => self.need_token(Exchange::Status, now_ms, policy),
            409 | 429 | 502..=504 => self.schedule(wait(true), now_ms, jitter, policy),
            _ => {
                self.phase = Phase::Unconfirmed;
                Next::Stop
            }
        }
    }

    /// Handles a request that produced no answer (network error or the
    /// per-request timeout). Offline, it waits for the network rather than
    /// spending a retry.
    pub fn handle_transport_failure(
        &mut self,
        now_ms: u64,
        online: bool,
        jitter: f64,
        policy: &RetryPolicy,
    ) -> Next {
        let Some(then) = self.in_flight() else {
            return Next::Stop;
        };
        if !online {
            self.phase = Phase::Offline { then };
            // The failed send did not reach anyone we know of: give it back.
            self.sends = self.sends.saturating_sub(1);
            return Next::WaitForOnline;
        }
        let wait = Wait {
            reason: RetryReason::ConnectionLost,
            retry_after_ms: None,
            counts: true,
            then,
        };
        self.schedule(wait, now_ms, jitter, policy)
    }

    /// Handles the page's fresh order token: the refused request is sent
    /// again with the same key.
    pub fn handle_token(&mut self, online: bool) -> Next {
        match self.phase {
            Phase::NeedsToken { then } => self.send_or_wait(online, then),
            _ => Next::Stop,
        }
    }

    /// Handles the page having no fresh order token to give: the outcome
    /// stays unconfirmed, with the key kept for the next click.
    pub fn handle_no_token(&mut self) -> Next {
        if matches!(self.phase, Phase::NeedsToken { .. }) {
            self.phase = Phase::Unconfirmed;
        }
        Next::Stop
    }

    /// Handles finding that another tab holds this order (the widget asks
    /// the browser's Web Locks before each run of sends). Nothing was sent;
    /// the send this run counted is given back.
    pub fn handle_held_elsewhere(&mut self) -> Next {
        if self.in_flight().is_some() {
            self.sends = self.sends.saturating_sub(1);
            self.phase = Phase::OtherTab;
        }
        Next::Stop
    }

    /// When the next timer is due (Unix ms), if one is.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            Phase::Backoff { until_ms, .. } => Some(until_ms),
            _ => None,
        }
    }

    /// Handles the timer armed from [`Self::poll_timeout`].
    pub fn handle_timeout(&mut self, now_ms: u64, online: bool) -> Next {
        match self.phase {
            Phase::Backoff { until_ms, then, .. } if now_ms >= until_ms => {
                self.send_or_wait(online, then)
            }
            Phase::Backoff { .. } => Next::Wait,
            _ => Next::Stop,
        }
    }

    /// Handles the browser's `online` event.
    pub fn handle_online(&mut self, now_ms: u64) -> Next {
        match self.phase {
            Phase::Offline { then } => {
                // Time spent offline is not the server's fault: the time
                // budget starts again.
                self.started_at_ms = now_ms;
                self.send_or_wait(true, then)
            }
            _ => Next::Stop,
        }
    }

    /// The attempt's idempotency key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fingerprint of the payload the key belongs to.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Where the attempt stands.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Requests sent in the current run, the first included; waits the edge
    /// asked for are not counted.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// Whether the attempt is working (a click now is ignored).
    pub fn is_busy(&self) -> bool {
        matches!(
            self.phase,
            Phase::Sending
                | Phase::Checking
                | Phase::Backoff { .. }
                | Phase::Offline { .. }
                | Phase::NeedsToken { .. }
                | Phase::ActionRequired { .. }
        )
    }

    /// A compact text form for browser storage: six lines of fields, then
    /// the placed body or the refusal message (which may span lines).
    ///
    /// Written by hand rather than with serde_json because the widget ships
    /// this code to browsers, and a JSON reader doubles its bundle.
    pub fn encode(&self) -> String {
        let (phase, rest) = match &self.phase {
            Phase::Sending => ("sending".to_owned(), ""),
            Phase::Checking => ("checking".to_owned(), ""),
            Phase::Backoff {
                until_ms,
                reason,
                then,
            } => (
                format!("backoff {until_ms} {} {}", reason.as_str(), then.as_str()),
                "",
            ),
            Phase::Offline { then } => (format!("offline {}", then.as_str()), ""),
            Phase::NeedsToken { then } => (format!("needs_token {}", then.as_str()), ""),
            Phase::Placed {
                body,
                replayed,
                original_key,
            } => (
                match original_key {
                    Some(key) => format!("placed {} {key}", u8::from(*replayed)),
                    None => format!("placed {}", u8::from(*replayed)),
                },
                body.as_str(),
            ),
            // Stored as in flight: a reload settles it through the status
            // lookup, which answers with the intent again (or its outcome).
            Phase::ActionRequired { .. } => ("sending".to_owned(), ""),
            Phase::Refused { status, message } => (format!("refused {status}"), message.as_str()),
            Phase::Unconfirmed => ("unconfirmed".to_owned(), ""),
            Phase::OtherTab => ("other_tab".to_owned(), ""),
            Phase::OtherDevice => ("other_device".to_owned(), ""),
        };
        format!(
            "{STORAGE_VERSION}\n{}\n{}\n{}\n{}\n{phase}\n{rest}",
            self.key, self.fingerprint, self.sends, self.started_at_ms
        )
    }

    /// Reads [`Self::encode`]'s form (and the previous version's);
    /// `None` for anything else (another version, a damaged entry), which
    /// the widget treats as no attempt.
    pub fn decode(text: &str) -> Option<Self> {
        let mut lines = text.splitn(7, '\n');
        let version = lines.next()?;
        if version != STORAGE_VERSION && version != STORAGE_VERSION_1 {
            return None;
        }
        let key = lines.next().filter(|k| !k.is_empty())?.to_owned();
        let fingerprint = lines.next()?.to_owned();
        let sends = lines.next()?.parse().ok()?;
        let started_at_ms = lines.next()?.parse().ok()?;
        let mut words = lines.next()?.split(' ');
        let rest = lines.next()?.to_owned();
        // Version 1 had no `then`: every request it sent was the order.
        let then = |word: Option<&str>| match word {
            None => Some(Exchange::Order),
            Some(name) => Exchange::from_name(name),
        };
        let phase = match (words.next()?, words.next(), words.next(), words.next()) {
            ("sending", None, None, None) => Phase::Sending,
            ("checking", None, None, None) => Phase::Checking,
            ("backoff", Some(until), Some(reason), exchange) => Phase::Backoff {
                until_ms: until.parse().ok()?,
                reason: RetryReason::from_name(reason)?,
                then: then(exchange)?,
            },
            ("offline", exchange, None, None) => Phase::Offline {
                then: then(exchange)?,
            },
            ("needs_token", Some(exchange), None, None) => Phase::NeedsToken {
                then: Exchange::from_name(exchange)?,
            },
            ("placed", Some(replayed @ ("0" | "1")), original_key, None) => Phase::Placed {
                body: rest,
                replayed: replayed == "1",
                original_key: original_key.map(str::to_owned),
            },
            ("refused", Some(status), None, None) => Phase::Refused {
                status: status.parse().ok()?,
                message: rest,
            },
            ("unconfirmed", None, None, None) => Phase::Unconfirmed,
            ("other_tab", None, None, None) => Phase::OtherTab,
            ("other_device", None, None, None) => Phase::OtherDevice,
            _ => return None,
        };
        if words.next().is_some() {
            return None;
        }
        Some(Self {
            key,
            fingerprint,
            phase,
            sends,
            refreshes: 0,
            actions: 0,
            started_at_ms,
        })
    }

    /// What is in flight now, if anything.
    fn in_flight(&self) -> Option<Exchange> {
        match self.phase {
            Phase::Sending => Some(Exchange::Order),
            Phase::Checking => Some(Exchange::Status),
            _ => None,
        }
    }

    fn refuse(&mut self, status: u16, message: Option<&str>) {
        self.phase = Phase::Refused {
            status,
            message: message
                .map(str::to_owned)
                .unwrap_or_else(|| format!("the order was refused ({status})")),
        };
    }

    fn need_token(&mut self, then: Exchange, now_ms: u64, policy: &RetryPolicy) -> Next {
        let over_budget = now_ms.saturating_sub(self.started_at_ms) > policy.max_total_ms;
        if self.refreshes >= MAX_TOKEN_REFRESHES || over_budget {
            self.phase = Phase::Unconfirmed;
            return Next::Stop;
        }
        self.refreshes += 1;
        // Not a failed retry: the request never reached the question of the
        // charge.
        self.sends = self.sends.saturating_sub(1);
        self.phase = Phase::NeedsToken { then };
        Next::NeedToken
    }

    fn send_or_wait(&mut self, online: bool, exchange: Exchange) -> Next {
        if !online {
            self.phase = Phase::Offline { then: exchange };
            return Next::WaitForOnline;
        }
        self.sends += 1;
        let key = self.key.clone();
        match exchange {
            Exchange::Order => {
                self.phase = Phase::Sending;
                Next::Send { key }
            }
            Exchange::Status => {
                self.phase = Phase::Checking;
                Next::FetchStatus { key }
            }
        }
    }

    fn schedule(&mut self, wait: Wait, now_ms: u64, jitter: f64, policy: &RetryPolicy) -> Next {
        if !wait.counts {
            // A wait the edge asked for is not a retry: give the send back.
            self.sends = self.sends.saturating_sub(1);
        }
        let retry = self.sends.max(1); // the retry about to be scheduled, 1-based
        let until_ms = now_ms + policy.next_delay_ms(retry, jitter, wait.retry_after_ms);
        let over_budget = until_ms.saturating_sub(self.started_at_ms) > policy.max_total_ms;
        if (wait.counts && retry > policy.max_retries) || over_budget {
            // Waiting on another device is no doubt about this key: it
            // charged nothing.
            self.phase = if wait.reason == RetryReason::OtherDevice {
                Phase::OtherDevice
            } else {
                Phase::Unconfirmed
            };
            return Next::Stop;
        }
        self.phase = Phase::Backoff {
            until_ms,
            reason: wait.reason,
            then: wait.then,
        };
        Next::Wait
    }
}

/// A wait before the next request.
struct Wait {
    reason: RetryReason,
    retry_after_ms: Option<u64>,
    /// Whether it uses up one of the policy's retries.
    counts: bool,
    then: Exchange,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "fp-1";

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    fn fresh(now: u64) -> Attempt {
        let (attempt, action) = Attempt::submit(None, FP, now, true, || "key-1".into());
        assert_eq!(
            action,
            Next::Send {
                key: "key-1".into()
            }
        );
        attempt
    }

    fn respond(a: &mut Attempt, status: u16, now: u64) -> Next {
        a.handle_response(&EdgeResponse::new(status, "{}"), now, 1.0, &policy())
    }

    #[test]
    fn the_backoff_schedule_doubles_from_half_a_second_to_five() {
        let p = policy();
        let ceilings: Vec<_> = (1..=6).map(|n| p.ceiling_ms(n)).collect();
        assert_eq!(ceilings, [500, 1_000, 2_000, 4_000, 5_000, 5_000]);
    }

    #[test]
    fn full_jitter_scales_the_ceiling() {
        let p = policy();
        assert_eq!(p.next_delay_ms(3, 0.0, None), 0);
        assert_eq!(p.next_delay_ms(3, 0.25, None), 500);
        assert_eq!(p.next_delay_ms(3, 1.0, None), 2_000);
        assert_eq!(p.next_delay_ms(3, 7.0, None), 2_000, "jitter is clamped");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy();
        assert_eq!(p.next_delay_ms(1, 0.1, Some(1_000)), 1_000);
        assert_eq!(p.next_delay_ms(4, 1.0, Some(1_000)), 4_000);
    }

    #[test]
    fn each_step_of_a_retry_run_is_scheduled_by_the_policy() {
        let p = policy();
        let mut a = fresh(0);
        let mut now = 0;
        for (retry, jitter) in [(1, 0.5), (2, 0.5), (3, 0.5)] {
            assert_eq!(
                a.handle_response(&EdgeResponse::new(503, ""), now, jitter, &p),
                Next::Wait
            );
            let due = a.poll_timeout().unwrap();
            assert_eq!(due - now, p.ceiling_ms(retry) / 2, "retry {retry}");
            assert_eq!(
                a.handle_timeout(due - 1, true),
                Next::Wait,
                "not before it is due"
            );
            now = due;
            assert_eq!(
                a.handle_timeout(now, true),
                Next::Send {
                    key: "key-1".into()
                }
            );
            assert_eq!(a.sends(), retry + 1);
        }
    }

    #[test]
    fn a_503_then_200_places_the_order_with_one_key() {
        let mut a = fresh(0);
        assert_eq!(respond(&mut a, 503, 10), Next::Wait);
        let due = a.poll_timeout().unwrap();
        assert_eq!(
            a.handle_timeout(due, true),
            Next::Send {
                key: "key-1".into()
            }
        );
        assert_eq!(respond(&mut a, 200, due + 5), Next::Stop);
        assert!(matches!(a.phase(), Phase::Placed { .. }));
    }

    #[test]
    fn busy_answers_and_gateway_errors_are_retried() {
        for status in [409, 429, 502, 503, 504] {
            let mut a = fresh(0);
            assert_eq!(respond(&mut a, status, 1), Next::Wait, "{status}");
            assert!(matches!(
                a.phase(),
                Phase::Backoff {
                    reason: RetryReason::ServerBusy,
                    ..
                }
            ));
        }
    }

    #[test]
    fn retry_after_from_the_server_is_honoured() {
        let mut a = fresh(0);
        let _ = a.handle_response(
            &EdgeResponse {
                retry_after_secs: Some(1),
                ..EdgeResponse::new(409, "")
            },
            100,
            0.0,
            &policy(),
        );
        assert_eq!(a.poll_timeout(), Some(1_100));
    }

    #[test]
    fn a_decline_is_final_and_the_next_submit_gets_a_new_key() {
        let mut a = fresh(0);
        let body = r#"{"error":{"type":"card_error","message":"Your card was declined."}}"#;
        let answer = EdgeResponse {
            message: Some("Your card was declined."),
            ..EdgeResponse::new(402, body)
        };
        assert_eq!(a.handle_response(&answer, 5, 0.0, &policy()), Next::Stop);
        assert_eq!(
            a.phase(),
            &Phase::Refused {
                status: 402,
                message: "Your card was declined.".into()
            }
        );
        let (b, action) = Attempt::submit(Some(a), FP, 10, true, || "key-2".into());
        assert_eq!(
            action,
            Next::Send {
                key: "key-2".into()
            }
        );
        assert_eq!(b.key(), "key-2");
    }

    #[test]
    fn a_refusal_without_the_servers_words_gets_a_generic_message() {
        let mut a = fresh(0);
        let _ = a.handle_response(&EdgeResponse::new(422, "not json"), 5, 0.0, &policy());
        assert!(
            matches!(a.phase(), Phase::Refused { message, .. } if message == "the order was refused (422)")
        );
    }

    #[test]
    fn a_click_while_busy_is_ignored() {
        let a = fresh(0);
        let (a, action) = Attempt::submit(Some(a), FP, 1, true, || unreachable!("no new key"));
        assert_eq!(action, Next::Ignore(IgnoreReason::Busy));
        let mut a = a;
        let _ = respond(&mut a, 503, 2);
        let (_, action) = Attempt::submit(Some(a), FP, 3, true, || unreachable!("no new key"));
        assert_eq!(action, Next::Ignore(IgnoreReason::Busy));
    }

    #[test]
    fn a_placed_order_is_not_placed_again() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 200, 1);
        let (_, action) = Attempt::submit(Some(a), FP, 2, true, || unreachable!("no new key"));
        assert_eq!(action, Next::Ignore(IgnoreReason::AlreadyPlaced));
    }

    #[test]
    fn a_changed_payload_gets_a_new_key_even_after_a_placed_order() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 200, 1);
        let (b, action) = Attempt::submit(Some(a), "fp-2", 2, true, || "key-2".into());
        assert_eq!(
            action,
            Next::Send {
                key: "key-2".into()
            }
        );
        assert_eq!(b.fingerprint(), "fp-2");
    }

    #[test]
    fn an_unknown_outcome_keeps_the_key_for_the_next_click() {
        let mut a = fresh(0);
        assert_eq!(respond(&mut a, 500, 1), Next::Stop);
        assert_eq!(a.phase(), &Phase::Unconfirmed);
        let (b, action) = Attempt::submit(Some(a), FP, 2, true, || unreachable!("keep the key"));
        assert_eq!(
            action,
            Next::Send {
                key: "key-1".into()
            }
        );
        assert_eq!(b.sends(), 1, "a new run of retries");
    }

    #[test]
    fn retries_stop_after_the_budget_without_rotating_the_key() {
        let p = policy();
        let mut a = fresh(0);
        let mut now = 0;
        for _ in 0..p.max_retries {
            assert_eq!(a.handle_transport_failure(now, true, 1.0, &p), Next::Wait);
            now = a.poll_timeout().unwrap();
            assert!(matches!(a.handle_timeout(now, true), Next::Send { .. }));
        }
        assert_eq!(a.sends(), p.max_retries + 1);
        assert_eq!(a.handle_transport_failure(now, true, 1.0, &p), Next::Stop);
        assert_eq!(a.phase(), &Phase::Unconfirmed);
        assert_eq!(a.key(), "key-1");
    }

    #[test]
    fn the_time_budget_also_stops_retries() {
        let p = RetryPolicy {
            max_total_ms: 1_000,
            ..policy()
        };
        let mut a = fresh(0);
        let _ = a.handle_response(
            &EdgeResponse {
                retry_after_secs: Some(2),
                ..EdgeResponse::new(503, "")
            },
            10,
            0.0,
            &p,
        );
        assert_eq!(a.phase(), &Phase::Unconfirmed);
    }

    #[test]
    fn offline_waits_for_online_without_spending_retries() {
        let (mut a, action) = Attempt::submit(None, FP, 0, false, || "key-1".into());
        assert_eq!(action, Next::WaitForOnline);
        assert_eq!(
            (a.phase(), a.sends()),
            (
                &Phase::Offline {
                    then: Exchange::Order
                },
                0
            )
        );
        assert_eq!(
            a.handle_online(50),
            Next::Send {
                key: "key-1".into()
            }
        );
        // Losing the network mid-request: back to waiting, the send refunded.
        assert_eq!(
            a.handle_transport_failure(60, false, 0.0, &policy()),
            Next::WaitForOnline
        );
        assert_eq!(a.sends(), 0);
        assert_eq!(
            a.handle_online(70),
            Next::Send {
                key: "key-1".into()
            }
        );
    }

    #[test]
    fn a_reload_mid_flight_asks_the_status_lookup_first_with_the_same_key() {
        let a = fresh(0);
        let mut reloaded = Attempt::decode(&a.encode()).unwrap();
        assert_eq!(
            reloaded.resume(1_000, true),
            Next::FetchStatus {
                key: "key-1".into()
            }
        );
        assert_eq!(reloaded.phase(), &Phase::Checking);
        // Nothing recorded under the key and the page shows the same order:
        // it is sent now, with its key.
        let not_found = EdgeResponse::new(404, "{}");
        assert_eq!(
            reloaded.handle_status(&not_found, 1_010, 0.0, &policy(), true),
            Next::Send {
                key: "key-1".into()
            }
        );
    }

    const ACTION: &str =
        r#"{"id":"pi_3ds","status":"requires_action","client_secret":"pi_3ds_secret_x"}"#;

    fn intent<'a>(body: &'a str, status: &'a str) -> EdgeResponse<'a> {
        EdgeResponse {
            payment_status: Some(status),
            ..EdgeResponse::new(200, body)
        }
    }

    #[test]
    fn a_payment_that_needs_authentication_is_sent_again_with_its_key_after_it() {
        let mut a = fresh(0);
        let next = a.handle_response(&intent(ACTION, "requires_action"), 1, 0.0, &policy());
        assert_eq!(next, Next::HandleAction);
        assert_eq!(
            a.phase(),
            &Phase::ActionRequired {
                body: ACTION.into()
            }
        );
        // The challenge is on screen: a click changes nothing.
        assert!(a.is_busy());
        let (mut a, click) = Attempt::submit(Some(a), FP, 2, true, || "key-2".into());
        assert_eq!(click, Next::Ignore(IgnoreReason::Busy));
        // A reload keeps the key and asks the edge first, which answers with
        // the intent again (or its outcome).
        let mut reloaded = Attempt::decode(&a.encode()).unwrap();
        assert_eq!(reloaded.key(), a.key());
        assert_eq!(
            reloaded.resume(10, true),
            Next::FetchStatus {
                key: "key-1".into()
            }
        );
        assert_eq!(
            a.handle_action_done(30_000, true),
            Next::Send {
                key: "key-1".into()
            }
        );
        let placed = r#"{"id":"pi_3ds","status":"succeeded"}"#;
        let replayed = EdgeResponse {
            replayed: true,
            ..intent(placed, "succeeded")
        };
        assert_eq!(
            a.handle_response(&replayed, 30_100, 0.0, &policy()),
            Next::Stop
        );
        assert!(matches!(a.phase(), Phase::Placed { .. }));
    }

    #[test]
    fn a_failed_authentication_is_refused_and_the_next_click_takes_a_new_key() {
        let mut a = fresh(0);
        let _ = a.handle_response(&intent(ACTION, "requires_action"), 1, 0.0, &policy());
        let _ = a.handle_action_done(2, true);
        let failed = EdgeResponse {
            message: Some("We are unable to authenticate your payment method."),
            replayed: true,
            ..intent(r#"{"id":"pi_3ds"}"#, "requires_payment_method")
        };
        assert_eq!(a.handle_response(&failed, 3, 0.0, &policy()), Next::Stop);
        assert_eq!(
            a.phase(),
            &Phase::Refused {
                status: 200,
                message: "We are unable to authenticate your payment method.".into()
            }
        );
        let (a, next) = Attempt::submit(Some(a), FP, 4, true, || "key-2".into());
        assert_eq!(
            (a.key(), next),
            (
                "key-2",
                Next::Send {
                    key: "key-2".into()
                }
            )
        );
    }

    #[test]
    fn without_a_handler_the_attempt_says_so_and_charges_nothing() {
        let mut a = fresh(0);
        let _ = a.handle_response(&intent(ACTION, "requires_action"), 1, 0.0, &policy());
        assert_eq!(a.handle_no_action_handler(), Next::Stop);
        assert_eq!(
            a.phase(),
            &Phase::Refused {
                status: 200,
                message: NO_ACTION_HANDLER.into()
            }
        );
    }

    #[test]
    fn a_handler_that_never_authenticates_is_asked_a_bounded_number_of_times() {
        let mut a = fresh(0);
        let mut asked = 0;
        let mut next = a.handle_response(&intent(ACTION, "requires_action"), 1, 0.0, &policy());
        while next == Next::HandleAction {
            asked += 1;
            assert!(matches!(a.handle_action_done(2, true), Next::Send { .. }));
            next = a.handle_response(&intent(ACTION, "requires_action"), 3, 0.0, &policy());
        }
        assert_eq!((asked, next), (MAX_ACTIONS, Next::Stop));
        // Not final: the next click sends the order again with the key.
        assert_eq!(a.phase(), &Phase::Unconfirmed);
        let (_, click) = Attempt::submit(Some(a), FP, 4, true, || "key-2".into());
        assert_eq!(
            click,
            Next::Send {
                key: "key-1".into()
            }
        );
    }

    #[test]
    fn a_stored_intent_awaiting_authentication_for_another_cart_charged_nothing() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 500, 1);
        let _ = a.resume(2, true);
        let stored = EdgeResponse {
            replayed: true,
            ..intent(ACTION, "requires_action")
        };
        // The page still shows it: the order is sent again with the key,
        // which learns how the intent stands now.
        let mut same = a.clone();
        assert_eq!(
            same.handle_status(&stored, 3, 0.0, &policy(), true),
            Next::Send {
                key: "key-1".into()
            }
        );
        assert_eq!(
            a.handle_status(&stored, 3, 0.0, &policy(), false),
            Next::Stop
        );
        assert!(matches!(a.phase(), Phase::Refused { .. }));
    }

    #[test]
    fn a_reload_of_an_unconfirmed_attempt_learns_its_stored_answer() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 500, 1);
        let mut reloaded = Attempt::decode(&a.encode()).unwrap();
        assert!(matches!(reloaded.resume(5, true), Next::FetchStatus { .. }));
        let placed = EdgeResponse {
            replayed: true,
            ..EdgeResponse::new(200, r#"{"id":"pi_1"}"#)
        };
        assert_eq!(
            reloaded.handle_status(&placed, 6, 0.0, &policy(), true),
            Next::Stop
        );
        assert_eq!(
            reloaded.phase(),
            &Phase::Placed {
                body: r#"{"id":"pi_1"}"#.into(),
                replayed: true,
                original_key: None,
            }
        );
        // A stored refusal (a decline, or a final "not charged") is final too.
        let mut other = Attempt::decode(&a.encode()).unwrap();
        let _ = other.resume(5, true);
        let not_charged = EdgeResponse {
            replayed: true,
            message: Some("nothing was charged"),
            ..EdgeResponse::new(410, "{}")
        };
        let _ = other.handle_status(&not_charged, 6, 0.0, &policy(), true);
        assert!(matches!(other.phase(), Phase::Refused { status: 410, .. }));
    }

    #[test]
    fn a_pending_status_is_asked_again_without_spending_retries() {
        let p = policy();
        let mut a = fresh(0);
        let _ = respond(&mut a, 500, 1);
        let _ = a.resume(10, true);
        for round in 0..p.max_retries * 2 {
            let pending = EdgeResponse {
                retry_after_secs: Some(2),
                ..EdgeResponse::new(202, "{}")
            };
            let now = 10 + u64::from(round) * 2_000;
            assert_eq!(a.handle_status(&pending, now, 0.0, &p, true), Next::Wait);
            assert_eq!(a.poll_timeout(), Some(now + 2_000));
            assert_eq!(
                a.handle_timeout(now + 2_000, true),
                Next::FetchStatus {
                    key: "key-1".into()
                }
            );
        }
        assert_eq!(a.sends(), 1, "waits the edge asked for are not retries");
    }

    #[test]
    fn another_payload_waits_until_the_earlier_attempt_is_settled() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 500, 1);
        // The customer changed the cart: the earlier attempt may have charged,
        // so its key is asked about first, and no new key is made yet.
        let (mut a, next) = Attempt::submit(Some(a), "fp-2", 5, true, || unreachable!());
        assert_eq!(
            next,
            Next::FetchStatus {
                key: "key-1".into()
            }
        );
        assert_eq!(a.fingerprint(), FP);
        // Nothing was recorded: the earlier attempt charged nothing, and the
        // customer is told before a new attempt starts.
        let not_found = EdgeResponse {
            message: Some("nothing is recorded under this Idempotency-Key"),
            ..EdgeResponse::new(404, "{}")
        };
        assert_eq!(
            a.handle_status(&not_found, 6, 0.0, &policy(), false),
            Next::Stop
        );
        assert!(matches!(a.phase(), Phase::Refused { status: 404, .. }));
        let (b, next) = Attempt::submit(Some(a), "fp-2", 7, true, || "key-2".into());
        assert_eq!(
            next,
            Next::Send {
                key: "key-2".into()
            }
        );
        assert_eq!(b.fingerprint(), "fp-2");
    }

    #[test]
    fn a_conflict_waits_out_the_lease_without_spending_retries() {
        let p = policy();
        let mut a = fresh(0);
        let mut now = 0;
        // More 409s than the policy has retries, each asking for 5 s.
        for _ in 0..=p.max_retries + 2 {
            let busy = EdgeResponse {
                retry_after_secs: Some(5),
                ..EdgeResponse::new(409, "{}")
            };
            assert_eq!(a.handle_response(&busy, now, 0.0, &p), Next::Wait);
            assert_eq!(
                a.poll_timeout(),
                Some(now + 5_000),
                "Retry-After is honoured"
            );
            now += 5_000;
            assert!(matches!(a.handle_timeout(now, true), Next::Send { .. }));
        }
        assert_eq!(a.sends(), 1);
        // The time budget still bounds the wait.
        let long = EdgeResponse {
            retry_after_secs: Some(60),
            ..EdgeResponse::new(409, "{}")
        };
        assert_eq!(a.handle_response(&long, now, 0.0, &p), Next::Stop);
        assert_eq!(a.phase(), &Phase::Unconfirmed);
        assert_eq!(a.key(), "key-1");
    }

    #[test]
    fn another_devices_attempt_is_waited_for_and_then_its_paid_order_is_shown() {
        let p = policy();
        let mut a = fresh(0);
        let in_progress = EdgeResponse {
            retry_after_secs: Some(2),
            problem: Some(ProblemType::OrderInProgress),
            ..EdgeResponse::new(409, "{}")
        };
        assert_eq!(a.handle_response(&in_progress, 0, 0.0, &p), Next::Wait);
        assert!(matches!(
            a.phase(),
            Phase::Backoff {
                reason: RetryReason::OtherDevice,
                ..
            }
        ));
        assert_eq!(a.poll_timeout(), Some(2_000));
        assert!(matches!(a.handle_timeout(2_000, true), Next::Send { .. }));
        // The other device's attempt was paid: its answer, under its key.
        let paid = EdgeResponse {
            replayed: true,
            original_key: Some("phone-key-0001"),
            payment_status: Some("succeeded"),
            ..EdgeResponse::new(200, r#"{"id":"pi_1","status":"succeeded"}"#)
        };
        assert_eq!(a.handle_response(&paid, 2_100, 0.0, &p), Next::Stop);
        assert_eq!(
            a.phase(),
            &Phase::Placed {
                body: r#"{"id":"pi_1","status":"succeeded"}"#.into(),
                replayed: true,
                original_key: Some("phone-key-0001".into()),
            }
        );
        assert_eq!(a.key(), "key-1", "the page's own key is kept");
    }

    #[test]
    fn another_device_still_placing_the_order_past_the_budget_is_said_so_not_unconfirmed() {
        let p = policy();
        let mut a = fresh(0);
        // Longer than the whole time budget (60 s).
        let long = EdgeResponse {
            retry_after_secs: Some(61),
            problem: Some(ProblemType::OrderInProgress),
            ..EdgeResponse::new(409, "{}")
        };
        assert_eq!(a.handle_response(&long, 0, 0.0, &p), Next::Stop);
        assert_eq!(a.phase(), &Phase::OtherDevice);
        assert!(!a.is_busy());
        // The next click asks again with the same key.
        let (again, next) = Attempt::submit(Some(a), FP, 1_000, true, || "key-2".into());
        assert_eq!(
            next,
            Next::Send {
                key: "key-1".into()
            }
        );
        assert_eq!(again.phase(), &Phase::Sending);
    }

    #[test]
    fn an_order_paid_for_another_total_is_a_final_refusal() {
        let mut a = fresh(0);
        let paid = EdgeResponse {
            problem: Some(ProblemType::OrderAlreadyPaid),
            message: Some("already paid"),
            ..EdgeResponse::new(409, "{}")
        };
        assert_eq!(a.handle_response(&paid, 0, 0.0, &policy()), Next::Stop);
        assert!(matches!(a.phase(), Phase::Refused { status: 409, .. }));
    }

    #[test]
    fn an_origin_the_edge_does_not_take_orders_from_is_a_final_refusal_in_the_customers_words() {
        let mut a = fresh(0);
        let foreign = EdgeResponse {
            problem: Some(ProblemType::OriginNotAllowed),
            message: Some("orders from https://evil.example are not accepted; add the origin to ALLOWED_ORIGINS"),
            ..EdgeResponse::new(403, "{}")
        };
        assert_eq!(a.handle_response(&foreign, 0, 0.0, &policy()), Next::Stop);
        assert_eq!(
            a.phase(),
            &Phase::Refused {
                status: 403,
                message: ORIGIN_NOT_ALLOWED.into()
            }
        );
    }

    #[test]
    fn an_order_refused_too_often_is_final_but_a_rate_limit_is_waited_out() {
        let mut a = fresh(0);
        let exhausted = EdgeResponse {
            problem: Some(ProblemType::OrderAttemptsExhausted),
            message: Some("refused 5 times"),
            ..EdgeResponse::new(429, "{}")
        };
        assert_eq!(a.handle_response(&exhausted, 0, 0.0, &policy()), Next::Stop);
        assert!(matches!(a.phase(), Phase::Refused { status: 429, .. }));
        let mut b = fresh(0);
        let limited = EdgeResponse {
            problem: Some(ProblemType::RateLimited),
            retry_after_secs: Some(7),
            ..EdgeResponse::new(429, "{}")
        };
        assert_eq!(b.handle_response(&limited, 0, 0.0, &policy()), Next::Wait);
        assert!(matches!(b.phase(), Phase::Backoff { .. }));
    }

    #[test]
    fn an_expired_token_asks_the_page_for_a_fresh_one_and_keeps_the_key() {
        let mut a = fresh(0);
        let expired = EdgeResponse {
            problem: Some(ProblemType::OrderTokenExpired),
            ..EdgeResponse::new(403, "{}")
        };
        assert_eq!(
            a.handle_response(&expired, 1, 0.0, &policy()),
            Next::NeedToken
        );
        assert!(a.is_busy(), "the button waits for the token");
        assert_eq!(
            a.handle_token(true),
            Next::Send {
                key: "key-1".into()
            }
        );
        assert_eq!(a.sends(), 1, "a token refresh is not a retry");
        // Without a fresh token the key is kept for the next click.
        let _ = a.handle_response(&expired, 2, 0.0, &policy());
        assert_eq!(a.handle_no_token(), Next::Stop);
        assert_eq!(a.phase(), &Phase::Unconfirmed);
        let (_, next) = Attempt::submit(Some(a), FP, 3, true, || unreachable!("keep the key"));
        assert_eq!(
            next,
            Next::Send {
                key: "key-1".into()
            }
        );
    }

    #[test]
    fn expired_tokens_without_end_stop_at_the_retry_budget() {
        let p = policy();
        let mut a = fresh(0);
        let expired = EdgeResponse {
            problem: Some(ProblemType::OrderTokenExpired),
            ..EdgeResponse::new(403, "{}")
        };
        let mut refreshes = 0;
        while a.handle_response(&expired, 1, 0.0, &p) == Next::NeedToken {
            refreshes += 1;
            assert!(matches!(a.handle_token(true), Next::Send { .. }));
        }
        assert_eq!(refreshes, MAX_TOKEN_REFRESHES);
        assert_eq!(a.phase(), &Phase::Unconfirmed);
        assert_eq!(a.key(), "key-1", "the key is kept for the next click");
    }

    #[test]
    fn other_403s_are_final_refusals() {
        let mut a = fresh(0);
        let invalid = EdgeResponse {
            problem: Some(ProblemType::OrderTokenInvalid),
            message: Some("bad signature"),
            ..EdgeResponse::new(403, "{}")
        };
        assert_eq!(a.handle_response(&invalid, 1, 0.0, &policy()), Next::Stop);
        assert!(matches!(a.phase(), Phase::Refused { status: 403, .. }));
    }

    #[test]
    fn the_default_budget_outlasts_the_default_lease_and_two_backend_calls() {
        // A key held by a forward that timed out settles when its lease ends:
        // the reconciling request then spends up to one backend timeout on
        // the lookup and one on a forward.
        let edge = crate::EdgeConfig::from_vars(|_| None).unwrap();
        let settles_within = edge.lease + edge.backend_timeout * 2;
        assert!(
            u128::from(policy().max_total_ms) > settles_within.as_millis(),
            "{} ms budget, {settles_within:?} to settle",
            policy().max_total_ms
        );
    }

    #[test]
    fn an_attempt_saved_by_the_previous_version_keeps_its_key() {
        let v1 = "chargeonce-attempt/1\nkey-1\nfp-1\n2\n100\nbackoff 900 server_busy\n";
        let a = Attempt::decode(v1).unwrap();
        assert_eq!(a.key(), "key-1");
        assert_eq!(
            a.phase(),
            &Phase::Backoff {
                until_ms: 900,
                reason: RetryReason::ServerBusy,
                then: Exchange::Order
            }
        );
        let offline = "chargeonce-attempt/1\nkey-1\nfp-1\n0\n100\noffline\n";
        assert_eq!(
            Attempt::decode(offline).unwrap().phase(),
            &Phase::Offline {
                then: Exchange::Order
            }
        );
    }

    #[test]
    fn a_reload_after_placing_shows_the_order_as_placed() {
        let mut a = fresh(0);
        let _ = a.handle_response(
            &EdgeResponse::new(200, r#"{"id":"pi_1"}"#),
            1,
            0.0,
            &policy(),
        );
        let mut reloaded = Attempt::decode(&a.encode()).unwrap();
        assert_eq!(reloaded.resume(5, true), Next::Stop);
        assert!(
            matches!(reloaded.phase(), Phase::Placed { body, .. } if body == r#"{"id":"pi_1"}"#)
        );
    }

    #[test]
    fn every_phase_survives_storage() {
        let phases = [
            Phase::Sending,
            Phase::Checking,
            Phase::Backoff {
                until_ms: 1_234,
                reason: RetryReason::ServerBusy,
                then: Exchange::Status,
            },
            Phase::Offline {
                then: Exchange::Status,
            },
            Phase::NeedsToken {
                then: Exchange::Order,
            },
            Phase::Placed {
                body: "{\"id\":\"pi_1\",\n\"x\":1}".into(),
                replayed: true,
                original_key: None,
            },
            Phase::Placed {
                body: "{\"id\":\"pi_2\"}".into(),
                replayed: true,
                original_key: Some("phone-key-0001".into()),
            },
            Phase::Backoff {
                until_ms: 9,
                reason: RetryReason::OtherDevice,
                then: Exchange::Order,
            },
            Phase::Refused {
                status: 402,
                message: "Your card\nwas declined.".into(),
            },
            Phase::Unconfirmed,
            Phase::OtherTab,
            Phase::OtherDevice,
        ];
        for phase in phases {
            let a = Attempt { phase, ..fresh(7) };
            let reloaded = Attempt::decode(&a.encode()).unwrap();
            assert_eq!((reloaded.key(), reloaded.phase()), (a.key(), a.phase()));
        }
    }

    #[test]
    fn damaged_or_foreign_storage_reads_as_no_attempt() {
        let good = fresh(0).encode();
        assert!(Attempt::decode(&good).is_some());
        for bad in [
            "",
            "{\"key\":\"k\"}",
            &good.replace("chargeonce-attempt/2", "chargeonce-attempt/0"),
            &good.replace("sending", "flying"),
            &good.replacen("\n1\n", "\nmany\n", 1),
        ] {
            assert_eq!(Attempt::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn another_tab_holding_the_order_stops_this_one_without_losing_the_key() {
        let mut a = fresh(0);
        assert_eq!(a.handle_held_elsewhere(), Next::Stop);
        assert_eq!((a.phase(), a.sends()), (&Phase::OtherTab, 0));
        assert!(!a.is_busy(), "the customer may click again");
        let (_, action) = Attempt::submit(Some(a), FP, 5, true, || unreachable!("keep the key"));
        assert_eq!(
            action,
            Next::Send {
                key: "key-1".into()
            }
        );
    }

    #[test]
    fn a_late_answer_after_giving_up_is_ignored() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 500, 1);
        assert_eq!(respond(&mut a, 200, 2), Next::Stop);
        assert_eq!(a.phase(), &Phase::Unconfirmed);
    }
}
