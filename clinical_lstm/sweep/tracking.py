"""A sweep's MLflow runs: the study's parent run (``_ParentRun``: started by the worker that created the
study, resumed by the others, so every trial nests under it; it records and registers the best trial) and
each trial's nested run (``_TrialRun``: named ``trial-<number>-<what differs>``, tagged with the study and
its Optuna state). Used by :mod:`clinical_lstm.sweep.run`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Config
from ..tracking.runs import Tracker, run_name
from ..tracking.store import tracking_uri
from .storage import _redact
from .workers import PARENT_ATTR, PARENT_WAIT_S, _wait_for


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
