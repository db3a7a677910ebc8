"""ROC, precision-recall and calibration figures comparing several models on the same stays, and a forest
plot of paired differences between models.

The curves are drawn by scikit-learn's ``RocCurveDisplay``, ``PrecisionRecallDisplay`` and
``CalibrationDisplay`` onto axes of a bare matplotlib ``Figure`` with an explicit Agg canvas (no pyplot
state, headless-safe). matplotlib and scikit-learn are imported only inside these functions, so importing
this module stays cheap. PNGs are written through :func:`clinical_lstm.files.atomic_path`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path
from .metrics import Estimate, check_binary_inputs
from .scores import _N_BINS

__all__ = ["plot_calibration", "plot_differences", "plot_pr", "plot_roc"]

# Axis labels for the difference plot: each metric in its own units.
_METRIC_LABELS = {
    "auroc": "AUROC",
    "auprc": "AUPRC (average precision)",
    "brier": "Brier score",
    "ece": "ECE (expected calibration error)",
    "hosmer_lemeshow": "Hosmer\u2013Lemeshow H",
    "min_se_ppv": "min(sensitivity, PPV)",
}


def _curve_inputs(curves: Mapping[str, tuple[Any, Any]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    if not isinstance(curves, Mapping) or len(curves) == 0:
        raise ValueError("curves must be a non-empty dict {model name: (y, p)}")
    out = []
    for name, pair in curves.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"curves[{name!r}] must be a (y, p) pair, got {type(pair).__name__}")
        y01, p = check_binary_inputs(pair[0], pair[1], name=f"p for {name!r}", both_classes=True)
        out.append((str(name), y01, p))
    return out


def _new_figure(figsize: tuple[float, float] = (5.5, 5.0)) -> Any:
    # An explicit Agg canvas on a bare Figure: no pyplot global state and no backend switch for callers
    # (e.g. a notebook) that have their own backend; works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _finish_axes(ax: Any, title: str, xlabel: str, ylabel: str, legend_loc: str) -> None:
    """Our titles, labels and limits over the Displays' defaults, and a legend with every labelled line."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize="small")


def _titled(fig: Any, subtitle: str) -> Any:
    """``fig`` with ``subtitle`` (which stays, out of fold or held out) under its title: a plot read on its own
    says what it was measured on."""
    if subtitle:
        above = fig.get_suptitle()
        fig.suptitle(f"{above}\n{subtitle}" if above else subtitle, fontsize="medium" if above else "small")
    return fig


def _save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a 150 dpi PNG atomically (parent folders are created)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    return Path(path)


def _roc_figure(curves: Mapping[str, tuple[Any, Any]]) -> Any:
    from sklearn.metrics import RocCurveDisplay

    data = _curve_inputs(curves)
    fig = _new_figure()
    ax = fig.add_subplot()
    for i, (name, y01, p) in enumerate(data, start=1):
        last = i == len(data)  # the chance diagonal once, with the last model: it ends the legend
        disp = RocCurveDisplay.from_predictions(y01, p, name=name, ax=ax, plot_chance_level=last)
        disp.line_.set(label=f"{name} (AUROC {disp.roc_auc:.3f})", linewidth=1.5)
        if last:
            disp.chance_level_.set(label="chance", color="grey", linestyle="--", linewidth=1)
    _finish_axes(
        ax,
        "ROC: in-hospital mortality",
        "1 \u2212 specificity (false positive rate)",
        "Sensitivity",
        "lower right",
    )
    ax.set_aspect("equal")
    return fig


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str], subtitle: str = "") -> Path:
    """ROC curves of several models on one figure; legend gives each AUROC.

    Parameters
    ----------
    curves : dict[str, tuple[array-like, array-like]]
        Model name -> ``(y, p)``, each shape (n,), both classes present.
    path : str or path-like
        PNG to write (parent directories are created).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return _save_png(_titled(_roc_figure(curves), subtitle), path)


def _pr_figure(curves: Mapping[str, tuple[Any, Any]]) -> Any:
    from sklearn.metrics import PrecisionRecallDisplay

    data = _curve_inputs(curves)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, y01, p in data:
        disp = PrecisionRecallDisplay.from_predictions(y01, p, name=name, ax=ax)
        disp.line_.set_label(f"{name} (AUPRC {disp.average_precision:.3f})")
        disp.line_.set_linewidth(1.5)
    # A random ranking has precision = prevalence; one line unless the models saw different stays.
    for prev in sorted({round(float(y01.mean()), 12) for _, y01, _ in data}):
        ax.axhline(prev, ls="--", lw=1, color="grey", label=f"prevalence {prev:.3f}")
    _finish_axes(
        ax,
        "Precision-recall: in-hospital mortality",
        "Recall (sensitivity)",
        "Precision (PPV)",
        "upper right",
    )
    return fig


def plot_pr(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str], subtitle: str = "") -> Path:
    """Precision-recall curves with a prevalence line; legend gives each AUPRC (average precision).

    Parameters
    ----------
    curves : dict[str, tuple[array-like, array-like]]
        Model name -> ``(y, p)``, each shape (n,), both classes present.
    path : str or path-like
        PNG to write.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return _save_png(_titled(_pr_figure(curves), subtitle), path)


def _calibration_figure(curves: Mapping[str, tuple[Any, Any]], n_bins: int) -> Any:
    from sklearn.calibration import CalibrationDisplay

    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    data = _curve_inputs(curves)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="perfect calibration")
    for name, y01, p in data:
        disp = CalibrationDisplay.from_predictions(
            y01, p, n_bins=int(n_bins), name=name, ax=ax, ref_line=False
        )
        brier = float(np.mean((p - y01) ** 2))
        disp.line_.set(label=f"{name} (Brier {brier:.3f})", markersize=4, linewidth=1.5)
    _finish_axes(
        ax,
        "Calibration: in-hospital mortality",
        "Mean predicted probability",
        "Observed mortality",
        "upper left",
    )
    ax.set_aspect("equal")
    return fig


def plot_calibration(
    curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str], n_bins: int = _N_BINS, subtitle: str = ""
) -> Path:
    """Reliability diagram: observed mortality against mean predicted probability per bin.

    Parameters
    ----------
    curves : dict[str, tuple[array-like, array-like]]
        Model name -> ``(y, p)``, each shape (n,), both classes present.
    path : str or path-like
        PNG to write.
    n_bins : int, default 10
        Equal-width bins on [0, 1] (scikit-learn's ``calibration_curve``, ``strategy="uniform"``); empty
        bins are not drawn.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return _save_png(_titled(_calibration_figure(curves, n_bins), subtitle), path)


def _differences_figure(diffs: Mapping[str, Mapping[str, Estimate]], metrics: Sequence[str]) -> Any:
    if not isinstance(diffs, Mapping) or len(diffs) == 0:
        raise ValueError(
            "diffs must be a non-empty dict {comparison: {metric: Estimate}}, e.g. "
            "{'masked LSTM \u2212 logistic regression': paired_difference(y, p_lstm, p_lr, t_lstm, t_lr)}"
        )
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric, e.g. ('auroc', 'auprc')")
    for label, row in diffs.items():
        missing = [m for m in metrics if not isinstance(row, Mapping) or not isinstance(row.get(m), Estimate)]
        if missing:
            have = sorted(row) if isinstance(row, Mapping) else type(row).__name__
            raise ValueError(
                f"diffs[{label!r}] has no Estimate for {missing}; it has {have}. Pass metrics= a subset of "
                "what paired_difference returned"
            )
    rows = np.arange(len(diffs))[::-1]  # first comparison at the top
    fig = _new_figure((1.5 + 3.2 * len(metrics), 1.2 + 0.5 * len(diffs)))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        est = [row[metric] for row in diffs.values()]
        value = np.array([e.value for e in est])
        # A NaN bound (no usable replicate) draws the point alone.
        err = np.array([[e.value - e.lower for e in est], [e.upper - e.value for e in est]])  # (2, rows)
        err = np.clip(np.nan_to_num(err), 0.0, None)
        ax.errorbar(value, rows, xerr=err, fmt="o", color="C0", ecolor="C0", capsize=3, ms=5, lw=1.5)
        ax.axvline(0.0, color="grey", ls="--", lw=1)
        ax.set_xlabel(f"Difference in {_METRIC_LABELS.get(metric, metric)}")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(rows, [str(label) for label in diffs])
    axes[0].set_ylim(-0.6, len(diffs) - 0.4)
    fig.suptitle("Paired differences with 95% bootstrap intervals")
    return fig


def plot_differences(
    diffs: Mapping[str, Mapping[str, Estimate]],
    path: str | os.PathLike[str],
    metrics: Sequence[str] = ("auroc", "auprc"),
    subtitle: str = "",
) -> Path:
    """Forest plot of paired differences: one row per comparison, one panel per metric.

    Parameters
    ----------
    diffs : dict[str, dict[str, Estimate]]
        Row label (e.g. ``"masked LSTM − logistic regression"``) -> the output of
        :func:`clinical_lstm.evaluation.metrics.paired_difference` for that pair; rows are drawn top to bottom in
        dict order.
    path : str or path-like
        PNG to write (parent directories are created).
    metrics : sequence of str, default ("auroc", "auprc")
        Metrics to draw, one panel each; every row must hold an Estimate for each. The x axis is the
        difference in that metric's own units, with a dashed line at 0 (no difference).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        ``diffs`` is empty, ``metrics`` is empty, or a row lacks one of ``metrics``.
    """
    return _save_png(_titled(_differences_figure(diffs, metrics), subtitle), path)


def plot_hours(hours: Mapping[float, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Metric against hour since admission, one line per model with its 95 % bootstrap band: AUROC, AUPRC, and
    mean risk against the event rate (calibration over the stay). ``hours`` maps an hour to the
    :class:`~clinical_lstm.evaluation.report.Evaluation` of the risks from the rows up to it."""
    return _save_png(_hours_figure(hours, title), path)


def _hours_figure(hours: Mapping[float, Any], title: str = "") -> Any:
    if not hours:
        raise ValueError("hours must map at least one hour to its evaluation")
    hs = sorted(hours)
    names = list(hours[hs[0]].metrics)
    fig = _new_figure((13.5, 4.2))
    axes = fig.subplots(1, 3)
    for ax, key, label in ((axes[0], "auroc", "AUROC"), (axes[1], "auprc", "AUPRC")):
        for name in names:
            est = [hours[h].metrics[name][key] for h in hs]
            line, = ax.plot(hs, [e.value for e in est], marker="o", lw=2.2 if name == names[0] else 1.2,
                            label=name + (" (shipped)" if name == names[0] else ""))
            ax.fill_between(hs, [e.lower for e in est], [e.upper for e in est], color=line.get_color(), alpha=0.12)
        ax.set(xlabel="hours since admission (rows up to then)", ylabel=label, title=f"{label} at every hour")
        ax.grid(alpha=0.3)
    ax = axes[2]
    rate = [float(hours[h].y.mean()) for h in hs]
    ax.plot(hs, rate, color="black", lw=2.5, ls="--", label="event rate")
    top = max(rate)
    for name in names:
        mean = [float(hours[h].probs[name][0].mean()) for h in hs]
        top = max(top, *mean)
        ax.plot(hs, mean, marker="o", label=name)
    ax.set(xlabel="hours since admission (rows up to then)", ylabel="mean risk",
           title="mean risk vs event rate", ylim=(0, 1.25 * top))
    ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", loc="lower right")
    axes[2].legend(fontsize="x-small", loc="lower right")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig
