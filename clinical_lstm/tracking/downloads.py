"""Registered bundles brought from MLflow to disk: ``models:/`` and ``runs:/`` URIs, downloaded once into a private
folder and removed when their process ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .store import _quiet_artifacts, existing_store, tracking_uri

_DOWNLOADS: dict[int, str] = {}  # process id -> its temporary folder for downloaded models, made on first use


def is_model_uri(source) -> bool:
    return isinstance(source, str) and source.split(":/", 1)[0] in ("models", "runs", "mlflow-artifacts")


def download_bundle(uri: str, dst: str | Path | None = None) -> tuple[Path, dict]:
    """Fetch the bundle inside an MLflow model (``models:/name@alias``, ``models:/name/3``, ``runs:/id/model``).

    Returns the bundle directory and ``{"uri": ..., "version": ...}`` for provenance. Without ``dst`` the model is
    downloaded into this process's temporary folder (:func:`_downloads`), removed when the process exits: the
    bundle stays readable until then and nothing is left behind. A ``dst`` is the caller's to remove. The store
    must exist: a lookup never creates one (:func:`existing_store`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from ..data.sources import DataError

    store = existing_store(tracking_uri())
    mlflow.set_tracking_uri(store)
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="model-", dir=_downloads()))
    try:
        with _quiet_artifacts():
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:  # an unknown model, alias, version or run: the caller's input, not a crash
        shutil.rmtree(dst, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{uri} cannot be resolved in the tracking store {store}: {first}. List the registered "
                        f"models in the MLflow UI (`clinical-lstm ui`) or set MLFLOW_TRACKING_URI") from None
    bundle = next((p.parent for p in local.rglob("bundle.json")), None)
    if bundle is None:
        shutil.rmtree(dst, ignore_errors=True)
        raise FileNotFoundError(f"{uri} holds no clinical-lstm bundle (no bundle.json among its artifacts)")
    return bundle, {"uri": uri, "version": _version_of(uri)}


def _downloads() -> str:
    """``<tmp>/clinical-lstm-models-*``: every model this process downloads, removed whole when it exits.

    A forked child gets a folder of its own and, exiting, leaves its parent's alone (it inherits the exit hook)."""
    import atexit

    pid = os.getpid()
    if pid not in _DOWNLOADS:
        _DOWNLOADS[pid] = tempfile.mkdtemp(prefix="clinical-lstm-models-")
        atexit.register(_remove_downloads, _DOWNLOADS[pid], pid)
    return _DOWNLOADS[pid]


def _remove_downloads(folder: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def _version_of(uri: str) -> str | None:
    if not uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient

    ref = uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return MlflowClient().get_model_version_by_alias(name, alias).version
        return ref.split("/")[1] if "/" in ref else None
    except Exception:  # noqa: BLE001 -- provenance only
        return None
