//! ChargeOnce's Place Order widget, compiled to wasm and loaded by a
//! storefront as the ES module `/pkg/chargeonce.js`.
//!
//! This crate is the browser shell around `chargeonce-protocol`'s
//! [`Attempt`](chargeonce_protocol::Attempt), which holds every rule (when a
//! key is made, kept or replaced; when to retry and how long to wait). Here:
//!
//! - [`options`]: the order, read from the host's `data-*` attributes.
//! - [`controller`]: one widget, driving the attempt with real I/O.
//! - [`transport`]: `fetch` with a timeout (the order and the status
//!   lookup), and `navigator.onLine`.
//! - [`storage`]: the attempt in `sessionStorage`, the key shared in
//!   `localStorage`.
//! - [`events`]: the DOM events a storefront can listen to.
//! - [`view`]: the button and its status line, in an open shadow root so the
//!   page's CSS cannot restyle it and ours cannot leak out.

pub mod controller;
pub mod events;
pub mod options;
pub mod storage;
pub mod transport;
pub mod view;

use controller::{Hooks, Widget};
use leptos::prelude::*;
use std::rc::Rc;
use transport::Ports;
use wasm_bindgen::prelude::*;
use web_sys::{HtmlElement, ShadowRootInit, ShadowRootMode};

/// Mounts the widget on every `[data-chargeonce]` element of the page as soon
/// as the module is instantiated, so a storefront needs only the markup and
/// the `<script type="module">` that loads us. Safe to call again: elements
/// that already carry a widget are skipped.
///
/// # Errors
///
/// The first element that cannot be mounted (see [`mount`]).
#[wasm_bindgen(start)]
pub fn mount_all() -> Result<(), JsValue> {
    let document = window().document().ok_or("no document")?;
    let hosts = document.query_selector_all("[data-chargeonce]")?;
    for index in 0..hosts.length() {
        if let Some(host) = hosts
            .get(index)
            .and_then(|node| node.dyn_into::<HtmlElement>().ok())
        {
            if host.shadow_root().is_none() {
                mount_with(host, None, Ports::default())?;
            }
        }
    }
    Ok(())
}

/// Mounts the widget on `element` (exported to JS as `mount(element,
/// options)`), for hosts added after the page loaded. `options` may set any
/// of `endpoint`, `orderRef`, `amount`, `currency`, `paymentMethod`,
/// `customer`, `orderToken`, `label`, `retryBaseMs`, `retryCapMs`,
/// `maxRetries` and `timeoutMs`, which are written to the element's `data-*`
/// attributes (the widget reads them at each click); `getOrderToken`, an
/// async function the widget calls with `{key, orderRef}` when the edge finds
/// the order token expired, for a Promise of a fresh one; and
/// `handleAction`, an async function the widget calls with a PaymentIntent's
/// `client_secret` when the payment needs the customer to authenticate with
/// their bank (3-D Secure), before it sends the order again with the same key.
///
/// # Errors
///
/// The browser's `NotSupportedError` if `element` cannot take a shadow root or
/// already has one (a second mount on the same element).
#[wasm_bindgen]
pub fn mount(
    element: HtmlElement,
    #[wasm_bindgen(unchecked_optional_param_type = "MountOptions")] options: Option<js_sys::Object>,
) -> Result<(), JsValue> {
    mount_with(element, options, Ports::default())
}

// For TypeScript users of `mount`: it goes to chargeonce.d.ts, not into the
// bundle.
#[wasm_bindgen(typescript_custom_section)]
const MOUNT_OPTIONS: &str = r#"
/** The options of `mount`; each but getOrderToken sets a data-* attribute. */
export interface MountOptions {
  endpoint?: string;
  orderRef?: string;
  amount?: number | string;
  currency?: string;
  paymentMethod?: string;
  customer?: string;
  orderToken?: string;
  label?: string;
  retryBaseMs?: number;
  retryCapMs?: number;
  maxRetries?: number;
  timeoutMs?: number;
  /** Called when the order token expired: resolve to a fresh one. */
  getOrderToken?: (detail: { key: string; orderRef: string }) => Promise<string>;
  /**
   * Called when the payment needs 3-D Secure: show the bank's challenge
   * (e.g. with Stripe.js's handleNextAction) and settle when it is done.
   */
  handleAction?: (clientSecret: string) => Promise<unknown>;
}
"#;

/// Mounts the widget on `element` with `options` (as [`mount`]) and the given
/// I/O ports; the browser tests pass scripted ones.
///
/// # Errors
///
/// As [`mount`].
pub fn mount_with(
    element: HtmlElement,
    options: Option<js_sys::Object>,
    ports: Ports,
) -> Result<(), JsValue> {
    let mut hooks = Hooks::default();
    if let Some(options) = options {
        for (option, attribute) in options::ATTRIBUTES {
            let value = js_sys::Reflect::get(&options, &JsValue::from_str(option))?;
            if !value.is_undefined() && !value.is_null() {
                // Numbers go through JS's own formatting: Rust's float
                // formatting would cost the bundle about 12 KB.
                let text = value
                    .as_string()
                    .or_else(|| js_sys::JSON::stringify(&value).ok().map(String::from))
                    .unwrap_or_default();
                element.set_attribute(attribute, &text)?;
            }
        }
        let function = |name: &str| {
            js_sys::Reflect::get(&options, &JsValue::from_str(name))
                .map(|f| f.dyn_into::<js_sys::Function>().ok())
        };
        hooks = Hooks {
            get_order_token: function(options::GET_ORDER_TOKEN)?,
            handle_action: function(options::HANDLE_ACTION)?,
        };
    }
    let label = options::label(&element);
    let shadow = element.attach_shadow(&ShadowRootInit::new(ShadowRootMode::Open))?;
    view::style(&shadow)?;
    let widget = Widget::new(element, ports, hooks);
    let view_widget = Rc::clone(&widget);
    // Leptos mounts into an `HtmlElement` but only calls `Node` methods on it
    // (insertBefore, appendChild), which a ShadowRoot has: its own `<Portal
    // use_shadow>` mounts into a shadow root with this same cast.
    leptos::mount::mount_to(shadow.unchecked_into(), move || {
        view! { <view::PlaceOrder widget=view_widget label /> }
    })
    // The widget lives as long as its element; unmounting would only empty
    // the shadow root of an element the page owns.
    .forget();
    // After mounting: mount_to is what starts Leptos's task executor, and a
    // resumed attempt spawns its driver at once (on a freshly loaded page,
    // spawning first panics).
    widget.resume();
    Ok(())
}
