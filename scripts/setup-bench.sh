#!/usr/bin/env bash
# What `make bench` needs beyond `make setup`: Debian's wrk, the load tool
# every contender is driven by. Idempotent; seconds once installed.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
  echo "==> wrk: $(wrk --version 2>&1 | head -1 | awk '{print $2}'), installed"
  exit 0
fi
echo "==> wrk (apt-get, under a minute)"
bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" wrk
