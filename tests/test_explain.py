"""SHAP explanations: efficiency, a planted signal ranks first, deletion moves risk most for the top variable."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from clinical_lstm.config import Config
from clinical_lstm.explain.shapley import reference, shap_values
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


def test_a_stays_values_do_not_depend_on_the_stays_explained_with_it(trained):
    """Permutations are drawn from the seed and the stay's id: a stay explained alone, in a batch, or at another
    position, by one worker thread or several, gets the same values (``explain`` and ``score --explain`` in chunks
    agree); another seed does not."""
    model, t, _, _ = trained
    many = shap_values(model, t.subset(np.arange(12)), n_permutations=4, max_batch=64, workers=1)[0]
    alone = shap_values(model, t.subset([5]), n_permutations=4)[0]
    shuffled = shap_values(model, t.subset(np.arange(12)[::-1]), n_permutations=4)[0]
    threads = shap_values(model, t.subset(np.arange(12)), n_permutations=4, max_batch=20, workers=3)[0]
    np.testing.assert_allclose(alone[0], many[5], rtol=0, atol=1e-6)
    np.testing.assert_allclose(shuffled[::-1], many, rtol=0, atol=1e-6)
    np.testing.assert_allclose(threads, many, rtol=0, atol=1e-6)
    other = shap_values(model, t.subset([5]), n_permutations=4, seed=1)[0]
    assert np.abs(other - alone).max() > 1e-4
    phi, base, output, names = shap_values(model, t.subset(np.arange(0)), n_permutations=4)  # no stays: nothing
    assert phi.shape == (0, len(names)) and base.shape == output.shape == (0,)


def test_explain_and_predicts_top_contributions_agree(trained):
    """``predict(explain=K)`` (what ``score --explain`` writes, chunk by chunk) and ``explain`` give a stay the same
    top contributions, whichever stays each was run with."""
    model, t, _, data = trained
    long = pl.read_csv(data)
    ids = t.stay_ids[:30]
    table = model.explain(long.filter(pl.col("stay_id").is_in(ids[:30].tolist())))
    wide = model.predict(long.filter(pl.col("stay_id").is_in(ids[10:20].tolist())), explain=2)
    for row in wide.iter_rows(named=True):
        mine = table.filter(pl.col("stay_id") == row["stay_id"]).sort("rank")
        assert mine["variable"][:2].to_list() == [row["top1_variable"], row["top2_variable"]]
        np.testing.assert_allclose(mine["contribution"][:2].to_numpy(),
                                   [row["top1_contribution"], row["top2_contribution"]], rtol=0, atol=1e-6)


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
    from clinical_lstm.explain.plots import plot_stay, time_attributions

    model, t, _, data = trained
    n = 0
    attr = time_attributions(model, t, n, n_samples=256)
    assert attr.shape == (t.lengths[n], t.x.shape[2])
    ref = reference(t.subset([n]), model.transformer)
    one = t.subset([n])
    ref.statics[:] = one.statics  # the map varies the series channels only
    from clinical_lstm.model.network import predict_logits, to_torch

    hour = torch.tensor(float(one.lengths[0]) * model.transformer.resolution_hours)
    weight = 1.0 if model.head is None else float(model.head.weights(hour)[0][0])  # the networks' share there
    gap = weight * float(predict_logits(model.networks, to_torch(one, "cpu"))[0]
                         - predict_logits(model.networks, to_torch(ref, "cpu"))[0])
    # integrated gradients are complete: the map sums to f(stay) - f(reference), up to sampling error
    assert attr.sum() == pytest.approx(gap, rel=0.1, abs=0.05)
    table = model.explain(data, n_permutations=2)
    clean, _, _ = model.clean(data)
    path = plot_stay(model, clean, t, n, table, tmp_path / "stay.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- SHAP's own objects, and SHAP's exact Shapley values on a 7-player model -----------------------------------
SMALL_CATALOGUE = """name,unit,lower,upper,aggregation,kind,static,description
Age,years,0,120,last,static,true,Age at admission
ICUType,category,1,4,last,static,true,ICU type
HR,bpm,1,300,mean,vital,false,Heart rate
MAP,mmHg,10,300,mean,vital,false,Mean arterial pressure
Temp,degC,25,45,mean,vital,false,Body temperature
Lactate,mmol/L,0.1,40,last,lab,false,Lactate
GCS,score,3,15,last,vital,false,Glasgow Coma Score
"""
SMALL_SERIES = {"HR": (85, 15), "MAP": (80, 12), "Temp": (37, 0.7), "Lactate": (2.0, 1.0), "GCS": (12, 2)}


def small_long(n_stays: int, seed: int = 0) -> pl.DataFrame:
    """Stays on :data:`SMALL_CATALOGUE` over 24 h; every fifth stay never measures Lactate."""
    rng = np.random.default_rng(seed)
    rows = []
    for sid in range(1, n_stays + 1):
        rows += [(sid, 0.0, "Age", float(rng.integers(20, 90))), (sid, 0.0, "ICUType", float(rng.integers(1, 5)))]
        for name, (mu, sd) in SMALL_SERIES.items():
            if name == "Lactate" and sid % 5 == 0:
                continue
            for t in np.sort(rng.uniform(0, 24, int(rng.integers(1, 8)))):
                value = float(np.clip(rng.normal(mu, sd), 3, 15)) if name == "GCS" else abs(rng.normal(mu, sd)) + 0.1
                rows.append((sid, round(float(t), 3), name, round(float(value), 2)))
    return pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row")


@pytest.fixture(scope="module")
def small():
    """An untrained 7-player model (5 series variables, 2 statics; LSTM + summary head), its weights scaled up so
    that players interact strongly (Shapley values differ from leave-one-out), and 6 stays to explain."""
    import torch

    from clinical_lstm.data.catalogue import Catalogue
    from clinical_lstm.features.impute import GridTransformer
    from clinical_lstm.model.calibrate import PlattCalibrator
    from clinical_lstm.model.head import SummaryHead, fit_members
    from clinical_lstm.model.network import MaskedLSTM, ModelConfig
    from clinical_lstm.serve.bundle import RiskModel

    torch.manual_seed(0)
    train_ids = np.arange(1, 41)
    long = small_long(40)
    tr = GridTransformer(Catalogue.from_csv_text(SMALL_CATALOGUE), window_hours=24.0).fit(long, train_ids)
    net = MaskedLSTM(ModelConfig(hidden_size=8), len(tr.catalogue.series), tr.n_static_features).eval()
    with torch.no_grad():
        net.lstm.weight_ih_l0.mul_(3)
        net.head.weight.mul_(6)
        net.head_static.weight.mul_(4)
    y = np.random.default_rng(0).permutation(np.tile([0, 1], 20))
    head = SummaryHead(fit_members(tr.transform(long, train_ids).summary, y, 0), np.array([1.0, 1.0, 1.0]), -0.2)
    cal = PlattCalibrator().fit(np.linspace(-1, 1, 40), np.tile([0, 1], 20))
    model = RiskModel(tr, [net], cal, 0.5, {"note": "tiny untrained 7-player test model"}, head)
    data = long.filter(pl.col("stay_id") <= 6)
    clean, kept, _ = model.clean(data)
    return model, data, model.tensors(clean, kept)


def game_values(model, t, n: int) -> np.ndarray:
    """v(S) for every coalition S of stay ``n`` (bit j of the index = player j present), via :func:`shap_game`."""
    from clinical_lstm.explain.shapley import player_names, shap_game

    f, masker = shap_game(model, t, n)
    P = len(player_names(model.transformer))
    masks = ((np.arange(2**P)[:, None] >> np.arange(P)) & 1).astype(bool)  # (2^P, P)
    return f(*(np.concatenate(parts) for parts in zip(*(masker(m) for m in masks), strict=True)))


def antithetic_standard_error(v: np.ndarray, P: int, n_permutations: int) -> np.ndarray:
    """(P,) exact standard error of :func:`shap_values`' estimate for a game table ``v``: the mean of
    ``n_permutations / 2`` independent antithetic pairs, each the average of one uniform permutation's marginal
    contributions and its reverse's (a dummy player inserted anywhere leaves this distribution unchanged)."""
    import itertools

    perms = np.array(list(itertools.permutations(range(P))))  # (P!, P)
    prefix = np.cumsum(1 << perms, axis=1)  # (P!, P) coalition after the first k + 1 players
    vals = np.concatenate([np.full((len(perms), 1), v[0]), v[prefix]], axis=1)  # (P!, P + 1)
    marginal = np.zeros((len(perms), P))
    np.put_along_axis(marginal, perms, np.diff(vals, axis=1), axis=1)
    index = {tuple(p): k for k, p in enumerate(perms)}
    reverse = np.array([index[tuple(p[::-1])] for p in perms])
    pair = (marginal + marginal[reverse]) / 2  # (P!, P)
    return pair.std(axis=0) / np.sqrt(n_permutations // 2)


def networks_only(model, networks=None):
    """The same model without its summary head (the networks' mean logit): the game its networks play."""
    from dataclasses import replace

    return replace(model, networks=list(model.networks if networks is None else networks), head=None)


def estimate_standard_error(model, t, n: int, n_permutations: int) -> np.ndarray:
    """(P,) exact standard error of :func:`shap_values`' estimate for stay ``n``: only the networks are sampled
    (the members' values are exact), each network ``k`` with its own ``pairs`` antithetic pairs, the ensemble's
    value the mean over the K networks, scaled by the stacking's LSTM weight at the stay's hour."""
    K, P = len(model.networks), 7
    pairs = -(-max(1, -(-n_permutations // 2)) // K)
    w0 = 1.0
    if model.head is not None:
        w0 = float(model.head.weights(torch.from_numpy(t.summary[n:n + 1, -1]))[0][0, 0])
    var = sum(antithetic_standard_error(game_values(networks_only(model, [net]), t, n), P, 2 * pairs) ** 2
              for net in model.networks) / K**2
    return abs(w0) * np.sqrt(var)


@pytest.mark.parametrize("n_networks,kind", [(1, "default"), (3, "default"), (2, "attention, 2 layers")])
def test_values_agree_with_shap_exact_over_the_same_grouped_masker(small, n_networks, kind):
    """SHAP's ``Exact`` explainer enumerates all 2^7 coalitions of the project's game (:func:`shap_game`: absent
    players take the reference). The project's estimate (members exact, each network its own permutations) must
    match it within 4.5 of its own exact standard errors (computed from the networks' full game tables: no
    guessed noise level), with errors the size of that noise overall, and both add up."""
    from dataclasses import replace

    import shap

    from clinical_lstm.explain.shapley import player_names, shap_game
    from clinical_lstm.model.network import MaskedLSTM, ModelConfig

    model, _, t = small
    if n_networks > 1:  # more networks, as strongly interacting (of another shape: attention pooling, 2 layers)
        torch.manual_seed(1)
        cfg = ModelConfig(hidden_size=8, **({"attention": True, "num_layers": 2} if kind != "default" else {}))
        extra = [MaskedLSTM(cfg, model.networks[0].n_series, model.networks[0].n_static).eval()
                 for _ in range(n_networks - (kind == "default"))]
        with torch.no_grad():
            for net in extra:
                net.lstm.weight_ih_l0.mul_(3)
                if cfg.attention:  # a second layer and the pooling damp the interactions: scaled up further
                    net.lstm.weight_ih_l1.mul_(4)
                    net.attn_head.weight.mul_(20)
                else:
                    net.head.weight.mul_(6)
        model = replace(model, networks=[*model.networks, *extra] if kind == "default" else extra)
    names = player_names(model.transformer)
    P, n_perm = len(names), 1200
    phi, base, output, got_names = shap_values(model, t, n_permutations=n_perm, seed=0)
    assert got_names == names and P == 7
    np.testing.assert_allclose(base + phi.sum(axis=1), output, atol=1e-4)  # efficiency, exact by construction
    np.testing.assert_allclose(output, model.logits(t), atol=1e-5)
    z, loo_gap = [], 0.0
    for n in range(len(t)):
        f, masker = shap_game(model, t, n)
        exact = shap.explainers.Exact(f, masker, feature_names=names)(np.zeros((1, P)), silent=True)
        assert list(exact.feature_names) == names
        np.testing.assert_allclose(exact.base_values[0], base[n], atol=1e-5)  # f(empty coalition) = reference
        np.testing.assert_allclose(exact.base_values[0] + exact.values[0].sum(), output[n], atol=1e-4)
        v = game_values(model, t, n)
        se = estimate_standard_error(model, t, n, n_perm)
        gap = np.abs(phi[n] - exact.values[0])
        assert np.all(gap <= 4.5 * se + 1e-5), f"stay {n}: |project - exact| {gap} vs 4.5 SE {4.5 * se}"
        live = se > 0
        z += list(gap[live] / se[live])
        never = ~t.mask[n, : t.lengths[n]].any(axis=0)  # dummy players: exactly 0 for both
        assert np.all(phi[n, : len(never)][never] == 0) and np.all(np.abs(exact.values[0][: len(never)][never]) < 1e-6)
        loo = v[-1] - v[(2**P - 1) ^ (1 << np.arange(P))]  # leave-one-out: f(all) - f(all but j)
        loo_gap = max(loo_gap, float(np.abs(loo - exact.values[0]).max()))
    assert np.sqrt(np.mean(np.square(z))) < 1.5, "errors larger than the sampling noise: a biased estimate"
    assert np.sqrt(np.mean(np.square(z))) > 0.3, "errors far below the stated noise: the SE formula is not the estimate's"
    assert loo_gap > 0.1, "the players barely interact: agreement would not test the permutation sampler"


@pytest.mark.parametrize("rows", [1024, 1])
def test_a_stay_with_one_player_has_no_coalitions_and_leaves_its_batch_unchanged(small, rows, monkeypatch):
    """A stay whose only player is one variable has no interior coalition: played in a batch with others (in the
    others' chunk, or alone in a chunk of its own) it gets an empty table, and the others' coalition logits are
    those they get without it."""
    from clinical_lstm.explain import shapley
    from clinical_lstm.explain.shapley import _play, static_players

    monkeypatch.setattr(shapley, "_ROWS", rows)

    model, _, t = small
    V, tr = t.x.shape[2], model.transformer
    stat = static_players(tr)
    static_cols = np.zeros((len(stat), t.statics.shape[1]), dtype=bool)
    for j, (_, cols) in enumerate(stat):
        static_cols[j, cols] = True
    ref = reference(t, tr)
    rng = np.random.default_rng(0)
    players = np.r_[np.flatnonzero(t.mask[1, : t.lengths[1]].any(axis=0)), V + np.arange(len(stat))]
    perm = rng.permutation(len(players))
    normal = (1, players, np.array([[perm, perm[::-1]]] * len(model.networks)))
    lone = (0, np.array([V]), np.zeros((len(model.networks), 2, 1), np.int64))
    (together, ends), (alone, _) = (_play(model.networks, t, ref, pending, V, static_cols)
                                    for pending in ([normal, lone], [normal]))
    assert all(part.shape == (2, 0) for part in together[1])
    with pytest.raises(ValueError, match="antithetic"):  # the reversed rows are derived from the forward ones
        _play(model.networks, t, ref, [(1, players, np.array([[perm, perm]] * len(model.networks)))], V, static_cols)
    for got, want in zip(together[0], alone[0], strict=True):
        assert got.shape == (2, len(players) - 1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the ends of the game, the lone stay's included: each network's logit of the reference and of the stay
    with torch.no_grad():
        want = [[float(net(*(torch.from_numpy(a[[n]]) for a in (d.x, d.mask, d.delta, d.statics, d.lengths)))[0][0])
                 for net in model.networks] for d in (ref, t) for n in (1, 0)]
    np.testing.assert_allclose(ends.transpose(0, 2, 1).reshape(4, -1), want, rtol=0, atol=2e-6)


def brute_force_shapley(v: np.ndarray, P: int) -> np.ndarray:
    """(P,) Shapley values of a game table ``v`` (bit j of the index = player j present), by the definition."""
    from math import factorial

    phi = np.zeros(P)
    for S in range(2**P):
        size = bin(S).count("1")
        for j in range(P):
            if not S >> j & 1:
                phi[j] += factorial(size) * factorial(P - size - 1) / factorial(P) * (v[S | 1 << j] - v[S])
    return phi


def test_summary_members_values_are_the_exact_shapley_values_of_their_games():
    """Each member's closed-form values (linear: per column; trees: per leaf path, single reference) equal the
    Shapley values by definition over all 2^7 coalitions of the member alone, on a head fitted to data with
    interacting variables (deep trees: leaves reached only by mixing stay and reference columns)."""
    from clinical_lstm.data.catalogue import Catalogue
    from clinical_lstm.explain.members import column_players, member_values
    from clinical_lstm.explain.shapley import reference, static_players
    from clinical_lstm.features.impute import GridTransformer
    from clinical_lstm.features.summaries import player_columns
    from clinical_lstm.model.head import SummaryHead, fit_members

    long = small_long(300, seed=4)
    ids = np.arange(1, 301)
    tr = GridTransformer(Catalogue.from_csv_text(SMALL_CATALOGUE), window_hours=24.0).fit(long, ids)
    t = tr.transform(long, ids)
    X = t.summary
    k = 7  # statistics per series variable: HR's mean x Lactate's last, an interaction the trees must split on
    score = np.nan_to_num(X[:, 0 * k + 4]) * np.nan_to_num(X[:, 3 * k + 1]) + np.nan_to_num(X[:, 4 * k + 1])
    y = (score + np.random.default_rng(0).normal(0, 0.3, len(X)) > np.median(score)).astype(int)
    members = fit_members(X, y, 0)
    head = SummaryHead(members, np.array([1.0, 1.0, 1.0]), 0.0)
    assert int(members["trees"]["depth"]) >= 3
    stat = [cols for _, cols in static_players(tr)]
    V, P = len(tr.catalogue.series), 7
    owner = column_players(X.shape[1], player_columns(V, stat))
    sub = t.subset(np.arange(8))
    ref = reference(sub, tr)
    got = member_values(head, sub.summary, ref.summary, owner, P)
    masks = ((np.arange(2**P)[:, None] >> np.arange(P)) & 1).astype(bool)  # (2^P, P)
    mixed = 0
    for n in range(len(sub)):
        on = masks[:, owner] & (owner >= 0)  # (2^P, F) columns from the stay
        s = np.where(on, sub.summary[n], ref.summary[n]).astype(np.float32)
        games = [m.double().numpy() for m in head.member_logits(torch.from_numpy(s))]
        for g, values in zip(games, got, strict=True):
            want = brute_force_shapley(g, P)
            np.testing.assert_allclose(values[n], want, atol=1e-6)
            np.testing.assert_allclose(values[n].sum(), g[-1] - g[0], atol=1e-6)
        loo = games[1][-1] - games[1][(2**P - 1) ^ (1 << np.arange(P))]
        mixed += float(np.abs(loo - got[1][n]).max()) > 1e-3  # the trees' game is not additive for this stay
    assert mixed >= 2, "the trees barely interact: agreement would not test the per-leaf formula"


def test_explanation_rows_columns_additivity_and_readable_values(small):
    model, data, t = small
    e = model.explain(data, as_shap=True, n_permutations=4)
    names = ["HR", "MAP", "Temp", "Lactate", "GCS", "Age", "ICUType"]
    assert e.shape == (6, 7) and list(e.feature_names) == names
    assert list(e.instance_names) == [str(s) for s in range(1, 7)]
    np.testing.assert_allclose(e.base_values + e.values.sum(axis=1), model.logits(t), atol=1e-4)
    table = model.explain(data, n_permutations=4)  # the same values as the table, same seed
    row = table.filter(pl.col("stay_id") == 2).sort("variable")
    np.testing.assert_allclose(row["contribution"].to_numpy(), e.values[1, np.argsort(names)], atol=1e-12)
    for k, sid in enumerate(range(1, 7)):
        stay = data.filter(pl.col("stay_id") == sid)
        last_bin = stay.filter(pl.col("variable") == "HR").with_columns(b=pl.col("time").floor().clip(0, 23))
        hr = last_bin.filter(pl.col("b") == last_bin["b"].max())["value"].mean()  # HR: mean of its last bin
        lactate = stay.filter(pl.col("variable") == "Lactate").sort("time")["value"]  # Lactate: the last value
        static = dict(stay.filter(pl.col("variable").is_in(["Age", "ICUType"])).select("variable", "value").rows())
        assert e.data[k, 0] == pytest.approx(hr, rel=1e-6)
        assert e.data[k, 5] == static["Age"] and e.data[k, 6] == static["ICUType"]
        assert e.display_data[k, 5] == f"{static['Age']:g} years" and e.display_data[k, 6] == f"{static['ICUType']:g}"
        if sid == 5:  # never measures Lactate: NaN, said so, and no contribution
            assert np.isnan(e.data[k, 3]) and e.display_data[k, 3] == "not measured" and e.values[k, 3] == 0
        else:
            assert e.data[k, 3] == pytest.approx(lactate[-1], rel=1e-6)
            assert e.display_data[k, 3] == f"{round(float(e.data[k, 3]), 2):g} mmol/L"


def test_shap_plots_draw_the_explanation_headless(small):
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    model, data, _ = small
    e = model.explain(data, as_shap=True, n_permutations=4)
    for draw in (lambda: shap.plots.waterfall(e[0], show=False), lambda: shap.plots.beeswarm(e, show=False),
                 lambda: shap.plots.bar(e, show=False), lambda: shap.plots.bar(e[4], show=False)):
        plt.figure()
        draw()
        buf = io.BytesIO()
        plt.gcf().savefig(buf, format="png")
        plt.close("all")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_project_plots_are_shaps_and_leave_pyplot_as_they_found_it(small, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    from clinical_lstm.explain.plots import plot_global, plot_stay

    model, data, t = small
    drawn = {}
    for name in ("waterfall", "bar"):
        real = getattr(shap.plots, name)
        monkeypatch.setattr(shap.plots, name, lambda ex, _real=real, _name=name, **kw: (
            drawn.setdefault(_name, []).append(ex), _real(ex, **kw))[1])
    table = model.explain(data, n_permutations=4)
    clean, _, _ = model.clean(data)
    plt.close("all")
    plt.ion()  # a notebook user's state: SHAP's show=False would turn it off for good
    try:
        mine = plt.figure()
        for path in (plot_global(table, tmp_path / "global.png"),
                     plot_stay(model, clean, t, 4, table, tmp_path / "stay.png", top=3),
                     plot_stay(model, clean, t, 0, table.filter(pl.col("rank") <= 2), tmp_path / "top2.png")):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert plt.isinteractive() and plt.get_fignums() == [mine.number] and plt.gcf() is mine
    finally:
        plt.ioff()
        plt.close("all")
    (glob,), (stay, top2) = drawn["bar"], drawn["waterfall"]
    assert glob.shape == (6, 7) and sorted(glob.feature_names) == sorted(model.catalogue.series + ["Age", "ICUType"])
    out = model.logits(t)
    assert stay.values.shape == (7,) and np.isnan(stay.data[3]) and stay.display_data[3] == "not measured"
    assert stay.base_values + stay.values.sum() == pytest.approx(out[4], abs=1e-4)
    # a top-2 table: the unlisted variables join as one bar, so the waterfall still ends at the stay's logit
    assert top2.feature_names[-1] == "other variables" and np.count_nonzero(top2.values[:-1]) <= 2
    assert top2.base_values + top2.values.sum() == pytest.approx(out[0], abs=1e-4)
