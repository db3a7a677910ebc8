"""Stay ids, one rule for every path: an integer id (or text that is exactly an integer's spelling) is an Int64
key, any other text is kept as text and never cast; a missing, fractional or non-finite id names no stay and is
refused with its row.
"""

from __future__ import annotations

import polars as pl

from ..checks import DataError

_INT64_FITS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)

CANONICAL_INT = r"^-?(0|[1-9][0-9]{0,17})$"  # text that is exactly an integer's own spelling


# Text that reads as a number: decimal notation, an optional sign, no leading zero ("007" is text, as MRNs are),
# no exponent ("12e4" is text, as hexadecimal ids are); then integral ("12", "12.0", "+12", "12.") or not.
NUMBER_TEXT = r"^[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)$"
INTEGRAL_TEXT = r"^[+-]?((0|[1-9][0-9]*)(\.0*)?|\.0+)$"
NON_FINITE_TEXT = r"(?i)^[+-]?(nan|inf|infinity)$"


def stay_id_key(dtype) -> pl.Expr:
    """**The stay-id key**, for every reader (CSV text, Parquet numbers, labels, outcomes, the batch index pass).

    A number is its value: an integer, or an integral float (``12.0``), is the integer (Int64); an integer type
    wider than Int64 can hold (UInt64, Int128) gives its digits, as the same id written in a CSV does. Text is
    stripped of surrounding blanks; text that reads as a number (:data:`NUMBER_TEXT`) is that number, so
    ``"12"``, ``"12.0"``, ``"+12"`` and ``" 12 "`` are all the key ``"12"`` (an integral number's canonical
    text: its integer digits, which is also what an Int64 id becomes when a job's ids are text). Other text
    (``"P-17"``, a UUID, ``"007"``: a leading zero makes text, never a number) is kept as given.
    A fractional or non-finite number (``2.5``, ``"2.5"``, ``nan``, ``"inf"``) names no stay, nor does empty
    text: null, which :func:`checked_ids` and the batch index pass report with the row. The key's kind
    (Int64 or String) is then decided for the whole input by :func:`id_dtype`."""
    col = pl.col("stay_id")
    if dtype.is_integer() and dtype in _INT64_FITS:
        return col.cast(pl.Int64)
    if dtype.is_integer():  # UInt64, Int128: may not fit Int64, so read as the number's text, as in a CSV
        return col.cast(pl.String).alias("stay_id")
    if dtype.is_float():
        return pl.when(col.is_finite() & (col == col.round())).then(col.cast(pl.Int64, strict=False))
    text = col.cast(pl.String).str.strip_chars()
    digits = text.str.extract(r"^[+-]?([0-9]*)", 1).str.strip_chars_start("0").replace("", "0")
    integral = pl.when(text.str.starts_with("-") & (digits != "0")).then("-" + digits).otherwise(digits)
    return (pl.when(text.str.contains(INTEGRAL_TEXT)).then(integral)
            .when((text.str.len_chars() == 0) | text.str.contains(NUMBER_TEXT) | text.str.contains(NON_FINITE_TEXT))
            .then(None).otherwise(text)).alias("stay_id")


def id_dtype(keys: pl.Series) -> pl.DataType:
    """**The kind of a data set's stay ids**: Int64 when every key (:func:`stay_id_key`) is an integer (or an
    integral number's text, such as ``"1001"`` or ``"1001.0"``), else String, and then every text id is kept
    exactly as given (``"007"``, a UUID) and every number is its integer digits (``"1001"``)."""
    if keys.dtype == pl.Int64 or keys.len() == 0:
        return pl.Int64
    return pl.Int64 if keys.str.contains(CANONICAL_INT).all() else pl.String


def as_ids(keys: pl.Series, dtype: pl.DataType) -> pl.Series:
    """Keys (:func:`stay_id_key`) in the kind ``dtype`` (:func:`id_dtype`)."""
    return keys.cast(dtype)


def no_stay(where: str, row: int, value) -> DataError:
    """The error for a row whose ``stay_id`` names no stay (``row`` counts data rows from 1)."""
    return DataError(f"{where}, row {row}: stay_id {value!r} names no stay; every row needs its stay's id (an "
                     f"integer, or text such as an encounter id or UUID; a fractional or non-finite number is "
                     f"neither)")


def checked_ids(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """``df`` with its ``stay_id`` column in its kind; a null, empty, fractional or non-finite id is a
    :class:`DataError` naming the row."""
    keys = df.select(stay_id_key(df.schema["stay_id"]))["stay_id"]
    bad = keys.is_null()
    if bad.any():
        row = int(bad.arg_max())
        raise no_stay(where, row + 1, df["stay_id"][row])
    return df.with_columns(as_ids(keys, id_dtype(keys)).alias("stay_id"))


def same_id_kind(frames: list[pl.DataFrame | None]) -> list[pl.DataFrame | None]:
    """Frames whose ``stay_id`` kinds differ (integers in one, text in another) all get text ids, so they join."""
    kinds = {f.schema["stay_id"] for f in frames if f is not None}
    if len(kinds) <= 1:
        return frames
    return [None if f is None else f.with_columns(pl.col("stay_id").cast(pl.String)) for f in frames]
