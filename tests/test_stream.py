"""Streaming: any chunking of a stay's rows ends at ``predict``'s risk; state save/restore; the row rules."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl
import pytest
from helpers import tiny_model

from clinical_lstm.config import ModelConfig
from clinical_lstm.data.load import load
from clinical_lstm.data.sample import bundled_sample
from clinical_lstm.data.sources import DataError, RawData
from clinical_lstm.data.validate import validate
from clinical_lstm.features.impute import GridTransformer
from clinical_lstm.model.network import MaskedLSTM
from clinical_lstm.serve.bundle import RiskModel
from clinical_lstm.serve.stream import StayStream

TOL = 1e-5
N_STAYS = 12


@pytest.fixture(scope="module")
def model() -> RiskModel:
    return tiny_model(seed=1, hidden_size=16)


@pytest.fixture(scope="module")
def ensemble() -> RiskModel:
    m = tiny_model(seed=2, n_networks=2, hidden_size=16)
    assert len(m.networks) == 2
    return m


@pytest.fixture(scope="module")
def long() -> pl.DataFrame:
    return load(bundled_sample()).long


@pytest.fixture(scope="module")
def stays(long) -> dict[int, pl.DataFrame]:
    """A few real sample stays, each in non-decreasing time (file order kept for equal times)."""
    ids = long["stay_id"].unique().sort().to_list()
    picked = ids[:N_STAYS - 2] + ids[-2:]
    return {sid: long.filter(pl.col("stay_id") == sid).sort("time", maintain_order=True) for sid in picked}


def edge_stay(sid: int = 900001) -> pl.DataFrame:
    """Synthetic rows that exercise every row rule, several rows per bin, gaps and the window end."""
    rows = [
        (0.0, "RecordID", sid), (0.0, "Age", 71), (0.0, "Gender", 0), (0.0, "Height", -1),  # sentinel height
        (0.0, "ICUType", 2), (0.0, "Weight", 80.0), (0.0, "Weight", 80.0),  # an exact duplicate
        (0.0, "HR", 88), (0.0, "HR", 92),  # same-time conflict: both kept, both in the bin-0 mean
        (0.1, "Weight", 82.0),  # a series value only (statics are read at time 0)
        (0.25, "HR", 90), (0.5, "HR", 110), (0.5, "Urine", 30), (0.75, "Urine", 45), (0.9, "Temp", 55),  # range
        (0.95, "Age", 72),  # static-only descriptor after admission
        (1.0, "HR", 95), (1.0, "Lactate", 2.5), (1.0, "Lactate", 2.5), (1.0, "Lactate", 3.5),
        (2.5, "Foo", 1.0),  # unknown variable
        (2.6, "HR", float("nan")),  # unparseable value
        (6.1, "GCS", 9), (6.1, "MechVent", 1), (6.3, "pH", 7.31), (6.3, "pH", 7.29),
        (6.99999999, "Urine", 200),
        (13.2, "FiO2", 0.6), (13.2, "HR", 120), (13.2, "HR", 120),
        (30.0, "Creatinine", 1.9), (30.0, "Urine", -5),
        (47.5, "HR", 101), (48.0, "HR", 99), (48.0, "Urine", 10),  # exactly the window end: last bin
        (48.5, "HR", 140),  # past the window
    ]
    return pl.DataFrame({"stay_id": [sid] * len(rows), "time": [float(r[0]) for r in rows],
                         "variable": [r[1] for r in rows], "value": [float(r[2]) for r in rows]})


def late_start_stay(sid: int = 900002) -> pl.DataFrame:
    """Statics at time 0, first series observation only at hour 5 (bins 0-4 are empty LSTM steps)."""
    rows = [(0.0, "Age", 50), (0.0, "Gender", 1), (0.0, "ICUType", 4), (5.5, "HR", 80), (5.7, "SysABP", 120),
            (9.0, "HR", 85), (9.0, "HCT", 30)]
    return pl.DataFrame({"stay_id": [sid] * len(rows), "time": [float(r[0]) for r in rows],
                         "variable": [r[1] for r in rows], "value": [float(r[2]) for r in rows]})


def expected_risk(m: RiskModel, rows) -> float | None:
    return m.predict(rows)["risk"][0]


def chunkings(rows: pl.DataFrame, seed: int = 0, hour: pl.Series | None = None):
    """(name, list of chunks): all at once, one row at a time, hour by hour, random cuts."""
    n = rows.height
    hour = rows["time"].floor() if hour is None else hour
    by_hour = [rows.filter(hour == h) for h in hour.unique(maintain_order=True).to_list()]
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, max(1, n // 5)), replace=False)) if n > 1 else []
    bounds = [0, *cuts.tolist(), n] if len(cuts) else [0, n]
    random_chunks = [rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [("all", [rows]), ("rows", [rows[i:i + 1] for i in range(n)]), ("hours", by_hour),
            ("random", random_chunks)]


def feed(m: RiskModel, chunks, as_pandas: bool = False) -> float | None:
    s = m.stream()
    risk = None
    for c in chunks:
        risk = s.update(c.to_pandas() if as_pandas else c)
    return risk


def assert_close(got, want, what=""):
    if want is None:
        assert got is None, what
    else:
        assert got is not None and abs(got - want) <= TOL, f"{what}: stream {got} vs predict {want}"


# -- equality with predict -------------------------------------------------------------------------------
def test_every_chunking_ends_at_predict_risk(model, stays):
    for sid, rows in stays.items():
        want = expected_risk(model, rows)
        assert want is not None
        for name, chunks in chunkings(rows, seed=sid):
            assert_close(feed(model, chunks), want, f"stay {sid}, chunking {name}")


def test_pandas_input_and_extra_columns(model, stays):
    sid, rows = next(iter(stays.items()))
    rows = rows.with_columns(pl.lit("x").alias("ward"), pl.lit(1.5).alias("other"))
    want = expected_risk(model, rows.drop("ward", "other"))
    for name, chunks in chunkings(rows):
        assert_close(feed(model, chunks, as_pandas=True), want, f"pandas {name}")


def test_ensemble_every_chunking(ensemble, stays):
    for sid, rows in list(stays.items())[:4]:
        want = expected_risk(ensemble, rows)
        for name, chunks in chunkings(rows, seed=sid):
            assert_close(feed(ensemble, chunks), want, f"ensemble stay {sid}, {name}")


def test_row_rules_match_validate(model):
    rows = edge_stay()
    want = expected_risk(model, rows)
    assert want is not None
    for name, chunks in chunkings(rows, seed=3):
        assert_close(feed(model, chunks), want, f"edge stay, {name}")
    s = model.stream()
    s.update(rows)
    _, _, report = validate(RawData(long=rows, stays=rows["stay_id"].unique()), model.catalogue,
                            model.transformer.window_hours)
    dropped = {r["rule"]: 0 for r in report.counts.iter_rows(named=True)}
    for r in report.counts.iter_rows(named=True):
        if r["rule"] != "same_time_conflict":
            dropped[r["rule"]] += r["rows"]
    assert s.dropped == {k: v for k, v in dropped.items() if v}
    assert s.n_steps == model.tensors(*model.clean(rows)[:2]).lengths[0] == 48


def test_hhmm_text_times_and_values(model):
    rows = edge_stay().filter(pl.col("time") <= 48)
    hhmm = [f"{int(t)}:{round((t - int(t)) * 60):02d}" for t in rows["time"].to_list()]
    text = rows.with_columns(pl.Series("time", hhmm), pl.col("value").cast(pl.String))
    want = expected_risk(model, text)
    for name, chunks in chunkings(text, hour=rows["time"].floor()):
        assert_close(feed(model, chunks), want, f"text {name}")
        assert_close(feed(model, chunks, as_pandas=True), want, f"text pandas {name}")


def test_late_first_observation_and_no_series(model):
    rows = late_start_stay()
    s = model.stream()
    assert s.update(rows.filter(pl.col("time") == 0)) is None  # statics only: not scorable yet, like predict
    assert s.risk is None and s.n_steps == 0
    assert_close(s.update(rows.filter(pl.col("time") > 0)), expected_risk(model, rows))
    assert s.n_steps == 10
    statics_only = rows.filter(pl.col("time") == 0)
    assert expected_risk(model, statics_only) is None
    assert feed(model, [statics_only]) is None


def test_conflicting_time0_statics_combine_like_batch(model):
    """Two time-0 Age rows: Age's aggregation is "last", so the larger wins, whichever row comes first."""
    extra = pl.DataFrame({"stay_id": [900002], "time": [0.0], "variable": ["Age"], "value": [80.0]})
    base = late_start_stay()
    for rows in (pl.concat([extra, base]), pl.concat([base, extra]).sort("time", maintain_order=True)):
        s = model.stream()
        s.update(rows)
        assert s.state()["statics"][model.catalogue.statics.index("Age")] == 80.0
        assert_close(s.risk, expected_risk(model, rows))


@pytest.mark.parametrize("variant", ["attention", "two_layers", "no_decay", "median", "zero"])
def test_model_variants(model, stays, variant):
    """Attention pooling (incremental softmax), stacked layers, no decay and other imputations."""
    tr = model.transformer
    if variant in ("median", "zero"):
        tr = GridTransformer.from_dict({**tr.to_dict(), "imputation": variant}, tr.catalogue)
        nets = model.networks
    else:
        cfg = ModelConfig(hidden_size=12, attention=variant == "attention",
                          num_layers=2 if variant == "two_layers" else 1, decay=variant != "no_decay")
        nets = []
        for seed in (1, 2):
            import torch

            torch.manual_seed(seed)
            net = MaskedLSTM(cfg, len(tr.catalogue.series), tr.n_static_features).eval()
            with torch.no_grad():
                for p in net.parameters():
                    p.uniform_(-0.4, 0.4)
            nets.append(net)
    m = RiskModel(tr, nets, model.calibrator, model.threshold)
    for sid, rows in [*list(stays.items())[:3], (900001, edge_stay())]:
        want = expected_risk(m, rows)
        for name, chunks in chunkings(rows, seed=sid):
            assert_close(feed(m, chunks), want, f"{variant} stay {sid}, {name}")


# -- contract ---------------------------------------------------------------------------------------------
def test_empty_update_returns_current_risk(model, stays):
    rows = next(iter(stays.values()))
    s = model.stream()
    assert s.update(None) is None
    assert s.update(rows.head(0)) is None
    assert s.update(pd.DataFrame()) is None
    r = s.update(rows[:20])
    assert r is not None
    assert s.update(None) == r
    assert s.update(rows.head(0)) == r
    assert s.update(rows.head(0).to_pandas()) == r
    assert s.risk == r and s.flag == (r >= model.threshold)


def test_out_of_order_time_raises_and_changes_nothing(model, stays):
    rows = next(iter(stays.values()))
    s = model.stream()
    s.update(rows.filter(pl.col("time") < 10))
    before = s.state()
    late = pl.DataFrame({"time": [12.0, 9.25], "variable": ["HR", "HR"], "value": [80.0, 81.0]})
    with pytest.raises(ValueError, match=r"time 9\.25 h comes after time 12 h"):
        s.update(late)
    with pytest.raises(ValueError, match=r"time 3\.5 h"):
        s.update(pd.DataFrame({"time": [3.5], "variable": ["HR"], "value": [70.0]}))
    assert s.state() == before
    assert_close(s.update(rows.filter(pl.col("time") >= 10)), expected_risk(model, rows))


def test_missing_column_is_a_data_error(model):
    with pytest.raises(DataError, match="value"):
        model.stream().update(pd.DataFrame({"time": [1.0], "variable": ["HR"]}))


def test_a_column_of_a_type_no_reader_expects_is_the_same_one_line_as_predicts(model):
    """A list in a value cell was a polars traceback in the stream; it is the readers' one-line error, and the
    stream is left as it was."""
    s = model.stream()
    s.update(pl.DataFrame({"time": [1.0], "variable": ["HR"], "value": [80.0]}))
    before = s.state()
    for bad in (pl.DataFrame({"time": [2.0], "variable": ["HR"], "value": [[80.0, 81.0]]}),
                pl.DataFrame({"time": [2.0], "variable": ["HR"], "value": [{"a": 1.0}]}),
                pl.DataFrame({"time": [2.0], "variable": [b"HR"], "value": [80.0]})):
        with pytest.raises(DataError, match=r"^stream rows: column '(value|variable)' has type "):
            s.update(bad)
    assert s.state() == before


# -- state ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["dict", "json", "json_file", "safetensors"])
def test_save_restore_continue(ensemble, stays, tmp_path, fmt):
    sid, rows = list(stays.items())[1]
    want = expected_risk(ensemble, rows)
    for cut in (0.0, 1.0, 7.5, 20.0, 47.0):  # restore at many points, mid-bin included
        s = ensemble.stream()
        r1 = s.update(rows.filter(rows["time"] <= cut))
        if fmt == "dict":
            restored = ensemble.stream(json.loads(json.dumps(s.state())))
        elif fmt == "json":
            restored = ensemble.stream(s.to_json())
        elif fmt == "json_file":
            restored = StayStream.load(ensemble, s.save(tmp_path / f"state{cut}.json"))
        else:
            restored = StayStream.load(ensemble, s.save(tmp_path / f"state{cut}.safetensors"))
        assert restored.risk == r1 and restored.state() == s.state()
        rest = rows.filter(rows["time"] > cut)
        rest_hour = rest["time"].floor()
        for h in rest_hour.unique(maintain_order=True).to_list():
            chunk = rest.filter(rest_hour == h)
            assert restored.update(chunk) == s.update(chunk)  # resuming is bit-identical to never stopping
        assert_close(restored.risk, want, f"restored at {cut}")


def test_state_from_another_model_is_refused(model, ensemble, stays):
    s = model.stream()
    s.update(next(iter(stays.values()))[:30])
    with pytest.raises(ValueError, match="different model"):
        ensemble.stream(s.state())


def test_state_is_plain_json(model, stays):
    s = model.stream()
    s.update(edge_stay().filter(pl.col("time") < 7))
    text = json.dumps(s.state(), allow_nan=False)  # strict JSON: no NaN or infinity
    assert json.loads(text)["open"] == 7  # the Urine row at 6.99999999 h is at 7:00:00 to the second: bin 7


def test_a_bad_row_is_counted_and_dropped_and_the_stream_carries_on(model, stays):
    """An out-of-window row (480 h), a negative time and an unparseable value are dropped as in batch; they do
    not move the stream's clock, and the stay still ends at predict's risk."""
    rows = next(iter(stays.values()))
    bad = pl.DataFrame({"stay_id": [rows["stay_id"][0]] * 3, "time": [480.0, -2.0, 5.0],
                        "variable": ["HR", "HR", "HR"], "value": [80.0, 81.0, float("nan")]})
    s = model.stream()
    early, late = rows.filter(pl.col("time") < 6), rows.filter(pl.col("time") >= 6)
    s.update(early)
    s.update(bad)
    assert s.dropped["past_window"] == 1 and s.dropped["negative_time"] == 1 and s.dropped["unparseable_value"] == 1
    assert s.hours == early["time"].max()
    for hour in late["time"].floor().unique(maintain_order=True).to_list():
        s.update(late.filter(pl.col("time").floor() == hour))
    assert_close(s.risk, expected_risk(model, pl.concat([rows, bad])))


def test_save_is_atomic_and_follows_the_umask(model, stays, tmp_path):
    import os

    s = model.stream()
    s.update(next(iter(stays.values()))[:20])
    old = os.umask(0o022)
    try:
        paths = [s.save(tmp_path / "s.json"), s.save(tmp_path / "s.safetensors")]
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]  # no temporary file left
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in paths)


# -- time types and stays: the same rules as validate -------------------------------------------------------
def test_duration_times_score_as_hours_and_timestamps_are_refused_like_predict(model):
    """A polars Duration or pandas timedelta ``time`` is elapsed hours, as in ``validate``; a timestamp is the
    same DataError ``predict`` raises (it was read as microseconds, or counted unparseable_time)."""
    rows = edge_stay()
    want = expected_risk(model, rows)
    dur = rows.with_columns((pl.col("time") * 3_600_000_000).round().cast(pl.Int64).cast(pl.Duration("us")))
    assert expected_risk(model, dur) == want
    for name, chunks in chunkings(dur, seed=5, hour=rows["time"].floor()):
        assert_close(feed(model, chunks), want, f"Duration {name}")
        assert_close(feed(model, chunks, as_pandas=True), want, f"timedelta {name}")
    assert _dropped(model, dur.to_pandas()) == _dropped(model, rows) == _dropped(model, dur)
    stamps = rows.with_columns((pl.datetime(2024, 3, 1) + pl.duration(hours="time")).alias("time"))
    message = r"column 'time' has type Datetime.*a timestamp.*hours since ICU admission"
    with pytest.raises(DataError, match=message):
        model.predict(stamps)
    for frame in (stamps, stamps.to_pandas()):
        with pytest.raises(DataError, match=message):
            model.stream().update(frame)


def _dropped(m: RiskModel, rows) -> dict:
    s = m.stream()
    s.update(rows)
    return s.dropped


def test_rows_of_another_stay_are_refused(model, stays):
    """One stream is one stay: an update mixing stays, or rows of another stay than the one already fed (also
    after a save and restore), raises naming both ids and changes nothing."""
    (a, rows_a), (b, rows_b) = list(stays.items())[:2]
    mixed = pl.concat([rows_a.filter(pl.col("time") < 5), rows_b.filter(pl.col("time") < 5)])
    for frame in (mixed, mixed.to_pandas()):
        with pytest.raises(ValueError, match=rf"more than one stay: stay_id {a} and {b}"):
            model.stream().update(frame)
    s = model.stream()
    s.update(rows_a.filter(pl.col("time") < 10))
    assert s.stay_id == a
    before = s.state()
    with pytest.raises(ValueError, match=rf"this stream scores stay {a}; rows of stay {b} belong to another"):
        s.update(rows_b.filter(pl.col("time") >= 10))
    assert s.state() == before
    restored = model.stream(json.loads(json.dumps(before)))
    with pytest.raises(ValueError, match=rf"scores stay {a}; rows of stay {b}"):
        restored.update(rows_b.filter(pl.col("time") >= 10).to_pandas())
    rest = rows_a.filter(pl.col("time") >= 10).with_columns(pl.col("stay_id").cast(pl.String))  # "123" is 123
    restored.update(rest.head(3).drop("stay_id"))  # rows without ids are the stream's stay's
    assert_close(restored.update(rest.slice(3)), expected_risk(model, rows_a))


def test_an_edited_damaged_or_foreign_state_is_one_clear_error(model, stays, tmp_path):
    """A state carries the SHA-256 of its content: an edit (last_time cleared let earlier rows in, a silent wrong
    risk) or damage is refused; a state that is not one at all is one ValueError naming it, never a bare
    KeyError or numpy error."""
    rows = next(iter(stays.values()))
    s = model.stream()
    s.update(rows.filter(pl.col("time") < 10))
    state = s.state()
    for key, value in (("last_time", None), ("open", 1000), ("rows", [[0], [1.0], [2.0]])):
        with pytest.raises(ValueError, match="does not match its digest: edited or damaged"):
            model.stream({**state, key: value})
    path = s.save(tmp_path / "state.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match=r"state\.json is not JSON \(truncated or damaged\)"):
        StayStream.load(model, path)
    with pytest.raises(ValueError, match="is a list, not what StayStream.state"):
        model.stream([1, 2])
    unsigned = {k: v for k, v in state.items() if k != "digest"}  # edited, then its digest deleted
    for bad in (unsigned, {**unsigned, "last_time": -1000.0}):
        with pytest.raises(DataError, match="has no valid digest: it is unsigned or edited"):
            model.stream(bad)
    with pytest.raises(ValueError, match="is not one StayStream.state"):
        model.stream(_signed({**unsigned, "open": -3, "carry": []}))


def _signed(state: dict) -> dict:
    """A state re-signed after an edit: what only a deliberate forger does; its content is still checked."""
    from clinical_lstm.serve.stream_rows import _state_digest

    return {**state, "digest": _state_digest(state)}


def test_a_changed_threshold_gives_the_stream_the_models_new_digest(stays):
    from helpers import tiny_model

    m = tiny_model(seed=3)
    rows = next(iter(stays.values()))
    before = m.stream()
    before.update(rows.filter(pl.col("time") < 5))
    m.threshold = 0.01  # the model's digest covers its threshold
    after = m.stream()
    assert after.state()["model"] == m.digest() != before.state()["model"]
    with pytest.raises(ValueError, match="different model"):
        m.stream(before.state())


def test_a_saved_state_keeps_its_file_format_key(model, stays, tmp_path):
    """A state file's safetensors metadata key is part of the format (files saved before the modules moved into
    subpackages carry ``clinical_lstm.stream``): the key is that literal, not the module's path."""
    from safetensors import safe_open

    from clinical_lstm.serve.stream import STATE_KEY

    assert STATE_KEY == "clinical_lstm.stream"
    s = model.stream()
    s.update(next(iter(stays.values())))
    path = s.save(tmp_path / "state.safetensors")
    with safe_open(str(path), "np") as f:
        assert set(f.metadata()) == {"clinical_lstm.stream"}
    assert StayStream.load(model, path).risk == s.risk


# -- the fast paths, each against the plain one -------------------------------------------------------------
def test_reusing_the_open_bins_step_is_bit_identical_to_running_it_again(ensemble, stays):
    """A bin that closes with the rows the previous update stepped is committed from that step (``_ahead``); a
    stream that never reuses it (``_ahead`` dropped before every update), and one resumed from a saved state
    midway, give bit for bit the same risks and states at every update, in every chunking (row by row: a bin
    that grew after its step is stepped again)."""
    reused = 0
    for sid, rows in [*list(stays.items())[:4], (1, edge_stay()), (2, late_start_stay())]:
        for name, chunks in chunkings(rows, seed=sid):
            fast, plain = ensemble.stream(), ensemble.stream()
            resumed = None
            for i, chunk in enumerate(chunks):
                reused += fast._ahead is not None and fast._ahead.bin < int(chunk["time"].max())
                plain._ahead = None  # the plain path: every closing bin aggregated, imputed and stepped again
                got = [s.update(chunk) for s in (fast, plain, *([resumed] if resumed else []))]
                assert all(r == got[0] for r in got), f"stay {sid}, {name}, update {i}: {got}"
                assert fast.state() == plain.state()
                assert resumed is None or resumed.state() == fast.state()
                if i == len(chunks) // 2:
                    resumed = ensemble.stream(fast.to_json())
    assert reused > 50  # the fast path was taken


def test_the_one_row_per_variable_bin_is_aggregated_as_by_the_rules(model, stays):
    """:meth:`StayStream._open_rows`' shortcut for a bin where no variable has two rows equals the batch rules'
    aggregation (``_aggregate_open``) bit for bit; bins with duplicates and same-time conflicts take the rules."""
    shortcut = 0
    for rows in [*stays.values(), edge_stay(), late_start_stay()]:
        s = model.stream()
        for i in range(rows.height):  # row by row: every prefix of every bin
            s.update(rows[i:i + 1])
            fast, ruled = s._open_rows(), s._aggregate_open()
            shortcut += s._statics is not None and len(set(s._code.tolist())) == len(s._code) > 0
            for a, b in zip(fast, ruled, strict=True):
                assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)
                assert a is None or a.dtype == b.dtype
    assert shortcut > 100


@pytest.mark.parametrize("stay_dtype", ["int64", "int32", "uint32", "uint64", "float64", None])
def test_a_pandas_frame_of_plain_numbers_reads_as_the_general_path(monkeypatch, stay_dtype):
    """``_pandas_numbers`` (a pandas frame's own arrays) gives what the general pandas reading gives."""
    from clinical_lstm.serve import stream_rows

    frame = pd.DataFrame({"time": [0.0, 0.5, 1.25], "variable": ["HR", " HR", "Foo"], "value": [80, 81, 2]})
    if stay_dtype:
        frame.insert(0, "stay_id", np.array([17, 17, 17], stay_dtype))
    for f in (frame, frame.astype({"time": "int64"}), frame.assign(variable=frame["variable"].astype(object))):
        fast = stream_rows._columns(f)
        with monkeypatch.context() as m:
            m.setattr(stream_rows, "_pandas_numbers", lambda rows: None)
            plain = stream_rows._columns(f)
        assert np.array_equal(fast[0], plain[0]) and fast[0].dtype == plain[0].dtype == np.float64
        assert fast[1] == plain[1] and np.array_equal(fast[2], plain[2]) and fast[2].dtype == plain[2].dtype
        assert (fast[3] is None) == (plain[3] is None)
        if fast[3] is not None:
            assert np.array_equal(np.asarray(fast[3]), plain[3].to_numpy())
            got, want = stream_rows._one_stay(fast[3]), stream_rows._one_stay(plain[3])
            assert got == want and type(got) is type(want)
    twice = pd.concat([frame, frame[["time"]]], axis=1)  # a repeated column name: the general path
    assert stream_rows._pandas_numbers(twice) is None
    assert stream_rows._pandas_numbers(frame.drop(columns="value")) is None
    with pytest.raises(DataError, match=r"lack column\(s\) \['value'\]"):
        stream_rows._columns(frame.drop(columns="value"))


def test_integer_ids_of_two_stays_in_one_pandas_update_are_refused():
    from clinical_lstm.serve.stream_rows import _one_stay

    with pytest.raises(ValueError, match="more than one stay: stay_id 17 and 18"):
        _one_stay(np.array([17, 18, 17]))
    assert _one_stay(np.array([2**40] * 2, np.int64)) == 2**40
