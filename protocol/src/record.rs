//! The authoritative record of one scoped idempotency key, and the edge's
//! decision for each request that carries it.
//!
//! One record lives in one Durable Object (named by
//! [`crate::ScopedKey::storage_name`]), which runs these methods one at a time;
//! that is what makes a claim atomic. The record moves between four states:
//!
//! ```text
//!            claim                     complete (final answer)
//!  Vacant ──────────▶ Claimed ───────────────────────────────▶ Completed
//!    ▲   release       │  ▲ │                                     │
//!    ├─ (not charged) ─┘  │ │ abandon (maybe charged) or           │
//!    │                    │ ▼ the lease ran out (worker died,      │
//!    │   claim (same      │   backend still busy)                  │
//!    │   payload): must ──┴── Unknown                              │
//!    │   reconcile first        │                                  │
//!    └──────── TTL expiry ◀─────┴────────── TTL expiry ◀───────────┘
//! ```
//!
//! `Unknown` is what keeps a lost response from becoming a second charge: a
//! key whose forward may have charged is never forwarded again blind. The
//! next claim for it comes with [`Decision::Forward`]'s `reconcile` set, and
//! the edge asks the backend whether it charged under the key (see
//! [`crate::backend::classify_lookup`]) before it forwards again. This is
//! sound as long as the backend finishes any request within the lease, which
//! is why the lease must outlast the backend timeout (see
//! [`crate::config::ConfigError::LeaseShorterThanTimeout`]).
//!
//! Time is passed in as Unix milliseconds; the record never reads a clock.
//! [`KeyRecord::poll_timeout`] tells the shell when to call
//! [`KeyRecord::handle_timeout`] (the Durable Object arms an alarm for it).

use crate::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};

/// The `Retry-After` sent with a 409: in-flight requests usually finish within
/// a second, and the client backs off on its own if not.
pub const IN_FLIGHT_RETRY_AFTER_SECS: u32 = 1;

/// A backend response kept for replay, exactly as the client first got it.
///
/// Only the status, the media type and the body are kept: headers such as
/// `Set-Cookie` or hop-by-hop ones are never stored, so never replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A final result and what it was a result of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    /// The fingerprint of the request that produced the result.
    pub fingerprint: Fingerprint,
    /// The result.
    pub response: StoredResponse,
    /// When the record may be forgotten (Unix ms).
    pub expires_at_ms: u64,
}

impl Completed {
    /// What a request with `fingerprint` gets from this result at `now_ms`;
    /// `None` once the result has expired (the key is free again). The KV
    /// fast path uses this on its cached copy; [`KeyRecord::claim`] on the
    /// authoritative one.
    #[must_use]
    pub fn decide(&self, fingerprint: &Fingerprint, now_ms: u64) -> Option<Decision> {
        if now_ms >= self.expires_at_ms {
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

/// Identifies one claim, so that a worker whose lease was taken over cannot
/// release the claim of the worker that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimToken(pub u64);

/// What the edge does with a request. Exhaustive on purpose: a new kind of
/// decision must be handled by every shell. Serialisable because the Durable
/// Object sends it back to the Worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
#[must_use]
pub enum Decision {
    /// The key is ours: forward the request to the backend, then
    /// [`KeyRecord::complete`], [`KeyRecord::release`] or
    /// [`KeyRecord::abandon`] with this token.
    Forward {
        /// The claim to settle.
        token: ClaimToken,
        /// An earlier forward with this key may have charged: ask the backend
        /// first, and complete with what it found instead of forwarding.
        reconcile: bool,
    },
    /// The request was already answered: send this response again.
    Replay {
        /// The stored response.
        response: StoredResponse,
    },
    /// The key was used for a different payload: refuse with 422.
    Mismatch,
    /// Another request with this key is being forwarded: refuse with 409.
    InFlight {
        /// Seconds the client should wait before retrying.
        retry_after_secs: u32,
    },
}

/// What became of a backend result handed to [`KeyRecord::complete`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Our lease ran out and a request with another payload holds the key now:
    /// nothing was stored; the client gets its own backend response.
    NotStored,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum State {
    Vacant,
    Claimed {
        token: ClaimToken,
        fingerprint: Fingerprint,
        lease_expires_at_ms: u64,
        /// Whether the claimant was told to reconcile: if it gives the key
        /// back without an answer, the key is still [`State::Unknown`].
        reconcile: bool,
        /// How long an unknown outcome is remembered if this claim ends in one.
        ttl_ms: u64,
    },
    /// A forward with `fingerprint` may have charged, and nobody knows.
    Unknown {
        fingerprint: Fingerprint,
        expires_at_ms: u64,
    },
    Completed(Completed),
}

/// The record of one scoped key. Serialisable, so the Durable Object can keep
/// it in its storage between requests and across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    state: State,
    /// Tokens are never reused, even after the record went back to vacant.
    next_token: u64,
}

impl Default for KeyRecord {
    fn default() -> Self {
        Self {
            state: State::Vacant,
            next_token: 1,
        }
    }
}

impl KeyRecord {
    /// Decides a request with `fingerprint` at `now_ms`, claiming the key for
    /// `lease_ms` if it is free. `ttl_ms` is how long an outcome (known or
    /// not) is kept. The checks run in the contract's order: a result or an
    /// unknown outcome for another payload (mismatch) and a stored result
    /// (replay) before a claim in flight.
    pub fn claim(
        &mut self,
        fingerprint: &Fingerprint,
        now_ms: u64,
        lease_ms: u64,
        ttl_ms: u64,
    ) -> Decision {
        self.handle_timeout(now_ms);
        let reconcile = match &self.state {
            State::Completed(done) => {
                return done
                    .decide(fingerprint, now_ms)
                    .expect("handle_timeout cleared an expired result")
            }
            State::Claimed { .. } => {
                return Decision::InFlight {
                    retry_after_secs: IN_FLIGHT_RETRY_AFTER_SECS,
                }
            }
            // The key may have charged for that payload; another payload
            // cannot have it, whatever the backend says later.
            State::Unknown {
                fingerprint: held, ..
            } if held != fingerprint => return Decision::Mismatch,
            State::Unknown { .. } => true,
            State::Vacant => false,
        };
        let token = ClaimToken(self.next_token);
        self.next_token += 1;
        self.state = State::Claimed {
            token,
            fingerprint: fingerprint.clone(),
            lease_expires_at_ms: now_ms.saturating_add(lease_ms),
            reconcile,
            ttl_ms,
        };
        Decision::Forward { token, reconcile }
    }

    /// Records the backend's final answer to the claim `token` for a request
    /// with `fingerprint`, kept until `now_ms + ttl_ms`. A reconciling claim
    /// completes with what the backend's lookup found.
    pub fn complete(
        &mut self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        response: StoredResponse,
        now_ms: u64,
        ttl_ms: u64,
    ) -> CompleteOutcome {
        self.handle_timeout(now_ms);
        let store = match &self.state {
            State::Completed(done) if &done.fingerprint == fingerprint => {
                return CompleteOutcome::AlreadyCompleted {
                    response: done.response.clone(),
                };
            }
            State::Completed(_) => false,
            State::Claimed {
                token: holder,
                fingerprint: held,
                ..
            } => *holder == token || held == fingerprint,
            // Our lease ran out before the answer came: the backend's answer
            // is still the truth about this key.
            State::Unknown {
                fingerprint: held, ..
            } => held == fingerprint,
            State::Vacant => true,
        };
        if !store {
            return CompleteOutcome::NotStored;
        }
        self.state = State::Completed(Completed {
            fingerprint: fingerprint.clone(),
            response,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
        });
        CompleteOutcome::Stored
    }

    /// Gives the key back after a failure that certainly charged nothing
    /// (the backend said it did not process the request), so the client's
    /// retry can claim it at once. A reconciling claim leaves the key
    /// unknown: its own forward charged nothing, but the earlier one may
    /// have. Returns whether `token` still held the claim.
    pub fn release(&mut self, token: ClaimToken, now_ms: u64) -> bool {
        match &self.state {
            State::Claimed {
                token: holder,
                fingerprint,
                reconcile,
                ttl_ms,
                ..
            } if *holder == token => {
                self.state = if *reconcile {
                    State::Unknown {
                        fingerprint: fingerprint.clone(),
                        expires_at_ms: now_ms.saturating_add(*ttl_ms),
                    }
                } else {
                    State::Vacant
                };
                true
            }
            _ => false,
        }
    }

    /// Marks the claim `token` as ended without knowing whether it charged
    /// (the response was lost, or the backend failed mid-request), so the
    /// retry reconciles before it forwards. Returns whether `token` still
    /// held the claim.
    pub fn abandon(&mut self, token: ClaimToken, now_ms: u64) -> bool {
        match &self.state {
            State::Claimed {
                token: holder,
                fingerprint,
                ttl_ms,
                ..
            } if *holder == token => {
                self.state = State::Unknown {
                    fingerprint: fingerprint.clone(),
                    expires_at_ms: now_ms.saturating_add(*ttl_ms),
                };
                true
            }
            _ => false,
        }
    }

    /// When [`Self::handle_timeout`] next has something to do (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        match &self.state {
            State::Vacant => None,
            State::Claimed {
                lease_expires_at_ms,
                ..
            } => Some(*lease_expires_at_ms),
            State::Unknown { expires_at_ms, .. } => Some(*expires_at_ms),
            State::Completed(done) => Some(done.expires_at_ms),
        }
    }

    /// Lets expired results go, and turns a claim whose lease ran out into
    /// an unknown outcome: its worker is presumed dead or still waiting, and
    /// its request may have charged.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.poll_timeout().is_none_or(|at| now_ms < at) {
            return;
        }
        self.state = match &self.state {
            State::Claimed {
                fingerprint,
                lease_expires_at_ms,
                ttl_ms,
                ..
            } if lease_expires_at_ms.saturating_add(*ttl_ms) > now_ms => State::Unknown {
                fingerprint: fingerprint.clone(),
                expires_at_ms: lease_expires_at_ms.saturating_add(*ttl_ms),
            },
            _ => State::Vacant,
        };
    }

    /// Whether the record holds nothing (its storage can be deleted).
    pub fn is_vacant(&self) -> bool {
        matches!(self.state, State::Vacant)
    }

    /// Whether an earlier forward's outcome is unknown (the next claim will
    /// reconcile).
    pub fn is_unknown(&self) -> bool {
        matches!(self.state, State::Unknown { .. })
    }

    /// The stored final result, if any.
    pub fn completed(&self) -> Option<&Completed> {
        match &self.state {
            State::Completed(done) => Some(done),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Order;

    const LEASE: u64 = 30_000;
    const TTL: u64 = 86_400_000;

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

    fn claimed(record: &mut KeyRecord, fingerprint: &Fingerprint, now: u64) -> ClaimToken {
        match record.claim(fingerprint, now, LEASE, TTL) {
            Decision::Forward {
                token,
                reconcile: false,
            } => token,
            other => panic!("expected a plain claim, got {other:?}"),
        }
    }

    fn reconciling(record: &mut KeyRecord, fingerprint: &Fingerprint, now: u64) -> ClaimToken {
        match record.claim(fingerprint, now, LEASE, TTL) {
            Decision::Forward {
                token,
                reconcile: true,
            } => token,
            other => panic!("expected a reconciling claim, got {other:?}"),
        }
    }

    #[test]
    fn first_request_is_forwarded() {
        let mut record = KeyRecord::default();
        assert!(matches!(
            record.claim(&fp(1), 0, LEASE, TTL),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn duplicate_while_in_flight_gets_409() {
        let mut record = KeyRecord::default();
        claimed(&mut record, &fp(1), 0);
        assert_eq!(
            record.claim(&fp(1), 10, LEASE, TTL),
            Decision::InFlight {
                retry_after_secs: 1
            }
        );
    }

    #[test]
    fn duplicate_after_completion_is_replayed() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        let ok = response(200, r#"{"id":"pi_1"}"#);
        assert_eq!(
            record.complete(token, &fp(1), ok.clone(), 5, TTL),
            CompleteOutcome::Stored
        );
        assert_eq!(
            record.claim(&fp(1), 10, LEASE, TTL),
            Decision::Replay { response: ok }
        );
    }

    #[test]
    fn declines_are_final_and_replayed_too() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        let declined = response(402, r#"{"error":{"code":"card_declined"}}"#);
        let _ = record.complete(token, &fp(1), declined.clone(), 5, TTL);
        assert_eq!(
            record.claim(&fp(1), 10, LEASE, TTL),
            Decision::Replay { response: declined }
        );
    }

    #[test]
    fn other_payload_after_completion_is_a_mismatch() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        let _ = record.complete(token, &fp(1), response(200, "{}"), 5, TTL);
        assert_eq!(record.claim(&fp(2), 10, LEASE, TTL), Decision::Mismatch);
    }

    #[test]
    fn other_payload_while_in_flight_gets_409_not_422() {
        // The first request may still fail and free the key, so the contract
        // checks for a mismatch only against stored results.
        let mut record = KeyRecord::default();
        claimed(&mut record, &fp(1), 0);
        assert!(matches!(
            record.claim(&fp(2), 1, LEASE, TTL),
            Decision::InFlight { .. }
        ));
    }

    #[test]
    fn release_frees_the_key_for_the_retry() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        assert!(record.release(token, 1));
        assert!(record.is_vacant());
        assert!(matches!(
            record.claim(&fp(1), 1, LEASE, TTL),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn an_expired_lease_is_taken_over_by_a_reconciling_claim() {
        let mut record = KeyRecord::default();
        let first = claimed(&mut record, &fp(1), 0);
        assert!(matches!(
            record.claim(&fp(1), LEASE - 1, LEASE, TTL),
            Decision::InFlight { .. }
        ));
        // The first worker may have died after the backend charged.
        let second = reconciling(&mut record, &fp(1), LEASE);
        assert_ne!(first, second);
        // The dead worker's late release or abandon must not free the new claim.
        assert!(!record.release(first, LEASE + 1));
        assert!(!record.abandon(first, LEASE + 1));
        assert!(matches!(
            record.claim(&fp(1), LEASE + 1, LEASE, TTL),
            Decision::InFlight { .. }
        ));
    }

    #[test]
    fn another_payload_cannot_take_over_a_key_that_may_have_charged() {
        let mut record = KeyRecord::default();
        claimed(&mut record, &fp(1), 0);
        assert_eq!(record.claim(&fp(2), LEASE, LEASE, TTL), Decision::Mismatch);

        let mut lost = KeyRecord::default();
        let token = claimed(&mut lost, &fp(1), 0);
        assert!(lost.abandon(token, 5));
        assert_eq!(lost.claim(&fp(2), 6, LEASE, TTL), Decision::Mismatch);
    }

    #[test]
    fn a_lost_answer_makes_the_retry_reconcile() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        assert!(record.abandon(token, 5));
        assert!(record.is_unknown());
        let retry = reconciling(&mut record, &fp(1), 6);
        // The lookup found the charge: it becomes the key's final answer.
        let found = response(200, r#"{"id":"pi_1"}"#);
        assert_eq!(
            record.complete(retry, &fp(1), found.clone(), 7, TTL),
            CompleteOutcome::Stored
        );
        assert_eq!(
            record.claim(&fp(1), 8, LEASE, TTL),
            Decision::Replay { response: found }
        );
    }

    #[test]
    fn a_reconciling_claim_given_back_stays_unknown() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        assert!(record.abandon(token, 1));
        let retry = reconciling(&mut record, &fp(1), 2);
        // The lookup failed, or the lookup found nothing and the new forward
        // answered 503: the first forward may still have charged.
        assert!(record.release(retry, 3));
        assert!(record.is_unknown());
        reconciling(&mut record, &fp(1), 4);
    }

    #[test]
    fn an_unknown_outcome_is_forgotten_after_the_ttl() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        assert!(record.abandon(token, 10));
        assert_eq!(record.poll_timeout(), Some(10 + TTL));
        record.handle_timeout(10 + TTL);
        assert!(record.is_vacant());
        // An expired lease is remembered as unknown for the TTL after it.
        claimed(&mut record, &fp(1), 20 + TTL);
        record.handle_timeout(20 + TTL + LEASE);
        assert!(record.is_unknown());
        assert_eq!(record.poll_timeout(), Some(20 + TTL + LEASE + TTL));
    }

    #[test]
    fn a_late_completion_for_the_same_payload_is_kept() {
        let mut record = KeyRecord::default();
        let first = claimed(&mut record, &fp(1), 0);
        let second = reconciling(&mut record, &fp(1), LEASE);
        let ok = response(200, r#"{"id":"pi_1"}"#);
        assert_eq!(
            record.complete(first, &fp(1), ok.clone(), LEASE + 1, TTL),
            CompleteOutcome::Stored
        );
        // The newer claimant's own answer yields to the stored one.
        assert_eq!(
            record.complete(
                second,
                &fp(1),
                response(200, r#"{"id":"pi_2"}"#),
                LEASE + 2,
                TTL
            ),
            CompleteOutcome::AlreadyCompleted { response: ok }
        );
    }

    #[test]
    fn a_completion_after_the_lease_ran_out_is_kept() {
        let mut record = KeyRecord::default();
        let first = claimed(&mut record, &fp(1), 0);
        let ok = response(200, r#"{"id":"pi_1"}"#);
        assert_eq!(
            record.complete(first, &fp(1), ok.clone(), LEASE + 1, TTL),
            CompleteOutcome::Stored
        );
        assert_eq!(
            record.claim(&fp(1), LEASE + 2, LEASE, TTL),
            Decision::Replay { response: ok }
        );
    }

    #[test]
    fn results_expire_after_the_ttl() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        let _ = record.complete(token, &fp(1), response(200, "{}"), 0, TTL);
        assert_eq!(record.poll_timeout(), Some(TTL));
        record.handle_timeout(TTL - 1);
        assert!(!record.is_vacant());
        record.handle_timeout(TTL);
        assert!(record.is_vacant());
        assert_eq!(record.poll_timeout(), None);
    }

    #[test]
    fn the_kv_copy_decides_like_the_record() {
        let done = Completed {
            fingerprint: fp(1),
            response: response(200, "{}"),
            expires_at_ms: 100,
        };
        assert_eq!(
            done.decide(&fp(1), 99),
            Some(Decision::Replay {
                response: response(200, "{}")
            })
        );
        assert_eq!(done.decide(&fp(2), 99), Some(Decision::Mismatch));
        assert_eq!(done.decide(&fp(1), 100), None);
    }

    #[test]
    fn the_record_survives_a_storage_round_trip() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        let _ = record.complete(token, &fp(1), response(201, "{\"a\":1}"), 0, TTL);
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<KeyRecord>(&json).unwrap(), record);
    }
}
