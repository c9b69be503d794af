//! `POST /demo/order-token`: the demo shop's stand-in for a storefront's
//! server. It prices a cart from the catalogue below, never from the browser,
//! and signs an order token for it with the secret the orders route checks.
//!
//! Only when `DEMO_STOREFRONT=true`, which `make dev` and the tests set with
//! `--var`: a real storefront signs tokens on its own server, where it also
//! knows who is logged in. Here the customer id comes from the page, which
//! is fine for a demo and would not be for a shop.

use crate::http;
use crate::orders::{now, order_token_secret, read_at_most};
use chargeonce_protocol::flow::{self, Secrets};
use chargeonce_protocol::{EdgeConfig, OrderClaims, Problem, ProblemType, MAX_BODY_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use worker::{Request, Response, Result};

/// The route's path.
pub const PATH: &str = "/demo/order-token";

/// How long a token authorises a charge: long enough for a checkout with
/// retries, short enough that a leaked one is soon useless.
pub const TOKEN_LIFETIME_SECS: u64 = 15 * 60;

/// The most of one product a cart may hold.
pub const MAX_QUANTITY: u64 = 99;

/// The shop's catalogue: product id and unit price in cents (US dollars).
/// `www/shop.js` shows the same products; these prices are the ones charged.
pub const CATALOGUE: &[(&str, u64)] = &[
    ("pourover", 2400),
    ("kettle", 5900),
    ("beans", 1600),
    ("filters", 600),
];

const CURRENCY: &str = "usd";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cart {
    customer: String,
    order_ref: String,
    /// Product id to quantity.
    items: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Issued {
    order_token: String,
    order_ref: String,
    amount: u64,
    currency: &'static str,
    customer: String,
    expires_at: u64,
}

/// Handles a request to [`PATH`].
pub async fn handle(mut req: Request, env: &worker::Env, config: &EdgeConfig) -> Result<Response> {
    if !config.demo_storefront {
        return http::not_found(PATH);
    }
    if req.method() != worker::Method::Post {
        return http::problem(&Problem::new(
            ProblemType::MethodNotAllowed,
            format!("use POST {PATH} with the cart as JSON"),
        ));
    }
    let secrets = Secrets {
        order_token: order_token_secret(env),
        backend: None,
    };
    let secret = match flow::signing_secret(&secrets) {
        Ok(secret) => secret,
        Err(problem) => return http::problem(&problem),
    };
    // Bounded like the orders route: a cart is a few hundred bytes.
    let body = read_at_most(&mut req, MAX_BODY_BYTES + 1).await?;
    if body.len() > MAX_BODY_BYTES {
        return http::problem(&Problem::new(
            ProblemType::PayloadTooLarge,
            format!("a cart may be at most {MAX_BODY_BYTES} bytes"),
        ));
    }
    let claims = match price(&body, now().as_secs()) {
        Ok(claims) => claims,
        Err(detail) => return http::problem(&Problem::new(ProblemType::InvalidOrder, detail)),
    };
    let issued = Issued {
        order_token: claims.sign(secret),
        order_ref: claims.order_ref,
        amount: claims.amount,
        currency: CURRENCY,
        customer: claims.customer,
        expires_at: claims.expires_at,
    };
    Response::from_json(&issued)
}

/// Prices a cart: what the shop's server vouches for.
fn price(body: &[u8], now_secs: u64) -> std::result::Result<OrderClaims, String> {
    let cart: Cart = serde_json::from_slice(body).map_err(|e| {
        format!("the cart must be JSON like {{\"customer\":\"cus_1\",\"order_ref\":\"ord_1\",\"items\":{{\"kettle\":1}}}}: {e}")
    })?;
    for (name, value) in [("customer", &cart.customer), ("order_ref", &cart.order_ref)] {
        let ok = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(format!(
                "{name} must be 1 to 64 letters, digits, '_' or '-', not {value:?}"
            ));
        }
    }
    if cart.items.is_empty() {
        return Err("the cart is empty".into());
    }
    let mut amount = 0;
    for (product, quantity) in &cart.items {
        let Some((_, unit)) = CATALOGUE.iter().find(|(id, _)| id == product) else {
            return Err(format!("there is no product {product:?} in the catalogue"));
        };
        if !(1..=MAX_QUANTITY).contains(quantity) {
            return Err(format!(
                "the quantity of {product} must be 1 to {MAX_QUANTITY}, not {quantity}"
            ));
        }
        amount += unit * quantity;
    }
    Ok(OrderClaims {
        order_ref: cart.order_ref,
        amount,
        currency: CURRENCY.into(),
        customer: cart.customer,
        expires_at: now_secs + TOKEN_LIFETIME_SECS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_comes_from_the_catalogue() {
        let claims = price(
            br#"{"customer":"cus_1","order_ref":"ord_1","items":{"kettle":2,"filters":1}}"#,
            100,
        )
        .unwrap();
        assert_eq!(claims.amount, 2 * 5900 + 600);
        assert_eq!(claims.expires_at, 100 + TOKEN_LIFETIME_SECS);
    }

    #[test]
    fn prices_from_the_browser_are_not_a_field() {
        assert!(price(
            br#"{"customer":"c","order_ref":"o","items":{"kettle":1},"amount":1}"#,
            0
        )
        .is_err());
    }

    #[test]
    fn bad_carts_are_refused_with_a_reason() {
        for (body, says) in [
            (
                &br#"{"customer":"c","order_ref":"o","items":{}}"#[..],
                "empty",
            ),
            (
                br#"{"customer":"c","order_ref":"o","items":{"yacht":1}}"#,
                "yacht",
            ),
            (
                br#"{"customer":"c","order_ref":"o","items":{"kettle":0}}"#,
                "quantity",
            ),
            (
                br#"{"customer":"c","order_ref":"o","items":{"kettle":100}}"#,
                "quantity",
            ),
            (
                br#"{"customer":"c d","order_ref":"o","items":{"kettle":1}}"#,
                "customer",
            ),
            (
                br#"{"customer":"c","order_ref":"","items":{"kettle":1}}"#,
                "order_ref",
            ),
            (b"nope", "JSON"),
        ] {
            let err = price(body, 0).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
