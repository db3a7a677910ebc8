"""Tests for clinical_lstm.evaluation.metrics: point metrics against scikit-learn and hand-worked examples, the
vectorised bootstrap, bias-corrected intervals, paired differences, subgroup tables and demographic labels.
The figures are tested in test_plots.py."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import ndtri
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from clinical_lstm.evaluation import bootstrap, metrics
from clinical_lstm.evaluation.metrics import Estimate, evaluate, paired_difference
from clinical_lstm.evaluation.scores import (
    BOOTSTRAP_METRICS,
    DIFFERENCE_METRICS,
    METRIC_KEYS,
    binary_metrics,
    expected_calibration_error,
    hosmer_lemeshow,
)
from clinical_lstm.evaluation.subgroups import demographic_groups, subgroup_table


def simulated(n: int, seed: int, round_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from the probabilities themselves (a calibrated model), ~15% mortality."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-rng.normal(-2.0, 1.3, n)))
    y = (rng.random(n) < p).astype(int)
    return y, (np.round(p, round_to) if round_to is not None else p)


# ------------------------------------------------------------------------------------- point metrics


def test_binary_metrics_match_sklearn_with_and_without_ties():
    for round_to in (None, 2):
        y, p = simulated(300, seed=1, round_to=round_to)
        m = binary_metrics(y, p, threshold=0.3)
        assert tuple(m) == METRIC_KEYS
        assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert m["auprc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        assert m["prevalence"] == pytest.approx(y.mean())
        assert m["n"] == 300.0


def test_ece_hand_worked():
    # bins: [0,0.1) {0.05: y 0}, [0.1,0.2) {0.15: 0, 0.15: 1}, [0.8,0.9) {0.85: 1}, [0.9,1] {0.95: 1, 1.0: 1}
    y = [0, 0, 1, 1, 1, 1]
    p = [0.05, 0.15, 0.15, 0.85, 0.95, 1.0]
    expected = (1 * 0.05 + 2 * abs(0.5 - 0.15) + 1 * 0.15 + 2 * abs(1.0 - 0.975)) / 6
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    assert binary_metrics(y, p, 0.5)["ece"] == pytest.approx(expected)


def test_ece_is_zero_when_each_bin_is_calibrated():
    # bin [0.5, 0.6): mean p 0.5, deaths 1/2; bin [0.2, 0.3): mean p 0.25, deaths 1/4
    y = [0, 1, 1, 0, 0, 0]
    p = [0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_hosmer_lemeshow_hand_worked_20_samples():
    # 20 distinct scores: np.quantile's deciles fall between consecutive sorted scores, so the ten risk
    # groups are exactly the consecutive pairs of the sorted scores.
    p_sorted = np.array(
        [0.02, 0.05, 0.08, 0.10, 0.12, 0.15, 0.18, 0.20, 0.25, 0.30,
         0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.70, 0.80, 0.90, 0.95]
    )  # fmt: skip
    y_sorted = np.array([0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1])
    expected = 0.0
    for g in range(10):
        pair = slice(2 * g, 2 * g + 2)
        obs, exp, n_g = y_sorted[pair].sum(), p_sorted[pair].sum(), 2
        expected += (obs - exp) ** 2 / (exp * (1 - exp / n_g))
    # The reference loop checked against arithmetic done by hand, group by group (O, E -> (O - E)^2 / (E (1 - E/2))):
    #   O=0 E=0.07 -> 0.0049/(0.07*0.965) = 0.072539    O=1 E=0.18 -> 0.6724/(0.18*0.91)  = 4.105006
    #   O=0 E=0.27 -> 0.0729/(0.27*0.865) = 0.312139    O=1 E=0.38 -> 0.3844/(0.38*0.81)  = 1.248863
    #   O=0 E=0.55 -> 0.3025/(0.55*0.725) = 0.758621    O=1 E=0.75 -> 0.0625/(0.75*0.625) = 0.133333
    #   O=2 E=0.95 -> 1.1025/(0.95*0.525) = 2.210526    O=1 E=1.15 -> 0.0225/(1.15*0.425) = 0.046036
    #   O=1 E=1.50 -> 0.25/(1.5*0.25)     = 0.666667    O=2 E=1.85 -> 0.0225/(1.85*0.075) = 0.162162
    #   total 9.715892
    assert expected == pytest.approx(9.715892, abs=1e-5)
    shuffle = np.random.default_rng(3).permutation(20)  # grouping must not depend on input order
    assert hosmer_lemeshow(y_sorted[shuffle], p_sorted[shuffle]) == pytest.approx(expected)


def test_hosmer_lemeshow_keeps_ties_together():
    # Ten stays at 0.1 and ten at 0.3: only two distinct groups can be formed.
    p = np.array([0.1] * 10 + [0.3] * 10)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0] + [1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    expected = (2 - 1.0) ** 2 / (1.0 * 0.9) + (3 - 3.0) ** 2 / (3.0 * 0.7)
    assert hosmer_lemeshow(y, p) == pytest.approx(expected)


def test_hosmer_lemeshow_degenerate_groups():
    # A group with p == 0 everywhere adds 0 if nobody died, inf if someone did.
    assert hosmer_lemeshow([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == 0.0
    assert hosmer_lemeshow([1, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]) == np.inf


def test_min_se_ppv_hand_worked():
    # threshold 0.4 flags 0.4, 0.5, 0.6 and 0.4 (ties flagged): TP 3 of 4 flagged; 3 of 4 deaths found.
    y = [0, 1, 0, 1, 1, 0, 1]
    p = [0.1, 0.2, 0.4, 0.4, 0.5, 0.3, 0.6]
    m = binary_metrics(y, p, threshold=0.4)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["ppv"] == pytest.approx(3 / 4)
    assert m["min_se_ppv"] == pytest.approx(3 / 4)
    m = binary_metrics(y, p, threshold=0.5)  # flags 0.5, 0.6: Se 2/4, PPV 2/2
    assert (m["sensitivity"], m["ppv"], m["min_se_ppv"]) == pytest.approx((0.5, 1.0, 0.5))


def test_min_se_ppv_when_nothing_flagged_or_no_deaths():
    m = binary_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9)
    assert m["sensitivity"] == 0.0 and np.isnan(m["ppv"]) and m["min_se_ppv"] == 0.0
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], threshold=0.2)
    assert np.isnan(m["auroc"]) and np.isnan(m["auprc"]) and np.isnan(m["min_se_ppv"])
    assert m["ppv"] == 0.0


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        ([0, 1], [0.1, 0.2, 0.3], "same length, got 2 and 3"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "only 0/1 labels"),
        ([0, np.nan, 1], [0.1, 0.2, 0.3], "only 0/1 labels"),
        ([0, 1, 1], [0.1, np.nan, 0.3], "finite, got 1 NaN/inf"),
        ([0, 1, 1], [0.1, 1.2, 0.3], r"probabilities in \[0, 1\]"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([], [], "empty"),
    ],
)
def test_binary_metrics_rejects_bad_inputs(y, p, match):
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, p, 0.5)


def test_threshold_must_be_finite():
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        binary_metrics([0, 1], [0.2, 0.8], float("nan"))


# ---------------------------------------------------------------------------------------- bootstrap


def test_replicate_kernel_equals_metrics_on_materialised_resamples():
    # The vectorised kernel must give, for each row of counts, what binary_metrics gives on the
    # resample itself (ties included, so the tie grouping is exercised).
    y, p = simulated(500, seed=2, round_to=2)
    stays = bootstrap._SortedStays(y, p, 0.25)
    counts = bootstrap._resample_counts(np.random.default_rng(7), 15, len(y))
    out = bootstrap._replicate_metrics(stays, counts[:, stays.order])
    for b in range(15):
        idx = np.repeat(np.arange(len(y)), counts[b].astype(int))
        ref = binary_metrics(y[idx], p[idx], 0.25)
        assert ref["auroc"] == pytest.approx(roc_auc_score(y[idx], p[idx]))
        for key in BOOTSTRAP_METRICS:
            assert out[key][b] == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key


def test_evaluate_intervals_contain_point_and_narrow_with_n():
    y, p = simulated(400, seed=4)
    small = evaluate(y, p, threshold=0.3, n_boot=300, seed=0)
    y, p = simulated(6000, seed=5)
    large = evaluate(y, p, threshold=0.3, n_boot=300, seed=0)
    assert set(small) == set(BOOTSTRAP_METRICS)
    for key in BOOTSTRAP_METRICS:
        est = small[key]
        assert isinstance(est, Estimate)
        assert est.lower <= est.value <= est.upper, key
        assert est.note == ""
    for key in ("auroc", "auprc", "brier", "min_se_ppv"):
        assert large[key].upper - large[key].lower < 0.6 * (small[key].upper - small[key].lower), key


def test_evaluate_point_estimates_and_seed_reproducibility():
    y, p = simulated(300, seed=6)
    a = evaluate(y, p, 0.3, n_boot=200, seed=11)
    b = evaluate(y, p, 0.3, n_boot=200, seed=11)
    c = evaluate(y, p, 0.3, n_boot=200, seed=12)
    point = binary_metrics(y, p, 0.3)
    assert all(a[k].value == point[k] for k in BOOTSTRAP_METRICS)
    assert a == b
    assert a["auroc"].lower != c["auroc"].lower


def test_evaluate_skips_single_class_replicates():
    # One death in 30 stays: many replicates draw no death; they are skipped, not counted as NaN/0.
    y = np.zeros(30, dtype=int)
    y[0] = 1
    p = np.linspace(0.01, 0.6, 30)[::-1]
    with pytest.warns(UserWarning, match="1 death"):
        est = evaluate(y, p, 0.5, n_boot=200, seed=0)
    assert est["auroc"].value == 1.0
    assert est["auroc"].lower == est["auroc"].upper == 1.0


def test_evaluate_validates_arguments():
    with pytest.raises(ValueError, match="both classes"):
        evaluate([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        evaluate([0, 1], [0.1, 0.9], 0.5, n_boot=0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        evaluate([0, 1], [0.1, 0.9], 0.5, alpha=1.5)


def test_estimate_formatting():
    est = Estimate(0.8612, 0.8421, 0.88)
    assert str(est) == "0.861 (0.842\u20130.880)"
    assert est.to_dict() == {"value": 0.8612, "lower": 0.8421, "upper": 0.88}
    noted = Estimate(0.5, 0.25, 1.0, note="only 1 death: interval not meaningful")
    assert str(noted) == "0.500 (0.250\u20131.000) [only 1 death: interval not meaningful]"
    assert noted.to_dict() == {"value": 0.5, "lower": 0.25, "upper": 1.0, "note": noted.note}


# ------------------------------------------------------------------------- bias-corrected intervals


def test_bc_interval_hand_worked_on_shifted_normal_replicates():
    # Replicates N(est + d, s^2) (exact normal quantiles): z0 = -d/s, so the BC bounds are the
    # ndtr(-2d/s -/+ 1.96) quantiles, i.e. est - d -/+ 1.96 s: the interval is moved back by the bias d.
    est, s, d = 0.5, 0.01, 0.005
    values = est + d + s * ndtri((np.arange(200_000) + 0.5) / 200_000)
    lower, upper = bootstrap._bc_interval(values, est, alpha=0.05)
    z = ndtri(0.975)
    assert lower == pytest.approx(est - d - z * s, abs=1e-5)
    assert upper == pytest.approx(est - d + z * s, abs=1e-5)
    # Without bias it is the percentile interval.
    lower, upper = bootstrap._bc_interval(values - d, est, alpha=0.05)
    assert (lower, upper) == pytest.approx((est - z * s, est + z * s), abs=1e-5)


def test_bc_interval_ties_count_half_and_interval_always_holds_the_estimate():
    assert bootstrap._bc_interval(np.full(100, 0.3), 0.3, 0.05) == (0.3, 0.3)  # share 1/2: z0 = 0
    # Every replicate above the estimate: z0 = -inf puts both bounds on the smallest replicate (1.0),
    # and the interval is widened down to the estimate.
    assert bootstrap._bc_interval(np.linspace(1.0, 2.0, 50), 0.5, 0.05) == (0.5, 1.0)
    assert np.isnan(bootstrap._bc_interval(np.array([np.nan]), 0.5, 0.05)).all()


def test_hl_and_ece_intervals_contain_their_estimates_on_calibrated_sample():
    # Calibrated by construction; H-L and ECE replicates sit above the estimate (bias under resampling).
    rng = np.random.default_rng(4)
    p = rng.beta(2.0, 8.0, 2000)
    y = (rng.random(2000) < p).astype(int)
    est = evaluate(y, p, 0.3, n_boot=500, seed=0)
    (reps,) = bootstrap._bootstrap(y, [(p, 0.3)], 500, 0)
    old_lower = np.quantile(reps["hosmer_lemeshow"], 0.025)
    assert old_lower > est["hosmer_lemeshow"].value  # the plain percentile interval excluded it
    for key in ("hosmer_lemeshow", "ece"):
        assert est[key].lower <= est[key].value <= est[key].upper, key
        assert est[key].note == ""
    # The point is the full-sample H-L statistic, computed independently: 2000 distinct scores, so the risk
    # groups are pandas' deciles (pd.qcut), 200 stays each.
    frame = pd.DataFrame({"y": y, "p": p})
    g = frame.groupby(pd.qcut(p, 10), observed=True).agg(o=("y", "sum"), e=("p", "sum"), n=("p", "size"))
    assert g["n"].tolist() == [200] * 10
    reference = float(((g["o"] - g["e"]) ** 2 / (g["e"] * (1 - g["e"] / g["n"]))).sum())
    assert est["hosmer_lemeshow"].value == pytest.approx(reference, rel=1e-9)
    # calibrated by construction: below the 95th percentile of chi-squared with 10 - 2 = 8 degrees of freedom
    from scipy.stats import chi2

    assert est["hosmer_lemeshow"].value < chi2.ppf(0.95, 8)


def test_normal_case_has_no_note_and_auroc_interval_close_to_percentile():
    y, p = simulated(4000, seed=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no small-class warning
        est = evaluate(y, p, 0.3, n_boot=400, seed=3)
    assert all(e.note == "" for e in est.values())
    (reps,) = bootstrap._bootstrap(y, [(p, 0.3)], 400, 3)
    lower, upper = np.quantile(reps["auroc"], [0.025, 0.975])
    assert est["auroc"].lower == pytest.approx(lower, abs=0.01)
    assert est["auroc"].upper == pytest.approx(upper, abs=0.01)


def test_one_death_interval_contains_estimate_carries_note_and_warns_once():
    rng = np.random.default_rng(2)
    p = rng.beta(1.0, 99.0, 100)
    y = np.zeros(100, dtype=int)
    y[np.argmax(p)] = 1
    with pytest.warns(UserWarning) as record:
        est = evaluate(y, p, 0.02, n_boot=300, seed=0)
    assert len(record) == 1
    assert "evaluate: 1 death(s) and 99 survivor(s) among 100 stays" in str(record[0].message)
    (reps,) = bootstrap._bootstrap(y, [(p, 0.02)], 300, 0)
    assert np.quantile(reps["ece"], 0.025) > est["ece"].value  # the percentile interval excluded it
    for key, e in est.items():
        assert e.lower <= e.value <= e.upper, key
        assert e.note == "only 1 death: interval not meaningful"
        assert str(e).endswith(" [only 1 death: interval not meaningful]")
        assert e.to_dict()["note"] == e.note


@pytest.mark.parametrize(
    ("deaths", "survivors", "note"),
    [
        (3, 5, "only 3 deaths and 5 survivors: interval not meaningful"),
        (12, 1, "only 1 survivor: interval not meaningful"),
        (10, 10, ""),
    ],
)
def test_small_class_note_names_the_counts(deaths, survivors, note):
    y = np.array([1] * deaths + [0] * survivors)
    p = np.linspace(0.1, 0.9, len(y))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        est = evaluate(y, p, 0.5, n_boot=100, seed=0)
    assert {e.note for e in est.values()} == {note}
    assert len(record) == (1 if note else 0)


# --------------------------------------------------------------------------------- paired difference


def _two_models(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """y drawn from the true risk; a = the true risk, b = the true risk blurred on the logit scale."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.0, 1.3, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    p_a = 1.0 / (1.0 + np.exp(-logit))
    p_b = 1.0 / (1.0 + np.exp(-(logit + rng.normal(0.0, noise, n))))
    return y, p_a, p_b


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    y, p_a, _ = _two_models(500, seed=1, noise=1.0)
    diff = paired_difference(y, p_a, p_a.copy(), 0.3, 0.3, n_boot=200, seed=0)
    assert tuple(diff) == DIFFERENCE_METRICS
    for key, est in diff.items():
        assert (est.value, est.lower, est.upper, est.note) == (0.0, 0.0, 0.0, ""), key


def test_paired_difference_point_is_the_difference_of_binary_metrics():
    y, p_a, p_b = _two_models(400, seed=2, noise=1.0)
    diff = paired_difference(y, p_a, p_b, 0.25, 0.35, n_boot=100, seed=0)
    a, b = binary_metrics(y, p_a, 0.25), binary_metrics(y, p_b, 0.35)
    for key in DIFFERENCE_METRICS:
        assert diff[key].value == a[key] - b[key], key
        assert diff[key].lower <= diff[key].value <= diff[key].upper, key


def test_paired_difference_finds_the_clearly_better_model():
    y, p_a, p_b = _two_models(2000, seed=3, noise=2.0)
    diff = paired_difference(y, p_a, p_b, 0.3, 0.3, n_boot=300, seed=0)
    assert diff["auroc"].lower > 0 and diff["auprc"].lower > 0
    assert diff["brier"].upper < 0  # a has the lower (better) Brier score


def test_paired_replicates_evaluate_both_models_on_the_same_resample():
    y, p_a, p_b = _two_models(300, seed=4, noise=1.0)
    reps_a, reps_b = bootstrap._bootstrap(y, [(p_a, 0.3), (p_b, 0.3)], 4, seed=9)
    counts = bootstrap._resample_counts(np.random.default_rng(9), 4, len(y))  # the same draws
    for r in range(4):
        idx = np.repeat(np.arange(len(y)), counts[r].astype(int))
        assert reps_a["auroc"][r] == pytest.approx(roc_auc_score(y[idx], p_a[idx]), rel=1e-12)
        assert reps_b["auroc"][r] == pytest.approx(roc_auc_score(y[idx], p_b[idx]), rel=1e-12)


def test_paired_interval_is_narrower_than_treating_the_models_as_independent():
    # Correlated predictions: what the models share cancels in each replicate.
    y, p_a, p_b = _two_models(3000, seed=5, noise=0.3)
    diff = paired_difference(y, p_a, p_b, 0.3, 0.3, n_boot=300, seed=0)
    ev_a = evaluate(y, p_a, 0.3, n_boot=300, seed=0)
    ev_b = evaluate(y, p_b, 0.3, n_boot=300, seed=0)
    for key in ("auroc", "auprc", "brier"):
        unpaired = np.hypot(ev_a[key].upper - ev_a[key].lower, ev_b[key].upper - ev_b[key].lower)
        assert diff[key].upper - diff[key].lower < 0.5 * unpaired, key


def test_paired_difference_validates_arguments():
    y, p_a, p_b = _two_models(50, seed=6, noise=1.0)
    with pytest.raises(ValueError, match="y and p_b must have the same length, got 50 and 49"):
        paired_difference(y, p_a, p_b[:-1], 0.3, 0.3)
    with pytest.raises(ValueError, match=r"p_a must be probabilities in \[0, 1\]"):
        paired_difference(y, p_a + 1.0, p_b, 0.3, 0.3)
    with pytest.raises(ValueError, match="threshold must be a finite number, got nan"):
        paired_difference(y, p_a, p_b, 0.3, float("nan"))
    with pytest.raises(ValueError, match="n_boot must be a positive integer"):
        paired_difference(y, p_a, p_b, 0.3, 0.3, n_boot=0)


# ---------------------------------------------------------------------------------------- subgroups


def test_subgroup_table_matches_metrics_on_subsets():
    y, p = simulated(200, seed=8)
    sex = np.where(np.arange(200) % 3 == 0, "female", "male")
    groups = pd.DataFrame({"sex": sex, "site": ["a"] * 199 + ["b"]})
    table = subgroup_table(y, p, 0.3, groups)
    assert list(table.columns) == ["group", "level", "n", "deaths", "auroc", "auprc", "brier", "min_se_ppv"]
    assert list(zip(table["group"], table["level"], strict=True)) == [
        ("sex", "female"),
        ("sex", "male"),
        ("site", "a"),
        ("site", "b"),
    ]
    female = table.iloc[0]
    mask = sex == "female"
    assert female["n"] == mask.sum() and female["deaths"] == y[mask].sum()
    assert female["auroc"] == pytest.approx(roc_auc_score(y[mask], p[mask]))
    assert female["brier"] == pytest.approx(brier_score_loss(y[mask], p[mask]))
    single = table.iloc[3]  # one stay: a single class
    assert single["n"] == 1 and np.isnan(single["auroc"]) and np.isnan(single["auprc"])


def test_subgroup_table_orders_categories_and_keeps_missing_labels():
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.1, 0.8, 0.3, 0.6, 0.7, 0.2])
    groups = demographic_groups([85, 40, 55, 70, np.nan, 45], [1, 0, 0, 1, 1, np.nan], [1, 2, 3, 4, 3, 2])
    groups["ward"] = ["x", None, "x", "y", "y", "x"]
    table = subgroup_table(y, p, 0.5, groups)
    ages = table.loc[table["group"] == "age_band", "level"].tolist()
    assert ages == ["<50", "50-64", "65-79", "80+", "unknown"]  # category order, empty levels dropped
    wards = table.loc[table["group"] == "ward", ["level", "n"]].to_numpy().tolist()
    assert wards == [["x", 3], ["y", 2], ["missing", 1]]


def test_subgroup_table_rejects_misaligned_groups():
    with pytest.raises(ValueError, match="one row per stay: got 2 rows for 3 stays"):
        subgroup_table([0, 1, 0], [0.1, 0.9, 0.2], 0.5, pd.DataFrame({"sex": ["f", "m"]}))


def test_demographic_groups_labels():
    g = demographic_groups(
        age=[49.9, 50, 64.9, 65, 79.5, 80, 91, np.nan, -1],
        gender=[0, 1, np.nan, 0, 1, 0, 1, 0, 3],
        icu_type=[1, 2, 3, 4, np.nan, 1, 2, 3, 9],
    )
    assert list(g.columns) == ["sex", "age_band", "icu_type"]
    unk = "unknown"
    assert g["age_band"].tolist() == ["<50", "50-64", "50-64", "65-79", "65-79", "80+", "80+", unk, unk]
    assert g["sex"].tolist() == ["female", "male", unk, "female", "male", "female", "male", "female", unk]
    assert g["icu_type"].tolist()[:5] == ["coronary care", "cardiac surgery", "medical", "surgical", unk]
    assert g["icu_type"].iloc[-1] == "unknown"
    assert list(g["age_band"].cat.categories) == ["<50", "50-64", "65-79", "80+", "unknown"]


def test_demographic_groups_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        demographic_groups([50, 60], [0], [1, 2])


def test_compare_models_gives_what_evaluate_and_paired_difference_give():
    """One bootstrap of three models (threads on: 1,000 stays x 250 replicates) = the calls one by one."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 1000)
    models = {name: (np.clip(0.5 * y + rng.normal(0.25, s, 1000), 0, 1), t)
              for name, s, t in (("a", 0.2, 0.5), ("b", 0.3, 0.4), ("c", 0.5, 0.6))}
    got, diffs = metrics.compare_models(y, models, n_boot=300, seed=3)
    assert list(got) == ["a", "b", "c"] and list(diffs) == ["b", "c"]
    for name, (p, t) in models.items():
        assert got[name] == metrics.evaluate(y, p, t, n_boot=300, seed=3)
    for name in ("b", "c"):
        (pa, ta), (pb, tb) = models["a"], models[name]
        assert diffs[name] == metrics.paired_difference(y, pa, pb, ta, tb, n_boot=300, seed=3)
    with pytest.raises(ValueError, match="p of 'b'"):
        metrics.compare_models(y, {"a": models["a"], "b": (np.full(999, 0.5), 0.5)})


def test_the_printed_table_keeps_its_columns_when_intervals_carry_a_note():
    """With few deaths every estimate carries a note; printed in each cell it ran the columns together. The cells
    hold the estimates, the note is said once below."""
    from clinical_lstm.evaluation.comparison import compare

    rng = np.random.default_rng(0)
    y = np.zeros(60, int)
    y[:7] = 1
    probs = {"shipped": (np.clip(y * 0.4 + rng.random(60) * 0.5, 0, 1), 0.5), "other": (rng.random(60), 0.5)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = compare(probs, y, "60 stays", 100, 0).table()
    rows = [line for line in text.splitlines() if line.startswith(("shipped", "other", "  other"))]
    assert len(rows) == 3 and len({len(r) for r in rows}) == 1  # aligned
    assert text.count("only 7 deaths: interval not meaningful") == 1
    assert text.splitlines()[-1] == "note: only 7 deaths: interval not meaningful"


def test_too_few_replicates_is_said_on_every_interval():
    """An interval from a handful of bootstrap replicates (evaluate --n-boot 1 printed one as "95 %") carries a
    note, alone or after the small-class one; from 100 on, none."""
    y, p = simulated(400, seed=4)
    assert {e.note for e in evaluate(y, p, 0.3, n_boot=20, seed=0).values()} == {
        "only 20 bootstrap replicates: interval rough"}
    assert {e.note for e in evaluate(y, p, 0.3, n_boot=1, seed=0).values()} == {
        "only 1 bootstrap replicate: interval rough"}
    assert {e.note for e in evaluate(y, p, 0.3, n_boot=100, seed=0).values()} == {""}
    y1 = np.zeros(60, int)
    y1[0] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = paired_difference(y1, np.linspace(0.9, 0.1, 60), np.linspace(0.1, 0.9, 60), 0.5, 0.5, n_boot=20)
    assert {e.note for e in both.values()} == {
        "only 1 death: interval not meaningful; only 20 bootstrap replicates: interval rough"}


def test_the_printed_table_marks_the_shipped_row_aligns_long_names_and_says_each_lead_in_words():
    """A model name longer than the name column shifted its row one column; the shipped row was not marked; a
    difference whose interval crosses 0 was left for the reader to spot."""
    from clinical_lstm.evaluation.comparison import compare

    rng = np.random.default_rng(1)
    y = (rng.random(800) < 0.3).astype(int)
    strong = np.clip(0.55 * y + rng.normal(0.2, 0.15, 800), 0, 1)
    probs = {"masked LSTM + summaries": (strong, 0.5),  # 23 characters
             "a twin of it": (np.clip(strong + rng.normal(0, 0.002, 800), 0, 1), 0.5),
             "coin": (rng.random(800), 0.5)}
    text = compare(probs, y, "800 stays", 200, 0).table()
    lines = text.splitlines()
    header, rows = lines[1], [line for line in lines if line.startswith(("masked", "a twin", "coin", "  a twin",
                                                                         "  coin"))]
    assert rows[0].startswith("masked LSTM + summaries (shipped) ")
    assert len(rows) == 5 and {len(r) for r in rows} == {len(header)}  # every cell under its column's name
    assert header.index("auroc") + len("auroc") == rows[0].index(")", rows[0].index("(shipped)") + 9) + 1
    said = {line.split(":")[0].strip(): line.split(":", 1)[1] for line in lines if line.startswith("  vs ")}
    assert "better on AUROC, AUPRC" in said["vs coin"] and "worse" not in said["vs coin"]
    assert "no measurable difference on AUROC" in said["vs a twin of it"]


def test_a_point_on_its_interval_bound_is_marked_and_explained_once():
    from clinical_lstm.evaluation.comparison import ON_BOUND_MARK, Evaluation, on_bound, verdict
    from clinical_lstm.evaluation.metrics import Estimate

    assert on_bound(Estimate(0.013, 0.008, 0.013)) and on_bound(Estimate(0.2, 0.2, 0.3))
    assert not on_bound(Estimate(0.013, 0.008, 0.02)) and not on_bound(Estimate(0.0, 0.0, 0.0))
    row = {"auroc": Estimate(0.8, 0.75, 0.85), "ece": Estimate(0.013, 0.008, 0.013)}
    text = Evaluation("x", np.zeros(2), {"m": (np.zeros(2), 0.5)}, {"m": row}, {}).table()
    assert f"0.013 (0.008\u20130.013){ON_BOUND_MARK}" in text and "0.800 (0.750\u20130.850) " in text
    assert sum(line.startswith("note: \u2020 the point sits on a bound") for line in text.splitlines()) == 1
    lower_better = {"brier": Estimate(-0.01, -0.02, -0.005), "ece": Estimate(0.01, 0.002, 0.02),
                    "auroc": Estimate(0.01, -0.001, 0.02)}
    assert verdict(lower_better) == ("better on Brier; worse on ECE; no measurable difference on AUROC "
                                     "(interval includes 0)")
