"""Serving end to end, with real processes: an untrained two-network model with summary members (no training:
fast) is logged as the pyfunc that ``train`` logs and registered as ``clinical-lstm@champion`` in a temporary
SQLite store; ``mlflow models serve`` serves that URI over HTTP on 127.0.0.1; a fresh Python loads the same URI
with ``mlflow.pyfunc.load_model``. Both must give the bundle's own risks, and the served answer must be strict
JSON (``null``, never ``NaN``) that Python's strict parse and, where ``node`` is installed, ``JSON.parse`` accept.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from helpers import free_port, running_server, tiny_model

from clinical_lstm import load_model
from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.tracking.pyfunc import synthetic_example

pytestmark = pytest.mark.slow

CHAMPION_URI = "models:/clinical-lstm@champion"
SERVE_TIMEOUT_S = 120
SCORED, REJECTED = [101, 202], 303  # stay 303 has only a time-0 Age: rejected as no_time_series


def long_rows() -> pd.DataFrame:
    """Two made-up stays (ids 101 and 202; 202's vitals 10 % higher) and a statics-only stay 303."""
    df = synthetic_example(Catalogue.default(), n_stays=2)
    df["stay_id"] = df["stay_id"].map({1: 101, 2: 202})
    vitals = (df["stay_id"] == 202) & (df["time"] > 0)
    df.loc[vitals, "value"] = df.loc[vitals, "value"] * 1.1
    statics_only = pd.DataFrame([(REJECTED, 0.0, "Age", 50.0)], columns=df.columns)
    return pd.concat([df, statics_only], ignore_index=True)


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def strict_json(body: str):
    """``body`` parsed as strict JSON: ``NaN``, ``Infinity`` and ``-Infinity`` raise (Python accepts them)."""
    return json.loads(body, parse_constant=_no_constants)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The bundle saved, logged the way ``train`` logs it and registered as champion, in a temporary store."""
    import mlflow

    from clinical_lstm.tracking.pyfunc import pyfunc_spec
    from clinical_lstm.tracking.runs import MODEL_ARTIFACT

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model = tiny_model(seed=3, n_networks=2, head=True)
    bundle = model.save(root / "model")
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
            mp.delenv(k, raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            exp = mlflow.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
            with mlflow.start_run(experiment_id=exp):
                info = mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, **pyfunc_spec(bundle, model.catalogue))
            mv = mlflow.register_model(info.model_uri, "clinical-lstm")
            mlflow.MlflowClient().set_registered_model_alias("clinical-lstm", "champion", mv.version)
        finally:
            mlflow.set_tracking_uri(previous)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # nothing from an outer run
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1")
    # `mlflow models serve` starts `uvicorn` by name: the interpreter's scripts must be on PATH (venv or not)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {"root": root, "uri": uri, "env": env, "bundle": bundle}


@pytest.fixture(scope="module")
def expected(store) -> pd.DataFrame:
    """The bundle's own predictions, loaded straight from its directory."""
    out = load_model(store["bundle"]).predict(long_rows())
    assert list(out["stay_id"]) == [*SCORED, REJECTED] and out["risk"].notna().sum() == 2
    return out.set_index("stay_id")


@pytest.fixture(scope="module")
def server(store):
    """``mlflow models serve`` of the champion on a free port; killed (its whole process group) afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, store["root"], store["env"], base + "/ping", SERVE_TIMEOUT_S,
                        store["root"] / f"serve-{port}.log"):
        yield base


def post(base: str, rows: pd.DataFrame) -> str:
    """POST ``rows`` as ``dataframe_split`` to ``/invocations``; the raw response body."""
    body = json.dumps({"dataframe_split": {"columns": list(rows.columns),
                                           "data": rows.to_numpy(dtype=object).tolist()}}).encode()
    req = urllib.request.Request(base + "/invocations", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    with opener.open(req, timeout=60) as resp:
        assert resp.status == 200
        return resp.read().decode()


def test_served_champion_gives_the_bundles_risks_as_strict_json(server, expected):
    body = post(server, long_rows())
    answer = strict_json(body)
    rows = {r["stay_id"]: r for r in answer["predictions"]}
    assert sorted(rows) == [*SCORED, REJECTED]  # one prediction per stay, the rejected one included
    assert all(set(r) == {"stay_id", "risk", "flag", "reason", "n_observations", "quality_flags"}
               for r in rows.values())
    for sid in SCORED:
        r, want = rows[sid], expected.loc[sid]
        assert r["risk"] == pytest.approx(want["risk"], abs=1e-6) and 0 <= r["risk"] <= 1
        assert r["flag"] is bool(want["flag"])
        assert r["reason"] is None
        assert type(r["n_observations"]) is int and r["n_observations"] == want["n_observations"] > 0
        assert r["quality_flags"] == want["quality_flags"]
    assert rows[REJECTED] == {"stay_id": REJECTED, "risk": None, "flag": None, "reason": "no_time_series",
                              "n_observations": None, "quality_flags": None}
    assert "NaN" not in body and "Infinity" not in body


def test_served_answer_parses_with_javascript_json_parse(server):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: JavaScript's JSON.parse not tried (the strict Python parse ran)")
    body = post(server, long_rows())
    script = "const a = JSON.parse(require('fs').readFileSync(0, 'utf8')); process.stdout.write(JSON.stringify(a));"
    done = subprocess.run([node, "-e", script], input=body, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # JSON.parse throws a SyntaxError on NaN
    assert json.loads(done.stdout) == strict_json(body)


def test_served_text_stay_ids_come_back_as_given(server, expected):
    names = {101: "00101", 202: "5f0c-stay-202", REJECTED: "00303"}
    rows = long_rows().assign(stay_id=lambda d: d["stay_id"].map(names))
    got = {r["stay_id"]: r for r in strict_json(post(server, rows))["predictions"]}
    assert sorted(got) == sorted(names.values())
    for sid, name in names.items():
        want = expected.loc[sid]
        assert got[name]["reason"] == (None if sid in SCORED else "no_time_series")
        assert (got[name]["risk"] is None) if sid == REJECTED else \
            got[name]["risk"] == pytest.approx(want["risk"], abs=1e-6)


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
    got = pd.DataFrame(strict_json(out_path.read_text())).set_index("stay_id")
    assert list(got.index) == [*SCORED, REJECTED]
    assert got.loc[SCORED, "risk"].between(0, 1).all()
    assert got.loc[SCORED, "risk"].to_numpy() == pytest.approx(expected.loc[SCORED, "risk"].to_numpy(), abs=1e-6)
    assert got.loc[REJECTED].isna().drop("reason").all() and got.loc[REJECTED, "reason"] == "no_time_series"


def _bad_inputs() -> dict[str, pd.DataFrame]:
    """What a caller may send: (a) no ``value`` column, (b) values as text (one not a number), (c) times as
    timedeltas, (d) an object ``stay_id`` column mixing integers and text."""
    rows = long_rows()
    text = rows["value"].map(repr).astype(object)
    text.iloc[3] = "n/a"  # counted as unparseable_value by the reader
    mixed = pd.Series([str(s) if s == 202 else s for s in rows["stay_id"]], dtype=object)
    return {"no value column": rows.drop(columns="value"), "text values": rows.assign(value=text),
            "timedelta times": rows.assign(time=pd.to_timedelta(rows["time"], unit="h")),
            "mixed ids": rows.assign(stay_id=mixed)}


@pytest.fixture(scope="module")
def champion_pyfunc(store):
    """The champion loaded with ``mlflow.pyfunc.load_model`` from the store, as a user would."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store["uri"])
        mlflow.set_tracking_uri(store["uri"])
        try:
            yield mlflow.pyfunc.load_model(CHAMPION_URI)
        finally:
            mlflow.set_tracking_uri(previous)


def test_pyfunc_missing_column_is_our_error_naming_it_and_no_row(champion_pyfunc):
    """MLflow's schema enforcement prints the whole input frame into its error (which `mlflow models serve` logs
    and answers): the signature leaves the checking to our reader, whose error names the column and no row."""
    with pytest.raises(Exception) as err:  # noqa: PT011 -- which class raises is part of what is tested
        champion_pyfunc.predict(_bad_inputs()["no value column"])
    message = str(err.value)
    assert type(err.value).__name__ == "DataError", message[:300]
    assert "lacks column(s) ['value']" in message
    rows = long_rows()
    leaked = [s for s in {*map(str, rows["stay_id"]), *map(repr, rows["value"])} if s in message]
    assert not leaked, f"{leaked} in the error: {message[:300]}"


@pytest.mark.parametrize("case", ["text values", "timedelta times", "mixed ids"])
def test_pyfunc_scores_what_the_reader_accepts_as_predict_does(champion_pyfunc, store, case):
    """Inputs that `clinical-lstm score` and `RiskModel.predict` accept are scored by the pyfunc, identically (no
    MLflow enforcement error quoting rows, no raw ArrowTypeError from an object column of mixed ids)."""
    rows = _bad_inputs()[case]
    want = load_model(store["bundle"]).predict(rows)
    got = champion_pyfunc.predict(rows)
    assert list(got["stay_id"]) == list(want["stay_id"])
    assert got["risk"].astype("float64").to_numpy() == pytest.approx(want["risk"].to_numpy(), abs=1e-6,
                                                                     nan_ok=True)
    assert list(got["reason"].astype(object).where(got["reason"].notna(), None)) == \
        list(want["reason"].astype(object).where(want["reason"].notna(), None))
    assert got["risk"].notna().sum() == 2
