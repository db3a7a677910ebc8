"""MLflow tracking against a real SQLite store in a temporary folder: runs, registry, URIs, privacy, failure."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from clinical_lstm.config import Config
from clinical_lstm.tracking.runs import CHALLENGER, CHAMPION, Tracker
from clinical_lstm.workflow import train

FIRST_ID = 9_300_001  # distinctive stay ids: the privacy test searches the whole store for them
N_STAYS = 160


N_REJECTED = 6  # stays that training rejects (no time series, no label): their ids must not reach MLflow either
PLANTED = (str(FIRST_ID + 7), "Doe^John MRN 4471123")  # as variable names: another stay's id, a patient


def cohort(tmp: Path) -> tuple[Path, Path, list[int]]:
    """A synthetic long-format cohort whose mean heart rate drives the outcome, plus its labels file; the last
    stays are rejected by training (3 with statics only, 3 missing from the labels file). Returns every id."""
    rng = np.random.default_rng(7)
    rows, labels = [], []
    for k in range(N_STAYS):
        sid = FIRST_ID + k
        y = int(rng.random() < 0.3)
        labels.append((sid, y))
        rows += [(sid, 0.0, "Age", float(rng.integers(30, 90))), (sid, 0.0, "Gender", float(rng.integers(0, 2))),
                 (sid, 0.0, "ICUType", float(rng.integers(1, 5)))]
        for t in np.sort(rng.uniform(0, 24, 20)):
            rows.append((sid, float(t), "HR", float(rng.normal(110 if y else 80, 8))))
        for t in np.sort(rng.uniform(0, 24, 5)):
            rows.append((sid, float(t), "MAP", float(rng.normal(75, 10))))
        if k < 2:  # free text where a variable name belongs: counted locally, never sent to MLflow
            rows += [(sid, 1.0, PLANTED[0], 1.0), (sid, 2.0, PLANTED[1], 1.0)]
    statics_only = [FIRST_ID + N_STAYS + k for k in range(3)]
    unlabelled = [FIRST_ID + N_STAYS + 3 + k for k in range(3)]
    rows += [(sid, 0.0, "Age", 70.0) for sid in statics_only]
    rows += [(sid, float(t), "HR", 90.0) for sid in unlabelled for t in (1.0, 2.0)]
    labels += [(sid, 0) for sid in statics_only]
    data, lab = tmp / "long.csv", tmp / "labels.csv"
    pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row").write_csv(data)
    pl.DataFrame(labels, schema=["stay_id", "label"], orient="row").write_csv(lab)
    return data, lab, [s for s, _ in labels] + unlabelled


def fast_config(hidden: int) -> Config:
    return Config.from_dict({"data": {"window_hours": 24.0}, "model": {"hidden_size": hidden},
                             "train": {"epochs": 3, "patience": 2}, "evaluation": {"n_boot": 20},
                             "tracking": {"experiment": "test"}})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("test", artifact_location=(root / "artifacts").as_uri())
    data, lab, ids = cohort(root)
    runs = [train(data, root / f"model{h}", labels=lab, config=fast_config(h), progress=False, log=lambda *_: None,
                  tracking=Tracker()) for h in (8, 16)]
    yield {"root": root, "runs": runs, "data": data, "labels": lab, "ids": ids, "uri": uri}
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def test_run_holds_config_metrics_data_and_artifacts(store):
    from mlflow import MlflowClient

    res = store["runs"][0]
    assert res.tracking["error"] is None
    client = MlflowClient()
    run = client.get_run(res.tracking["run_id"])
    assert run.info.run_name == "ffill_median-h8-decay-k5"
    assert run.data.params["model.hidden_size"] == "8" and run.data.params["data.window_hours"] == "24.0"
    m = run.data.metrics
    for key in ("auroc", "auprc", "brier", "lstm_auroc", "logreg_auroc", "gbm_auprc", "validation_auprc"):
        assert key in m, key
    assert m["auroc_lower"] <= m["auroc"] <= m["auroc_upper"]
    assert res.evaluation.label.startswith(f"out of fold: the {N_STAYS} training stays")  # every plot's subtitle
    assert m["auroc"] == pytest.approx(res.metrics["masked LSTM + summaries"]["auroc"].value)  # the shipped model
    assert m["lstm_auroc"] == pytest.approx(res.metrics["masked LSTM"]["auroc"].value)
    epochs = client.get_metric_history(run.info.run_id, "val_auprc_fold0")
    assert [e.step for e in epochs] == [h["epoch"] for h in res.history if h["fold"] == 0]
    for key in ("lead_over_logreg_auroc", "lead_over_gbm_auprc_lower", "lead_over_gbm_auprc_upper",
                "lead_over_stack_auroc"):
        assert key in m, key  # the paired differences, model minus baseline
    # every hour of the 24-hour window, in the UI's "hours/" section; the stacking weights at each knot
    assert sorted(res.evaluation.hours) == [6.0, 12.0, 24.0]
    at12 = res.evaluation.hours[12.0]
    assert m["hours/auroc_h12"] == pytest.approx(at12.metrics["masked LSTM + summaries"]["auroc"].value)
    assert m["hours/stack_auroc_h12"] == pytest.approx(at12.metrics["summaries-only stack"]["auroc"].value)
    assert m["hours/lead_over_stack_auroc_h24_lower"] <= m["hours/lead_over_stack_auroc_h24"]
    assert m["hours/event_rate_h6"] == pytest.approx(float(res.evaluation.hours[6.0].y.mean()))
    assert {f"stacking/weight_{k}_h{h}" for k in ("lstm", "trees", "etrees") for h in (4, 12, 24)} <= set(m)
    assert run.data.tags["clinical_lstm.version"]
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.digest == res.model.metadata["training_data"]["digest"][:16]
    assert {t.key: t.value for t in ds.tags}["stays"] == str(N_STAYS)  # the kept, labelled stays
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/roc.png", "report/pr.png", "report/calibration.png", "report/quality_report.json",
            "report/subgroups.csv", "report/global_importance.png", "report/global_importance.csv",
            "report/hours.png", "report/hours.csv", "report/stacking.csv"} <= names
    assert "config.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_registry_champion_is_the_better_validation_auprc(store):
    from mlflow import MlflowClient

    client = MlflowClient()
    first, second = store["runs"]
    assert first.tracking["alias"] == CHAMPION and first.tracking["version"] == 1
    expected = CHAMPION if second.validation_auprc > first.validation_auprc else CHALLENGER
    assert second.tracking["alias"] == expected
    champ = client.get_model_version_by_alias("clinical-lstm", CHAMPION)
    assert str(champ.version) == str(2 if expected == CHAMPION else 1)
    assert "validation AUPRC" in client.get_run(second.tracking["run_id"]).data.tags["registry.decision"]


def test_register_moves_champion_only_when_beaten(store):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    uri = store["runs"][0].tracking["model_uri"]
    tracker = Tracker(experiment="test")
    tracker.model_name = "decisions"
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("test").experiment_id):
        assert tracker._register(uri, 0.50)["alias"] == CHAMPION  # first version
        assert tracker._register(uri, 0.40)["alias"] == CHALLENGER  # worse: challenger
        assert tracker._register(uri, 0.50)["alias"] == CHALLENGER  # a tie does not take the title
        assert tracker._register(uri, 0.60)["alias"] == CHAMPION  # better: champion moves
    assert str(client.get_model_version_by_alias("decisions", CHAMPION).version) == "4"
    assert str(client.get_model_version_by_alias("decisions", CHALLENGER).version) == "3"


def test_champion_moves_only_between_versions_measured_on_the_same_stays(store):
    """A model trained on other data (another training-data digest) never takes the title by its validation AUPRC,
    however high: it is challenger, the decision says why, and `clinical-lstm promote` moves the alias by hand."""
    import subprocess
    import sys

    import mlflow
    from mlflow import MlflowClient

    from clinical_lstm.tracking.pyfunc import pyfunc_spec

    client = MlflowClient()
    first = store["runs"][0]
    tracker = Tracker(experiment="test")
    tracker.model_name = "fair"
    experiment = mlflow.get_experiment_by_name("test").experiment_id
    with mlflow.start_run(experiment_id=experiment):
        assert tracker._register(first.tracking["model_uri"], 0.50)["alias"] == CHAMPION
    with mlflow.start_run(experiment_id=experiment):  # the same bundle, logged by a run on another cohort
        mlflow.log_param("data.digest", "0" * 64)
        other = mlflow.pyfunc.log_model(name="model", **pyfunc_spec(first.bundle_dir, first.model.catalogue))
        decided = tracker._register(other.model_uri, 0.99)
    assert decided["alias"] == CHALLENGER and decided["version"] == 2
    assert "on other data than champion version 1's 0.5000" in decided["decision"]
    assert "clinical-lstm promote 2" in decided["decision"]
    assert str(client.get_model_version_by_alias("fair", CHAMPION).version) == "1"
    with mlflow.start_run(experiment_id=experiment):  # the champion's data again: compared, and it wins
        assert tracker._register(first.tracking["model_uri"], 0.60)["alias"] == CHAMPION
    assert client.get_model_version("fair", "3").tags["validation_data_digest"] == \
        first.model.metadata["training_data"]["digest"]

    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    res = subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "promote", "2", "--name", "fair"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "version 2 of fair is champion (was version 3)"
    assert str(client.get_model_version_by_alias("fair", CHAMPION).version) == "2"
    res = subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "promote", "9", "--name", "fair"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "has no version 9" in res.stderr and "Traceback" not in res.stderr


def test_load_model_by_registry_and_run_uri(store):
    from clinical_lstm import load_model

    res = store["runs"][0]
    expected = res.model.predict(store["data"])["risk"].to_numpy()
    for uri in ("models:/clinical-lstm/1", f"runs:/{res.tracking['run_id']}/model"):
        got = load_model(uri)
        np.testing.assert_allclose(got.predict(store["data"])["risk"].to_numpy(), expected, rtol=1e-6)
    assert str(load_model("models:/clinical-lstm/1").metadata["source"]["version"]) == "1"


def test_no_stay_id_anywhere_in_the_store(store):
    """Every training id, rejected stays' included, searched in every file of the store and its artifacts."""
    assert store["runs"][0].report.rejects.height == N_REJECTED
    assert (store["root"] / "model8" / "report" / "rejects.csv").is_file()  # the local report names them
    import re

    # an id is a whole token: not digits inside a longer number (the id 9300155 is no leak in 0.5923193001552599)
    needles = [re.compile(rb"(?<![0-9.])" + str(s).encode() + rb"(?![0-9])") for s in store["ids"]]
    files = [store["root"] / "mlflow.db", *(p for p in (store["root"] / "artifacts").rglob("*") if p.is_file())]
    assert len(files) > 10
    for path in files:
        blob = path.read_bytes()
        leaked = [n.pattern.decode() for n in needles if n.search(blob)]
        assert not leaked, f"stay ids {leaked[:3]} found in {path}"
    # the search can fail: an id written as a token is found, one inside a longer number is not
    sid = str(store["ids"][0]).encode()
    assert needles[0].search(b'{"stay": ' + sid + b"}") and needles[0].search(b"id=" + sid + b".0")
    assert not needles[0].search(b"0.59" + sid + b"2599") and not needles[0].search(b"7" + sid)


def test_no_input_free_text_anywhere_in_the_store(store, tmp_path):
    """Unknown variable names are input free text (here another stay's id and a patient's name): the local
    quality report counts them by name; no param, tag, metric or artifact byte of the store holds them."""
    res = store["runs"][0]
    unknown = res.report.counts.filter(pl.col("rule") == "unknown_variable")
    assert dict(unknown.select("variable", "rows").rows()) == {PLANTED[0]: 2, PLANTED[1]: 2}
    from mlflow.artifacts import download_artifacts

    logged = download_artifacts(run_id=res.tracking["run_id"], artifact_path="report/quality_report.json",
                                dst_path=str(tmp_path))
    safe = json.loads(Path(logged).read_text())  # counted, not named
    assert {"rule": "unknown_variable", "action": "row dropped", "variable": None, "rows": 4, "names": 2} in (
        safe["counts"])
    needles = [n.encode() for n in (*PLANTED, "4471123", "Doe^John")]
    artifacts = (p for p in (store["root"] / "artifacts").rglob("*") if p.is_file())
    files = [store["root"] / "mlflow.db", *artifacts]
    assert len(files) > 10
    for path in files:
        blob = path.read_bytes()
        leaked = [n.decode() for n in needles if n in blob]
        assert not leaked, f"input free text {leaked} found in {path}"


def test_unreachable_server_still_writes_the_bundle(store, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    messages = []
    res = train(store["data"], tmp_path / "m", labels=store["labels"], config=fast_config(8), progress=False,
                log=messages.append, tracking=Tracker(log=messages.append))
    assert (tmp_path / "m" / "model" / "bundle.json").is_file()
    assert res.tracking["error"].startswith("server unreachable")
    assert any(m.startswith("WARNING: MLflow tracking server") and "still written locally" in m for m in messages)


def test_unknown_registered_model_is_a_clear_data_error(tmp_path, monkeypatch):
    """`models:/...` that does not resolve (no such model or alias) is the caller's input error, not a crash."""
    from mlflow import MlflowClient

    from clinical_lstm.data.sources import DataError
    from clinical_lstm.serve.bundle import load_model

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(uri).search_experiments()  # an existing, empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(DataError, match=r"models:/no-such-model@champion cannot be resolved.*no-such-model"):
        load_model("models:/no-such-model@champion")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # nothing from an outer run
    return {**env, **extra}


def test_model_lookup_never_creates_a_store(tmp_path, monkeypatch):
    """`score --model models:/...` where no store exists (MLFLOW_TRACKING_URI unset, an empty folder; or set to a
    database that does not exist) fails with one line naming the store looked at, and creates nothing."""
    import subprocess
    import sys

    from clinical_lstm.data.sources import DataError
    from clinical_lstm.serve.bundle import load_model

    work = tmp_path / "empty"
    work.mkdir()
    res = subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "score", "--model",
                          "models:/clinical-lstm@champion", "--data", "sample", "--out", "scores.parquet"],
                         cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.splitlines() == [
        f"clinical-lstm score: error: no MLflow tracking store at {work.resolve() / 'mlflow' / 'mlflow.db'} (the "
        f"default local store of {work.resolve()}, as MLFLOW_TRACKING_URI is not set); set MLFLOW_TRACKING_URI to "
        f"the store that holds the model (e.g. sqlite:///PATH/mlflow/mlflow.db or http://HOST:PORT), or run from "
        f"the folder whose mlflow/ holds it"]
    assert list(work.iterdir()) == []

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(DataError, match=r"^no MLflow tracking store at .*missing\.db \(MLFLOW_TRACKING_URI\)"):
        load_model("models:/clinical-lstm@champion")
    assert list(tmp_path.iterdir()) == [work]


@pytest.mark.parametrize("how", ["score", "load_model"])
def test_model_uri_leaves_no_temporary_folder(store, tmp_path, how):
    """Scoring with an MLflow URI downloads the model into the process's temporary folder, which is gone once the
    process ends; the model was usable after the download returned (load_model loads it afterwards)."""
    import subprocess
    import sys

    temp = tmp_path / "tmp"
    temp.mkdir()
    uri = "models:/clinical-lstm/1"
    cmd = ([sys.executable, "-m", "clinical_lstm.cli", "score", "--model", uri, "--data", str(store["data"]),
            "--out", str(tmp_path / "scores.parquet"), "--quiet"] if how == "score" else
           [sys.executable, "-c", f"from clinical_lstm import load_model; "
                                  f"print(load_model({uri!r}).predict({str(store['data'])!r}).height)"])
    res = subprocess.run(cmd, env=_env(MLFLOW_TRACKING_URI=store["uri"], TMPDIR=str(temp)), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    if how == "load_model":
        assert res.stdout.strip() == str(N_STAYS + N_REJECTED)
    assert [p.name for p in temp.iterdir()] == []


def test_a_file_name_that_names_a_patient_never_reaches_the_run_or_the_logged_files(store, tmp_path):
    """`train --data extract_MRN-0132539_smith.csv` once put the name in the run's tags, the dataset, metrics.json,
    the logged quality report and bundle.json: each input is a neutral label unless `[tracking] source_names`."""
    import mlflow
    from mlflow import MlflowClient

    named = tmp_path / "extract_MRN-0132539_smith.csv"
    named.write_bytes(store["data"].read_bytes())
    uri = f"sqlite:///{tmp_path / 'names.db'}"
    client = MlflowClient(uri)
    client.create_experiment("test", artifact_location=(tmp_path / "artifacts").as_uri())
    needles = (b"MRN-0132539", b"smith")

    def run(keep: bool):
        mlflow.set_tracking_uri(uri)
        try:
            res = train(named, tmp_path / f"run-{keep}", labels=store["labels"], progress=False, log=lambda *_: None,
                        tracking=Tracker(uri=uri), config=fast_config(8).replace({"tracking.source_names": keep}))
        finally:
            mlflow.set_tracking_uri(store["uri"])
        return res, client.get_run(res.tracking["run_id"])

    res, default = run(False)
    assert default.data.tags["data.sources"] == "long-format CSV"
    assert default.data.tags["evaluated_on"].startswith("long-format CSV, out of fold (160 stays")
    assert res.model.metadata["training_data"]["sources"] == ["long-format CSV"]
    logged = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]  # the run's and its model's
    assert {"quality_report.json", "metrics.json", "bundle.json"} <= {p.name for p in logged}
    local = [tmp_path / "run-False" / "model" / "bundle.json", tmp_path / "run-False" / "report" / "metrics.json"]
    for path in [tmp_path / "names.db", *logged, *local]:
        assert not [n for n in needles if n in path.read_bytes()], f"the file name is in {path}"
    _, opted = run(True)
    assert opted.data.tags["data.sources"] == "extract_MRN-0132539_smith.csv"  # opted in: the name, as asked
