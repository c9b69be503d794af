#!/usr/bin/env bash
# Runs the widget's browser tests (widget/tests/web.rs) in three browser
# engines: wasm-pack builds the tests for wasm32 once, and the cached
# wasm-bindgen test runner drives each engine through its WebDriver:
# - Chromium: Debian's /usr/bin/chromium through /usr/bin/chromedriver, with
#   the flags in widget/webdriver.json (the runner adds --headless
#   --no-sandbox --disable-dev-shm-usage, so it works as root and without a
#   display);
# - Firefox ESR: Debian's firefox-esr through geckodriver (cargo-installed
#   into the tools cache; the runner adds -headless);
# - WebKit: WebKitGTK's MiniBrowser through Debian's /usr/bin/WebKitWebDriver,
#   given to the runner as its Safari driver, under xvfb-run: WebKitGTK has
#   no headless mode, so it gets a virtual display.
# ENGINES=chrome,firefox,safari (the default) picks which.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Debug info makes the test wasm 60 MB instead of 3 MB and each run ~7 s
# slower. Set here rather than in [profile.dev] so native builds keep theirs
# (a per-package override is not enough: most of it comes from dependencies
# and std).
export CARGO_PROFILE_DEV_DEBUG=false
# Debian's chromedriver and chromium (/usr/bin) come before any other on PATH.
export PATH="/usr/bin:$PATH"
use_tools
engines=${ENGINES:-chrome,firefox,safari}

echo "widget tests: wasm-pack test in headless $engines (about 1-2 min from clean, seconds per engine when built)"
cd widget
for engine in ${engines//,/ }; do
  case $engine in
    chrome)
      require "widget tests" wasm-pack wasm-bindgen wasm-bindgen-test-runner chromedriver chromium
      echo "==> widget tests in Chromium ($(chromium --version))"
      wasm-pack test --headless --chrome --mode no-install
      ;;
    firefox)
      require "widget tests" wasm-pack wasm-bindgen-test-runner geckodriver firefox-esr
      echo "==> widget tests in Firefox ($(firefox-esr --version))"
      wasm-pack test --headless --firefox --mode no-install --geckodriver "$(command -v geckodriver)"
      ;;
    safari)
      require "widget tests" wasm-pack wasm-bindgen-test-runner /usr/bin/WebKitWebDriver xvfb-run
      echo "==> widget tests in WebKit (WebKitGTK $(dpkg-query -W -f '${Version}' webkit2gtk-driver 2>/dev/null))"
      xvfb-run -a wasm-pack test --headless --safari --mode no-install --safaridriver /usr/bin/WebKitWebDriver
      ;;
    *)
      echo "widget tests: unknown engine '$engine' in ENGINES (chrome, firefox, safari)" >&2
      exit 2
      ;;
  esac
done
