"""Serving end to end, all real processes: the CLI trains on the bundled sample and registers the model in a
temporary SQLite store; ``mlflow models serve`` serves ``models:/clinical-lstm@champion`` over HTTP on 127.0.0.1;
a fresh Python loads the same URI with ``mlflow.pyfunc.load_model``. Both must give the bundle's own risks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers import free_port, running_server

from clinical_lstm import load_model
from clinical_lstm.catalogue import Catalogue
from clinical_lstm.tracking import synthetic_example

pytestmark = pytest.mark.slow

CHAMPION_URI = "models:/clinical-lstm@champion"
FAST = """
[model]
hidden_size = 8

[train]
epochs = 2

[evaluation]
n_boot = 20
"""
SERVE_TIMEOUT_S = 120


def long_rows() -> pd.DataFrame:
    """Two made-up stays (ids 101 and 202) in the long format; stay 202's vitals are 10 % higher."""
    df = synthetic_example(Catalogue.default(), n_stays=2)
    df["stay_id"] = df["stay_id"].map({1: 101, 2: 202})
    vitals = (df["stay_id"] == 202) & (df["time"] > 0)
    df.loc[vitals, "value"] = df.loc[vitals, "value"] * 1.1
    return df


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Train once through the real CLI into a temporary store; yields the store's paths and environment."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # nothing from an outer run
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
    # `mlflow models serve` starts `uvicorn` by name: the interpreter's scripts must be on PATH (venv or not)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    (root / "fast.toml").write_text(FAST)
    bundle = root / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
            mp.delenv(k, raising=False)
        done = subprocess.run(
            [sys.executable, "-m", "clinical_lstm.cli", "train", "--data", "sample", "--out", str(bundle),
             "--config", str(root / "fast.toml"), "--no-progress"],
            cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "WARNING" not in done.stdout, done.stdout  # tracking worked
        from mlflow import MlflowClient

        mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("clinical-lstm",
                                                                                         "champion")
        assert str(mv.version) == "1"
        yield {"root": root, "uri": uri, "env": env, "bundle": bundle}


@pytest.fixture(scope="module")
def expected(store) -> pd.DataFrame:
    """The bundle's own predictions, loaded straight from the directory the CLI wrote."""
    out = load_model(store["bundle"]).predict(long_rows())
    assert list(out["stay_id"]) == [101, 202] and out["risk"].notna().all()
    return out.set_index("stay_id")


@pytest.fixture
def server(store):
    """``mlflow models serve`` of the champion on a free port; killed (its whole process group) afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, store["root"], store["env"], base + "/ping", SERVE_TIMEOUT_S,
                        store["root"] / f"serve-{port}.log"):
        yield base


def test_served_champion_gives_the_bundles_risks(server, expected):
    rows = long_rows()
    body = json.dumps({"dataframe_split": {"columns": list(rows.columns),
                                           "data": rows.to_numpy(dtype=object).tolist()}}).encode()
    req = urllib.request.Request(server + "/invocations", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
        answer = json.loads(resp.read())
    got = pd.DataFrame(answer["predictions"])
    assert sorted(got["stay_id"]) == [101, 202]  # one prediction per stay
    got = got.set_index("stay_id").loc[[101, 202]]
    assert got["risk"].between(0, 1).all()
    assert got["risk"].to_numpy() == pytest.approx(expected["risk"].to_numpy(), abs=1e-6)
    assert list(got["flag"]) == list(expected["flag"])
    assert got["reason"].isna().all()


def test_pyfunc_in_a_fresh_process_gives_the_bundles_risks(store, expected):
    rows_path, out_path = store["root"] / "rows.parquet", store["root"] / "pyfunc.json"
    long_rows().to_parquet(rows_path)
    code = (
        "import sys, mlflow.pyfunc, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model({CHAMPION_URI!r})\n"
        "m.predict(pd.read_parquet(sys.argv[1])).to_json(sys.argv[2], orient='records')\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(rows_path), str(out_path)], cwd=store["root"],
                          env=store["env"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    got = pd.DataFrame(json.loads(out_path.read_text())).set_index("stay_id")
    assert list(got.index) == [101, 202]
    assert got["risk"].between(0, 1).all()
    assert got["risk"].to_numpy() == pytest.approx(expected["risk"].to_numpy(), abs=1e-6)
