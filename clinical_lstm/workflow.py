"""The jobs that make a model — prepare, train — as library functions (those that use one, evaluate, score and
explain, are :mod:`clinical_lstm.jobs`).

The CLI, ``pipelines/*.py`` and notebooks call exactly these, with the same defaults and the same errors.

``train`` writes a *run folder*::

    <out>/model/    the bundle: everything scoring needs (bundle.json, catalogue, transformer, weights)
    <out>/report/   metrics with paired intervals, plots, subgroups, history, SHAP importance, and the quality
                    report and rejects (these two name stays: the folder stays local; MLflow gets the bundle
                    and only the id-free report files)

:func:`clinical_lstm.load_model` accepts the run folder or its ``model/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from .config import Config
from .data.catalogue import resolve
from .data.grid import Grid
from .data.quality import QualityReport
from .data.sources import DataError
from .evaluation.comparison import Evaluation
from .evaluation.report import source_labels
from .features.impute import hours_since
from .features.parts import MANIFEST, PARTS, STAGING
from .files import atomic_dir, removes_new_out, temp_prefix, write_frame


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)


def writable_dir(path: str | Path, what: str, writes=(), inputs=()) -> Path:
    """``path`` as a folder that can be written, checked before any work (a parent that is a file, no
    permission, a file or folder it writes, ``writes``, that would touch one of the ``inputs``): a one-line error
    instead of a failure after training or an overwritten input."""
    from .files import check_not_input

    path = Path(path)
    check_not_input([path / w for w in writes], [Path(p) for p in _as_list(inputs) if p is not None])
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise DataError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{time.monotonic_ns()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise DataError(f"{what} {path} cannot be written: {exc.strerror or exc}") from None
    return path


# -- prepare ----------------------------------------------------------------------------------------------
@dataclass
class PrepareResult:
    out_dir: Path
    report: QualityReport
    n_stays: int
    seconds: float


PREPARED = ("grid.parquet", "statics.parquet", "labels.parquet", "quality_report.json", "rejects.csv", MANIFEST, PARTS,
            STAGING)


@removes_new_out
def prepare(data, out: str | Path, labels=None, outcomes=None, config: Config | None = None,
            progress: bool = False) -> PrepareResult:
    """Read, validate and grid ``data`` chunk by chunk (memory bounded by the chunk, not the cohort); write
    the grid and the quality report to ``out``, which ``train --data <out>`` reads without reading the raw
    data again (:mod:`clinical_lstm.features.cohort`).

    ``grid.parquet`` has one row per stay and bin (up to the stay's true length): ``stay_id, bin, hour_end``,
    then per series variable its aggregated value (null when unobserved) and ``<variable>__hours_since``,
    the real hours since it was last observed (null before its first observation). ``statics.parquet``
    holds the time-0 descriptors; ``labels.parquet`` the outcomes when known; ``parts/`` and ``cohort.json`` the
    same grid as NumPy arrays for training.
    """
    from .features.parts import grid_parts, save_parts
    from .files import atomic_path

    t0 = time.perf_counter()
    cfg = config or Config()
    out = writable_dir(out, "--out", PREPARED, [*_as_list(data), labels, outcomes])
    catalogue = resolve(cfg.data.catalogue)
    cfg.data.check_stay_size(len(catalogue.series), cfg.data.catalogue or "the default catalogue")  # before the data
    with atomic_path(out / "grid.parquet") as g_tmp, atomic_path(out / "statics.parquet") as s_tmp:
        sink = _GridFiles(catalogue, g_tmp, s_tmp)
        try:
            parts = grid_parts(data, out, catalogue, cfg.data.window_hours, cfg.data.resolution_hours, labels,
                               outcomes, progress=progress, sink=sink)
        except BaseException:
            sink.abort()  # the half-written files are closed here and removed by atomic_path
            raise
        sink.close(cfg.data.resolution_hours)
    save_parts(parts, catalogue)
    return PrepareResult(out, parts.report, sink.stays, time.perf_counter() - t0)


class _GridFiles:
    """``grid.parquet`` and ``statics.parquet`` written part by part as :func:`~clinical_lstm.features.cohort.grid_parts`
    makes the parts (its ``sink``)."""

    def __init__(self, catalogue, grid_path: Path, statics_path: Path):
        self.catalogue, self.paths, self.writers, self.stays = catalogue, (grid_path, statics_path), [], 0

    def convert(self, grid: Grid):  # in a worker thread
        return (_grid_frame(grid, self.catalogue).to_arrow(), _statics_frame(grid, self.catalogue).to_arrow(),
                len(grid.stay_ids))

    def write(self, converted) -> None:  # in part order
        import pyarrow.parquet as pq

        *tables, n = converted
        if not self.writers:
            self.writers = [pq.ParquetWriter(p, t.schema) for p, t in zip(self.paths, tables, strict=True)]
        for w, t in zip(self.writers, tables, strict=True):
            w.write_table(t.cast(w.schema))
        self.stays += n

    def abort(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []

    def close(self, resolution_hours: float) -> None:
        for w in self.writers:
            w.close()
        if not self.writers:  # every stay rejected: the files exist, with their columns and no rows
            V = len(self.catalogue.series)
            none = np.zeros((0, 1, V), np.float32)  # 0 stays (one bin: columns only)
            empty = Grid(none, none, np.zeros(0, np.int64), np.zeros((0, len(self.catalogue.statics)), np.float32),
                         np.zeros(0, np.int64), resolution_hours)
            _grid_frame(empty, self.catalogue).write_parquet(self.paths[0])
            _statics_frame(empty, self.catalogue).write_parquet(self.paths[1])


def _grid_frame(grid: Grid, catalogue) -> pl.DataFrame:
    """``grid.parquet``'s rows for the stays of ``grid`` (see :func:`prepare`)."""
    N, T, V = grid.values.shape
    since, _ = hours_since(grid.obs_time, grid.bin_end_hours, np.full((N, V), np.nan, np.float32))  # (N, T, V)
    valid = (np.arange(T)[None, :] < grid.lengths[:, None]).ravel()  # (N*T,)
    cols = {"stay_id": np.repeat(grid.stay_ids, T)[valid], "bin": np.tile(np.arange(T), N)[valid],
            "hour_end": np.tile(grid.bin_end_hours, N)[valid]}
    flat_v, flat_s = grid.values.reshape(N * T, V)[valid], since.reshape(N * T, V)[valid]
    for j, name in enumerate(catalogue.series):
        cols[name] = flat_v[:, j]
        cols[f"{name}__hours_since"] = flat_s[:, j]
    return pl.DataFrame(cols).fill_nan(None)


def _statics_frame(grid: Grid, catalogue) -> pl.DataFrame:
    return pl.DataFrame({"stay_id": grid.stay_ids, **{n: grid.statics[:, j] for j, n in
                                                     enumerate(catalogue.statics)}}).fill_nan(None)


# -- train --------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: object  # RiskModel
    report: QualityReport
    evaluation: Evaluation
    history: list[dict]
    out_dir: Path  # the run folder: model/ and report/
    files: dict = field(default_factory=dict)
    tracking: dict = field(default_factory=dict)  # run id, model URI, registry version and alias decision
    validation_auprc: float = float("nan")  # out-of-fold AUPRC of the calibrated model: model selection

    @property
    def bundle_dir(self) -> Path:
        return self.out_dir / "model"

    @property
    def report_dir(self) -> Path:
        return self.out_dir / "report"

    @property
    def metrics(self) -> dict:
        return self.evaluation.metrics

    @property
    def evaluated_on(self) -> str:
        return self.evaluation.on

    def comparison(self) -> str:
        """Each model's metrics with 95 % bootstrap intervals, and the paired differences."""
        return self.evaluation.table()


def _parts(data, folder: Path, catalogue, cfg: Config, labels, outcomes, what: str, progress: bool):
    """Pass 1 of :mod:`clinical_lstm.features.cohort` for ``data`` — or the folder ``prepare`` wrote, read as it is."""
    from .features.parts import Parts, grid_parts, is_cohort

    given = _as_list(data)
    if len(given) == 1 and is_cohort(given[0]):
        if outcomes is not None:
            raise DataError(f"--outcomes applies to raw PhysioNet sets; {given[0]} is prepared: pass --labels FILE, "
                            f"or prepare it with --outcomes")
        parts = Parts.open(given[0], catalogue, labels)
        d = cfg.data
        if (parts.window_hours, parts.resolution_hours) != (d.window_hours, d.resolution_hours):
            raise DataError(f"{given[0]} was prepared with a {parts.window_hours:g} h window in "
                            f"{parts.resolution_hours:g} h bins; the config asks for {d.window_hours:g} h in "
                            f"{d.resolution_hours:g} h bins: prepare it again with this config")
    else:
        parts = grid_parts(data, folder, catalogue, cfg.data.window_hours, cfg.data.resolution_hours, labels, outcomes,
                           require_labels=True, progress=progress, what=what)
    return parts.labelled(what)


def _check_separate(train_ids: np.ndarray, test_ids: np.ndarray) -> None:
    """Refuse test data that shares stays with the training data: its metrics would not be held out."""
    shared = np.intersect1d(train_ids.astype(str), test_ids.astype(str))
    if len(shared):
        raise DataError(f"the test data shares {len(shared)} of its {len(test_ids)} stays with the training "
                        f"data; a test set must be separate (pass other stays, or leave out --test to get "
                        f"out-of-fold metrics on the training stays)")


@removes_new_out
def train(data, out: str | Path, labels=None, outcomes=None, config: Config | None = None, test_data=None,
          test_labels=None, progress: bool = True, on_epoch=None, log=print, tracking=False) -> TrainResult:
    """Cross-fit the model on every labelled stay, calibrate it out of fold, compare it with the baselines on
    the same folds, and write the run folder ``out`` (``model/`` and ``report/``).

    ``data`` is raw data (PhysioNet sets, long tables) or a folder :func:`prepare` wrote. Either way the stays
    are gridded chunk by chunk onto disk (:mod:`clinical_lstm.features.cohort`, in ``out/.work.<pid>.*``, removed at the end),
    so memory does not grow with the number of stays beyond ``[train] in_memory_gb`` and the summaries.

    The model (:func:`clinical_lstm.model.training.fit`): k networks, each early-stopped on a split of its own training
    folds, stacked with summary members (logistic regression, boosted trees) fitted on landmark snapshots of every
    stay, with weights that change with the hour, on their out-of-fold logits; calibrated over the hours and
    thresholded out of fold. The report shows every model at the stay's end and at ``[evaluation] hours``. Metrics come from ``test_data`` when given, else out of fold on the training stays;
    every row of the comparison (:func:`clinical_lstm.evaluation.report.evaluate_fit`) is on the same stays. ``tracking``: False, True
    (an MLflow run in the default store, see :mod:`clinical_lstm.tracking.runs`) or a
    :class:`~clinical_lstm.tracking.runs.Tracker`. A tracking failure never stops training.
    """
    import tempfile

    cfg = config or Config()
    out = writable_dir(out, "--out", ("model", "report"),
                       [*_as_list(data), labels, outcomes, *_as_list(test_data), test_labels, cfg.data.catalogue])
    with tempfile.TemporaryDirectory(prefix=temp_prefix("work"), dir=out, ignore_cleanup_errors=True) as work:
        return _train(data, out, Path(work), labels, outcomes, cfg, test_data, test_labels, progress, on_epoch,
                      log, tracking)


def _train(data, out, work, labels, outcomes, cfg, test_data, test_labels, progress, on_epoch, log,
           tracking) -> TrainResult:
    from .evaluation.report import evaluate_fit
    from .evaluation.report import write as write_report
    from .features.cohort import Cohort
    from .features.impute import GridTransformer
    from .model.training import fit
    from .serve.bundle import RiskModel, environment

    t0 = time.perf_counter()
    catalogue = resolve(cfg.data.catalogue)
    cfg.data.check_stay_size(len(catalogue.series), cfg.data.catalogue or "the default catalogue")  # before the data
    d = cfg.data
    parts = _parts(data, work / "train", catalogue, cfg, labels, outcomes, "training data", progress)
    test_parts = None
    if test_data is not None:
        test_parts = _parts(test_data, work / "test", catalogue, cfg, test_labels, None, "test data", progress)
        _check_separate(parts.read_ids, test_parts.read_ids)
    report = parts.report
    transformer = GridTransformer(catalogue, d.window_hours, d.resolution_hours, d.imputation)
    hours = report_hours(cfg.evaluation.hours, d.window_hours, d.resolution_hours)
    landmarks = sorted({float(h) for h in [*cfg.train.landmarks, *hours] if h <= d.window_hours})
    cohort = Cohort.build(parts, transformer, work / "train", progress=progress,  # fits the transformer
                          landmarks=landmarks)
    test = Cohort.build(test_parts, transformer, work / "test", progress=progress, landmarks=hours,
                        final=False) if test_parts else None
    for p in (parts, test_parts):
        if p is not None and work in p.folder.parents:  # parts of raw data: the inputs on disk replace them
            p.remove()
    preprocessing = time.perf_counter() - t0
    names = cfg.tracking.source_names  # a file name can identify a patient: neutral labels unless asked for
    sources = source_labels(parts.sources, names)
    tracker = _tracker(tracking, log)
    if tracker:
        tracker.start(cfg, sources)
        on_epoch = _chain(tracker.epoch, on_epoch)
    ids, y = cohort.ids, cohort.y
    log(f"stays: {report.n_stays_read} read, {report.n_stays_kept} kept, {report.rejects.height} rejected; "
        f"{cfg.train.folds}-fold cross-fitting on {len(ids)} labelled stays ({int(y.sum())} deaths)"
        + (f"; test {len(test)} stays" if test else ""))

    fitted = fit(cohort, cfg, progress, on_epoch, log)
    fitted.seconds = {"preprocessing": round(preprocessing, 1), **fitted.seconds}
    fitted.model = model = RiskModel(**fitted.parts)
    if test:
        on = f"{', '.join(source_labels(test_parts.sources, names))} ({len(test)} stays, separate test data)"
        ev = (test, test.y, test.ids, test_parts.outcomes)
    else:
        ev = None
        on = (f"{', '.join(sources)}, out of fold ({len(ids)} stays; each stay scored by networks and members "
              f"that did not train on it, early-stopped without it, and stacked and calibrated on the other folds "
              f"only; the alert threshold is chosen on these scores: a small optimism for min(Se, +P))")
    evaluation = evaluate_fit(fitted, y, cfg.calibration.threshold_rule, parts.outcomes, ids, cfg.evaluation.n_boot,
                              cfg.evaluation.seed, on, ev, log, hours)
    evaluation.label = (f"held out: {len(test):,} stays of separate test data" if test else
                        f"out of fold: the {len(ids):,} training stays, each scored by models that did not train on it")
    model.metadata = {
        "environment": environment(), "config": cfg.to_dict(),
        "training_data": {"sources": sources, "digest": parts.digest,
                          "stays": len(ids), "rows": report.n_rows_kept, "deaths": int(y.sum()),
                          "stay_hashes": stay_hashes(parts.stays.filter(pl.col("stay_id").is_in(pl.Series(ids).implode())),
                                                     parts.digest)},
        "evaluated_on": on, "train_seconds": fitted.seconds,
        "metrics": evaluation.to_dict()["models"],
        "hours": evaluation.to_dict().get("hours", {}),  # every model at each reported hour (aggregates only)
    }
    with atomic_dir(out / "report") as staged:  # model/ and report/ replace an earlier run's whole: nothing stale
        files = write_report(staged, evaluation, test or cohort, catalogue, fitted.history, report, model,
                             cfg.evaluation.explain_stays, cfg.evaluation.seed)
        files["out_of_fold"] = write_frame(pl.DataFrame({  # held-out risks of the training stays (local: names them)
            "stay_id": ids, "fold": fitted.fold, "risk": fitted.oof_risk, "label": y}), staged / "out_of_fold.parquet")
        model.save(out / "model")
    files = {k: out / "report" / Path(f).relative_to(staged) for k, f in files.items()}
    from sklearn.metrics import average_precision_score

    result = TrainResult(model, report, evaluation, fitted.history, out, files,
                         validation_auprc=float(average_precision_score(y, fitted.oof_risk)))
    if tracker:
        result.tracking = tracker.finish(result, result.validation_auprc)
        result.tracking["error"] = tracker.error
    return result


def report_hours(hours, window_hours: float, resolution_hours: float) -> list[float]:
    """The reported hours inside the window, each moved to the end of the bin it falls in the nearest (a risk
    is given at the end of a bin), sorted and unique."""
    snapped = {max(1, round(float(h) / resolution_hours)) * resolution_hours for h in hours if 0 < float(h)}
    return sorted(h for h in snapped if h <= window_hours + 1e-9)


def _chain(first, second):
    """One callback that calls ``first`` then ``second`` (either may be None)."""
    if second is None:
        return first

    def both(row):
        first(row)
        second(row)

    return both


def stay_hashes(stays: pl.DataFrame, data_digest: str) -> dict:
    """What a bundle keeps of its training stays to recognize them later, never their ids: each stay's SHA-256 of
    its id and cleaned rows (:class:`~clinical_lstm.features.cohort.StayDigest`) hashed again with a salt drawn from the
    training data's digest (the same data give the same bundle), cut to 8 bytes, sorted, base64. Without the data
    nothing can be read back from it; with the data, :func:`trained_on` counts which stays the model trained on."""
    import base64
    import hashlib

    salt = hashlib.sha256(b"clinical-lstm training stays\0" + data_digest.encode()).digest()[:16]
    digests = sorted(hashlib.sha256(salt + h).digest()[:8] for h in stays["sha256"].to_list())
    return {"salt": salt.hex(), "sha256_8": base64.b64encode(b"".join(digests)).decode()}


def trained_on(stays: pl.DataFrame, kept: dict | None) -> int:
    """How many of ``stays`` (``stay_id, sha256`` as :attr:`Parts.stays`) are among the stays ``kept`` by
    :func:`stay_hashes` (0 when the bundle kept none)."""
    import base64
    import hashlib

    if not kept:
        return 0
    salt, blob = bytes.fromhex(kept["salt"]), base64.b64decode(kept["sha256_8"])
    known = {blob[i:i + 8] for i in range(0, len(blob), 8)}
    return sum(hashlib.sha256(salt + h).digest()[:8] in known for h in stays["sha256"].to_list())


def _tracker(tracking, log):
    if tracking is False or tracking is None:
        return None
    from .tracking.runs import Tracker

    return Tracker(log=log) if tracking is True else tracking


# -- evaluate -------------------------------------------------------------------------------------------------


# -- score ------------------------------------------------------------------------------------------------------


