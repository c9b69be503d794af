// End-to-end tests of the demo shop in two real browser engines, headless:
// Debian's Chromium and Firefox ESR, both driven by puppeteer-core (CDP for
// Chromium, WebDriver BiDi for Firefox), against the stack `make dev` runs:
// the Worker under `wrangler dev` and the payment simulator, started by the
// `stack` binary on free ports. Every story runs once per engine. "Charged
// once" is read from the simulator's ledger, and from the shop's ledger
// panel a person would look at.
//
// puppeteer-core rather than playwright-core (which the other e2e files use,
// in Chromium only): playwright-core 1.65's Firefox-over-BiDi channel sends
// a command Firefox ESR 153 does not know ("emulation.setMediaFeaturesOverride:
// unknown command"), while puppeteer-core 24 drives it (docs/toolchain.md).
//
// Run by `make test` (scripts/test-e2e.sh); SHOP_ENGINES=firefox (or
// chromium) runs one engine. A failing test leaves a screenshot in
// tests/artifacts/.

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  ARTIFACTS, backendKey, launchBrowser, signOrderToken, simulator as hook, startStack,
} from "./support.mjs";

const ENGINES = (process.env.SHOP_ENGINES ?? "chromium,firefox").split(",");

let stack, edge;

before(async () => {
  stack = await startStack();
  edge = stack.edge;
});

after(async () => {
  await stack?.stop();
});

const simulator = (path, body) => hook(stack.simUrl, path, body);

const chargesFor = async (orderRef) =>
  (await simulator("ledger")).charges.filter((c) => c.order_ref === orderRef);

/** The stories, each run in each engine (at the end of this file). */
const stories = [];

/**
 * A story: it runs on a fresh shop page (its own session storage) with a
 * reset simulator, once per engine. `body` gets the shop's helpers, with
 * `engine` and `browser`.
 */
function shopTest(name, body) {
  stories.push({ name, body });
}

/** A fresh browser context (nothing shared with another, as another device) and its page, at 1280x1000. */
async function openPage(browser) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 1280, height: 1000 });
  return { context, page };
}

/**
 * Waits until the shop shows the widget. Visible, not only present: the shop
 * hides it until its server has priced the cart and set data-amount, and a
 * story that edits the attributes before then would have its edit overwritten.
 */
function untilPriced(page) {
  return page.waitForSelector("#checkout >>> button", { visible: true });
}

/** Waits until the text of `selector` (` >>> ` steps into a shadow root) includes `text`. */
function waitForText(page, selector, text, timeout = 20_000) {
  return page.waitForFunction((selector, text) => {
    const [first, ...inner] = selector.split(" >>> ");
    let node = document.querySelector(first);
    for (const part of inner) node = node?.shadowRoot?.querySelector(part);
    return node?.textContent.includes(text) ?? false;
  }, { timeout, polling: 100 }, selector, text);
}

/** Page-object helpers for the shop. */
function shop(page) {
  const status = "#checkout >>> [role=status]";
  const field = (id, js, arg) => page.$eval(`#${id}`, js, arg);
  return {
    page,
    placeOrder: () => page.locator("#checkout >>> button").click(),
    doubleClickPlaceOrder: () => page.locator("#checkout >>> button").click({ count: 2 }),
    addToCart: (id) => page.locator(`[data-product=${id}]`).click(),
    orderRef: () => field("order-ref", (e) => e.textContent.trim()),
    waitForStatus: (text, timeout) => waitForText(page, status, text, timeout),
    statusText: () => page.$eval(status, (e) => e.textContent),
    toggle: (id, on = true) => field(id, (e, on) => { if (e.checked !== on) e.click(); }, on),
    setNumber: (id, value) => field(id, (e, value) => {
      e.value = value;
      e.dispatchEvent(new Event("input", { bubbles: true }));
      e.dispatchEvent(new Event("change", { bubbles: true }));
    }, String(value)),
    choosePaymentMethod: (value) => page.select("#payment-method", value),
    click: (selector) => page.locator(selector).click(),
    waitForLedger: (text) => waitForText(page, "#ledger-summary", text),
    // The keys the widget sent, in order, from its request log.
    sentKeys: () => page.evaluate(() => window.__sentKeys ?? []),
  };
}

/** Records each request's key as the widget announces it. */
async function recordKeys(page) {
  await page.evaluate(() => {
    window.__sentKeys = [];
    document.addEventListener("chargeonce:attempt", (e) => window.__sentKeys.push(e.detail.key));
  });
}

/** Waits until the chaos panel shows the simulator's faults (it polls each second). */
async function settle() {
  await new Promise((resolve) => setTimeout(resolve, 300));
}

shopTest("a double click with the naive backend charges once", async (s) => {
  await s.toggle("chaos-naive");
  await settle();
  await s.doubleClickPlaceOrder();
  await s.waitForStatus("Order placed");
  const charges = await chargesFor(await s.orderRef());
  assert.equal(charges.length, 1);
  await s.waitForLedger("1 charge for 1 order, one each.");
});

shopTest("a response dropped after the charge is retried with the same key and charges once", async (s) => {
  await recordKeys(s.page);
  await s.addToCart("kettle");
  await s.toggle("chaos-drop");
  await settle();
  await s.placeOrder();
  await s.waitForStatus("Order placed");
  const keys = await s.sentKeys();
  assert.ok(keys.length >= 2, `the widget retried (${keys.length} requests)`);
  assert.equal(new Set(keys).size, 1, "every retry carried the same key");
  const charges = await chargesFor(await s.orderRef());
  assert.equal(charges.length, 1);
  assert.equal(charges[0].idempotency_key, backendKey("cus_demo", keys[0]));
  // The picture for the README: the shop after a chaotic order.
  await s.waitForLedger("one each");
  if (s.engine === "chromium") await s.page.screenshot({ path: `${ARTIFACTS}storefront.png` });
});

shopTest("the backend failing the next 2 requests still ends in one charge", async (s) => {
  await recordKeys(s.page);
  await s.setNumber("chaos-fail", 2);
  await settle();
  await s.placeOrder();
  await s.waitForStatus("Order placed");
  assert.equal((await s.sentKeys()).length, 3, "two failures, then the charge");
  assert.equal((await chargesFor(await s.orderRef())).length, 1);
});

shopTest("a reload while the order is in flight charges once and shows it placed", async (s) => {
  await s.setNumber("chaos-latency", 1500);
  await settle();
  await s.placeOrder();
  await s.waitForStatus("Placing order");
  const orderRef = await s.orderRef();
  await s.page.reload();
  await s.waitForStatus("Order placed");
  assert.equal(await s.orderRef(), orderRef, "the reload kept the order");
  await simulator("faults", { latency_ms: 0 });
  assert.equal((await chargesFor(orderRef)).length, 1);
});

shopTest("a changed cart after a placed order is a second charge under a new key", async (s) => {
  await recordKeys(s.page);
  await s.placeOrder();
  await s.waitForStatus("Order placed");
  const first = await s.orderRef();
  await s.addToCart("beans");
  await s.placeOrder();
  await s.waitForStatus("Order placed");
  const second = await s.orderRef();
  const keys = await s.sentKeys();
  assert.notEqual(first, second);
  assert.equal(keys.length, 2);
  assert.notEqual(keys[0], keys[1], "a new order, a new key");
  const [a] = await chargesFor(first);
  const [b] = await chargesFor(second);
  assert.equal(b.amount, a.amount + 1600);
});

shopTest("a page that lowers the amount is refused with a clear message and charges nothing", async (s) => {
  await recordKeys(s.page);
  // What a customer could do in the console: the token still says the real price.
  await s.page.evaluate(() => { document.getElementById("checkout").dataset.amount = "1"; });
  await s.placeOrder();
  await s.waitForStatus("was issued for");
  assert.match(await s.statusText(), /amount is "1" but the order_token was issued for "2400"/);
  assert.equal((await s.sentKeys()).length, 1, "a refusal is final, not retried");
  assert.equal((await chargesFor(await s.orderRef())).length, 0);
});

shopTest("an order token that expires while the order is retried is renewed by the shop, same key, one charge", async (s) => {
  await recordKeys(s.page);
  await s.page.evaluate(() => {
    window.__tokenNeeded = 0;
    document.addEventListener("chargeonce:token-needed", () => window.__tokenNeeded++);
  });
  const orderRef = await s.orderRef();
  const amount = Number(await s.page.evaluate(() => document.getElementById("checkout").dataset.amount));
  // The shop's own token lives 15 minutes; this one for the same order
  // expires within 2 to 3 s. The backend then takes 4 s to fail the first
  // request (nothing charged), so its retry reaches the edge with the token
  // expired: the edge refuses to forward it, the widget asks the shop for a
  // fresh token and sends the same order again, with the same key.
  const expiring = signOrderToken({
    order_ref: orderRef, amount, currency: "usd", customer: "cus_demo",
    expires_at: Math.floor(Date.now() / 1000) + 3,
  });
  await s.page.evaluate((token) => { document.getElementById("checkout").dataset.orderToken = token; }, expiring);
  await simulator("faults", { fail_next: 1, latency_ms: 4000 });
  await settle();
  await s.placeOrder();
  await s.waitForStatus("Order placed", 30_000);
  await simulator("faults", { latency_ms: 0 });
  const keys = await s.sentKeys();
  assert.equal(keys.length, 3, "the failed request, its retry refused for the token, the resend");
  assert.equal(new Set(keys).size, 1, "one key throughout");
  assert.equal(await s.page.evaluate(() => window.__tokenNeeded), 1, "one fresh token asked for");
  const renewed = await s.page.evaluate(() => document.getElementById("checkout").dataset.orderToken);
  assert.notEqual(renewed, expiring, "the shop set a fresh token");
  const charges = await chargesFor(orderRef);
  assert.equal(charges.length, 1);
  assert.equal(charges[0].idempotency_key, backendKey("cus_demo", keys[0]));
});

shopTest("a 3-D Secure card is placed only after the customer confirms with their bank, once", async (s) => {
  await recordKeys(s.page);
  await s.choosePaymentMethod("pm_card_threeDSecure2Required");
  await s.placeOrder();
  await s.waitForStatus("Confirm the payment with your bank");
  await s.page.waitForSelector("#bank", { visible: true });
  const orderRef = await s.orderRef();
  assert.equal((await chargesFor(orderRef)).length, 0, "nothing is charged before the customer confirms");
  await s.click("#bank-confirm");
  await s.waitForStatus("Order placed");
  const keys = await s.sentKeys();
  assert.equal(keys.length, 2, "the order, and the same order again after authentication");
  assert.equal(new Set(keys).size, 1, "one key before and after authentication");
  const charges = await chargesFor(orderRef);
  assert.equal(charges.length, 1);
  assert.equal(charges[0].idempotency_key, backendKey("cus_demo", keys[0]));
});

shopTest("a failed 3-D Secure challenge charges nothing, says so, and the next click takes a new key", async (s) => {
  await recordKeys(s.page);
  await s.choosePaymentMethod("pm_card_threeDSecure2Required");
  await s.placeOrder();
  await s.click("#bank-fail");
  await s.waitForStatus("did not go through");
  assert.match(await s.statusText(), /You were not charged/);
  const orderRef = await s.orderRef();
  assert.equal((await chargesFor(orderRef)).length, 0);
  await s.choosePaymentMethod("pm_card_visa");
  await s.placeOrder();
  await s.waitForStatus("Order placed");
  const keys = await s.sentKeys();
  assert.equal(keys.length, 3, "the order, its resend after the challenge, the new attempt");
  assert.equal(keys[0], keys[1]);
  assert.notEqual(keys[1], keys[2], "a new attempt, a new key");
  assert.equal((await chargesFor(orderRef)).length, 1);
});

shopTest("a declined card says so and charges nothing", async (s) => {
  await s.choosePaymentMethod("pm_card_visa_chargeDeclinedInsufficientFunds");
  await s.placeOrder();
  await s.waitForStatus("Card declined");
  assert.equal((await chargesFor(await s.orderRef())).length, 0);
});

shopTest("the same order on a second device waits for the first and is shown as already placed, one charge", async (s) => {
  // The first device's order takes a while at the backend.
  await s.setNumber("chaos-latency", 2500);
  await settle();
  const orderRef = await s.orderRef();
  // The shop's "second device" link: the same order and cart. A fresh
  // browser context shares nothing with this one, as another device would.
  const link = new URL(await s.page.$eval("#second-device", (a) => a.getAttribute("href")));
  assert.equal(link.searchParams.get("order"), orderRef);
  const other = await openPage(s.browser);
  try {
    const phone = shop(other.page);
    await phone.page.goto(`${edge}/${link.search}`);
    await untilPriced(phone.page);
    assert.equal(await phone.orderRef(), orderRef);
    await recordKeys(phone.page);
    await s.placeOrder();
    await s.waitForStatus("Placing order");
    await phone.placeOrder();
    await phone.waitForStatus("This order is being placed on another device.");
    await s.waitForStatus("Order placed");
    await phone.waitForStatus("This order was already placed.");
    const [key] = await phone.sentKeys();
    const charges = await chargesFor(orderRef);
    assert.equal(charges.length, 1, "one order, one charge");
    assert.notEqual(charges[0].idempotency_key, backendKey("cus_demo", key), "charged under the first device's key");
    await phone.waitForLedger("1 charge for 1 order, one each.");
  } finally {
    await other.context.close();
    await simulator("faults", { latency_ms: 0 });
  }
});

for (const engine of ENGINES) {
  describe(engine, () => {
    let browser;
    before(async () => { browser = await launchBrowser(engine); });
    after(async () => { await browser?.close(); });
    for (const { name, body } of stories) {
      test(name, async () => {
        await simulator("reset", {});
        const { context, page } = await openPage(browser);
        const errors = [];
        page.on("pageerror", (e) => errors.push(e.message));
        try {
          await page.goto(edge);
          await untilPriced(page);
          const agent = await page.evaluate(() => navigator.userAgent);
          assert.match(agent, { chromium: /Chrome\//, firefox: /Firefox\// }[engine], "the engine asked for");
          await body({ ...shop(page), engine, browser });
          assert.deepEqual(errors, [], "the page threw");
        } catch (error) {
          await page.screenshot({ path: `${ARTIFACTS}${engine}-${name.replace(/\W+/g, "-")}.png`, fullPage: true });
          throw error;
        } finally {
          await context.close();
        }
      });
    }
  });
}
