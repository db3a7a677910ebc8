"""Tests for clinical_lstm.features.impute.GridTransformer: mask, real elapsed hours, imputation, scaling learnt from
training stays only, statics, padding, the scikit-learn contract and JSON persistence.

Every expected number is worked out by hand in the comments next to it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.grid import to_grid
from clinical_lstm.features.impute import (
    IMPUTATIONS,
    Carry,
    GridTransformer,
    NotFittedError,
    Tensors,
    carry_forward,
)

CATALOGUE_CSV = """name,unit,lower,upper,aggregation,kind,static,description
Age,years,0,120,last,static,true,
Unit,category,1,3,last,static,true,care unit 1..3
A,u,-100,1000,mean,vital,false,
B,u,-100,1000,sum,lab,false,
"""
A, B = 0, 1
TRAIN = [1, 2]


@pytest.fixture
def cat() -> Catalogue:
    return Catalogue.from_csv_text(CATALOGUE_CSV, source="test catalogue")


def long(rows) -> pl.DataFrame:
    return pl.DataFrame(
        {"stay_id": [r[0] for r in rows], "time": [float(r[1]) for r in rows],
         "variable": [r[2] for r in rows], "value": [float(r[3]) for r in rows]},
        schema={"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64},
    )


# Training stays 1 and 2 (window 4 h, 1 h bins), one observation per bin at t + 0.5 h.
#   A over all observed training bins: 2 4 4 4 5 5 7 9 -> mean 5, population sd 2, median 4.5
#     skew = mean((x-5)^3)/8 = (-27-1-1-1+0+0+8+64)/8/8 = 0.66 <= 2 -> no log
#     median_ = (4.5 - 5) / 2 = -0.25
#   B: 1 2 3 4 1 2 3 4 -> mean 2.5, sd sqrt(1.25), median 2.5 -> median_ = 0
#   Age: 40, 80 -> center (median) 60, scale (sd) 20.  Unit is a category with levels 1, 2, 3.
TRAIN_ROWS = [
    (1, 0.0, "Age", 40), (1, 0.0, "Unit", 2),
    (1, 0.5, "A", 2), (1, 1.5, "A", 4), (1, 2.5, "A", 4), (1, 3.5, "A", 4),
    (1, 0.5, "B", 1), (1, 1.5, "B", 2), (1, 2.5, "B", 3), (1, 3.5, "B", 4),
    (2, 0.0, "Age", 80), (2, 0.0, "Unit", 3),
    (2, 0.5, "A", 5), (2, 1.5, "A", 5), (2, 2.5, "A", 7), (2, 3.5, "A", 9),
    (2, 0.5, "B", 4), (2, 1.5, "B", 3), (2, 2.5, "B", 2), (2, 3.5, "B", 1),
]
A_CENTER, A_SCALE, A_MEDIAN = 5.0, 2.0, -0.25
B_CENTER, B_SCALE, B_MEDIAN = 2.5, math.sqrt(1.25), 0.0

# Stays to transform (never used for fitting).
TEST_ROWS = [
    # stay 3: A once at 1.25 h (bin 1), B at 3.0 h (bin 3) -> length 4; Age 70, Unit 1
    (3, 0.0, "Age", 70), (3, 0.0, "Unit", 1), (3, 1.25, "A", 9), (3, 3.0, "B", 4),
    # stay 4: A once at 0.25 h -> length 1, the other 3 bins are padding; no statics
    (4, 0.25, "A", 3),
    # stay 5: A at 0.25 h and 2.5 h, B at 3.9 h -> length 4; Age 200 (clipped), Unit 3
    (5, 0.0, "Age", 200), (5, 0.0, "Unit", 3), (5, 0.25, "A", 7), (5, 2.5, "A", 1), (5, 3.9, "B", 2),
    # stay 6: never any A; B at 0.5 h and 3.5 h -> length 4
    (6, 0.5, "B", 1), (6, 3.5, "B", 1),
]
TEST = [3, 4, 5, 6]


@pytest.fixture
def clean() -> pl.DataFrame:
    return long(TRAIN_ROWS + TEST_ROWS)


def fitted(cat, clean, imputation="ffill_median", window=4.0, res=1.0) -> GridTransformer:
    return GridTransformer(cat, window_hours=window, resolution_hours=res, imputation=imputation).fit(clean, TRAIN)


# -- fitted state ---------------------------------------------------------------------------------------


def test_fit_returns_self_and_learns_hand_computed_state(cat, clean):
    gt = GridTransformer(cat, window_hours=4, resolution_hours=1)
    assert gt.fit(clean, TRAIN) is gt
    assert gt.log_.tolist() == [False, False]
    np.testing.assert_allclose(gt.center_, [A_CENTER, B_CENTER], rtol=1e-12)
    np.testing.assert_allclose(gt.scale_, [A_SCALE, B_SCALE], rtol=1e-12)
    np.testing.assert_allclose(gt.median_, [A_MEDIAN, B_MEDIAN], atol=1e-12)
    np.testing.assert_allclose(gt.static_center_, [60, 0], rtol=1e-12)  # Unit is one-hot: untouched
    np.testing.assert_allclose(gt.static_scale_, [20, 1], rtol=1e-12)
    assert gt.static_levels_ == {"Unit": [1, 2, 3]}
    assert gt.static_features_ == ["Age", "Age_missing", "Unit=1", "Unit=2", "Unit=3"]
    assert gt.n_static_features == 5
    assert gt.n_bins == 4


def test_statistics_come_from_training_stays_only(cat, clean):
    on_all_rows = fitted(cat, clean)
    on_train_rows = fitted(cat, long(TRAIN_ROWS))
    # the other stays carry wildly different values: multiplying them changes nothing
    wild = long(TRAIN_ROWS + [(s, t, v, x * 1000 + 500) for s, t, v, x in TEST_ROWS])
    on_wild_rows = fitted(cat, wild)
    for gt in (on_all_rows, on_train_rows, on_wild_rows):
        np.testing.assert_allclose(gt.center_, [A_CENTER, B_CENTER], rtol=1e-12)
        np.testing.assert_allclose(gt.scale_, [A_SCALE, B_SCALE], rtol=1e-12)
    assert on_all_rows.to_dict() == on_train_rows.to_dict() == on_wild_rows.to_dict()


def test_fitting_on_other_stays_gives_their_statistics(cat, clean):
    # Fitting on stays 3..6 instead: A observed in bins = 9, 3, 7, 1 -> mean 5, sd sqrt(10)
    gt = GridTransformer(cat, window_hours=4, resolution_hours=1).fit(clean, TEST)
    assert gt.center_[A] == pytest.approx(5.0)
    assert gt.scale_[A] == pytest.approx(math.sqrt((16 + 4 + 4 + 16) / 4))
    # B bins: 4, 2, 1, 1 -> mean 2
    assert gt.center_[B] == pytest.approx(2.0)


def test_log_transform_chosen_for_skewed_non_negative_variable_only():
    cat = Catalogue.from_csv_text(
        "name,unit,lower,upper,aggregation,kind,static,description\n"
        "Skew,u,-10,1000,mean,lab,false,\nSym,u,-10,1000,mean,lab,false,\n"
        "NegSkew,u,-10,1000,mean,lab,false,\nOnce,u,-10,1000,mean,lab,false,\n"
        "Flat,u,-10,1000,mean,lab,false,\n")
    # One stay, 10 bins. Skew: nine 1s and one 100. A two-point variable with P(high) = p has skewness
    # (1 - 2p) / sqrt(p (1 - p)) = 0.8 / 0.3 = 2.67 > 2 -> log1p.
    # Sym: 1..10, skewness 0 -> no log. NegSkew: nine -1s and one 99: same skewness but negative -> no log.
    skew = [1.0] * 9 + [100.0]
    sym = [float(i) for i in range(1, 11)]
    neg = [-1.0] * 9 + [99.0]
    rows = []
    for t in range(10):
        rows += [(1, t + 0.5, "Skew", skew[t]), (1, t + 0.5, "Sym", sym[t]), (1, t + 0.5, "NegSkew", neg[t]),
                 (1, t + 0.5, "Flat", 7.0)]
    rows.append((1, 4.5, "Once", 42.0))
    clean = long(rows)
    gt = GridTransformer(cat, window_hours=10, resolution_hours=1).fit(clean, [1])
    assert gt.log_.tolist() == [True, False, False, False, False]

    # Skew after log1p: nine ln 2 and one ln 101 -> mean 0.9 ln2 + 0.1 ln101, sd 0.3 (ln101 - ln2),
    # median ln2 -> (ln2 - mean) / sd = -0.1 (ln101 - ln2) / (0.3 (ln101 - ln2)) = -1/3
    assert gt.center_[0] == pytest.approx(0.9 * math.log(2) + 0.1 * math.log(101), rel=1e-12)
    assert gt.scale_[0] == pytest.approx(0.3 * math.log(101 / 2), rel=1e-12)
    assert gt.median_[0] == pytest.approx(-1 / 3, rel=1e-12)
    # Sym: mean 5.5, sd sqrt((10^2 - 1) / 12), median 5.5 -> 0
    assert (gt.center_[1], gt.scale_[1]) == pytest.approx((5.5, math.sqrt(99 / 12)), rel=1e-12)
    assert gt.median_[1] == pytest.approx(0, abs=1e-12)
    # NegSkew: mean (-9 + 99) / 10 = 9, sd 100 * 0.3 = 30, median -1 -> -10/30
    assert (gt.center_[2], gt.scale_[2], gt.median_[2]) == pytest.approx((9, 30, -1 / 3), rel=1e-12)
    # Once (a single observation): identity scaling; Flat (constant): sd 0 -> scale 1
    assert (gt.center_[3], gt.scale_[3], gt.median_[3]) == (0.0, 1.0, 0.0)
    assert (gt.center_[4], gt.scale_[4], gt.median_[4]) == pytest.approx((7, 1, 0), abs=1e-12)

    out = gt.transform(clean, [1])
    # Skew: 1 -> (ln2 - mean)/sd = -1/3 ; 100 -> 0.9 (ln101 - ln2) / (0.3 ln(101/2)) = 3
    np.testing.assert_allclose(out.x[0, :, 0], [-1 / 3] * 9 + [3], rtol=1e-5)
    # NegSkew, no log: -1 -> -1/3, 99 -> (99 - 9)/30 = 3
    np.testing.assert_allclose(out.x[0, :, 2], [-1 / 3] * 9 + [3], rtol=1e-5)
    # Once: identity -> 42 at bin 4 carried forward; before: median 0
    np.testing.assert_allclose(out.x[0, :, 3], [0, 0, 0, 0, 42, 42, 42, 42, 42, 42])


# -- mask and elapsed time -------------------------------------------------------------------------------


def test_mask_is_exactly_the_observed_bins(cat, clean):
    out = fitted(cat, clean).transform(clean, TEST)
    assert out.mask.dtype == np.float32
    expected = np.zeros((4, 4, 2), np.float32)
    expected[0, 1, A] = expected[0, 3, B] = 1  # stay 3
    expected[1, 0, A] = 1  # stay 4
    expected[2, 0, A] = expected[2, 2, A] = expected[2, 3, B] = 1  # stay 5
    expected[3, 0, B] = expected[3, 3, B] = 1  # stay 6
    np.testing.assert_array_equal(out.mask, expected)


def test_delta_is_real_elapsed_hours(cat, clean):
    out = fitted(cat, clean).transform(clean, TEST)
    assert out.delta.dtype == np.float32
    d3, d5, d6 = out.delta[0], out.delta[2], out.delta[3]
    # bin ends are 1, 2, 3, 4 h.
    # stay 5, A seen at 0.25 h and 2.5 h: 1-0.25, 2-0.25, 3-2.5, 4-2.5
    np.testing.assert_allclose(d5[:, A], [0.75, 1.75, 0.5, 1.5], atol=1e-6)
    # stay 5, B first seen at 3.9 h: never seen before -> hours since admission; then 4 - 3.9
    np.testing.assert_allclose(d5[:, B], [1, 2, 3, 0.1], atol=1e-6)
    # stay 3, A seen at 1.25 h: 1 (not seen yet), 2-1.25, 3-1.25, 4-1.25; B seen at 3.0 h
    np.testing.assert_allclose(d3[:, A], [1, 0.75, 1.75, 2.75], atol=1e-6)
    np.testing.assert_allclose(d3[:, B], [1, 2, 3, 1], atol=1e-6)
    # stay 6: A never observed -> bin ends; B at 0.5 and 3.5 h
    np.testing.assert_allclose(d6[:, A], [1, 2, 3, 4], atol=1e-6)
    np.testing.assert_allclose(d6[:, B], [0.5, 1.5, 2.5, 0.5], atol=1e-6)


def test_delta_uses_the_last_observation_time_in_the_bin(cat):
    clean = long(TRAIN_ROWS + [(7, 0.1, "A", 5), (7, 0.7, "A", 5), (7, 0.4, "A", 5), (7, 1.5, "B", 1)])
    out = GridTransformer(cat, window_hours=4, resolution_hours=1).fit(clean, TRAIN).transform(clean, [7])
    # last A observation in bin 0 is at 0.7 h: 1-0.7, then 2-0.7; length 2 (B in bin 1)
    np.testing.assert_allclose(out.delta[0, :2, A], [0.3, 1.3], atol=1e-6)
    assert out.lengths.tolist() == [2]


def test_delta_half_hour_bins(cat):
    clean = long(TRAIN_ROWS + [(8, 0.25, "A", 5), (8, 1.9, "B", 2)])
    gt = GridTransformer(cat, window_hours=2, resolution_hours=0.5).fit(clean, TRAIN)
    out = gt.transform(clean, [8])
    # bin ends 0.5, 1, 1.5, 2 h; A seen at 0.25 h; B first seen at 1.9 h (bin 3)
    np.testing.assert_allclose(out.delta[0, :, A], [0.25, 0.75, 1.25, 1.75], atol=1e-6)
    np.testing.assert_allclose(out.delta[0, :, B], [0.5, 1.0, 1.5, 0.1], atol=1e-6)
    np.testing.assert_array_equal(out.mask[0, :, A], [1, 0, 0, 0])
    assert out.x.shape == (1, 4, 2)


# -- imputation ------------------------------------------------------------------------------------------

# Hand-computed standardized A/B values for stays 3, 5, 6 (each of length 4), per strategy.
#   stay 3: A=9 at bin 1 -> (9-5)/2 = 2 ; B=4 at bin 3 -> (4-2.5)/sqrt(1.25)
#   stay 5: A=7 at bin 0 -> 1, A=1 at bin 2 -> -2 ; B=2 at bin 3 -> -0.5/sqrt(1.25)
#   stay 6: A never -> always the fill ; B=1 at bins 0 and 3 -> -1.5/sqrt(1.25)
ZB4, ZB2, ZB1 = 1.5 / math.sqrt(1.25), -0.5 / math.sqrt(1.25), -1.5 / math.sqrt(1.25)
EXPECTED = {
    "ffill_median": {
        3: ([-0.25, 2, 2, 2], [0, 0, 0, ZB4]),
        5: ([1, 1, -2, -2], [0, 0, 0, ZB2]),
        6: ([-0.25] * 4, [ZB1, ZB1, ZB1, ZB1]),
    },
    "median": {
        3: ([-0.25, 2, -0.25, -0.25], [0, 0, 0, ZB4]),
        5: ([1, -0.25, -2, -0.25], [0, 0, 0, ZB2]),
        6: ([-0.25] * 4, [ZB1, 0, 0, ZB1]),
    },
    "zero": {
        3: ([0, 2, 0, 0], [0, 0, 0, ZB4]),
        5: ([1, 0, -2, 0], [0, 0, 0, ZB2]),
        6: ([0] * 4, [ZB1, 0, 0, ZB1]),
    },
}


@pytest.mark.parametrize("imputation", IMPUTATIONS)
def test_imputation_strategies_hand_computed(cat, clean, imputation):
    assert set(EXPECTED) == set(IMPUTATIONS)
    out = fitted(cat, clean, imputation).transform(clean, [3, 5, 6])
    assert out.x.dtype == np.float32
    for i, stay in enumerate([3, 5, 6]):
        exp_a, exp_b = EXPECTED[imputation][stay]
        np.testing.assert_allclose(out.x[i, :, A], exp_a, atol=1e-6, err_msg=f"stay {stay} A")
        np.testing.assert_allclose(out.x[i, :, B], exp_b, atol=1e-6, err_msg=f"stay {stay} B")


@pytest.mark.parametrize("order", [[5, 6], [6, 5]])
def test_forward_fill_never_crosses_stays(cat, clean, order):
    # stay 5 ends with A = -2 (standardized); stay 6 never sees A -> the training median (-0.25) everywhere,
    # with elapsed time = hours since admission, whatever the order of the stays.
    out = fitted(cat, clean).transform(clean, order)
    i6 = order.index(6)
    np.testing.assert_allclose(out.x[i6, :, A], [-0.25] * 4, atol=1e-6)
    np.testing.assert_allclose(out.delta[i6, :, A], [1, 2, 3, 4], atol=1e-6)
    i5 = order.index(5)
    np.testing.assert_allclose(out.x[i5, :, A], [1, 1, -2, -2], atol=1e-6)


def test_forward_fill_never_crosses_variables(cat):
    # A observed in bin 0 only, B observed in bin 2 only: B's bins 0-1 get B's median (0), not A's value.
    clean = long(TRAIN_ROWS + [(9, 0.5, "A", 9), (9, 2.5, "B", 4)])
    out = GridTransformer(cat, window_hours=4, resolution_hours=1).fit(clean, TRAIN).transform(clean, [9])
    np.testing.assert_allclose(out.x[0, :3, B], [0, 0, ZB4], atol=1e-6)
    np.testing.assert_allclose(out.x[0, :3, A], [2, 2, 2], atol=1e-6)


def test_carry_forward_by_hand():
    arr = np.array([[[0, np.nan], [np.nan, np.nan], [np.nan, 5]],
                    [[np.nan, np.nan], [8, np.nan], [np.nan, np.nan]]], dtype=np.float32)  # (2, 3, 2)
    out = carry_forward(arr.copy())
    np.testing.assert_array_equal(out[:, :, 0], [[0, 0, 0], [np.nan, 8, 8]])
    np.testing.assert_array_equal(out[:, :, 1], [[np.nan, np.nan, 5], [np.nan, np.nan, np.nan]])


def test_carry_forward_equals_a_gather_of_the_last_observed_index():
    rng = np.random.default_rng(0)
    arr = np.where(rng.random((50, 48, 7)) < 0.2, rng.normal(size=(50, 48, 7)), np.nan).astype(np.float32)
    idx = np.where(~np.isnan(arr), np.arange(48)[None, :, None], -1)
    np.maximum.accumulate(idx, axis=1, out=idx)
    want = np.take_along_axis(arr, np.maximum(idx, 0), axis=1)
    want[idx < 0] = np.nan
    np.testing.assert_array_equal(carry_forward(arr.copy()), want)


def test_steps_in_pieces_equal_steps_at_once(cat, clean):
    """The stream calls ``steps`` on a few bins at a time with the carried state; the grid calls it once."""
    tr = fitted(cat, clean)
    g = tr.grid(clean, [3, 5, 6])
    N, T, V = g.values.shape
    whole = tr.steps(g.values, g.obs_time, g.bin_end_hours, Carry.empty(N, V))
    carry, parts = Carry.empty(N, V), []
    for a, b in ((0, 1), (1, 3), (3, T)):
        *out, carry = tr.steps(g.values[:, a:b], g.obs_time[:, a:b], g.bin_end_hours[a:b], carry)
        parts.append(out)
    for k in range(3):
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts], axis=1), whole[k])
    for got, want in zip(carry.fields(), whole[3].fields(), strict=True):  # running statistics too, bit for bit
        np.testing.assert_array_equal(got, want)


def test_running_statistics_by_hand(cat, clean):
    """Stay 5's A: bins 0 and 2 observed (standardized 1 and -2); the track after each bin."""
    tr = fitted(cat, clean)
    g = tr.grid(clean, [5])
    *_, track = tr.steps(g.values, g.obs_time, g.bin_end_hours, Carry.empty(1, 2), per_step=True)
    np.testing.assert_allclose(track.count[0, :, A], [1, 1, 2, 2])
    np.testing.assert_allclose(track.first[0, :, A], [1, 1, 1, 1])
    np.testing.assert_allclose(track.low[0, :, A], [1, 1, -2, -2])
    np.testing.assert_allclose(track.high[0, :, A], [1, 1, 1, 1])
    np.testing.assert_allclose(track.total[0, :, A], [1, 1, -1, -1])
    np.testing.assert_allclose(track.value[0, :, A], [1, 1, -2, -2])


# -- padding ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("imputation", IMPUTATIONS)
def test_padding_positions_are_zero(cat, clean, imputation):
    out = fitted(cat, clean, imputation).transform(clean, [4, 3])
    assert out.lengths.tolist() == [1, 4]
    assert out.lengths.dtype == np.int64
    # stay 4: A=3 at 0.25 h -> (3-5)/2 = -1 in bin 0, delta 0.75; B not seen -> its median 0, delta 1
    np.testing.assert_allclose(out.x[0, 0], [-1, 0], atol=1e-6)
    np.testing.assert_allclose(out.delta[0, 0], [0.75, 1], atol=1e-6)
    # bins 1..3 are padding: zero in x, delta and mask (even where the fill value would be -1 or -0.25)
    np.testing.assert_array_equal(out.x[0, 1:], np.zeros((3, 2)))
    np.testing.assert_array_equal(out.delta[0, 1:], np.zeros((3, 2)))
    np.testing.assert_array_equal(out.mask[0, 1:], np.zeros((3, 2)))
    # stay 3 has no padding: its last bin is not zeroed
    assert out.delta[1, 3, A] == pytest.approx(2.75, abs=1e-6)


# -- statics ---------------------------------------------------------------------------------------------


def test_statics_one_hot_for_categories_standardized_with_missing_indicator_otherwise(cat, clean):
    out = fitted(cat, clean).transform(clean, [3, 4, 5])
    assert out.statics.dtype == np.float32
    # columns: Age, Age_missing, Unit=1, Unit=2, Unit=3 ; Age centered on the training median 60, sd 20
    expected = [
        [0.5, 0, 1, 0, 0],  # stay 3: (70-60)/20, Unit 1
        [0.0, 1, 0, 0, 0],  # stay 4: nothing at time 0 -> missing indicator, no level
        [5.0, 0, 0, 0, 1],  # stay 5: (200-60)/20 = 7 -> clipped to 5, Unit 3
    ]
    np.testing.assert_allclose(out.statics, expected, atol=1e-6)


def test_statics_of_training_stays(cat, clean):
    out = fitted(cat, clean).transform(clean, TRAIN)
    np.testing.assert_allclose(out.statics, [[-1, 0, 0, 1, 0], [1, 0, 0, 0, 1]], atol=1e-6)


# -- scikit-learn contract -------------------------------------------------------------------------------


def test_unfitted_transformer_raises_not_fitted(cat, clean):
    gt = GridTransformer(cat, window_hours=4, resolution_hours=1)
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit\("):
        gt.transform(clean, TEST)
    with pytest.raises(NotFittedError, match=r"fit"):
        gt.transform_grid(gt.grid(clean, TEST))
    with pytest.raises(NotFittedError, match=r"fit"):
        gt.to_dict()
    with pytest.raises(NotFittedError, match=r"fit"):
        _ = gt.n_static_features


def test_init_only_stores_parameters(cat):
    gt = GridTransformer(cat, window_hours=6, resolution_hours=0.5, imputation="not-a-strategy")
    assert (gt.window_hours, gt.resolution_hours, gt.imputation) == (6.0, 0.5, "not-a-strategy")
    assert not hasattr(gt, "center_")


def test_bad_imputation_name_raises_on_fit(cat, clean):
    gt = GridTransformer(cat, window_hours=4, resolution_hours=1, imputation="mean")
    with pytest.raises(ValueError, match=r"The 'imputation' parameter of GridTransformer must be one of "
                                         r"\('ffill_median', 'median', 'zero'\)\. Got 'mean' instead\."):
        gt.fit(clean, TRAIN)


def test_window_not_multiple_of_resolution_raises(cat, clean):
    with pytest.raises(ValueError, match=r"must be a whole multiple of resolution_hours"):
        GridTransformer(cat, window_hours=5, resolution_hours=2).fit(clean, TRAIN)


def test_transform_grid_with_other_variable_count_raises(cat, clean):
    gt = fitted(cat, clean)
    other = Catalogue.from_csv_text("name,unit,lower,upper,aggregation,kind,static,description\n"
                                    "A,u,-100,1000,mean,vital,false,\n")
    grid = to_grid(clean, TEST, other, window_hours=4, resolution_hours=1)
    with pytest.raises(ValueError, match=r"grid has 1 variables but the transformer was fitted on 2"):
        gt.transform_grid(grid)


# -- persistence -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("imputation", IMPUTATIONS)
def test_to_dict_json_from_dict_round_trip(cat, clean, imputation):
    gt = fitted(cat, clean, imputation)
    d = json.loads(json.dumps(gt.to_dict()))
    back = GridTransformer.from_dict(d, cat)
    assert back.imputation == imputation and back.n_bins == 4
    assert back.to_dict() == gt.to_dict()
    a, b = gt.transform(clean, TEST + TRAIN), back.transform(clean, TEST + TRAIN)
    assert isinstance(b, Tensors)
    for name in ("x", "mask", "delta", "lengths", "statics", "stay_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name


def test_round_trip_with_log_transform():
    cat = Catalogue.from_csv_text("name,unit,lower,upper,aggregation,kind,static,description\n"
                                  "Skew,u,0,1000,last,lab,false,\n")
    clean = long([(1, t + 0.5, "Skew", 100.0 if t == 9 else 1.0) for t in range(10)]
                 + [(2, 0.5, "Skew", 50.0)])
    gt = GridTransformer(cat, window_hours=10, resolution_hours=1).fit(clean, [1])
    assert gt.log_.tolist() == [True]
    back = GridTransformer.from_dict(json.loads(json.dumps(gt.to_dict())), cat)
    np.testing.assert_array_equal(gt.transform(clean, [1, 2]).x, back.transform(clean, [1, 2]).x)


def test_from_dict_with_another_catalogue_raises(cat, clean):
    d = json.loads(json.dumps(fitted(cat, clean).to_dict()))
    other = Catalogue.from_csv_text("name,unit,lower,upper,aggregation,kind,static,description\n"
                                    "A,u,-100,1000,mean,vital,false,\n")
    with pytest.raises(ValueError, match=r"the transformer's variables differ from the catalogue's"):
        GridTransformer.from_dict(d, other)


def test_subset_tensors(cat, clean):
    out = fitted(cat, clean).transform(clean, TEST)
    sub = out.subset([2, 0])
    assert len(sub) == 2 and sub.stay_ids.tolist() == [5, 3]
    np.testing.assert_array_equal(sub.x, out.x[[2, 0]])


def test_last_step_statistics_equal_the_tracked_ones_bit_for_bit():
    """``advance(every_step=False)`` (batch transform: statistics only after the last bin) gives exactly the
    numbers the per-step track (the stream) ends with, from an empty state and from a mid-stay one."""
    from clinical_lstm.features.impute import Carry

    rng = np.random.default_rng(0)
    N, k, V = 40, 48, 6
    z = rng.normal(size=(N, k, V)).astype(np.float32)
    z[rng.random(z.shape) < 0.7] = np.nan
    last_time = rng.random((N, k, V)).astype(np.float32)
    mid = Carry.empty(N, V).advance(z[:, :9], last_time[:, :9]).at(-1)
    for start in (Carry.empty(N, V), mid):
        tracked, final = start.advance(z, last_time), start.advance(z, last_time, every_step=False)
        assert np.array_equal(tracked.value, final.value, equal_nan=True)
        for a, b in zip(tracked.at(-1).fields(), final.at(-1).fields(), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
        assert final.low.shape == (N, 1, V)  # one step kept, not k


def test_one_bin_at_a_time_equals_all_bins_at_once_bit_for_bit():
    """A bin advanced on its own (the stream's update: its own short path) gives exactly the state that advancing
    all bins in one call tracks, bin after bin."""
    from clinical_lstm.features.impute import Carry

    rng = np.random.default_rng(1)
    N, k, V = 30, 24, 5
    z = (rng.normal(size=(N, k, V)) * rng.choice([1e-3, 1.0, 1e3], size=(N, k, V))).astype(np.float32)
    z[rng.random(z.shape) < 0.6] = np.nan
    last_time = rng.random((N, k, V)).astype(np.float32)
    tracked = Carry.empty(N, V).advance(z, last_time)
    state = Carry.empty(N, V)
    for t in range(k):
        for every_step in (True, False):
            one = state.advance(z[:, t:t + 1], last_time[:, t:t + 1], every_step=every_step)
            for a, b in zip(one.at(-1).fields(), tracked.at(t).fields(), strict=True):
                assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
        state = one.at(-1)


def test_fitted_statistics_depend_on_the_values_not_their_order():
    """The same observed values and statics in another order (as other chunks or another input order give them)
    fit the very same transformer, to the last bit: a last-bit difference would train another model."""
    from clinical_lstm.data.catalogue import Catalogue

    cat = Catalogue.default()
    rng = np.random.default_rng(11)
    V, S = len(cat.series), len(cat.statics)
    observed = [rng.lognormal(3, 1, 5000 + 100 * v).astype(np.float32) for v in range(V)]
    statics = rng.normal(60, 15, (3000, S)).astype(np.float32)
    statics[rng.random((3000, S)) < 0.1] = np.nan
    a = GridTransformer(cat).fit_observed(observed, statics)
    shuffled = [np.concatenate([o[len(o) // 3:], o[:len(o) // 3]])[rng.permutation(len(o))] for o in observed]
    b = GridTransformer(cat).fit_observed(shuffled, statics[rng.permutation(len(statics))])
    for name in ("center_", "scale_", "median_", "log_", "static_center_", "static_scale_", "static_mean_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
