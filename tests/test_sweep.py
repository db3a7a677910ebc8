"""Sweeps as Optuna studies with nested MLflow runs, against real SQLite stores in tmp_path: the search space,
two worker processes on one study, median pruning, and config errors before any training."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import pytest
from optuna.trial import TrialState

from clinical_lstm.cli import main
from clinical_lstm.config import Config, load
from clinical_lstm.sweep.run import SearchSpace, SweepSpec, _Objective, _ParentRun, run_sweep

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda *_: None}
TINY = {"data": {"window_hours": 24.0}, "model": {"hidden_size": 8, "summaries": False},
        "train": {"folds": 2, "epochs": 2}, "evaluation": {"n_boot": 20, "explain_stays": 0},
        "tracking": {"experiment": "sweep-test"}}
TINY_TOML = """
[data]
window_hours = 24.0
[model]
hidden_size = 8
summaries = false
[train]
folds = 2
epochs = 2
[evaluation]
n_boot = 20
explain_stays = 0
[tracking]
experiment = "sweep-test"
"""


def cohort(root: Path, n: int = 80) -> tuple[Path, Path]:
    """A long-format cohort whose heart rate gives the outcome away (a quarter die), and its labels file."""
    rng = np.random.default_rng(3)
    rows, labels = [], []
    for k in range(n):
        sid, died = 1000 + k, int(k % 4 == 0)
        labels.append((sid, died))
        rows.append((sid, 0.0, "Age", float(rng.integers(30, 90))))
        rows += [(sid, float(t), "HR", float(rng.normal(115 if died else 80, 8))) for t in np.sort(rng.uniform(0, 24, 12))]
    data, lab = root / "long.csv", root / "labels.csv"
    pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row").write_csv(data)
    pl.DataFrame(labels, schema=["stay_id", "label"], orient="row").write_csv(lab)
    return data, lab


def tiny(**train) -> Config:
    return Config.from_dict({**TINY, "train": {**TINY["train"], **train}})


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh MLflow store in tmp_path (every MLflow call of the test goes there)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


# -- the search space -----------------------------------------------------------------------------------------
def test_sweep_rejects_unknown_parameter():
    with pytest.raises(ValueError, match=r"unknown parameter 'model.hiden'"):
        SearchSpace.parse(Config(), {"model.hiden": [1]})
    space = SearchSpace.parse(Config(), {"model.hidden_size": [4, 8], "model.decay": [True, False]})
    assert space.grid_size == 4
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space.grid))
    drawn = []
    study.optimize(lambda trial: drawn.append(space.suggest(trial)) or 0.0)  # the grid sampler stops at its end
    assert sorted((d["model.hidden_size"], d["model.decay"]) for d in drawn) == [(4, False), (4, True), (8, False),
                                                                               (8, True)]


def test_ranges_become_int_and_float_distributions():
    space = SearchSpace.parse(Config(), space={"train.lr": {"low": 1e-4, "high": 3e-3, "log": True},
                                               "model.hidden_size": {"low": 16, "high": 128, "step": 16}})
    assert space.ranges == {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                            "model.hidden_size": {"type": "int", "low": 16, "high": 128, "log": False, "step": 16}}
    assert space.grid_size is None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    study.optimize(lambda trial: drawn.append(space.suggest(trial)) or 0.0, n_trials=30)
    assert {d["model.hidden_size"] for d in drawn} <= set(range(16, 129, 16))
    assert all(1e-4 <= d["train.lr"] <= 3e-3 for d in drawn)
    assert all(isinstance(Config().replace(d), Config) for d in drawn)  # every draw is a valid config


def test_the_shipped_sweep_config_is_a_valid_study():
    cfg, _, other = load(ROOT / "pipelines" / "configs" / "sweep_sample.toml")
    spec = SweepSpec.from_toml(other["sweep"], cfg, "sweep_sample.toml")
    assert spec.method == "tpe" and spec.data == ["sample"] and spec.n_trials >= 4
    space = SearchSpace.parse(cfg, spec.grid, spec.space, spec.method)
    assert len(space.grid) + len(space.ranges) >= 2


# -- one process ----------------------------------------------------------------------------------------------
def test_sweep_runs_nested_children_under_a_parent(tmp_path, store):
    from mlflow import MlflowClient

    data, labels = cohort(tmp_path)
    res = run_sweep(data, tmp_path / "sw", tiny(), {"model.hidden_size": [4, 8]}, method="grid", labels=labels,
                    experiment="test", **QUIET)
    summary = res.summary
    client = MlflowClient()
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.tags["best.run_id"] == summary["best"]["run_id"]
    assert parent.data.metrics["best_validation_auprc"] == pytest.approx(
        max(t["validation_auprc"] for t in summary["trials"]))
    assert sorted(t["overrides"]["model.hidden_size"] for t in summary["trials"]) == [4, 8]
    for trial in summary["trials"]:
        child = client.get_run(trial["run_id"])
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["optuna.trial_number"] == str(trial["trial"])
        assert child.data.tags["optuna.state"] == "COMPLETE" and child.info.status == "FINISHED"
    assert summary["registry"]["alias"] == "champion" and summary["registry"]["trial"] == summary["best"]["trial"]
    assert res.path == tmp_path / "sw" / "sweep.json"
    assert json.loads(res.path.read_text())["best"]["run_id"] == summary["best"]["run_id"]
    assert res.study.best_trial.number == summary["best"]["trial"]  # the Optuna study itself is returned


# -- two workers ----------------------------------------------------------------------------------------------
def test_two_workers_share_one_study_and_one_parent_run(tmp_path):
    """Two `clinical-lstm sweep` processes started together on one SQLite study and one SQLite MLflow store run
    the 4-point grid once: 4 trials in total, no point twice, each a nested run of the one parent run."""
    from mlflow import MlflowClient

    data, labels = cohort(tmp_path)
    (tmp_path / "sweep.toml").write_text(f"""
[sweep]
data = ["{data}"]
labels = "{labels}"
out = "{tmp_path / 'out'}"
method = "grid"
[sweep.grid]
"model.hidden_size" = [4, 8]
"train.lr" = [0.002, 0.01]
{TINY_TOML}""")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [sys.executable, "-m", "clinical_lstm.cli", "sweep", "--config", str(tmp_path / "sweep.toml"),
           "--storage", storage, "--study", "shared"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    workers = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs

    study = optuna.load_study(study_name="shared", storage=storage)
    ran = [t for t in study.trials if "skipped" not in t.user_attrs]
    assert sorted(t.number for t in ran) == [0, 1, 2, 3] and all(t.state == TrialState.COMPLETE for t in ran)
    assert len({(t.params["model.hidden_size"], t.params["train.lr"]) for t in ran}) == 4  # the grid, once
    for t in study.trials:  # a worker that lost the race for the last trial failed it unrun
        assert t in ran or (t.state == TrialState.FAIL and not t.params and "run_id" not in t.user_attrs)
    assert all(any(f"trial {t.number} (" in log for log in logs) for t in ran)  # each trial ran in one worker...
    assert sum(f"trial {t.number} (" in log for t in ran for log in logs) == 4  # ...and only once

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.run_id for r in children} == {t.user_attrs["run_id"] for t in ran}
    assert study.user_attrs["clinical_lstm.mlflow_parent_run_id"] == parents[0].info.run_id
    best = max(ran, key=lambda t: t.value)
    assert parents[0].data.tags["best.run_id"] == best.user_attrs["run_id"]
    assert len(client.search_model_versions("name='clinical-lstm'")) == 1  # registered once, by one worker
    assert sum("summary: " in log for log in logs) == 1
    summary = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert sorted(t["trial"] for t in summary["trials"]) == [0, 1, 2, 3] and summary["best"]["trial"] == best.number


# -- pruning --------------------------------------------------------------------------------------------------
def test_median_pruner_stops_a_clearly_bad_trial_early(tmp_path, store):
    """Two trials that learn, then one that cannot (learning rate 1e-6): the median pruner stops the third at
    the first epoch it may (2 of 5), before its second fold; its nested run ends KILLED and nothing stays open."""
    import mlflow
    from mlflow import MlflowClient

    data, labels = cohort(tmp_path)
    base = tiny(epochs=5, batch_size=8, patience=5, stop_fraction=0.4)  # early-stopping splits of ~20 stays, not 8
    search = SearchSpace.parse(base, {"train.lr": [0.01, 1e-6]})
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2))
    for lr in (0.01, 0.01, 1e-6):
        study.enqueue_trial({"train.lr": lr})
    objective = _Objective(data, tmp_path / "out", base, search, 3,
                           {"labels": labels, "outcomes": None, "test_data": None}, **QUIET)
    with _ParentRun(study, True, base, "prune-test", {"method": "grid"}, 3, None, False, **QUIET) as untracked:
        objective.parent = untracked  # the two that learn run without MLflow: per-epoch logging is the slow part
        study.optimize(objective, n_trials=2)
    with _ParentRun(study, True, base, "prune-test", {"method": "grid"}, 3, None, True, **QUIET) as parent:
        objective.parent = parent
        study.optimize(objective, n_trials=1)
    good, again, bad = study.trials
    assert good.state == again.state == TrialState.COMPLETE and bad.state == TrialState.PRUNED
    assert sorted(good.intermediate_values) == [1, 2, 3, 4, 5] and sorted(bad.intermediate_values) == [1, 2]
    assert bad.intermediate_values[2] < good.intermediate_values[2]
    run = MlflowClient().get_run(bad.user_attrs["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    assert "val_auprc_fold1" not in run.data.metrics and "model_uri" not in bad.user_attrs
    assert mlflow.active_run() is None


# -- config errors --------------------------------------------------------------------------------------------
HEAD = '[sweep]\ndata = ["sample"]\nout = "out"\n'


@pytest.mark.parametrize("section, argv, message", [
    ('[sweep.grid]\n"model.hiden" = [4, 8]', [], r"unknown parameter 'model\.hiden' in \[sweep\.grid\]"),
    ('n_trials = 3\n[sweep.space]\n"train.lrr" = {low = 1e-4, high = 1e-2}', [], r"unknown parameter 'train\.lrr'"),
    ('n_trials = 3\n[sweep.space]\n"train.lr" = {low = 3e-3, high = 1e-4}', [], r"low \(0\.003\) must be below high"),
    ('n_trials = 3\n[sweep.space]\n"train.lr" = {low = 0.0, high = 1e-2, log = true}', [], "log range needs low > 0"),
    ('n_trials = 3\n[sweep.space]\n"train.lr" = {low = 1e-4, hi = 1e-2}', [], "must have low and high"),
    ('n_trials = 3\n[sweep.space]\n"model.hidden_size" = {low = 8.5, high = 64}', [], "low must be an integer"),
    ('n_trials = 3\n[sweep.space]\n"model.dropout" = {low = 0.1, high = 1.5}', [], r"dropout must be <= 0\.95"),
    ('n_trials = 3\n[sweep.space]\n"model.attention" = {low = 0, high = 1}', [], r"is not a number"),
    ('[sweep.space]\n"train.lr" = {low = 1e-4, high = 1e-2}', [], r"n_trials \(or --n-trials\) is needed"),
    ('method = "grid"\n[sweep.space]\n"train.lr" = {low = 1e-4, high = 1e-2}', ["--n-trials", "2"],
     "method 'grid' takes lists only"),
    ('[sweep.grid]\n"model.hidden_size" = [0, 8]', [], "hidden_size must be >= 1"),
    ('method = "grid"\n[sweep.grid]\n"model.hidden_size" = [4, 8]', ["--n-trials", "3"],
     "more than the 2 points of the grid"),
    ('[sweep.grid]\n"model.hidden_size" = [4, 8]', ["--storage", "not a url"], "is not a database URL"),
])
def test_config_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, section, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(HEAD + section + "\n")
    assert main(["sweep", "--config", "bad.toml", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()  # failed before any folder, study or training


# -- the storage ----------------------------------------------------------------------------------------------
def sweep_toml(tmp_path: Path, data: Path, labels: Path, epochs: int = 2) -> Path:
    """A 2-point grid sweep of the tiny config on ``data``, out = tmp_path/out."""
    path = tmp_path / "sweep.toml"
    path.write_text(f'[sweep]\ndata = ["{data}"]\nlabels = "{labels}"\nout = "{tmp_path / "out"}"\nmethod = "grid"\n'
                    f'pruner = "none"\n[sweep.grid]\n"model.hidden_size" = [4, 8]\n'
                    + TINY_TOML.replace("epochs = 2", f"epochs = {epochs}\npatience = {epochs}"))
    return path


@pytest.mark.parametrize("what, message", [
    ("tracking", r"is the MLflow tracking store \(sqlite:///.*mlflow\.db\)"),
    ("mlflow copy", r"copy\.db is a database of another tool \(tables alembic_version, .*\) with none of Optuna's"),
    ("csv", r"notes\.csv is not an SQLite database \(file is not a database\)"),
    ("input", r"refusing to write .*long\.csv: it is the input"),
])
def test_a_storage_another_tool_owns_is_refused_untouched(tmp_path, store, monkeypatch, capsys, what, message):
    """The MLflow store, a copy of one, a CSV and the sweep's own input as --storage: one line, exit 2, the file
    byte for byte as it was, no output folder (Optuna once wrote its tables into the MLflow database, then failed
    with a traceback)."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    data, labels = cohort(tmp_path)
    MlflowClient().search_experiments()  # the MLflow store's tables
    (tmp_path / "copy.db").write_bytes((tmp_path / "mlflow.db").read_bytes())
    (tmp_path / "notes.csv").write_text("stay_id,note\n1,ok\n")
    target = {"tracking": tmp_path / "mlflow.db", "mlflow copy": tmp_path / "copy.db", "csv": tmp_path / "notes.csv",
              "input": data}[what]
    before = target.read_bytes()
    config = sweep_toml(tmp_path, data, labels)
    capsys.readouterr()  # MLflow's own messages as it made its store
    assert main(["sweep", "--config", str(config), "--storage", f"sqlite:///{target}", "--study", "s"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert target.read_bytes() == before
    assert not (tmp_path / "out").exists()


def test_a_failed_sweep_leaves_no_folder_it_made(tmp_path, capsys):
    """A study made for another [sweep] section is refused after the output folder was checked: it is removed."""
    data, labels = cohort(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(storage=storage, study_name="s", direction="maximize").set_user_attr(
        "clinical_lstm.search_space", {"method": "grid", "seed": 0, "grid": {"model.hidden_size": [16]}, "space": {}})
    config = sweep_toml(tmp_path, data, labels)
    assert main(["sweep", "--config", str(config), "--storage", storage, "--study", "s"]) == 2
    assert "was made for another [sweep] section" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- dead workers ---------------------------------------------------------------------------------------------
def test_a_sweep_killed_mid_trial_resumes_to_the_study_it_would_have_given(tmp_path):
    """`kill -9` during trial 0, then the same command: the dead trial is failed at once (its lock is free; no
    wait for the heartbeat's grace period), does not count, and its grid point runs again: both points complete.
    Its MLflow run ends FAILED and its work folder (the patients' model inputs) is gone."""
    from mlflow import MlflowClient

    data, labels = cohort(tmp_path)
    config = sweep_toml(tmp_path, data, labels, epochs=10)
    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [sys.executable, "-m", "clinical_lstm.cli", "sweep", "--config", str(config), "--storage", storage,
           "--study", "k9"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (list((tmp_path / "out").glob("trial-0/.work.*/train/steps.f32")) and (tmp_path / "study.db").exists()
                   and "run_id" in optuna.load_study(study_name="k9", storage=storage).trials[0].user_attrs):
            assert first.poll() is None and time.monotonic() < deadline, "trial 0 never started training"
            time.sleep(0.1)
    finally:
        first.kill()  # SIGKILL: nothing of the sweep's own runs
        first.wait()
    killed = optuna.load_study(study_name="k9", storage=storage).trials[0]
    assert killed.state == TrialState.RUNNING and "run_id" in killed.user_attrs

    second = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = second.communicate(timeout=150)[0]  # the old code waited 5 minutes for the grace period
    finally:
        second.kill()
    assert second.returncode == 0, log
    assert "waiting for trial(s)" not in log and "trial 0 failed: its process is gone" in log
    trials = optuna.load_study(study_name="k9", storage=storage).trials
    assert trials[0].state == TrialState.FAIL
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2 and sorted(t.params["model.hidden_size"] for t in done) == [4, 8]
    assert done[0].params == killed.params and done[0].user_attrs["retry_of"] == 0
    run = MlflowClient(uri).get_run(killed.user_attrs["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert not list((tmp_path / "out").rglob(".work.*")) and not list((tmp_path / "out").glob(".*.lock"))
    summary = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["FAIL", "COMPLETE", "COMPLETE"]


def test_a_trial_whose_worker_stopped_beating_is_failed_and_not_counted(tmp_path, store, monkeypatch):
    """A running trial of a worker elsewhere (its lock not visible here) that has not beaten for the grace
    period (5 × HEARTBEAT_S, shortened to 5 s) is failed by Optuna's heartbeat and not counted: the study still
    gets its 2 trials; its MLflow run ends FAILED."""
    from mlflow import MlflowClient

    import clinical_lstm.sweep.storage as sweep_storage

    monkeypatch.setattr(sweep_storage, "HEARTBEAT_S", 1)
    data, labels = cohort(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    kwargs = dict(method="grid", labels=labels, storage=storage, study_name="hb", pruner="none", **QUIET)
    run_sweep(data, tmp_path / "out", tiny(), {"model.hidden_size": [4, 8]}, n_trials=1, tracking=False, **kwargs)
    study = optuna.load_study(study_name="hb", storage=storage)
    client = MlflowClient()
    lost = study.ask()  # another machine's trial: its lock lies in a folder this one cannot see
    lost.set_user_attr("lock", {"dir": str(tmp_path / "elsewhere" / "trial-1"), "token": "x"})
    lost.set_user_attr("run_id", client.create_run(client.create_experiment("lost")).info.run_id)
    study._storage.record_heartbeat(lost._trial_id)
    time.sleep(6)
    res = run_sweep(data, tmp_path / "out", tiny(), {"model.hidden_size": [4, 8]}, n_trials=2, **kwargs)
    states = {t.number: t.state for t in res.study.trials}
    assert states[lost.number] == TrialState.FAIL
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 2
    run = client.get_run(lost.user_attrs["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
