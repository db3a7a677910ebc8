#!/usr/bin/env bash
# What the tests need beyond scripts/setup.sh: Debian's Chromium (/usr/bin/chromium) and the playwright package
# for the MLflow UI test (tests/test_ui.py), and pyspark (the `spark` extra) for tests/test_spark.py, which
# runs Spark in local mode on the machine's Java. Idempotent: skips what is already there. No
# `playwright install`: no browser download; the test drives the system Chromium. Run after scripts/setup.sh
# (it needs .venv); root or sudo for apt.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v java >/dev/null || need+=(default-jre-headless)
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi

if ! .venv/bin/python -c "import playwright.sync_api, pyspark" 2>/dev/null; then
    .venv/bin/python -m pip install -q -e ".[ui-test,spark]"
fi

/usr/bin/chromium --version 2>/dev/null | grep -i chromium
java -version 2>&1 | head -1
.venv/bin/python -c "from importlib.metadata import version as v; print('playwright', v('playwright'), '| pyspark', v('pyspark'))"
