// The widget's numbers for `make bench`: its bundle size, the time from its
// script tag starting to load to an enabled "Place order" button, and from a
// click to the order request leaving, in headless Chromium (Debian's, driven
// by playwright-core), median of RUNS cold loads. Prints one JSON object on
// stdout; progress goes to stderr.
//
// The page and a stub `POST /v1/orders` are served by this script itself, so
// the figures are the widget's, not a Worker's.

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { gzipSync, brotliCompressSync, constants } from "node:zlib";

const { chromium } = await import(process.env.PLAYWRIGHT_CORE ?? "playwright-core");
const RUNS = Number(process.env.RUNS ?? 15);
const PKG = new URL("../www/pkg/", import.meta.url).pathname;
const FILES = ["chargeonce_bg.wasm", "chargeonce.js"];

// Performance marks, set by an inline script that runs before the module
// is even requested: the fetch wrapper and the capture-phase click listener
// must exist before the widget does.
const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>widget bench</title></head><body>
<script>
  const realFetch = window.fetch;
  window.fetch = function (input, init) {
    if (String(input.url ?? input).endsWith("/v1/orders")) performance.mark("chargeonce:request");
    return realFetch.call(this, input, init);
  };
  document.addEventListener("click", () => performance.mark("chargeonce:click"), true);
  // attachShadow is wrapped so the shadow root can be watched from the
  // moment it exists: mutations inside it are invisible from the document.
  const realAttach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    const root = realAttach.call(this, init);
    if (this.id === "checkout") {
      // The button is interactive once it exists and is not disabled.
      const ready = () => root.querySelector("button:not([disabled])");
      new MutationObserver((_, observer) => {
        if (ready()) { observer.disconnect(); performance.mark("chargeonce:interactive"); }
      }).observe(root, { subtree: true, childList: true, attributes: true });
    }
    return root;
  };
  performance.mark("chargeonce:script-start");
</script>
<script type="module" src="/pkg/chargeonce.js"></script>
<div id="checkout" data-chargeonce data-endpoint="/v1/orders" data-order-ref="ord_bench"
     data-amount="1999" data-currency="usd" data-payment-method="pm_card_visa"
     data-customer="cus_bench" data-order-token="v1.bench.token" data-label="Place order"></div>
</body></html>`;

const TYPES = { ".js": "application/javascript", ".wasm": "application/wasm" };
const server = createServer((req, res) => {
  if (req.method === "POST" && req.url === "/v1/orders") {
    req.resume();
    res.writeHead(200, { "Content-Type": "application/json" });
    return res.end('{"id":"pi_bench","object":"payment_intent","status":"succeeded"}');
  }
  if (req.url === "/") {
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
    return res.end(PAGE);
  }
  const name = req.url.startsWith("/pkg/") ? req.url.slice(5) : "";
  if (FILES.includes(name)) {
    res.writeHead(200, { "Content-Type": TYPES[name.slice(name.lastIndexOf("."))] });
    return res.end(readFileSync(PKG + name));
  }
  res.writeHead(404).end();
});

function stats(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (p) => sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * p) - 1)];
  const round = (v) => Math.round(v * 10) / 10;
  const mid = sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
  return { median: round(mid), p90: round(at(0.9)), min: round(sorted[0]), max: round(sorted.at(-1)), samples: samples.map(round) };
}

// The same units and rounding as scripts/bundle-size.mjs (`make size`).
function bundle() {
  const kb = (n) => Math.round(n / 100) / 10;
  const files = FILES.map((name) => {
    const bytes = readFileSync(PKG + name);
    return {
      name,
      raw: bytes.length,
      gzip: gzipSync(bytes, { level: 9 }).length,
      brotli: brotliCompressSync(bytes, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }).length,
    };
  });
  const total = { raw: 0, gzip: 0, brotli: 0 };
  for (const f of files) for (const k of Object.keys(total)) total[k] += f[k];
  const inKb = (f) => ({ ...f, raw: kb(f.raw), gzip: kb(f.gzip), brotli: kb(f.brotli) });
  return { files: files.map(inKb), total: inKb(total), unit: "KB" };
}

let browser;
try {
  for (const name of FILES) readFileSync(PKG + name); // fail early without a build
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}/`;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const interactive = [], fromNavigation = [], clickToRequest = [], wasmLoaded = [];
  for (let run = 1; run <= RUNS; run++) {
    // A fresh context each time: no HTTP or wasm cache carries over.
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(url);
    await page.waitForFunction(() => performance.getEntriesByName("chargeonce:interactive").length > 0);
    await page.locator("#checkout button").click();
    await page.waitForFunction(() => performance.getEntriesByName("chargeonce:request").length > 0);
    await page.locator("#checkout [role=status]").filter({ hasText: "Order placed" }).waitFor({ timeout: 10_000 });
    const m = await page.evaluate(() => ({
      ...Object.fromEntries(["script-start", "interactive", "click", "request"]
        .map((n) => [n, performance.getEntriesByName(`chargeonce:${n}`)[0].startTime])),
      // Resource timing splits the wait: bytes arriving, then compiling,
      // instantiating and mounting.
      wasmLoaded: performance.getEntriesByType("resource").find((r) => r.name.endsWith(".wasm")).responseEnd,
    }));
    interactive.push(m.interactive - m["script-start"]);
    fromNavigation.push(m.interactive);
    clickToRequest.push(m.request - m.click);
    wasmLoaded.push(m.wasmLoaded - m["script-start"]);
    await context.close();
    process.stderr.write(`widget: run ${run} of ${RUNS}: interactive after ${(m.interactive - m["script-start"]).toFixed(1)} ms\n`);
  }
  console.log(JSON.stringify({
    runs: RUNS,
    cold_load: true,
    interactive_ms: stats(interactive),
    from_navigation_ms: stats(fromNavigation),
    wasm_loaded_ms: stats(wasmLoaded),
    click_to_request_ms: stats(clickToRequest),
    bundle: bundle(),
    chromium: browser.version(),
  }));
} catch (error) {
  process.stderr.write(`widget: ${error.stack ?? error}\n`);
  process.exitCode = 1;
} finally {
  await browser?.close();
  server.close();
}
