#!/usr/bin/env bash
# The MLflow tracking server and UI over the project's local store, bound to 127.0.0.1 only:
#   backend   mlflow/mlflow.db   (SQLite: runs, params, metrics, the model registry)
#   artifacts mlflow/artifacts/  (models, plots, reports)
# the same store `clinical-lstm train` writes to and `clinical-lstm ui` serves. Works from any directory.
#
#   bash mlflow/server.sh                          # http://127.0.0.1:5000
#   PORT=5001 bash mlflow/server.sh                # another port
#   bash mlflow/server.sh --workers 1              # further arguments go to `mlflow server`
#
# Never expose this server: it has no authentication. See mlflow/README.md for a shared server.
set -euo pipefail

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${PORT:-5000}"
if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="${PYTHON:-python3}"; fi

for arg in "$@"; do
  case "$arg" in
    -h|--host|--host=*)
      echo "server.sh binds 127.0.0.1 only; for a shared server see mlflow/README.md" >&2
      exit 2 ;;
  esac
done

# The store's URIs come from the package, so they match what training logs to.
read -r BACKEND ARTIFACTS < <(
  "$PYTHON" -c 'import sys; from clinical_lstm.tracking import local_store; print(*local_store(sys.argv[1]))' "$ROOT"
)

echo "MLflow UI on http://127.0.0.1:$PORT over $BACKEND (artifacts $ARTIFACTS); Ctrl-C stops it" >&2
cd "$ROOT"
exec "$PYTHON" -m mlflow server --backend-store-uri "$BACKEND" --default-artifact-root "$ARTIFACTS" \
  --host 127.0.0.1 --port "$PORT" "$@"
