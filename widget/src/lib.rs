//! ChargeOnce's Place Order widget, compiled to wasm and loaded by a
//! storefront as the ES module `/pkg/chargeonce.js`.
//!
//! This crate is the browser shell around `chargeonce-protocol`'s
//! [`Attempt`](chargeonce_protocol::Attempt), which holds every rule (when a
//! key is made, kept or replaced; when to retry and how long to wait). Here:
//!
//! - [`options`]: the order, read from the host's `data-*` attributes, and
//!   the options of `mount()` and of its handle's `update()`.
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

use controller::Widget;
use leptos::prelude::*;
use options::Hooks;
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
/// options)`), for hosts added after the page loaded and for frameworks that
/// mount and unmount components, and returns the page's handle on it.
/// `options` may set any of `endpoint`, `orderRef`, `amount`, `currency`,
/// `paymentMethod`, `customer`, `orderToken`, `label`, `retryBaseMs`,
/// `retryCapMs`, `maxRetries` and `timeoutMs`, which are written to the
/// element's `data-*` attributes (the widget reads them at each click);
/// `getOrderToken`, an async function the widget calls with `{key,
/// orderRef}` when the edge finds the order token expired, for a Promise of
/// a fresh one; and `handleAction`, an async function the widget calls with
/// a PaymentIntent's `client_secret` when the payment needs the customer to
/// authenticate with their bank (3-D Secure), before it sends the order
/// again with the same key. `widget/chargeonce.d.ts` types them all.
///
/// # Errors
///
/// A `TypeError` for an `element` that is not an element, options that are
/// not an object or a hook that is not a function; the browser's
/// `NotSupportedError` if `element` cannot take a shadow root or already has
/// a widget.
#[wasm_bindgen]
pub fn mount(
    element: HtmlElement,
    options: Option<js_sys::Object>,
) -> Result<WidgetHandle, JsValue> {
    // JS may pass anything; say what is wrong before calling the element.
    if !element.is_object() || !js_sys::Reflect::has(&element, &"attachShadow".into())? {
        return Err(js_sys::TypeError::new("ChargeOnce: mount needs an HTML element").into());
    }
    let widget = mount_with(element, options, Ports::default())?;
    Ok(WidgetHandle { widget })
}

/// The page's handle on one mounted widget (what `mount()` returns). The
/// widget does not depend on it: a page that drops the handle keeps its
/// widget for as long as the element lives.
#[wasm_bindgen]
pub struct WidgetHandle {
    widget: Rc<Widget>,
}

#[wasm_bindgen]
impl WidgetHandle {
    /// Changes the widget's options (those of `mount`): an option given
    /// replaces the current value, `null` removes it, and one left out stays
    /// as it is.
    ///
    /// # Errors
    ///
    /// As [`Widget::update`].
    pub fn update(&self, options: js_sys::Object) -> Result<(), JsValue> {
        self.widget.update(&options)
    }

    /// Takes the widget off the page and stops all its work (see
    /// [`Widget::destroy`]); the element can be mounted on again.
    pub fn destroy(&self) {
        self.widget.destroy();
    }
}

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
) -> Result<Rc<Widget>, JsValue> {
    let mut hooks = Hooks::default();
    if let Some(options) = &options {
        options::apply(&element, options, &mut hooks)?;
    }
    let shadow = match element.shadow_root() {
        // A destroyed widget leaves its element's shadow root empty (a
        // shadow root cannot be removed); a new widget takes it over, which
        // is what a framework that unmounts and remounts a component does.
        Some(shadow) if shadow.first_child().is_none() => shadow,
        _ => element.attach_shadow(&ShadowRootInit::new(ShadowRootMode::Open))?,
    };
    view::style(&shadow)?;
    let widget = Widget::new(element, ports, hooks);
    let view_widget = Rc::clone(&widget);
    // Leptos mounts into an `HtmlElement` but only calls `Node` methods on it
    // (insertBefore, appendChild), which a ShadowRoot has: its own `<Portal
    // use_shadow>` mounts into a shadow root with this same cast.
    let mounted = leptos::mount::mount_to(shadow.unchecked_into(), move || {
        view! { <view::PlaceOrder widget=view_widget /> }
    });
    widget.hold_view(Box::new(mounted));
    // After mounting: mount_to is what starts Leptos's task executor, and a
    // resumed attempt spawns its driver at once (on a freshly loaded page,
    // spawning first panics).
    widget.resume();
    Ok(widget)
}
