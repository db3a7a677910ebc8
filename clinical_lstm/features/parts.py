"""Stays gridded part by part on disk: the labelled input read in chunks of whole stays, validated, put on the
grid and written as parts (``Parts``), with the labels matched to the stays read and every rejected stay counted.
:class:`~clinical_lstm.features.cohort.Cohort` builds its tensors from them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

from ..config import usable_cpus
from ..data.catalogue import Catalogue
from ..data.chunks import (
    Input,
    check_unique_ids,
    index_long,
    plan_chunks,
    read_chunks,
    spill_csv,
    stream_physionet,
)
from ..data.grid import Grid, ids_numpy, to_grid
from ..data.load import _ids_as_text
from ..data.physionet import find_outcomes, is_physionet, no_stay_files, read_outcomes
from ..data.quality import QualityReport
from ..data.sources import DataError, read_labels
from ..data.validate import validate
from ..files import write_frame, write_json

MANIFEST = "cohort.json"
LAYOUT = 1
CHUNK_STAYS = 1000  # stays per part: small enough that reading overlaps validating (A+B: 4000 -> 1000 took 4.2 -> 2.8 s)
NO_LABELS = ("no outcome labels found for the {what}: pass --labels FILE (columns stay_id,label) or keep the "
             "PhysioNet Outcomes-<x>.txt beside the set (or pass --outcomes FILE)")
PARTS, STAGING = "parts", ".parts-partial"  # the parts' folder, and where a prepare in progress writes them


# -- pass 1: raw data -> gridded parts ----------------------------------------------------------------------------


class StayDigest:
    """SHA-256 of a cleaned long table that neither row order nor chunking changes: each stay's rows (sorted as
    :func:`~clinical_lstm.data.validate.validate` returns them) are hashed with its id (:meth:`frame`), and the stays'
    hashes are hashed in stay-id order (:attr:`Parts.digest`)."""

    def __init__(self, catalogue: Catalogue):
        self.codes = {n: i for i, n in enumerate(catalogue.names)}
        self.ids: list = []
        self.hashes: list[bytes] = []
        self.rows: list[int] = []

    def add(self, clean: pl.DataFrame) -> None:
        if not clean.height:
            return
        runs = clean["stay_id"].rle().struct.unnest()
        rows = np.empty(clean.height, dtype=[("code", "<i4"), ("time", "<f8"), ("value", "<f8")])
        rows["code"] = clean["variable"].replace_strict(self.codes, return_dtype=pl.Int32).to_numpy()
        rows["time"] = clean["time"].to_numpy()
        rows["value"] = clean["value"].fill_null(np.nan).to_numpy()
        buf, size = rows.tobytes(), rows.dtype.itemsize
        end = np.cumsum(runs["len"].to_numpy())
        for sid, e, n in zip(runs["value"].to_list(), end.tolist(), runs["len"].to_list(), strict=True):
            self.ids.append(sid)
            self.hashes.append(hashlib.sha256(f"{sid}\0".encode() + buf[(e - n) * size:e * size]).digest())
            self.rows.append(n)

    def frame(self, kind) -> pl.DataFrame:
        return pl.DataFrame({"stay_id": self.ids, "sha256": self.hashes, "rows": self.rows},
                            schema={"stay_id": kind, "sha256": pl.Binary, "rows": pl.Int64})


def no_ids(kind) -> np.ndarray:
    """(0,) stay ids of ``kind`` (Int64 or String): what no stay concatenates to, so that an empty selection
    still joins and compares with the job's other ids and labels."""
    return ids_numpy(pl.Series("stay_id", [], dtype=kind))


def check_labels_match(labels: pl.DataFrame, read_ids: np.ndarray, given: str) -> None:
    """Refuse labels of which none names a stay read (ids compared as written): labels of other data, or ids
    written another way (``1.0`` or ``X1`` for stay ``1``), would otherwise reject every stay ``no_label``."""
    ids = pl.Series("stay_id", read_ids).cast(pl.String)
    if not len(ids) or labels["stay_id"].cast(pl.String).is_in(ids.implode()).any():
        return
    example = f", {labels['stay_id'][0]!r} in the labels" if labels.height else ""
    raise DataError(f"no label matches a stay: {len(ids)} stays read, {labels.height} labels given ({given}), none "
                    f"with a stay in the data (e.g. stay_id {read_ids[:1].tolist()[0]!r} in the data{example}); the "
                    f"labels' stay_id must be the data's stay ids, written the same way")


def count_without_stay(labels: pl.DataFrame, read_ids: np.ndarray) -> int:
    """How many ``labels`` name no stay that was read: said in the quality report, since labels of stays missing
    from the data may mean data lost upstream (a partial extract)."""
    return int((~labels["stay_id"].is_in(pl.Series(read_ids).implode())).sum())


def is_cohort(path) -> bool:
    """Whether ``path`` is a folder :func:`grid_parts` wrote (``clinical-lstm prepare``'s output). A folder that
    holds what ``prepare`` writes but not its manifest, which it writes last, is a ``prepare`` that did not
    finish: a :class:`DataError`, rather than reading it as a PhysioNet set without stay files."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / MANIFEST).is_file():
        return True
    made = [n for n in (PARTS, STAGING, "grid.parquet", "stays.parquet", "quality_report.json") if (path / n).exists()]
    if made:
        raise DataError(f"{path} holds {', '.join(made)} but no {MANIFEST}: a clinical-lstm prepare that did not "
                        f"finish (interrupted, or failed); run prepare again")
    return False


@dataclass
class Parts:
    """Gridded chunks of stays on disk, with what validation found (see the module docstring)."""

    folder: Path
    files: list[str]  # part files, relative to ``folder``
    window_hours: float
    resolution_hours: float
    report: QualityReport
    outcomes: pl.DataFrame | None  # stay_id, label, saps_i of the kept stays (None: no labels)
    stays: pl.DataFrame  # stay_id, sha256, rows: each kept stay's hash and cleaned rows (:class:`StayDigest`)
    read_ids: np.ndarray  # every stay read: kept and rejected

    @property
    def id_kind(self) -> pl.DataType:
        """Int64 or String: the kind of the stay ids (:func:`clinical_lstm.data.sources.id_dtype`)."""
        return self.stays.schema["stay_id"]

    @property
    def sources(self) -> list[str]:
        return self.report.sources

    @property
    def digest(self) -> str:
        """SHA-256 of the kept stays' cleaned rows (:class:`StayDigest`)."""
        h = hashlib.sha256()
        for b in self.stays.sort("stay_id")["sha256"].to_list():
            h.update(b)
        return h.hexdigest()

    def grids(self) -> Iterator[Grid]:
        for name in self.files:
            with np.load(self.folder / name) as z:
                yield Grid(z["values"], z["obs_time"], z["lengths"], z["statics"], z["stay_ids"],
                           self.resolution_hours)

    def part_ids(self) -> list[np.ndarray]:
        """The stay ids of each part (read without the grids)."""
        out = []
        for name in self.files:
            with np.load(self.folder / name) as z:
                out.append(z["stay_ids"])
        return out

    def labelled(self, what: str = "training data") -> Parts:
        """These parts for training: every kept stay without an outcome becomes a ``no_label`` reject of the
        report (:meth:`Cohort.build` leaves it out), so no stay is lost unaccounted for."""
        if self.outcomes is None:
            raise DataError(NO_LABELS.format(what=what))
        ids = np.concatenate(self.part_ids()) if self.files else no_ids(self.id_kind)
        missing = pl.Series("stay_id", ids).filter(~pl.Series(ids).is_in(self.outcomes["stay_id"].implode()))
        if not len(missing):
            return self
        rejects = pl.DataFrame({"stay_id": missing, "reason": ["no_label"] * len(missing)})
        counts = pl.DataFrame({"rule": ["no_label"], "action": ["stay rejected"], "variable": [None],
                               "rows": [len(missing)]}, schema=self.report.counts.schema)
        gone = self.stays.filter(pl.col("stay_id").is_in(missing.implode()))
        extra = QualityReport(counts, rejects.cast({"stay_id": self.report.rejects.schema["stay_id"]}), 0,
                              -len(missing), 0, -int(gone["rows"].sum()), self.window_hours)
        return replace(self, report=QualityReport.merge([self.report, extra], self.window_hours),
                       stays=self.stays.filter(~pl.col("stay_id").is_in(missing.implode())))

    def remove(self) -> None:
        for name in self.files:
            (self.folder / name).unlink(missing_ok=True)

    @classmethod
    def open(cls, folder, catalogue: Catalogue, labels=None) -> Parts:
        """A folder :func:`grid_parts` wrote, checked against ``catalogue``; ``labels`` replaces its outcomes."""
        folder = Path(folder)
        try:
            m = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder}: cannot read its {MANIFEST} ({exc}); run clinical-lstm prepare again") from None
        if m.get("layout") != LAYOUT:
            raise DataError(f"{folder} was prepared in layout {m.get('layout')}; this version reads layout {LAYOUT}: "
                            f"run clinical-lstm prepare again")
        if m["series"] != catalogue.series or m["statics"] != catalogue.statics:
            raise DataError(f"{folder} was prepared with another catalogue (variables differ from "
                            f"{catalogue.digest()[:12]}'s): prepare it again with this one")
        kind = pl.String if m["id_kind"] == "text" else pl.Int64
        report = QualityReport.from_dict(json.loads((folder / "quality_report.json").read_text()), kind,
                                         known_variables=catalogue.names)
        given = outcomes = read_labels(labels) if labels is not None else (
            pl.read_parquet(folder / "labels.parquet") if (folder / "labels.parquet").is_file() else None)
        if outcomes is not None and outcomes.schema["stay_id"] != kind:  # labels read as the prepared ids' kind
            outcomes = outcomes.with_columns(pl.col("stay_id").cast(kind, strict=False))
        parts = cls(folder, [p["file"] for p in m["parts"]], m["window_hours"], m["resolution_hours"], report,
                    outcomes, pl.read_parquet(folder / "stays.parquet"), np.zeros(0))
        missing = [f for f in parts.files if not (folder / f).is_file()]
        if missing:
            raise DataError(f"{folder}: part {missing[0]} is missing ({len(missing)} of {len(parts.files)}); run "
                            f"clinical-lstm prepare again")
        kept = np.concatenate(parts.part_ids()) if parts.files else no_ids(kind)
        parts.read_ids = np.concatenate([kept, report.rejects["stay_id"].to_numpy()])
        if labels is not None:
            check_labels_match(given, parts.read_ids, f"labels file {labels}")  # as written, before the cast
            report.labels_without_stay = count_without_stay(outcomes, parts.read_ids)
        return parts


def _outcomes_for(paths: list[Path], labels, outcomes) -> pl.DataFrame | None:
    """The outcomes :func:`clinical_lstm.data.load.load` would attach: ``labels`` when given, else each PhysioNet
    set's ``Outcomes-<x>.txt`` (beside it, or ``outcomes`` for a single set)."""
    if labels is not None:
        return read_labels(labels)
    if outcomes and len(paths) > 1:
        raise DataError("--outcomes applies to a single --data path; for several sets keep each set's "
                        "Outcomes-<x>.txt beside it, or pass --labels FILE")
    found = [Path(outcomes) if outcomes else find_outcomes(p) for p in paths if is_physionet(p)]
    tables = [read_outcomes(f) for f in found if f is not None]
    return pl.concat(tables) if tables else None


def grid_parts(data, folder, catalogue: Catalogue, window_hours: float, resolution_hours: float, labels=None,
               outcomes=None, require_labels: bool = False, chunk_stays: int = CHUNK_STAYS,
               progress: bool = False, what: str = "data", workers: int | None = None, sink=None) -> Parts:
    """Pass 1 (module docstring): validate and grid ``data`` chunk by chunk into ``folder``, ``workers`` chunks
    at once (default: the CPU count, at most 4; memory grows with ``workers * chunk_stays``).

    ``require_labels`` rejects stays without an outcome (reason ``no_label``), as training does. ``sink`` takes each
    part's grid as well: ``sink.convert(grid)`` in the worker thread, then ``sink.write(converted)`` in part order
    (``prepare`` writes ``grid.parquet`` so while the next chunks are read). Raises
    :class:`DataError` for unreadable inputs, duplicate stay ids and inputs without any stay.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    paths = [Path(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
    if not paths:
        raise DataError("no data path given; pass --data PATH (a PhysioNet set folder/.tar.gz or a .csv/.parquet)")
    for p in paths:
        if not p.exists():
            raise DataError(f"data path {p} does not exist")
    # long inputs are indexed first (their ids decide the kind); PhysioNet sets are read once, their ids as they come
    inputs = [Input(p, "physionet", np.zeros(0, np.int64)) if is_physionet(p) else index_long(p, catalogue)
              for p in paths]
    found = _outcomes_for(paths, labels, outcomes)
    if require_labels and found is None:
        raise DataError(NO_LABELS.format(what=what))
    text = (found is not None and found.schema["stay_id"] == pl.String) or any(
        inp.id_dtype == pl.String for inp in inputs if not inp.empty)
    kind = pl.String if text else pl.Int64  # every id is read as text when labels or any input has text ids
    if text:  # long inputs read their ids as text; PhysioNet chunks are turned to text in the workers
        for inp in inputs:
            if inp.kind == "long":
                inp.stay_ids, inp.id_dtype = inp.stay_ids.astype(str), pl.String
    if found is not None and found.schema["stay_id"] != kind:
        found = found.with_columns(pl.col("stay_id").cast(kind))
    check_unique_ids([inp for inp in inputs if inp.kind == "long"])  # before reading; PhysioNet ids after

    def one(c, raw) -> tuple:  # a worker thread: polars and numpy release the GIL
        raw = raw() if callable(raw) else raw  # PhysioNet chunks are parsed here, in the worker
        if raw.stays.dtype != kind:  # a PhysioNet set read with text ids (other inputs or labels are text)
            raw = _ids_as_text(raw)
        clean, kept, report = validate(replace(raw, outcomes=found), catalogue, window_hours, require_labels)
        grid = to_grid(clean, kept.to_numpy(), catalogue, window_hours, resolution_hours)
        digest = StayDigest(catalogue)
        digest.add(clean)
        name = f"part-{c.index:05d}.npz"
        np.savez(stage / name, values=grid.values, obs_time=grid.obs_time, lengths=grid.lengths,
                 statics=grid.statics, stay_ids=grid.stay_ids)
        return (f"{PARTS}/{name}", grid.stay_ids, report, digest.frame(kind)), (
            sink.convert(grid) if sink is not None and len(grid.stay_ids) else None)

    def finish(c, future) -> None:  # in part order
        result, converted = future.result()
        done.append(result)
        if converted is not None:
            sink.write(converted)
        bar.update(c.stays)

    def chunks_of(i: int, inp: Input, first: int, spill: Path | None):
        if inp.empty:  # a long file of 0 bytes or a header only: no stay, and maybe no schema, to read
            return ()
        if inp.kind == "physionet":
            return stream_physionet(inp, i, chunk_stays, first)
        mine = [replace(c, index=first + c.index, input=i) for c in plan_chunks([inp], chunk_stays)]
        return read_chunks(inp, mine, {c.index for c in mine}, spill)

    known = None if any(inp.kind == "physionet" for inp in inputs) else sum(len(inp.stay_ids) for inp in inputs)
    given = f"labels file {labels}" if labels is not None else "the PhysioNet outcomes"

    def labels_match() -> None:  # once every input's ids are known
        if found is not None:
            check_labels_match(found, np.concatenate([inp.stay_ids for inp in inputs]), given)

    if known is not None:  # long inputs only: their ids are known before any is read
        labels_match()
    stage = folder / STAGING  # parts are written here and replace parts/ only once every input has been read
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    done, first = [], 0
    workers = workers or min(usable_cpus(), 4)
    bar = tqdm(total=known, desc="validate and grid", unit="stay", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: deque = deque()
            for i, inp in enumerate(inputs):
                spill = spill_csv(inp, folder) if inp.kind == "long" and inp.path.suffix.lower() != ".parquet" \
                    and not inp.empty else None
                try:
                    for c, raw in chunks_of(i, inp, first, spill):  # read here, one chunk ahead of the workers
                        pending.append((c, pool.submit(one, c, raw)))
                        first = c.index + 1
                        while len(pending) > workers:
                            finish(*pending.popleft())
                    while pending:
                        finish(*pending.popleft())
                finally:
                    if spill is not None:
                        spill.unlink(missing_ok=True)
                if inp.kind == "physionet" and inp.empty:
                    raise no_stay_files(inp.path)
        if kind == pl.String:
            for inp in inputs:
                inp.stay_ids, inp.id_dtype = inp.stay_ids.astype(str), pl.String
        check_unique_ids(inputs)
        if not sum(len(inp.stay_ids) for inp in inputs):
            raise DataError(f"no stays in {', '.join(map(str, paths))} (empty files or headers only)")
        if known is None:
            labels_match()
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        bar.close()
    (folder / MANIFEST).unlink(missing_ok=True)  # an earlier cohort here is gone from now on, never half-replaced
    shutil.rmtree(folder / PARTS, ignore_errors=True)
    stage.rename(folder / PARTS)
    files, part_ids, reports, frames = (list(x) for x in zip(*done, strict=True)) if done else ([], [], [], [])
    report = QualityReport.merge(reports, window_hours)
    report.empty_sources = [inp.name for inp in inputs if inp.empty]  # said, never silently left out
    kept_ids = np.concatenate(part_ids) if part_ids else no_ids(kind)
    read_ids = np.concatenate([kept_ids, report.rejects["stay_id"].to_numpy()])
    if found is not None:
        report.labels_without_stay = count_without_stay(found, read_ids)
        found = found.filter(pl.col("stay_id").is_in(pl.Series(kept_ids).implode()))
    stays = pl.concat(frames) if frames else StayDigest(catalogue).frame(kind)
    return Parts(folder, files, window_hours, resolution_hours, report, found, stays, read_ids)


def save_parts(parts: Parts, catalogue: Catalogue) -> Path:
    """Write the report, the outcomes and ``cohort.json`` beside the parts: the folder ``train`` can read."""
    folder = parts.folder
    parts.report.write(folder / "quality_report.json")
    write_frame(parts.report.rejects, folder / "rejects.csv")
    if parts.outcomes is not None:
        write_frame(parts.outcomes, folder / "labels.parquet")
    else:  # an earlier prepare's labels would be read as this cohort's
        (folder / "labels.parquet").unlink(missing_ok=True)
    write_frame(parts.stays, folder / "stays.parquet")
    ids = parts.part_ids()
    text = any(a.dtype.kind == "U" for a in ids) or parts.report.rejects.schema["stay_id"] == pl.String
    return write_json(folder / MANIFEST, {
        "layout": LAYOUT, "window_hours": parts.window_hours, "resolution_hours": parts.resolution_hours,
        "series": catalogue.series, "statics": catalogue.statics, "catalogue": catalogue.digest(),
        "id_kind": "text" if text else "int", "digest": parts.digest, "sources": parts.sources,
        "parts": [{"file": f, "stays": len(a)} for f, a in zip(parts.files, ids, strict=True)]})
