"""Tests for clinical_lstm.calibrate: Platt and isotonic calibrators, serialisation, threshold rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import log_loss

from clinical_lstm.calibrate import (
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    choose_threshold,
    make_calibrator,
)
from clinical_lstm.metrics import binary_metrics


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
