// The widget's numbers for `make bench`: its bundle size, the time from its
// script starting to load to an enabled "Place order" button, and from a
// click to the order request leaving, in headless Chromium (Debian's, driven
// by playwright-core), over RUNS rounds of cold loads. Each round loads the
// widget, the widget with its wasm preloaded, and two floors with a plain-JS
// button in its place (after the same wasm bytes, and at once), so the
// browser's own cost on this machine is measured beside the widget's.
// Prints one JSON object on stdout (bench/src/report.rs reads it); progress
// goes to stderr.
//
// "Starting to load" is the request for chargeonce.js in Resource Timing,
// not a mark beside the script tag: Chromium's preload scanner requests the
// script before the parser gets to the tag (15-40 ms before, here), so
// timing from the tag would leave out part of the wait. The mark is still
// reported, as interactive_from_tag_ms.
//
// The page and a stub `POST /v1/orders` are served by this script itself
// (bench/widget-server.mjs, on a thread of its own), so the figures are the
// widget's, not a Worker's or the network's.
//
// Usage: RUNS=15 node bench/widget.mjs   (CHROMIUM, PLAYWRIGHT_CORE and
// CHARGEONCE_TOOLS as for tests/e2e)

import { Worker } from "node:worker_threads";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { gzipSync, brotliCompressSync, constants } from "node:zlib";

const RUNS = Number(process.env.RUNS ?? 15);
// Where scripts/test-e2e.sh points PLAYWRIGHT_CORE: the tools `make setup`
// installs, not this repo's node_modules (it has none).
const TOOLS = process.env.CHARGEONCE_TOOLS || `${homedir()}/.cache/chargeonce-tools`;
const PLAYWRIGHT_CORE = process.env.PLAYWRIGHT_CORE ?? `${TOOLS}/npm/node_modules/playwright-core/index.mjs`;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// The version scripts/build-widget.sh built last, as a storefront embeds it
// (build-widget/pkg/<version>/); embed.json names it and its wasm's hash.
const BUILT = new URL("../build-widget/pkg/", import.meta.url).pathname;
if (!existsSync(`${BUILT}embed.json`)) fail(`no ${BUILT}embed.json (run make build)`);
const EMBED = JSON.parse(readFileSync(`${BUILT}embed.json`, "utf8"));
const PKG = `${BUILT}${EMBED.version}/`;
const FILES = ["chargeonce_bg.wasm", "chargeonce.js"];
const TYPES = { ".js": "application/javascript", ".wasm": "application/wasm" };

function fail(message) {
  process.stderr.write(`widget: ${message}\n`);
  process.exit(1);
}

// Checked up front: Playwright's own errors for these are pages long.
if (!Number.isInteger(RUNS) || RUNS < 1) fail(`RUNS must be a positive whole number, not ${process.env.RUNS}`);
if (!existsSync(CHROMIUM)) fail(`no Chromium at ${CHROMIUM} (run make setup, or set CHROMIUM)`);
const missing = FILES.filter((name) => !existsSync(PKG + name));
if (missing.length) fail(`the widget bundle is missing ${missing.join(", ")} in ${PKG} (run make build)`);
// Read once: the server then answers from memory, and the sizes are of the
// very bytes the browser loaded.
const BYTES = Object.fromEntries(FILES.map((name) => [name, readFileSync(PKG + name)]));
const { chromium } = await import(PLAYWRIGHT_CORE)
  .catch((e) => fail(`cannot load playwright-core from ${PLAYWRIGHT_CORE} (run make setup): ${e.message}`));

// The inline script comes first so the fetch wrapper, the click listener and
// the shadow-root watch all exist before the widget does. "Interactive" is
// caught by a MutationObserver on the shadow root, whose callback runs at the
// microtask checkpoint right after the widget inserts or enables the button;
// polling with requestAnimationFrame instead lands on the next frame, which
// in headless Chromium was 0.5 to 23 ms later. The shadow root is open, but
// mutations inside it are invisible to an observer on the document, hence
// the attachShadow wrapper.
const page = (script, head = "") => `<!doctype html><html><head><meta charset="utf-8"><title>widget bench</title>
<link rel="icon" href="data:,">${head}</head><body>
<script>
  const realFetch = window.fetch;
  window.fetch = function (input, init) {
    if (String(input?.url ?? input).endsWith("/v1/orders")) performance.mark("chargeonce:request");
    return realFetch.call(this, input, init);
  };
  // Capture phase on the document: a click inside the shadow root is
  // retargeted to the host and still passes here before the button's handler.
  document.addEventListener("click", () => performance.mark("chargeonce:click"), true);
  const realAttach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    const root = realAttach.call(this, init);
    if (this.id === "checkout") {
      new MutationObserver((_, observer) => {
        if (!root.querySelector("button:not([disabled])")) return;
        observer.disconnect();
        performance.mark("chargeonce:interactive");
      }).observe(root, { subtree: true, childList: true, attributes: true, attributeFilter: ["disabled"] });
    }
    return root;
  };
  // The parser reaching the tag; the preload scanner has usually asked for
  // the script already.
  performance.mark("chargeonce:script-start");
</script>
<script type="module" src="${script}"></script>
<div id="checkout" data-chargeonce data-endpoint="/v1/orders" data-order-ref="ord_bench"
     data-amount="1999" data-currency="usd" data-payment-method="pm_card_visa"
     data-customer="cus_bench" data-order-token="v1.bench.token" data-label="Place order"></div>
</body></html>`;

// Two floors, on the same page in the same harness, with a plain-JS button
// in place of the widget: "plain" shows it at once (what this browser on
// this machine needs to load a script and show a button), "bytes" first
// downloads the widget's wasm without compiling it (plus what the bundle's
// bytes cost to fetch). The widget's time over "bytes" is the widget's own.
const floorJs = (fetchBytes) => `const host = document.getElementById("checkout");
const root = host.attachShadow({ mode: "open" });
const button = document.createElement("button");
button.textContent = host.dataset.label;
button.disabled = true;
const status = document.createElement("p");
status.setAttribute("role", "status");
root.append(button, status);
button.addEventListener("click", async () => {
  await fetch(host.dataset.endpoint, { method: "POST", body: "{}" });
  status.textContent = "Order placed";
});
${fetchBytes ? 'await fetch(new URL("chargeonce_bg.wasm", import.meta.url)).then((r) => r.arrayBuffer());' : ""}
button.disabled = false;
`;
const FLOOR_FILES = { "plain.js": Buffer.from(floorJs(false)), "bytes.js": Buffer.from(floorJs(true)) };
// Each variant's path and script.
const VARIANTS = { widget: "/pkg/chargeonce.js", preload: "/pkg/chargeonce.js", bytes: "/pkg/bytes.js", plain: "/pkg/plain.js" };
// "preload" is the widget with the tag the README offers storefronts beside
// the script: the wasm's request then starts with the script's instead of
// after it.
// The tag carries the wasm's hash, as the widget's own fetch does: a preload
// is reused only by a request with the same integrity.
const PRELOAD = `<link rel="preload" href="/pkg/chargeonce_bg.wasm" as="fetch" type="application/wasm" crossorigin="anonymous" integrity="${EMBED.wasm_integrity}">`;
const PAGES = Object.fromEntries(Object.entries(VARIANTS)
  .map(([name, script]) => [`/${name}`, page(script, name === "preload" ? PRELOAD : "")]));

const round = (ms) => Math.round(ms * 10) / 10;

function stats(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  const p90 = sorted[Math.ceil(n * 0.9) - 1]; // nearest rank
  return {
    median: round(median), p90: round(p90), min: round(sorted[0]), max: round(sorted[n - 1]),
    samples: samples.map(round),
  };
}

// The same unit (1000 bytes) and rounding (toFixed) as scripts/bundle-size.mjs,
// so these figures match `make size` digit for digit.
function bundle() {
  const kb = (n) => Number((n / 1000).toFixed(1));
  const files = FILES.map((name) => ({
    name,
    raw: BYTES[name].length,
    gzip: gzipSync(BYTES[name], { level: 9 }).length,
    brotli: brotliCompressSync(BYTES[name], { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
  }));
  const total = { raw: 0, gzip: 0, brotli: 0 };
  for (const f of files) for (const k of Object.keys(total)) total[k] += f[k];
  const inKb = ({ raw, gzip, brotli }) => ({ raw: kb(raw), gzip: kb(gzip), brotli: kb(brotli) });
  return { files: files.map((f) => ({ name: f.name, ...inKb(f) })), total: inKb(total), unit: "KB" };
}

/** One cold load, click and answer; returns the marks' start times (ms from navigation). */
async function run(context, url) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const marked = (name) => page.waitForFunction(
    (n) => performance.getEntriesByName(n).length > 0, `chargeonce:${name}`, { timeout: 10_000 });
  await page.goto(url);
  await marked("interactive");
  await page.locator("#checkout button").click();
  await marked("request");
  // A real round trip: the widget read the stub's answer and says so.
  await page.locator("#checkout [role=status]").filter({ hasText: "Order placed" }).waitFor({ timeout: 10_000 });
  if (errors.length) throw new Error(`the page reported: ${errors.join("; ")}`);
  return page.evaluate(() => ({
    ...Object.fromEntries(["script-start", "interactive", "click", "request"]
      .map((n) => [n, performance.getEntriesByName(`chargeonce:${n}`)[0].startTime])),
    js: performance.getEntriesByType("resource").find((r) => /\/pkg\/(chargeonce|bytes|plain)\.js$/.test(r.name)).startTime,
    // Splits the wait for report.rs: the wasm's bytes arriving, then
    // compiling, instantiating and mounting.
    wasm: performance.getEntriesByType("resource").find((r) => r.name.endsWith(".wasm"))?.responseEnd ?? NaN,
    // More than one means a preload the widget's own fetch did not reuse.
    wasmFetches: performance.getEntriesByType("resource").filter((r) => r.name.endsWith(".wasm")).length,
  }));
}

let browser, server;
try {
  server = new Worker(new URL("./widget-server.mjs", import.meta.url), {
    workerData: { pages: PAGES, files: { ...BYTES, ...FLOOR_FILES }, types: TYPES },
  });
  const port = await new Promise((resolve, reject) => {
    server.once("message", resolve);
    server.once("error", reject);
  });
  const url = `http://127.0.0.1:${port}/`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const interactive = [], fromTag = [], fromNavigation = [], wasmLoaded = [], clickToRequest = [];
  const floorBytes = [], floorPlain = [], floorClickToRequest = [], preloaded = [];
  // Run 0 is a warm-up, not counted: the first page of a just-launched
  // browser also pays for starting the browser's own services, which a
  // shopper's long-running browser has done already. Each run loads the
  // widget and both floors, the order rotating, so drift hits all alike.
  const names = Object.keys(VARIANTS);
  for (let i = 0; i <= RUNS; i++) {
    const measured = {};
    for (let k = 0; k < names.length; k++) {
      const name = names[(i + k) % names.length];
      // A fresh context each load: its own HTTP cache and renderer, so
      // every load fetches (and the widget compiles) the wasm from nothing.
      const context = await browser.newContext();
      measured[name] = await run(context, `${url}${name}`)
        .catch((e) => {
          throw new Error(`${name}, ${i ? `run ${i} of ${RUNS}` : "the warm-up run"}: ${e.message}`);
        })
        .finally(() => context.close());
    }
    if (i === 0) continue;
    const { widget: m, bytes: b, plain: p, preload: w } = measured;
    if (w.wasmFetches !== 1) {
      throw new Error(`with the preload tag the wasm was fetched ${w.wasmFetches} times: the tag and the widget's fetch do not match`);
    }
    preloaded.push(w.interactive - w.js);
    interactive.push(m.interactive - m.js);
    fromTag.push(m.interactive - m["script-start"]);
    fromNavigation.push(m.interactive);
    wasmLoaded.push(m.wasm - m.js);
    clickToRequest.push(m.request - m.click);
    floorBytes.push(b.interactive - b.js);
    floorPlain.push(p.interactive - p.js);
    floorClickToRequest.push(p.request - p.click);
    process.stderr.write(`widget: run ${i} of ${RUNS}: interactive after ${round(interactive.at(-1))} ms ` +
      `(floors: ${round(floorBytes.at(-1))} ms with the bytes, ${round(floorPlain.at(-1))} ms without), ` +
      `request ${round(clickToRequest.at(-1))} ms after the click\n`);
  }
  console.log(JSON.stringify({
    runs: RUNS,
    cold_load: true,
    warmup_runs: 1,
    interactive_ms: stats(interactive),
    interactive_from_tag_ms: stats(fromTag),
    from_navigation_ms: stats(fromNavigation),
    wasm_loaded_ms: stats(wasmLoaded),
    click_to_request_ms: stats(clickToRequest),
    preload_interactive_ms: stats(preloaded),
    floor_bytes_interactive_ms: stats(floorBytes),
    floor_plain_interactive_ms: stats(floorPlain),
    floor_click_to_request_ms: stats(floorClickToRequest),
    bundle: bundle(),
    chromium: browser.version(),
  }));
} catch (error) {
  process.stderr.write(`widget: ${error.message}\n`);
  process.exitCode = 1;
} finally {
  await browser?.close();
  server?.postMessage("close");
}
