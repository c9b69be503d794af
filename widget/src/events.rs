//! The DOM events a storefront listens to. Each is a bubbling, composed
//! `CustomEvent` dispatched on the host element, with a JSON-shaped `detail`.

use serde_json::{json, Value};
use web_sys::{CustomEvent, CustomEventInit, HtmlElement};

/// A request is about to be sent: `{key, attempt}` (1 for the first send).
pub const ATTEMPT: &str = "chargeonce:attempt";
/// A retry was scheduled: `{key, retry, of, delay_ms, reason}`.
pub const RETRY: &str = "chargeonce:retry";
/// The order was placed: `{key, replayed, response}` (the backend's JSON).
pub const SUCCESS: &str = "chargeonce:success";
/// The attempt ended without a placed order: `{key, final, status, message}`;
/// `final: false` means the outcome is unknown and a new click retries with
/// the same key.
pub const FAILURE: &str = "chargeonce:failure";

/// Dispatches `name` on `host` with `detail`.
pub fn dispatch(host: &HtmlElement, name: &str, detail: &Value) {
    let init = CustomEventInit::new();
    init.set_bubbles(true);
    init.set_composed(true);
    if let Ok(detail) = js_sys::JSON::parse(&detail.to_string()) {
        init.set_detail(&detail);
    }
    if let Ok(event) = CustomEvent::new_with_event_init_dict(name, &init) {
        let _ = host.dispatch_event(&event);
    }
}

/// The `detail` of a success event.
pub fn success(key: &str, replayed: bool, body: &str) -> Value {
    let response: Value =
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    json!({"key": key, "replayed": replayed, "response": response})
}
