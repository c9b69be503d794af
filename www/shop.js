// The demo shop around the Place Order widget: products, a cart that the
// "shop's server" prices and signs (the Worker's /demo/order-token route), and
// the backstage panels (ledger, chaos, request log) that read and steer the
// payment simulator through the Worker's /__sim routes. Both routes exist
// only under `make dev`. The bank's 3-D Secure challenge is a dialog here
// (Stripe.js shows the real one) that tells the simulator the customer's
// answer.

import { mount } from "/pkg/chargeonce.js";

// Prices here are for display. What is charged is what the server's own
// catalogue says (edge/src/demo.rs), signed into the order token.
const CUSTOMER = "cus_demo";
const PRODUCTS = [
  { id: "pourover", name: "Ceramic pour-over", price: 2400 },
  { id: "kettle", name: "Gooseneck kettle", price: 5900 },
  { id: "beans", name: "Single-origin beans, 250 g", price: 1600 },
  { id: "filters", name: "Paper filters ×100", price: 600 },
];

const $ = (id) => document.getElementById(id);
const money = (cents) => `$${(cents / 100).toFixed(2)}`;
const shortKey = (key) => key.slice(0, 8);
// The backend's key is derived from the customer and the widget's key
// ("chargeonce_" and a hash), so its tail is the part that tells keys apart.
const backendKeyTail = (key) => key.slice(-8);
const newOrderRef = () => `ord_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

// The cart and the order reference live in sessionStorage, so a reload in the
// middle of checkout sends the same payload and the widget resumes its key.
// A link from "a second device" (?order=…&cart=…) brings the same order.
const shared = new URLSearchParams(location.search);
const state = {
  cart: JSON.parse(shared.get("cart") ?? sessionStorage.getItem("shop-cart") ?? "{}"),
  orderRef: shared.get("order") ?? sessionStorage.getItem("shop-order-ref") ?? newOrderRef(),
  placed: !shared.has("order") && sessionStorage.getItem("shop-placed") === "1",
  paymentMethod: sessionStorage.getItem("shop-payment-method") ?? "pm_card_visa",
};
if (shared.has("order")) history.replaceState(null, "", location.pathname);

// The same order on "a second device": this server under its other
// loopback name is another origin to the browser, so the window there
// shares no storage with this one and its widget makes a key of its own, as
// the customer's phone would. The edge then holds the order to one charge.
function secondDeviceLink() {
  const url = new URL(location.href);
  url.hostname = url.hostname === "localhost" ? "127.0.0.1" : "localhost";
  url.search = new URLSearchParams({ order: state.orderRef, cart: JSON.stringify(state.cart) });
  return url.href;
}

function save() {
  sessionStorage.setItem("shop-cart", JSON.stringify(state.cart));
  sessionStorage.setItem("shop-order-ref", state.orderRef);
  sessionStorage.setItem("shop-placed", state.placed ? "1" : "0");
  sessionStorage.setItem("shop-payment-method", state.paymentMethod);
}

// The payment method is part of what the widget sends; another card after a
// decline is a new attempt, with a new key.
function wirePaymentMethod() {
  const select = $("payment-method");
  select.value = state.paymentMethod;
  $("checkout").dataset.paymentMethod = state.paymentMethod;
  select.addEventListener("change", () => {
    state.paymentMethod = select.value;
    $("checkout").dataset.paymentMethod = select.value;
    save();
  });
}

// The widget's handleAction: shows the bank's challenge for the intent the
// client secret names and tells the simulator what the customer answered.
// The widget then sends the order again with the same key and shows the
// outcome.
async function bankChallenge(clientSecret) {
  const intent = clientSecret.split("_secret_")[0];
  const dialog = $("bank");
  $("bank-intent").textContent = intent;
  dialog.showModal();
  const outcome = await new Promise((resolve) => {
    $("bank-confirm").onclick = () => resolve("succeed");
    $("bank-fail").onclick = () => resolve("fail");
    dialog.oncancel = () => resolve("fail");
  });
  dialog.close();
  log(`the customer ${outcome === "succeed" ? "confirmed" : "failed"} the bank's challenge for ${intent}`, outcome === "succeed" ? "good" : "bad");
  await sim(`payment_intents/${intent}/authenticate`, { outcome });
}

function changeCart(id, delta) {
  // A cart changed after a placed order is a new order.
  if (state.placed) {
    state.orderRef = newOrderRef();
    state.placed = false;
  }
  const quantity = Math.max(0, (state.cart[id] ?? 0) + delta);
  if (quantity === 0) delete state.cart[id];
  else state.cart[id] = quantity;
  save();
  renderCart();
}

function renderProducts() {
  $("products").replaceChildren(...PRODUCTS.map((p) => {
    const item = document.createElement("li");
    item.className = "product";
    item.innerHTML = `<span class="name"></span><span class="price"></span><button type="button">Add to cart</button>`;
    item.querySelector(".name").textContent = p.name;
    item.querySelector(".price").textContent = money(p.price);
    const button = item.querySelector("button");
    button.dataset.product = p.id;
    button.addEventListener("click", () => changeCart(p.id, 1));
    return item;
  }));
}

function renderCart() {
  const lines = PRODUCTS.filter((p) => state.cart[p.id]);
  const total = lines.reduce((sum, p) => sum + p.price * state.cart[p.id], 0);
  $("cart-lines").replaceChildren(...lines.map((p) => {
    const line = document.createElement("li");
    line.className = "cart-line";
    line.innerHTML = `<span></span><span class="qty"><button type="button" aria-label="One fewer">−</button><span class="n"></span><button type="button" aria-label="One more">+</button></span><strong></strong>`;
    line.children[0].textContent = p.name;
    line.querySelector(".n").textContent = state.cart[p.id];
    line.children[2].textContent = money(p.price * state.cart[p.id]);
    const [fewer, more] = line.querySelectorAll("button");
    fewer.addEventListener("click", () => changeCart(p.id, -1));
    more.addEventListener("click", () => changeCart(p.id, 1));
    return line;
  }));
  $("cart-empty").hidden = lines.length > 0;
  $("cart-total").textContent = money(total);
  $("order-ref").textContent = state.orderRef;
  $("second-device").href = secondDeviceLink();
  priceAndSign();
}

// The shop's server prices the cart and signs the order token for it.
async function issueToken() {
  const response = await fetch("/demo/order-token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ customer: CUSTOMER, order_ref: state.orderRef, items: state.cart }),
  });
  const issued = await response.json();
  if (!response.ok) throw new Error(issued.detail ?? response.status);
  return issued;
}

// The widget reads its data-* attributes at each click: a new amount is a
// new payload, and so a new idempotency key. Until the server has priced the
// current cart, the button is hidden, so no click can send a stale token.
let pricing = 0;
async function priceAndSign() {
  const checkout = $("checkout");
  checkout.hidden = true;
  const request = ++pricing;
  if (Object.keys(state.cart).length === 0) return;
  try {
    const issued = await issueToken();
    if (request !== pricing) return; // the cart changed meanwhile
    checkout.dataset.orderRef = issued.order_ref;
    checkout.dataset.amount = String(issued.amount);
    checkout.dataset.customer = issued.customer;
    checkout.dataset.orderToken = issued.order_token;
    checkout.hidden = false;
    $("pricing-status").textContent = "";
  } catch (e) {
    if (request === pricing) $("pricing-status").textContent = `The shop could not price the cart: ${e.message}`;
  }
}

// ---- backstage: the simulator, through the Worker's dev-only routes ----

async function sim(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(`/__sim/${path}`, init);
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.status === 204 ? null : response.json();
}

function renderLedger({ charges }) {
  const perOrder = new Map();
  for (const c of charges) perOrder.set(c.order_ref, (perOrder.get(c.order_ref) ?? 0) + 1);
  const doubled = [...perOrder].filter(([, n]) => n > 1);
  const summary = $("ledger-summary");
  summary.classList.toggle("double", doubled.length > 0);
  summary.textContent = charges.length === 0
    ? "No charges yet."
    : `${charges.length} charge${charges.length === 1 ? "" : "s"} for ${perOrder.size} order${perOrder.size === 1 ? "" : "s"}` +
      (doubled.length ? ` — charged twice: ${doubled.map(([ref, n]) => `${ref} ×${n}`).join(", ")}` : ", one each.");
  $("ledger-rows").replaceChildren(...[...charges].reverse().map((c) => {
    const row = document.createElement("tr");
    row.className = perOrder.get(c.order_ref) > 1 ? "double" : "";
    const key = c.idempotency_key ?? "—";
    for (const [text, full] of [[new Date(c.created * 1000).toLocaleTimeString()], [c.order_ref], [money(c.amount)], ["…" + backendKeyTail(key), key], [c.id]]) {
      const cell = document.createElement("td");
      const code = document.createElement("code");
      code.textContent = text;
      if (full) code.title = full;
      cell.append(code);
      row.append(cell);
    }
    return row;
  }));
}

function renderFaults(faults) {
  // The simulator counts these down, so the panel follows it.
  $("chaos-naive").checked = !faults.honor_idempotency;
  $("chaos-drop").checked = faults.drop_after_commit_next > 0;
  if (document.activeElement !== $("chaos-fail")) $("chaos-fail").value = faults.fail_next;
  if (document.activeElement !== $("chaos-latency")) $("chaos-latency").value = faults.latency_ms;
}

async function poll() {
  try {
    const [ledger, faults] = await Promise.all([sim("ledger"), sim("faults")]);
    renderLedger(ledger);
    renderFaults(faults);
    $("chaos-status").textContent = "";
  } catch {
    $("chaos-status").textContent = "The simulator is not reachable: the ledger and chaos panels work under `make dev` only.";
  }
}

async function setFaults(patch) {
  try {
    renderFaults(await sim("faults", patch));
  } catch (e) {
    $("chaos-status").textContent = `Could not change the simulator: ${e.message}`;
  }
}

// "Simulate offline": the widget asks navigator.onLine before each send and
// waits for the window's `online` event, so both are what we steer.
let simulatedOffline = false;
const realOnLine = Object.getOwnPropertyDescriptor(Navigator.prototype, "onLine");
Object.defineProperty(Navigator.prototype, "onLine", {
  configurable: true,
  get() { return !simulatedOffline && realOnLine.get.call(this); },
});

function wireChaos() {
  $("chaos-naive").addEventListener("change", (e) => setFaults({ honor_idempotency: !e.target.checked }));
  $("chaos-drop").addEventListener("change", (e) => setFaults({ drop_after_commit_next: e.target.checked ? 1 : 0 }));
  $("chaos-fail").addEventListener("change", (e) => setFaults({ fail_next: Number(e.target.value) || 0 }));
  $("chaos-latency").addEventListener("change", (e) => setFaults({ latency_ms: Number(e.target.value) || 0 }));
  $("chaos-offline").addEventListener("change", (e) => {
    simulatedOffline = e.target.checked;
    if (!simulatedOffline) window.dispatchEvent(new Event("online"));
  });
  $("chaos-reset").addEventListener("click", async () => {
    await sim("reset", {}).catch(() => {});
    poll();
  });
}

// ---- the request log, from the widget's events ----

function log(text, tone = "") {
  const entry = document.createElement("li");
  entry.className = tone;
  entry.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("log").append(entry);
  entry.scrollIntoView({ block: "nearest" });
}

document.addEventListener("chargeonce:attempt", ({ detail }) =>
  log(`→ ${detail.method} /v1/orders #${detail.attempt}, key ${shortKey(detail.key)}…` +
    (detail.method === "GET" ? " (what became of it?)" : "")));
document.addEventListener("chargeonce:retry", ({ detail }) =>
  log(`← ${detail.status ?? "no answer"}; retry ${detail.retry} of ${detail.of} in ${Math.round(detail.delay_ms)} ms`, "bad"));
document.addEventListener("chargeonce:success", ({ detail }) => {
  log(`← 200 ${detail.replayed ? "replayed" : "charged"} ${detail.response.id ?? ""}, key ${shortKey(detail.key)}…` +
    (detail.originalKey ? ` (placed earlier under key ${shortKey(detail.originalKey)}…, on another device)` : ""), "good");
  state.placed = true;
  save();
  poll();
  // The widget settled an earlier cart (changed since) as placed: that
  // order is done, and the cart on the page is a new one.
  if (detail.response.amount !== undefined && String(detail.response.amount) !== $("checkout").dataset.amount) {
    state.orderRef = newOrderRef();
    state.placed = false;
    save();
    renderCart();
  }
});
// The edge found the order token expired (a checkout left open too long):
// the shop's server signs the order again, and the widget resends it with
// the same idempotency key. The button stays on the page meanwhile.
document.addEventListener("chargeonce:token-needed", async ({ target, detail }) => {
  log(`← 403 order token expired, key ${shortKey(detail.key)}…; the shop signs a fresh one`, "bad");
  try {
    target.dataset.orderToken = (await issueToken()).order_token;
  } catch (e) {
    log(`The shop could not renew the order token: ${e.message}`, "bad");
  }
});
document.addEventListener("chargeonce:action", ({ detail }) =>
  log(`← 200 requires_action ${detail.payment_intent}: the bank asks the customer to confirm`));
document.addEventListener("chargeonce:failure", ({ detail }) =>
  log(`← ${detail.status ?? "unconfirmed"}: ${detail.message}`, "bad"));

renderProducts();
if (Object.keys(state.cart).length === 0 && !sessionStorage.getItem("shop-cart")) {
  state.cart = { pourover: 1 };
}
save();
wirePaymentMethod();
renderCart();
mount($("checkout"), { handleAction: bankChallenge });
wireChaos();
poll();
setInterval(poll, 1000);
