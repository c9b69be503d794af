#!/usr/bin/env bash
# Installs every tool ChargeOnce needs into a cache folder outside the clone,
# skipping whatever is already there at the pinned version. Idempotent: a
# rerun with everything cached takes a few seconds.
#
# Why each pin and each workaround: see docs/toolchain.md (worker-build and
# wasm-pack would otherwise download from GitHub, which may be unreachable;
# Debian's wasm-opt is broken; wrangler 4 needs Node >= 22.12).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$tools/npm" "$tools/cargo"

WORKER_BUILD_VERSION=0.8.7
WASM_PACK_VERSION=0.15.1
GECKODRIVER_VERSION=0.37.1
# Must equal the wasm-bindgen version in Cargo.lock, or worker-build refuses it.
WASM_BINDGEN_VERSION=$(locked_version wasm-bindgen)

echo "==> setup: checking the toolchain in $tools"
echo "    (a fresh machine installs everything in about 10 minutes, mostly cargo"
echo "    compiling; with everything cached this takes seconds)"

# Debian's packages, in the background when root: apt waits on the network
# and the disk while cargo below keeps both cores busy compiling, so the two
# overlap instead of adding up. One apt-get for all of them (apt holds a
# lock, and one index update serves every package); its output goes to a log
# that is shown if it fails.
apt_want=()
# The widget's browser tests drive Debian's Chromium through its chromedriver
# (the test runner finds them on PATH in /usr/bin).
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  have "chromium + chromedriver" "$(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}')"
else
  apt_want+=(chromium chromium-driver)
fi
# The widget's tests also run in Firefox ESR and in WebKit (WebKitGTK's
# MiniBrowser through its WebDriver, under a virtual X display).
if [ -x /usr/bin/firefox-esr ] && [ -x /usr/bin/WebKitWebDriver ] && command -v xvfb-run >/dev/null; then
  have "firefox-esr + WebKitWebDriver + xvfb" "$(/usr/bin/firefox-esr --version | awk '{print $3}'), $(dpkg-query -W -f '${Version}' webkit2gtk-driver)"
else
  apt_want+=(firefox-esr webkit2gtk-driver xvfb xauth)
fi
# The storefront signers in tokens/ are tested in their own runtimes:
# Python's standard library and PHP's command line (Debian's).
if command -v python3 >/dev/null && command -v php >/dev/null; then
  have "python3 + php-cli" "$(python3 --version | awk '{print $2}'), $(php -r 'echo PHP_VERSION;')"
else
  apt_want+=(python3 php-cli)
fi
apt_pid=
if [ ${#apt_want[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    # Through sudo, which may ask for a password that a background job
    # cannot read: in the foreground.
    step "Debian packages ${apt_want[*]} (apt-get through sudo, about 6 min)"
    bash scripts/apt-install.sh "${apt_want[@]}"
  else
    apt_log="$tools/apt-install.log"
    step "Debian packages ${apt_want[*]} (apt-get, about 6 min, in the background while the rest installs; log: $apt_log)"
    bash scripts/apt-install.sh "${apt_want[@]}" > "$apt_log" 2>&1 &
    apt_pid=$!
  fi
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  step "Rust target wasm32-unknown-unknown (about 20 s)"
  rustup target add wasm32-unknown-unknown
else
  have "wasm32-unknown-unknown" "rustup target"
fi

# npm tools come from ONE package.json: separate `npm i` calls remove each
# other's packages. The stamp makes a rerun skip npm entirely.
if npm_current "$tools/npm" tools; then
  have "npm tools" "node $("$node_bin/node" --version), wrangler, binaryen, esbuild, playwright-core, puppeteer-core, stripe, typescript, react"
else
  step "npm tools: Node 22, wrangler + workerd, binaryen, esbuild, playwright-core, puppeteer-core, stripe (the SDK test's client), typescript, React 19 (about 40 s)"
  # `npm ci` trips over workerd's optional per-platform packages (npm reports
  # them missing from a lockfile it wrote itself); `npm install` over the same
  # lockfile installs the same pinned versions.
  npm_install "$tools/npm" tools install
fi

# cargo_tool NAME VERSION BINARY MINUTES [cargo install flags...]
cargo_tool() {
  local name=$1 version=$2 bin=$3 minutes=$4; shift 4
  # `wasm-bindgen --version` prints "wasm-bindgen X", `wasm-pack --version`
  # "wasm-pack X", `worker-build --version` just "X".
  if "$cargo_bin/$bin" --version 2>/dev/null | grep -qE "(^| )${version//./\\.}\$"; then
    have "$name" "$version"
    return
  fi
  step "$name $version (cargo install, about $minutes min)"
  # One target folder for all of them: a dependency that two tools pin at
  # the same version and features is compiled once.
  cargo install "$@" --force --root "$tools/cargo" --target-dir "$tools/cargo-build" "$name@$version"
}

# No --locked: its lockfile pins a webpki-roots the registry mirror lacks.
cargo_tool wasm-bindgen-cli "$WASM_BINDGEN_VERSION" wasm-bindgen 3
cargo_tool worker-build "$WORKER_BUILD_VERSION" worker-build 4 --locked
# Builds and tests the widget; with `--mode no-install` it uses the
# wasm-bindgen above and never downloads.
cargo_tool wasm-pack "$WASM_PACK_VERSION" wasm-pack 2 --locked
# Firefox's WebDriver, for the widget's tests in Firefox (not in Debian).
cargo_tool geckodriver "$GECKODRIVER_VERSION" geckodriver 2 --locked

# Only the binaries are kept; the build folder is gigabytes.
rm -rf "$tools/cargo-build"

if [ -n "$apt_pid" ]; then
  echo "    waiting for apt-get (${apt_want[*]})"
  if ! wait "$apt_pid"; then
    cat "$apt_log" >&2
    echo "setup: installing Debian's ${apt_want[*]} failed (above)" >&2
    exit 1
  fi
  echo "    Debian packages installed"
fi

echo "==> setup: tools ready in $tools"
