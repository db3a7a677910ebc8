"""The report a trained model is judged by: the same stays, the same folds, paired intervals.

* :func:`baselines` -- the summary members' out-of-fold probabilities on the model's own folds (for a separate
  test set their refit on every stay) and SAPS-I recalibrated per fold (:mod:`clinical_lstm.evaluation.saps`).
* :func:`evaluate_fit` -- every row of the comparison at the stay's end and at every reported hour
  (:mod:`clinical_lstm.evaluation.comparison`, :mod:`clinical_lstm.evaluation.hours`).
* :func:`write` -- the report folder: ``metrics.json``, the plots, the subgroup table, the training history,
  the global SHAP importance, and the quality report. Only :data:`SAFE_TO_LOG` files may leave the machine
  (MLflow): the quality report and rejects name stays and stay local.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from ..files import write_frame, write_json
from .comparison import HYBRID_NAME, MODEL_NAME, SUMMARIES_NAME, Evaluation, compare
from .hours import hour_rows, hourly, hours_frame, member_risks, stacking_frame

#                                          shipped model's lead over this row
#: Report files free of stay identifiers: the only ones tracking logs.
SAFE_TO_LOG = ("metrics.json", "roc.png", "pr.png", "calibration.png", "comparison.png", "subgroups.csv",
               "history.csv", "global_importance.png", "global_importance.csv", "hours.png", "hours.csv",
               "stacking.csv")
REPORT_FILES = (*SAFE_TO_LOG, "quality_report.json", "rejects.csv")  # every file :func:`write` may write
SOURCE_KINDS = ((".tar.gz", "PhysioNet set archive"), (".tgz", "PhysioNet set archive"),
                (".tar", "PhysioNet set archive"), (".csv", "long-format CSV"), (".parquet", "long-format Parquet"),
                ("<dataframe>", "data frame"))


def source_labels(names: list[str], keep_names: bool = False) -> list[str]:
    """What a run, a report and a bundle say about their inputs: the file names only with ``keep_names``
    (``[tracking] source_names``), else a neutral label per input — ``long-format CSV``, ``PhysioNet set
    archive``, ``PhysioNet set folder`` — numbered when there are several (``input 2: long-format CSV``). A file
    name can identify a patient (``extract_MRN-0132539_smith.csv``); the data digest identifies the data."""
    if keep_names:
        return list(names)
    kinds = [next((kind for end, kind in SOURCE_KINDS if n.lower().endswith(end)), "PhysioNet set folder")
             for n in names]
    return kinds if len(kinds) == 1 else [f"input {i}: {k}" for i, k in enumerate(kinds, 1)]


def baselines(y: np.ndarray, fold: np.ndarray, members_oof: dict, rule: str, outcomes, ids,
              members_test: dict | None = None, test: tuple | None = None, log=print) -> dict:
    """``{name: (probabilities, threshold)}`` of each baseline on the evaluation stays.

    The logistic regression and gradient boosting are the model's own summary members (same features, same
    folds): ``members_oof`` are their out-of-fold logits on the training stays, ``members_test`` (with separate
    test data) the shipped members' logits on the test stays. SAPS-I is recalibrated per fold. Thresholds
    always come from the out-of-fold probabilities, as the model's does. ``test = (ids, outcomes)``.
    """
    from scipy.special import expit

    from ..model.calibrate import choose_threshold
    from .saps import saps_probability, saps_scores

    oof = {name: expit(z) for name, z in members_oof.items()}
    on_test = {name: expit(z) for name, z in (members_test or {}).items()}
    saps = saps_scores(outcomes, ids)
    saps_test = saps_scores(test[1], test[0]) if test else None
    if saps is None or (test and saps_test is None):
        log("SAPS-I baseline skipped: the outcomes carry no SAPS-I scores")
    else:
        oof["SAPS-I"] = np.zeros(len(y))
        parts = []
        for k in range(int(fold.max()) + 1):
            fit, held = fold != k, fold == k
            oof["SAPS-I"][held] = saps_probability(saps[fit], y[fit], saps[held])
            if test:
                parts.append(saps_probability(saps[fit], y[fit], saps_test))
        if test:
            on_test["SAPS-I"] = np.mean(parts, axis=0)
    return {name: ((on_test[name] if test else p), choose_threshold(y, p, rule)) for name, p in oof.items()}


def evaluate_fit(fitted, y: np.ndarray, rule: str, outcomes, ids, n_boot: int, seed: int, on: str,
                 test: tuple | None = None, log=print, hours=()) -> Evaluation:
    """Every row of the comparison on the same stays: the shipped model, the networks alone (when the model
    stacks summary members), the summary members as the logistic-regression and gradient-boosting baselines,
    and SAPS-I. Out of fold on the training stays (``y``, ``ids``), or on separate test data
    ``test = (cohort, y, ids, outcomes)`` (a :class:`~clinical_lstm.features.cohort.Cohort`, scored block by block); every
    threshold is chosen out of fold."""
    import torch

    from ..model.calibrate import choose_threshold
    from ..model.network import predict_logits, to_torch

    model = fitted.model
    snaps = fitted.snapshots
    end = snaps.end_rows(len(y))  # each training stay's end-of-stay row
    shipped = HYBRID_NAME if model.head is not None else MODEL_NAME
    names = [shipped] + [n for n in (MODEL_NAME, SUMMARIES_NAME) if n != shipped]
    oof_end = {n: fitted.rows_oof[n][end] for n in names}
    thresholds = {n: model.threshold if n == shipped else choose_threshold(y, oof_end[n], rule) for n in names}
    members_test = None
    if test:
        cohort, ev_y = test[0], test[1]
        with torch.inference_mode():
            lstm = cohort.apply(lambda t: predict_logits(model.networks, to_torch(t, torch.device("cpu"))))
            s = torch.from_numpy(cohort.summary)
            members_test = {"logistic regression": fitted.members.linear(s).numpy(),
                            "gradient boosting": fitted.members.trees(s).numpy()}
        at_end = member_risks(fitted, lstm, cohort.summary, names)
        at_end[shipped] = model.risk(cohort.apply(model.logits))  # the shipped model's own definition
    else:
        ev_y, at_end = y, oof_end
    probs = {n: (at_end[n], thresholds[n]) for n in names}
    base = baselines(y, fitted.fold, fitted.members_oof, rule, outcomes, ids, members_test,
                     (test[2], test[3]) if test else None, log)
    probs.update(base)
    evaluation = compare(probs, ev_y, on, n_boot, seed)
    if hours:
        rows = hour_rows(fitted, test[0] if test else None, hours)
        thresholds.update({n: t for n, (_, t) in base.items()})
        evaluation.hours = hourly(rows, ev_y, thresholds, n_boot, seed)
    return evaluation


def write(out_dir: Path, evaluation: Evaluation, cohort, catalogue, history=None, report=None,
          model=None, explain_stays: int = 0, seed: int = 0) -> dict:
    """Write the report folder; returns ``{name: path}``. ``cohort`` (:class:`~clinical_lstm.features.cohort.Cohort`) holds
    the evaluated stays, in the order of ``evaluation.y``. ``report`` (the quality report) is written with its
    stay ids: this folder is local, and only :data:`SAFE_TO_LOG` files are ever logged."""
    from .plots import plot_calibration, plot_differences, plot_pr, plot_roc
    from .subgroups import demographic_groups, subgroup_table

    out_dir = Path(out_dir)
    files = {"metrics": write_json(out_dir / "metrics.json", evaluation.to_dict())}
    y = evaluation.y
    curves = {name: (y, p) for name, (p, _) in evaluation.probs.items()}
    on = evaluation.label or f"{len(y):,} stays"  # every plot says what it was measured on
    files["roc"] = plot_roc(curves, out_dir / "roc.png", subtitle=on)
    files["pr"] = plot_pr(curves, out_dir / "pr.png", subtitle=on)
    files["calibration"] = plot_calibration(curves, out_dir / "calibration.png", subtitle=on)
    if evaluation.differences:
        files["comparison"] = plot_differences(evaluation.differences, out_dir / "comparison.png", subtitle=on)
    if evaluation.hours:
        from .plots import plot_hours

        files["hours"] = plot_hours(evaluation.hours, out_dir / "hours.png", on)
        files["hours_table"] = write_frame(hours_frame(evaluation), out_dir / "hours.csv")
    if model is not None and model.head is not None:
        files["stacking"] = write_frame(stacking_frame(model.head), out_dir / "stacking.csv")
    if all(n in catalogue.statics for n in ("Age", "Gender", "ICUType")):
        col = {n: cohort.raw_statics[:, catalogue.statics.index(n)] for n in ("Age", "Gender", "ICUType")}
        p, thr = evaluation.probs[evaluation.shipped]
        table = subgroup_table(y, p, thr, demographic_groups(col["Age"], col["Gender"], col["ICUType"]))
        files["subgroups"] = write_frame(pl.from_pandas(table), out_dir / "subgroups.csv")
    if history:
        files["history"] = write_frame(pl.DataFrame(history), out_dir / "history.csv")
    if report is not None:
        files["quality_report"] = report.write(out_dir / "quality_report.json")
        files["rejects"] = write_frame(report.rejects, out_dir / "rejects.csv")
    if model is not None and explain_stays > 0 and len(cohort):
        files.update(_global_importance(model, cohort, explain_stays, seed, out_dir))
    return files


def _global_importance(model, cohort, n: int, seed: int, out_dir: Path) -> dict:
    """Mean |SHAP| per variable over up to ``n`` evaluation stays (4 permutations each: an average over stays
    needs no more): a CSV and a bar plot (aggregates only)."""
    from ..explain.plots import plot_global
    from ..explain.shapley import shap_values, table_from

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(cohort), size=min(n, len(cohort)), replace=False))  # stays, read from disk
    t = cohort.tensors(pick)
    table = table_from(*shap_values(model, t, n_permutations=4), t.stay_ids)
    importance = (table.group_by("variable").agg(pl.col("contribution").abs().mean().alias("mean_abs_shap"))
                  .sort("mean_abs_shap", descending=True))
    return {"global_importance": plot_global(table, out_dir / "global_importance.png"),
            "global_importance_table": write_frame(importance, out_dir / "global_importance.csv")}
