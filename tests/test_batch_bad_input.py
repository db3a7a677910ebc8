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
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import crash_on_call, random_long, tiny_model, write_physionet_set

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.sources import DataError
from clinical_lstm.serve.batch import score_batch

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
    assert json.loads((out.parent / "scores.parquet.summary.json").read_text()) == json.loads(json.dumps(summary))
    assert not (out.parent / ".scores.parquet.partial").exists()
    table, rejects = pl.read_parquet(out), pl.read_parquet(out.parent / "scores.parquet.rejects.parquet")
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


def test_a_folder_of_long_format_files_is_an_error_that_says_how_to_pass_them(model, tmp_path):
    """A folder is read as a PhysioNet set: one holding long-format files had no stay file, and batch scoring
    wrote an empty output with exit 0 (every stay lost), where prepare and predict refused it. Now every reader
    refuses it, naming the files and the fix, and writes nothing."""
    from clinical_lstm.data.load import load
    from clinical_lstm.workflow import prepare

    folder = tmp_path / "extract"
    folder.mkdir()
    for k in range(4):
        write_csv(folder / f"part-{k}.csv", GOOD)
    fix = r"holds 4 long-format file\(s\) \(part-0\.csv, part-1\.csv, part-2\.csv, \.\.\.\): pass each as its own --data"
    with pytest.raises(DataError, match=fix):
        score_batch(model, [str(folder)], tmp_path / "out" / "s.parquet", chunk_stays=CHUNK, log=lambda _: None)
    assert not (tmp_path / "out" / "s.parquet").exists()
    for read in (lambda: load(folder), lambda: prepare(folder, tmp_path / "p")):
        with pytest.raises(DataError, match=fix):
            read()


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


@pytest.mark.parametrize("bad_id", ["", "   ", "2.5", "nan", "inf"])
def test_a_row_without_a_stay_id_names_the_row(model, tmp_path, bad_id):
    df = text(GOOD).with_columns(pl.col("stay_id").cast(pl.String))
    fifth_row = pl.int_range(pl.len()) == 4
    df = df.with_columns(pl.when(fifth_row).then(pl.lit(bad_id)).otherwise("stay_id").alias("stay_id"))
    df.write_csv(tmp_path / "data.csv")
    with pytest.raises(DataError, match=r"data\.csv, row 5: stay_id .* names no stay"):
        score_batch(model, tmp_path / "data.csv", tmp_path / "s.parquet", chunk_stays=CHUNK,
                    log=lambda _: None)


def test_a_fractional_stay_id_in_parquet_names_the_row(model, tmp_path):
    df = GOOD.with_columns(pl.col("stay_id").cast(pl.Float64))
    df = df.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(5.5).otherwise("stay_id").alias("stay_id"))
    df.write_parquet(tmp_path / "data.parquet")
    with pytest.raises(DataError, match=r"data\.parquet, row 5: stay_id 5\.5 names no stay"):
        score_batch(model, tmp_path / "data.parquet", tmp_path / "s.parquet", chunk_stays=CHUNK,
                    log=lambda _: None)


def test_text_ids_are_scored_and_returned_exactly(model, tmp_path):
    """"P-17" or "007" are ids like any other: the output has the same text, and the same risks."""
    names = {sid: (f"P-{sid:03d}" if sid % 2 else f"{sid:04d}") for sid in GOOD["stay_id"].unique().to_list()}
    df = text(GOOD).with_columns(pl.col("stay_id").cast(pl.Int64).replace_strict(names, return_dtype=pl.String))
    df.write_csv(tmp_path / "data.csv")
    score_batch(model, tmp_path / "data.csv", tmp_path / "s.parquet", chunk_stays=CHUNK, log=lambda _: None)
    out = pl.read_parquet(tmp_path / "s.parquet").sort("stay_id")
    want = model.predict(GOOD).with_columns(pl.col("stay_id").replace_strict(names, return_dtype=pl.String))
    assert out["stay_id"].to_list() == want.sort("stay_id")["stay_id"].to_list()
    np.testing.assert_allclose(out["risk"].to_numpy(), want.sort("stay_id")["risk"].to_numpy(), atol=TOL)


def _respelled(fmt: str, where: str, text_id: bool) -> pl.DataFrame:
    """GOOD as text, the second half of stay 1's rows spelled ``1.0`` (in place, or moved to the end of the file);
    with ``text_id`` stay 2 is ``P-2``, which makes every id text."""
    df = text(GOOD).with_columns(pl.col("stay_id").cast(pl.String))
    second_half = (pl.col("stay_id") == "1") & (pl.int_range(pl.len()).over("stay_id") >= pl.len().over("stay_id") // 2)
    df = df.with_columns(pl.when(second_half).then(pl.lit("1.0")).otherwise("stay_id").alias("stay_id"))
    if text_id:
        df = df.with_columns(pl.col("stay_id").replace("2", "P-2"))
    if where == "end":
        df = pl.concat([df.filter(pl.col("stay_id") != "1.0"), df.filter(pl.col("stay_id") == "1.0")])
    return df


@pytest.mark.parametrize("text_id", [False, True], ids=["integer_ids", "with_a_text_id"])
@pytest.mark.parametrize("where", ["inline", "end"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_one_stay_spelled_two_ways_is_one_stay(model, good_alone, tmp_path, fmt, where, text_id):
    """``1`` and ``1.0`` are one patient: one row out, with the risk of the stay spelled one way."""
    path = tmp_path / f"data.{fmt}"
    df = _respelled(fmt, where, text_id)
    df.write_parquet(path) if fmt == "parquet" else df.write_csv(path)
    scored, rejects, summary, _ = run_job(model, tmp_path, [path])
    if text_id:
        scored = scored.with_columns(pl.col("stay_id").replace("P-2", "2").cast(pl.Int64))
        rejects = rejects.with_columns(pl.col("stay_id").cast(pl.Int64))
    check_accounting(scored, rejects, summary, GOOD_EXPECTED)
    check_same_scores(scored, good_alone)
    assert summary["inputs"][0]["contiguous"] is (where == "inline")


def test_a_required_column_twice_is_refused_in_the_index_pass(model, tmp_path):
    csv = tmp_path / "data.csv"
    text(GOOD).with_columns(pl.col("value").alias("value_")).write_csv(csv)
    csv.write_text(csv.read_text().replace("value_", "value", 1))  # header: stay_id,time,variable,value,value
    with pytest.raises(DataError, match=re.escape(f"data file {csv} has the column 'value' 2 times")):
        score_batch(model, csv, tmp_path / "s.parquet", chunk_stays=CHUNK, log=lambda _: None)
    assert not (tmp_path / "s.parquet").exists()


def test_a_csv_that_is_not_utf8_names_the_line(model, tmp_path):
    csv = tmp_path / "data.csv"
    write_csv(csv, GOOD)
    lines = csv.read_bytes().split(b"\n")
    lines[4] += b"\xe9"  # a Latin-1 e-acute ending line 5 (the 4th data row)
    csv.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"invalid utf-8 sequence at line 5 \(byte \d+: 0xe9\); the file must be UTF-8"):
        score_batch(model, csv, tmp_path / "s.parquet", chunk_stays=CHUNK, log=lambda _: None)


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


def test_a_catalogue_that_differs_in_order_or_description_only_says_so(model, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    header, *rows = Catalogue.default().to_csv_text().splitlines(keepends=True)
    (tmp_path / "reordered.csv").write_text(header + "".join(reversed(rows)))
    with pytest.raises(DataError, match="the same variables in another order"):
        score_batch(model, good, tmp_path / "s.parquet", catalogue=tmp_path / "reordered.csv", log=lambda _: None)
    described = [r.replace("Heart rate", "Pulse") if r.startswith("HR,") else r for r in rows]
    assert described != rows
    (tmp_path / "described.csv").write_text(header + "".join(described))
    with pytest.raises(DataError, match=r"defined differently: \['HR'\] \(of which only the description differs"):
        score_batch(model, good, tmp_path / "s.parquet", catalogue=tmp_path / "described.csv", log=lambda _: None)


def test_explain_beyond_the_models_variables_is_capped_and_said(model, tmp_path):
    from clinical_lstm.explain.shapley import player_names

    players = len(player_names(model.transformer))
    scored, _, _, lines = run_job(model, tmp_path, [write_csv(tmp_path / "good.csv", GOOD)], explain=players + 50)
    tops = [c for c in scored.columns if c.startswith("top") and c.endswith("_variable")]
    assert len(tops) == players and scored[f"top{players}_variable"].null_count() < scored.height
    assert any(f"exceeds the model's {players} explained variables" in line for line in lines)


def test_cli_catalogue_mismatch_exits_2(model_dir, tmp_path):
    good = write_csv(tmp_path / "good.csv", GOOD)
    catalogue = _changed_catalogue(tmp_path / "catalogue.csv")
    res = cli("--model", str(model_dir), "--data", str(good), "--out", str(tmp_path / "s.parquet"),
              "--catalogue", str(catalogue), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "mismatch" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "s.parquet").exists()


# -- null variable names: one key, straight through and resumed ----------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_null_variable_names_are_counted_under_one_key_straight_and_resumed(model, tmp_path, monkeypatch, fmt):
    """Rows whose ``variable`` is null are `unknown_variable` rows counted under "<null>", both when the job runs
    straight through and when it resumes from a manifest (whose JSON once turned a None key into "null" and then
    failed to sort it against None after writing the output)."""
    nulls = [("3.0", None, "1"), ("9.0", None, "2")]
    frame = pl.concat([text(GOOD_A), *(stay(sid, BASE + nulls) for sid in BAD), text(GOOD_B)])
    path = tmp_path / f"data.{fmt}"
    frame.write_parquet(path) if fmt == "parquet" else frame.write_csv(path)

    straight, _, summary, _ = run_job(model, tmp_path / "straight", [path])
    assert summary["unknown_variables"] == {"<null>": 4}
    assert summary["rows_by_rule"] == {"unknown_variable": 4}
    assert all(flags(straight, sid) == {"unknown_variables"} for sid in BAD)

    out = tmp_path / "resumed" / "out" / "scores.parquet"
    calls = crash_on_call(monkeypatch, 2)  # chunk 0 is saved, chunk 1 crashes
    with pytest.raises(MemoryError):
        score_batch(model, path, out, chunk_stays=CHUNK, workers=1, log=lambda _: None)
    assert not out.exists() and (out.parent / ".scores.parquet.partial" / "manifest.json").is_file()
    calls["n"] = 100  # no more crashes
    resumed, _, summary_resumed, lines = run_job(model, tmp_path / "resumed", [path], workers=1)
    assert any("resuming: 1 chunk(s)" in line for line in lines)
    assert summary_resumed["unknown_variables"] == {"<null>": 4}
    assert resumed.drop("scored_at").equals(straight.drop("scored_at"))


def test_a_member_rewritten_in_place_restarts_a_resumed_folder_job(model, tmp_path, physionet_set, monkeypatch):
    """A folder's own size and modification time do not change when a member is rewritten in place: the job's
    fingerprint covers every member, so the re-run starts afresh instead of keeping the stale risk."""
    folder = physionet_set(physionet_rows(GOOD_A, 1001))  # 1001-1006: chunk 0 is 1001 and 1002
    out = tmp_path / "out" / "scores.parquet"
    calls = crash_on_call(monkeypatch, 2)  # chunk 0 is saved, chunk 1 crashes
    with pytest.raises(MemoryError):
        score_batch(model, folder, out, chunk_stays=2, workers=1, log=lambda _: None)
    member, folder_stat = folder / "1001.txt", folder.stat()
    before = member.read_text()
    member.write_text(re.sub(r"(,HR,)[2-9]", r"\g<1>1", before))  # HR 77.87 -> 17.87: the same size
    assert member.stat().st_size == len(before) and member.read_text() != before
    os.utime(folder, ns=(folder_stat.st_atime_ns, folder_stat.st_mtime_ns))
    assert folder.stat().st_size == folder_stat.st_size and folder.stat().st_mtime_ns == folder_stat.st_mtime_ns
    calls["n"] = 100  # no more crashes
    lines_logged: list[str] = []
    score_batch(model, folder, out, chunk_stays=2, workers=1, log=lines_logged.append)
    assert any("changed since the unfinished run; starting afresh" in line for line in lines_logged)
    fresh = model.predict(folder).sort("stay_id")
    resumed = pl.read_parquet(out).sort("stay_id")
    np.testing.assert_allclose(resumed["risk"].to_numpy(), fresh["risk"].to_numpy(), rtol=0, atol=TOL)
    old = model.predict(physionet_set(physionet_rows(GOOD_A, 1001))).sort("stay_id")
    assert abs(old["risk"][0] - fresh["risk"][0]) > TOL, "the edit must change stay 1001's risk"


# -- outputs that would touch an input: refused before any work ----------------------------------------------
def _snapshot(root: Path) -> dict:
    """Every path under ``root`` with its bytes (files) or None (folders, links to folders)."""
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _collision(case: str, root: Path, model_dir: Path) -> tuple[list[Path], Path, dict]:
    """(data paths, out, extra score_batch arguments) for one way an output can land on an input."""
    parquet = root / "in.parquet"
    GOOD.write_parquet(parquet)
    if case == "out_is_the_parquet_input":
        return [parquet], parquet, {}
    if case == "out_is_the_csv_input":
        return [write_csv(root / "in.csv", GOOD)], root / "in.csv", {}
    if case == "out_through_dotdot":
        (root / "sub").mkdir()
        return [parquet], root / "sub" / ".." / "in.parquet", {}
    if case == "out_is_a_symlink_to_the_input":
        (root / "link.parquet").symlink_to(parquet)
        return [parquet], root / "link.parquet", {}
    if case == "out_in_a_symlinked_folder":
        (root / "alias").symlink_to(root, target_is_directory=True)
        return [parquet], root / "alias" / "in.parquet", {}
    if case == "out_inside_a_physionet_folder":
        folder = write_physionet_set(root / "ph", {1001: [("00:30", "HR", 80)]})
        return [folder], folder / "scores.parquet", {}
    if case == "rejects_file_is_the_input":
        (root / "s.parquet.rejects.parquet").write_bytes(parquet.read_bytes())
        return [root / "s.parquet.rejects.parquet"], root / "s.parquet", {}
    if case == "work_folder_holds_the_input":
        (root / ".s.parquet.partial").mkdir()
        (root / ".s.parquet.partial" / "in.parquet").write_bytes(parquet.read_bytes())
        return [root / ".s.parquet.partial" / "in.parquet"], root / "s.parquet", {}
    if case == "out_is_the_catalogue":
        (root / "cat.csv").write_text(Catalogue.default().to_csv_text())
        return [parquet], root / "cat.csv", {"catalogue": root / "cat.csv"}
    assert case == "out_inside_the_model_folder"
    return [parquet], model_dir / "scores.parquet", {}


COLLISIONS = ["out_is_the_parquet_input", "out_is_the_csv_input", "out_through_dotdot",
              "out_is_a_symlink_to_the_input", "out_in_a_symlinked_folder", "out_inside_a_physionet_folder",
              "rejects_file_is_the_input", "work_folder_holds_the_input", "out_is_the_catalogue",
              "out_inside_the_model_folder"]


@pytest.mark.parametrize("case", COLLISIONS)
def test_an_output_that_would_touch_an_input_is_refused_before_any_work(model_dir, tmp_path, case):
    from clinical_lstm.files import check_not_input  # noqa: F401 - the check lives there, for every writer

    data, out, kwargs = _collision(case, tmp_path, model_dir)
    before, model_before = _snapshot(tmp_path), _snapshot(model_dir)
    with pytest.raises(DataError, match=r"refusing to write .*: it (is the input|lies inside the input folder|is a "
                                        r"folder holding the input) .*; choose an output outside the inputs"):
        score_batch(model_dir, data, out, chunk_stays=CHUNK, log=lambda _: None, **kwargs)
    assert _snapshot(tmp_path) == before and _snapshot(model_dir) == model_before  # nothing written or changed


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_cli_out_equal_to_data_exits_2_and_leaves_the_input_alone(model_dir, tmp_path, fmt):
    path = tmp_path / f"in.{fmt}"
    GOOD.write_parquet(path) if fmt == "parquet" else GOOD.write_csv(path)
    before = _snapshot(tmp_path)
    res = cli("--model", str(model_dir), "--data", str(path), "--out", str(path), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (f"clinical-lstm score: error: refusing to write {path}: it is the "
                                                   f"input {path}; choose an output outside the inputs")
    assert "Traceback" not in res.stderr and _snapshot(tmp_path) == before


def test_an_output_named_like_another_jobs_rejects_file_is_refused(model, tmp_path):
    path = write_csv(tmp_path / "good.csv", GOOD)
    with pytest.raises(DataError, match=r"s\.parquet\.rejects\.parquet is the name of the rejects file of the job "
                                        r"writing s\.parquet"):
        score_batch(model, path, tmp_path / "s.parquet.rejects.parquet", log=lambda _: None)


# -- options and output locations that cannot work: one line, before any work -------------------------------
@pytest.mark.parametrize(("option", "value"), [("workers", -2), ("workers", 0), ("workers", 1.5), ("explain", -1),
                                               ("explain", True), ("chunk_stays", 0), ("chunk_stays", 2.5)])
def test_an_option_out_of_range_is_refused_before_anything_is_read(tmp_path, option, value):
    """Checked first: the model and data paths here do not even exist."""
    with pytest.raises(ValueError, match=rf"^{option} \(--{option.replace('_', '-')}\) must be a whole number of "
                                         rf"at least [01]\b.*got {value!r}$"):
        score_batch(tmp_path / "no-model", tmp_path / "no-data.csv", tmp_path / "s.parquet", log=lambda _: None,
                    **{option: value})
    assert not any(tmp_path.iterdir())


def _bad_location(case: str, root: Path) -> Path:
    if case == "parent_is_a_file":
        (root / "f.txt").write_text("x")
        return root / "f.txt" / "s.parquet"
    if case == "grandparent_is_a_file":
        (root / "f.txt").write_text("x")
        return root / "f.txt" / "deeper" / "s.parquet"
    if case == "out_is_a_folder":
        (root / "s.parquet").mkdir()
        return root / "s.parquet"
    if case == "summary_is_a_folder":
        (root / "s.parquet.summary.json").mkdir()
        return root / "s.parquet"
    assert case == "work_folder_is_a_file"
    (root / ".s.parquet.partial").write_text("x")
    return root / "s.parquet"


@pytest.mark.parametrize("case", ["parent_is_a_file", "grandparent_is_a_file", "out_is_a_folder",
                                  "summary_is_a_folder", "work_folder_is_a_file"])
def test_an_output_location_that_cannot_be_written_is_refused_before_any_work(model, tmp_path, case):
    data = tmp_path / "data"
    data.mkdir()
    path = write_csv(data / "good.csv", GOOD)
    out = _bad_location(case, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(DataError, match=r"^--out .*(is a file|is a folder)"):
        score_batch(model, path, out, chunk_stays=CHUNK, log=lambda _: None)
    assert _snapshot(tmp_path) == before


def _enospc_on_call(monkeypatch, n: int) -> None:
    """The ``n``-th chunk part the job's working folder writes through ``write_frame`` hits a full disk."""
    import errno

    import clinical_lstm.serve.workdir as workdir

    calls = {"n": 0}
    real = workdir.write_frame

    def full(df, path):
        calls["n"] += 1
        if calls["n"] == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(df, path)

    monkeypatch.setattr(workdir, "write_frame", full)


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_full_disk_mid_job_keeps_the_saved_chunks_says_so_and_resumes(model, good_alone, tmp_path, monkeypatch):
    path = write_csv(tmp_path / "good.csv", GOOD)
    out = tmp_path / "out" / "scores.parquet"
    _enospc_on_call(monkeypatch, 3)  # chunk 0's two parts are written, chunk 1's scores are not
    with pytest.raises(DataError, match=r"^cannot write .*000001\.scored\.parquet: No space left on device; 1/3 "
                                        r"chunk\(s\) are saved in .*\.scores\.parquet\.partial: re-run the same "
                                        r"command to resume$"):
        score_batch(model, path, out, chunk_stays=CHUNK, workers=1, log=lambda _: None)
    assert _outputs(out.parent) == [".scores.parquet.partial"]  # no output, rejects, summary or temporary file
    monkeypatch.undo()
    scored, rejects, summary, lines = run_job(model, tmp_path, [path])
    assert any("resuming: 1 chunk(s)" in line for line in lines)
    check_accounting(scored, rejects, summary, GOOD_EXPECTED)
    check_same_scores(scored, good_alone)


def test_a_full_disk_before_any_chunk_is_saved_leaves_nothing(model, tmp_path, monkeypatch):
    path = write_csv(tmp_path / "good.csv", GOOD)
    out = tmp_path / "out" / "scores.parquet"
    _enospc_on_call(monkeypatch, 1)
    with pytest.raises(DataError, match=r"No space left on device; nothing was kept \(no chunk of 3 had been "
                                        r"scored\)$"):
        score_batch(model, path, out, chunk_stays=CHUNK, workers=1, log=lambda _: None)
    assert _outputs(out.parent) == []  # no stale work folder


@pytest.mark.parametrize("stage", ["output", "summary"])
def test_a_full_disk_while_finishing_leaves_no_output_and_finishes_on_a_rerun(model, tmp_path, monkeypatch, stage):
    """The output, rejects and summary appear together or not at all (the old job wrote the output, then
    failed on the summary and left a complete-looking file)."""
    import clinical_lstm.serve.batch as batch

    GOOD.write_parquet(tmp_path / "good.parquet")
    out = tmp_path / "out" / "scores.parquet"
    if stage == "output":  # the parts are streamed into the output: polars reports the full disk
        def sink(*args, **kwargs):
            raise pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device (os error 28)")

        monkeypatch.setattr(batch, "_sink", sink)
    else:
        real = batch.write_json

        def write_json(path, obj, *args, **kwargs):
            if "summary.json" in Path(path).name:
                raise OSError(28, "No space left on device", str(path))
            return real(path, obj, *args, **kwargs)

        monkeypatch.setattr(batch, "write_json", write_json)
    target = r"scores\.parquet" if stage == "output" else r"scores\.parquet\.summary\.json"
    with pytest.raises(DataError, match=rf"^cannot write .*{target}: No space left on device; all 3 chunk\(s\) are "
                                        r"scored and saved in .*: re-run the same command to write the output$"):
        score_batch(model, tmp_path / "good.parquet", out, chunk_stays=CHUNK, log=lambda _: None)
    assert _outputs(out.parent) == [".scores.parquet.partial"]
    monkeypatch.undo()
    _, _, summary, lines = run_job(model, tmp_path, [tmp_path / "good.parquet"])
    assert any("resuming: 3 chunk(s)" in line for line in lines) and summary["scored"] == 15


def test_cli_real_file_size_limit_exits_2_with_one_line_and_no_stale_work_folder(model_dir, tmp_path):
    """A real write failure: the process may write files of at most 2,000 bytes (EFBIG, as a full disk would
    give ENOSPC), so the first chunk's part cannot be written."""
    import resource
    import signal

    path = tmp_path / "good.parquet"
    GOOD.write_parquet(path)
    out = tmp_path / "out" / "scores.parquet"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "score", "--model", str(model_dir), "--data",
                          str(path), "--out", str(out), "--chunk-stays", str(CHUNK), "--workers", "1"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, preexec_fn=limit)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert re.fullmatch(r"clinical-lstm score: error: cannot write \S+/000000\.scored\.parquet: File too large; "
                        r"nothing was kept \(no chunk of 3 had been scored\)", res.stderr.strip().splitlines()[-1]), \
        res.stderr
    assert _outputs(out.parent) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_output_folder_without_write_permission_is_refused_before_any_work(model, tmp_path):
    path = write_csv(tmp_path / "good.csv", GOOD)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(DataError, match=r"^--out .*: the folder .*locked cannot be written \(permission denied\)$"):
        score_batch(model, path, locked / "sub" / "s.parquet", log=lambda _: None)
    assert not any(locked.iterdir())


def test_cli_option_out_of_range_exits_2_with_one_line(model_dir, tmp_path):
    path = write_csv(tmp_path / "good.csv", GOOD)
    res = cli("--model", str(model_dir), "--data", str(path), "--out", str(tmp_path / "s.parquet"), "--workers", "-2",
              cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["clinical-lstm score: error: command line: [job] workers must be >= 1; "
                                               "got -2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]
