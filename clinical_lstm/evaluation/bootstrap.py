"""The bootstrap engine behind every interval: each replicate is a vector of resampling counts over the stays sorted
once by ``p``, so AUROC, AP, decile edges and bin sums for all replicates come from cumulative sums and matrix
products instead of one scikit-learn call per replicate; blocks bound the memory, large blocks run in threads.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from ..checks import _check_threshold
from ..config import usable_cpus
from .scores import _N_BINS, _N_GROUPS, BOOTSTRAP_METRICS, _ece_bins, _hl_terms

MIN_CLASS_FOR_INTERVAL = 10  # fewer deaths (or survivors) than this: intervals get a note and a warning
MIN_REPLICATES_FOR_INTERVAL = 100  # fewer bootstrap replicates than this: the interval's tails are a few draws
_CHUNK = 250  # bootstrap replicates per block: bounds memory at a few (250, n) float arrays ...
_BLOCK_CELLS = 500_000  # ... and (B, n) arrays of 4 MB above 2,000 stays (1.4x faster than 40 MB: bench_bootstrap.py)
_PARALLEL_CELLS = 250_000  # blocks at least this large bootstrap their models in threads (smaller: not worth it)


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

    Each row gives what :func:`~clinical_lstm.evaluation.scores.binary_metrics` would on the resample that repeats stay ``i`` ``w[b, i]``
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
