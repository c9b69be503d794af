// End-to-end tests of the widget's npm package (`make package`), as a
// storefront's developers use it: the tarball installed into a scratch app,
// a TypeScript consumer type-checked with `tsc --strict` and bundled with
// esbuild, examples/react's component in a React 19 app, and a page that
// mounts and destroys the widget a thousand times while Chromium counts
// what is left. Each app is served by a storefront server of this test on
// its own origin and orders from the stack's edge (ALLOWED_ORIGINS names
// that origin), in headless Chromium.
//
// Run by `make test` (scripts/test-e2e.sh, which makes the package first and
// sets TOOLS_NPM to the tools cache's node_modules: typescript, esbuild,
// react, react-dom and their types come from there, pinned in
// tools/package.json).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { ARTIFACTS, launchChromium, serve, signOrderToken, simulator as hook, startStack } from "./support.mjs";

const ROOT = new URL("../../", import.meta.url).pathname;
const TOOLS_NPM = process.env.TOOLS_NPM ?? assert.fail("TOOLS_NPM (the tools cache's node_modules) is not set");
const NODE = process.execPath;
const CUSTOMER = "cus_package";

let stack, browser, storefront, scratch, tarball;

before(async () => {
  const packed = readdirSync(join(ROOT, "build-npm")).filter((f) => /^chargeonce-.*\.tgz$/.test(f));
  assert.equal(packed.length, 1, `one tarball in build-npm/ (make package): ${packed}`);
  tarball = join(ROOT, "build-npm", packed[0]);
  scratch = mkdtempSync(join(tmpdir(), "chargeonce-app-"));
  writeFileSync(join(scratch, "package.json"), JSON.stringify({ name: "scratch-app", private: true, type: "module" }));
  // The tarball has no dependencies, so this needs no registry; with
  // --ignore-scripts nothing of the package could run at install anyway,
  // and the first test checks it declares no scripts.
  execFileSync("npm", ["install", "--offline", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error", tarball],
    { cwd: scratch, stdio: "inherit" });
  // React and the type packages from the tools cache, as if installed here.
  for (const name of ["react", "react-dom", "@types/react", "@types/react-dom"]) {
    mkdirSync(dirname(join(scratch, "node_modules", name)), { recursive: true });
    symlinkSync(join(TOOLS_NPM, name), join(scratch, "node_modules", name));
  }
  cpSync(join(ROOT, "tests/e2e/apps"), scratch, { recursive: true });
  cpSync(join(ROOT, "examples/react"), join(scratch, "examples/react"), { recursive: true });

  storefront = await serve();
  storefront.files = join(scratch, "dist");
  stack = await startStack({ ALLOWED_ORIGINS: storefront.origin });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await stack?.stop();
  await storefront?.close();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

const simulator = (path, body) => hook(stack.simUrl, path, body);
const chargesFor = async (orderRef) =>
  (await simulator("ledger")).charges.filter((c) => c.order_ref === orderRef);
let orders = 0;
const newOrderRef = () => `pkg_${Date.now().toString(36)}_${++orders}`;
const tokenFor = (orderRef, amount) => signOrderToken({
  order_ref: orderRef, amount, currency: "usd", customer: CUSTOMER,
  expires_at: Math.floor(Date.now() / 1000) + 900,
});

/** The tools of the tools cache, as the scratch app runs them. */
const TSC = [NODE, join(TOOLS_NPM, "typescript/bin/tsc")];
const ESBUILD = [join(TOOLS_NPM, ".bin/esbuild")];

/** Runs `command` with `args` in the scratch app: its result. */
const runIn = ([command, ...prefix], args) =>
  spawnSync(command, [...prefix, ...args], { cwd: scratch, encoding: "utf8" });

/** As runIn, and fails with the tool's output unless it succeeded. */
function run(what, command, args) {
  const result = runIn(command, args);
  assert.equal(result.status, 0, `${what} failed:\n${result.stdout}${result.stderr}`);
  return result.stdout;
}

/** The scratch app's entries, bundled by esbuild into dist/, with the wasm beside them (the package README's step for esbuild). */
let bundled = false;
function bundle() {
  if (bundled) return;
  run("esbuild", ESBUILD, ["consumer.ts", "react.tsx", "leak.ts", "--bundle", "--format=esm",
    "--outdir=dist", "--jsx=automatic", "--define:process.env.NODE_ENV=\"development\"", "--log-level=warning"]);
  copyFileSync(join(scratch, "node_modules/chargeonce/chargeonce_bg.wasm"), join(scratch, "dist/chargeonce_bg.wasm"));
  bundled = true;
}

/** A page of the storefront running `entry` (a bundle in dist/) with `config` as `window.CONFIG`. */
function appPage(path, entry, config, body = `<div id="checkout"></div>`) {
  const html = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>A storefront built with the npm package</title>
<script>window.CONFIG = ${JSON.stringify(config)};</script>
<script type="module" src="/${entry}"></script></head>
<body>${body}</body>
</html>`;
  storefront.pages.set(path, { html });
  return `${storefront.origin}${path}`;
}

/** A test in a fresh browser context; page errors fail it, and a failure leaves a screenshot. */
function appTest(name, body) {
  test(name, async () => {
    await simulator("reset", {});
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(error.message));
    page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
    try {
      await body(page);
      assert.deepEqual(errors, [], "no page error");
    } catch (error) {
      await page.screenshot({ path: `${ARTIFACTS}package-${name.replace(/\W+/g, "-")}.png` });
      throw error;
    } finally {
      await context.close();
    }
  });
}

test("the tarball holds the bytes the edge serves, declares no install scripts, and its /token export signs what the edge accepts", async () => {
  const installed = join(scratch, "node_modules/chargeonce");
  const manifest = JSON.parse(readFileSync(join(installed, "package.json"), "utf8"));
  assert.equal(manifest.scripts, undefined, "no install (or any) scripts");
  assert.equal(manifest.type, "module");
  const embed = await (await fetch(`${stack.edge}/pkg/embed.json`)).json();
  for (const file of ["chargeonce.js", "chargeonce_bg.wasm"]) {
    const served = Buffer.from(await (await fetch(`${stack.edge}/pkg/${embed.version}/${file}`)).arrayBuffer());
    assert.ok(readFileSync(join(installed, file)).equals(served), `${file} is the edge's /pkg/${embed.version}/${file}`);
  }
  // The export map, resolved as Node resolves it for the storefront's server.
  const token = await import(pathToFileURL(join(scratch, "node_modules/chargeonce/token.js")));
  const resolved = execFileSync(NODE, ["--input-type=module", "-e",
    "console.log(import.meta.resolve('chargeonce/token'))"], { cwd: scratch, encoding: "utf8" }).trim();
  assert.equal(resolved, pathToFileURL(join(installed, "token.js")).href);
  const claims = { order_ref: "pkg_token", amount: 1999, currency: "usd", customer: CUSTOMER, expires_at: 1_900_000_000 };
  assert.equal(await token.signOrderToken(claims, "chargeonce-test-order-token-secret-000001"), signOrderToken(claims),
    "the package's signer signs as the edge's secret expects");
  await assert.rejects(token.signOrderToken({ ...claims, amount: 0 }, "chargeonce-test-order-token-secret-000001"),
    (e) => e instanceof token.OrderTokenError && e.field === "amount");
});

test("a TypeScript consumer type-checks under tsc --strict, and its misuse does not", () => {
  run("tsc --strict", TSC, ["-p", "tsconfig.json"]);
  // The same consumer with one of its refused lines let through must fail:
  // the declarations are what refuses it, not a lax configuration.
  const consumer = readFileSync(join(scratch, "consumer.ts"), "utf8");
  writeFileSync(join(scratch, "consumer.ts"), consumer.replace("// @ts-expect-error amount is a number or a string\n", ""));
  try {
    const result = runIn(TSC, ["-p", "tsconfig.json"]);
    assert.notEqual(result.status, 0, "tsc accepted `amount: true`");
    assert.match(result.stdout, /consumer\.ts.*Type 'true' is not assignable/s, result.stdout);
  } finally {
    writeFileSync(join(scratch, "consumer.ts"), consumer);
  }
});

appTest("the consumer bundled with esbuild places one order in Chromium with a double click", async (page) => {
  bundle();
  const orderRef = newOrderRef();
  const config = { endpoint: `${stack.edge}/v1/orders`, orderRef, amount: 1999, customer: CUSTOMER, orderToken: tokenFor(orderRef, 1999) };
  const requests = [];
  page.on("request", (r) => { if (r.url().startsWith(`${stack.edge}/v1/orders`) && r.method() === "POST") requests.push(r); });
  await page.goto(appPage("/checkout", "consumer.js", config));
  const button = page.locator("#checkout button");
  await button.filter({ hasText: "Place order" }).waitFor();
  await button.dblclick();
  await page.locator("#checkout [role=status]").filter({ hasText: "Order placed" }).waitFor({ timeout: 20_000 });
  assert.equal(requests.length, 1, "a double click sends one order");
  assert.equal((await page.evaluate(() => window.placed)).length, 1, "one typed success event");
  const charges = await chargesFor(orderRef);
  assert.equal(charges.length, 1);
  assert.equal(charges[0].amount, 1999);
});

appTest("React: PlaceOrder follows the cart, is destroyed on unmount, and after a remount places exactly one order", async (page) => {
  bundle();
  const orderRef = newOrderRef();
  const config = {
    endpoint: `${stack.edge}/v1/orders`, orderRef, customer: CUSTOMER,
    carts: [1500, 2500].map((amount) => ({ amount, orderToken: tokenFor(orderRef, amount) })),
  };
  await page.goto(appPage("/react", "react.js", config, `<div id="root"></div>`));
  const host = page.locator(".checkout");
  const button = page.locator(".checkout button");
  // StrictMode has already mounted, destroyed and mounted it again.
  await button.filter({ hasText: "Pay 15.00" }).waitFor();
  assert.equal(await host.evaluate((e) => e.shadowRoot.querySelectorAll("button").length), 1);

  await page.evaluate(() => window.app.showCart(1));
  await button.filter({ hasText: "Pay 25.00" }).waitFor();
  assert.equal(await host.getAttribute("data-amount"), "2500", "the prop change reached the widget");

  // Unmounted: the element is gone with its widget. Remounted: a new one.
  const before = await host.elementHandle();
  await page.evaluate(() => window.app.setShown(false));
  await host.waitFor({ state: "detached" });
  assert.equal(await before.evaluate((e) => e.shadowRoot.childNodes.length), 0, "destroy emptied the old element");
  await page.evaluate(() => window.app.setShown(true));
  await button.filter({ hasText: "Pay 25.00" }).waitFor();

  await button.click();
  await page.locator(".checkout [role=status]").filter({ hasText: "Order placed" }).waitFor({ timeout: 20_000 });
  const charges = await chargesFor(orderRef);
  assert.equal(charges.length, 1, "exactly one order");
  assert.equal(charges[0].amount, 2500, "for the cart the page showed");
  const successes = await page.evaluate(() => window.successes);
  assert.equal(successes.length, 1, "onSuccess once");
});

appTest("mounting and destroying 1,000 times leaves no event listeners or DOM nodes behind (Chromium's DOM counters after GC)", async (page) => {
  bundle();
  await page.goto(appPage("/leak", "leak.js", {}, ""));
  await page.waitForFunction(() => typeof window.cycle === "function");
  const cdp = await page.context().newCDPSession(page);
  const counters = async () => {
    // A handle the page dropped is freed by its FinalizationRegistry after
    // a collection, and what it held only at the next: collect, let the
    // finalizers run, and collect again.
    for (let round = 0; round < 3; round++) {
      await cdp.send("HeapProfiler.collectGarbage");
      await page.evaluate(() => new Promise((resolve) => setTimeout(resolve, 50)));
    }
    const { nodes, jsEventListeners } = await cdp.send("Memory.getDOMCounters");
    return { nodes, jsEventListeners };
  };
  // A first round warms up what is made once (Leptos's runtime, caches).
  assert.equal(await page.evaluate(() => window.cycle(50)), 50);
  const start = await counters();
  assert.equal(await page.evaluate(() => window.cycle(1000)), 1000, "each mount showed its button");
  const end = await counters();
  // A widget is about ten nodes and a few listeners; a leak of each of a
  // thousand would be thousands. A handful of slack covers the engine's own.
  assert.ok(end.nodes - start.nodes <= 20, `DOM nodes: ${start.nodes} then ${end.nodes}`);
  assert.ok(end.jsEventListeners - start.jsEventListeners <= 5,
    `event listeners: ${start.jsEventListeners} then ${end.jsEventListeners}`);
});
