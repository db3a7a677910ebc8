"""Tests for clinical_lstm.data.validate: one test per rule in ``ACTIONS`` on tiny hand-built long tables, the
stay accounting invariant, and the quality report's JSON (de-identified and atomic)."""

from __future__ import annotations

import json

import polars as pl
import pytest
from helpers import raw_data

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.physionet import read_physionet
from clinical_lstm.data.quality import ACTIONS, QualityReport
from clinical_lstm.data.sources import RawData
from clinical_lstm.data.validate import validate

HR_OK = "80"  # a plausible heart rate, so a stay has a usable time series


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.default()


def counts(report) -> dict[tuple[str, str | None], int]:
    return {(r["rule"], r["variable"]): r["rows"] for r in report.counts.iter_rows(named=True)}


def rejects(report) -> dict[int, str]:
    return dict(report.rejects.select("stay_id", "reason").iter_rows())


def clean_rows(clean: pl.DataFrame) -> list[tuple]:
    return sorted(clean.select("stay_id", "time", "variable", "value").rows())


# -- row-level rules -------------------------------------------------------------------------------------
def test_every_rule_has_a_test_here():
    tested = {"unparseable_time", "unparseable_value", "unknown_variable", "negative_time", "past_window",
              "static_after_admission", "sentinel_minus_one", "out_of_range", "duplicate_row",
              "same_time_conflict", "unreadable_file", "record_id_mismatch", "no_time_series", "no_label"}
    assert set(ACTIONS) == tested
    # The list above is only a claim: each rule must be named by some other test function (record_id_mismatch
    # is read by the PhysioNet reader: its tests are in test_sources.py and test_hostile_sources.py).
    import ast
    from pathlib import Path

    named = set()
    for path in Path(__file__).resolve().parent.glob("test_*.py"):
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_") and fn.name != \
                    "test_every_rule_has_a_test_here":
                named |= {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert tested <= named, f"rules no test names: {sorted(tested - named)}"


def test_unparseable_time(cat):
    raw = raw_data([
        (1, "01:00", "HR", HR_OK),
        (1, "later", "HR", "81"),
        (1, None, "HR", "82"),
        (1, "1:xx", "HR", "83"),  # HH:MM with non-numeric minutes
        (1, "nan", "HR", "84"),
        (1, "later", "Lactat", "2"),  # bad time wins over unknown variable: first rule broken is charged
    ])
    clean, kept, report = validate(raw, cat)
    assert counts(report) == {("unparseable_time", "HR"): 4, ("unparseable_time", "Lactat"): 1}
    assert clean_rows(clean) == [(1, 1.0, "HR", 80.0)]
    assert kept.to_list() == [1]
    assert report.counts.filter(pl.col("rule") == "unparseable_time")["action"].unique().to_list() == [
        "row dropped"]


def test_unparseable_value(cat):
    raw = raw_data([
        (1, "01:00", "HR", HR_OK),
        (1, "02:00", "HR", "abc"),
        (1, "03:00", "HR", "inf"),
        (1, "04:00", "Temp", "37,5"),
        (1, "05:00", "Temp", "37.5"),
    ])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("unparseable_value", "HR"): 2, ("unparseable_value", "Temp"): 1}
    assert clean_rows(clean) == [(1, 1.0, "HR", 80.0), (1, 5.0, "Temp", 37.5)]


def test_unknown_variable_counted_under_its_own_name(cat):
    raw = raw_data([
        (1, "01:00", "HR", HR_OK),
        (1, "02:00", "Lactat", "2.0"),
        (1, "03:00", "Lactat", "2.1"),
        (1, "04:00", "hr", "90"),  # names are case-sensitive
        (1, "00:00", "RecordID", "1"),
    ])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("unknown_variable", "Lactat"): 2, ("unknown_variable", "hr"): 1,
                              ("unknown_variable", "RecordID"): 1}
    assert clean["variable"].to_list() == ["HR"]


def test_negative_time(cat):
    raw = raw_data([
        (1, "01:00", "HR", HR_OK),
        (1, "-0.5", "HR", "81"),
        (1, "-2", "MAP", "70"),
        (1, "0", "HR", "82"),  # exactly admission: kept
    ])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("negative_time", "HR"): 1, ("negative_time", "MAP"): 1}
    assert clean_rows(clean) == [(1, 0.0, "HR", 82.0), (1, 1.0, "HR", 80.0)]


def test_negative_hh_mm_time(cat):
    raw = raw_data([(1, "01:00", "HR", HR_OK), (1, "-00:30", "HR", "81")])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("negative_time", "HR"): 1}
    assert clean_rows(clean) == [(1, 1.0, "HR", 80.0)]


def test_past_window_is_inclusive_of_the_end(cat):
    raw = raw_data([
        (1, "47:59", "HR", "79"),
        (1, "48:00", "HR", HR_OK),  # exactly the window end: kept
        (1, "48:01", "HR", "81"),  # one minute later: dropped
        (1, "48.5", "MAP", "70"),
    ])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("past_window", "HR"): 1, ("past_window", "MAP"): 1}
    assert clean_rows(clean) == [(1, pytest.approx(47 + 59 / 60), "HR", 79.0), (1, 48.0, "HR", 80.0)]


def test_past_window_follows_window_hours(cat):
    raw = raw_data([(1, "24:00", "HR", HR_OK), (1, "24:30", "HR", "81"), (1, "30", "HR", "82")])
    clean, _, report = validate(raw, cat, window_hours=24)
    assert counts(report) == {("past_window", "HR"): 2}
    assert clean_rows(clean) == [(1, 24.0, "HR", 80.0)]
    assert report.window_hours == 24


def test_static_after_admission(cat):
    raw = raw_data([
        (1, "00:00", "Age", "54"),
        (1, "5", "Age", "55"),  # Age at 5 h: a descriptor cannot be re-measured
        (1, "05:00", "Gender", "1"),
        (1, "05:00", "Weight", "80"),  # Weight is also a time series: kept at 5 h
        (1, "01:00", "HR", HR_OK),
    ])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("static_after_admission", "Age"): 1, ("static_after_admission", "Gender"): 1}
    assert clean_rows(clean) == [(1, 0.0, "Age", 54.0), (1, 1.0, "HR", 80.0), (1, 5.0, "Weight", 80.0)]


def test_sentinel_minus_one_on_descriptors(cat):
    raw = raw_data([
        (1, "00:00", "Height", "-1"),
        (1, "00:00", "Gender", "-1"),
        (1, "00:00", "Weight", "-1.0"),
        (1, "00:00", "Age", "61"),
        (1, "01:00", "HR", HR_OK),
    ])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("sentinel_minus_one", "Gender"): 1, ("sentinel_minus_one", "Height"): 1,
                              ("sentinel_minus_one", "Weight"): 1}
    assert clean_rows(clean) == [(1, 0.0, "Age", 61.0), (1, 1.0, "HR", 80.0)]
    assert report.counts.filter(pl.col("rule") == "sentinel_minus_one")["action"].unique().to_list() == [
        "value -> missing"]


def test_minus_one_kept_when_inside_the_range():
    custom = Catalogue.from_csv_text(
        "name,unit,lower,upper,aggregation,kind,static,description\n"
        "Height,cm,100,250,last,static,true,\n"
        "Delta,score,-5,5,mean,vital,false,a change score that can be -1\n"
        "HR,bpm,1,300,mean,vital,false,\n")
    raw = raw_data([
        (1, "00:00", "Height", "-1"),
        (1, "01:00", "Delta", "-1"),
        (1, "02:00", "HR", HR_OK),
    ])
    clean, _, report = validate(raw, custom)
    assert counts(report) == {("sentinel_minus_one", "Height"): 1}
    assert clean_rows(clean) == [(1, 1.0, "Delta", -1.0), (1, 2.0, "HR", 80.0)]


def test_out_of_range(cat):
    raw = raw_data([
        (1, "01:00", "pH", "735"),  # unit slip for 7.35
        (1, "02:00", "pH", "7.35"),
        (1, "03:00", "pH", "8"),  # upper bound, inclusive
        (1, "04:00", "pH", "6.5"),  # lower bound, inclusive
        (1, "01:00", "Temp", "-17.8"),
        (1, "01:00", "HR", "0"),
        (1, "00:00", "Height", "462"),
        (1, "02:00", "HR", HR_OK),
    ])
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("out_of_range", "HR"): 1, ("out_of_range", "Height"): 1,
                              ("out_of_range", "Temp"): 1, ("out_of_range", "pH"): 1}
    assert clean_rows(clean) == [(1, 2.0, "HR", 80.0), (1, 2.0, "pH", 7.35), (1, 3.0, "pH", 8.0),
                                 (1, 4.0, "pH", 6.5)]
    assert report.counts.filter(pl.col("rule") == "out_of_range")["action"].unique().to_list() == [
        "value -> missing"]


def test_duplicate_row_counted_once(cat):
    raw = raw_data([
        (1, "01:00", "HR", HR_OK),
        (1, "01:00", "HR", HR_OK),  # exact duplicate
        (2, "01:00", "HR", HR_OK),  # same time/variable/value in another stay: not a duplicate
        (3, "01:00", "HR", HR_OK),
        (3, "1.0", "HR", "80.0"),  # same hours and value written differently: still a duplicate
    ])
    clean, kept, report = validate(raw, cat)
    assert counts(report) == {("duplicate_row", "HR"): 2}
    assert clean_rows(clean) == [(1, 1.0, "HR", 80.0), (2, 1.0, "HR", 80.0), (3, 1.0, "HR", 80.0)]
    assert kept.to_list() == [1, 2, 3]


def test_same_time_conflict_counted_and_rows_kept(cat):
    raw = raw_data([
        (1, "02:00", "HR", "80"),
        (1, "02:00", "HR", "90"),
        (1, "03:00", "MAP", "70"),
        (1, "03:00", "MAP", "75"),
        (1, "03:00", "MAP", "72"),
        (1, "04:00", "MAP", "71"),
    ])
    clean, _, report = validate(raw, cat)
    # 2 values at one time = 1 conflict; 3 values at one time = 2 conflicts
    assert counts(report) == {("same_time_conflict", "HR"): 1, ("same_time_conflict", "MAP"): 2}
    assert clean_rows(clean) == [(1, 2.0, "HR", 80.0), (1, 2.0, "HR", 90.0), (1, 3.0, "MAP", 70.0),
                                 (1, 3.0, "MAP", 72.0), (1, 3.0, "MAP", 75.0), (1, 4.0, "MAP", 71.0)]
    assert report.counts.filter(pl.col("rule") == "same_time_conflict")["action"].unique().to_list() == [
        "aggregated in bin (kept)"]


def test_row_order_never_changes_the_clean_table(cat):
    """Simultaneous conflicting values are ordered by value: a file's row order, a chunk boundary or a Spark
    shuffle cannot change which value a "last" aggregation keeps."""
    rows = [(1, "02:00", "HR", "90"), (1, "02:00", "HR", "80"), (1, "03:00", "MAP", "75"),
            (1, "03:00", "MAP", "70"), (1, "03:00", "MAP", "72"), (2, "01:00", "HR", "60")]
    want = clean_rows(validate(raw_data(rows), cat)[0])
    for perm in ([5, 4, 3, 2, 1, 0], [2, 0, 4, 1, 5, 3], [1, 3, 5, 0, 2, 4]):
        assert clean_rows(validate(raw_data([rows[i] for i in perm]), cat)[0]) == want


def test_hh_mm_times_parsed_to_hours(cat):
    raw = raw_data([
        (1, "36:30", "HR", "80"),
        (1, "00:07", "HR", "81"),
        (1, "1.25", "HR", "82"),
        (1, " 02:45 ", "HR", "83"),
    ])
    clean, _, report = validate(raw, cat)
    assert report.counts.height == 0
    times = dict(zip(clean["value"].to_list(), clean["time"].to_list(), strict=True))
    assert times == {80.0: 36.5, 81.0: pytest.approx(7 / 60), 82.0: 1.25, 83.0: 2.75}
    assert clean.schema == {"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String,
                            "value": pl.Float64}
    assert clean["time"].to_list() == sorted(clean["time"].to_list())  # sorted by stay, time


def test_numeric_input_follows_the_same_rules(cat):
    # What the PhysioNet reader and Parquet give: Float64 hours and values, null where unparseable.
    long = pl.DataFrame(
        [(1, 48.0, "HR", 80.0), (1, 48 + 1 / 60, "HR", 81.0), (1, None, "HR", 82.0), (1, 1.0, "HR", None),
         (1, -0.5, "MAP", 70.0), (1, 5.0, "Age", 55.0), (1, 0.0, "Height", -1.0), (1, 2.0, "pH", 735.0),
         (1, 3.0, "HR", 90.0), (1, 3.0, "HR", 90.0)],
        schema={"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64},
        orient="row")
    raw = RawData(long=long, stays=pl.Series("stay_id", [1], dtype=pl.Int64))
    clean, _, report = validate(raw, cat)
    assert counts(report) == {("past_window", "HR"): 1, ("unparseable_time", "HR"): 1,
                              ("unparseable_value", "HR"): 1, ("negative_time", "MAP"): 1,
                              ("static_after_admission", "Age"): 1, ("sentinel_minus_one", "Height"): 1,
                              ("out_of_range", "pH"): 1, ("duplicate_row", "HR"): 1}
    assert clean_rows(clean) == [(1, 3.0, "HR", 90.0), (1, 48.0, "HR", 80.0)]


# -- stay-level rules ------------------------------------------------------------------------------------
def test_unreadable_file(cat):
    raw = raw_data([(1, "01:00", "HR", HR_OK)], stays=[1, 2], unreadable={2: "unreadable_file"})
    clean, kept, report = validate(raw, cat)
    assert rejects(report) == {2: "unreadable_file"}
    assert counts(report) == {("unreadable_file", None): 1}
    assert kept.to_list() == [1]
    assert report.counts.filter(pl.col("rule") == "unreadable_file")["action"].to_list() == ["stay rejected"]


def test_unreadable_file_end_to_end(cat, physionet_set):
    path = physionet_set({140001: [("01:00", "HR", "80")], 140002: b"\x00\x01garbage"}, write_outcomes=False)
    clean, kept, report = validate(read_physionet(path), cat)
    assert kept.to_list() == [140001]
    assert rejects(report) == {140002: "unreadable_file"}
    assert clean["stay_id"].unique().to_list() == [140001]


def test_no_time_series(cat):
    raw = raw_data([
        (1, "01:00", "HR", HR_OK),
        (2, "00:00", "Age", "70"),  # descriptors only
        (2, "00:00", "Gender", "0"),
        (3, "01:00", "HR", "0"),  # its only series row is out of range
        (5, "49:00", "HR", "80"),  # its only series row is past the window
    ], stays=[1, 2, 3, 4, 5])  # stay 4: a file with no rows at all
    clean, kept, report = validate(raw, cat)
    assert rejects(report) == {2: "no_time_series", 3: "no_time_series", 4: "no_time_series",
                               5: "no_time_series"}
    assert counts(report) == {("no_time_series", None): 4, ("out_of_range", "HR"): 1,
                              ("past_window", "HR"): 1}
    assert kept.to_list() == [1]
    assert clean["stay_id"].unique().to_list() == [1]  # stay 2's Age/Gender rows leave with the stay


def test_no_label_only_when_required(cat):
    rows = [(1, "01:00", "HR", HR_OK), (2, "01:00", "HR", HR_OK), (3, "01:00", "HR", HR_OK)]
    raw = raw_data(rows, labels={1: 0, 3: 1})
    _, kept, report = validate(raw, cat)
    assert kept.to_list() == [1, 2, 3]
    assert report.rejects.height == 0
    _, kept, report = validate(raw, cat, require_labels=True)
    assert kept.to_list() == [1, 3]
    assert rejects(report) == {2: "no_label"}
    assert counts(report) == {("no_label", None): 1}


def test_no_label_without_any_outcomes(cat):
    raw = raw_data([(1, "01:00", "HR", HR_OK), (2, "01:00", "HR", HR_OK)])
    _, kept, report = validate(raw, cat, require_labels=True)
    assert kept.to_list() == []
    assert rejects(report) == {1: "no_label", 2: "no_label"}


def test_each_stay_kept_or_rejected_once(cat):
    raw = raw_data([
        (1, "00:00", "Age", "60"), (1, "01:00", "HR", HR_OK), (1, "01:00", "HR", HR_OK),
        (3, "00:00", "Age", "70"),
        (5, "02:00", "HR", "90"),
        (6, "50:00", "HR", "90"),
        (7, "02:00", "MAP", "abc"),  # unlabelled AND no series: one reason, no_time_series comes first
    ], stays=[1, 2, 3, 4, 5, 6, 7], unreadable={2: "unreadable_file"}, labels={1: 0, 2: 1, 3: 0, 4: 1, 6: 0})
    clean, kept, report = validate(raw, cat, require_labels=True)
    assert kept.to_list() == [1]
    assert rejects(report) == {2: "unreadable_file", 3: "no_time_series", 4: "no_time_series",
                               5: "no_label", 6: "no_time_series", 7: "no_time_series"}
    assert report.rejects.height == 6  # no stay listed twice
    assert set(kept.to_list()).isdisjoint(rejects(report))
    assert set(kept.to_list()) | set(rejects(report)) == set(raw.stays.to_list())
    assert (report.n_stays_read, report.n_stays_kept) == (7, 1)
    assert (report.n_rows_read, report.n_rows_kept) == (7, 2)  # stay 1: Age and one HR
    assert clean_rows(clean) == [(1, 0.0, "Age", 60.0), (1, 1.0, "HR", 80.0)]
    d = report.to_dict()
    assert d["stays"] == {"read": 7, "kept": 1, "rejected": 6,
                          "rejected_by_reason": {"no_label": 1, "no_time_series": 4, "unreadable_file": 1}}
    assert d["rows"] == {"read": 7, "kept": 2}


# -- the report ------------------------------------------------------------------------------------------
@pytest.fixture
def identified_report(cat):
    raw = raw_data([
        (731905, "01:00", "HR", HR_OK),
        (884213, "00:00", "Age", "70"),  # no series -> rejected by id
        (731905, "02:00", "Lactat", "3"),
    ], stays=[731905, 884213, 665127], unreadable={665127: "unreadable_file"}, sources=["set-q"])
    return validate(raw, cat)[2]


def test_report_without_stay_ids_has_none(identified_report):
    ids = ("731905", "884213", "665127")
    with_ids = json.dumps(identified_report.to_dict(include_stay_ids=True), default=float)
    assert all(i in with_ids for i in ("884213", "665127"))  # the rejects are there by default
    text = json.dumps(identified_report.to_dict(include_stay_ids=False), default=float)
    assert not [i for i in ids if i in text]
    d = json.loads(text)
    assert "rejects" not in d
    assert d["stays"]["rejected_by_reason"] == {"no_time_series": 1, "unreadable_file": 1}
    assert d["sources"] == ["set-q"]
    assert [r["rule"] for r in d["rules"]] == list(ACTIONS)


def test_report_write_is_atomic_json(identified_report, tmp_path):
    out_dir = tmp_path / "reports"
    target = out_dir / "quality.json"
    written = identified_report.write(target, include_stay_ids=False)
    assert written == target
    assert sorted(p.name for p in out_dir.iterdir()) == ["quality.json"]
    loaded = json.loads(target.read_text())
    assert loaded["stays"] == {"read": 3, "kept": 1, "rejected": 2,
                               "rejected_by_reason": {"no_time_series": 1, "unreadable_file": 1}}
    assert {"rule": "unknown_variable", "action": "row dropped", "variable": None, "rows": 1, "names": 1} in (
        loaded["counts"])  # the input's own name for it ("Lactat") stays local: see the next test
    assert "884213" not in target.read_text()
    # overwriting replaces the file whole, still leaving no temporary file behind
    identified_report.write(target)
    assert sorted(p.name for p in out_dir.iterdir()) == ["quality.json"]
    assert {"stay_id": 884213, "reason": "no_time_series"} in json.loads(target.read_text())["rejects"]


def test_report_str_summarises(identified_report):
    text = str(identified_report)
    assert text.splitlines()[0] == "stays: 3 read, 1 kept, 2 rejected; rows: 3 read, 1 kept"
    assert "unknown_variable" in text


def test_order_rows_is_the_key_then_value_order_with_duplicates_and_conflicts_marked():
    """Against the definition, not the implementation: rows sorted by (key, value) with ties kept in input
    order (a stable two-key sort, written out in Python), exact duplicates after their first copy dropped."""
    import numpy as np

    from clinical_lstm.data.validate import order_rows

    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 500):
        key = rng.integers(0, max(n // 3, 1), n).astype(np.int64)  # many ties
        value = rng.choice([-1.0, 0.0, 2.5, np.nan], n)
        order, keep, conflict = order_rows(key, value)
        nan_last = lambda x: (np.isnan(x), 0.0 if np.isnan(x) else x)  # noqa: E731 (numpy's order: NaN last)
        expected = sorted(range(n), key=lambda i: (key[i], *nan_last(value[i])))  # Python's sort is stable
        assert order.tolist() == expected
        k, v = key[order], value[order]
        for i in range(n):
            same_key = i > 0 and k[i] == k[i - 1]
            same_value = i > 0 and (v[i] == v[i - 1])
            assert keep[i] == (not (same_key and same_value))
            assert conflict[i] == (same_key and keep[i])


# -- time column types -------------------------------------------------------------------------------------
def as_duration(long: pl.DataFrame, unit: str) -> pl.DataFrame:
    """``long`` with its float-hour ``time`` as a Duration, the way a hospital's Parquet export holds it."""
    ticks = {"ns": 3_600_000_000_000, "us": 3_600_000_000, "ms": 3_600_000}[unit]
    return long.with_columns((pl.col("time") * ticks).round().cast(pl.Int64).cast(pl.Duration(unit)))


@pytest.mark.parametrize("unit", ["us", "ns", "ms"])
def test_duration_time_is_elapsed_hours_exactly(cat, tmp_path, unit):
    """A Duration ``time`` (Parquet, polars) is hours since admission: the same clean rows, report and risks
    as the float hours it came from, bit for bit (not microseconds read as hours)."""
    from helpers import tiny_model

    from clinical_lstm.data.sources import read_long
    from clinical_lstm.data.synthetic import synthetic_cohort

    long = synthetic_cohort(5, seed=4, dirt=0.05)
    path = tmp_path / "dur.parquet"
    as_duration(long, unit).write_parquet(path)
    raw = read_long(path)
    assert raw.long.schema["time"] == pl.Duration(unit)
    clean, kept, report = validate(raw, cat)
    floats = RawData(long=long, stays=long["stay_id"].unique().sort())
    want_clean, want_kept, want_report = validate(floats, cat)
    assert clean.equals(want_clean) and kept.equals(want_kept)
    assert report.counts.equals(want_report.counts) and kept.len() == 5
    assert "past_window" not in report.counts["rule"].to_list()
    model = tiny_model(seed=1)
    assert model.predict(path)["risk"].to_list() == model.predict(long)["risk"].to_list()


@pytest.mark.parametrize("dtype", [pl.Datetime("us"), pl.Datetime("ns", "UTC"), pl.Date()])
def test_timestamp_time_is_a_clear_error(cat, tmp_path, dtype):
    """An absolute time cannot be hours since admission without each stay's admission time: refused, naming
    the file, the column and its type, instead of every row read as microseconds since 1970."""
    from clinical_lstm.data.sources import DataError, read_long

    long = pl.DataFrame({"stay_id": [1, 1], "time": [0.0, 3.0], "variable": ["Age", "HR"],
                         "value": [60.0, 80.0]})
    path = tmp_path / "stamps.parquet"
    stamp = pl.datetime(2024, 3, 1) + pl.duration(hours="time")
    long.with_columns(stamp.cast(dtype).alias("time")).write_parquet(path)
    with pytest.raises(DataError, match=r"stamps\.parquet: column 'time' has type (Datetime|Date).*a "
                                        r"timestamp.*no admission time.*hours since ICU admission"):
        validate(read_long(path), cat)


def test_categorical_time_is_read_as_text(cat):
    raw = raw_data([(1, "01:30", "HR", HR_OK), (1, "2.5", "HR", "81"), (1, "25:99", "HR", "82")])
    want = validate(raw, cat)
    cat_raw = RawData(long=raw.long.with_columns(pl.col("time").cast(pl.Categorical)), stays=raw.stays)
    got = validate(cat_raw, cat)
    assert got[0].equals(want[0]) and got[2].counts.equals(want[2].counts)


# -- the tracking-safe report --------------------------------------------------------------------------------
PLANTED = ("700040", "Doe^John MRN 4471123")  # another stay's id and a patient's name, as variable names


def test_safe_report_carries_no_variable_name_from_the_input(cat):
    """Names outside the catalogue (counted unknown_variable, or unparseable_time when the time is bad too)
    are counted, never named, in the form logged to tracking; the catalogue's names stay."""
    raw = raw_data([
        (1, "01:00", "HR", HR_OK), (1, "02:00", PLANTED[0], "1"), (1, "03:00", PLANTED[1], "1"),
        (1, "04:00", PLANTED[1], "2"), (1, "later", PLANTED[1], "3"), (1, "later", "HR", "81"),
        (1, "05:00", None, "4"), (1, "06:00", "HR", "900"),
    ])
    report = validate(raw, cat)[2]
    local = report.counts.filter(pl.col("rule") == "unknown_variable").select("variable", "rows").rows()
    assert {(PLANTED[1], 2), (PLANTED[0], 1)} <= set(local)  # the local report names them
    text = json.dumps(report.to_dict(include_stay_ids=False))
    assert not [n for n in (*PLANTED, "4471123", "Doe") if n in text]
    safe = {(r["rule"], r["variable"]): (r["rows"], r.get("names")) for r in json.loads(text)["counts"]}
    assert safe == {("unknown_variable", None): (4, 3),  # 700040, Doe^John... and a null name
                    ("unparseable_time", "HR"): (1, None), ("unparseable_time", None): (1, 1),
                    ("out_of_range", "HR"): (1, None)}
    # chunked validation merges reports: still nameless; a report read back without its catalogue names none
    merged = QualityReport.merge([report, validate(raw_data([(2, "1", "HR", HR_OK)]), cat)[2]], 48.0)
    assert not [n for n in PLANTED if n in json.dumps(merged.to_dict(include_stay_ids=False))]
    assert merged.to_dict(include_stay_ids=False)["counts"] == json.loads(text)["counts"]
    back = QualityReport.from_dict(report.to_dict())
    assert "HR" not in json.dumps(back.to_dict(include_stay_ids=False))
    back = QualityReport.from_dict(report.to_dict(), known_variables=cat.names)
    assert back.to_dict(include_stay_ids=False)["counts"] == json.loads(text)["counts"]


def test_a_duration_input_beside_a_float_one_and_a_timestamp_in_the_index_pass(cat, tmp_path):
    """Two inputs of different schemas are joined as text: a Duration ``time`` is read as hours first (it was
    a polars error). The batch index pass refuses a timestamp ``time`` before any chunk, naming the file."""
    from clinical_lstm.data.chunks import index_long
    from clinical_lstm.data.load import load
    from clinical_lstm.data.sources import DataError
    from clinical_lstm.data.synthetic import synthetic_cohort

    long = synthetic_cohort(6, seed=2)
    first, second = long.filter(pl.col("stay_id") <= 3), long.filter(pl.col("stay_id") > 3)
    first.write_csv(tmp_path / "first.csv")
    as_duration(second, "us").write_parquet(tmp_path / "second.parquet")
    second.write_parquet(tmp_path / "floats.parquet")
    mixed = validate(load([tmp_path / "first.csv", tmp_path / "second.parquet"]), cat)
    want = validate(load([tmp_path / "first.csv", tmp_path / "floats.parquet"]), cat)
    assert mixed[0].equals(want[0]) and mixed[1].len() == 6
    second.with_columns((pl.datetime(2026, 1, 1) + pl.duration(hours=pl.col("time"))).alias("time")).write_parquet(
        tmp_path / "stamps.parquet")
    with pytest.raises(DataError, match=r"stamps\.parquet: column 'time' has type Datetime"):
        index_long(tmp_path / "stamps.parquet", cat)


# -- time resolution: the second ---------------------------------------------------------------------------------
def test_snap_seconds_hand_worked():
    """Hours to the nearest whole second; a fraction of a second before admission is 0 h (not -0.0); NaN, the
    infinities and times too large to count in seconds are left as they are; snapping twice changes nothing."""
    import numpy as np

    from clinical_lstm.data.times import snap_seconds

    h = np.array([10.9999, 11.0, 0.4 / 3600, 0.6 / 3600, -0.4 / 3600, -0.6 / 3600, 47 + 59 / 60 + 1e-7,
                  np.nan, np.inf, -np.inf, 1e306])
    got = snap_seconds(h)
    want = [39600 / 3600, 11.0, 0.0, 1 / 3600, 0.0, -1 / 3600, 172740 / 3600, np.nan, np.inf, -np.inf, 1e306]
    np.testing.assert_array_equal(got, want)
    assert not np.signbit(got[4])  # -0.4 s is 0 h, not -0 h
    np.testing.assert_array_equal(snap_seconds(got), got)


def test_times_are_snapped_to_the_second_before_rules_dedup_and_bins(cat):
    """10.9999 h and 11 h are 39,600 s: one HR (an exact duplicate) at 11 h in either order. 0.36 s before
    admission is admission; 0.36 s after the window's end is its end; 0.72 s before admission is -1 s."""
    rows = [(1, "10.9999", "HR", "95"), (1, "11", "HR", "95"), (1, "-0.0001", "MAP", "70"),
            (1, "48.0001", "MAP", "71"), (1, "-0.0002", "MAP", "72")]
    for order in (rows, rows[::-1], [rows[1], rows[0], *rows[2:]]):
        clean, _, report = validate(raw_data(order), cat)
        assert clean_rows(clean) == [(1, 0.0, "MAP", 70.0), (1, 11.0, "HR", 95.0), (1, 48.0, "MAP", 71.0)]
        assert counts(report) == {("duplicate_row", "HR"): 1, ("negative_time", "MAP"): 1}


# -- a variable removed whole ---------------------------------------------------------------------------------------
def test_a_variable_removed_whole_is_in_the_report_and_the_stays_flags(cat):
    """Temp in °F (every value out_of_range) and Lactate (one out of range, one past the window: the flag names
    the rule that removed a value) are removed whole in stay 1; a -1 sentinel Height, an unknown name, a Temp
    with one good value left (stay 2) and a stay rejected anyway (3) are not listed."""
    from clinical_lstm.data.validate import stay_quality

    raw = raw_data([
        (1, "00:00", "Age", "60"), (1, "00:00", "Height", "-1"), (1, "1", "HR", HR_OK), (1, "2", "HR", "81"),
        (1, "1.5", "Temp", "98.6"), (1, "3", "Temp", "99.1"), (1, "4", "Lactate", "95"), (1, "50", "Lactate", "2"),
        (1, "5", "Lactat", "2"),
        (2, "1", "HR", HR_OK), (2, "2", "Temp", "37"), (2, "3", "Temp", "99"),
        (3, "1", "Temp", "99"),
    ])
    clean, kept, report = validate(raw, cat)
    assert kept.to_list() == [1, 2] and rejects(report) == {3: "no_time_series"}
    assert report.removed.rows() == [(1, "Lactate", "out_of_range", 1), (1, "Temp", "out_of_range", 2)]
    flags = dict(stay_quality(clean, kept, report, cat).select("stay_id", "quality_flags").iter_rows())
    assert flags[1] == ("few_observations;short_record;values_removed;unknown_variables;"
                        "all_values_removed:Lactate:out_of_range;all_values_removed:Temp:out_of_range")
    assert "all_values_removed" not in flags[2]

    d = report.to_dict()
    assert d["all_values_removed"] == [{"stay_id": 1, "variable": "Lactate", "rule": "out_of_range", "rows": 1},
                                       {"stay_id": 1, "variable": "Temp", "rule": "out_of_range", "rows": 2}]
    safe = report.to_dict(include_stay_ids=False)["all_values_removed"]
    assert safe == [{"variable": "Lactate", "rule": "out_of_range", "stays": 1, "rows": 1},
                    {"variable": "Temp", "rule": "out_of_range", "stays": 1, "rows": 2}]
    assert "Temp: every value removed in 1 stay(s) (out_of_range, 2 rows)" in str(report)
    back = QualityReport.from_dict(json.loads(json.dumps(d)), known_variables=cat.names)
    assert back.removed.equals(report.removed) and back.to_dict() == d
    assert QualityReport.from_dict(report.to_dict(include_stay_ids=False)).removed is None
    other = validate(raw_data([(4, "1", "HR", HR_OK), (4, "2", "Temp", "100")]), cat)[2]
    merged = QualityReport.merge([report, other], 48.0)
    assert merged.to_dict(include_stay_ids=False)["all_values_removed"][1] == {
        "variable": "Temp", "rule": "out_of_range", "stays": 2, "rows": 3}
