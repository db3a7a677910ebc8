"""ROC, precision-recall and calibration figures comparing several models on the same stays.

matplotlib is imported only inside these functions (an explicit Agg canvas, no pyplot state), so importing
this module stays cheap and headless-safe. PNGs are written atomically.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from .metrics import _N_BINS, _ece_bins, check_binary_inputs


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


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    # An explicit Agg canvas on a bare Figure: no pyplot global state and no backend switch for callers
    # (e.g. a notebook) that have their own backend; works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    return fig, ax


def _save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a 150 dpi PNG atomically: a temp file in the same directory, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=150)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str]) -> Path:
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
    from sklearn.metrics import roc_curve

    data = _curve_inputs(curves)
    fig, ax = _new_axes(
        "ROC: in-hospital mortality", "1 \u2212 specificity (false positive rate)", "Sensitivity"
    )
    for name, y01, p in data:
        fpr, tpr, _ = roc_curve(y01, p)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {roc_auc_score(y01, p):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return _save_png(fig, path)


def plot_pr(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str]) -> Path:
    """Precision-recall curves with a prevalence line; legend gives each average precision.

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
    from sklearn.metrics import precision_recall_curve

    data = _curve_inputs(curves)
    fig, ax = _new_axes("Precision-recall: in-hospital mortality", "Recall (sensitivity)", "Precision (PPV)")
    for name, y01, p in data:
        precision, recall, _ = precision_recall_curve(y01, p)
        ap = average_precision_score(y01, p)
        ax.plot(recall, precision, lw=1.5, drawstyle="steps-post", label=f"{name} (AP {ap:.3f})")
    # A random ranking has precision = prevalence; one line unless the models saw different stays.
    prevalences = sorted({round(float(y01.mean()), 12) for _, y01, _ in data})
    for prev in prevalences:
        ax.axhline(prev, ls="--", lw=1, color="grey", label=f"prevalence {prev:.3f}")
    ax.legend(loc="upper right", fontsize="small")
    return _save_png(fig, path)


def plot_calibration(
    curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike[str], n_bins: int = _N_BINS
) -> Path:
    """Reliability diagram: observed mortality against mean predicted probability per bin.

    Parameters
    ----------
    curves : dict[str, tuple[array-like, array-like]]
        Model name -> ``(y, p)``, each shape (n,), both classes present.
    path : str or path-like
        PNG to write.
    n_bins : int, default 10
        Equal-width bins on [0, 1]; empty bins are not drawn.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    data = _curve_inputs(curves)
    fig, ax = _new_axes(
        "Calibration: in-hospital mortality", "Mean predicted probability", "Observed mortality"
    )
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="perfect calibration")
    for name, y01, p in data:
        bins = _ece_bins(p, n_bins)
        count = np.bincount(bins, minlength=n_bins)
        seen = count > 0
        mean_p = np.bincount(bins, weights=p, minlength=n_bins)[seen] / count[seen]
        frac = np.bincount(bins, weights=y01, minlength=n_bins)[seen] / count[seen]
        brier = float(np.mean((p - y01) ** 2))
        ax.plot(mean_p, frac, marker="o", ms=4, lw=1.5, label=f"{name} (Brier {brier:.3f})")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize="small")
    return _save_png(fig, path)
