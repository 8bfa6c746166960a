#!/usr/bin/env bash
# Install Debian's chromium and chromedriver when missing: tests/web/ drive the panel in headless
# chromium through selenium (they skip with the reason on a machine without them). Idempotent;
# run from .ci/run before pytest. Nothing is started here.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
command -v chromium
command -v chromedriver
