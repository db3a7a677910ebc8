#!/usr/bin/env bash
# Create .venv and install clinical-lstm with its dev tools. Idempotent; needs only Python 3.11 and pip.
# torch is installed first, pinned, so that the package's `torch>=2.4` is already met and never upgraded.
# Which build comes depends on the index: PyPI's Linux wheel of torch==2.13.0 is the multi-GB CUDA build (macOS
# and Windows get CPU builds). TORCH_INDEX_URL, if set, is passed as --index-url to the torch install only:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   bash scripts/setup.sh   # CPU-only wheel
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash scripts/setup.sh   # a CUDA build (cu<version>)
# Unset, pip's own configuration decides (its index, or a local wheel it is configured to find).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install -q --index-url "$TORCH_INDEX_URL" torch==2.13.0
else
    .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -e ".[dev,sweep]"  # the tests run sweeps; onnx is in dev
