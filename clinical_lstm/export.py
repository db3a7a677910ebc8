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
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .sources import MissingDependency

CONTRACT_FORMAT = "clinical-lstm-export/1"
CONTRACT_KEY = "clinical_lstm.contract"
TORCHSCRIPT_CONTRACT_FILE = "clinical_lstm_contract.json"
FORMATS = ("onnx", "torchscript")
INPUTS = ("x", "mask", "delta", "statics", "lengths")
OUTPUTS = ("logit", "step_logits")
DEFAULT_OPSET = 17


def _wrapper(networks):
    import torch
    from torch import nn

    class EnsembleLogits(nn.Module):
        """``(x, mask, delta, statics, lengths) -> (logit, step_logits)``, the mean over member networks."""

        def __init__(self, nets):
            super().__init__()
            self.nets = nn.ModuleList(nets)

        def forward(self, x, mask, delta, statics, lengths):
            logits, steps = [], []
            for net in self.nets:
                logit, step_logits, _ = net(x, mask, delta, statics, lengths)
                logits.append(logit)
                steps.append(step_logits)
            if len(logits) == 1:
                return logits[0], steps[0]
            return torch.stack(logits).mean(0), torch.stack(steps).mean(0)

    return EnsembleLogits(networks).eval()


def example_inputs(model, batch: int = 2, steps: int | None = None, seed: int = 0):
    """Random inputs of the contract's shapes and dtypes (for tracing and checks)."""
    import torch

    V, S = model.networks[0].n_series, model.networks[0].n_static
    T = steps or model.transformer.n_bins
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (batch,), generator=g, dtype=torch.int64)
    lengths[0] = T
    return (torch.randn(batch, T, V, generator=g), (torch.rand(batch, T, V, generator=g) < 0.3).float(),
            torch.rand(batch, T, V, generator=g) * 10, torch.randn(batch, S, generator=g), lengths)


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
        ],
        "outputs": [
            {"name": "logit", "shape": ["B"], "dtype": "float32",
             "meaning": "stay logit (ensemble mean); risk = calibrator(logit)"},
            {"name": "step_logits", "shape": ["B", "T"], "dtype": "float32",
             "meaning": "logit per bin (ensemble mean); past lengths meaningless"},
        ],
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
                          "log1p, standardization, imputation, mask, delta, static encoding (transformer)",
                          "calibration (calibrator) and the alert threshold"],
    }


def export_onnx(model, out: str | Path, opset: int = DEFAULT_OPSET, check: bool = True) -> Path:
    """Write ``model``'s networks (ensemble averaged) as ONNX with the contract embedded and beside it.

    ``check`` runs the file in onnxruntime (when installed) against PyTorch on random inputs of two lengths
    and raises if any output differs by more than 1e-4.
    """
    import torch

    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency("ONNX export needs the 'onnx' package: pip install 'clinical-lstm[onnx]'") from exc
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _wrapper(model.networks)
    dyn = {"x": {0: "B", 1: "T"}, "mask": {0: "B", 1: "T"}, "delta": {0: "B", 1: "T"}, "statics": {0: "B"},
           "lengths": {0: "B"}, "logit": {0: "B"}, "step_logits": {0: "B", 1: "T"}}
    with warnings.catch_warnings(), torch.no_grad():
        # the torch.export-based exporter (the default since torch 2.9) needs onnxscript; the TorchScript-based
        # one exports nn.LSTM as the ONNX LSTM op with dynamic batch and time axes
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # nn.LSTM's shape checks, constant here
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")  # no h0/c0 inputs: zeros, any B
        torch.onnx.export(wrapper, example_inputs(model), str(out), dynamo=False, input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamic_axes=dyn, opset_version=opset)
    proto = onnx.load(str(out))
    doc = contract(model, "onnx", opset)
    text = json.dumps(doc, indent=1)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, text
    proto.producer_name, proto.doc_string = "clinical-lstm", "in-hospital mortality logit; see metadata " + CONTRACT_KEY
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))
    Path(f"{out}.json").write_text(text)
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:  # pragma: no cover
            return out
        diff = max_difference(model, out)
        if diff > 1e-4:
            raise RuntimeError(f"the exported ONNX graph differs from PyTorch by {diff:.2e} (> 1e-4)")
    return out


def export_torchscript(model, out: str | Path, check: bool = True) -> Path:
    """Write the networks (ensemble averaged) as a traced TorchScript module with the contract as extra file.

    ``torch.jit`` is deprecated in recent torch releases (2.13 warns) but still saves and loads, in Python
    and in C++ (libtorch); ONNX is the primary edge format.
    """
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _wrapper(model.networks)
    text = json.dumps(contract(model, "torchscript"), indent=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example_inputs(model), check_trace=False)
        torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_CONTRACT_FILE: text})
    Path(f"{out}.json").write_text(text)
    if check:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(out))
            for steps in (None, 5):
                args = example_inputs(model, batch=3, steps=steps, seed=1)
                diff = max(float((a - b).abs().max()) for a, b in zip(loaded(*args), wrapper(*args), strict=True))
                if diff > 1e-4:
                    raise RuntimeError(f"the traced TorchScript module differs from PyTorch by {diff:.2e}")
    return out


def export_model(model, out: str | Path, fmt: str = "onnx", opset: int = DEFAULT_OPSET) -> dict:
    """``clinical-lstm export``: a RiskModel or a bundle directory / MLflow URI -> file; returns a summary."""
    from .bundle import RiskModel, load_model

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if not isinstance(model, RiskModel):
        model = load_model(model)
    path = export_onnx(model, out, opset) if fmt == "onnx" else export_torchscript(model, out)
    return {"format": fmt, "file": str(path), "contract": f"{path}.json", "n_networks": len(model.networks),
            "inputs": {"x/mask/delta": ["B", "T", model.networks[0].n_series], "statics": ["B", model.networks[0].n_static],
                       "lengths": ["B"]}, "outputs": {"logit": ["B"], "step_logits": ["B", "T"]},
            "bytes": path.stat().st_size}


def max_difference(model, path: str | Path) -> float:
    """Largest |ONNX - PyTorch| over both outputs, on random inputs of the full and of a short length."""
    import torch

    sess = _session(path)
    wrapper = _wrapper(model.networks)
    worst = 0.0
    for steps in (None, 5):
        args = example_inputs(model, batch=3, steps=steps, seed=1)
        got = sess.run(list(OUTPUTS), {n: a.numpy() for n, a in zip(INPUTS, args, strict=True)})
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
    """The contract of an exported file: ``<file>.json`` beside it, else the one embedded in the file."""
    path = Path(path)
    side = Path(f"{path}.json")
    if side.is_file():
        return json.loads(side.read_text())
    if path.suffix == ".onnx":
        import onnx

        for p in onnx.load(str(path), load_external_data=False).metadata_props:
            if p.key == CONTRACT_KEY:
                return json.loads(p.value)
    else:
        import torch

        extra = {TORCHSCRIPT_CONTRACT_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), _extra_files=extra)
        if extra[TORCHSCRIPT_CONTRACT_FILE]:
            return json.loads(extra[TORCHSCRIPT_CONTRACT_FILE])
    raise ValueError(f"{path} carries no clinical-lstm contract (no {side.name} and none embedded)")


class ExportedModel:
    """Reference runtime for an exported ONNX file: the preprocessing outside the graph, rebuilt from the
    contract (catalogue, transformer state, calibrator, threshold), around an onnxruntime session.

    ``predict(data)`` returns ``stay_id, risk, flag`` for the scorable stays, like ``RiskModel.score``.
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
