"""Evaluation of mortality probabilities: discrimination, calibration, alert quality, subgroups, plots.

* :func:`binary_metrics` -- point estimates on one set of stays.
* :func:`evaluate` -- the same with 95% bias-corrected bootstrap intervals (stays resampled with
  replacement) that always contain their point estimate, and a ``note`` when a class is too small.
* :func:`paired_difference` -- metric(a) - metric(b) for two models on the same stays, paired bootstrap.
* :func:`compare_models` -- both for several models from one bootstrap (a report's comparison table).
  The bootstrap is vectorised: each replicate is a vector of resampling counts over the stays sorted
  once by ``p``, so AUROC, AP, decile edges and bin sums for all replicates come from cumulative sums
  and matrix products instead of one scikit-learn call per replicate.
* :func:`subgroup_table`, :func:`demographic_groups` -- metrics per sex, age band and ICU type.
* ROC, precision-recall and calibration figures live in :mod:`clinical_lstm.evaluation.plots`.

A stay is flagged when ``p >= threshold`` throughout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from ..checks import _check_threshold, check_binary_inputs
from ..config import usable_cpus

BOOTSTRAP_METRICS = ("auroc", "auprc", "brier", "ece", "hosmer_lemeshow", "min_se_ppv")
METRIC_KEYS = (*BOOTSTRAP_METRICS, "sensitivity", "ppv", "prevalence", "n")
DIFFERENCE_METRICS = ("auroc", "auprc", "brier", "ece", "min_se_ppv")  # a difference of H-L means nothing
MIN_CLASS_FOR_INTERVAL = 10  # fewer deaths (or survivors) than this: intervals get a note and a warning
MIN_REPLICATES_FOR_INTERVAL = 100  # fewer bootstrap replicates than this: the interval's tails are a few draws
SUBGROUP_COLUMNS = ("group", "level", "n", "deaths", "auroc", "auprc", "brier", "min_se_ppv")
SEX_LEVELS = ("female", "male", "unknown")
AGE_LEVELS = ("<50", "50-64", "65-79", "80+", "unknown")
ICU_LEVELS = ("coronary care", "cardiac surgery", "medical", "surgical", "unknown")

_N_BINS = 10  # ECE bins
_N_GROUPS = 10  # Hosmer-Lemeshow risk groups
_CHUNK = 250  # bootstrap replicates per block: bounds memory at a few (250, n) float arrays ...
_BLOCK_CELLS = 500_000  # ... and (B, n) arrays of 4 MB above 2,000 stays (1.4x faster than 40 MB: bench_bootstrap.py)
_PARALLEL_CELLS = 250_000  # blocks at least this large bootstrap their models in threads (smaller: not worth it)

__all__ = [
    "AGE_LEVELS",
    "BOOTSTRAP_METRICS",
    "DIFFERENCE_METRICS",
    "ICU_LEVELS",
    "METRIC_KEYS",
    "MIN_CLASS_FOR_INTERVAL",
    "SEX_LEVELS",
    "Estimate",
    "binary_metrics",
    "check_binary_inputs",
    "compare_models",
    "demographic_groups",
    "evaluate",
    "expected_calibration_error",
    "hosmer_lemeshow",
    "paired_difference",
    "subgroup_table",
]


# ------------------------------------------------------------------------------------ point metrics


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


# ---------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval; ``str()`` gives ``0.861 (0.842–0.880)``.

    ``note`` is empty unless the interval should not be trusted (e.g. ``"only 1 death: interval not
    meaningful"``); ``str()`` then appends it in brackets.
    """

    value: float
    lower: float
    upper: float
    note: str = ""

    def __str__(self) -> str:
        text = f"{self.value:.3f} ({self.lower:.3f}\u2013{self.upper:.3f})"
        return f"{text} [{self.note}]" if self.note else text

    def to_dict(self) -> dict[str, float | str]:
        """``{"value": ..., "lower": ..., "upper": ...}`` as floats, plus ``"note"`` when one is set."""
        out: dict[str, float | str] = {k: float(getattr(self, k)) for k in ("value", "lower", "upper")}
        if self.note:
            out["note"] = self.note
        return out


class _SortedStays:
    """Stays sorted once by ``p``, with everything the replicate kernel reuses across replicates."""

    def __init__(self, y01: np.ndarray, p: np.ndarray, threshold: float) -> None:
        self.order = np.argsort(p, kind="stable")
        self.p = p[self.order]
        self.y = y01[self.order].astype(float)
        self.n = len(p)
        self.tie_starts = np.flatnonzero(np.r_[True, self.p[1:] != self.p[:-1]])
        self.sq_err = (self.p - self.y) ** 2
        self.flag_pos = self.y * (self.p >= threshold)
        self.flag = (self.p >= threshold).astype(float)
        onehot = np.eye(_N_BINS)[_ece_bins(self.p, _N_BINS)]  # (n, bins)
        self.bin_resid = onehot * (self.y - self.p)[:, None]
        # Decile positions in a resample of size n, as np.quantile's linear method places them.
        pos = np.linspace(0.0, 1.0, _N_GROUPS + 1) * (self.n - 1)
        self.q_lo = np.floor(pos).astype(np.int64)
        self.q_hi = np.minimum(self.q_lo + 1, self.n - 1)
        self.q_frac = pos - self.q_lo


def _replicate_metrics(s: _SortedStays, w: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics for each row of resampling counts ``w``, shape (B, n) over the sorted stays.

    Each row gives what :func:`binary_metrics` would on the resample that repeats stay ``i`` ``w[b, i]``
    times. Returns arrays of shape (B,) keyed by :data:`BOOTSTRAP_METRICS` plus ``valid`` (both classes).
    """
    n_b = w.sum(axis=1)
    wpos = w * s.y
    n_pos = wpos.sum(axis=1)
    n_neg = n_b - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"valid": valid}
        out["auroc"], out["auprc"] = _ranked_metrics(s, wpos, w - wpos, n_pos, n_neg)
        out["brier"] = w @ s.sq_err / n_b
        out["ece"] = np.abs(w @ s.bin_resid).sum(axis=1) / n_b
        out["hosmer_lemeshow"] = _replicate_hl(s, w, wpos)
        tp, n_flag = w @ s.flag_pos, w @ s.flag
        out["min_se_ppv"] = np.where(n_flag > 0, np.minimum(tp / n_pos, tp / n_flag), 0.0)
    return out


def _ranked_metrics(
    s: _SortedStays, wpos: np.ndarray, wneg: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC (Mann-Whitney with mid-ranks for ties) and average precision, per replicate."""
    # Collapse tied scores into one column: ties count half in AUROC and form one PR threshold.
    if len(s.tie_starts) < s.n:
        wpos = np.add.reduceat(wpos, s.tie_starts, axis=1)
        wneg = np.add.reduceat(wneg, s.tie_starts, axis=1)
    gpos, gneg = wpos, wneg
    neg_below = np.cumsum(gneg, axis=1) - gneg
    auroc = (gpos * (neg_below + 0.5 * gneg)).sum(axis=1) / (n_pos * n_neg)
    # AP = sum over thresholds (descending) of recall increment * precision at that threshold.
    tp = np.cumsum(gpos[:, ::-1], axis=1)
    flagged = tp + np.cumsum(gneg[:, ::-1], axis=1)
    precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
    auprc = (gpos[:, ::-1] * precision).sum(axis=1) / n_pos
    return auroc, auprc


def _replicate_hl(s: _SortedStays, w: np.ndarray, wpos: np.ndarray) -> np.ndarray:
    """Hosmer-Lemeshow per replicate, with decile edges recomputed from each resample."""
    n_rep = w.shape[0]
    cw = np.cumsum(w, axis=1)
    # The k-th smallest resampled score is p[i] for the first i with cw[i] > k. Offsetting each row by
    # r * (n + 1) makes all rows one increasing array, so a single searchsorted serves every replicate.
    offset = np.arange(n_rep)[:, None] * (s.n + 1)
    flat = (cw + offset).ravel()
    ks = np.concatenate([s.q_lo, s.q_hi])[None, :] + offset
    idx = np.searchsorted(flat, ks.ravel(), side="right").reshape(n_rep, -1) - np.arange(n_rep)[:, None] * s.n
    lo, hi = s.p[idx[:, : len(s.q_lo)]], s.p[idx[:, len(s.q_lo) :]]
    inner = (lo + (hi - lo) * s.q_frac)[:, 1:-1]
    # Group g holds sorted positions [bounds[g], bounds[g+1]): p <= inner edge g ends group g.
    cut = np.searchsorted(s.p, inner.ravel(), side="right").reshape(n_rep, -1)
    bounds = np.column_stack([np.zeros(n_rep, np.int64), cut, np.full(n_rep, s.n)])
    zero = np.zeros((n_rep, 1))
    sums = []
    for arr in (w, wpos, w * s.p):
        c = np.hstack([zero, np.cumsum(arr, axis=1)])
        sums.append(np.diff(np.take_along_axis(c, bounds, axis=1), axis=1))
    return _hl_terms(*sums).sum(axis=1)


def _resample_counts(rng: np.random.Generator, n_rep: int, n: int) -> np.ndarray:
    """Resampling counts, shape (n_rep, n): how often each stay is drawn in n draws with replacement."""
    idx = rng.integers(0, n, size=(n_rep, n)) + np.arange(n_rep)[:, None] * n
    return np.bincount(idx.ravel(), minlength=n_rep * n).reshape(n_rep, n).astype(float)


def _check_bootstrap_args(threshold: Any, n_boot: Any, alpha: Any) -> tuple[float, int]:
    threshold = _check_threshold(threshold)
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return threshold, int(n_boot)


def _bootstrap(
    y01: np.ndarray, models: list[tuple[np.ndarray, float]], n_boot: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """Replicate metrics of each ``(p, threshold)`` in ``models``, all on the same resampled stays.

    The counts are drawn once per block in the original stay order and mapped into each model's sorted
    order, so replicate ``b`` of every model is computed on the same resample (a paired bootstrap).
    Returns one dict per model: arrays of shape (n_valid,) keyed by :data:`BOOTSTRAP_METRICS`, over the
    replicates that drew both classes (the same replicates for every model).
    """
    from concurrent.futures import ThreadPoolExecutor

    stays = [_SortedStays(y01, p, threshold) for p, threshold in models]
    rng = np.random.default_rng(seed)
    reps: list[dict[str, list[np.ndarray]]] = [{k: [] for k in BOOTSTRAP_METRICS} for _ in models]
    block = max(1, min(_CHUNK, _BLOCK_CELLS // max(len(y01), 1)))
    # the models of a block in parallel threads (numpy releases the GIL); the draws stay in this thread, in order
    threads = min(len(models), usable_cpus()) if len(y01) * block >= _PARALLEL_CELLS else 1
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, n_boot, block):
            w = _resample_counts(rng, min(block, n_boot - start), len(y01))  # (B, n), original stay order
            outs = pool.map(lambda s, w=w: _replicate_metrics(s, w[:, s.order]), stays)
            for out, rep in zip(outs, reps, strict=True):
                for k in BOOTSTRAP_METRICS:
                    rep[k].append(out[k][out["valid"]])
    return [{k: np.concatenate(v) for k, v in rep.items()} for rep in reps]


def _bc_interval(values: np.ndarray, estimate: float, alpha: float) -> tuple[float, float]:
    """Bias-corrected (BC) percentile interval, widened if needed so that it contains ``estimate``.

    ``z0 = ndtri(share of replicates below the estimate, ties counted half)`` measures how far the
    replicates sit from the estimate (ECE and Hosmer-Lemeshow sit above it: they are biased upwards under
    resampling); the bounds are the ``ndtr(2 z0 -/+ z_{1-alpha/2})`` quantiles of the replicates (Efron
    1987). ``z0 = 0`` gives the plain percentile interval. NaN when no replicate is usable.
    """
    values = values[~np.isnan(values)]
    if len(values) == 0 or np.isnan(estimate):
        return float("nan"), float("nan")
    share = (np.sum(values < estimate) + 0.5 * np.sum(values == estimate)) / len(values)
    z0, z = ndtri(share), ndtri(1.0 - alpha / 2)  # z0 = -/+inf puts both bounds at the extreme replicate
    probs = ndtr(np.array([2 * z0 - z, 2 * z0 + z]))
    with np.errstate(invalid="ignore"):  # infinite H-L replicates: interpolating inf - inf gives NaN ...
        bounds = np.quantile(values, probs)
    bounds = np.where(np.isnan(bounds), np.quantile(values, probs, method="higher"), bounds)  # ... so inf
    lower, upper = bounds
    return float(min(lower, estimate)), float(max(upper, estimate))


def _notes(class_note: str, n_boot: int) -> str:
    """An interval's note: the small-class one, and one when there are too few replicates for its tails."""
    few = (f"only {n_boot} bootstrap replicate{'s' if n_boot != 1 else ''}: interval rough"
           if n_boot < MIN_REPLICATES_FOR_INTERVAL else "")
    return "; ".join(n for n in (class_note, few) if n)


def _small_class_note(y01: np.ndarray, where: str) -> str:
    """``"only 1 death: interval not meaningful"`` (and a UserWarning) when a class is under the minimum."""
    n_pos = int(y01.sum())
    n_neg = len(y01) - n_pos
    counts = ((n_pos, "death"), (n_neg, "survivor"))
    few = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts if n < MIN_CLASS_FOR_INTERVAL]
    if not few:
        return ""
    warnings.warn(
        f"{where}: {n_pos} death(s) and {n_neg} survivor(s) among {len(y01)} stays; with fewer than "
        f"{MIN_CLASS_FOR_INTERVAL} stays in a class the bootstrap intervals are not meaningful and each "
        "Estimate carries a note. Evaluate on more stays, or report the point estimates alone.",
        UserWarning,
        stacklevel=3,
    )
    return "only " + " and ".join(few) + ": interval not meaningful"


def evaluate(
    y: Any, p: Any, threshold: float, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Estimate]:
    """Point estimates with bias-corrected bootstrap intervals, resampling stays with replacement.

    Parameters
    ----------
    y : array-like, shape (n,)
        0/1 outcomes; both classes must occur.
    p : array-like, shape (n,)
        Probabilities in [0, 1].
    threshold : float
        Alert threshold for ``min_se_ppv`` (``p >= threshold``), fixed across replicates.
    n_boot : int, default 1000
        Bootstrap replicates; those that draw a single class are skipped.
    seed : int, default 0
        Seed for ``np.random.default_rng``; the same seed gives the same intervals.
    alpha : float, default 0.05
        Intervals have nominal coverage ``1 - alpha``. They are bias-corrected (BC) percentile intervals:
        with ``z0`` the normal quantile of the share of replicates below the estimate (ties count half),
        the bounds are the ``Phi(2 z0 -/+ z_{1-alpha/2})`` quantiles of the replicates, which undoes the
        upward resampling bias of ECE and Hosmer-Lemeshow; an interval that would still miss the
        estimate is widened to it.

    Returns
    -------
    dict[str, Estimate]
        Keys :data:`BOOTSTRAP_METRICS`. Bounds are NaN when no replicate had both classes. When a class has
        fewer than :data:`MIN_CLASS_FOR_INTERVAL` stays every Estimate carries a ``note`` and a
        ``UserWarning`` is issued once.
    """
    y01, p = check_binary_inputs(y, p, both_classes=True)
    threshold, n_boot = _check_bootstrap_args(threshold, n_boot, alpha)
    note = _notes(_small_class_note(y01, "evaluate"), n_boot)
    (reps,) = _bootstrap(y01, [(p, threshold)], n_boot, seed)
    return _estimates(binary_metrics(y01, p, threshold), reps, alpha, note)


def _estimates(point: dict, reps: dict, alpha: float, note: str) -> dict[str, Estimate]:
    return {k: Estimate(point[k], *_bc_interval(reps[k], point[k], alpha), note=note) for k in BOOTSTRAP_METRICS}


def _differences(point_a: dict, point_b: dict, reps_a: dict, reps_b: dict, alpha: float,
                 note: str) -> dict[str, Estimate]:
    out = {}
    for k in DIFFERENCE_METRICS:
        diff = point_a[k] - point_b[k]
        out[k] = Estimate(diff, *_bc_interval(reps_a[k] - reps_b[k], diff, alpha), note=note)
    return out


def paired_difference(
    y: Any,
    p_a: Any,
    p_b: Any,
    threshold_a: float,
    threshold_b: float,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Estimate]:
    """Difference metric(model a) - metric(model b) on the same stays, with a paired bootstrap interval.

    Each replicate resamples stays once and evaluates both models on that resample, so what the two
    models share (the same hard and easy stays) cancels: the interval is far narrower than one built from
    two independent intervals when the predictions are correlated.

    Parameters
    ----------
    y : array-like, shape (n,)
        0/1 outcomes; both classes must occur.
    p_a, p_b : array-like, shape (n,)
        Probabilities in [0, 1] of the two models for the same stays, in the same order.
    threshold_a, threshold_b : float
        Each model's alert threshold for ``min_se_ppv`` (``p >= threshold``).
    n_boot, seed, alpha
        As in :func:`evaluate`; intervals are bias-corrected percentile intervals that contain the point.

    Returns
    -------
    dict[str, Estimate]
        Keys :data:`DIFFERENCE_METRICS` (``auroc``, ``auprc``, ``brier``, ``ece``, ``min_se_ppv``). A
        positive difference means a is higher: better for AUROC, AUPRC and min(Se, PPV), worse for Brier
        and ECE. Notes and the warning as in :func:`evaluate`.
    """
    y01, p_a = check_binary_inputs(y, p_a, name="p_a", both_classes=True)
    _, p_b = check_binary_inputs(y01, p_b, name="p_b")
    threshold_a, n_boot = _check_bootstrap_args(threshold_a, n_boot, alpha)
    threshold_b = _check_threshold(threshold_b)
    note = _notes(_small_class_note(y01, "paired_difference"), n_boot)
    point_a, point_b = binary_metrics(y01, p_a, threshold_a), binary_metrics(y01, p_b, threshold_b)
    reps_a, reps_b = _bootstrap(y01, [(p_a, threshold_a), (p_b, threshold_b)], n_boot, seed)
    return _differences(point_a, point_b, reps_a, reps_b, alpha, note)


def compare_models(
    y: Any, models: dict[str, tuple[Any, float]], n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[dict[str, dict[str, Estimate]], dict[str, dict[str, Estimate]]]:
    """:func:`evaluate` of every model and :func:`paired_difference` of the first model minus each other one,
    from ONE bootstrap of all of them: the very numbers those calls give one by one (with one seed they draw
    the same resamples), at a fraction of the cost — ``k`` models are bootstrapped ``k`` times, not ``3k - 2``.

    ``models`` maps a name to ``(p, threshold)``, all for the stays of ``y`` in the same order. Returns
    ``(metrics, differences)``: ``metrics[name]`` as :func:`evaluate` returns it, ``differences[name]`` for each
    model but the first as :func:`paired_difference` (first, name) returns it.
    """
    names = list(models)
    if not names:
        raise ValueError("compare_models needs at least one model")
    y01, _ = check_binary_inputs(y, models[names[0]][0], name=f"p of {names[0]!r}", both_classes=True)
    checked = [(check_binary_inputs(y01, p, name=f"p of {n!r}")[1], _check_threshold(t))
               for n, (p, t) in models.items()]
    _, n_boot = _check_bootstrap_args(checked[0][1], n_boot, alpha)
    note = _notes(_small_class_note(y01, "evaluate"), n_boot)
    points = [binary_metrics(y01, p, t) for p, t in checked]
    reps = _bootstrap(y01, checked, n_boot, seed)
    metrics = {n: _estimates(pt, r, alpha, note) for n, pt, r in zip(names, points, reps, strict=True)}
    diffs = {n: _differences(points[0], pt, reps[0], r, alpha, note)
             for n, pt, r in zip(names[1:], points[1:], reps[1:], strict=True)}
    return metrics, diffs


# ---------------------------------------------------------------------------------------- subgroups


def subgroup_table(y: Any, p: Any, threshold: float, groups: pd.DataFrame) -> pd.DataFrame:
    """Metrics within each level of each grouping column.

    Parameters
    ----------
    y, p : array-like, shape (n,)
        0/1 outcomes and probabilities.
    threshold : float
        Alert threshold (``p >= threshold``) for ``min_se_ppv``.
    groups : pandas.DataFrame, shape (n, k)
        One row per stay, in the order of ``y`` (the index is ignored); each column a categorical label
        such as ``sex``, ``age_band``, ``icu_type``. Missing labels form their own level ``"missing"``.

    Returns
    -------
    pandas.DataFrame
        Long table with columns ``group, level, n, deaths, auroc, auprc, brier, min_se_ppv``; levels in
        category order for categoricals, else sorted. ``auroc``/``auprc`` are NaN where a level has a
        single class, ``min_se_ppv`` where it has no deaths.
    """
    y01, p = check_binary_inputs(y, p)
    threshold = _check_threshold(threshold)
    if not isinstance(groups, pd.DataFrame):
        raise ValueError(f"groups must be a pandas DataFrame, got {type(groups).__name__}")
    if len(groups) != len(y01):
        raise ValueError(f"groups must have one row per stay: got {len(groups)} rows for {len(y01)} stays")
    rows = []
    for col in groups.columns:
        for level, mask in _levels(groups[col]):
            m = binary_metrics(y01[mask], p[mask], threshold)
            rows.append(
                {
                    "group": str(col),
                    "level": level,
                    "n": int(mask.sum()),
                    "deaths": int(y01[mask].sum()),
                    **{k: m[k] for k in ("auroc", "auprc", "brier", "min_se_ppv")},
                }
            )
    return pd.DataFrame(rows, columns=list(SUBGROUP_COLUMNS))


def _levels(col: pd.Series) -> list[tuple[str, np.ndarray]]:
    """(label, boolean mask) for each non-empty level of ``col``, then ``"missing"`` if any."""
    values = col.to_numpy()
    missing = col.isna().to_numpy()
    if isinstance(col.dtype, pd.CategoricalDtype):
        candidates = list(col.cat.categories)
    else:
        candidates = sorted(pd.unique(values[~missing]), key=str)
    out = [(str(v), (values == v) & ~missing) for v in candidates]
    out = [(label, mask) for label, mask in out if mask.any()]
    if missing.any():
        out.append(("missing", missing))
    return out


def demographic_groups(age: Any, gender: Any, icu_type: Any) -> pd.DataFrame:
    """Turn PhysioNet 2012 descriptors into subgroup labels.

    Parameters
    ----------
    age : array-like, shape (n,)
        Years; NaN or negative (the ``-1`` sentinel) -> ``"unknown"``.
    gender : array-like, shape (n,)
        0 = female, 1 = male; anything else or NaN -> ``"unknown"``.
    icu_type : array-like, shape (n,)
        1 coronary care, 2 cardiac surgery recovery, 3 medical, 4 surgical; else ``"unknown"``.

    Returns
    -------
    pandas.DataFrame, shape (n, 3)
        Categorical columns ``sex`` (:data:`SEX_LEVELS`), ``age_band`` (:data:`AGE_LEVELS`:
        ``<50``, ``50-64``, ``65-79``, ``80+``) and ``icu_type`` (:data:`ICU_LEVELS`).
    """
    arrays = [np.asarray(a, dtype=float) for a in (age, gender, icu_type)]
    if any(a.ndim != 1 for a in arrays) or len({len(a) for a in arrays}) != 1:
        raise ValueError(
            f"age, gender and icu_type must be 1-D arrays of equal length, got shapes {[a.shape for a in arrays]}"
        )
    age_a, gender_a, icu_a = arrays
    known_age = np.isfinite(age_a) & (age_a >= 0)
    band = np.searchsorted([50.0, 65.0, 80.0], np.where(known_age, age_a, 0.0), side="right")
    age_band = np.where(known_age, np.asarray(AGE_LEVELS[:4], dtype=object)[band], "unknown")
    sex = np.select([gender_a == 0, gender_a == 1], ["female", "male"], default="unknown")
    icu = np.select([icu_a == k for k in (1, 2, 3, 4)], list(ICU_LEVELS[:4]), default="unknown")
    return pd.DataFrame(
        {
            "sex": pd.Categorical(sex, categories=SEX_LEVELS),
            "age_band": pd.Categorical(age_band, categories=AGE_LEVELS),
            "icu_type": pd.Categorical(icu, categories=ICU_LEVELS),
        }
    )
