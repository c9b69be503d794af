#!/usr/bin/env bash
# Builds the Place Order widget: chargeonce.js (the JS glue, an ES module)
# and chargeonce_bg.wasm, with the offline toolchain from scripts/setup.sh:
# the cached wasm-bindgen (the version in Cargo.lock) and npm binaryen's
# wasm-opt. Skips the compile when the files are newer than every input.
#
# What it writes (README, "Embedding from another origin"):
#   build-widget/       what `wrangler deploy` uploads as static assets
#                       (wrangler.toml's [assets]): the widget and nothing else
#     _headers          widget/_headers: CORS and cache headers for /pkg/*
#     pkg/<version>/    the bundle under an immutable path (chargeonce.js,
#                       chargeonce_bg.wasm, and widget/chargeonce.d.ts);
#                       <version> is the first 16 hex digits of the
#                       script's SHA-256
#     pkg/chargeonce.js a short-cached alias: re-exports pkg/<version>/
#     pkg/embed.json    the script's and the wasm's URLs and SRI hashes
#   www/pkg, www/_headers  the same files, for the demo shop that `make dev`
#                       serves from www/ (never deployed)
# and prints the embed snippet with the script's SRI hash.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out=build-widget
stamp=$out/pkg/embed.json

# sri FILE: FILE's Subresource Integrity value (sha384, base64).
sri() {
  "$node_bin/node" -e 'const { createHash } = require("node:crypto");
    const bytes = require("node:fs").readFileSync(process.argv[1]);
    console.log("sha384-" + createHash("sha384").update(bytes).digest("base64"));' "$1"
}

# The embed tags for the built version, from embed.json: the script, and the
# optional preload of its wasm (README, "The Place Order widget").
print_embed() {
  field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" "$stamp"; }
  echo "widget: embed it from your edge (the paths are immutable; integrity is each file's SRI hash):"
  echo "  <script type=\"module\" src=\"https://<your edge>$(field script)\""
  echo "          integrity=\"$(field script_integrity)\" crossorigin=\"anonymous\"></script>"
  echo "  <link rel=\"preload\" href=\"https://<your edge>$(field wasm)\" as=\"fetch\" type=\"application/wasm\""
  echo "        crossorigin=\"anonymous\" integrity=\"$(field wasm_integrity)\">"
}

# The headers in the deploy folder, and the demo shop's copy of it all:
# checked on every run, so an edit to widget/_headers reaches both without a
# rebuild, and rewritten only when they differ (`wrangler dev` runs this as
# its build command, and may be serving www/ meanwhile).
publish() {
  cmp -s widget/_headers "$out/_headers" || cp widget/_headers "$out/_headers"
  cmp -s widget/_headers www/_headers || cp widget/_headers www/_headers
  if ! diff -rq "$out/pkg" www/pkg >/dev/null 2>&1; then
    rm -rf www/pkg
    cp -R "$out/pkg" www/pkg
  fi
}

if [ -f "$stamp" ] &&
  [ -z "$(find widget protocol Cargo.toml Cargo.lock scripts/build-widget.sh -newer "$stamp" -type f \
    ! -name _headers -print -quit)" ]; then
  publish
  echo "widget: $out/pkg is up to date"
  print_embed
  exit 0
fi

use_tools
require widget wasm-bindgen wasm-opt esbuild node
# wasm-bindgen refuses a module built against another version; say what to do.
locked=$(locked_version wasm-bindgen)
if [ "$(wasm-bindgen --version)" != "wasm-bindgen $locked" ]; then
  echo "widget: $(wasm-bindgen --version) on PATH, Cargo.lock wants $locked; run make setup (scripts/setup.sh)" >&2
  exit 1
fi

echo "widget: building $out/pkg (release wasm, wasm-bindgen, wasm-opt -Oz; about 1-2 min from clean)"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# `cargo rustc --crate-type cdylib` rather than `wasm-pack build`: the crate
# is also an rlib (for its browser tests), and cargo skips LTO for a crate
# built as both (rust-lang/cargo#9672), which costs about a fifth of the size.
cargo rustc --quiet -p chargeonce-widget --release --target wasm32-unknown-unknown --crate-type cdylib
wasm-bindgen --target web --out-dir "$stage" --out-name glue \
  "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/release/chargeonce_widget.wasm"
# The features rustc 1.9x emits for wasm32 must be named, or wasm-opt refuses
# the module; npm binaryen 132 only (Debian's wasm-opt 108 miscompiles; see
# docs/toolchain.md). `--converge` repeats the passes until the module stops
# shrinking, and the producers section (which compilers made the module) is
# of no use to a browser: together about 0.2 KB brotli. Leptos 0.8 brings
# wasm-streams (through server_fn, which it always depends on), whose
# IntoUnderlying* classes wasm-bindgen exports to JS; the widget has no
# server functions and never makes one, so their exports are removed first
# and -Oz drops their code: about 1.2 KB brotli (the glue's classes go in
# the bundling below). `--low-memory-unused`
# is true of Rust's wasm (its stack and data start at 1 MiB), so addresses
# fold into load and store offsets; flattening and re-looping the control
# flow before a last -Oz finds more to fold: about 0.8 KB brotli together.
wasm-opt --remove-exports --pass-arg=remove-exports@'*intounderlying*' \
  -Oz --converge --strip-producers --low-memory-unused --flatten --rereloop -Oz \
  --enable-bulk-memory --enable-bulk-memory-opt --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$stage/glue_bg.wasm" -o "$stage/chargeonce_bg.wasm"
rm "$stage/glue_bg.wasm"
# `--target web` leaves initialisation to the page; the contract is one
# <script type="module"> and nothing else, so the module initialises itself
# (the start function then mounts every [data-chargeonce] element).
# Top-level await keeps `mount` usable by importers, and `mount` is all the
# module exports (widget/chargeonce.d.ts declares it): esbuild bundles this
# entry with the glue, leaving out what nothing reaches. The wasm-streams
# classes whose exports are gone are taken out of the glue first
# (scripts/trim-glue.mjs says why esbuild cannot): about 0.3 KB brotli. The wasm is fetched
# from beside the module (import.meta.url: the edge it came from, whatever
# the page's origin) with the wasm's SRI hash, so a page that pinned the
# script's hash has pinned the wasm too. Other bytes are blocked by the
# browser, which says so on the console ("Failed to find a valid digest in
# the 'integrity' attribute …"), and the module fails to load; a message of
# our own would cost about 70 bytes of the 60 KB budget and say no more.
grep -q '^export { initSync, __wbg_init as default };$' "$stage/glue.js" || {
  echo "widget: wasm-bindgen's glue no longer exports __wbg_init; update this script" >&2
  exit 1
}
"$node_bin/node" scripts/trim-glue.mjs "$stage/glue.js"
wasm_integrity=$(sri "$stage/chargeonce_bg.wasm")
cat > "$stage/entry.js" <<JS
// Written by scripts/build-widget.sh: fetch the wasm (only the bytes this
// script was built with) and mount the widgets.
import init from "./glue.js";
export { mount } from "./glue.js";
await init({
  module_or_path: fetch(new URL("chargeonce_bg.wasm", import.meta.url), { integrity: "$wasm_integrity" }),
});
JS
# The glue wasm-bindgen writes is readable rather than small; minified it
# loads about 2 KB less (brotli). esbuild never renames properties, so the
# import names the wasm looks up survive.
esbuild "$stage/entry.js" --bundle --minify --format=esm --log-level=warning \
  --outfile="$stage/chargeonce.js"
rm "$stage/entry.js" "$stage/glue.js" "$stage"/*.d.ts
cp widget/chargeonce.d.ts "$stage/chargeonce.d.ts"

version=$(sha256sum "$stage/chargeonce.js" | cut -c1-16)
rm -rf "$out"
mkdir -p "$out/pkg/$version"
mv "$stage"/* "$out/pkg/$version/"
# The alias names the version rather than copying it: a cache holding an
# old alias still gets a script and wasm that match each other.
printf 'export * from "./%s/chargeonce.js";\n' "$version" |
  tee "$out/pkg/chargeonce.js" > "$out/pkg/chargeonce.d.ts"
cat > "$stamp" <<JSON
{
  "version": "$version",
  "script": "/pkg/$version/chargeonce.js",
  "script_integrity": "$(sri "$out/pkg/$version/chargeonce.js")",
  "wasm": "/pkg/$version/chargeonce_bg.wasm",
  "wasm_integrity": "$wasm_integrity"
}
JSON
publish
ls -l "$out/pkg" "$out/pkg/$version"
print_embed
