#!/usr/bin/env bash
# The demo page's browser test (tests/test_ui.py) drives Debian's chromium through Playwright
# (Playwright's own browser download cannot reach its servers from machines like these). Install
# it where we can: as root with apt. Elsewhere say how, and the test skips (unless
# REQUIRE_BROWSER=1, as CI sets it, which turns the skip into a failure).
set -euo pipefail
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  echo "installing Debian's chromium for the demo page's browser test (about a minute)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium > /dev/null
else
  echo "note: no $chromium; the browser test will skip (install Debian's chromium, or set CHROMIUM)"
fi
