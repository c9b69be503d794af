//! The widget's I/O ports: sending an order or a status lookup, knowing
//! whether the browser is online, and holding an order against other tabs.
//! The real ones use `fetch`, `navigator.onLine` and the Web Locks API; the
//! browser tests script the first two, so every retry path runs in a real
//! page without a server.

use futures_util::future::{select, Either, LocalBoxFuture};
use gloo_timers::future::TimeoutFuture;
use std::rc::Rc;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, Headers, Request, RequestInit, Response};

/// One order request: `POST` to the endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPost {
    /// Where to send it.
    pub endpoint: String,
    /// The `Idempotency-Key`.
    pub key: String,
    /// The JSON body.
    pub body: String,
    /// How long to wait for the answer before giving up on this request.
    pub timeout_ms: u64,
}

/// One status lookup: `GET` on the same endpoint, asking what became of a
/// key. It never charges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLookup {
    /// Where to send it (the endpoint orders are POSTed to).
    pub endpoint: String,
    /// The `Idempotency-Key` asked about.
    pub key: String,
    /// An order token for the customer, sent as `Authorization: Bearer`;
    /// without one the edge answers 401.
    pub order_token: Option<String>,
    /// How long to wait for the answer before giving up on this request.
    pub timeout_ms: u64,
}

/// An HTTP answer, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The status.
    pub status: u16,
    /// The `Content-Type`, which says whether the body is problem+json (and
    /// so whether its `type` member names a problem).
    pub content_type: Option<String>,
    /// The body, as text.
    pub body: String,
    /// Whether `Idempotent-Replayed: true` was sent.
    pub replayed: bool,
    /// `Retry-After` in seconds, if sent as a number.
    pub retry_after_secs: Option<u64>,
    /// `Original-Idempotency-Key`: the order was paid under that key.
    pub original_key: Option<String>,
}

/// Why a request produced no answer. Both mean the outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// The network failed (or the browser refused the request).
    Network(String),
    /// No answer within the timeout; the request was aborted.
    Timeout,
}

/// Sends order requests and status lookups.
pub trait Transport {
    /// Sends `post` and waits for the whole answer or its failure.
    fn send(&self, post: OrderPost) -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>>;
    /// Sends `lookup` and waits for the whole answer or its failure.
    fn status(&self, lookup: StatusLookup)
        -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>>;
}

/// Knows whether the browser is online.
pub trait Network {
    /// `navigator.onLine`.
    fn is_online(&self) -> bool;
    /// Resolves at the next `online` event (at once if already online).
    fn wait_online(&self) -> LocalBoxFuture<'static, ()>;
}

/// The real transport: `fetch`, aborted by an `AbortController` at the
/// timeout or when dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fetch;

impl Transport for Fetch {
    fn send(&self, post: OrderPost) -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>> {
        Box::pin(fetch(
            post.endpoint,
            post.key,
            Exchange::Order(post.body),
            post.timeout_ms,
        ))
    }

    fn status(
        &self,
        lookup: StatusLookup,
    ) -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>> {
        Box::pin(fetch(
            lookup.endpoint,
            lookup.key,
            Exchange::Status(lookup.order_token),
            lookup.timeout_ms,
        ))
    }
}

/// What one request carries beside its key.
enum Exchange {
    /// The order's JSON body, POSTed.
    Order(String),
    /// The order token a status lookup (a GET) proves the customer with.
    Status(Option<String>),
}

fn network(e: JsValue) -> NoAnswer {
    NoAnswer::Network(js_error(&e))
}

/// Aborts its request when dropped: at the timeout, and when the widget that
/// awaits it is destroyed, so no request outlives the widget. Aborting a
/// request already answered and read does nothing.
struct AbortOnDrop(AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One request with its `Idempotency-Key`, read whole, or aborted at the
/// timeout. One function for both kinds keeps one copy of this state
/// machine in the bundle.
async fn fetch(
    endpoint: String,
    key: String,
    exchange: Exchange,
    timeout_ms: u64,
) -> Result<HttpAnswer, NoAnswer> {
    let window = web_sys::window().ok_or_else(|| NoAnswer::Network("no window".into()))?;
    let controller = AbortOnDrop(AbortController::new().map_err(network)?);
    let headers = Headers::new().map_err(network)?;
    headers.set("Idempotency-Key", &key).map_err(network)?;
    let init = RequestInit::new();
    match exchange {
        Exchange::Order(body) => {
            headers
                .set("Content-Type", "application/json")
                .map_err(network)?;
            init.set_method("POST");
            init.set_body(&JsValue::from_str(&body));
        }
        Exchange::Status(token) => {
            if let Some(token) = token {
                headers
                    .set("Authorization", &format!("Bearer {token}"))
                    .map_err(network)?;
            }
        }
    }
    init.set_headers(&headers);
    init.set_signal(Some(&controller.0.signal()));
    let request = Request::new_with_str_and_init(&endpoint, &init).map_err(network)?;
    let exchange = Box::pin(async move {
        let response: Response = JsFuture::from(window.fetch_with_request(&request))
            .await
            .map_err(network)?
            .unchecked_into();
        let header = |name: &str| response.headers().get(name).ok().flatten();
        let replayed = header("Idempotent-Replayed").as_deref() == Some("true");
        let retry_after_secs = header("Retry-After").and_then(|v| v.trim().parse().ok());
        let original_key = header("Original-Idempotency-Key");
        let content_type = header("Content-Type");
        let text = JsFuture::from(response.text().map_err(network)?)
            .await
            .map_err(network)?;
        Ok(HttpAnswer {
            status: response.status(),
            content_type,
            body: text.as_string().unwrap_or_default(),
            replayed,
            retry_after_secs,
            original_key,
        })
    });
    let deadline = TimeoutFuture::new(u32::try_from(timeout_ms).unwrap_or(u32::MAX));
    match select(exchange, deadline).await {
        Either::Left((answer, _)) => answer,
        // `controller` aborts the request as this returns.
        Either::Right(((), _)) => Err(NoAnswer::Timeout),
    }
}

/// The real network: `navigator.onLine` and the window's `online` event.
#[derive(Debug, Default, Clone, Copy)]
pub struct Browser;

impl Network for Browser {
    fn is_online(&self) -> bool {
        web_sys::window().is_none_or(|w| w.navigator().on_line())
    }

    fn wait_online(&self) -> LocalBoxFuture<'static, ()> {
        let (tx, rx) = futures_channel::oneshot::channel::<()>();
        let listener = web_sys::window().map(|window| {
            let mut tx = Some(tx);
            gloo_events::EventListener::once(&window, "online", move |_| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            })
        });
        Box::pin(async move {
            let _listener = listener;
            let _ = rx.await;
        })
    }
}

/// A lock held on an order; dropping it lets the next tab in.
pub struct HeldLock {
    release: Option<js_sys::Function>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.call0(&JsValue::UNDEFINED);
        }
    }
}

/// Holds an order against other tabs of the same site.
pub trait Locks {
    /// Takes the lock called `name` if no one holds it; `None` if another
    /// holder (another tab) does.
    fn try_lock(&self, name: &str) -> LocalBoxFuture<'static, Option<HeldLock>>;
}

/// The Web Locks API (`navigator.locks`). Where a browser lacks it, every
/// lock is granted: the key shared through `localStorage` still makes a
/// second tab's request a duplicate that the edge answers without charging.
#[derive(Debug, Default, Clone, Copy)]
pub struct WebLocks;

impl Locks for WebLocks {
    fn try_lock(&self, name: &str) -> LocalBoxFuture<'static, Option<HeldLock>> {
        let granted_anyway = || Some(HeldLock { release: None });
        let Some(locks) = web_sys::window()
            .and_then(|w| js_sys::Reflect::get(&w.navigator(), &JsValue::from_str("locks")).ok())
            .filter(|locks| !locks.is_undefined())
        else {
            return Box::pin(async move { granted_anyway() });
        };
        let (tx, rx) = futures_channel::oneshot::channel::<Option<js_sys::Function>>();
        // The lock is held until the promise this callback returns settles;
        // its `resolve` becomes the HeldLock's release.
        let callback =
            wasm_bindgen::closure::Closure::once_into_js(move |lock: JsValue| -> js_sys::Promise {
                if lock.is_null() {
                    let _ = tx.send(None);
                    return js_sys::Promise::resolve(&JsValue::UNDEFINED);
                }
                let mut release = None;
                let held = js_sys::Promise::new(&mut |resolve, _reject| release = Some(resolve));
                let _ = tx.send(release);
                held
            });
        let options = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&options, &JsValue::from_str("ifAvailable"), &JsValue::TRUE);
        let requested = js_sys::Reflect::get(&locks, &JsValue::from_str("request"))
            .ok()
            .and_then(|request| request.dyn_into::<js_sys::Function>().ok())
            .map(|request| request.call3(&locks, &JsValue::from_str(name), &options, &callback));
        Box::pin(async move {
            match requested {
                Some(Ok(_)) => match rx.await {
                    Ok(Some(release)) => Some(HeldLock {
                        release: Some(release),
                    }),
                    Ok(None) => None,
                    Err(_) => granted_anyway(),
                },
                _ => granted_anyway(),
            }
        })
    }
}

/// The ports one widget uses.
#[derive(Clone)]
pub struct Ports {
    /// How orders and status lookups are sent.
    pub transport: Rc<dyn Transport>,
    /// How connectivity is known.
    pub network: Rc<dyn Network>,
    /// How other tabs are kept out.
    pub locks: Rc<dyn Locks>,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            transport: Rc::new(Fetch),
            network: Rc::new(Browser),
            locks: Rc::new(WebLocks),
        }
    }
}

fn js_error(value: &JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .unwrap_or_else(|| format!("{value:?}"))
}
