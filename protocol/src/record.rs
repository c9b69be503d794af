//! The authoritative record of one scoped idempotency key, and the edge's
//! decision for each request that carries it.
//!
//! One record lives in one Durable Object (named by
//! [`crate::ScopedKey::storage_name`]), which runs these methods one at a time;
//! that is what makes a claim atomic. The record moves between three states:
//!
//! ```text
//!            claim                    complete (final answer)
//!  Vacant ──────────▶ Claimed ──────────────────────────▶ Completed
//!    ▲                 │  ▲                                   │
//!    │   release (5xx, │  │ claim after the lease ran out     │
//!    ├── timeout) or ──┘  └─ (the old worker is presumed dead) │
//!    │   lease expiry                                         │
//!    └──────────────────────── TTL expiry ◀───────────────────┘
//! ```
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body, byte for byte. Bodies that are not UTF-8 are never stored
    /// (see [`crate::backend::classify_response`]).
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
    /// [`KeyRecord::complete`] or [`KeyRecord::release`] with this token.
    Forward {
        /// The claim to complete or release.
        token: ClaimToken,
    },
    /// The request was already answered: send this response again.
    Replay {
        /// The stored response.
        response: StoredResponse,
    },
    /// The key was answered for a different payload: refuse with 422.
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
    /// `lease_ms` if it is free. The checks run in the contract's order: a
    /// stored result (mismatch, then replay) before a claim in flight.
    pub fn claim(&mut self, fingerprint: &Fingerprint, now_ms: u64, lease_ms: u64) -> Decision {
        self.handle_timeout(now_ms);
        match &self.state {
            State::Completed(done) => done
                .decide(fingerprint, now_ms)
                .expect("handle_timeout cleared an expired result"),
            State::Claimed { .. } => Decision::InFlight {
                retry_after_secs: IN_FLIGHT_RETRY_AFTER_SECS,
            },
            State::Vacant => {
                let token = ClaimToken(self.next_token);
                self.next_token += 1;
                self.state = State::Claimed {
                    token,
                    fingerprint: fingerprint.clone(),
                    lease_expires_at_ms: now_ms.saturating_add(lease_ms),
                };
                Decision::Forward { token }
            }
        }
    }

    /// Records the backend's final answer to the claim `token` for a request
    /// with `fingerprint`, kept until `now_ms + ttl_ms`.
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
            // Our lease expired and nobody took the key: the backend's answer
            // is still the truth about this key.
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

    /// Gives the key back after a failure that did not produce a final answer
    /// (backend 5xx, timeout, connection failure), so the client's retry can
    /// claim it at once. Returns whether `token` still held the claim.
    pub fn release(&mut self, token: ClaimToken) -> bool {
        match self.state {
            State::Claimed { token: holder, .. } if holder == token => {
                self.state = State::Vacant;
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
            State::Completed(done) => Some(done.expires_at_ms),
        }
    }

    /// Lets expired leases and results go.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if self.poll_timeout().is_some_and(|at| now_ms >= at) {
            self.state = State::Vacant;
        }
    }

    /// Whether the record holds nothing (its storage can be deleted).
    pub fn is_vacant(&self) -> bool {
        matches!(self.state, State::Vacant)
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
        match record.claim(fingerprint, now, LEASE) {
            Decision::Forward { token } => token,
            other => panic!("expected a claim, got {other:?}"),
        }
    }

    #[test]
    fn first_request_is_forwarded() {
        let mut record = KeyRecord::default();
        assert!(matches!(
            record.claim(&fp(1), 0, LEASE),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn duplicate_while_in_flight_gets_409() {
        let mut record = KeyRecord::default();
        claimed(&mut record, &fp(1), 0);
        assert_eq!(
            record.claim(&fp(1), 10, LEASE),
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
            record.claim(&fp(1), 10, LEASE),
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
            record.claim(&fp(1), 10, LEASE),
            Decision::Replay { response: declined }
        );
    }

    #[test]
    fn other_payload_after_completion_is_a_mismatch() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        let _ = record.complete(token, &fp(1), response(200, "{}"), 5, TTL);
        assert_eq!(record.claim(&fp(2), 10, LEASE), Decision::Mismatch);
    }

    #[test]
    fn other_payload_while_in_flight_gets_409_not_422() {
        // The first request may still fail and free the key, so the contract
        // checks for a mismatch only against stored results.
        let mut record = KeyRecord::default();
        claimed(&mut record, &fp(1), 0);
        assert!(matches!(
            record.claim(&fp(2), 1, LEASE),
            Decision::InFlight { .. }
        ));
    }

    #[test]
    fn release_frees_the_key_for_the_retry() {
        let mut record = KeyRecord::default();
        let token = claimed(&mut record, &fp(1), 0);
        assert!(record.release(token));
        assert!(record.is_vacant());
        assert!(matches!(
            record.claim(&fp(1), 1, LEASE),
            Decision::Forward { .. }
        ));
    }

    #[test]
    fn an_expired_lease_can_be_taken_over() {
        let mut record = KeyRecord::default();
        let first = claimed(&mut record, &fp(1), 0);
        assert!(matches!(
            record.claim(&fp(1), LEASE - 1, LEASE),
            Decision::InFlight { .. }
        ));
        let second = claimed(&mut record, &fp(1), LEASE);
        assert_ne!(first, second);
        // The dead worker's late release must not free the new claim.
        assert!(!record.release(first));
        assert!(matches!(
            record.claim(&fp(1), LEASE + 1, LEASE),
            Decision::InFlight { .. }
        ));
    }

    #[test]
    fn a_late_completion_for_the_same_payload_is_kept() {
        let mut record = KeyRecord::default();
        let first = claimed(&mut record, &fp(1), 0);
        let second = claimed(&mut record, &fp(1), LEASE);
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
    fn a_late_completion_for_another_payload_is_not_stored() {
        let mut record = KeyRecord::default();
        let first = claimed(&mut record, &fp(1), 0);
        claimed(&mut record, &fp(2), LEASE);
        assert_eq!(
            record.complete(first, &fp(1), response(200, "{}"), LEASE + 1, TTL),
            CompleteOutcome::NotStored
        );
        assert!(matches!(
            record.claim(&fp(2), LEASE + 2, LEASE),
            Decision::InFlight { .. }
        ));
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
