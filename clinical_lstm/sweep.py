"""Hyperparameter sweeps: an Optuna study whose trials are nested MLflow runs under one parent run.

What to search is the ``[sweep]`` section of a config file (:class:`SweepSpec`) or :func:`run_sweep`'s
arguments::

    [sweep]
    data = ["sample"]     # what every trial trains on
    out = "runs/sweep"    # trial-<number>/ run folders and sweep.json
    method = "tpe"        # "tpe" (default), "random" or "grid" (Optuna's TPE, Random and Grid samplers)
    n_trials = 20         # trials of the whole study, every worker together (default: the size of the grid)
    seed = 0              # also: labels = FILE; pruner = "median" | "none", startup_trials = 5, warmup_epochs = 2
    [sweep.grid]          # lists: categorical choices (the grid of method = "grid")
    "model.attention" = [false, true]
    [sweep.space]         # ranges (tpe and random): float or integer as the config key is
    "train.lr" = {low = 1e-4, high = 3e-3, log = true}
    "model.hidden_size" = {low = 16, high = 128, step = 16}

Every name is a dotted config key (:meth:`~clinical_lstm.config.Config.flat`) and every value, ends of ranges
included, is checked by :meth:`~clinical_lstm.config.Config.replace` before any data is read.

A trial is one :func:`clinical_lstm.workflow.train` of the base config with its overrides, logged as a nested
MLflow run named ``trial-<number>-<what differs>`` and tagged ``optuna.study_name``, ``optuna.trial_number``
and ``optuna.state``. Its value is the out-of-fold validation AUPRC of the calibrated model (the selection
metric of the registry; the test metrics are never used to choose). **Pruning** (Optuna's ``MedianPruner``):
after each epoch of the first fold's network the trial reports the best validation AUPRC that fold has reached
so far (what early stopping would keep if the fold stopped there) at step = epoch; a trial whose value falls
below the median of the completed trials at the same epoch stops there, before its other folds, summary
members and report (never before ``warmup_epochs``, nor before ``startup_trials`` trials have completed). Its run
ends ``KILLED`` with ``optuna.state = PRUNED``.

**Several workers.** With a ``storage`` (any SQLAlchemy URL) every process started with the same study name
works on one study; trial numbers are unique in the storage, so no trial runs twice, and the study stops at
``n_trials`` trials in total (a trial asked for after that is failed without running and marked ``skipped``).
A trial whose worker died (``kill -9``, a lost machine) is failed and does not count: at once when the lock its
worker held on ``<out>/.trial-<number>.lock`` can be taken (the process is gone), else once the worker has not
beaten for ``5 × HEARTBEAT_S`` (Optuna's heartbeat). Its MLflow run ends ``FAILED``, its ``.work.<pid>.*`` folder is
removed and its parameters are queued to run again, so a study resumed with the same command ends as an
uninterrupted one would, with the dead trial listed as failed.
The worker that creates the study makes the parent run and writes its id into the study
(user attribute ``clinical_lstm.mlflow_parent_run_id``); the others wait for it and resume that run, so all
trials of the study, from every worker and from later resumptions, are children of one parent run (its status
is the one the last worker to stop left). The worker that runs the study's last trial waits until every trial
has finished, then registers the best trial's model (``champion`` only if it beats the champion, as for
``train``) and writes ``sweep.json``. Grid points follow the trial numbers, so the same ``seed`` gives every
worker the same grid; TPE and random workers after the first draw from their own seeds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sqlite3
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .config import OPTIONAL_TEXT, TEXT, Choice, Config, Kind, Range, Section
from .files import check_not_input, remove_leftovers, removes_new_out, write_json
from .sources import DataError, load
from .tracking import Tracker, run_name, tracking_uri
from .workflow import _as_list, train, writable_dir

METHODS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
RANGE_KEYS = ("low", "high", "step", "log")
DEFAULT_STUDY = "clinical-lstm-sweep"
# study user attributes: how the workers of one study agree on its search space, parent run and registration
SPACE_ATTR = "clinical_lstm.search_space"
PARENT_ATTR = "clinical_lstm.mlflow_parent_run_id"
REGISTERED_ATTR = "clinical_lstm.registered"
PARENT_WAIT_S = 120.0  # how long a worker waits for the study's creator to start the parent run
HEARTBEAT_S = 60  # RDB storages: a worker that stops beating for 5 × HEARTBEAT_S has its running trial failed


# -- what to search ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """``grid``: name -> list of choices; ``ranges``: name -> ``{"type", "low", "high", "log"[, "step"]}``."""

    grid: dict
    ranges: dict

    @classmethod
    def parse(cls, base: Config, grid: dict | None = None, space: dict | None = None, method: str = "tpe",
              source: str = "sweep") -> SearchSpace:
        """Check every name and value against ``base`` (one-line ``ValueError``\\ s, before any training)."""
        if method not in METHODS:
            raise ValueError(f"{source}: [sweep] method must be one of {METHODS}; got {method!r}")
        grid, space = grid or {}, space or {}
        for table, value in (("[sweep.grid]", grid), ("[sweep.space]", space)):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {table} must be a table of dotted parameter names; got {value!r}")
        flat = base.flat()
        for table, names in (("[sweep.grid]", grid), ("[sweep.space]", space)):
            unknown = [n for n in names if n not in flat]
            if unknown:
                raise ValueError(f"{source}: unknown parameter {unknown[0]!r} in {table}; use dotted config keys "
                                 f"such as 'model.hidden_size' (see Config.flat())")
        both = sorted(set(grid) & set(space))
        if both:
            raise ValueError(f"{source}: {both[0]!r} is in both [sweep.grid] and [sweep.space]; give it once")
        if not grid and not space:
            raise ValueError(f"{source}: [sweep] varies nothing; add lists to [sweep.grid] or ranges to "
                             f"[sweep.space]")
        if method == "grid" and space:
            raise ValueError(f"{source}: method 'grid' takes lists only; the ranges in [sweep.space] "
                             f"({', '.join(space)}) need method 'tpe' or 'random'")
        return cls({n: _choices(base, n, v, source) for n, v in grid.items()},
                   {n: _range(base, n, flat[n], v, source) for n, v in space.items()})

    @property
    def grid_size(self) -> int | None:
        """Points of the grid; None when there are ranges."""
        return None if self.ranges else math.prod(len(v) for v in self.grid.values())

    def suggest(self, trial) -> dict:
        """The trial's overrides: a categorical choice per list, an integer or a float per range."""
        out = {name: trial.suggest_categorical(name, values) for name, values in self.grid.items()}
        for name, r in self.ranges.items():
            if r["type"] == "int":
                out[name] = trial.suggest_int(name, r["low"], r["high"], step=r.get("step", 1), log=r["log"])
            else:
                out[name] = trial.suggest_float(name, r["low"], r["high"], step=r.get("step"), log=r["log"])
        return out


def _choices(base: Config, name: str, values, source: str) -> list:
    where = f"{source}: [sweep.grid] {name!r}"
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} must be a non-empty list of values; got {values!r}")
    for v in values:
        if not isinstance(v, (bool, int, float, str)):
            raise ValueError(f"{where} must list numbers, text or booleans; got {v!r}")
        base.replace({name: v}, source=where)
    if len({repr(v) for v in values}) < len(values):
        raise ValueError(f"{where} repeats a value: {values!r}")
    return list(values)


def _range(base: Config, name: str, default, spec, source: str) -> dict:
    where = f"{source}: [sweep.space] {name!r}"
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ValueError(f"{where} is not a number (default {default!r}); list its values in [sweep.grid]")
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a range such as {{low = 1e-4, high = 3e-3, log = true}}; got {spec!r}")
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown or "low" not in spec or "high" not in spec:
        raise ValueError(f"{where} must have low and high, and may have step or log; got {spec!r}")
    kind = int if isinstance(default, int) else float
    for key in ("low", "high", "step"):
        v = spec.get(key, 1)
        ok = isinstance(v, int) if kind is int else isinstance(v, (int, float)) and math.isfinite(v)
        if isinstance(v, bool) or not ok:
            raise ValueError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}; got {v!r}")
    low, high, log = kind(spec["low"]), kind(spec["high"]), spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false; got {log!r}")
    if not low < high:
        raise ValueError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0; got {low:g}")
    if "step" in spec and (log or spec["step"] <= 0):
        raise ValueError(f"{where}: step must be positive and cannot be combined with log; got {spec!r}")
    for v in (low, high):
        base.replace({name: v}, source=where)
    out = {"type": kind.__name__, "low": low, "high": high, "log": log}
    if "step" in spec:
        out["step"] = kind(spec["step"])
    return out


@dataclass
class SweepSpec(Section):
    """The ``[sweep]`` section of a config file (see the module docstring), checked when built."""

    data: list = field(default_factory=list)  # data paths ("sample" = the bundled sample)
    out: str = "runs/sweep"  # trial-<number>/ run folders and sweep.json
    method: str = "tpe"  # "tpe", "random" or "grid"
    n_trials: int | None = None  # trials of the whole study (all workers); default: the size of the grid
    seed: int = 0  # seeds the sampler (the first worker's; the grid's order in every worker)
    labels: str | None = None  # stay_id,label file
    grid: dict = field(default_factory=dict)  # [sweep.grid]: name -> list of choices
    space: dict = field(default_factory=dict)  # [sweep.space]: name -> {low, high, step | log}
    pruner: str = "median"  # "median" (Optuna's MedianPruner on fold 0's validation AUPRC) or "none"
    startup_trials: int = 5  # completed trials before the pruner may stop one
    warmup_epochs: int = 2  # epochs every trial runs before it may be stopped

    section: ClassVar[str] = "sweep"
    constraints: ClassVar[dict] = {
        "data": Kind((list,)), "out": TEXT, "method": Choice(METHODS), "n_trials": Kind((int, type(None))),
        "seed": Range(int, 0), "labels": OPTIONAL_TEXT, "grid": Kind((dict,)), "space": Kind((dict,)),
        "pruner": Choice(PRUNERS), "startup_trials": Range(int, 0), "warmup_epochs": Range(int, 0)}

    @classmethod
    def from_toml(cls, section: dict | None, base: Config, source: str, n_trials: int | None = None) -> SweepSpec:
        """Check the section (and an ``n_trials`` given on the command line, which wins) against ``base``."""
        if not section:
            raise ValueError(f"{source} needs a [sweep] section with data = [...] and a [sweep.grid] or "
                             f"[sweep.space] table")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown} in [sweep]; expected some of {sorted(known)}")
        if not section.get("data"):
            raise ValueError(f"{source}: [sweep] needs data = [...] (paths, or \"sample\")")
        if n_trials is not None:
            section = {**section, "n_trials": n_trials}
        try:
            spec = cls(**section)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        bad = [p for p in spec.data if not isinstance(p, str)]
        if bad:
            raise ValueError(f"{source}: [sweep] data must be a list of paths (text); got {bad[0]!r}")
        _n_trials(SearchSpace.parse(base, spec.grid, spec.space, spec.method, source), spec.method, spec.n_trials,
                  source)
        return spec

    def options(self) -> dict:
        """The keyword arguments of :func:`run_sweep` this section sets (not data, out or labels)."""
        return {k: getattr(self, k) for k in ("grid", "space", "method", "n_trials", "seed", "pruner",
                                              "startup_trials", "warmup_epochs")}


def _n_trials(space: SearchSpace, method: str, n_trials, source: str = "sweep") -> int:
    size = space.grid_size
    if n_trials is None:
        if size is None:
            raise ValueError(f"{source}: [sweep] n_trials (or --n-trials) is needed: ranges have no natural number "
                             f"of trials")
        return size
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"{source}: n_trials must be a positive integer; got {n_trials!r}")
    if method == "grid" and n_trials > size:
        raise ValueError(f"{source}: n_trials {n_trials} is more than the {size} points of the grid")
    return n_trials


# -- the run ----------------------------------------------------------------------------------------------
@dataclass
class SweepResult:
    """``study``: the Optuna study (``best_trial``, ``trials_dataframe()``, ``optuna.visualization``);
    ``summary``: what ``sweep.json`` holds; ``path``: ``sweep.json`` if this worker wrote it (it ran the
    study's last trial), else None."""

    study: object
    summary: dict
    path: Path | None = None

    @property
    def best(self) -> dict | None:
        return self.summary["best"]


@removes_new_out
def run_sweep(data, out: str | Path, base: Config, grid: dict | None = None, space: dict | None = None,
              method: str = "tpe", n_trials: int | None = None, seed: int = 0, *, labels=None, outcomes=None,
              test_data=None, storage: str | None = None, study_name: str | None = None,
              experiment: str | None = None, pruner="median", startup_trials: int = 5, warmup_epochs: int = 2,
              tracking: bool = True, log=print) -> SweepResult:
    """Run (or join) an Optuna study of ``n_trials`` trainings of ``base`` with overrides from ``grid`` and
    ``space``, each a nested MLflow run under the study's parent run; register the best trial's model.

    ``storage``: None (in memory, this process only) or an SQLAlchemy URL shared by several workers started
    with the same ``study_name`` (default ``"clinical-lstm-sweep"``; an existing study is resumed).
    ``pruner``: ``"median"``, ``"none"`` or an Optuna pruner. ``tracking=False`` logs nothing to MLflow and
    registers nothing. See the module docstring for the pruning signal and how workers share the parent run.
    """
    search = SearchSpace.parse(base, grid, space, method)
    n = _n_trials(search, method, n_trials)
    pruner = _pruner(pruner, startup_trials, warmup_epochs)
    _check_storage(storage, [*_as_list(data), labels, outcomes, *_as_list(test_data)])  # before anything is made
    load(data, labels, outcomes)  # a bad path, format or column: one line now, not a failed trial
    out = writable_dir(out, "--out")
    name = study_name or DEFAULT_STUDY
    described = {"method": method, "seed": seed, "grid": search.grid, "space": search.ranges}
    reaper = _Reaper(tracking, log)
    study, created = _open_study(storage, name, method, search, seed, pruner, reaper)
    if created:
        study.set_user_attr(SPACE_ATTR, described)
    else:
        recorded = _wait_for(study, SPACE_ATTR, PARENT_WAIT_S, log)
        if recorded is not None and recorded != json.loads(json.dumps(described)):
            raise ValueError(f"study {name!r} in {_redact(storage)} was made for another [sweep] section "
                             f"({recorded}); use another --study name or the same section")
    objective = _Objective(data, out, base, search, n, dict(labels=labels, outcomes=outcomes, test_data=test_data),
                           log)
    with _ParentRun(study, created, base, experiment, described, n, storage, tracking, log) as parent:
        objective.parent = parent
        reaper.reap(study)  # a trial an earlier, killed run left "running" is failed now and not counted
        stop = _StopAt(n, storage is not None, reaper)
        log(f"study {name!r} ({_redact(storage)}): {n} trials, {_counted(study)} already there; {method} sampler, "
            f"{type(pruner).__name__}")
        while not stop.full(study):  # again if a dead worker's trial was failed meanwhile: it no longer counts
            study.optimize(objective, n_trials=n - _counted(study), callbacks=[stop])
            if objective.ran_last:
                _wait_for_running(study, reaper, log)
        if objective.ran_last:
            _register_best(study, parent, log)
        summary = summarize(study, parent.run_id, storage)
        path = None
        if objective.ran_last:
            path = write_json(out / "sweep.json", summary)
            parent.log_artifact(path)
        else:
            log(f"this worker ran trial(s) {objective.ran}; the worker that runs the study's last trial registers "
                f"the best and writes sweep.json")
    return SweepResult(study, summary, path)


def _pruner(pruner, startup_trials: int, warmup_epochs: int):
    import optuna

    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner not in PRUNERS:
        raise ValueError(f"sweep pruner must be one of {PRUNERS} or an Optuna pruner; got {pruner!r}")
    if pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)


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
    a :class:`~clinical_lstm.sources.DataError` (see :func:`_check_storage` for what is refused before)."""
    import optuna
    import sqlalchemy

    from .sources import MissingDependency

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
    MLflow tracking store (:func:`~clinical_lstm.tracking.tracking_uri`), an input of the sweep, a file that is
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


def _wait_for(study, key: str, timeout: float, log):
    """A study user attribute another worker is about to write (None after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() > deadline:
            if value is None:
                log(f"WARNING: study {study.study_name!r} has no {key} after {timeout:.0f} s; going on without it")
            return value
        time.sleep(0.5)


def _counted(study, before: int | None = None) -> int:
    """Trials that count toward ``n_trials``: running, complete or pruned ones (only those numbered below
    ``before``). Failed ones do not, nor a waiting one (a dead trial's point queued again) until it runs."""
    from optuna.trial import TrialState

    counted = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=counted) if before is None or t.number < before)


class _StopAt:
    """Optuna callback: stop this worker once the study has ``n`` trials, running ones of any worker included
    (dead workers' trials are failed first, see :class:`_Reaper`).

    Workers that finish together would all claim the last trial (the one that loses is failed unrun, see
    ``_Objective``); with a shared storage each waits a random fraction of a second and looks again first.
    """

    def __init__(self, n: int, shared: bool, reaper: _Reaper | None = None):
        self.n, self.shared, self.reaper = n, shared, reaper

    def full(self, study) -> bool:
        if self.reaper is not None:
            self.reaper.reap(study)
        if self.shared and _counted(study) == self.n - 1:
            time.sleep(random.uniform(0.0, 1.0))
        return _counted(study) >= self.n

    def __call__(self, study, trial) -> None:
        if self.full(study):
            study.stop()


class _TrialLock:
    """``<out>/.trial-<number>.lock``: the worker that runs a trial holds an exclusive ``flock`` on it while the
    trial runs, and removes it when the trial stops. The kernel lets a lock go when its process dies, ``kill -9``
    included, so a worker that can take the lock of a trial still marked running knows that trial is dead (on this
    machine, or any that shares the folder). The file holds a token, also kept in the trial's user attribute
    ``lock``, so that the file of another study's trial in the same folder is never mistaken for it."""

    def __init__(self, trial_dir: Path, fh, token: str):
        self.trial_dir, self.fh, self.token = trial_dir, fh, token

    @staticmethod
    def path(trial_dir: Path) -> Path:
        return trial_dir.parent / f".{trial_dir.name}.lock"

    @classmethod
    def hold(cls, trial_dir: Path) -> _TrialLock:
        """Take the lock to run the trial of ``trial_dir`` (a fresh token); a one-line error if a live process
        holds it."""
        trial_dir.parent.mkdir(parents=True, exist_ok=True)
        fh = cls._take(cls.path(trial_dir), create=True)
        if fh is None:
            raise DataError(f"another sweep is running {trial_dir} right now (lock held on {cls.path(trial_dir)}); "
                            f"wait for it, or give this sweep another out folder")
        token = uuid.uuid4().hex
        fh.seek(0)
        fh.truncate()
        fh.write(token)
        fh.flush()
        return cls(trial_dir, fh, token)

    @classmethod
    def of_dead(cls, trial) -> _TrialLock | None:
        """The lock of ``trial`` (a trial marked running) if its owner is gone, else None: the lock is held, or
        its file cannot be seen here, or holds another token (then only the heartbeat can tell)."""
        mark = trial.user_attrs.get("lock")
        if not mark:
            return None
        trial_dir = Path(mark["dir"])
        fh = cls._take(cls.path(trial_dir), create=False)
        if fh is None:
            return None
        fh.seek(0)
        if fh.read() != mark["token"]:
            fh.close()
            return None
        return cls(trial_dir, fh, mark["token"])

    @staticmethod
    def _take(path: Path, create: bool):
        import fcntl

        while True:
            try:
                fh = open(path, "a+" if create else "r+")  # noqa: SIM115 - held while the trial runs
            except FileNotFoundError:
                if create:
                    raise
                return None
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                return None
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fh
            fh.close()  # its owner removed it as the trial stopped: a fresh file, or nothing to judge by
            if not create:
                return None

    def remove_work(self) -> None:
        """Remove what the trial's dead process left in its folder: its ``.work.<pid>.*`` (patients' model inputs)
        and temporary files (:func:`~clinical_lstm.files.remove_leftovers`)."""
        remove_leftovers(self.trial_dir)

    def release(self) -> None:
        """Remove the file, then give the lock back (a process waiting on the old file then finds none)."""
        with contextlib.suppress(OSError):
            self.path(self.trial_dir).unlink()
        self.fh.close()


class _Reaper:
    """Fails the trials of dead workers, so that they no longer count toward ``n_trials``, and cleans up after them.

    A trial marked running is dead when the lock of its trial folder can be taken (:class:`_TrialLock`: its
    worker's process is gone), which a worker resuming after ``kill -9`` sees at once; where that lock cannot be
    seen (another machine's folder), when its worker has not beaten for ``5 × HEARTBEAT_S`` (Optuna's heartbeat
    on an RDB storage, which calls this object for each trial it fails). A dead trial's MLflow run ends
    ``FAILED``, its ``.work.<pid>.*`` folder is removed (only once its lock is taken) and its parameters are queued to
    run again (a waiting trial, as Optuna's ``RetryHeartbeatStaleTrialCallback`` adds), so the resumed study evaluates the same points as an uninterrupted one.
    """

    def __init__(self, tracking: bool, log):
        self.tracking, self.log = tracking, log

    def reap(self, study) -> None:
        import optuna
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            lock = _TrialLock.of_dead(trial)
            if lock is None:
                continue
            try:  # the lock is ours: no worker runs this trial now
                if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    self.bury(study, trial, lock, "its process is gone")
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished after all (its owner released the lock as it stopped)
            finally:
                lock.release()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # the heartbeat rule; calls self for each trial it fails

    def __call__(self, study, trial) -> None:
        lock = _TrialLock.of_dead(trial)
        try:
            self.bury(study, trial, lock, f"its worker has not beaten for {5 * HEARTBEAT_S} s")
        finally:
            if lock is not None:
                lock.release()

    def bury(self, study, trial, lock: _TrialLock | None, why: str) -> None:
        """``trial`` has just been failed: end its run, remove its work folder if ``lock``, queue its point again."""
        self.log(f"trial {trial.number} failed: {why}; it does not count toward n_trials"
                 + ("; its parameters run again" if trial.params else ""))
        run_id = trial.user_attrs.get("run_id")
        if run_id and self.tracking:
            _end_dead_run(run_id, self.log)
        if lock is not None:
            lock.remove_work()
        if trial.params:  # as Optuna's RetryHeartbeatStaleTrialCallback, without the dead trial's run and lock
            from optuna.trial import TrialState, create_trial

            study.add_trial(create_trial(state=TrialState.WAITING, params=trial.params,
                                         distributions=trial.distributions, user_attrs={"retry_of": trial.number},
                                         system_attrs=trial.system_attrs))  # the grid sampler's point


def _end_dead_run(run_id: str, log) -> None:
    """End a dead trial's MLflow run ``FAILED`` (tagged ``optuna.state = FAIL``); a failure is only a warning."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri())
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FAILED")
        client.set_tag(run_id, "optuna.state", "FAIL")
    except Exception as exc:  # noqa: BLE001 -- tracking must never stop the sweep
        log(f"WARNING: the MLflow run {run_id} of a dead trial could not be ended ({_first_line(exc)})")


class _PruneOnFirstFold:
    """``on_epoch`` callback: report fold 0's best validation AUPRC so far at step = epoch; prune if told."""

    def __init__(self, trial):
        self.trial, self.best = trial, float("-inf")

    def __call__(self, row: dict) -> None:
        import optuna

        if row["fold"] != 0:
            return
        self.best = max(self.best, row["val_auprc"])
        self.trial.report(self.best, row["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"fold 0's best validation AUPRC {self.best:.4f} after epoch {row['epoch']} "
                                     f"is below the median of the completed trials")


class _TrialRun(Tracker):
    """A trial's nested MLflow run: named ``trial-<number>-<what differs>`` and tagged with the study."""

    def __init__(self, trial, **kwargs):
        super().__init__(**kwargs)
        self.trial = trial

    def start(self, cfg, sources, name=None) -> None:
        super().start(cfg, sources, name=f"trial-{self.trial.number}-{run_name(cfg)}")
        if self.active:
            import mlflow

            self._guard("tag trial", mlflow.set_tags, {"optuna.study_name": self.trial.study.study_name,
                                                       "optuna.trial_number": self.trial.number})
            self.trial.set_user_attr("run_id", self.run_id)

    def close(self, state: str) -> None:
        """Tag the run with the trial's state; end it if training stopped inside (pruned: KILLED)."""
        if not self.run_id or self.error is not None:
            return
        import mlflow
        from mlflow import MlflowClient

        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            self._guard("end trial run", mlflow.end_run, "KILLED" if state == "PRUNED" else "FAILED")
        self._guard("tag trial", MlflowClient().set_tag, self.run_id, "optuna.state", state)


class _Objective:
    """One trial: its overrides, a training as a nested run, the out-of-fold validation AUPRC as its value."""

    def __init__(self, data, out: Path, base: Config, search: SearchSpace, n: int, train_kwargs: dict, log):
        self.data, self.out, self.base, self.search, self.n = data, out, base, search, n
        self.train_kwargs, self.log = train_kwargs, log
        self.parent: _ParentRun | None = None
        self.ran: list[int] = []
        self.ran_last = False  # this worker ran the study's n-th trial: it registers the best

    def __call__(self, trial) -> float:
        import optuna

        earlier = _counted(trial.study, before=trial.number)
        if earlier >= self.n:  # another worker took the last trial between our check and this trial's creation
            trial.set_user_attr("skipped", f"the study already had its {self.n} trials")
            self.log(f"trial {trial.number} not run: the study already has its {self.n} trials")
            trial.study.stop()
            return float("nan")  # Optuna records it as failed; failed trials do not count
        self.ran_last |= earlier == self.n - 1
        self.ran.append(trial.number)
        overrides = self.search.suggest(trial)
        cfg = self.base.replace(overrides, source=f"trial {trial.number}")
        self.log(f"trial {trial.number} ({earlier + 1}/{self.n}): {overrides}")
        trial_dir = self.out / f"trial-{trial.number}"
        lock = _TrialLock.hold(trial_dir)
        try:  # (train removes what a killed earlier run left in the folder: an in-memory study, another study)
            trial.set_user_attr("lock", {"dir": str(trial_dir.absolute()), "token": lock.token})
            trial.set_user_attr("out", str(trial_dir))
            run = _TrialRun(trial, experiment=self.parent.experiment, register=False, nested=True, log=self.log) \
                if self.parent.active else False
            try:
                res = train(self.data, trial_dir, config=cfg, progress=False, on_epoch=_PruneOnFirstFold(trial),
                            log=self.log, tracking=run, **self.train_kwargs)
            except BaseException as exc:  # pruned, failed or interrupted: the nested run must not stay open
                if run:
                    run.close("PRUNED" if isinstance(exc, optuna.TrialPruned) else "FAIL")
                raise
        finally:
            lock.release()
        if run:
            run.close("COMPLETE")
        if res.tracking.get("model_uri"):
            trial.set_user_attr("model_uri", res.tracking["model_uri"])
        return res.validation_auprc


class _ParentRun:
    """The study's parent MLflow run (a context manager). The worker that created the study starts it and
    writes its id into the study; the others wait for that id and resume the run, so that their trial runs
    nest under it too."""

    def __init__(self, study, created: bool, base: Config, experiment, described: dict, n: int, storage,
                 enabled: bool, log):
        self.study, self.created, self.base, self.described, self.n = study, created, base, described, n
        self.storage, self.enabled, self.log = storage, enabled, log
        self.tracker = Tracker(experiment, log=log)

    @property
    def active(self) -> bool:
        return self.tracker.active

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.active else None

    @property
    def experiment(self) -> str | None:
        return self.tracker.experiment

    def __enter__(self):
        if not self.created and self.enabled:
            shared = _wait_for(self.study, PARENT_ATTR, PARENT_WAIT_S, self.log)
            if shared:
                self._resume(shared)
                if self.active:
                    return self
                self.tracker = Tracker(self.tracker.experiment, log=self.log)  # start one of our own instead
        try:
            if self.enabled:
                self._start()
        finally:
            if self.created:  # "" tells the other workers there is no parent to join
                self.study.set_user_attr(PARENT_ATTR, self.run_id or "")
        return self

    def _start(self) -> None:
        import mlflow

        t = self.tracker
        t.start(self.base, [], name=f"sweep-{self.study.study_name}")
        if t.active:
            t._guard("log sweep", mlflow.log_params, {"sweep.method": self.described["method"],
                                                      "sweep.n_trials": self.n,
                                                      "sweep.space": json.dumps(self.described)})
            t._guard("tag sweep", mlflow.set_tags, {"optuna.study_name": self.study.study_name,
                                                    "optuna.storage": _redact(self.storage)})

    def _resume(self, run_id: str) -> None:
        import mlflow

        t = self.tracker
        t.uri, t.model_name = t.uri or tracking_uri(), self.base.tracking.registered_model

        def resume():
            mlflow.set_tracking_uri(t.uri)
            experiment_id = mlflow.get_run(run_id).info.experiment_id
            name = mlflow.get_experiment(experiment_id).name
            if t.experiment and t.experiment != name:
                self.log(f"the study's parent run is in experiment {name!r}: its trials go there, not to "
                         f"{t.experiment!r}")
            mlflow.set_experiment(experiment_id=experiment_id)
            mlflow.start_run(run_id=run_id)
            t.experiment, t.run_id = name, run_id

        t._guard("resume the study's parent run", resume)

    def log_artifact(self, path: Path) -> None:
        if self.active:
            import mlflow

            self.tracker._guard("log sweep.json", mlflow.log_artifact, str(path))

    def record_best(self, best) -> dict:
        """Record the best trial on the parent; register its model (the alias rule decides champion)."""
        if not self.active or not best.user_attrs.get("model_uri"):
            return {}
        import mlflow

        t = self.tracker
        t._guard("log best", mlflow.log_metric, "best_validation_auprc", best.value)
        t._guard("log best", mlflow.set_tags, {"best.run_id": best.user_attrs.get("run_id"),
                                               "best.trial": best.number, "best.overrides": json.dumps(best.params)})
        return t._guard("register best", t._register, best.user_attrs["model_uri"], best.value) or {}

    def __exit__(self, exc_type, exc, tb):
        if self.active:
            import mlflow

            self.tracker._guard("end run", mlflow.end_run, "FAILED" if exc_type else "FINISHED")
        return False


def _wait_for_running(study, reaper: _Reaper, log) -> None:
    """Wait until no trial of the study is running (other workers'); dead ones are failed (:class:`_Reaper`)."""
    from optuna.trial import TrialState

    told = False
    while True:
        reaper.reap(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        if not told:
            log(f"waiting for trial(s) {[t.number for t in running]} of other workers to finish")
            told = True
        time.sleep(2)


def _best(study):
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value) if done else None


def _register_best(study, parent: _ParentRun, log) -> None:
    best = _best(study)
    if best is None:
        log("no trial completed: nothing to register")
        return
    done = study.user_attrs.get(REGISTERED_ATTR)
    if done and done.get("trial") == best.number:
        log(f"trial {best.number} is still the best; its model is already registered (version {done['version']})")
        return
    registry = parent.record_best(best)
    if registry:
        study.set_user_attr(REGISTERED_ATTR, {"trial": best.number, **registry})


def _row(t) -> dict:
    return {"trial": t.number, "state": t.state.name, "overrides": t.params,
            "validation_auprc": t.value, "epochs_reported": len(t.intermediate_values),
            **{k: t.user_attrs.get(k) for k in ("run_id", "model_uri", "out")}}


def summarize(study, parent_run_id: str | None = None, storage: str | None = None) -> dict:
    """What ``sweep.json`` holds: every trial that ran (state, overrides, value, run), the best, the registry."""
    trials = [_row(t) for t in study.get_trials(deepcopy=False) if "skipped" not in t.user_attrs]
    best = _best(study)
    return {"study": study.study_name, "storage": _redact(storage), "parent_run_id": parent_run_id,
            "trials": trials, "best": _row(best) if best else None,
            "registry": study.user_attrs.get(REGISTERED_ATTR) or {}}
