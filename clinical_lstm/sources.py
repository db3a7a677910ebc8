"""Raw inputs -> one canonical long table ``stay_id, time, variable, value``.

Two layouts are read, both with polars:

* **PhysioNet Challenge 2012**: a set folder (``set-a/<RecordID>.txt``) or its ``.tar.gz`` read straight
  from the archive, with ``Outcomes-<x>.txt`` found beside it (or given explicitly). ``stay_id`` is the
  RecordID from the file name; ``HH:MM`` times become hours. Archive members that are not stay files
  (no numeric ``<RecordID>.txt`` name) are ignored and not counted.
* **Generic long format** (how a hospital brings its own data): CSV or Parquet with the columns
  ``stay_id`` (integer), ``time`` (hours since admission), ``variable``, ``value``. Static descriptors are
  rows at time 0. Labels come from a separate file with ``stay_id, label``.

Nothing is cleaned here: unparseable ``time`` / ``value`` entries stay visible (as text from generic CSV, as
nulls from PhysioNet files) so that :mod:`clinical_lstm.validate` counts every one of them by rule.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import polars as pl

LONG_COLUMNS = ("stay_id", "time", "variable", "value")
LABEL_COLUMNS = ("stay_id", "label")
PHYSIONET_HEADER = b"Time,Parameter,Value"
# Outcome columns that leak the label or are scores, never model inputs. Only SAPS-I is kept, as a baseline.
_OUTCOME_LABEL = "In-hospital_death"
_STAY_FILE = re.compile(r"^(\d+)\.txt$")


class DataError(ValueError):
    """Input data that cannot be read as documented; the message says what, where and the fix."""


class MissingDependency(ImportError):
    """An optional package a feature needs is not installed; the message names the install command."""


@dataclass
class RawData:
    """What was read, before any rule is applied.

    Attributes
    ----------
    long : polars.DataFrame
        ``stay_id`` Int64, ``time`` (hours: Float64, or String from generic CSV), ``variable`` String,
        ``value`` (Float64, or String from generic CSV; null = unparseable). One row per raw observation.
    stays : polars.Series
        Every stay seen (Int64, sorted), including stays with no rows and unreadable stay files.
    outcomes : polars.DataFrame or None
        ``stay_id`` Int64, ``label`` Int8 (0/1), ``saps_i`` Float64 (null when absent).
    unreadable : dict
        ``stay_id -> reason`` for stay files that could not be parsed at all.
    sources : list of str
        The file or folder names read (names only, no directories).
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


def _iter_stay_files(path: Path, skip=None):
    """Yield ``(record_id, bytes)`` for every stay file of a set folder or archive; ``(None, None)`` for the
    other files. ``skip(position)`` -> True yields ``(record_id, None)`` without reading the file (the position
    counts stay files only): batch scoring resumes an archive without parsing finished chunks again."""
    position = -1
    if path.is_dir():
        for f in sorted(path.iterdir()):
            m = _STAY_FILE.match(f.name)
            if m and f.is_file():
                position += 1
                yield int(m.group(1)), (None if skip and skip(position) else f.read_bytes())
            else:
                yield None, None
        return
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path} is not a readable tar archive ({exc}); pass a PhysioNet set folder, "
                        f"its .tar.gz, or a long-format .csv/.parquet") from None
    with tf:
        try:
            for member in tf:
                m = _STAY_FILE.match(PurePosixPath(member.name).name)
                if not (member.isfile() and m):
                    if member.isfile():
                        yield None, None
                    continue
                position += 1
                if skip and skip(position):
                    yield int(m.group(1)), None
                    continue
                fh = tf.extractfile(member)
                yield int(m.group(1)), (fh.read() if fh else b"")
        except (tarfile.TarError, OSError, EOFError) as exc:  # truncated or corrupt after some members
            raise DataError(f"{path}: the archive is damaged after {position + 1} stay files ({exc}); "
                            f"re-export it") from None


def _stay_lines(record_id: int, data: bytes) -> bytes | None:
    """Turn one stay file into ``record_id,Time,Parameter,Value`` lines; None if it is not a stay file."""
    data = data.replace(b"\r\n", b"\n")
    head, _, body = data.partition(b"\n")
    if head.strip() != PHYSIONET_HEADER:
        return None
    body = body.strip(b"\n")
    if not body:
        return b""
    if b"\0" in body:  # binary garbage inside a stay file: the whole file is unreadable
        return None
    prefix = b"%d," % record_id
    return prefix + _split_times(body).replace(b"\n", b"\n" + prefix) + b"\n"


def _split_times(body: bytes) -> bytes:
    """``HH:MM,HR,80`` -> ``HH,MM,HR,80`` so the CSV reader parses hours and minutes as numbers itself
    (several times faster than parsing time strings afterwards).

    The fast path applies when every line has exactly one colon and two commas and none starts with '-'.
    Otherwise each line is split on its own: ``-HH:MM`` keeps its sign on both parts, and a time that is not
    ``HH:MM`` becomes two empty fields, so the row is counted as ``unparseable_time`` under its own variable.
    """
    n_lines = body.count(b"\n") + 1
    if (body.count(b":") == n_lines and body.count(b",") == 2 * n_lines and not body.startswith(b"-")
            and b"\n-" not in body):
        return body.replace(b":", b",")
    out = []
    for line in body.split(b"\n"):
        time, _, rest = line.partition(b",")
        hh, colon, mm = time.partition(b":")
        if colon and b":" not in mm:
            out.append(hh + b"," + (b"-" if hh.startswith(b"-") else b"") + mm + b"," + rest)
        else:
            out.append(b",," + rest)
    return b"\n".join(out)


def read_physionet(path: str | Path, outcomes: str | Path | None = None) -> RawData:
    """Read a PhysioNet 2012 set folder or ``.tar.gz`` into :class:`RawData`.

    The ``RecordID`` descriptor rows are dropped (the id is ``stay_id``). ``Outcomes-<x>.txt`` is looked
    for beside the folder/archive unless ``outcomes`` is given; without it ``outcomes`` is None.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    files, ignored = [], 0
    for record_id, data in _iter_stay_files(path):
        if record_id is None:
            ignored += 1
        else:
            files.append((record_id, data))
    if not files:
        raise DataError(f"{path} holds no stay files (<RecordID>.txt with header 'Time,Parameter,Value')")
    raw = physionet_raw(files, path.name)
    out_path = Path(outcomes) if outcomes else find_outcomes(path)
    raw.outcomes = read_outcomes(out_path) if out_path else None
    raw.ignored_members = ignored
    return raw


def physionet_raw(files, source: str) -> RawData:
    """``[(record_id, file bytes), ...]`` -> :class:`RawData` (no outcomes). Unparseable files become
    ``unreadable`` stays; every record id given is a stay."""
    chunks, stays, unreadable = [], [], {}
    for record_id, data in files:
        stays.append(record_id)
        lines = _stay_lines(record_id, data)
        if lines is None:
            unreadable[record_id] = "unreadable_file"
        else:
            chunks.append(lines)
    schema = {"stay_id": pl.Int64, "hh": pl.Float64, "mm": pl.Float64, "variable": pl.String, "value": pl.Float64}
    buf = b"".join(chunks)
    if buf:
        # ignore_errors: an unparseable number becomes null and is counted by validation's rules
        long = pl.read_csv(io.BytesIO(buf), has_header=False, new_columns=list(schema), schema=schema,
                           quote_char=None, truncate_ragged_lines=True, ignore_errors=True)
    else:
        long = pl.DataFrame(schema=schema)
    long = long.filter(pl.col("variable") != "RecordID").select(
        "stay_id", (pl.col("hh") + pl.col("mm") / 60.0).alias("time"), "variable", "value")
    return RawData(long=long, stays=pl.Series("stay_id", sorted(stays), dtype=pl.Int64), unreadable=unreadable,
                   sources=[source])


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
    df = pl.read_csv(path, infer_schema_length=0)
    need = {"RecordID", _OUTCOME_LABEL}
    if not need <= set(df.columns):
        raise DataError(f"outcomes file {path} must have columns {sorted(need)} (PhysioNet 2012 layout); "
                        f"found {df.columns}. For other data use --labels FILE with columns stay_id,label")
    saps = pl.col("SAPS-I").cast(pl.Float64, strict=False) if "SAPS-I" in df.columns else pl.lit(None)
    out = df.select(
        pl.col("RecordID").cast(pl.Int64, strict=False).alias("stay_id"),
        pl.col(_OUTCOME_LABEL).cast(pl.Int8, strict=False).alias("label"),
        saps.cast(pl.Float64).alias("saps_i"),
    ).with_columns(pl.when(pl.col("saps_i") < 0).then(None).otherwise(pl.col("saps_i")).alias("saps_i"))
    return _check_labels(out, path)


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
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as exc:
        if isinstance(exc, pl.exceptions.NoDataError):
            df = pl.DataFrame(schema={c: pl.String for c in columns})
        else:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot read {kind} file {path}: {first}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{kind} file {path} lacks column(s) {missing}; expected exactly {list(columns)}, "
                        f"found {df.columns}")
    return df.select(columns)


def read_long(path: str | Path) -> RawData:
    """Read a long-format CSV/Parquet (``stay_id, time, variable, value``) into :class:`RawData`.

    Extra columns are ignored. ``stay_id`` must hold integers: a row whose id does not parse cannot be
    attributed to a stay and raises an error naming the first bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data path {path} does not exist")
    df = _read_table(path, "data", LONG_COLUMNS)
    ids = df["stay_id"].cast(pl.Int64, strict=False)
    bad = df.filter(ids.is_null() & df["stay_id"].is_not_null())
    if df["stay_id"].null_count() or len(bad):
        example = bad["stay_id"][0] if len(bad) else None
        raise DataError(f"data file {path}: stay_id must be an integer on every row; found {example!r}. "
                        f"Map your encounter identifiers to integers first")
    df = df.with_columns(ids.alias("stay_id"), pl.col("variable").cast(pl.String))
    return RawData(long=df, stays=df["stay_id"].unique().sort(), sources=[path.name])


def read_labels(path: str | Path) -> pl.DataFrame:
    """Read a labels file (``stay_id, label`` with label 0/1) as ``stay_id, label, saps_i`` (saps_i null)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    df = _read_table(path, "labels", LABEL_COLUMNS)
    out = df.select(pl.col("stay_id").cast(pl.Int64, strict=False),
                    pl.col("label").cast(pl.Int8, strict=False), pl.lit(None, pl.Float64).alias("saps_i"))
    return _check_labels(out, path)


def _check_labels(out: pl.DataFrame, path: Path) -> pl.DataFrame:
    bad = out.filter(pl.col("stay_id").is_null() | ~pl.col("label").is_in([0, 1]) | pl.col("label").is_null())
    if len(bad):
        raise DataError(f"labels in {path}: every row needs an integer stay_id and a label of 0 or 1; "
                        f"{len(bad)} row(s) do not")
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
    seen: dict[int, str] = {}
    for part in parts:
        for sid in part.stays.to_list():
            if sid in seen:
                raise DataError(f"stay {sid} appears in both {seen[sid]} and {part.sources[0]}; "
                                f"stay ids must be unique across --data paths")
            seen[sid] = part.sources[0]
    same = all(p.long.schema == parts[0].long.schema for p in parts)
    long = pl.concat([p.long if same else _as_text(p.long) for p in parts], how="vertical")
    outs = [p.outcomes for p in parts if p.outcomes is not None]
    if labels is not None:
        out = read_labels(labels)
    elif outs:
        out = pl.concat(outs)
    else:
        out = None
    return RawData(
        long=long,
        stays=pl.concat([p.stays for p in parts]).sort(),
        outcomes=out,
        unreadable={k: v for p in parts for k, v in p.unreadable.items()},
        sources=[s for p in parts for s in p.sources],
        ignored_members=sum(p.ignored_members for p in parts),
    )


def _as_text(df: pl.DataFrame) -> pl.DataFrame:
    """Mixed sources concatenate as text; validation parses once, uniformly."""
    return df.with_columns(pl.col("time").cast(pl.String), pl.col("value").cast(pl.String))
