//! The button and its status line, in the widget's shadow root, and what
//! they say for each phase of an attempt ([`view_state`]). Styles live here
//! and only here; a storefront themes them through CSS custom properties on
//! the host element (`--chargeonce-accent` and friends).

use crate::controller::Widget;
use chargeonce_protocol::{Attempt, Exchange, Phase, RetryPolicy, RetryReason};
use leptos::prelude::*;
use std::rc::Rc;
use wasm_bindgen::JsValue;
use web_sys::{CssStyleSheet, ShadowRoot};

/// What the view shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewState {
    /// The button's text (`data-label`); the controller sets it, since
    /// [`view_state`] knows the attempt, not the page.
    pub label: String,
    /// The status line.
    pub status: String,
    /// A request is in flight or scheduled: the button is disabled and busy.
    pub busy: bool,
    /// The order on the page was placed: the button stays disabled.
    pub placed: bool,
    /// The status is a problem the customer should notice.
    pub alert: bool,
}

/// The status line while the order is sent (and while the edge asks to wait
/// for an earlier request with the key, which is not a retry).
pub const PLACING: &str = "Placing order…";

/// The status line once the order on the page was placed.
pub const PLACED: &str = "Order placed";

/// The status line for an outcome the widget cannot vouch for either way.
pub const UNCONFIRMED: &str =
    "We couldn't confirm your order. You have not been charged twice — try again";

/// The status line when another tab is placing the same order.
pub const OTHER_TAB: &str = "This order is being placed in another tab.";

/// The status line while another device's attempt at the same order (same
/// customer and order, another key) is in progress.
pub const OTHER_DEVICE: &str = "This order is being placed on another device.";

/// The status line when the order on the page was paid under another key
/// (another device, a private window): this click charged nothing.
pub const ALREADY_PLACED: &str = "This order was already placed.";

/// The status line when the order was paid under another key for another
/// total: nothing was charged now.
pub const ALREADY_PLACED_NOT_CHARGED: &str =
    "This order was already placed. You were not charged again.";

/// The status line when the order was refused as often as the store allows
/// (declined cards): nothing more is sent for it.
pub const ATTEMPTS_EXHAUSTED: &str =
    "Too many declined attempts for this order. Please contact the store.";

/// The status line while the edge's status lookup settles an earlier
/// attempt (after a reload, or before a changed order is placed).
pub const CHECKING: &str = "Checking your earlier order…";

/// The status line while the page is asked for a fresh order token.
pub const REFRESHING: &str = "Refreshing your checkout session…";

/// The status line when the edge settled the order on the page as not
/// charged: a click places it again, under a new key.
pub const NOT_CHARGED: &str =
    "The payment did not go through; you were not charged. Please try again.";

/// The status line while the customer authenticates with their bank.
pub const CONFIRM_WITH_BANK: &str = "Confirm the payment with your bank…";

/// The status line when an attempt for another payload than the page's
/// (the cart changed since) turned out placed.
pub const EARLIER_PLACED: &str = "Your earlier order was placed.";

/// The status line when an attempt for another payload than the page's
/// turned out not charged (nothing recorded, refused, or settled as not
/// charged).
pub const EARLIER_NOT_CHARGED: &str = "Your earlier order was not charged.";

/// What the customer sees for `attempt`. `same_payload` says whether the
/// page still shows the attempt's payload: if not, a final attempt is an
/// earlier order, and the button is for the page's. `reason` is why the
/// last retry was needed, for the line of the send that follows it.
pub fn view_state(
    attempt: Option<&Attempt>,
    same_payload: bool,
    reason: Option<RetryReason>,
    policy: &RetryPolicy,
) -> ViewState {
    let Some(attempt) = attempt else {
        return ViewState::default();
    };
    let retrying = |retry: u32, reason: Option<RetryReason>| {
        let what = match reason {
            Some(RetryReason::ServerBusy) => "The payment service is busy",
            _ => "Connection lost",
        };
        format!("{what}, retrying ({retry} of {})…", policy.max_retries)
    };
    let sends = attempt.sends();
    let (status, alert) = match attempt.phase() {
        Phase::Placed { .. } if !same_payload => (EARLIER_PLACED.to_owned(), false),
        Phase::Refused { .. } if !same_payload => (EARLIER_NOT_CHARGED.to_owned(), false),
        // Asking again after waiting on another device: still its order.
        Phase::Sending if reason == Some(RetryReason::OtherDevice) => {
            (OTHER_DEVICE.to_owned(), false)
        }
        Phase::Sending if sends <= 1 => (PLACING.to_owned(), false),
        Phase::Sending => (retrying(sends - 1, reason), false),
        // Waits the edge asked for (a 409's lease) give the send back: with
        // none counted yet, the order is still being placed, not retried.
        Phase::Backoff {
            reason: RetryReason::OtherDevice,
            ..
        } => (OTHER_DEVICE.to_owned(), false),
        Phase::Backoff {
            then: Exchange::Order,
            ..
        } if sends == 0 => (PLACING.to_owned(), false),
        Phase::Backoff {
            reason,
            then: Exchange::Order,
            ..
        } => (retrying(sends, Some(*reason)), false),
        Phase::Checking
        | Phase::Backoff {
            then: Exchange::Status,
            ..
        } => (CHECKING.to_owned(), false),
        Phase::Offline {
            then: Exchange::Order,
        } => (
            "You're offline. Your order will be placed when the connection is back.".to_owned(),
            false,
        ),
        Phase::Offline {
            then: Exchange::Status,
        } => (
            "You're offline. Your earlier order will be checked when the connection is back."
                .to_owned(),
            false,
        ),
        Phase::NeedsToken { .. } => (REFRESHING.to_owned(), false),
        Phase::Placed {
            original_key: Some(_),
            ..
        } => (ALREADY_PLACED.to_owned(), false),
        Phase::Placed { .. } => (PLACED.to_owned(), false),
        Phase::ActionRequired { .. } => (CONFIRM_WITH_BANK.to_owned(), false),
        Phase::Refused { status: 402, .. } => ("Card declined".to_owned(), true),
        // A 2xx refusal: the intent's payment failed (a failed
        // authentication, say), or could not be asked for.
        Phase::Refused {
            status: 200..=299,
            message,
        } => (
            format!("The payment did not go through. {message} You were not charged."),
            true,
        ),
        Phase::Refused { status: 410, .. } => (NOT_CHARGED.to_owned(), true),
        Phase::Refused { status: 409, .. } => (ALREADY_PLACED_NOT_CHARGED.to_owned(), true),
        Phase::Refused { status: 429, .. } => (ATTEMPTS_EXHAUSTED.to_owned(), true),
        Phase::Refused { message, .. } => (format!("Order not accepted: {message}"), true),
        Phase::Unconfirmed => (UNCONFIRMED.to_owned(), true),
        Phase::OtherTab => (OTHER_TAB.to_owned(), true),
        Phase::OtherDevice => (OTHER_DEVICE.to_owned(), true),
    };
    ViewState {
        label: String::new(),
        status,
        busy: attempt.is_busy(),
        placed: same_payload && matches!(attempt.phase(), Phase::Placed { .. }),
        alert,
    }
}

// One rule per line, without the spaces a stylesheet is usually written
// with: about 45 bytes of the bundle's brotli budget.
const STYLE: &str = r#"
:host{display:inline-block;font:var(--chargeonce-font, 600 1rem/1.4 system-ui, sans-serif)}
:host([hidden]){display:none}
.co-button{display:inline-flex;align-items:center;gap:.5em;padding:var(--chargeonce-padding, .75em 1.5em);border:0;border-radius:var(--chargeonce-radius, .5em);background:var(--chargeonce-accent, #1f6feb);color:var(--chargeonce-on-accent, #fff);font:inherit;cursor:pointer}
.co-button:focus-visible{outline:3px solid var(--chargeonce-focus, #f5a623);outline-offset:2px}
.co-button:disabled{cursor:default;opacity:.7}
.co-spinner{display:none;width:1em;height:1em;border:2px solid currentColor;border-right-color:transparent;border-radius:50%;animation:co-spin .8s linear infinite}
.co-button[aria-busy=true] .co-spinner{display:inline-block}
@keyframes co-spin{to{transform:rotate(360deg)}}
@media(prefers-reduced-motion:reduce){.co-spinner{animation:none;border-right-color:currentColor;opacity:.6}}
.co-status{margin:.5em 0 0;min-height:1.4em;font-weight:400;color:var(--chargeonce-text, inherit)}
.co-status.co-alert{color:var(--chargeonce-alert, #b42318)}
"#;

/// Styles the widget's shadow root with a constructed stylesheet rather
/// than a `<style>` element: a page's Content-Security-Policy governs inline
/// `<style>` (`style-src`, or `default-src` without it), not constructed
/// sheets, so a storefront's strict policy needs nothing for the widget
/// beyond `script-src` and `connect-src` (README, "Embedding from another
/// origin"). A browser without constructed sheets (Safari before 16.4)
/// cannot mount the widget: `mount` returns the constructor's error. A
/// `<style>` fallback for them would cost about 110 bytes of the bundle's
/// brotli budget, which had none to spare.
pub fn style(shadow: &ShadowRoot) -> Result<(), JsValue> {
    let sheet = CssStyleSheet::new()?;
    sheet.replace_sync(STYLE)?;
    shadow.set_adopted_style_sheets(&js_sys::Array::of1(&sheet));
    Ok(())
}

/// The widget's view: a native `<button>` and an `aria-live` status line.
#[component]
pub fn PlaceOrder(
    /// The widget the button drives.
    widget: Rc<Widget>,
) -> impl IntoView {
    // Each closure reads its own handle on the widget's signal.
    let state = widget.view();
    let (disabled, busy, label, alert, status) = (
        state.clone(),
        state.clone(),
        state.clone(),
        state.clone(),
        state,
    );
    view! {
        <button
            type="button"
            class="co-button"
            part="button"
            prop:disabled=move || disabled.with(|s| s.busy || s.placed)
            aria-busy=move || if busy.with(|s| s.busy) { "true" } else { "false" }
            on:click=move |_| widget.click()
        >
            // Shown by the stylesheet while the button is aria-busy: one
            // reactive attribute instead of a <Show> and its two branches.
            <span class="co-spinner" aria-hidden="true"></span>
            <span>{move || label.with(|s| s.label.clone())}</span>
        </button>
        <p
            class="co-status"
            class:co-alert=move || alert.with(|s| s.alert)
            role="status"
            aria-live="polite"
        >
            {move || status.with(|s| s.status.clone())}
        </p>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chargeonce_protocol::{EdgeResponse, ProblemType};

    const FP: &str = "fp-1";

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    /// A click on a fresh page: the first send is on its way.
    fn sending() -> Attempt {
        Attempt::submit(None, FP, 0, true, || "key-1".into()).0
    }

    fn answered(status: u16, body: &str) -> Attempt {
        answered_with(EdgeResponse::new(status, body))
    }

    fn answered_with(response: EdgeResponse<'_>) -> Attempt {
        let mut a = sending();
        let _ = a.handle_response(&response, 1, 0.0, &policy());
        a
    }

    /// A reload of an attempt that was in flight: its key is being looked up.
    fn checking() -> Attempt {
        let mut a = sending();
        let _ = a.resume(5, true);
        a
    }

    fn looked_up(response: EdgeResponse<'_>, same_payload: bool) -> Attempt {
        let mut a = checking();
        let _ = a.handle_status(&response, 6, 0.0, &policy(), same_payload);
        a
    }

    fn shown(attempt: &Attempt) -> ViewState {
        view_state(Some(attempt), true, None, &policy())
    }

    fn status(attempt: &Attempt) -> String {
        shown(attempt).status
    }

    #[test]
    fn no_attempt_shows_an_idle_button() {
        assert_eq!(
            view_state(None, false, None, &policy()),
            ViewState::default()
        );
    }

    #[test]
    fn the_first_send_is_placing_the_order_and_busy() {
        assert_eq!(
            shown(&sending()),
            ViewState {
                label: String::new(),
                status: PLACING.into(),
                busy: true,
                placed: false,
                alert: false
            }
        );
    }

    #[test]
    fn a_retry_says_why_and_counts_against_the_budget() {
        let mut a = answered(503, "{}");
        assert_eq!(
            status(&a),
            "The payment service is busy, retrying (1 of 5)…"
        );
        let until = a.poll_timeout().unwrap();
        let _ = a.handle_timeout(until, true);
        assert_eq!(
            view_state(Some(&a), true, Some(RetryReason::ConnectionLost), &policy()).status,
            "Connection lost, retrying (1 of 5)…"
        );
    }

    #[test]
    fn authentication_asks_the_customer_to_confirm_and_a_failed_one_says_nothing_was_charged() {
        let action = answered_with(EdgeResponse {
            payment_status: Some("requires_action"),
            ..EdgeResponse::new(200, r#"{"id":"pi_1","status":"requires_action"}"#)
        });
        assert_eq!(
            shown(&action),
            ViewState {
                label: String::new(),
                status: CONFIRM_WITH_BANK.into(),
                busy: true,
                placed: false,
                alert: false
            }
        );
        let failed = answered_with(EdgeResponse {
            payment_status: Some("requires_payment_method"),
            message: Some("We are unable to authenticate your payment method."),
            ..EdgeResponse::new(200, "{}")
        });
        assert_eq!(
            (status(&failed).as_str(), shown(&failed).alert),
            (
                "The payment did not go through. We are unable to authenticate your payment method. You were not charged.",
                true
            )
        );
    }

    #[test]
    fn waiting_out_another_requests_lease_is_still_placing_the_order() {
        let a = answered_with(EdgeResponse {
            retry_after_secs: Some(3),
            ..EdgeResponse::new(409, "{}")
        });
        assert!(matches!(a.phase(), Phase::Backoff { .. }));
        assert_eq!((shown(&a).status.as_str(), shown(&a).busy), (PLACING, true));
    }

    #[test]
    fn offline_says_what_happens_when_the_network_is_back() {
        let (order, _) = Attempt::submit(None, FP, 0, false, || "key-1".into());
        assert!(status(&order).contains("Your order will be placed"));
        let mut lookup = sending();
        let _ = lookup.resume(5, false);
        assert!(status(&lookup).contains("Your earlier order will be checked"));
        assert!(shown(&lookup).busy);
    }

    #[test]
    fn a_status_lookup_and_its_waits_are_checking_the_earlier_order() {
        assert_eq!(
            (status(&checking()).as_str(), shown(&checking()).busy),
            (CHECKING, true)
        );
        let pending = looked_up(
            EdgeResponse {
                retry_after_secs: Some(1),
                ..EdgeResponse::new(202, "{}")
            },
            true,
        );
        assert!(matches!(pending.phase(), Phase::Backoff { .. }));
        assert_eq!(status(&pending), CHECKING);
    }

    #[test]
    fn an_expired_token_is_refreshing_the_session() {
        let a = answered_with(EdgeResponse {
            problem: Some(ProblemType::OrderTokenExpired),
            ..EdgeResponse::new(403, "{}")
        });
        assert_eq!((status(&a).as_str(), shown(&a).busy), (REFRESHING, true));
    }

    #[test]
    fn a_placed_order_disables_the_button() {
        assert_eq!(
            shown(&answered(200, "{}")),
            ViewState {
                label: String::new(),
                status: PLACED.into(),
                busy: false,
                placed: true,
                alert: false
            }
        );
    }

    #[test]
    fn refusals_are_alerts_and_leave_the_button_enabled() {
        let declined = answered(402, "{}");
        let refused = answered_with(EdgeResponse {
            message: Some("the amount is wrong"),
            ..EdgeResponse::new(422, "{}")
        });
        let not_charged = looked_up(
            EdgeResponse {
                replayed: true,
                ..EdgeResponse::new(410, "{}")
            },
            true,
        );
        for (attempt, line) in [
            (&declined, "Card declined"),
            (&refused, "Order not accepted: the amount is wrong"),
            (&not_charged, NOT_CHARGED),
        ] {
            assert_eq!(
                shown(attempt),
                ViewState {
                    label: String::new(),
                    status: line.into(),
                    busy: false,
                    placed: false,
                    alert: true
                }
            );
        }
    }

    #[test]
    fn another_device_placing_the_order_is_named_never_a_generic_error() {
        use chargeonce_protocol::ProblemType;
        let in_progress = |retry_after_secs| EdgeResponse {
            problem: Some(ProblemType::OrderInProgress),
            retry_after_secs: Some(retry_after_secs),
            ..EdgeResponse::new(409, "{}")
        };
        // Waiting on it, busy; past the time budget, said so, and a click
        // asks again.
        let mut waiting = answered_with(in_progress(2));
        let view = shown(&waiting);
        assert_eq!(
            (view.status.as_str(), view.busy, view.alert),
            (OTHER_DEVICE, true, false)
        );
        // Asking again, it still says so rather than "Placing order…".
        let _ = waiting.handle_timeout(2_001, true);
        assert_eq!(waiting.phase(), &Phase::Sending);
        assert_eq!(
            view_state(
                Some(&waiting),
                true,
                Some(RetryReason::OtherDevice),
                &policy()
            )
            .status,
            OTHER_DEVICE
        );
        let gave_up = answered_with(in_progress(61));
        let view = shown(&gave_up);
        assert_eq!(
            (view.status.as_str(), view.busy, view.alert),
            (OTHER_DEVICE, false, true)
        );
        // Paid there: this page's order is placed, and says by whom.
        let paid = answered_with(EdgeResponse {
            replayed: true,
            original_key: Some("phone-key-0001"),
            payment_status: Some("succeeded"),
            ..EdgeResponse::new(200, r#"{"id":"pi_1","status":"succeeded"}"#)
        });
        assert_eq!(
            shown(&paid),
            ViewState {
                label: String::new(),
                status: ALREADY_PLACED.into(),
                busy: false,
                placed: true,
                alert: false
            }
        );
        // Paid there for another total: nothing charged here.
        let other_total = answered_with(EdgeResponse {
            problem: Some(ProblemType::OrderAlreadyPaid),
            message: Some("already paid under another key"),
            ..EdgeResponse::new(409, "{}")
        });
        let view = shown(&other_total);
        assert_eq!(
            (view.status.as_str(), view.placed, view.alert),
            (ALREADY_PLACED_NOT_CHARGED, false, true)
        );
        // Declined as often as the store allows: contact the store.
        let exhausted = answered_with(EdgeResponse {
            problem: Some(ProblemType::OrderAttemptsExhausted),
            message: Some("refused 5 times"),
            ..EdgeResponse::new(429, "{}")
        });
        let view = shown(&exhausted);
        assert_eq!(
            (view.status.as_str(), view.placed, view.alert),
            (ATTEMPTS_EXHAUSTED, false, true)
        );
        // A page on an origin the edge takes no orders from: the store's
        // setup is at fault, in words for the customer.
        let foreign = answered_with(EdgeResponse {
            problem: Some(ProblemType::OriginNotAllowed),
            message: Some("orders from https://evil.example are not accepted"),
            ..EdgeResponse::new(403, "{}")
        });
        let view = shown(&foreign);
        assert_eq!(
            (view.status.as_str(), view.placed, view.alert),
            (
                "Order not accepted: This store is not set up to take orders here.",
                false,
                true
            )
        );
    }

    #[test]
    fn unknown_outcomes_and_other_tabs_are_alerts() {
        let mut other_tab = sending();
        let _ = other_tab.handle_held_elsewhere();
        for (attempt, line) in [(answered(500, "{}"), UNCONFIRMED), (other_tab, OTHER_TAB)] {
            let view = shown(&attempt);
            assert_eq!(
                (view.status.as_str(), view.alert, view.busy),
                (line, true, false)
            );
        }
    }

    #[test]
    fn an_earlier_order_placed_is_news_not_an_alert_and_the_button_is_for_the_new_one() {
        let placed = looked_up(
            EdgeResponse {
                replayed: true,
                ..EdgeResponse::new(200, "{}")
            },
            false,
        );
        assert_eq!(
            view_state(Some(&placed), false, None, &policy()),
            ViewState {
                label: String::new(),
                status: EARLIER_PLACED.into(),
                busy: false,
                placed: false,
                alert: false
            }
        );
    }

    #[test]
    fn an_earlier_order_not_charged_says_so_whatever_ended_it() {
        let not_found = looked_up(EdgeResponse::new(404, "{}"), false);
        let declined = looked_up(
            EdgeResponse {
                replayed: true,
                ..EdgeResponse::new(402, "{}")
            },
            false,
        );
        let not_charged = looked_up(
            EdgeResponse {
                replayed: true,
                ..EdgeResponse::new(410, "{}")
            },
            false,
        );
        for attempt in [not_found, declined, not_charged] {
            assert_eq!(
                view_state(Some(&attempt), false, None, &policy()),
                ViewState {
                    label: String::new(),
                    status: EARLIER_NOT_CHARGED.into(),
                    busy: false,
                    placed: false,
                    alert: false
                },
                "{:?}",
                attempt.phase()
            );
        }
    }
}
