"""Issue 23, items 3, 4 and 10: one risk whatever the row order, a variable lost whole is flagged, and a stream
state without its digest is refused.

A small model really trained on the bundled sample (2 folds, 2 epochs: with its summary members) scores real
sample stays with planted rows, through ``predict``, batch ``score`` and the stream.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from clinical_lstm.config import Config
from clinical_lstm.data.load import load
from clinical_lstm.data.sample import bundled_sample
from clinical_lstm.data.sources import DataError
from clinical_lstm.data.validate import validate
from clinical_lstm.serve.batch import score_batch

TOL = 1e-5  # the stream's parity tolerance with predict (tests/test_stream.py, tests/test_parity.py)
SCHEMA = {"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, bundle path): trained on the bundled sample; the summary members make it the default's shape."""
    from clinical_lstm.workflow import train

    cfg = Config.from_dict({"model": {"hidden_size": 8}, "train": {"epochs": 2, "patience": 1, "folds": 2},
                            "evaluation": {"n_boot": 10, "explain_stays": 0}})
    out = tmp_path_factory.mktemp("trust") / "run"
    res = train(bundled_sample(), out, config=cfg, progress=False, log=lambda *_: None)
    assert res.model.head is not None and len(res.model.networks) == 2
    return res.model, out / "model"


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    long = load(bundled_sample()).long
    return long.select(pl.col("stay_id").cast(pl.Int64), pl.col("time").cast(pl.Float64),
                       pl.col("variable").cast(pl.String), pl.col("value").cast(pl.Float64))


def one_stay(sample: pl.DataFrame, k: int = 0) -> pl.DataFrame:
    """The k-th sample stay, in non-decreasing time."""
    sid = sample["stay_id"].unique().sort()[k]
    return sample.filter(pl.col("stay_id") == sid).sort("time", maintain_order=True)


def rows(sid: int, items) -> pl.DataFrame:
    return pl.DataFrame([(sid, float(t), v, float(x)) for t, v, x in items], schema=SCHEMA, orient="row")


def scored(path, data: pl.DataFrame, tmp_path, name: str, chunk_stays: int = 2) -> pl.DataFrame:
    """Batch ``score`` of ``data`` written as CSV in its row order."""
    src = tmp_path / f"{name}.csv"
    data.write_csv(src)
    score_batch(path, src, tmp_path / f"{name}.parquet", chunk_stays=chunk_stays, log=lambda _: None)
    return pl.read_parquet(tmp_path / f"{name}.parquet").sort("stay_id")


def stream_risk(model, chunks):
    s = model.stream()
    for c in chunks:
        s.update(c)
    return s


# -- item 3: one time resolution, every path -----------------------------------------------------------------
def test_two_equal_rows_a_tenth_of_a_second_apart_give_one_risk_in_either_file_order(trained, sample, tmp_path):
    """HR 95 at 10.9999 h and at 11.0 h are one second (39,600 s) once snapped: an exact duplicate in bin 11,
    whichever row the file gives first. It was bin 10 or bin 11 by order, a third value in the stream, and the
    stream refused 11.0 before 10.9999."""
    model, path = trained
    base = one_stay(sample).filter(pl.col("time") <= 10.5)
    sid = base["stay_id"][0]
    a, b = rows(sid, [(10.9999, "HR", 95.0)]), rows(sid, [(11.0, "HR", 95.0)])
    first, second = pl.concat([base, a, b]), pl.concat([base, b, a])
    want = model.predict(first)
    assert want["risk"][0] is not None
    assert model.predict(second)["risk"].to_list() == want["risk"].to_list()
    assert model.predict(second.reverse())["risk"].to_list() == want["risk"].to_list()
    for name, data in (("first", first), ("second", second)):
        batch = scored(path, data, tmp_path, name)
        assert batch["risk"].to_list() == want["risk"].to_list(), name
        for chunks in ([data], [data[i:i + 1] for i in range(data.height)]):
            s = stream_risk(model, chunks)
            assert abs(s.risk - want["risk"][0]) <= TOL, (name, s.risk, want["risk"][0])
            assert s.n_steps == 12  # bin 11 is the last: 11.0 h
    clean, _, report = validate(load_frame(first), model.catalogue)
    assert clean.filter(pl.col("variable") == "HR")["time"].max() == 11.0
    assert ("duplicate_row", "HR", 1) in report.counts.select("rule", "variable", "rows").rows()


def load_frame(df: pl.DataFrame):
    from clinical_lstm.data.sources import RawData

    return RawData(long=df, stays=df["stay_id"].unique().sort())


def near_duplicates(sample: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Two sample stays with planted rows a fraction of a second around whole seconds, many on bin edges,
    equal and different values (duplicates, conflicts, rows on both sides of an hour)."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in (1, 2):
        stay = one_stay(sample, k)
        sid = stay["stay_id"][0]
        hours = rng.integers(1, 47, 25)
        seconds = hours * 3600 + rng.choice([-1, 0, 0, 1, 7], len(hours))  # on or next to a bin edge
        planted = []
        for s in seconds:
            var = str(rng.choice(["HR", "MAP", "Temp", "Urine", "Lactate"]))
            value = {"HR": 90.0, "MAP": 75.0, "Temp": 37.5, "Urine": 40.0, "Lactate": 2.0}[var]
            for _ in range(int(rng.integers(2, 5))):
                jitter = rng.uniform(-0.45, 0.45)  # under half a second: the same second once snapped
                planted.append(((s + jitter) / 3600, var, value + float(rng.choice([0.0, 0.0, 1.0]))))
        parts += [stay, rows(sid, planted)]
    return pl.concat(parts)


def stream_orders(stay: pl.DataFrame, rng):
    """Feeding orders a stream may get: by time at the second, rows of one second in any order; all at once,
    row by row and in random cuts."""
    second = (stay["time"] * 3600).round()
    shuffled = stay.with_columns(second.alias("_s"), pl.Series("_r", rng.permutation(stay.height))).sort(
        "_s", "_r").drop("_s", "_r")
    n = shuffled.height
    cuts = np.sort(rng.choice(np.arange(1, n), size=n // 6, replace=False)).tolist()
    bounds = [0, *cuts, n]
    return [[shuffled], [shuffled[i:i + 1] for i in range(n)],
            [shuffled[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]]


def test_many_near_duplicate_times_give_one_risk_in_any_order_and_chunking(trained, sample, tmp_path):
    model, path = trained
    data = near_duplicates(sample, seed=11)
    want = model.predict(data).sort("stay_id")
    assert want["risk"].null_count() == 0
    rng = np.random.default_rng(5)
    for k in range(6):
        shuffled = data.sample(fraction=1.0, shuffle=True, seed=k)
        assert model.predict(shuffled).sort("stay_id")["risk"].to_list() == want["risk"].to_list(), k
    for k, chunk_stays in ((0, 1), (1, 2)):
        batch = scored(path, data.sample(fraction=1.0, shuffle=True, seed=100 + k), tmp_path, f"b{k}", chunk_stays)
        np.testing.assert_allclose(batch["risk"].to_numpy(), want["risk"].to_numpy(), atol=TOL, rtol=0)
    for sid, risk in want.select("stay_id", "risk").iter_rows():
        stay = data.filter(pl.col("stay_id") == sid)
        for chunks in stream_orders(stay, rng):
            got = stream_risk(model, chunks).risk
            assert got is not None and abs(got - risk) <= TOL, (sid, got, risk)


def test_the_stream_snaps_like_validate_and_resumes_snapped_times(trained, sample):
    """A stream's state holds the snapped time; a row half a second earlier than the last one but in the same
    second is no step back in time."""
    model, _ = trained
    stay = one_stay(sample).filter(pl.col("time") <= 5)
    sid = stay["stay_id"][0]
    s = model.stream()
    s.update(pl.concat([stay, rows(sid, [(6 + 0.3 / 3600, "HR", 90.0)])]))
    assert s.hours == 6.0
    restored = model.stream(s.state())
    restored.update(rows(sid, [(6 - 0.3 / 3600, "HR", 91.0)]))  # 5.99992 h: the same second, 6:00:00
    assert restored.hours == 6.0


# -- item 4: a variable removed whole is a flag ----------------------------------------------------------------
FLAG = "all_values_removed:Temp:out_of_range"


def fahrenheit_stay(sample: pl.DataFrame) -> pl.DataFrame:
    """A long sample stay whose 14 temperatures are in °F (all out_of_range): under 10 % of its rows."""
    stays = sample.group_by("stay_id").len().sort("len", descending=True)
    sid = stays["stay_id"][0]
    stay = one_stay(sample.filter(pl.col("stay_id") == sid)).filter(pl.col("variable") != "Temp")
    assert stay.height > 140
    temps = rows(sid, [(1.0 + 3 * k, "Temp", 98.6 + 0.2 * k) for k in range(14)])
    return pl.concat([stay, temps]).sort("time", maintain_order=True)


def test_a_variable_whose_every_value_is_removed_is_flagged_in_predict_score_stream_and_report(
        trained, sample, tmp_path):
    model, path = trained
    bad = fahrenheit_stay(sample)
    sid = bad["stay_id"][0]
    others = sample.filter(pl.col("stay_id").is_in(sample["stay_id"].unique().sort()[:3].to_list())
                           & (pl.col("stay_id") != sid))
    data = pl.concat([others, bad])
    pred = model.predict(data)
    flags = dict(zip(pred["stay_id"], pred["quality_flags"], strict=True))
    assert FLAG in flags[sid].split(";")
    assert "values_removed" not in flags[sid].split(";")  # 14 rows are under 10 %: that flag does not fire
    assert not [f for k, f in flags.items() if k != sid and "all_values_removed" in f]

    batch = scored(path, data, tmp_path, "fahrenheit")
    assert dict(zip(batch["stay_id"], batch["quality_flags"], strict=True)) == flags
    summary = json.loads((tmp_path / "fahrenheit.parquet.summary.json").read_text())
    assert summary["quality_flags"][FLAG] == 1

    s = model.stream()
    for hour in bad["time"].floor().unique(maintain_order=True).to_list():
        s.update(bad.filter(pl.col("time").floor() == hour))
    assert s.quality_flags == flags[sid]
    assert model.stream(s.state()).quality_flags == flags[sid]  # it survives a save and resume

    _, report = model.score_table(data)
    assert report.to_dict()["all_values_removed"] == [
        {"stay_id": sid, "variable": "Temp", "rule": "out_of_range", "rows": 14}]
    safe = report.to_dict(include_stay_ids=False)
    assert safe["all_values_removed"] == [{"variable": "Temp", "rule": "out_of_range", "stays": 1, "rows": 14}]
    assert str(sid) not in json.dumps(safe)
    assert "Temp" in str(report) and "every value removed" in str(report)


def test_stream_quality_flags_are_predicts_at_every_point(trained, sample):
    """The stream's flags are predict's flags of the rows fed so far (few observations, short record, values
    removed, unknown variables, no statics, and a variable removed whole by two rules)."""
    model, _ = trained
    stay = one_stay(sample, 3)
    sid = stay["stay_id"][0]
    planted = rows(sid, [(0.5, "Lactate", 95.0), (2.0, "Lactate", -3.0), (2.5, "Foo", 1.0), (3.0, "Age", 50.0),
                         (4.0, "pH", 14.0)])
    data = pl.concat([stay.filter(~pl.col("variable").is_in(["Lactate", "pH"])), planted]).sort(
        "time", maintain_order=True)
    s = model.stream()
    before = -np.inf
    for cut in (0.0, 1.0, 3.0, 6.0, 13.0, 30.0, 48.0):
        s.update(data.filter((pl.col("time") <= cut) & (pl.col("time") > before)))
        before = cut
        want = model.predict(data.filter(pl.col("time") <= cut))
        if want["reason"][0] is None:
            assert s.quality_flags == want["quality_flags"][0], cut
            assert abs(s.risk - want["risk"][0]) <= TOL, cut
    flags = s.quality_flags.split(";")
    assert "all_values_removed:Lactate:out_of_range" in flags and "all_values_removed:pH:out_of_range" in flags
    assert "all_values_removed:Age:static_after_admission" not in flags  # the stay's own time-0 Age is kept
    assert "unknown_variables" in flags


def test_removal_by_several_rules_names_each_and_a_sentinel_is_no_removal(trained):
    """Rules joined by '+', in the order they are checked; a -1 sentinel (the source's own "not measured", as
    PhysioNet's Height -1) does not flag a variable."""
    model, _ = trained
    data = rows(7, [(0.0, "Age", 60.0), (0.0, "Height", -1.0), (1.0, "HR", 80.0), (2.0, "HR", 81.0),
                    (-1.0, "Lactate", 2.0), (1.0, "Lactate", 90.0), (3.0, "Lactate", 95.0)])
    flags = model.predict(data)["quality_flags"][0].split(";")
    assert "all_values_removed:Lactate:negative_time+out_of_range" in flags
    assert not [f for f in flags if "Height" in f]


# -- item 10: a state must carry its valid digest ----------------------------------------------------------------
@pytest.fixture
def state(trained, sample):
    model, _ = trained
    stay = one_stay(sample)
    s = model.stream()
    s.update(stay.filter(pl.col("time") <= 30))
    return model, stay, s, s.state()


def test_a_state_without_its_digest_is_refused(state):
    model, _, _, st = state
    unsigned = {k: v for k, v in st.items() if k != "digest"}
    for bad in (unsigned, {**st, "digest": None}, {**st, "digest": 12}, {**st, "digest": ""}):
        with pytest.raises(DataError, match=r"stream state has no valid digest.*unsigned or edited.*resume from "
                                            r"the file StayStream\.save wrote"):
            model.stream(bad)
    with pytest.raises(DataError, match="unsigned or edited"):
        model.stream(json.dumps(unsigned))


def test_an_edited_carry_or_clock_is_refused_with_or_without_its_digest(state):
    model, _, _, st = state
    carry = [[0.0 if x is None else x + 5.0 for x in c] for c in st["carry"]]
    for key, value in (("carry", carry), ("last_time", st["last_time"] - 1000)):
        edited = {**st, key: value}
        with pytest.raises(DataError, match="does not match its digest: edited or damaged"):
            model.stream(edited)
        with pytest.raises(DataError, match="unsigned or edited"):
            model.stream({k: v for k, v in edited.items() if k != "digest"})


def test_a_good_state_still_resumes_to_the_same_risk(state, tmp_path):
    model, stay, s, st = state
    from clinical_lstm.serve.stream import StayStream

    rest = stay.filter(pl.col("time") > 30)
    for restored in (model.stream(json.loads(json.dumps(st))), StayStream.load(model, s.save(tmp_path / "s.json")),
                     StayStream.load(model, s.save(tmp_path / "s.safetensors"))):
        assert restored.risk == s.risk and restored.state() == st
        assert restored.update(rest) == model.stream(st).update(rest)
        assert abs(restored.risk - model.predict(stay)["risk"][0]) <= TOL
