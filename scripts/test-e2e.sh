#!/usr/bin/env bash
# Runs the end-to-end tests (tests/e2e/) with node's test runner:
# playwright-core drives Debian's /usr/bin/chromium against the stack that
# `make dev` runs, started on free ports by target/debug/stack: the demo
# shop (shop.test.mjs), and the widget embedded from the edge in storefront
# pages on other origins (embed.test.mjs). Expects `make build` to have run.
# Failing tests leave screenshots in tests/artifacts/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export PLAYWRIGHT_CORE="$tools/npm/node_modules/playwright-core/index.mjs"
export STACK_BIN="${CARGO_TARGET_DIR:-target}/debug/stack"
[ -f "$PLAYWRIGHT_CORE" ] || { echo "e2e: playwright-core is missing; run make setup (scripts/setup.sh)" >&2; exit 1; }
[ -x "$STACK_BIN" ] || { echo "e2e: $STACK_BIN is missing; run make build" >&2; exit 1; }
require e2e "$node_bin/node"
echo "e2e: the shop and cross-origin storefronts in headless Chromium against wrangler dev + paysim (about 1 min)"
"$node_bin/node" --test --test-concurrency=1 tests/e2e/*.test.mjs
