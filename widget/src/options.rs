//! What one widget places: read from its host element's `data-*` attributes
//! at the moment of the click, so a storefront that updates `data-amount`
//! when the cart changes gets a new payload (and so a new key).

use chargeonce_protocol::{Fingerprint, Order, OrderDraft, RetryPolicy, ORDERS_PATH};
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
                format!("data-amount must be a whole number of cents, not {text:?}")
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
