#!/usr/bin/env bash
# The MLflow tracking server and UI over the project's local store, bound to 127.0.0.1:
#   backend   mlflow/mlflow.db   (SQLite: runs, params, metrics, the model registry)
#   artifacts mlflow/artifacts/  (models, plots, reports)
# the same store `clinical-lstm train` writes to. Works from any directory. It runs `clinical-lstm ui`, whose
# options are the only ones accepted (one parser decides the host: anything but loopback is refused unless
# --allow-remote is given; this server has no authentication):
#
#   bash mlflow/server.sh                          # http://127.0.0.1:5000
#   PORT=5001 bash mlflow/server.sh                # another port (or --port 5001)
#   bash mlflow/server.sh --workers 2
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="${PYTHON:-python3}"; fi
cd "$ROOT"
exec "$PYTHON" -m clinical_lstm.cli ui --store "$ROOT" --port "${PORT:-5000}" "$@"
