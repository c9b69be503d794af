//! What a storefront's server does for the tests: sign each order with the
//! secret it shares with the Worker ([`crate::stack::ORDER_TOKEN_SECRET`]), so
//! the amount the edge forwards is one the shop vouched for.

use crate::stack::ORDER_TOKEN_SECRET;
use chargeonce_protocol::OrderClaims;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The customer orders are placed for unless a test names another.
pub const CUSTOMER: &str = "cus_test";

/// How long the tests' tokens last: longer than any test.
pub const TOKEN_LIFETIME_SECS: u64 = 3_600;

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The token the shop's server issues for an order in US dollars.
pub fn order_token(order_ref: &str, amount: u64, customer: &str, expires_at: u64) -> String {
    OrderClaims {
        order_ref: order_ref.into(),
        amount,
        currency: "usd".into(),
        customer: customer.into(),
        expires_at,
    }
    .sign(ORDER_TOKEN_SECRET.as_bytes())
}

/// An order body for `customer`, paid by the test Visa card, with its token.
pub fn signed_order_for(order_ref: &str, amount: u64, customer: &str) -> Value {
    json!({
        "order_ref": order_ref,
        "amount": amount,
        "currency": "usd",
        "customer": customer,
        "payment_method": "pm_card_visa",
        "order_token": order_token(order_ref, amount, customer, now_secs() + TOKEN_LIFETIME_SECS),
    })
}

/// An order body for [`CUSTOMER`] with its token.
pub fn signed_order(order_ref: &str, amount: u64) -> Value {
    signed_order_for(order_ref, amount, CUSTOMER)
}
