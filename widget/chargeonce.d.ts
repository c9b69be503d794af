// The TypeScript declarations of the widget's module: the same file ships
// beside the script on the edge (/pkg/<version>/chargeonce.d.ts) and in the
// npm package. Written by hand because wasm-bindgen's would type the glue's
// internals; options.rs and events.rs are the source of each name, and a
// unit test in options.rs checks that every one of them is declared here.

/**
 * The options of {@link mount} and {@link WidgetHandle.update}. Each but the
 * two functions sets one `data-*` attribute of the element, which the widget
 * reads at every click. In `update`, an option given replaces the current
 * value, `null` removes it, and one left out stays as it is.
 */
export interface MountOptions {
  /** Where orders are POSTed: `data-endpoint` (default `/v1/orders`). */
  endpoint?: string | null;
  /** The storefront's order reference: `data-order-ref`. */
  orderRef?: string | null;
  /** The amount in the currency's smallest unit (cents): `data-amount`. */
  amount?: number | string | null;
  /** The ISO currency code, lower case: `data-currency`. */
  currency?: string | null;
  /** The payment method, e.g. `pm_card_visa`: `data-payment-method`. */
  paymentMethod?: string | null;
  /** The backend's customer id: `data-customer`. */
  customer?: string | null;
  /** The order token your server signed for this order: `data-order-token`. */
  orderToken?: string | null;
  /** The button's text: `data-label` (default "Place order"). */
  label?: string | null;
  /** The first retry's delay ceiling in ms: `data-retry-base-ms`. */
  retryBaseMs?: number | null;
  /** The longest retry delay in ms: `data-retry-cap-ms`. */
  retryCapMs?: number | null;
  /** How many retries before the outcome is left unconfirmed: `data-max-retries`. */
  maxRetries?: number | null;
  /** How long one request may take, in ms: `data-timeout-ms`. */
  timeoutMs?: number | null;
  /** Called when the order token expired: resolve to a fresh one. */
  getOrderToken?: ((detail: TokenNeededDetail) => Promise<string> | string) | null;
  /**
   * Called when the payment needs 3-D Secure: show the bank's challenge
   * (e.g. with Stripe.js's handleNextAction) and settle when it is done.
   * The widget then sends the order again with the same key.
   */
  handleAction?: ((clientSecret: string) => Promise<unknown> | unknown) | null;
}

/** The page's handle on one widget, as {@link mount} returns it. */
export interface WidgetHandle {
  /**
   * Changes the widget's options. Throws a `TypeError` if `options` is not
   * an object or a function option is not a function, and an `Error` if
   * the widget was destroyed.
   */
  update(options: MountOptions): void;
  /**
   * Takes the widget off the page: its button, status line, listeners,
   * timers, request in flight and Web Lock. An order in flight stays saved
   * with its key, and the next widget mounted for it looks it up first.
   * The element can be mounted on again. Calling it twice does nothing.
   */
  destroy(): void;
}

/**
 * Mounts the Place Order button on `element`, in an open shadow root.
 * Elements marked `data-chargeonce` are mounted when the module loads;
 * call this for elements added later, and from framework components.
 * Throws a `TypeError` if `element` is not an element, `options` is not an
 * object or a function option is not a function, and the browser's
 * `NotSupportedError` if the element already has a widget or cannot take a
 * shadow root.
 */
export function mount(element: HTMLElement, options?: MountOptions): WidgetHandle;

/** Why a retry was needed. */
export type RetryReason = "connection_lost" | "server_busy" | "other_device";

/** `chargeonce:attempt`: a request is about to be sent. */
export interface AttemptDetail {
  key: string;
  /** 1 for the first send. */
  attempt: number;
  /** `POST` for the order, `GET` for a status lookup (which never charges). */
  method: "POST" | "GET";
}

/** `chargeonce:retry`: a retry was scheduled. */
export interface RetryDetail {
  key: string;
  retry: number;
  of: number;
  delay_ms: number;
  reason: RetryReason | null;
  /** The answer's status, or `null` when there was none. */
  status: number | null;
}

/** `chargeonce:success`: the order was placed. */
export interface SuccessDetail {
  key: string;
  /** The edge replayed an earlier answer for this key. */
  replayed: boolean;
  /** The order was paid under this earlier key (another attempt's). */
  originalKey?: string;
  /** The backend's JSON (a Stripe PaymentIntent, say). */
  response: unknown;
}

/** `chargeonce:failure`: the attempt ended without a placed order. */
export interface FailureDetail {
  key: string;
  /**
   * `true`: refused (a decline, a bad order); the next click is a new
   * attempt. `false`: the outcome is unknown and the next click looks it up
   * with the same key.
   */
  final: boolean;
  status: number | null;
  /** Words for the customer. */
  message: string;
}

/** `chargeonce:token-needed`: the edge refused the order token as expired. */
export interface TokenNeededDetail {
  key: string;
  orderRef: string;
}

/** `chargeonce:action`: the payment needs the customer's bank (3-D Secure). */
export interface ActionDetail {
  key: string;
  /** The PaymentIntent's id. */
  payment_intent: string;
  /** What `handleAction` is given, for Stripe.js. */
  client_secret: string;
  /** The intent's `next_action` (`use_stripe_sdk`, `redirect_to_url`). */
  next_action: unknown;
}

declare global {
  // The events bubble out of the element the widget is mounted on.
  interface HTMLElementEventMap {
    "chargeonce:attempt": CustomEvent<AttemptDetail>;
    "chargeonce:retry": CustomEvent<RetryDetail>;
    "chargeonce:success": CustomEvent<SuccessDetail>;
    "chargeonce:failure": CustomEvent<FailureDetail>;
    "chargeonce:token-needed": CustomEvent<TokenNeededDetail>;
    "chargeonce:action": CustomEvent<ActionDetail>;
  }
}
