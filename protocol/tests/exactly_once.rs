//! A property test of the edge's per-key record in front of a *naive* payment
//! backend, one that charges every request it runs and ignores idempotency
//! keys, so nothing but the record and the reconciliation lookup stands
//! between a lost response and a second charge.
//!
//! The world has duplicate and conflicting requests arriving at any moment;
//! backend answers that succeed, decline, fail before or after charging, or
//! are lost after the charge; lookups that fail; workers that crash
//! mid-flight; and time passing past backend timeouts and lease expiries. The
//! one assumption is the one the edge documents: the backend finishes any
//! request it received before that request's lease runs out.
//!
//! After every step it checks:
//! - the backend never charged the key twice;
//! - at most one request for the key is running at the backend at a time;
//! - every replay equals the stored final result, which never changes;
//! - a stored success means exactly one charge, a stored decline none.
//!
//! A second property drains the world (time passes, the backend recovers, the
//! client keeps retrying) and checks that every key reaches a final answer.
#![allow(clippy::unwrap_used, missing_docs)]

use chargeonce_protocol::{
    ClaimToken, CompleteOutcome, Decision, Fingerprint, KeyRecord, Order, StoredResponse,
};
use proptest::prelude::*;

const LEASE_MS: u64 = 30_000;
const TIMEOUT_MS: u64 = 10_000;
const TTL_MS: u64 = 86_400_000;

/// What the backend does with one request, and what the edge hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Charged; the edge gets the 200.
    Success,
    /// Declined; the edge gets the 402.
    Decline,
    /// 503 before doing anything.
    Busy,
    /// Charged, then a 500.
    FailAfterCharge,
    /// Charged, then the connection dropped.
    LostAfterCharge,
}

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        other_payload: bool,
        lookup_fails: bool,
    },
    Advance {
        ms: u64,
    },
    Answer {
        pick: usize,
        outcome: Outcome,
    },
    Crash {
        pick: usize,
    },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Decline),
        Just(Outcome::Busy),
        Just(Outcome::FailAfterCharge),
        Just(Outcome::LostAfterCharge),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Mostly duplicates of one payload, sometimes the key reused for another.
        6 => Just(Op::Arrive { other_payload: false, lookup_fails: false }),
        1 => Just(Op::Arrive { other_payload: true, lookup_fails: false }),
        1 => Just(Op::Arrive { other_payload: false, lookup_fails: true }),
        2 => prop_oneof![0..2_000u64, 9_000..12_000u64, 29_000..35_000u64]
            .prop_map(|ms| Op::Advance { ms }),
        4 => (any::<usize>(), outcome()).prop_map(|(pick, outcome)| Op::Answer { pick, outcome }),
        1 => any::<usize>().prop_map(|pick| Op::Crash { pick }),
    ]
}

/// A request the edge forwarded and is waiting on.
struct Forward {
    token: ClaimToken,
    fingerprint: Fingerprint,
    deadline_ms: u64,
    /// The end of the claim's lease: the backend finishes by then.
    finish_by_ms: u64,
}

/// A request still running at the backend whose worker stopped waiting
/// (timed out or crashed). It runs to the end on its own.
struct Orphan {
    finish_by_ms: u64,
}

/// The naive backend: charges every request it runs.
#[derive(Default)]
struct Backend {
    charges: Vec<StoredResponse>,
}

impl Backend {
    fn run(&mut self, outcome: Outcome) -> Option<StoredResponse> {
        match outcome {
            Outcome::Busy => None,
            Outcome::Decline => Some(json(402, r#"{"error":{"code":"card_declined"}}"#)),
            Outcome::Success | Outcome::FailAfterCharge | Outcome::LostAfterCharge => {
                let charge = json(
                    200,
                    &format!(
                        r#"{{"id":"pi_{}","status":"succeeded"}}"#,
                        self.charges.len()
                    ),
                );
                self.charges.push(charge.clone());
                Some(charge)
            }
        }
    }

    /// The reconciliation lookup: the charge made under the key, if any.
    fn lookup(&self) -> Option<StoredResponse> {
        self.charges.last().cloned()
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
        customer: Some("cus_1".into()),
        order_ref: "ord_1".into(),
        order_token: None,
        payment_method: "pm_card_visa".into(),
    };
    Fingerprint::of("POST", "/v1/orders", &order)
}

#[derive(Default)]
struct World {
    now_ms: u64,
    record: KeyRecord,
    in_flight: Vec<Forward>,
    orphans: Vec<Orphan>,
    stored: Option<StoredResponse>,
    backend: Backend,
    /// The payload the key was last forwarded for: the one it is bound to.
    bound: Option<Fingerprint>,
}

impl World {
    fn complete(
        &mut self,
        token: ClaimToken,
        fp: &Fingerprint,
        response: StoredResponse,
    ) -> Result<(), TestCaseError> {
        match self
            .record
            .complete(token, fp, response.clone(), self.now_ms, TTL_MS)
        {
            CompleteOutcome::Stored => {
                prop_assert!(self.stored.is_none(), "a stored result was replaced");
                self.stored = Some(response);
            }
            CompleteOutcome::AlreadyCompleted { response: first } => {
                prop_assert_eq!(Some(&first), self.stored.as_ref());
            }
            CompleteOutcome::NotStored => {}
        }
        Ok(())
    }

    /// Moves the clock to `target`, letting workers give up at their
    /// deadlines and orphans finish by their leases' ends, in time order.
    fn advance_to(&mut self, target: u64) {
        loop {
            let deadline = self.in_flight.iter().map(|f| f.deadline_ms).min();
            let finish = self.orphans.iter().map(|o| o.finish_by_ms).min();
            let next = match (deadline, finish) {
                (Some(d), Some(f)) => d.min(f),
                (d, f) => match d.or(f) {
                    Some(at) => at,
                    None => break,
                },
            };
            if next > target {
                break;
            }
            self.now_ms = self.now_ms.max(next);
            if let Some(i) = self.orphans.iter().position(|o| o.finish_by_ms == next) {
                // The worst case: it charges, and nobody hears about it.
                self.orphans.remove(i);
                let _ = self.backend.run(Outcome::Success);
            } else if let Some(i) = self.in_flight.iter().position(|f| f.deadline_ms == next) {
                // The worker times out and keeps its claim (the request may
                // still be running); the request goes on without it.
                let forward = self.in_flight.remove(i);
                self.orphans.push(Orphan {
                    finish_by_ms: forward.finish_by_ms,
                });
            }
        }
        self.now_ms = target;
        self.record.handle_timeout(self.now_ms);
    }

    fn arrive(&mut self, fp: Fingerprint, lookup_fails: bool) -> Result<(), TestCaseError> {
        let had_final = self.record.completed().is_some();
        match self.record.claim(&fp, self.now_ms, LEASE_MS, TTL_MS) {
            Decision::Forward { token, reconcile } => {
                prop_assert!(!had_final, "forwarded after a final result was stored");
                self.bound = Some(fp.clone());
                if reconcile {
                    if lookup_fails {
                        prop_assert!(self.record.release(token, self.now_ms));
                        prop_assert!(self.record.is_unknown(), "a failed lookup forgot the doubt");
                        return Ok(());
                    }
                    if let Some(charge) = self.backend.lookup() {
                        return self.complete(token, &fp, charge);
                    }
                }
                self.in_flight.push(Forward {
                    token,
                    fingerprint: fp,
                    deadline_ms: self.now_ms + TIMEOUT_MS,
                    finish_by_ms: self.now_ms + LEASE_MS,
                });
            }
            Decision::Replay { response } => {
                prop_assert_eq!(Some(&response), self.stored.as_ref(), "replay differs");
            }
            Decision::Mismatch | Decision::InFlight { .. } => {}
        }
        Ok(())
    }

    fn answer(&mut self, pick: usize, outcome: Outcome) -> Result<(), TestCaseError> {
        if !self.orphans.is_empty() && pick.is_multiple_of(2) {
            // An orphan finishes early, with whatever outcome.
            self.orphans.remove(pick % self.orphans.len());
            let _ = self.backend.run(outcome);
            return Ok(());
        }
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let forward = self.in_flight.remove(pick % self.in_flight.len());
        let answer = self.backend.run(outcome);
        match (outcome, answer) {
            (Outcome::Success | Outcome::Decline, Some(response)) => {
                self.complete(forward.token, &forward.fingerprint, response)?;
            }
            (Outcome::Busy, _) => {
                let _ = self.record.release(forward.token, self.now_ms);
            }
            _ => {
                let _ = self.record.abandon(forward.token, self.now_ms);
            }
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Arrive {
                other_payload,
                lookup_fails,
            } => self.arrive(fingerprint(if other_payload { 2 } else { 1 }), lookup_fails)?,
            Op::Advance { ms } => self.advance_to(self.now_ms + ms),
            Op::Answer { pick, outcome } => self.answer(pick, outcome)?,
            Op::Crash { pick } => {
                if !self.in_flight.is_empty() {
                    // The worker is gone: no complete, no release. The request
                    // it sent runs on at the backend.
                    let forward = self.in_flight.remove(pick % self.in_flight.len());
                    self.orphans.push(Orphan {
                        finish_by_ms: forward.finish_by_ms,
                    });
                }
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(
            self.backend.charges.len() <= 1,
            "the naive backend charged the key twice"
        );
        prop_assert!(
            self.in_flight.len() + self.orphans.len() <= 1,
            "two requests for one key running at the backend"
        );
        prop_assert_eq!(
            self.record.completed().map(|c| &c.response),
            self.stored.as_ref(),
            "the stored final result changed"
        );
        match self.stored.as_ref().map(|r| r.status) {
            Some(200) => prop_assert_eq!(self.backend.charges.len(), 1, "success without charge"),
            Some(402) => prop_assert!(self.backend.charges.is_empty(), "declined but charged"),
            _ => {}
        }
        Ok(())
    }

    /// The client of the payload the key is bound to keeps retrying while
    /// time passes and the backend recovers, until it gets a final answer.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        let fp = self.bound.clone().unwrap_or_else(|| fingerprint(1));
        for _ in 0..20 {
            if self.stored.is_some() {
                return Ok(());
            }
            self.arrive(fp.clone(), false)?;
            while !self.in_flight.is_empty() {
                self.answer(1, Outcome::Success)?;
            }
            self.check()?;
            if self.stored.is_none() {
                self.advance_to(self.now_ms + LEASE_MS);
                self.check()?;
            }
        }
        Err(TestCaseError::fail(
            "no final answer after 20 rounds of retries",
        ))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3_000, ..ProptestConfig::default() })]

    #[test]
    fn a_naive_backend_is_charged_at_most_once_and_replays_equal_the_stored_answer(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut world = World::default();
        for op in &ops {
            world.step(op)?;
        }
    }

    #[test]
    fn retrying_always_reaches_a_final_answer_with_exactly_one_charge_for_a_success(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let mut world = World::default();
        for op in &ops {
            world.step(op)?;
        }
        world.drain()?;
        let stored = world.stored.as_ref().unwrap();
        if stored.status == 200 {
            prop_assert_eq!(world.backend.charges.len(), 1);
        }
    }
}

/// The story the soak plays thousands of times: the response to a charge is
/// lost, the retry asks the backend, and the charge it finds is the answer.
#[test]
fn a_lost_response_is_reconciled_not_charged_again() {
    let mut world = World::default();
    world.arrive(fingerprint(1), false).unwrap();
    world.answer(1, Outcome::LostAfterCharge).unwrap();
    assert_eq!(world.backend.charges.len(), 1);
    world.arrive(fingerprint(1), false).unwrap();
    assert!(world.in_flight.is_empty(), "the retry must not forward");
    assert_eq!(world.stored.as_ref(), world.backend.charges.first());
    world.check().unwrap();
}

/// A worker that crashes after forwarding holds the key for the lease; the
/// retry after it finds the charge the orphaned request made.
#[test]
fn a_key_abandoned_by_a_crashed_worker_is_reconciled_after_the_lease() {
    let mut world = World::default();
    world.arrive(fingerprint(1), false).unwrap();
    world.step(&Op::Crash { pick: 0 }).unwrap();
    world.arrive(fingerprint(1), false).unwrap();
    assert!(
        world.in_flight.is_empty(),
        "the key must stay claimed within the lease"
    );
    world.advance_to(LEASE_MS);
    assert_eq!(world.backend.charges.len(), 1, "the orphan charged");
    world.arrive(fingerprint(1), false).unwrap();
    assert!(world.in_flight.is_empty(), "the retry must not forward");
    assert_eq!(world.stored.as_ref(), world.backend.charges.first());
}
