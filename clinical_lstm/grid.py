"""Irregular events -> a fixed time grid.

Bin ``t`` covers ``[t * resolution, (t + 1) * resolution)`` hours; an observation at exactly the window's
end falls into the last bin. Several observations of one variable in one bin combine by the catalogue's
aggregation (Urine is summed, vitals averaged, labs take the last value). Alongside each value the grid keeps
the *time of the last observation in the bin*, so elapsed time can be computed in real hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .catalogue import Catalogue


@dataclass
class Grid:
    """Binned observations for ``N`` stays, ``T`` bins and ``V`` series variables.

    Attributes
    ----------
    values : ndarray, float32, (N, T, V)
        Aggregated value per bin; NaN where unobserved.
    obs_time : ndarray, float32, (N, T, V)
        Hours since admission of the last observation inside the bin; NaN where unobserved.
    lengths : ndarray, int64, (N,)
        Bins up to and including the last bin with any series observation (at least 1).
    statics : ndarray, float32, (N, S)
        Time-0 value of each static variable (``catalogue.statics`` order); NaN where absent.
    stay_ids : ndarray, int64, (N,)
    """

    values: np.ndarray
    obs_time: np.ndarray
    lengths: np.ndarray
    statics: np.ndarray
    stay_ids: np.ndarray
    resolution_hours: float

    @property
    def bin_end_hours(self) -> np.ndarray:
        """(T,) the time each bin closes, in hours since admission."""
        return (np.arange(self.values.shape[1], dtype=np.float32) + 1) * self.resolution_hours


def n_bins(window_hours: float, resolution_hours: float) -> int:
    if resolution_hours <= 0 or window_hours <= 0:
        raise ValueError(f"window_hours and resolution_hours must be positive, got {window_hours} and "
                         f"{resolution_hours}")
    n = window_hours / resolution_hours
    if abs(n - round(n)) > 1e-9:
        raise ValueError(f"window_hours ({window_hours}) must be a whole multiple of resolution_hours "
                         f"({resolution_hours})")
    return int(round(n))


def to_grid(clean: pl.DataFrame, stay_ids, catalogue: Catalogue, window_hours: float = 48.0,
            resolution_hours: float = 1.0) -> Grid:
    """Bin a validated long table onto the grid, one row per stay in ``stay_ids`` order.

    Stays without rows get an all-NaN grid of length 1 (callers reject them before this point).
    """
    T = n_bins(window_hours, resolution_hours)
    series, statics = catalogue.series, catalogue.statics
    ids = np.asarray(stay_ids, dtype=np.int64)
    N, V = len(ids), len(series)
    values = np.full((N, T, V), np.nan, dtype=np.float32)
    obs_time = np.full((N, T, V), np.nan, dtype=np.float32)
    lengths = np.ones(N, dtype=np.int64)

    row, col, t, v = _locate(clean, ids, series, catalogue)
    if len(row):
        b = np.minimum(np.floor(t / resolution_hours + 1e-9).astype(np.int64), T - 1)  # 1e-9: 123/60 h is bin 123
        cell = (row * V + col) * T + b  # one id per (stay, variable, bin)
        step = cell[1:] - cell[:-1]
        if not np.all((step > 0) | ((step == 0) & (t[1:] >= t[:-1]))):  # validate() output is in order already
            order = np.lexsort((t, cell))  # by cell, then by time within the cell
            cell, t, v, row, col, b = cell[order], t[order], v[order], row[order], col[order], b[order]
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])  # first row of each cell
        ends = np.r_[starts[1:], len(cell)]
        grow, gcol, gbin = row[starts], col[starts], b[starts]
        agg = np.empty(len(starts), dtype=np.float64)
        hows = sorted({catalogue[name].aggregation for name in series})  # only the aggregations in use
        how_of = np.array([hows.index(catalogue[name].aggregation) for name in series])[gcol]
        total = np.add.reduceat(v, starts) if {"mean", "sum"} & set(hows) else None  # shared by mean and sum
        for k, how in enumerate(hows):
            sel = how_of == k
            agg[sel] = _aggregate(how, v, starts, ends, sel, total)
        flat = (grow * T + gbin) * V + gcol
        values.reshape(-1)[flat] = agg
        obs_time.reshape(-1)[flat] = t[ends - 1]  # rows sorted by time: the bin's last observation
        firsts = np.flatnonzero(np.r_[True, grow[1:] != grow[:-1]])  # cells are grouped by stay
        lengths[grow[firsts]] = np.maximum.reduceat(gbin, firsts) + 1

    stat = np.full((N, len(statics)), np.nan, dtype=np.float32)
    if statics:
        at_zero = clean.filter((pl.col("time") == 0) & pl.col("variable").is_in(statics))
        srow, scol, _, sval = _locate(at_zero, ids, statics, catalogue)
        # the first time-0 row of each (stay, static) wins (np.unique's index is the first occurrence; numpy's
        # fancy assignment with repeated indices does not promise an order)
        _, first = np.unique(srow * len(statics) + scol, return_index=True)
        stat[srow[first], scol[first]] = sval[first]
    return Grid(values, obs_time, lengths, stat, ids, float(resolution_hours))



def _aggregate(how: str, v: np.ndarray, starts: np.ndarray, ends: np.ndarray, sel: np.ndarray, total) -> np.ndarray:
    """One value per selected run ``v[starts[i]:ends[i]]`` (rows already in time order); ``total`` holds every
    run's sum (computed once for mean and sum)."""
    if how == "last":
        return v[ends[sel] - 1]
    if how == "sum":
        return total[sel]
    if how == "mean":
        return total[sel] / (ends[sel] - starts[sel])
    return (np.maximum if how == "max" else np.minimum).reduceat(v, starts)[sel]


def _locate(clean: pl.DataFrame, ids: np.ndarray, names: list[str], catalogue: Catalogue):
    """Rows of ``clean`` whose stay is in ``ids`` and variable in ``names``, as (row, col, time, value) arrays."""
    index = {n: i for i, n in enumerate(names)}
    try:  # fast path: catalogue variables only; an Enum's physical value is the position in its list
        lut = np.array([index.get(n, -1) for n in catalogue.names], dtype=np.int64)
        col = lut[clean["variable"].cast(pl.Enum(catalogue.names)).to_physical().to_numpy()]
    except pl.exceptions.InvalidOperationError:
        col = clean["variable"].replace_strict(index, default=-1, return_dtype=pl.Int64).to_numpy()
    sid = clean["stay_id"].to_numpy()
    run = clean["stay_id"].rle_id().to_numpy()
    if len(sid) and run[-1] + 1 == len(ids) and np.array_equal(sid[np.r_[0, np.flatnonzero(np.diff(run)) + 1]], ids):
        row, ok = run.astype(np.int64), col >= 0  # grouped by stay in `ids` order, as validate() returns it
    elif len(ids):
        ascending = bool(np.all(ids[1:] > ids[:-1]))
        sorter = None if ascending else np.argsort(ids, kind="stable")
        pos = np.minimum(np.searchsorted(ids, sid, sorter=sorter), len(ids) - 1)
        row = pos if ascending else sorter[pos]
        ok = (col >= 0) & (ids[row] == sid)
    else:
        row, ok = np.zeros(len(sid), dtype=np.int64), np.zeros(len(sid), dtype=bool)
    t, v = clean["time"].to_numpy(), clean["value"].to_numpy()
    if ok.all():
        return row, col, t, v
    return row[ok], col[ok], t[ok], v[ok]
