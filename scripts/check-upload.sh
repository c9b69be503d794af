#!/usr/bin/env bash
# check-upload.sh DIR: proves that the upload `wrangler deploy --dry-run`
# wrote to DIR holds none of the demo's code: neither the demo shop's token
# route nor the simulator's hooks, which only the `dev` build has (see
# scripts/build-edge.sh). The same search over build-dev/ must find them, so
# the check is known to be able to fail.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

upload=${1:?usage: check-upload.sh DIR}
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
