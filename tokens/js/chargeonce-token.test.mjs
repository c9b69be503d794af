// The JavaScript signer against the shared vectors (tokens/vectors.json).
// Run: node --test tokens/js/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { OrderTokenError, signOrderToken } from "./chargeonce-token.mjs";

const vectors = JSON.parse(readFileSync(new URL("../vectors.json", import.meta.url), "utf8"));

for (const v of vectors.signed) {
  test(`signs: ${v.name}`, async () => {
    assert.equal(await signOrderToken(v.claims, v.secret), v.token);
    assert.equal(await signOrderToken(v.claims, new TextEncoder().encode(v.secret)), v.token, "the secret as bytes");
  });
}

for (const v of vectors.refused) {
  test(`refuses: ${v.name}`, async () => {
    await assert.rejects(signOrderToken(v.claims, v.secret), (e) => e instanceof OrderTokenError && e.field === v.field);
  });
}

test("refuses a claim the edge does not know, and a missing one", async () => {
  const [{ claims, secret }] = vectors.signed;
  await assert.rejects(signOrderToken({ ...claims, tip: 5 }, secret), /tip is not a claim/);
  const { customer, ...withoutCustomer } = claims;
  await assert.rejects(signOrderToken(withoutCustomer, secret), /customer must be a non-empty string/);
});

test("writes the claims in the edge's order whatever order they are given in", async () => {
  const [{ claims, secret, token }] = vectors.signed;
  const reversed = Object.fromEntries(Object.entries(claims).reverse());
  assert.equal(await signOrderToken(reversed, secret), token);
});
