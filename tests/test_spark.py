"""Spark scoring (local[2]) gives the single-machine risks, one row per stay, whatever the partitioning."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

pytest.importorskip("pyspark")

from clinical_lstm.data.catalogue import Catalogue  # noqa: E402
from clinical_lstm.data.sources import DataError  # noqa: E402
from clinical_lstm.features.impute import GridTransformer  # noqa: E402
from clinical_lstm.model.calibrate import PlattCalibrator  # noqa: E402
from clinical_lstm.model.network import MaskedLSTM, ModelConfig  # noqa: E402
from clinical_lstm.serve.bundle import RiskModel, load_model  # noqa: E402
from clinical_lstm.serve.spark import _MODELS, _score_partition, check_every_stay, score_spark  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

CATALOGUE = """name,unit,lower,upper,aggregation,kind,static,description
Age,years,0,120,last,static,true,
ICUType,category,1,4,last,static,true,
HR,bpm,1,300,mean,vital,false,
Urine,mL,0,5000,sum,vital,false,
"""
ONLY_UNKNOWN, ONLY_STATICS = 9001, 9002


def synthetic_long(n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` stays of 2 statics, 15 HR and 4 Urine rows over 12 h, then one stay with only an unknown
    variable and one with only statics (both rejected as ``no_time_series``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for sid in range(1, n + 1):
        rows += [(sid, 0.0, "Age", float(rng.integers(20, 90))),
                 (sid, 0.0, "ICUType", float(rng.integers(1, 5)))]
        rows += [(sid, float(t), "HR", float(rng.normal(85, 12))) for t in np.sort(rng.uniform(0, 12, 15))]
        rows += [(sid, float(t), "Urine", float(rng.uniform(10, 200)))
                 for t in np.sort(rng.uniform(0, 12, 4))]
    rows += [(ONLY_UNKNOWN, 1.0, "Lactate", 2.0), (ONLY_UNKNOWN, 2.0, "Lactate", 3.0),
             (ONLY_STATICS, 0.0, "Age", 70.0), (ONLY_STATICS, 0.0, "ICUType", 2.0)]
    return pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row")


@pytest.fixture(scope="module")
def spark():
    # The worker must be this interpreter (the one with clinical_lstm); read when the context starts.
    old = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("clinical-lstm-tests")
               .config("spark.ui.enabled", "false").config("spark.driver.host", "127.0.0.1")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")  # stays straddle Arrow batches
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if old is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = old


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    cat = Catalogue.from_csv_text(CATALOGUE)
    fit_on = synthetic_long(30, seed=1)
    tr = GridTransformer(cat, window_hours=12, resolution_hours=1).fit(fit_on, np.arange(1, 31))
    nets = [MaskedLSTM(ModelConfig(hidden_size=8), 2, tr.n_static_features).eval() for _ in range(2)]
    cal = PlattCalibrator().fit(np.linspace(-3, 3, 40), np.tile([0, 1], 20))
    return RiskModel(tr, nets, cal, 0.5, {"note": "spark test"}).save(tmp_path_factory.mktemp("m") / "bundle")


@pytest.fixture(scope="module")
def long():
    return synthetic_long(60)


def assert_same_as_predict(got: pl.DataFrame, expected: pl.DataFrame):
    got, expected = got.sort("stay_id"), expected.sort("stay_id")
    assert got["stay_id"].to_list() == expected["stay_id"].to_list()
    np.testing.assert_allclose(got["risk"].to_numpy(), expected["risk"].to_numpy(), rtol=0, atol=1e-6)
    assert got["flag"].to_list() == expected["flag"].to_list()
    assert got["reason"].to_list() == expected["reason"].to_list()


def collect(out) -> pl.DataFrame:
    return pl.from_arrow(out.toArrow())


@pytest.fixture(scope="module")
def scattered(spark, bundle, long):
    """The input as a Spark frame whose stays are scattered over 7 partitions, and its scored rows.

    Round-robin repartitioning of shuffled rows puts each stay's rows in several partitions; a small
    ``chunk_rows`` makes each task score several chunks, carrying the unfinished stay across chunk and Arrow
    batch boundaries (16 rows a batch in this session)."""
    df = spark.createDataFrame(long.sample(fraction=1.0, shuffle=True, seed=3).to_arrow()).repartition(7)
    return df, collect(score_spark(df, str(bundle), chunk_rows=50))


def test_rows_scattered_over_partitions_give_single_machine_risks(scattered, bundle, long):
    _, got = scattered
    assert_same_as_predict(got, load_model(bundle).predict(long))
    scored = load_model(bundle).predict(long).filter(pl.col("reason").is_null())
    cols = ["stay_id", "n_observations", "quality_flags"]
    assert got.filter(pl.col("reason").is_null()).sort("stay_id").select(cols).rows() == \
        scored.sort("stay_id").select(cols).rows()


def test_stays_without_time_series_come_back_with_their_reason(scattered):
    _, got = scattered
    rejected = got.filter(pl.col("risk").is_null()).sort("stay_id")
    assert rejected.select("stay_id", "reason", "flag", "n_observations", "quality_flags").rows() == [
        (ONLY_UNKNOWN, "no_time_series", None, None, None),
        (ONLY_STATICS, "no_time_series", None, None, None)]


def test_every_stay_in_is_exactly_one_row_out(spark, scattered):
    df, got = scattered
    assert got.height == 62 and got["stay_id"].is_unique().all()
    assert check_every_stay(df, spark.createDataFrame(got.to_arrow())) == {
        "stays_in": 62, "rows_out": 62, "distinct_stays_out": 62}
    with pytest.raises(RuntimeError, match="stay accounting failed"):
        check_every_stay(df, spark.createDataFrame(got.head(61).to_arrow()))


def test_output_schema(spark, bundle, long):
    out = score_spark(spark.createDataFrame(long.to_arrow()), bundle, n_partitions=3, explain=1)
    assert out.schema.simpleString() == (
        "struct<stay_id:bigint,risk:double,flag:boolean,reason:string,n_observations:bigint,"
        "quality_flags:string,top1_variable:string,top1_contribution:double>")


def test_text_columns_are_parsed_as_the_file_readers_do(spark, bundle, long):
    # generic CSV arrives as text: ids, HH:MM and decimal times, an unparseable value
    text = long.with_columns(pl.col("stay_id").cast(pl.String), pl.col("value").cast(pl.String),
                             pl.when(pl.col("stay_id") == 2).then(pl.lit("01:30"))
                             .otherwise(pl.col("time").cast(pl.String)).alias("time"))
    text = text.with_columns(pl.when((pl.col("stay_id") == "3") & (pl.col("variable") == "HR"))
                             .then(pl.lit("n/a")).otherwise(pl.col("value")).alias("value"))
    got = collect(score_spark(spark.createDataFrame(text.to_arrow()), bundle))
    assert_same_as_predict(got, load_model(bundle).predict(text))


def test_stay_ids_are_keyed_as_the_file_readers_key_them(spark, bundle, long):
    # stay 1 written three ways is one stay; beside a text id every id is text, a number as its digits
    few = long.filter(pl.col("stay_id") <= 4).with_columns(pl.col("stay_id").cast(pl.String))
    row = pl.int_range(pl.len())
    spelled = few.with_columns(
        pl.when((pl.col("stay_id") == "1") & (row % 3 == 1)).then(pl.lit("1.0"))
        .when((pl.col("stay_id") == "1") & (row % 3 == 2)).then(pl.lit(" +1 "))
        .when(pl.col("stay_id") == "4").then(pl.lit("P-4")).otherwise(pl.col("stay_id")).alias("stay_id"))
    got = collect(score_spark(spark.createDataFrame(spelled.to_arrow()), bundle))
    assert sorted(got["stay_id"].to_list()) == ["1", "2", "3", "P-4"]
    assert_same_as_predict(got, load_model(bundle).predict(spelled))
    expected = load_model(bundle).predict(few.filter(pl.col("stay_id") == "1"))["risk"][0]
    assert got.filter(pl.col("stay_id") == "1")["risk"][0] == pytest.approx(expected, abs=1e-6)


def test_explain_adds_the_same_top_contributions(spark, bundle, long):
    few = long.filter(pl.col("stay_id") <= 4)
    got = collect(score_spark(spark.createDataFrame(few.to_arrow()), bundle, explain=1)).sort("stay_id")
    scored = load_model(bundle).predict(few, explain=1).filter(pl.col("reason").is_null())
    scored = scored.sort("stay_id")
    assert got["top1_variable"].to_list() == scored["top1_variable"].to_list()
    np.testing.assert_allclose(got["top1_contribution"].to_numpy(), scored["top1_contribution"].to_numpy(),
                               atol=1e-6)


def test_partition_scorer_carries_the_unfinished_stay(bundle, long):
    # the mapInArrow body on its own: sorted 5-row batches, chunks of 30 rows
    name = "carry-test"
    _MODELS[name] = load_model(bundle)
    table = long.sort("stay_id").to_arrow()
    out = pl.from_arrow(pa.Table.from_batches(list(_score_partition(table.to_batches(5), name, 0, 30))))
    assert_same_as_predict(out, load_model(bundle).predict(long))
    with pytest.raises(AssertionError, match="out of stay_id order"):
        list(_score_partition(long.to_arrow().to_batches(5)[::-1], name, 0, 30))
    del _MODELS[name]


def test_a_row_that_names_no_stay_is_refused(spark, bundle, long):
    from pyspark.errors import PythonException

    bad = long.with_columns(pl.col("stay_id").cast(pl.Float64)).with_columns(
        pl.when(pl.col("stay_id") == 5).then(5.5).otherwise(pl.col("stay_id")).alias("stay_id"))
    with pytest.raises(PythonException, match=r"\d+ row\(s\) of one batch have a stay_id that names no stay"):
        score_spark(spark.createDataFrame(bad.to_arrow()), bundle).collect()
    with pytest.raises(DataError, match=r"lacks column\(s\) \['variable'\]"):
        score_spark(spark.createDataFrame(long.rename({"variable": "name"}).to_arrow()), bundle)


def test_registered_model_uri(spark, bundle, long, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from pathlib import Path

    t0 = time.perf_counter()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("spark", artifact_location=(tmp_path / "artifacts").as_uri())
    import clinical_lstm

    code = str(Path(clinical_lstm.__file__).parent / "serve" / "pyfunc_model.py")
    with mlflow.start_run(experiment_id=exp):
        info = mlflow.pyfunc.log_model(name="model", python_model=code, artifacts={"bundle": str(bundle)},
                                       pip_requirements=[])
    version = mlflow.register_model(info.model_uri, "clinical-lstm")
    mlflow.MlflowClient().set_registered_model_alias("clinical-lstm", "champion", version.version)
    got = collect(score_spark(spark.createDataFrame(long.to_arrow()), "models:/clinical-lstm@champion"))
    assert_same_as_predict(got, load_model(bundle).predict(long))
    assert time.perf_counter() - t0 < 60


def test_same_risks_as_the_single_machine_batch_job(scattered, bundle, long, tmp_path):
    """The Spark output and `clinical-lstm score`'s chunked job agree stay by stay, rejects included."""
    from clinical_lstm.serve.batch import score_batch

    _, got = scattered
    src = tmp_path / "long.parquet"
    long.write_parquet(src)
    score_batch(bundle, src, tmp_path / "scores.parquet", chunk_stays=7, log=lambda _: None)
    batch = pl.read_parquet(tmp_path / "scores.parquet").sort("stay_id")
    rejects = pl.read_parquet(tmp_path / "scores.parquet.rejects.parquet").sort("stay_id")
    spark_all = got.sort("stay_id")
    assert spark_all.columns == batch.columns[:len(spark_all.columns)]  # one schema family
    assert spark_all["stay_id"].to_list() == batch["stay_id"].to_list()
    assert spark_all["reason"].to_list() == batch["reason"].to_list()
    assert (spark_all["risk"] - batch["risk"]).abs().max() <= 1e-6
    assert (spark_all["flag"] == batch["flag"]).all()
    assert got.filter(pl.col("reason").is_not_null()).sort("stay_id").select("stay_id", "reason").rows() == \
        rejects.select("stay_id", "reason").rows()
