//! A property test of the edge's per-key record under everything the network
//! and the workers can do to it: duplicate and conflicting requests arriving at
//! any moment, backend answers that succeed, decline, fail or are lost after
//! the charge, workers that crash mid-flight, and time passing past backend
//! timeouts and lease expiries.
//!
//! The world is driven by a virtual clock. After every step it checks:
//! - at most one forward for the key is in flight at any time;
//! - no forward starts once a final result is stored;
//! - every replay equals the stored final result, which never changes;
//! - with an idempotent backend (Stripe's behaviour), at most one charge.
#![allow(clippy::unwrap_used, missing_docs)]

use chargeonce_protocol::{
    ClaimToken, CompleteOutcome, Decision, Fingerprint, KeyRecord, Order, StoredResponse,
};
use proptest::prelude::*;

const LEASE_MS: u64 = 30_000;
const TIMEOUT_MS: u64 = 10_000;
const TTL_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Decline,
    ServerError,
    LostAfterCharge,
}

#[derive(Debug, Clone)]
enum Op {
    Arrive { other_payload: bool },
    Advance { ms: u64 },
    Answer { pick: usize, outcome: Outcome },
    Crash { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let outcome = prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Decline),
        Just(Outcome::ServerError),
        Just(Outcome::LostAfterCharge),
    ];
    prop_oneof![
        // Mostly duplicates of one payload, sometimes the key reused for another.
        4 => Just(Op::Arrive { other_payload: false }),
        1 => Just(Op::Arrive { other_payload: true }),
        2 => prop_oneof![0..2_000u64, 9_000..12_000u64, 29_000..35_000u64]
            .prop_map(|ms| Op::Advance { ms }),
        4 => (any::<usize>(), outcome).prop_map(|(pick, outcome)| Op::Answer { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Op::Crash { pick }),
    ]
}

struct Forward {
    token: ClaimToken,
    fingerprint: Fingerprint,
    deadline_ms: u64,
}

/// The payment backend, honouring the key like Stripe: it executes the first
/// request and answers every later one from its own record.
#[derive(Default)]
struct Backend {
    answered: Option<(Fingerprint, StoredResponse)>,
    charges: u32,
}

impl Backend {
    fn handle(&mut self, fingerprint: &Fingerprint, outcome: Outcome) -> Option<StoredResponse> {
        if let Some((first, response)) = &self.answered {
            return Some(if first == fingerprint {
                response.clone()
            } else {
                json(400, r#"{"error":{"type":"idempotency_error"}}"#)
            });
        }
        let response = match outcome {
            Outcome::ServerError => return None,
            Outcome::Decline => json(402, r#"{"error":{"code":"card_declined"}}"#),
            Outcome::Success | Outcome::LostAfterCharge => {
                self.charges += 1;
                json(200, &format!(r#"{{"id":"pi_{}"}}"#, self.charges))
            }
        };
        self.answered = Some((fingerprint.clone(), response.clone()));
        Some(response)
    }
}

fn json(status: u16, body: &str) -> StoredResponse {
    StoredResponse {
        status,
        content_type: "application/json".into(),
        body: body.into(),
    }
}

fn fingerprint(amount: u64) -> Fingerprint {
    let order = Order {
        amount,
        currency: "usd".into(),
        customer: None,
        order_ref: "ord_1".into(),
        payment_method: "pm_card_visa".into(),
    };
    Fingerprint::of("POST", "/v1/orders", &order)
}

#[derive(Default)]
struct World {
    now_ms: u64,
    record: KeyRecord,
    in_flight: Vec<Forward>,
    stored: Option<StoredResponse>,
    backend: Backend,
}

impl World {
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Arrive { other_payload } => {
                let fp = fingerprint(if other_payload { 2 } else { 1 });
                let had_final = self.record.completed().is_some();
                match self.record.claim(&fp, self.now_ms, LEASE_MS) {
                    Decision::Forward { token } => {
                        prop_assert!(!had_final, "forwarded after a final result was stored");
                        self.in_flight.push(Forward {
                            token,
                            fingerprint: fp,
                            deadline_ms: self.now_ms + TIMEOUT_MS,
                        });
                    }
                    Decision::Replay { response } => {
                        prop_assert_eq!(Some(&response), self.stored.as_ref(), "replay differs");
                    }
                    Decision::Mismatch => prop_assert!(self.stored.is_some()),
                    Decision::InFlight { .. } => {}
                }
            }
            Op::Advance { ms } => {
                let target = self.now_ms + ms;
                // A live worker gives up on the backend at its deadline and
                // releases the key; that happens before the clock passes it.
                self.in_flight.sort_by_key(|f| f.deadline_ms);
                while self
                    .in_flight
                    .first()
                    .is_some_and(|f| f.deadline_ms <= target)
                {
                    let forward = self.in_flight.remove(0);
                    self.now_ms = self.now_ms.max(forward.deadline_ms);
                    let _ = self.record.release(forward.token);
                }
                self.now_ms = target;
                self.record.handle_timeout(self.now_ms);
            }
            Op::Answer { pick, outcome } => {
                if self.in_flight.is_empty() {
                    return Ok(());
                }
                let forward = self.in_flight.remove(pick % self.in_flight.len());
                let answer = self.backend.handle(&forward.fingerprint, outcome);
                match (answer, outcome) {
                    (Some(response), Outcome::Success | Outcome::Decline) => {
                        match self.record.complete(
                            forward.token,
                            &forward.fingerprint,
                            response.clone(),
                            self.now_ms,
                            TTL_MS,
                        ) {
                            CompleteOutcome::Stored => {
                                prop_assert!(self.stored.is_none(), "a stored result was replaced");
                                self.stored = Some(response);
                            }
                            CompleteOutcome::AlreadyCompleted { response: first } => {
                                prop_assert_eq!(Some(&first), self.stored.as_ref());
                            }
                            CompleteOutcome::NotStored => {}
                        }
                    }
                    // 5xx, or the response lost on the way back: the worker
                    // saw no final answer and releases the key.
                    _ => {
                        let _ = self.record.release(forward.token);
                    }
                }
            }
            Op::Crash { pick } => {
                if !self.in_flight.is_empty() {
                    // The worker is gone: no complete, no release. Only the
                    // lease can free the key now.
                    self.in_flight.remove(pick % self.in_flight.len());
                }
            }
        }
        prop_assert!(
            self.in_flight.len() <= 1,
            "two forwards in flight for one key"
        );
        prop_assert_eq!(
            self.record.completed().map(|c| &c.response),
            self.stored.as_ref(),
            "the stored final result changed"
        );
        prop_assert!(self.backend.charges <= 1, "charged twice");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn at_most_one_forward_no_forward_after_final_and_replays_equal_it(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut world = World::default();
        for op in &ops {
            world.step(op)?;
        }
    }
}

/// Retrying until an answer arrives always reaches a final result, even
/// after crashes: the lease frees a key whose worker died.
#[test]
fn a_key_abandoned_by_a_crashed_worker_is_free_after_the_lease() {
    let mut world = World::default();
    world
        .step(&Op::Arrive {
            other_payload: false,
        })
        .unwrap();
    world.step(&Op::Crash { pick: 0 }).unwrap();
    world
        .step(&Op::Arrive {
            other_payload: false,
        })
        .unwrap();
    assert!(
        world.in_flight.is_empty(),
        "the key must stay claimed within the lease"
    );
    world.step(&Op::Advance { ms: LEASE_MS }).unwrap();
    world
        .step(&Op::Arrive {
            other_payload: false,
        })
        .unwrap();
    assert_eq!(
        world.in_flight.len(),
        1,
        "after the lease a retry claims the key again"
    );
    world
        .step(&Op::Answer {
            pick: 0,
            outcome: Outcome::Success,
        })
        .unwrap();
    assert!(world.stored.is_some());
}
