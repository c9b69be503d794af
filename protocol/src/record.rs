//! The authoritative record of one scoped idempotency key, and the edge's
//! decision for each request that carries it.
//!
//! One record lives in one Durable Object (named by
//! [`crate::ScopedKey::storage_name`]), which runs these methods one at a time;
//! that is what makes a claim atomic. Every transition the code makes:
//!
//! ```text
//!                      claim: Forward
//!   ┌──────────────▶ Claimed ─────────── complete ──────────────┐
//!   │                 │  │  │                                    ▼
//! Vacant ◀─ release ──┘  │  └─ lookup found the answer, or ─▶ Completed
//!   ▲   (plain claim)    │     nothing after the settle         │  ▲
//!   │                    │     window ("not charged")           │  │
//!   │      abandon, or the lease ran out; a reconciling         │  │
//!   │      claim released or its lookup inconclusive            │  │
//!   │                    ▼                                      │  │
//!   │   ┌───────────▶ Unknown ── late complete (same payload) ───┼──┤
//!   │   │ claim (same    │  ▲                                    │  │
//!   │   │ payload) or    │  │ a status lookup revives it         │  │
//!   │   │ the alarm:     │  │                                    │  │
//!   │   │ reconciling    ▼  │                                    │  │
//!   │   │ Claimed ◀── Tombstone ── late complete (same payload) ─┼──┤
//!   │   │             (the TTL ran out unresolved)               │  │
//!   └───┴─────────────────── the TTL ran out ◀───────────────────┘  │
//!        late complete (a key given back or expired) ───────────────┘
//! ```
//!
//! (The reconciling `Claimed` is the same state as the plain one, with the
//! doubt it is resolving; releasing it or an inconclusive lookup returns it to
//! `Unknown`, never to `Vacant`. A `Completed` intent that could still change,
//! one awaiting the customer's authentication, is replaced by a refresh with
//! the same intent as it is now, and stays `Completed`.)
//!
//! `Unknown` is what keeps a lost response from becoming a second charge: a
//! key whose forward may have charged is never forwarded again blind, at any
//! age. The next claim for it comes with [`Decision::Forward`]'s `reconcile`
//! set: the edge asks the backend whether it charged under the key and hands
//! the answer to [`KeyRecord::handle_lookup`], which settles the key or, if it
//! is safe, renews the claim for one more forward. The key's object also
//! reconciles by itself: [`KeyRecord::begin_check`] claims the key for its
//! alarm at once when the key becomes unknown and then with
//! [`CHECK_BACKOFF`] (never later than the settle window's end while
//! nothing is found, and at once whenever a status lookup asks), until the
//! key settles or, after the TTL, becomes a tombstone that still forces any
//! later claim to reconcile.
//!
//! A lookup's "nothing found" is conclusive only [`KeyPolicy::lookup_settle`]
//! after the last forward ended (its answer, or the end of its lease): the
//! backend finishes any request it received within the lease, and its lookup
//! catches up within the settle window. Before that, a forward with the same
//! key is safe only while the backend itself still deduplicates it
//! ([`KeyPolicy::backend_key_retention`]).
//!
//! Time is passed in; the record never reads a clock, and claim tokens are
//! passed in too (the shell draws them at random, so they never repeat for a
//! key even after its record was deleted). [`KeyRecord::poll_timeout`] tells
//! the shell when to call [`KeyRecord::handle_timeout`] and
//! [`KeyRecord::begin_check`] (the Durable Object arms an alarm for it), and
//! [`KeyRecord::writes`] in which order to persist a change.

use crate::fingerprint::Fingerprint;
use crate::problem::{Problem, ProblemType, PROBLEM_CONTENT_TYPE};
use crate::time::{retry_after_secs, UnixMs};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `Retry-After` for a request that finds the key claimed while its
/// claimant still waits on the backend: most forwards finish within a second.
pub const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// When the key's alarm reconciles an unknown key: at once, then after each
/// of these spans in turn, the last repeating until the key settles or its
/// TTL runs out.
pub const CHECK_BACKOFF: [Duration; 4] = [
    Duration::from_secs(5),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3_600),
];

/// The spans a key's record runs on (see [`crate::EdgeConfig::key_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPolicy {
    /// How long a claim holds the key. The backend is assumed to finish any
    /// request it received within the lease of the claim that sent it.
    pub lease: Duration,
    /// How long a final answer is kept, and how long an unresolved key is
    /// reconciled before it becomes a tombstone.
    pub answer_ttl: Duration,
    /// How long the edge waits for one backend call.
    pub backend_timeout: Duration,
    /// How long after the last forward ended a lookup that finds nothing is
    /// conclusive.
    pub lookup_settle: Duration,
    /// How long the backend itself deduplicates a key after its first use;
    /// zero when that deduplication is not relied on.
    pub backend_key_retention: Duration,
}

/// A backend response kept for replay, exactly as the client first got it.
///
/// Only the status, the media type and the body are kept: headers such as
/// `Set-Cookie` or hop-by-hop ones are never stored, so never replayed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body, byte for byte. Bodies that are not UTF-8 or larger than
    /// [`crate::backend::MAX_STORED_BODY_BYTES`] are never stored (see
    /// [`crate::backend::classify_response`]).
    pub body: String,
}

impl StoredResponse {
    /// The final answer of a key whose outcome was unknown until a lookup
    /// after the settle window found no charge: 410, nothing was charged,
    /// and the order needs a new attempt with a new key.
    pub fn not_charged() -> Self {
        let problem = Problem::new(
            ProblemType::AttemptNotCharged,
            "an earlier request with this Idempotency-Key could not be confirmed, and the payment backend holds no charge for it: nothing was charged; place the order again with a new key",
        );
        Self {
            status: problem.status(),
            content_type: PROBLEM_CONTENT_TYPE.to_owned(),
            body: problem.to_json(),
        }
    }
}

/// A final result and what it was a result of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Completed {
    /// The fingerprint of the request that produced the result.
    pub fingerprint: Fingerprint,
    /// The result.
    pub response: StoredResponse,
    /// When the record may be forgotten.
    pub expires_at: UnixMs,
}

impl Completed {
    /// What a request with `fingerprint` gets from this result at `now`;
    /// `None` once the result has expired (the key is free again). The KV
    /// fast path uses this on its cached copy; [`KeyRecord::claim`] on the
    /// authoritative one.
    #[must_use]
    pub fn decide(&self, fingerprint: &Fingerprint, now: UnixMs) -> Option<Decision> {
        if now >= self.expires_at {
            None
        } else if &self.fingerprint != fingerprint {
            Some(Decision::Mismatch)
        } else {
            Some(Decision::Replay {
                response: self.response.clone(),
            })
        }
    }
}

/// What a request whose order token has expired learns of the key: it may
/// not claim it (nothing can be forwarded for it), so it only looks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "peek", rename_all = "snake_case")]
#[must_use]
pub enum Peek {
    /// The key's stored answer for this payload: replay it.
    Replay {
        /// The stored response.
        response: StoredResponse,
    },
    /// The key is bound to another payload.
    Mismatch,
    /// A claim holds the key.
    InFlight {
        /// Seconds the client should wait before retrying.
        retry_after_secs: u32,
    },
    /// Nothing that answers this request: the key is free, or its outcome
    /// is unknown (a fresh token's claim reconciles it).
    Nothing,
}

/// Identifies one claim, so that a worker whose lease was taken over cannot
/// release, abandon or settle the claim of the one that took it. The shell
/// draws it at random for each claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimToken(pub u64);

/// What the edge does with a request. Exhaustive on purpose: a new kind of
/// decision must be handled by every shell. Serialisable because the Durable
/// Object sends it back to the Worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
#[must_use]
pub enum Decision {
    /// The key is ours. Plain: forward the request, then
    /// [`KeyRecord::complete`], [`KeyRecord::release`] or
    /// [`KeyRecord::abandon`] with this token. Reconciling: an earlier
    /// forward may have charged; look it up first and hand what was found to
    /// [`KeyRecord::handle_lookup`].
    Forward {
        /// The claim to settle.
        token: ClaimToken,
        /// Whether to look up before forwarding.
        reconcile: bool,
    },
    /// The request was already answered: send this response again.
    Replay {
        /// The stored response.
        response: StoredResponse,
    },
    /// The key was used for a different payload: refuse with 422.
    Mismatch,
    /// Another request holds the key: refuse with 409.
    InFlight {
        /// Seconds the client should wait before retrying.
        retry_after_secs: u32,
    },
}

/// What a reconciliation lookup found, as far as the record is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "found", rename_all = "snake_case")]
pub enum Found {
    /// The backend holds the key's answer: a charge, or an intent that
    /// awaits the customer's authentication
    /// ([`crate::payment::PaymentOutcome::ActionRequired`]).
    Answer {
        /// The intent, as the key's final answer.
        response: StoredResponse,
    },
    /// The backend showed no charge under the key (yet) to a lookup sent at
    /// `looked_at`. Only the moment the lookup was made can make it
    /// conclusive, not the moment its answer arrives.
    Nothing {
        /// When the lookup was sent.
        looked_at: UnixMs,
    },
    /// The backend could not say.
    Unknown,
}

/// What [`KeyRecord::handle_lookup`] made of a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "settlement", rename_all = "snake_case")]
#[must_use]
pub enum Settlement {
    /// What the lookup found is now the key's final answer.
    Answered {
        /// The stored answer.
        response: StoredResponse,
    },
    /// Nothing was found after the settle window: the key's final answer is
    /// now [`StoredResponse::not_charged`].
    NotCharged {
        /// The stored answer.
        response: StoredResponse,
    },
    /// A final answer was stored meanwhile (a late completion): this one.
    AlreadyAnswered {
        /// The stored answer.
        response: StoredResponse,
    },
    /// Forward now: the backend still deduplicates the key, and the claim
    /// was renewed for the forward.
    Forward,
    /// Nothing conclusive yet; the key stays unknown.
    Pending {
        /// Seconds until a lookup can be conclusive.
        retry_after_secs: u32,
    },
    /// The lookup failed; the key stays unknown.
    LookupFailed,
    /// The claim is no longer this token's (its lease ran out).
    NotHeld,
}

/// What became of a backend result handed to [`KeyRecord::complete`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[must_use]
pub enum CompleteOutcome {
    /// The result is now the record's final answer.
    Stored,
    /// A final answer was stored first (by a worker that had held the key
    /// before ours); the client gets that one, so every client sees the same
    /// answer for the key.
    AlreadyCompleted {
        /// The response stored first.
        response: StoredResponse,
    },
    /// A request with another payload holds the key now: nothing was stored;
    /// the client gets its own backend response.
    NotStored,
}

/// What became of a refreshed answer handed to [`KeyRecord::refresh`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "refreshed", rename_all = "snake_case")]
#[must_use]
pub enum Refreshed {
    /// It replaced the answer it refreshed, and is the key's answer now (for
    /// the KV copy).
    Stored(Completed),
    /// Another answer was stored since the one refreshed: this one.
    Superseded {
        /// The key's answer.
        response: StoredResponse,
    },
    /// The key holds no answer any more (it expired).
    NotStored,
}

/// What a status lookup (`GET /v1/orders`) learns of the key. It never
/// forwards anything.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[must_use]
pub enum KeyStatus {
    /// The key's final answer.
    Answered {
        /// The stored answer.
        response: StoredResponse,
    },
    /// Claimed, or unknown and being reconciled.
    Pending {
        /// Seconds until asking again is worthwhile.
        retry_after_secs: u32,
    },
    /// Nothing is recorded under the key.
    NotFound,
}

/// A change [`KeyRecord::handle_timeout`] made, for the shell's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeout {
    /// A claim's lease ran out: its outcome is unknown.
    LeaseRanOut,
    /// A final answer's TTL ran out: the key is free again.
    AnswerExpired,
    /// An unknown key's TTL ran out unresolved: it is a tombstone now.
    GaveUp,
}

/// One write the shell makes to persist the record, in the order
/// [`KeyRecord::writes`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Write {
    /// Arm the object's alarm for this instant.
    SetAlarm(UnixMs),
    /// Save the record.
    PutRecord,
    /// Delete the saved record.
    DeleteRecord,
    /// Disarm the alarm.
    DeleteAlarm,
}

/// Who holds a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Claimant {
    /// A client's request, which may forward.
    Request,
    /// The object's own alarm, which only looks up.
    Alarm,
}

/// What is known of a key whose forward may have charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Doubt {
    /// When the key was first forwarded: the backend's own record of the
    /// key dates from then.
    first_forward_at: UnixMs,
    /// When the last forward ended (its answer, or the end of its lease): no
    /// forward of this key runs after it.
    last_forward_ended_at: UnixMs,
    /// Reconciliations the alarm has made so far.
    checks: u32,
    /// When the alarm next reconciles.
    next_check_at: UnixMs,
    /// When an unresolved key becomes a tombstone.
    gives_up_at: UnixMs,
}

impl Doubt {
    fn new(first_forward_at: UnixMs, ended_at: UnixMs, policy: &KeyPolicy) -> Self {
        Self {
            first_forward_at,
            last_forward_ended_at: ended_at,
            checks: 0,
            next_check_at: ended_at,
            gives_up_at: ended_at.plus(policy.answer_ttl),
        }
    }

    fn settles_at(&self, policy: &KeyPolicy) -> UnixMs {
        self.last_forward_ended_at.plus(policy.lookup_settle)
    }

    /// Whether a forward sent now still reaches a backend that deduplicates
    /// the key: it arrives within a lease, so it must do so before the key's
    /// retention at the backend runs out.
    fn backend_dedups(&self, now: UnixMs, policy: &KeyPolicy) -> bool {
        !policy.backend_key_retention.is_zero()
            && now.plus(policy.lease) < self.first_forward_at.plus(policy.backend_key_retention)
    }

    /// The doubt after one more inconclusive check by the alarm. The last
    /// check comes when the TTL runs out, however long the backoff; a key
    /// still unresolved after it becomes a tombstone.
    fn checked(mut self, now: UnixMs) -> Self {
        self.checks = self.checks.saturating_add(1);
        let step = CHECK_BACKOFF[(self.checks as usize - 1).min(CHECK_BACKOFF.len() - 1)];
        self.next_check_at = if now < self.gives_up_at {
            now.plus(step).min(self.gives_up_at)
        } else {
            now.plus(step)
        };
        self
    }

    /// Whether the key is given up on: its TTL ran out, and so did the last
    /// check scheduled within it.
    fn given_up(&self, now: UnixMs) -> bool {
        now >= self.gives_up_at && self.next_check_at > self.gives_up_at
    }

    /// The doubt after a lookup at `now` that found nothing yet, within the
    /// settle window. The alarm keeps its backoff, but never past the
    /// window's end, where a lookup becomes conclusive.
    fn found_nothing_yet(self, by: Claimant, now: UnixMs, policy: &KeyPolicy) -> Self {
        let mut doubt = match by {
            Claimant::Alarm => self.checked(now),
            Claimant::Request => Self {
                next_check_at: self.next_check_at.max(now.plus(CHECK_BACKOFF[0])),
                ..self
            },
        };
        doubt.next_check_at = doubt.next_check_at.min(doubt.settles_at(policy));
        doubt
    }
}

/// A held claim.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Claim {
    token: ClaimToken,
    fingerprint: Fingerprint,
    by: Claimant,
    lease_expires_at: UnixMs,
    /// When the claimant's current backend call times out: until then a
    /// duplicate is asked back in a second, after it when the lease ends.
    answer_due_at: UnixMs,
    /// What a reconciling claim is resolving; `None` for a plain claim.
    doubt: Option<Doubt>,
    /// When this claim forwarded, if it has: a plain claim forwards at once,
    /// a reconciling one only after its lookup.
    forwarded_at: Option<UnixMs>,
}

impl Claim {
    fn retry_after_secs(&self, now: UnixMs) -> u32 {
        if now < self.answer_due_at {
            retry_after_secs(IN_FLIGHT_RETRY_AFTER)
        } else {
            retry_after_secs(self.lease_expires_at.since(now))
        }
    }

    /// What is in doubt once this claim ends without an answer at `ended_at`.
    /// `ran` is whether its forward may have run at the backend: not when
    /// the backend replayed an answer saved for an earlier one, which leaves
    /// the doubt about that earlier one as it was.
    fn doubt_after(&self, ended_at: UnixMs, ran: bool, policy: &KeyPolicy) -> Doubt {
        // A replay to a plain claim still counts as a forward: the earlier
        // request it answers for is one the record no longer knows of.
        let ran = self.forwarded_at.filter(|_| ran || self.doubt.is_none());
        match (ran, self.doubt) {
            // It forwarded: the doubt is now about this forward too.
            (Some(forwarded_at), doubt) => Doubt::new(
                doubt.map_or(forwarded_at, |d| d.first_forward_at),
                ended_at,
                policy,
            ),
            // A reconciling claim that never forwarded leaves the doubt as it was.
            (None, Some(doubt)) => doubt,
            (None, None) => Doubt::new(ended_at, ended_at, policy),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum State {
    Vacant,
    Claimed(Claim),
    /// A forward with `fingerprint` may have charged, and nobody knows yet.
    Unknown {
        fingerprint: Fingerprint,
        doubt: Doubt,
    },
    /// Unknown past its TTL: no more alarms, but any claim still reconciles.
    Tombstone {
        fingerprint: Fingerprint,
        doubt: Doubt,
    },
    Completed(Completed),
}

/// The record of one scoped key. Serialisable, so the Durable Object can keep
/// it in its storage between requests and across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyRecord {
    state: State,
}

impl Default for KeyRecord {
    fn default() -> Self {
        Self {
            state: State::Vacant,
        }
    }
}

impl KeyRecord {
    /// Decides a request with `fingerprint` at `now`, claiming the key with
    /// the fresh token `fresh` if it is free or unknown. The checks run in the
    /// contract's order: a result or an unknown outcome for another payload
    /// (mismatch) and a stored result (replay) before a claim in flight.
    pub fn claim(
        &mut self,
        fingerprint: &Fingerprint,
        now: UnixMs,
        fresh: ClaimToken,
        policy: &KeyPolicy,
    ) -> Decision {
        let _ = self.handle_timeout(now, policy);
        let doubt = match &self.state {
            State::Completed(done) => {
                return done
                    .decide(fingerprint, now)
                    .expect("handle_timeout cleared an expired result")
            }
            State::Claimed(claim) => {
                return Decision::InFlight {
                    retry_after_secs: claim.retry_after_secs(now),
                }
            }
            // The key may have charged for that payload; another payload
            // cannot have it, whatever the backend says later.
            State::Unknown {
                fingerprint: held, ..
            }
            | State::Tombstone {
                fingerprint: held, ..
            } if held != fingerprint => return Decision::Mismatch,
            State::Unknown { doubt, .. } | State::Tombstone { doubt, .. } => Some(*doubt),
            State::Vacant => None,
        };
        self.state = State::Claimed(Claim {
            token: fresh,
            fingerprint: fingerprint.clone(),
            by: Claimant::Request,
            lease_expires_at: now.plus(policy.lease),
            answer_due_at: now.plus(policy.backend_timeout),
            doubt,
            forwarded_at: doubt.is_none().then_some(now),
        });
        Decision::Forward {
            token: fresh,
            reconcile: doubt.is_some(),
        }
    }

    /// Claims an unknown key for the object's own reconciliation, if one is
    /// due at `now`; the shell then looks the key up and hands the result to
    /// [`Self::handle_lookup`] with the returned token.
    pub fn begin_check(
        &mut self,
        now: UnixMs,
        fresh: ClaimToken,
        policy: &KeyPolicy,
    ) -> Option<ClaimToken> {
        let _ = self.handle_timeout(now, policy);
        let State::Unknown { fingerprint, doubt } = &self.state else {
            return None;
        };
        if now < doubt.next_check_at {
            return None;
        }
        self.state = State::Claimed(Claim {
            token: fresh,
            fingerprint: fingerprint.clone(),
            by: Claimant::Alarm,
            lease_expires_at: now.plus(policy.lease),
            answer_due_at: now.plus(policy.backend_timeout),
            doubt: Some(*doubt),
            forwarded_at: None,
        });
        Some(fresh)
    }

    /// Settles a reconciling claim with what its lookup `found` at `now`.
    pub fn handle_lookup(
        &mut self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        found: Found,
        now: UnixMs,
        policy: &KeyPolicy,
    ) -> Settlement {
        let _ = self.handle_timeout(now, policy);
        let (by, doubt, held) = match &self.state {
            State::Completed(done) if &done.fingerprint == fingerprint => {
                return Settlement::AlreadyAnswered {
                    response: done.response.clone(),
                }
            }
            State::Claimed(claim) if claim.token == token && claim.forwarded_at.is_none() => (
                claim.by,
                claim
                    .doubt
                    .expect("a claim that has not forwarded is a reconciling one"),
                claim.fingerprint.clone(),
            ),
            _ => return Settlement::NotHeld,
        };
        let settles_at = doubt.settles_at(policy);
        let settlement = match found {
            Found::Answer { response } => {
                self.complete_with_fingerprint(held, response.clone(), now, policy);
                return Settlement::Answered { response };
            }
            Found::Nothing { looked_at } if looked_at >= settles_at => {
                let response = StoredResponse::not_charged();
                self.complete_with_fingerprint(held, response.clone(), now, policy);
                return Settlement::NotCharged { response };
            }
            Found::Nothing { .. }
                if by == Claimant::Request && doubt.backend_dedups(now, policy) =>
            {
                if let State::Claimed(claim) = &mut self.state {
                    // Renewed here, not at the claim: the lookup may have used
                    // up most of the lease, and the forward needs a whole one.
                    claim.lease_expires_at = now.plus(policy.lease);
                    claim.answer_due_at = now.plus(policy.backend_timeout);
                    claim.forwarded_at = Some(now);
                }
                return Settlement::Forward;
            }
            // Ask again soon (the backend's lookup may catch up well within
            // the window), and no later than the window's end.
            Found::Nothing { .. } => Settlement::Pending {
                retry_after_secs: retry_after_secs(settles_at.since(now).min(CHECK_BACKOFF[0])),
            },
            Found::Unknown => Settlement::LookupFailed,
        };
        let doubt = match (&settlement, by) {
            (Settlement::Pending { .. }, by) => doubt.found_nothing_yet(by, now, policy),
            (_, Claimant::Alarm) => doubt.checked(now),
            (_, Claimant::Request) => doubt,
        };
        self.state = State::Unknown {
            fingerprint: held,
            doubt,
        };
        settlement
    }

    /// Records the backend's final answer to the claim `token` for a request
    /// with `fingerprint`, kept for the TTL from `now`.
    pub fn complete(
        &mut self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        response: StoredResponse,
        now: UnixMs,
        policy: &KeyPolicy,
    ) -> CompleteOutcome {
        let _ = self.handle_timeout(now, policy);
        let store = match &self.state {
            State::Completed(done) if &done.fingerprint == fingerprint => {
                return CompleteOutcome::AlreadyCompleted {
                    response: done.response.clone(),
                };
            }
            State::Completed(_) => false,
            // A late answer to an earlier forward of the same payload is the
            // backend's truth about the key, whoever holds it now.
            State::Claimed(claim) => claim.token == token || &claim.fingerprint == fingerprint,
            State::Unknown {
                fingerprint: held, ..
            }
            | State::Tombstone {
                fingerprint: held, ..
            } => held == fingerprint,
            State::Vacant => true,
        };
        if !store {
            return CompleteOutcome::NotStored;
        }
        self.complete_with_fingerprint(fingerprint.clone(), response, now, policy);
        CompleteOutcome::Stored
    }

    /// Replaces the key's answer `previous`, an intent that could still
    /// change ([`crate::backend::unsettled_intent`]), with the same intent as
    /// it is `now` (`response`), kept for at least the TTL from now. Only if
    /// the key still holds `previous`: a refresh that lost a race gets the
    /// answer stored since. (The answer names its intent, so holding it is
    /// holding the payload it answered; no fingerprint is needed, and a
    /// status lookup, which has none, refreshes too.)
    pub fn refresh(
        &mut self,
        previous: &StoredResponse,
        response: StoredResponse,
        now: UnixMs,
        policy: &KeyPolicy,
    ) -> Refreshed {
        let _ = self.handle_timeout(now, policy);
        match &mut self.state {
            State::Completed(done) if &done.response == previous => {
                done.response = response;
                done.expires_at = done.expires_at.max(now.plus(policy.answer_ttl));
                Refreshed::Stored(done.clone())
            }
            State::Completed(done) => Refreshed::Superseded {
                response: done.response.clone(),
            },
            _ => Refreshed::NotStored,
        }
    }

    /// Gives the key back after a failure that certainly charged nothing
    /// (the backend said it did not process the request), so the client's
    /// retry can claim it at once. A reconciling claim leaves the key
    /// unknown: its own forward charged nothing, but the earlier one may
    /// have. Returns whether `token` still held the claim.
    pub fn release(&mut self, token: ClaimToken, now: UnixMs, policy: &KeyPolicy) -> bool {
        let _ = self.handle_timeout(now, policy);
        match &self.state {
            State::Claimed(claim) if claim.token == token => {
                self.state = match claim.doubt {
                    Some(doubt) => State::Unknown {
                        fingerprint: claim.fingerprint.clone(),
                        doubt,
                    },
                    None => State::Vacant,
                };
                true
            }
            _ => false,
        }
    }

    /// Marks the claim `token` as ended at `now` without knowing whether it
    /// charged (the response was lost, or the backend failed mid-request), so
    /// the key is reconciled before anything is forwarded again. `ran` is
    /// false when the backend answered with a failure it saved for an
    /// earlier request with the key
    /// ([`crate::BackendOutcome::SavedUnknown`]): this forward ran nothing,
    /// so it does not restart the settle window, and a customer who keeps
    /// retrying cannot keep the key from settling. Returns whether `token`
    /// still held the claim.
    pub fn abandon(
        &mut self,
        token: ClaimToken,
        ran: bool,
        now: UnixMs,
        policy: &KeyPolicy,
    ) -> bool {
        let _ = self.handle_timeout(now, policy);
        match &self.state {
            State::Claimed(claim) if claim.token == token => {
                self.state = State::Unknown {
                    fingerprint: claim.fingerprint.clone(),
                    doubt: claim.doubt_after(now, ran, policy),
                };
                true
            }
            _ => false,
        }
    }

    /// What a request with `fingerprint` whose order token has expired
    /// learns at `now`, in the order [`Self::claim`] decides, without
    /// changing the record: an expired token never writes.
    pub fn peek(&self, fingerprint: &Fingerprint, now: UnixMs, policy: &KeyPolicy) -> Peek {
        let mut record = self.clone();
        let _ = record.handle_timeout(now, policy);
        match &record.state {
            State::Completed(done) => match done.decide(fingerprint, now) {
                Some(Decision::Replay { response }) => Peek::Replay { response },
                Some(Decision::Mismatch) => Peek::Mismatch,
                _ => Peek::Nothing,
            },
            State::Claimed(claim) => Peek::InFlight {
                retry_after_secs: claim.retry_after_secs(now),
            },
            State::Unknown {
                fingerprint: held, ..
            }
            | State::Tombstone {
                fingerprint: held, ..
            } if held != fingerprint => Peek::Mismatch,
            State::Unknown { .. } | State::Tombstone { .. } | State::Vacant => Peek::Nothing,
        }
    }

    /// What a status lookup learns of the key at `now`. Someone is waiting
    /// for the answer, so an unknown key's next check is brought forward to
    /// now (the alarm runs it at once), and a tombstone is revived.
    pub fn status(&mut self, now: UnixMs, policy: &KeyPolicy) -> KeyStatus {
        let _ = self.handle_timeout(now, policy);
        match &mut self.state {
            State::Vacant => KeyStatus::NotFound,
            State::Completed(done) => KeyStatus::Answered {
                response: done.response.clone(),
            },
            State::Claimed(claim) => KeyStatus::Pending {
                retry_after_secs: claim.retry_after_secs(now),
            },
            State::Unknown { doubt, .. } => {
                doubt.next_check_at = doubt.next_check_at.min(now);
                KeyStatus::Pending {
                    retry_after_secs: retry_after_secs(IN_FLIGHT_RETRY_AFTER),
                }
            }
            State::Tombstone { fingerprint, doubt } => {
                let mut doubt = *doubt;
                doubt.next_check_at = now;
                doubt.gives_up_at = now.plus(policy.answer_ttl);
                self.state = State::Unknown {
                    fingerprint: fingerprint.clone(),
                    doubt,
                };
                KeyStatus::Pending {
                    retry_after_secs: retry_after_secs(IN_FLIGHT_RETRY_AFTER),
                }
            }
        }
    }

    /// When [`Self::handle_timeout`] or [`Self::begin_check`] next has
    /// something to do.
    pub fn poll_timeout(&self) -> Option<UnixMs> {
        match &self.state {
            State::Vacant | State::Tombstone { .. } => None,
            State::Claimed(claim) => Some(claim.lease_expires_at),
            // The next check, or the end of the TTL, whichever is first.
            State::Unknown { doubt, .. } => Some(doubt.next_check_at.min(doubt.gives_up_at)),
            State::Completed(done) => Some(done.expires_at),
        }
    }

    /// Moves the record on at `now`: a claim whose lease ran out becomes an
    /// unknown outcome (its worker is presumed dead or still waiting, and its
    /// request may have charged), an expired answer goes, and an unknown key
    /// past its TTL becomes a tombstone. Returns what changed, for the log.
    pub fn handle_timeout(&mut self, now: UnixMs, policy: &KeyPolicy) -> Vec<Timeout> {
        let mut changes = Vec::new();
        loop {
            let (next, change) = match &self.state {
                State::Claimed(claim) if now >= claim.lease_expires_at => (
                    State::Unknown {
                        fingerprint: claim.fingerprint.clone(),
                        doubt: claim.doubt_after(claim.lease_expires_at, true, policy),
                    },
                    Timeout::LeaseRanOut,
                ),
                State::Unknown { fingerprint, doubt } if doubt.given_up(now) => (
                    State::Tombstone {
                        fingerprint: fingerprint.clone(),
                        doubt: *doubt,
                    },
                    Timeout::GaveUp,
                ),
                State::Completed(done) if now >= done.expires_at => {
                    (State::Vacant, Timeout::AnswerExpired)
                }
                _ => return changes,
            };
            self.state = next;
            changes.push(change);
        }
    }

    /// The writes that persist this record, in order, given whether it
    /// `changed` and the instant the alarm is `armed` for (`None` when no
    /// alarm is set, as in the alarm handler, whose alarm is spent).
    ///
    /// The rule the order keeps, whichever write fails: the alarm is never
    /// later than the deadline of the record in storage. An early alarm is
    /// harmless (its handler finds nothing due and re-arms); a late one
    /// leaves a claim that ran out, or an unknown key, unreconciled. So a
    /// deadline earlier than the armed one (or the first one) is armed
    /// before the record is saved, and a later one only after; a record is
    /// saved (or deleted) before its alarm is deleted.
    pub fn writes(&self, changed: bool, armed: Option<UnixMs>) -> Vec<Write> {
        let mut writes = Vec::new();
        if self.is_vacant() {
            if changed {
                writes.push(Write::DeleteRecord);
            }
            if armed.is_some() {
                writes.push(Write::DeleteAlarm);
            }
            return writes;
        }
        let due = self.poll_timeout();
        let set = due.filter(|at| Some(*at) != armed);
        let later = matches!((set, armed), (Some(at), Some(old)) if at > old);
        if let Some(at) = set.filter(|_| !later) {
            writes.push(Write::SetAlarm(at));
        }
        if changed {
            writes.push(Write::PutRecord);
        }
        if let Some(at) = set.filter(|_| later) {
            writes.push(Write::SetAlarm(at));
        }
        if due.is_none() && armed.is_some() {
            writes.push(Write::DeleteAlarm);
        }
        writes
    }

    /// Whether the record holds nothing (its storage can be deleted).
    pub fn is_vacant(&self) -> bool {
        matches!(self.state, State::Vacant)
    }

    /// Whether an earlier forward's outcome is unknown (the next claim will
    /// reconcile), tombstone included.
    pub fn is_unknown(&self) -> bool {
        matches!(self.state, State::Unknown { .. } | State::Tombstone { .. })
    }

    /// Whether the key is an unresolved tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.state, State::Tombstone { .. })
    }

    /// Whether a claim holds the key.
    pub fn is_claimed(&self) -> bool {
        matches!(self.state, State::Claimed(_))
    }

    /// The stored final result, if any.
    pub fn completed(&self) -> Option<&Completed> {
        match &self.state {
            State::Completed(done) => Some(done),
            _ => None,
        }
    }

    /// The payload the key is bound to, if any.
    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        match &self.state {
            State::Vacant => None,
            State::Claimed(claim) => Some(&claim.fingerprint),
            State::Unknown { fingerprint, .. } | State::Tombstone { fingerprint, .. } => {
                Some(fingerprint)
            }
            State::Completed(done) => Some(&done.fingerprint),
        }
    }

    fn complete_with_fingerprint(
        &mut self,
        fingerprint: Fingerprint,
        response: StoredResponse,
        now: UnixMs,
        policy: &KeyPolicy,
    ) {
        self.state = State::Completed(Completed {
            fingerprint,
            response,
            expires_at: now.plus(policy.answer_ttl),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Order;

    const SEC: Duration = Duration::from_secs(1);
    const LEASE: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(86_400);
    const SETTLE: Duration = Duration::from_secs(120);

    /// A backend whose own deduplication is not relied on.
    fn naive() -> KeyPolicy {
        KeyPolicy {
            lease: LEASE,
            answer_ttl: TTL,
            backend_timeout: Duration::from_secs(10),
            lookup_settle: SETTLE,
            backend_key_retention: Duration::ZERO,
        }
    }

    /// Stripe: keys deduplicated for 24 hours.
    fn stripe() -> KeyPolicy {
        KeyPolicy {
            backend_key_retention: TTL,
            ..naive()
        }
    }

    fn at(secs: u64) -> UnixMs {
        UnixMs(secs * 1000)
    }

    fn fp(amount: u64) -> Fingerprint {
        Fingerprint::of(
            "POST",
            "/v1/orders",
            &Order {
                amount,
                currency: "usd".into(),
                customer: None,
                order_token: None,
                order_ref: "ord".into(),
                payment_method: "pm_card_visa".into(),
            },
        )
    }

    fn response(status: u16, body: &str) -> StoredResponse {
        StoredResponse {
            status,
            content_type: "application/json".into(),
            body: body.into(),
        }
    }

    fn charge() -> StoredResponse {
        response(200, r#"{"id":"pi_1","status":"succeeded"}"#)
    }

    /// Claim tokens as the shell draws them: never the same twice.
    struct Tokens(u64);

    impl Tokens {
        fn next(&mut self) -> ClaimToken {
            self.0 += 1;
            ClaimToken(self.0 * 7_919)
        }
    }

    struct Key {
        record: KeyRecord,
        tokens: Tokens,
        policy: KeyPolicy,
    }

    impl Key {
        fn new(policy: KeyPolicy) -> Self {
            Self {
                record: KeyRecord::default(),
                tokens: Tokens(0),
                policy,
            }
        }

        fn claim(&mut self, fingerprint: &Fingerprint, now: UnixMs) -> Decision {
            let fresh = self.tokens.next();
            self.record.claim(fingerprint, now, fresh, &self.policy)
        }

        fn claimed(&mut self, now: UnixMs) -> ClaimToken {
            match self.claim(&fp(1), now) {
                Decision::Forward {
                    token,
                    reconcile: false,
                } => token,
                other => panic!("expected a plain claim, got {other:?}"),
            }
        }

        fn reconciling(&mut self, now: UnixMs) -> ClaimToken {
            match self.claim(&fp(1), now) {
                Decision::Forward {
                    token,
                    reconcile: true,
                } => token,
                other => panic!("expected a reconciling claim, got {other:?}"),
            }
        }

        fn lookup(&mut self, token: ClaimToken, found: Found, now: UnixMs) -> Settlement {
            self.record
                .handle_lookup(token, &fp(1), found, now, &self.policy)
        }

        fn complete(
            &mut self,
            token: ClaimToken,
            r: StoredResponse,
            now: UnixMs,
        ) -> CompleteOutcome {
            self.record.complete(token, &fp(1), r, now, &self.policy)
        }

        fn abandon(&mut self, token: ClaimToken, now: UnixMs) -> bool {
            self.record.abandon(token, true, now, &self.policy)
        }

        fn release(&mut self, token: ClaimToken, now: UnixMs) -> bool {
            self.record.release(token, now, &self.policy)
        }

        fn check(&mut self, now: UnixMs) -> Option<ClaimToken> {
            let fresh = self.tokens.next();
            self.record.begin_check(now, fresh, &self.policy)
        }

        /// Runs the alarm's checks, each failing to reach the backend, until
        /// the key is given up; returns how many ran.
        fn bury(&mut self) -> usize {
            let mut checks = 0;
            while let Some(now) = self.record.poll_timeout() {
                let _ = self.record.handle_timeout(now, &self.policy);
                let Some(token) = self.check(now) else {
                    break;
                };
                checks += 1;
                assert_eq!(
                    self.lookup(token, Found::Unknown, now),
                    Settlement::LookupFailed
                );
            }
            assert!(self.record.is_tombstone());
            checks
        }

        /// An unknown key: forwarded at `now`, its answer lost at `now`.
        fn lost(policy: KeyPolicy, now: UnixMs) -> Self {
            let mut key = Self::new(policy);
            let token = key.claimed(now);
            assert!(key.abandon(token, now));
            assert!(key.record.is_unknown());
            key
        }
    }

    #[test]
    fn a_replayed_failure_does_not_restart_the_settle_window_and_a_new_run_does() {
        // Lost at 0; a retry at 10 finds nothing yet and forwards again under
        // the same backend key, which answers at 11 with the 500 it saved.
        let settle_after = |ran| {
            let mut key = Key::lost(stripe(), at(0));
            let token = key.reconciling(at(10));
            assert_eq!(
                key.lookup(token, Found::Nothing { looked_at: at(10) }, at(10)),
                Settlement::Forward
            );
            assert!(key.record.abandon(token, ran, at(11), &key.policy));
            let token = key.reconciling(at(121));
            key.lookup(token, Found::Nothing { looked_at: at(121) }, at(121))
        };
        // Nothing ran at 10: the window still counts from 0.
        assert!(matches!(settle_after(false), Settlement::NotCharged { .. }));
        // A forward that may have run restarts it: conclusive only from 131,
        // so the key is forwarded again under the backend key meanwhile.
        assert_eq!(settle_after(true), Settlement::Forward);
    }

    #[test]
    fn a_refresh_replaces_the_answer_it_read_and_no_other() {
        let action = |status: &str| StoredResponse {
            status: 200,
            content_type: "application/json".into(),
            body: format!(r#"{{"id":"pi_1","status":"{status}"}}"#),
        };
        let mut key = Key::new(naive());
        let token = key.claimed(at(0));
        let _ = key.complete(token, action("requires_action"), at(1));
        let policy = key.policy;
        let stored = key.record.refresh(
            &action("requires_action"),
            action("succeeded"),
            at(5),
            &policy,
        );
        let done = key.record.completed().unwrap().clone();
        assert_eq!(stored, Refreshed::Stored(done.clone()));
        assert_eq!(
            (done.fingerprint, done.response, done.expires_at),
            (fp(1), action("succeeded"), at(5).plus(TTL))
        );
        // A second refresh read the old answer: it gets the new one.
        assert_eq!(
            key.record.refresh(
                &action("requires_action"),
                action("canceled"),
                at(6),
                &policy
            ),
            Refreshed::Superseded {
                response: action("succeeded")
            }
        );
        let mut vacant = KeyRecord::default();
        assert_eq!(
            vacant.refresh(
                &action("requires_action"),
                action("succeeded"),
                at(6),
                &policy
            ),
            Refreshed::NotStored
        );
        assert!(vacant.is_vacant());
    }

    #[test]
    fn first_request_is_forwarded() {
        let mut key = Key::new(naive());
        key.claimed(at(0));
        assert!(key.record.is_claimed());
    }

    #[test]
    fn a_duplicate_in_flight_is_asked_back_in_a_second_then_when_the_lease_ends() {
        let mut key = Key::new(naive());
        key.claimed(at(0));
        assert_eq!(
            key.claim(&fp(1), at(1)),
            Decision::InFlight {
                retry_after_secs: 1
            }
        );
        // Past the backend timeout the claimant has given up waiting (or
        // died): the key frees up only when the lease runs out.
        assert_eq!(
            key.claim(&fp(1), at(12)),
            Decision::InFlight {
                retry_after_secs: 18
            }
        );
    }

    #[test]
    fn duplicate_after_completion_is_replayed() {
        let mut key = Key::new(naive());
        let token = key.claimed(at(0));
        assert_eq!(
            key.complete(token, charge(), at(1)),
            CompleteOutcome::Stored
        );
        assert_eq!(
            key.claim(&fp(1), at(2)),
            Decision::Replay { response: charge() }
        );
    }

    #[test]
    fn declines_are_final_and_replayed_too() {
        let mut key = Key::new(naive());
        let token = key.claimed(at(0));
        let declined = response(402, r#"{"error":{"code":"card_declined"}}"#);
        let _ = key.complete(token, declined.clone(), at(1));
        assert_eq!(
            key.claim(&fp(1), at(2)),
            Decision::Replay { response: declined }
        );
    }

    #[test]
    fn other_payload_after_completion_is_a_mismatch() {
        let mut key = Key::new(naive());
        let token = key.claimed(at(0));
        let _ = key.complete(token, charge(), at(1));
        assert_eq!(key.claim(&fp(2), at(2)), Decision::Mismatch);
    }

    #[test]
    fn other_payload_while_in_flight_gets_409_not_422() {
        // The first request may still fail and free the key, so the contract
        // checks for a mismatch only against stored results.
        let mut key = Key::new(naive());
        key.claimed(at(0));
        assert!(matches!(
            key.claim(&fp(2), at(1)),
            Decision::InFlight { .. }
        ));
    }

    #[test]
    fn release_frees_the_key_for_the_retry() {
        let mut key = Key::new(naive());
        let token = key.claimed(at(0));
        assert!(key.release(token, at(1)));
        assert!(key.record.is_vacant());
        key.claimed(at(1));
    }

    #[test]
    fn an_expired_lease_is_taken_over_by_a_reconciling_claim() {
        let mut key = Key::new(naive());
        let first = key.claimed(at(0));
        assert_eq!(key.record.poll_timeout(), Some(at(30)));
        let second = key.reconciling(at(30));
        assert_ne!(first, second);
        // The dead worker's late release or abandon must not free the new claim.
        assert!(!key.release(first, at(31)));
        assert!(!key.abandon(first, at(31)));
        assert!(matches!(
            key.claim(&fp(1), at(31)),
            Decision::InFlight { .. }
        ));
    }

    #[test]
    fn another_payload_cannot_take_over_a_key_that_may_have_charged() {
        let mut key = Key::new(naive());
        key.claimed(at(0));
        assert_eq!(key.claim(&fp(2), at(30)), Decision::Mismatch);
        let mut lost = Key::lost(naive(), at(0));
        assert_eq!(lost.claim(&fp(2), at(1)), Decision::Mismatch);
    }

    #[test]
    fn a_lost_answer_is_reconciled_with_the_charge_the_lookup_finds() {
        let mut key = Key::lost(naive(), at(0));
        let retry = key.reconciling(at(1));
        assert_eq!(
            key.lookup(retry, Found::Answer { response: charge() }, at(2)),
            Settlement::Answered { response: charge() }
        );
        assert_eq!(
            key.claim(&fp(1), at(3)),
            Decision::Replay { response: charge() }
        );
    }

    #[test]
    fn nothing_found_within_the_settle_window_is_not_conclusive() {
        let mut key = Key::lost(naive(), at(0));
        let retry = key.reconciling(at(1));
        assert_eq!(
            key.lookup(retry, Found::Nothing { looked_at: at(2) }, at(2)),
            Settlement::Pending {
                retry_after_secs: 5
            }
        );
        assert!(key.record.is_unknown(), "still unknown, never vacant");
        // The alarm checks again after its first backoff step.
        assert_eq!(key.record.poll_timeout(), Some(at(7)));
        // Close to the window's end, both wait only for the end.
        let retry = key.reconciling(at(118));
        assert_eq!(
            key.lookup(retry, Found::Nothing { looked_at: at(118) }, at(118)),
            Settlement::Pending {
                retry_after_secs: 2
            }
        );
        assert_eq!(key.record.poll_timeout(), Some(at(120)));
    }

    #[test]
    fn nothing_found_after_the_settle_window_is_a_final_not_charged() {
        let mut key = Key::lost(naive(), at(0));
        let retry = key.reconciling(at(120));
        let not_charged = StoredResponse::not_charged();
        assert_eq!(not_charged.status, 410);
        assert_eq!(
            key.lookup(retry, Found::Nothing { looked_at: at(121) }, at(121)),
            Settlement::NotCharged {
                response: not_charged.clone()
            }
        );
        assert_eq!(
            key.claim(&fp(1), at(122)),
            Decision::Replay {
                response: not_charged
            }
        );
    }

    #[test]
    fn a_lookup_made_within_the_window_is_not_conclusive_however_late_it_arrives() {
        let policy = KeyPolicy {
            lookup_settle: Duration::from_secs(10),
            ..naive()
        };
        let mut key = Key::lost(policy, at(0));
        let retry = key.reconciling(at(1));
        // Sent at 1 s, when the charge may not have been searchable yet; its
        // answer reaches the object at 20 s, after the window.
        assert!(matches!(
            key.lookup(retry, Found::Nothing { looked_at: at(1) }, at(20)),
            Settlement::Pending { .. }
        ));
        assert!(key.record.is_unknown());
    }

    #[test]
    fn the_settle_window_counts_from_the_end_of_a_timed_out_forwards_lease() {
        let mut key = Key::new(naive());
        key.claimed(at(0));
        // The lease ran out at 30 s: the forward may have charged until then.
        let retry = key.reconciling(at(140));
        assert!(matches!(
            key.lookup(retry, Found::Nothing { looked_at: at(141) }, at(141)),
            Settlement::Pending {
                retry_after_secs: 5
            }
        ));
        let retry = key.reconciling(at(150));
        assert!(matches!(
            key.lookup(retry, Found::Nothing { looked_at: at(150) }, at(150)),
            Settlement::NotCharged { .. }
        ));
    }

    #[test]
    fn a_backend_that_still_deduplicates_the_key_gets_the_forward_on_a_renewed_lease() {
        let mut key = Key::lost(stripe(), at(0));
        let retry = key.reconciling(at(1));
        // A slow lookup used up most of the lease.
        assert_eq!(
            key.lookup(retry, Found::Nothing { looked_at: at(29) }, at(29)),
            Settlement::Forward
        );
        assert_eq!(key.record.poll_timeout(), Some(at(59)), "a whole new lease");
        assert!(matches!(
            key.claim(&fp(1), at(45)),
            Decision::InFlight { .. }
        ));
        assert_eq!(
            key.complete(retry, charge(), at(46)),
            CompleteOutcome::Stored
        );
        // A forward that ends unknown again keeps the first forward's time:
        // the backend's retention runs from the key's first use.
        let mut again = Key::lost(stripe(), at(0));
        let retry = again.reconciling(at(1));
        let _ = again.lookup(retry, Found::Nothing { looked_at: at(2) }, at(2));
        assert!(again.abandon(retry, at(3)));
        let late = TTL.as_secs() - 20;
        let retry = again.reconciling(at(late));
        assert!(
            matches!(
                again.lookup(
                    retry,
                    Found::Nothing {
                        looked_at: at(late)
                    },
                    at(late)
                ),
                Settlement::NotCharged { .. }
            ),
            "past the settle window the lookup decides"
        );
    }

    #[test]
    fn no_forward_once_the_backend_may_have_pruned_the_key() {
        let policy = KeyPolicy {
            lookup_settle: Duration::from_secs(90_000),
            ..stripe()
        };
        let mut key = Key::lost(policy, at(0));
        // Within a lease of the retention's end a forward could arrive after
        // the backend forgot the key.
        let edge = TTL.as_secs() - 30;
        let retry = key.reconciling(at(edge));
        assert!(matches!(
            key.lookup(
                retry,
                Found::Nothing {
                    looked_at: at(edge)
                },
                at(edge)
            ),
            Settlement::Pending { .. }
        ));
        let retry = key.reconciling(at(edge - 1));
        assert_eq!(
            key.lookup(
                retry,
                Found::Nothing {
                    looked_at: at(edge - 1)
                },
                at(edge - 1)
            ),
            Settlement::Forward
        );
    }

    #[test]
    fn a_reconciling_claim_given_back_stays_unknown() {
        let mut key = Key::lost(stripe(), at(0));
        let retry = key.reconciling(at(1));
        assert_eq!(
            key.lookup(retry, Found::Unknown, at(2)),
            Settlement::LookupFailed
        );
        assert!(key.record.is_unknown());
        // The lookup found nothing, the forward got a 503: still unknown.
        let retry = key.reconciling(at(3));
        assert_eq!(
            key.lookup(retry, Found::Nothing { looked_at: at(3) }, at(3)),
            Settlement::Forward
        );
        assert!(key.release(retry, at(4)));
        assert!(key.record.is_unknown());
        key.reconciling(at(5));
    }

    #[test]
    fn a_lookup_after_the_lease_was_lost_settles_nothing() {
        let mut key = Key::lost(naive(), at(0));
        let slow = key.reconciling(at(1));
        let other = key.reconciling(at(31));
        assert_eq!(
            key.lookup(slow, Found::Answer { response: charge() }, at(32)),
            Settlement::NotHeld
        );
        assert_eq!(
            key.lookup(other, Found::Answer { response: charge() }, at(32)),
            Settlement::Answered { response: charge() }
        );
        // Whoever asks next hears the stored answer.
        assert_eq!(
            key.lookup(slow, Found::Nothing { looked_at: at(33) }, at(33)),
            Settlement::AlreadyAnswered { response: charge() }
        );
    }

    #[test]
    fn an_unknown_outcome_is_never_forgotten() {
        let mut key = Key::lost(naive(), at(10));
        let ttl = TTL.as_secs();
        // The lookup keeps failing; the alarm keeps trying until the TTL.
        let checks = key.bury();
        // At 0 s, 5 s, 65 s, 665 s, then hourly, and a last time when the
        // day is out.
        assert_eq!(checks, 4 + 23 + 1);
        assert_eq!(key.record.poll_timeout(), None, "no more alarms");
        // Years later, the same key still reconciles before anything is sent.
        let retry = key.reconciling(at(10 + 1_000 * ttl));
        assert_eq!(
            key.lookup(
                retry,
                Found::Answer { response: charge() },
                at(10 + 1_000 * ttl)
            ),
            Settlement::Answered { response: charge() }
        );
    }

    #[test]
    fn the_alarm_reconciles_at_once_then_with_backoff_and_never_forwards() {
        let mut key = Key::lost(stripe(), at(0));
        assert_eq!(key.record.poll_timeout(), Some(at(0)), "at once");
        let mut now = at(0);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let token = key.check(now).expect("a check is due");
            assert_eq!(
                key.lookup(token, Found::Unknown, now),
                Settlement::LookupFailed
            );
            let next = key.record.poll_timeout().unwrap();
            waits.push(next.since(now).as_secs());
            assert_eq!(key.check(UnixMs(next.0 - 1)), None, "not before it is due");
            now = next;
        }
        assert_eq!(waits, [5, 60, 600, 3_600, 3_600, 3_600]);
        // Nothing found before the settle window: the alarm waits for the
        // window rather than forwarding, even though Stripe would deduplicate.
        let token = key.check(now).unwrap();
        assert!(matches!(
            key.lookup(token, Found::Nothing { looked_at: now }, now),
            Settlement::Pending { .. } | Settlement::NotCharged { .. }
        ));
        let mut fresh = Key::lost(stripe(), at(0));
        let mut now = at(0);
        let mut checks = Vec::new();
        while now < at(120) {
            let token = fresh.check(now).unwrap();
            assert!(matches!(
                fresh.lookup(token, Found::Nothing { looked_at: now }, now),
                Settlement::Pending { .. }
            ));
            now = fresh.record.poll_timeout().unwrap();
            checks.push(now.as_secs());
        }
        assert_eq!(checks, [5, 65, 120], "the backoff, then the window's end");
        let token = fresh.check(at(120)).unwrap();
        assert!(matches!(
            fresh.lookup(token, Found::Nothing { looked_at: at(120) }, at(120)),
            Settlement::NotCharged { .. }
        ));
    }

    #[test]
    fn a_claim_saved_whose_reply_was_lost_is_reconciled_by_the_alarm() {
        let mut key = Key::new(naive());
        key.claimed(at(0));
        // Nobody hears of the claim again; its alarm is due at the lease's end.
        assert_eq!(key.record.poll_timeout(), Some(at(30)));
        let token = key.check(at(30)).expect("the lease ran out: check at once");
        assert_eq!(
            key.lookup(token, Found::Answer { response: charge() }, at(30)),
            Settlement::Answered { response: charge() }
        );
    }

    #[test]
    fn a_late_completion_for_the_same_payload_is_kept() {
        let mut key = Key::new(naive());
        let first = key.claimed(at(0));
        let second = key.reconciling(at(30));
        assert_eq!(
            key.complete(first, charge(), at(31)),
            CompleteOutcome::Stored
        );
        assert_eq!(
            key.complete(second, response(200, r#"{"id":"pi_2"}"#), at(32)),
            CompleteOutcome::AlreadyCompleted { response: charge() }
        );
    }

    #[test]
    fn a_late_completion_reaches_an_unknown_key_a_tombstone_or_a_vacant_one() {
        let mut key = Key::lost(naive(), at(0));
        let token = ClaimToken(1);
        assert_eq!(
            key.complete(token, charge(), at(1)),
            CompleteOutcome::Stored
        );

        let mut buried = Key::lost(naive(), at(0));
        buried.bury();
        assert_eq!(
            buried.complete(token, charge(), at(TTL.as_secs())),
            CompleteOutcome::Stored
        );

        let mut vacant = Key::new(naive());
        assert_eq!(
            vacant.complete(token, charge(), at(1)),
            CompleteOutcome::Stored
        );
        assert!(vacant.record.completed().is_some());
    }

    #[test]
    fn a_completion_after_the_lease_ran_out_is_kept() {
        let mut key = Key::new(naive());
        let first = key.claimed(at(0));
        assert_eq!(
            key.complete(first, charge(), at(31)),
            CompleteOutcome::Stored
        );
        assert_eq!(
            key.claim(&fp(1), at(32)),
            Decision::Replay { response: charge() }
        );
    }

    #[test]
    fn results_expire_after_the_ttl() {
        let mut key = Key::new(naive());
        let token = key.claimed(at(0));
        let _ = key.complete(token, charge(), at(0));
        assert_eq!(key.record.poll_timeout(), Some(at(0).plus(TTL)));
        assert!(key
            .record
            .handle_timeout(at(0).plus(TTL - SEC), &key.policy)
            .is_empty());
        assert_eq!(
            key.record.handle_timeout(at(0).plus(TTL), &key.policy),
            [Timeout::AnswerExpired]
        );
        assert!(key.record.is_vacant());
        assert_eq!(key.record.poll_timeout(), None);
    }

    #[test]
    fn a_status_lookup_reports_each_state_and_revives_a_tombstone() {
        let policy = naive();
        let mut key = Key::new(policy);
        assert_eq!(key.record.status(at(0), &policy), KeyStatus::NotFound);
        let token = key.claimed(at(0));
        assert_eq!(
            key.record.status(at(0), &policy),
            KeyStatus::Pending {
                retry_after_secs: 1
            }
        );
        assert!(key.abandon(token, at(1)));
        let token = key.check(at(1)).unwrap();
        let _ = key.lookup(token, Found::Unknown, at(1));
        assert_eq!(key.record.poll_timeout(), Some(at(6)));
        // Someone waits for the answer: the next check is brought forward.
        assert_eq!(
            key.record.status(at(2), &policy),
            KeyStatus::Pending {
                retry_after_secs: 1
            }
        );
        assert_eq!(key.record.poll_timeout(), Some(at(2)));
        key.bury();
        assert!(key.record.is_tombstone());
        let later = at(1).plus(TTL * 2);
        assert!(matches!(
            key.record.status(later, &policy),
            KeyStatus::Pending { .. }
        ));
        assert_eq!(key.record.poll_timeout(), Some(later), "the alarm is back");
        let token = key.check(later).unwrap();
        let _ = key.lookup(token, Found::Answer { response: charge() }, later);
        assert_eq!(
            key.record.status(later, &policy),
            KeyStatus::Answered { response: charge() }
        );
    }

    #[test]
    fn the_alarm_is_armed_before_the_record_is_written() {
        let policy = naive();
        let before = KeyRecord::default();
        let mut record = before.clone();
        let _ = record.claim(&fp(1), at(0), ClaimToken(9), &policy);
        assert_eq!(
            record.writes(true, before.poll_timeout()),
            [Write::SetAlarm(at(30)), Write::PutRecord]
        );
        // A refused or replayed request changes nothing and writes nothing.
        let same = record.clone();
        let _ = record.claim(&fp(1), at(1), ClaimToken(10), &policy);
        assert_eq!(record, same);
        assert_eq!(record.writes(false, record.poll_timeout()), []);
        // The alarm handler's alarm is spent: it re-arms even an unchanged record.
        assert_eq!(record.writes(false, None), [Write::SetAlarm(at(30))]);
        // A later deadline (the answer's expiry after the lease's end) is
        // armed only once the record is saved, so the alarm is never late.
        let mut answered = record.clone();
        let armed = answered.poll_timeout();
        let _ = answered.complete(ClaimToken(9), &fp(1), charge(), at(1), &policy);
        assert_eq!(
            answered.writes(true, armed),
            [Write::PutRecord, Write::SetAlarm(at(1).plus(TTL))]
        );
        // An earlier one (an unknown outcome to check at once) before it.
        let mut lost = record.clone();
        assert!(lost.abandon(ClaimToken(9), true, at(1), &policy));
        assert_eq!(
            lost.writes(true, armed),
            [Write::SetAlarm(at(1)), Write::PutRecord]
        );
        // A released key is deleted before its alarm is.
        let armed = record.poll_timeout();
        assert!(record.release(ClaimToken(9), at(2), &policy));
        assert_eq!(
            record.writes(true, armed),
            [Write::DeleteRecord, Write::DeleteAlarm]
        );
        // A tombstone keeps its record and drops its alarm, in that order.
        let mut key = Key::lost(policy, at(0));
        key.bury();
        let buried = key.record;
        let armed = Some(at(0).plus(TTL));
        assert_eq!(
            buried.writes(true, armed),
            [Write::PutRecord, Write::DeleteAlarm]
        );
    }

    #[test]
    fn a_stale_token_never_touches_a_later_claim_even_after_the_record_was_deleted() {
        let policy = naive();
        let mut record = KeyRecord::default();
        let _ = record.claim(&fp(1), at(0), ClaimToken(1), &policy);
        assert!(record.release(ClaimToken(1), at(1), &policy));
        // The shell deleted the vacant record; a new claim gets a new random token.
        let mut record = KeyRecord::default();
        let _ = record.claim(&fp(1), at(2), ClaimToken(77), &policy);
        assert!(!record.release(ClaimToken(1), at(3), &policy));
        assert!(record.is_claimed());
    }

    #[test]
    fn the_kv_copy_decides_like_the_record() {
        let done = Completed {
            fingerprint: fp(1),
            response: charge(),
            expires_at: at(100),
        };
        assert_eq!(
            done.decide(&fp(1), at(99)),
            Some(Decision::Replay { response: charge() })
        );
        assert_eq!(done.decide(&fp(2), at(99)), Some(Decision::Mismatch));
        assert_eq!(done.decide(&fp(1), at(100)), None);
    }

    #[test]
    fn the_record_survives_a_storage_round_trip() {
        let mut key = Key::lost(stripe(), at(0));
        let json = serde_json::to_string(&key.record).unwrap();
        assert_eq!(
            serde_json::from_str::<KeyRecord>(&json).unwrap(),
            key.record
        );
        let token = key.reconciling(at(1));
        let _ = key.complete(token, response(201, "{\"a\":1}"), at(2));
        let json = serde_json::to_string(&key.record).unwrap();
        assert_eq!(
            serde_json::from_str::<KeyRecord>(&json).unwrap(),
            key.record
        );
    }
}
