//! One mounted widget: it turns clicks into the protocol's [`Attempt`]
//! inputs and carries out what the attempt asks for (send, wait, wait for the
//! network), keeping the attempt saved and the view and events up to date.
//!
//! One driver task runs per attempt run; a click while it runs is refused by
//! the attempt itself, which is what makes a double click send one request.

use crate::events;
use crate::options::{self, Checkout};
use crate::storage;
use crate::transport::{NoAnswer, OrderPost, Ports};
use chargeonce_protocol::{Answer, Attempt, Next, Phase, RetryPolicy, RetryReason, Submit};
use gloo_timers::future::TimeoutFuture;
use leptos::prelude::*;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use web_sys::{HtmlElement, MutationObserver, MutationObserverInit};

/// What the view shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewState {
    /// The status line.
    pub status: String,
    /// A request is in flight or scheduled: the button is disabled and busy.
    pub busy: bool,
    /// The order was placed: the button stays disabled.
    pub placed: bool,
    /// The status is a problem the customer should notice.
    pub alert: bool,
}

/// A mounted widget's state and ports.
pub struct Widget {
    host: HtmlElement,
    ports: Ports,
    attempt: RefCell<Option<Attempt>>,
    /// Why the last retry was needed, for the status line of the next send.
    last_reason: RefCell<Option<RetryReason>>,
    /// The status of the last answer (`None` for no answer), for the retry event.
    last_status: Cell<Option<u16>>,
    view: RwSignal<ViewState>,
}

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

impl Widget {
    /// A widget for `host`, with the attempt saved for its order (if any).
    pub fn new(host: HtmlElement, ports: Ports) -> Rc<Self> {
        let attempt = options::order_ref(&host).and_then(|r| storage::load_attempt(&r));
        let widget = Rc::new(Self {
            host,
            ports,
            attempt: RefCell::new(attempt),
            last_reason: RefCell::new(None),
            last_status: Cell::new(None),
            view: RwSignal::new(ViewState::default()),
        });
        widget.render();
        widget.watch_attributes();
        widget
    }

    /// The signal the view reads.
    pub fn view(&self) -> RwSignal<ViewState> {
        self.view
    }

    /// Picks up an attempt a reload interrupted, with its key.
    pub fn resume(self: &Rc<Self>) {
        let Ok(checkout) = options::checkout(&self.host) else {
            return;
        };
        let next = {
            let mut slot = self.attempt.borrow_mut();
            match slot.as_mut() {
                // Only the same payload may reuse the saved key.
                Some(a) if a.fingerprint() == checkout.fingerprint.as_str() => {
                    a.resume(now_ms(), self.ports.network.is_online())
                }
                _ => return,
            }
        };
        if next != Next::Stop {
            self.spawn(checkout, next);
        }
    }

    /// Handles a click (or Enter, or a programmatic click) on the button.
    pub fn click(self: &Rc<Self>) {
        let checkout = match options::checkout(&self.host) {
            Ok(checkout) => checkout,
            Err(problem) => {
                self.view.set(ViewState {
                    status: format!("This button is misconfigured: {problem}"),
                    alert: true,
                    ..ViewState::default()
                });
                return;
            }
        };
        let order_ref = checkout.order.order_ref.clone();
        let fingerprint = checkout.fingerprint.as_str().to_owned();
        let current = self.attempt.borrow().clone();
        let previous_key = current.as_ref().map(|a| a.key().to_owned());
        let (attempt, action) = Attempt::submit(
            current,
            &fingerprint,
            now_ms(),
            self.ports.network.is_online(),
            || {
                // Another tab may already hold a key for this exact payload;
                // sharing it lets the edge answer both tabs with one charge.
                // Never reuse the key being rotated away from.
                storage::shared_key(&order_ref, &fingerprint)
                    .filter(|k| Some(k) != previous_key.as_ref())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
            },
        );
        storage::share_key(&order_ref, &fingerprint, attempt.key());
        *self.attempt.borrow_mut() = Some(attempt);
        *self.last_reason.borrow_mut() = None;
        let next = match action {
            Submit::Send { key } => Next::Send { key },
            Submit::WaitForOnline => Next::WaitForOnline,
            Submit::Ignore(_) => return,
        };
        self.spawn(checkout, next);
    }

    fn spawn(self: &Rc<Self>, checkout: Checkout, next: Next) {
        let widget = Rc::clone(self);
        self.save_and_render();
        leptos::task::spawn_local(async move { widget.drive(checkout, next).await });
    }

    /// Carries out the attempt's requests until it stops.
    async fn drive(self: Rc<Self>, checkout: Checkout, mut next: Next) {
        let policy = options::retry_policy(&self.host);
        // Held for the whole run, so a second tab's click on the same order
        // waits for this one's answer instead of racing it.
        let lock_name = format!("chargeonce:{}", checkout.order.order_ref);
        let Some(_lock) = self.ports.locks.try_lock(&lock_name).await else {
            let _ = self.with_attempt(Attempt::handle_held_elsewhere);
            self.save_and_render();
            self.finish();
            return;
        };
        loop {
            // A widget removed from the page stops; its saved attempt is
            // resumed by whichever widget mounts for the order next.
            if !self.host.is_connected() {
                return;
            }
            next = match next {
                Next::Send { key } => self.send(&checkout, key, &policy).await,
                Next::Wait => self.wait(&policy).await,
                Next::WaitForOnline => {
                    self.ports.network.wait_online().await;
                    self.with_attempt(|a| a.handle_online(now_ms()))
                }
                Next::Stop => {
                    self.finish();
                    return;
                }
            };
            self.save_and_render();
        }
    }

    async fn send(&self, checkout: &Checkout, key: String, policy: &RetryPolicy) -> Next {
        let attempt_no = self.with_attempt(|a| a.sends());
        events::dispatch(
            &self.host,
            events::ATTEMPT,
            &events::detail(&[("key", key.as_str().into()), ("attempt", attempt_no.into())]),
        );
        let post = OrderPost {
            endpoint: checkout.endpoint.clone(),
            key,
            body: checkout.body.clone(),
            timeout_ms: policy.request_timeout_ms,
        };
        let result = self.ports.transport.send(post).await;
        let message = result
            .as_ref()
            .ok()
            .and_then(|http| server_message(&http.body));
        let (now, jitter, online) = (
            now_ms(),
            js_sys::Math::random(),
            self.ports.network.is_online(),
        );
        self.with_attempt(|a| match &result {
            Ok(http) => a.handle_response(
                &Answer {
                    status: http.status,
                    body: &http.body,
                    message: message.as_deref(),
                    replayed: http.replayed,
                    retry_after_secs: http.retry_after_secs,
                },
                now,
                jitter,
                policy,
            ),
            Err(NoAnswer::Network(_) | NoAnswer::Timeout) => {
                a.handle_transport_failure(now, online, jitter, policy)
            }
        })
    }

    async fn wait(&self, policy: &RetryPolicy) -> Next {
        let (due, key, retry, reason) = self.with_attempt(|a| {
            let reason = match a.phase() {
                Phase::Backoff { reason, .. } => Some(*reason),
                _ => None,
            };
            (a.poll_timeout(), a.key().to_owned(), a.sends(), reason)
        });
        let Some(due) = due else {
            return Next::Stop;
        };
        *self.last_reason.borrow_mut() = reason;
        let delay = due.saturating_sub(now_ms());
        events::dispatch(
            &self.host,
            events::RETRY,
            &events::detail(&[
                ("key", key.as_str().into()),
                ("retry", retry.into()),
                ("of", policy.max_retries.into()),
                ("delay_ms", (delay as f64).into()),
                (
                    "reason",
                    reason.map_or(JsValue::NULL, |r| r.as_str().into()),
                ),
                (
                    "status",
                    self.last_status.get().map_or(JsValue::NULL, JsValue::from),
                ),
            ]),
        );
        self.render();
        TimeoutFuture::new(u32::try_from(delay).unwrap_or(u32::MAX)).await;
        let online = self.ports.network.is_online();
        self.with_attempt(|a| a.handle_timeout(now_ms(), online))
    }

    fn finish(&self) {
        let Some(attempt) = self.attempt.borrow().clone() else {
            return;
        };
        let key = attempt.key();
        let detail = match attempt.phase() {
            Phase::Placed { body, replayed } => events::detail(&[
                ("key", key.into()),
                ("replayed", (*replayed).into()),
                ("response", events::parsed(body)),
            ]),
            Phase::Refused { status, message } => events::detail(&[
                ("key", key.into()),
                ("final", true.into()),
                ("status", (*status).into()),
                ("message", message.as_str().into()),
            ]),
            Phase::Unconfirmed | Phase::OtherTab => events::detail(&[
                ("key", key.into()),
                ("final", false.into()),
                ("status", JsValue::NULL),
                (
                    "message",
                    if attempt.phase() == &Phase::OtherTab {
                        OTHER_TAB
                    } else {
                        UNCONFIRMED
                    }
                    .into(),
                ),
            ]),
            _ => return,
        };
        let name = if matches!(attempt.phase(), Phase::Placed { .. }) {
            events::SUCCESS
        } else {
            events::FAILURE
        };
        events::dispatch(&self.host, name, &detail);
    }

    fn with_attempt<T>(&self, f: impl FnOnce(&mut Attempt) -> T) -> T {
        let mut slot = self.attempt.borrow_mut();
        f(slot.as_mut().expect("the driver runs only for an attempt"))
    }

    fn save_and_render(&self) {
        if let (Some(order_ref), Some(attempt)) = (
            options::order_ref(&self.host),
            self.attempt.borrow().as_ref(),
        ) {
            storage::save_attempt(&order_ref, attempt);
        }
        self.render();
    }

    fn render(&self) {
        let attempt = self.attempt.borrow();
        // An order placed for a cart that has since changed: the button is
        // for the next order now.
        let current = attempt.as_ref().filter(|a| {
            !matches!(a.phase(), Phase::Placed { .. })
                || options::checkout(&self.host)
                    .is_ok_and(|c| c.fingerprint.as_str() == a.fingerprint())
        });
        let reason = *self.last_reason.borrow();
        self.view.set(view_state(
            current,
            reason,
            &options::retry_policy(&self.host),
        ));
    }

    /// Re-renders whenever the page changes the host's attributes (the
    /// cart's amount, say), for as long as the element lives.
    /// Loads the attempt saved for the order when the page names the order
    /// only after the widget mounted (a shop that prices the cart on its
    /// server first, say), and resumes it if a reload interrupted it. An
    /// attempt already in hand is never replaced: this page may be running it.
    fn adopt_saved_attempt(self: &Rc<Self>) {
        if self.attempt.borrow().is_some() {
            return;
        }
        let Some(saved) = options::order_ref(&self.host).and_then(|r| storage::load_attempt(&r))
        else {
            return;
        };
        *self.attempt.borrow_mut() = Some(saved);
        self.resume();
    }

    fn watch_attributes(self: &Rc<Self>) {
        let widget = Rc::downgrade(self);
        let on_change = Closure::<dyn FnMut()>::new(move || {
            if let Some(widget) = widget.upgrade() {
                widget.adopt_saved_attempt();
                widget.render();
            }
        });
        let Ok(observer) = MutationObserver::new(on_change.as_ref().unchecked_ref()) else {
            return;
        };
        let init = MutationObserverInit::new();
        init.set_attributes(true);
        if observer.observe_with_options(&self.host, &init).is_ok() {
            // The observer calls it for the element's lifetime.
            on_change.forget();
        }
    }
}

/// The server's words in an error body: a problem+json `detail`, or the
/// `error.message` of a Stripe-style body. Read with the browser's JSON
/// parser, which costs the bundle nothing.
fn server_message(body: &str) -> Option<String> {
    let value = js_sys::JSON::parse(body).ok()?;
    let get =
        |target: &JsValue, name: &str| js_sys::Reflect::get(target, &JsValue::from_str(name)).ok();
    get(&value, "detail")
        .and_then(|d| d.as_string())
        .or_else(|| get(&get(&value, "error")?, "message")?.as_string())
}

/// The status line for an outcome the widget cannot vouch for either way.
pub const UNCONFIRMED: &str =
    "We couldn't confirm your order. You have not been charged twice — try again";

/// The status line when another tab is placing the same order.
pub const OTHER_TAB: &str = "This order is being placed in another tab.";

/// What the customer sees for an attempt.
pub fn view_state(
    attempt: Option<&Attempt>,
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
    let (status, alert) = match attempt.phase() {
        Phase::Sending if attempt.sends() <= 1 => ("Placing order…".to_owned(), false),
        Phase::Sending => (retrying(attempt.sends() - 1, reason), false),
        Phase::Backoff { reason, .. } => (retrying(attempt.sends(), Some(*reason)), false),
        Phase::Offline => (
            "You're offline. Your order will be placed when the connection is back.".to_owned(),
            false,
        ),
        Phase::Placed { .. } => ("Order placed".to_owned(), false),
        Phase::Refused { status: 402, .. } => ("Card declined".to_owned(), true),
        Phase::Refused { message, .. } => (format!("Order not accepted: {message}"), true),
        Phase::Unconfirmed => (UNCONFIRMED.to_owned(), true),
        Phase::OtherTab => (OTHER_TAB.to_owned(), true),
    };
    ViewState {
        status,
        busy: attempt.is_busy(),
        placed: matches!(attempt.phase(), Phase::Placed { .. }),
        alert,
    }
}
