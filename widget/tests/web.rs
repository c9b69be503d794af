//! Browser tests of the widget, run in Chromium, Firefox ESR and WebKit by
//! `scripts/test-widget.sh` (`wasm-pack test`, one engine at a time). Each test
//! mounts into a fresh element with a scripted transport and network, clicks
//! the real button, and reads what a page would read: the DOM, the events,
//! the requests sent.

// Natively there is no DOM to test against; `cargo test --workspace` builds
// this file as an empty test binary.
#![cfg(target_arch = "wasm32")]
// wasm_bindgen_test functions are not #[test]s to clippy, so its
// allow-unwrap-in-tests does not reach them; a panic is the failure report.
#![allow(clippy::unwrap_used)]

use chargeonce_protocol::{Problem, ProblemType, PROBLEM_CONTENT_TYPE};
use chargeonce_widget::controller::Widget;
use chargeonce_widget::transport::{
    HttpAnswer, Network, NoAnswer, OrderPost, Ports, StatusLookup, Transport, WebLocks,
};
use futures_util::future::LocalBoxFuture;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use wasm_bindgen::{closure::Closure, JsCast, JsValue};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{HtmlButtonElement, HtmlElement};

wasm_bindgen_test_configure!(run_in_browser);

/// What the scripted transport does with the next request.
#[derive(Clone)]
enum Script {
    Answer(u16, &'static str),
    AnswerWith(HttpAnswer),
    NetworkError,
    /// Never answers; the widget's own timeout must end it.
    Hang,
}

/// An answer with `status` and a JSON `body`, not replayed.
fn answer(status: u16, body: &str) -> HttpAnswer {
    HttpAnswer {
        status,
        content_type: Some("application/json".into()),
        body: body.into(),
        replayed: false,
        retry_after_secs: None,
        original_key: None,
    }
}

/// The edge's problem+json for `kind`, as it sends it.
fn problem(kind: ProblemType) -> HttpAnswer {
    HttpAnswer {
        content_type: Some(PROBLEM_CONTENT_TYPE.into()),
        ..answer(kind.status(), &Problem::new(kind, "scripted").to_json())
    }
}

/// A key's stored answer, as the edge replays it.
fn replayed(status: u16, body: &str) -> HttpAnswer {
    HttpAnswer {
        replayed: true,
        ..answer(status, body)
    }
}

/// Answers orders from `script` (then 200) and status lookups from
/// `lookups` (then 404: nothing is recorded under the key).
#[derive(Default)]
struct Scripted {
    script: RefCell<VecDeque<Script>>,
    lookups: RefCell<VecDeque<Script>>,
    sent: RefCell<Vec<(OrderPost, f64)>>,
    looked_up: RefCell<Vec<StatusLookup>>,
}

fn play(step: Script, timeout_ms: u64) -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>> {
    Box::pin(async move {
        match step {
            Script::Answer(status, body) => Ok(answer(status, body)),
            Script::AnswerWith(answer) => Ok(answer),
            Script::NetworkError => Err(NoAnswer::Network("scripted failure".into())),
            Script::Hang => {
                gloo_timers::future::TimeoutFuture::new(timeout_ms as u32).await;
                Err(NoAnswer::Timeout)
            }
        }
    })
}

impl Transport for Scripted {
    fn send(&self, post: OrderPost) -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>> {
        self.sent
            .borrow_mut()
            .push((post.clone(), js_sys::Date::now()));
        let step = self.script.borrow_mut().pop_front();
        play(step.unwrap_or(Script::Answer(200, OK)), post.timeout_ms)
    }

    fn status(
        &self,
        lookup: StatusLookup,
    ) -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>> {
        self.looked_up.borrow_mut().push(lookup.clone());
        let step = self.lookups.borrow_mut().pop_front();
        let nothing_recorded = Script::AnswerWith(problem(ProblemType::OrderNotFound));
        play(step.unwrap_or(nothing_recorded), lookup.timeout_ms)
    }
}

#[derive(Default)]
struct FakeNetwork {
    offline: Cell<bool>,
    waiters: RefCell<Vec<futures_channel::oneshot::Sender<()>>>,
}

impl FakeNetwork {
    fn go_online(&self) {
        self.offline.set(false);
        for waiter in self.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl Network for FakeNetwork {
    fn is_online(&self) -> bool {
        !self.offline.get()
    }

    fn wait_online(&self) -> LocalBoxFuture<'static, ()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        if self.is_online() {
            let _ = tx.send(());
        } else {
            self.waiters.borrow_mut().push(tx);
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

const OK: &str = r#"{"id":"pi_1","object":"payment_intent","status":"succeeded"}"#;

/// A mounted widget and its scripted world, read through small helpers.
struct Page {
    host: HtmlElement,
    widget: Rc<Widget>,
    ports: Ports,
    transport: Rc<Scripted>,
    network: Rc<FakeNetwork>,
    events: Rc<RefCell<Vec<(String, Value)>>>,
    _listeners: Vec<gloo_events::EventListener>,
}

fn unique_ref() -> String {
    format!("ord_{}", (js_sys::Math::random() * 1e12) as u64)
}

/// How a test page is set up beyond the defaults.
#[derive(Default)]
struct Setup {
    /// Answers to the orders, in turn (then 200).
    posts: Vec<Script>,
    /// Answers to the status lookups, in turn (then 404).
    lookups: Vec<Script>,
    network: Option<Rc<FakeNetwork>>,
    /// `mount()`'s options object.
    options: Option<js_sys::Object>,
    /// Attributes set after the defaults, before mounting.
    attributes: Vec<(&'static str, &'static str)>,
}

impl Page {
    fn mount(order_ref: &str, script: Vec<Script>) -> Self {
        Self::mount_with(
            order_ref,
            Setup {
                posts: script,
                ..Setup::default()
            },
        )
    }

    fn mount_with(order_ref: &str, setup: Setup) -> Self {
        let document = web_sys::window().unwrap().document().unwrap();
        let host: HtmlElement = document.create_element("div").unwrap().unchecked_into();
        for (name, value) in [
            ("data-chargeonce", ""),
            ("data-endpoint", "/v1/orders"),
            ("data-order-ref", order_ref),
            ("data-amount", "1999"),
            ("data-currency", "usd"),
            ("data-payment-method", "pm_card_visa"),
            ("data-customer", "cus_1"),
            ("data-order-token", "v1.first.signature"),
            // Short timers keep the suite fast.
            ("data-retry-base-ms", "10"),
            ("data-retry-cap-ms", "40"),
            ("data-timeout-ms", "100"),
        ]
        .into_iter()
        .chain(setup.attributes)
        {
            host.set_attribute(name, value).unwrap();
        }
        document.body().unwrap().append_child(&host).unwrap();
        let events = Rc::new(RefCell::new(Vec::new()));
        let listeners = [
            "chargeonce:attempt",
            "chargeonce:retry",
            "chargeonce:success",
            "chargeonce:failure",
            "chargeonce:token-needed",
            "chargeonce:action",
        ]
        .into_iter()
        .map(|name| {
            let events = Rc::clone(&events);
            let host = host.clone();
            // Listen on the document: the events must bubble out of the host.
            gloo_events::EventListener::new(&document, name, move |event| {
                // Only this page's: a test may mount two.
                if event.target().as_ref() != Some(host.as_ref()) {
                    return;
                }
                let event: &web_sys::CustomEvent = event.unchecked_ref();
                let detail = js_sys::JSON::stringify(&event.detail()).unwrap();
                let detail = serde_json::from_str(&String::from(detail)).unwrap();
                events.borrow_mut().push((event.type_(), detail));
            })
        })
        .collect();
        let transport = Rc::new(Scripted {
            script: RefCell::new(setup.posts.into()),
            lookups: RefCell::new(setup.lookups.into()),
            ..Scripted::default()
        });
        let network = setup.network.unwrap_or_default();
        let ports = Ports {
            transport: transport.clone(),
            network: network.clone(),
            // The browser's real Web Locks: two widgets on one page stand in
            // for two tabs of one site.
            locks: Rc::new(WebLocks),
        };
        let widget =
            chargeonce_widget::mount_with(host.clone(), setup.options, ports.clone()).unwrap();
        Self {
            host,
            widget,
            ports,
            transport,
            network,
            events,
            _listeners: listeners,
        }
    }

    /// The element of the widget's shadow root that `selector` names.
    fn shadow_part(&self, selector: &str) -> web_sys::Element {
        self.host
            .shadow_root()
            .unwrap()
            .query_selector(selector)
            .unwrap()
            .unwrap()
    }

    fn button(&self) -> HtmlButtonElement {
        self.shadow_part("button").unchecked_into()
    }

    /// Whether the spinner shows (the stylesheet shows it while busy).
    fn spinner_shown(&self) -> bool {
        let style = web_sys::window()
            .unwrap()
            .get_computed_style(&self.shadow_part(".co-spinner"))
            .unwrap()
            .unwrap();
        style.get_property_value("display").unwrap() != "none"
    }

    fn click_place_order(&self) {
        self.button().click();
    }

    fn status_text(&self) -> String {
        self.shadow_part("[role=status]")
            .text_content()
            .unwrap_or_default()
    }

    /// One field of each order sent, in order.
    fn sent<T>(&self, field: impl Fn(&OrderPost) -> T) -> Vec<T> {
        self.transport
            .sent
            .borrow()
            .iter()
            .map(|(p, _)| field(p))
            .collect()
    }

    fn keys_sent(&self) -> Vec<String> {
        self.sent(|p| p.key.clone())
    }

    fn keys_looked_up(&self) -> Vec<String> {
        self.transport
            .looked_up
            .borrow()
            .iter()
            .map(|l| l.key.clone())
            .collect()
    }

    fn bodies_sent(&self) -> Vec<String> {
        self.sent(|p| p.body.clone())
    }

    /// The details of the events called `name`, in order.
    fn events_named(&self, name: &str) -> Vec<Value> {
        self.events
            .borrow()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, detail)| detail.clone())
            .collect()
    }

    fn event_names(&self) -> Vec<String> {
        self.events
            .borrow()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Waits (real time, bounded) until the status line says `text`.
    async fn until_status(&self, text: &str) {
        for _ in 0..300 {
            leptos::task::tick().await;
            if self.status_text() == text {
                return;
            }
            sleep(10).await;
        }
        panic!(
            "status never became {text:?}; it is {:?}",
            self.status_text()
        );
    }

    /// Waits (real time, bounded) until `n` requests were sent.
    async fn until_sent(&self, n: usize) {
        for _ in 0..300 {
            if self.keys_sent().len() >= n {
                return;
            }
            sleep(5).await;
        }
        panic!("{} requests sent, not {n}", self.keys_sent().len());
    }

    fn unmount(&self) {
        self.host.remove();
    }
}

async fn sleep(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

#[wasm_bindgen_test]
async fn a_double_click_sends_one_request() {
    let page = Page::mount(&unique_ref(), vec![]);
    page.click_place_order();
    page.click_place_order();
    page.until_status("Order placed").await;
    assert_eq!(page.keys_sent().len(), 1);
    assert!(
        page.button().disabled(),
        "a placed order cannot be placed again"
    );
    assert!(!page.spinner_shown());
    page.click_place_order();
    sleep(30).await;
    assert_eq!(page.keys_sent().len(), 1);
    page.unmount();
}

#[wasm_bindgen_test]
async fn enter_then_click_sends_one_request() {
    let page = Page::mount(&unique_ref(), vec![Script::Hang]);
    let button = page.button();
    button.focus().unwrap();
    // A native button turns Enter into a click; a synthetic keydown does not,
    // so the activation is the first click() and the mouse the second.
    let enter = web_sys::KeyboardEvent::new("keydown").unwrap();
    button.dispatch_event(&enter).unwrap();
    button.click();
    page.until_sent(1).await;
    assert!(button.disabled(), "the button is disabled while in flight");
    assert_eq!(button.get_attribute("aria-busy").as_deref(), Some("true"));
    assert!(page.spinner_shown());
    button.click();
    assert_eq!(page.keys_sent().len(), 1);
    page.unmount();
}

/// Mounts with `script`, clicks once, waits for the order to be placed and
/// returns the keys the requests carried.
async fn keys_until_placed(script: Vec<Script>) -> Vec<String> {
    let page = Page::mount(&unique_ref(), script);
    page.click_place_order();
    page.until_status("Order placed").await;
    page.unmount();
    page.keys_sent()
}

#[wasm_bindgen_test]
async fn a_503_then_200_sends_two_requests_with_one_key() {
    let keys = keys_until_placed(vec![Script::Answer(503, "{}"), Script::Answer(200, OK)]).await;
    assert_eq!((keys.len(), &keys[0]), (2, &keys[1]));
}

#[wasm_bindgen_test]
async fn a_409_is_retried_with_the_same_key() {
    let keys = keys_until_placed(vec![Script::Answer(409, "{}"), Script::Answer(200, OK)]).await;
    assert_eq!((keys.len(), &keys[0]), (2, &keys[1]));
}

#[wasm_bindgen_test]
async fn a_timeout_is_retried_with_the_same_key() {
    let keys = keys_until_placed(vec![Script::Hang, Script::Answer(200, OK)]).await;
    assert_eq!((keys.len(), &keys[0]), (2, &keys[1]));
}

#[wasm_bindgen_test]
async fn a_decline_is_final_and_the_next_submit_uses_a_new_key() {
    let declined = r#"{"error":{"type":"card_error","code":"card_declined","message":"Your card was declined."}}"#;
    let page = Page::mount(
        &unique_ref(),
        vec![Script::Answer(402, declined), Script::Answer(200, OK)],
    );
    page.click_place_order();
    page.until_status("Card declined").await;
    assert_eq!(page.keys_sent().len(), 1, "a decline is not retried");
    {
        let events = page.events.borrow();
        let (name, detail) = events.last().unwrap();
        assert_eq!(name, "chargeonce:failure");
        assert_eq!(detail["final"], true);
        assert_eq!(detail["status"], 402);
        assert_eq!(
            detail["message"], "Your card was declined.",
            "the server's words are passed on"
        );
    }
    assert!(!page.button().disabled(), "the customer may try again");
    page.click_place_order();
    page.until_status("Order placed").await;
    let keys = page.keys_sent();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "a new attempt gets a new key");
    page.unmount();
}

#[wasm_bindgen_test]
async fn a_changed_cart_after_a_placed_order_can_be_ordered_under_a_new_key() {
    let page = Page::mount(&unique_ref(), vec![]);
    page.click_place_order();
    page.until_status("Order placed").await;
    assert!(page.button().disabled());
    // The cart changes: the page updates the amount, and the button is for
    // the next order.
    page.host.set_attribute("data-amount", "3998").unwrap();
    sleep(10).await;
    assert!(!page.button().disabled(), "a new cart can be ordered");
    assert_eq!(page.status_text(), "Your earlier order was placed.");
    page.click_place_order();
    page.until_status("Order placed").await;
    let keys = page.keys_sent();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
    page.unmount();
}

/// The status line the issue asks for when the outcome is unknown.
const UNCONFIRMED: &str =
    "We couldn't confirm your order. You have not been charged twice — try again";

/// A page whose first click ended unconfirmed (a 500); the next answer is 200.
async fn unconfirmed_page() -> Page {
    let page = Page::mount(
        &unique_ref(),
        vec![Script::Answer(500, "{}"), Script::Answer(200, OK)],
    );
    page.click_place_order();
    page.until_status(UNCONFIRMED).await;
    page
}

#[wasm_bindgen_test]
async fn a_changed_payload_settles_the_earlier_attempt_before_a_new_key() {
    let page = unconfirmed_page().await;
    let earlier = page.keys_sent()[0].clone();
    page.host.set_attribute("data-amount", "2999").unwrap();
    page.click_place_order();
    // The earlier attempt may have charged: its key is asked about first
    // (the script answers 404, nothing recorded), and the customer is told.
    page.until_status("Your earlier order was not charged.")
        .await;
    assert_eq!(page.keys_looked_up(), [earlier.as_str()]);
    assert_eq!(page.keys_sent().len(), 1, "no new key before the answer");
    assert_a_click_places_the_order_under_a_new_key(&page, &earlier).await;
    assert!(page.bodies_sent()[1].contains("\"amount\":2999"));
    page.unmount();
}

#[wasm_bindgen_test]
async fn an_unconfirmed_order_is_retried_with_the_same_key() {
    let page = unconfirmed_page().await;
    page.click_place_order();
    page.until_status("Order placed").await;
    let keys = page.keys_sent();
    assert_eq!(keys[0], keys[1]);
    page.unmount();
}

/// Clicks the button an earlier attempt left enabled once it was settled,
/// and checks that the page's order is placed with one request under a new
/// key: a settled attempt's key is never reused.
async fn assert_a_click_places_the_order_under_a_new_key(page: &Page, earlier: &str) {
    assert!(!page.button().disabled(), "the page's order can be placed");
    let before = page.keys_sent().len();
    page.click_place_order();
    page.until_status("Order placed").await;
    let keys = page.keys_sent();
    assert_eq!(keys.len(), before + 1, "one request");
    assert_ne!(keys[before], earlier, "a new key");
}

/// Places an order whose request never answers, then removes the page, as
/// a reload mid-flight does; returns the order and the key it sent.
async fn interrupted_order() -> (String, String) {
    let order_ref = unique_ref();
    let first = Page::mount(&order_ref, vec![Script::Hang]);
    first.click_place_order();
    first.until_sent(1).await;
    let key = first.keys_sent()[0].clone();
    // A removed widget keeps its order's lock until its request ends (a
    // reloaded page's locks go with it at once), so give it that long.
    first.unmount();
    sleep(150).await;
    (order_ref, key)
}

#[wasm_bindgen_test]
async fn a_remount_mid_attempt_looks_the_key_up_then_sends_it_again() {
    let (order_ref, key) = interrupted_order().await;
    // Nothing is recorded under the key (the scripted lookup's 404) and the
    // page shows the same order: it is sent, with its key.
    let second = Page::mount(&order_ref, vec![Script::Answer(200, OK)]);
    second.until_status("Order placed").await;
    assert_eq!(second.keys_looked_up(), [key.as_str()]);
    assert_eq!(second.keys_sent(), [key]);
    assert_eq!(
        second.events_named("chargeonce:attempt")[0]["method"],
        "GET",
        "the lookup comes first"
    );
    // And a third mount shows the order as placed without sending anything.
    let third = Page::mount(&order_ref, vec![]);
    leptos::task::tick().await;
    assert_eq!(third.status_text(), "Order placed");
    assert!(third.keys_sent().is_empty() && third.keys_looked_up().is_empty());
    second.unmount();
    third.unmount();
}

#[wasm_bindgen_test]
async fn an_order_named_after_mounting_still_resumes_with_its_key() {
    let (order_ref, key) = interrupted_order().await;
    // The reloaded page mounts the widget before it knows the order (it
    // prices the cart on its server first), then names it.
    let second = Page::mount(&unique_ref(), vec![Script::Answer(200, OK)]);
    leptos::task::tick().await;
    assert!(second.keys_sent().is_empty());
    second
        .host
        .set_attribute("data-order-ref", &order_ref)
        .unwrap();
    second.until_status("Order placed").await;
    assert_eq!(second.keys_looked_up(), [key.as_str()]);
    assert_eq!(second.keys_sent(), [key]);
    second.unmount();
}

#[wasm_bindgen_test]
async fn retry_after_is_honoured() {
    let busy = HttpAnswer {
        retry_after_secs: Some(1),
        ..answer(503, "{}")
    };
    let page = Page::mount(
        &unique_ref(),
        vec![Script::AnswerWith(busy), Script::Answer(200, OK)],
    );
    page.click_place_order();
    page.until_status("Order placed").await;
    let sent = page.transport.sent.borrow();
    let gap = sent[1].1 - sent[0].1;
    assert!(
        gap >= 1_000.0,
        "the retry came {gap} ms after the 503, before Retry-After"
    );
}

#[wasm_bindgen_test]
async fn an_order_placed_on_another_device_is_waited_for_then_shown_as_already_placed() {
    let in_progress = HttpAnswer {
        retry_after_secs: Some(1),
        ..problem(ProblemType::OrderInProgress)
    };
    let paid_elsewhere = HttpAnswer {
        original_key: Some("phone-key-0000001".into()),
        ..replayed(200, OK)
    };
    let page = Page::mount(
        &unique_ref(),
        vec![
            Script::AnswerWith(in_progress),
            Script::AnswerWith(paid_elsewhere),
        ],
    );
    page.click_place_order();
    page.until_status("This order is being placed on another device.")
        .await;
    page.until_status("This order was already placed.").await;
    let keys = page.keys_sent();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the page's own key, kept");
    let events = page.events.borrow();
    let success = events
        .iter()
        .find(|(name, _)| name == "chargeonce:success")
        .expect("a success event");
    assert_eq!(success.1["originalKey"], "phone-key-0000001");
    assert_eq!(success.1["response"]["id"], "pi_1");
    drop(events);
    page.unmount();
}

#[wasm_bindgen_test]
async fn offline_sends_nothing_until_online() {
    let network = Rc::new(FakeNetwork::default());
    network.offline.set(true);
    let page = Page::mount_with(
        &unique_ref(),
        Setup {
            network: Some(network),
            ..Setup::default()
        },
    );
    page.click_place_order();
    sleep(100).await;
    assert!(page.keys_sent().is_empty(), "nothing is sent while offline");
    assert!(
        page.status_text().contains("offline"),
        "{}",
        page.status_text()
    );
    page.network.go_online();
    page.until_status("Order placed").await;
    assert_eq!(page.keys_sent().len(), 1);
    page.unmount();
}

#[wasm_bindgen_test]
async fn events_carry_the_key_and_the_answer() {
    let page = Page::mount(
        &unique_ref(),
        vec![Script::NetworkError, Script::AnswerWith(replayed(200, OK))],
    );
    page.click_place_order();
    page.until_status("Order placed").await;
    assert_eq!(
        page.event_names(),
        [
            "chargeonce:attempt",
            "chargeonce:retry",
            "chargeonce:attempt",
            "chargeonce:success"
        ]
    );
    let events = page.events.borrow();
    let key = page.keys_sent()[0].clone();
    assert_eq!(events[0].1["key"], key.as_str());
    assert_eq!(events[0].1["method"], "POST");
    assert_eq!(events[1].1["reason"], "connection_lost");
    assert_eq!(events[1].1["retry"], 1);
    assert_eq!(events[1].1["status"], Value::Null, "no answer, no status");
    assert_eq!(events[3].1["key"], key.as_str());
    assert_eq!(events[3].1["replayed"], true);
    assert_eq!(events[3].1["response"]["id"], "pi_1");
    drop(events);
    page.unmount();
}

#[wasm_bindgen_test]
async fn a_second_tab_on_the_same_order_does_not_submit_in_parallel() {
    let order_ref = unique_ref();
    let first = Page::mount(&order_ref, vec![Script::Hang, Script::Answer(200, OK)]);
    let second = Page::mount(&order_ref, vec![Script::Answer(200, OK)]);
    first.click_place_order();
    sleep(20).await;
    second.click_place_order();
    second
        .until_status("This order is being placed in another tab.")
        .await;
    assert!(second.keys_sent().is_empty(), "the second tab sent nothing");
    first.until_status("Order placed").await;
    // Once the first tab is done, the second may go: with the shared key, so
    // the edge would answer it with the first tab's charge.
    second.click_place_order();
    second.until_status("Order placed").await;
    assert_eq!(second.keys_sent(), [first.keys_sent()[0].clone()]);
    first.unmount();
    second.unmount();
}

#[wasm_bindgen_test]
async fn a_misconfigured_button_says_what_is_wrong_and_sends_nothing() {
    let page = Page::mount(&unique_ref(), vec![]);
    page.host.set_attribute("data-currency", "USD").unwrap();
    page.click_place_order();
    leptos::task::tick().await;
    assert!(
        page.status_text().contains("currency"),
        "{}",
        page.status_text()
    );
    assert!(page.keys_sent().is_empty());
    page.unmount();
}

#[wasm_bindgen_test]
async fn the_order_token_is_passed_through_and_a_re_signed_order_is_the_same_order() {
    let page = Page::mount(&unique_ref(), vec![]);
    page.click_place_order();
    page.until_status("Order placed").await;
    let body = page.transport.sent.borrow()[0].0.body.clone();
    assert!(
        body.contains(r#""customer":"cus_1""#)
            && body.contains(r#""order_token":"v1.first.signature""#),
        "{body}"
    );
    // The shop signs the same order again (a later expiry): the token is not
    // part of what is charged, so this is still the placed order.
    page.host
        .set_attribute("data-order-token", "v1.second.signature")
        .unwrap();
    sleep(20).await;
    page.click_place_order();
    sleep(30).await;
    assert_eq!(page.keys_sent().len(), 1, "a new token is not a new order");
    page.unmount();
}

#[wasm_bindgen_test]
async fn the_retry_event_reports_the_answers_status() {
    let page = Page::mount(
        &unique_ref(),
        vec![Script::Answer(503, "{}"), Script::Answer(200, OK)],
    );
    page.click_place_order();
    page.until_status("Order placed").await;
    let retries = page.events_named("chargeonce:retry");
    assert_eq!(retries.len(), 1);
    assert_eq!(retries[0]["status"], 503, "{}", retries[0]);
    page.unmount();
}

/// The order token the page renews an expired one with.
const FRESH_TOKEN: &str = "v1.fresh.signature";

/// Asserts that the order was sent twice with one key, first with the
/// expired token and then with the fresh one, which the host now carries.
fn assert_resent_with_the_fresh_token(page: &Page) {
    let keys = page.keys_sent();
    assert_eq!(keys.len(), 2, "one request refused, one resent");
    assert_eq!(keys[0], keys[1], "a renewed token keeps the key");
    let bodies = page.bodies_sent();
    assert!(bodies[0].contains("v1.first.signature"), "{}", bodies[0]);
    assert!(bodies[1].contains(FRESH_TOKEN), "{}", bodies[1]);
    assert_eq!(
        page.host.get_attribute("data-order-token").as_deref(),
        Some(FRESH_TOKEN)
    );
}

#[wasm_bindgen_test]
async fn an_expired_token_is_renewed_through_get_order_token_with_the_same_key() {
    let asked = Rc::new(RefCell::new(Vec::new()));
    let get_order_token = {
        let asked = Rc::clone(&asked);
        Closure::<dyn FnMut(JsValue) -> js_sys::Promise>::new(move |detail: JsValue| {
            let detail = js_sys::JSON::stringify(&detail).unwrap();
            asked.borrow_mut().push(String::from(detail));
            js_sys::Promise::resolve(&JsValue::from_str(FRESH_TOKEN))
        })
    };
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"getOrderToken".into(), get_order_token.as_ref()).unwrap();
    let order_ref = unique_ref();
    let page = Page::mount_with(
        &order_ref,
        Setup {
            posts: vec![Script::AnswerWith(problem(ProblemType::OrderTokenExpired))],
            options: Some(options),
            ..Setup::default()
        },
    );
    page.click_place_order();
    page.until_status("Order placed").await;
    assert_resent_with_the_fresh_token(&page);
    let asked: Vec<Value> = asked
        .borrow()
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(asked.len(), 1, "one token asked for");
    assert_eq!(asked[0]["key"], page.keys_sent()[0].as_str());
    assert_eq!(asked[0]["orderRef"], order_ref.as_str());
    assert!(
        page.events_named("chargeonce:token-needed").is_empty(),
        "the function is asked instead of the page's listeners"
    );
    page.unmount();
}

#[wasm_bindgen_test]
async fn an_expired_token_is_renewed_through_the_token_needed_event_with_the_same_key() {
    let page = Page::mount_with(
        &unique_ref(),
        Setup {
            posts: vec![Script::AnswerWith(problem(ProblemType::OrderTokenExpired))],
            ..Setup::default()
        },
    );
    // The shop's listener: it asks its server (a while) and sets the token.
    let host = page.host.clone();
    let _shop = gloo_events::EventListener::new(&page.host, "chargeonce:token-needed", move |_| {
        let host = host.clone();
        leptos::task::spawn_local(async move {
            sleep(30).await;
            host.set_attribute("data-order-token", FRESH_TOKEN).unwrap();
        });
    });
    page.click_place_order();
    page.until_status("Refreshing your checkout session…").await;
    page.until_status("Order placed").await;
    assert_resent_with_the_fresh_token(&page);
    let needed = page.events_named("chargeonce:token-needed");
    assert_eq!(needed.len(), 1, "one token asked for");
    assert_eq!(needed[0]["key"], page.keys_sent()[0].as_str());
    page.unmount();
}

/// Leaves an attempt unconfirmed (a 500), then mounts the order again as a
/// reload does, with the page's `attributes` (another cart, say) and the
/// edge's answer to the status lookup; returns the reloaded page and the
/// earlier key.
async fn reload_after_an_unconfirmed_order(
    lookup: HttpAnswer,
    attributes: Vec<(&'static str, &'static str)>,
) -> (Page, String) {
    let order_ref = unique_ref();
    let first = Page::mount(&order_ref, vec![Script::Answer(500, "{}")]);
    first.click_place_order();
    first.until_status(UNCONFIRMED).await;
    let key = first.keys_sent()[0].clone();
    first.unmount();
    let reloaded = Page::mount_with(
        &order_ref,
        Setup {
            lookups: vec![Script::AnswerWith(lookup)],
            attributes,
            ..Setup::default()
        },
    );
    (reloaded, key)
}

#[wasm_bindgen_test]
async fn a_reload_asks_the_status_lookup_first_and_shows_a_placed_order_without_posting() {
    let (reloaded, key) = reload_after_an_unconfirmed_order(replayed(200, OK), vec![]).await;
    reloaded.until_status("Order placed").await;
    assert!(reloaded.keys_sent().is_empty(), "no POST");
    let lookups = reloaded.transport.looked_up.borrow().clone();
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].key, key);
    assert_eq!(
        lookups[0].order_token.as_deref(),
        Some("v1.first.signature"),
        "the lookup proves the customer with the page's token"
    );
    assert!(reloaded.button().disabled());
    let success = reloaded.events_named("chargeonce:success");
    assert_eq!(success[0]["replayed"], true);
    reloaded.unmount();
}

#[wasm_bindgen_test]
async fn a_reload_with_another_cart_says_the_earlier_order_was_placed_and_takes_the_new_one() {
    let (reloaded, key) =
        reload_after_an_unconfirmed_order(replayed(200, OK), vec![("data-amount", "2999")]).await;
    reloaded
        .until_status("Your earlier order was placed.")
        .await;
    assert_eq!(reloaded.keys_looked_up(), [key.as_str()]);
    assert!(reloaded.keys_sent().is_empty(), "no POST");
    assert_a_click_places_the_order_under_a_new_key(&reloaded, &key).await;
    reloaded.unmount();
}

#[wasm_bindgen_test]
async fn a_reload_of_an_attempt_settled_as_not_charged_asks_for_a_new_click() {
    let not_charged = HttpAnswer {
        replayed: true,
        ..problem(ProblemType::AttemptNotCharged)
    };
    let (reloaded, key) = reload_after_an_unconfirmed_order(not_charged, vec![]).await;
    reloaded
        .until_status("The payment did not go through; you were not charged. Please try again.")
        .await;
    assert_a_click_places_the_order_under_a_new_key(&reloaded, &key).await;
    reloaded.unmount();
}

#[wasm_bindgen_test]
async fn conflicts_do_not_use_up_the_retries() {
    let page = Page::mount_with(
        &unique_ref(),
        Setup {
            posts: vec![
                Script::AnswerWith(problem(ProblemType::RequestInFlight)),
                Script::AnswerWith(problem(ProblemType::RequestInFlight)),
                Script::AnswerWith(problem(ProblemType::RequestInFlight)),
                Script::Answer(200, OK),
            ],
            attributes: vec![("data-max-retries", "1")],
            ..Setup::default()
        },
    );
    page.click_place_order();
    page.until_status("Order placed").await;
    let keys = page.keys_sent();
    assert_eq!(keys.len(), 4, "three 409s waited out, then placed");
    assert!(keys.iter().all(|k| *k == keys[0]), "one key");
    page.unmount();
}

/// A PaymentIntent that awaits the customer's authentication.
const ACTION: &str = r#"{"id":"pi_3ds","object":"payment_intent","status":"requires_action","client_secret":"pi_3ds_secret_abc","next_action":{"type":"use_stripe_sdk","use_stripe_sdk":{}}}"#;

/// A page whose `handleAction` records the client secrets it was given and
/// settles at once (the customer authenticated, as far as it knows).
fn page_with_handler(order_ref: &str, posts: Vec<Script>) -> (Page, Rc<RefCell<Vec<String>>>) {
    let asked = Rc::new(RefCell::new(Vec::new()));
    let handle_action = {
        let asked = Rc::clone(&asked);
        Closure::<dyn FnMut(JsValue) -> js_sys::Promise>::new(move |secret: JsValue| {
            asked
                .borrow_mut()
                .push(secret.as_string().unwrap_or_default());
            js_sys::Promise::resolve(&JsValue::UNDEFINED)
        })
    };
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"handleAction".into(), handle_action.as_ref()).unwrap();
    // The page keeps its handler for as long as the widget lives.
    handle_action.forget();
    let page = Page::mount_with(
        order_ref,
        Setup {
            posts,
            options: Some(options),
            ..Setup::default()
        },
    );
    (page, asked)
}

#[wasm_bindgen_test]
async fn three_d_secure_calls_handle_action_then_resends_with_the_same_key() {
    let (page, asked) = page_with_handler(
        &unique_ref(),
        vec![
            Script::Answer(200, ACTION),
            Script::AnswerWith(replayed(200, OK)),
        ],
    );
    page.click_place_order();
    page.until_status("Order placed").await;
    assert_eq!(*asked.borrow(), ["pi_3ds_secret_abc"]);
    let keys = page.keys_sent();
    assert_eq!(
        keys.len(),
        2,
        "the order, then the same order after authentication"
    );
    assert_eq!(keys[0], keys[1]);
    let action = page.events_named("chargeonce:action");
    assert_eq!(action.len(), 1);
    assert_eq!(action[0]["key"], keys[0].as_str());
    assert_eq!(action[0]["payment_intent"], "pi_3ds");
    assert_eq!(action[0]["client_secret"], "pi_3ds_secret_abc");
    assert_eq!(action[0]["next_action"]["type"], "use_stripe_sdk");
    assert_eq!(page.events_named("chargeonce:success").len(), 1);
    page.unmount();
}

#[wasm_bindgen_test]
async fn a_failed_authentication_says_nothing_was_charged_and_takes_a_new_key_next() {
    let failed = r#"{"id":"pi_3ds","status":"requires_payment_method","last_payment_error":{"code":"payment_intent_authentication_failure","message":"We are unable to authenticate your payment method."}}"#;
    let (page, _) = page_with_handler(
        &unique_ref(),
        vec![
            Script::Answer(200, ACTION),
            Script::AnswerWith(replayed(200, failed)),
        ],
    );
    page.click_place_order();
    page.until_status(
        "The payment did not go through. We are unable to authenticate your payment method. You were not charged.",
    )
    .await;
    assert!(
        page.events_named("chargeonce:success").is_empty(),
        "never placed"
    );
    let failure = page.events_named("chargeonce:failure");
    assert_eq!(failure.len(), 1);
    assert_eq!(failure[0]["final"], true);
    page.click_place_order();
    page.until_status("Order placed").await;
    let keys = page.keys_sent();
    assert_eq!(keys.len(), 3);
    assert_ne!(keys[2], keys[0], "a new attempt, a new key");
    page.unmount();
}

#[wasm_bindgen_test]
async fn without_handle_action_the_widget_says_what_is_missing_instead_of_success() {
    let page = Page::mount(&unique_ref(), vec![Script::Answer(200, ACTION)]);
    page.click_place_order();
    page.until_status(&format!(
        "The payment did not go through. {} You were not charged.",
        chargeonce_protocol::attempt::NO_ACTION_HANDLER
    ))
    .await;
    assert!(page.events_named("chargeonce:success").is_empty());
    assert_eq!(
        page.events_named("chargeonce:action").len(),
        1,
        "the page still hears of it"
    );
    assert_eq!(page.keys_sent().len(), 1);
    page.unmount();
}

#[wasm_bindgen_test]
async fn a_reload_during_authentication_sends_the_order_again_before_asking_the_page() {
    // The stored intent still awaits authentication as far as the status
    // lookup knows; the order sent again with the key learns it succeeded.
    let (reloaded, key) = reload_after_an_unconfirmed_order(replayed(200, ACTION), vec![]).await;
    reloaded.until_status("Order placed").await;
    assert_eq!(reloaded.keys_looked_up(), [key.as_str()]);
    assert_eq!(reloaded.keys_sent(), [key.as_str()], "one POST, same key");
    assert!(
        reloaded.events_named("chargeonce:action").is_empty(),
        "the page was not asked to authenticate again"
    );
    reloaded.unmount();
}

/// A plain JS object with these members, as a page passes to `mount()` or
/// `update()`.
fn js_object(members: &[(&str, JsValue)]) -> js_sys::Object {
    let object = js_sys::Object::new();
    for (name, value) in members {
        js_sys::Reflect::set(&object, &JsValue::from_str(name), value).unwrap();
    }
    object
}

#[wasm_bindgen_test]
async fn destroy_stops_the_attempt_releases_the_lock_and_the_next_mount_resumes_the_key() {
    let order_ref = unique_ref();
    // Every order times out, so the attempt would retry for as long as it
    // ran; the lock stays held while it does.
    let first = Page::mount(&order_ref, vec![Script::Hang; 8]);
    first.click_place_order();
    first.until_sent(1).await;
    let key = first.keys_sent()[0].clone();
    first.widget.destroy();
    let shadow = first.host.shadow_root().unwrap();
    assert!(shadow.first_child().is_none(), "the view is gone");
    assert_eq!(shadow.adopted_style_sheets().length(), 0);
    let events_at_destroy = first.event_names().len();
    // Past the timeout (100 ms) and any backoff (at most 40 ms): a live
    // attempt would have sent again by now.
    sleep(400).await;
    assert_eq!(
        first.keys_sent(),
        std::slice::from_ref(&key),
        "nothing sent after destroy"
    );
    assert_eq!(
        first.event_names().len(),
        events_at_destroy,
        "no event after destroy"
    );
    // A second widget for the order takes the lock (no "another tab") and
    // settles the saved attempt with its key: looked up, then sent.
    let second = Page::mount(&order_ref, vec![Script::Answer(200, OK)]);
    second.until_status("Order placed").await;
    assert_eq!(second.keys_looked_up(), std::slice::from_ref(&key));
    assert_eq!(second.keys_sent(), [key]);
    first.unmount();
    second.unmount();
}

#[wasm_bindgen_test]
async fn a_destroyed_element_takes_a_new_widget_and_update_changes_the_order_and_label() {
    let page = Page::mount(&unique_ref(), vec![]);
    page.widget.destroy();
    // Twice does nothing; an update after it says why it cannot.
    page.widget.destroy();
    let refused = page.widget.update(&js_object(&[("amount", 1.into())]));
    assert_eq!(
        error_message(refused),
        "ChargeOnce: this widget was destroyed; mount a new one"
    );
    // What a framework does on remount: the same element, mounted again.
    let widget =
        chargeonce_widget::mount_with(page.host.clone(), None, page.ports.clone()).unwrap();
    let shadow = page.host.shadow_root().unwrap();
    assert_eq!(shadow.query_selector_all("button").unwrap().length(), 1);
    assert_eq!(page.button().text_content().unwrap(), "Place order");

    widget
        .update(&js_object(&[
            ("amount", 2500.into()),
            ("label", "Pay $25.00".into()),
        ]))
        .unwrap();
    leptos::task::tick().await;
    assert_eq!(page.host.get_attribute("data-amount").unwrap(), "2500");
    assert_eq!(page.button().text_content().unwrap(), "Pay $25.00");
    page.click_place_order();
    page.until_status("Order placed").await;
    assert!(
        page.bodies_sent()[0].contains("\"amount\":2500"),
        "{:?}",
        page.bodies_sent()
    );

    // `null` removes an option, and a function option must be a function.
    widget
        .update(&js_object(&[("label", JsValue::NULL)]))
        .unwrap();
    leptos::task::tick().await;
    assert_eq!(page.host.get_attribute("data-label"), None);
    assert_eq!(page.button().text_content().unwrap(), "Place order");
    let refused = widget.update(&js_object(&[("getOrderToken", "token".into())]));
    assert_eq!(
        error_message(refused),
        "ChargeOnce: getOrderToken must be a function"
    );
    let refused = widget.update(&JsValue::from_str("amount=1").unchecked_into());
    assert_eq!(
        error_message(refused),
        "ChargeOnce: the options must be an object"
    );
    widget.destroy();
    page.unmount();
}

/// The message of the JS error `result` failed with.
fn error_message<T>(result: Result<T, JsValue>) -> String {
    let error = result.err().expect("an error");
    error.unchecked_into::<js_sys::Error>().message().into()
}

#[wasm_bindgen_test]
fn mount_says_what_is_wrong_with_what_it_was_given() {
    let not_an_element = chargeonce_widget::mount(JsValue::NULL.unchecked_into(), None);
    assert_eq!(
        error_message(not_an_element),
        "ChargeOnce: mount needs an HTML element"
    );
    let host: HtmlElement = web_sys::window()
        .unwrap()
        .document()
        .unwrap()
        .create_element("div")
        .unwrap()
        .unchecked_into();
    let bad_options =
        chargeonce_widget::mount(host.clone(), Some(JsValue::from(42).unchecked_into()));
    assert_eq!(
        error_message(bad_options),
        "ChargeOnce: the options must be an object"
    );
    let bad_hook = js_object(&[("amount", 2500.into()), ("handleAction", "stripe".into())]);
    let bad_hook = chargeonce_widget::mount(host.clone(), Some(bad_hook));
    assert_eq!(
        error_message(bad_hook),
        "ChargeOnce: handleAction must be a function"
    );
    assert!(host.shadow_root().is_none(), "nothing was mounted");
    assert_eq!(
        host.get_attribute("data-amount"),
        None,
        "refused options change nothing"
    );
}
