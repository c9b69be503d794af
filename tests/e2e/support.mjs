// What the end-to-end tests share: the stack `make dev` runs (started by the
// `stack` binary on free ports), headless Chromium, the simulator's hooks,
// the order tokens and backend keys the edge works with, and storefront
// servers on other origins.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { extname, join } from "node:path";
import { createHash, createHmac } from "node:crypto";

const { chromium } = await import(process.env.PLAYWRIGHT_CORE ?? "playwright-core");

/** Where failing tests leave their screenshots. */
export const ARTIFACTS = new URL("../artifacts/", import.meta.url).pathname;
mkdirSync(ARTIFACTS, { recursive: true });

/**
 * Starts the stack (paysim and the Worker under `wrangler dev`, serving
 * www/) with `env` added to its environment (the Worker settings it passes
 * on, such as ALLOWED_ORIGINS). Resolves to `{ edge, simUrl, stop }`;
 * `stop()` ends it, wrangler and workerd included.
 */
export async function startStack(env = {}) {
  const stack = spawn(process.env.STACK_BIN ?? "target/debug/stack", {
    stdio: ["pipe", "pipe", "inherit"],
    env: { ...process.env, ...env },
  });
  const [line] = await Promise.race([
    new Promise((resolve) => createInterface({ input: stack.stdout }).once("line", (l) => resolve([l]))),
    new Promise((_, reject) => stack.once("exit", (code) => reject(new Error(`stack exited with ${code}`)))),
  ]);
  const { edge_url: edge, sim_url: simUrl } = JSON.parse(line);
  return {
    edge,
    simUrl,
    // Closing its stdin stops the stack.
    stop: async () => {
      stack.stdin.end();
      await new Promise((resolve) => (stack.exitCode === null ? stack.once("exit", resolve) : resolve()));
    },
  };
}

/** Debian's Chromium, headless. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/**
 * A headless browser of `engine`, driven by puppeteer-core: "chromium"
 * (Debian's, over CDP) or "firefox" (Debian's Firefox ESR, over WebDriver
 * BiDi). shop.test.mjs runs its stories in both.
 */
export async function launchBrowser(engine) {
  const { default: puppeteer } = await import(process.env.PUPPETEER_CORE ?? "puppeteer-core");
  const options = {
    chromium: {
      browser: "chrome",
      executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    },
    firefox: { browser: "firefox", executablePath: process.env.FIREFOX ?? "/usr/bin/firefox-esr" },
  }[engine];
  assert.ok(options, `no such engine: ${engine} (chromium or firefox)`);
  return puppeteer.launch({ ...options, headless: true });
}

/** Calls the simulator's hook `path` at `simUrl`: a GET, or a POST of `body`. */
export async function simulator(simUrl, path, body) {
  const response = await fetch(`${simUrl}/__sim/${path}`, body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  assert.ok(response.ok, `${path}: ${response.status}`);
  return response.status === 204 ? null : response.json();
}

/** The key the edge sends the backend: scoped to the customer (ScopedKey::backend_key). */
export function backendKey(customer, key) {
  const length = Buffer.alloc(8);
  length.writeBigUInt64BE(BigInt(Buffer.byteLength(customer)));
  return "chargeonce_" + createHash("sha256").update(length).update(customer).update(key).digest("hex");
}

/**
 * An order token signed as the shop's server signs them (protocol/src/token.rs),
 * with the secret the `stack` binary gives its Worker
 * (ORDER_TOKEN_SECRET in tests/src/stack.rs).
 */
export function signOrderToken(claims) {
  const payload = Buffer.from(JSON.stringify(claims)).toString("base64url");
  const mac = createHmac("sha256", "chargeonce-test-order-token-secret-000001")
    .update(`chargeonce-order-token.v1.${payload}`).digest("base64url");
  return `v1.${payload}.${mac}`;
}

/**
 * A local server on 127.0.0.1 and a free port, standing for a storefront (or
 * a CDN): `pages` maps a path to `{html, csp}`, a page served with `csp` (if
 * set) as its Content-Security-Policy; with `files` set, other paths are
 * that folder's files, for any origin (as the edge serves the widget's).
 * Resolves to that state, with `origin` and `close()`.
 */
export function serve() {
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const page = state.pages.get(path);
    if (page) {
      const policy = page.csp ? { "Content-Security-Policy": page.csp } : {};
      res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", ...policy });
      return res.end(page.html);
    }
    if (state.files && !path.includes("..")) {
      try {
        const body = readFileSync(join(state.files, path));
        const type = { ".js": "text/javascript", ".wasm": "application/wasm" }[extname(path)] ?? "text/plain";
        res.writeHead(200, { "Content-Type": type, "Access-Control-Allow-Origin": "*" });
        return res.end(body);
      } catch {
        // Not there: a 404, below.
      }
    }
    res.writeHead(path === "/favicon.ico" ? 204 : 404).end();
  });
  const state = {
    pages: new Map(),
    files: null,
    origin: null,
    close: () => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve); }),
  };
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => {
    state.origin = `http://127.0.0.1:${server.address().port}`;
    resolve(state);
  }));
}
