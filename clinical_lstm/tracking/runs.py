"""MLflow runs: one run per training, the registry and its champion/challenger aliases.

Tracking never costs a model: every MLflow call goes through :meth:`Tracker._guard`, so if the store is
unreachable or refuses a call, training still writes its bundle and the user is told that tracking failed.

No patient rows or stay identifiers go to MLflow: parameters (the config), aggregate metrics with intervals,
the data digest and counts, plots, the subgroup table, the quality report *without* stay ids, and a synthetic
input example.

The store (default ``sqlite:///<cwd>/mlflow/mlflow.db``) is :mod:`clinical_lstm.tracking.store`, the model as a
pyfunc :mod:`clinical_lstm.tracking.pyfunc`, downloads of registered bundles :mod:`clinical_lstm.tracking.downloads`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ..files import write_json
from .pyfunc import pyfunc_spec, signature
from .store import _artifact_location, _quiet_artifacts, _reachable, existing_store, tracking_uri

REGISTERED_MODEL = "clinical-lstm"
MODEL_ARTIFACT = "model"
CHAMPION, CHALLENGER = "champion", "challenger"
SELECTION_METRIC = "validation_auprc"
#: metric-name prefix of each row of the comparison; the shipped model's metrics have none (``auroc``)
BASELINE_PREFIX = {"masked LSTM": "lstm_", "logistic regression": "logreg_", "gradient boosting": "gbm_",
                   "SAPS-I": "saps_", "summaries-only stack": "stack_"}
HOUR_KEYS = ("auroc", "auprc", "brier", "ece")  # the every-hour metrics logged as hours/<prefix><key>_h<hour>
HOURS = "hours/"  # the UI's section of the every-hour metrics


def run_name(cfg) -> str:
    """Says what differs between runs: imputation, hidden size, decay, attention, ensemble size."""
    parts = [cfg.data.imputation, f"h{cfg.model.hidden_size}", "decay" if cfg.model.decay else "nodecay"]
    if cfg.model.attention:
        parts.append("attn")
    parts.append(f"k{cfg.train.folds}")
    return "-".join(parts)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """Logs one training run to MLflow.

    Parameters
    ----------
    experiment : str, optional
        Experiment name; default: the config's ``tracking.experiment``.
    uri : str, optional
        Tracking URI; default ``MLFLOW_TRACKING_URI`` or the local SQLite store under ``./mlflow``.
    register : bool, default True
        Register the model and move the ``champion`` alias if it wins on validation AUPRC.
    nested : bool, default False
        Start the run as a child of the active run (sweeps).
    """

    def __init__(self, experiment: str | None = None, uri: str | None = None, register: bool = True,
                 nested: bool = False, log=print):
        self.experiment, self.uri, self.register, self.nested, self.log = experiment, uri, register, nested, log
        self.run_id: str | None = None
        self.error: str | None = None
        self.result: dict = {}

    # -- failure handling ----------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self.error is None and self.run_id is not None

    def _guard(self, what: str, fn, *args, **kwargs):
        if self.error is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 -- tracking must never stop training
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.error = f"{what}: {first}"
            self.log(f"WARNING: MLflow tracking failed ({self.error}); training goes on and the model bundle is "
                     f"still written locally. Check MLFLOW_TRACKING_URI ({self.uri}).")
            if self.run_id:
                try:
                    import mlflow

                    mlflow.end_run(status="FAILED")
                except Exception:  # noqa: BLE001
                    pass
            return None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, cfg, sources: list[str], name: str | None = None) -> None:
        self.uri = self.uri or tracking_uri(create=True)
        self.experiment = self.experiment or cfg.tracking.experiment
        self.model_name = cfg.tracking.registered_model
        problem = _reachable(self.uri)
        if problem:
            self.error = f"server unreachable: {problem}"
            self.log(f"WARNING: MLflow tracking server {self.uri} is unreachable ({problem}); training goes on "
                     f"without tracking and the model bundle is still written locally.")
            return
        self._guard("start run", self._start, cfg, sources, name)

    def _start(self, cfg, sources, name=None):
        import mlflow

        from .. import __version__

        mlflow.set_tracking_uri(self.uri)
        if not os.environ.get("MLFLOW_RUN_ID"):  # under `mlflow run`, start_run resumes the project's run
            if mlflow.get_experiment_by_name(self.experiment) is None:
                mlflow.create_experiment(self.experiment, artifact_location=_artifact_location(self.uri))
            mlflow.set_experiment(self.experiment)
        run = mlflow.start_run(run_name=name or run_name(cfg), nested=self.nested)
        self.run_id = run.info.run_id
        params = {**cfg.flat(), "tracking.experiment": self.experiment}  # the experiment actually used
        mlflow.log_params({k: ("None" if v is None else v) for k, v in params.items()})
        tags = {"clinical_lstm.version": __version__, "data.sources": ", ".join(sources)}
        commit = git_commit()
        if commit:
            tags["git.commit"] = commit
        mlflow.set_tags(tags)

    def epoch(self, row: dict) -> None:
        if self.active:
            self._guard("log epoch", self._epoch, row)

    def _epoch(self, row):
        import mlflow

        suffix = f"_fold{row['fold']}"
        mlflow.log_metrics({f"{k}{suffix}": row[k] for k in ("train_loss", "val_auroc", "val_auprc")},
                           step=row["epoch"])

    def finish(self, result, validation_auprc: float) -> dict:
        """Log the final metrics, data, artifacts and model; register and decide the alias."""
        if self.active:
            self._guard("log results", self._finish, result, validation_auprc)
        if self.run_id and self.error is None:
            import mlflow

            self._guard("end run", mlflow.end_run)
        if self.error is None and self.run_id:
            self.log(f"MLflow run {self.run_id} in experiment '{self.experiment}' at {self.uri}")
        return self.result

    def _finish(self, result, validation_auprc):
        import mlflow

        metrics = {SELECTION_METRIC: validation_auprc}
        for name, ests in result.metrics.items():
            prefix = "" if name == result.evaluation.shipped else BASELINE_PREFIX[name]
            for key, est in ests.items():
                metrics.update({f"{prefix}{key}": est.value, f"{prefix}{key}_lower": est.lower,
                                f"{prefix}{key}_upper": est.upper})
        for name, diffs in result.evaluation.differences.items():  # model minus baseline, paired intervals
            prefix = "lead_over_" + BASELINE_PREFIX[name]
            for key, est in diffs.items():
                metrics.update({f"{prefix}{key}": est.value, f"{prefix}{key}_lower": est.lower,
                                f"{prefix}{key}_upper": est.upper})
        # every hour in its own section of the UI ("hours/auroc_h12", "hours/lead_over_stack_auroc_h12", ...), the
        # stacking weights in another ("stacking/weight_lstm_h48"): the headline metrics stay first in every list
        for h, e in result.evaluation.hours.items():
            suffix = f"_h{h:g}"
            for name, ests in e.metrics.items():
                prefix = HOURS + ("" if name == e.shipped else BASELINE_PREFIX[name])
                metrics.update({f"{prefix}{k}{suffix}": ests[k].value for k in HOUR_KEYS if k in ests})
                metrics[f"{prefix}mean_risk{suffix}"] = float(e.probs[name][0].mean())
            metrics[f"{HOURS}event_rate{suffix}"] = float(e.y.mean())
            for name, diffs in e.differences.items():
                prefix = HOURS + "lead_over_" + BASELINE_PREFIX[name]
                for k in ("auroc", "auprc"):
                    metrics.update({f"{prefix}{k}{suffix}": diffs[k].value, f"{prefix}{k}{suffix}_lower": diffs[k].lower,
                                    f"{prefix}{k}{suffix}_upper": diffs[k].upper})
        head = result.model.head
        if head is not None:  # the stacking weights at each knot (linear in between)
            for j, h in enumerate(head.knots.tolist()):
                for i, member in enumerate(["lstm", *head.groups]):
                    metrics[f"stacking/weight_{member}_h{h:g}"] = float(head.stack[j, i])
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v})  # NaN-free
        mlflow.set_tag("evaluated_on", result.evaluated_on)
        self._log_dataset(result)
        self._log_artifacts(result)
        info = self._log_model(result)
        self.result = {"run_id": self.run_id, "model_uri": info.model_uri}
        if self.register:
            self.result.update(self._register(info.model_uri, validation_auprc))

    def _log_dataset(self, result):
        import mlflow
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        td = result.model.metadata["training_data"]
        schema = signature().inputs  # the long format's columns; the rows never leave the machine
        # the source names the files read (names only)
        ds = MetaDataset(CodeDatasetSource({"sources": ",".join(td["sources"])}), name="+".join(td["sources"]),
                         digest=td["digest"][:16], schema=schema)
        mlflow.log_input(ds, context="training", tags={"stays": str(td["stays"]), "rows": str(td["rows"]),
                                                       "deaths": str(td["deaths"])})
        mlflow.log_params({"data.stays": td["stays"], "data.rows": td["rows"], "data.digest": td["digest"]})

    def _log_artifacts(self, result):
        import mlflow

        from ..evaluation.report import SAFE_TO_LOG, source_labels

        for name in SAFE_TO_LOG:  # the quality report with stay ids and the rejects never leave the machine
            if (result.report_dir / name).is_file():
                mlflow.log_artifact(str(result.report_dir / name), artifact_path="report")
        with tempfile.TemporaryDirectory() as tmp:
            quality = result.report.to_dict(include_stay_ids=False)
            keep = (result.model.metadata.get("config") or {}).get("tracking", {}).get("source_names", False)
            quality["sources"] = result.model.metadata["training_data"]["sources"]  # labels unless asked for
            quality["empty_sources"] = source_labels(quality.get("empty_sources") or [], keep)
            write_json(Path(tmp) / "quality_report.json", quality)
            write_json(Path(tmp) / "config.json", result.model.metadata["config"])
            mlflow.log_artifact(str(Path(tmp) / "quality_report.json"), artifact_path="report")
            mlflow.log_artifact(str(Path(tmp) / "config.json"))

    def _log_model(self, result):
        import mlflow

        with _quiet_artifacts():
            return mlflow.pyfunc.log_model(name=MODEL_ARTIFACT, **pyfunc_spec(result.bundle_dir,
                                                                              result.model.catalogue))

    def _register(self, model_uri: str, score: float) -> dict:
        """Register a new version. ``champion`` moves to it only when the two versions were measured on the same
        stays — the same training-data digest, so that their out-of-fold AUPRCs compare — and it beats the
        champion's; a version trained on other data is registered as ``challenger`` with the reason, for the user
        to promote by hand (:func:`promote`, ``clinical-lstm promote VERSION``)."""
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient()
        mv = mlflow.register_model(model_uri, self.model_name)
        data = _data_digest(client, mv.run_id)
        client.set_model_version_tag(self.model_name, mv.version, SELECTION_METRIC, repr(float(score)))
        client.set_model_version_tag(self.model_name, mv.version, SELECTION_DATA, data or "unknown")
        try:
            champ = client.get_model_version_by_alias(self.model_name, CHAMPION)
            best = float(champ.tags.get(SELECTION_METRIC, "nan"))
            champ_data = champ.tags.get(SELECTION_DATA) or _data_digest(client, champ.run_id)
        except MlflowException:
            champ, best, champ_data = None, float("nan"), None
        alias, decision = champion_decision(mv.version, score, data, champ and champ.version, best, champ_data)
        client.set_registered_model_alias(self.model_name, alias, mv.version)
        mlflow.set_tags({"registry.model": self.model_name, "registry.version": mv.version,
                         "registry.alias": alias, "registry.decision": decision})
        self.log(decision)
        return {"registered_model": self.model_name, "version": int(mv.version), "alias": alias,
                "decision": decision}


SELECTION_DATA = "validation_data_digest"  # a version tag: the digest of the stays its validation AUPRC is on


def _data_digest(client, run_id: str | None) -> str | None:
    """The training-data digest a run logged (``data.digest``), or None."""
    if not run_id:
        return None
    try:
        return client.get_run(run_id).data.params.get("data.digest")
    except Exception:  # noqa: BLE001 -- a deleted run: its digest is unknown, which never compares equal
        return None


def champion_decision(version, score: float, data: str | None, champion, best: float,
                      champion_data: str | None) -> tuple[str, str]:
    """``(alias, why)`` for a new version: ``champion`` when there is none, or when both versions' validation
    AUPRCs are on the same data (equal, known digests) and the new one is higher; else ``challenger``. A metric on
    one cohort says nothing about a model on another: different or unknown data never move the champion."""
    if champion is None:
        return CHAMPION, f"version {version} becomes champion: validation AUPRC {score:.4f} (first version)"
    if not data or data != champion_data:
        return CHALLENGER, (
            f"version {version} is challenger: validation AUPRC {score:.4f} is on other data than champion version "
            f"{champion}'s {best:.4f} (training data {(data or 'unknown')[:12]} vs {(champion_data or 'unknown')[:12]}), "
            f"so the two do not compare; evaluate both on one labelled set (`clinical-lstm evaluate`) and promote by "
            f"hand if it wins: `clinical-lstm promote {version}`")
    if best >= score:  # NaN (no recorded score) never defends the title
        return CHALLENGER, (f"version {version} is challenger: validation AUPRC {score:.4f} does not beat champion "
                            f"version {champion}'s {best:.4f} on the same data")
    return CHAMPION, (f"version {version} becomes champion: validation AUPRC {score:.4f} beats version {champion}'s "
                      f"{best:.4f} on the same data")


def promote(version: int, name: str = REGISTERED_MODEL, uri: str | None = None) -> str:
    """Move the ``champion`` alias of registered model ``name`` to ``version`` (the user's decision, e.g. after
    comparing two versions on one evaluation set); the previous champion keeps its version, without the alias.
    Returns the sentence that says what changed. An unknown model or version is a DataError."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from ..data.sources import DataError

    store = existing_store(uri or tracking_uri())
    mlflow.set_tracking_uri(store)
    client = MlflowClient()
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise DataError(f"registered model {name!r} has no version {version} in the tracking store {store}; list "
                        f"its versions in the MLflow UI (`clinical-lstm ui`)") from None
    try:
        before = client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        before = None
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if str(before) == str(version):
        return f"version {version} of {name} is already champion"
    return f"version {version} of {name} is champion" + (f" (was version {before})" if before else "")
