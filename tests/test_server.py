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
