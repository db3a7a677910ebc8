"""Where a sweep's Optuna study lives: the storage and opening the study.

``_check_storage`` refuses, before anything is written, an SQLite file that the MLflow store, an input or
another tool owns; ``_rdb`` opens Optuna's RDB storage with a heartbeat (:data:`HEARTBEAT_S`); ``_open_study``
creates the study, or loads it when another worker made it first, with the sampler of the sweep's method.
``_redact`` is the storage URL as it may be printed. Used by :mod:`clinical_lstm.sweep.run`.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
import warnings
from pathlib import Path

from ..data.sources import DataError
from ..files import check_not_input
from ..tracking.store import tracking_uri
from .space import SearchSpace

HEARTBEAT_S = 60  # RDB storages: a worker that stops beating for 5 × HEARTBEAT_S has its running trial failed


def _sampler(method: str, search: SearchSpace, seed: int | None, grid_seed: int):
    import optuna

    if method == "grid":  # trial k takes point k of the grid shuffled by grid_seed: the same in every worker
        return optuna.samplers.GridSampler(search.grid, seed=grid_seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # constant_liar is experimental in some Optuna versions
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: running trials count as bad guesses, so parallel workers do not all sample one spot
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _open_study(storage: str | None, name: str, method: str, search: SearchSpace, seed: int, pruner,
                on_stale=None):
    """``(study, created)``: exactly one of the workers started together creates the study (the storage's
    unique study name decides); the others load it and draw from fresh seeds. ``on_stale``: see :func:`_rdb`."""
    import optuna

    if storage is None:
        return optuna.create_study(study_name=name, direction="maximize", pruner=pruner,
                                   sampler=_sampler(method, search, seed, seed)), True
    rdb = _rdb(storage, on_stale)
    try:
        return optuna.create_study(storage=rdb, study_name=name, direction="maximize", pruner=pruner,
                                   sampler=_sampler(method, search, seed, seed)), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=rdb, pruner=pruner,
                                  sampler=_sampler(method, search, None, seed))
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ValueError(f"study {name!r} in {_redact(storage)} minimizes; a sweep maximizes the validation AUPRC. "
                         f"Use another --study name")
    return study, False


def _rdb(url: str, on_stale=None):
    """Optuna's RDB storage on ``url``, with a heartbeat (a dead worker's trial is failed, not left running);
    ``on_stale(study, trial)`` is called for each trial the heartbeat fails. A storage that cannot be opened is
    a :class:`~clinical_lstm.data.sources.DataError` (see :func:`_check_storage` for what is refused before)."""
    import optuna
    import sqlalchemy

    from ..checks import MissingDependency

    backend = _url(url).get_backend_name()
    kwargs = {"connect_args": {"timeout": 60}} if backend == "sqlite" else {"pool_pre_ping": True}
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=5 * HEARTBEAT_S,
                                                  heartbeat_stale_trial_callback=on_stale)
        except ImportError as exc:
            raise MissingDependency(f"--storage {_redact(url)} needs a database driver: {exc}") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            # workers started together race to create the tables ("table studies already exists"): retry
            if attempt == 5:
                raise DataError(f"--storage {_redact(url)} cannot be opened: {_first_line(exc)}") from None
            time.sleep(0.2 + random.random())
        except (sqlalchemy.exc.DatabaseError, RuntimeError) as exc:  # not a database; another schema's version
            raise DataError(f"--storage {_redact(url)} cannot be opened: {_first_line(exc)}; give the study its "
                            f"own database, e.g. sqlite:///study.db") from None


def _first_line(exc: Exception) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _check_storage(url: str | None, inputs) -> None:
    """Refuse an SQLite ``url`` that holds what another tool or the user owns, before anything is written: the
    MLflow tracking store (:func:`~clinical_lstm.tracking.store.tracking_uri`), an input of the sweep, a file that is
    not a database, a database with tables but none of Optuna's (Optuna would add its tables, then fail on the
    schema version both tools keep in ``alembic_version``). The file is only opened read-only. A malformed URL is
    refused too; other databases are left to :func:`_rdb`."""
    if url is None:
        return
    where = f"--storage {_redact(url)}"
    parsed = _url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    tracking = tracking_uri()
    if _same_file(path, _sqlite_file(tracking)):
        raise DataError(f"{where} is the MLflow tracking store ({tracking}); the study needs a database of its own, "
                        f"e.g. sqlite:///study.db")
    check_not_input(path, [p for p in inputs if isinstance(p, (str, os.PathLike))])
    if path.is_dir():
        raise DataError(f"{where}: {path} is a folder, not a database file; give a file, e.g. sqlite:///study.db")
    if not path.parent.is_dir():
        raise DataError(f"{where}: the folder {path.parent} does not exist; make it or give another path")
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new study database
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            tables = sorted(r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{where}: {path} is not an SQLite database ({exc}); give the study its own database, "
                        f"e.g. sqlite:///study.db") from None
    from optuna.storages._rdb.models import BaseModel

    if tables and not set(tables) & set(BaseModel.metadata.tables):
        raise DataError(f"{where}: {path} is a database of another tool (tables {', '.join(tables[:3])}, ...) "
                        f"with none of Optuna's; the study needs a database of its own, e.g. sqlite:///study.db")


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _same_file(a: Path, b: Path | None) -> bool:
    if b is None:
        return False
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _url(url: str):
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ValueError(f"--storage {url!r} is not a database URL; use e.g. sqlite:///study.db or "
                         f"postgresql://user@host/db (any SQLAlchemy URL)") from None


def _redact(url: str | None) -> str:
    """The storage as it may be printed and logged: no password."""
    return "in memory" if url is None else _url(url).render_as_string(hide_password=True)
