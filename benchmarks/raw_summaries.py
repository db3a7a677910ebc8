"""Summaries of the raw rows per stay, for ``bench_levers.py``'s cache (the package's summary members read the
running statistics of the hourly bins instead, :mod:`clinical_lstm.features.summaries`; this was the package's
first baseline feature set, kept here so that the lever table's numbers reproduce)."""

from __future__ import annotations

import numpy as np
import polars as pl

SERIES_STATS = ("first", "last", "min", "max", "mean", "count")
ICU_TYPES = (1, 2, 3, 4)
ICU_VARIABLE = "ICUType"


def feature_names(catalogue) -> list[str]:
    """Column names of :func:`summary_features` for ``catalogue``, in column order.

    ``<series>_<stat>`` for every series variable and stat in :data:`SERIES_STATS`, then
    ``static_<name>`` for every static variable, then ``icu_type_1`` .. ``icu_type_4`` when the
    catalogue has an ``ICUType`` static.
    """
    names = [f"{v}_{s}" for v in catalogue.series for s in SERIES_STATS]
    names += [f"static_{v}" for v in catalogue.statics]
    if ICU_VARIABLE in catalogue.statics:
        names += [f"icu_type_{k}" for k in ICU_TYPES]
    return names


def summary_features(long: pl.DataFrame, catalogue,
                     stay_ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-stay summary statistics of the cleaned long table.

    Parameters
    ----------
    long : polars.DataFrame
        Canonical cleaned long table: ``stay_id`` Int64, ``time`` Float64 (hours since admission),
        ``variable`` String, ``value`` Float64. Static descriptors are rows at ``time == 0``.
        Rows need not be sorted; variables not in the catalogue are ignored.
    catalogue : Catalogue
        Gives the series variables (``catalogue.series``) and statics (``catalogue.statics``).
    stay_ids : numpy.ndarray of int, shape (n_stays,)
        Stays to describe, in output row order. A stay without rows gets count 0 and NaN elsewhere.

    Returns
    -------
    X : numpy.ndarray, shape (n_stays, n_features), float64
        For each series variable, in catalogue order: first and last value (by time; ties keep input
        order), min, max, mean, and the number of observations (0 and NaN stats when never observed).
        Then the time-0 value of each static variable (first such row; NaN when absent; a variable
        that is both series and static, e.g. Weight, appears in both blocks). Then a one-hot of
        ``ICUType`` (``icu_type_1`` .. ``icu_type_4``; all 0 when ICUType is missing — the NaN in
        ``static_ICUType`` still records that it is missing).
    names : list of str, length n_features
        Column names, see :func:`feature_names`.
    """
    series, statics = list(catalogue.series), list(catalogue.statics)
    names = feature_names(catalogue)
    ids = pl.Series("stay_id", np.asarray(stay_ids, np.int64))  # PhysioNet ids: integers
    key = pl.col("stay_id").cast(pl.Int64)
    n, n_stats = len(ids), len(SERIES_STATS)
    X = np.full((n, len(names)), np.nan)
    X[:, n_stats - 1:len(series) * n_stats:n_stats] = 0.0  # counts: never observed means 0, not unknown
    static_base = len(series) * n_stats

    # Small lookup frames: joining on them maps stays to output rows and variables to column slots,
    # and (inner join) drops stays/variables we were not asked about before the expensive group_by.
    rows = pl.DataFrame({"stay_id": ids, "_row": np.arange(n, dtype=np.int64)})
    known = list(dict.fromkeys(series + statics))
    slots = pl.DataFrame({
        "variable": known,
        "_s": [series.index(v) if v in series else -1 for v in known],
        "_t": [statics.index(v) if v in statics else -1 for v in known],
    }, schema={"variable": pl.String, "_s": pl.Int64, "_t": pl.Int64})

    if n and long.height:
        # Joins need not keep row order, so the input position _i breaks ties explicitly: among rows
        # at the same time "first"/"last" follow the input order, and the first time-0 row wins.
        by_time = pl.col("value").sort_by("time", "_i")
        at0 = pl.col("time") == 0.0
        agg = (
            long.lazy()
            .select(key, pl.col("time").cast(pl.Float64),
                    pl.col("variable").cast(pl.String), pl.col("value").cast(pl.Float64))
            .with_row_index("_i")
            .join(slots.lazy(), on="variable", how="inner")
            .join(rows.lazy(), on="stay_id", how="inner")
            .group_by("_row", "variable")
            .agg(
                pl.col("_s").first(), pl.col("_t").first(),
                by_time.first().alias("first"), by_time.last().alias("last"),
                pl.col("value").min().alias("min"), pl.col("value").max().alias("max"),
                pl.col("value").mean().alias("mean"), pl.len().cast(pl.Float64).alias("count"),
                pl.col("value").filter(at0).sort_by(pl.col("_i").filter(at0)).first().alias("time0"),
            )
            .collect()
        )
        r, s, t = (agg[c].to_numpy() for c in ("_row", "_s", "_t"))
        is_series = s >= 0
        for k, stat in enumerate(SERIES_STATS):
            X[r[is_series], s[is_series] * n_stats + k] = agg[stat].to_numpy()[is_series]
        is_static = t >= 0
        # time0 is null when the variable was seen but never at time 0 -> NaN, as wanted.
        time0 = agg["time0"].fill_null(np.nan).to_numpy()
        X[r[is_static], static_base + t[is_static]] = time0[is_static]

    if ICU_VARIABLE in statics:
        icu = X[:, static_base + statics.index(ICU_VARIABLE)]
        onehot_base = static_base + len(statics)
        for j, k in enumerate(ICU_TYPES):
            X[:, onehot_base + j] = (icu == k).astype(np.float64)  # NaN == k is False -> 0
    return X, names
