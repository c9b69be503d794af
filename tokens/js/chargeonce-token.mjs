// Signs ChargeOnce order tokens on a storefront's server: what the edge
// checks before it forwards an order (README, "Order tokens";
// protocol/src/token.rs is the reference). Web Crypto only, no
// dependencies, so it runs in Node 22, Deno, Bun and Workers.
//
//   import { signOrderToken } from "./chargeonce-token.mjs";
//   const token = await signOrderToken(
//     { order_ref: "ord_1042", amount: 1999, currency: "usd", customer: "cus_1",
//       expires_at: Math.floor(Date.now() / 1000) + 900 },
//     process.env.ORDER_TOKEN_SECRET);
//
// Format: `v1.<payload>.<mac>`; payload is base64url (no padding) of the
// claims as JSON, in this order and without spaces; mac is base64url of
// HMAC-SHA256 over `chargeonce-order-token.v1.<payload>`.

/** The shortest secret the edge accepts, in bytes (token::MIN_SECRET_LEN). */
export const MIN_SECRET_BYTES = 32;

const STRINGS = ["order_ref", "currency", "customer"];
const CLAIMS = ["order_ref", "amount", "currency", "customer", "expires_at"];

/** Thrown for claims or a secret the edge would never accept. */
export class OrderTokenError extends Error {
  constructor(field, message) {
    super(`order token: ${field} ${message}`);
    this.name = "OrderTokenError";
    this.field = field;
  }
}

/**
 * Signs `claims` ({order_ref, amount, currency, customer, expires_at}) with
 * `secret` (a string, taken as UTF-8, or bytes). Resolves to the token.
 * Throws OrderTokenError for a secret under 32 bytes, an amount that is not
 * a positive whole number (of at most 2^53 - 1), or a missing, extra or
 * mistyped claim.
 */
export async function signOrderToken(claims, secret) {
  const key = typeof secret === "string" ? new TextEncoder().encode(secret) : secret;
  if (!(key instanceof Uint8Array) || key.length < MIN_SECRET_BYTES) {
    throw new OrderTokenError("secret", `must be at least ${MIN_SECRET_BYTES} bytes`);
  }
  const json = JSON.stringify(checked(claims));
  const payload = base64url(new TextEncoder().encode(json));
  const hmac = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  const tag = await crypto.subtle.sign("HMAC", hmac, new TextEncoder().encode(`chargeonce-order-token.v1.${payload}`));
  return `v1.${payload}.${base64url(new Uint8Array(tag))}`;
}

/** The claims in the edge's order, refused unless each is what it expects. */
function checked(claims) {
  if (claims === null || typeof claims !== "object") throw new OrderTokenError("claims", "must be an object");
  for (const name of Object.keys(claims)) {
    if (!CLAIMS.includes(name)) throw new OrderTokenError(name, "is not a claim the edge knows");
  }
  for (const name of STRINGS) {
    if (typeof claims[name] !== "string" || claims[name] === "") {
      throw new OrderTokenError(name, "must be a non-empty string");
    }
  }
  for (const name of ["amount", "expires_at"]) {
    const value = claims[name];
    if (!Number.isSafeInteger(value) || value <= 0) {
      throw new OrderTokenError(name, `must be a positive whole number up to 2^53 - 1, not ${JSON.stringify(value)}`);
    }
  }
  return Object.fromEntries(CLAIMS.map((name) => [name, claims[name]]));
}

function base64url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}
