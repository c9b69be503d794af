//! The client's side of exactly-once checkout: one checkout attempt, its
//! idempotency key, and when to send, retry, wait or stop.
//!
//! The widget owns the I/O (fetch, timers, storage, the DOM) and feeds this
//! state machine its inputs: a click ([`Attempt::submit`]), an answer
//! ([`Attempt::handle_response`]), a request that produced no answer
//! ([`Attempt::handle_transport_failure`]), a timer
//! ([`Attempt::handle_timeout`], armed from [`Attempt::poll_timeout`]) and the
//! browser coming back online ([`Attempt::handle_online`]). Time (Unix ms),
//! the fresh key and the jitter are passed in.
//!
//! The rules: a key lives as long as its attempt. It is kept across every
//! retry and reload, and across an unknown outcome (network error, timeout,
//! 5xx, retries exhausted), because the first request may have charged and
//! only the same key lets the edge answer with that charge. It is replaced
//! only when the payload changes or after a final answer (the order was
//! placed, or definitively refused).

/// The first line of [`Attempt::encode`]'s form; a change of format bumps it.
const STORAGE_VERSION: &str = "chargeonce-attempt/1";

/// How a client retries. The defaults follow Stripe's clients: 0.5 s
/// doubling to 5 s, with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff ceiling, in ms.
    pub base_ms: u64,
    /// The largest backoff ceiling, in ms.
    pub cap_ms: u64,
    /// Retries after the first send, at most.
    pub max_retries: u32,
    /// No retry is scheduled to start later than this after the first send.
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

/// Where an attempt stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// A request is on its way (or was, when the page was unloaded).
    Sending,
    /// Waiting before the next retry.
    Backoff {
        /// When to send again (Unix ms).
        until_ms: u64,
        /// Why the last request did not succeed.
        reason: RetryReason,
    },
    /// The browser is offline; the next send waits for the `online` event.
    Offline,
    /// The order was placed. Final.
    Placed {
        /// The backend's answer, as the edge sent it.
        body: String,
        /// Whether the edge replayed it.
        replayed: bool,
    },
    /// The order was definitively refused (a decline or another 4xx). Final:
    /// the next submit starts a new attempt with a new key.
    Refused {
        /// The HTTP status.
        status: u16,
        /// What the server said, for the customer.
        message: String,
    },
    /// Retries stopped without an answer. The charge may or may not have
    /// happened; the next submit retries with the same key.
    Unconfirmed,
    /// Another tab is placing this order, so this one sent nothing. The next
    /// submit tries again with the same key (which the tabs share).
    OtherTab,
}

/// Why a retry was needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// No answer: connection failure or timeout.
    ConnectionLost,
    /// The server answered that it is busy or the key is in use.
    ServerBusy,
}

impl RetryReason {
    /// The reason's name (`connection_lost`, `server_busy`), as events
    /// report it and [`Attempt::encode`] stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectionLost => "connection_lost",
            Self::ServerBusy => "server_busy",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::ConnectionLost, Self::ServerBusy]
            .into_iter()
            .find(|r| r.as_str() == name)
    }
}

/// One checkout attempt: the key, what it is for, and where it stands.
/// [`Attempt::encode`] and [`Attempt::decode`] let the widget keep it in
/// `sessionStorage` and resume it after a reload with the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    key: String,
    fingerprint: String,
    phase: Phase,
    /// Requests sent so far in the current run of retries.
    sends: u32,
    /// When the current run of retries started (Unix ms).
    started_at_ms: u64,
}

/// An HTTP answer to one of the attempt's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The status.
    pub status: u16,
    /// The body, as text.
    pub body: &'a str,
    /// The server's words for a refusal, if the shell found any in the body:
    /// a problem+json `detail` or a Stripe-style `error.message`. (The
    /// shell reads the JSON; the widget uses the browser's parser, which
    /// keeps a Rust one out of its bundle.)
    pub message: Option<&'a str>,
    /// Whether `Idempotent-Replayed: true` was sent.
    pub replayed: bool,
    /// The `Retry-After` header, in seconds, if any.
    pub retry_after_secs: Option<u64>,
}

impl<'a> Answer<'a> {
    /// An answer with this status and body, not replayed, no `Retry-After`.
    pub fn new(status: u16, body: &'a str) -> Self {
        Self {
            status,
            body,
            message: None,
            replayed: false,
            retry_after_secs: None,
        }
    }
}

/// What to do after a click.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Submit {
    /// Send the order with this key now.
    Send {
        /// The `Idempotency-Key`.
        key: String,
    },
    /// Wait for the browser to come online, then send.
    WaitForOnline,
    /// Do nothing: the click is a duplicate or the order is already placed.
    Ignore(IgnoreReason),
}

/// Why a click was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// A request for this attempt is in flight or scheduled.
    Busy,
    /// This exact order was already placed.
    AlreadyPlaced,
}

/// What to do after an input other than a click.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Next {
    /// Send again now, with this key.
    Send {
        /// The `Idempotency-Key` (the same as before).
        key: String,
    },
    /// Wait; call [`Attempt::handle_timeout`] at [`Attempt::poll_timeout`].
    Wait,
    /// Wait for the browser to come online.
    WaitForOnline,
    /// The attempt reached a final phase or gave up; see [`Attempt::phase`].
    Stop,
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
    ) -> (Self, Submit) {
        let keep_key = match &current {
            Some(a) if a.fingerprint != fingerprint => None,
            Some(a) => match a.phase {
                Phase::Sending | Phase::Backoff { .. } | Phase::Offline => {
                    return (a.clone(), Submit::Ignore(IgnoreReason::Busy));
                }
                Phase::Placed { .. } => {
                    return (a.clone(), Submit::Ignore(IgnoreReason::AlreadyPlaced));
                }
                Phase::Refused { .. } => None,
                Phase::Unconfirmed | Phase::OtherTab => Some(a.key.clone()),
            },
            None => None,
        };
        let mut attempt = Self {
            key: keep_key.unwrap_or_else(new_key),
            fingerprint: fingerprint.to_owned(),
            phase: Phase::Sending,
            sends: 0,
            started_at_ms: now_ms,
        };
        let action = match attempt.send_or_wait(online) {
            Next::Send { key } => Submit::Send { key },
            _ => Submit::WaitForOnline,
        };
        (attempt, action)
    }

    /// Picks an attempt up after a reload. An attempt that was sending or
    /// waiting is sent again at once with its key: the earlier request may
    /// have charged, and the edge answers a repeat with that charge. Final
    /// phases stay as they are.
    pub fn resume(&mut self, now_ms: u64, online: bool) -> Next {
        match self.phase {
            Phase::Sending | Phase::Backoff { .. } | Phase::Offline => {
                self.started_at_ms = now_ms;
                self.sends = 0;
                self.send_or_wait(online)
            }
            _ => Next::Stop,
        }
    }

    /// Handles an HTTP answer; `jitter` is a uniform pick in `[0, 1]`.
    pub fn handle_response(
        &mut self,
        answer: &Answer<'_>,
        now_ms: u64,
        jitter: f64,
        policy: &RetryPolicy,
    ) -> Next {
        if self.phase != Phase::Sending {
            // A late answer to a request we already gave up on.
            return Next::Stop;
        }
        match answer.status {
            200..=299 => {
                self.phase = Phase::Placed {
                    body: answer.body.to_owned(),
                    replayed: answer.replayed,
                };
                Next::Stop
            }
            409 | 429 | 502..=504 => self.schedule(
                RetryReason::ServerBusy,
                answer.retry_after_secs.map(|s| s.saturating_mul(1000)),
                now_ms,
                jitter,
                policy,
            ),
            status @ 400..=499 => {
                self.phase = Phase::Refused {
                    status,
                    message: answer
                        .message
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("the order was refused ({status})")),
                };
                Next::Stop
            }
            // Any other answer says nothing certain about the charge.
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
        if self.phase != Phase::Sending {
            return Next::Stop;
        }
        if !online {
            self.phase = Phase::Offline;
            // The failed send did not reach anyone we know of: give it back.
            self.sends = self.sends.saturating_sub(1);
            return Next::WaitForOnline;
        }
        self.schedule(RetryReason::ConnectionLost, None, now_ms, jitter, policy)
    }

    /// Handles finding that another tab holds this order (the widget asks
    /// the browser's Web Locks before each run of sends). Nothing was sent;
    /// the send this run counted is given back.
    pub fn handle_held_elsewhere(&mut self) -> Next {
        if self.phase == Phase::Sending {
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
            Phase::Backoff { until_ms, .. } if now_ms >= until_ms => self.send_or_wait(online),
            Phase::Backoff { .. } => Next::Wait,
            _ => Next::Stop,
        }
    }

    /// Handles the browser's `online` event.
    pub fn handle_online(&mut self, now_ms: u64) -> Next {
        match self.phase {
            Phase::Offline => {
                // Time spent offline is not the server's fault: the time
                // budget starts again.
                self.started_at_ms = now_ms;
                self.send_or_wait(true)
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

    /// Requests sent in the current run, the first included.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// Whether a click now would be accepted as a new send.
    pub fn is_busy(&self) -> bool {
        matches!(
            self.phase,
            Phase::Sending | Phase::Backoff { .. } | Phase::Offline
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
            Phase::Backoff { until_ms, reason } => {
                (format!("backoff {until_ms} {}", reason.as_str()), "")
            }
            Phase::Offline => ("offline".to_owned(), ""),
            Phase::Placed { body, replayed } => {
                (format!("placed {}", u8::from(*replayed)), body.as_str())
            }
            Phase::Refused { status, message } => (format!("refused {status}"), message.as_str()),
            Phase::Unconfirmed => ("unconfirmed".to_owned(), ""),
            Phase::OtherTab => ("other_tab".to_owned(), ""),
        };
        format!(
            "{STORAGE_VERSION}\n{}\n{}\n{}\n{}\n{phase}\n{rest}",
            self.key, self.fingerprint, self.sends, self.started_at_ms
        )
    }

    /// Reads [`Self::encode`]'s form; `None` for anything else (another
    /// version, a damaged entry), which the widget treats as no attempt.
    pub fn decode(text: &str) -> Option<Self> {
        let mut lines = text.splitn(7, '\n');
        if lines.next()? != STORAGE_VERSION {
            return None;
        }
        let key = lines.next().filter(|k| !k.is_empty())?.to_owned();
        let fingerprint = lines.next()?.to_owned();
        let sends = lines.next()?.parse().ok()?;
        let started_at_ms = lines.next()?.parse().ok()?;
        let mut phase = lines.next()?.split(' ');
        let rest = lines.next()?.to_owned();
        let phase = match (phase.next()?, phase.next(), phase.next()) {
            ("sending", None, None) => Phase::Sending,
            ("backoff", Some(until), Some(reason)) => Phase::Backoff {
                until_ms: until.parse().ok()?,
                reason: RetryReason::from_name(reason)?,
            },
            ("offline", None, None) => Phase::Offline,
            ("placed", Some(replayed @ ("0" | "1")), None) => Phase::Placed {
                body: rest,
                replayed: replayed == "1",
            },
            ("refused", Some(status), None) => Phase::Refused {
                status: status.parse().ok()?,
                message: rest,
            },
            ("unconfirmed", None, None) => Phase::Unconfirmed,
            ("other_tab", None, None) => Phase::OtherTab,
            _ => return None,
        };
        Some(Self {
            key,
            fingerprint,
            phase,
            sends,
            started_at_ms,
        })
    }

    fn send_or_wait(&mut self, online: bool) -> Next {
        if online {
            self.phase = Phase::Sending;
            self.sends += 1;
            Next::Send {
                key: self.key.clone(),
            }
        } else {
            self.phase = Phase::Offline;
            Next::WaitForOnline
        }
    }

    fn schedule(
        &mut self,
        reason: RetryReason,
        retry_after_ms: Option<u64>,
        now_ms: u64,
        jitter: f64,
        policy: &RetryPolicy,
    ) -> Next {
        let retry = self.sends; // the retry about to be scheduled, 1-based
        let until_ms = now_ms + policy.next_delay_ms(retry, jitter, retry_after_ms);
        let over_budget = until_ms.saturating_sub(self.started_at_ms) > policy.max_total_ms;
        if retry > policy.max_retries || over_budget {
            self.phase = Phase::Unconfirmed;
            return Next::Stop;
        }
        self.phase = Phase::Backoff { until_ms, reason };
        Next::Wait
    }
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
            Submit::Send {
                key: "key-1".into()
            }
        );
        attempt
    }

    fn respond(a: &mut Attempt, status: u16, now: u64) -> Next {
        a.handle_response(&Answer::new(status, "{}"), now, 1.0, &policy())
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
                a.handle_response(&Answer::new(503, ""), now, jitter, &p),
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
            &Answer {
                retry_after_secs: Some(1),
                ..Answer::new(409, "")
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
        let answer = Answer {
            message: Some("Your card was declined."),
            ..Answer::new(402, body)
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
            Submit::Send {
                key: "key-2".into()
            }
        );
        assert_eq!(b.key(), "key-2");
    }

    #[test]
    fn a_refusal_without_the_servers_words_gets_a_generic_message() {
        let mut a = fresh(0);
        let _ = a.handle_response(&Answer::new(422, "not json"), 5, 0.0, &policy());
        assert!(
            matches!(a.phase(), Phase::Refused { message, .. } if message == "the order was refused (422)")
        );
    }

    #[test]
    fn a_click_while_busy_is_ignored() {
        let a = fresh(0);
        let (a, action) = Attempt::submit(Some(a), FP, 1, true, || unreachable!("no new key"));
        assert_eq!(action, Submit::Ignore(IgnoreReason::Busy));
        let mut a = a;
        let _ = respond(&mut a, 503, 2);
        let (_, action) = Attempt::submit(Some(a), FP, 3, true, || unreachable!("no new key"));
        assert_eq!(action, Submit::Ignore(IgnoreReason::Busy));
    }

    #[test]
    fn a_placed_order_is_not_placed_again() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 200, 1);
        let (_, action) = Attempt::submit(Some(a), FP, 2, true, || unreachable!("no new key"));
        assert_eq!(action, Submit::Ignore(IgnoreReason::AlreadyPlaced));
    }

    #[test]
    fn a_changed_payload_gets_a_new_key_even_after_a_placed_order() {
        let mut a = fresh(0);
        let _ = respond(&mut a, 200, 1);
        let (b, action) = Attempt::submit(Some(a), "fp-2", 2, true, || "key-2".into());
        assert_eq!(
            action,
            Submit::Send {
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
            Submit::Send {
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
            &Answer {
                retry_after_secs: Some(2),
                ..Answer::new(503, "")
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
        assert_eq!(action, Submit::WaitForOnline);
        assert_eq!((a.phase(), a.sends()), (&Phase::Offline, 0));
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
    fn a_reload_mid_flight_resumes_with_the_same_key() {
        let a = fresh(0);
        let mut reloaded = Attempt::decode(&a.encode()).unwrap();
        assert_eq!(
            reloaded.resume(1_000, true),
            Next::Send {
                key: "key-1".into()
            }
        );
    }

    #[test]
    fn a_reload_after_placing_shows_the_order_as_placed() {
        let mut a = fresh(0);
        let _ = a.handle_response(&Answer::new(200, r#"{"id":"pi_1"}"#), 1, 0.0, &policy());
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
            Phase::Backoff {
                until_ms: 1_234,
                reason: RetryReason::ServerBusy,
            },
            Phase::Offline,
            Phase::Placed {
                body: "{\"id\":\"pi_1\",\n\"x\":1}".into(),
                replayed: true,
            },
            Phase::Refused {
                status: 402,
                message: "Your card\nwas declined.".into(),
            },
            Phase::Unconfirmed,
            Phase::OtherTab,
        ];
        for phase in phases {
            let a = Attempt { phase, ..fresh(7) };
            assert_eq!(Attempt::decode(&a.encode()).as_ref(), Some(&a));
        }
    }

    #[test]
    fn damaged_or_foreign_storage_reads_as_no_attempt() {
        let good = fresh(0).encode();
        assert!(Attempt::decode(&good).is_some());
        for bad in [
            "",
            "{\"key\":\"k\"}",
            &good.replace("chargeonce-attempt/1", "chargeonce-attempt/0"),
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
            Submit::Send {
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
