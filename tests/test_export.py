"""Edge export: ONNX (run in onnxruntime) and TorchScript match PyTorch; the contract travels with the file."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from helpers import tiny_model

from clinical_lstm.bundle import RiskModel, load_model
from clinical_lstm.config import ModelConfig
from clinical_lstm.export import (
    CONTRACT_KEY,
    ExportedModel,
    export_model,
    export_onnx,
    export_torchscript,
    read_contract,
)
from clinical_lstm.impute import Tensors
from clinical_lstm.model import MaskedLSTM
from clinical_lstm.sample import bundled_sample
from clinical_lstm.sources import load

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


TOL = 1e-4


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """An untrained two-network model: export is arithmetic, it needs no training."""
    return tiny_model(seed=4, n_networks=2, hidden_size=16).save(tmp_path_factory.mktemp("export") / "m")


@pytest.fixture(scope="module")
def model(bundle_dir) -> RiskModel:
    return load_model(bundle_dir)


@pytest.fixture(scope="module")
def long() -> pl.DataFrame:
    raw = load(bundled_sample()).long
    ids = raw["stay_id"].unique().sort().to_list()[:64]
    return raw.filter(pl.col("stay_id").is_in(ids))


@pytest.fixture(scope="module")
def tensors(model, long) -> Tensors:
    clean, kept, _ = model.clean(long)
    return model.tensors(clean, kept)


def run_onnx(path, t: Tensors, steps: int | None = None):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, mask, delta, lengths = t.x, t.mask, t.delta, t.lengths
    if steps is not None:  # a shorter time axis: the first `steps` bins of every stay
        x, mask, delta, lengths = x[:, :steps], mask[:, :steps], delta[:, :steps], np.minimum(lengths, steps)
    feeds = {"x": np.ascontiguousarray(x), "mask": np.ascontiguousarray(mask), "delta": np.ascontiguousarray(delta),
             "statics": t.statics, "lengths": lengths.astype(np.int64)}
    return sess.run(["logit", "step_logits"], feeds), feeds


def run_torch(networks, feeds):
    with torch.no_grad():
        outs = [net(*(torch.from_numpy(feeds[k]) for k in ("x", "mask", "delta", "statics", "lengths")))
                for net in networks]
    logit = torch.stack([o[0] for o in outs]).mean(0).numpy()
    steps = torch.stack([o[1] for o in outs]).mean(0).numpy()
    return logit, steps


def test_onnx_matches_pytorch_in_onnxruntime(model, tensors, tmp_path):
    path = export_onnx(model, tmp_path / "model.onnx")
    for steps in (None, 12, 1):  # dynamic time axis
        (logit, step_logits), feeds = run_onnx(path, tensors, steps)
        want_logit, want_steps = run_torch(model.networks, feeds)
        assert logit.shape == (len(tensors),) and step_logits.shape == feeds["x"].shape[:2]
        np.testing.assert_allclose(logit, want_logit, atol=TOL, rtol=0)
        np.testing.assert_allclose(step_logits, want_steps, atol=TOL, rtol=0)
    # the stay logits are the ensemble mean that RiskModel scores with
    np.testing.assert_allclose(run_onnx(path, tensors)[0][0], model.logits(tensors), atol=TOL, rtol=0)
    # dynamic batch: one stay at a time
    one = tensors.subset(slice(3, 4))
    np.testing.assert_allclose(run_onnx(path, one)[0][0], model.logits(one), atol=TOL, rtol=0)


def test_contract_is_embedded_and_beside_the_file(model, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    embedded = json.loads({p.key: p.value for p in proto.metadata_props}[CONTRACT_KEY])
    assert embedded == json.loads((tmp_path / "m.onnx.json").read_text())
    (tmp_path / "m.onnx.json").unlink()
    c = read_contract(path)
    assert c == embedded
    assert [i.name for i in proto.graph.input] == ["x", "mask", "delta", "statics", "lengths"]
    assert [o.name for o in proto.graph.output] == ["logit", "step_logits"]
    assert c["series"] == model.catalogue.series and c["static_features"] == model.transformer.static_features_
    assert c["transformer"] == json.loads(json.dumps(model.transformer.to_dict()))
    assert c["calibrator"] == json.loads(json.dumps(model.calibrator.to_dict()))
    assert c["threshold"] == model.threshold and c["n_networks"] == 2
    assert c["catalogue_csv"] == model.catalogue.to_csv_text()


def test_exported_model_scores_like_predict(model, long, tmp_path):
    path = export_onnx(model, tmp_path / "m.onnx")
    (tmp_path / "m.onnx.json").unlink()  # everything needed comes from inside the .onnx file
    got = ExportedModel(path).predict(long).sort("stay_id")
    want = model.predict(long).filter(pl.col("risk").is_not_null()).sort("stay_id")
    assert got["stay_id"].to_list() == want["stay_id"].to_list()
    np.testing.assert_allclose(got["risk"].to_numpy(), want["risk"].to_numpy(), atol=TOL, rtol=0)
    assert got["flag"].to_list() == want["flag"].to_list()


@pytest.mark.parametrize("cfg", [ModelConfig(hidden_size=12, attention=True),
                                 ModelConfig(hidden_size=12, num_layers=2, decay=False)],
                         ids=["attention", "two_layers_no_decay"])
def test_model_variants_export(model, tensors, tmp_path, cfg):
    torch.manual_seed(0)
    net = MaskedLSTM(cfg, len(model.catalogue.series), model.transformer.n_static_features).eval()
    m = RiskModel(model.transformer, [net], model.calibrator, model.threshold)
    path = export_onnx(m, tmp_path / "v.onnx")
    for steps in (None, 7):
        (logit, step_logits), feeds = run_onnx(path, tensors, steps)
        want_logit, want_steps = run_torch([net], feeds)
        np.testing.assert_allclose(logit, want_logit, atol=TOL, rtol=0)
        np.testing.assert_allclose(step_logits, want_steps, atol=TOL, rtol=0)


def test_torchscript_matches_pytorch(model, tensors, tmp_path):
    import warnings

    path = export_torchscript(model, tmp_path / "model.pt")
    assert read_contract(path)["graph_format"] == "torchscript"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path))
    t = tensors
    args = [torch.from_numpy(a) for a in (t.x[:, :20].copy(), t.mask[:, :20].copy(), t.delta[:, :20].copy(),
                                          t.statics, np.minimum(t.lengths, 20))]
    with torch.no_grad():
        logit, steps = loaded(*args)
    want_logit, want_steps = run_torch(model.networks, {k: a.numpy() for k, a in
                                                        zip(("x", "mask", "delta", "statics", "lengths"), args,
                                                            strict=True)})
    np.testing.assert_allclose(logit.numpy(), want_logit, atol=TOL, rtol=0)
    np.testing.assert_allclose(steps.numpy(), want_steps, atol=TOL, rtol=0)


def test_cli_export(bundle_dir, tmp_path, capsys):
    from clinical_lstm.cli import main

    out = tmp_path / "edge" / "model.onnx"
    assert main(["export", "--model", str(bundle_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "edge" / "model.onnx.json").is_file()
    assert json.loads(capsys.readouterr().out)["file"] == str(out)
    assert main(["export", "--model", str(tmp_path / "nope"), "--format", "onnx", "--out", str(out)]) == 2


def test_export_model_rejects_unknown_format(model, tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_model(model, tmp_path / "x", fmt="tflite")
