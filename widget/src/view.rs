//! The button and its status line, in the widget's shadow root. Styles live
//! here and only here; a storefront themes them through CSS custom
//! properties on the host element (`--chargeonce-accent` and friends).

use crate::controller::Widget;
use leptos::prelude::*;
use std::rc::Rc;

const STYLE: &str = r#"
:host { display: inline-block; font: var(--chargeonce-font, 600 1rem/1.4 system-ui, sans-serif); }
:host([hidden]) { display: none; }
.co-button {
  display: inline-flex; align-items: center; gap: .5em;
  padding: var(--chargeonce-padding, .75em 1.5em);
  border: 0; border-radius: var(--chargeonce-radius, .5em);
  background: var(--chargeonce-accent, #1f6feb); color: var(--chargeonce-on-accent, #fff);
  font: inherit; cursor: pointer;
}
.co-button:focus-visible { outline: 3px solid var(--chargeonce-focus, #f5a623); outline-offset: 2px; }
.co-button:disabled { cursor: default; opacity: .7; }
.co-spinner {
  width: 1em; height: 1em; border: 2px solid currentColor; border-right-color: transparent;
  border-radius: 50%; animation: co-spin .8s linear infinite;
}
@keyframes co-spin { to { transform: rotate(360deg); } }
@media (prefers-reduced-motion: reduce) { .co-spinner { animation: none; border-right-color: currentColor; opacity: .6; } }
.co-status { margin: .5em 0 0; min-height: 1.4em; font-weight: 400; color: var(--chargeonce-text, inherit); }
.co-status.co-alert { color: var(--chargeonce-alert, #b42318); }
"#;

/// The widget's view: a native `<button>` and an `aria-live` status line.
#[component]
pub fn PlaceOrder(
    /// The widget the button drives.
    widget: Rc<Widget>,
    /// The button's text.
    label: String,
) -> impl IntoView {
    let state = widget.view();
    let busy = move || state.with(|s| s.busy);
    view! {
        <style>{STYLE}</style>
        <button
            type="button"
            class="co-button"
            part="button"
            prop:disabled=move || state.with(|s| s.busy || s.placed)
            aria-busy=move || if busy() { "true" } else { "false" }
            on:click=move |_| widget.click()
        >
            <Show when=busy>
                <span class="co-spinner" aria-hidden="true"></span>
            </Show>
            <span>{label}</span>
        </button>
        <p
            class="co-status"
            class:co-alert=move || state.with(|s| s.alert)
            role="status"
            aria-live="polite"
        >
            {move || state.with(|s| s.status.clone())}
        </p>
    }
}
