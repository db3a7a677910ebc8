"""Raw inputs -> one canonical long table ``stay_id, time, variable, value``.

Two layouts are read, both with polars:

* **PhysioNet Challenge 2012**: a set folder (``set-a/<RecordID>.txt``) or its ``.tar.gz`` read straight
  from the archive, with ``Outcomes-<x>.txt`` found beside it (or given explicitly). ``stay_id`` is the
  RecordID from the file name; ``HH:MM`` times become hours. Which entries are stays, what becomes of links
  and of a damaged archive: :mod:`clinical_lstm.data.archives`.
* **Generic long format** (how a hospital brings its own data): CSV (UTF-8) or Parquet with the columns
  ``stay_id`` (an integer or text; one rule for every reader: :func:`stay_id_key`), ``time`` (hours since
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

Nothing is cleaned here: unparseable ``time`` / ``value`` entries stay visible (as text from generic CSV, as
nulls from PhysioNet files) so that :mod:`clinical_lstm.data.validate` counts every one of them by rule.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..checks import DataError, MissingDependency  # noqa: F401 (the package's errors, also named here)
from .archives import iter_stay_files
from .times import time_hours

LONG_COLUMNS = ("stay_id", "time", "variable", "value")
LABEL_COLUMNS = ("stay_id", "label")
PHYSIONET_HEADER = b"Time,Parameter,Value"
# Outcome columns that leak the label or are scores, never model inputs. Only SAPS-I is kept, as a baseline.
_OUTCOME_LABEL = "In-hospital_death"
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
        ``stay_id`` Int64 or String (:func:`id_dtype`), ``time`` (hours: Float64, or String from generic CSV), ``variable`` String,
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
def is_physionet(path: Path) -> bool:
    return path.is_dir() or path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _stay_lines(record_id: int, data: bytes) -> bytes | None:
    """Turn one stay file into ``record_id,H,M,Parameter,Value`` lines; None if it is unreadable (see above)."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    if b"\0" in data:  # binary garbage (or UTF-16)
        return None
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    data = data.replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n")
    if head.strip() != PHYSIONET_HEADER:
        return None
    body = body.strip(b"\n")
    if not body:
        return b""
    prefix = b"%d," % record_id
    return prefix + _split_times(body).replace(b"\n", b"\n" + prefix) + b"\n"


_NOT_SEPARATORS = bytes(b for b in range(256) if b not in b":,\n")


def _split_times(body: bytes) -> bytes:
    """``HH:MM,HR,80`` -> ``HH,MM,HR,80`` so the CSV reader splits hours and minutes itself (several times
    faster than splitting time strings afterwards); :func:`_clock_hours` then checks and converts them.

    The fast path (one check of the whole body) applies when every line has a colon, a comma and a comma, in
    that order, and no other colon or comma. Otherwise each line is split on its own: a time field with exactly
    one colon gives its two sides, any other a null time (``unparseable_time`` under the row's own variable);
    blank lines are skipped.
    """
    lines = body.count(b"\n") + 1
    if body.translate(None, _NOT_SEPARATORS) == b":,,\n" * (lines - 1) + b":,,":
        return body.replace(b":", b",")
    out = []
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        time, comma, rest = line.partition(b",")
        hh, colon, mm = time.partition(b":")
        out.append((hh + b"," + mm if colon and b":" not in mm else b",") + comma + rest)
    return b"\n".join(out)


def _clock_hours(hh: pl.Expr, mm: pl.Expr) -> pl.Expr:
    """Hours from the two text sides of a clock time; null unless ``hh:mm`` is a clock time by the rule of
    :data:`clinical_lstm.data.times.CLOCK_TIME`: ``[-]H+:MM``, minutes 0-59 in one or two digits, a leading minus
    on the whole time. Checked with integer casts (which refuse blanks, dots, exponents and non-ASCII digits),
    not the regex itself, which cost a fifth of :func:`physionet_raw`; ``test_hostile_sources`` fuzzes one against
    the other. (Hours beyond int64 are the one difference: null here.)"""
    h, m = hh.cast(pl.Int64, strict=False), mm.cast(pl.Int64, strict=False)
    clock = (~hh.str.starts_with("+") & (mm.str.len_bytes() <= 2) & ~mm.str.starts_with("+")
             & ~mm.str.starts_with("-") & m.is_between(0, 59))
    return pl.when(clock).then(pl.when(hh.str.starts_with("-")).then(h - m / 60.0).otherwise(h + m / 60.0))


def read_physionet(path: str | Path, outcomes: str | Path | None = None) -> RawData:
    """Read a PhysioNet 2012 set folder or ``.tar.gz`` into :class:`RawData`.

    The ``RecordID`` descriptor rows are dropped (the id is ``stay_id``; one naming another stay rejects its
    stay). ``Outcomes-<x>.txt`` is looked for beside the folder/archive unless ``outcomes`` is given; without
    it ``outcomes`` is None. Raises :class:`DataError` for an archive that does not read to its end.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    files, ignored = [], 0
    for record_id, data in iter_stay_files(path):
        if record_id is None:
            ignored += 1
        else:
            files.append((record_id, data))
    if not files:
        raise no_stay_files(path)
    ids = pl.Series([rid for rid, _ in files], dtype=pl.Int64)
    if ids.is_duplicated().any():  # e.g. set-a/1.txt and set-a/old/1.txt: which one is the stay?
        raise DataError(f"{path}: stay {ids.filter(ids.is_duplicated())[0]} appears more than once (two stay "
                        f"files with the same RecordID); keep one of them")
    raw = physionet_raw(files, path.name)
    out_path = Path(outcomes) if outcomes else find_outcomes(path)
    raw.outcomes = read_outcomes(out_path) if out_path else None
    raw.ignored_members = ignored
    return raw


def physionet_raw(files, source: str) -> RawData:
    """``[(record_id, file bytes), ...]`` -> :class:`RawData` (no outcomes). Every record id given is a stay;
    an unreadable file or a RecordID row naming another stay rejects it (``unreadable``), none of its rows kept."""
    chunks, stays, unreadable = [], [], {}
    for record_id, data in files:
        stays.append(record_id)
        lines = _stay_lines(record_id, data)
        if lines is None:
            unreadable[record_id] = "unreadable_file"
        else:
            chunks.append(lines)
    schema = {"stay_id": pl.Int64, "hh": pl.String, "mm": pl.String, "variable": pl.String, "value": pl.Float64}
    buf = b"".join(chunks)
    if buf:
        # ignore_errors: an unparseable number becomes null and is counted by validation's rules
        long = pl.read_csv(io.BytesIO(buf), has_header=False, new_columns=list(schema), schema=schema,
                           quote_char=None, truncate_ragged_lines=True, ignore_errors=True)
    else:
        long = pl.DataFrame(schema=schema)
    # a line without a comma has no variable: "" keeps it visible to validation (a null would be dropped below)
    long = long.with_columns(pl.col("variable").fill_null(""))
    record_id = long["variable"].str.strip_chars() == "RecordID"
    agrees = (pl.col("value") == pl.col("stay_id")) | (pl.col("value") == -1)
    mismatch = long.filter(record_id).filter(~agrees.fill_null(False))["stay_id"].unique().to_list()
    unreadable.update(dict.fromkeys(mismatch, "record_id_mismatch"))
    keep = ~record_id & ~long["stay_id"].is_in(mismatch) if mismatch else ~record_id
    long = long.filter(keep).select(
        "stay_id", _clock_hours(pl.col("hh"), pl.col("mm")).alias("time"), "variable", "value")
    return RawData(long=long, stays=pl.Series("stay_id", sorted(stays), dtype=pl.Int64), unreadable=unreadable,
                   sources=[source])


def no_stay_files(path: Path) -> DataError:
    """The error for a PhysioNet set (folder or archive) without a stay file; a folder of long-format files gets
    the fix (each file is its own ``--data``), since it would otherwise read as an empty set."""
    path = Path(path)
    long = sorted(f.name for f in path.iterdir() if f.suffix.lower() in (".csv", ".parquet")) if path.is_dir() else []
    hint = (f"; it holds {len(long):,} long-format file(s) ({', '.join(long[:3])}{', ...' if len(long) > 3 else ''}):"
            f" pass each as its own --data, a folder is read as a PhysioNet set" if long else "")
    return DataError(f"{path} holds no stay files (<RecordID>.txt with header 'Time,Parameter,Value'){hint}")


def find_outcomes(path: Path) -> Path | None:
    """``set-a`` or ``set-a.tar.gz`` -> ``Outcomes-a.txt`` beside it (or inside the folder), if present."""
    stem = path.name.split(".")[0]
    m = re.match(r"^set-(\w+)$", stem)
    if not m:
        return None
    for cand in (path.parent / f"Outcomes-{m.group(1)}.txt", path / f"Outcomes-{m.group(1)}.txt"):
        if cand.is_file():
            return cand
    return None


def read_outcomes(path: str | Path) -> pl.DataFrame:
    """Read a PhysioNet ``Outcomes-<x>.txt``: keep the label and SAPS-I, never Survival or Length_of_stay."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"outcomes file {path} does not exist")
    try:
        df = pl.read_csv(path, infer_schema_length=0)
    except pl.exceptions.PolarsError as exc:
        raise DataError(f"cannot read outcomes file {path}: {read_error(path, exc)}") from None
    need = {"RecordID", _OUTCOME_LABEL}
    if not need <= set(df.columns):
        raise DataError(f"outcomes file {path} must have columns {sorted(need)} (PhysioNet 2012 layout); "
                        f"found {df.columns}. For other data use --labels FILE with columns stay_id,label")
    check_header(path, "outcomes", ("RecordID", _OUTCOME_LABEL))
    df = checked_ids(df.rename({"RecordID": "stay_id", _OUTCOME_LABEL: "label"}), f"outcomes file {path}")
    if df.schema["stay_id"] != pl.Int64:  # a PhysioNet RecordID is a number, never text
        row = int((~df["stay_id"].str.contains(CANONICAL_INT)).arg_max())
        raise DataError(f"outcomes file {path}, row {row + 1}: RecordID {df['stay_id'][row]!r} is not a PhysioNet "
                        f"RecordID (the number of a stay file)")
    saps = pl.col("SAPS-I").cast(pl.Float64, strict=False) if "SAPS-I" in df.columns else pl.lit(None)
    out = df.select("stay_id", _LABEL.alias("label"), saps.cast(pl.Float64).alias("saps_i"))
    out = out.with_columns(pl.when(pl.col("saps_i") < 0).then(None).otherwise(pl.col("saps_i")).alias("saps_i"))
    return _check_labels(out, df, path, _OUTCOME_LABEL)


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


# -- stay ids -------------------------------------------------------------------------------------------------
CANONICAL_INT = r"^-?(0|[1-9][0-9]{0,17})$"  # text that is exactly an integer's own spelling
# Text that reads as a number: decimal notation, an optional sign, no leading zero ("007" is text, as MRNs are),
# no exponent ("12e4" is text, as hexadecimal ids are); then integral ("12", "12.0", "+12", "12.") or not.
NUMBER_TEXT = r"^[+-]?((0|[1-9][0-9]*)(\.[0-9]*)?|\.[0-9]+)$"
INTEGRAL_TEXT = r"^[+-]?((0|[1-9][0-9]*)(\.0*)?|\.0+)$"
NON_FINITE_TEXT = r"(?i)^[+-]?(nan|inf|infinity)$"


_INT64_FITS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


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


def read_long(path: str | Path) -> RawData:
    """Read a long-format CSV/Parquet (``stay_id, time, variable, value``) into :class:`RawData`.

    Extra columns are ignored. ``stay_id`` is an integer or text (an encounter id, a UUID), kept as given
    (:func:`id_dtype`); a row without a usable id cannot be attributed to a stay and raises an error naming it.
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
def load(paths, labels: str | Path | None = None, outcomes: str | Path | None = None) -> RawData:
    """Read one or more data paths (any mix of layouts) and their labels into one :class:`RawData`.

    Parameters
    ----------
    paths : path or list of paths
        PhysioNet set folders / ``.tar.gz`` archives, or long-format ``.csv`` / ``.parquet`` files.
    labels : path, optional
        ``stay_id, label`` file; overrides outcomes found beside PhysioNet sets.
    outcomes : path, optional
        A PhysioNet ``Outcomes-<x>.txt`` (only with a single PhysioNet path).
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise DataError("no data path given; pass --data PATH (a PhysioNet set folder/.tar.gz or a .csv/.parquet)")
    if outcomes and len(paths) > 1:
        raise DataError("--outcomes applies to a single --data path; for several sets keep each set's "
                        "Outcomes-<x>.txt beside it, or pass --labels FILE")
    for p in paths:
        if not p.exists():
            raise DataError(f"data path {p} does not exist")

    def read(p: Path) -> RawData:
        return read_physionet(p, outcomes) if is_physionet(p) else read_long(p)

    if len(paths) > 1:  # decompression and CSV parsing release the GIL: read the sets side by side
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(paths), 4)) as pool:
            parts = list(pool.map(read, paths))
    else:
        parts = [read(paths[0])]
    if len({p.stays.dtype for p in parts}) > 1:  # integer ids in one input, text in another: all text
        parts = [_ids_as_text(p) for p in parts]
    seen: dict = {}
    for part in parts:
        for sid in part.stays.to_list():
            if sid in seen:
                raise DataError(f"stay {sid} appears in both {seen[sid]} and {part.sources[0]}; "
                                f"stay ids must be unique across --data paths")
            seen[sid] = part.sources[0]
    same = all(p.long.schema == parts[0].long.schema for p in parts)
    long = pl.concat([p.long if same else _as_text(p.long, p.sources[0]) for p in parts], how="vertical")
    outs = [p.outcomes for p in parts if p.outcomes is not None]
    if labels is not None:
        out = read_labels(labels)
    elif outs:
        out = pl.concat(outs)
    else:
        out = None
    stays = pl.concat([p.stays for p in parts]).sort()
    if out is not None and out.schema["stay_id"] != stays.dtype:  # e.g. text ids, labels that look like integers
        long, out = same_id_kind([long, out])
        stays = stays.cast(pl.String)
    return RawData(
        long=long,
        stays=stays,
        outcomes=out,
        unreadable={k: v for p in parts for k, v in p.unreadable.items()},
        sources=[s for p in parts for s in p.sources],
        ignored_members=sum(p.ignored_members for p in parts),
    )


def _ids_as_text(raw: RawData) -> RawData:
    long, outcomes = (None if f is None else f.with_columns(pl.col("stay_id").cast(pl.String))
                      for f in (raw.long, raw.outcomes))
    return RawData(long, raw.stays.cast(pl.String), outcomes, {str(k): v for k, v in raw.unreadable.items()},
                   raw.sources, raw.ignored_members)


def _as_text(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Mixed sources concatenate as text; validation parses once, uniformly. A ``time`` that is neither text nor
    a number (a duration) is read as hours first, by the one rule for time (a timestamp is refused there)."""

    time = pl.col("time")
    if not (df.schema["time"].is_numeric() or df.schema["time"] in (pl.String, pl.Null)):
        time = time_hours(df.schema["time"], f"data file {source}")
    return df.with_columns(time.cast(pl.String).alias("time"), pl.col("value").cast(pl.String))
