// The test app around examples/react/PlaceOrder.tsx: a cart whose total the
// test changes, and a checkout step the test hides and shows again, in
// StrictMode (which mounts, unmounts and mounts every effect once more).
// package.test.mjs drives it through `window.app`.
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import type { SuccessDetail } from "chargeonce";
import { PlaceOrder } from "./examples/react/PlaceOrder";

interface Cart {
  amount: number;
  orderToken: string;
}

interface Config {
  endpoint: string;
  orderRef: string;
  customer: string;
  carts: Cart[];
}

declare global {
  interface Window {
    app: { showCart(index: number): void; setShown(shown: boolean): void };
    successes: SuccessDetail[];
  }
}

function Checkout({ config }: { config: Config }) {
  const [cart, showCart] = useState(0);
  const [shown, setShown] = useState(true);
  window.app = { showCart, setShown };
  const { amount, orderToken } = config.carts[cart];
  return (
    <main>
      <p id="total">{amount}</p>
      {shown && (
        <PlaceOrder
          className="checkout"
          endpoint={config.endpoint}
          orderRef={config.orderRef}
          amount={amount}
          currency="usd"
          paymentMethod="pm_card_visa"
          customer={config.customer}
          orderToken={orderToken}
          label={`Pay ${(amount / 100).toFixed(2)}`}
          onSuccess={(detail) => window.successes.push(detail)}
        />
      )}
    </main>
  );
}

window.successes = [];
const root = document.getElementById("root");
if (!root) throw new Error("no #root");
createRoot(root).render(
  <StrictMode>
    <Checkout config={(window as unknown as { CONFIG: Config }).CONFIG} />
  </StrictMode>,
);
