#!/usr/bin/env bash
# Runs the end-to-end tests (tests/e2e/) with node's test runner:
# against the stack that `make dev` runs, started on free ports by
# target/debug/stack: the demo shop in Debian's Chromium and Firefox ESR
# (shop.test.mjs, puppeteer-core), and in Chromium (playwright-core) the
# widget embedded from the edge in storefront
# pages on other origins (embed.test.mjs), and the npm package in a
# TypeScript app and a React app (package.test.mjs, after `make package`).
# Expects `make build` to have run.
# Failing tests leave screenshots in tests/artifacts/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PLAYWRIGHT_CORE="$tools/npm/node_modules/playwright-core/index.mjs"
export PUPPETEER_CORE="$tools/npm/node_modules/puppeteer-core/lib/esm/puppeteer/puppeteer-core.js"
export STACK_BIN="${CARGO_TARGET_DIR:-target}/debug/stack"
export TOOLS_NPM="$tools/npm/node_modules"
for driver in "$PLAYWRIGHT_CORE" "$PUPPETEER_CORE"; do
  [ -f "$driver" ] || { echo "e2e: $driver is missing; run make setup (scripts/setup.sh)" >&2; exit 1; }
done
[ -x "$STACK_BIN" ] || { echo "e2e: $STACK_BIN is missing; run make build" >&2; exit 1; }
require e2e "$node_bin/node"
bash scripts/package-widget.sh
echo "e2e: the shop in headless Chromium and Firefox, cross-origin storefronts and the npm package's apps in Chromium, against wrangler dev + paysim (about 3 min)"
"$node_bin/node" --test --test-concurrency=1 tests/e2e/*.test.mjs
