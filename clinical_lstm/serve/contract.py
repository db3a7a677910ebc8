"""An exported file's contract: what a runtime must do outside the graph (the catalogue, the transformer's fitted
state, the calibrator and threshold), its ``fingerprint`` binding every key to the graph, and reading it back from a
file or its ``<file>.json`` sidecar with every check (:func:`read_contract`).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from ..data.sources import DataError

CONTRACT_FORMAT = "clinical-lstm-export/1"
CONTRACT_KEY = "clinical_lstm.contract"
TORCHSCRIPT_CONTRACT_FILE = "clinical_lstm_contract.json"
INPUTS = ("x", "mask", "delta", "statics", "lengths")
OUTPUTS = ("logit", "step_logits")
FINGERPRINT_KEY = "fingerprint"
_FINGERPRINT_TAG = b"clinical-lstm-export-fingerprint/1\n"
_TS_PER_SAVE = ".data/serialization_id"  # random on every torch.jit.save: not part of the module


def sidecar(path: str | Path) -> Path:
    """``<file>.json``: the contract written beside an exported file."""
    return Path(f"{path}.json")


def inputs_of(model) -> tuple[str, ...]:
    return (*INPUTS, "summary") if model.head is not None else INPUTS


def summary_names(model) -> list[str]:
    from ..features.summaries import feature_names

    return feature_names(model.catalogue.series, model.transformer.static_features_)


def contract(model, fmt: str = "onnx", opset: int | None = None) -> dict:
    """The exported graph's input contract plus everything needed to build its inputs and read its output."""
    from .. import __version__
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
                           "(clinical_lstm.features.summaries.summarize); NaN where a variable was never observed; the last "
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
        "outside_graph": ["validation (clinical_lstm.data.validate rules)", "binning and in-bin aggregation",
                          "log1p, standardization, imputation, mask, delta, static encoding, summaries (transformer)",
                          "calibration (calibrator) and the alert threshold"],
    }


def _canonical(value) -> bytes:
    """Canonical JSON: the same bytes for the same parsed contract, however its file is laid out."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def fingerprint(contract: dict, graph_sha256: str) -> dict:
    """The ``fingerprint`` a contract carries: ``sha256`` over ``graph_sha256`` (the graph's own digest) and the
    canonical JSON of every other key of ``contract`` (as read back from JSON); ``fields_sha256``, a short digest
    per key, lets a refusal name the keys that were edited."""
    body = {k: v for k, v in contract.items() if k != FINGERPRINT_KEY}
    return {"sha256": hashlib.sha256(_FINGERPRINT_TAG + graph_sha256.encode() + b"\n" + _canonical(body)).hexdigest(),
            "graph_sha256": graph_sha256,
            "fields_sha256": {k: hashlib.sha256(_canonical(v)).hexdigest()[:16] for k, v in body.items()}}


def _fingerprinted(body: dict, graph_sha256: str) -> str:
    """The contract text to embed and write beside the file: ``body`` (as JSON reads it back) plus its fingerprint."""
    body = json.loads(json.dumps(body))
    return json.dumps({**body, FINGERPRINT_KEY: fingerprint(body, graph_sha256)}, indent=1)


def _onnx_sha256(proto) -> str:
    """SHA-256 of an ONNX model less its ``metadata_props`` (where the contract is): graph nodes, initializers,
    inputs and outputs, opsets, producer."""
    bare = type(proto)()
    bare.CopyFrom(proto)
    del bare.metadata_props[:]
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def _torchscript_parts(path: Path, data: bytes) -> tuple[list[bytes], str]:
    """(the contract texts embedded in a TorchScript archive, SHA-256 over its other members in archive order).
    Member names lose the archive's top folder, which is named after the file it was first saved to."""
    h, contracts = hashlib.sha256(), []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for info in z.infolist():
                name = info.filename.split("/", 1)[-1]
                if name == f"extra/{TORCHSCRIPT_CONTRACT_FILE}":
                    contracts.append(z.read(info))
                elif name != _TS_PER_SAVE:
                    content = z.read(info)
                    for part in (name.encode(), content):
                        h.update(len(part).to_bytes(8, "little") + part)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise DataError(f"{path} is not a TorchScript file ({type(exc).__name__}): export it again") from None
    return contracts, h.hexdigest()


def read_contract(path: str | Path) -> dict:
    """The contract of an exported file (``.onnx``, or TorchScript), verified: its fingerprint must match the graph
    and every other key (:func:`fingerprint`), and ``<file>.json`` beside it (for runtimes that cannot read the
    file's metadata) must say the same as the contract embedded in the file. Anything else is refused with a
    :class:`~clinical_lstm.data.sources.DataError`: an edited or swapped contract would preprocess and calibrate for
    another model and give wrong risks without any error. With no contract embedded, ``<file>.json`` is the
    contract, verified against the graph the same way."""
    return _verified(Path(path))[0]


def _verified(path: Path, fmt: str | None = None) -> tuple[dict, bytes]:
    """(the verified contract, the file's bytes: run these, not the file again). ``fmt`` from the suffix if None."""
    fmt = fmt or ("onnx" if path.suffix == ".onnx" else "torchscript")
    if not path.is_file():
        raise DataError(f"{path}: no such exported file")
    data = path.read_bytes()
    texts, graph = _onnx_parts(path, data) if fmt == "onnx" else _torchscript_parts(path, data)
    if len(texts) > 1:
        raise DataError(f"{path} carries {len(texts)} clinical-lstm contracts, not one: export it again")
    embedded = _parsed(texts[0], f"{path}: the contract embedded in it", "export it again") if texts else None
    side = sidecar(path)
    given = None
    if side.is_file():
        given = _parsed(side.read_bytes(), str(side), f"delete it or export again (the contract embedded in "
                                                      f"{path.name} is the one that counts)")
    if embedded is None and given is None:
        raise DataError(f"{path} carries no clinical-lstm contract (no {side.name} and none embedded)")
    contract = embedded if embedded is not None else given
    _check_fingerprint(path, contract, graph, "embedded" if embedded is not None else f"{side.name}, none embedded")
    if given is not None and _canonical(given) != _canonical(contract):
        raise DataError(f"{side} does not match the contract embedded in {path.name} (edited, or another "
                        f"export's): delete it or export again")
    return contract, data


def _onnx_parts(path: Path, data: bytes) -> tuple[list[str], str]:
    """(the contract texts in an ONNX file's metadata, :func:`_onnx_sha256` of the file)."""
    import onnx
    from google.protobuf.message import DecodeError  # onnx's parser (protobuf is onnx's own dependency)

    try:
        proto = onnx.load_model_from_string(data)
    except (OSError, DecodeError) as exc:
        raise DataError(f"{path} is not an ONNX file ({type(exc).__name__}): export it again") from None
    return [p.value for p in proto.metadata_props if p.key == CONTRACT_KEY], _onnx_sha256(proto)


def _parsed(text: str | bytes, what: str, fix: str) -> dict:
    try:
        value = json.loads(text)  # bytes: UTF-8 (or -16/-32) decoded here, a decoding error is a ValueError too
    except ValueError as exc:
        raise DataError(f"{what} is not a readable contract ({type(exc).__name__}); {fix}") from None
    if not isinstance(value, dict):
        raise DataError(f"{what} is not a readable contract (a JSON {type(value).__name__}, not an object); {fix}")
    return value


def _check_fingerprint(path: Path, contract: dict, graph: str, where: str) -> None:
    """Refuse ``contract`` unless its fingerprint is that of ``graph`` (the file's graph digest) and its own keys."""
    stored = contract.get(FINGERPRINT_KEY)
    if not (isinstance(stored, dict) and isinstance(stored.get("sha256"), str)
            and isinstance(stored.get("graph_sha256"), str)):
        state = "has no fingerprint" if stored is None else "has a malformed fingerprint"
        raise DataError(f"{path}: its contract ({where}) {state}, so its threshold, calibrator, catalogue and "
                        f"statistics cannot be checked against the graph (exported before clinical-lstm checked "
                        f"them, or edited); export the model again")
    if stored["graph_sha256"] != graph:
        raise DataError(f"{path}: the graph's weights or nodes do not match the fingerprint in its contract "
                        f"({where}): the graph was edited after export, or the contract is another export's; "
                        f"export the model again")
    want = fingerprint(contract, graph)
    if stored["sha256"] != want["sha256"]:
        had = stored.get("fields_sha256") if isinstance(stored.get("fields_sha256"), dict) else {}
        now = want["fields_sha256"]
        changed = sorted(k for k in had.keys() | now.keys() if had.get(k) != now.get(k))
        what = f"{', '.join(changed)} changed after export" if changed else "its fingerprint was edited"
        raise DataError(f"{path}: its contract ({where}) does not match its fingerprint: {what}; it would "
                        f"preprocess or calibrate for another model, so it is refused: export the model again")
