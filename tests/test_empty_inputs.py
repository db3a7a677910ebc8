"""Inputs without stays through the CLI, in real subprocesses: a 0-byte CSV is read as a header-only one is. Alone,
either is one line on stderr and exit code 2 for ``prepare``, ``train`` and ``evaluate``; beside a good file, the
good file's stays are prepared and evaluated."""

from __future__ import annotations

import json

import polars as pl
import pytest
from helpers import random_long, run_cli, tiny_model

N = 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good long CSV of ``N`` stays, their labels and a tiny saved model."""
    root = tmp_path_factory.mktemp("empty-inputs")
    random_long(N, seed=3).write_csv(root / "good.csv")
    pl.DataFrame({"stay_id": range(1, N + 1), "label": [i % 2 for i in range(N)]}).write_csv(root / "labels.csv")
    tiny_model().save(root / "model")
    return root


@pytest.fixture(params=["zero_bytes", "header_only"])
def empty(request, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("" if request.param == "zero_bytes" else "stay_id,time,variable,value\n")
    return path


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate"])
def test_an_input_without_stays_is_a_one_line_error(files, empty, command, tmp_path):
    options = {"prepare": [], "train": ["--labels", str(files / "labels.csv"), "--no-tracking"],
               "evaluate": ["--model", str(files / "model"), "--labels", str(files / "labels.csv")]}[command]
    res = run_cli(command, "--data", str(empty), "--out", str(tmp_path / "out"), *options, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"clinical-lstm {command}: error: no stays in {empty} (empty files or "
                                       f"headers only)"]
    assert not (tmp_path / "out" / "cohort.json").exists() and not (tmp_path / "out" / "metrics.json").exists()


def test_an_input_without_stays_beside_a_good_one(files, empty, tmp_path):
    """The good file's stays are prepared (and evaluated) whole; the empty input adds none."""
    res = run_cli("prepare", "--data", str(files / "good.csv"), "--data", str(empty), "--out", str(tmp_path / "p"),
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "p" / "quality_report.json").read_text())
    assert report["stays"]["read"] == N and report["sources"] == ["good.csv"]
    assert report["empty_sources"] == [empty.name]  # said in the report and on screen, not silently left out
    assert f"no stays in {empty.name} (empty file or header only)" in res.stdout
    assert pl.read_parquet(tmp_path / "p" / "grid.parquet")["stay_id"].n_unique() == N
    res = run_cli("evaluate", "--model", str(files / "model"), "--data", str(empty), "--data", str(files / "good.csv"),
              "--labels", str(files / "labels.csv"), "--out", str(tmp_path / "ev"), "--n-boot", "10", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["evaluated_on"] == f"{N} stays"
    assert json.loads((tmp_path / "ev" / "quality_report.json").read_text())["empty_sources"] == [empty.name]
