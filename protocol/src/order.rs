//! The order a client asks the edge to charge: the wire type of
//! `POST /v1/orders`, its validation, and its canonical form.
//!
//! Validation collects every problem at once so a client fixes its request in
//! one round trip. The canonical form is what the fingerprint hashes, so two
//! bodies that differ only in key order or whitespace are the same order.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// The largest amount accepted, in minor units: Stripe's own limit for most
/// currencies (eight digits).
pub const MAX_AMOUNT: u64 = 99_999_999;

/// The longest string accepted in a text field, in bytes.
pub const MAX_FIELD_LEN: usize = 255;

/// The longest order token accepted, in bytes: a signed token for the
/// longest order the other limits allow fits with room to spare.
pub const MAX_TOKEN_LEN: usize = 2048;

/// A validated order. Fields are in alphabetical order because that is the
/// order [`Order::canonical_json`] writes them in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Order {
    /// Amount in the currency's minor units (cents), 1 to [`MAX_AMOUNT`].
    pub amount: u64,
    /// ISO 4217 code in lower case, as Stripe takes it (`usd`).
    pub currency: String,
    /// The merchant's customer id, which scopes the idempotency key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub customer: Option<String>,
    /// The merchant's reference for this order.
    pub order_ref: String,
    /// The storefront server's signature over the amount, currency, customer
    /// and reference (see [`crate::token`]). Part of the body, not of what is
    /// charged: [`Order::charge`] leaves it out, so the fingerprint and the
    /// backend never see it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub order_token: Option<String>,
    /// The payment method to charge (`pm_card_visa`).
    pub payment_method: String,
}

/// One field's problem, reported as RFC 9457's `invalid_params` member.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FieldProblem {
    /// The JSON member's name.
    pub name: String,
    /// What is wrong with it, in words a developer can act on.
    pub reason: String,
}

/// Why a request body is not a valid order.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum OrderError {
    /// The body does not parse as JSON (including bad UTF-8 and nesting
    /// deeper than the parser's limit).
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("the body must be a JSON object, not {0}")]
    NotAnObject(&'static str),
    /// One or more fields are missing, of the wrong type or out of range.
    #[error("{}", describe(.0))]
    InvalidFields(Vec<FieldProblem>),
}

fn describe(problems: &[FieldProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.name, p.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An order as a client assembled it, before validation: every field may be
/// missing. The widget fills one from its `data-*` attributes; the edge gets
/// one from the request body through [`Order::from_json`]. Both then run the
/// same checks in [`OrderDraft::validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderDraft {
    /// See [`Order::order_ref`].
    pub order_ref: Option<String>,
    /// See [`Order::amount`].
    pub amount: Option<u64>,
    /// See [`Order::currency`].
    pub currency: Option<String>,
    /// See [`Order::payment_method`].
    pub payment_method: Option<String>,
    /// See [`Order::customer`].
    pub customer: Option<String>,
    /// See [`Order::order_token`].
    pub order_token: Option<String>,
}

impl OrderDraft {
    /// Checks every field, reporting every problem at once.
    pub fn validate(self) -> Result<Order, OrderError> {
        self.validate_after(Vec::new())
    }

    /// Checks every field; `problems` already holds problems found while
    /// reading the fields (wrong JSON types), which are not reported again
    /// as missing.
    fn validate_after(self, mut problems: Vec<FieldProblem>) -> Result<Order, OrderError> {
        let reported =
            |problems: &[FieldProblem], name: &str| problems.iter().any(|p| p.name == name);
        let required =
            |problems: &mut Vec<FieldProblem>, name: &str, value: Option<String>| match value {
                None if reported(problems, name) => None,
                None => {
                    problem(problems, name, "is required");
                    None
                }
                Some(text) => check_text(problems, name, text),
            };
        let order_ref = required(&mut problems, "order_ref", self.order_ref);
        let amount = match self.amount {
            None if reported(&problems, "amount") => None,
            None => {
                problem(&mut problems, "amount", "is required");
                None
            }
            Some(0) => {
                problem(&mut problems, "amount", "must be greater than 0");
                None
            }
            Some(a) if a > MAX_AMOUNT => {
                problem(
                    &mut problems,
                    "amount",
                    format!("must be at most {MAX_AMOUNT}"),
                );
                None
            }
            Some(a) => Some(a),
        };
        let currency = match self.currency {
            None if reported(&problems, "currency") => None,
            None => {
                problem(&mut problems, "currency", "is required");
                None
            }
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()) => Some(c),
            Some(_) => {
                problem(
                    &mut problems,
                    "currency",
                    "must be a three-letter ISO 4217 code in lower case, such as \"usd\"",
                );
                None
            }
        };
        let payment_method = required(&mut problems, "payment_method", self.payment_method);
        let customer = self
            .customer
            .and_then(|c| check_text(&mut problems, "customer", c));
        let order_token = self.order_token.and_then(|t| check_token(&mut problems, t));
        match (order_ref, amount, currency, payment_method) {
            (Some(order_ref), Some(amount), Some(currency), Some(payment_method))
                if problems.is_empty() =>
            {
                Ok(Order {
                    amount,
                    currency,
                    customer,
                    order_ref,
                    order_token,
                    payment_method,
                })
            }
            _ => Err(OrderError::InvalidFields(problems)),
        }
    }
}

impl Order {
    /// Parses and validates a request body.
    pub fn from_json(body: &[u8]) -> Result<Self, OrderError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| OrderError::NotJson(e.to_string()))?;
        let Value::Object(mut fields) = value else {
            return Err(OrderError::NotAnObject(json_type(&value)));
        };
        // serde_json keeps the last of two members with one name; a backend
        // (or a reviewer) reading the first would see another order.
        let mut problems: Vec<_> = repeated_members(body)
            .into_iter()
            .map(|name| FieldProblem {
                name,
                reason: "appears more than once; send each field once".into(),
            })
            .collect();
        let draft = OrderDraft {
            order_ref: take_string(&mut fields, "order_ref", &mut problems),
            amount: take_amount(&mut fields, &mut problems),
            currency: take_string(&mut fields, "currency", &mut problems),
            payment_method: take_string(&mut fields, "payment_method", &mut problems),
            customer: take_string(&mut fields, "customer", &mut problems),
            order_token: take_string(&mut fields, "order_token", &mut problems),
        };
        // Unknown members are refused rather than ignored: a client that sends
        // `"ammount"` must hear about it, not be charged the default.
        let mut unknown: Vec<_> = fields.keys().cloned().collect();
        unknown.sort();
        problems.extend(unknown.into_iter().map(|name| FieldProblem {
            name,
            reason: "is not a field of an order".into(),
        }));
        draft.validate_after(problems)
    }

    /// The canonical body: compact JSON with members in a fixed order and the
    /// optional members left out when absent.
    pub fn canonical_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => json,
            // Not `expect`: its message would format the error, which puts
            // serde_json's error formatting into the widget's bundle.
            Err(_) => unreachable!("an Order holds only strings and integers"),
        }
    }

    /// What is charged: the order without its token. Two bodies for the same
    /// charge with tokens issued at different times are the same request.
    #[must_use]
    pub fn charge(&self) -> Self {
        Self {
            order_token: None,
            ..self.clone()
        }
    }
}

/// The names that occur more than once among a JSON object's members, in
/// order of their second occurrence; empty for anything but a valid object.
fn repeated_members(body: &[u8]) -> Vec<String> {
    struct Names(Vec<String>);
    impl<'de> Deserialize<'de> for Names {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Names;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Names, A::Error> {
                    let mut names = Vec::new();
                    while let Some((name, serde::de::IgnoredAny)) = map.next_entry::<String, _>()? {
                        names.push(name);
                    }
                    Ok(Names(names))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let Ok(Names(names)) = serde_json::from_slice::<Names>(body) else {
        return Vec::new();
    };
    let mut seen = std::collections::HashSet::new();
    let mut repeated = Vec::new();
    for name in names {
        if !seen.insert(name.clone()) && !repeated.contains(&name) {
            repeated.push(name);
        }
    }
    repeated
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn problem(problems: &mut Vec<FieldProblem>, name: &str, reason: impl Into<String>) {
    problems.push(FieldProblem {
        name: name.into(),
        reason: reason.into(),
    });
}

/// The rules for free text: present, short, printable.
fn check_text(problems: &mut Vec<FieldProblem>, name: &str, text: String) -> Option<String> {
    if text.trim().is_empty() {
        problem(problems, name, "must not be empty");
    } else if text.len() > MAX_FIELD_LEN {
        problem(
            problems,
            name,
            format!("must be at most {MAX_FIELD_LEN} bytes, not {}", text.len()),
        );
    } else if text.chars().any(char::is_control) {
        problem(problems, name, "must not contain control characters");
    } else {
        return Some(text);
    }
    None
}

/// A token is opaque here (its signature is checked by [`crate::token`]),
/// but it travels in a header-like role, so only visible ASCII is allowed.
fn check_token(problems: &mut Vec<FieldProblem>, token: String) -> Option<String> {
    if token.is_empty() {
        problem(problems, "order_token", "must not be empty");
    } else if token.len() > MAX_TOKEN_LEN {
        problem(
            problems,
            "order_token",
            format!("must be at most {MAX_TOKEN_LEN} bytes, not {}", token.len()),
        );
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        problem(
            problems,
            "order_token",
            "must hold only visible ASCII characters, as the storefront's server issued it",
        );
    } else {
        return Some(token);
    }
    None
}

/// A string member; `null` reads as absent.
fn take_string(
    fields: &mut Map<String, Value>,
    name: &str,
    problems: &mut Vec<FieldProblem>,
) -> Option<String> {
    match fields.remove(name) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            problem(
                problems,
                name,
                format!("must be a string, not {}", json_type(&other)),
            );
            None
        }
    }
}

/// The amount member: a JSON integer. Negative and fractional numbers are
/// reported here, since a `u64` cannot carry them to the typed checks.
fn take_amount(fields: &mut Map<String, Value>, problems: &mut Vec<FieldProblem>) -> Option<u64> {
    const REASON: &str = "must be an integer number of minor units (cents)";
    match fields.remove("amount") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            if let Some(a) = n.as_u64() {
                return Some(a);
            }
            if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f <= 0.0) {
                problem(problems, "amount", "must be greater than 0");
            } else {
                problem(problems, "amount", format!("{REASON}, not {n}"));
            }
            None
        }
        Some(other) => {
            problem(
                problems,
                "amount",
                format!("{REASON}, not {}", json_type(&other)),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"order_ref":"ord_1","amount":1999,"currency":"usd","payment_method":"pm_card_visa","customer":"cus_1"}"#;

    fn reasons(body: &str) -> Vec<(String, String)> {
        match Order::from_json(body.as_bytes()) {
            Err(OrderError::InvalidFields(p)) => {
                p.into_iter().map(|p| (p.name, p.reason)).collect()
            }
            other => panic!("expected field problems for {body}, got {other:?}"),
        }
    }

    fn names(body: &str) -> Vec<String> {
        reasons(body).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn a_valid_order_parses() {
        let order = Order::from_json(VALID.as_bytes()).unwrap();
        assert_eq!(order.amount, 1999);
        assert_eq!(order.customer.as_deref(), Some("cus_1"));
    }

    #[test]
    fn customer_is_optional_and_null_means_absent() {
        let body = r#"{"order_ref":"o","amount":1,"currency":"eur","payment_method":"pm","customer":null}"#;
        assert_eq!(Order::from_json(body.as_bytes()).unwrap().customer, None);
    }

    #[test]
    fn canonical_form_ignores_member_order_and_whitespace() {
        let shuffled = r#"{ "customer":"cus_1", "payment_method":"pm_card_visa",
            "currency":"usd", "amount":1999, "order_ref":"ord_1" }"#;
        let a = Order::from_json(VALID.as_bytes()).unwrap().canonical_json();
        let b = Order::from_json(shuffled.as_bytes())
            .unwrap()
            .canonical_json();
        assert_eq!(a, b);
        assert_eq!(
            a,
            r#"{"amount":1999,"currency":"usd","customer":"cus_1","order_ref":"ord_1","payment_method":"pm_card_visa"}"#
        );
    }

    #[test]
    fn every_missing_field_is_reported_at_once() {
        assert_eq!(
            names("{}"),
            ["order_ref", "amount", "currency", "payment_method"]
        );
    }

    #[test]
    fn amounts_must_be_positive_integers_within_the_limit() {
        for bad in ["0", "-5", "19.99", "1e3", "\"1999\"", "100000000", "-0.5"] {
            let body = VALID.replace("1999", bad);
            assert_eq!(names(&body), ["amount"], "amount {bad} must be refused");
        }
        let body = VALID.replace("1999", "99999999");
        assert!(Order::from_json(body.as_bytes()).is_ok());
    }

    #[test]
    fn currency_must_be_three_lowercase_letters() {
        for bad in ["USD", "us", "usdd", "u5d", ""] {
            let body = VALID.replace("\"usd\"", &format!("\"{bad}\""));
            assert_eq!(
                names(&body),
                ["currency"],
                "currency {bad:?} must be refused"
            );
        }
    }

    #[test]
    fn text_fields_refuse_wrong_types_empty_control_and_oversized_values() {
        assert_eq!(
            reasons(&VALID.replace("\"ord_1\"", "42")),
            [("order_ref".into(), "must be a string, not a number".into())]
        );
        assert_eq!(names(&VALID.replace("\"ord_1\"", "\"  \"")), ["order_ref"]);
        assert_eq!(
            names(&VALID.replace("\"ord_1\"", "\"a\\u0000b\"")),
            ["order_ref"]
        );
        let long = format!("\"{}\"", "x".repeat(256));
        assert_eq!(names(&VALID.replace("\"cus_1\"", &long)), ["customer"]);
    }

    #[test]
    fn the_token_travels_in_the_body_but_is_not_part_of_the_charge() {
        let body = VALID.replace("{", r#"{"order_token":"v1.abc.def","#);
        let order = Order::from_json(body.as_bytes()).unwrap();
        assert_eq!(order.order_token.as_deref(), Some("v1.abc.def"));
        assert!(order
            .canonical_json()
            .contains(r#""order_token":"v1.abc.def""#));
        assert_eq!(order.charge(), Order::from_json(VALID.as_bytes()).unwrap());
        for bad in ["\"\"", "\"a b\"", "\"é\"", "5"] {
            let body = VALID.replace("{", &format!(r#"{{"order_token":{bad},"#));
            assert_eq!(names(&body), ["order_token"], "token {bad} must be refused");
        }
        let long = VALID.replace(
            "{",
            &format!(r#"{{"order_token":"{}","#, "t".repeat(MAX_TOKEN_LEN + 1)),
        );
        assert_eq!(names(&long), ["order_token"]);
    }

    #[test]
    fn a_field_sent_twice_is_refused_not_resolved() {
        let body = VALID.replace("}", r#","amount":1}"#);
        assert_eq!(
            reasons(&body),
            [(
                "amount".into(),
                "appears more than once; send each field once".into()
            )]
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let body = VALID.replace("{", r#"{"ammount":5,"#);
        assert_eq!(
            reasons(&body),
            [("ammount".into(), "is not a field of an order".into())]
        );
    }

    #[test]
    fn a_draft_is_checked_by_the_same_rules() {
        let draft = OrderDraft {
            order_ref: Some("ord_1".into()),
            amount: Some(0),
            currency: Some("USD".into()),
            payment_method: None,
            customer: Some("cus_1".into()),
            order_token: None,
        };
        let Err(OrderError::InvalidFields(problems)) = draft.validate() else {
            panic!("the draft is invalid");
        };
        let names: Vec<_> = problems.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["amount", "currency", "payment_method"]);
        let good = OrderDraft {
            order_ref: Some("ord_1".into()),
            amount: Some(1999),
            currency: Some("usd".into()),
            payment_method: Some("pm_card_visa".into()),
            customer: Some("cus_1".into()),
            order_token: None,
        };
        assert_eq!(
            good.validate().unwrap(),
            Order::from_json(VALID.as_bytes()).unwrap()
        );
    }

    #[test]
    fn non_objects_and_non_json_are_refused() {
        assert_eq!(
            Order::from_json(b"[1]"),
            Err(OrderError::NotAnObject("an array"))
        );
        assert!(matches!(Order::from_json(b""), Err(OrderError::NotJson(_))));
        assert!(matches!(
            Order::from_json(b"{\"order_ref\":"),
            Err(OrderError::NotJson(_))
        ));
        assert!(matches!(
            Order::from_json(b"{\"order_ref\":\"\xff\"}"),
            Err(OrderError::NotJson(_))
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(
            Order::from_json(deep.as_bytes()),
            Err(OrderError::NotJson(_))
        ));
    }
}
