//! The contract's first step: refusing malformed `POST /v1/orders` requests,
//! in the contract's order (405, 415, 413, 400, 422), before anything is
//! claimed, forwarded or stored.

use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, ScopedKey};
use crate::order::{Order, OrderError};
use crate::problem::{Problem, ProblemType};

/// The one route that charges.
pub const ORDERS_PATH: &str = "/v1/orders";

/// The largest body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The parts of a request that are checked before its body is read.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    /// The HTTP method, upper case.
    pub method: &'a str,
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The `Content-Length` header, if any.
    pub content_length: Option<&'a str>,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<&'a str>,
}

/// A request that passed every check: what the edge claims and forwards.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderRequest {
    /// The key, scoped to the order's customer.
    pub key: ScopedKey,
    /// The validated order.
    pub order: Order,
    /// The fingerprint of method, path and canonical body.
    pub fingerprint: Fingerprint,
}

/// Checks what can be checked before reading the body: method, media type
/// and a declared length over the limit. The shell then reads at most
/// [`MAX_BODY_BYTES`] + 1 bytes and calls [`check_order_request`].
pub fn check_head(head: &RequestHead<'_>) -> Result<(), Problem> {
    if head.method != "POST" {
        return Err(Problem::new(
            ProblemType::MethodNotAllowed,
            format!(
                "{ORDERS_PATH} accepts POST to place an order and GET for its status, not {}",
                head.method
            ),
        ));
    }
    if !is_json(head.content_type) {
        return Err(Problem::new(
            ProblemType::UnsupportedMediaType,
            format!(
                "the body must be sent as application/json, not {}",
                head.content_type.unwrap_or("without a Content-Type")
            ),
        ));
    }
    // A declared length that does not parse is left to the transport; the
    // bytes actually read are checked in `check_order_request` either way.
    if let Some(declared) = head
        .content_length
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        if declared > MAX_BODY_BYTES as u64 {
            return Err(too_large(declared));
        }
    }
    Ok(())
}

/// Runs every check of the contract's first step on a whole request. `body`
/// may be longer than [`MAX_BODY_BYTES`] (the shell stops reading one byte
/// past it), which is refused with 413.
pub fn check_order_request(head: &RequestHead<'_>, body: &[u8]) -> Result<OrderRequest, Problem> {
    check_head(head)?;
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large(body.len() as u64));
    }
    let key = IdempotencyKey::parse(head.idempotency_key)
        .map_err(|e| Problem::new(ProblemType::InvalidIdempotencyKey, e.to_string()))?;
    let order = Order::from_json(body).map_err(|e| {
        let problem = Problem::new(ProblemType::InvalidOrder, e.to_string());
        match e {
            OrderError::InvalidFields(fields) => problem.with_invalid_params(fields),
            _ => problem,
        }
    })?;
    let fingerprint = Fingerprint::of(head.method, ORDERS_PATH, &order);
    Ok(OrderRequest {
        key: ScopedKey::new(order.customer.as_deref(), key),
        order,
        fingerprint,
    })
}

fn too_large(len: u64) -> Problem {
    Problem::new(
        ProblemType::PayloadTooLarge,
        format!("the body may be at most {MAX_BODY_BYTES} bytes; this one is {len} or more"),
    )
}

/// `application/json`, case-insensitively, with no charset or UTF-8.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else {
        return false;
    };
    let mut parts = value.split(';').map(str::trim);
    let essence_ok = parts
        .next()
        .is_some_and(|essence| essence.eq_ignore_ascii_case("application/json"));
    essence_ok
        && parts.all(|param| match param.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            // Other parameters mean nothing for JSON; tolerate them.
            _ => true,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        br#"{"order_ref":"ord_1","amount":1999,"currency":"usd","payment_method":"pm_card_visa"}"#;

    fn head() -> RequestHead<'static> {
        RequestHead {
            method: "POST",
            content_type: Some("application/json"),
            content_length: None,
            idempotency_key: Some("key-0001-0a1b2c3d"),
        }
    }

    fn status(head: RequestHead<'_>, body: &[u8]) -> u16 {
        check_order_request(&head, body).unwrap_err().status()
    }

    #[test]
    fn a_good_request_passes() {
        let req = check_order_request(&head(), BODY).unwrap();
        assert_eq!(req.key.key().as_str(), "key-0001-0a1b2c3d");
        assert_eq!(req.order.amount, 1999);
    }

    #[test]
    fn checks_run_in_the_contracts_order() {
        // Everything wrong at once: the method wins.
        let all_wrong = RequestHead {
            method: "PUT",
            content_type: Some("text/plain"),
            content_length: Some("999999"),
            idempotency_key: None,
        };
        assert_eq!(status(all_wrong, b"nope"), 405);
        assert_eq!(
            status(
                RequestHead {
                    method: "POST",
                    ..all_wrong
                },
                b"nope"
            ),
            415
        );
        let json = RequestHead {
            method: "POST",
            content_type: Some("application/json"),
            ..all_wrong
        };
        assert_eq!(status(json, b"nope"), 413);
        assert_eq!(
            status(
                RequestHead {
                    content_length: None,
                    ..json
                },
                b"nope"
            ),
            400
        );
        assert_eq!(
            status(
                RequestHead {
                    content_length: None,
                    idempotency_key: Some("key-0002-0a1b2c3d"),
                    ..json
                },
                b"nope"
            ),
            422
        );
    }

    #[test]
    fn media_type_parameters_are_understood() {
        for ok in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/json;charset=\"utf-8\"",
        ] {
            assert!(is_json(Some(ok)), "{ok} is JSON");
        }
        for bad in [
            "text/json",
            "application/json; charset=latin1",
            "application/jsonp",
            "",
        ] {
            assert!(!is_json(Some(bad)), "{bad} is not JSON");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn bodies_over_16_kib_are_refused_even_without_a_declared_length() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(status(head(), &big), 413);
        let declared = RequestHead {
            content_length: Some("16385"),
            ..head()
        };
        assert_eq!(status(declared, BODY), 413);
    }

    #[test]
    fn field_problems_are_listed_in_the_problem() {
        let problem = check_order_request(&head(), br#"{"amount":0}"#).unwrap_err();
        assert_eq!(problem.status(), 422);
        let names: Vec<_> = problem
            .invalid_params
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["order_ref", "amount", "currency", "payment_method"]);
    }

    #[test]
    fn the_key_is_scoped_by_the_orders_customer() {
        let with_customer = br#"{"order_ref":"o","amount":1,"currency":"usd","payment_method":"pm","customer":"cus_a"}"#;
        let a = check_order_request(&head(), with_customer).unwrap();
        let anon = check_order_request(&head(), BODY).unwrap();
        assert_ne!(a.key.storage_name(), anon.key.storage_name());
    }
}
