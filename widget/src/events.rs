//! The DOM events a storefront listens to. Each is a bubbling, composed
//! `CustomEvent` dispatched on the host element, with a plain object as
//! `detail`. The objects are built with `js_sys` rather than serialised from
//! Rust, which keeps a JSON writer out of the bundle.

use wasm_bindgen::JsValue;
use web_sys::{CustomEvent, CustomEventInit, HtmlElement};

/// A request is about to be sent: `{key, attempt, method}` (`attempt` is 1
/// for the first send; `method` is `POST` for the order, `GET` for a status
/// lookup, which never charges).
pub const ATTEMPT: &str = "chargeonce:attempt";
/// A retry was scheduled: `{key, retry, of, delay_ms, reason, status}`
/// (`status` is the answer's, or `null` when there was none).
pub const RETRY: &str = "chargeonce:retry";
/// The order was placed: `{key, replayed, response}` (the backend's JSON).
pub const SUCCESS: &str = "chargeonce:success";
/// The edge refused the order token as expired: `{key, orderRef}`. Without a
/// `getOrderToken` option the widget waits (for a bounded time) for the page
/// to set a fresh `data-order-token`, then sends again with the same key.
pub const TOKEN_NEEDED: &str = "chargeonce:token-needed";
/// The payment needs the customer to authenticate with their bank (3-D
/// Secure): `{key, payment_intent, client_secret, next_action}`. The widget
/// then calls the `handleAction` option, if given.
pub const ACTION: &str = "chargeonce:action";
/// The attempt ended without a placed order: `{key, final, status, message}`;
/// `final: false` means the outcome is unknown and a new click retries with
/// the same key.
pub const FAILURE: &str = "chargeonce:failure";

/// A plain JS object with these members.
pub fn detail(members: &[(&str, JsValue)]) -> JsValue {
    let object = js_sys::Object::new();
    for (name, value) in members {
        // Setting a property on a fresh plain object cannot fail.
        let _ = js_sys::Reflect::set(&object, &JsValue::from_str(name), value);
    }
    object.into()
}

/// The backend's JSON body as a JS value (the text itself if it is not JSON).
pub fn parsed(body: &str) -> JsValue {
    js_sys::JSON::parse(body).unwrap_or_else(|_| JsValue::from_str(body))
}

/// Dispatches `name` on `host` with `detail`.
pub fn dispatch(host: &HtmlElement, name: &str, detail: &JsValue) {
    let init = CustomEventInit::new();
    init.set_bubbles(true);
    init.set_composed(true);
    init.set_detail(detail);
    if let Ok(event) = CustomEvent::new_with_event_init_dict(name, &init) {
        let _ = host.dispatch_event(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::tests::declared;

    #[test]
    fn every_event_is_declared_for_typescript() {
        let declared = declared("interface HTMLElementEventMap {");
        let events = [ATTEMPT, RETRY, SUCCESS, TOKEN_NEEDED, ACTION, FAILURE];
        for name in events {
            assert!(
                declared.contains(&format!("\"{name}\": CustomEvent<")),
                "{name} is not in chargeonce.d.ts's HTMLElementEventMap"
            );
        }
        assert_eq!(declared.matches("CustomEvent<").count(), events.len());
    }
}
