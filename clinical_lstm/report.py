"""The comparison a trained model is judged by: the same stays, the same folds, paired intervals.

* :func:`baseline_probabilities` -- logistic regression and gradient boosting on summary features, and SAPS-I,
  cross-fitted on **the model's own folds**: out-of-fold probabilities for every training stay, and for a
  separate test set the mean of the k fold models (as the model's k networks are averaged).
* :func:`compare` -- every model's metrics with 95 % bootstrap intervals, and the paired difference
  model − each baseline (the same resampled stays for both), so a reader sees whether a lead is real.
* :func:`write` -- the report folder: ``metrics.json``, the plots, the subgroup table, the training history,
  the global SHAP importance, and the quality report. Only :data:`SAFE_TO_LOG` files may leave the machine
  (MLflow): the quality report and rejects name stays and stay local.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .files import write_frame, write_json

MODEL_NAME = "masked LSTM"
#: Report files free of stay identifiers: the only ones tracking logs.
SAFE_TO_LOG = ("metrics.json", "roc.png", "pr.png", "calibration.png", "comparison.png", "subgroups.csv",
               "history.csv", "global_importance.png", "global_importance.csv")
KEYS = ("auroc", "auprc", "brier", "ece", "min_se_ppv")


@dataclass
class Evaluation:
    """What the model and the baselines scored on the evaluation stays."""

    on: str  # which stays, in words
    y: np.ndarray  # (N,) outcomes of the evaluation stays
    probs: dict  # model name -> ((N,) probabilities, alert threshold)
    metrics: dict  # model name -> metric -> Estimate
    differences: dict  # baseline name -> metric -> Estimate of (model - baseline)

    def table(self) -> str:
        """Plain text: each model's metrics with intervals, then the paired differences."""
        lines = [f"evaluated on {self.on}", f"{'model':<22}" + "".join(f"{k:>24}" for k in KEYS)]
        for name, m in self.metrics.items():
            lines.append(f"{name:<22}" + "".join(f"{str(m[k]):>24}" if k in m else f"{'-':>24}" for k in KEYS))
        if self.differences:
            lines.append(f"paired difference, {MODEL_NAME} minus (95 % paired bootstrap interval):")
            for name, d in self.differences.items():
                lines.append(f"  {name:<20}" + "".join(f"{str(d[k]):>24}" if k in d else f"{'-':>24}" for k in KEYS))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"evaluated_on": self.on,
                "models": {n: {k: e.to_dict() for k, e in m.items()} for n, m in self.metrics.items()},
                "differences": {n: {k: e.to_dict() for k, e in d.items()} for n, d in self.differences.items()}}


def baseline_probabilities(clean, ids, y, fold, outcomes, catalogue, rule: str, seed: int = 0,
                           test: tuple | None = None, log=print) -> dict:
    """``{name: (probabilities, threshold)}`` of each baseline, cross-fitted on the model's folds.

    ``test = (clean, ids, outcomes)`` of separate test data: probabilities are then the mean over the fold
    models on the test stays; otherwise they are out of fold on the training stays. Thresholds always come
    from the out-of-fold probabilities, as the model's does.
    """
    from .baselines import SummaryBaselines, saps_probability, saps_scores, summary_features
    from .calibrate import choose_threshold

    X, _ = summary_features(clean, catalogue, ids)
    X_test = summary_features(test[0], catalogue, test[1])[0] if test else None
    saps, saps_test = saps_scores(outcomes, ids), (saps_scores(test[2], test[1]) if test else None)
    k_folds = int(fold.max()) + 1
    oof: dict[str, np.ndarray] = {}
    on_test: dict[str, list] = {}
    for k in range(k_folds):
        fit, held = fold != k, fold == k
        base = SummaryBaselines(seed=seed).fit(X[fit], y[fit])
        parts = {name: (p, base.predict_proba(X_test)[name] if test else None)
                 for name, p in base.predict_proba(X[held]).items()}
        if saps is not None:
            parts["SAPS-I"] = (saps_probability(saps[fit], y[fit], saps[held]),
                               saps_probability(saps[fit], y[fit], saps_test) if test and saps_test is not None
                               else None)
        for name, (p_held, p_test) in parts.items():
            oof.setdefault(name, np.zeros(len(y)))[held] = p_held
            on_test.setdefault(name, []).append(p_test)
    if saps is None:
        log("SAPS-I baseline skipped: the outcomes carry no SAPS-I scores")
    out = {}
    for name, p in oof.items():
        threshold = choose_threshold(y, p, rule)
        if not test:
            out[name] = (p, threshold)
        elif all(t is not None for t in on_test[name]):
            out[name] = (np.mean(on_test[name], axis=0), threshold)
    return out


def compare(probs: dict, y: np.ndarray, on: str, n_boot: int, seed: int) -> Evaluation:
    """Metrics of every model and paired differences model − baseline (``probs[MODEL_NAME]`` first)."""
    from .metrics import evaluate, paired_difference

    metrics = {name: evaluate(y, p, thr, n_boot=n_boot, seed=seed) for name, (p, thr) in probs.items()}
    p_model, thr_model = probs[MODEL_NAME]
    diffs = {name: paired_difference(y, p_model, p, thr_model, thr, n_boot=n_boot, seed=seed)
             for name, (p, thr) in probs.items() if name != MODEL_NAME}
    return Evaluation(on, y, probs, metrics, diffs)


def write(out_dir: Path, evaluation: Evaluation, clean, ids, catalogue, history=None, report=None,
          model=None, explain_stays: int = 0, seed: int = 0) -> dict:
    """Write the report folder; returns ``{name: path}``. ``report`` (the quality report) is written with its
    stay ids: this folder is local, and only :data:`SAFE_TO_LOG` files are ever logged."""
    from .grid import to_grid
    from .metrics import demographic_groups, subgroup_table
    from .plots import plot_calibration, plot_differences, plot_pr, plot_roc

    out_dir = Path(out_dir)
    files = {"metrics": write_json(out_dir / "metrics.json", evaluation.to_dict())}
    y = evaluation.y
    curves = {name: (y, p) for name, (p, _) in evaluation.probs.items()}
    files["roc"] = plot_roc(curves, out_dir / "roc.png")
    files["pr"] = plot_pr(curves, out_dir / "pr.png")
    files["calibration"] = plot_calibration(curves, out_dir / "calibration.png")
    if evaluation.differences:
        files["comparison"] = plot_differences(evaluation.differences, out_dir / "comparison.png")
    if all(n in catalogue.statics for n in ("Age", "Gender", "ICUType")):
        statics = to_grid(clean, ids, catalogue).statics
        col = {n: statics[:, catalogue.statics.index(n)] for n in ("Age", "Gender", "ICUType")}
        p, thr = evaluation.probs[MODEL_NAME]
        table = subgroup_table(y, p, thr, demographic_groups(col["Age"], col["Gender"], col["ICUType"]))
        files["subgroups"] = write_frame(pl.from_pandas(table), out_dir / "subgroups.csv")
    if history:
        files["history"] = write_frame(pl.DataFrame(history), out_dir / "history.csv")
    if report is not None:
        files["quality_report"] = report.write(out_dir / "quality_report.json")
        files["rejects"] = write_frame(report.rejects, out_dir / "rejects.csv")
    if model is not None and explain_stays > 0 and len(ids):
        files.update(_global_importance(model, clean, ids, explain_stays, seed, out_dir))
    return files


def _global_importance(model, clean, ids, n: int, seed: int, out_dir: Path) -> dict:
    """Mean |SHAP| per variable over up to ``n`` evaluation stays: a CSV and a bar plot (aggregates only)."""
    from .explain import shap_values, table_from
    from .explain_plots import plot_global

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(np.asarray(ids), size=min(n, len(ids)), replace=False))
    t = model.tensors(clean.filter(pl.col("stay_id").is_in(pick.tolist())), pick)
    table = table_from(*shap_values(model, t), t.stay_ids)
    importance = (table.group_by("variable").agg(pl.col("contribution").abs().mean().alias("mean_abs_shap"))
                  .sort("mean_abs_shap", descending=True))
    return {"global_importance": plot_global(table, out_dir / "global_importance.png"),
            "global_importance_table": write_frame(importance, out_dir / "global_importance.csv")}
