"""Raw inputs -> one canonical long table ``stay_id, time, variable, value``.

Two layouts are read, both with polars:

* **PhysioNet Challenge 2012**: a set folder (``set-a/<RecordID>.txt``) or its ``.tar.gz`` read straight
  from the archive, with ``Outcomes-<x>.txt`` found beside it (or given explicitly). ``stay_id`` is the
  RecordID from the file name; ``HH:MM`` times become hours. Which entries are stays, what becomes of links
  and of a damaged archive: :mod:`clinical_lstm.data.archives`.
* **Generic long format** (how a hospital brings its own data): CSV (UTF-8) or Parquet with the columns
  ``stay_id`` (an integer or text; one rule for every reader: :func:`~clinical_lstm.data.ids.stay_id_key`), ``time`` (hours since
  admission), ``variable``, ``value``, each once. Static descriptors are rows at time 0. Labels come from a
  separate file with ``stay_id, label``.

Each PhysioNet stay file is either read or its stay rejected with a reason (``RawData.unreadable``):

* The file must be UTF-8 text without NUL bytes, with the first line ``Time,Parameter,Value``; blanks
  around that line, a UTF-8 byte-order mark and CRLF line ends are ignored. Anything else (another encoding,
  binary content, a header in other capitalisation, spacing or separators, CR-only line ends, a link or
  another entry that is not a regular file) rejects the stay as ``unreadable_file``.
* A ``RecordID`` row must name the file's own RecordID (compared as numbers: ``132540.0`` names 132540) or
  be ``-1`` (PhysioNet's "not recorded"); a file without one is fine. Any other value, text or empty
  included, rejects the stay as ``record_id_mismatch``: its rows may belong to another stay. RecordID rows
  are then dropped.
* A time must be a clock time ``[-]H+:MM`` with minutes 0-59 and nothing around it (the rule of
  :data:`clinical_lstm.data.times.CLOCK_TIME`; a leading minus applies to the whole time, ``-00:30`` is
  -0.5 h, then dropped as ``negative_time``). Anything else (``25:99``, ``1:-30``, ``-0:-30``, ``1:5:0``,
  ``12:60``, a blank before or after, plain hours ``12``) gives a null time, counted by validation as
  ``unparseable_time`` under the row's variable. Blank lines are skipped; fields after the third are
  ignored; a line without a comma (a truncated last line) has the variable ``""`` and no value, so it is
  counted too (``unknown_variable``, or ``unparseable_time`` first when its time is not a time).

Where: the PhysioNet reader is :mod:`clinical_lstm.data.physionet`, the id rule :mod:`clinical_lstm.data.ids`, the
generic long format, labels and :class:`RawData` this module, and :func:`clinical_lstm.data.load.load` reads any mix
of them at once.

Nothing is cleaned here: unparseable ``time`` / ``value`` entries stay visible (as text from generic CSV, as
nulls from PhysioNet files) so that :mod:`clinical_lstm.data.validate` counts every one of them by rule.
"""

from __future__ import annotations

import codecs
import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..checks import DataError
from .ids import checked_ids
from .times import time_hours

LONG_COLUMNS = ("stay_id", "time", "variable", "value")
LABEL_COLUMNS = ("stay_id", "label")
# A label is 0 or 1, and as with stay ids an integral number is that integer: 1, "1", "1.0", " 1 ". Anything else
# (2, 0.5, "true", "yes", empty) is null, refused by _check_labels.
_LABEL = (pl.col("label").cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
          .replace_strict({0.0: 0, 1.0: 1}, default=None, return_dtype=pl.Int8))


@dataclass
class RawData:
    """What was read, before any rule is applied.

    Attributes
    ----------
    long : polars.DataFrame
        ``stay_id`` Int64 or String (:func:`~clinical_lstm.data.ids.id_dtype`), ``time`` (hours: Float64, or String from generic CSV), ``variable`` String,
        ``value`` (Float64, or String from generic CSV; null = unparseable). One row per raw observation.
    stays : polars.Series
        Every stay seen (the ids' kind, sorted), including stays with no rows and unreadable stay files.
    outcomes : polars.DataFrame or None
        ``stay_id`` (the kind of the data's ids), ``label`` Int8 (0/1), ``saps_i`` Float64 (null when absent).
    unreadable : dict
        ``stay_id -> reason`` (``unreadable_file`` or ``record_id_mismatch``) for stays rejected on reading;
        none of their rows are in ``long``.
    sources : list of str
        The file or folder names read (names only, no directories).
    ignored_members : int
        PhysioNet sets: the entries that are not stay files (see :mod:`clinical_lstm.data.archives`).
    """

    long: pl.DataFrame
    stays: pl.Series
    outcomes: pl.DataFrame | None = None
    unreadable: dict[int, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    ignored_members: int = 0


# -- PhysioNet 2012 ----------------------------------------------------------------------------------


# -- generic long format ------------------------------------------------------------------------------
def _read_table(path: Path, kind: str, columns: tuple[str, ...]) -> pl.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(path)
        elif suffix in (".csv", ".txt"):
            df = pl.read_csv(path, infer_schema_length=0)  # all String: validation counts bad entries
        else:
            raise DataError(f"{kind} file {path} must be .csv or .parquet (got '{suffix}')")
    except (pl.exceptions.PolarsError, OSError) as exc:
        if isinstance(exc, pl.exceptions.NoDataError):
            df = pl.DataFrame(schema={c: pl.String for c in columns})
        else:
            raise DataError(f"cannot read {kind} file {path}: {read_error(path, exc)}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{kind} file {path} lacks column(s) {missing}; expected exactly {list(columns)}, "
                        f"found {df.columns}")
    check_header(path, kind, columns)
    check_types(df.schema, f"{kind} file {path}", columns)
    return df.select(columns)


# -- column types -------------------------------------------------------------------------------------------
# what each column may hold, for the message (time: times.time_hours, the one rule for time, says it)
_EXPECTED = {"stay_id": "a stay id must be an integer or text", "variable": "a variable name must be text",
             "value": "a value must be a number or text",
             "label": "a label must be 0 or 1 (a number, text or a boolean)"}


def _is_text(dtype: pl.DataType) -> bool:
    return dtype in (pl.String, pl.Null) or isinstance(dtype, (pl.Categorical, pl.Enum))


def check_types(schema, where: str, columns: tuple[str, ...] = LONG_COLUMNS) -> None:
    """**The types a column may have**, checked before any row is read by every reader of a long table or a
    labels file (CSV, Parquet, the batch index pass) and for frames given to ``predict``: ``stay_id``, ``variable``
    and ``value`` a number (integer, float, decimal) or text (String, Categorical, Enum); ``label`` also a boolean;
    ``time`` by the rule of :func:`clinical_lstm.data.times.time_hours` (a number, text or a duration). A column of
    nulls only passes (its rows are then counted by the rules). Anything else — a list, an array or a struct in a
    cell, binary, a date or timestamp, a boolean where no label is — raises :class:`DataError` naming the column
    and its type. A number where a name is expected is read as text (a variable code, then an unknown variable).
    """

    for name in columns:
        dtype = schema[name]
        if name == "time":
            time_hours(dtype, where)
        elif not (_is_text(dtype) or dtype.is_numeric() or (name == "label" and dtype == pl.Boolean)):
            raise DataError(f"{where}: column {name!r} has type {dtype}; {_EXPECTED[name]}, one per row")


def as_read(schema) -> list[pl.Expr]:
    """``variable`` as text and a categorical ``value`` as its text (its categories are the values as written),
    as validation reads them; after :func:`check_types`."""
    value = pl.col("value")
    if isinstance(schema["value"], (pl.Categorical, pl.Enum)):
        value = value.cast(pl.String)
    return [pl.col("variable").cast(pl.String), value]


def check_header(path: Path, kind: str, columns: tuple[str, ...]) -> None:
    """Refuse a CSV header that names one of ``columns`` twice: polars would rename the second copy
    (``value_duplicated_0``) and it would be ignored as an extra column, whichever copy held the data.
    (Parquet refuses duplicated names itself, on reading.)"""
    if path.suffix.lower() == ".parquet":
        return
    with path.open("rb") as f:  # the first line only: polars would check the whole file's encoding first
        first = f.readline()
    try:
        header = pl.read_csv(io.BytesIO(first), has_header=False, infer_schema_length=0).row(0)
    except pl.exceptions.PolarsError:  # not text: the reader says so
        return
    twice = [c for c in columns if header.count(c) > 1]
    if twice:
        raise DataError(f"{kind} file {path} has the column {twice[0]!r} {header.count(twice[0])} times; "
                        f"expected each of {list(columns)} once: keep the one that holds the data")


def read_error(path: Path, exc: Exception) -> str:
    """The first line of a reader's error; for text that is not UTF-8, where (polars does not say) and the fix."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "utf-8" not in first.lower():
        return first
    decoder, start, lines = codecs.getincrementaldecoder("utf-8")(), 0, 1  # file offset of a block, its line
    with contextlib.suppress(OSError), path.open("rb") as f:
        while block := f.read(1 << 20):
            pending = decoder.getstate()[0]  # the start of a character cut by the block's end (never a newline)
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                at = start - len(pending) + err.start
                line = lines + (pending + block).count(b"\n", 0, err.start)
                return (f"{first} at line {line} (byte {at}: 0x{(pending + block)[err.start]:02x}); the file must "
                        f"be UTF-8: re-save or export it as UTF-8")
            start, lines = start + len(block), lines + block.count(b"\n")
    return f"{first}; the file must be UTF-8: re-save or export it as UTF-8"


def read_long(path: str | Path) -> RawData:
    """Read a long-format CSV/Parquet (``stay_id, time, variable, value``) into :class:`RawData`.

    Extra columns are ignored. ``stay_id`` is an integer or text (an encounter id, a UUID), kept as given
    (:func:`~clinical_lstm.data.ids.id_dtype`); a row without a usable id cannot be attributed to a stay and raises an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data path {path} does not exist")
    df = checked_ids(_read_table(path, "data", LONG_COLUMNS), f"data file {path}")
    df = df.with_columns(as_read(df.schema))
    return RawData(long=df, stays=df["stay_id"].unique().sort(), sources=[path.name])


def read_labels(path: str | Path) -> pl.DataFrame:
    """Read a labels file (``stay_id, label`` with label 0/1) as ``stay_id, label, saps_i`` (saps_i null)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    df = checked_ids(_read_table(path, "labels", LABEL_COLUMNS), f"labels file {path}")
    out = df.select("stay_id", _LABEL.alias("label"), pl.lit(None, pl.Float64).alias("saps_i"))
    return _check_labels(out, df, path, "label")


def _check_labels(out: pl.DataFrame, given: pl.DataFrame, path: Path, column: str) -> pl.DataFrame:
    """``out`` (``stay_id, label, ...``), refused unless every row has a stay and a label of 0 or 1 and no stay
    has two; ``given`` holds the rows as read (ids as keys), row for row, so that the error can quote them."""
    bad = out["stay_id"].is_null() | out["label"].is_null()
    if bad.any():
        row = int(bad.arg_max())
        raise DataError(f"labels in {path}, row {row + 1}: stay_id {given['stay_id'][row]!r}, {column} "
                        f"{given['label'][row]!r}: every row needs a stay_id and a label of 0 or 1 (1.0 counts "
                        f"as 1); {int(bad.sum())} row(s) do not")
    dup = out.filter(pl.col("stay_id").is_duplicated())["stay_id"].unique()
    if len(dup):
        raise DataError(f"labels in {path}: stay_id {dup[0]} has more than one label")
    return out


# -- entry point ----------------------------------------------------------------------------------------


