"""Metrics with intervals: each model's metrics with 95 % bias-corrected bootstrap intervals (stays resampled with
replacement) that always contain their point estimate, and a ``note`` when a class is too small.

* :func:`evaluate` -- one model's metrics (:func:`clinical_lstm.evaluation.scores.binary_metrics`) with intervals.
* :func:`paired_difference` -- metric(a) - metric(b) for two models on the same stays, paired bootstrap.
* :func:`compare_models` -- both for several models from one bootstrap (a report's comparison table).

The point metrics are :mod:`clinical_lstm.evaluation.scores`, the bootstrap engine
:mod:`clinical_lstm.evaluation.bootstrap`, the subgroup table :mod:`clinical_lstm.evaluation.subgroups`, the figures
:mod:`clinical_lstm.evaluation.plots`. A stay is flagged when ``p >= threshold`` throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..checks import _check_threshold, check_binary_inputs
from .bootstrap import _bc_interval, _bootstrap, _check_bootstrap_args, _notes, _small_class_note
from .scores import BOOTSTRAP_METRICS, DIFFERENCE_METRICS, binary_metrics

__all__ = ["Estimate", "compare_models", "evaluate", "paired_difference"]


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
        fewer than :data:`~clinical_lstm.evaluation.bootstrap.MIN_CLASS_FOR_INTERVAL` stays every Estimate carries a ``note`` and a
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
