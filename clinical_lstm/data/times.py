"""**The rules for time**, for every path: a ``time`` column read as hours since admission (:func:`time_hours`,
clock-time text by :func:`parse_time`), and every time snapped to the nearest whole second (:func:`snap_seconds`).

The readers (:mod:`clinical_lstm.data.sources`), validation (:mod:`clinical_lstm.data.validate`) and the stream use
these functions and no other rule, so a time means the same in every path.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from ..checks import DataError

CLOCK_TIME = r"^(-?)(\d+):([0-5]?\d)$"  # [-]H+:MM with minutes 0-59; anything else is not a clock time


def parse_time(col: pl.Expr) -> pl.Expr:
    """Hours as Float64 from text: a number of hours (``12.5``) or a clock time ``[-]HH:MM`` since admission.

    A clock time needs whole hours and minutes 0-59 with at most a leading minus on the whole time
    (``-00:30`` is -0.5 h); ``25:99``, ``1:-30`` or ``-0:-30`` are not times and give null (rule
    ``unparseable_time``).
    """
    s = col.cast(pl.String).str.strip_chars()
    parts = s.str.extract_groups(CLOCK_TIME)
    hours = (parts.struct.field("2").cast(pl.Float64, strict=False)
             + parts.struct.field("3").cast(pl.Float64, strict=False) / 60.0)
    clock = pl.when(parts.struct.field("1") == "-").then(-hours).otherwise(hours)
    return pl.when(s.str.contains(":", literal=True)).then(clock).otherwise(s.cast(pl.Float64, strict=False))


_TIME_UNITS_PER_HOUR = {"ns": 3_600_000_000_000, "us": 3_600_000_000, "ms": 3_600_000}


def time_hours(dtype: pl.DataType, where: str = "the data") -> pl.Expr:
    """**The rule for reading a ``time`` column**, for every path: ``pl.col("time")`` as Float64 hours.

    Numbers are hours; text (String, Categorical) goes through :func:`parse_time`; a Duration is elapsed time
    since admission, converted exactly (integer ticks over ticks per hour). Any other dtype, a timestamp
    (Datetime, Date, Time) in particular, raises :class:`~clinical_lstm.data.sources.DataError` naming ``where``:
    an absolute time would need each stay's admission time, which the long format does not have.
    """
    col = pl.col("time")
    if dtype.is_numeric() or dtype == pl.Null:
        return col.cast(pl.Float64)
    if dtype == pl.String or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return parse_time(col)
    if isinstance(dtype, pl.Duration):  # numpy divides exactly; polars multiplies by the literal's reciprocal
        per_hour = _TIME_UNITS_PER_HOUR[dtype.time_unit]
        return col.cast(pl.Int64).map_batches(
            lambda s: pl.Series(s.to_numpy().astype(np.float64) / per_hour, nan_to_null=True),
            return_dtype=pl.Float64, is_elementwise=True)
    why = (", a timestamp: the long format has no admission time per stay to measure it from (subtract each "
           "stay's admission time first)" if dtype.is_temporal() else "")
    raise DataError(f"{where}: column 'time' has type {dtype}{why}; time must be hours since ICU admission "
                    f"(a number, HH:MM text, or a duration such as a Parquet Duration or pandas timedelta)")


def snap_seconds(hours: np.ndarray) -> np.ndarray:
    """**The rule for time resolution**, for every path: float64 hours snapped to the nearest whole second.

    Applied once, right after a time is read and before the row rules, the duplicate check and the bins, by
    :func:`~clinical_lstm.data.validate.validate` (so ``score`` and ``predict``) and the stream alike: two rows less than half a second from
    one second are at that second, whichever comes first. Half a second rounds to even; a time a fraction of a
    second before admission is 0 h; NaN and times too large to count in seconds are left as they are.
    """
    h = np.asarray(hours, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        snapped = np.rint(h * 3600.0) / 3600.0 + 0.0  # + 0.0: -0.0 is 0.0
    return np.where(np.isfinite(snapped), snapped, h)
