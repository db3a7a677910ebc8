"""A batch job's contract, checked before any work: the model's bundle found (a folder or an MLflow URI), its
catalogue the one the job expects, the options whole numbers in range, and no output that is, or lies inside, an
input.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..data.catalogue import Catalogue, resolve
from ..data.sources import DataError
from ..files import check_not_input
from .workdir import side_files


def _locate_bundle(source: str) -> tuple[Path, dict | None]:
    """A bundle directory, or an MLflow model URI downloaded to one: ``(directory, provenance or None)``."""
    from ..tracking.downloads import download_bundle, is_model_uri

    if is_model_uri(source):
        return download_bundle(source)
    from .bundle import checked_model_dir

    return checked_model_dir(source), None


def check_catalogue(have: Catalogue, expected) -> None:
    """Raise :class:`DataError` when the model's catalogue ``have`` differs from the one the job expects."""
    if expected is None:
        return
    cat = resolve(None if expected == "default" else expected)
    if cat.digest() == have.digest():
        return
    added = sorted(set(cat.names) - set(have.names))
    removed = sorted(set(have.names) - set(cat.names))
    changed = sorted(n for n in set(cat.names) & set(have.names) if cat[n] != have[n])
    if not (added or removed or changed):  # the same definitions: only the order differs
        why = "the same variables in another order (a catalogue's order is the model's input layout)"
    else:
        described = [n for n in changed if replace(cat[n], description="") == replace(have[n], description="")]
        why = (f"only in the job's: {added or 'none'}; only in the model's: {removed or 'none'}; defined "
               f"differently: {changed or 'none'}"
               + (f" (of which only the description differs: {described})" if described else ""))
    raise DataError(f"model/catalogue version mismatch: the model was trained on catalogue "
                    f"{have.digest()[:12]}, the job expects {cat.digest()[:12]} ({expected}); {why}. Score with a "
                    f"model trained on this catalogue, or pass the model's catalogue")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_options(explain, chunk_stays, workers) -> None:
    """Raise :class:`DataError` (a ``ValueError``) for an option out of range, before anything is read."""
    if not _is_int(chunk_stays) or chunk_stays < 1:
        raise DataError(f"chunk_stays (--chunk-stays) must be a whole number of at least 1, got {chunk_stays!r}")
    if not _is_int(explain) or explain < 0:
        raise DataError(f"explain (--explain) must be a whole number of at least 0 (0 = no explanations), got "
                        f"{explain!r}")
    if workers is not None and (not _is_int(workers) or workers < 1):
        raise DataError(f"workers (--workers) must be a whole number of at least 1, or left out for the default "
                        f"(the CPU count, at most 4), got {workers!r}")


def _check_out(out: Path, paths: list[Path], model, catalogue) -> None:
    """Refuse, before any work, an output the job could not write or that would touch one of its inputs."""
    if out.suffix not in (".parquet", ".csv"):
        raise DataError(f"--out must end in .parquet or .csv, got {out.name}")
    if re.fullmatch(r".+\.(parquet|csv)\.rejects\.\1", out.name):
        raise DataError(f"--out {out} is the name of the rejects file of the job writing "
                        f"{out.name[:out.name.rindex('.rejects.')]}; choose another name")
    files = side_files(out)
    written = [out, files["rejects"], files["summary"], files["work"]]
    for path in written:
        if path.is_dir() and path != files["work"]:
            raise DataError(f"--out {out}: {path} is a folder; choose another --out or remove the folder")
    if files["work"].exists() and not files["work"].is_dir():
        raise DataError(f"--out {out}: the job's work folder {files['work']} is a file; remove it")
    folder = next(p for p in [out.parent.absolute(), *out.parent.absolute().parents] if p.exists())
    if not folder.is_dir():
        raise DataError(f"--out {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(f"--out {out}: the folder {folder} cannot be written (permission denied)")
    inputs = list(paths)
    if isinstance(model, (str, os.PathLike)):
        from ..tracking.downloads import is_model_uri

        if not is_model_uri(str(model)):
            from .bundle import model_dir

            inputs.append(model_dir(model))
    if isinstance(catalogue, (str, os.PathLike)) and catalogue != "default":
        inputs.append(Path(catalogue))
    check_not_input(written, inputs)
