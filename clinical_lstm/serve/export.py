"""Edge export: the network (ensemble averaged) as ONNX or TorchScript, with its input contract.

The exported graph is the part of :class:`~clinical_lstm.serve.bundle.RiskModel` that is tensor arithmetic:

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
(:mod:`clinical_lstm.data.validate` rules), binning and in-bin aggregation (:mod:`clinical_lstm.data.grid`),
log1p/standardization/imputation/mask/delta/static encoding (:class:`~clinical_lstm.features.impute.GridTransformer`),
and calibration of the logit plus the alert threshold. The contract (JSON) holds the catalogue CSV, the
transformer's fitted state, the calibrator and threshold; it is embedded in the file (ONNX
``metadata_props`` key ``clinical_lstm.contract``; TorchScript extra file ``clinical_lstm_contract.json``)
and written beside it as ``<file>.json``. :class:`ExportedModel` is a reference runtime over it.

Everything the contract says is bound to the graph by its ``fingerprint`` key (:func:`~clinical_lstm.serve.contract.fingerprint`): a SHA-256 over
the graph (ONNX: the model less its metadata, so nodes and initializers; TorchScript: every member of the archive but
the contract and the per-save id) and the canonical JSON of every other key of the contract. :func:`~clinical_lstm.serve.contract.read_contract`
recomputes it: a threshold, calibrator, catalogue or statistic edited in the file or beside it, a graph whose weights
were edited, a contract without its fingerprint, or a sidecar that says otherwise than the file is refused with one
:class:`~clinical_lstm.data.sources.DataError` naming the file and what failed. It detects edits and mix-ups, not a
forger who recomputes the digest (that would need a signature and a key).

The file ends in its format's suffix (``.onnx``, TorchScript ``.pt``), and neither it nor ``<file>.json`` may
touch the model's folder or files (:func:`check_out`, before any work). Both are written to temporary siblings,
checked there (the graph run against PyTorch), and only then renamed into place: a failed export leaves
nothing at the destination and an earlier file there as it was.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from ..checks import DataError, MissingDependency
from ..files import atomic_path, check_not_input, removes_new_out
from .contract import (
    CONTRACT_FORMAT,
    CONTRACT_KEY,
    OUTPUTS,
    TORCHSCRIPT_CONTRACT_FILE,
    _fingerprinted,
    _onnx_sha256,
    _torchscript_parts,
    _verified,
    contract,
    inputs_of,
    sidecar,
    summary_names,
)

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}  # the file a format is written to must end so
DEFAULT_OPSET = 17


def check_out(out: str | Path, fmt: str, inputs=()) -> Path:
    """``out`` as the file a ``fmt`` export writes, checked before any work: it must end in the format's suffix
    (so that an unrelated file of another kind is never replaced by mistake), must not be a folder, and neither it
    nor its :func:`sidecar` may touch ``inputs`` (the model's bundle folder: the file, its contract, nothing inside
    it). Raises ValueError, or :class:`~clinical_lstm.data.sources.DataError` for an input."""
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
        :func:`clinical_lstm.serve.bundle.ensemble_logits`, the model's own logit."""

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
    body = contract(model, "onnx", opset)
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
        proto.producer_name = "clinical-lstm"
        proto.doc_string = "in-hospital mortality logit; see metadata " + CONTRACT_KEY
        text = _fingerprinted(body, _onnx_sha256(proto))
        entry = proto.metadata_props.add()
        entry.key, entry.value = CONTRACT_KEY, text
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        side.write_text(text)
        _check_written(out, tmp, "onnx")
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


def _check_written(out: Path, tmp: Path, fmt: str) -> None:
    """The file as written reads back with its fingerprint verified (else ValueError, nothing written)."""
    try:
        _verified(tmp, fmt)
    except DataError as exc:
        raise ValueError(f"{out}: the written {fmt} file does not verify against its own fingerprint ({exc}); "
                         f"nothing was written") from exc


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
    body = contract(model, "torchscript")
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(out) as tmp, atomic_path(sidecar(out)) as side:
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example_inputs(model), check_trace=False)
        bare = io.BytesIO()  # the members a save writes besides the contract, to fingerprint before the real save
        torch.jit.save(traced, bare)
        text = _fingerprinted(body, _torchscript_parts(out, bare.getvalue())[1])
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_CONTRACT_FILE: text})
        side.write_text(text)
        _check_written(out, tmp, "torchscript")
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
    from ..tracking.downloads import is_model_uri
    from .bundle import RiskModel, load_model, model_dir

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


def _session(model: str | Path | bytes):
    """An onnxruntime session over a file, or over the bytes that were read (and verified) from one."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover
        raise MissingDependency("running ONNX needs 'onnxruntime': pip install 'clinical-lstm[onnx]'") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


class ExportedModel:
    """Reference runtime for an exported ONNX file: the preprocessing outside the graph, rebuilt from the
    contract (catalogue, transformer state, calibrator, threshold), around an onnxruntime session.

    ``predict(data)`` returns every stay, like ``RiskModel.predict`` (``risk`` null and ``reason`` set for the stays
    it rejects). The contract is the one embedded in the file, verified against the graph (:func:`~clinical_lstm.serve.contract.read_contract`),
    and the session runs the very bytes that were verified.
    """

    def __init__(self, path: str | Path):
        from ..data.catalogue import Catalogue
        from ..features.impute import GridTransformer
        from ..model.calibrate import calibrator_from_dict

        self.path = Path(path)
        self.contract, data = _verified(self.path)
        if self.contract.get("graph_format") != "onnx":
            raise DataError(f"{path}: a {self.contract.get('graph_format')} export; ExportedModel runs ONNX files")
        if self.contract.get("format") != CONTRACT_FORMAT:
            raise DataError(f"{path}: contract format {self.contract.get('format')!r}, expected {CONTRACT_FORMAT}")
        catalogue = Catalogue.from_csv_text(self.contract["catalogue_csv"], source=f"{path} contract")
        if catalogue.digest() != self.contract["catalogue_digest"]:
            raise DataError(f"{path}: the contract's catalogue does not match its digest")
        self.transformer = GridTransformer.from_dict(self.contract["transformer"], catalogue)
        self.calibrator = calibrator_from_dict(self.contract["calibrator"])
        self.threshold = float(self.contract["threshold"])
        self.session = _session(data)  # the bytes that were verified, not the file read again

    def logits(self, t) -> np.ndarray:
        """:class:`~clinical_lstm.features.impute.Tensors` -> (N,) logits from the ONNX graph."""
        feeds = {"x": t.x, "mask": t.mask, "delta": t.delta, "statics": t.statics,
                 "lengths": t.lengths.astype(np.int64)}
        if "summary" in {i.name for i in self.session.get_inputs()}:
            feeds["summary"] = t.summary
        return self.session.run(["logit"], feeds)[0]

    def predict(self, data):
        """Every stay of ``data`` as :data:`~clinical_lstm.serve.bundle.SCORES` (rejected stays with their reason),
        the same table as ``RiskModel.predict``; pandas in, pandas out."""
        from ..data.validate import validate
        from .bundle import _like, as_raw, scores_table

        catalogue = self.transformer.catalogue
        clean, kept, report = validate(as_raw(data), catalogue, self.transformer.window_hours)
        risk = np.zeros(0)
        if len(kept):
            risk = self.calibrator.predict(self.logits(self.transformer.transform(clean, kept)).astype(np.float64))
        return _like(data, scores_table(clean, kept, report, risk, self.threshold, catalogue))
