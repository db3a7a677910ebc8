"""Tests for clinical_lstm.model.calibrate: Platt and isotonic calibrators, serialisation, threshold rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import log_loss

from clinical_lstm.evaluation.scores import binary_metrics
from clinical_lstm.model.calibrate import (
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    choose_threshold,
    make_calibrator,
)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def platt_data(n: int, seed: int, a: float = 2.0, b: float = -1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < sigmoid(a * logits + b)).astype(int)
    return logits, y


# -------------------------------------------------------------------------------------------- Platt


def test_platt_recovers_known_parameters():
    logits, y = platt_data(20_000, seed=0)
    cal = PlattCalibrator().fit(logits, y)
    assert cal.a_ == pytest.approx(2.0, abs=0.1)
    assert cal.b_ == pytest.approx(-1.0, abs=0.1)
    np.testing.assert_allclose(cal.predict(logits), sigmoid(cal.a_ * logits + cal.b_), rtol=1e-12)


def test_platt_is_deterministic():
    logits, y = platt_data(2_000, seed=1)
    first, second = PlattCalibrator().fit(logits, y), PlattCalibrator().fit(logits, y)
    assert (first.a_, first.b_) == (second.a_, second.b_)


def test_platt_improves_log_loss_on_miscalibrated_logits():
    # True risk is sigmoid(z); the model is overconfident and shifted: it outputs 3z + 1.
    rng = np.random.default_rng(2)
    z = rng.normal(-1.5, 1.0, 6_000)
    y = (rng.random(z.size) < sigmoid(z)).astype(int)
    raw = 3.0 * z + 1.0
    fit, test = slice(0, 3_000), slice(3_000, None)
    cal = PlattCalibrator().fit(raw[fit], y[fit])
    before = log_loss(y[test], sigmoid(raw[test]))
    after = log_loss(y[test], cal.predict(raw[test]))
    assert after < 0.8 * before
    assert cal.a_ == pytest.approx(1 / 3, abs=0.05)  # undoes the scaling: (3z + 1) / 3 - 1/3 = z


def test_platt_fits_platt_smoothed_targets():
    # 40 stays, 18 deaths: Platt's targets (18 + 1) / (18 + 2) = 19/20 for deaths and 1 / (22 + 2) = 1/24 for
    # survivors. The reference is an independent fit of the same convex loss: plain Newton-Raphson on
    # (a, b), written out here (no scikit-learn, nothing from the class under test).
    logits, y = platt_data(40, seed=8)
    assert (y.sum(), len(y)) == (18, 40)
    design = np.column_stack([logits, np.ones_like(logits)])

    def newton(targets: np.ndarray) -> np.ndarray:
        w = np.zeros(2)
        for _ in range(50):
            p = sigmoid(design @ w)
            step = np.linalg.solve(design.T @ (design * (p * (1 - p))[:, None]), design.T @ (p - targets))
            w -= step
        assert np.abs(step).max() < 1e-12  # converged
        return w

    a_ref, b_ref = newton(np.where(y == 1, 19 / 20, 1 / 24))
    cal = PlattCalibrator().fit(logits, y)
    assert cal.a_ == pytest.approx(a_ref, abs=1e-6)
    assert cal.b_ == pytest.approx(b_ref, abs=1e-6)
    # The smoothing matters on 40 stays: an unsmoothed logistic regression lands far away (a = 6.70,
    # b = 0.294), so a fit that ignored the soft targets could not pass the checks above.
    a_plain, _ = newton(y.astype(float))
    assert abs(a_plain - a_ref) > 1.0
    # The optimum: zero gradient of the cross-entropy against the smoothed targets.
    t = np.where(y == 1, 19 / 20, 1 / 24)
    resid = sigmoid(cal.a_ * logits + cal.b_) - t
    assert np.abs([resid @ logits, resid.sum()]).max() < 1e-6


def test_platt_stays_finite_on_separable_data():
    cal = PlattCalibrator().fit([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    assert np.isfinite(cal.a_) and cal.a_ > 0 and np.isfinite(cal.b_)
    p = cal.predict([-2.0, 2.0])
    assert p[0] < 0.5 < p[1]


def test_platt_round_trip_through_json():
    logits, y = platt_data(1_000, seed=3)
    cal = PlattCalibrator().fit(logits, y)
    d = json.loads(json.dumps(cal.to_dict()))
    assert d == {"kind": "platt", "a": cal.a_, "b": cal.b_}
    again = calibrator_from_dict(d)
    assert isinstance(again, PlattCalibrator)
    np.testing.assert_array_equal(again.predict(logits), cal.predict(logits))


@pytest.mark.parametrize("cls", [PlattCalibrator, IsotonicCalibrator])
def test_predict_before_fit_raises(cls):
    with pytest.raises(RuntimeError, match=rf"{cls.__name__} is not fitted yet; call fit\(logits, y\) first"):
        cls().predict([0.0, 1.0])
    with pytest.raises(RuntimeError, match="not fitted"):
        cls().to_dict()


@pytest.mark.parametrize("cls", [PlattCalibrator, IsotonicCalibrator])
def test_fit_validates_inputs(cls):
    with pytest.raises(ValueError, match="both classes"):
        cls().fit([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="same length, got 2 and 3"):
        cls().fit([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="only 0/1 labels"):
        cls().fit([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="logits must be finite"):
        cls().fit([0.1, np.inf, 0.3], [0, 1, 0])


def test_loading_a_calibrator_for_scoring_does_not_import_sklearn():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    code = (
        "import sys; from clinical_lstm.model.calibrate import calibrator_from_dict; "
        "calibrator_from_dict({'kind': 'platt', 'a': 1.0, 'b': 0.0}).predict([0.5]); "
        "calibrator_from_dict({'kind': 'isotonic', 'X_thresholds': [0, 1], 'y_thresholds': [0, 1]}).predict([0.5]); "
        "sys.exit('sklearn' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


# ----------------------------------------------------------------------------------------- isotonic


def test_isotonic_is_monotone_and_clips():
    logits, y = platt_data(3_000, seed=4)
    cal = IsotonicCalibrator().fit(logits, y)
    grid = np.linspace(-8, 8, 200)
    p = cal.predict(grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    # Out of the fitted range: held at the end values.
    assert cal.predict([-50.0])[0] == cal.y_thresholds_[0]
    assert cal.predict([50.0])[0] == cal.y_thresholds_[-1]


def test_isotonic_matches_sklearn_prediction():
    from sklearn.isotonic import IsotonicRegression

    logits, y = platt_data(2_000, seed=5)
    cal = IsotonicCalibrator().fit(logits, y)
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(sigmoid(logits), y)
    grid = np.linspace(-6, 6, 101)
    np.testing.assert_allclose(cal.predict(grid), ref.predict(sigmoid(grid)), atol=1e-12)


def test_isotonic_round_trip_gives_identical_predictions():
    logits, y = platt_data(2_000, seed=6)
    cal = IsotonicCalibrator().fit(logits, y)
    d = json.loads(json.dumps(cal.to_dict()))
    assert d["kind"] == "isotonic" and len(d["X_thresholds"]) == len(d["y_thresholds"]) > 1
    again = calibrator_from_dict(d)
    assert isinstance(again, IsotonicCalibrator)
    grid = np.concatenate([logits, np.linspace(-10, 10, 333)])
    np.testing.assert_array_equal(again.predict(grid), cal.predict(grid))


def test_from_dict_validates():
    with pytest.raises(ValueError, match=r"'kind' must be one of \('platt', 'isotonic'\), got 'beta'"):
        calibrator_from_dict({"kind": "beta"})
    with pytest.raises(ValueError, match="kind='isotonic'"):
        IsotonicCalibrator.from_dict({"kind": "platt", "a": 1.0, "b": 0.0})
    with pytest.raises(ValueError, match="equal length"):
        IsotonicCalibrator.from_dict({"kind": "isotonic", "X_thresholds": [0.1, 0.2], "y_thresholds": [0.3]})
    with pytest.raises(ValueError, match="finite"):
        PlattCalibrator.from_dict({"kind": "platt", "a": float("nan"), "b": 0.0})


def test_make_calibrator():
    assert isinstance(make_calibrator("platt"), PlattCalibrator)
    assert isinstance(make_calibrator("isotonic"), IsotonicCalibrator)
    with pytest.raises(ValueError, match=r"calibration must be one of \('platt', 'isotonic'\), got 'x'"):
        make_calibrator("x")


# ---------------------------------------------------------------------------------------- threshold

# Sorted by descending p: 0.6 (1), 0.5 (1), 0.4 (0), 0.3 (1), 0.2 (0), 0.1 (0); 3 deaths, 3 survivors.
#   t    TP flagged  Se   PPV  min(Se,PPV)  Youden J = Se + (3 - FP)/3 - 1
#   0.6  1  1        1/3  1    1/3          1/3
#   0.5  2  2        2/3  1    2/3          2/3
#   0.4  2  3        2/3  2/3  2/3          1/3
#   0.3  3  4        1    3/4  3/4  <- max  2/3
#   0.2  3  5        1    3/5  3/5          1/3
#   0.1  3  6        1    1/2  1/2          0
Y6 = [0, 0, 1, 0, 1, 1]
P6 = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_choose_threshold_min_se_ppv_hand_worked():
    t = choose_threshold(Y6, P6)
    assert t == 0.3
    assert binary_metrics(Y6, P6, t)["min_se_ppv"] == pytest.approx(0.75)
    shuffle = [3, 0, 5, 2, 4, 1]
    assert choose_threshold(np.take(Y6, shuffle), np.take(P6, shuffle)) == 0.3


def test_choose_threshold_youden_tie_goes_to_highest_threshold():
    # J = 2/3 at both 0.5 and 0.3: the higher threshold (fewer alerts) wins.
    assert choose_threshold(Y6, P6, rule="youden") == 0.5


def test_choose_threshold_flags_ties_together():
    # 0.8 flags one stay: min(1/2, 1) = 1/2. 0.4 flags all three tied stays: min(2/2, 2/4) = 1/2, and the
    # tie goes to 0.8. Splitting the tie after its first (dead) stay would wrongly score 1.0 at 0.4.
    y = [1, 1, 0, 0, 0]
    p = [0.8, 0.4, 0.4, 0.4, 0.1]
    assert choose_threshold(y, p) == 0.8
    assert binary_metrics(y, p, 0.4)["min_se_ppv"] == pytest.approx(0.5)


def test_choose_threshold_is_the_brute_force_optimum():
    rng = np.random.default_rng(7)
    p = np.round(rng.random(300), 2)
    y = (rng.random(300) < p).astype(int)
    best = max(binary_metrics(y, p, t)["min_se_ppv"] for t in np.unique(p))
    assert binary_metrics(y, p, choose_threshold(y, p))["min_se_ppv"] == pytest.approx(best)


@pytest.mark.parametrize("seed", [0, 15])
def test_choose_threshold_youden_is_the_brute_force_optimum_with_ties_to_the_highest(seed):
    # 30 deaths, 30 survivors, scores on a 0.1 grid: J ties at its maximum (seed 0: at 0.4, 0.5 and 0.6;
    # seed 15: at 0.4 and 0.8), and a float argmax of tpr - fpr picks 0.5 and 0.4 there (last-bit noise).
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], 30))
    p = np.round(np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.3, 60), 0, 1), 1)
    # J * 30 * 30 in whole numbers, so ties are exact; the highest threshold among the best wins.
    scaled = {t: 30 * (((p >= t) & (y == 1)).sum() - ((p >= t) & (y == 0)).sum()) for t in np.unique(p)}
    best = max(scaled.values())
    assert choose_threshold(y, p, rule="youden") == max(t for t, j in scaled.items() if j == best)
    assert choose_threshold(y, p, rule="youden") == {0: 0.6, 15: 0.8}[seed]


@pytest.mark.parametrize("rule", ["min_se_ppv", "youden"])
def test_choose_threshold_never_flags_nothing(rule):
    # All scores equal: flagging everyone (J = 0, min(Se, PPV) = 1/3) ties with flagging nobody (J = 0),
    # and the highest threshold would be "above every score"; it must not be chosen.
    assert choose_threshold([0, 1, 0], [0.5, 0.5, 0.5], rule=rule) == 0.5


def test_choose_threshold_validates():
    with pytest.raises(ValueError, match=r"rule must be one of \('min_se_ppv', 'youden'\), got 'f1'"):
        choose_threshold(Y6, P6, rule="f1")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        choose_threshold([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only 0/1 labels"):
        choose_threshold([0, 1, -1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        choose_threshold([0, 1, 0], [0.1, 2.0, 0.3])
