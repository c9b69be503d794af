//! One mounted widget: it turns clicks, reloads and answers into the
//! protocol's [`Attempt`] inputs and carries out what the attempt asks for
//! (send, look up, wait, wait for the network, ask the page for a token,
//! ask the page to show the bank's challenge), keeping the attempt saved and
//! the view and events up to date.
//!
//! One driver task runs per attempt run; a click while it runs is refused by
//! the attempt itself, which is what makes a double click send one request.
//!
//! A widget lives until the page destroys it ([`Widget::destroy`]), which
//! stops its driver and takes its view, listeners and observer away; the
//! attempt stays saved, so the next widget mounted for the order resumes it.

use crate::events;
use crate::options::{self, Checkout, Hooks};
use crate::storage;
use crate::transport::{HttpAnswer, OrderPost, Ports, StatusLookup};
use crate::view::{self, ViewState, OTHER_DEVICE, OTHER_TAB, UNCONFIRMED};
use chargeonce_protocol::{
    Attempt, EdgeResponse, Exchange, Next, Phase, ProblemType, RetryPolicy, RetryReason,
    PROBLEM_CONTENT_TYPE,
};
use futures_channel::oneshot;
use futures_util::future::{select, Either};
use gloo_timers::future::TimeoutFuture;
use leptos::prelude::*;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{HtmlElement, MutationObserver, MutationObserverInit};

/// How long the page has to supply a fresh order token. A checkout session
/// the shop cannot renew within this is not coming back; the attempt is
/// then left unconfirmed, with its key kept for the next click.
pub const TOKEN_WAIT_MS: u32 = 10_000;

/// A mounted widget's state and ports.
pub struct Widget {
    host: HtmlElement,
    ports: Ports,
    /// The page's functions, if it gave any.
    hooks: RefCell<Hooks>,
    attempt: RefCell<Option<Attempt>>,
    /// Why the last retry was needed, for the status line of the next send.
    last_reason: RefCell<Option<RetryReason>>,
    /// The status of the last answer (`None` for no answer), for the retry event.
    last_status: Cell<Option<u16>>,
    /// A token refresh waiting for the page to set a new `data-order-token`.
    token_wait: RefCell<Option<TokenWait>>,
    view: ArcRwSignal<ViewState>,
    /// Dropping it stops the running driver, if any.
    stop_driver: RefCell<Option<oneshot::Sender<()>>>,
    observer: RefCell<Option<Observer>>,
    /// The mounted view; dropping it removes the button and status line.
    mounted: RefCell<Option<Box<dyn Any>>>,
    destroyed: Cell<bool>,
}

/// The observer of the host's attributes, and the callback it calls (which
/// must live as long as it observes).
type Observer = (MutationObserver, Closure<dyn FnMut()>);

/// A refresh waiting on the page: the token the edge refused, and the
/// `resolve` of the promise the driver awaits.
struct TokenWait {
    refused: Option<String>,
    resolve: js_sys::Function,
}

fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

impl Widget {
    /// A widget for `host`, with the attempt saved for its order (if any)
    /// and the page's `hooks`.
    pub fn new(host: HtmlElement, ports: Ports, hooks: Hooks) -> Rc<Self> {
        let attempt = options::order_ref(&host).and_then(|r| storage::load_attempt(&r));
        let widget = Rc::new(Self {
            host,
            ports,
            hooks: RefCell::new(hooks),
            attempt: RefCell::new(attempt),
            last_reason: RefCell::new(None),
            last_status: Cell::new(None),
            token_wait: RefCell::new(None),
            // A reference-counted signal, not an arena one: it goes with
            // the widget, so a page that mounts and destroys widgets for as
            // long as it lives does not accumulate them.
            view: ArcRwSignal::new(ViewState::default()),
            stop_driver: RefCell::new(None),
            observer: RefCell::new(None),
            mounted: RefCell::new(None),
            destroyed: Cell::new(false),
        });
        widget.render();
        widget.watch_attributes();
        widget
    }

    /// The signal the view reads.
    pub fn view(&self) -> ArcRwSignal<ViewState> {
        self.view.clone()
    }

    /// Keeps the mounted view until [`Widget::destroy`]. The view holds the
    /// widget too, so the two live together until then, whether or not the
    /// page kept the handle `mount()` gave it.
    pub fn hold_view(&self, mounted: Box<dyn Any>) {
        *self.mounted.borrow_mut() = Some(mounted);
    }

    /// Applies `update()`'s options (see [`options::apply`]) and shows them.
    ///
    /// # Errors
    ///
    /// As [`options::apply`], or an `Error` if the widget was destroyed.
    pub fn update(&self, options: &js_sys::Object) -> Result<(), JsValue> {
        if self.destroyed.get() {
            return Err(js_sys::Error::new(
                "ChargeOnce: this widget was destroyed; mount a new one",
            )
            .into());
        }
        options::apply(&self.host, options, &mut self.hooks.borrow_mut())?;
        self.render();
        Ok(())
    }

    /// Takes the widget off the page: stops its driver (which aborts a
    /// request in flight, cancels its timers and releases its Web Lock),
    /// disconnects its attribute observer and removes its view, listeners
    /// and stylesheet from the shadow root (which stays, empty, for a later
    /// `mount()` on the element: a shadow root cannot be removed). An
    /// attempt in flight stays saved with its key; the next widget mounted
    /// for the order looks it up first, as after a reload. Calling it again
    /// does nothing.
    pub fn destroy(&self) {
        if self.destroyed.replace(true) {
            return;
        }
        self.stop_driver.take();
        if let Some((observer, _callback)) = self.observer.take() {
            observer.disconnect();
        }
        self.token_wait.take();
        // Dropped outside the borrow: unmounting drops the view's closures,
        // which hold this widget.
        let mounted = self.mounted.take();
        drop(mounted);
        if let Some(shadow) = self.host.shadow_root() {
            shadow.set_adopted_style_sheets(&js_sys::Array::new());
        }
    }

    /// Picks up an attempt a reload interrupted, with its key: the edge's
    /// status lookup settles it first, whatever the page shows now.
    pub fn resume(self: &Rc<Self>) {
        let Ok(checkout) = options::checkout(&self.host) else {
            return;
        };
        let online = self.ports.network.is_online();
        let next = match self.attempt.borrow_mut().as_mut() {
            Some(attempt) => attempt.resume(now_ms(), online),
            None => return,
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
                    label: options::label(&self.host),
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
        let (attempt, next) = Attempt::submit(
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
        if matches!(next, Next::Ignore(_)) {
            return;
        }
        // Only an attempt for this payload is shared: one still settling an
        // earlier payload must not hand its key to a tab with the new one.
        if attempt.fingerprint() == fingerprint {
            storage::share_key(&order_ref, &fingerprint, attempt.key());
        }
        *self.attempt.borrow_mut() = Some(attempt);
        *self.last_reason.borrow_mut() = None;
        self.spawn(checkout, next);
    }

    fn spawn(self: &Rc<Self>, checkout: Checkout, next: Next) {
        let widget = Rc::clone(self);
        self.save_and_render();
        let (stop, stopped) = oneshot::channel::<()>();
        // One driver runs at a time (the attempt refuses a click while one
        // does), so this is the one `destroy` must stop, by dropping `stop`.
        *self.stop_driver.borrow_mut() = Some(stop);
        leptos::task::spawn_local(async move {
            // Stopping drops the driver's future where it awaits, and with
            // it its request (aborted), timer (cleared) and Web Lock.
            select(Box::pin(widget.drive(checkout, next)), stopped).await;
        });
    }

    /// Carries out the attempt's requests until it stops. `checkout` is the
    /// page's order; it is what a send carries once its fingerprint is the
    /// attempt's.
    async fn drive(self: Rc<Self>, mut checkout: Checkout, mut next: Next) {
        let policy = options::retry_policy(&self.host);
        // Held for the whole run, so a second tab's click on the same order
        // waits for this one's answer instead of racing it.
        let lock_name = format!("chargeonce:{}", checkout.order.order_ref);
        let Some(_lock) = self.ports.locks.try_lock(&lock_name).await else {
            let _ = self.step(Attempt::handle_held_elsewhere);
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
                Next::Send { key } | Next::FetchStatus { key } => {
                    self.exchange(key, &mut checkout, &policy).await
                }
                Next::NeedToken => self.refresh_token(&mut checkout).await,
                Next::HandleAction => self.handle_action().await,
                Next::Wait => self.wait(&policy).await,
                Next::WaitForOnline => {
                    self.ports.network.wait_online().await;
                    self.step(|a| a.handle_online(now_ms()))
                }
                Next::Stop | Next::Ignore(_) => {
                    self.finish();
                    return;
                }
            };
            self.save_and_render();
        }
    }

    /// Sends the order or the status lookup, whichever the attempt has in
    /// flight, and hands the answer to the attempt.
    async fn exchange(&self, key: String, checkout: &mut Checkout, policy: &RetryPolicy) -> Next {
        let (attempt_no, exchange) =
            self.attempt
                .borrow()
                .as_ref()
                .map_or((0, Exchange::Order), |a| match a.phase() {
                    Phase::Checking => (a.sends(), Exchange::Status),
                    _ => (a.sends(), Exchange::Order),
                });
        let method = match exchange {
            Exchange::Order => "POST",
            Exchange::Status => "GET",
        };
        events::dispatch(
            &self.host,
            events::ATTEMPT,
            &events::detail(&[
                ("key", key.as_str().into()),
                ("attempt", attempt_no.into()),
                ("method", method.into()),
            ]),
        );
        let endpoint = checkout.endpoint.clone();
        let timeout_ms = policy.request_timeout_ms;
        let request = match exchange {
            Exchange::Order => self.ports.transport.send(OrderPost {
                endpoint,
                key,
                body: checkout.body.clone(),
                timeout_ms,
            }),
            Exchange::Status => self.ports.transport.status(StatusLookup {
                endpoint,
                key,
                // Any unexpired token of the customer will do; the page's
                // latest is the likeliest to be.
                order_token: options::order_token(&self.host),
                timeout_ms,
            }),
        };
        let result = request.await;
        let (now, jitter, online) = (
            now_ms(),
            js_sys::Math::random(),
            self.ports.network.is_online(),
        );
        self.last_status
            .set(result.as_ref().ok().map(|http| http.status));
        let Ok(http) = result else {
            return self.step(|a| a.handle_transport_failure(now, online, jitter, policy));
        };
        let read = read_body(&http);
        let response = EdgeResponse {
            status: http.status,
            body: &http.body,
            message: read.message.as_deref(),
            problem: read.problem,
            replayed: http.replayed,
            retry_after_secs: http.retry_after_secs,
            payment_status: read.payment_status.as_deref(),
            original_key: http.original_key.as_deref(),
        };
        if exchange == Exchange::Order {
            return self.step(|a| a.handle_response(&response, now, jitter, policy));
        }
        // Whether the page still shows the attempt's payload decides what a
        // key with nothing recorded means: send it now, or it charged nothing.
        let shown = options::checkout(&self.host).ok().filter(|shown| {
            self.attempt
                .borrow()
                .as_ref()
                .is_some_and(|a| a.fingerprint() == shown.fingerprint.as_str())
        });
        let next = self.step(|a| a.handle_status(&response, now, jitter, policy, shown.is_some()));
        if let (Next::Send { .. }, Some(shown)) = (&next, shown) {
            *checkout = shown;
        }
        next
    }

    /// Asks the page for a fresh order token (its `getOrderToken`, or the
    /// token-needed event and a new `data-order-token`), for at most
    /// [`TOKEN_WAIT_MS`], and resends with it under the same key.
    async fn refresh_token(&self, checkout: &mut Checkout) -> Next {
        let Some(key) = self.attempt.borrow().as_ref().map(|a| a.key().to_owned()) else {
            return Next::Stop;
        };
        let detail = events::detail(&[
            ("key", key.into()),
            ("orderRef", checkout.order.order_ref.as_str().into()),
        ]);
        let refused = match self.attempt.borrow().as_ref().map(Attempt::phase) {
            // A status lookup sends the page's token, an order its own.
            Some(Phase::NeedsToken {
                then: Exchange::Status,
            }) => options::order_token(&self.host),
            _ => checkout.order.order_token.clone(),
        };
        let get_order_token = self.hooks.borrow().get_order_token.clone();
        let asked = match get_order_token {
            Some(get) => get
                .call1(&JsValue::UNDEFINED, &detail)
                .map(|token| js_sys::Promise::resolve(&token)),
            None => {
                let promise = js_sys::Promise::new(&mut |resolve, _| {
                    *self.token_wait.borrow_mut() = Some(TokenWait {
                        refused: refused.clone(),
                        resolve,
                    });
                });
                // The page may have renewed the token while the refused
                // request was on its way; then there is nothing to ask for.
                self.token_changed();
                if self.token_wait.borrow().is_some() {
                    events::dispatch(&self.host, events::TOKEN_NEEDED, &detail);
                }
                Ok(promise)
            }
        };
        // One wait for both ways, so a page that never answers costs the
        // same bounded time.
        let token = match asked {
            Ok(promise) => {
                let deadline = TimeoutFuture::new(TOKEN_WAIT_MS);
                match select(JsFuture::from(promise), deadline).await {
                    Either::Left((Ok(token), _)) => token.as_string(),
                    _ => None,
                }
            }
            Err(_) => None,
        }
        // The same token again would be refused again, forever.
        .filter(|token| Some(token) != refused.as_ref());
        *self.token_wait.borrow_mut() = None;
        let Some(token) = token else {
            return self.step(Attempt::handle_no_token);
        };
        if options::order_token(&self.host).as_ref() != Some(&token) {
            // The attribute is where the status lookup and a later click
            // read the token.
            let _ = self.host.set_attribute("data-order-token", &token);
        }
        *checkout = checkout.with_order_token(token);
        let online = self.ports.network.is_online();
        self.step(|a| a.handle_token(online))
    }

    /// Tells the page the payment needs the customer's authentication (the
    /// action event) and awaits its `handleAction`, then sends the order
    /// again with the same key: however the handler ended, the edge says how
    /// the payment stands. Without a handler, the attempt is refused and
    /// says what is missing.
    async fn handle_action(&self) -> Next {
        let Some((key, body)) = self
            .attempt
            .borrow()
            .as_ref()
            .and_then(|a| match a.phase() {
                Phase::ActionRequired { body } => Some((a.key().to_owned(), body.clone())),
                _ => None,
            })
        else {
            return Next::Stop;
        };
        let intent = events::parsed(&body);
        let member = |name: &str| {
            js_sys::Reflect::get(&intent, &JsValue::from_str(name)).unwrap_or(JsValue::NULL)
        };
        let client_secret = member("client_secret");
        events::dispatch(
            &self.host,
            events::ACTION,
            &events::detail(&[
                ("key", key.into()),
                ("payment_intent", member("id")),
                ("client_secret", client_secret.clone()),
                ("next_action", member("next_action")),
            ]),
        );
        let Some(handler) = self.hooks.borrow().handle_action.clone() else {
            return self.step(Attempt::handle_no_action_handler);
        };
        if let Ok(settles) = handler.call1(&JsValue::UNDEFINED, &client_secret) {
            // A rejection is an answer too: the customer gave up, or the
            // challenge failed; the edge knows which.
            let _ = JsFuture::from(js_sys::Promise::resolve(&settles)).await;
        }
        let online = self.ports.network.is_online();
        self.step(|a| a.handle_action_done(now_ms(), online))
    }

    /// Hands a new `data-order-token` to a refresh waiting for one.
    fn token_changed(&self) {
        let token = options::order_token(&self.host);
        let mut slot = self.token_wait.borrow_mut();
        if let (Some(wait), Some(token)) = (slot.as_ref(), token) {
            if wait.refused.as_ref() != Some(&token) {
                let _ = wait.resolve.call1(&JsValue::UNDEFINED, &token.into());
                *slot = None;
            }
        }
    }

    async fn wait(&self, policy: &RetryPolicy) -> Next {
        let Some((due, key, retry, reason)) = self.attempt.borrow().as_ref().map(|a| {
            let reason = match a.phase() {
                Phase::Backoff { reason, .. } => Some(*reason),
                _ => None,
            };
            (a.poll_timeout(), a.key().to_owned(), a.sends(), reason)
        }) else {
            return Next::Stop;
        };
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
        self.step(|a| a.handle_timeout(now_ms(), online))
    }

    fn finish(&self) {
        let Some(attempt) = self.attempt.borrow().clone() else {
            return;
        };
        let key = attempt.key();
        let detail = match attempt.phase() {
            Phase::Placed {
                body,
                replayed,
                original_key,
            } => events::detail(&[
                ("key", key.into()),
                ("replayed", (*replayed).into()),
                ("originalKey", original_key.as_deref().into()),
                ("response", events::parsed(body)),
            ]),
            Phase::Refused { status, message } => events::detail(&[
                ("key", key.into()),
                ("final", true.into()),
                ("status", (*status).into()),
                ("message", message.as_str().into()),
            ]),
            Phase::Unconfirmed | Phase::OtherTab | Phase::OtherDevice => events::detail(&[
                ("key", key.into()),
                ("final", false.into()),
                ("status", JsValue::NULL),
                (
                    "message",
                    match attempt.phase() {
                        Phase::OtherTab => OTHER_TAB,
                        Phase::OtherDevice => OTHER_DEVICE,
                        _ => UNCONFIRMED,
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

    /// Feeds one input to the attempt. The driver runs only for an attempt,
    /// so there is always one; were there not, stopping is the safe answer.
    fn step(&self, input: impl FnOnce(&mut Attempt) -> Next) -> Next {
        self.attempt.borrow_mut().as_mut().map_or(Next::Stop, input)
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
        // A final attempt for a payload the page no longer shows is an
        // earlier order: the button is for the page's order now.
        let same_payload = attempt.as_ref().is_some_and(|a| {
            options::checkout(&self.host).is_ok_and(|c| c.fingerprint.as_str() == a.fingerprint())
        });
        let reason = *self.last_reason.borrow();
        self.view.set(ViewState {
            label: options::label(&self.host),
            ..view::view_state(
                attempt.as_ref(),
                same_payload,
                reason,
                &options::retry_policy(&self.host),
            )
        });
    }

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

    /// Re-renders whenever the page changes the host's attributes (the
    /// cart's amount, say), until the widget is destroyed, and hands a
    /// new order token to a refresh waiting for one.
    fn watch_attributes(self: &Rc<Self>) {
        let widget = Rc::downgrade(self);
        let on_change = Closure::<dyn FnMut()>::new(move || {
            if let Some(widget) = widget.upgrade() {
                widget.token_changed();
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
            *self.observer.borrow_mut() = Some((observer, on_change));
        }
    }
}

/// What the shell reads from an answer's body.
#[derive(Default)]
struct Read {
    /// The server's words for the customer: a problem+json `detail`, the
    /// `error.message` of a Stripe-style error, or a refused intent's
    /// `last_payment_error.message`.
    message: Option<String>,
    /// For problem+json, its `type`.
    problem: Option<ProblemType>,
    /// A PaymentIntent's `status`.
    payment_status: Option<String>,
}

/// Reads an answer's body with the browser's JSON parser, which costs the
/// bundle nothing.
fn read_body(http: &HttpAnswer) -> Read {
    let Ok(value) = js_sys::JSON::parse(&http.body) else {
        return Read::default();
    };
    let get =
        |target: &JsValue, name: &str| js_sys::Reflect::get(target, &JsValue::from_str(name)).ok();
    let message = get(&value, "detail")
        .and_then(|d| d.as_string())
        .or_else(|| get(&get(&value, "error")?, "message")?.as_string())
        .or_else(|| get(&get(&value, "last_payment_error")?, "message")?.as_string());
    // A backend's own body may have a `type` of its own; only problem+json's
    // names one of ours.
    let is_problem = http
        .content_type
        .as_deref()
        .is_some_and(|t| t.trim_start().starts_with(PROBLEM_CONTENT_TYPE));
    let problem = is_problem
        .then(|| get(&value, "type")?.as_string())
        .flatten()
        .and_then(|uri| ProblemType::from_uri(&uri));
    Read {
        message,
        problem,
        // A problem's `status` is a number, so this is an intent's or none.
        payment_status: get(&value, "status").and_then(|s| s.as_string()),
    }
}
