"""The comparison a report prints: every model's metrics with intervals on the same stays, the shipped model's
paired differences to each other row with a verdict, and the every-hour table (:class:`Evaluation`, :func:`compare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

MODEL_NAME = "masked LSTM"  # the network alone (the shipped model when it has no summary head)
HYBRID_NAME = "masked LSTM + summaries"  # the default shipped model: the networks stacked with the summary members
SUMMARIES_NAME = "summaries-only stack"  # the summary members stacked without the networks: what they add is the
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
