// The declarations of chargeonce-token.mjs, published in the npm package as
// `chargeonce/token`.

/** The claims an order token carries; the edge checks each against the order. */
export interface OrderClaims {
  /** The storefront's order reference (`data-order-ref`). */
  order_ref: string;
  /** The amount in the currency's smallest unit: a positive whole number. */
  amount: number;
  /** The ISO currency code, lower case. */
  currency: string;
  /** The backend's customer id. */
  customer: string;
  /** When the token expires, in seconds since the Unix epoch. */
  expires_at: number;
}

/** The shortest secret the edge accepts, in bytes. */
export declare const MIN_SECRET_BYTES: 32;

/** Thrown for claims or a secret the edge would never accept. */
export declare class OrderTokenError extends Error {
  /** The claim at fault, or `secret` or `claims`. */
  readonly field: string;
  constructor(field: string, message: string);
}

/**
 * Signs `claims` with `secret` (a string, taken as UTF-8, or bytes) and
 * resolves to the token (`v1.<payload>.<mac>`). Rejects with
 * {@link OrderTokenError} for a secret under 32 bytes, an amount that is not
 * a positive whole number, or a missing, extra or mistyped claim.
 */
export declare function signOrderToken(claims: OrderClaims, secret: string | Uint8Array): Promise<string>;
