"""The MLflow store and its UI: the default local store (``sqlite:///<cwd>/mlflow/mlflow.db``, artifacts in
``<cwd>/mlflow/artifacts`` unless ``MLFLOW_TRACKING_URI`` is set), checking that a store exists and is reachable, and
the ``mlflow server`` the ``ui`` command starts on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import urllib.request
from pathlib import Path

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def local_store(root: str | Path | None = None, create: bool = True) -> tuple[str, str]:
    """``(tracking URI, artifact root URI)`` of the project's local store under ``<root>/mlflow/``."""
    base = (Path(root) if root else Path.cwd()) / "mlflow"
    if create:
        base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(base / 'mlflow.db').resolve()}", (base / "artifacts").resolve().as_uri()


def serve_ui(store: str | Path = ".", port: int = 5000, host: str = "127.0.0.1", workers: int = 1,
             allow_remote: bool = False) -> int:
    """Run ``mlflow server`` over the local store; print its URL once it answers; Ctrl-C stops it.

    The server has no authentication: a host other than loopback is refused unless ``allow_remote``. A port that
    cannot be bound (:func:`check_bindable`), or a server that exits before it answers, is a
    :class:`~clinical_lstm.data.sources.DataError` naming ``host:port``; the server's exit status is returned.
    """
    import ipaddress
    import sys
    import time

    from ..data.sources import DataError

    try:
        loopback = host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ValueError(f"--host {host} would expose an unauthenticated MLflow server beyond this machine; "
                         f"it binds 127.0.0.1 unless you pass --allow-remote (see mlflow/README.md for a shared "
                         f"server behind authentication)")
    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    check_bindable(host, port)  # before the store is made: a refused port creates nothing
    backend, artifacts = local_store(store)
    where = f"{host}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                             "--default-artifact-root", artifacts, "--host", host, "--port", str(port),
                             "--workers", str(workers)])
    url = f"http://{'127.0.0.1' if host == 'localhost' else f'[{host}]' if ':' in host else host}:{port}"
    print(f"starting the MLflow UI over {backend} ...", file=sys.stderr, flush=True)
    answered = False
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _reachable(url) is None:
                print(f"MLflow UI on {url} (Ctrl-C stops it)", flush=True)
                answered = True
                break
            time.sleep(0.5)
        status = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=20)
        return 130
    if not answered:  # it never served: even a status of 0 is a failure to start
        raise DataError(f"the MLflow server on {where} exited with status {status} before it answered; its log "
                        f"above says why")
    if status != 0:
        print(f"the MLflow server on {where} stopped with status {status}; its log above says why", file=sys.stderr)
    return status


def check_bindable(host: str, port: int) -> None:
    """Raise :class:`~clinical_lstm.data.sources.DataError` naming ``host:port`` unless a server could listen there.

    Bound as uvicorn binds (IPv6 for a host with a colon, else IPv4; ``SO_REUSEADDR``, so a port held only by
    closed connections in ``TIME_WAIT`` is free, a listening one is not)."""
    import socket

    from ..data.sources import DataError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        why = exc.strerror or str(exc)
        hint = ("; choose another --port or stop what listens there" if exc.errno == errno.EADDRINUSE else "")
        raise DataError(f"cannot listen on {host}:{port}: {why}{hint}") from None


def tracking_uri(create: bool = False) -> str:
    """``MLFLOW_TRACKING_URI``, else the local store under ``./mlflow``; its folder is made only with ``create``
    (a run about to be logged): a read-only lookup creates nothing."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store(create=create)[0]


def existing_store(uri: str) -> str:
    """``uri`` if its store exists; a SQLite database or store folder that does not exist is a
    :class:`~clinical_lstm.data.sources.DataError` saying which store was looked at. MLflow would create an empty store
    there on first use, and a lookup must leave nothing behind."""
    from urllib.parse import urlparse

    from ..data.sources import DataError

    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
    else:
        return uri  # a server or database decides for itself
    if path is None or path.exists():
        return uri
    where = ("MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
             else f"the default local store of {Path.cwd()}, as MLFLOW_TRACKING_URI is not set")
    raise DataError(f"no MLflow tracking store at {path} ({where}); set MLFLOW_TRACKING_URI to the store that "
                    f"holds the model (e.g. sqlite:///PATH/mlflow/mlflow.db or http://HOST:PORT), or run from the "
                    f"folder whose mlflow/ holds it")


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside its database (``<dir>/artifacts``), never into the working
    directory's ``mlruns/``; a tracking server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


def _reachable(uri: str) -> str | None:
    """None if a tracking server answers its health check, else the reason (http(s) URIs only)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            return None if resp.status == 200 else f"health check answered {resp.status}"
    except Exception as exc:  # noqa: BLE001 -- any failure means: do not try to track
        return str(getattr(exc, "reason", exc))


@contextlib.contextmanager
def _quiet_artifacts():
    """No MLflow progress bar while it copies artifacts (saving a model, downloading one: a job log is no terminal)."""
    old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old
