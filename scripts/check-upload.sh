#!/usr/bin/env bash
# check-upload.sh DIST ASSETS: proves that what `wrangler deploy --dry-run`
# would upload holds nothing of the demo:
# - the Worker it wrote to DIST: neither the demo shop's token route nor the
#   simulator's hooks, which only the `dev` build has (scripts/build-edge.sh);
# - the static assets in ASSETS (the folder wrangler said it read): the
#   widget's files under /pkg/ only, none of the demo shop's files in www/,
#   by name or by content.
# Each search is also run where the demo is (build-dev/, www/) and must find
# it there, so the checks are known to be able to fail.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

upload=${1:?usage: check-upload.sh DIST ASSETS}
assets=${2:?usage: check-upload.sh DIST ASSETS}
routes=("/demo/order-token" "/__sim/")
count() { # count DIR: how many of the route names the files under DIR hold
  local dir=$1 total=0 route n
  for route in "${routes[@]}"; do
    n=$(grep -raoF -- "$route" "$dir" | wc -l)
    total=$((total + n))
  done
  echo "$total"
}

in_upload=$(count "$upload")
if [ ! -d build-dev ]; then
  CHARGEONCE_EDGE_BUILD=dev bash scripts/build-edge.sh
fi
in_dev=$(count build-dev)
if [ "$in_dev" -eq 0 ]; then
  echo "check-upload: the dev build holds no demo route either; the search is broken" >&2
  exit 1
fi
if [ "$in_upload" -ne 0 ]; then
  echo "check-upload: the upload holds the demo's routes ($in_upload matches of ${routes[*]}):" >&2
  grep -raoF -e "${routes[0]}" -e "${routes[1]}" "$upload" | sort | uniq -c >&2
  exit 1
fi
echo "demo code: absent from the upload (${routes[*]}: 0 matches; build-dev/ has $in_dev)"

# The assets: every file wrangler uploads (all but its own _headers and
# .assetsignore), as the path it is served at.
served() {
  (cd "$1" && find . -type f ! -name _headers ! -name .assetsignore | sed 's#^\.##' | sort)
}
# The demo shop's own files: www/ but the widget's copy in www/pkg/.
demo_sums=$(cd www && find . -path ./pkg -prune -o -type f ! -name _headers -print0 | xargs -0 sha256sum | cut -d' ' -f1)
# demo_files DIR: the files under DIR that are not the widget's (outside
# /pkg/) or that are a demo file's bytes under another name.
demo_files() {
  local dir=$1 path
  while read -r path; do
    if [[ $path != /pkg/* ]] || grep -qxF "$(sha256sum "$dir$path" | cut -d' ' -f1)" <<<"$demo_sums"; then
      echo "$path"
    fi
  done < <(served "$dir")
}
if [ -z "$(demo_files www)" ]; then
  echo "check-upload: no demo file found in www/ either; the search is broken" >&2
  exit 1
fi
listed=$(served "$assets")
echo "assets: the deployed Worker serves $(wc -l <<<"$listed") files from ${assets#"$here"/}:"
sed 's/^/  /' <<<"$listed"
found=$(demo_files "$assets")
if [ -n "$found" ]; then
  echo "check-upload: the assets hold files that are not the widget's:" >&2
  sed 's/^/  /' <<<"$found" >&2
  exit 1
fi
echo "demo shop: absent from the assets (all under /pkg/, none of www/'s $(wc -l <<<"$demo_sums") demo files; www/ has $(demo_files www | wc -l))"
