"""Score a Spark DataFrame with the same model bundle, stay by stay, and get the single-machine risks.

:func:`score_spark` turns a long Spark DataFrame (``stay_id, time, variable, value``) into one row per stay:
``stay_id, risk, flag, reason, n_observations, quality_flags`` (risk null and a reason for a rejected
stay), the same numbers :meth:`clinical_lstm.serve.bundle.RiskModel.predict` gives on one machine.

How the work is cut
-------------------
A stay's risk depends on all of its rows and on nothing else, so every stay's rows must reach one Python
call together. The rows are hash-partitioned by ``stay_id`` and sorted by it inside each partition; a
``mapInArrow`` function then reads the partition in Arrow batches, scores every stay that is complete
(``RiskModel.score`` on many stays at once) and carries the rows of the last, possibly unfinished, stay into
the next batch. Memory per task is bounded by ``chunk_rows``, whatever the partition size, and there is no
per-stay Python call. ``groupBy("stay_id").applyInPandas`` is also correct but makes one Python call per stay;
grouping by a hash bucket loads a whole bucket into memory at once. docs/spark.md has the measurements.

Arrow rather than pandas: the rows go from Spark's Arrow batches straight into polars, with no pandas
conversion in between (PySpark warns that it does not yet fully support pandas 3).

The model on the executors
--------------------------
The model argument (a bundle directory, an MLflow ``models:/`` or ``runs:/`` URI, or a :class:`RiskModel`)
is resolved on the driver to a bundle directory, copied to a content-addressed staging folder and shipped
with ``SparkContext.addFile(recursive=True)``; each Python worker loads it once from ``SparkFiles.get`` and
keeps it in :data:`_MODELS`. Nothing is pickled: the bundle files are the ones ``RiskModel.save`` wrote.
Workers run torch on one thread, because Spark already runs one task per core.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import polars as pl

from ..checks import DataError, MissingDependency
from .bundle import SCORES, RiskModel

_MODELS: dict[str, RiskModel] = {}  # per Python worker: staged bundle name -> model, loaded once
_STAGE_ROOT = Path(tempfile.gettempdir()) / "clinical-lstm-spark"


def _require_pyspark():
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("scoring on Spark needs pyspark; install it with "
                          "`pip install 'clinical-lstm[spark]'` (or `pip install pyspark`)") from exc


def _types(explain: int, id_dtype=pl.Int64) -> dict:
    """Output column -> polars type; the single source of the Spark and Arrow schemas."""
    tops = {c: t for k in range(1, explain + 1)
            for c, t in ((f"top{k}_variable", pl.String), (f"top{k}_contribution", pl.Float64))}
    return {**SCORES, "stay_id": id_dtype, **tops}


def output_schema(explain: int = 0, id_dtype=pl.Int64) -> str:
    """The DDL schema of :func:`score_spark`'s output, with ``top<k>_variable, top<k>_contribution`` for
    ``k = 1..explain``; ``stay_id`` is ``long`` for integer ids, ``string`` for text ids."""
    ddl = {pl.Int64: "long", pl.Float64: "double", pl.Boolean: "boolean", pl.String: "string"}
    return ", ".join(f"{c} {ddl[t]}" for c, t in _types(explain, id_dtype).items())


def stage_bundle(model) -> Path:
    """Resolve ``model`` on the driver to a local bundle directory named by its content digest.

    ``model`` is a bundle directory, an MLflow URI (downloaded with
    :func:`clinical_lstm.tracking.downloads.download_bundle`) or a :class:`RiskModel` (saved). The staged copy lives
    under ``<tmp>/clinical-lstm-spark/clinical-lstm-<digest>``: the same bundle always gets the same path, so
    scoring twice in one Spark session ships it once, and two different bundles never share a name.
    """
    from ..tracking.downloads import download_bundle, is_model_uri

    temp = Path(tempfile.mkdtemp(prefix="clinical-lstm-resolve-"))
    try:
        if isinstance(model, RiskModel):
            source = model.save(temp / "bundle")
        elif is_model_uri(str(model)):
            source, _ = download_bundle(str(model), temp)
        else:
            source = Path(model)
            RiskModel.load(source)  # fail here, with the bundle's own message, not in an executor
        digest = hashlib.sha256()
        for f in sorted(p for p in source.rglob("*") if p.is_file()):
            digest.update(f.relative_to(source).as_posix().encode() + b"\0" + f.read_bytes())
        staged = _STAGE_ROOT / f"clinical-lstm-{digest.hexdigest()[:16]}"
        if not staged.is_dir():
            _STAGE_ROOT.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=_STAGE_ROOT, prefix=".staging-"))
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            try:
                os.replace(tmp, staged)
            except OSError:  # another driver staged the same bundle first: same content, keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        return staged
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _worker_model(name: str) -> RiskModel:
    """The shipped bundle ``name``, loaded once per Python worker process."""
    model = _MODELS.get(name)
    if model is None:
        import torch
        from pyspark import SparkFiles

        torch.set_num_threads(1)  # one task per core already; more threads would oversubscribe the executor
        model = _MODELS[name] = RiskModel.load(SparkFiles.get(name))
    return model


def score_frame(model: RiskModel, long: pl.DataFrame, explain: int = 0, id_dtype=pl.Int64) -> pl.DataFrame:
    """Score whole stays of a polars long frame: one row per stay in :func:`output_schema` order."""
    out = model.score_table(long, explain)[0].cast(_types(explain, id_dtype))
    n_in = long["stay_id"].n_unique()
    if out.height != n_in or out["stay_id"].n_unique() != n_in:  # internal invariant
        raise AssertionError(f"stay accounting broken: {n_in} stays in, {out.height} rows out")
    return out


def _score_partition(batches, name: str, explain: int, chunk_rows: int, id_dtype=pl.Int64):
    """mapInArrow body: Arrow batches of one partition, sorted by stay_id -> Arrow batches of scored stays.

    Rows are gathered until ``chunk_rows`` are pending; every stay before the last one is then complete
    (the partition is sorted) and is scored; the last stay's rows wait for the next batch.
    """
    import pyarrow as pa

    arrow = {pl.Int64: pa.int64(), pl.Float64: pa.float64(), pl.Boolean: pa.bool_(), pl.String: pa.string()}
    schema = pa.schema([(c, arrow[t]) for c, t in _types(explain, id_dtype).items()])
    pending: list[pl.DataFrame] = []
    n_pending = 0
    last_id = None

    def emit(frame: pl.DataFrame):
        yield from score_frame(_worker_model(name), frame, explain, id_dtype).to_arrow().cast(schema).to_batches()

    for batch in batches:
        frame = pl.from_arrow(batch)
        if frame.height == 0:
            continue
        ids = frame["stay_id"]
        if ids.null_count():
            raise DataError(f"{ids.null_count()} row(s) of one batch have a stay_id that names no stay (null, "
                            f"empty, or a fractional number); every row needs its stay's id")
        if not ids.is_sorted() or (last_id is not None and ids[0] < last_id):  # internal invariant
            raise AssertionError("rows reached the scorer out of stay_id order: a stay could be split")
        last_id = ids[-1]
        pending.append(frame)
        n_pending += frame.height
        if n_pending >= chunk_rows:
            data = pl.concat(pending)
            done = data.filter(pl.col("stay_id") != last_id)
            pending = [data.filter(pl.col("stay_id") == last_id)]
            n_pending = pending[0].height
            if done.height:
                yield from emit(done)
    if pending:
        yield from emit(pl.concat(pending))


def _long_columns(df):
    """Select and type the long columns as the single-machine readers do; returns ``(frame, id kind)``.

    ``stay_id``: integers as long, whole floats as long (any other float names no stay: null, reported by the
    scorer), text keyed as :func:`clinical_lstm.data.sources.stay_id_key` keys it and kept as text unless every id
    spells an integer (one Spark aggregation decides,
    as :func:`clinical_lstm.data.sources.id_dtype` does on one machine). Numeric ``time``/``value`` -> double, text
    kept as text so that validation parses it (``HH:MM`` times, unparseable values counted by rule)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import FractionalType, IntegralType, NumericType, StringType

    from ..data.ids import CANONICAL_INT, INTEGRAL_TEXT, NON_FINITE_TEXT, NUMBER_TEXT

    missing = [c for c in ("stay_id", "time", "variable", "value") if c not in df.columns]
    if missing:
        raise DataError(f"the Spark DataFrame lacks column(s) {missing}; expected stay_id, time, variable, "
                        f"value, found {df.columns}")
    types = {f.name: f.dataType for f in df.schema.fields}

    def as_number_or_text(c):
        if isinstance(types[c], NumericType):
            return F.col(c).cast("double").alias(c)
        if isinstance(types[c], StringType):
            return F.col(c)
        raise DataError(f"column {c!r} is {types[c].simpleString()}; expected a number (hours / value) "
                        f"or text")

    sid, kind = F.col("stay_id"), pl.Int64
    if isinstance(types["stay_id"], IntegralType):
        key = sid.cast("bigint")
    elif isinstance(types["stay_id"], FractionalType):
        key = F.when(~F.isnan(sid) & (sid == F.round(sid)), sid.cast("bigint"))
    else:
        # clinical_lstm.data.sources.stay_id_key's rule for text, in Spark SQL: a number's text is its integer digits
        # ("12.0", "+12" -> "12"), a fractional or non-finite one names no stay (null), other text is kept
        text = F.trim(sid.cast("string"))
        digits = F.regexp_replace(F.regexp_extract(text, r"^[+-]?([0-9]*)", 1), "^0+", "")
        digits = F.when(digits == "", F.lit("0")).otherwise(digits)
        integral = F.when(text.startswith("-") & (digits != "0"), F.concat(F.lit("-"), digits)).otherwise(digits)
        key = (F.when(text.rlike(INTEGRAL_TEXT), integral)
               .when((F.length(text) == 0) | text.rlike(NUMBER_TEXT) | text.rlike(NON_FINITE_TEXT), F.lit(None))
               .otherwise(text))
        if df.select(key.alias("k")).filter(F.col("k").isNotNull() & ~F.col("k").rlike(CANONICAL_INT)).limit(1).count():
            kind = pl.String
        else:
            key = key.cast("bigint")
    frame = df.select(key.alias("stay_id"), as_number_or_text("time"),
                      F.col("variable").cast("string").alias("variable"), as_number_or_text("value"))
    return frame, kind


def score_spark(df, model, explain: int = 0, n_partitions: int | None = None, chunk_rows: int = 200_000):
    """Score every stay of a long Spark DataFrame; lazy, like any Spark transformation.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        At least ``stay_id`` (integer, or text holding one), ``time`` (hours, number or text such as
        ``12.5`` / ``HH:MM``), ``variable`` (text), ``value`` (number or text). Other columns are ignored.
    model : str, Path or RiskModel
        A bundle directory, an MLflow URI (``models:/clinical-lstm@champion``, ``runs:/<id>/model``;
        tracking URI from ``MLFLOW_TRACKING_URI``) or a loaded model. Resolved on the driver, then shipped.
    explain : int, default 0
        Add the top ``explain`` SHAP contributions per stay (log-odds), as :meth:`RiskModel.score` does.
    n_partitions : int, optional
        Partitions the stays are hashed into; default ``spark.sql.shuffle.partitions`` (which adaptive query
        execution may coalesce). Each partition is one task.
    chunk_rows : int, default 200,000
        Rows gathered before a scoring call; bounds Python memory per task (about 100 MB at this size).

    Returns
    -------
    pyspark.sql.DataFrame
        One row per distinct ``stay_id``: ``stay_id long`` (string for text ids), ``risk double, flag boolean, reason string,
        n_observations long, quality_flags string`` (``;``-joined, see
        :data:`clinical_lstm.data.validate.QUALITY_FLAGS`) + ``top<k>_variable string, top<k>_contribution
        double``. A rejected stay has null ``risk``/``flag``/``n_observations``/``quality_flags`` and its
        reason (``no_time_series``).
    """
    _require_pyspark()
    if explain < 0 or n_partitions is not None and n_partitions < 1 or chunk_rows < 1:
        raise ValueError(f"explain must be >= 0, n_partitions >= 1 and chunk_rows >= 1; got "
                         f"explain={explain}, n_partitions={n_partitions}, chunk_rows={chunk_rows}")
    long, kind = _long_columns(df)
    staged = stage_bundle(model)
    long.sparkSession.sparkContext.addFile(str(staged), recursive=True)
    name = staged.name
    parts = long.repartition(n_partitions, "stay_id") if n_partitions else long.repartition("stay_id")

    def score_partition(batches):
        return _score_partition(batches, name, explain, chunk_rows, kind)

    return parts.sortWithinPartitions("stay_id").mapInArrow(score_partition, output_schema(explain, kind))


def check_every_stay(df, scored) -> dict:
    """Count distinct stays in ``df`` and rows / distinct stays in ``scored`` (two Spark jobs); raise
    ``RuntimeError`` unless every stay in is exactly one row out. Returns the counts."""
    from pyspark.sql import functions as F

    ids = _long_columns(df)[0].select("stay_id")
    stays_in = ids.distinct().count()
    out = scored.agg(F.count("*").alias("rows"), F.countDistinct("stay_id").alias("stays")).first()
    counts = {"stays_in": stays_in, "rows_out": out["rows"], "distinct_stays_out": out["stays"]}
    if not stays_in == out["rows"] == out["stays"]:
        raise RuntimeError(f"stay accounting failed: {counts}; every stay in must be exactly one row out")
    return counts
