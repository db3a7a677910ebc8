"""The jobs on a trained model: ``evaluate`` (metrics with intervals on labelled stays, at the stay's end and at every
reported hour), ``score`` (the batch job) and ``explain`` (per-variable contributions, tables and plots). Training and
``prepare`` are :mod:`clinical_lstm.workflow`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

from .config import Config
from .data.load import load
from .data.sources import DataError
from .evaluation.comparison import MODEL_NAME, Evaluation
from .files import publish, removes_new_out, temp_prefix, write_frame
from .workflow import _as_list, _parts, report_hours, trained_on, writable_dir


@removes_new_out
def evaluate(model, data, out: str | Path, labels=None, outcomes=None, n_boot: int = 1000,
             hours=None) -> Evaluation:
    """Metrics with intervals, subgroup table and plots of a trained model on labelled data, written to ``out``,
    also at every one of ``hours`` (default: the model's ``[evaluation] hours``) from the rows up to it.
    The stays are gridded chunk by chunk as in :func:`~clinical_lstm.workflow.train` (``out/.work.<pid>.*``, removed at the end)."""
    import tempfile

    from .evaluation.comparison import HYBRID_NAME, compare
    from .evaluation.hours import hourly, shipped_hour_risks
    from .evaluation.report import REPORT_FILES
    from .evaluation.report import write as write_report
    from .features.cohort import Cohort
    from .serve.bundle import load_model

    out = writable_dir(out, "--out", ("metrics.json", "quality_report.json", "rejects.csv"),
                       [*_as_list(data), labels, outcomes, *_model_path(model)])
    model = load_model(model) if isinstance(model, (str, Path)) else model
    tr = model.transformer
    cfg = Config.from_dict({"data": {"window_hours": tr.window_hours, "resolution_hours": tr.resolution_hours}})
    with tempfile.TemporaryDirectory(prefix=temp_prefix("work"), dir=out, ignore_cleanup_errors=True) as work:
        parts = _parts(data, Path(work), model.catalogue, cfg, labels, outcomes, "evaluation data", False)
        hours = report_hours(hours if hours is not None else
                             (model.metadata.get("config") or {}).get("evaluation", {}).get("hours",
                                                                                               [6, 12, 24, 36, 48]),
                             tr.window_hours, tr.resolution_hours)
        cohort = Cohort.build(parts, tr, work, landmarks=hours, final=False)  # fitted: only transforms
        p = model.risk(cohort.apply(model.logits))
        name = HYBRID_NAME if model.head is not None else MODEL_NAME
        on = f"{len(cohort)} stays"
        trained = model.metadata.get("training_data") or {}
        in_sample = parts.digest == trained.get("digest")
        seen = trained_on(parts.stays.filter(pl.col("stay_id").is_in(pl.Series(cohort.ids).implode())),
                          trained.get("stay_hashes"))
        if in_sample:  # train refuses such --test
            on += " — the model's own training stays: in-sample, not held-out performance"
        elif seen:
            on += (f" — {seen} of them {'was' if seen == 1 else 'were'} among the model's training stays (same id and "
                   f"rows): partly in-sample, so these metrics are optimistic; evaluate on stays the model never saw")
        evaluation = compare({name: (p, model.threshold)}, cohort.y, on, n_boot, 0)
        evaluation.label = (f"in-sample: the model's own {len(cohort):,} training stays (not held-out performance)"
                            if in_sample else f"partly in-sample: {seen:,} of {len(cohort):,} stays were training stays"
                            if seen else f"{len(cohort):,} stays given to evaluate")
        evaluation.in_training = len(cohort) if in_sample else seen
        evaluation.hours = hourly(shipped_hour_risks(model, cohort, hours), cohort.y, {name: model.threshold}, n_boot, 0)
        # (the reference rows' alert thresholds are not kept: their min(Se, +P) at each hour uses 0.5)
        staged = Path(work) / "report"
        staged.mkdir()
        write_report(staged, evaluation, cohort, model.catalogue, report=parts.report)
        publish(staged, out, REPORT_FILES)  # only once every file is made; no stale file of an earlier run kept
    return evaluation


def score(model, data, out: str | Path, explain: int = 0, **options) -> dict:
    """Score every stay in chunks; write ``out`` (.parquet or .csv) and, named from its whole file name,
    ``<out>.rejects.<ext>`` and ``<out>.summary.json``. Every stay read is a row of ``out``, checked before
    success.

    ``options`` go to :func:`clinical_lstm.serve.batch.score_batch` (``chunk_stays``, ``catalogue``, ``restart``,
    ``progress``, ``log``, ``workers``): resumable after a crash, memory bounded by the chunk size.
    """
    from .serve.batch import score_batch

    return score_batch(model, data, out, explain=explain, **options)


@removes_new_out
def explain(model, data, out: str | Path, stays=None, top: int | None = None, n_permutations: int = 8,
            fmt: str = "parquet", log=print, progress: bool = True) -> dict:
    """Write the per-variable SHAP table, ``rejects.csv`` (with each reason), a plot per drawn stay and the global
    importance plot over the explained stays. With ``stays``, only those stays are validated, gridded and
    explained (the rest of the data is read, never computed on): three stays of a 4,000-stay set cost what three
    stays cost. Without, every scorable stay is explained and the three highest-risk stays are drawn. Everything
    is checked before any file is written: the options, the requested stays, and that one stay can be explained."""
    import tempfile

    from .explain.plots import plot_global, plot_stay
    from .explain.shapley import shap_values, table_from
    from .progress import Progress
    from .serve.bundle import load_model

    model_dir = _model_path(model)  # an input: no output may touch it
    if top is not None and top < 1:
        raise ValueError(f"--top must be at least 1 (or left out for every variable), got {top}")
    if n_permutations < 2:
        raise ValueError(f"--permutations must be at least 2 (one antithetic pair), got {n_permutations}")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"--format must be parquet or csv, got {fmt!r}")
    model = load_model(model) if isinstance(model, (str, Path)) else model
    raw = load(data)
    n_read = raw.stays.len()
    if stays is not None:
        raw = only_stays(raw, stays)
    clean, kept, report = model.clean(raw)
    rejected = {str(s): r for s, r in report.rejects.iter_rows()}  # ids compared as text: "007" stays "007"
    if not len(kept) and stays is None:
        reasons = report.to_dict(include_stay_ids=False)["stays"]["rejected_by_reason"]
        raise DataError(f"none of the {report.n_stays_read} stays can be explained: every one is rejected "
                        f"({', '.join(f'{k} {v}' for k, v in reasons.items())})")
    index = {str(s): i for i, s in enumerate(kept.to_list())}
    missing = [str(s) for s in (stays or []) if str(s) not in index]
    if missing:
        why = ", ".join(f"{s} ({rejected[s]})" if s in rejected else f"{s} (not in the data)" for s in missing)
        raise DataError(f"stay(s) {why} cannot be drawn: not among the scorable stays of the data")
    out = writable_dir(out, "--out", (f"explanations.{fmt}", "rejects.csv", "global_importance.png"),
                       [*_as_list(data), *model_dir])
    t = model.tensors(clean, kept)
    bar = Progress(len(t), progress, log, verb="explained", desc="explain")
    try:
        phi, base, output, names = shap_values(model, t, n_permutations, progress=bar.update)
    finally:
        bar.close()
    full = table_from(phi, base, output, names, t.stay_ids)
    if stays is None:  # the highest-risk stays (output: the model's logit of each, as predict's)
        stays = t.stay_ids[np.argsort(-output)[:3]].tolist()
    with tempfile.TemporaryDirectory(prefix=temp_prefix("explain"), dir=out, ignore_cleanup_errors=True) as staged:
        staged = Path(staged)  # every file is made here first: a failure leaves --out as it was
        files = {"explanations": write_frame(full if top is None else full.filter(pl.col("rank") <= top),
                                             staged / f"explanations.{fmt}"),
                 "rejects": write_frame(report.rejects, staged / "rejects.csv")}
        files["global_importance"] = plot_global(full, staged / "global_importance.png")
        for sid in dict.fromkeys(stays):
            files[f"stay {sid}"] = plot_stay(model, clean, t, index[str(sid)], full, staged / f"{stay_file(sid)}.png")
        moved = publish(staged, out, EXPLAIN_FILES)
    log(f"{len(kept)} stay{'' if len(kept) == 1 else 's'} explained, {report.rejects.height} rejected"
        + (f" (the requested stays of {n_read:,} read)" if len(kept) + report.rejects.height < n_read else "")
        + f" -> {out}")
    return {k: moved[f] for k, f in files.items()}


def only_stays(raw, stays):
    """``raw`` cut to the stays whose ids, as text, are in ``stays`` (the rest is dropped before any rule runs)."""
    keys = list(dict.fromkeys(str(s) for s in stays))

    def wanted(ids):
        return ids.cast(pl.String).is_in(keys)

    return replace(raw, long=raw.long.filter(wanted(pl.col("stay_id"))), stays=raw.stays.filter(wanted(raw.stays)),
                   outcomes=None if raw.outcomes is None else raw.outcomes.filter(wanted(pl.col("stay_id"))),
                   unreadable={k: v for k, v in raw.unreadable.items() if str(k) in keys})


EXPLAIN_FILES = ("explanations.parquet", "explanations.csv", "rejects.csv", "global_importance.png", "stay_*.png")


def _model_path(model) -> list[Path]:
    """The model's bundle folder, when ``model`` names one on disk (not an MLflow URI, not a loaded model): an
    input that no output may touch. A run folder's ``model/`` is the bundle: ``--out run/explain`` is fine."""
    from .serve.bundle import model_dir
    from .tracking.downloads import is_model_uri

    return [model_dir(model)] if isinstance(model, (str, Path)) and not is_model_uri(str(model)) else []


def stay_file(stay_id) -> str:
    """``stay_<id>``: a stay id as a file name stem. Text ids may hold any character: one with a character other
    than letters, digits, ``.``, ``_`` and ``-`` is spelled with ``_`` for each and a digest of the id, so that
    ``a,b``, ``a/b`` and ``a_b`` get different files."""
    import hashlib
    import re

    text = str(stay_id)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    if safe != text or not safe.strip("."):
        safe += "-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"stay_{safe}"
