#!/usr/bin/env bash
# Runs the widget's browser tests (widget/tests/web.rs) in headless Chromium:
# wasm-pack builds the tests for wasm32 and the cached wasm-bindgen test runner
# drives Debian's /usr/bin/chromium through /usr/bin/chromedriver, with the
# flags in widget/webdriver.json. Works as root and without a display (the
# runner adds --headless --no-sandbox --disable-dev-shm-usage).
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
require "widget tests" wasm-pack wasm-bindgen wasm-bindgen-test-runner chromedriver chromium

echo "widget tests: wasm-pack test in headless Chromium (about 1-2 min from clean, seconds when built)"
cd widget
wasm-pack test --headless --chrome --mode no-install
