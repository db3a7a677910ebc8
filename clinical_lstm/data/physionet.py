"""PhysioNet Challenge 2012 sets: a folder or ``.tar.gz`` of ``<RecordID>.txt`` stay files (``Time,Parameter,Value``
with ``HH:MM`` times) read into :class:`~clinical_lstm.data.sources.RawData`, and the ``Outcomes-<x>.txt`` beside it
(the label and SAPS-I only).
"""

from __future__ import annotations

import codecs
import io
import re
from pathlib import Path

import polars as pl

from ..checks import DataError
from .archives import iter_stay_files
from .ids import CANONICAL_INT, checked_ids
from .sources import _LABEL, RawData, _check_labels, check_header, read_error

PHYSIONET_HEADER = b"Time,Parameter,Value"


# Outcome columns that leak the label or are scores, never model inputs. Only SAPS-I is kept, as a baseline.
_OUTCOME_LABEL = "In-hospital_death"


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
