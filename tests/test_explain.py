"""SHAP explanations: efficiency, a planted signal ranks first, deletion moves risk most for the top variable."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from clinical_lstm.config import Config
from clinical_lstm.explain import reference, shap_values
from clinical_lstm.workflow import train

N_STAYS = 300


def planted_cohort(tmp, seed=3):
    """Lactate alone drives the outcome; HR, MAP, Temp and the statics are noise."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for k in range(N_STAYS):
        sid = 1000 + k
        y = int(rng.random() < 0.35)
        labels.append((sid, y))
        rows += [(sid, 0.0, "Age", float(rng.integers(30, 90))), (sid, 0.0, "Gender", float(rng.integers(0, 2))),
                 (sid, 0.0, "ICUType", float(rng.integers(1, 5)))]
        for var, mean, sd, n in (("HR", 85, 12, 16), ("MAP", 80, 10, 8), ("Temp", 37, 0.5, 6)):
            rows += [(sid, float(t), var, float(rng.normal(mean, sd))) for t in np.sort(rng.uniform(0, 24, n))]
        rows += [(sid, float(t), "Lactate", float(rng.normal(6.0 if y else 1.5, 0.6)))
                 for t in np.sort(rng.uniform(0, 24, 4))]
    data, lab = tmp / "long.csv", tmp / "labels.csv"
    pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row").write_csv(data)
    pl.DataFrame(labels, schema=["stay_id", "label"], orient="row").write_csv(lab)
    return data, lab, dict(labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain")
    data, lab, y = planted_cohort(tmp)
    cfg = Config.from_dict({"data": {"window_hours": 24.0}, "model": {"hidden_size": 16},
                            "train": {"epochs": 25, "patience": 6}, "evaluation": {"n_boot": 20}})
    res = train(data, tmp / "model", labels=lab, config=cfg, progress=False, log=lambda *_: None)
    clean, kept, _ = res.model.clean(data)
    return res.model, res.model.tensors(clean, kept), y, data


def test_efficiency_base_plus_contributions_equals_model_logit(trained):
    model, t, _, _ = trained
    phi, base, output, names = shap_values(model, t.subset(np.arange(40)), n_permutations=4)
    np.testing.assert_allclose(base + phi.sum(axis=1), output, atol=1e-3)
    np.testing.assert_allclose(output, model.logits(t.subset(np.arange(40))), atol=1e-5)
    assert len(names) == phi.shape[1] == len(model.catalogue.series) + len(model.catalogue.statics)
    never = [i for i, n in enumerate(names) if n in ("Albumin", "pH", "TroponinT")]
    assert np.all(phi[:, never] == 0), "unobserved variables are dummy players"


def test_planted_variable_ranks_first_for_positive_stays(trained):
    model, t, y, _ = trained
    pos = np.flatnonzero([y[int(s)] == 1 for s in t.stay_ids])
    phi, _, _, names = shap_values(model, t.subset(pos), n_permutations=8)
    top = np.array(names)[np.argmax(np.abs(phi), axis=1)]
    share = float(np.mean(top == "Lactate"))
    assert share >= 0.9, f"Lactate ranked first for only {share:.0%} of positive stays"


def test_deleting_the_top_variable_moves_risk_more_than_a_random_one(trained):
    model, t, _, _ = trained
    sub = t.subset(np.arange(60))
    phi, _, output, names = shap_values(model, sub, n_permutations=8)
    ref = reference(sub, model.transformer)
    rng = np.random.default_rng(0)
    V = sub.x.shape[2]
    moved_top, moved_random = [], []
    for n in range(len(sub)):
        observed = np.flatnonzero(sub.mask[n, : sub.lengths[n]].any(axis=0))
        top = int(np.argmax(np.abs(phi[n, :V])))
        for v, bucket in ((top, moved_top), (int(rng.choice(observed)), moved_random)):
            one = sub.subset([n])
            for a, b in ((one.x, ref.x), (one.mask, ref.mask), (one.delta, ref.delta)):
                a[0, :, v] = b[n, :, v]
            bucket.append(abs(float(model.logits(one)[0]) - output[n]))
    assert np.mean(moved_top) > np.mean(moved_random)


def test_explain_table_columns_and_ranks(trained):
    model, _, _, data = trained
    table = model.explain(data, top=3, n_permutations=2)
    assert table.columns == ["stay_id", "variable", "contribution", "rank", "base_value", "model_output"]
    assert table.group_by("stay_id").len()["len"].max() == 3
    first = table.filter(pl.col("rank") == 1)
    second = table.filter(pl.col("rank") == 2)
    assert (first["contribution"].abs() >= second["contribution"].abs()).all()


def test_time_map_sums_to_the_logit_difference_and_plot_is_written(trained, tmp_path):
    from clinical_lstm.explain_plots import plot_stay, time_attributions

    model, t, _, data = trained
    n = 0
    attr = time_attributions(model, t, n, n_samples=256)
    assert attr.shape == (t.lengths[n], t.x.shape[2])
    ref = reference(t.subset([n]), model.transformer)
    one = t.subset([n])
    ref.statics[:] = one.statics  # the map varies the series channels only
    from clinical_lstm.model import predict_logits, to_torch

    weight = 1.0 if model.head is None else float(model.head.stack[0])  # the networks' share of the logit
    gap = weight * float(predict_logits(model.networks, to_torch(one, "cpu"))[0]
                         - predict_logits(model.networks, to_torch(ref, "cpu"))[0])
    # integrated gradients are complete: the map sums to f(stay) - f(reference), up to sampling error
    assert attr.sum() == pytest.approx(gap, rel=0.1, abs=0.05)
    table = model.explain(data, n_permutations=2)
    clean, _, _ = model.clean(data)
    path = plot_stay(model, clean, t, n, table, tmp_path / "stay.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
