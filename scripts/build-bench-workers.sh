#!/usr/bin/env bash
# Builds the benchmark's comparison Workers (bench/workers: the pass-through
# floor and the naive KV anti-pattern) into bench/workers/build with
# worker-build and the offline toolchain, like scripts/build-edge.sh does for
# the edge. Skips the build when nothing changed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd bench/workers

if [ -f build/index.js ] && [ -z "$(find src Cargo.toml ../../Cargo.lock -newer build/index.js -type f -print -quit)" ]; then
  echo "bench workers: build/ is up to date"
  exit 0
fi

worker_toolchain "bench workers"
echo "bench workers: building the floor and naive-KV Worker (release wasm, about 1 min)"
worker-build --release
