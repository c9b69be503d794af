// What the end-to-end tests share: the stack `make dev` runs (started by the
// `stack` binary on free ports), headless Chromium, the simulator's hooks,
// and the order tokens and backend keys the edge works with.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
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
