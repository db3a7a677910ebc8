"""Irregular events -> a fixed time grid.

Bin ``t`` covers ``[t * resolution, (t + 1) * resolution)`` hours; an observation at exactly the window's
end falls into the last bin. Several observations of one variable in one bin combine by the catalogue's
aggregation (Urine is summed, vitals averaged, labs take the last value; :func:`aggregate`). Alongside each
value the grid keeps the *time of the last observation in the bin*, so elapsed time can be computed in real hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ..config import grid_bins as n_bins  # the one rule for a grid's bins (impute imports it from here)
from .catalogue import AGGREGATIONS, Catalogue


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
    stay_ids : ndarray, (N,): int64, or unicode text for text ids
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


def bin_index(time: np.ndarray, resolution_hours: float, T: int) -> np.ndarray:
    """The bin of each time (hours): ``floor(time / resolution)``, the window's end in the last bin.

    The 1e-9 keeps a time on an edge in the bin it starts (123/60 h is minute-bin 123, not 122)."""
    return np.minimum(np.floor(np.asarray(time) / resolution_hours + 1e-9).astype(np.int64), T - 1)


def aggregate(how: np.ndarray, v: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """**The in-bin aggregation**: one value per run ``v[starts[i]:starts[i + 1]]`` of rows of one cell (a stay,
    variable and bin), with the rows in :func:`clinical_lstm.data.validate.order_rows` order (time, then value).

    ``how[i]`` is the run's aggregation as an index into :data:`~clinical_lstm.data.catalogue.AGGREGATIONS`:
    ``mean`` and ``sum`` of the values, ``last`` the value of the latest row (of simultaneous values, the
    largest), ``max`` and ``min``. Statics (a static's time-0 rows) and the stream's open bin use it too.
    """
    ends = np.append(starts[1:], len(v))
    n = ends - starts
    out = np.empty(len(starts), dtype=np.float64)
    for k, name in enumerate(AGGREGATIONS):
        sel = how == k
        if not sel.any():
            continue
        if name == "last":
            out[sel] = v[ends[sel] - 1]
        elif name in ("mean", "sum"):
            total = np.add.reduceat(v, starts)[sel]
            out[sel] = total / n[sel] if name == "mean" else total
        else:
            out[sel] = (np.maximum if name == "max" else np.minimum).reduceat(v, starts)[sel]
    return out


def aggregate_cells(cell: np.ndarray, t: np.ndarray, v: np.ndarray, how_of_cell) -> tuple[np.ndarray, ...]:
    """Rows -> one value per distinct ``cell`` id: ``(cells, value, time of the cell's last row, row count)``.

    Rows must be grouped by cell and within a cell ordered by time then value (validate's order); they are
    sorted here when they are not. ``how_of_cell(cells)`` gives each cell's aggregation index.
    """
    step = cell[1:] - cell[:-1]
    if not np.all((step > 0) | ((step == 0) & ((t[1:] > t[:-1]) | ((t[1:] == t[:-1]) & (v[1:] >= v[:-1]))))):
        order = np.lexsort((v, t, cell))
        cell, t, v = cell[order], t[order], v[order]
    starts = np.flatnonzero(np.concatenate([[True], cell[1:] != cell[:-1]]))
    ends = np.append(starts[1:], len(cell))
    cells = cell[starts]
    return cells, aggregate(how_of_cell(cells), v, starts), t[ends - 1], ends - starts


def aggregation_codes(catalogue: Catalogue, names: list[str]) -> np.ndarray:
    """(len(names),) index of each variable's aggregation in :data:`~clinical_lstm.data.catalogue.AGGREGATIONS`."""
    return np.array([AGGREGATIONS.index(catalogue[n].aggregation) for n in names], dtype=np.int64)


def to_grid(clean: pl.DataFrame, stay_ids, catalogue: Catalogue, window_hours: float = 48.0,
            resolution_hours: float = 1.0) -> Grid:
    """Bin a validated long table onto the grid, one row per stay in ``stay_ids`` order.

    Stays without rows get an all-NaN grid of length 1 (callers reject them before this point). A static's
    value is the aggregation of its time-0 rows (normally one row; several at time 0 combine like a bin).
    """
    T = n_bins(window_hours, resolution_hours)
    series, statics = catalogue.series, catalogue.statics
    id_series = ids_series(stay_ids)
    ids = ids_numpy(id_series)
    N, V = len(ids), len(series)
    values = np.full((N, T, V), np.nan, dtype=np.float32)
    obs_time = np.full((N, T, V), np.nan, dtype=np.float32)
    lengths = np.ones(N, dtype=np.int64)

    row, col, t, v = _locate(clean, id_series, series, catalogue)
    if len(row):
        b = bin_index(t, resolution_hours, T)
        how = aggregation_codes(catalogue, series)
        cells, agg, last_t, _ = aggregate_cells((row * V + col) * T + b, t, v, lambda c: how[(c // T) % V])
        grow, gcol, gbin = cells // (V * T), (cells // T) % V, cells % T
        flat = (grow * T + gbin) * V + gcol
        values.reshape(-1)[flat] = agg
        obs_time.reshape(-1)[flat] = last_t
        firsts = np.flatnonzero(np.r_[True, grow[1:] != grow[:-1]])  # cells are grouped by stay
        lengths[grow[firsts]] = np.maximum.reduceat(gbin, firsts) + 1

    stat = np.full((N, len(statics)), np.nan, dtype=np.float32)
    if statics:
        at_zero = clean.filter((pl.col("time") == 0) & pl.col("variable").is_in(statics))
        srow, scol, st, sval = _locate(at_zero, id_series, statics, catalogue)
        if len(srow):
            how = aggregation_codes(catalogue, statics)
            S = len(statics)
            cells, agg, _, _ = aggregate_cells(srow * S + scol, st, sval, lambda c: how[c % S])
            stat[cells // S, cells % S] = agg
    return Grid(values, obs_time, lengths, stat, ids, float(resolution_hours))


def ids_series(stay_ids) -> pl.Series:
    """Stay ids (a polars Series, a numpy array or a list; integers or text) as a polars Series."""
    if isinstance(stay_ids, pl.Series):
        return stay_ids
    arr = np.asarray(stay_ids)
    if arr.dtype.kind in "iu":
        return pl.Series("stay_id", arr.astype(np.int64))
    return pl.Series("stay_id", [str(v) for v in arr.tolist()], dtype=pl.String)


def ids_numpy(ids: pl.Series) -> np.ndarray:
    """Stay ids as numpy: int64, or unicode text (never Python objects, so that polars reads them back as text)."""
    return ids.to_numpy().astype(np.int64) if ids.dtype.is_integer() else np.asarray(ids.to_list(), dtype=str)


def _locate(clean: pl.DataFrame, ids: pl.Series, names: list[str], catalogue: Catalogue):
    """Rows of ``clean`` whose stay is in ``ids`` and variable in ``names``, as (row, col, time, value) arrays."""
    index = {n: i for i, n in enumerate(names)}
    try:  # fast path: catalogue variables only; an Enum's physical value is the position in its list
        lut = np.array([index.get(n, -1) for n in catalogue.names], dtype=np.int64)
        col = lut[clean["variable"].cast(pl.Enum(catalogue.names)).to_physical().to_numpy()]
    except pl.exceptions.InvalidOperationError:
        col = clean["variable"].replace_strict(index, default=-1, return_dtype=pl.Int64).to_numpy()
    sid = clean["stay_id"]
    if ids.dtype != sid.dtype:  # integer ids asked of text rows (or the reverse): compare as text
        ids, sid = ids.cast(pl.String), sid.cast(pl.String)
    run = sid.rle_id().to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], run[1:] != run[:-1]])) if len(run) else run
    if len(sid) and run[-1] + 1 == len(ids) and sid.gather(starts).equals(ids, check_names=False):
        row, ok = run.astype(np.int64), col >= 0  # grouped by stay in `ids` order, as validate() returns it
    elif len(ids):
        order = ids.arg_sort()
        pos = ids.gather(order).search_sorted(sid).clip(0, len(ids) - 1)
        row = order.gather(pos).to_numpy().astype(np.int64)
        ok = (col >= 0) & (ids.gather(row) == sid).to_numpy()
    else:
        row, ok = np.zeros(len(sid), dtype=np.int64), np.zeros(len(sid), dtype=bool)
    t, v = clean["time"].to_numpy(), clean["value"].to_numpy()
    if ok.all():
        return row, col, t, v
    return row[ok], col[ok], t[ok], v[ok]
