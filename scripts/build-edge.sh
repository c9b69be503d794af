#!/usr/bin/env bash
# Builds the edge Worker with worker-build, pointing it at the offline
# toolchain from scripts/setup.sh (it would otherwise try to download
# wasm-bindgen, wasm-opt and esbuild). Two builds, in two folders:
#
# - build/: what `wrangler deploy` ships (wrangler.toml's `main`), without
#   the demo shop's token issuer or the simulator's hooks;
# - build-dev/: with CHARGEONCE_EDGE_BUILD=dev, the cargo feature `dev`
#   that adds them, for `make dev` and the tests (the stack runs
#   `wrangler dev build-dev/index.js` with that variable set, so wrangler's
#   own run of this script builds the same).
#
# Skips the build when its index.js is newer than every input, so
# `wrangler dev` restarts fast.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${CHARGEONCE_EDGE_BUILD:-deploy}" in
  deploy) out=build features=() what="the Worker as deployed" ;;
  dev) out=build-dev features=(--features dev) what="the Worker with the demo's routes (make dev, tests)" ;;
  *) echo "build-edge.sh: CHARGEONCE_EDGE_BUILD must be deploy or dev, not ${CHARGEONCE_EDGE_BUILD}" >&2; exit 1 ;;
esac

if [ -f "$out/index.js" ] && [ -z "$(find edge protocol Cargo.toml Cargo.lock -newer "$out/index.js" -type f -print -quit)" ]; then
  echo "edge: $out/ is up to date"
  exit 0
fi

worker_toolchain edge
echo "edge: building $what into $out/ (release wasm, about 1-2 min from clean)"
(cd edge && worker-build --release "${features[@]}")
rm -rf "$out"
mv edge/build "$out"
