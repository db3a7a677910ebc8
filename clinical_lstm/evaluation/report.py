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

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from ..files import write_frame, write_json

MODEL_NAME = "masked LSTM"  # the network alone (the shipped model when it has no summary head)
HYBRID_NAME = "masked LSTM + summaries"  # the default shipped model: the networks stacked with the summary members
SUMMARIES_NAME = "summaries-only stack"  # the summary members stacked without the networks: what they add is the
#                                          shipped model's lead over this row
#: Report files free of stay identifiers: the only ones tracking logs.
SAFE_TO_LOG = ("metrics.json", "roc.png", "pr.png", "calibration.png", "comparison.png", "subgroups.csv",
               "history.csv", "global_importance.png", "global_importance.csv", "hours.png", "hours.csv",
               "stacking.csv")
REPORT_FILES = (*SAFE_TO_LOG, "quality_report.json", "rejects.csv")  # every file :func:`write` may write
KEYS = ("auroc", "auprc", "brier", "ece", "min_se_ppv")


@dataclass
class Evaluation:
    """What the model and the baselines scored on the evaluation stays."""

    on: str  # which stays, in words
    y: np.ndarray  # (N,) outcomes of the evaluation stays
    probs: dict  # model name -> ((N,) probabilities, alert threshold); the shipped model first
    metrics: dict  # model name -> metric -> Estimate
    differences: dict  # baseline name -> metric -> Estimate of (model - baseline)
    hours: dict = field(default_factory=dict)  # hour -> Evaluation of the risks from the rows up to that hour
    label: str = ""  # which stays, out of fold or held out, in a few words: every plot's subtitle
    in_training: int | None = None  # evaluate: how many evaluated stays were among the model's training stays

    @property
    def shipped(self) -> str:
        """The name of the shipped model (the first row)."""
        return next(iter(self.probs))

    def table(self) -> str:
        """Plain text: each model's metrics with intervals (the shipped row marked), then the paired differences,
        each said in words: measurably better, measurably worse, or no measurable difference (interval on 0)."""
        notes: dict[str, None] = {}
        names = [f"{n} (shipped)" if n == self.shipped else n for n in self.metrics]
        width = max(len(n) for n in [*names, *(f"  {d}" for d in self.differences), "model"]) + 2

        def cells(row: dict) -> str:  # a cell holds the estimate; its note (the same for a whole block) goes below
            notes.update({row[k].note: None for k in KEYS if k in row and row[k].note})
            out = ""
            for k in KEYS:
                text = "-"
                if k in row:
                    text = str(replace(row[k], note=""))
                    if on_bound(row[k]):
                        text += ON_BOUND_MARK
                        notes[ON_BOUND_NOTE] = None
                out += f"{text:>24}"
            return out

        lines = [f"evaluated on {self.on}", f"{'model':<{width}}" + "".join(f"{k:>24}" for k in KEYS)]
        for name, m in zip(names, self.metrics.values(), strict=True):
            lines.append(f"{name:<{width}}" + cells(m))
        if self.differences:
            lines.append(f"paired difference, {self.shipped} minus (95 % paired bootstrap interval):")
            for name, d in self.differences.items():
                lines.append(f"{'  ' + name:<{width}}" + cells(d))
            lines += [f"  vs {name}: {verdict(d)}" for name, d in self.differences.items()]
        lines += [f"note: {n}" for n in notes]
        if self.hours:
            lines += ["", self.hours_table()]
        return "\n".join(lines)

    def hours_table(self) -> str:
        """Plain text: AUROC / AUPRC / mean risk of every model at every reported hour, then the shipped model's
        paired lead over the summaries-only stack (what the networks add) there."""
        names = list(next(iter(self.hours.values())).metrics)
        labels = [f"{n} (shipped)" if i == 0 else n for i, n in enumerate(names)]
        width = max(24, *(len(n) + 2 for n in labels))
        lines = ["every hour: the risk from the rows up to that hour, on the stays whose grid reaches it "
                 "(AUROC / AUPRC / mean risk; event rate in the header)", f"{'model':<{width}}" + "".join(
                     f"{f'{h:g} h (n {len(e.y)}, {e.y.mean():.3f})':>24}" for h, e in self.hours.items())]
        for name, label in zip(names, labels, strict=True):
            lines.append(f"{label:<{width}}" + "".join(
                f"{_cell(e.metrics[name]['auroc'].value, e.metrics[name]['auprc'].value, e.probs[name][0].mean()):>24}"
                for e in self.hours.values()))
        for other in (SUMMARIES_NAME, MODEL_NAME):
            if other in names and other != names[0]:
                lines.append(f"lead over {other} (AUROC, AUPRC; 95 % paired interval):")
                for h, e in self.hours.items():
                    d = e.differences[other]
                    lines.append(f"  {f'{h:g} h':>5}  AUROC {str(d['auroc']):<22} AUPRC {str(d['auprc']):<22} "
                                 f"{verdict(d, ('auroc', 'auprc'))}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = {"evaluated_on": self.on, "shipped": self.shipped,
               "models": {n: {k: e.to_dict() for k, e in m.items()} for n, m in self.metrics.items()},
               "differences": {n: {k: e.to_dict() for k, e in d.items()} for n, d in self.differences.items()}}
        if self.in_training is not None:
            out["stays_in_training"] = self.in_training
        if self.hours:
            out["hours"] = {f"{h:g}": {"stays": len(e.y), "deaths": int(e.y.sum()), "event_rate": float(e.y.mean()),
                                       "mean_risk": {n: float(p.mean()) for n, (p, _) in e.probs.items()},
                                       **{k: v for k, v in e.to_dict().items() if k in ("models", "differences")}}
                            for h, e in self.hours.items()}
            out["hours_rule"] = HOURS_RULE
        return out


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


ON_BOUND_MARK = " \u2020"
ON_BOUND_NOTE = ("\u2020 the point sits on a bound of its interval: the bias-corrected bootstrap interval (ECE and "
                 "Hosmer-Lemeshow are biased upwards under resampling, so it shifts down) did not contain the point "
                 "and was widened to it; read the other bound as the interval's width")
LOWER_IS_BETTER = ("brier", "ece")
METRIC_WORDS = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "ece": "ECE", "min_se_ppv": "min(Se, +P)"}


def on_bound(e) -> bool:
    """Whether an interval was widened to contain its point (the point equals a bound of a non-empty interval)."""
    return bool(e.lower < e.upper and (e.value == e.lower or e.value == e.upper))


def verdict(diffs: dict, keys=KEYS) -> str:
    """A paired difference (shipped minus other) in words: which metrics are measurably better or worse (the 95 %
    interval excludes 0; for Brier and ECE lower is better) and which show no measurable difference."""
    better, worse, same = [], [], []
    for k in keys:
        if k not in diffs or diffs[k].lower != diffs[k].lower:  # NaN: nothing to say
            continue
        e, sign = diffs[k], -1 if k in LOWER_IS_BETTER else 1
        if e.lower > 0 or e.upper < 0:
            (better if sign * e.value > 0 else worse).append(METRIC_WORDS[k])
        else:
            same.append(METRIC_WORDS[k])
    said = [f"better on {', '.join(better)}" if better else "", f"worse on {', '.join(worse)}" if worse else "",
            f"no measurable difference on {', '.join(same)} (interval includes 0)" if same else ""]
    return "; ".join(x for x in said if x) or "no interval"


HOURS_RULE = ("at hour h each model scores a stay from its rows up to h (the risk a stream or trajectory shows at "
              "h); a stay counts at h when its grid reaches h, i.e. it has an observation after h - 1 bin")


def _cell(auroc: float, auprc: float, mean: float) -> str:
    return f"{auroc:.3f} / {auprc:.3f} / {mean:.3f}"


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


def hour_rows(fitted, test=None, hours=()) -> dict:
    """``{hour: (stays (n,), {model: (n,) calibrated risk})}`` at each reported hour: every row of the report
    (the shipped model, the networks alone, the summaries-only stack, each summary member). Out of fold from
    the training snapshots, or on the test cohort ``test`` (built with ``landmarks=hours``, no final column)."""
    model = fitted.model
    shipped = HYBRID_NAME if model.head is not None else MODEL_NAME
    order = [shipped] + [n for n in (MODEL_NAME, SUMMARIES_NAME, "logistic regression", "gradient boosting")
                         if n != shipped]
    out = {}
    if test is None:
        snaps = fitted.snapshots
        for h in hours:
            rows = np.flatnonzero(np.isclose(snaps.hour, h))  # report hours are landmarks: one row per stay
            if len(rows):
                out[h] = (snaps.stay[rows], {n: fitted.rows_oof[n][rows] for n in order})
        return out
    lstm, summary, step = step_logits_at(model, test), test.landmark_summary, test.landmark_step
    for j, h in enumerate(hours):
        stays = np.flatnonzero(step[:, j] >= 0)
        if not len(stays):
            continue
        out[h] = (stays, member_risks(fitted, lstm[stays, j], summary[stays, j], order))
    return out


def step_logits_at(model, cohort) -> np.ndarray:
    """(N, H) the networks' mean step logit of each stay of ``cohort`` at its ``landmark_step`` bins (NaN where -1),
    block by block."""
    import torch

    from ..model.network import predict_logits, to_torch

    parts, start = [], 0
    for t in cohort.blocks():
        at = cohort.landmark_step[start:start + len(t)]
        start += len(t)
        with torch.inference_mode():
            steps = predict_logits(model.networks, to_torch(t, torch.device("cpu")), steps=True)  # (b, T)
        parts.append(np.where(at >= 0, np.take_along_axis(steps, np.maximum(at, 0), axis=1), np.nan))
    return np.concatenate(parts) if parts else np.zeros(cohort.landmark_step.shape, np.float32)


def shipped_hour_risks(model, cohort, hours) -> dict:
    """``{hour: (stays, {name: risk})}`` of a trained model (``evaluate``) at each hour, from the cohort's landmark
    snapshots (built with ``landmarks=hours``, no final column): the shipped model and, from the bundle's
    ``references``, the networks alone, the summaries-only stack and the two snapshot members."""
    from types import SimpleNamespace

    from ..model.calibrate import calibrator_from_dict

    lstm, summary, step = step_logits_at(model, cohort), cohort.landmark_summary, cohort.landmark_step
    shipped = HYBRID_NAME if model.head is not None else MODEL_NAME
    refs = model.references or {}
    order = [shipped]
    if "lstm_calibrator" in refs and model.head is not None:
        order.append(MODEL_NAME)
    if "summaries_calibrator" in refs and model.head is not None:
        order += [SUMMARIES_NAME, "logistic regression", "gradient boosting"]
    fitted = SimpleNamespace(
        model=model, members=model.head,
        lstm_calibrator=calibrator_from_dict(refs["lstm_calibrator"]) if "lstm_calibrator" in refs else None,
        summaries_calibrator=calibrator_from_dict(refs["summaries_calibrator"]) if "summaries_calibrator" in refs
        else None,
        summaries_stack=(np.asarray(refs.get("summaries_weights", [])), np.asarray(refs.get("summaries_bias", []))))
    out = {}
    for j, h in enumerate(hours):
        stays = np.flatnonzero(step[:, j] >= 0)
        if not len(stays):
            continue
        if model.head is None:
            out[h] = (stays, {shipped: model.risk(lstm[stays, j])})
        else:
            out[h] = (stays, member_risks(fitted, lstm[stays, j], summary[stays, j], order))
    return out


def member_risks(fitted, lstm: np.ndarray, summary: np.ndarray, order) -> dict:
    """``{model: (n,) calibrated risk}`` of each report row from the networks' logit and the summaries."""
    import torch
    from scipy.special import expit

    from ..model.head import stack_logit

    model, head = fitted.model, fitted.members
    with torch.inference_mode():
        s = torch.from_numpy(np.ascontiguousarray(summary, np.float32))
        logits = [z.numpy().astype(np.float64) for z in head.member_logits(s)]  # in head.groups order
        lin, trees = logits[0], logits[1]
        shipped = head(torch.from_numpy(lstm.astype(np.float32)), s).numpy() if model.head is not None else lstm
    hour = summary[:, -1]
    knots = head.knots.numpy()
    risks = {HYBRID_NAME: lambda: model.risk(shipped), MODEL_NAME: lambda: fitted.lstm_calibrator.predict(lstm),
             SUMMARIES_NAME: lambda: fitted.summaries_calibrator.predict(
                 stack_logit(np.column_stack(logits), hour, *fitted.summaries_stack, knots)),
             "logistic regression": lambda: expit(lin), "gradient boosting": lambda: expit(trees)}
    return {n: risks[n]() for n in order}


def hourly(rows: dict, y: np.ndarray, thresholds: dict, n_boot: int, seed: int) -> dict:
    """``{hour: Evaluation}`` from :func:`hour_rows` (thresholds: each model's end-of-stay alert threshold)."""
    out = {}
    for h, (stays, risks) in rows.items():
        yh = y[stays]
        if yh.min() == yh.max():  # one class only: no ranking metric at this hour
            continue
        out[h] = compare({n: (p, thresholds.get(n, 0.5)) for n, p in risks.items()}, yh, f"{len(stays)} stays at "
                         f"{h:g} h", n_boot, seed)
    return out


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


def compare(probs: dict, y: np.ndarray, on: str, n_boot: int, seed: int) -> Evaluation:
    """Metrics of every model and paired differences shipped model − each other row (the first of ``probs`` is
    the shipped model)."""
    import warnings

    from .metrics import compare_models

    with warnings.catch_warnings(record=True) as caught:  # one small-class warning per report, not per model
        warnings.simplefilter("always")
        metrics, diffs = compare_models(y, probs, n_boot=n_boot, seed=seed)
    for message in dict.fromkeys(str(w.message) for w in caught):
        warnings.warn(message, UserWarning, stacklevel=2)
    return Evaluation(on, y, probs, metrics, diffs)


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


def hours_frame(evaluation: Evaluation) -> pl.DataFrame:
    """The every-hour table in long form: ``hour, model, metric, value, lower, upper`` (metrics with intervals,
    the mean risk and event rate as points, and ``lead over <model>`` rows of paired differences)."""
    rows = []
    for h, e in evaluation.hours.items():
        for name, m in e.metrics.items():
            rows += [(h, name, k, est.value, est.lower, est.upper) for k, est in m.items()]
            rows.append((h, name, "mean_risk", float(e.probs[name][0].mean()), None, None))
        rows.append((h, "observed", "event_rate", float(e.y.mean()), None, None))
        rows.append((h, "observed", "stays", float(len(e.y)), None, None))
        for name, d in e.differences.items():
            rows += [(h, f"lead over {name}", k, est.value, est.lower, est.upper) for k, est in d.items()]
    return pl.DataFrame(rows, schema={"hour": pl.Float64, "model": pl.String, "metric": pl.String,
                                      "value": pl.Float64, "lower": pl.Float64, "upper": pl.Float64}, orient="row")


def stacking_frame(head) -> pl.DataFrame:
    """The stacking weights of the shipped head at each knot (linear in between): ``hour, lstm``, one column per
    summary member, ``bias``."""
    from ..model.head import MEMBER_NAMES

    w, b = head.stack.numpy().astype(float), head.bias.numpy().astype(float)
    return pl.DataFrame({"hour": head.knots.numpy().astype(float), "lstm": w[:, 0],
                         **{MEMBER_NAMES[g]: w[:, 1 + i] for i, g in enumerate(head.groups)}, "bias": b})


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
