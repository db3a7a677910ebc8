"""Edge export: the network (ensemble averaged) as ONNX or TorchScript, with its input contract.

The exported graph is the part of :class:`~clinical_lstm.bundle.RiskModel` that is tensor arithmetic:

=========  ==============  =====================================================================
name       shape / dtype   meaning
=========  ==============  =====================================================================
x          (B, T, V) f32   standardized (log1p first where ``transformer.log``), imputed values;
                           0 past ``lengths``
mask       (B, T, V) f32   1 where the variable was observed in the bin, else 0
delta      (B, T, V) f32   hours from the last observation of the variable to the bin's end
                           (the bin's end if never seen); 0 past ``lengths``
statics    (B, S) f32      standardized statics + missing indicators + one-hots (``static_features``)
lengths    (B,) int64      bins up to and including the last bin with a series observation (>= 1)
logit      (B,) f32        the stay's logit (mean over the ensemble members)
step_logits (B, T) f32     a logit per bin (mean over members); entries past ``lengths`` are meaningless
=========  ==============  =====================================================================

``B`` and ``T`` are dynamic (``T`` may be shorter than the model's window: a partial stay). ``V`` is the
catalogue's series variables and ``S`` the transformer's static features, in the order listed in the contract.

Outside the graph (what a runtime must do, with the statistics carried in the contract): validation
(:mod:`clinical_lstm.validate` rules), binning and in-bin aggregation (:mod:`clinical_lstm.grid`),
log1p/standardization/imputation/mask/delta/static encoding (:class:`~clinical_lstm.impute.GridTransformer`),
and calibration of the logit plus the alert threshold. The contract (JSON) holds the catalogue CSV, the
transformer's fitted state, the calibrator and threshold; it is embedded in the file (ONNX
``metadata_props`` key ``clinical_lstm.contract``; TorchScript extra file ``clinical_lstm_contract.json``)
and written beside it as ``<file>.json``. :class:`ExportedModel` is a reference runtime over it.

The file ends in its format's suffix (``.onnx``, TorchScript ``.pt``), and neither it nor ``<file>.json`` may
touch the model's folder or files (:func:`check_out`, before any work). Both are written to temporary siblings,
checked there (the graph run against PyTorch), and only then renamed into place: a failed export leaves
nothing at the destination and an earlier file there as it was.
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .files import atomic_path, check_not_input, removes_new_out
from .sources import MissingDependency

CONTRACT_FORMAT = "clinical-lstm-export/1"
CONTRACT_KEY = "clinical_lstm.contract"
TORCHSCRIPT_CONTRACT_FILE = "clinical_lstm_contract.json"
FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}  # the file a format is written to must end so
INPUTS = ("x", "mask", "delta", "statics", "lengths")
OUTPUTS = ("logit", "step_logits")
DEFAULT_OPSET = 17


def sidecar(path: str | Path) -> Path:
    """``<file>.json``: the contract written beside an exported file."""
    return Path(f"{path}.json")


def check_out(out: str | Path, fmt: str, inputs=()) -> Path:
    """``out`` as the file a ``fmt`` export writes, checked before any work: it must end in the format's suffix
    (so that an unrelated file of another kind is never replaced by mistake), must not be a folder, and neither it
    nor its :func:`sidecar` may touch ``inputs`` (the model's bundle folder: the file, its contract, nothing inside
    it). Raises ValueError, or :class:`~clinical_lstm.sources.DataError` for an input."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    suffix = SUFFIXES[fmt]
    if out.suffix != suffix:
        raise ValueError(f"--out {out}: {fmt} exports are written to a {suffix} file, got {out.name!r}; name it "
                         f"e.g. {out.with_suffix(suffix).name}")
    for path in (out, sidecar(out)):
        if path.is_dir():
            raise ValueError(f"--out {out}: {path} is a folder; choose another --out")
    check_not_input([out, sidecar(out)], inputs)
    return out


def _wrapper(model):
    from torch import nn

    from .bundle import ensemble_logits

    class ModelLogits(nn.Module):
        """``(x, mask, delta, statics, lengths[, summary]) -> (logit, step_logits)``:
        :func:`clinical_lstm.bundle.ensemble_logits`, the model's own logit."""

        def __init__(self, nets, head):
            super().__init__()
            self.nets, self.head = nn.ModuleList(nets), head

        def forward(self, x, mask, delta, statics, lengths, summary=None):
            return ensemble_logits(self.nets, self.head, x, mask, delta, statics, lengths, summary)

    return ModelLogits(model.networks, model.head).eval()


def example_inputs(model, batch: int = 2, steps: int | None = None, seed: int = 0):
    """Random inputs of the contract's shapes and dtypes (for tracing and checks)."""
    import torch

    V, S = model.networks[0].n_series, model.networks[0].n_static
    T = steps or model.transformer.n_bins
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (batch,), generator=g, dtype=torch.int64)
    lengths[0] = T
    args = (torch.randn(batch, T, V, generator=g), (torch.rand(batch, T, V, generator=g) < 0.3).float(),
            torch.rand(batch, T, V, generator=g) * 10, torch.randn(batch, S, generator=g), lengths)
    if model.head is None:
        return args
    F = len(summary_names(model))
    summary = torch.randn(batch, F, generator=g) * 2
    summary[torch.rand(batch, F, generator=g) < 0.2] = float("nan")  # never-observed statistics
    return (*args, summary)


def inputs_of(model) -> tuple[str, ...]:
    return (*INPUTS, "summary") if model.head is not None else INPUTS


def summary_names(model) -> list[str]:
    from .summaries import feature_names

    return feature_names(model.catalogue.series, model.transformer.static_features_)


def contract(model, fmt: str = "onnx", opset: int | None = None) -> dict:
    """The exported graph's input contract plus everything needed to build its inputs and read its output."""
    from . import __version__
    tr, cfg = model.transformer, model.networks[0].cfg
    V, S = model.networks[0].n_series, model.networks[0].n_static
    dims = {"B": "batch (dynamic)", "T": f"grid bins (dynamic, <= {tr.n_bins})", "V": V, "S": S}
    return {
        "format": CONTRACT_FORMAT,
        "graph_format": fmt,
        "opset": opset,
        "clinical_lstm_version": __version__,
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_fingerprint": model.digest(),
        "dims": dims,
        "inputs": [
            {"name": "x", "shape": ["B", "T", "V"], "dtype": "float32",
             "meaning": "standardized (log1p first where transformer.log) imputed values; 0 past lengths"},
            {"name": "mask", "shape": ["B", "T", "V"], "dtype": "float32", "meaning": "1 where observed in the bin"},
            {"name": "delta", "shape": ["B", "T", "V"], "dtype": "float32",
             "meaning": "hours from the variable's last observation to the bin end (bin end if never seen); "
                        "0 past lengths"},
            {"name": "statics", "shape": ["B", "S"], "dtype": "float32", "meaning": "static features, in "
             "static_features order"},
            {"name": "lengths", "shape": ["B"], "dtype": "int64",
             "meaning": "bins up to and including the last bin with a series observation (>= 1)"},
            *([{"name": "summary", "shape": ["B", "F"], "dtype": "float32",
                "meaning": "per-variable summaries at the stay's last bin, in summary_features order "
                           "(clinical_lstm.summaries.summarize); NaN where a variable was never observed; the last "
                           "column, 'hour', is the end of that bin in hours since admission (the stacking weights "
                           "depend on it)"}]
              if model.head is not None else []),
        ],
        "outputs": [
            {"name": "logit", "shape": ["B"], "dtype": "float32",
             "meaning": "the model's logit (networks averaged, stacked with the summary members when the model "
                        "has them); risk = calibrator(logit)"},
            {"name": "step_logits", "shape": ["B", "T"], "dtype": "float32",
             "meaning": "the networks' mean logit per bin (without the summary members); past lengths meaningless"},
        ],
        "summary_features": summary_names(model) if model.head is not None else [],
        "n_networks": len(model.networks),
        "model_config": cfg.to_dict(),
        "series": list(tr.catalogue.series),
        "static_features": list(tr.static_features_),
        "window_hours": tr.window_hours,
        "resolution_hours": tr.resolution_hours,
        "n_bins": tr.n_bins,
        "imputation": tr.imputation,
        "transformer": tr.to_dict(),
        "catalogue_csv": tr.catalogue.to_csv_text(),
        "catalogue_digest": tr.catalogue.digest(),
        "calibrator": model.calibrator.to_dict(),
        "threshold": float(model.threshold),
        "outside_graph": ["validation (clinical_lstm.validate rules)", "binning and in-bin aggregation",
                          "log1p, standardization, imputation, mask, delta, static encoding, summaries (transformer)",
                          "calibration (calibrator) and the alert threshold"],
    }


def export_onnx(model, out: str | Path, opset: int = DEFAULT_OPSET, check: bool = True) -> Path:
    """Write ``model``'s networks (ensemble averaged) as ONNX with the contract embedded and beside it.

    ``check`` runs the file in onnxruntime against PyTorch on random inputs of two lengths before it is put in
    place, and raises ValueError (nothing written) if it does not run or any output differs by more than 1e-4.
    """
    import torch

    out = check_out(out, "onnx")
    try:
        import onnx

        if check:
            import onnxruntime  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency(f"ONNX export needs '{exc.name}': pip install 'clinical-lstm[onnx]'") from exc
    wrapper = _wrapper(model)
    dyn = {"x": {0: "B", 1: "T"}, "mask": {0: "B", 1: "T"}, "delta": {0: "B", 1: "T"}, "statics": {0: "B"},
           "lengths": {0: "B"}, "summary": {0: "B"}, "logit": {0: "B"}, "step_logits": {0: "B", 1: "T"}}
    names = list(inputs_of(model))
    text = json.dumps(contract(model, "onnx", opset), indent=1)
    with atomic_path(out) as tmp, atomic_path(sidecar(out)) as side:  # both renamed into place only if all passes
        with warnings.catch_warnings(), torch.no_grad():
            # the torch.export-based exporter (the default since torch 2.9) needs onnxscript; the TorchScript-based
            # one exports nn.LSTM as the ONNX LSTM op with dynamic batch and time axes
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks and the trees' depth: constant
            warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")  # no h0/c0: zeros, any B
            torch.onnx.export(wrapper, example_inputs(model), str(tmp), dynamo=False, input_names=names,
                              output_names=list(OUTPUTS), dynamic_axes={k: dyn[k] for k in (*names, *OUTPUTS)},
                              opset_version=opset)
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = CONTRACT_KEY, text
        proto.producer_name = "clinical-lstm"
        proto.doc_string = "in-hospital mortality logit; see metadata " + CONTRACT_KEY
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        side.write_text(text)
        if check:
            try:
                diff = max_difference(model, tmp)
            except Exception as exc:  # noqa: BLE001 -- onnxruntime's errors are plain Exceptions: one sentence
                import onnxruntime

                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(f"{out}: the exported ONNX graph does not run in onnxruntime "
                                 f"{onnxruntime.__version__} ({first}); nothing was written") from exc
            _refuse_difference(out, "ONNX graph", diff)
    return out


def _refuse_difference(out: Path, what: str, diff: float) -> None:
    if diff > 1e-4:
        raise ValueError(f"{out}: the exported {what} differs from PyTorch by {diff:.2e} (> 1e-4) on random "
                         f"inputs; nothing was written")


def export_torchscript(model, out: str | Path, check: bool = True) -> Path:
    """Write the networks (ensemble averaged) as a traced TorchScript module with the contract as extra file.

    ``torch.jit`` is deprecated in recent torch releases (2.13 warns) but still saves and loads, in Python
    and in C++ (libtorch); ONNX is the primary edge format.
    """
    import torch

    out = check_out(out, "torchscript")
    wrapper = _wrapper(model)
    text = json.dumps(contract(model, "torchscript"), indent=1)
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(out) as tmp, atomic_path(sidecar(out)) as side:
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example_inputs(model), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_CONTRACT_FILE: text})
        side.write_text(text)
        if check:  # the saved file, before it is put in place
            loaded = torch.jit.load(str(tmp))
            for steps in (None, 5):
                args = example_inputs(model, batch=3, steps=steps, seed=1)
                diff = max(float((a - b).abs().max()) for a, b in zip(loaded(*args), wrapper(*args), strict=True))
                _refuse_difference(out, "TorchScript module", diff)
    return out


@removes_new_out
def export_model(model, out: str | Path, fmt: str = "onnx", opset: int = DEFAULT_OPSET) -> dict:
    """``clinical-lstm export``: a RiskModel or a bundle directory / MLflow URI -> file; returns a summary."""
    from .bundle import RiskModel, load_model, model_dir
    from .tracking import is_model_uri

    local = not isinstance(model, RiskModel) and not is_model_uri(str(model))
    check_out(out, fmt, [model_dir(model)] if local else [])  # before the model is read
    if not isinstance(model, RiskModel):
        model = load_model(model)
    path = export_onnx(model, out, opset) if fmt == "onnx" else export_torchscript(model, out)
    net = model.networks[0]
    inputs = {"x/mask/delta": ["B", "T", net.n_series], "statics": ["B", net.n_static], "lengths": ["B"]}
    if "summary" in inputs_of(model):  # a model with summary members takes its summaries as one more input
        inputs["summary"] = ["B", len(summary_names(model))]
    return {"format": fmt, "file": str(path), "contract": str(sidecar(path)), "n_networks": len(model.networks),
            "inputs": inputs, "outputs": {"logit": ["B"], "step_logits": ["B", "T"]}, "bytes": path.stat().st_size}


def max_difference(model, path: str | Path) -> float:
    """Largest |ONNX - PyTorch| over both outputs, on random inputs of the full and of a short length."""
    import torch

    sess = _session(path)
    wrapper = _wrapper(model)
    worst = 0.0
    for steps in (None, 5):
        args = example_inputs(model, batch=3, steps=steps, seed=1)
        got = sess.run(list(OUTPUTS), {n: a.numpy() for n, a in zip(inputs_of(model), args, strict=True)})
        with torch.no_grad():
            want = wrapper(*args)
        worst = max(worst, *(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True)))
    return worst


def _session(path):
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency("running ONNX needs 'onnxruntime': pip install 'clinical-lstm[onnx]'") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def read_contract(path: str | Path) -> dict:
    """The contract embedded in an exported file. ``<file>.json`` beside it (for runtimes that cannot read the
    file's metadata) must say the same, or it is refused: a contract edited, or copied from another export, would
    preprocess and calibrate for another model and give wrong risks without any error."""
    path = Path(path)
    embedded = _embedded_contract(path)
    side = sidecar(path)
    if side.is_file():
        try:
            given = json.loads(side.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{side} is not a readable contract ({type(exc).__name__}); delete it or export "
                             f"again (the contract embedded in {path.name} is the one that counts)") from None
        if embedded is None:
            return given
        if given != embedded:
            raise ValueError(f"{side} does not match the contract embedded in {path.name} (edited, or another "
                             f"export's): delete it or export again")
    if embedded is None:
        raise ValueError(f"{path} carries no clinical-lstm contract (no {side.name} and none embedded)")
    return embedded


def _embedded_contract(path: Path) -> dict | None:
    """The contract in the file's own metadata (ONNX ``metadata_props``, TorchScript's extra file), or None."""
    if path.suffix == ".onnx":
        import onnx
        from google.protobuf.message import DecodeError  # onnx's parser (protobuf is onnx's own dependency)

        try:
            props = onnx.load(str(path), load_external_data=False).metadata_props
        except (OSError, DecodeError) as exc:
            raise ValueError(f"{path} is not an ONNX file ({type(exc).__name__}): export it again") from None
        return next((json.loads(p.value) for p in props if p.key == CONTRACT_KEY), None)
    import torch

    extra = {TORCHSCRIPT_CONTRACT_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), _extra_files=extra)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path} is not a TorchScript file ({type(exc).__name__}): export it again") from None
    return json.loads(extra[TORCHSCRIPT_CONTRACT_FILE]) if extra[TORCHSCRIPT_CONTRACT_FILE] else None


class ExportedModel:
    """Reference runtime for an exported ONNX file: the preprocessing outside the graph, rebuilt from the
    contract (catalogue, transformer state, calibrator, threshold), around an onnxruntime session.

    ``predict(data)`` returns every stay, like ``RiskModel.predict`` (``risk`` null and ``reason`` set for the stays
    it rejects). The contract is the one embedded in the file (:func:`read_contract`).
    """

    def __init__(self, path: str | Path):
        from .calibrate import calibrator_from_dict
        from .catalogue import Catalogue
        from .impute import GridTransformer

        self.path = Path(path)
        self.contract = read_contract(self.path)
        if self.contract.get("format") != CONTRACT_FORMAT:
            raise ValueError(f"{path}: contract format {self.contract.get('format')!r}, expected {CONTRACT_FORMAT}")
        catalogue = Catalogue.from_csv_text(self.contract["catalogue_csv"], source=f"{path} contract")
        if catalogue.digest() != self.contract["catalogue_digest"]:
            raise ValueError(f"{path}: the contract's catalogue does not match its digest")
        self.transformer = GridTransformer.from_dict(self.contract["transformer"], catalogue)
        self.calibrator = calibrator_from_dict(self.contract["calibrator"])
        self.threshold = float(self.contract["threshold"])
        self.session = _session(self.path)

    def logits(self, t) -> np.ndarray:
        """:class:`~clinical_lstm.impute.Tensors` -> (N,) logits from the ONNX graph."""
        feeds = {"x": t.x, "mask": t.mask, "delta": t.delta, "statics": t.statics,
                 "lengths": t.lengths.astype(np.int64)}
        if "summary" in {i.name for i in self.session.get_inputs()}:
            feeds["summary"] = t.summary
        return self.session.run(["logit"], feeds)[0]

    def predict(self, data):
        """Every stay of ``data`` as :data:`~clinical_lstm.bundle.SCORES` (rejected stays with their reason),
        the same table as ``RiskModel.predict``; pandas in, pandas out."""
        from .bundle import _like, as_raw, scores_table
        from .validate import validate

        catalogue = self.transformer.catalogue
        clean, kept, report = validate(as_raw(data), catalogue, self.transformer.window_hours)
        risk = np.zeros(0)
        if len(kept):
            risk = self.calibrator.predict(self.logits(self.transformer.transform(clean, kept)).astype(np.float64))
        return _like(data, scores_table(clean, kept, report, risk, self.threshold, catalogue))
