"""An update's rows as arrays (a polars or pandas frame, a dict of columns or a list of records), read by the same
rules as every other path (:mod:`clinical_lstm.data.times`), and a stream state's strict-JSON form.
"""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl

from ..data.times import parse_time, time_hours

_COLUMNS = ("time", "variable", "value")


def _columns(rows):
    """``rows`` -> (time float64, variable list, value float64, the ``stay_id`` column or None without one),
    or None when there are no rows."""
    if rows is None:
        return None
    pandas = _is_pandas(rows)
    if not pandas and not isinstance(rows, pl.DataFrame):
        rows = pl.DataFrame(rows)
    if len(rows) == 0:
        return None
    if pandas:
        fast = _pandas_numbers(rows)  # None for a frame it does not read, one lacking a column included
        if fast is not None:
            return fast
    missing = [c for c in _COLUMNS if c not in rows.columns]
    if missing:
        from ..data.sources import DataError

        raise DataError(f"stream rows lack column(s) {missing}; expected {list(_COLUMNS)} (others are ignored), "
                        f"got {list(rows.columns)}")
    stay = rows["stay_id"] if "stay_id" in rows.columns else None
    if pandas:
        time, value = rows["time"].to_numpy(), rows["value"].to_numpy()
        names = rows["variable"].tolist()
        if time.dtype.kind in "fiu":
            time = time.astype(np.float64)
        elif rows["time"].dtype.kind == "O":  # text, or mixed objects: each as its text
            time = _parse_text(time, "time")
        else:  # timedelta, datetime, bool: polars' own type, read by validate's rule
            time = _hours(pl.Series("time", rows["time"]))
        value = value.astype(np.float64) if value.dtype.kind in "fiu" else _parse_text(value, "value")
        return time, names, value, stay
    from ..data.sources import check_types

    check_types(rows.schema, "stream rows", tuple(c for c in ("stay_id", *_COLUMNS) if c in rows.columns))
    s = rows["value"]
    value = (s.cast(pl.Float64).fill_null(np.nan).to_numpy() if s.dtype.is_numeric()
             else _parse_text(s.to_list(), "value"))
    return _hours(rows["time"]), rows["variable"].cast(pl.String).to_list(), value, stay


def _pandas_numbers(rows):
    """:func:`_columns` of a pandas frame whose ``time`` and ``value`` (and ``stay_id``, if any) are plain numpy
    numbers, read from the frame's own arrays: a column read as a ``Series`` costs ~17 us on a new frame, most of an
    update's reading. The same numbers as the general path (a ``Series``' ``to_numpy``/``tolist`` are its array's);
    the ``stay_id`` column comes back as its numpy array. None: any other frame, read by the general path."""
    get = getattr(rows, "_get_column_array", None)  # pandas' own column reader (private: a pandas without it
    if get is None:                                  # gets the general path)
        return None
    loc = rows.columns.get_loc
    try:
        where = [loc(c) for c in _COLUMNS]
    except (KeyError, TypeError):  # a missing column: the general path names it
        return None
    try:
        where.append(loc("stay_id"))
    except (KeyError, TypeError):
        pass
    if not all(isinstance(i, int) for i in where):  # a repeated column name: a slice or a mask
        return None
    time, names, value, *stay = (get(i) for i in where)
    numbers = [time, value, *stay]
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "fiu" for a in numbers):
        return None
    return time.astype(np.float64), names.tolist(), value.astype(np.float64), stay[0] if stay else None


def _all_equal(values: np.ndarray, first) -> bool:
    """Whether every value equals ``first`` and has its type (pandas' ``nunique`` costs 40 us a call; a NaN, a
    mixed column or anything that does not compare answers False, and the full reading decides)."""
    try:
        same = bool((values == first).all())
    except Exception:  # noqa: BLE001 -- objects that refuse to compare: read the column in full
        return False
    return same and (values.dtype != object or all(type(v) is type(first) for v in values))


def _one_stay(ids) -> int | str:
    """The one stay of an update's ``stay_id`` column (pandas, polars, or a pandas column's numpy array), its ids read as
    :func:`clinical_lstm.data.sources.checked_ids` reads a file's; more than one stay raises ``ValueError``."""
    from ..data.ids import checked_ids

    if isinstance(ids, np.ndarray):  # a pandas frame's numbers, as _pandas_numbers reads them
        if ids.dtype.kind in "iu" and ids.dtype != np.uint64 and bool((ids == ids[0]).all()):
            return int(ids[0])  # an integer that fits Int64 is its own key (data.ids.stay_id_key): one stay
        import pandas as pd

        ids = pd.Series(ids)
    if _is_pandas(ids):
        if ids.dtype == object:  # mixed kinds (17, "17", a uuid.UUID): as text, as bundle.as_raw reads them
            ids = ids.astype(str).where(ids.notna(), None)
        ids = pl.from_pandas(ids.rename("stay_id"))
    ids = checked_ids(ids.rename("stay_id").to_frame(), "stream rows")["stay_id"].unique(maintain_order=True)
    if len(ids) > 1:
        raise ValueError(f"stream rows of one update hold more than one stay: stay_id {ids[0]!r} and "
                         f"{ids[1]!r}; a stream scores one stay (RiskModel.stream() per stay); nothing of "
                         f"this update was applied")
    return ids[0]


def _hours(time: pl.Series) -> np.ndarray:
    """A ``time`` column as float64 hours (NaN: unparseable), by :func:`clinical_lstm.data.validate.time_hours`."""
    hours = pl.DataFrame([time]).select(time_hours(time.dtype, "stream rows").alias("time"))["time"]
    return hours.fill_null(np.nan).to_numpy().astype(np.float64)


def _parse_text(values, column: str) -> np.ndarray:
    """Text (or mixed) times / values parsed with exactly :func:`clinical_lstm.data.validate.validate`'s rules."""
    texts = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]
    s = pl.Series(column, texts, dtype=pl.String)
    expr = parse_time(pl.col(column)) if column == "time" else pl.col(column).str.strip_chars().cast(
        pl.Float64, strict=False)
    return pl.DataFrame([s]).select(expr.alias(column))[column].fill_null(np.nan).to_numpy().astype(np.float64)


def _is_pandas(obj) -> bool:
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "iloc")


def _state_digest(state: dict) -> str:
    """SHA-256 of a state's canonical JSON (sorted keys): the same for its JSON and safetensors forms."""
    import hashlib

    return hashlib.sha256(json.dumps(state, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def _listed(a) -> list:
    """Array -> nested lists with NaN / -inf as None (strict JSON)."""
    arr = np.asarray(a, np.float64)
    return [None if not math.isfinite(x) else x for x in arr.tolist()] if arr.ndim == 1 else [
        _listed(row) for row in arr]


def _unlisted(values, dtype=np.float64) -> np.ndarray:
    """Inverse of :func:`_listed` (None -> NaN; the attention maximum's None is -inf, its only non-finite)."""
    arr = np.array(values, dtype=object)
    return np.where(arr == None, np.nan, arr).astype(dtype)  # noqa: E711 -- elementwise on an object array
