"""Metrics per subgroup: sex, age band and ICU type (PhysioNet's coding), each level with its stays and deaths.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..checks import _check_threshold, check_binary_inputs
from .scores import binary_metrics

SUBGROUP_COLUMNS = ("group", "level", "n", "deaths", "auroc", "auprc", "brier", "min_se_ppv")
SEX_LEVELS = ("female", "male", "unknown")
AGE_LEVELS = ("<50", "50-64", "65-79", "80+", "unknown")
ICU_LEVELS = ("coronary care", "cardiac surgery", "medical", "surgical", "unknown")


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
