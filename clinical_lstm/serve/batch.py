"""Batch scoring at hospital scale: chunks of whole stays, bounded memory, atomic output, resumable.

How a job runs
--------------
1. **Contract, before any work.** The model loads (bundle format checked), its catalogue is compared with the
   catalogue the job expects (``catalogue=``), every input's columns are checked, and an index pass reads only
   ``stay_id`` and ``variable`` of long-format files: it finds every stay, whether each stay's rows are
   contiguous, and the variable names that are not in the catalogue (reported, then ignored by rule). A
   problem here raises :class:`~clinical_lstm.data.sources.DataError` (``clinical-lstm`` exits with code 2).
2. **Chunks of whole stays** (:mod:`clinical_lstm.data.chunks`). Stays are cut into chunks of ``chunk_stays`` in
   input order. A long Parquet file whose stays are contiguous (sorted or grouped by ``stay_id``, as database
   extracts are) is read chunk by chunk as row slices; otherwise each chunk is filtered out of the file (one
   scan per chunk: slower, same result). CSV is first copied into a Parquet spill file in the working folder
   (streamed). PhysioNet folders and archives are read member by member. Chunks are scored by ``workers``
   threads; memory is bounded by the chunk size and the worker count, not the input size.
3. **Atomic parts and a manifest.** Each chunk's scored rows and rejects are written to the working folder
   ``<out folder>/.<out name>.partial/`` (temp file + rename), then recorded in ``manifest.json`` (also
   atomic). A job that is killed — even with SIGKILL — and re-run with the same arguments skips the chunks
   the manifest records and produces the same output as an uninterrupted run (``scored_at`` is fixed when
   the job first starts). Changed inputs, model or options start the job afresh; an input is compared by its
   content (SHA-256, hashed while the index pass runs), never by size and modification time, which an edit
   can restore. A job that fails before any chunk is recorded removes its working folder; one that fails
   later keeps it and says so.
4. **Finish.** The parts are streamed into temporary files beside ``out``, ``<out name>.rejects.<ext>`` and
   ``<out name>.summary.json``; the job checks that stays in = scored + rejected and that no stay appears
   twice, then renames them into place (the summary last) and removes the working folder.

Side files are named from the *whole* output name (:func:`~clinical_lstm.serve.workdir.side_files`): ``s.parquet`` and ``s.csv`` in one
folder never share a file, and no path a job writes may be, or lie inside, one of its inputs
(:func:`clinical_lstm.files.check_not_input`). Every file follows the umask (:mod:`clinical_lstm.files`).

Output columns: ``stay_id, risk, flag, quality_flags, n_observations, [top1_variable, top1_contribution, ...],
model, model_version, scored_at``.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import polars as pl

from ..config import usable_cpus
from ..data.catalogue import Catalogue
from ..data.chunks import (
    Chunk,
    Input,
    check_unique_ids,
    content_digest,
    index_long,
    index_physionet,
    plan_chunks,
    read_chunks,
    spill_csv,
)
from ..data.physionet import is_physionet
from ..data.sources import DataError, RawData
from ..files import atomic_path, csv_safe, write_json
from ..model.network import torch_threads
from ..progress import Progress
from .batch_checks import _check_options, _check_out, _is_int, _locate_bundle, check_catalogue
from .batch_summary import _chunk_entry, _closing_line, _summary
from .resources import keep_freed_memory
from .workdir import _is_os_error, _Workdir, _WriteError, _writing, side_files

DEFAULT_CHUNK_STAYS = 2000
EXPLAIN_CHUNK_STAYS = 100  # the default with --explain: progress (rate, time left) within the first minute


# -- the job -------------------------------------------------------------------------------------------------


def _scored_schema(explain: int, id_dtype=pl.Int64) -> dict:
    """:data:`~clinical_lstm.serve.bundle.SCORES` (``stay_id`` in the inputs' kind of id), the top-K contributions, then
    the model and the scoring time."""
    from .bundle import SCORES

    tops = {f"top{r}_{c}": d for r in range(1, explain + 1) for c, d in (("variable", pl.String),
                                                                         ("contribution", pl.Float64))}
    return {**SCORES, "stay_id": id_dtype, **tops, "model": pl.String, "model_version": pl.String,
            "scored_at": pl.Datetime("us", "UTC")}


def _conform(df: pl.DataFrame, schema: dict) -> pl.DataFrame:
    return df.select([(pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c) for c, t in schema.items()])


def _sink(parts: list[Path], schema: dict, tmp: Path, csv: bool) -> int:
    """Stream the parts into the file ``tmp`` (Parquet, or CSV when ``csv``, its text cells neutralised against
    formula injection by the rule of :func:`clinical_lstm.files.write_frame`); returns the row count."""
    lf = pl.scan_parquet(parts) if parts else pl.DataFrame(schema=schema).lazy()
    if csv:
        csv_safe(lf).sink_csv(tmp)
        return pl.scan_csv(tmp).select(pl.len()).collect().item()
    lf.sink_parquet(tmp)
    return pl.scan_parquet(tmp).select(pl.len()).collect().item()


def score_batch(model, data, out: str | Path, explain: int = 0, chunk_stays: int | None = None,
                catalogue=None, restart: bool = False, progress: bool = False, log=None,
                workers: int | None = None) -> dict:
    """Score every stay of ``data`` in chunks; write ``out`` (.parquet or .csv), rejects and summary beside it.

    Parameters
    ----------
    model : path, MLflow model URI or RiskModel
    data : path or list of paths
        Long-format ``.parquet`` / ``.csv`` files, PhysioNet set folders or ``.tar.gz`` archives.
    out : path
        ``.parquet`` (default choice) or ``.csv``. ``<out name>.rejects.<ext>`` and ``<out name>.summary.json``
        are written beside it (:func:`~clinical_lstm.serve.workdir.side_files`); none of these may be, or lie inside, an input. Parquet keeps
        every value exactly; in CSV a text cell a spreadsheet would run as a formula (``=...``, ``+...``,
        ``-...``, ``@...``) starts with ``'`` (:func:`clinical_lstm.files.write_frame`).
    explain : int
        Add each stay's top-K variables with signed SHAP contributions (log-odds); 0 = none.
    chunk_stays : int, optional
        Stays per chunk: the unit of resume, of progress and of memory (peak RSS was 1.2 GB for 2,000
        PhysioNet-sized stays and 2 workers, whatever the input size; see docs/benchmarks.md). Default
        :data:`DEFAULT_CHUNK_STAYS`, or :data:`EXPLAIN_CHUNK_STAYS` with ``explain``: a stay's explanation costs
        about as much as scoring a hundred, so smaller chunks give the progress bar its rate and time left in the
        first minute instead of after a whole chunk.
    catalogue : "default", path or None
        The catalogue the job's data follow; a model trained on another catalogue is refused. None: no check.
    restart : bool
        Ignore an unfinished earlier run of the same job instead of resuming it.
    progress : bool
        A progress bar on a terminal, one line per chunk in a log.
    workers : int, optional
        Chunks scored at once, each in its own thread with one torch thread (default: the CPU count, at
        most 4). Memory grows with ``workers * chunk_stays``.

    Returns
    -------
    dict
        The summary (also written to ``<out name>.summary.json``).

    Raises
    ------
    DataError
        Before any work for bad options, an output that cannot be written or would touch an input, and a
        broken input contract; during the job when a file cannot be written (a full disk), saying whether the
        chunks scored so far are kept for a resume.
    """
    t0 = time.perf_counter()
    if chunk_stays is None:
        chunk_stays = EXPLAIN_CHUNK_STAYS if _is_int(explain) and explain > 0 else DEFAULT_CHUNK_STAYS
    _check_options(explain, chunk_stays, workers)
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    given = os.fspath(out)  # the closing line and the summary name the output as the user gave it
    out = Path(out)
    paths = [Path(p) for p in ([data] if isinstance(data, (str, os.PathLike)) else data)]
    if not paths:
        raise DataError("no data path given; pass --data PATH (a PhysioNet set folder/.tar.gz or a .csv/.parquet)")
    for p in paths:
        if not p.exists():
            raise DataError(f"data path {p} does not exist")
    _check_out(out, paths, model, catalogue)
    workers = workers or min(usable_cpus(), 4)
    keep_freed_memory()

    # 1. the contract, before any work. A model given by path or URI is located and its catalogue read first;
    # the inputs are then indexed (polars, which releases the GIL) while torch imports in the background.
    if isinstance(model, (str, Path)):
        source = str(model)
        bundle_dir, provenance = _locate_bundle(source)
        threading.Thread(target=importlib.import_module, args=("torch",), daemon=True).start()
        model_catalogue = Catalogue.from_csv(bundle_dir / "catalogue.csv")
    else:
        source, model_catalogue = "<in memory>", model.catalogue
    check_catalogue(model_catalogue, catalogue)
    inputs = _indexed(paths, model_catalogue)
    _report_inputs(inputs, log)
    if isinstance(model, (str, Path)):
        from .bundle import RiskModel

        model = RiskModel.load(bundle_dir)
        if provenance:
            model.metadata["source"] = provenance

    if explain:
        from ..explain.shapley import player_names

        players = len(player_names(model.transformer))
        if explain > players:  # no stay has more contributions than the model has variables
            log(f"warning: --explain {explain} exceeds the model's {players} explained variables; "
                f"the top {players} are written")
            explain = players
    job = _Job(model, source, inputs, out, given, explain, chunk_stays, log)
    try:
        job.work.open(job.fingerprint, restart, log)
        job.phases["contract"] = time.perf_counter() - t0
        job.score_chunks(workers, progress)  # 2-3
        job.phases["chunks"] = time.perf_counter() - t0 - job.phases["contract"]
        summary = job.finish(time.perf_counter() - t0)  # 4
        job.work.remove()
    except BaseException as exc:
        if not job.work.locked:  # the lock was not taken: nothing of this job's to remove or to resume
            if isinstance(exc, _WriteError):
                raise DataError(str(exc)) from exc
            raise
        kept = job.failed()  # the work folder goes when no chunk is saved; otherwise it stays for a re-run
        if isinstance(exc, (_WriteError, DataError)):  # one line, with what a re-run will do
            raise DataError(f"{exc}; {kept}") from exc
        job.log(f"interrupted; {kept}" if isinstance(exc, KeyboardInterrupt) else f"the job failed; {kept}")
        raise
    finally:
        job.work.release()
    log(_closing_line(summary))
    return summary


def _indexed(paths: list[Path], catalogue: Catalogue) -> list[Input]:
    """The index pass over every input, while a second thread hashes their content for the job's fingerprint
    (:func:`clinical_lstm.data.chunks.content_digest`; hashlib and polars release the GIL, so the two overlap)."""
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as hashing:
        digests = hashing.submit(lambda: [content_digest(p, stop) for p in paths])
        try:
            inputs = [index_physionet(p) if is_physionet(p) else index_long(p, catalogue) for p in paths]
            check_unique_ids(inputs)
        except BaseException:
            stop.set()  # a refused input: the hashing ends at its next piece
            raise
        for inp, digest in zip(inputs, digests.result(), strict=True):
            inp.digest = digest
    return inputs


def _report_inputs(inputs: list[Input], log) -> None:
    for inp in inputs:
        if inp.empty:
            log(f"warning: {inp.name} holds no stays (empty file or header only)")
        if inp.unknown_variables:
            names = ", ".join(f"{k} ({v:,} rows)" for k, v in sorted(inp.unknown_variables.items()))
            log(f"warning: {inp.name}: variables not in the model's catalogue are ignored: {names}")
        if inp.ignored_members:
            what = ("entry is not a stay file", "was") if inp.ignored_members == 1 else ("entries are not stay files",
                                                                                         "were")
            log(f"note: {inp.name}: {inp.ignored_members:,} {what[0]} (<RecordID>.txt, at any depth) and {what[1]} "
                f"not read")
        if inp.kind == "long" and not inp.contiguous:
            log(f"note: {inp.name}: stays' rows are not contiguous; each chunk scans the file (sort the "
                f"extract by stay_id for speed)")


class _Job:
    """One scoring job: its chunks, its working folder and the columns every scored row gets."""

    def __init__(self, model, source: str, inputs: list[Input], out: Path, given: str, explain: int,
                 chunk_stays: int, log):
        self.model, self.inputs, self.out, self.explain, self.log = model, inputs, out, explain, log
        self.given = given
        self.chunks = plan_chunks(inputs, chunk_stays)
        self.n_stays = sum(len(i.stay_ids) for i in inputs)
        provenance = model.metadata.get("source", {})
        self.fingerprint = {"inputs": [i.fingerprint() for i in inputs], "model": model.digest(),
                            "model_uri": provenance.get("uri", source), "chunk_stays": chunk_stays,
                            "explain": explain, "catalogue": model.catalogue.digest()}
        self.version = provenance.get("version")
        self.id_dtype = next((i.id_dtype for i in inputs if not i.empty), pl.Int64)
        self.schema = _scored_schema(explain, self.id_dtype)
        self.reject_schema = {"stay_id": self.id_dtype, "reason": pl.String}
        self.phases: dict[str, float] = {}  # seconds: contract (load, index pass), chunks, finish
        self.work = _Workdir(out)

    def failed(self) -> str:
        """After a failure: remove the work folder when no chunk was recorded (nothing to resume), else keep it.
        Returns what was kept, for the error message."""
        done = len(self.manifest["done"])
        if not done:
            self.work.remove()
            return f"nothing was kept (no chunk of {len(self.chunks)} had been scored)"
        if done == len(self.chunks):
            return (f"all {done} chunk(s) are scored and saved in {self.work.path}: re-run the same command to "
                    f"write the output")
        return (f"{done}/{len(self.chunks)} chunk(s) are saved in {self.work.path}: re-run the same command to "
                f"resume")

    @property
    def manifest(self) -> dict:
        return self.work.manifest

    def process(self, c: Chunk, raw: RawData, read_s: float) -> dict:
        """Score one chunk and write its parts (runs in a worker thread); returns its manifest entry."""
        tc = time.perf_counter()
        scored, report = self.model.score_table(raw, explain=self.explain)
        rejects = scored.filter(pl.col("reason").is_not_null()).select("stay_id", "reason")
        if scored.height != c.stays:
            raise RuntimeError(f"chunk {c.index}: {c.stays} stays read, {scored.height} rows scored")
        extra = {"model": self.fingerprint["model_uri"], "model_version": self.version,
                 "scored_at": datetime.fromisoformat(self.manifest["scored_at"])}
        scored = _conform(scored.with_columns(**{k: pl.lit(v) for k, v in extra.items()}), self.schema)
        tw = time.perf_counter()
        self.work.write_part(c.index, "scored", scored)
        self.work.write_part(c.index, "rejects", _conform(rejects, self.reject_schema))
        seconds = {"read": read_s, "score": tw - tc, "write": time.perf_counter() - tw}
        return _chunk_entry(c, scored, rejects, report, seconds)

    def score_chunks(self, workers: int, progress: bool) -> None:
        """Whole chunks go to ``workers`` threads (polars, numpy and torch release the GIL; torch gets one thread
        each); at most ``workers`` chunks are in flight plus the one being read, so memory stays bounded."""
        bar = Progress(self.n_stays, progress, self.log, verb="scored", desc="score")
        bar.update(sum(v["stays"] for v in self.manifest["done"].values()))
        pending: deque = deque()

        def finish_oldest():
            c, future = pending.popleft()
            self.work.record(c.index, future.result())
            bar.update(c.stays)

        with torch_threads(1 if workers > 1 else None), ThreadPoolExecutor(max_workers=workers) as pool:
            try:
                for i, inp in enumerate(self.inputs):
                    mine = [c for c in self.chunks if c.input == i]
                    todo = {c.index for c in mine if str(c.index) not in self.manifest["done"]}
                    if not todo:
                        continue
                    spill = None
                    if inp.kind == "long" and inp.path.suffix != ".parquet":
                        with _writing(f"{self.work.path} (a Parquet copy of {inp.name})"):
                            spill = spill_csv(inp, self.work.path)
                    tr = time.perf_counter()
                    for c, raw in read_chunks(inp, mine, todo, spill):
                        pending.append((c, pool.submit(self.process, c, raw, time.perf_counter() - tr)))
                        while len(pending) >= workers:
                            finish_oldest()
                        tr = time.perf_counter()
                    while pending:
                        finish_oldest()
                    if spill is not None:
                        spill.unlink(missing_ok=True)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                bar.close()
                raise
        bar.close()

    def finish(self, seconds_so_far: float) -> dict:
        """Stream the parts into the output and rejects files, check the accounting, write the summary. All
        three are written to temporary files first and renamed into place only when all are complete, the
        summary last: a failure here leaves none of them (and the work folder, for a re-run)."""
        t0 = time.perf_counter()
        out, chunks, work = self.out, self.chunks, self.work
        files = side_files(out)
        csv = out.suffix == ".csv"
        target = out
        try:
            # exits run innermost first: out, then rejects, then the summary are renamed into place
            with atomic_path(files["summary"]) as summary_tmp, atomic_path(files["rejects"]) as rejects_tmp, \
                    atomic_path(out) as out_tmp:
                n_rows = _sink([work.part(c.index, "scored") for c in chunks], self.schema, out_tmp, csv)
                target = files["rejects"]
                n_rejected = _sink([work.part(c.index, "rejects") for c in chunks], self.reject_schema, rejects_tmp, csv)
                target = files["summary"]
                summary = self._summary(n_rows, n_rejected, seconds_so_far, t0)
                write_json(summary_tmp, summary)
                target = out
        except (OSError, pl.exceptions.PolarsError) as exc:
            if not _is_os_error(exc):
                raise
            raise _WriteError(target, exc) from exc
        return summary

    def _summary(self, n_rows: int, n_rejected: int, seconds_so_far: float, t0: float) -> dict:
        """Check the accounting (stays in = rows out, no stay twice, rejects = rows without a risk); the summary."""
        parts = [pl.scan_parquet(self.work.part(c.index, "scored")) for c in self.chunks]
        distinct, n_null = pl.concat(parts).select(pl.col("stay_id").n_unique(), pl.col("risk").null_count()).collect(
        ).row(0) if parts else (0, 0)
        n_scored = n_rows - n_rejected
        if not (n_rows == self.n_stays == distinct and n_null == n_rejected):
            raise RuntimeError(f"stay accounting failed: {self.n_stays} stays read, {n_rows} rows out, "
                               f"{distinct} distinct stay ids, {n_null} without a risk but {n_rejected} rejected; "
                               f"nothing is reported as done")
        done = [self.manifest["done"][str(c.index)] for c in self.chunks]
        summary = _summary(self.fingerprint, self.version, self.inputs, done, self.model.threshold,
                           (n_scored, n_rejected), self.given, str(side_files(self.given)["rejects"]),
                           seconds_so_far + time.perf_counter() - t0, self.manifest["scored_at"])
        summary["phase_seconds"] = {k: round(v, 2) for k, v in {**self.phases, "finish": time.perf_counter() - t0}
                                    .items()}
        return summary


