"""What a job leaves in its output folder: whole replacements (no file of an earlier run beside the new ones), no
output inside the model it reads, distinct files for distinct stays, and nothing written when it fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from clinical_lstm.config import Config
from clinical_lstm.data.sources import DataError
from clinical_lstm.data.synthetic import synthetic_cohort, synthetic_labels
from clinical_lstm.files import atomic_dir, publish, remove_leftovers, temp_prefix
from clinical_lstm.jobs import evaluate, explain, stay_file
from clinical_lstm.workflow import prepare, train

TINY = {"train": {"folds": 2, "epochs": 1, "patience": 1, "batch_size": 16, "device": "cpu"},
        "model": {"hidden_size": 8}, "evaluation": {"n_boot": 20, "explain_stays": 4}}
TEXT_IDS = ["a,b", "a/b", "a_b", "..", "ENC-7"]  # the first three once shared one plot file


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    long = synthetic_cohort(40, seed=5)
    labels = synthetic_labels(long, seed=5)
    long.write_csv(root / "data.csv")
    labels.write_csv(root / "labels.csv")
    return root


@pytest.fixture(scope="module")
def run(cohort):
    out = cohort / "run"
    train(cohort / "data.csv", out, cohort / "labels.csv", config=Config.from_dict(TINY), progress=False,
          log=lambda *_: None)
    return out


def test_atomic_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "report"
    target.mkdir()
    (target / "stale.png").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "metrics.json").write_text("{}")
        raise RuntimeError("the job failed")
    assert [p.name for p in target.iterdir()] == ["stale.png"]  # untouched
    with atomic_dir(target) as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["metrics.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary or old folder left


def test_publish_removes_only_the_stale_files_the_job_owns(tmp_path):
    out, staged = tmp_path / "out", tmp_path / "staged"
    out.mkdir()
    staged.mkdir()
    for name in ("stay_1.png", "stay_2.png", "notes.txt", "rejects.csv"):
        (out / name).write_text("old")
    (staged / "stay_2.png").write_text("new")
    (staged / "rejects.csv").write_text("new")
    moved = publish(staged, out, ("stay_*.png", "rejects.csv"))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "rejects.csv", "stay_2.png"]
    assert (out / "stay_2.png").read_text() == "new" and (out / "notes.txt").read_text() == "old"
    assert moved == {staged / "rejects.csv": out / "rejects.csv", staged / "stay_2.png": out / "stay_2.png"}


def test_stay_files_differ_for_ids_that_differ():
    names = [stay_file(s) for s in TEXT_IDS + [12, "12"]]
    assert names[-2:] == ["stay_12", "stay_12"]  # one id, written as text or integer
    assert len(set(names[:-2])) == len(TEXT_IDS)
    assert all("/" not in n and n not in ("stay_.", "stay_..") for n in names)


def test_a_second_train_in_the_same_folder_leaves_nothing_of_the_first(cohort, tmp_path):
    out = tmp_path / "run"
    cfg = Config.from_dict(TINY)
    train(cohort / "data.csv", out, cohort / "labels.csv", config=cfg, progress=False, log=lambda *_: None)
    assert (out / "report" / "global_importance.png").is_file()
    quiet = Config.from_dict({**TINY, "evaluation": {"n_boot": 20, "explain_stays": 0}})
    result = train(cohort / "data.csv", out, cohort / "labels.csv", config=quiet, progress=False, log=lambda *_: None)
    names = {p.name for p in (out / "report").iterdir()}
    assert not names & {"global_importance.png", "global_importance.csv"}  # the first run's, now stale
    assert names == {p.name for p in result.files.values()}  # every file in report/ is this run's
    assert all(p.is_file() for p in result.files.values())
    assert sorted(p.name for p in out.iterdir()) == ["model", "report"]


def test_evaluate_and_explain_never_write_into_the_model(run, cohort):
    for job, kwargs in ((evaluate, {"labels": cohort / "labels.csv", "n_boot": 20}), (explain, {})):
        before = {p.name: p.read_bytes() for p in (run / "model").iterdir()}
        with pytest.raises(DataError, match="inside the input folder"):
            job(str(run), cohort / "data.csv", run / "model", **kwargs)
        assert {p.name: p.read_bytes() for p in (run / "model").iterdir()} == before
    explain(str(run), cohort / "data.csv", run / "explained", stays=[3], n_permutations=2, log=lambda *_: None)
    assert (run / "explained" / "stay_3.png").is_file()  # beside the model, in the run folder: fine


def test_explain_draws_text_ids_each_in_its_own_file_and_replaces_an_earlier_explain(run, cohort, tmp_path):
    long = pl.read_csv(cohort / "data.csv")
    first = long["stay_id"].unique().sort().head(len(TEXT_IDS)).to_list()
    text = long.filter(pl.col("stay_id").is_in(first)).with_columns(
        pl.col("stay_id").replace_strict(first, TEXT_IDS, return_dtype=pl.String))
    text.write_csv(tmp_path / "text.csv")
    out = tmp_path / "ex"
    out.mkdir()
    (out / "stay_old.png").write_text("a plot of an earlier explain")
    (out / "notes.txt").write_text("the user's")
    files = explain(str(run), tmp_path / "text.csv", out, stays=TEXT_IDS, n_permutations=2, log=lambda *_: None)
    plots = sorted(p.name for p in out.glob("stay_*.png"))
    assert plots == sorted(f"{stay_file(s)}.png" for s in TEXT_IDS) and len(plots) == len(TEXT_IDS)
    assert all(files[f"stay {s}"].read_bytes()[:4] == b"\x89PNG" for s in TEXT_IDS)
    assert (out / "notes.txt").read_text() == "the user's"
    assert sorted(pl.read_parquet(out / "explanations.parquet")["stay_id"].unique()) == sorted(TEXT_IDS)
    assert not list(out.glob(".explain.*"))


def test_a_failed_job_leaves_no_folder_it_made(run, cohort, tmp_path):
    (tmp_path / "header.csv").write_text("stay_id,time,variable,value\n")
    (tmp_path / "labels.csv").write_text("stay_id,label\nX1,1\nX2,0\n")
    jobs = [lambda out: prepare(tmp_path / "header.csv", out),
            lambda out: train(cohort / "data.csv", out, tmp_path / "labels.csv", config=Config.from_dict(TINY),
                              progress=False, log=lambda *_: None),
            lambda out: evaluate(str(run), tmp_path / "header.csv", out, cohort / "labels.csv"),
            lambda out: explain(str(run), tmp_path / "header.csv", out)]
    for k, job in enumerate(jobs):
        with pytest.raises(DataError):
            job(tmp_path / f"new-{k}" / "deeper" / "out")
        assert not (tmp_path / f"new-{k}").exists()
        kept = tmp_path / f"kept-{k}"
        kept.mkdir()
        with pytest.raises(DataError):
            job(kept)
        assert kept.is_dir() and not list(kept.iterdir())  # a folder the user made stays


def test_remove_leftovers_removes_only_what_dead_processes_left(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # a process that has ended
    (tmp_path / f".grid.parquet.{pid}.k2j_9x0a.tmp").write_text("half a grid")
    (tmp_path / f".work.{pid}.ab12cd34").mkdir()
    (tmp_path / f".work.{pid}.ab12cd34" / "steps.f32").write_text("patients' inputs")
    mine = tmp_path / f"{temp_prefix('grid.parquet')}zz9zz9zz.tmp"
    mine.write_text("being written")
    users = (".hidden", "grid.parquet", ".report.old", f".bashrc.{pid}.bak", f".notes.{pid}.abcdefg")
    for name in users:
        (tmp_path / name).write_text("not a leftover")
    assert remove_leftovers(tmp_path, {"m.onnx"}) == []  # only those beside the names given
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".grid.parquet.{pid}.k2j_9x0a.tmp", f".work.{pid}.ab12cd34"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, *users])


def _cli(*args):
    return subprocess.Popen([sys.executable, "-m", "clinical_lstm.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _started(out, proc, timeout=120):
    """Wait until the job has made its work folder (it is gridding the stays)."""
    t0 = time.monotonic()
    while not list(out.glob(".work.*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the job never started"
        time.sleep(0.02)


def test_a_stopped_or_killed_train_leaves_no_patient_data_behind(cohort, tmp_path):
    """SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C: exit 143, the work folder removed. SIGKILL runs
    nothing; the next run into the folder removes what the killed one left, then trains as usual."""
    for name, epochs in (("tiny", 1), ("slow", 500)):  # slow: still training when the signal comes, however busy
        (tmp_path / f"{name}.toml").write_text(  # the machine is (a job that had ended could not be stopped)
            f'[train]\nfolds = 2\nepochs = {epochs}\npatience = {epochs}\ndevice = "cpu"\n'
            '[model]\nhidden_size = 8\n[evaluation]\nn_boot = 20\nexplain_stays = 0\n')
    out = tmp_path / "run"
    args = ("train", "--data", str(cohort / "data.csv"), "--labels", str(cohort / "labels.csv"), "--out", str(out),
            "--no-tracking", "--no-progress", "--config")
    proc = _cli(*args, str(tmp_path / "slow.toml"))
    _started(out, proc)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().endswith("terminated"), err
    assert not list(out.glob(".*")) and not (out / "model").exists()
    proc = _cli(*args, str(tmp_path / "slow.toml"))
    _started(out, proc)
    proc.kill()
    proc.wait(timeout=60)
    assert [p.name.split(".")[2] for p in out.glob(".work.*")] == [str(proc.pid)]  # what SIGKILL leaves
    proc = _cli(*args, str(tmp_path / "tiny.toml"))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert not list(out.glob(".*")) and (out / "model" / "bundle.json").is_file()


def test_explain_of_a_few_stays_validates_grids_and_explains_only_those(run, tmp_path):
    big = synthetic_cohort(400, seed=11)  # a set ten times the training cohort: only three of it are asked for
    ids = big["stay_id"].unique().sort().to_list()
    asked = [ids[7], ids[200], ids[399]]
    bad = pl.DataFrame({"stay_id": [ids[5]], "time": [1.0], "variable": ["NoSuchVariable"], "value": [1.0]},
                       schema=big.schema)  # ids[5] with only an unknown variable: a stay that cannot be scored
    pl.concat([big.filter(pl.col("stay_id") != ids[5]), bad]).write_csv(tmp_path / "big.csv")
    lines = []
    out = tmp_path / "ex"
    explain(str(run), tmp_path / "big.csv", out, stays=asked, n_permutations=2, log=lines.append)
    table = pl.read_parquet(out / "explanations.parquet")
    assert sorted(table["stay_id"].unique().to_list()) == sorted(asked)
    assert pl.read_csv(out / "rejects.csv").height == 0  # the unrequested stay that cannot be scored is not looked at
    assert sorted(p.name for p in out.glob("stay_*.png")) == sorted(f"{stay_file(s)}.png" for s in asked)
    assert lines[-1].startswith("3 stays explained, 0 rejected (the requested stays of 400 read)")
    with pytest.raises(DataError, match=rf"{ids[5]} \(.*\).*cannot be drawn"):  # asked for: its reason is named
        explain(str(run), tmp_path / "big.csv", tmp_path / "ex2", stays=[ids[5], ids[7]], log=lambda *_: None)
    with pytest.raises(DataError, match=r"999999 \(not in the data\)"):
        explain(str(run), tmp_path / "big.csv", tmp_path / "ex3", stays=[999999], log=lambda *_: None)
