"""The summaries and the summary members: worked by hand, equal to scikit-learn, and additive under SHAP."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from helpers import random_long, tiny_model

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.features.impute import GridTransformer
from clinical_lstm.features.summaries import SERIES_STATS, feature_names
from clinical_lstm.model.head import SummaryHead, fit_members
from clinical_lstm.model.members import SummaryBaselines

CATALOGUE_CSV = """name,unit,lower,upper,aggregation,kind,static,description
Age,years,0,120,last,static,true,
A,u,0,100,mean,vital,false,
B,u,0,100,last,lab,false,
"""


def test_summaries_by_hand():
    """A at 0.5 h (3) and 2.5 h (7), B never: standardized by A's training mean 5 and sd 2."""
    cat = Catalogue.from_csv_text(CATALOGUE_CSV)
    train = pl.DataFrame({"stay_id": [1, 1, 2, 2], "time": [0.5, 1.5, 0.5, 1.5], "variable": ["A", "A", "A", "A"],
                          "value": [3.0, 7.0, 3.0, 7.0]})
    tr = GridTransformer(cat, window_hours=4, resolution_hours=1).fit(train, [1, 2])
    stay = pl.DataFrame({"stay_id": [9, 9, 9], "time": [0.0, 0.5, 2.5], "variable": ["Age", "A", "A"],
                         "value": [60.0, 3.0, 7.0]})
    t = tr.transform(stay, [9])
    names = feature_names(cat.series, tr.static_features_)
    got = dict(zip(names, t.summary[0].tolist(), strict=True))
    assert [n.split(":")[1] for n in names[:7]] == list(SERIES_STATS)
    # A: first -1, last +1, min -1, max +1, mean 0, 2 observed bins, 0.5 h since 2.5 h (end of bin 2 = 3 h)
    assert [got[f"A:{s}"] for s in SERIES_STATS] == [-1.0, 1.0, -1.0, 1.0, 0.0, 2.0, 0.5]
    assert np.isnan([got[f"B:{s}"] for s in SERIES_STATS[:5]]).all()
    assert (got["B:count"], got["B:hours"]) == (0.0, 3.0)  # never observed: hours since admission
    assert t.summary.shape == (1, 7 * 2 + len(tr.static_features_) + 1)
    assert got["hour"] == 3.0  # the hour the summary is taken at: the end of the stay's last bin (bin 2)


@pytest.fixture(scope="module")
def fitted():
    long = random_long(120, seed=11)
    tr = GridTransformer(Catalogue.default()).fit(long, np.arange(1, 121))
    X = tr.transform(long, np.arange(1, 121)).summary
    y = (np.nan_to_num(X[:, 0]) + np.random.default_rng(0).normal(0, 1, len(X)) > 0).astype(np.int64)
    return X, y


def test_exported_members_equal_scikit_learn(fitted):
    X, y = fitted
    assert np.isnan(X).any()  # missing statistics go down the trees' missing-value branches
    sk = SummaryBaselines(seed=0).fit(X, y).predict_proba(X)
    head = SummaryHead(fit_members(X, y, seed=0), np.zeros(3), 0.0)
    with torch.inference_mode():
        s = torch.from_numpy(X)
        lin, trees = torch.sigmoid(head.linear(s)).numpy(), torch.sigmoid(head.trees(s)).numpy()
    np.testing.assert_allclose(lin, sk["logistic regression"], atol=1e-6)
    np.testing.assert_allclose(trees, sk["gradient boosting"], atol=1e-6)
    assert head.trees_feature.shape[0] > 5 and int(head.trees_depth) >= 2


def test_head_stacks_the_members_and_round_trips(fitted):
    X, y = fitted
    head = SummaryHead(fit_members(X, y, seed=0), np.array([0.7, 0.2, 0.4]), -0.3)
    lstm = torch.linspace(-2, 2, len(X))
    with torch.inference_mode():
        s = torch.from_numpy(X)
        want = 0.7 * lstm + 0.2 * head.linear(s) + 0.4 * head.trees(s) - 0.3
        torch.testing.assert_close(head(lstm, s), want)
        again = SummaryHead.from_state(head.state_dict())
        torch.testing.assert_close(again(lstm, s), want)
        per_step = head(lstm.reshape(-1, 1).repeat(1, 3), s[:, None, :].repeat(1, 3, 1))  # (N, T) and (N, T, F)
        torch.testing.assert_close(per_step, want[:, None].repeat(1, 3))
    # the stream's one-stay numpy path: the same numbers, missing statistics included
    fast = [head.numpy_logit(float(lstm[i]), X[i]) for i in range(len(X))]
    np.testing.assert_allclose(fast, want.numpy(), atol=1e-5)


def test_shap_adds_up_with_the_summary_head():
    from clinical_lstm.explain.shapley import shap_values

    model = tiny_model(seed=5, head=True)
    long = random_long(6, seed=21)
    clean, kept, _ = model.clean(long)
    t = model.tensors(clean, kept)
    phi, base, out, names = shap_values(model, t, n_permutations=4)
    np.testing.assert_allclose(base + phi.sum(axis=1), out, atol=1e-4)
    np.testing.assert_allclose(out, model.logits(t), atol=1e-5)
    never = [i for i, n in enumerate(names[:len(model.catalogue.series)]) if not t.mask[:, :, i].any()]
    assert never and np.all(phi[:, never] == 0)  # a variable no stay measured contributes exactly nothing


def test_hour_basis_interpolates_between_knots_and_sums_to_one():
    from clinical_lstm.model.head import hour_basis

    knots = np.array([2.0, 6.0, 12.0, 48.0])
    hours = np.array([0.5, 2.0, 4.0, 9.0, 30.0, 48.0, 100.0])
    B = hour_basis(hours, knots)
    np.testing.assert_allclose(B.sum(axis=1), 1.0)
    np.testing.assert_allclose(B[0], [1, 0, 0, 0])  # before the first knot: the first knot's weights
    np.testing.assert_allclose(B[2], [0.5, 0.5, 0, 0])  # half way from 2 h to 6 h
    np.testing.assert_allclose(B[3], [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(B[4], [0, 0, 0.5, 0.5])
    np.testing.assert_allclose(B[6], [0, 0, 0, 1])  # past the last knot: the last knot's weights


def test_stacking_weights_follow_the_hour_a_member_is_informative_at():
    """Planted: member 0 carries the outcome early (2 h), member 1 late (48 h). Hour-dependent stacking must give
    member 0 the larger weight at the first knot and member 1 at the last."""
    from clinical_lstm.model.head import fit_stack, stack_logit

    rng = np.random.default_rng(0)
    n = 20_000
    hour = rng.choice([2.0, 48.0], n)
    truth = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(int)
    early = np.where(hour == 2, truth, 0) + rng.normal(0, 1, n)
    late = np.where(hour == 48, truth, 0) + rng.normal(0, 1, n)
    Z = np.column_stack([early, late])
    knots = np.array([2.0, 48.0])
    w, b = fit_stack(Z, hour, y, knots)
    assert w[0, 0] > 0.5 > abs(w[0, 1]) and w[1, 1] > 0.5 > abs(w[1, 0])
    # the stacked logit is calibrated at each hour: mean risk within 0.02 of the event rate there
    p = 1 / (1 + np.exp(-stack_logit(Z, hour, w, b, knots)))
    for h in (2.0, 48.0):
        assert abs(p[hour == h].mean() - y[hour == h].mean()) < 0.02


def test_head_weights_vary_with_the_hour_column_in_torch_and_numpy(fitted):
    X, y = fitted
    knots = np.array([6.0, 24.0, 48.0])
    stack = np.array([[1.0, 0.1, 0.2], [0.5, 0.3, 0.4], [0.2, 0.5, 0.6]])
    bias = np.array([-1.0, -0.5, 0.0])
    head = SummaryHead(fit_members(X, y, seed=0), stack, bias, knots)
    rng = np.random.default_rng(1)
    S = X.copy()
    S[:, -1] = rng.uniform(0, 60, len(S))  # the hour column
    lstm = torch.linspace(-2, 2, len(S))
    with torch.inference_mode():
        s = torch.from_numpy(S)
        h = np.clip(S[:, -1], 6, 48)
        w = np.stack([np.interp(h, knots, stack[:, j]) for j in range(3)], axis=1)
        members = np.stack([lstm.numpy(), head.linear(s).numpy(), head.trees(s).numpy()], axis=1)
        want = (members * w).sum(1) + np.interp(h, knots, bias)
        np.testing.assert_allclose(head(lstm, s).numpy(), want, atol=1e-5)
        np.testing.assert_allclose(SummaryHead.from_state(head.state_dict())(lstm, s).numpy(), want, atol=1e-5)
    fast = [head.numpy_logit(float(lstm[i]), S[i]) for i in range(len(S))]
    np.testing.assert_allclose(fast, want, atol=1e-5)


def test_head_with_end_of_stay_members_matches_in_torch_numpy_and_after_a_round_trip(fitted):
    """Five members (LSTM, the snapshot members, the end-of-stay members): forward, the stream's numpy path and a
    head rebuilt from its state give one logit."""
    X, y = fitted
    members = fit_members(X, y, seed=0)
    members.update({f"e{k}": v for k, v in fit_members(X[::2], y[::2], seed=1).items()})
    knots = np.array([4.0, 48.0])
    stack = np.array([[0.3, 0.2, 0.4, -0.1, 0.1], [0.2, 0.1, 0.2, 0.2, 0.5]])
    head = SummaryHead(members, stack, np.array([-0.5, 0.1]), knots)
    assert head.groups == ["linear", "trees", "elinear", "etrees"]
    S = X.copy()
    S[:, -1] = np.linspace(0, 60, len(S))
    lstm = torch.linspace(-2, 2, len(S))
    with torch.inference_mode():
        s = torch.from_numpy(S)
        logits = [lstm.numpy(), head.linear(s).numpy(), head.trees(s).numpy(), head.linear(s, "elinear").numpy(),
                  head.trees(s, "etrees").numpy()]
        assert not np.allclose(logits[2], logits[4])  # the end-of-stay trees are another model
        h = np.clip(S[:, -1], 4, 48)
        w = np.stack([np.interp(h, knots, stack[:, j]) for j in range(5)], axis=1)
        want = (np.stack(logits, axis=1) * w).sum(1) + np.interp(h, knots, [-0.5, 0.1])
        np.testing.assert_allclose(head(lstm, s).numpy(), want, atol=1e-5)
        np.testing.assert_allclose(SummaryHead.from_state(head.state_dict())(lstm, s).numpy(), want, atol=1e-5)
    np.testing.assert_allclose([head.numpy_logit(float(lstm[i]), S[i]) for i in range(len(S))], want, atol=1e-5)


def test_tree_export_refuses_a_scikit_learn_without_its_private_arrays(fitted):
    """The export reads scikit-learn's private tree arrays: a release without them (or with other node fields)
    fails by name, with the tested range, instead of exporting wrong trees."""
    from types import SimpleNamespace

    import numpy as np

    from clinical_lstm.model.head import export_trees

    X, y = fitted
    good = SummaryBaselines(seed=0).fit(X, y).models_["gradient boosting"]
    export_trees(good, X.shape[1])  # the real one exports
    hgb = good.steps[1][1]
    renamed = np.zeros(2, dtype=[("feature", np.int64), ("num_threshold", np.float64)])
    for broken in (SimpleNamespace(_baseline_prediction=hgb._baseline_prediction),  # no _predictors
                   SimpleNamespace(_predictors=hgb._predictors),  # no baseline
                   SimpleNamespace(_predictors=[[SimpleNamespace(nodes=renamed)]],
                                   _baseline_prediction=hgb._baseline_prediction)):  # other node fields
        pipe = SimpleNamespace(steps=[good.steps[0], ("hgb", broken)])
        with pytest.raises(RuntimeError, match=r"scikit-learn .*>=1.4,<1.10"):
            export_trees(pipe, X.shape[1])


def test_numpy_trees_decide_every_split_as_float64_at_the_threshold(fitted):
    """The numpy path compares float32 values with float32 thresholds (each float64 threshold rounded down) and
    routes missing values by a substituted -inf: a value at a threshold, the float32 on either side of it, and a
    missing value each take forward's branch, at every split of every tree (members: both tree groups)."""
    X, y = fitted
    members = fit_members(X, y, seed=0)
    members.update({f"e{k}": v for k, v in fit_members(X[::2], y[::2], seed=1).items()})
    head = SummaryHead(members, np.zeros((1, 5)), np.zeros(1))  # the member logits themselves, unweighted
    rows = []
    for g in ("trees", "etrees"):
        inner = ~members[g]["leaf"]
        for f, thr in zip(members[g]["feature"][inner], members[g]["threshold"][inner], strict=True):
            at = np.float32(thr) if np.isfinite(thr) else np.float32(0)
            for v in (np.nextafter(at, -np.inf), at, np.nextafter(at, np.inf), np.nan):
                row = X[len(rows) % len(X)].copy()
                row[f] = v
                rows.append(row)
    S = np.stack(rows)
    with torch.inference_mode():
        s = torch.from_numpy(S)
        want = {g: head.trees(s, g).numpy() for g in ("trees", "etrees")}
    for g, j in (("trees", 2), ("etrees", 4)):  # each tree member alone, by its stacking weight
        stack = np.zeros((1, 5), np.float32)
        stack[0, j] = 1
        one = SummaryHead(members, stack, np.zeros(1))
        got = np.array([one.numpy_logit(0.0, row) for row in S])
        np.testing.assert_allclose(got, want[g], atol=1e-5)  # a split taken the other way is a leaf apart

