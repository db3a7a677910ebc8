"""Several workers on one study: how they agree, count trials, and fail the trials of dead workers.

The study user attributes the workers agree by (search space, parent run, registration) and ``_wait_for``
one of them; ``_counted`` (the trials that count toward ``n_trials``) and ``_StopAt`` (stop at ``n_trials``);
``_TrialLock`` (the ``flock`` a worker holds on ``<out>/.trial-<number>.lock`` while it runs a trial);
``_Reaper`` (fails a dead worker's trial, found by its lock or by the heartbeat of
:mod:`clinical_lstm.sweep.storage`, ends its MLflow run and queues its point again); ``_wait_for_running``
(the last worker waits for the others' trials). Used by :mod:`clinical_lstm.sweep.run`.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
import warnings
from pathlib import Path

from ..data.sources import DataError
from ..files import remove_leftovers
from ..tracking.store import tracking_uri
from . import storage as sweep_storage  # HEARTBEAT_S is read from there when used (a test shortens it)
from .storage import _first_line

# study user attributes: how the workers of one study agree on its search space, parent run and registration
SPACE_ATTR = "clinical_lstm.search_space"
PARENT_ATTR = "clinical_lstm.mlflow_parent_run_id"
REGISTERED_ATTR = "clinical_lstm.registered"
PARENT_WAIT_S = 120.0  # how long a worker waits for the study's creator to start the parent run


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
            self.bury(study, trial, lock, f"its worker has not beaten for {5 * sweep_storage.HEARTBEAT_S} s")
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
