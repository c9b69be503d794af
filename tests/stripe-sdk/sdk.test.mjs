// The official Stripe Node SDK (npm `stripe`, pinned in tools/package.json, unmodified) against
// paysim: if paysim speaks Stripe, Stripe's own client cannot tell. Each test reads paysim's
// ledger rather than taking the SDK's word for what was charged.
//
// Run by `cargo test -p chargeonce-tests --test stripe_sdk` (tests/tests/stripe_sdk.rs), which
// starts the paysim binary on a free port, computes the form the edge's Stripe adapter sends,
// and passes in, through the environment:
//   PAYSIM_URL       paysim's base URL, http://127.0.0.1:PORT
//   PAYSIM_SECRET    the API key paysim accepts
//   STRIPE_NPM_DIR   the tools cache's npm folder, whose node_modules holds `stripe`
//   EDGE_ORDER       an order (JSON: amount, currency, payment_method, order_ref, customer)
//   EDGE_BACKEND_KEY the backend key the edge sends it under
//   EDGE_STRIPE_FORM what BackendKind::Stripe.request(..).body is for that order and key

import { after, beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { Agent, createServer } from "node:http";
import { join } from "node:path";

function env(name) {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run this through cargo test -p chargeonce-tests --test stripe_sdk`);
  return value;
}

const PAYSIM = new URL(env("PAYSIM_URL"));
const SECRET = env("PAYSIM_SECRET");
// Resolved as an application would resolve it, by package name through the package's own
// `exports` (its CommonJS entry), from the folder the tools are installed in.
const Stripe = createRequire(join(env("STRIPE_NPM_DIR"), "package.json"))("stripe");

// The SDK keeps connections alive, as it should against Stripe; one agent of our own, closed
// after the tests, lets this process end instead of waiting on idle sockets.
const agent = new Agent({ keepAlive: true });
after(() => agent.destroy());

/** A client of paysim, as an integration would construct one for Stripe. */
function stripe({ host = PAYSIM.hostname, port = PAYSIM.port, maxNetworkRetries = 0 } = {}) {
  return new Stripe(SECRET, {
    host,
    port: Number(port),
    protocol: "http",
    maxNetworkRetries,
    httpAgent: agent,
  });
}

async function sim(path, body) {
  const response = await fetch(new URL(`/__sim/${path}`, PAYSIM), body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.ok(response.ok, `${path}: ${response.status} ${await response.clone().text()}`);
  return response.status === 204 ? null : response.json();
}

const charges = async () => (await sim("ledger")).charges;

/** A card payment confirmed at once, as the edge's Stripe adapter makes it. */
function cardPayment(paymentMethod, metadata = {}) {
  return {
    amount: 1999,
    currency: "usd",
    payment_method: paymentMethod,
    confirm: true,
    automatic_payment_methods: { enabled: true, allow_redirects: "never" },
    metadata,
  };
}

beforeEach(() => sim("reset", {}));

test("create with confirm, retrieve and search see the same succeeded intent", async () => {
  const client = stripe();
  const created = await client.paymentIntents.create(
    cardPayment("pm_card_visa", { chargeonce_key: "ck_sdk_visa", order_ref: "ord_sdk" }),
  );
  assert.equal(created.object, "payment_intent");
  assert.equal(created.status, "succeeded");
  assert.equal(created.amount, 1999);
  assert.match(created.client_secret, new RegExp(`^${created.id}_secret_\\w+$`));
  assert.equal(created.lastResponse.statusCode, 200);

  const retrieved = await client.paymentIntents.retrieve(created.id);
  assert.deepEqual(retrieved, created);

  const found = await client.paymentIntents.search({
    query: "metadata['chargeonce_key']:'ck_sdk_visa'",
  });
  assert.equal(found.object, "search_result");
  assert.deepEqual(found.data.map((intent) => intent.id), [created.id]);
  assert.equal(found.has_more, false);

  const ledger = await charges();
  assert.equal(ledger.length, 1);
  assert.equal(ledger[0].id, created.id);
  assert.equal(ledger[0].order_ref, "ord_sdk");
  // The SDK keys every POST itself, so that its retries are safe.
  assert.match(ledger[0].idempotency_key, /^stripe-node-retry-/);
});

test("an unknown id is the SDK's StripeInvalidRequestError, resource_missing", async () => {
  await assert.rejects(stripe().paymentIntents.retrieve("pi_does_not_exist"), (error) => {
    assert.ok(error instanceof Stripe.errors.StripeInvalidRequestError, error.type);
    assert.equal(error.statusCode, 404);
    assert.equal(error.code, "resource_missing");
    return true;
  });
});

test("a decline is the SDK's StripeCardError with its decline_code", async () => {
  await assert.rejects(
    stripe().paymentIntents.create(cardPayment("pm_card_visa_chargeDeclinedInsufficientFunds")),
    (error) => {
      assert.ok(error instanceof Stripe.errors.StripeCardError, error.type);
      assert.equal(error.type, "StripeCardError");
      assert.equal(error.statusCode, 402);
      assert.equal(error.code, "card_declined");
      assert.equal(error.decline_code, "insufficient_funds");
      assert.equal(error.payment_intent.status, "requires_payment_method");
      assert.equal(error.payment_intent.last_payment_error.decline_code, "insufficient_funds");
      return true;
    },
  );
  assert.deepEqual(await charges(), []);
});

test("3-D Secure: requires_action with use_stripe_sdk, charged only once authenticated", async () => {
  const client = stripe();
  const intent = await client.paymentIntents.create(cardPayment("pm_card_threeDSecure2Required"));
  assert.equal(intent.status, "requires_action");
  assert.equal(intent.next_action.type, "use_stripe_sdk");
  assert.ok(intent.next_action.use_stripe_sdk, "use_stripe_sdk carries the challenge");
  assert.match(intent.client_secret, new RegExp(`^${intent.id}_secret_\\w+$`));
  assert.deepEqual(await charges(), []);

  // What Stripe.js would show the customer, played by paysim's hook.
  await sim(`payment_intents/${intent.id}/authenticate`, { outcome: "succeed" });
  const paid = await client.paymentIntents.retrieve(intent.id);
  assert.equal(paid.status, "succeeded");
  assert.equal(paid.next_action, null);
  assert.deepEqual((await charges()).map((charge) => charge.id), [intent.id]);
});

test("a key reused with other parameters is the SDK's StripeIdempotencyError", async () => {
  const client = stripe();
  const idempotencyKey = "sdk-reused-key";
  const first = await client.paymentIntents.create(cardPayment("pm_card_visa"), { idempotencyKey });
  const replayed = await client.paymentIntents.create(cardPayment("pm_card_visa"), { idempotencyKey });
  assert.equal(replayed.id, first.id);
  assert.equal(replayed.lastResponse.headers["idempotent-replayed"], "true");
  await assert.rejects(
    client.paymentIntents.create({ ...cardPayment("pm_card_visa"), amount: 2000 }, { idempotencyKey }),
    (error) => {
      assert.ok(error instanceof Stripe.errors.StripeIdempotencyError, error.type);
      assert.equal(error.statusCode, 400);
      assert.equal(error.rawType, "idempotency_error");
      return true;
    },
  );
  assert.equal((await charges()).length, 1);
});

test("the SDK's own retries, under its own key, charge once when a response is lost", async () => {
  const client = stripe({ maxNetworkRetries: 2 });
  await sim("faults", { drop_after_commit_next: 1 });
  const intent = await client.paymentIntents.create(cardPayment("pm_card_visa"));
  assert.equal(intent.status, "succeeded");
  // The answer the SDK got is the saved one, replayed to its retry.
  assert.equal(intent.lastResponse.headers["idempotent-replayed"], "true");
  let ledger = await charges();
  assert.equal(ledger.length, 1, JSON.stringify(ledger));
  assert.equal(ledger[0].id, intent.id);
  assert.match(ledger[0].idempotency_key, /^stripe-node-retry-/);

  // stripe-node retries a closed connection once even with no retries configured, if it is the
  // first attempt; a response lost on a retry is retried only under maxNetworkRetries. So: a 503
  // (fail_next, before execution, nothing saved), then the retry commits and loses its response,
  // then the second retry gets the saved answer.
  await sim("reset", {});
  await sim("faults", { fail_next: 1, drop_after_commit_next: 1 });
  const again = await client.paymentIntents.create(cardPayment("pm_card_visa"));
  assert.equal(again.status, "succeeded");
  assert.equal(again.lastResponse.headers["idempotent-replayed"], "true");
  ledger = await charges();
  assert.equal(ledger.length, 1, JSON.stringify(ledger));
  assert.equal(ledger[0].id, again.id);
  const faults = await sim("faults");
  assert.deepEqual([faults.fail_next, faults.drop_after_commit_next], [0, 0]);
});

test("the SDK retries a 409 idempotency_key_in_use with the key, which then executes", async () => {
  await sim("faults", { in_use_next: 1 });
  const intent = await stripe({ maxNetworkRetries: 1 }).paymentIntents.create(
    cardPayment("pm_card_visa"),
  );
  assert.equal(intent.status, "succeeded");
  assert.equal(intent.lastResponse.headers["idempotent-replayed"], undefined);
  assert.equal((await charges()).length, 1);
});

test("a 429 is the SDK's StripeRateLimitError, and nothing ran", async () => {
  await sim("faults", { rate_limit_next: 1 });
  await assert.rejects(stripe().paymentIntents.create(cardPayment("pm_card_visa")), (error) => {
    assert.ok(error instanceof Stripe.errors.StripeRateLimitError, error.type);
    assert.equal(error.code, "rate_limit");
    return true;
  });
  assert.deepEqual(await charges(), []);
});

/** Starts a server that records each request and answers `answer`; resolves to its port. */
async function recorder(requests, answer) {
  const server = createServer((request, response) => {
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      requests.push({
        method: request.method,
        url: request.url,
        headers: request.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      });
      response.writeHead(200, { "Content-Type": "application/json" });
      response.end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

/**
 * A form body as the sorted list of its decoded name/value pairs. Stripe reads a form as a set
 * of named parameters: the SDK orders them by its params object's keys and leaves brackets
 * unencoded (`metadata[order_ref]`), the edge orders them by its appends and encodes brackets
 * (`metadata%5Border_ref%5D`), and each encodes a space its own way (`%20`, `+`). So the two
 * bodies are compared decoded and in sorted order, with duplicates kept.
 */
function decodedPairs(body) {
  return [...new URLSearchParams(body)].sort(([a, x], [b, y]) =>
    a < b ? -1 : a > b ? 1 : x < y ? -1 : x > y ? 1 : 0,
  );
}

test("the edge's Stripe form is what the SDK sends for the same PaymentIntent", async () => {
  const order = JSON.parse(env("EDGE_ORDER"));
  const backendKey = env("EDGE_BACKEND_KEY");
  const edgeForm = env("EDGE_STRIPE_FORM");
  // The PaymentIntent the edge's adapter means to create, written as a Stripe integration
  // writes it with the SDK: confirmed at once, cards without redirects, and the metadata the
  // reconciliation searches by.
  const params = {
    amount: order.amount,
    currency: order.currency,
    payment_method: order.payment_method,
    confirm: true,
    automatic_payment_methods: { enabled: true, allow_redirects: "never" },
    metadata: {
      order_ref: order.order_ref,
      ...(order.customer === undefined ? {} : { customer: order.customer }),
      chargeonce_key: backendKey,
    },
  };

  // The bytes the SDK sends, captured by a server of our own: its form encoder is internal
  // (utils.js is outside the package's `exports`), so it is observed, not imported.
  const requests = [];
  const server = await recorder(requests, { id: "pi_recorded", object: "payment_intent" });
  try {
    await stripe({ host: "127.0.0.1", port: server.address().port }).paymentIntents.create(
      params,
      { idempotencyKey: backendKey },
    );
  } finally {
    server.close();
    server.closeAllConnections();
  }
  assert.equal(requests.length, 1);
  const [sent] = requests;
  assert.equal(sent.method, "POST");
  assert.equal(sent.url, "/v1/payment_intents");
  assert.equal(sent.headers["content-type"], "application/x-www-form-urlencoded");
  assert.equal(sent.headers["idempotency-key"], backendKey);
  assert.deepEqual(decodedPairs(edgeForm), decodedPairs(sent.body));

  // And paysim, which binds a key to its parameters as Stripe does, takes the two for one
  // request: the edge's form first, then the SDK's call under the same key is a replay.
  const edgeAnswer = await fetch(new URL("/v1/payment_intents", PAYSIM), {
    method: "POST",
    headers: {
      Authorization: `Bearer ${SECRET}`,
      "Content-Type": "application/x-www-form-urlencoded",
      "Idempotency-Key": backendKey,
    },
    body: edgeForm,
  });
  assert.equal(edgeAnswer.status, 200, await edgeAnswer.clone().text());
  const charged = await edgeAnswer.json();
  const replayed = await stripe().paymentIntents.create(params, { idempotencyKey: backendKey });
  assert.equal(replayed.lastResponse.headers["idempotent-replayed"], "true");
  assert.deepEqual(replayed, charged);
  assert.equal((await charges()).length, 1);
});
