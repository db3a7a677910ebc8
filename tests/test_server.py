"""The tracking UI binds loopback only: one parser decides the host, whatever the spelling of the option."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port, running_server

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("args", [["-h0.0.0.0"], ["-h", "0.0.0.0"], ["--host=0.0.0.0"], ["--host", "0.0.0.0"],
                                  ["--host=10.1.2.3"], ["--ho=0.0.0.0"], ["--gunicorn-opts", "--bind 0.0.0.0:80"],
                                  ["--uvicorn-opts=--host 0.0.0.0"], ["--host", "::"]])
def test_server_script_refuses_any_way_of_asking_for_a_public_host(args, tmp_path):
    res = subprocess.run(["bash", str(ROOT / "mlflow" / "server.sh"), "--store", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PORT": str(free_port())})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "mlflow").exists()  # refused before anything was started or created


def test_non_loopback_needs_an_explicit_allow(tmp_path):
    res = subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "ui", "--store", str(tmp_path), "--host",
                          "0.0.0.0"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--allow-remote" in res.stderr


def test_ui_prints_its_url_once_it_answers(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "clinical_lstm.cli", "ui", "--store", str(tmp_path), "--port", str(port)]
    log = tmp_path / "ui.log"
    with running_server(cmd, tmp_path, dict(os.environ), f"http://127.0.0.1:{port}/health", 120, log):
        import time

        deadline = time.monotonic() + 10
        while f"MLflow UI on http://127.0.0.1:{port}" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert f"MLflow UI on http://127.0.0.1:{port}" in log.read_text()
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()


def _ui(store: Path, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "ui", "--store", str(store), "--port",
                           str(port)], capture_output=True, text=True, timeout=120)


def test_ui_on_an_occupied_port_is_a_one_line_error(tmp_path):
    """A port something already listens on: refused before the server starts or the store is made, exit 2."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = _ui(tmp_path, port)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines() == [f"clinical-lstm ui: error: cannot listen on 127.0.0.1:{port}: Address "
                                       f"already in use; choose another --port or stop what listens there"]
    assert res.stdout == ""
    assert not (tmp_path / "mlflow").exists()


def test_ui_whose_server_exits_before_answering_is_an_error(tmp_path):
    """The server starts but dies (here: its store is not a database): not exit 0, not a bare status: exit 2 with
    one line naming host:port, after the server's own log."""
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "mlflow.db").write_text("not an SQLite database, just text that fills a page " * 20)
    port = free_port()
    res = _ui(tmp_path, port)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines()[-1] == (f"clinical-lstm ui: error: the MLflow server on 127.0.0.1:{port} exited "
                                           f"with status 1 before it answered; its log above says why")
    assert "MLflow UI on" not in res.stdout
