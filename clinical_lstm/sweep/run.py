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

The parts of a sweep live in modules beside this one: :mod:`clinical_lstm.sweep.space` checks what to search
(:class:`SearchSpace`); :mod:`clinical_lstm.sweep.storage` checks and opens the Optuna storage and creates or
loads the study (its heartbeat, ``HEARTBEAT_S``, is set there); :mod:`clinical_lstm.sweep.workers` lets several
workers share one study (trial locks, the dead-trial reaper, counting and stopping at ``n_trials``);
:mod:`clinical_lstm.sweep.tracking` makes the parent and trial MLflow runs. This module holds the public entry
(:func:`run_sweep`), the ``[sweep]`` section (:class:`SweepSpec`), the objective and the summary; every public
name of those modules is importable from here too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..config import OPTIONAL_TEXT, TEXT, Choice, Config, Kind, Range, Section
from ..data.load import load
from ..files import removes_new_out, write_json
from ..workflow import _as_list, train, writable_dir
from .space import METHODS, RANGE_KEYS, SearchSpace, _n_trials
from .storage import HEARTBEAT_S, _check_storage, _open_study, _redact
from .tracking import _ParentRun, _TrialRun
from .workers import (
    PARENT_ATTR,
    PARENT_WAIT_S,
    REGISTERED_ATTR,
    SPACE_ATTR,
    _counted,
    _Reaper,
    _StopAt,
    _TrialLock,
    _wait_for,
    _wait_for_running,
)

__all__ = ["DEFAULT_STUDY", "HEARTBEAT_S", "METHODS", "PARENT_ATTR", "PARENT_WAIT_S", "PRUNERS", "RANGE_KEYS",
           "REGISTERED_ATTR", "SPACE_ATTR", "SearchSpace", "SweepResult", "SweepSpec", "run_sweep", "summarize"]

PRUNERS = ("median", "none")
DEFAULT_STUDY = "clinical-lstm-sweep"


# -- what to search ---------------------------------------------------------------------------------------
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
    _require_optuna()
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


def _require_optuna() -> None:
    """Sweeps need the ``sweep`` extra (Optuna, and SQLAlchemy for shared storages)."""
    from ..checks import MissingDependency

    try:
        import optuna  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(f"a sweep needs '{exc.name}', which the core install leaves out: "
                                f"pip install 'clinical-lstm[sweep]'") from exc


def _pruner(pruner, startup_trials: int, warmup_epochs: int):
    import optuna

    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner not in PRUNERS:
        raise ValueError(f"sweep pruner must be one of {PRUNERS} or an Optuna pruner; got {pruner!r}")
    if pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)


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
