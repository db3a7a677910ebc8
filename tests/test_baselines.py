"""Tests for clinical_lstm.baselines: hand-worked summary features, the two models, SAPS-I."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from clinical_lstm.baselines import (
    MIN_SAMPLES_LEAF,
    MODEL_NAMES,
    SERIES_STATS,
    SummaryBaselines,
    feature_names,
    saps_probability,
    saps_scores,
    summary_features,
)
from clinical_lstm.catalogue import Catalogue
from clinical_lstm.sources import DataError

SCHEMA = {"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64}


def long_frame(rows: list[tuple[int, float, str, float]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.default()


@pytest.fixture(scope="module")
def example(cat):
    """Two stays with rows deliberately out of time order, plus a stay with no rows at all."""
    rows = [
        # stay 1: HR at t=5, 1, 3 (given out of order) -> first 80 (t=1), last 100 (t=5)
        (1, 5.0, "HR", 100.0),
        (1, 0.0, "Age", 65.0),
        (1, 1.0, "HR", 80.0),
        (1, 3.0, "HR", 90.0),
        (1, 0.0, "Gender", 1.0),
        (1, 0.0, "ICUType", 3.0),
        (1, 0.0, "Weight", 70.0),
        (1, 10.0, "Weight", 72.0),
        (1, 2.0, "Na", 140.0),
        (1, 0.5, "NotInCatalogue", 9.0),  # ignored
        # stay 2: HR at t=4, 2 -> first 60, last 70; Temp once; Height twice at time 0 (first kept)
        (2, 4.0, "HR", 70.0),
        (2, 2.0, "HR", 60.0),
        (2, 0.0, "Height", 170.0),
        (2, 0.0, "Height", 999.0),
        (2, 6.0, "Temp", 37.5),
        (2, 0.0, "ICUType", 1.0),
        (2, 3.0, "Weight", 80.0),  # Weight seen, but not at time 0 -> static_Weight NaN
        (7, 1.0, "HR", 50.0),  # a stay not asked for: must not leak anywhere
    ]
    long = long_frame(rows)
    # Requested order differs from the frame's order; stay 99 has no rows.
    X, names = summary_features(long, cat, [2, 99, 1])
    return X, names


def col(names: list[str], name: str) -> int:
    return names.index(name)


def test_names_and_shape(cat, example):
    X, names = example
    n_series, n_static = len(cat.series), len(cat.statics)
    assert X.shape == (3, n_series * len(SERIES_STATS) + n_static + 4)
    assert names == feature_names(cat)
    assert len(set(names)) == len(names)
    assert names[:6] == [f"{cat.series[0]}_{s}" for s in SERIES_STATS]
    for expected in ("HR_first", "HR_count", "Weight_mean", "static_Age", "static_Weight",
                     "icu_type_1", "icu_type_4"):
        assert expected in names
    assert names[-4:] == ["icu_type_1", "icu_type_2", "icu_type_3", "icu_type_4"]
    assert X.dtype == np.float64


def test_series_stats_hand_worked(example):
    X, names = example
    row = {2: 0, 99: 1, 1: 2}

    def get(stay, name):
        return X[row[stay], col(names, name)]

    # stay 1 HR: values 80 (t1), 90 (t3), 100 (t5)
    assert get(1, "HR_first") == 80.0
    assert get(1, "HR_last") == 100.0
    assert get(1, "HR_min") == 80.0
    assert get(1, "HR_max") == 100.0
    assert get(1, "HR_mean") == pytest.approx(90.0)
    assert get(1, "HR_count") == 3.0
    # stay 1 Weight is a series too: 70 at t0, 72 at t10
    assert (get(1, "Weight_first"), get(1, "Weight_last"), get(1, "Weight_count")) == (70.0, 72.0, 2.0)
    assert get(1, "Weight_mean") == pytest.approx(71.0)
    assert get(1, "Na_count") == 1.0 and get(1, "Na_first") == get(1, "Na_last") == 140.0
    # stay 2 HR: 60 (t2), 70 (t4)
    assert (get(2, "HR_first"), get(2, "HR_last"), get(2, "HR_min"), get(2, "HR_max")) == (60, 70, 60, 70)
    assert get(2, "HR_mean") == pytest.approx(65.0)
    assert get(2, "HR_count") == 2.0
    assert get(2, "Temp_mean") == 37.5 and get(2, "Temp_count") == 1.0
    # never observed: count 0, every other stat NaN
    for stay, var in ((1, "Temp"), (2, "Na"), (1, "Lactate")):
        assert get(stay, f"{var}_count") == 0.0
        for s in ("first", "last", "min", "max", "mean"):
            assert np.isnan(get(stay, f"{var}_{s}")), (stay, var, s)
    # static-only variables get no series block
    assert "Age_first" not in names and "ICUType_count" not in names


def test_stay_without_rows(example):
    X, names = example
    empty = X[1]
    counts = [i for i, n in enumerate(names) if n.endswith("_count")]
    onehot = [i for i, n in enumerate(names) if n.startswith("icu_type_")]
    assert np.all(empty[counts] == 0.0)
    assert np.all(empty[onehot] == 0.0)
    rest = np.setdiff1d(np.arange(len(names)), counts + onehot)
    assert np.all(np.isnan(empty[rest]))


def test_statics_and_icu_onehot(example):
    X, names = example
    s1, s2 = X[2], X[0]
    assert s1[col(names, "static_Age")] == 65.0
    assert s1[col(names, "static_Gender")] == 1.0
    assert s1[col(names, "static_Weight")] == 70.0  # time-0 value, not the mean
    assert s1[col(names, "static_ICUType")] == 3.0
    assert np.isnan(s1[col(names, "static_Height")])
    assert s2[col(names, "static_Height")] == 170.0  # first time-0 row wins
    assert np.isnan(s2[col(names, "static_Weight")])  # Weight only seen at t=3
    assert np.isnan(s2[col(names, "static_Age")])
    onehot = [col(names, f"icu_type_{k}") for k in (1, 2, 3, 4)]
    assert s1[onehot].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert s2[onehot].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_row_order_follows_stay_ids(cat, example):
    X, names = example
    long = long_frame([(1, 1.0, "HR", 80.0), (2, 1.0, "HR", 60.0), (3, 1.0, "HR", 40.0)])
    hr = col(names, "HR_first")
    for order in ([1, 2, 3], [3, 1, 2], np.array([2, 3, 1])):
        Xo, _ = summary_features(long, cat, order)
        assert Xo[:, hr].tolist() == [{1: 80.0, 2: 60.0, 3: 40.0}[int(s)] for s in order]
    # the same stay requested twice gets the same features twice
    Xd, _ = summary_features(long, cat, [2, 2])
    np.testing.assert_array_equal(Xd[0], Xd[1])


def test_empty_inputs(cat):
    names = feature_names(cat)
    X, _ = summary_features(long_frame([]), cat, [5, 6])
    assert X.shape == (2, len(names))
    X0, _ = summary_features(long_frame([(1, 0.0, "HR", 1.0)]), cat, [])
    assert X0.shape == (0, len(names))


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
    X, _ = summary_features(long, cat, np.arange(n))
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


def test_text_stay_ids_are_keys_never_cast_to_int(cat, example):
    """Encounter ids such as "ENC-000002-ZQ" (a hospital's export) join as text: same features and scores as
    the integer ids, in the requested order; integer ids asked of a text table compare as text."""
    X_int, names = example
    rows = [(1, 1.0, "HR", 80.0), (1, 3.0, "HR", 90.0), (2, 2.0, "HR", 60.0), (2, 0.0, "Age", 40.0)]
    text = pl.DataFrame([(f"ENC-{s:06d}-ZQ", t, v, x) for s, t, v, x in rows],
                        schema={**SCHEMA, "stay_id": pl.String}, orient="row")
    want, _ = summary_features(long_frame(rows), cat, [2, 99, 1])
    got, _ = summary_features(text, cat, np.array(["ENC-000002-ZQ", "ENC-000099-ZQ", "ENC-000001-ZQ"]))
    np.testing.assert_array_equal(got, want)
    assert got[2, col(names, "HR_mean")] == 85.0 and got[0, col(names, "static_Age")] == 40.0
    spelled = text.with_columns(pl.col("stay_id").str.slice(4, 6).str.strip_chars_start("0"))  # "1", "2"
    np.testing.assert_array_equal(summary_features(spelled, cat, [2, 99, 1])[0], want)

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


def test_ties_in_time_follow_input_order(cat):
    names = feature_names(cat)
    long = long_frame([(1, 2.0, "HR", 30.0), (1, 1.0, "HR", 10.0), (1, 1.0, "HR", 20.0),
                       (1, 2.0, "HR", 40.0), (1, 0.0, "Age", 50.0), (1, 0.0, "Age", 60.0)])
    X, _ = summary_features(long, cat, [1])
    assert X[0, col(names, "HR_first")] == 10.0  # earliest time, first of the tied rows
    assert X[0, col(names, "HR_last")] == 40.0  # latest time, last of the tied rows
    assert X[0, col(names, "static_Age")] == 50.0
