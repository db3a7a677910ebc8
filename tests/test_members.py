"""The summary members' estimator (clinical_lstm.model.members) and SAPS-I (clinical_lstm.evaluation.saps)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.sources import DataError
from clinical_lstm.evaluation.saps import saps_probability, saps_scores
from clinical_lstm.features.impute import GridTransformer
from clinical_lstm.model.members import MIN_SAMPLES_LEAF, MODEL_NAMES, SummaryBaselines

SCHEMA = {"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64}


def long_frame(rows: list[tuple[int, float, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.default()


def planted_cohort(cat, n: int = 600, seed: int = 0):
    """Synthetic stays whose label depends on mean HR only; other variables are noise or never observed
    (so most feature columns are all-NaN, which both models must tolerate)."""
    rng = np.random.default_rng(seed)
    base_hr = rng.normal(90.0, 15.0, n)
    logit = (base_hr - 105.0) / 4.0  # ~20 % positives, like an imbalanced ICU cohort
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    frames = []
    for var, center in (("HR", None), ("Temp", 37.0), ("Na", 140.0)):
        k = rng.integers(1, 12, n) if var != "Na" else rng.integers(0, 3, n)
        sid = np.repeat(np.arange(n), k)
        mu = base_hr[sid] if center is None else np.full(sid.size, center)
        frames.append(pl.DataFrame({
            "stay_id": sid.astype(np.int64),
            "time": rng.uniform(0.0, 48.0, sid.size),
            "variable": [var] * sid.size,
            "value": mu + rng.normal(0.0, 5.0, sid.size),
        }))
    statics = pl.DataFrame({
        "stay_id": np.repeat(np.arange(n), 2).astype(np.int64),
        "time": np.zeros(2 * n),
        "variable": ["Age", "ICUType"] * n,
        "value": np.column_stack([rng.uniform(20, 90, n), rng.integers(1, 5, n)]).reshape(-1),
    })
    long = pl.concat([*frames, statics]).cast(SCHEMA).sample(fraction=1.0, shuffle=True, seed=seed)
    ids = np.arange(n)
    X = GridTransformer(cat).fit(long, ids).transform(long, ids).summary  # the members' features in use
    return X, y


def test_planted_signal_both_models_learn(cat):
    X, y = planted_cohort(cat)
    train, test = slice(0, 400), slice(400, None)
    model = SummaryBaselines(seed=0).fit(X[train], y[train])
    assert set(model.models_) == set(MODEL_NAMES)
    probs = model.predict_proba(X[test])
    assert set(probs) == set(MODEL_NAMES)
    for name, p in probs.items():
        assert p.shape == (200,)
        assert np.all((p >= 0) & (p <= 1))
        auc = roc_auc_score(y[test], p)
        assert auc > 0.8, f"{name}: AUROC {auc:.3f}"
    # Not class-weighted: mean predicted risk tracks the ~17 % prevalence (balanced weights would
    # push it towards 0.5).
    for name, p in probs.items():
        assert abs(p.mean() - y[train].mean()) < 0.06, name


def test_deterministic_given_seed(cat):
    X, y = planted_cohort(cat, n=300, seed=1)
    a = SummaryBaselines(seed=3).fit(X, y).predict_proba(X)
    b = SummaryBaselines(seed=3).fit(X, y).predict_proba(X)
    for name in MODEL_NAMES:
        np.testing.assert_array_equal(a[name], b[name])


def test_boosting_trains_with_columns_seen_in_a_few_stays():
    """A lab ordered for one stay only (here: one such column per stay) is all-NaN in the boosting's internal
    early-stopping split, which crashed scikit-learn's binning ("window shape cannot be larger than input
    array shape"). Such a column can never be split on, so the fit is the one without it."""
    rng = np.random.default_rng(0)
    n = 120
    signal = rng.normal(size=n)
    y = (signal + rng.normal(0.0, 0.5, n) > 0.8).astype(np.int64)
    dense = np.column_stack([signal, rng.normal(size=n)])
    once = np.where(np.eye(n, dtype=bool), 1.0, np.nan)  # column j observed in stay j only
    rare = np.full((n, 1), np.nan)
    rare[:MIN_SAMPLES_LEAF - 1, 0] = y[:MIN_SAMPLES_LEAF - 1]  # observed in 19 stays, and telling
    X = np.column_stack([dense, once, rare])
    got = SummaryBaselines(seed=0).fit(X, y).predict_proba(X)
    alone = SummaryBaselines(seed=0).fit(dense, y).predict_proba(dense)
    np.testing.assert_array_equal(got["gradient boosting"], alone["gradient boosting"])
    assert roc_auc_score(y, got["gradient boosting"]) > 0.8


def test_boosting_unchanged_where_every_column_is_well_observed(cat):
    X, y = planted_cohort(cat, n=300, seed=2)
    observed = ~np.isnan(X).all(axis=0)
    assert ((~np.isnan(X[:, observed])).sum(axis=0) >= MIN_SAMPLES_LEAF).all()  # normal data: no sparse column
    got = SummaryBaselines(seed=4).fit(X, y).predict_proba(X)["gradient boosting"]
    plain = HistGradientBoostingClassifier(
        max_iter=300, learning_rate=0.05, early_stopping=True, validation_fraction=0.15, n_iter_no_change=20,
        random_state=4).fit(X[:, observed], y)  # the model as it was: every observed column, default leaves
    np.testing.assert_array_equal(got, plain.predict_proba(X[:, observed])[:, 1])


def test_no_column_boosting_could_split_on():
    X = np.full((40, 2), np.nan)
    X[:10, 0], X[10:25, 1] = 1.0, np.arange(15.0)
    with pytest.raises(ValueError, match=r"no feature is observed in every training stay or in at least 20 of "
                                         r"them \(40 stays; at most 15 observed\)"):
        SummaryBaselines().fit(X, np.tile([0, 1], 20))


def test_not_fitted_and_bad_inputs():
    model = SummaryBaselines()
    assert vars(model) == {"seed": 0, "C": 0.1, "n_threads": 1}  # __init__ stores parameters only
    with pytest.raises(NotFittedError, match="not fitted"):
        model.predict_proba(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="both classes"):
        model.fit(np.zeros((4, 3)), np.zeros(4))
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = np.tile([0, 1], 20)
    model.fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        model.predict_proba(np.zeros((2, 4)))


def test_saps_scores_alignment():
    outcomes = pl.DataFrame({"stay_id": [10, 11, 12, 13], "saps_i": [15.0, None, -1.0, 20.0]},
                            schema={"stay_id": pl.Int64, "saps_i": pl.Float64})
    s = saps_scores(outcomes, [13, 12, 99, 10, 11])
    assert s.dtype == np.float64
    np.testing.assert_array_equal(s, [20.0, np.nan, np.nan, 15.0, np.nan])
    assert saps_scores(outcomes.drop("saps_i"), [10]) is None
    assert saps_scores(outcomes, [11, 12, 99]) is None  # every requested score missing
    assert saps_scores(None, [10]) is None
    all_missing = outcomes.with_columns(pl.lit(None, pl.Float64).alias("saps_i"))
    assert saps_scores(all_missing, [10, 11]) is None


def test_text_stay_ids_are_keys_never_cast_to_int():
    """Encounter ids such as "ENC-10" (a hospital's export) join as text, in the requested order; integer ids
    asked of a text table compare as text."""
    outcomes = pl.DataFrame({"stay_id": ["ENC-10", "ENC-11", "ENC-13"], "saps_i": [15.0, -1.0, 20.0]})
    np.testing.assert_array_equal(saps_scores(outcomes, ["ENC-13", "ENC-12", "ENC-10", "ENC-11"]),
                                  [20.0, np.nan, 15.0, np.nan])
    numbered = pl.DataFrame({"stay_id": ["10", "13"], "saps_i": [15.0, 20.0]})
    np.testing.assert_array_equal(saps_scores(numbered, np.array([13, 10])), [20.0, 15.0])
    with pytest.raises(DataError, match=r"stay_ids, row 2: stay_id nan names no stay"):
        saps_scores(outcomes, [10.0, np.nan])


def test_saps_probability():
    rng = np.random.default_rng(0)
    saps = rng.integers(5, 30, 500).astype(float)
    y = (rng.random(500) < 1 / (1 + np.exp(-(saps - 17) / 3))).astype(int)
    saps[:50] = np.nan
    test = np.array([5.0, 15.0, 30.0, np.nan])
    p = saps_probability(saps, y, test)
    assert p.shape == (4,)
    assert p[0] < p[1] < p[2]  # monotone in the score
    assert p[3] == pytest.approx(y.mean())  # missing -> training prevalence
    assert roc_auc_score(y[50:], saps_probability(saps, y, saps)[50:]) > 0.8
    # nothing usable to fit: prevalence everywhere
    flat = saps_probability(np.full(4, np.nan), np.array([0, 1, 0, 0]), np.array([10.0, np.nan]))
    np.testing.assert_allclose(flat, [0.25, 0.25])


