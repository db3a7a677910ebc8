#!/usr/bin/env bash
# What tests/test_ui.py needs beyond scripts/setup.sh: Debian's Chromium (/usr/bin/chromium) and the playwright
# package in .venv. Idempotent: skips what is already there. No `playwright install`: no browser download;
# the test drives the system Chromium. Run after scripts/setup.sh (it needs .venv); root or sudo for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
fi

if ! .venv/bin/python -c "import playwright.sync_api" 2>/dev/null; then
    .venv/bin/python -m pip install -q playwright
fi

/usr/bin/chromium --version 2>/dev/null | grep -i chromium
.venv/bin/python -c "from importlib.metadata import version; print('playwright', version('playwright'))"
