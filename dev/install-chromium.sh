#!/usr/bin/env bash
# Install Debian's headless-capable Chromium and its WebDriver (for the plugin page's browser
# test), unless both are already there. Needs root (apt-get); no browser is downloaded
# from anywhere but the machine's own apt sources.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
