"""Bundle save -> load in a fresh process -> identical predictions; no pickle anywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.sources import DataError
from clinical_lstm.features.impute import GridTransformer
from clinical_lstm.model.calibrate import PlattCalibrator
from clinical_lstm.model.network import MaskedLSTM, ModelConfig
from clinical_lstm.serve.bundle import RiskModel, load_model

CATALOGUE = """name,unit,lower,upper,aggregation,kind,static,description
Age,years,0,120,last,static,true,
ICUType,category,1,4,last,static,true,
HR,bpm,1,300,mean,vital,false,
Urine,mL,0,5000,sum,vital,false,
"""


def synthetic_long(n=30, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for sid in range(1, n + 1):
        rows += [(sid, 0.0, "Age", float(rng.integers(20, 90))), (sid, 0.0, "ICUType", float(rng.integers(1, 5)))]
        for t in np.sort(rng.uniform(0, 12, 15)):
            rows.append((sid, float(t), "HR", float(rng.normal(85, 12))))
        for t in np.sort(rng.uniform(0, 12, 4)):
            rows.append((sid, float(t), "Urine", float(rng.uniform(10, 200))))
    return pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row")


@pytest.fixture
def model():
    cat = Catalogue.from_csv_text(CATALOGUE)
    long = synthetic_long()
    tr = GridTransformer(cat, window_hours=12, resolution_hours=1).fit(long, np.arange(1, 31))
    nets = [MaskedLSTM(ModelConfig(hidden_size=8, attention=att), 2, tr.n_static_features).eval()
            for att in (False, False)]
    cal = PlattCalibrator().fit(np.linspace(-3, 3, 40), np.tile([0, 1], 20))
    return RiskModel(tr, nets, cal, 0.3, {"note": "test"}), long


def test_round_trip_in_fresh_process_gives_identical_predictions(model, tmp_path):
    m, long = model
    expected = m.predict(long)
    m.save(tmp_path / "bundle")
    long.write_parquet(tmp_path / "long.parquet")
    code = (f"import polars as pl; from clinical_lstm import load_model; "
            f"m = load_model({str(tmp_path / 'bundle')!r}); "
            f"m.predict(pl.read_parquet({str(tmp_path / 'long.parquet')!r})).write_parquet({str(tmp_path / 'p.parquet')!r})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    got = pl.read_parquet(tmp_path / "p.parquet")
    assert got["stay_id"].to_list() == expected["stay_id"].to_list()
    np.testing.assert_array_equal(got["risk"].to_numpy(), expected["risk"].to_numpy())
    assert got["flag"].to_list() == expected["flag"].to_list()


def test_bundle_holds_no_pickle(model, tmp_path):
    m, _ = model
    m.save(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["bundle.json", "catalogue.csv", "transformer.json", "weights.safetensors"]
    for p in (tmp_path / "b").iterdir():
        assert not p.read_bytes().startswith(b"\x80"), f"{p.name} looks like a pickle"
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["n_networks"] == 2 and meta["threshold"] == 0.3 and meta["note"] == "test"


def test_predict_returns_pandas_for_pandas_and_keeps_every_stay(model):
    m, long = model
    extra = pl.DataFrame({"stay_id": [99], "time": [0.0], "variable": ["Age"], "value": [50.0]})
    out = m.predict(pl.concat([long, extra]).to_pandas())
    assert type(out).__name__ == "DataFrame" and hasattr(out, "iloc")
    assert len(out) == 31
    row = out[out.stay_id == 99].iloc[0]
    assert row["reason"] == "no_time_series" and np.isnan(row["risk"])


def test_save_over_existing_bundle_replaces_it(model, tmp_path):
    m, _ = model
    m.save(tmp_path / "b")
    (tmp_path / "b" / "stale.txt").write_text("old")
    m.save(tmp_path / "b")
    assert not (tmp_path / "b" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_tampered_catalogue_is_refused(model, tmp_path):
    m, _ = model
    m.save(tmp_path / "b")
    path = tmp_path / "b" / "catalogue.csv"
    path.write_text(path.read_text().replace("300", "301"))
    with pytest.raises(DataError, match="catalogue.csv does not match its SHA-256 in bundle.json"):
        load_model(tmp_path / "b")


def test_not_a_bundle(tmp_path):
    with pytest.raises(DataError, match="is not a clinical-lstm model bundle"):
        load_model(tmp_path)


def test_wrong_columns_in_dataframe(model):
    m, long = model
    with pytest.raises(DataError, match=r"lacks column\(s\) \['variable'\]"):
        m.predict(long.rename({"variable": "name"}))


def test_trajectory_ends_at_stay_risk(model):
    m, long = model
    traj = m.trajectory(long)
    last = traj.group_by("stay_id").agg(pl.col("risk").last(), pl.col("hour").max()).sort("stay_id")
    pred = m.predict(long).sort("stay_id")
    # no attention: the stay's risk is the step risk at its last valid bin
    np.testing.assert_allclose(last["risk"].to_numpy(), pred["risk"].to_numpy(), rtol=1e-6)
    assert last["hour"].max() <= 12


def test_public_api_names_resolve():
    import clinical_lstm

    for name in clinical_lstm.__all__:
        assert getattr(clinical_lstm, name) is not None, name


# -- integrity: a damaged, truncated or edited bundle never scores --------------------------------------------
def _flip(path, offset: int, n: int = 64):
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_meta(path, **changes):
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))  # json writes NaN for a nan threshold, as a hand edit might


@pytest.mark.parametrize("damage, message", [
    (lambda b: _flip(b / "weights.safetensors", len((b / "weights.safetensors").read_bytes()) // 2),
     "weights.safetensors does not match its SHA-256"),
    (lambda b: (b / "weights.safetensors").write_bytes((b / "weights.safetensors").read_bytes()[:1000]),
     "weights.safetensors does not match its SHA-256"),
    (lambda b: (b / "weights.safetensors").write_bytes(b""), "weights.safetensors does not match its SHA-256"),
    (lambda b: (b / "weights.safetensors").unlink(), "lacks weights.safetensors"),
    (lambda b: _edit_meta(b / "bundle.json", threshold=float("nan")), "bundle.json was edited"),
    (lambda b: _edit_meta(b / "bundle.json", threshold=0.9), "bundle.json was edited"),
    (lambda b: _edit_meta(b / "bundle.json", n_networks=3), "bundle.json was edited"),
    (lambda b: _edit_meta(b / "bundle.json", n_series=5), "bundle.json was edited"),
    # what the package later trusts, not only what scores: the in-sample check's digest, the stored metrics
    (lambda b: _edit_meta(b / "bundle.json", training_data={"digest": "0" * 64}), "bundle.json was edited"),
    (lambda b: _edit_meta(b / "bundle.json", metrics={"auroc": 0.99}), "bundle.json was edited"),
    (lambda b: _edit_meta(b / "bundle.json", bundle_digest=None), "carries no digest of its own"),
    (lambda b: _edit_meta(b / "bundle.json", model_config={"hidden_size": 9}), "edited"),
    (lambda b: (b / "bundle.json").write_text("{not json"), "damaged or was edited"),
    (lambda b: _edit_meta(b / "bundle.json", calibrator={"kind": "platt", "a": 1.0, "b": 0.0}),
     "bundle.json was edited"),
])
def test_damaged_or_edited_bundle_is_one_error(model, tmp_path, damage, message):
    m, long = model
    m.save(tmp_path / "b")
    damage(tmp_path / "b")
    with pytest.raises(DataError, match=message):
        load_model(tmp_path / "b")


def test_damaged_bundle_from_the_command_line_is_exit_2_and_writes_nothing(model, tmp_path):
    m, long = model
    m.save(tmp_path / "b")
    _flip(tmp_path / "b" / "weights.safetensors", 300)
    long.write_parquet(tmp_path / "long.parquet")
    out = tmp_path / "out" / "s.parquet"
    res = subprocess.run([sys.executable, "-m", "clinical_lstm.cli", "score", "--model", str(tmp_path / "b"),
                          "--data", str(tmp_path / "long.parquet"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "SHA-256" in res.stderr and "Traceback" not in res.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_bundle_files_follow_the_umask(model, tmp_path):
    import os

    m, _ = model
    old = os.umask(0o022)
    try:
        m.save(tmp_path / "b")
    finally:
        os.umask(old)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "b").iterdir()} == dict.fromkeys(
        ["bundle.json", "catalogue.csv", "transformer.json", "weights.safetensors"], 0o644)


def test_pandas_object_columns_mixing_kinds_are_read_as_text_like_a_csv(model):
    """A pandas frame whose value column mixes numbers and "n/a" and whose time column mixes hours and "HH:MM"
    (object columns) is read as a CSV's text would be, not refused as "not a long table"."""
    m, long = model
    text = long.with_columns(pl.col("time").cast(pl.String), pl.col("value").cast(pl.String))
    text = text.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("n/a")).otherwise("value").alias("value"),
                             pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("01:30")).otherwise("time").alias("time"))
    frame = text.to_pandas()
    frame["value"] = [v if v == "n/a" else float(v) for v in frame["value"]]  # numbers and text in one column
    frame["time"] = [t if ":" in t else float(t) for t in frame["time"]]
    assert frame["value"].dtype == object and frame["time"].dtype == object
    got, want = m.predict(frame), m.predict(text)
    np.testing.assert_allclose(got["risk"].to_numpy(), want["risk"].to_numpy(), rtol=0, atol=1e-7)
    assert got["stay_id"].tolist() == want["stay_id"].to_list()


def test_a_dict_of_columns_is_a_long_table_as_for_the_stream(model):
    m, long = model
    got = m.predict(long.to_dict(as_series=False))
    assert got.equals(m.predict(long))
    with pytest.raises(DataError, match="must map"):
        m.predict({"stay_id": [1, 2], "time": [0.0]})


def test_reference_rows_travel_with_the_bundle_and_an_edit_is_refused(tmp_path):
    """The report's reference rows (the networks alone, the summaries-only stack) are saved with the model, so that
    `evaluate` shows them at every hour; bundle.json's copy is covered by the model digest."""
    from helpers import tiny_model

    model = tiny_model(seed=2, head=True)
    model.references = {"lstm_calibrator": {"kind": "platt", "a": 0.9, "b": -0.1},
                        "summaries_weights": [[0.5, 0.4, 0.1, 0.2], [0.3, 0.3, 0.2, 0.4]],
                        "summaries_bias": [-1.0, -0.5], "summaries_calibrator": {"kind": "platt", "a": 1.0, "b": 0.0}}
    model.save(tmp_path / "m")
    again = RiskModel.load(tmp_path / "m")
    assert again.references == model.references and again.digest() == model.digest()
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    meta["references"]["lstm_calibrator"]["b"] = 2.0
    (tmp_path / "m" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="edited"):
        RiskModel.load(tmp_path / "m")
