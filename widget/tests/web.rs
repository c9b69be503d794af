//! Browser tests of the widget, run in headless Chromium by
//! `scripts/test-widget.sh` (`wasm-pack test --headless --chrome`). Each test
//! mounts into a fresh element with a scripted transport and network, clicks
//! the real button, and reads what a page would read: the DOM, the events,
//! the requests sent.

// Natively there is no DOM to test against; `cargo test --workspace` builds
// this file as an empty test binary.
#![cfg(target_arch = "wasm32")]
// wasm_bindgen_test functions are not #[test]s to clippy, so its
// allow-unwrap-in-tests does not reach them; a panic is the failure report.
#![allow(clippy::unwrap_used)]

use chargeonce_widget::transport::{
    HttpAnswer, Network, NoAnswer, OrderPost, Ports, Transport, WebLocks,
};
use futures_util::future::LocalBoxFuture;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use wasm_bindgen::JsCast;
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

#[derive(Default)]
struct Scripted {
    script: RefCell<VecDeque<Script>>,
    sent: RefCell<Vec<(OrderPost, f64)>>,
}

impl Transport for Scripted {
    fn send(&self, post: OrderPost) -> LocalBoxFuture<'static, Result<HttpAnswer, NoAnswer>> {
        self.sent
            .borrow_mut()
            .push((post.clone(), js_sys::Date::now()));
        let step = self
            .script
            .borrow_mut()
            .pop_front()
            .unwrap_or(Script::Answer(200, OK));
        Box::pin(async move {
            match step {
                Script::Answer(status, body) => Ok(HttpAnswer {
                    status,
                    body: body.to_owned(),
                    replayed: false,
                    retry_after_secs: None,
                }),
                Script::AnswerWith(answer) => Ok(answer),
                Script::NetworkError => Err(NoAnswer::Network("scripted failure".into())),
                Script::Hang => {
                    gloo_timers::future::TimeoutFuture::new(post.timeout_ms as u32).await;
                    Err(NoAnswer::Timeout)
                }
            }
        })
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
    transport: Rc<Scripted>,
    network: Rc<FakeNetwork>,
    events: Rc<RefCell<Vec<(String, Value)>>>,
    _listeners: Vec<gloo_events::EventListener>,
}

fn unique_ref() -> String {
    format!("ord_{}", (js_sys::Math::random() * 1e12) as u64)
}

impl Page {
    fn mount(order_ref: &str, script: Vec<Script>) -> Self {
        Self::mount_with(order_ref, script, Rc::new(FakeNetwork::default()))
    }

    fn mount_with(order_ref: &str, script: Vec<Script>, network: Rc<FakeNetwork>) -> Self {
        let document = web_sys::window().unwrap().document().unwrap();
        let host: HtmlElement = document.create_element("div").unwrap().unchecked_into();
        for (name, value) in [
            ("data-chargeonce", ""),
            ("data-endpoint", "/v1/orders"),
            ("data-order-ref", order_ref),
            ("data-amount", "1999"),
            ("data-currency", "usd"),
            ("data-payment-method", "pm_card_visa"),
            // Short timers keep the suite fast.
            ("data-retry-base-ms", "10"),
            ("data-retry-cap-ms", "40"),
            ("data-timeout-ms", "100"),
        ] {
            host.set_attribute(name, value).unwrap();
        }
        document.body().unwrap().append_child(&host).unwrap();
        let events = Rc::new(RefCell::new(Vec::new()));
        let listeners = [
            "chargeonce:attempt",
            "chargeonce:retry",
            "chargeonce:success",
            "chargeonce:failure",
        ]
        .into_iter()
        .map(|name| {
            let events = Rc::clone(&events);
            // Listen on the document: the events must bubble out of the host.
            gloo_events::EventListener::new(&document, name, move |event| {
                let event: &web_sys::CustomEvent = event.unchecked_ref();
                let detail = js_sys::JSON::stringify(&event.detail()).unwrap();
                let detail = serde_json::from_str(&String::from(detail)).unwrap();
                events.borrow_mut().push((event.type_(), detail));
            })
        })
        .collect();
        let transport = Rc::new(Scripted {
            script: RefCell::new(script.into()),
            ..Scripted::default()
        });
        let ports = Ports {
            transport: transport.clone(),
            network: network.clone(),
            // The browser's real Web Locks: two widgets on one page stand in
            // for two tabs of one site.
            locks: Rc::new(WebLocks),
        };
        chargeonce_widget::mount_with_ports(host.clone(), ports).unwrap();
        Self {
            host,
            transport,
            network,
            events,
            _listeners: listeners,
        }
    }

    fn button(&self) -> HtmlButtonElement {
        self.host
            .shadow_root()
            .unwrap()
            .query_selector("button")
            .unwrap()
            .unwrap()
            .unchecked_into()
    }

    fn click_place_order(&self) {
        self.button().click();
    }

    fn status_text(&self) -> String {
        let status = self
            .host
            .shadow_root()
            .unwrap()
            .query_selector("[role=status]")
            .unwrap()
            .unwrap();
        status.text_content().unwrap_or_default()
    }

    fn keys_sent(&self) -> Vec<String> {
        self.transport
            .sent
            .borrow()
            .iter()
            .map(|(p, _)| p.key.clone())
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
    assert_eq!(page.status_text(), "");
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
async fn a_changed_payload_gets_a_new_key() {
    let page = unconfirmed_page().await;
    page.host.set_attribute("data-amount", "2999").unwrap();
    page.click_place_order();
    page.until_status("Order placed").await;
    let sent = page.transport.sent.borrow();
    assert_ne!(sent[0].0.key, sent[1].0.key);
    assert!(sent[1].0.body.contains("\"amount\":2999"));
    drop(sent);
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
async fn a_remount_mid_attempt_resumes_with_the_same_key() {
    let (order_ref, key) = interrupted_order().await;
    let second = Page::mount(&order_ref, vec![Script::Answer(200, OK)]);
    second.until_status("Order placed").await;
    assert_eq!(second.keys_sent(), [key]);
    // And a third mount shows the order as placed without sending anything.
    let third = Page::mount(&order_ref, vec![]);
    leptos::task::tick().await;
    assert_eq!(third.status_text(), "Order placed");
    assert!(third.keys_sent().is_empty());
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
    assert_eq!(second.keys_sent(), [key]);
    second.unmount();
}

#[wasm_bindgen_test]
async fn retry_after_is_honoured() {
    let busy = HttpAnswer {
        status: 503,
        body: "{}".into(),
        replayed: false,
        retry_after_secs: Some(1),
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
async fn offline_sends_nothing_until_online() {
    let network = Rc::new(FakeNetwork::default());
    network.offline.set(true);
    let page = Page::mount_with(&unique_ref(), vec![Script::Answer(200, OK)], network);
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
    let replayed = HttpAnswer {
        status: 200,
        body: OK.into(),
        replayed: true,
        retry_after_secs: None,
    };
    let page = Page::mount(
        &unique_ref(),
        vec![Script::NetworkError, Script::AnswerWith(replayed)],
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
    page.host.set_attribute("data-customer", "cus_1").unwrap();
    page.host
        .set_attribute("data-order-token", "v1.first.signature")
        .unwrap();
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
