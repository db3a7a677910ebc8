"""What every stage shares: the package's errors and the checks of arrays of labels and scores.

:class:`DataError` is the one error for input data that cannot be read as documented (the message says what,
where and the fix); :class:`MissingDependency` names the install command of an optional package a feature needs;
:func:`check_binary_inputs` checks labels and scores for metrics and calibrators alike. A base module: it imports
nothing from the package.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class DataError(ValueError):
    """Input data that cannot be read as documented; the message says what, where and the fix."""


class MissingDependency(ImportError):
    """An optional package a feature needs is not installed; the message names the install command."""


def check_binary_inputs(
    y: Any,
    p: Any,
    *,
    name: str = "p",
    probabilities: bool = True,
    both_classes: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and scores; return them as ``(int64 array, float64 array)``, shape (n,) each.

    Parameters
    ----------
    y : array-like, shape (n,)
        Outcomes; must be 0/1 (bool, int or float).
    p : array-like, shape (n,)
        Scores; must be finite.
    name : str, default "p"
        What ``p`` is called in error messages.
    probabilities : bool, default True
        Also require ``0 <= p <= 1``.
    both_classes : bool, default False
        Also require at least one 0 and one 1 in ``y``.

    Raises
    ------
    ValueError
        Saying what was wrong and what was expected.
    """
    y_arr = np.asarray(y)
    try:
        p_arr = np.asarray(p, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {type(p).__name__}") from exc
    if y_arr.ndim != 1 or p_arr.ndim != 1:
        raise ValueError(f"y and {name} must be 1-D arrays, got shapes {y_arr.shape} and {p_arr.shape}")
    if len(y_arr) != len(p_arr):
        raise ValueError(f"y and {name} must have the same length, got {len(y_arr)} and {len(p_arr)}")
    if len(y_arr) == 0:
        raise ValueError("y is empty; expected at least one stay")
    try:
        y_float = y_arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y must contain only 0/1 labels, got dtype {y_arr.dtype}") from exc
    bad = ~((y_float == 0) | (y_float == 1))
    if bad.any():
        raise ValueError(
            f"y must contain only 0/1 labels, got {int(bad.sum())} other value(s), e.g. {y_arr[bad][0]!r}"
        )
    finite = np.isfinite(p_arr)
    if not finite.all():
        raise ValueError(f"{name} must be finite, got {int((~finite).sum())} NaN/inf value(s)")
    if probabilities and (p_arr.min() < 0 or p_arr.max() > 1):
        raise ValueError(
            f"{name} must be probabilities in [0, 1], got values in [{p_arr.min():.4g}, {p_arr.max():.4g}]"
        )
    if both_classes and (y_float.min() == y_float.max()):
        raise ValueError(f"y must contain both classes (0 and 1), got only {int(y_float[0])}")
    return y_float.astype(np.int64), p_arr


def _check_threshold(threshold: Any) -> float:
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return t
