"""Batch scoring on bad input (issue #5): every bad part is counted or rejected; no other stay's score moves.

Each case mixes a bad part with ordinary stays from ``random_long`` and scores them with ``chunk_stays=7``:
the two bad stays sit at positions 6 and 7, the last stay of chunk 0 and the first of chunk 1. Each case
checks that (a) the job completes; (b) each stay in is exactly one scored row or one reject, and the summary
agrees; (c) the good stays' risk, quality flags and observation counts equal those from scoring the good stays
alone; (d) the bad stays get the expected flags or reject reason, and the summary counts the rule.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import random_long, tiny_model

from clinical_lstm.batch import score_batch
from clinical_lstm.catalogue import Catalogue
from clinical_lstm.sources import DataError

CHUNK = 7
TOL = 1e-6
TEXT = {"stay_id": pl.Int64, "time": pl.String, "variable": pl.String, "value": pl.String}
GOOD_A = random_long(6, seed=1, first_id=1)  # positions 0-5
GOOD_B = random_long(9, seed=2, first_id=11)  # positions 8-16
GOOD = pl.concat([GOOD_A, GOOD_B])
BAD = (500, 501)  # positions 6 and 7: both sides of the first chunk boundary
SERIES = ("HR", "MAP", "Temp", "Lactate", "Glucose")

# A stay that breaks no rule and gets no quality flag: statics, 12 HR and 6 MAP values over the window.
BASE = ([("0.0", "Age", "70.0"), ("0.0", "Gender", "1.0"), ("0.0", "ICUType", "2.0"),
         ("0.0", "Weight", "80.0")]
        + [(f"{1.0 + 4 * k}", "HR", f"{80.0 + k}") for k in range(12)]
        + [(f"{2.5 + 8 * k}", "MAP", f"{75.0 + k}") for k in range(6)])
BASE_OBSERVATIONS = len(BASE)

# name: (rows added to BASE, where they go in the file, rows_by_rule per bad stay, quality flags,
#        unknown variables per bad stay)
SCORED = {
    "non_numeric_values": ([("5.0", "HR", "abc"), ("6.0", "HR", "1,2"), ("7.0", "MAP", "")], "inline",
                           {"unparseable_value": 3}, {"values_removed"}, {}),
    "times_outside_window": ([("-2", "HR", "90"), ("-0.25", "MAP", "70"), ("-48", "HR", "88"),
                              ("48.5", "HR", "95"), ("72", "MAP", "80")], "inline",
                             {"negative_time": 3, "past_window": 2}, {"values_removed"}, {}),
    "exact_duplicates": ([BASE[0], BASE[4], BASE[5]], "end", {"duplicate_row": 3}, set(), {}),
    "some_unknown_variables": ([("3.0", "FooScore", "1"), ("9.0", "FooScore", "2")], "inline",
                               {"unknown_variable": 2}, {"unknown_variables"}, {"FooScore": 2}),
    "value_field_of_10_MB": ([("10.0", "HR", "A" * 10_000_000)], "inline", {"unparseable_value": 1},
                             set(), {}),
}

# name: (the bad stay's rows, rows_by_rule per bad stay, unknown variables); each is rejected no_time_series
REJECTED = {
    "static_descriptors_only": ([("0.0", "Age", "70"), ("0.0", "Gender", "0"), ("0.0", "Height", "170"),
                                 ("0.0", "ICUType", "3")], {}, {}),
    "every_value_out_of_range": ([("0.0", "Age", "200"), ("0.0", "Weight", "5"), ("1.0", "HR", "900"),
                                  ("2.0", "HR", "-5"), ("3.0", "Temp", "80")], {"out_of_range": 5}, {}),
    "only_unknown_variables": ([("0.0", "BarIndex", "1"), ("1.0", "FooScore", "3"), ("2.0", "FooScore", "4")],
                               {"unknown_variable": 3}, {"BarIndex": 1, "FooScore": 2}),
}


# -- helpers ------------------------------------------------------------------------------------------------
def text(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(pl.col("stay_id").cast(pl.Int64), pl.col("time", "variable", "value").cast(pl.String))


def stay(sid: int, rows) -> pl.DataFrame:
    return pl.DataFrame([(sid, *r) for r in rows], schema=TEXT, orient="row")


def write_csv(path: Path, *frames: pl.DataFrame) -> Path:
    pl.concat([text(f) for f in frames]).write_csv(path)
    return path


def run_job(model, tmp_path: Path, paths, **kwargs):
    """Score ``paths`` in chunks of 7; return (scored, rejects, summary, log lines)."""
    out = tmp_path / "out" / "scores.parquet"
    lines: list[str] = []
    summary = score_batch(model, [str(p) for p in paths], out, chunk_stays=CHUNK, log=lines.append, **kwargs)
    assert json.loads((out.parent / "scores.summary.json").read_text()) == json.loads(json.dumps(summary))
    assert not (out.parent / ".scores.parquet.partial").exists()
    table, rejects = pl.read_parquet(out), pl.read_parquet(out.parent / "scores.rejects.parquet")
    assert table["stay_id"].n_unique() == table.height, "every stay is one row of the output"
    assert table.filter(pl.col("risk").is_null()).select("stay_id", "reason").sort("stay_id").rows() == \
        rejects.sort("stay_id").rows(), "the rejects file lists exactly the output's rows without a risk"
    return table.filter(pl.col("reason").is_null()), rejects, summary, lines


def check_accounting(scored, rejects, summary, expected: dict[int, str]) -> None:
    """(b): every stay exactly once, as a scored row ("scored") or a reject with its reason."""
    ids = pl.concat([scored["stay_id"], rejects["stay_id"]])
    assert ids.n_unique() == ids.len(), "a stay appears twice"
    outcome = {**dict.fromkeys(scored["stay_id"].to_list(), "scored"), **dict(rejects.iter_rows())}
    assert outcome == expected
    assert summary["stays_read"] == summary["scored"] + summary["rejected"] == len(expected)
    assert summary["scored"] == scored.height and summary["rejected"] == rejects.height


def check_same_scores(scored: pl.DataFrame, alone: pl.DataFrame) -> None:
    """(c): the stays of ``alone`` (scored by themselves) have the same risk, flags and counts here."""
    both = alone.join(scored, on="stay_id", how="left", suffix="_batch")
    assert both["risk_batch"].null_count() == 0
    np.testing.assert_allclose(both["risk_batch"].to_numpy(), both["risk"].to_numpy(), rtol=0, atol=TOL)
    assert both["quality_flags_batch"].to_list() == both["quality_flags"].to_list()
    assert both["n_observations_batch"].to_list() == both["n_observations"].to_list()


def flags(scored: pl.DataFrame, sid: int) -> set[str]:
    value = scored.filter(pl.col("stay_id") == sid)["quality_flags"].item()
    return set(value.split(";")) - {""}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def good_alone(model):
    scored, report = model.score_table(GOOD)
    assert scored["reason"].null_count() == scored.height == 15
    assert report.counts.height == 0, "the good stays must break no rule, so that rule counts are exact"
    return scored


GOOD_EXPECTED = dict.fromkeys(GOOD["stay_id"].unique().to_list(), "scored")


# -- bad rows in a stay that is still scored -----------------------------------------------------------------
@pytest.mark.parametrize("case", list(SCORED))
def test_bad_rows_are_counted_and_change_no_score(model, good_alone, tmp_path, case):
    extra, where, rules, expected_flags, unknown = SCORED[case]
    bad = [stay(sid, BASE + extra if where == "inline" else BASE) for sid in BAD]
    tail = [stay(sid, extra) for sid in BAD] if where == "end" else []  # rows of a stay far from its others
    path = write_csv(tmp_path / "data.csv", GOOD_A, *bad, GOOD_B, *tail)

    scored, rejects, summary, _ = run_job(model, tmp_path, [path])

    check_accounting(scored, rejects, summary, {**GOOD_EXPECTED, **dict.fromkeys(BAD, "scored")})
    check_same_scores(scored, good_alone)
    base_alone = model.predict(pl.concat([stay(sid, BASE) for sid in BAD]))
    assert base_alone["quality_flags"].to_list() == ["", ""]
    check_same_scores(scored.with_columns(pl.lit("").alias("quality_flags")),
                      base_alone)  # the bad rows are dropped or set missing: the risk is the clean stay's
    for sid in BAD:
        assert flags(scored, sid) == expected_flags
        assert scored.filter(pl.col("stay_id") == sid)["n_observations"].item() == BASE_OBSERVATIONS
    assert summary["rows_by_rule"] == {k: 2 * v for k, v in rules.items()}
    assert summary["unknown_variables"] == {k: 2 * v for k, v in unknown.items()}
    assert summary["rows_read"] == GOOD.height + 2 * (len(BASE) + len(extra))
    assert summary["inputs"][0]["contiguous"] is (where == "inline")


# -- stays with no usable time series ------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(REJECTED))
def test_stay_without_usable_series_is_rejected(model, good_alone, tmp_path, case):
    rows, rules, unknown = REJECTED[case]
    path = write_csv(tmp_path / "data.csv", GOOD_A, *(stay(sid, rows) for sid in BAD), GOOD_B)

    scored, rejects, summary, _ = run_job(model, tmp_path, [path])

    check_accounting(scored, rejects, summary, {**GOOD_EXPECTED, **dict.fromkeys(BAD, "no_time_series")})
    check_same_scores(scored, good_alone)
    assert summary["rejected_by_reason"] == {"no_time_series": 2}
    assert summary["rows_by_rule"] == {k: 2 * v for k, v in rules.items()}
    assert summary["unknown_variables"] == {k: 2 * v for k, v in unknown.items()}


@pytest.mark.parametrize("with_good_file", [False, True])
def test_file_of_only_unknown_variables_rejects_every_stay(model, good_alone, tmp_path, with_good_file):
    unknown = pl.concat([stay(sid, [("0.0", "FooScore", "1"), (f"{sid % 40}.5", "BarIndex", "2")])
                         for sid in range(900, 910)])
    paths = [write_csv(tmp_path / "unknown.csv", unknown)]
    if with_good_file:
        GOOD.write_parquet(tmp_path / "good.parquet")
        paths.append(tmp_path / "good.parquet")

    scored, rejects, summary, lines = run_job(model, tmp_path, paths)

    expected = dict.fromkeys(range(900, 910), "no_time_series")
    check_accounting(scored, rejects, summary, {**expected, **(GOOD_EXPECTED if with_good_file else {})})
    if with_good_file:
        check_same_scores(scored, good_alone)
    assert summary["unknown_variables"] == {"BarIndex": 10, "FooScore": 10}
    assert summary["rows_by_rule"] == {"unknown_variable": 20}
    assert any("BarIndex (10 rows), FooScore (10 rows)" in line for line in lines)


# -- files with no stays -------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"stay_id,time,variable,value\n"], ids=["0_bytes", "header_only"])
def test_file_without_stays_beside_a_good_file(model, good_alone, tmp_path, content):
    (tmp_path / "nothing.csv").write_bytes(content)
    good = write_csv(tmp_path / "good.csv", GOOD)

    scored, rejects, summary, lines = run_job(model, tmp_path, [tmp_path / "nothing.csv", good])

    check_accounting(scored, rejects, summary, GOOD_EXPECTED)
    check_same_scores(scored, good_alone)
    assert [(i["stays"], i["empty"]) for i in summary["inputs"]] == [(0, True), (15, False)]
    assert any("nothing.csv holds no stays" in line for line in lines)


# -- PhysioNet archives with unparseable members -------------------------------------------------------------
def physionet_rows(long: pl.DataFrame, first_id: int) -> dict[int, list]:
    """``random_long`` stays -> PhysioNet stay rows (``HH:MM`` times), renumbered from ``first_id``."""
    out: dict[int, list] = {}
    series = long.filter(pl.col("variable").is_in(SERIES))
    for k, (_, group) in enumerate(series.group_by("stay_id", maintain_order=True)):
        minutes = (group["time"] * 60).round().cast(pl.Int64).to_list()
        out[first_id + k] = [(f"{m // 60:02d}:{m % 60:02d}", v, x)
                             for m, v, x in zip(minutes, group["variable"], group["value"], strict=True)]
    return out


def _garbage(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "binary":
        return b"\0" + rng.bytes(4096)
    if kind == "header_then_binary":
        return b"Time,Parameter,Value\n00:00,RecordID,1007\n" + rng.bytes(2048) + b"\0" + rng.bytes(2048)
    return b"Time,Parameter,Value" + b",00:01,HR,80" * (10_000_000 // 12)  # one 10 MB line, no newline


@pytest.mark.parametrize("kind", ["binary", "header_then_binary", "line_of_10_MB"])
def test_unparseable_archive_member_is_rejected(model, tmp_path, physionet_set, kind):
    good = {**physionet_rows(GOOD_A, 1001), **physionet_rows(GOOD_B, 1009)}  # 1001-1006, 1009-1017
    bad = {1007: _garbage(kind, 1), 1008: _garbage(kind, 2)}  # members 6 and 7 of the archive (name order)
    archive = physionet_set({**good, **bad}, archive=True)
    alone = model.predict(physionet_set(good, archive=True))

    scored, rejects, summary, _ = run_job(model, tmp_path, [archive])

    expected = {**dict.fromkeys(good, "scored"), **dict.fromkeys(bad, "unreadable_file")}
    check_accounting(scored, rejects, summary, expected)
    check_same_scores(scored, alone)
    assert summary["rejected_by_reason"] == {"unreadable_file": 2}
    assert summary["inputs"][0]["ignored_members"] == 1  # README.txt


# -- contract errors: raised before any work, exit code 2 from the CLI ---------------------------------------
def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "score", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-input") / "model"
    model.save(path)
    return path


def test_missing_value_column_is_refused_before_any_output(model, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    GOOD.drop("value").write_csv(tmp_path / "novalue.csv")
    out = tmp_path / "out" / "scores.parquet"
    with pytest.raises(DataError, match=r"novalue\.csv lacks column\(s\) \['value'\]"):
        score_batch(model, [good, tmp_path / "novalue.csv"], out, chunk_stays=CHUNK, log=lambda _: None)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_cli_missing_value_column_exits_2(model_dir, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    GOOD.drop("value").write_csv(tmp_path / "novalue.csv")
    res = cli("--model", str(model_dir), "--data", str(good), "--data", str(tmp_path / "novalue.csv"),
              "--out", str(tmp_path / "out" / "scores.parquet"), "--chunk-stays", str(CHUNK), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert str(tmp_path / "novalue.csv") in res.stderr and "lacks column(s) ['value']" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("bad_id", ["P-17", "1.5"])
def test_non_integer_stay_id_names_the_row(model, tmp_path, bad_id):
    df = text(GOOD).with_columns(pl.col("stay_id").cast(pl.String))
    fifth_row = pl.int_range(pl.len()) == 4
    df = df.with_columns(pl.when(fifth_row).then(pl.lit(bad_id)).otherwise("stay_id").alias("stay_id"))
    df.write_csv(tmp_path / "data.csv")
    with pytest.raises(DataError, match=rf"data\.csv, row 5: stay_id '{bad_id}' is not an integer"):
        score_batch(model, tmp_path / "data.csv", tmp_path / "s.parquet", chunk_stays=CHUNK,
                    log=lambda _: None)


def _changed_catalogue(path: Path) -> Path:
    lines = Catalogue.default().to_csv_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith("HR,"))
    fields = lines[i].split(",")
    fields[3] = "250.0"  # HR upper bound: 300 in the default catalogue
    lines[i] = ",".join(fields)
    path.write_text("".join(lines))
    return path


def test_catalogue_mismatch_is_refused(model, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    catalogue = _changed_catalogue(tmp_path / "catalogue.csv")
    with pytest.raises(DataError, match=r"mismatch.*defined differently: \['HR'\]"):
        score_batch(model, good, tmp_path / "s.parquet", catalogue=catalogue, log=lambda _: None)
    score_batch(model, good, tmp_path / "s.parquet", catalogue="default", log=lambda _: None)  # its own: fine


def test_cli_catalogue_mismatch_exits_2(model_dir, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    catalogue = _changed_catalogue(tmp_path / "catalogue.csv")
    res = cli("--model", str(model_dir), "--data", str(good), "--out", str(tmp_path / "s.parquet"),
              "--catalogue", str(catalogue), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "mismatch" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "s.parquet").exists()
