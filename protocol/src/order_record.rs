//! The record of one order, beside the records of its keys: at most one
//! attempt in flight and at most one charge per order, whatever
//! `Idempotency-Key`s its attempts use.
//!
//! Keys deduplicate requests; the customer cares about the order. The
//! storefront signs each order's `order_ref`, amount, currency and customer
//! in its token ([`crate::OrderClaims`]), so the edge knows which attempts
//! belong to one order: those of one customer with one `order_ref`. One
//! record lives in one Durable Object per such order ([`storage_name`]),
//! which runs these methods one at a time.
//!
//! ```text
//!                begin
//!   Vacant ─────────────────▶ Attempting ◀─┐ its key says it charged nothing
//!     ▲                           │  └──────┘ (the asker attempts), or the
//!     │                           │           same key begins again
//!     │                           │ its key says it paid (asked when
//!     │                           ▼ another key comes)
//!     └─── the TTL ran out ──── Paid: replayed to every later key
//! ```
//!
//! The record is asked before every forward: a key's first, and a key in
//! doubt whose lookup found nothing (its earlier claim may have run out
//! before it ever asked). A key with an answer replays it and never asks.
//! It never learns an attempt's outcome from the attempt itself: the key's
//! record is the truth about it, reconciled by the key's own machinery (an
//! unknown outcome blocks the order until its key settles). When another
//! key comes for the order, the record answers [`OrderDecision::Ask`]: the
//! edge asks the attempting key's object ([`crate::KeyRecord::status`]),
//! reads what it says with [`AttemptFinding::of`], and hands that back to
//! [`OrderRecord::settle`]. The record changes only if the attempt it asked
//! about is still the order's, so two keys racing for one order never both
//! attempt.
//!
//! The record also counts the order's refused attempts (declines, failed
//! authentication) while a token that authorised one is alive. Past
//! [`OrderPolicy::max_refused`] nothing more is forwarded for the order
//! ([`OrderDecision::Exhausted`]): one token must not be a licence to try
//! card after card (card testing). Only a card the backend refused counts;
//! an attempt the edge gave back (the backend was busy, or nothing was
//! recorded) never does.
//!
//! Time is passed in; the record never reads a clock.

use crate::backend::response_outcome;
use crate::payment::PaymentOutcome;
use crate::problem::PROBLEM_CONTENT_TYPE;
use crate::record::{ClaimToken, KeyStatus, StoredResponse, IN_FLIGHT_RETRY_AFTER};
use crate::time::{retry_after_secs, UnixMs};
use crate::token::OrderClaims;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The spans and limits an order's record runs on (see
/// [`crate::EdgeConfig::order_policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderPolicy {
    /// How long a paid order is remembered: a key's answer's TTL.
    pub answer_ttl: Duration,
    /// How many refused attempts an order may have while a token that
    /// authorised one is alive (`MAX_ATTEMPTS_PER_ORDER`).
    pub max_refused: u32,
}

/// The name of the order's record (its Durable Object): a hex SHA-256 of
/// the length-prefixed customer and `order_ref`, so that two customers'
/// orders with one reference are two orders.
pub fn storage_name(claims: &OrderClaims) -> String {
    let mut hasher = Sha256::new();
    hasher.update((claims.customer.len() as u64).to_be_bytes());
    hasher.update(claims.customer.as_bytes());
    hasher.update(claims.order_ref.as_bytes());
    hex::encode(hasher.finalize())
}

/// What an attempt asks to pay: the amount and currency its token signs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderTerms {
    /// In the currency's smallest unit.
    pub amount: u64,
    /// ISO 4217, lower case.
    pub currency: String,
}

impl OrderTerms {
    /// The terms an order token signs.
    pub fn of(claims: &OrderClaims) -> Self {
        Self {
            amount: claims.amount,
            currency: claims.currency.clone(),
        }
    }
}

/// One attempt at the order: the key it is made under and the claim that
/// is about to forward it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderAttempt {
    /// The `Idempotency-Key`, as the client sent it (the customer is the
    /// order's).
    pub key: String,
    /// The claim of the key that began the attempt: a key claimed again
    /// begins a new attempt, so an answer about the old one changes nothing.
    pub token: ClaimToken,
    /// What it asks to pay.
    pub terms: OrderTerms,
    /// When its order token stops authorising a charge: a refusal counts
    /// against the order until then.
    #[serde(default)]
    pub authorized_until: UnixMs,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum State {
    /// No attempt, or the last one charged nothing.
    Vacant,
    /// An attempt may be in flight, unknown, or awaiting the customer's
    /// authentication; its key knows which.
    Attempting(OrderAttempt),
    /// The order is paid under `key`.
    Paid {
        /// The `Idempotency-Key` it was paid under.
        key: String,
        /// What was paid.
        terms: OrderTerms,
        /// The key's answer, replayed to every later key.
        response: StoredResponse,
        /// When the record may be forgotten: no earlier than the key's answer.
        expires_at: UnixMs,
    },
}

/// The refused attempts an order has had.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Refusals {
    count: u32,
    /// When the count is forgotten: the latest expiry of the tokens of the
    /// attempts counted. Past it, no token that was refused still works.
    until: UnixMs,
}

/// The record of one order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OrderRecord {
    state: State,
    #[serde(default)]
    refused: Refusals,
}

impl Default for OrderRecord {
    fn default() -> Self {
        Self {
            state: State::Vacant,
            refused: Refusals::default(),
        }
    }
}

/// What the order record says to an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderDecision {
    /// The attempt holds the order: forward it.
    Attempt,
    /// Another key's attempt holds the order: ask that key's object what
    /// became of it, then [`OrderRecord::settle`].
    Ask {
        /// The attempt to ask about.
        attempt: OrderAttempt,
    },
    /// Another key's attempt holds the order and is not over: in flight,
    /// unknown, or awaiting authentication. Nothing is forwarded.
    InProgress {
        /// When to ask again.
        retry_after_secs: u32,
    },
    /// The order is paid: the attempt gets the paid answer.
    Paid {
        /// The key it was paid under.
        key: String,
        /// The answer.
        response: StoredResponse,
    },
    /// The order is paid, for other terms than this attempt's.
    PaidOtherTerms {
        /// The key it was paid under.
        key: String,
    },
    /// The order had as many refused attempts as the policy allows: nothing
    /// more is forwarded for it while their tokens are alive.
    Exhausted {
        /// How many were refused.
        refused: u32,
    },
}

/// What an attempt's key says of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttemptFinding {
    /// It paid: this is its answer.
    Paid(StoredResponse),
    /// The backend refused it (a decline, failed authentication, an invalid
    /// card): it charged nothing and never will, and counts against the
    /// order.
    Refused,
    /// It charged nothing and never will, and nobody refused it: the edge's
    /// own "not charged", or nothing recorded (the key was given back, or
    /// its answer expired).
    Over,
    /// It is not over: in flight, unknown, or awaiting the customer.
    NotOver {
        /// When to ask again.
        retry_after_secs: u32,
    },
}

impl AttemptFinding {
    /// Reads a key's status as a finding about its attempt. An answer
    /// awaiting the customer's authentication is not over: the customer may
    /// still authenticate on the first device.
    pub fn of(status: KeyStatus) -> Self {
        match status {
            KeyStatus::NotFound => Self::Over,
            KeyStatus::Pending { retry_after_secs } => Self::NotOver { retry_after_secs },
            KeyStatus::Answered { response } => match response_outcome(&response) {
                PaymentOutcome::Placed => Self::Paid(response),
                // The edge's own problems (410 "not charged") are not the
                // backend's refusals.
                PaymentOutcome::Refused if response.content_type == PROBLEM_CONTENT_TYPE => {
                    Self::Over
                }
                PaymentOutcome::Refused => Self::Refused,
                PaymentOutcome::ActionRequired => Self::NotOver {
                    retry_after_secs: retry_after_secs(IN_FLIGHT_RETRY_AFTER),
                },
            },
        }
    }
}

impl OrderRecord {
    /// `attempt` (about to forward) asks for the order at `now`.
    pub fn begin(
        &mut self,
        attempt: &OrderAttempt,
        now: UnixMs,
        policy: &OrderPolicy,
    ) -> OrderDecision {
        self.expire(now);
        let terms = &attempt.terms;
        match &self.state {
            State::Vacant if self.refused.count >= policy.max_refused => OrderDecision::Exhausted {
                refused: self.refused.count,
            },
            State::Vacant => self.attempt(attempt),
            // The same key again: its claim was given back (it charged
            // nothing), or its lookup found nothing and the key's record
            // allows one more forward.
            State::Attempting(current) if current.key == attempt.key => self.attempt(attempt),
            State::Attempting(current) => OrderDecision::Ask {
                attempt: current.clone(),
            },
            State::Paid {
                key: paid_under,
                terms: paid,
                response,
                ..
            } => {
                if paid == terms {
                    OrderDecision::Paid {
                        key: paid_under.clone(),
                        response: response.clone(),
                    }
                } else {
                    OrderDecision::PaidOtherTerms {
                        key: paid_under.clone(),
                    }
                }
            }
        }
    }

    /// Records what `asked`'s key said of it, then decides `attempt` as
    /// [`Self::begin`] would. If the order moved on since the question
    /// (another attempt began or settled it), the finding is stale and
    /// changes nothing.
    pub fn settle(
        &mut self,
        asked: &OrderAttempt,
        found: AttemptFinding,
        attempt: &OrderAttempt,
        now: UnixMs,
        policy: &OrderPolicy,
    ) -> OrderDecision {
        self.expire(now);
        if matches!(&self.state, State::Attempting(current) if current == asked) {
            match found {
                AttemptFinding::Paid(response) => {
                    self.state = State::Paid {
                        key: asked.key.clone(),
                        terms: asked.terms.clone(),
                        response,
                        // The key's answer was stored no later than now, so
                        // it expires no later than this.
                        expires_at: now.plus(policy.answer_ttl),
                    }
                }
                AttemptFinding::Refused => {
                    self.refused = Refusals {
                        count: self.refused.count.saturating_add(1),
                        until: self.refused.until.max(asked.authorized_until),
                    };
                    self.state = State::Vacant;
                }
                AttemptFinding::Over => self.state = State::Vacant,
                AttemptFinding::NotOver { retry_after_secs } => {
                    return OrderDecision::InProgress { retry_after_secs }
                }
            }
        }
        match self.begin(attempt, now, policy) {
            // Asked once; the order moved on meanwhile: come back.
            OrderDecision::Ask { .. } => OrderDecision::InProgress {
                retry_after_secs: retry_after_secs(IN_FLIGHT_RETRY_AFTER),
            },
            decision => decision,
        }
    }

    fn attempt(&mut self, attempt: &OrderAttempt) -> OrderDecision {
        self.state = State::Attempting(attempt.clone());
        OrderDecision::Attempt
    }

    fn expire(&mut self, now: UnixMs) {
        if matches!(self.state, State::Paid { expires_at, .. } if now >= expires_at) {
            self.state = State::Vacant;
        }
        if now >= self.refused.until {
            self.refused = Refusals::default();
        }
    }

    /// When the record can be forgotten, or next changes by time: a paid
    /// order's end, or when a vacant order's refusals are forgotten. An
    /// attempt is never forgotten by time: only its key can say it is over.
    pub fn expires_at(&self) -> Option<UnixMs> {
        match self.state {
            State::Paid { expires_at, .. } => Some(expires_at),
            State::Vacant if self.refused.count > 0 => Some(self.refused.until),
            _ => None,
        }
    }

    /// Moves the record on at `now` (what an alarm does).
    pub fn handle_timeout(&mut self, now: UnixMs) {
        self.expire(now);
    }

    /// Whether there is nothing to keep.
    pub fn is_vacant(&self) -> bool {
        self.state == State::Vacant && self.refused.count == 0
    }

    /// How many refused attempts are counted against the order.
    pub fn refused(&self) -> u32 {
        self.refused.count
    }

    /// The key the order was paid under, if it was.
    pub fn paid_under(&self) -> Option<&str> {
        match &self.state {
            State::Paid { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OrderPolicy {
        OrderPolicy {
            answer_ttl: Duration::from_secs(60),
            max_refused: 3,
        }
    }

    fn terms(amount: u64) -> OrderTerms {
        OrderTerms {
            amount,
            currency: "usd".into(),
        }
    }

    fn paid() -> StoredResponse {
        StoredResponse {
            status: 200,
            content_type: "application/json".into(),
            body: r#"{"id":"pi_1","status":"succeeded"}"#.into(),
        }
    }

    fn at(key: &str, token: u64, amount: u64) -> OrderAttempt {
        OrderAttempt {
            key: key.into(),
            token: ClaimToken(token),
            terms: terms(amount),
            authorized_until: UnixMs(100_000),
        }
    }

    fn asked(record: &mut OrderRecord, key: &str, amount: u64) -> OrderAttempt {
        match record.begin(&at(key, 9, amount), UnixMs(1_000), &policy()) {
            OrderDecision::Ask { attempt } => attempt,
            other => panic!("expected a question, got {other:?}"),
        }
    }

    #[test]
    fn the_first_attempt_holds_the_order_and_a_second_key_asks_about_it() {
        let mut record = OrderRecord::default();
        let first = record.begin(&at("k1", 1, 500), UnixMs(0), &policy());
        assert_eq!(first, OrderDecision::Attempt);
        let attempt = asked(&mut record, "k2", 500);
        assert_eq!(attempt.key, "k1");
        assert_eq!(attempt.token, ClaimToken(1));
    }

    #[test]
    fn a_paid_attempt_is_replayed_to_every_later_key_with_the_same_terms() {
        let mut record = OrderRecord::default();
        let _ = record.begin(&at("k1", 1, 500), UnixMs(0), &policy());
        let attempt = asked(&mut record, "k2", 500);
        let decision = record.settle(
            &attempt,
            AttemptFinding::Paid(paid()),
            &at("k2", 2, 500),
            UnixMs(1_000),
            &policy(),
        );
        let expected = OrderDecision::Paid {
            key: "k1".into(),
            response: paid(),
        };
        assert_eq!(decision, expected);
        assert_eq!(
            record.begin(&at("k3", 3, 500), UnixMs(2_000), &policy()),
            expected
        );
        assert_eq!(
            record.begin(&at("k4", 4, 700), UnixMs(2_000), &policy()),
            OrderDecision::PaidOtherTerms { key: "k1".into() }
        );
        // Remembered for the key's TTL from when it learned, then forgotten.
        assert_eq!(record.expires_at(), Some(UnixMs(61_000)));
        assert_eq!(
            record.begin(&at("k5", 5, 700), UnixMs(61_000), &policy()),
            OrderDecision::Attempt
        );
    }

    #[test]
    fn an_attempt_that_charged_nothing_gives_the_order_to_the_asker() {
        let mut record = OrderRecord::default();
        let _ = record.begin(&at("k1", 1, 500), UnixMs(0), &policy());
        let attempt = asked(&mut record, "k2", 700);
        let decision = record.settle(
            &attempt,
            AttemptFinding::Over,
            &at("k2", 2, 700),
            UnixMs(1_000),
            &policy(),
        );
        assert_eq!(decision, OrderDecision::Attempt);
        assert_eq!(asked(&mut record, "k1", 500).key, "k2");
    }

    #[test]
    fn an_attempt_not_over_blocks_the_order() {
        let mut record = OrderRecord::default();
        let _ = record.begin(&at("k1", 1, 500), UnixMs(0), &policy());
        let attempt = asked(&mut record, "k2", 500);
        let decision = record.settle(
            &attempt,
            AttemptFinding::NotOver {
                retry_after_secs: 7,
            },
            &at("k2", 2, 500),
            UnixMs(1_000),
            &policy(),
        );
        assert_eq!(
            decision,
            OrderDecision::InProgress {
                retry_after_secs: 7
            }
        );
        assert_eq!(asked(&mut record, "k2", 500).key, "k1");
    }

    /// k1 began; `key` asks about it and hears `found`, at `now`.
    fn settle_with(
        record: &mut OrderRecord,
        asked: &OrderAttempt,
        found: AttemptFinding,
        key: &str,
        token: u64,
        now: u64,
    ) -> OrderDecision {
        record.settle(asked, found, &at(key, token, 500), UnixMs(now), &policy())
    }

    #[test]
    fn refused_attempts_are_counted_until_the_order_is_exhausted() {
        let mut record = OrderRecord::default();
        let _ = record.begin(&at("k0", 100, 500), UnixMs(0), &policy());
        // Three cards refused in turn: each next key asks about the last.
        for n in 1..=3u64 {
            let asked = asked(&mut record, &format!("k{n}"), 500);
            let decided = settle_with(
                &mut record,
                &asked,
                AttemptFinding::Refused,
                &format!("k{n}"),
                100 + n,
                1_000 * n,
            );
            if n < 3 {
                assert_eq!(decided, OrderDecision::Attempt, "attempt {n}");
            } else {
                assert_eq!(decided, OrderDecision::Exhausted { refused: 3 });
            }
        }
        assert_eq!(record.refused(), 3);
        assert_eq!(
            record.begin(&at("k9", 9, 500), UnixMs(50_000), &policy()),
            OrderDecision::Exhausted { refused: 3 }
        );
        // Remembered while a refused attempt's token is alive, then forgotten.
        assert_eq!(record.expires_at(), Some(UnixMs(100_000)));
        assert!(!record.is_vacant());
        record.handle_timeout(UnixMs(100_000));
        assert!(record.is_vacant());
        assert_eq!(
            record.begin(&at("k9", 9, 500), UnixMs(100_000), &policy()),
            OrderDecision::Attempt
        );
    }

    #[test]
    fn attempts_that_nobody_refused_are_not_counted() {
        let mut record = OrderRecord::default();
        let _ = record.begin(&at("k0", 100, 500), UnixMs(0), &policy());
        for n in 1..=5u64 {
            let asked = asked(&mut record, &format!("k{n}"), 500);
            let decided = settle_with(
                &mut record,
                &asked,
                AttemptFinding::Over,
                &format!("k{n}"),
                100 + n,
                1_000 * n,
            );
            assert_eq!(decided, OrderDecision::Attempt, "attempt {n}");
        }
        assert_eq!(record.refused(), 0);
    }

    #[test]
    fn a_stale_finding_changes_nothing() {
        // k2 asks about k1 and hears "over"; meanwhile k1 was claimed afresh
        // and began again. The finding is about the old attempt.
        let mut record = OrderRecord::default();
        let _ = record.begin(&at("k1", 1, 500), UnixMs(0), &policy());
        let attempt = asked(&mut record, "k2", 500);
        assert_eq!(
            record.begin(&at("k1", 11, 500), UnixMs(500), &policy()),
            OrderDecision::Attempt
        );
        let decision = record.settle(
            &attempt,
            AttemptFinding::Over,
            &at("k2", 2, 500),
            UnixMs(1_000),
            &policy(),
        );
        assert!(matches!(decision, OrderDecision::InProgress { .. }));
        assert_eq!(asked(&mut record, "k3", 500).token, ClaimToken(11));
    }

    #[test]
    fn a_keys_status_reads_as_a_finding() {
        let answered = |status: u16, body: &str| KeyStatus::Answered {
            response: StoredResponse {
                status,
                content_type: "application/json".into(),
                body: body.into(),
            },
        };
        assert_eq!(
            AttemptFinding::of(answered(200, r#"{"id":"pi_1","status":"succeeded"}"#)),
            AttemptFinding::Paid(paid())
        );
        assert_eq!(
            AttemptFinding::of(answered(200, r#"{"status":"requires_payment_method"}"#)),
            AttemptFinding::Refused
        );
        assert!(matches!(
            AttemptFinding::of(answered(200, r#"{"status":"requires_action"}"#)),
            AttemptFinding::NotOver { .. }
        ));
        assert_eq!(
            AttemptFinding::of(answered(402, r#"{"error":{"code":"card_declined"}}"#)),
            AttemptFinding::Refused
        );
        assert_eq!(
            AttemptFinding::of(KeyStatus::Answered {
                response: StoredResponse::not_charged()
            }),
            AttemptFinding::Over
        );
        assert_eq!(
            AttemptFinding::of(KeyStatus::NotFound),
            AttemptFinding::Over
        );
        assert_eq!(
            AttemptFinding::of(KeyStatus::Pending {
                retry_after_secs: 3
            }),
            AttemptFinding::NotOver {
                retry_after_secs: 3
            }
        );
    }

    #[test]
    fn two_customers_with_one_reference_are_two_orders() {
        let claims = |customer: &str| OrderClaims {
            order_ref: "ord_1".into(),
            amount: 500,
            currency: "usd".into(),
            customer: customer.into(),
            expires_at: 0,
        };
        assert_ne!(
            storage_name(&claims("cus_a")),
            storage_name(&claims("cus_b"))
        );
        let mut split = claims("cus_ab");
        split.order_ref = "c".into();
        let mut other = claims("cus_a");
        other.order_ref = "bc".into();
        assert_ne!(storage_name(&split), storage_name(&other));
    }
}
