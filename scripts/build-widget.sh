#!/usr/bin/env bash
# Builds the Place Order widget into www/pkg/ (chargeonce.js + chargeonce_bg.wasm,
# loaded by a page as an ES module) with the offline toolchain from
# scripts/setup.sh: the cached wasm-bindgen (the version in Cargo.lock) and npm
# binaryen's wasm-opt. Skips the build when the wasm is newer than every input.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out=www/pkg

if [ -f "$out/chargeonce_bg.wasm" ] && [ -f "$out/chargeonce.js" ] &&
  [ -z "$(find widget protocol Cargo.toml Cargo.lock -newer "$out/chargeonce_bg.wasm" -type f -print -quit)" ]; then
  echo "widget: $out is up to date"
  exit 0
fi

use_tools
require widget wasm-bindgen wasm-opt esbuild
# wasm-bindgen refuses a module built against another version; say what to do.
locked=$(locked_version wasm-bindgen)
if [ "$(wasm-bindgen --version)" != "wasm-bindgen $locked" ]; then
  echo "widget: $(wasm-bindgen --version) on PATH, Cargo.lock wants $locked; run make setup (scripts/setup.sh)" >&2
  exit 1
fi

echo "widget: building www/pkg (release wasm, wasm-bindgen, wasm-opt -Oz; about 1-2 min from clean)"
# `cargo rustc --crate-type cdylib` rather than `wasm-pack build`: the crate
# is also an rlib (for its browser tests), and cargo skips LTO for a crate
# built as both (rust-lang/cargo#9672), which costs about a fifth of the size.
cargo rustc --quiet -p chargeonce-widget --release --target wasm32-unknown-unknown --crate-type cdylib
wasm-bindgen --target web --out-dir "$out" --out-name chargeonce \
  "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/chargeonce_widget.wasm"
# The features rustc 1.9x emits for wasm32 must be named, or wasm-opt refuses
# the module; npm binaryen 132 only (Debian's wasm-opt 108 miscompiles; see
# docs/toolchain.md). `--converge` repeats the passes until the module stops
# shrinking, and the producers section (which compilers made the module) is
# of no use to a browser: together about 0.2 KB brotli. `--low-memory-unused`
# is true of Rust's wasm (its stack and data start at 1 MiB), so addresses
# fold into load and store offsets; flattening and re-looping the control
# flow before a last -Oz finds more to fold: about 0.8 KB brotli together.
wasm-opt -Oz --converge --strip-producers --low-memory-unused --flatten --rereloop -Oz \
  --enable-bulk-memory --enable-bulk-memory-opt --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$out/chargeonce_bg.wasm" -o "$out/chargeonce_bg.wasm"
# `--target web` leaves initialisation to the page; the contract is one
# <script type="module" src="/pkg/chargeonce.js"> and nothing else, so the
# module initialises itself (the start function then mounts every
# [data-chargeonce] element). Top-level await keeps `mount` usable by importers.
grep -q '^export { initSync, __wbg_init as default };$' "$out/chargeonce.js" || {
  echo "widget: wasm-bindgen's glue no longer exports __wbg_init; update this script" >&2
  exit 1
}
printf '\n// Added by scripts/build-widget.sh: load the wasm and mount the widgets.\nawait __wbg_init();\n' >> "$out/chargeonce.js"
# The glue wasm-bindgen writes is readable rather than small; minified it
# loads about 2 KB less (brotli). esbuild keeps the module's exports and
# never renames properties, so the import names the wasm looks up survive.
esbuild "$out/chargeonce.js" --minify --format=esm --log-level=warning \
  --allow-overwrite --outfile="$out/chargeonce.js"
ls -l "$out"
