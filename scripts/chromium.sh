#!/usr/bin/env bash
# Headless Chromium and its WebDriver, from Debian's packages, for the result browser's test
# (tests/integration/test_browser.py). Does nothing when both are installed already.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
/usr/bin/chromium --version
