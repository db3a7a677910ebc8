"""Tests for clinical_lstm.data.synthetic: shape and ranges of a clean cohort, agreement with the profile, dirt
counted by validation's rules, determinism, and the Parquet writer (same rows, whole stays, atomic)."""

from __future__ import annotations

import json

import polars as pl
import pyarrow.parquet as pq
import pytest

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.sources import RawData
from clinical_lstm.data.synthetic import load_profile, main, synthetic_cohort, synthetic_labels, write_cohort
from clinical_lstm.data.validate import validate

N = 2_000


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.default()


@pytest.fixture(scope="module")
def cohort() -> pl.DataFrame:
    return synthetic_cohort(N, seed=3)


@pytest.fixture(scope="module")
def profile() -> dict:
    return {r["name"]: r for r in load_profile().iter_rows(named=True)}


def check(df: pl.DataFrame, cat: Catalogue, window: float = 48.0):
    return validate(RawData(long=df, stays=df["stay_id"].unique().sort()), cat, window)


def rule_counts(report) -> dict[str, int]:
    totals = report.counts.group_by("rule").agg(pl.col("rows").sum())
    return dict(totals.iter_rows())


# -- a clean cohort --------------------------------------------------------------------------------------
def test_schema_ids_and_order(cohort):
    assert cohort.schema == pl.Schema(
        {"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64}
    )
    assert cohort["stay_id"].unique().sort().to_list() == list(range(1, N + 1))
    assert cohort.equals(cohort.sort("stay_id", "time", maintain_order=True))
    assert 380 < cohort.height / N < 490  # PhysioNet set A: 438 rows per stay


def test_statics_at_time_zero_once_per_stay(cohort):
    statics = cohort.filter(pl.col("variable").is_in(["Age", "Gender", "Height", "ICUType"]))
    assert (statics["time"] == 0).all()
    assert not statics.select("stay_id", "variable").is_duplicated().any()
    per_variable = dict(statics.group_by("variable").len().iter_rows())
    assert per_variable["Age"] > 0.99 * N and per_variable["ICUType"] > 0.99 * N
    assert 0.45 * N < per_variable["Height"] < 0.60 * N  # Height is unrecorded in ~48 % of set A


def test_clean_cohort_breaks_no_rule(cohort, cat):
    clean, kept, report = check(cohort, cat)
    assert report.counts.height == 0
    assert kept.len() == N and clean.height == cohort.height
    assert cohort["time"].min() >= 0 and cohort["time"].max() <= 48
    ranges = pl.DataFrame(
        {
            "variable": cat.names,
            "lower": [v.lower for v in cat.variables],
            "upper": [v.upper for v in cat.variables],
        }
    )
    joined = cohort.join(ranges, on="variable", how="left")
    assert joined["lower"].null_count() == 0
    assert joined.filter(~pl.col("value").is_between(pl.col("lower"), pl.col("upper"))).height == 0


def test_shorter_window_keeps_times_inside_it(cat):
    df = synthetic_cohort(200, window_hours=24.0)
    assert df["time"].min() >= 0 and df["time"].max() <= 24
    assert check(df, cat, 24.0)[2].counts.height == 0
    assert df.height < 0.7 * synthetic_cohort(200).height  # counts scale with the window


def test_presence_counts_and_medians_follow_the_profile(cohort, cat, profile):
    series = cohort.filter((pl.col("time") > 0) | ~pl.col("variable").is_in(cat.statics))
    per_stay = series.group_by("variable", "stay_id").len()
    stats = {
        r["variable"]: r
        for r in per_stay.group_by("variable")
        .agg((pl.len() / N).alias("presence"), pl.col("len").mean().alias("count"))
        .iter_rows(named=True)
    }
    for name in cat.series:
        want, got = profile[name], stats.get(name, {"presence": 0.0, "count": 0.0})
        assert got["presence"] == pytest.approx(want["presence"], abs=0.04), name
        if want["presence"] * N >= 200:
            assert got["count"] == pytest.approx(want["count_mean"], rel=0.1), name
    medians = dict(cohort.group_by("variable").agg(pl.col("value").median()).iter_rows())
    for name, want in profile.items():
        if not want["levels"]:
            assert abs(medians[name] - want["q50"]) <= 0.15 * (want["q75"] - want["q25"]) + 1e-9, name
    genders = cohort.filter(pl.col("variable") == "Gender")["value"]
    assert genders.is_in([0.0, 1.0]).all() and genders.mean() == pytest.approx(0.5618, abs=0.04)


def test_values_of_a_stay_hover_around_its_own_level(cohort):
    weight = cohort.filter(pl.col("variable") == "Weight")
    by_stay = weight.group_by("stay_id").agg(pl.col("value").std()).drop_nulls()["value"].mean()
    assert by_stay < 0.2 * weight["value"].std()  # stay_share of Weight is 0.99


# -- dirt --------------------------------------------------------------------------------------------------
def test_dirt_is_counted_by_validation_rules(cat):
    df = synthetic_cohort(500, seed=1, dirt=0.02)
    ranges = pl.DataFrame(
        {
            "variable": cat.names,
            "lower": [v.lower for v in cat.variables],
            "upper": [v.upper for v in cat.variables],
        }
    )
    timely = df.filter(pl.col("time") >= 0).join(ranges, on="variable")
    sentinel = timely.filter(pl.col("value") == -1)
    slipped = timely.filter((pl.col("value") != -1) & ~pl.col("value").is_between("lower", "upper"))
    fine = timely.filter(pl.col("value").is_between("lower", "upper"))
    expected = {
        "negative_time": int((df["time"] < 0).sum()),
        "sentinel_minus_one": sentinel.height,
        "out_of_range": slipped.height,
        "duplicate_row": fine.height - fine.unique().height,
    }
    assert rule_counts(check(df, cat)[2]) == expected
    quarter = 0.02 / 4 * df.height
    for rule in ("negative_time", "out_of_range", "duplicate_row"):
        assert expected[rule] == pytest.approx(quarter, rel=0.2), rule
    unrecorded = sentinel.filter(pl.col("variable") == "Height").height
    assert 0.4 * 500 < unrecorded < 0.55 * 500  # unrecorded statics appear as PhysioNet's -1 rows


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_stays": -1}, "n_stays must be a non-negative integer"),
        ({"n_stays": 10, "dirt": 1.5}, r"dirt .* must be in \[0, 1\)"),
        ({"n_stays": 10, "window_hours": 0}, "window_hours must be > 0"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic_cohort(**kwargs)


def test_profile_missing_a_catalogue_variable_raises():
    with pytest.raises(ValueError, match=r"no row for catalogue variable\(s\) \['HR'\]"):
        synthetic_cohort(10, profile=load_profile().filter(pl.col("name") != "HR"))


# -- determinism ------------------------------------------------------------------------------------------
def test_same_seed_same_frame_other_seed_other_frame(cohort):
    first = synthetic_cohort(300, seed=3)
    assert first.equals(synthetic_cohort(300, seed=3))
    assert not synthetic_cohort(300, seed=4).equals(first)
    assert first.equals(cohort.filter(pl.col("stay_id") <= 300))  # the first stays do not depend on n_stays
    shifted = synthetic_cohort(300, seed=3, first_id=10_001)
    assert shifted.with_columns(pl.col("stay_id") - 10_000).equals(first)


def test_empty_cohort():
    assert synthetic_cohort(0).height == 0


# -- labels -------------------------------------------------------------------------------------------------
def test_labels_carry_the_planted_signal(cohort):
    labels = synthetic_labels(cohort, seed=0)
    assert labels["stay_id"].to_list() == list(range(1, N + 1))
    assert 0.05 < labels["label"].mean() < 0.3
    lactate = cohort.filter(pl.col("variable") == "Lactate").group_by("stay_id").agg(pl.col("value").max())
    rates = labels.join(lactate, on="stay_id").group_by(pl.col("value") > 4).agg(pl.col("label").mean())
    rate = dict(rates.iter_rows())
    assert rate[True] > 2 * rate[False]
    assert synthetic_labels(cohort.lazy(), seed=0).equals(labels)


# -- Parquet ------------------------------------------------------------------------------------------------
def test_write_cohort_round_trips_in_whole_stay_row_groups(tmp_path):
    path = tmp_path / "cohort.parquet"
    result = write_cohort(path, 1_500, seed=5, rows_per_group=150_000, block_stays=1_000, dirt=0.01)
    expected = synthetic_cohort(1_500, seed=5, dirt=0.01)
    assert pl.read_parquet(path).equals(expected)
    assert result["rows"] == expected.height and result["stays"] == 1_500 and result["bytes"] > 0
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == result["row_groups"] > 1
    bounds = [
        (meta.row_group(i).column(0).statistics.min, meta.row_group(i).column(0).statistics.max)
        for i in range(meta.num_row_groups)
    ]
    assert all(hi < next_lo for (_, hi), (next_lo, _) in zip(bounds, bounds[1:], strict=False))
    assert all(meta.row_group(i).num_rows >= 150_000 for i in range(meta.num_row_groups - 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.parquet"]


def test_write_cohort_leaves_nothing_behind_on_error(tmp_path):
    with pytest.raises(ValueError, match="dirt"):
        write_cohort(tmp_path / "bad.parquet", 10, dirt=2.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        write_cohort(tmp_path / "bad.parquet", 10, colour="red")
    assert list(tmp_path.iterdir()) == []


def test_main_writes_parquet_and_labels(tmp_path, capsys):
    out, labels = tmp_path / "s.parquet", tmp_path / "labels.csv"
    result = main(["--stays", "30", "--out", str(out), "--seed", "2", "--labels", str(labels)])
    assert json.loads(capsys.readouterr().out) == result
    assert pl.read_parquet(out).equals(synthetic_cohort(30, seed=2))
    assert pl.read_csv(labels)["stay_id"].to_list() == list(range(1, 31))
    assert result["positive_rate"] == pytest.approx(pl.read_csv(labels)["label"].mean(), abs=1e-4)
