//! The request fingerprint: what makes two requests "the same request" for the
//! purpose of replaying a stored result.

use crate::order::Order;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// SHA-256 over the method, the path and the canonical charge (the body
/// without its order token), in hex.
///
/// A key reused with a different fingerprint is a client bug (or an attack);
/// the edge refuses it rather than replaying a response for another payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Fingerprints a validated order sent with `method` to `path`.
    pub fn of(method: &str, path: &str, order: &Order) -> Self {
        let mut hasher = Sha256::new();
        // Newlines cannot occur in a method or a path, so they separate the
        // parts unambiguously.
        hasher.update(method.as_bytes());
        hasher.update(b"\n");
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        hasher.update(order.charge().canonical_json().as_bytes());
        Self(hex::encode(hasher.finalize()))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(amount: u64) -> Order {
        Order {
            amount,
            currency: "usd".into(),
            customer: None,
            order_token: None,
            order_ref: "ord_1".into(),
            payment_method: "pm_card_visa".into(),
        }
    }

    #[test]
    fn same_order_same_fingerprint() {
        assert_eq!(
            Fingerprint::of("POST", "/v1/orders", &order(1)),
            Fingerprint::of("POST", "/v1/orders", &order(1))
        );
    }

    #[test]
    fn amount_method_and_path_all_count() {
        let base = Fingerprint::of("POST", "/v1/orders", &order(1));
        assert_ne!(base, Fingerprint::of("POST", "/v1/orders", &order(2)));
        assert_ne!(base, Fingerprint::of("PUT", "/v1/orders", &order(1)));
        assert_ne!(base, Fingerprint::of("POST", "/v2/orders", &order(1)));
    }

    #[test]
    fn it_is_a_sha256_hex_digest() {
        let fp = Fingerprint::of("POST", "/v1/orders", &order(1));
        assert_eq!(fp.as_str().len(), 64);
        assert!(fp.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
