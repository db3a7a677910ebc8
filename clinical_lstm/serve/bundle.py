"""RiskModel: everything needed to score, saved as one directory without pickle, loaded safely.

A bundle directory holds

=====================  ===========================================================================
``bundle.json``        format version, package and library versions, configs, threshold, calibrator,
                       training-data digest (never rows), metrics
``catalogue.csv``      the variable catalogue the model was trained with
``transformer.json``   the fitted :class:`~clinical_lstm.features.impute.GridTransformer` state
``weights.safetensors`` the network weights (``m<k>.<param>`` for ensemble member ``k``)
=====================  ===========================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from .. import __version__
from ..config import ModelConfig
from ..data.catalogue import Catalogue
from ..data.grid import ids_series
from ..data.ids import checked_ids
from ..data.quality import QualityReport
from ..data.sources import LONG_COLUMNS, DataError, RawData, as_read, check_types
from ..data.validate import stay_quality, validate
from ..features.impute import GridTransformer, Tensors
from ..files import atomic_dir, file_mode
from ..model.calibrate import calibrator_from_dict
from ..model.network import MaskedLSTM

FORMAT_VERSION = 2  # 2: summaries end with the hour; the stacking weights vary with it

#: The columns every "risk per stay" output starts with: ``predict``, batch scoring, Spark, the MLflow pyfunc
#: and the ONNX runtime. A rejected stay has a null risk, flag, n_observations and quality_flags and a reason.
#: ``stay_id`` is Int64 for integer ids and String for text ids (:func:`clinical_lstm.data.sources.id_dtype`),
#: always exactly as the input gave them.
SCORES = {"stay_id": pl.Int64, "risk": pl.Float64, "flag": pl.Boolean, "reason": pl.String,
          "n_observations": pl.Int64, "quality_flags": pl.String}


def ensemble_logits(networks, head, x, mask, delta, statics, lengths, summary=None):
    """``(logit (B,), LSTM step logits (B, T))``: the mean over the networks, the logit stacked with the summary
    members by ``head`` when there is one. :meth:`RiskModel.network_logits` and the ONNX graph both run this."""
    import torch

    outs = [net.eval()(x, mask, delta, statics, lengths) for net in networks]
    logit = torch.stack([o[0] for o in outs]).mean(0)
    steps = torch.stack([o[1] for o in outs]).mean(0)
    return (logit if head is None else head(logit, summary)), steps


def scores_table(clean: pl.DataFrame, kept: pl.Series, report: QualityReport, risk: np.ndarray,
                 threshold: float, catalogue: Catalogue) -> pl.DataFrame:
    """The :data:`SCORES` table of validated stays: ``kept`` with their ``risk``, then ``report.rejects``."""
    scored = (pl.DataFrame({"stay_id": kept, "risk": risk}, schema={"stay_id": kept.dtype, "risk": pl.Float64})
              .with_columns((pl.col("risk") >= threshold).alias("flag"))
              .join(stay_quality(clean, kept, report, catalogue), on="stay_id", how="left", maintain_order="left"))
    table = pl.concat([scored, report.rejects.select("stay_id", "reason")], how="diagonal_relaxed")
    return table.select([pl.col(c).cast(kept.dtype if c == "stay_id" else d) for c, d in SCORES.items()]).sort("stay_id")


def _like(data, out: pl.DataFrame):
    """``out`` as pandas when the input was a pandas frame, else polars."""
    return out.to_pandas() if type(data).__module__.startswith("pandas") else out


def as_raw(data) -> RawData:
    """A pandas/polars long table (``stay_id, time, variable, value``) or a path -> :class:`RawData`."""
    from ..data.load import load

    if isinstance(data, RawData):
        return data
    if isinstance(data, (str, Path, list, tuple)):
        return load(data)
    if isinstance(data, dict):  # columns by name, as the stream takes them
        try:
            data = pl.DataFrame(data)
        except (TypeError, ValueError, pl.exceptions.PolarsError):
            raise DataError(f"a dict given as the long table must map {list(LONG_COLUMNS)} to equal-length "
                            f"columns; got keys {list(data)[:10]}") from None
    if not isinstance(data, pl.DataFrame):
        columns = list(getattr(data, "columns", ()))
        try:
            if "stay_id" in columns and data["stay_id"].dtype == object:  # e.g. uuid.UUID
                data = data.assign(stay_id=_column_text(data, "stay_id"))
            try:
                data = pl.from_pandas(data)
            except (TypeError, ValueError):  # an object column mixing kinds (1.5 and "n/a", 0.5 and "00:30"):
                mixed = [c for c in LONG_COLUMNS if c in columns and data[c].dtype == object]
                data = data.assign(**{c: _column_text(data, c) for c in mixed})  # text, as a CSV is read
                data = pl.from_pandas(data)
        except DataError:
            raise
        except (TypeError, ValueError, ImportError):  # the reader's message may quote cells: not repeated here
            odd = [c for c in columns if str(getattr(data[c], "dtype", "")) == "object"]
            raise DataError(f"expected a long table (pandas/polars DataFrame with columns {list(LONG_COLUMNS)}) "
                            f"or a data path, got {type(data).__name__}"
                            + (f" whose column(s) {odd} cannot be read" if odd else "")) from None
    missing = [c for c in LONG_COLUMNS if c not in data.columns]
    if missing:
        raise DataError(f"the long table lacks column(s) {missing}; expected {list(LONG_COLUMNS)}, "
                        f"found {data.columns}")
    check_types(data.schema, "the long table")  # the same contract as files: column types, then ids (fractional
    df = checked_ids(data.select(LONG_COLUMNS), "the long table")  # ids name no stay: never two patients in a row)
    df = df.with_columns(as_read(df.schema))
    return RawData(long=df, stays=df["stay_id"].unique().sort(), sources=["<dataframe>"])


def _column_text(data, column: str) -> list[str | None]:
    """A pandas object column as text, cell by cell (None and NaN: missing), as the CSV reader would have read it.
    A cell that holds several values (a list, tuple, set, dict, array) or bytes is a :class:`DataError` naming the
    column, the cell's type and its row (from 1)."""
    out = []
    for row, value in enumerate(data[column], 1):
        if isinstance(value, (list, tuple, set, frozenset, dict, np.ndarray, bytes, bytearray)):
            raise DataError(f"the long table: column {column!r} has type object holding a {type(value).__name__} "
                            f"(row {row}); one number or text per cell")
        out.append(None if value is None or (isinstance(value, float) and value != value) else str(value))
    return out


@dataclass
class RiskModel:
    """A trained, calibrated mortality model. Build with :func:`clinical_lstm.train` or :func:`load_model`.

    ``networks`` are the masked LSTMs (the k cross-fitted networks, averaged in logit); ``head`` (a
    :class:`~clinical_lstm.features.summaries.SummaryHead`, or None for the LSTM alone) stacks their logit with the
    summary members'. :meth:`network_logits` is the single definition of the model's logit.
    """

    transformer: GridTransformer
    networks: list[MaskedLSTM]
    calibrator: object
    threshold: float
    metadata: dict = field(default_factory=dict)
    head: object = None
    #: the report's reference rows, so ``evaluate`` shows them at every hour too (never used to score):
    #: ``lstm_calibrator`` (the networks alone), ``summaries_weights``/``summaries_bias``/``summaries_calibrator``
    #: (the summaries-only stack over the head's members, at the head's knots). JSON; covered by :meth:`digest`.
    references: dict | None = None

    @property
    def catalogue(self) -> Catalogue:
        return self.transformer.catalogue

    def digest(self) -> str:
        """SHA-256 over everything that changes a score: catalogue, transformer state, network configs and
        weights, the summary head, calibrator and threshold. Bundles, streams, batch resumes and exports check it."""
        h = hashlib.sha256()
        h.update(self.catalogue.digest().encode())
        h.update(json.dumps([self.transformer.to_dict(), self.calibrator.to_dict(), float(self.threshold)],
                            sort_keys=True, default=float).encode())
        for name, p in sorted(self._weights().items()):
            h.update(name.encode())
            h.update(p.numpy().tobytes())
        for net in self.networks:
            h.update(json.dumps(net.cfg.to_dict(), sort_keys=True).encode())
        if self.references is not None:
            h.update(json.dumps(self.references, sort_keys=True, default=float).encode())
        return h.hexdigest()

    def _weights(self) -> dict:
        """Every tensor of the model: ``m<k>.<param>`` per network, ``head.<buffer>`` for the summary head."""
        out = {f"m{k}.{name}": p.detach().cpu().contiguous()
               for k, net in enumerate(self.networks) for name, p in net.state_dict().items()}
        if self.head is not None:
            out.update({f"head.{name}": p.detach().cpu().contiguous() for name, p in self.head.state_dict().items()})
        return out

    # -- scoring ----------------------------------------------------------------------------------------
    def clean(self, data) -> tuple[pl.DataFrame, pl.Series, QualityReport]:
        """Validate input against the model's catalogue and window (no labels needed)."""
        return validate(as_raw(data), self.catalogue, self.transformer.window_hours, require_labels=False)

    def tensors(self, clean: pl.DataFrame, stay_ids) -> Tensors:
        return self.transformer.transform(clean, stay_ids)

    def network_logits(self, x, mask, delta, statics, lengths, summary=None):
        """**The model's logit** in torch: (B,) from the inputs of :class:`~clinical_lstm.features.impute.Tensors`.

        The ensemble mean of the LSTMs' logits, stacked with the summary members when the model has a head.
        ``predict`` (through :meth:`logits`), SHAP coalitions and the ONNX export all evaluate this.
        """
        return ensemble_logits(self.networks, self.head, x, mask, delta, statics, lengths, summary)[0]

    def logits(self, t: Tensors, steps: bool = False, batch_size: int = 512) -> np.ndarray:
        """The model's logits, (N,) — or (N, T) at the end of every bin with ``steps=True`` (then ``t`` must
        carry per-step summaries in ``t.summary`` (N, T, F) when the model has a head)."""
        import torch

        from ..model.network import batch_of, predict_logits, to_torch

        with torch.inference_mode():
            data = to_torch(t, torch.device("cpu"))
            lstm = predict_logits(self.networks, data, batch_size, steps)
            if self.head is None:
                return lstm
            out = np.empty_like(lstm)
            for i in range(0, len(lstm), batch_size):
                part = slice(i, i + batch_size)
                out[part] = self.head(torch.from_numpy(lstm[part]), batch_of(data, part)["summary"]).numpy()
            return out

    def risk(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probability from logits (any shape)."""
        return self.calibrator.predict(np.asarray(logits).ravel()).reshape(np.shape(logits))

    def score_table(self, data, explain: int = 0) -> tuple[pl.DataFrame, QualityReport]:
        """Every stay of ``data`` as one row of :data:`SCORES` (polars), plus the quality report.

        Scored stays have ``risk``, ``flag``, ``n_observations`` and ``quality_flags``
        (:data:`~clinical_lstm.data.validate.QUALITY_FLAGS`) and a null ``reason``; rejected stays a null risk and
        their reason. ``explain=K`` adds ``top1_variable, top1_contribution, ..., topK_...`` (SHAP, log-odds).
        Batch scoring, Spark, the pyfunc and :meth:`predict` all build on this table.
        """
        clean, kept, report = self.clean(data)
        t = self.tensors(clean, kept) if len(kept) else None
        risk = self.risk(self.logits(t)) if t is not None else np.zeros(0)
        table = scores_table(clean, kept, report, risk, self.threshold, self.catalogue)
        if explain:
            table = table.join(self._top_contributions(t, explain), on="stay_id", how="left", maintain_order="left")
        return table, report

    def _top_contributions(self, t: Tensors | None, k: int) -> pl.DataFrame:
        schema = {"stay_id": pl.Int64 if t is None else ids_series(t.stay_ids).dtype, **{
            f"top{r}_{c}": d for r in range(1, k + 1)
                                          for c, d in (("variable", pl.String), ("contribution", pl.Float64))}}
        if t is None:
            return pl.DataFrame(schema=schema)
        from ..explain.shapley import shap_values, table_from

        table = table_from(*shap_values(self, t), t.stay_ids)  # the scoring tensors: input validated once
        wide = pl.DataFrame({"stay_id": ids_series(t.stay_ids)})
        for r in range(1, k + 1):
            wide = wide.join(table.filter(pl.col("rank") == r).select(
                "stay_id", pl.col("variable").alias(f"top{r}_variable"),
                pl.col("contribution").alias(f"top{r}_contribution")), on="stay_id", how="left")
        return wide.select([pl.col(c).cast(d) for c, d in schema.items()])

    def predict(self, data, explain: int = 0):
        """One row per stay of ``data``: :data:`SCORES` (``stay_id, risk, flag, reason, n_observations,
        quality_flags``); a rejected stay has a null risk and its reason. ``explain=K`` adds the top-K SHAP
        contributions. ``data`` is a long table (pandas in, pandas out; polars in, polars out) or a data path.
        """
        return _like(data, self.score_table(data, explain)[0])

    def explain(self, data, top: int | None = None, n_permutations: int = 8, seed: int = 0,
                as_shap: bool = False):
        """Per-variable SHAP contributions (log-odds) for every scorable stay; see :mod:`clinical_lstm.explain.shapley`.

        Returns ``stay_id, variable, contribution, rank, base_value, model_output`` (pandas for pandas input),
        or with ``as_shap=True`` a ``shap.Explanation`` (:func:`clinical_lstm.explain.shapley.explanation`; no ``top``).
        """
        from ..explain.shapley import explain_table, explanation

        return (explanation(self, data, n_permutations, seed) if as_shap
                else _like(data, explain_table(self, data, top, n_permutations, seed)))

    def stream(self, state=None):
        """A :class:`~clinical_lstm.serve.stream.StayStream` for one stay: ``s.update(rows)`` -> current risk.

        ``state`` (a ``s.state()`` dict, its JSON text, or a file written by ``s.save``) resumes a stay.
        """
        from .stream import StayStream

        return StayStream(self, state)

    def trajectory(self, data):
        """Calibrated risk at the end of every grid bin: ``stay_id, hour, risk`` (valid bins only; pandas in,
        pandas out). At each bin the model sees what a stream would have seen by then."""
        clean, kept, _ = self.clean(data)
        grid = self.transformer.grid(clean, kept)
        t = self.transformer.transform_grid(grid)
        if self.head is not None:
            t.summary = self.transformer.summary_steps(grid)  # (N, T, F): the summaries after every bin
        risk = self.risk(self.logits(t, steps=True))  # (N, T)
        T = risk.shape[1]
        valid = np.arange(T)[None, :] < t.lengths[:, None]
        hours = (np.arange(T) + 1) * self.transformer.resolution_hours
        n_idx, t_idx = np.nonzero(valid)
        return _like(data, pl.DataFrame({"stay_id": t.stay_ids[n_idx], "hour": hours[t_idx],
                                         "risk": risk[n_idx, t_idx]}))

    # -- persistence ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the bundle atomically (a temporary sibling folder, renamed into place); ``bundle.json`` records
        the SHA-256 of every other file and the model's :meth:`digest`, both checked by :meth:`load`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            (tmp / "catalogue.csv").write_text(self.catalogue.to_csv_text())
            (tmp / "transformer.json").write_text(json.dumps(self.transformer.to_dict(), indent=1))
            save_file(self._weights(), str(tmp / "weights.safetensors"))
            os.chmod(tmp / "weights.safetensors", file_mode())  # safetensors writes 0600
            net = self.networks[0]
            meta = {**self.metadata, "format_version": FORMAT_VERSION, "model_config": net.cfg.to_dict(),
                    "n_series": net.n_series, "n_static": net.n_static, "n_networks": len(self.networks),
                    "summary_head": self.head is not None, "calibrator": self.calibrator.to_dict(),
                    "references": self.references,
                    "threshold": float(self.threshold), "catalogue_digest": self.catalogue.digest(),
                    "model_digest": self.digest(), "files": {f: _sha256(tmp / f) for f in BUNDLE_FILES[1:]}}
            meta = json.loads(json.dumps(meta, default=str))  # what bundle.json will hold, then signed whole
            meta[BUNDLE_DIGEST] = metadata_digest(meta)
            (tmp / "bundle.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RiskModel:
        """Read a bundle, verifying every file against ``bundle.json``; any problem is one :class:`DataError`
        naming the bundle and what is wrong (a damaged, truncated or edited file never scores)."""
        directory = checked_model_dir(directory)
        try:
            return cls._load(directory)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 -- whatever a damaged file raises, the user gets one sentence
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"bundle {directory} is damaged or was edited ({first}); re-train or restore it") from None

    @classmethod
    def _load(cls, directory: Path) -> RiskModel:
        from safetensors.torch import load_file

        from ..model.head import SummaryHead

        meta = json.loads((directory / "bundle.json").read_text())
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else None
            raise DataError(f"bundle {directory} has format version {got}; this clinical-lstm {__version__} reads "
                            f"version {FORMAT_VERSION}")
        if meta.get(BUNDLE_DIGEST) != metadata_digest(meta):
            raise DataError(f"bundle {directory}: bundle.json was edited or carries no digest of its own (every "
                            f"field — the training-data digest, the metrics, the config — is covered by "
                            f"'{BUNDLE_DIGEST}'); re-train or restore the bundle")
        for name in BUNDLE_FILES[1:]:
            if not (directory / name).is_file():
                raise DataError(f"bundle {directory} lacks {name}")
            if _sha256(directory / name) != meta.get("files", {}).get(name):
                raise DataError(f"bundle {directory}: {name} does not match its SHA-256 in bundle.json (damaged or "
                                f"replaced); re-train or restore the bundle")
        catalogue = Catalogue.from_csv(directory / "catalogue.csv")
        transformer = GridTransformer.from_dict(json.loads((directory / "transformer.json").read_text()), catalogue)
        weights = load_file(str(directory / "weights.safetensors"))
        cfg = ModelConfig(**meta["model_config"])
        networks = []
        for k in range(int(meta["n_networks"])):
            net = MaskedLSTM(cfg, meta["n_series"], meta["n_static"])
            prefix = f"m{k}."
            net.load_state_dict({n[len(prefix):]: w for n, w in weights.items() if n.startswith(prefix)})
            networks.append(net.eval())
        head = SummaryHead.from_state({n[5:]: w for n, w in weights.items() if n.startswith("head.")}) \
            if meta.get("summary_head") else None
        model = cls(transformer, networks, calibrator_from_dict(meta["calibrator"]), float(meta["threshold"]), meta,
                    head, meta.get("references"))
        if model.digest() != meta.get("model_digest"):
            raise DataError(f"bundle {directory}: bundle.json was edited (its threshold, calibrator, configs or "
                            f"network count no longer match the model it was saved with); re-train or restore it")
        return model


BUNDLE_FILES = ("bundle.json", "catalogue.csv", "transformer.json", "weights.safetensors")
BUNDLE_DIGEST = "bundle_digest"  # bundle.json's SHA-256 of all its other fields


def metadata_digest(meta: dict) -> str:
    """SHA-256 of ``bundle.json``'s content without its own digest: canonical JSON (sorted keys, no spaces), so
    that whatever the package later trusts in it — the training-data digest the in-sample check compares, the
    metrics, the file digests, the model digest — is covered by one check on load."""
    body = {k: v for k, v in meta.items() if k != BUNDLE_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_dir(path: str | Path) -> Path:
    """A bundle folder as given, or the ``model/`` of a run folder that ``train`` wrote."""
    path = Path(path)
    if not (path / "bundle.json").exists() and (path / "model" / "bundle.json").exists():
        return path / "model"
    return path


def checked_model_dir(path: str | Path) -> Path:
    """:func:`model_dir`, refused in one line that says what is wrong with the path: it does not exist, it is a
    file, or it is a folder without a bundle."""
    given = Path(path)
    if not given.exists():
        raise DataError(f"model {given} does not exist; pass the run folder (or its model/) that `clinical-lstm "
                        f"train --out DIR` wrote, or an MLflow model URI such as models:/clinical-lstm@champion")
    if not given.is_dir():
        raise DataError(f"model {given} is a file, not a bundle folder; pass the run folder (or its model/) that "
                        f"`clinical-lstm train --out DIR` wrote")
    directory = model_dir(given)
    if not (directory / "bundle.json").is_file() or not (directory / "catalogue.csv").is_file():
        raise DataError(f"{directory} is not a clinical-lstm model bundle (no bundle.json); pass the run folder or "
                        f"model/ that `clinical-lstm train --out DIR` wrote, or an MLflow model URI")
    return directory


def load_model(source: str | Path) -> RiskModel:
    """Load a model from a bundle directory or an MLflow URI (``models:/clinical-lstm@champion``,
    ``models:/clinical-lstm/3``, ``runs:/<run id>/model``); the tracking URI comes from
    ``MLFLOW_TRACKING_URI`` or the local store."""
    from ..tracking.downloads import download_bundle, is_model_uri

    if is_model_uri(str(source)):
        directory, provenance = download_bundle(str(source))
        model = RiskModel.load(directory)
        model.metadata["source"] = provenance
        return model
    return RiskModel.load(source)


def environment() -> dict:
    """Package and library versions recorded in every bundle."""
    import sklearn
    import torch

    return {"clinical_lstm": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "polars": pl.__version__, "numpy": np.__version__, "scikit_learn": sklearn.__version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds")}
