// ChargeOnce's Place Order button as a React 19 component: mounted in an
// effect, updated when its props change, destroyed on unmount. React's
// StrictMode (mount, unmount, mount again on the same element) is fine: a
// destroyed widget leaves its element ready for the next mount.
//
//   <PlaceOrder endpoint="https://edge.example.com/v1/orders" orderRef={cart.id}
//     amount={cart.total} currency="usd" paymentMethod={pm} customer={customer.id}
//     orderToken={cart.orderToken} onSuccess={(d) => navigate(`/thanks/${d.key}`)} />
import { useEffect, useRef } from "react";
import {
  mount,
  type FailureDetail,
  type MountOptions,
  type SuccessDetail,
  type WidgetHandle,
} from "chargeonce";

export interface PlaceOrderProps extends MountOptions {
  /** The order was placed (once, whatever the clicks and retries). */
  onSuccess?: (detail: SuccessDetail) => void;
  /** The attempt ended without a placed order; `final: false` means unknown. */
  onFailure?: (detail: FailureDetail) => void;
  className?: string;
}

export function PlaceOrder({ onSuccess, onFailure, className, ...options }: PlaceOrderProps) {
  const host = useRef<HTMLDivElement>(null);
  const widget = useRef<WidgetHandle | null>(null);
  // The latest props, for the mount effect (which runs once per element)
  // and for the event listeners (which call this render's callbacks).
  const latest = useRef({ options, onSuccess, onFailure });
  latest.current = { options, onSuccess, onFailure };

  useEffect(() => {
    const element = host.current;
    if (!element) return;
    const handle = mount(element, latest.current.options);
    widget.current = handle;
    const success = (e: HTMLElementEventMap["chargeonce:success"]) => latest.current.onSuccess?.(e.detail);
    const failure = (e: HTMLElementEventMap["chargeonce:failure"]) => latest.current.onFailure?.(e.detail);
    element.addEventListener("chargeonce:success", success);
    element.addEventListener("chargeonce:failure", failure);
    return () => {
      element.removeEventListener("chargeonce:success", success);
      element.removeEventListener("chargeonce:failure", failure);
      handle.destroy();
      widget.current = null;
    };
  }, []);

  // Every render passes the current options: the widget reads them at the
  // next click, and a changed amount (a new payload) gets a new key. An
  // option this render no longer has is removed (`null`).
  useEffect(() => {
    widget.current?.update({ ...NO_OPTIONS, ...options });
  });

  return <div ref={host} className={className} />;
}

/** Every option, unset; TypeScript checks that none is missing. */
const NO_OPTIONS: { [Name in keyof Required<MountOptions>]: null } = {
  endpoint: null, orderRef: null, amount: null, currency: null, paymentMethod: null,
  customer: null, orderToken: null, label: null, retryBaseMs: null, retryCapMs: null,
  maxRetries: null, timeoutMs: null, getOrderToken: null, handleAction: null,
};
