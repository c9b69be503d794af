#!/usr/bin/env bash
# Builds the edge Worker into build/ with worker-build, pointing it at the
# offline toolchain from scripts/setup.sh (it would otherwise try to download
# wasm-bindgen, wasm-opt and esbuild). Skips the build when build/index.js is
# newer than every input, so `wrangler dev` restarts fast.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [ -f build/index.js ] && [ -z "$(find edge protocol Cargo.toml Cargo.lock -newer build/index.js -type f -print -quit)" ]; then
  echo "edge: build/ is up to date"
  exit 0
fi

worker_toolchain edge
echo "edge: building the Worker (release wasm, about 1-2 min from clean)"
(cd edge && worker-build --release)
rm -rf build
mv edge/build build
