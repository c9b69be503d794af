//! What one widget places: read from its host element's `data-*` attributes
//! at the moment of the click, so a storefront that updates `data-amount`
//! when the cart changes gets a new payload (and so a new key). Also the
//! options of `mount()` and `update()`, which write those attributes and
//! give the page's functions ([`Hooks`]).

use chargeonce_protocol::{Fingerprint, Order, OrderDraft, RetryPolicy, ORDERS_PATH};
use wasm_bindgen::{JsCast, JsValue};
use web_sys::HtmlElement;

/// The button's text when the host has no `data-label`.
pub const DEFAULT_LABEL: &str = "Place order";

/// Where orders go when the host has no `data-endpoint`.
pub const DEFAULT_ENDPOINT: &str = ORDERS_PATH;

/// The `data-*` attributes the widget reads, and the `mount()` option names
/// that set them.
pub const ATTRIBUTES: &[(&str, &str)] = &[
    ("endpoint", "data-endpoint"),
    ("orderRef", "data-order-ref"),
    ("amount", "data-amount"),
    ("currency", "data-currency"),
    ("paymentMethod", "data-payment-method"),
    ("customer", "data-customer"),
    ("orderToken", "data-order-token"),
    ("label", "data-label"),
    ("retryBaseMs", "data-retry-base-ms"),
    ("retryCapMs", "data-retry-cap-ms"),
    ("maxRetries", "data-max-retries"),
    ("timeoutMs", "data-timeout-ms"),
];

/// The `mount()` option that gives the widget a fresh order token when the
/// edge finds the current one expired: an async function (`{key, orderRef}`
/// in, a Promise of the token out). It has no attribute: attributes hold
/// text, not functions.
pub const GET_ORDER_TOKEN: &str = "getOrderToken";

/// The `mount()` option that shows the customer their bank's 3-D Secure
/// challenge: an async function given the PaymentIntent's `client_secret`
/// (a storefront on Stripe passes `stripe.handleNextAction`-based code).
/// When it settles, the widget sends the order again with the same key and
/// shows the outcome.
pub const HANDLE_ACTION: &str = "handleAction";

/// The functions a page gives `mount()` or `update()`.
#[derive(Default)]
pub struct Hooks {
    /// `getOrderToken`: a fresh order token when the edge found one expired.
    pub get_order_token: Option<js_sys::Function>,
    /// `handleAction`: shows the bank's 3-D Secure challenge.
    pub handle_action: Option<js_sys::Function>,
}

/// Applies `mount()`'s or `update()`'s `options` to `host` and `hooks`: an
/// option given replaces the current value, `null` removes it, and one not
/// given (`undefined`) is left as it is. Attributes are what the widget
/// reads at each click, so an update is in the next order. Options that are
/// refused change nothing.
///
/// # Errors
///
/// A `TypeError` for options that are not an object or a hook that is
/// neither a function nor `null`, or an attribute the browser refuses to
/// set.
pub fn apply(
    host: &HtmlElement,
    options: &js_sys::Object,
    hooks: &mut Hooks,
) -> Result<(), JsValue> {
    if !options.is_object() {
        return Err(js_sys::TypeError::new("ChargeOnce: the options must be an object").into());
    }
    let get = |name: &str| js_sys::Reflect::get(options, &JsValue::from_str(name));
    // The hooks are checked before any attribute is written, so options
    // that are refused change nothing.
    let hook = |name: &str| -> Result<Option<Option<js_sys::Function>>, JsValue> {
        let value = get(name)?;
        if value.is_undefined() {
            Ok(None)
        } else if value.is_null() {
            Ok(Some(None))
        } else {
            let function = value.dyn_into().map_err(|_| {
                js_sys::TypeError::new(&format!("ChargeOnce: {name} must be a function"))
            })?;
            Ok(Some(Some(function)))
        }
    };
    let get_order_token = hook(GET_ORDER_TOKEN)?;
    let handle_action = hook(HANDLE_ACTION)?;
    for (option, attribute) in ATTRIBUTES {
        let value = get(option)?;
        if value.is_null() {
            host.remove_attribute(attribute)?;
        } else if !value.is_undefined() {
            // Numbers go through JS's own formatting: Rust's float
            // formatting would cost the bundle about 12 KB.
            let text = value
                .as_string()
                .or_else(|| js_sys::JSON::stringify(&value).ok().map(String::from))
                .unwrap_or_default();
            host.set_attribute(attribute, &text)?;
        }
    }
    if let Some(function) = get_order_token {
        hooks.get_order_token = function;
    }
    if let Some(function) = handle_action {
        hooks.handle_action = function;
    }
    Ok(())
}

/// One order, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// Where to POST it.
    pub endpoint: String,
    /// The validated order.
    pub order: Order,
    /// The body to send: the order's canonical JSON.
    pub body: String,
    /// The payload's fingerprint, which decides whether the key is kept.
    pub fingerprint: Fingerprint,
}

impl Checkout {
    /// The same order with a fresh order token. The token is not part of
    /// what is charged (nor of the fingerprint), so this is still the
    /// payload the attempt's key belongs to.
    pub fn with_order_token(&self, token: String) -> Self {
        let mut order = self.order.clone();
        order.order_token = Some(token);
        Self {
            endpoint: self.endpoint.clone(),
            body: order.canonical_json(),
            fingerprint: self.fingerprint.clone(),
            order,
        }
    }
}

fn attr(host: &HtmlElement, name: &str) -> Option<String> {
    host.get_attribute(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The button's label.
pub fn label(host: &HtmlElement) -> String {
    attr(host, "data-label").unwrap_or_else(|| DEFAULT_LABEL.to_owned())
}

/// The order reference, which names the attempt's storage slot.
pub fn order_ref(host: &HtmlElement) -> Option<String> {
    attr(host, "data-order-ref")
}

/// The order token the page gave last, which a status lookup sends.
pub fn order_token(host: &HtmlElement) -> Option<String> {
    attr(host, "data-order-token")
}

/// Reads and validates the order with the same rules the edge applies, so a
/// misconfigured page hears about it before anything is sent.
pub fn checkout(host: &HtmlElement) -> Result<Checkout, String> {
    let amount =
        match attr(host, "data-amount") {
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                format!("data-amount must be a whole number of cents, not \"{text}\"")
            })?),
            None => None,
        };
    let order = OrderDraft {
        order_ref: attr(host, "data-order-ref"),
        amount,
        currency: attr(host, "data-currency"),
        payment_method: attr(host, "data-payment-method"),
        customer: attr(host, "data-customer"),
        order_token: attr(host, "data-order-token"),
    }
    .validate()
    .map_err(|e| e.to_string())?;
    Ok(Checkout {
        endpoint: attr(host, "data-endpoint").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
        body: order.canonical_json(),
        fingerprint: Fingerprint::of("POST", ORDERS_PATH, &order),
        order,
    })
}

/// The retry policy, with any `data-*` overrides.
pub fn retry_policy(host: &HtmlElement) -> RetryPolicy {
    let number = |name: &str| attr(host, name).and_then(|v| v.parse::<u64>().ok());
    let defaults = RetryPolicy::default();
    RetryPolicy {
        base_ms: number("data-retry-base-ms").unwrap_or(defaults.base_ms),
        cap_ms: number("data-retry-cap-ms").unwrap_or(defaults.cap_ms),
        max_retries: number("data-max-retries")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(defaults.max_retries),
        request_timeout_ms: number("data-timeout-ms").unwrap_or(defaults.request_timeout_ms),
        ..defaults
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The part of chargeonce.d.ts (what TypeScript users compile against)
    /// from `start` to the next closing brace at the start of a line.
    pub(crate) fn declared(start: &str) -> &'static str {
        let declarations = include_str!("../chargeonce.d.ts");
        let from = &declarations[declarations.find(start).unwrap()..];
        &from[..from.find("\n}").unwrap()]
    }

    #[test]
    fn every_option_is_declared_for_typescript() {
        let declared = declared("export interface MountOptions {");
        for name in ATTRIBUTES
            .iter()
            .map(|(option, _)| *option)
            .chain([GET_ORDER_TOKEN, HANDLE_ACTION])
        {
            assert!(
                declared.contains(&format!("\n  {name}?: ")),
                "{name} is not in chargeonce.d.ts's MountOptions"
            );
        }
        let options = declared.matches("?: ").count();
        assert_eq!(
            options,
            ATTRIBUTES.len() + 2,
            "chargeonce.d.ts declares an option the widget does not read"
        );
    }
}
