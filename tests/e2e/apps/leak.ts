// Mounts and destroys the widget over and over, for package.test.mjs's leak
// check: half the time on one element that stays (what a framework's
// remount does), half on a fresh element that is then removed.
import { mount } from "chargeonce";

declare global {
  interface Window {
    cycle(times: number): number;
  }
}

const kept = document.createElement("div");
document.body.append(kept);

window.cycle = (times) => {
  let mounted = 0;
  for (let i = 0; i < times; i++) {
    const fresh = i % 2 === 1;
    const element = fresh ? document.body.appendChild(document.createElement("div")) : kept;
    const widget = mount(element, {
      endpoint: "/v1/orders", orderRef: `leak_${i}`, amount: 1999, currency: "usd",
      paymentMethod: "pm_card_visa", customer: "cus_leak", orderToken: "v1.a.b",
    });
    if (element.shadowRoot?.querySelector("button")) mounted++;
    widget.update({ amount: 2000 + i });
    widget.destroy();
    if (fresh) element.remove();
  }
  return mounted;
};
