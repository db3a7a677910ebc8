"""MLflow: one run per training, the model as a pyfunc, the registry and its champion/challenger aliases.

Tracking never costs a model: every MLflow call goes through :meth:`Tracker._guard`, so if the store is
unreachable or refuses a call, training still writes its bundle and the user is told that tracking failed.

No patient rows or stay identifiers go to MLflow: parameters (the config), aggregate metrics with intervals,
the data digest and counts, plots, the subgroup table, the quality report *without* stay ids, and a synthetic
input example.

The default store is ``sqlite:///<cwd>/mlflow/mlflow.db`` with artifacts in ``<cwd>/mlflow/artifacts``
unless ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from ..files import write_json

REGISTERED_MODEL = "clinical-lstm"
MODEL_ARTIFACT = "model"
CHAMPION, CHALLENGER = "champion", "challenger"
SELECTION_METRIC = "validation_auprc"
#: metric-name prefix of each row of the comparison; the shipped model's metrics have none (``auroc``)
BASELINE_PREFIX = {"masked LSTM": "lstm_", "logistic regression": "logreg_", "gradient boosting": "gbm_",
                   "SAPS-I": "saps_", "summaries-only stack": "stack_"}
HOUR_KEYS = ("auroc", "auprc", "brier", "ece")  # the every-hour metrics logged as hours/<prefix><key>_h<hour>
HOURS = "hours/"  # the UI's section of the every-hour metrics


def local_store(root: str | Path | None = None, create: bool = True) -> tuple[str, str]:
    """``(tracking URI, artifact root URI)`` of the project's local store under ``<root>/mlflow/``."""
    base = (Path(root) if root else Path.cwd()) / "mlflow"
    if create:
        base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(base / 'mlflow.db').resolve()}", (base / "artifacts").resolve().as_uri()


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_ui(store: str | Path = ".", port: int = 5000, host: str = "127.0.0.1", workers: int = 1,
             allow_remote: bool = False) -> int:
    """Run ``mlflow server`` over the local store; print its URL once it answers; Ctrl-C stops it.

    The server has no authentication: a host other than loopback is refused unless ``allow_remote``. A port that
    cannot be bound (:func:`check_bindable`), or a server that exits before it answers, is a
    :class:`~clinical_lstm.data.sources.DataError` naming ``host:port``; the server's exit status is returned.
    """
    import ipaddress
    import subprocess
    import sys
    import time

    from ..data.sources import DataError

    try:
        loopback = host in LOOPBACK or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not allow_remote:
        raise ValueError(f"--host {host} would expose an unauthenticated MLflow server beyond this machine; "
                         f"it binds 127.0.0.1 unless you pass --allow-remote (see mlflow/README.md for a shared "
                         f"server behind authentication)")
    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    check_bindable(host, port)  # before the store is made: a refused port creates nothing
    backend, artifacts = local_store(store)
    where = f"{host}:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                             "--default-artifact-root", artifacts, "--host", host, "--port", str(port),
                             "--workers", str(workers)])
    url = f"http://{'127.0.0.1' if host == 'localhost' else f'[{host}]' if ':' in host else host}:{port}"
    print(f"starting the MLflow UI over {backend} ...", file=sys.stderr, flush=True)
    answered = False
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _reachable(url) is None:
                print(f"MLflow UI on {url} (Ctrl-C stops it)", flush=True)
                answered = True
                break
            time.sleep(0.5)
        status = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=20)
        return 130
    if not answered:  # it never served: even a status of 0 is a failure to start
        raise DataError(f"the MLflow server on {where} exited with status {status} before it answered; its log "
                        f"above says why")
    if status != 0:
        print(f"the MLflow server on {where} stopped with status {status}; its log above says why", file=sys.stderr)
    return status


def check_bindable(host: str, port: int) -> None:
    """Raise :class:`~clinical_lstm.data.sources.DataError` naming ``host:port`` unless a server could listen there.

    Bound as uvicorn binds (IPv6 for a host with a colon, else IPv4; ``SO_REUSEADDR``, so a port held only by
    closed connections in ``TIME_WAIT`` is free, a listening one is not)."""
    import socket

    from ..data.sources import DataError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        why = exc.strerror or str(exc)
        hint = ("; choose another --port or stop what listens there" if exc.errno == errno.EADDRINUSE else "")
        raise DataError(f"cannot listen on {host}:{port}: {why}{hint}") from None


def tracking_uri(create: bool = False) -> str:
    """``MLFLOW_TRACKING_URI``, else the local store under ``./mlflow``; its folder is made only with ``create``
    (a run about to be logged): a read-only lookup creates nothing."""
    return os.environ.get("MLFLOW_TRACKING_URI") or local_store(create=create)[0]


def existing_store(uri: str) -> str:
    """``uri`` if its store exists; a SQLite database or store folder that does not exist is a
    :class:`~clinical_lstm.data.sources.DataError` saying which store was looked at. MLflow would create an empty store
    there on first use, and a lookup must leave nothing behind."""
    from urllib.parse import urlparse

    from ..data.sources import DataError

    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
    else:
        return uri  # a server or database decides for itself
    if path is None or path.exists():
        return uri
    where = ("MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
             else f"the default local store of {Path.cwd()}, as MLFLOW_TRACKING_URI is not set")
    raise DataError(f"no MLflow tracking store at {path} ({where}); set MLFLOW_TRACKING_URI to the store that "
                    f"holds the model (e.g. sqlite:///PATH/mlflow/mlflow.db or http://HOST:PORT), or run from the "
                    f"folder whose mlflow/ holds it")


def is_model_uri(source) -> bool:
    return isinstance(source, str) and source.split(":/", 1)[0] in ("models", "runs", "mlflow-artifacts")


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


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside its database (``<dir>/artifacts``), never into the working
    directory's ``mlruns/``; a tracking server decides for itself (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


def _reachable(uri: str) -> str | None:
    """None if a tracking server answers its health check, else the reason (http(s) URIs only)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            return None if resp.status == 200 else f"health check answered {resp.status}"
    except Exception as exc:  # noqa: BLE001 -- any failure means: do not try to track
        return str(getattr(exc, "reason", exc))


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


def pyfunc_spec(bundle_dir: str | Path, catalogue) -> dict:
    """How a bundle becomes an MLflow pyfunc: "models from code" (``pyfunc_model.py``, no pickle) with the bundle
    directory as its only artifact, the signature and a synthetic input example."""
    return {"python_model": str(Path(__file__).parents[1] / "serve" / "pyfunc_model.py"),
            "artifacts": {"bundle": str(bundle_dir)}, "signature": signature(),
            "input_example": synthetic_example(catalogue), "pip_requirements": pip_requirements()}


def save_pyfunc(bundle_dir: str | Path, path: str | Path) -> Path:
    """Write the bundle as an MLflow pyfunc model folder (what ``train`` logs), without a tracking store."""
    import mlflow

    from ..data.catalogue import Catalogue

    with _quiet_artifacts():
        mlflow.pyfunc.save_model(str(path), **pyfunc_spec(bundle_dir, Catalogue.from_csv(Path(bundle_dir) / "catalogue.csv")))
    return Path(path)


@contextlib.contextmanager
def _quiet_artifacts():
    """No MLflow progress bar while it copies artifacts and validates the input example."""
    old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old


def signature():
    """Input: the raw long table. Output: one row per stay (:data:`clinical_lstm.serve.bundle.SCORES`).

    Every input column is ``Any`` and optional: the package's own reader (:func:`clinical_lstm.serve.bundle.as_raw`,
    the rules of ``clinical_lstm/data/validate.py``) checks the table, as it does for files. It accepts what MLflow's
    strict types would refuse (integer or text ids, ``HH:MM`` text or timedelta times, text values counted as
    ``unparseable_value``), and it names a missing column or a bad type without quoting rows: MLflow's own
    enforcement error prints the input frame, stay ids and values, into the message that ``mlflow models serve``
    logs and answers. The columns hold: ``stay_id`` integer or text; ``time`` hours since ICU admission (a
    number, ``HH:MM`` text or a timedelta); ``variable`` a catalogue name; ``value`` a number.

    ``required=False`` marks the output columns that can be null (JSON ``null`` when served, never ``NaN``; see
    ``pyfunc_model.py``): a rejected stay has a null ``risk``, ``flag``, ``n_observations`` and
    ``quality_flags``, a scored stay a null ``reason``. The output ``stay_id`` comes back as given.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    from ..data.sources import LONG_COLUMNS

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), name, required=False) for name in LONG_COLUMNS]),
        outputs=Schema([ColSpec(AnyType(), "stay_id"),
                        ColSpec("double", "risk", required=False),  # calibrated probability in [0, 1]
                        ColSpec("boolean", "flag", required=False),  # risk >= the bundle's threshold
                        ColSpec("string", "reason", required=False),  # why a rejected stay has no risk
                        ColSpec("long", "n_observations", required=False),
                        ColSpec("string", "quality_flags", required=False)]))  # ";"-joined, "" when none


def synthetic_example(catalogue, n_stays: int = 2):
    """A made-up long table (pandas) for signatures and docs: plausible mid-range values, never real rows."""
    import pandas as pd

    rows = []
    for sid in range(1, n_stays + 1):
        for v in catalogue.variables:
            mid = (v.lower + v.upper) / 2 if v.unit != "category" else v.lower
            if v.static:
                rows.append((sid, 0.0, v.name, float(mid)))
            if v.is_series and v.kind == "vital":
                rows += [(sid, t, v.name, float(mid)) for t in (0.5, 1.5 + sid)]
    return pd.DataFrame(rows, columns=["stay_id", "time", "variable", "value"])


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    names = ("torch", "polars", "pandas", "numpy", "scikit-learn", "safetensors", "pyarrow", "mlflow")
    return [f"clinical-lstm=={version('clinical-lstm')}"] + [f"{n}=={version(n)}" for n in names]


def download_bundle(uri: str, dst: str | Path | None = None) -> tuple[Path, dict]:
    """Fetch the bundle inside an MLflow model (``models:/name@alias``, ``models:/name/3``, ``runs:/id/model``).

    Returns the bundle directory and ``{"uri": ..., "version": ...}`` for provenance. Without ``dst`` the model is
    downloaded into this process's temporary folder (:func:`_downloads`), removed when the process exits: the
    bundle stays readable until then and nothing is left behind. A ``dst`` is the caller's to remove. The store
    must exist: a lookup never creates one (:func:`existing_store`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from ..data.sources import DataError

    store = existing_store(tracking_uri())
    mlflow.set_tracking_uri(store)
    dst = Path(dst) if dst else Path(tempfile.mkdtemp(prefix="model-", dir=_downloads()))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    except MlflowException as exc:  # an unknown model, alias, version or run: the caller's input, not a crash
        shutil.rmtree(dst, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{uri} cannot be resolved in the tracking store {store}: {first}. List the registered "
                        f"models in the MLflow UI (`clinical-lstm ui`) or set MLFLOW_TRACKING_URI") from None
    bundle = next((p.parent for p in local.rglob("bundle.json")), None)
    if bundle is None:
        shutil.rmtree(dst, ignore_errors=True)
        raise FileNotFoundError(f"{uri} holds no clinical-lstm bundle (no bundle.json among its artifacts)")
    return bundle, {"uri": uri, "version": _version_of(uri)}


_DOWNLOADS: dict[int, str] = {}  # process id -> its temporary folder for downloaded models, made on first use


def _downloads() -> str:
    """``<tmp>/clinical-lstm-models-*``: every model this process downloads, removed whole when it exits.

    A forked child gets a folder of its own and, exiting, leaves its parent's alone (it inherits the exit hook)."""
    import atexit

    pid = os.getpid()
    if pid not in _DOWNLOADS:
        _DOWNLOADS[pid] = tempfile.mkdtemp(prefix="clinical-lstm-models-")
        atexit.register(_remove_downloads, _DOWNLOADS[pid], pid)
    return _DOWNLOADS[pid]


def _remove_downloads(folder: str, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


def _version_of(uri: str) -> str | None:
    if not uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient

    ref = uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return MlflowClient().get_model_version_by_alias(name, alias).version
        return ref.split("/")[1] if "/" in ref else None
    except Exception:  # noqa: BLE001 -- provenance only
        return None

