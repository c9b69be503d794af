// End-to-end tests of the widget embedded in a storefront on another origin,
// as the README's "Embedding from another origin" shows it: the edge (the
// stack `make dev` runs, with ALLOWED_ORIGINS naming one storefront) serves
// the widget and takes the orders; storefront pages are served by servers
// of this test, on other ports, under the strict Content-Security-Policy the
// README gives. Headless Chromium, as in shop.test.mjs.
//
// Run by `make test` (scripts/test-e2e.sh). A failing test leaves a
// screenshot in tests/artifacts/.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  ARTIFACTS, backendKey, launchChromium, serve, signOrderToken, simulator as hook, startStack,
} from "./support.mjs";

const CUSTOMER = "cus_embed";
const ACCENT = "rgb(31, 111, 235)"; // the widget's default --chargeonce-accent, #1f6feb

let stack, browser, embed;
let storefront, foreign, cdn, cdnDir;

before(async () => {
  // The storefront the edge takes orders from, another it does not, and a
  // "CDN" serving copies of the widget's files (one with its wasm tampered).
  [storefront, foreign, cdn] = await Promise.all([serve(), serve(), serve()]);
  stack = await startStack({ ALLOWED_ORIGINS: storefront.origin });
  browser = await launchChromium();
  // What the build recorded and the edge serves: the version's paths and
  // its SRI hashes (checked against the bytes in the first test).
  embed = await (await fetch(`${stack.edge}/pkg/embed.json`)).json();
  cdnDir = mkdtempSync(join(tmpdir(), "chargeonce-cdn-"));
  const built = new URL(`../../www/pkg/${embed.version}/`, import.meta.url).pathname;
  for (const copy of ["good", "tampered"]) cpSync(built, join(cdnDir, copy, embed.version), { recursive: true });
  const wasm = join(cdnDir, "tampered", embed.version, "chargeonce_bg.wasm");
  const bytes = readFileSync(wasm);
  bytes[bytes.length >> 1] ^= 0x01;
  writeFileSync(wasm, bytes);
  cdn.files = cdnDir;
});

after(async () => {
  await browser?.close();
  await stack?.stop();
  await Promise.all([storefront, foreign, cdn].map((server) => server?.close()));
  if (cdnDir) rmSync(cdnDir, { recursive: true, force: true });
});

const simulator = (path, body) => hook(stack.simUrl, path, body);
const chargesFor = async (orderRef) =>
  (await simulator("ledger")).charges.filter((c) => c.order_ref === orderRef);
const sri = (bytes) => `sha384-${createHash("sha384").update(bytes).digest("base64")}`;

/**
 * The README's policy for a page that embeds the widget from `assets` and
 * orders from the edge, under `default-src 'none'`: the widget needs nothing
 * else.
 */
const policy = (assets) => {
  const connect = assets === stack.edge ? assets : `${assets} ${stack.edge}`;
  return `default-src 'none'; script-src ${assets} 'wasm-unsafe-eval'; connect-src ${connect}`;
};

/**
 * A storefront page at `path` on `server` for a fresh order, embedding the
 * widget from `assets` (the edge, or the CDN's copy under `assets`) with the
 * README's tags: the script with its SRI hash, and the preload of its wasm.
 */
function storefrontPage(server, path, { assets = stack.edge, orderRef, amount = 1500 }) {
  const base = assets === stack.edge ? `${assets}/pkg/${embed.version}` : `${assets}/${embed.version}`;
  const token = signOrderToken({
    order_ref: orderRef, amount, currency: "usd", customer: CUSTOMER,
    expires_at: Math.floor(Date.now() / 1000) + 900,
  });
  const html = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>A storefront on another origin</title>
  <link rel="preload" href="${base}/chargeonce_bg.wasm" as="fetch" type="application/wasm"
        crossorigin="anonymous" integrity="${embed.wasm_integrity}">
  <script type="module" src="${base}/chargeonce.js"
          integrity="${embed.script_integrity}" crossorigin="anonymous"></script>
</head>
<body>
  <div id="checkout" data-chargeonce data-endpoint="${stack.edge}/v1/orders"
       data-order-ref="${orderRef}" data-amount="${amount}" data-currency="usd"
       data-payment-method="pm_card_visa" data-customer="${CUSTOMER}"
       data-order-token="${token}" data-label="Place order"></div>
</body>
</html>`;
  server.pages.set(path, { html, csp: policy(assets.replace(/\/(good|tampered)$/, "")) });
  return `${server.origin}${path}`;
}

let orders = 0;
const newOrderRef = () => `emb_${Date.now().toString(36)}_${++orders}`;

/**
 * A test in a fresh browser context, with a page that records what the
 * widget sends (the keys of its requests to the edge), the events it fires,
 * the console's errors and any Content-Security-Policy violation.
 */
function embedTest(name, body) {
  test(name, async () => {
    await simulator("reset", {});
    const context = await browser.newContext();
    const page = await context.newPage();
    const seen = { keys: [], consoleErrors: [], pageErrors: [] };
    page.on("request", (request) => {
      if (request.url().startsWith(`${stack.edge}/v1/orders`) && request.method() !== "OPTIONS") {
        seen.keys.push(request.headers()["idempotency-key"]);
      }
    });
    page.on("console", (message) => { if (message.type() === "error") seen.consoleErrors.push(message.text()); });
    page.on("pageerror", (error) => seen.pageErrors.push(error.message));
    // Injected by the browser itself, so the page's policy does not apply.
    await page.addInitScript(() => {
      window.__violations = [];
      window.__events = [];
      document.addEventListener("securitypolicyviolation", (e) =>
        window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
      for (const name of ["chargeonce:success", "chargeonce:failure"]) {
        document.addEventListener(name, (e) => window.__events.push({ name, detail: e.detail }));
      }
    });
    const status = page.locator("#checkout [role=status]");
    const s = {
      page,
      seen,
      button: page.locator("#checkout button"),
      waitForStatus: (text, timeout = 20_000) => status.filter({ hasText: text }).waitFor({ timeout }),
      events: () => page.evaluate(() => window.__events),
      violations: () => page.evaluate(() => window.__violations),
    };
    try {
      await body(s);
    } catch (error) {
      await page.screenshot({ path: `${ARTIFACTS}embed-${name.replace(/\W+/g, "-")}.png` });
      throw error;
    } finally {
      await context.close();
    }
  });
}

test("the edge serves the widget to any origin: a version's files immutable and as the build hashed them, the alias short-cached", async () => {
  const get = (path) => fetch(`${stack.edge}${path}`, { headers: { Origin: foreign.origin } });
  const script = await get(embed.script);
  const wasm = await get(embed.wasm);
  for (const [response, type] of [[script, "text/javascript"], [wasm, "application/wasm"]]) {
    assert.equal(response.status, 200, response.url);
    assert.equal(response.headers.get("access-control-allow-origin"), "*", response.url);
    assert.equal(response.headers.get("cache-control"), "public, max-age=31536000, immutable", response.url);
    assert.match(response.headers.get("content-type"), new RegExp(`^${type}`), response.url);
  }
  const scriptBytes = Buffer.from(await script.arrayBuffer());
  assert.equal(sri(scriptBytes), embed.script_integrity, "the script's SRI hash, as the build printed it");
  assert.equal(sri(Buffer.from(await wasm.arrayBuffer())), embed.wasm_integrity, "the wasm's");
  assert.ok(scriptBytes.includes(`integrity:"${embed.wasm_integrity}"`), "the script fetches the wasm with its hash");
  assert.equal(embed.script, `/pkg/${embed.version}/chargeonce.js`);
  assert.equal(embed.version, createHash("sha256").update(scriptBytes).digest("hex").slice(0, 16),
    "the version is named after the script's bytes");

  const alias = await get("/pkg/chargeonce.js");
  assert.equal(alias.status, 200);
  assert.equal(alias.headers.get("access-control-allow-origin"), "*");
  assert.equal(alias.headers.get("cache-control"), "public, max-age=300");
  assert.match(await alias.text(), new RegExp(`from "\\./${embed.version}/chargeonce\\.js"`));
});

embedTest("a storefront on another origin loads the widget from the edge with SRI under a strict CSP, and a double click places one order", async (s) => {
  const orderRef = newOrderRef();
  await s.page.goto(storefrontPage(storefront, "/checkout", { orderRef }));
  await s.button.waitFor();
  // The widget's stylesheet applies under default-src 'none'.
  assert.equal(await s.button.evaluate((b) => getComputedStyle(b).backgroundColor), ACCENT);
  await s.button.dblclick();
  await s.waitForStatus("Order placed");
  assert.equal(s.seen.keys.length, 1, "a double click sends one request");
  const charges = await chargesFor(orderRef);
  assert.equal(charges.length, 1);
  assert.equal(charges[0].idempotency_key, backendKey(CUSTOMER, s.seen.keys[0]));
  const [success] = await s.events();
  assert.equal(success.name, "chargeonce:success");
  assert.equal(success.detail.key, s.seen.keys[0]);
  // The wasm came from the edge, once: the widget's fetch reused the preload.
  const wasmLoads = await s.page.evaluate(() =>
    performance.getEntriesByType("resource").filter((r) => r.name.endsWith(".wasm")).map((r) => r.name));
  assert.deepEqual(wasmLoads, [`${stack.edge}${embed.wasm}`]);
  assert.deepEqual(await s.violations(), [], "nothing the page's policy forbids");
  assert.deepEqual(s.seen.consoleErrors, []);
  assert.deepEqual(s.seen.pageErrors, []);
});

embedTest("a reload mid-order on another origin resumes with the same key and charges once", async (s) => {
  const orderRef = newOrderRef();
  await simulator("faults", { latency_ms: 1500 });
  try {
    await s.page.goto(storefrontPage(storefront, "/reload", { orderRef }));
    await s.button.click();
    await s.waitForStatus("Placing order");
    await s.page.reload();
    await s.waitForStatus("Order placed");
  } finally {
    await simulator("faults", { latency_ms: 0 });
  }
  assert.ok(s.seen.keys.length >= 2, `the order, then the reloaded page's lookup (${s.seen.keys.length} requests)`);
  assert.equal(new Set(s.seen.keys).size, 1, "one key before and after the reload");
  const charges = await chargesFor(orderRef);
  assert.equal(charges.length, 1);
  assert.equal(charges[0].idempotency_key, backendKey(CUSTOMER, s.seen.keys[0]));
  assert.deepEqual(await s.violations(), []);
});

embedTest("a storefront origin not in ALLOWED_ORIGINS is told it is not set up, gets a 403 failure event, and charges nothing", async (s) => {
  const orderRef = newOrderRef();
  await s.page.goto(storefrontPage(foreign, "/checkout", { orderRef }));
  await s.button.click();
  await s.waitForStatus("This store is not set up to take orders here.");
  const events = await s.events();
  assert.equal(events.length, 1);
  assert.equal(events[0].name, "chargeonce:failure");
  assert.equal(events[0].detail.status, 403);
  assert.equal(events[0].detail.final, true);
  assert.equal(events[0].detail.message, "This store is not set up to take orders here.");
  assert.equal(s.seen.keys.length, 1, "a refusal is final, not retried");
  assert.deepEqual(await chargesFor(orderRef), []);
  assert.equal((await simulator("ledger")).payments_executed, 0);
});

embedTest("a tampered copy of the wasm refuses to run, with a console error naming it", async (s) => {
  // The same files served from elsewhere run: only the changed byte matters.
  await s.page.goto(storefrontPage(storefront, "/good", { assets: `${cdn.origin}/good`, orderRef: newOrderRef() }));
  await s.button.waitFor();
  const orderRef = newOrderRef();
  await s.page.goto(storefrontPage(storefront, "/tampered", { assets: `${cdn.origin}/tampered`, orderRef }));
  const wasm = `${cdn.origin}/tampered/${embed.version}/chargeonce_bg.wasm`;
  // Chromium's own words: "Failed to find a valid digest in the 'integrity'
  // attribute for resource '<the wasm>' … The resource has been blocked."
  const named = () => s.seen.consoleErrors.some((text) => text.includes("integrity") && text.includes(wasm));
  for (let waited = 0; !named() && waited < 10_000; waited += 100) await s.page.waitForTimeout(100);
  assert.ok(named(), `no console error about ${wasm}'s integrity: ${JSON.stringify(s.seen.consoleErrors)}`);
  // The module failed to load; nothing mounted, nothing was sent.
  await s.page.waitForTimeout(500);
  assert.equal(await s.page.locator("#checkout").evaluate((e) => e.shadowRoot), null);
  assert.ok(s.seen.pageErrors.length >= 1, "the module's load failed");
  assert.deepEqual(s.seen.keys, []);
  assert.deepEqual(await chargesFor(orderRef), []);
});
