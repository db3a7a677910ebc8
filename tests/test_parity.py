"""One risk per stay, whatever the path: predict = batch = stream = ONNX = MLflow pyfunc = Spark.

An untrained two-network model with summary members (the default model's shape; no training: fast) scores a cohort with same-time conflicts, exact duplicates,
a second time-0 Age and shuffled rows. Every path must give every stay the risk ``predict`` gives it (1e-5),
and every path must report the same stays, rejected ones included.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from helpers import random_long, tiny_model, with_conflicts

from clinical_lstm.serve.bundle import SCORES

TOL = 1e-5
pytestmark = [pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")]


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=3, n_networks=2, head=True)
    assert m.head.trees_feature.shape[0] > 1  # the boosted trees are really there
    return m


@pytest.fixture(scope="module")
def cohort() -> pl.DataFrame:
    long = with_conflicts(random_long(16, seed=5), seed=1)
    statics_only = pl.DataFrame([(99, 0.0, "Age", 50.0)], schema=long.schema, orient="row")  # rejected
    return pl.concat([long, statics_only])


@pytest.fixture(scope="module")
def reference(model, cohort) -> pl.DataFrame:
    ref = model.predict(cohort)
    assert list(ref.schema.items())[:len(SCORES)] == list(SCORES.items())
    assert ref.filter(pl.col("reason").is_not_null())["stay_id"].to_list() == [99]
    assert ref["risk"].drop_nulls().n_unique() > 10  # the risks differ: equality below means something
    return ref


def assert_same(got: pl.DataFrame, want: pl.DataFrame, what: str):
    got, want = got.sort("stay_id"), want.sort("stay_id")
    assert got["stay_id"].to_list() == want["stay_id"].to_list(), what
    assert got["reason"].to_list() == want["reason"].to_list(), what
    g, w = got["risk"].to_numpy().astype(float), want["risk"].to_numpy().astype(float)
    np.testing.assert_allclose(g, w, atol=TOL, rtol=0, err_msg=what)


def test_row_order_and_pandas_input(model, cohort, reference):
    assert_same(model.predict(cohort.reverse()), reference, "reversed rows")
    out = model.predict(cohort.to_pandas())
    assert type(out).__module__.startswith("pandas")
    assert_same(pl.from_pandas(out), reference, "pandas")


def test_stream_hour_by_hour(model, cohort, reference):
    risks = []
    for sid in reference["stay_id"].to_list():
        rows = cohort.filter(pl.col("stay_id") == sid).sort("time", maintain_order=True)  # shuffled within a time
        s = model.stream()
        for hour in rows["time"].floor().unique(maintain_order=True).to_list():
            s.update(rows.filter(pl.col("time").floor() == hour))
        risks.append(s.risk)
    got = pl.DataFrame({"stay_id": reference["stay_id"], "risk": risks, "reason": reference["reason"]},
                       schema_overrides={"risk": pl.Float64})
    assert_same(got, reference, "stream")


def test_batch_job(model, cohort, reference, tmp_path):
    from clinical_lstm.serve.batch import score_batch

    bundle = model.save(tmp_path / "model")
    cohort.write_parquet(tmp_path / "cohort.parquet")
    summary = score_batch(bundle, tmp_path / "cohort.parquet", tmp_path / "scores.parquet", chunk_stays=5,
                          log=lambda _: None)
    out = pl.read_parquet(tmp_path / "scores.parquet")
    assert list(out.schema.items())[:len(SCORES)] == list(SCORES.items())
    assert_same(out, reference, "batch")
    assert (summary["scored"], summary["rejected"]) == (16, 1)


def test_onnx_runtime(model, cohort, reference, tmp_path):
    pytest.importorskip("onnxruntime")
    from clinical_lstm.serve.export import ExportedModel, export_onnx

    path = export_onnx(model, tmp_path / "model.onnx")
    assert_same(ExportedModel(path).predict(cohort), reference, "onnx")


def test_mlflow_pyfunc(model, cohort, reference, tmp_path):
    import mlflow.pyfunc
    from helpers import save_pyfunc

    bundle = model.save(tmp_path / "model")
    save_pyfunc(bundle, tmp_path / "pyfunc")
    out = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc")).predict(cohort.to_pandas())
    assert_same(pl.from_pandas(out), reference, "pyfunc")


def test_spark_udf_path(model, cohort, reference, tmp_path):
    pytest.importorskip("pyspark")
    import os
    import sys

    from pyspark.sql import SparkSession

    from clinical_lstm.serve.spark import score_spark

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (SparkSession.builder.master("local[2]").appName("clinical-lstm-parity")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
             .config("spark.sql.shuffle.partitions", "3").getOrCreate())
    try:
        df = spark.createDataFrame(cohort.to_pandas())
        got = pl.from_pandas(score_spark(df, model.save(tmp_path / "model")).toPandas())
    finally:
        spark.stop()
    assert_same(got, reference, "spark")


# -- any stay id: text ids (UUIDs, zero-padded numbers) come back exactly as given, with the same risks ----------
def _text_ids(cohort: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    import uuid

    ids = cohort["stay_id"].unique().sort().to_list()
    names = {sid: (f"{sid:05d}" if sid % 3 == 0 else str(uuid.UUID(int=sid * 7919 + 1))) for sid in ids}
    return cohort.with_columns(pl.col("stay_id").replace_strict(names, return_dtype=pl.String)), names


def _by_text(reference: pl.DataFrame, names: dict) -> pl.DataFrame:
    return reference.with_columns(pl.col("stay_id").replace_strict(names, return_dtype=pl.String))


def test_text_ids_through_predict_batch_and_pyfunc(model, cohort, reference, tmp_path):
    import mlflow.pyfunc
    from helpers import save_pyfunc

    from clinical_lstm.serve.batch import score_batch

    text, names = _text_ids(cohort)
    want = _by_text(reference, names)
    got = model.predict(text)
    assert got.schema["stay_id"] == pl.String and sorted(got["stay_id"].to_list()) == sorted(names.values())
    assert_same(got, want, "predict, text ids")
    bundle = model.save(tmp_path / "model")
    for suffix in ("parquet", "csv"):
        src = tmp_path / f"text.{suffix}"
        text.write_parquet(src) if suffix == "parquet" else text.write_csv(src)
        score_batch(bundle, src, tmp_path / f"s-{suffix}.parquet", chunk_stays=4, log=lambda _: None)
        out = pl.read_parquet(tmp_path / f"s-{suffix}.parquet")
        assert out.schema["stay_id"] == pl.String
        assert_same(out, want, f"batch, text ids from {suffix}")
    save_pyfunc(bundle, tmp_path / "pyfunc")
    out = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc")).predict(text.to_pandas())
    assert_same(pl.from_pandas(out), want, "pyfunc, text ids")


def test_text_ids_on_spark(model, cohort, reference, tmp_path):
    pytest.importorskip("pyspark")
    import os
    import sys

    from pyspark.sql import SparkSession

    from clinical_lstm.serve.spark import score_spark

    text, names = _text_ids(cohort)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (SparkSession.builder.master("local[2]").appName("clinical-lstm-text-ids")
             .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
             .config("spark.sql.shuffle.partitions", "3").getOrCreate())
    try:
        got = pl.from_pandas(score_spark(spark.createDataFrame(text.to_pandas()), model.save(tmp_path / "m")).toPandas())
    finally:
        spark.stop()
    assert_same(got, _by_text(reference, names), "spark, text ids")
