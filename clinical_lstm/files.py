"""Writing outputs: every file the package writes goes through :func:`atomic_path`.

A reader never sees a half-written file: the content goes to a temporary sibling that is renamed over the
target only once it is complete (``os.replace`` is atomic on one filesystem). Temporary files from
``tempfile`` are created with mode 0600; the finished file gets the mode an ordinary ``open()`` would have
given it (0666 minus the umask), so a team sharing a server can read the scores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_path", "check_not_input", "csv_safe", "dir_mode", "file_mode", "publish",
           "remove_leftovers", "removes_new_out", "temp_prefix", "write_frame", "write_json", "write_text"]


def file_mode() -> int:
    """0666 minus the process umask: what ``open(path, "w")`` creates."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """0777 minus the process umask: what ``mkdir`` creates."""
    return 0o777 & ~_umask()


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the kernel tells (Linux ``/proc``); elsewhere set
    and restored under a lock (threads writing at once must never see a 0 umask)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def temp_prefix(name: str) -> str:
    """``.<name>.<pid>.``: the prefix of every temporary file and folder this process makes beside ``name`` (the
    rest is random). The pid lets :func:`remove_leftovers` tell what a killed process left from what a running one
    is still writing."""
    return f".{name}.{os.getpid()}."


# temp_prefix(name) + tempfile's 8 random characters [+ ".tmp"]
_LEFTOVER = re.compile(r"^\.(.+)\.(\d+)\.[a-z0-9_]{8}(\.tmp)?$")


def remove_leftovers(folder: str | Path, names=None) -> list[Path]:
    """Remove from ``folder`` the temporary files and folders (named by :func:`temp_prefix`) of processes that no
    longer run — a job killed by SIGKILL or a power cut runs no ``finally`` and leaves them, holding patients'
    data — only those made beside one of ``names`` when given. A running process's are left alone (also another
    user's: not ours to judge). Returns what was removed."""
    import shutil

    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _LEFTOVER.match(entry.name)
        if m and (names is None or m.group(1) in names) and not _running(int(m.group(2))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``with atomic_path(out) as tmp: frame.write_parquet(tmp)``. The parent folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole, so that no file of an
    earlier run is left beside the new ones (a model bundle, a run's ``report/``); on error it is removed and
    ``path`` is as it was. The swap is two renames: a reader may find ``path`` missing for that instant, never
    half-written."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path.name)))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp makes 0700; the folder gets the mode the umask gives
        yield tmp
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, out: Path, owned: tuple[str, ...]) -> dict[Path, Path]:
    """Move every file of the folder ``staged`` into the folder ``out`` (each rename atomic) and remove the files
    of ``out`` that match one of the glob patterns ``owned`` (the names the job writes) but were not written this
    time: an output folder that also holds other files is never left with a stale file of an earlier run beside
    the new ones. Returns ``{staged path: published path}``."""
    moved = {}
    fresh = {f.name for f in staged.iterdir()}
    for pattern in owned:
        for old in out.glob(pattern):
            if old.name not in fresh and (old.is_file() or old.is_symlink()):
                old.unlink()
    for f in sorted(staged.iterdir()):
        moved[f] = out / f.name
        os.replace(f, moved[f])
    return moved


def removes_new_out(job):
    """Decorate a job with an ``out`` argument (a folder, or a file): before it starts, a killed earlier run's
    temporary files there are removed (:func:`remove_leftovers`); when the job fails, the folders that did not
    exist before it (``out`` and any parents it made) are removed again if they are empty, so that a failed
    command leaves no empty folder behind."""
    import functools
    import inspect

    signature = inspect.signature(job)

    @functools.wraps(job)
    def run(*args, **kwargs):
        out = Path(signature.bind(*args, **kwargs).arguments["out"]).absolute()
        new = [p for p in [out, *out.parents] if not p.exists() and not p.is_symlink()]  # innermost first
        if out.is_dir():  # what a killed earlier run of the job left: in its folder, or beside its file
            remove_leftovers(out)
        else:
            remove_leftovers(out.parent, {out.name, f"{out.name}.json"})
        try:
            return job(*args, **kwargs)
        except BaseException:
            for folder in new:
                if not folder.is_dir():  # the output file was never made
                    continue
                try:
                    folder.rmdir()  # only an empty folder; one that holds anything stays, with its parents
                except OSError:
                    break
            raise

    return run


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """JSON with NaN/inf written as ``null`` (strict JSON, readable by every parser)."""
    return write_text(path, json.dumps(_strict(obj), indent=indent, default=_default, allow_nan=False))


def write_frame(df, path: str | Path) -> Path:
    """A polars frame as Parquet (exactly as it is), or CSV when ``path`` ends in ``.csv``.

    **CSV is for spreadsheets, which run a cell as a formula** when it starts with ``=``, ``+``, ``-``, ``@``, a
    tab or a carriage return (a stay id ``=HYPERLINK(...)`` would be a link, ``+cmd|...`` a command). So, as
    OWASP advises against CSV injection, every text cell that starts with one of them gets a leading single
    quote (``'=HYPERLINK(...)``), which a spreadsheet shows but never runs; text that is exactly a number
    (``-5``, ``+1.5``) is a number to a spreadsheet too and is kept. Numeric columns are never changed (a negative
    risk contribution is a number). Every CSV the package writes goes through :func:`csv_safe`.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            csv_safe(df).write_csv(tmp)
        else:
            df.write_parquet(tmp)
    return path


# a cell a spreadsheet would run (OWASP, CSV injection), unless it is exactly a number
_FORMULA_START = r"^[=+\-@\t\r]"
_PLAIN_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def csv_safe(frame):
    """``frame`` (a polars DataFrame or LazyFrame) with its text columns neutralised for CSV, by the rule of
    :func:`write_frame`; other columns as they are."""
    import polars as pl

    def safe(name):
        col = pl.col(name).cast(pl.String)
        return pl.when(col.str.contains(_FORMULA_START) & ~col.str.contains(_PLAIN_NUMBER)).then("'" + col) \
            .otherwise(col).alias(name)

    schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else frame.schema
    text = [n for n, t in schema.items() if t == pl.String or isinstance(t, (pl.Categorical, pl.Enum))]
    return frame.with_columns(safe(n) for n in text) if text else frame


def _default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return _strict(float(obj))
    if isinstance(obj, np.ndarray):
        return _strict(obj.tolist())
    return str(obj)


def _strict(obj):
    """Replace non-finite floats by None, recursively (``json`` would write ``NaN``, which is not JSON)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def check_not_input(out, inputs) -> None:
    """Raise :class:`~clinical_lstm.data.sources.DataError` when a path a job writes would touch one of its inputs.

    ``out`` is the path, or the paths, the job writes: its output and every side file or work folder beside it.
    ``inputs`` are the files and folders it reads. Refused, after resolving symlinks and ``..`` (and comparing
    device and inode numbers, which also catches bind mounts and case-insensitive file systems): a written path
    that *is* an input, one that lies inside an input folder, and one that is a folder holding an input (a work
    folder is emptied on a fresh start). Nothing is created; call it before any work.
    """
    from .checks import DataError

    outs = [Path(out)] if isinstance(out, (str, os.PathLike)) else [Path(p) for p in out]
    for i in (Path(p) for p in inputs):
        real_i = i.resolve()
        inside_i = {real_i, *real_i.parents}
        ids_i = _file_ids([real_i])
        for o in outs:
            real_o = real_i if o == i else o.resolve()
            if real_o == real_i or (_file_ids([real_o]) & ids_i):
                why = "it is the input"
            elif real_i in real_o.parents or (_file_ids(real_o.parents) & ids_i):
                why = "it lies inside the input folder"
            elif real_o in inside_i or (_file_ids([real_o]) & _file_ids(real_i.parents)):
                why = "it is a folder holding the input"
            else:
                continue
            raise DataError(f"refusing to write {o}: {why} {i}; choose an output outside the inputs")


def _file_ids(paths) -> set[tuple[int, int]]:
    """(device, inode) of each of ``paths`` that exists."""
    ids = set()
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.stat(p)
            ids.add((st.st_dev, st.st_ino))
    return ids
