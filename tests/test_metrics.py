"""Tests for clinical_lstm.metrics: point metrics against scikit-learn and hand-worked examples, the
vectorised bootstrap, subgroup tables, demographic labels and the comparison plots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from clinical_lstm import metrics
from clinical_lstm.metrics import (
    BOOTSTRAP_METRICS,
    METRIC_KEYS,
    Estimate,
    binary_metrics,
    demographic_groups,
    evaluate,
    expected_calibration_error,
    hosmer_lemeshow,
    subgroup_table,
)
from clinical_lstm.plots import plot_calibration, plot_pr, plot_roc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    # e.g. the first group: O=0, E=0.07 -> 0.0049 / (0.07 * 0.965)
    assert (0 - 0.07) ** 2 / (0.07 * (1 - 0.035)) == pytest.approx(0.0725388, rel=1e-5)
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
    stays = metrics._SortedStays(y, p, 0.25)
    counts = metrics._resample_counts(np.random.default_rng(7), 15, len(y))
    out = metrics._replicate_metrics(stays, counts[:, stays.order])
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
        assert est.lower <= est.upper
        # ECE and H-L are biased upwards under resampling, so their intervals may sit above the point.
        if key not in ("ece", "hosmer_lemeshow"):
            assert est.lower <= est.value <= est.upper, key
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


# -------------------------------------------------------------------------------------------- plots


@pytest.mark.parametrize("plot", [plot_roc, plot_pr, plot_calibration])
def test_plots_write_png_atomically(plot, tmp_path):
    y, p = simulated(300, seed=9)
    noisy = np.clip(p + np.random.default_rng(0).normal(0, 0.1, len(p)), 0, 1)
    curves = {"masked LSTM": (y, p), "logistic regression": (y, noisy)}
    out = plot(curves, tmp_path / "figs" / "fig.png")
    assert Path(out) == tmp_path / "figs" / "fig.png"
    data = Path(out).read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC
    assert os.listdir(tmp_path / "figs") == ["fig.png"]  # no temp file left behind


def test_plots_validate_curves(tmp_path):
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="both classes"):
        plot_pr({"m": ([0, 0], [0.1, 0.2])}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(y, p\) pair"):
        plot_calibration({"m": [0, 1, 0]}, tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_importing_metrics_and_plots_does_not_import_matplotlib():
    root = Path(metrics.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    code = "import sys, clinical_lstm.metrics, clinical_lstm.plots; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0
