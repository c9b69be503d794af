//! Order tokens: the storefront server's signature over what a customer is
//! about to pay, so the amount never comes from the browser.
//!
//! The storefront's server (which knows the cart and the logged-in customer)
//! signs the order's reference, amount, currency and customer with an expiry,
//! using a secret it shares with the edge. The widget passes the token through
//! untouched in the body's `order_token`. The edge checks the signature, that
//! the body says what the token says, and that the token is fresh before it
//! forwards anything; the verified customer is also the key's scope.
//!
//! Format: `v1.<payload>.<mac>`, where `payload` is base64url (no padding) of
//! the claims as JSON and `mac` is base64url of HMAC-SHA256 over
//! `chargeonce-order-token.v1.<payload>`. The prefix in the MAC input keeps a
//! signature made for anything else with the same secret from passing here.

use crate::order::Order;
use crate::problem::{Problem, ProblemType};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

/// The token format's version, its first dot-separated part.
pub const VERSION: &str = "v1";

/// The shortest secret the edge accepts: HMAC-SHA256 wants at least as many
/// bytes of key as it has of output.
pub const MIN_SECRET_LEN: usize = 32;

/// The order-token secret of `.dev.vars.example`, public in this
/// repository: the edge refuses to run with it
/// ([`crate::flow::signing_secret`]), since anyone could sign orders with it.
pub const EXAMPLE_SECRET: &str = "chargeonce-local-order-token-secret-0001";

/// What the storefront server vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderClaims {
    /// The order reference.
    pub order_ref: String,
    /// The amount in minor units.
    pub amount: u64,
    /// The currency, lower case.
    pub currency: String,
    /// The customer, as the storefront's login knows them.
    pub customer: String,
    /// When the token stops authorising a charge (Unix seconds).
    pub expires_at: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The order carries no token.
    #[error("the order has no order_token; the storefront's server must sign every order")]
    Missing,
    /// The token is not `v1.<payload>.<mac>` with valid base64url and JSON.
    #[error("the order_token is malformed ({0})")]
    Malformed(&'static str),
    /// The signature does not match: the token was altered or signed with
    /// another secret.
    #[error("the order_token's signature does not match; it was altered or not issued by this storefront")]
    BadSignature,
    /// The body asks for something the token does not vouch for.
    #[error("the order's {field} is {body:?} but the order_token was issued for {token:?}")]
    Mismatch {
        /// The differing field.
        field: &'static str,
        /// What the body says.
        body: String,
        /// What the token says.
        token: String,
    },
    /// The token's expiry has passed.
    #[error(
        "the order_token expired at {expired_at} (Unix seconds); ask the storefront for a new one"
    )]
    Expired {
        /// When it expired.
        expired_at: u64,
    },
}

impl TokenError {
    /// The problem+json the edge answers with: 403 throughout, since the
    /// request is well formed but not authorised to charge.
    pub fn to_problem(&self) -> Problem {
        let kind = match self {
            Self::Expired { .. } => ProblemType::OrderTokenExpired,
            Self::Mismatch { .. } => ProblemType::OrderTokenMismatch,
            Self::Missing | Self::Malformed(_) | Self::BadSignature => {
                ProblemType::OrderTokenInvalid
            }
        };
        Problem::new(kind, self.to_string())
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], payload: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"chargeonce-order-token.");
    mac.update(VERSION.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    mac
}

impl OrderClaims {
    /// Signs the claims: what the storefront's server does for each order.
    pub fn sign(&self, secret: &[u8]) -> String {
        let json = serde_json::to_vec(self).expect("claims hold only strings and integers");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let tag = URL_SAFE_NO_PAD.encode(mac(secret, &payload).finalize().into_bytes());
        format!("{VERSION}.{payload}.{tag}")
    }

    /// Checks a token's form and signature (in constant time) and returns
    /// what it vouches for. Freshness is checked apart, by
    /// [`Self::check_fresh`], because a stored answer is replayed even after
    /// its token expired.
    pub fn verify(token: &str, secret: &[u8]) -> Result<Self, TokenError> {
        let mut parts = token.split('.');
        let (Some(version), Some(payload), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "it must have three dot-separated parts",
            ));
        };
        if version != VERSION {
            return Err(TokenError::Malformed("its version is not v1"));
        }
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed("its signature is not base64url"))?;
        mac(secret, payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        // Only a payload we signed is parsed.
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed("its payload is not base64url"))?;
        serde_json::from_slice(&json)
            .map_err(|_| TokenError::Malformed("its payload is not claims"))
    }

    /// Checks that `order` asks for exactly what the token vouches for.
    pub fn check_order(&self, order: &Order) -> Result<(), TokenError> {
        let mismatch =
            |field, body: String, token: String| Err(TokenError::Mismatch { field, body, token });
        if order.amount != self.amount {
            return mismatch("amount", order.amount.to_string(), self.amount.to_string());
        }
        if order.currency != self.currency {
            return mismatch("currency", order.currency.clone(), self.currency.clone());
        }
        if order.order_ref != self.order_ref {
            return mismatch("order_ref", order.order_ref.clone(), self.order_ref.clone());
        }
        if order.customer.as_deref() != Some(self.customer.as_str()) {
            return mismatch(
                "customer",
                order.customer.clone().unwrap_or_default(),
                self.customer.clone(),
            );
        }
        Ok(())
    }

    /// Checks that the token still authorises a charge at `now_secs`.
    pub fn check_fresh(&self, now_secs: u64) -> Result<(), TokenError> {
        if now_secs >= self.expires_at {
            Err(TokenError::Expired {
                expired_at: self.expires_at,
            })
        } else {
            Ok(())
        }
    }
}

/// Verifies `order`'s token against `secret` and the order itself: the check
/// the edge runs on every order before it touches the store.
pub fn authorize(order: &Order, secret: &[u8]) -> Result<OrderClaims, TokenError> {
    let token = order.order_token.as_deref().ok_or(TokenError::Missing)?;
    let claims = OrderClaims::verify(token, secret)?;
    claims.check_order(order)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims() -> OrderClaims {
        OrderClaims {
            order_ref: "ord_1".into(),
            amount: 1999,
            currency: "usd".into(),
            customer: "cus_1".into(),
            expires_at: 1_000,
        }
    }

    fn order(token: Option<String>) -> Order {
        Order {
            amount: 1999,
            currency: "usd".into(),
            customer: Some("cus_1".into()),
            order_ref: "ord_1".into(),
            order_token: token,
            payment_method: "pm_card_visa".into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_authorises_its_order() {
        let token = claims().sign(SECRET);
        assert!(token.starts_with("v1."));
        assert_eq!(OrderClaims::verify(&token, SECRET), Ok(claims()));
        assert_eq!(authorize(&order(Some(token)), SECRET), Ok(claims()));
    }

    #[test]
    fn a_missing_token_is_refused() {
        assert_eq!(authorize(&order(None), SECRET), Err(TokenError::Missing));
    }

    #[test]
    fn another_secret_or_any_altered_byte_breaks_the_signature() {
        let token = claims().sign(SECRET);
        assert_eq!(
            OrderClaims::verify(&token, b"another secret of thirty-two byt"),
            Err(TokenError::BadSignature)
        );
        // Re-sign a cheaper order with the payload swapped in: the MAC no
        // longer matches.
        let cheap = OrderClaims {
            amount: 1,
            ..claims()
        }
        .sign(b"attacker's own secret, 32+ bytes");
        let (_, cheap_payload) = cheap.split_once('.').unwrap();
        let cheap_payload = cheap_payload.split('.').next().unwrap();
        let tag = token.rsplit('.').next().unwrap();
        let forged = format!("v1.{cheap_payload}.{tag}");
        assert_eq!(
            OrderClaims::verify(&forged, SECRET),
            Err(TokenError::BadSignature)
        );
        // Flip one character of the signature.
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(
            OrderClaims::verify(&flipped, SECRET),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        for bad in ["", "v1", "v1.abc", "v1.a.b.c", "v2.abc.def", "v1.abc.!!!"] {
            assert!(
                matches!(
                    OrderClaims::verify(bad, SECRET),
                    Err(TokenError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_body_must_ask_for_what_the_token_vouches_for() {
        let token = Some(claims().sign(SECRET));
        let cheaper = Order {
            amount: 1,
            ..order(token.clone())
        };
        assert!(matches!(
            authorize(&cheaper, SECRET),
            Err(TokenError::Mismatch {
                field: "amount",
                ..
            })
        ));
        let someone_else = Order {
            customer: Some("cus_2".into()),
            ..order(token.clone())
        };
        assert!(matches!(
            authorize(&someone_else, SECRET),
            Err(TokenError::Mismatch {
                field: "customer",
                ..
            })
        ));
        let nobody = Order {
            customer: None,
            ..order(token)
        };
        assert!(matches!(
            authorize(&nobody, SECRET),
            Err(TokenError::Mismatch {
                field: "customer",
                ..
            })
        ));
    }

    #[test]
    fn tokens_expire() {
        assert_eq!(claims().check_fresh(999), Ok(()));
        assert_eq!(
            claims().check_fresh(1_000),
            Err(TokenError::Expired { expired_at: 1_000 })
        );
    }

    #[test]
    fn every_refusal_is_a_403_problem() {
        let problems = [
            TokenError::Missing,
            TokenError::BadSignature,
            TokenError::Malformed("x"),
            TokenError::Expired { expired_at: 1 },
            TokenError::Mismatch {
                field: "amount",
                body: "1".into(),
                token: "2".into(),
            },
        ];
        for error in problems {
            assert_eq!(error.to_problem().status(), 403, "{error}");
        }
    }
}
