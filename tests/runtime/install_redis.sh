#!/usr/bin/env bash
# Install Debian's redis-server when it is missing: tests/runtime/test_queueserver.py starts one
# on a free loopback port (the bluesky queue server keeps its queue in Redis). Idempotent; run
# from .ci/run before pytest. Nothing is started here and no service is enabled.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server
# Debian's package may start a system-wide instance where an init system exists; the test does
# not use it (it starts its own on a free port), so stop it if it did start.
if command -v service >/dev/null 2>&1; then
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
command -v redis-server
