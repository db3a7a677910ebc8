"""Point metrics of mortality probabilities on one set of stays: AUROC, AUPRC, Brier, expected calibration error,
Hosmer-Lemeshow and the alert's min(sensitivity, PPV) at a threshold (a stay is flagged when ``p >= threshold``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checks import _check_threshold, check_binary_inputs

BOOTSTRAP_METRICS = ("auroc", "auprc", "brier", "ece", "hosmer_lemeshow", "min_se_ppv")
METRIC_KEYS = (*BOOTSTRAP_METRICS, "sensitivity", "ppv", "prevalence", "n")
DIFFERENCE_METRICS = ("auroc", "auprc", "brier", "ece", "min_se_ppv")  # a difference of H-L means nothing
_N_BINS = 10  # ECE bins
_N_GROUPS = 10  # Hosmer-Lemeshow risk groups


def expected_calibration_error(y: Any, p: Any, n_bins: int = _N_BINS) -> float:
    """ECE: ``sum_b (n_b / n) * |mean(y_b) - mean(p_b)|`` over equal-width bins of ``p``.

    Bin ``b`` is ``[b / n_bins, (b + 1) / n_bins)``; ``p == 1`` falls in the last bin. Empty bins add 0.

    Parameters
    ----------
    y, p : array-like, shape (n,)
        0/1 outcomes and probabilities.
    n_bins : int, default 10
    """
    y01, p = check_binary_inputs(y, p)
    bins = _ece_bins(p, n_bins)
    # n_b/n * |sum_y/n_b - sum_p/n_b| == |sum_y - sum_p| / n, which avoids dividing by empty bins.
    diff = np.bincount(bins, weights=y01 - p, minlength=n_bins)
    return float(np.abs(diff).sum() / len(p))


def _ece_bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.minimum(np.floor(p * n_bins).astype(np.int64), n_bins - 1)


def hosmer_lemeshow(y: Any, p: Any, n_groups: int = _N_GROUPS) -> float:
    """Hosmer-Lemeshow H statistic over risk groups formed from quantiles of ``p``.

    Edges are ``np.quantile(p, linspace(0, 1, n_groups + 1))`` (linear interpolation) and a stay's group
    is the number of inner edges strictly below its ``p``: right-closed intervals ``(edge[g], edge[g+1]]``,
    the first also holding the minimum. Tied scores therefore always share a group; when ties collapse
    edges there are fewer, larger groups, and empty groups are skipped. (This is ``pandas.qcut(p, 10,
    duplicates="drop")`` except when 10% or more of the stays share the minimum: that atom is then a group
    of its own rather than merged with the next interval.) The statistic is
    ``sum_g (O_g - E_g)^2 / (E_g * (1 - E_g / n_g))`` with ``O_g`` deaths, ``E_g = sum p`` and ``n_g``
    stays in the group. A group whose probabilities are all 0 or all 1 has zero variance: it adds 0
    when ``O_g == E_g`` and ``inf`` otherwise (an event that was predicted impossible happened).

    Parameters
    ----------
    y, p : array-like, shape (n,)
        0/1 outcomes and probabilities.
    n_groups : int, default 10
    """
    y01, p = check_binary_inputs(y, p)
    inner = np.quantile(p, np.linspace(0.0, 1.0, n_groups + 1))[1:-1]
    group = np.searchsorted(inner, p, side="left")  # number of inner edges strictly below p
    n_g = np.bincount(group, minlength=n_groups).astype(float)
    obs = np.bincount(group, weights=y01, minlength=n_groups)
    exp = np.bincount(group, weights=p, minlength=n_groups)
    return float(_hl_terms(n_g, obs, exp).sum())


def _hl_terms(n_g: np.ndarray, obs: np.ndarray, exp: np.ndarray) -> np.ndarray:
    """Per-group H-L terms, any shape; 0 for empty groups (see :func:`hosmer_lemeshow`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = exp * (1.0 - exp / n_g)
        term = (obs - exp) ** 2 / denom
    degenerate = np.where(np.isclose(obs, exp, rtol=0.0, atol=1e-9), 0.0, np.inf)
    term = np.where(denom > 0, term, degenerate)
    return np.where(n_g > 0, term, 0.0)


def _alert_counts(y01: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """Sensitivity, PPV and min(Se, PPV) when flagging ``p >= threshold``.

    PPV is NaN when nothing is flagged; min(Se, PPV) is then 0 because sensitivity is 0. Everything is
    NaN when there are no deaths (sensitivity undefined).
    """
    flag = p >= threshold
    n_pos, n_flag = float(y01.sum()), float(flag.sum())
    tp = float(y01[flag].sum())
    sens = tp / n_pos if n_pos > 0 else float("nan")
    ppv = tp / n_flag if n_flag > 0 else float("nan")
    if n_pos == 0:
        return sens, ppv, float("nan")
    return sens, ppv, (0.0 if n_flag == 0 else min(sens, ppv))


def binary_metrics(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """Point estimates of discrimination, calibration and alert quality.

    Parameters
    ----------
    y : array-like, shape (n,)
        0/1 in-hospital death.
    p : array-like, shape (n,)
        Predicted probabilities in [0, 1].
    threshold : float
        A stay is flagged when ``p >= threshold``.

    Returns
    -------
    dict[str, float]
        Keys :data:`METRIC_KEYS`: ``auroc``, ``auprc`` (scikit-learn average precision; both NaN when
        ``y`` has a single class), ``brier``, ``ece`` (10 equal-width bins), ``hosmer_lemeshow``
        (risk deciles), ``min_se_ppv``, ``sensitivity``, ``ppv``, ``prevalence``, ``n``.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score  # lazily: scoring never needs it

    y01, p = check_binary_inputs(y, p)
    threshold = _check_threshold(threshold)
    both = 0 < y01.sum() < len(y01)
    sens, ppv, min_se_ppv = _alert_counts(y01, p, threshold)
    return {
        "auroc": float(roc_auc_score(y01, p)) if both else float("nan"),
        "auprc": float(average_precision_score(y01, p)) if both else float("nan"),
        "brier": float(np.mean((p - y01) ** 2)),
        "ece": expected_calibration_error(y01, p),
        "hosmer_lemeshow": hosmer_lemeshow(y01, p),
        "min_se_ppv": min_se_ppv,
        "sensitivity": sens,
        "ppv": ppv,
        "prevalence": float(y01.mean()),
        "n": float(len(y01)),
    }
