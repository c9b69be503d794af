#!/usr/bin/env bash
# Builds the widget's npm package (`make package`): build-npm/chargeonce/
# and its tarball, build-npm/chargeonce-<version>.tgz, as `npm publish`
# would upload it. What goes in:
#   chargeonce.js, chargeonce_bg.wasm, chargeonce.d.ts
#                     the bytes the edge serves under /pkg/<version>/
#                     (scripts/build-widget.sh), so the module, its wasm
#                     and its SRI hash are the same everywhere
#   token.js, token.d.ts   tokens/js's order-token signer (`chargeonce/token`)
#   package.json, README.md   widget/npm's
# The package's version is the widget crate's; this refuses to build if
# widget/npm/package.json says otherwise.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require package npm
bash scripts/build-widget.sh >/dev/null
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' widget/Cargo.toml)
declared=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' widget/npm/package.json)
if [ "$version" != "$declared" ]; then
  echo "package: widget/npm/package.json says $declared, widget/Cargo.toml $version; make them agree" >&2
  exit 1
fi
built=build-widget/pkg/$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' build-widget/pkg/embed.json)
out=build-npm
rm -rf "$out"
mkdir -p "$out/chargeonce"
cp "$built/chargeonce.js" "$built/chargeonce_bg.wasm" "$built/chargeonce.d.ts" "$out/chargeonce/"
cp tokens/js/chargeonce-token.mjs "$out/chargeonce/token.js"
cp tokens/js/chargeonce-token.d.ts "$out/chargeonce/token.d.ts"
cp widget/npm/package.json widget/npm/README.md "$out/chargeonce/"
(cd "$out" && npm pack ./chargeonce --loglevel=error >/dev/null)
echo "package: $out/chargeonce-$version.tgz ($(wc -c < "$out/chargeonce-$version.tgz") bytes), from $built:"
tar -tzf "$out/chargeonce-$version.tgz" | sed 's/^/  /'
