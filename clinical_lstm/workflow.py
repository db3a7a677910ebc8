"""The jobs users run — prepare, train, evaluate, explain, score — as library functions.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from .catalogue import resolve
from .config import Config
from .files import write_frame
from .grid import to_grid
from .impute import hours_since
from .report import MODEL_NAME, Evaluation
from .sources import DataError, RawData, load
from .validate import QualityReport, validate


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)


def labels_of(raw: RawData, ids) -> np.ndarray:
    lab = pl.DataFrame({"stay_id": np.asarray(ids)}).join(raw.outcomes.select("stay_id", "label"), on="stay_id",
                                                          how="left")
    return lab["label"].to_numpy().astype(np.int64)


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


def prepare(data, out: str | Path, labels=None, outcomes=None, config: Config | None = None) -> PrepareResult:
    """Read, validate and grid ``data``; write the grid (Parquet) and the quality report to ``out``.

    ``grid.parquet`` has one row per stay and bin (up to the stay's true length): ``stay_id, bin, hour_end``,
    then per series variable its aggregated value (null when unobserved) and ``<variable>__hours_since``,
    the real hours since it was last observed (null before its first observation). ``statics.parquet``
    holds the time-0 descriptors; ``labels.parquet`` the outcomes when known.
    """
    t0 = time.perf_counter()
    cfg = config or Config()
    out = writable_dir(out, "--out", ("grid.parquet", "statics.parquet", "labels.parquet", "quality_report.json",
                                      "rejects.csv"), [*_as_list(data), labels, outcomes])
    catalogue = resolve(cfg.data.catalogue)
    raw = load(data, labels, outcomes)
    clean, kept, report = validate(raw, catalogue, cfg.data.window_hours)
    grid = to_grid(clean, kept.to_numpy(), catalogue, cfg.data.window_hours, cfg.data.resolution_hours)
    N, T, V = grid.values.shape
    since, _ = hours_since(grid.obs_time, grid.bin_end_hours, np.full((N, V), np.nan, np.float32))  # (N, T, V)
    valid = (np.arange(T)[None, :] < grid.lengths[:, None]).ravel()  # (N*T,)
    cols = {"stay_id": np.repeat(grid.stay_ids, T)[valid], "bin": np.tile(np.arange(T), N)[valid],
            "hour_end": np.tile(grid.bin_end_hours, N)[valid]}
    flat_v, flat_s = grid.values.reshape(N * T, V)[valid], since.reshape(N * T, V)[valid]
    for j, name in enumerate(catalogue.series):
        cols[name] = flat_v[:, j]
        cols[f"{name}__hours_since"] = flat_s[:, j]
    write_frame(pl.DataFrame(cols).fill_nan(None), out / "grid.parquet")
    write_frame(pl.DataFrame({"stay_id": grid.stay_ids, **{n: grid.statics[:, j] for j, n in
                                                           enumerate(catalogue.statics)}}).fill_nan(None),
                out / "statics.parquet")
    if raw.outcomes is not None:
        write_frame(raw.outcomes.filter(pl.col("stay_id").is_in(kept.implode())), out / "labels.parquet")
    report.write(out / "quality_report.json")
    write_frame(report.rejects, out / "rejects.csv")
    return PrepareResult(out, report, N, time.perf_counter() - t0)


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


def _labelled(raw: RawData, catalogue, window: float, what: str):
    if raw.outcomes is None:
        raise DataError(f"no outcome labels found for the {what}: pass --labels FILE (columns stay_id,label) or "
                        f"keep the PhysioNet Outcomes-<x>.txt beside the set (or pass --outcomes FILE)")
    clean, kept, report = validate(raw, catalogue, window, require_labels=True)
    return clean, kept.to_numpy(), labels_of(raw, kept.to_numpy()), report


def _check_separate(train_raw: RawData, test_raw: RawData, log) -> None:
    """Refuse test data that shares stays with the training data: its metrics would not be held out."""
    shared = np.intersect1d(train_raw.stays.to_numpy(), test_raw.stays.to_numpy())
    if len(shared):
        raise DataError(f"the test data shares {len(shared)} of its {test_raw.stays.len()} stays with the training "
                        f"data; a test set must be separate (pass other stays, or leave out --test to get "
                        f"out-of-fold metrics on the training stays)")


def train(data, out: str | Path, labels=None, outcomes=None, config: Config | None = None, test_data=None,
          test_labels=None, progress: bool = True, on_epoch=None, log=print, tracking=False) -> TrainResult:
    """Cross-fit the model on every labelled stay, calibrate it out of fold, compare it with the baselines on
    the same folds, and write the run folder ``out`` (``model/`` and ``report/``).

    The model (:func:`clinical_lstm.training.fit`): k networks, each early-stopped on its own held-out fold,
    stacked with summary members (logistic regression, boosted trees) on their out-of-fold logits, calibrated and
    thresholded out of fold. Metrics come from ``test_data`` when given, else out of fold on the training stays;
    every row of the comparison (:func:`clinical_lstm.report.evaluate_fit`) is on the same stays. ``tracking``: False, True
    (an MLflow run in the default store, see :mod:`clinical_lstm.tracking`) or a
    :class:`~clinical_lstm.tracking.Tracker`. A tracking failure never stops training.
    """
    from .bundle import data_digest, environment
    from .report import evaluate_fit
    from .report import write as write_report
    from .training import fit

    cfg = config or Config()
    out = writable_dir(out, "--out", ("model", "report"),
                       [*_as_list(data), labels, outcomes, *_as_list(test_data), test_labels, cfg.data.catalogue])
    catalogue = resolve(cfg.data.catalogue)
    window = cfg.data.window_hours
    raw = load(data, labels, outcomes)
    clean, ids, y, report = _labelled(raw, catalogue, window, "training data")
    raw = replace(raw, long=raw.long.clear())  # validated into `clean`: the raw rows are not read again
    test = None
    if test_data is not None:
        test_raw = load(test_data, test_labels)
        _check_separate(raw, test_raw, log)
        labelled = _labelled(test_raw, catalogue, window, "test data")
        test = (replace(test_raw, long=test_raw.long.clear()), *labelled)
    tracker = _tracker(tracking, log)
    if tracker:
        tracker.start(cfg, raw.sources)
        on_epoch = _chain(tracker.epoch, on_epoch)
    log(f"stays: {report.n_stays_read} read, {report.n_stays_kept} kept, {report.rejects.height} rejected; "
        f"{cfg.train.folds}-fold cross-fitting on {len(ids)} labelled stays ({int(y.sum())} deaths)"
        + (f"; test {len(test[2])} stays" if test else ""))

    fitted = fit(clean, ids, y, cfg, progress, on_epoch, log)
    model = fitted.model
    if test:
        test_raw, ev_clean, ev_ids, ev_y, _ = test
        on = f"{', '.join(test_raw.sources)} ({len(ev_ids)} stays, separate test data)"
        ev = (model.tensors(ev_clean, ev_ids), ev_y, ev_ids, test_raw.outcomes)
    else:
        ev_clean, ev_ids, ev = clean, ids, None
        on = (f"{', '.join(raw.sources)}, out of fold ({len(ids)} stays; each stay scored by the networks and "
              f"members that did not train on it)")
    evaluation = evaluate_fit(fitted, y, cfg.calibration.threshold_rule, raw.outcomes, ids, cfg.evaluation.n_boot,
                              cfg.evaluation.seed, on, ev, log)
    model.metadata = {
        "environment": environment(), "config": cfg.to_dict(),
        "training_data": {"sources": raw.sources, "digest": data_digest(clean, catalogue),
                          "stays": len(ids), "rows": clean.height, "deaths": int(y.sum())},
        "evaluated_on": on, "train_seconds": fitted.seconds,
        "metrics": evaluation.to_dict()["models"],
    }
    model.save(out / "model")
    files = write_report(out / "report", evaluation, ev_clean, ev_ids, catalogue, fitted.history, report, model,
                         cfg.evaluation.explain_stays, cfg.evaluation.seed)
    files["out_of_fold"] = write_frame(pl.DataFrame({  # held-out risks of the training stays (local: names them)
        "stay_id": ids, "fold": fitted.fold, "risk": fitted.oof_risk, "label": y}), out / "report" / "out_of_fold.parquet")
    from sklearn.metrics import average_precision_score

    result = TrainResult(model, report, evaluation, fitted.history, out, files,
                         validation_auprc=float(average_precision_score(y, fitted.oof_risk)))
    if tracker:
        result.tracking = tracker.finish(result, result.validation_auprc)
        result.tracking["error"] = tracker.error
    return result


def _chain(first, second):
    """One callback that calls ``first`` then ``second`` (either may be None)."""
    if second is None:
        return first

    def both(row):
        first(row)
        second(row)

    return both


def _tracker(tracking, log):
    if tracking is False or tracking is None:
        return None
    from .tracking import Tracker

    return Tracker(log=log) if tracking is True else tracking


# -- evaluate -------------------------------------------------------------------------------------------------
def evaluate(model, data, out: str | Path, labels=None, outcomes=None, n_boot: int = 1000) -> Evaluation:
    """Metrics with intervals, subgroup table and plots of a trained model on labelled data, written to ``out``."""
    from .bundle import load_model
    from .report import HYBRID_NAME, compare
    from .report import write as write_report

    out = writable_dir(out, "--out", ("metrics.json", "quality_report.json", "rejects.csv"),
                       [*_as_list(data), labels, outcomes])
    model = load_model(model) if isinstance(model, (str, Path)) else model
    clean, ids, y, report = _labelled(load(data, labels, outcomes), model.catalogue,
                                      model.transformer.window_hours, "evaluation data")
    p = model.risk(model.logits(model.tensors(clean, ids)))
    name = HYBRID_NAME if model.head is not None else MODEL_NAME
    evaluation = compare({name: (p, model.threshold)}, y, f"{len(ids)} stays", n_boot, 0)
    write_report(out, evaluation, clean, ids, model.catalogue, report=report)
    return evaluation


# -- score ------------------------------------------------------------------------------------------------------
def score(model, data, out: str | Path, explain: int = 0, **options) -> dict:
    """Score every stay in chunks; write ``out`` (.parquet or .csv) and, named from its whole file name,
    ``<out>.rejects.<ext>`` and ``<out>.summary.json``. Every stay read is a row of ``out``, checked before
    success.

    ``options`` go to :func:`clinical_lstm.batch.score_batch` (``chunk_stays``, ``catalogue``, ``restart``,
    ``progress``, ``log``, ``workers``): resumable after a crash, memory bounded by the chunk size.
    """
    from .batch import score_batch

    return score_batch(model, data, out, explain=explain, **options)


def explain(model, data, out: str | Path, stays=None, top: int | None = None, n_permutations: int = 8,
            fmt: str = "parquet", log=print) -> dict:
    """Write the per-variable SHAP table (every scorable stay), ``rejects.csv`` (every other stay, with its
    reason), a plot per requested stay and the global importance plot. Everything is checked before any file is
    written: the options, the requested stays, and that at least one stay can be explained."""
    from .bundle import load_model
    from .explain import shap_values, table_from
    from .explain_plots import plot_global, plot_stay

    if top is not None and top < 1:
        raise ValueError(f"--top must be at least 1 (or left out for every variable), got {top}")
    if n_permutations < 2:
        raise ValueError(f"--permutations must be at least 2 (one antithetic pair), got {n_permutations}")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"--format must be parquet or csv, got {fmt!r}")
    model = load_model(model) if isinstance(model, (str, Path)) else model
    clean, kept, report = model.clean(load(data))
    rejected = {str(s): r for s, r in report.rejects.iter_rows()}  # ids compared as text: "007" stays "007"
    if not len(kept):
        reasons = report.to_dict(include_stay_ids=False)["stays"]["rejected_by_reason"]
        raise DataError(f"none of the {report.n_stays_read} stays can be explained: every one is rejected "
                        f"({', '.join(f'{k} {v}' for k, v in reasons.items())})")
    index = {str(s): i for i, s in enumerate(kept.to_list())}
    missing = [str(s) for s in (stays or []) if str(s) not in index]
    if missing:
        why = ", ".join(f"{s} ({rejected[s]})" if s in rejected else f"{s} (not in the data)" for s in missing)
        raise DataError(f"stay(s) {why} cannot be drawn: not among the scorable stays of the data")
    out = writable_dir(out, "--out", (f"explanations.{fmt}", "rejects.csv", "global_importance.png"), _as_list(data))
    t = model.tensors(clean, kept)
    full = table_from(*shap_values(model, t, n_permutations, progress=True), t.stay_ids)
    files = {"explanations": write_frame(full if top is None else full.filter(pl.col("rank") <= top),
                                         out / f"explanations.{fmt}"),
             "rejects": write_frame(report.rejects, out / "rejects.csv")}
    files["global_importance"] = plot_global(full, out / "global_importance.png")
    if stays is None:
        stays = t.stay_ids[np.argsort(-model.logits(t))[:3]].tolist()
    for sid in stays:
        files[f"stay {sid}"] = plot_stay(model, clean, t, index[str(sid)], full, out / f"stay_{_safe(sid)}.png")
    log(f"{len(kept)} stays explained, {report.rejects.height} rejected -> {out}")
    return files


def _safe(stay_id) -> str:
    """A stay id as part of a file name: text ids may hold any character."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", str(stay_id))
