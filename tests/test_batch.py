"""Batch scoring: chunked = whole, every stay once, atomic parts + manifest, resume after SIGKILL, contract first."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import crash_on_call, random_long, tiny_model, write_physionet_set

from clinical_lstm.data.sources import DataError
from clinical_lstm.serve.batch import score_batch
from clinical_lstm.serve.bundle import RiskModel

CLI = [sys.executable, "-m", "clinical_lstm.cli"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return tiny_model().save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    df = random_long(120, seed=1)
    path = tmp_path_factory.mktemp("data") / "cohort.parquet"
    df.write_parquet(path)
    return path, df


def reference(bundle: Path, df: pl.DataFrame) -> pl.DataFrame:
    """What the model gives scoring the whole table in one call."""
    return RiskModel.load(bundle).predict(df).sort("stay_id")


def quiet(_msg):
    pass


def test_chunked_equals_one_call_for_every_chunk_size_and_format(bundle, cohort, tmp_path):
    path, df = cohort
    ref = reference(bundle, df)
    csv = tmp_path / "cohort.csv"
    df.write_csv(csv)
    for src, chunk, out in ((path, 1000, "a.parquet"), (path, 7, "b.parquet"), (csv, 13, "c.csv")):
        summary = score_batch(bundle, src, tmp_path / out, chunk_stays=chunk, log=quiet)
        got = (pl.read_parquet(tmp_path / out) if out.endswith(".parquet") else pl.read_csv(tmp_path / out))
        assert summary["stays_read"] == summary["scored"] == 120 and summary["rejected"] == 0
        assert summary["chunks"] == -(-120 // chunk)
        assert got["stay_id"].to_list() == sorted(df["stay_id"].unique().to_list())  # input order, once each
        np.testing.assert_allclose(got["risk"].to_numpy(), ref["risk"].to_numpy(), atol=1e-6)
        assert (got["flag"] == (got["risk"] >= RiskModel.load(bundle).threshold)).all()
        assert got["model"].n_unique() == 1 and got["scored_at"].n_unique() == 1
        assert not (tmp_path / f".{out}.partial").exists()  # the working folder is gone after success


def test_rows_of_a_stay_scattered_through_the_file_are_kept_together(bundle, cohort, tmp_path):
    path, df = cohort
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=3)
    src = tmp_path / "shuffled.parquet"
    shuffled.write_parquet(src)
    summary = score_batch(bundle, src, tmp_path / "s.parquet", chunk_stays=9, log=quiet)
    assert summary["inputs"][0]["contiguous"] is False
    got = pl.read_parquet(tmp_path / "s.parquet").sort("stay_id")
    np.testing.assert_allclose(got["risk"].to_numpy(), reference(bundle, df)["risk"].to_numpy(), atol=1e-6)
    assert got["n_observations"].sum() <= df.height and got.height == 120


def test_physionet_archive_in_chunks_equals_one_call(bundle, tmp_path):
    stays = {100 + i: [("00:30", "HR", 80 + i), (f"{i % 40 + 1:02d}:10", "MAP", 70 + i % 9),
                       ("05:00", "Temp", 36.5 + i % 3)] for i in range(23)}
    archive = write_physionet_set(tmp_path, stays, archive=True)
    summary = score_batch(bundle, archive, tmp_path / "p.parquet", chunk_stays=5, log=quiet)
    got = pl.read_parquet(tmp_path / "p.parquet").sort("stay_id")
    ref = RiskModel.load(bundle).predict(archive).sort("stay_id")
    assert summary["stays_read"] == 23 and summary["chunks"] == 5
    np.testing.assert_allclose(got["risk"].to_numpy(), ref["risk"].to_numpy(), atol=1e-6)


def test_a_crash_mid_job_resumes_without_rescoring_finished_chunks(bundle, tmp_path, monkeypatch):
    stays = {100 + i: [("00:30", "HR", 80 + i), ("07:10", "MAP", 70 + i % 9)] for i in range(30)}
    archive = write_physionet_set(tmp_path, stays, archive=True)
    out = tmp_path / "r.parquet"
    calls = crash_on_call(monkeypatch, 3, MemoryError("simulated crash in the third chunk"))
    with pytest.raises(MemoryError):
        score_batch(bundle, archive, out, chunk_stays=4, log=quiet)
    assert not out.exists() and not out.with_name("r.parquet.summary.json").exists()  # nothing that looks complete
    manifest = json.loads((tmp_path / ".r.parquet.partial" / "manifest.json").read_text())
    assert sorted(manifest["done"]) == ["0", "1"]

    calls["n"], lines = 10, []
    summary = score_batch(bundle, archive, out, chunk_stays=4, log=lines.append)
    assert calls["n"] == 10 + 6  # chunks 2..7 only: the finished two were not scored again
    assert any("resuming: 2 chunk(s)" in line for line in lines)
    assert summary["scored"] == 30 and pl.read_parquet(out)["stay_id"].n_unique() == 30
    assert pl.read_parquet(out)["scored_at"].n_unique() == 1
    assert str(pl.read_parquet(out)["scored_at"][0].isoformat()) == manifest["scored_at"]


def test_changed_options_start_afresh_instead_of_mixing_runs(bundle, cohort, tmp_path, monkeypatch):
    path, _ = cohort
    out = tmp_path / "m.parquet"
    calls = crash_on_call(monkeypatch, 2, RuntimeError("crash"))
    with pytest.raises(RuntimeError):
        score_batch(bundle, path, out, chunk_stays=10, log=quiet)
    calls["n"] = 10  # no more crashes
    lines = []
    summary = score_batch(bundle, path, out, chunk_stays=30, log=lines.append)  # another chunk size
    assert any("starting afresh" in line for line in lines)
    assert summary["chunks"] == 4 and pl.read_parquet(out).height == 120


def test_a_second_job_on_the_same_output_is_refused_while_the_first_holds_the_lock(bundle, cohort, tmp_path):
    import fcntl

    path, _ = cohort
    work = tmp_path / ".x.parquet.partial"
    work.mkdir()
    with open(work / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code = """
import sys
from clinical_lstm.serve.batch import score_batch
from clinical_lstm.data.sources import DataError
try:
    score_batch(sys.argv[1], sys.argv[2], sys.argv[3], log=lambda m: None)
except DataError as e:
    print(e); sys.exit(2)
"""
        res = subprocess.run([sys.executable, "-c", code, str(bundle), str(path), str(tmp_path / "x.parquet")],
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "another scoring job" in res.stdout
    assert not (tmp_path / "x.parquet").exists()


def test_model_trained_on_another_catalogue_is_refused_before_any_work(bundle, cohort, tmp_path):
    from clinical_lstm.data.catalogue import Catalogue

    path, _ = cohort
    text = Catalogue.default().to_csv_text().replace("HR,bpm,1.0,300.0", "HR,bpm,1.0,250.0")
    assert text != Catalogue.default().to_csv_text()
    (tmp_path / "hospital.csv").write_text(text)
    with pytest.raises(DataError, match="mismatch.*defined differently: \\['HR'\\]"):
        score_batch(bundle, path, tmp_path / "o.parquet", catalogue=tmp_path / "hospital.csv", log=quiet)
    assert not any(tmp_path.glob("*o.parquet*"))
    score_batch(bundle, path, tmp_path / "o.parquet", catalogue="default", log=quiet)  # the same one passes


def test_top_k_explanations_ride_along_in_every_chunk(bundle, cohort, tmp_path):
    path, df = cohort
    score_batch(bundle, path, tmp_path / "e.parquet", explain=2, chunk_stays=50, log=quiet)
    got = pl.read_parquet(tmp_path / "e.parquet")
    assert {"top1_variable", "top1_contribution", "top2_variable", "top2_contribution"} <= set(got.columns)
    assert got["top1_variable"].null_count() == 0
    assert (got["top1_contribution"].abs() >= got["top2_contribution"].abs() - 1e-9).all()


def _manifest_chunks(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_then_rerun_gives_the_uninterrupted_output(bundle, tmp_path):
    """A real `clinical-lstm score` process is killed with SIGKILL mid-job; the same command then finishes
    with no stay missing or duplicated and the same rows as an uninterrupted run."""
    df = random_long(1500, seed=5)
    src = tmp_path / "big.parquet"
    df.write_parquet(src)
    args = ["score", "--model", str(bundle), "--data", str(src), "--chunk-stays", "20", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    clean = subprocess.run([*CLI, *args, "--out", str(tmp_path / "clean.parquet")], capture_output=True,
                           text=True, timeout=300, env=env)
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed.parquet"
    manifest = tmp_path / ".killed.parquet.partial" / "manifest.json"
    proc = subprocess.Popen([*CLI, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    while _manifest_chunks(manifest) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done_at_kill = _manifest_chunks(manifest)
    assert proc.returncode == -signal.SIGKILL
    assert 3 <= done_at_kill < 75, "the kill must land mid-job for this test to mean anything"
    assert not out.exists() and not out.with_name("killed.parquet.summary.json").exists()

    rerun = subprocess.run([*CLI, *args, "--out", str(out)], capture_output=True, text=True, timeout=300,
                           env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr
    a, b = pl.read_parquet(tmp_path / "clean.parquet"), pl.read_parquet(out)
    assert b["stay_id"].n_unique() == b.height == 1500
    assert a.drop("scored_at").equals(b.drop("scored_at"))
    summary = json.loads(out.with_name("killed.parquet.summary.json").read_text())
    assert summary["stays_read"] == summary["scored"] + summary["rejected"] == 1500
    assert not manifest.parent.exists()


def test_progress_in_a_log_is_one_line_per_chunk_and_one_closing_line(bundle, cohort, tmp_path):
    path, _ = cohort
    lines = []
    score_batch(bundle, path, tmp_path / "p.parquet", chunk_stays=50, progress=True, log=lines.append)
    progress = [line for line in lines if line.startswith("scored ")]
    assert progress and progress[-1].startswith("scored 120/120 stays (100 %), ")
    assert re.fullmatch(r"scored 120/120 stays \(100 %\), [\d,.]+ stays/s", progress[-1])
    assert lines[-1].startswith("120 stays read: 120 scored")  # the closing line


def test_explaining_defaults_to_small_chunks_so_progress_comes_early(bundle, cohort, tmp_path):
    """A stay's explanation costs about a hundred scorings: with the 2,000-stay default the first progress line
    (its rate, its time left) came after a whole chunk, minutes in. With --explain the default chunk is 100."""
    path, _ = cohort
    summary = score_batch(bundle, path, tmp_path / "x.parquet", explain=1, log=quiet, workers=1)
    assert summary["chunk_stays"] == 100 and summary["chunks"] == 2  # the bar moves once per chunk
    assert score_batch(bundle, path, tmp_path / "y.parquet", log=quiet)["chunk_stays"] == 2000


def test_a_progress_line_says_the_rate_and_the_time_left_at_that_rate():
    from clinical_lstm.progress import progress_line

    assert progress_line(0, 4000, 0.0) == "scored 0/4,000 stays (0 %)"
    assert progress_line(1000, 4000, 125.0) == "scored 1,000/4,000 stays (25 %), 8.0 stays/s, about 6 min left"
    assert progress_line(2000, 4000, 10.0) == "scored 2,000/4,000 stays (50 %), 200 stays/s, about 10 s left"
    assert progress_line(100, 1_000_000, 10.0).endswith("10 stays/s, about 27.8 h left")


def test_an_unclosed_quote_in_a_csv_names_the_file_and_the_likely_cause(bundle, tmp_path):
    (tmp_path / "q.csv").write_text('stay_id,time,variable,value\n1,0.5,HR,"80\n1,1.0,HR,82\n')
    with pytest.raises(DataError, match=r"q\.csv.*quote"):
        score_batch(bundle, tmp_path / "q.csv", tmp_path / "q.parquet", log=quiet)


def test_quality_flags_name_what_stood_behind_each_risk(bundle):
    """A stay with few, early observations and no time-0 descriptor is flagged; Weight at time 0 counts as one."""
    rows = [(1, 0.0, "Weight", 70.0), (2, 0.5, "Age", 60.0)]  # stay 2: Age after admission is dropped
    rows += [(sid, h + 0.5, "HR", 80.0) for sid in (1, 2) for h in range(3)]
    rows += [(3, 0.0, "Age", 70.0)] + [(3, float(h), "HR", 80.0 + h) for h in range(1, 47)]
    df = pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row")
    scored = RiskModel.load(bundle).predict(df).filter(pl.col("reason").is_null())
    flags = dict(zip(scored["stay_id"], scored["quality_flags"], strict=True))
    assert flags[1] == "few_observations;short_record"
    assert flags[2] == ("few_observations;short_record;values_removed;no_statics;"
                        "all_values_removed:Age:static_after_admission")  # its one Age row was removed
    assert flags[3] == ""


def test_two_jobs_with_outputs_of_one_stem_in_one_folder_never_share_a_file(bundle, cohort, tmp_path, monkeypatch):
    """`s.parquet` and `s.csv` side by side, the first interrupted while the second runs to the end: each gets its
    own rejects, summary and work folder (side files are named from the whole output name)."""
    path, _ = cohort
    small = tmp_path / "small.parquet"
    random_long(30, seed=9, first_id=1000).write_parquet(small)
    calls = crash_on_call(monkeypatch, 2, MemoryError("crash"))
    with pytest.raises(MemoryError):
        score_batch(bundle, path, tmp_path / "s.parquet", chunk_stays=40, workers=1, log=quiet)
    calls["n"] = 10
    csv_summary = score_batch(bundle, small, tmp_path / "s.csv", chunk_stays=40, log=quiet)  # while s.parquet waits
    parquet_summary = score_batch(bundle, path, tmp_path / "s.parquet", chunk_stays=40, log=quiet)  # resumes

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s.csv", "s.csv.rejects.csv", "s.csv.summary.json", "s.parquet",
        "s.parquet.rejects.parquet", "s.parquet.summary.json", "small.parquet"]
    for out, summary, n in (("s.parquet", parquet_summary, 120), ("s.csv", csv_summary, 30)):
        on_disk = json.loads((tmp_path / f"{out}.summary.json").read_text())
        assert on_disk == json.loads(json.dumps(summary))
        assert on_disk["output"] == str(tmp_path / out) and on_disk["stays_read"] == n
        assert on_disk["rejects"] == str(tmp_path / f"{out}.rejects{Path(out).suffix}")
    assert pl.read_csv(tmp_path / "s.csv").height == 30 and pl.read_parquet(tmp_path / "s.parquet").height == 120


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_the_job_writes_follows_the_umask(bundle, cohort, tmp_path, monkeypatch, umask):
    """Parts, manifest, lock and CSV spill (seen after a crash), then scores, rejects and summary get the mode
    `open()` would give (0666 minus the umask; folders 0777 minus it), never tempfile's 0600; a job scoring with
    several threads leaves the process umask as it was."""
    _, df = cohort
    src = tmp_path / "in.csv"
    df.write_csv(src)
    out = tmp_path / "out" / "u.csv"
    before = os.umask(umask)
    try:
        calls = crash_on_call(monkeypatch, 3, MemoryError("crash"))
        with pytest.raises(MemoryError):
            score_batch(bundle, src, out, chunk_stays=20, workers=1, log=quiet)
        work = tmp_path / "out" / ".u.csv.partial"
        names = sorted(p.name for p in work.iterdir())
        assert names[:4] == ["000000.rejects.parquet", "000000.scored.parquet", "000001.rejects.parquet",
                             "000001.scored.parquet"] and names[4:6] == ["lock", "manifest.json"]
        assert names[6].startswith("spill-")
        assert {p.name: p.stat().st_mode & 0o777 for p in work.iterdir()} == dict.fromkeys(names, 0o666 & ~umask)
        assert work.stat().st_mode & 0o777 == 0o777 & ~umask

        calls["n"] = 10
        score_batch(bundle, src, out, chunk_stays=20, workers=4, log=quiet)
        written = {p.name: p.stat().st_mode & 0o777 for p in out.parent.iterdir()}
        assert written == dict.fromkeys(["u.csv", "u.csv.rejects.csv", "u.csv.summary.json"], 0o666 & ~umask)
        assert os.umask(umask) == umask
    finally:
        os.umask(before)


def test_one_closing_line_with_one_rate_and_the_output_path_as_given(bundle, cohort, tmp_path, monkeypatch):
    path, _ = cohort
    monkeypatch.chdir(tmp_path)
    lines = []
    score_batch(bundle, path, "sub/scores.parquet", chunk_stays=50, progress=True, log=lines.append)
    progress = [line for line in lines if line.startswith("scored ")]  # progress lines: the rate so far
    assert progress and [line for line in lines if "stays/s" in line and line not in progress] == [lines[-1]]
    assert lines[-1].count("stays/s") == 1 and lines[-1].endswith(" stays/s) -> sub/scores.parquet")
    assert json.loads((tmp_path / "sub" / "scores.parquet.summary.json").read_text())["output"] == \
        "sub/scores.parquet"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_index_groups_a_stay_split_into_runs_and_spelled_with_blanks(tmp_path, suffix):
    """The index pass reads runs of equal raw ids: a stay whose rows come back later, or whose id is written
    with surrounding blanks in some rows, is still one stay with every row counted."""
    from clinical_lstm.data.catalogue import Catalogue
    from clinical_lstm.data.chunks import index_long

    ids = ["enc-a", "enc-a", "enc-b", " enc-a ", "enc-b", "enc-c", "enc-c", "enc-b"]
    frame = pl.DataFrame({"stay_id": ids, "time": [float(i) for i in range(8)], "variable": ["HR"] * 8,
                          "value": [80.0] * 8})
    path = tmp_path / f"data{suffix}"
    frame.write_csv(path) if suffix == ".csv" else frame.write_parquet(path)
    inp = index_long(path, Catalogue.default())
    assert inp.stay_ids.tolist() == ["enc-a", "enc-b", "enc-c"]  # first appearance order, blanks stripped
    assert inp.first_row.tolist() == [0, 2, 5]
    assert inp.n_rows.tolist() == [3, 3, 2]
    assert inp.contiguous is False

    tidy = frame.with_columns(pl.col("stay_id").str.strip_chars()).sort("stay_id", maintain_order=True)
    tidy.write_csv(path) if suffix == ".csv" else tidy.write_parquet(path)
    inp = index_long(path, Catalogue.default())
    assert (inp.first_row.tolist(), inp.n_rows.tolist(), inp.contiguous) == ([0, 3, 6], [3, 3, 2], True)
