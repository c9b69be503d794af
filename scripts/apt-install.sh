#!/usr/bin/env bash
# Installs Debian packages as root (directly, or through sudo), or says what
# to run when neither is possible. Usage: scripts/apt-install.sh PACKAGE...
set -euo pipefail
if [ "$(id -u)" -eq 0 ]; then
  as_root=(env DEBIAN_FRONTEND=noninteractive)
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo DEBIAN_FRONTEND=noninteractive)
else
  echo "setup: $* missing and installing needs root;" >&2
  echo "       run: apt-get update && apt-get install -y $*" >&2
  exit 1
fi
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq "$@"
