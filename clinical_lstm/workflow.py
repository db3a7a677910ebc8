"""The jobs users run — prepare, train, evaluate, score — as library functions.

The CLI and ``pipelines/`` only parse arguments and call these, so a notebook gets exactly the same behaviour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from .catalogue import resolve
from .config import Config
from .grid import to_grid
from .impute import hours_since
from .sources import DataError, RawData, load
from .files import write_json
from .validate import QualityReport, validate

MODEL_NAME = "masked LSTM"


def _labels_for(raw: RawData, ids: np.ndarray) -> np.ndarray:
    lab = pl.DataFrame({"stay_id": ids}).join(raw.outcomes.select("stay_id", "label"), on="stay_id", how="left")
    return lab["label"].to_numpy().astype(np.int64)


def _write_frame(df: pl.DataFrame, path: Path) -> Path:
    """Parquet or CSV by suffix, written to a temporary sibling and renamed (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".csv":
        df.write_csv(tmp)
    else:
        df.write_parquet(tmp)
    tmp.replace(path)
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_frame(pl.DataFrame(cols).fill_nan(None), out / "grid.parquet")
    _write_frame(pl.DataFrame({"stay_id": grid.stay_ids, **{n: grid.statics[:, j] for j, n in
                                                             enumerate(catalogue.statics)}}).fill_nan(None),
                 out / "statics.parquet")
    if raw.outcomes is not None:
        _write_frame(raw.outcomes.filter(pl.col("stay_id").is_in(kept.implode())), out / "labels.parquet")
    report.write(out / "quality_report.json")
    _write_frame(report.rejects, out / "rejects.csv")
    return PrepareResult(out, report, N, time.perf_counter() - t0)


# -- train --------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: object  # RiskModel
    report: QualityReport
    metrics: dict  # model name -> metric -> Estimate
    history: list[dict]
    out_dir: Path
    evaluated_on: str
    files: dict = field(default_factory=dict)
    tracking: dict = field(default_factory=dict)  # run id, model URI, registry version and alias decision
    validation_auprc: float = float("nan")  # of the calibrated model on the validation split: model selection

    def comparison(self) -> str:
        """A plain-text table: each model's metrics with 95 % bootstrap intervals."""
        keys = ("auroc", "auprc", "brier", "ece", "min_se_ppv")
        lines = [f"evaluated on {self.evaluated_on}", f"{'model':<22}" + "".join(f"{k:>24}" for k in keys)]
        for name, m in self.metrics.items():
            lines.append(f"{name:<22}" + "".join(f"{str(m[k]):>24}" if k in m else f"{'-':>24}" for k in keys))
        return "\n".join(lines)


def _split(ids, y, fraction, seed):
    from sklearn.model_selection import train_test_split

    if fraction <= 0:
        return ids, ids[:0], y, y[:0]
    if min(np.bincount(y, minlength=2)) < 2:
        raise DataError(f"need at least 2 stays of each outcome to split; got {int(y.sum())} deaths "
                        f"among {len(y)} labelled stays")
    return train_test_split(ids, y, test_size=fraction, stratify=y, random_state=seed)


def train(data, out: str | Path, labels=None, outcomes=None, config: Config | None = None, test_data=None,
          test_labels=None, progress: bool = True, on_epoch=None, log=print, tracking=False) -> TrainResult:
    """Train, calibrate, evaluate against the baselines, and write the bundle plus its report to ``out``.

    The model is evaluated on ``test_data`` when given, else on a stratified ``test_fraction`` of ``data``
    held out before anything is fitted. Baselines see exactly the same training and validation stays.
    ``tracking``: False, True (an MLflow run in the default store, see :mod:`clinical_lstm.tracking`) or a
    :class:`~clinical_lstm.tracking.Tracker`. A tracking failure never stops training.
    """
    from .bundle import RiskModel, data_digest, environment
    from .calibrate import choose_threshold, make_calibrator
    from .impute import GridTransformer
    from .training import fit_ensemble

    cfg = config or Config()
    catalogue = resolve(cfg.data.catalogue)
    raw = load(data, labels, outcomes)
    tracker = _tracker(tracking, log)
    if raw.outcomes is None:
        raise DataError("no outcome labels found for training: pass --labels FILE (columns stay_id,label) or "
                        "keep the PhysioNet Outcomes-<x>.txt beside the set (or pass --outcomes FILE)")
    clean, kept, report = validate(raw, catalogue, cfg.data.window_hours, require_labels=True)
    ids = kept.to_numpy()
    y = _labels_for(raw, ids)
    ev = cfg.evaluation
    if test_data is not None:
        test_raw = load(test_data, test_labels)
        if test_raw.outcomes is None:
            raise DataError("the test data has no outcome labels; pass its labels too")
        test_clean, test_kept, _ = validate(test_raw, catalogue, cfg.data.window_hours, require_labels=True)
        test_ids = test_kept.to_numpy()
        y_test = _labels_for(test_raw, test_ids)
        evaluated_on = f"{', '.join(test_raw.sources)} ({len(test_ids)} stays, separate test data)"
        dev_ids, y_dev = ids, y
    else:
        dev_ids, test_ids, y_dev, y_test = _split(ids, y, ev.test_fraction, ev.split_seed)
        test_clean = clean
        evaluated_on = f"held-out {ev.test_fraction:.0%} of {', '.join(raw.sources)} ({len(test_ids)} stays)"
    tr_ids, va_ids, y_tr, y_va = _split(dev_ids, y_dev, ev.val_fraction, ev.split_seed)
    if tracker:
        tracker.start(cfg, raw.sources)
        user_on_epoch = on_epoch

        def on_epoch(row):  # noqa: F811 -- chain the caller's callback with tracking
            tracker.epoch(row)
            if user_on_epoch:
                user_on_epoch(row)
    log(f"stays: {report.n_stays_read} read, {report.n_stays_kept} kept, {report.rejects.height} rejected; "
        f"train {len(tr_ids)}, validation {len(va_ids)}, test {len(test_ids)}")

    transformer = GridTransformer(catalogue, cfg.data.window_hours, cfg.data.resolution_hours,
                                  cfg.data.imputation).fit(clean, tr_ids)  # training split only
    t_tr, t_va = transformer.transform(clean, tr_ids), transformer.transform(clean, va_ids)
    t0 = time.perf_counter()
    networks, history = fit_ensemble(t_tr, y_tr, t_va, y_va, cfg.model, cfg.train, progress, on_epoch)
    train_seconds = time.perf_counter() - t0
    model = RiskModel(transformer, networks, None, 0.5)
    val_logits = model.logits(t_va)
    model.calibrator = make_calibrator(cfg.calibration.method).fit(val_logits, y_va)
    model.threshold = float(choose_threshold(y_va, model.risk(val_logits), cfg.calibration.threshold_rule))

    if len(test_ids) == 0:  # everything went into training: report on validation, and say so
        test_ids, y_test, test_clean = va_ids, y_va, clean
        evaluated_on = f"the validation split ({len(va_ids)} stays; used for early stopping and calibration)"
    probs = {MODEL_NAME: (model.risk(model.logits(transformer.transform(test_clean, test_ids))), model.threshold)}
    probs.update(_baseline_probs(clean, raw, tr_ids, y_tr, va_ids, y_va, test_clean,
                                 test_raw if test_data is not None else raw, test_ids, catalogue, cfg, log))
    metrics = _metrics(probs, y_test, cfg.evaluation)

    model.metadata = {
        "environment": environment(), "config": cfg.to_dict(),
        "training_data": {"sources": raw.sources, "digest": data_digest(clean, catalogue),
                          "stays": len(ids), "rows": clean.height, "deaths": int(y.sum())},
        "evaluated_on": evaluated_on, "train_seconds": round(train_seconds, 1),
        "metrics": {name: {k: e.to_dict() for k, e in m.items()} for name, m in metrics.items()},
    }
    out = Path(out)
    model.save(out)  # replaces the directory: the report goes in afterwards
    files = _eval_files(probs, y_test, test_clean, test_ids, catalogue, out / "report")
    files.update(_global_importance(model, test_clean, test_ids, cfg.evaluation, out / "report"))
    files.update(_write_train_report(out / "report", report, history, metrics, evaluated_on))
    from sklearn.metrics import average_precision_score

    result = TrainResult(model, report, metrics, history, out, evaluated_on, files,
                         validation_auprc=float(average_precision_score(y_va, val_logits)))
    if tracker:
        result.tracking = tracker.finish(result, result.validation_auprc)
        result.tracking["error"] = tracker.error
    return result


def _tracker(tracking, log):
    if tracking is False or tracking is None:
        return None
    from .tracking import Tracker

    return Tracker(log=log) if tracking is True else tracking


def _baseline_probs(clean, raw, tr_ids, y_tr, va_ids, y_va, test_clean, test_raw, test_ids, catalogue, cfg, log):
    """Logistic regression, gradient boosting (summary features) and SAPS-I, fitted on the training split,
    thresholds chosen on the validation split — the same data the LSTM gets."""
    from .baselines import SummaryBaselines, saps_probability, saps_scores, summary_features
    from .calibrate import choose_threshold

    X_tr, _ = summary_features(clean, catalogue, tr_ids)
    X_va, _ = summary_features(clean, catalogue, va_ids)
    X_te, _ = summary_features(test_clean, catalogue, test_ids)
    base = SummaryBaselines(seed=cfg.train.seed).fit(X_tr, y_tr)
    p_va, p_te = base.predict_proba(X_va), base.predict_proba(X_te)
    out = {name: (p_te[name], choose_threshold(y_va, p_va[name], cfg.calibration.threshold_rule))
           for name in p_te}
    s_tr, s_va = saps_scores(raw.outcomes, tr_ids), saps_scores(raw.outcomes, va_ids)
    s_te = saps_scores(test_raw.outcomes, test_ids)
    if s_tr is not None and s_te is not None and s_va is not None:
        pv = saps_probability(s_tr, y_tr, s_va)
        out["SAPS-I"] = (saps_probability(s_tr, y_tr, s_te), choose_threshold(y_va, pv, cfg.calibration.threshold_rule))
    else:
        log("SAPS-I baseline skipped: the outcomes carry no SAPS-I scores")
    return out


def _metrics(probs: dict, y, ev) -> dict:
    """Metrics with 95 % bootstrap intervals for every model: ``{name: {metric: Estimate}}``."""
    from .metrics import evaluate

    return {name: evaluate(y, p, thr, n_boot=ev.n_boot, seed=ev.split_seed) for name, (p, thr) in probs.items()}


def _eval_files(probs: dict, y, clean, ids, catalogue, out_dir: Path) -> dict:
    """The model's subgroup table (sex, age band, ICU type) and ROC / PR / calibration plots of every model."""
    from .metrics import demographic_groups, subgroup_table
    from .plots import plot_calibration, plot_pr, plot_roc

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    if all(n in catalogue.statics for n in ("Age", "Gender", "ICUType")):
        statics = to_grid(clean, ids, catalogue).statics
        col = {n: statics[:, catalogue.statics.index(n)] for n in ("Age", "Gender", "ICUType")}
        p, thr = probs[MODEL_NAME]
        table = subgroup_table(y, p, thr, demographic_groups(col["Age"], col["Gender"], col["ICUType"]))
        files["subgroups"] = _write_frame(pl.from_pandas(table), out_dir / "subgroups.csv")
    curves = {name: (y, p) for name, (p, _) in probs.items()}
    files["roc"] = plot_roc(curves, out_dir / "roc.png")
    files["pr"] = plot_pr(curves, out_dir / "pr.png")
    files["calibration"] = plot_calibration(curves, out_dir / "calibration.png")
    return files


def _global_importance(model, clean, ids, ev, out_dir: Path) -> dict:
    """Mean |SHAP| per variable over up to ``ev.explain_stays`` evaluation stays: a CSV and a bar plot."""
    if ev.explain_stays <= 0 or len(ids) == 0:
        return {}
    from .explain import shap_values, table_from
    from .explain_plots import plot_global

    rng = np.random.default_rng(ev.split_seed)
    pick = np.sort(rng.choice(ids, size=min(ev.explain_stays, len(ids)), replace=False))
    t = model.tensors(clean.filter(pl.col("stay_id").is_in(pick.tolist())), pick)
    table = table_from(*shap_values(model, t), t.stay_ids)
    importance = (table.group_by("variable").agg(pl.col("contribution").abs().mean().alias("mean_abs_shap"))
                  .sort("mean_abs_shap", descending=True))  # aggregates only: safe to log
    return {"global_importance": plot_global(table, out_dir / "global_importance.png"),
            "global_importance_table": _write_frame(importance, out_dir / "global_importance.csv")}


def _write_train_report(out_dir: Path, report, history, metrics, evaluated_on) -> dict:
    files = {"quality_report": report.write(out_dir / "quality_report.json"),
             "rejects": _write_frame(report.rejects, out_dir / "rejects.csv"),
             "history": _write_frame(pl.DataFrame(history), out_dir / "history.csv"),
             "metrics": write_json(out_dir / "metrics.json", {
                 "evaluated_on": evaluated_on,
                 "models": {n: {k: e.to_dict() for k, e in m.items()} for n, m in metrics.items()}})}
    return files


# -- evaluate -------------------------------------------------------------------------------------------------
def evaluate_model(model, data, out: str | Path, labels=None, outcomes=None, n_boot: int = 1000) -> dict:
    """Metrics with intervals, subgroup table and plots for a trained model on labelled data."""
    from .bundle import load_model
    from .config import EvaluationConfig

    model = load_model(model) if isinstance(model, (str, Path)) else model
    raw = load(data, labels, outcomes)
    if raw.outcomes is None:
        raise DataError("evaluation needs outcome labels: pass --labels FILE or --outcomes FILE")
    clean, kept, report = validate(raw, model.catalogue, model.transformer.window_hours, require_labels=True)
    ids = kept.to_numpy()
    y = _labels_for(raw, ids)
    p = model.risk(model.logits(model.tensors(clean, ids)))
    probs = {MODEL_NAME: (p, model.threshold)}
    metrics = _metrics(probs, y, EvaluationConfig(n_boot=n_boot))
    files = _eval_files(probs, y, clean, ids, model.catalogue, Path(out))
    report.write(Path(out) / "quality_report.json")
    payload = {"data": raw.sources, "stays": len(ids), "rejected": report.rejects.height,
               "metrics": {k: e.to_dict() for k, e in metrics[MODEL_NAME].items()}}
    write_json(Path(out) / "metrics.json", payload)
    return {"metrics": metrics[MODEL_NAME], "files": files, "report": report}


# -- score ------------------------------------------------------------------------------------------------------
def score(model, data, out: str | Path, explain: int = 0, **options) -> dict:
    """Score every stay in chunks; write ``out`` (.parquet or .csv), ``<stem>.rejects.<ext>`` and
    ``<stem>.summary.json``. Every stay read is a row of ``out`` or of the rejects file, checked before success.

    ``options`` go to :func:`clinical_lstm.batch.score_batch` (``chunk_stays``, ``catalogue``, ``restart``,
    ``progress``, ``log``): resumable after a crash, memory bounded by the chunk size.
    """
    from .batch import score_batch

    return score_batch(model, data, out, explain=explain, **options)


def explain(model, data, out: str | Path, stays=None, top: int | None = None, n_permutations: int = 8,
            fmt: str = "parquet") -> dict:
    """Write the per-variable SHAP table, a plot per requested stay and the global importance plot."""
    from .bundle import load_model
    from .explain import shap_values, table_from
    from .explain_plots import plot_global, plot_stay

    model = load_model(model) if isinstance(model, (str, Path)) else model
    out = Path(out)
    clean, kept, _ = model.clean(load(data))
    t = model.tensors(clean, kept)
    full = table_from(*shap_values(model, t, n_permutations, progress=True), t.stay_ids)
    files = {"explanations": _write_frame(full if top is None else full.filter(pl.col("rank") <= top),
                                          out / f"explanations.{fmt}")}
    files["global_importance"] = plot_global(full, out / "global_importance.png")
    if stays is None:
        stays = t.stay_ids[np.argsort(-model.logits(t))[:3]].tolist()
    index = {int(s): i for i, s in enumerate(t.stay_ids)}
    missing = [s for s in stays if s not in index]
    if missing:
        raise DataError(f"stay(s) {missing} are not among the scorable stays of the data")
    for sid in stays:
        files[f"stay {sid}"] = plot_stay(model, clean, t, index[sid], full, out / f"stay_{sid}.png")
    return files


# -- sweep ------------------------------------------------------------------------------------------------------
def sweep_configs(base: Config, grid: dict[str, list], method: str = "grid", n_trials: int | None = None,
                  seed: int = 0) -> list[tuple[dict, Config]]:
    """Expand ``{"model.hidden_size": [32, 64], ...}`` into ``(overrides, Config)`` trials.

    ``method="grid"`` takes every combination; ``"random"`` draws ``n_trials`` of them without replacement.
    """
    import itertools
    import random

    if method not in ("grid", "random"):
        raise ValueError(f"sweep method must be 'grid' or 'random', got {method!r}")
    known = set(base.flat())
    bad = sorted(k for k in grid if k not in known)
    if bad:
        raise ValueError(f"sweep grid names unknown parameter(s) {bad}; use dotted names such as "
                         f"'model.hidden_size' (see Config.flat())")
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if method == "random":
        combos = random.Random(seed).sample(combos, min(n_trials or len(combos), len(combos)))
    trials = []
    for overrides in combos:
        d = base.to_dict()
        for key, value in overrides.items():
            section, name = key.split(".", 1)
            d[section][name] = value
        trials.append((overrides, Config.from_dict(d, source="sweep")))
    return trials


def sweep(data, out: str | Path, base: Config, grid: dict[str, list], method: str = "grid",
          n_trials: int | None = None, seed: int = 0, labels=None, outcomes=None, test_data=None,
          experiment: str | None = None, tracking: bool = True, log=print) -> dict:
    """Train one model per trial as nested MLflow runs under one parent run, which records the best trial
    (highest validation AUPRC); the best trial's model is registered (champion only if it beats the champion).
    """
    from .tracking import Tracker, parent_run

    trials = sweep_configs(base, grid, method, n_trials, seed)
    out = Path(out)
    results = []
    with parent_run(base, experiment, len(trials), grid, method, enabled=tracking, log=log) as parent:
        for i, (overrides, cfg) in enumerate(trials):
            log(f"trial {i + 1}/{len(trials)}: {overrides}")
            tracker = Tracker(experiment=parent.experiment, register=False, nested=True, log=log) \
                if parent.active else False
            res = train(data, out / f"trial-{i}", labels, outcomes, cfg, test_data, progress=False, log=log,
                        tracking=tracker)
            results.append({"trial": i, "overrides": overrides, "validation_auprc": res.validation_auprc,
                            "out": str(res.out_dir), **{k: res.tracking.get(k) for k in ("run_id", "model_uri")}})
        best = max(results, key=lambda r: r["validation_auprc"])
        summary = {"trials": results, "best": best, "parent_run_id": parent.run_id}
        summary["registry"] = parent.record_best(best)
    write_json(out / "sweep.json", summary)
    return summary
