#!/usr/bin/env bash
# What `make bench` needs beyond `make setup`: Debian's wrk (the load tool
# every contender is driven by) and redis-server, the peers pinned in
# bench/node/package.json, and idempotent-proxy-server from crates.io.
# Idempotent: seconds once everything is installed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
IDEMPOTENT_PROXY_VERSION=1.2.2

echo "==> bench setup: wrk, redis-server, the Node peers, idempotent-proxy-server"
echo "    (a fresh machine needs about 4 minutes, mostly compiling idempotent-proxy-server;"
echo "    with everything cached this takes seconds)"

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> ${missing[*]} (apt-get, under a minute)"
  bash scripts/apt-install.sh "${missing[@]}"
  # Debian starts a redis service on 6379; the bench runs its own on a free port.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server 2>/dev/null || true; fi
fi
echo "    wrk $(wrk --version 2>&1 | head -1 | awk '{print $2}'), $(redis-server --version | awk '{print $3}')"

# The Node peers, from their own lockfile, into the tools cache (the same
# way scripts/setup.sh installs tools/package.json).
if npm_current "$tools/bench-node" bench/node; then
  echo "    Node peers: already installed"
else
  echo "==> Node peers: express-idempotency, @node-idempotency/core, express (npm, about 10 s)"
  npm_install "$tools/bench-node" bench/node ci
fi

# It prints no version, so a stamp beside it records which one is there.
bin="$cargo_bin/idempotent-proxy-server"
if [ -x "$bin" ] && [ "$(cat "$bin.stamp" 2>/dev/null)" = "$IDEMPOTENT_PROXY_VERSION" ]; then
  echo "    idempotent-proxy-server $IDEMPOTENT_PROXY_VERSION: already installed"
else
  echo "==> idempotent-proxy-server $IDEMPOTENT_PROXY_VERSION (cargo install, about 3 min)"
  cargo install --locked --force --root "$tools/cargo" "idempotent-proxy-server@$IDEMPOTENT_PROXY_VERSION"
  echo "$IDEMPOTENT_PROXY_VERSION" > "$bin.stamp"
fi
