"""Inputs cut into chunks of whole stays, for :mod:`clinical_lstm.serve.batch`.

An *index pass* finds every stay of an input without reading its values: for long-format files only the
``stay_id`` and ``variable`` columns (every stay, its first row and row count, whether each stay's rows are
contiguous, the variable names not in the catalogue); for PhysioNet folders and archives the stay files'
names. :func:`plan_chunks` cuts the stays into chunks in input order and :func:`read_chunks` reads a chunk's
rows: a row slice for contiguous Parquet, a filter otherwise, the chunk's members for PhysioNet sets.
:func:`stream_physionet` reads a PhysioNet set in chunks without the index pass (``prepare`` and ``train``, which
stage what they write and keep nothing of a failed job; batch scoring, which resumes, indexes first).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from ..files import atomic_path
from .archives import STAY_FILE, folder_entries, iter_stay_files
from .grid import ids_numpy
from .ids import id_dtype, no_stay, stay_id_key
from .physionet import no_stay_files, physionet_raw
from .sources import LONG_COLUMNS, DataError, RawData, as_read, check_header, check_types, read_error

NULL_NAME = "<null>"  # the key under which rows with a null variable name are counted


@dataclass
class Chunk:
    """Consecutive whole stays of one input."""

    index: int  # position in the job (all inputs)
    input: int  # which input
    first: int  # position of its first stay in the input's stay order
    stays: int
    offset: int = 0  # long inputs with contiguous stays: first row
    rows: int = 0  # long inputs with contiguous stays: number of rows


@dataclass
class Input:
    """One ``--data`` path, indexed: its stays in input order and how to read a chunk of them."""

    path: Path
    kind: str  # "long" | "physionet"
    stay_ids: np.ndarray  # input order: int64, or unicode text for text ids
    first_row: np.ndarray | None = None  # long: first row of each stay
    n_rows: np.ndarray | None = None  # long: rows of each stay
    contiguous: bool = True
    unknown_variables: dict[str, int] = field(default_factory=dict)
    ignored_members: int = 0
    empty: bool = False
    id_dtype: pl.DataType = pl.Int64  # Int64, or String for text ids (clinical_lstm.data.sources.id_dtype)
    spellings: pl.Series | None = None  # long: each stay's raw ids as read (a list: "1" and "1.0" are one stay)
    digest: str | None = None  # content_digest(path), when already computed

    @property
    def name(self) -> str:
        return self.path.name

    def fingerprint(self) -> dict:
        """What makes a resumed job the same job: the input's path and its content (:func:`content_digest`).
        Never its size or modification time: an edit of the same length can restore both."""
        if self.digest is None:
            self.digest = content_digest(self.path)
        return {"name": str(self.path.resolve()), "content": self.digest}


DIGEST_PIECE = 1 << 20  # bytes hashed at a time


def content_digest(path: Path, stop: threading.Event | None = None) -> str | None:
    """SHA-256 of everything a job reads of the input ``path``, read in 1 MiB pieces: a file's bytes (a long
    table, an archive); for a set folder every entry's path and kind and every stay file's bytes, in the order
    they are read (:func:`clinical_lstm.data.archives.folder_entries`; links are not followed, other files not read).
    Returns None as soon as ``stop`` is set (the job failed meanwhile)."""
    if not path.is_dir():
        return _file_digest(path, stop)
    h = hashlib.sha256()
    for entry in folder_entries(path):
        if stop is not None and stop.is_set():
            return None
        kind = ("link" if entry.is_symlink() else "folder" if entry.is_dir() else "file" if entry.is_file()
                else "other")
        content = _file_digest(entry, stop) if kind == "file" and STAY_FILE.match(entry.name) else ""
        h.update(f"{entry.relative_to(path).as_posix()}\0{kind}\0{content}\n".encode("utf-8", "surrogateescape"))
    return None if stop is not None and stop.is_set() else h.hexdigest()


def _file_digest(path: Path, stop: threading.Event | None) -> str | None:
    h, piece = hashlib.sha256(), bytearray(DIGEST_PIECE)
    try:
        with path.open("rb") as f:
            while n := f.readinto(piece):
                if stop is not None and stop.is_set():
                    return None
                h.update(memoryview(piece)[:n])
    except OSError as exc:
        return f"unreadable: {exc.strerror or type(exc).__name__}"  # the readers reject or refuse it by rule
    return h.hexdigest()


def _scan(path: Path) -> pl.LazyFrame:
    if path.suffix.lower() == ".parquet":
        return pl.scan_parquet(path)
    return pl.scan_csv(path, infer_schema=False, quote_char='"')  # all text: validation counts bad entries


def _stay_id_expr(dtype, kind=None) -> pl.Expr:
    """``stay_id`` as the job reads it: the key of :func:`clinical_lstm.data.sources.stay_id_key` (null where a row
    names no stay), in the ids' ``kind`` once the index pass has decided it."""
    key = stay_id_key(dtype)
    return key if kind is None else key.cast(kind)


def index_long(path: Path, catalogue) -> Input:
    """The index pass of a long-format file: stays, contiguity, unknown variables — ``stay_id`` and
    ``variable`` only. Raises :class:`DataError` for a file that cannot be read or lacks columns."""
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".txt"):
        raise DataError(f"data file {path} must be .csv, .parquet, a PhysioNet set folder or .tar.gz "
                        f"(got '{suffix}')")
    empty = Input(path, "long", np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), empty=True)
    if path.stat().st_size == 0:
        return empty
    try:
        scan = _scan(path)
        columns = scan.collect_schema().names()
    except pl.exceptions.NoDataError:
        return empty
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read data file {path}: {read_error(path, exc)}") from None
    missing = [c for c in LONG_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"data file {path} lacks column(s) {missing}; expected {list(LONG_COLUMNS)} "
                        f"(extra columns are ignored), found {columns}")
    check_header(path, "data", LONG_COLUMNS)
    check_types(scan.collect_schema(), f"data file {path}")  # a list or a timestamp fails here, before any chunk
    try:  # runs of equal raw ids (one per stay in a file sorted by stay), not rows, are grouped by key below
        runs, variables = pl.collect_all([
            scan.select(pl.col("stay_id").rle()).unnest("stay_id"),
            scan.group_by(pl.col("variable").cast(pl.String).str.strip_chars()).len(),
        ])
    except (pl.exceptions.PolarsError, OSError) as exc:
        hint = (" (an opening quote that is never closed makes the rest of the file one field: check the "
                "quoting)" if "malformed" in str(exc) else "")
        raise DataError(f"cannot read data file {path}: {read_error(path, exc)}{hint}") from None
    first = runs["len"].cast(pl.Int64).cum_sum() - runs["len"]
    runs = pl.DataFrame({"stay_id": runs["value"], "first": first, "n": runs["len"].cast(pl.Int64)})
    runs = runs.with_columns(_stay_id_expr(runs.schema["stay_id"]).alias("key"))
    bad = runs.filter(pl.col("key").is_null()).head(1)
    if bad.height:
        raise no_stay(f"data file {path}", bad["first"][0] + 1, bad["stay_id"][0])
    stays = runs.group_by("key", maintain_order=True).agg(  # as grouping the rows: runs are in row order
        pl.col("first").min(), (pl.col("first") + pl.col("n") - 1).max().alias("last"), pl.col("n").sum(),
        pl.col("stay_id").unique().alias("spellings"),
    ).rename({"key": "stay_id"})
    if not stays.height:
        return empty
    kind = id_dtype(stays["stay_id"])
    first, last, n = (stays[c].to_numpy().astype(np.int64) for c in ("first", "last", "n"))
    known = set(catalogue.names)
    unknown = {NULL_NAME if v is None else str(v): int(k) for v, k in variables.iter_rows() if v not in known}
    return Input(path, "long", ids_numpy(stays["stay_id"].cast(kind)), first, n,
                 contiguous=bool(np.all(last - first + 1 == n)), unknown_variables=unknown, id_dtype=kind,
                 spellings=stays["spellings"])


def index_physionet(path: Path) -> Input:
    """The index pass of a PhysioNet set folder or archive: its stay entries in order, unparsed. An archive is
    read to its end and checked (:mod:`clinical_lstm.data.archives`), so a damaged one stops the job here."""
    ids, ignored = [], 0
    for record_id, _ in iter_stay_files(path, skip=lambda _: True):
        if record_id is None:
            ignored += 1
        else:
            ids.append(record_id)
    if not ids:  # as every other reader: an empty set is an error, never an input that quietly adds no stay
        raise no_stay_files(path)
    return Input(path, "physionet", np.asarray(ids, dtype=np.int64), ignored_members=ignored)


def stream_physionet(inp: Input, number: int, chunk_stays: int, first_index: int) -> Iterator[tuple[Chunk, Callable]]:
    """The stays of PhysioNet input ``inp`` (the job's input ``number``) read in ONE pass, without the index pass:
    ``(chunk, parse)`` for every ``chunk_stays`` stay entries in folder/archive order, where ``parse()`` gives the
    chunk's :class:`RawData` (parsing is left to the caller's worker thread), chunks numbered from
    ``first_index``. When it ends, ``inp`` holds what :func:`index_physionet` would have found. A damaged archive
    raises :class:`DataError` only when the damage is reached, after the chunks before it: a caller that writes
    chunks as they come must discard them then (``prepare`` and ``train`` do; batch scoring indexes first)."""
    ids, files, ignored = [], [], 0

    def chunk():
        return (Chunk(first_index + (len(ids) - 1) // chunk_stays, number, len(ids) - len(files), len(files)),
                partial(physionet_raw, files, inp.name))

    for record_id, data in iter_stay_files(inp.path):
        if record_id is None:
            ignored += 1
            continue
        files.append((record_id, data))
        ids.append(record_id)
        if len(files) == chunk_stays:
            yield chunk()
            files = []
    if files:
        yield chunk()
    inp.stay_ids, inp.ignored_members, inp.empty = np.asarray(ids, dtype=np.int64), ignored, not ids


def plan_chunks(inputs: list[Input], chunk_stays: int) -> list[Chunk]:
    chunks = []
    for i, inp in enumerate(inputs):
        for first in range(0, len(inp.stay_ids), chunk_stays):
            k = min(chunk_stays, len(inp.stay_ids) - first)
            c = Chunk(len(chunks), i, first, k)
            if inp.kind == "long" and inp.contiguous:
                c.offset = int(inp.first_row[first])
                c.rows = int(inp.n_rows[first:first + k].sum())
            chunks.append(c)
    return chunks


def read_chunks(inp: Input, chunks: list[Chunk], todo: set[int], spill: Path | None) -> Iterator[tuple[Chunk, RawData]]:
    """Yield ``(chunk, RawData)`` for the chunks of ``inp`` (``chunks``) whose index is in ``todo``, in order."""
    if inp.kind == "physionet":
        yield from _read_physionet_chunks(inp, chunks, todo)
        return
    scan = pl.scan_parquet(spill) if spill is not None else _scan(inp.path)
    schema = scan.collect_schema()
    ids = _stay_id_expr(schema["stay_id"], inp.id_dtype)
    columns = (pl.col("time"), *as_read(schema))
    for c in chunks:
        if c.index not in todo:
            continue
        chunk_ids = inp.stay_ids[c.first:c.first + c.stays]
        if inp.contiguous:  # the index pass found these rows to be these stays' runs: ids need no reading
            df = scan.slice(c.offset, c.rows).select(*columns).collect()
            run = np.repeat(np.arange(c.stays), inp.n_rows[c.first:c.first + c.stays])
            df = df.insert_column(0, pl.Series("stay_id", chunk_ids, dtype=inp.id_dtype).gather(run))
        else:  # the rows whose raw id is one of the chunk's stays' spellings: the key is computed on those only
            spellings = inp.spellings.slice(c.first, c.stays).explode()
            df = (scan.filter(pl.col("stay_id").is_in(spellings.implode())).select(ids.alias("stay_id"), *columns)
                  .collect())
        yield c, RawData(long=df, stays=pl.Series("stay_id", np.sort(chunk_ids), dtype=inp.id_dtype),
                         sources=[inp.name])


def _read_physionet_chunks(inp: Input, chunks: list[Chunk], todo: set[int]):
    """One pass over the folder/archive; files of finished chunks are skipped unread."""
    starts = np.array([c.first for c in chunks])
    of = lambda position: chunks[int(np.searchsorted(starts, position, side="right")) - 1]  # noqa: E731
    files: list = []
    position = -1
    for record_id, data in iter_stay_files(inp.path, skip=lambda p: of(p).index not in todo):
        if record_id is None:
            continue
        position += 1
        c = of(position)
        if c.index not in todo:
            continue
        files.append((record_id, data))
        if len(files) == c.stays:
            yield c, physionet_raw(files, inp.name)
            files = []


def spill_csv(inp: Input, workdir: Path) -> Path:
    """Stream a CSV into a Parquet spill file in ``workdir`` (all columns as text), so chunks are row slices."""
    spill = workdir / f"spill-{hashlib.sha1(str(inp.path.resolve()).encode()).hexdigest()[:10]}.parquet"
    with atomic_path(spill) as tmp:
        _scan(inp.path).select(LONG_COLUMNS).sink_parquet(tmp)
    return spill


def check_unique_ids(inputs: list[Input]) -> None:
    """Every stay id once across the inputs; inputs with integer ids and inputs with text ids are read with
    text ids (so that the output has one kind of id)."""
    if len({inp.id_dtype for inp in inputs if not inp.empty}) > 1:
        for inp in inputs:
            inp.stay_ids, inp.id_dtype = inp.stay_ids.astype(str), pl.String
    seen: dict = {}
    for inp in inputs:
        ids, counts = np.unique(inp.stay_ids, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{inp.name}: stay {ids[counts > 1][0]} appears more than once (two stay files with "
                            f"the same RecordID)")
        for sid in ids.tolist():
            if sid in seen:
                raise DataError(f"stay {sid} appears in both {seen[sid]} and {inp.name}; stay ids must be "
                                f"unique across --data paths")
        seen.update(dict.fromkeys(ids.tolist(), inp.name))
