"""A batch job's working folder ``<out folder>/.<out name>.partial/``: its lock (one job per output), the chunks'
parts written atomically and ``manifest.json`` recording each (so a killed job resumes where it stopped), the side
files' names, and the one error for a write that failed (the message says what was kept and how to resume).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ..data.sources import DataError
from ..files import write_frame, write_json

MANIFEST_VERSION = 1


def side_files(out: str | Path) -> dict[str, Path]:
    """The files a job writing ``out`` writes beside it, named from the *whole* output name: for ``s.parquet``,
    ``s.parquet.rejects.parquet``, ``s.parquet.summary.json`` and the work folder ``.s.parquet.partial/``
    (parts, manifest, lock, CSV spill). Two jobs with different outputs never share one of these."""
    out = Path(out)
    return {"rejects": out.with_name(f"{out.name}.rejects{out.suffix}"),
            "summary": out.with_name(f"{out.name}.summary.json"),
            "work": out.with_name(f".{out.name}.partial")}


class _WriteError(Exception):
    """A file of the job could not be written (a full disk, a file size limit, a lost mount)."""

    def __init__(self, what, exc: BaseException):
        super().__init__(f"cannot write {what}: {_os_reason(exc)}")


def _os_reason(exc: BaseException) -> str:
    """The operating system's words for ``exc``; polars wraps them as ``... (os error 28)``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        return os.strerror(int(found.group(1)))
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_os_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) or (isinstance(exc, pl.exceptions.PolarsError) and "os error" in str(exc))


@contextlib.contextmanager
def _writing(what):
    """Turn an operating-system failure while writing ``what`` (a path) into one :class:`_WriteError` naming it."""
    try:
        yield
    except (OSError, pl.exceptions.PolarsError) as exc:
        if not _is_os_error(exc):
            raise
        raise _WriteError(what, exc) from exc


class _Workdir:
    """The job's working folder: a lock, the manifest and the per-chunk parts."""

    def __init__(self, out: Path):
        self.path = side_files(out)["work"]
        self.manifest_path = self.path / "manifest.json"
        self.locked = False
        self.manifest: dict = {"done": {}}
        # files.atomic_path reads the umask by setting and restoring it, which two threads must not do at once
        self._writes = threading.Lock()

    def open(self, job: dict, restart: bool, log) -> dict:
        """Lock the folder; resume its manifest when it belongs to the same job, else start afresh."""
        self._lock()
        manifest = None
        if self.manifest_path.is_file() and not restart:
            with contextlib.suppress(ValueError, OSError):
                manifest = json.loads(self.manifest_path.read_text())
            if manifest is not None and (manifest.get("job") != job or manifest.get("version") != MANIFEST_VERSION):
                log("the inputs, model or options changed since the unfinished run; starting afresh")
                manifest = None
            elif manifest is not None:
                log(f"resuming: {len(manifest['done'])} chunk(s) already scored")
        for p in self.path.iterdir():  # leftovers of an interrupted write, or of a discarded run
            if p.name != "lock" and (p.name.startswith(".") or manifest is None):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        if manifest is None:
            manifest = {"version": MANIFEST_VERSION, "job": job,
                        "scored_at": datetime.now(UTC).replace(microsecond=0).isoformat(), "done": {}}
        for key in list(manifest["done"]):  # a recorded chunk whose part went missing is scored again
            if not all(self.part(int(key), kind).is_file() for kind in ("scored", "rejects")):
                del manifest["done"][key]
        self.manifest = manifest
        with _writing(self.manifest_path):
            write_json(self.manifest_path, manifest)
        return manifest

    def _lock(self):
        """Hold an exclusive lock on ``<work>/lock`` for the job's lifetime. A job that finishes removes the
        folder while still holding the lock, so a lock taken on a file that has since been removed is retried."""
        import fcntl

        while True:
            with _writing(self.path):
                self.path.mkdir(parents=True, exist_ok=True)
                fh = open(self.path / "lock", "a")  # noqa: SIM115 - held for the job's lifetime
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise DataError(f"another scoring job is writing {self.path.parent} right now (lock held on "
                                f"{self.path / 'lock'}); wait for it or choose another --out") from None
            try:
                same = os.stat(self.path / "lock").st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fh, self.locked = fh, True
                return
            fh.close()

    def part(self, index: int, kind: str) -> Path:
        return self.path / f"{index:06d}.{kind}.parquet"

    def write_part(self, index: int, kind: str, df: pl.DataFrame) -> None:
        path = self.part(index, kind)
        with self._writes, _writing(path):
            write_frame(df, path)

    def record(self, index: int, entry: dict) -> None:
        self.manifest["done"][str(index)] = entry
        with self._writes, _writing(self.manifest_path):
            write_json(self.manifest_path, self.manifest)

    def release(self):
        """Give the lock back (the folder stays for a resume)."""
        if self.locked:
            self._fh.close()
            self.locked = False

    def remove(self):
        """Remove the folder, then give the lock back (a job waiting for it then finds no folder)."""
        if self.locked:
            shutil.rmtree(self.path, ignore_errors=True)
        self.release()
