// A storefront's checkout written against the npm package, as a TypeScript
// user writes it: package.test.mjs type-checks it with `tsc --strict`,
// bundles it with esbuild and places an order with it in Chromium. The
// lines marked @ts-expect-error are misuse the declarations must refuse;
// were one accepted, tsc would fail on the unused directive.
import { mount, type MountOptions, type SuccessDetail, type WidgetHandle } from "chargeonce";
import { OrderTokenError, signOrderToken, type OrderClaims } from "chargeonce/token";

/** What the test's page gives the app. */
interface Config {
  endpoint: string;
  orderRef: string;
  amount: number;
  customer: string;
  orderToken: string;
}

declare global {
  interface Window {
    placed: SuccessDetail[];
  }
}

// Set by the test's page; not a global of the app's own.
const config = (window as unknown as { CONFIG: Config }).CONFIG;
const element = document.querySelector<HTMLElement>("#checkout");
if (!element) throw new Error("no #checkout");

const options: MountOptions = {
  endpoint: config.endpoint,
  orderRef: config.orderRef,
  amount: config.amount,
  currency: "usd",
  paymentMethod: "pm_card_visa",
  customer: config.customer,
  orderToken: config.orderToken,
  label: "Pay now",
  getOrderToken: async ({ key, orderRef }) => `${key}:${orderRef}`,
  handleAction: async (clientSecret: string) => clientSecret.length,
};
const widget: WidgetHandle = mount(element, options);
widget.update({ label: "Place order", timeoutMs: 10_000 });

window.placed = [];
element.addEventListener("chargeonce:success", (event) => {
  // `detail` is typed through HTMLElementEventMap.
  const key: string = event.detail.key;
  const replayed: boolean = event.detail.replayed;
  if (key && !replayed) window.placed.push(event.detail);
});
element.addEventListener("chargeonce:failure", (event) => {
  const final: boolean = event.detail.final;
  const status: number | null = event.detail.status;
  console.warn(final, status, event.detail.message);
});
element.addEventListener("chargeonce:retry", (event) => {
  const reason: "connection_lost" | "server_busy" | "other_device" | null = event.detail.reason;
  console.info(reason, event.detail.delay_ms);
});

// The server-side signer's types, checked here too.
const claims: OrderClaims = {
  order_ref: config.orderRef, amount: config.amount, currency: "usd", customer: config.customer,
  expires_at: 1_900_000_000,
};
export const sign = (secret: string): Promise<string> => signOrderToken(claims, secret);
export const isTokenError = (error: unknown): string | null =>
  error instanceof OrderTokenError ? error.field : null;

// Misuse the declarations refuse.
// @ts-expect-error amount is a number or a string
export const badAmount: MountOptions = { amount: true };
// @ts-expect-error no such option
export const badOption: MountOptions = { amout: 1999 };
// @ts-expect-error mount needs an element
export const noElement = () => mount(null);
// @ts-expect-error destroy takes no arguments
export const destroyWith = () => widget.destroy(true);
export const noSuchDetail = () =>
  element.addEventListener("chargeonce:success", (event) => {
    // @ts-expect-error a success has no message
    console.log(event.detail.message);
  });
// @ts-expect-error a claim is missing
export const missingClaim: OrderClaims = { order_ref: "o", amount: 1, currency: "usd", customer: "c" };
