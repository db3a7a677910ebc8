"""Edge export: ONNX (run in onnxruntime) and TorchScript match PyTorch; the contract travels with the file."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import tiny_model

from clinical_lstm.config import ModelConfig
from clinical_lstm.data.load import load
from clinical_lstm.data.sample import bundled_sample
from clinical_lstm.data.sources import DataError
from clinical_lstm.features.impute import Tensors
from clinical_lstm.model.head import SummaryHead, fit_members
from clinical_lstm.model.network import MaskedLSTM
from clinical_lstm.serve.bundle import RiskModel, load_model
from clinical_lstm.serve.contract import CONTRACT_KEY, read_contract, summary_names
from clinical_lstm.serve.export import ExportedModel, export_model, export_onnx, export_torchscript

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


TOL = 1e-4
CLI = [sys.executable, "-m", "clinical_lstm.cli"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    """An untrained two-network model: export is arithmetic, it needs no training."""
    return tiny_model(seed=4, n_networks=2, hidden_size=16).save(tmp_path_factory.mktemp("export") / "m")


@pytest.fixture(scope="module")
def model(bundle_dir) -> RiskModel:
    return load_model(bundle_dir)


@pytest.fixture(scope="module")
def stacked(model) -> RiskModel:
    """The default model's shape (``summaries = true``): the networks stacked with summary members whose boosted
    trees truly split (tiny_model's head, fitted to 40 random labels, is one leaf per tree: no walk to export), and
    send missing values both ways."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, len(summary_names(model)))).astype(np.float32)  # (N, F)
    X[rng.random(X.shape) < 0.3] = np.nan
    y = (np.nan_to_num(X[:, 0], nan=2.0) + np.nan_to_num(X[:, 1], nan=-2.0) > 0).astype(int)
    head = SummaryHead(fit_members(X, y, 0), np.array([1.0, 0.5, 0.5]), -0.2)
    assert int(head.trees_depth) >= 2
    assert set(head.trees_missing_left[~head.trees_leaf].tolist()) == {False, True}
    return RiskModel(model.transformer, model.networks, model.calibrator, model.threshold, {}, head)


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


def test_stacked_model_exports_and_runs_in_onnxruntime(stacked, tensors, long, tmp_path):
    """The shipped model has summary members: their tree walk must export to a graph onnxruntime can run (a
    ``Where`` on booleans has no onnxruntime kernel), and score as the model does."""
    summary = export_model(stacked, tmp_path / "stacked.onnx")
    path = Path(summary["file"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x", "mask", "delta", "statics", "lengths", "summary"]
    assert summary["inputs"]["summary"] == ["B", tensors.summary.shape[1]]  # what the command prints says so
    assert np.isnan(tensors.summary).any()  # never-observed variables: the missing-value routing is exercised
    feeds = {"x": tensors.x, "mask": tensors.mask, "delta": tensors.delta, "statics": tensors.statics,
             "lengths": tensors.lengths.astype(np.int64), "summary": tensors.summary}
    logit = sess.run(["logit"], feeds)[0]
    np.testing.assert_allclose(logit, stacked.logits(tensors), atol=TOL, rtol=0)
    assert not np.allclose(logit, run_torch(stacked.networks, feeds)[0], atol=1e-2)  # the head is in the graph
    got = ExportedModel(path).predict(long).sort("stay_id")
    want = stacked.predict(long).filter(pl.col("risk").is_not_null()).sort("stay_id")
    assert got["stay_id"].to_list() == want["stay_id"].to_list()
    np.testing.assert_allclose(got["risk"].to_numpy(), want["risk"].to_numpy(), atol=TOL, rtol=0)


def snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("fmt", "out", "error"), [
    ("torchscript", "m1/bundle", "a .pt file"),  # its contract would have been m1/bundle.json, the manifest
    ("onnx", "m1/weights.safetensors", "a .onnx file"),
    ("torchscript", "m1/bundle.pt", "refusing to write"),
    ("onnx", "m1/edge.onnx", "refusing to write"),
    ("onnx", "run/model/edge.onnx", "refusing to write"),
    ("onnx", "link.onnx", "refusing to write"),  # a link to the weights
], ids=["manifest", "weights", "in_bundle", "in_bundle_onnx", "in_run_model", "link_to_weights"])
def test_cli_export_never_writes_into_the_model(bundle_dir, tmp_path, capsys, fmt, out, error):
    from clinical_lstm.cli import main

    shutil.copytree(bundle_dir, tmp_path / "m1")
    shutil.copytree(bundle_dir, tmp_path / "run" / "model")  # a run folder as `train --out run` writes it
    (tmp_path / "link.onnx").symlink_to(tmp_path / "m1" / "weights.safetensors")
    model = tmp_path / ("run" if out.startswith("run/") else "m1")
    before = snapshot(tmp_path)
    assert main(["export", "--model", str(model), "--format", fmt, "--out", str(tmp_path / out)]) == 2
    assert error in capsys.readouterr().err
    assert snapshot(tmp_path) == before  # nothing replaced, nothing added
    assert load_model(model).digest() == load_model(bundle_dir).digest()
    with pytest.raises(DataError, match="inside the input folder"):  # the API refuses it too
        export_model(str(tmp_path / "m1"), tmp_path / "m1" / "sub" / "edge.onnx")


def test_export_refuses_an_out_of_another_kind(model, tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_text("id,qty\n1,2\n")
    with pytest.raises(ValueError, match=r"onnx exports are written to a \.onnx file, got 'bom.csv'; name it e\.g\. "
                                         r"bom\.onnx"):
        export_model(model, bom, "onnx")
    with pytest.raises(ValueError, match=r"torchscript exports are written to a \.pt file, got 'm\.onnx'"):
        export_torchscript(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"\.onnx file, got 'm\.pt'"):
        export_onnx(model, tmp_path / "m.pt")
    (tmp_path / "edge.onnx").mkdir()
    with pytest.raises(ValueError, match="edge.onnx is a folder"):
        export_onnx(model, tmp_path / "edge.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bom.csv", "edge.onnx"]
    assert bom.read_text() == "id,qty\n1,2\n" and not any((tmp_path / "edge.onnx").iterdir())


def test_failed_check_leaves_the_destination_as_it_was(model, tmp_path):
    """A graph that does not reproduce PyTorch is refused before it is put in place: a one-line error, no file and
    no contract at the destination, an earlier file there untouched. (Output weights scaled by 1e6 turn the
    LSTM's float32 rounding differences between onnxruntime and PyTorch into logit differences > 1e-4.)"""
    nets = copy.deepcopy(model.networks)
    with torch.no_grad():
        for net in nets:
            net.head.weight.mul_(1e6)
    bad = RiskModel(model.transformer, nets, model.calibrator, model.threshold).save(tmp_path / "bad")
    edge = tmp_path / "edge"
    edge.mkdir()
    (edge / "m.onnx").write_bytes(b"an earlier export")
    for out in (edge / "m.onnx", tmp_path / "fresh" / "m.onnx"):
        proc = subprocess.run([*CLI, "export", "--model", str(bad), "--out", str(out)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "differs from PyTorch by" in proc.stderr and "nothing was written" in proc.stderr
    assert snapshot(edge) == {"m.onnx": b"an earlier export"}
    assert not (tmp_path / "fresh").exists()  # the folder the failed export made is gone again


def test_a_contract_that_is_not_the_files_own_is_refused(model, stacked, long, tmp_path):
    """The contract embedded in the file is the truth: a sidecar edited or copied from another export, or an
    exported file swapped under a sidecar, used to preprocess and calibrate for another model (wrong risks, no
    error). A file swapped alone scores as the model it came from."""
    a = Path(export_model(model, tmp_path / "a.onnx")["file"])
    b = Path(export_model(stacked, tmp_path / "b.onnx")["file"])
    contract = json.loads(sidecar_of(a).read_text())
    edited = {**contract, "threshold": contract["threshold"] / 2}
    sidecar_of(a).write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"a\.onnx\.json does not match the contract embedded in a\.onnx"):
        ExportedModel(a)
    shutil.copy(sidecar_of(b), sidecar_of(a))  # another export's sidecar
    with pytest.raises(ValueError, match="does not match the contract embedded"):
        ExportedModel(a)
    sidecar_of(a).write_text(json.dumps(contract)[:100])  # truncated
    with pytest.raises(ValueError, match=r"a\.onnx\.json is not a readable contract"):
        ExportedModel(a)
    sidecar_of(a).unlink()
    shutil.copy(b, a)  # b's graph under a's name, no sidecar: b's own embedded contract
    got = ExportedModel(a).predict(long).filter(pl.col("risk").is_not_null()).sort("stay_id")
    want = stacked.predict(long).filter(pl.col("risk").is_not_null()).sort("stay_id")
    np.testing.assert_allclose(got["risk"].to_numpy(), want["risk"].to_numpy(), atol=TOL, rtol=0)
    (tmp_path / "c.onnx").write_bytes(b"not a graph at all")
    with pytest.raises(ValueError, match=r"c\.onnx is not an ONNX file \(DecodeError\)"):
        ExportedModel(tmp_path / "c.onnx")


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# -- the contract's fingerprint: every field the runtime relies on, bound to the graph -------------------------------

@pytest.fixture(scope="module")
def exports(model, tmp_path_factory) -> Path:
    """One ONNX and one TorchScript export of ``model`` (each with its sidecar); tests edit copies."""
    folder = tmp_path_factory.mktemp("exports")
    export_onnx(model, folder / "m.onnx")
    export_torchscript(model, folder / "m.pt")
    return folder


def copy_export(exports: Path, tmp_path: Path, name: str) -> Path:
    for f in (name, name + ".json"):
        shutil.copy(exports / f, tmp_path / f)
    return tmp_path / name


def edit_json(text: str, edit) -> str:
    contract = json.loads(text)
    edit(contract)
    return json.dumps(contract, indent=1)


def edit_onnx(path: Path, contract=None, graph=None) -> None:
    """Rewrite the ONNX file with ``contract(dict)`` applied to its embedded contract (``"strip"``: none embedded)
    and ``graph(GraphProto)`` to its graph, the way a hand edit with the onnx package would."""
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == CONTRACT_KEY)
    if contract == "strip":
        proto.metadata_props.remove(entry)
    elif contract is not None:
        entry.value = edit_json(entry.value, contract)
    if graph is not None:
        graph(proto.graph)
    onnx.save(proto, str(path))


def edit_torchscript(path: Path, contract=None, weights=False) -> None:
    """Rewrite the TorchScript zip member by member: ``contract(dict)`` applied to the contract extra file,
    ``weights``: the first tensor's first float negated. Every other member is copied as it was."""
    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if contract is not None and info.filename.endswith("/extra/clinical_lstm_contract.json"):
                data = edit_json(data.decode(), contract).encode()
            if weights and info.filename.endswith("/data/0"):
                data = (-np.frombuffer(data[:4], np.float32)).tobytes() + data[4:]
            z.writestr(info, data)


def edit_sidecar(path: Path, edit) -> None:
    side = sidecar_of(path)
    side.write_text(edit_json(side.read_text(), edit))


def set_(key, value):
    return lambda c: c.__setitem__(key, value)


def shift_calibrator(c):
    c["calibrator"]["b"] += 2


def narrow_weight_range(c):
    """Weight's plausible range 20-300 kg -> 20-30 kg, with the catalogue digest recomputed to match."""
    from clinical_lstm.data.catalogue import Catalogue

    assert "\nWeight,kg,20.0,300.0," in c["catalogue_csv"]
    c["catalogue_csv"] = c["catalogue_csv"].replace("\nWeight,kg,20.0,300.0,", "\nWeight,kg,20.0,30.0,")
    c["catalogue_digest"] = Catalogue.from_csv_text(c["catalogue_csv"]).digest()


def shift_median(c):
    c["transformer"]["median"][0] += 1.0


def drop_fingerprint(c):
    del c["fingerprint"]


def scale_first_initializer(graph):
    from onnx import numpy_helper

    init = next(i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) > 1)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))


def no_sidecar(path):
    sidecar_of(path).unlink()


FILE = r"m\.onnx: "
CONTRACT_EDITED = FILE + r"its contract \(embedded\) does not match its fingerprint: "
ONNX_EDITS = {  # id: (edit of the copied export, the refusal's text)
    # issue #23 item 9: the embedded contract edited, no sidecar -> risks off by up to 0.38, no error
    "threshold": (lambda p: (edit_onnx(p, set_("threshold", 0.01)), no_sidecar(p)), CONTRACT_EDITED + "threshold "),
    "calibrator": (lambda p: (edit_onnx(p, shift_calibrator), no_sidecar(p)), CONTRACT_EDITED + "calibrator "),
    "threshold_and_calibrator": (lambda p: (edit_onnx(p, lambda c: (set_("threshold", 0.01)(c), shift_calibrator(c))),
                                            no_sidecar(p)), CONTRACT_EDITED + "calibrator, threshold "),
    "catalogue_range": (lambda p: (edit_onnx(p, narrow_weight_range), no_sidecar(p)),
                        CONTRACT_EDITED + "catalogue_csv, catalogue_digest "),
    "transformer_statistic": (lambda p: (edit_onnx(p, shift_median), no_sidecar(p)), CONTRACT_EDITED + "transformer "),
    # the sidecar edited alike: the two agree, and both disagree with the graph
    "threshold_and_sidecar": (lambda p: (edit_onnx(p, set_("threshold", 0.01)), edit_sidecar(p, set_("threshold", 0.01))),
                              CONTRACT_EDITED + "threshold "),
    "initializer": (lambda p: edit_onnx(p, graph=scale_first_initializer),
                    FILE + r"the graph's weights or nodes do not match the fingerprint in its contract"),
    "initializer_no_sidecar": (lambda p: (edit_onnx(p, graph=scale_first_initializer), no_sidecar(p)),
                               FILE + r"the graph's weights or nodes do not match"),
    "fingerprint_deleted": (lambda p: (edit_onnx(p, drop_fingerprint), no_sidecar(p)),
                            FILE + r"its contract \(embedded\) has no fingerprint"),
    "fingerprint_deleted_in_both": (lambda p: (edit_onnx(p, drop_fingerprint), edit_sidecar(p, drop_fingerprint)),
                                    FILE + r"its contract \(embedded\) has no fingerprint"),
    "fingerprint_forged": (lambda p: (edit_onnx(p, lambda c: c["fingerprint"].__setitem__("sha256", "0" * 64)),
                                      no_sidecar(p)), CONTRACT_EDITED + "its fingerprint was edited"),
    "sidecar_disagrees": (lambda p: edit_sidecar(p, set_("threshold", 0.01)),
                          r"m\.onnx\.json does not match the contract embedded in m\.onnx"),
    "sidecar_alone_edited": (lambda p: (edit_onnx(p, "strip"), edit_sidecar(p, set_("threshold", 0.01))),
                             FILE + r"its contract \(m\.onnx\.json, none embedded\) does not match its fingerprint: "
                                    r"threshold "),
}


@pytest.mark.parametrize("case", list(ONNX_EDITS))
def test_an_edited_onnx_export_is_refused(exports, tmp_path, case):
    """Issue #23, item 9: every field the runtime relies on (threshold, calibrator, catalogue, transformer
    statistics) and the graph's weights are covered by a fingerprint checked on load; an edit of any, or of the
    fingerprint, is one DataError naming the file and what failed, with or without the sidecar."""
    path = copy_export(exports, tmp_path, "m.onnx")
    edit, error = ONNX_EDITS[case]
    edit(path)
    with pytest.raises(DataError, match=error) as caught:
        ExportedModel(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises(DataError, match=error):
        read_contract(path)


TS_FILE = r"m\.pt: "
TS_EDITS = {
    "threshold": (lambda p: (edit_torchscript(p, set_("threshold", 0.01)), no_sidecar(p)),
                  TS_FILE + r"its contract \(embedded\) does not match its fingerprint: threshold "),
    "calibrator_and_sidecar": (lambda p: (edit_torchscript(p, shift_calibrator), edit_sidecar(p, shift_calibrator)),
                               TS_FILE + r"its contract \(embedded\) does not match its fingerprint: calibrator "),
    "weights": (lambda p: edit_torchscript(p, weights=True),
                TS_FILE + r"the graph's weights or nodes do not match the fingerprint in its contract"),
    "fingerprint_deleted": (lambda p: (edit_torchscript(p, drop_fingerprint), no_sidecar(p)),
                            TS_FILE + r"its contract \(embedded\) has no fingerprint"),
    "sidecar_disagrees": (lambda p: edit_sidecar(p, set_("threshold", 0.01)),
                          r"m\.pt\.json does not match the contract embedded in m\.pt"),
}


@pytest.mark.parametrize("case", list(TS_EDITS))
def test_an_edited_torchscript_export_is_refused(exports, tmp_path, case):
    path = copy_export(exports, tmp_path, "m.pt")
    edit, error = TS_EDITS[case]
    edit(path)
    with pytest.raises(DataError, match=error) as caught:
        read_contract(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_an_unedited_export_rewritten_as_it_was_still_loads(model, long, exports, tmp_path):
    """The edits above are refused for what they change, not for the rewrite: the same file saved again by the
    onnx package (or its zip rewritten member by member), contract and sidecar unchanged, loads and scores as
    RiskModel does."""
    path = copy_export(exports, tmp_path, "m.onnx")
    edit_onnx(path, contract=lambda c: None, graph=lambda g: None)
    c = read_contract(path)
    assert set(c["fingerprint"]) == {"sha256", "graph_sha256", "fields_sha256"}
    assert set(c["fingerprint"]["fields_sha256"]) == set(c) - {"fingerprint"}
    got = ExportedModel(path).predict(long).sort("stay_id")
    want = model.predict(long).filter(pl.col("risk").is_not_null()).sort("stay_id")
    assert got["stay_id"].to_list() == want["stay_id"].to_list()
    np.testing.assert_allclose(got["risk"].to_numpy(), want["risk"].to_numpy(), atol=TOL, rtol=0)
    assert got["flag"].to_list() == want["flag"].to_list()
    ts = copy_export(exports, tmp_path, "m.pt")
    edit_torchscript(ts, contract=lambda c: None)
    assert read_contract(ts) == json.loads(sidecar_of(ts).read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(ts))  # the rewritten zip is still a TorchScript file
