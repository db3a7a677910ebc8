"""Tests for clinical_lstm.data.grid: irregular events -> fixed bins, worked out by hand on tiny stays."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.grid import Grid, n_bins, to_grid

NAN = np.nan

# Series channels in order: HR (mean), Urine (sum), Lac (last). Statics in order: Age, Wt.
CATALOGUE_CSV = """name,unit,lower,upper,aggregation,kind,static,description
Age,years,0,120,last,static,true,age at admission
HR,bpm,1,300,mean,vital,false,heart rate
Urine,mL,0,5000,sum,vital,false,urine output
Lac,mmol/L,0.1,40,last,lab,false,lactate
Wt,kg,20,300,mean,vital,true,weight; the time-0 value is also static
"""
HR, URINE, LAC, WT = 0, 1, 2, 3
AGE_S, WT_S = 0, 1


@pytest.fixture
def cat() -> Catalogue:
    return Catalogue.from_csv_text(CATALOGUE_CSV, source="test catalogue")


def long(rows) -> pl.DataFrame:
    """(stay_id, time, variable, value) tuples -> the cleaned long-table format, rows kept in given order."""
    return pl.DataFrame(
        {"stay_id": [r[0] for r in rows], "time": [float(r[1]) for r in rows],
         "variable": [r[2] for r in rows], "value": [float(r[3]) for r in rows]},
        schema={"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64},
    )


def test_catalogue_channel_order(cat):
    assert cat.series == ["HR", "Urine", "Lac", "Wt"]
    assert cat.statics == ["Age", "Wt"]


# -- n_bins ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("window", "res", "expected"), [(48, 1, 48), (4, 0.5, 8), (24, 0.25, 96), (3, 3, 1)])
def test_n_bins_whole_multiples(window, res, expected):
    assert n_bins(window, res) == expected


@pytest.mark.parametrize(("window", "res"), [(5, 2), (4, 1.5), (48, 0.7)])
def test_n_bins_rejects_window_not_multiple_of_resolution(window, res):
    with pytest.raises(ValueError, match=r"must be a whole multiple of resolution_hours"):
        n_bins(window, res)


@pytest.mark.parametrize(("window", "res"), [(0, 1), (4, 0), (4, -1), (-4, 1)])
def test_n_bins_rejects_non_positive(window, res):
    with pytest.raises(ValueError, match=r"window_hours and resolution_hours must be positive"):
        n_bins(window, res)


def test_to_grid_rejects_window_not_multiple_of_resolution(cat):
    clean = long([(1, 0.5, "HR", 80)])
    with pytest.raises(ValueError, match=r"window_hours \(5\) must be a whole multiple of resolution_hours \(2\)"):
        to_grid(clean, [1], cat, window_hours=5.0, resolution_hours=2.0)


# -- bin assignment -------------------------------------------------------------------------------------


def test_bin_assignment_one_hour(cat):
    # window 4 h, 1 h bins: [0,1) [1,2) [2,3) [3,4]; 4.0 (the window end) goes to the last bin.
    clean = long([
        (1, 0.0, "HR", 10), (1, 0.999, "HR", 20),  # bin 0
        (1, 1.0, "HR", 30),  # bin 1 (left edge belongs to the bin)
        (1, 2.999, "HR", 40),  # bin 2
        (1, 3.0, "Lac", 1.5), (1, 4.0, "Urine", 7),  # bin 3, the second at exactly the window end
    ])
    g = to_grid(clean, [1], cat, window_hours=4, resolution_hours=1)
    assert isinstance(g, Grid)
    assert g.values.shape == (1, 4, 4)
    assert g.values.dtype == np.float32 and g.obs_time.dtype == np.float32
    np.testing.assert_array_equal(g.values[0, :, HR], [15, 30, 40, NAN])
    np.testing.assert_array_equal(g.values[0, :, LAC], [NAN, NAN, NAN, 1.5])
    np.testing.assert_array_equal(g.values[0, :, URINE], [NAN, NAN, NAN, 7])
    np.testing.assert_array_equal(g.values[0, :, WT], [NAN] * 4)
    np.testing.assert_array_equal(g.bin_end_hours, [1, 2, 3, 4])
    assert g.resolution_hours == 1.0
    assert g.lengths.tolist() == [4]


def test_bin_assignment_half_hour(cat):
    # window 2 h, 0.5 h bins: [0,.5) [.5,1) [1,1.5) [1.5,2]
    clean = long([
        (1, 0.25, "HR", 60),  # bin 0
        (1, 0.5, "HR", 70),  # bin 1
        (1, 0.75, "HR", 90),  # bin 1 -> mean 80
        (1, 1.49, "Lac", 2.0),  # bin 2
        (1, 1.5, "Urine", 5), (1, 2.0, "Urine", 10),  # bin 3: 1.5 and the window end -> sum 15
    ])
    g = to_grid(clean, [1], cat, window_hours=2, resolution_hours=0.5)
    assert g.values.shape == (1, 4, 4)
    np.testing.assert_array_equal(g.values[0, :, HR], [60, 80, NAN, NAN])
    np.testing.assert_array_equal(g.values[0, :, LAC], [NAN, NAN, 2.0, NAN])
    np.testing.assert_array_equal(g.values[0, :, URINE], [NAN, NAN, NAN, 15])
    np.testing.assert_array_equal(g.obs_time[0, :, HR], [0.25, 0.75, NAN, NAN])
    np.testing.assert_allclose(g.obs_time[0, :, LAC], [NAN, NAN, 1.49, NAN], rtol=1e-6)
    np.testing.assert_array_equal(g.obs_time[0, :, URINE], [NAN, NAN, NAN, 2.0])
    np.testing.assert_array_equal(g.bin_end_hours, [0.5, 1.0, 1.5, 2.0])
    assert g.resolution_hours == 0.5
    assert g.lengths.tolist() == [4]


# -- aggregation ----------------------------------------------------------------------------------------


def test_per_bin_aggregation_with_rows_out_of_time_order(cat):
    # All in bin 1 of a 3 h window; rows deliberately listed out of time order.
    clean = long([
        (1, 1.9, "Lac", 3.0), (1, 1.1, "Lac", 9.0), (1, 1.5, "Lac", 6.0),  # last by time: 3.0 at 1.9 h
        (1, 1.8, "HR", 100), (1, 1.2, "HR", 70), (1, 1.4, "HR", 85),  # mean: 85
        (1, 1.6, "Urine", 40), (1, 1.05, "Urine", 25), (1, 1.3, "Urine", 35),  # sum: 100
        (1, 1.7, "Wt", 80), (1, 1.1, "Wt", 84),  # mean: 82
    ])
    g = to_grid(clean, [1], cat, window_hours=3, resolution_hours=1)
    np.testing.assert_array_equal(g.values[0, 1], [85, 100, 3.0, 82])
    assert np.isnan(g.values[0, [0, 2]]).all()
    # obs_time: the latest observation inside the bin, whatever the row order
    np.testing.assert_allclose(g.obs_time[0, 1], [1.8, 1.6, 1.9, 1.7], rtol=1e-6)
    assert np.isnan(g.obs_time[0, [0, 2]]).all()


def test_last_aggregation_when_latest_row_comes_first(cat):
    # The latest observation is the first row and the earliest is the last row: 'last' must follow time.
    clean = long([(1, 0.8, "Lac", 1.2), (1, 0.5, "Lac", 4.4), (1, 0.1, "Lac", 7.7)])
    g = to_grid(clean, [1], cat, window_hours=2, resolution_hours=1)
    assert g.values[0, 0, LAC] == np.float32(1.2)
    assert g.obs_time[0, 0, LAC] == np.float32(0.8)


def test_aggregation_is_per_bin_not_per_stay(cat):
    clean = long([
        (1, 0.2, "Urine", 10), (1, 0.4, "Urine", 20),  # bin 0 -> 30
        (1, 1.2, "Urine", 5),  # bin 1 -> 5
        (1, 2.9, "Urine", 1), (1, 2.1, "Urine", 2),  # bin 2 -> 3
        (1, 0.3, "Lac", 2.0), (1, 1.7, "Lac", 8.0), (1, 1.3, "Lac", 4.0),  # bin 0 -> 2, bin 1 -> 8
    ])
    g = to_grid(clean, [1], cat, window_hours=3, resolution_hours=1)
    np.testing.assert_array_equal(g.values[0, :, URINE], [30, 5, 3])
    np.testing.assert_array_equal(g.values[0, :, LAC], [2.0, 8.0, NAN])
    np.testing.assert_allclose(g.obs_time[0, :, URINE], [0.4, 1.2, 2.9], rtol=1e-6)
    np.testing.assert_allclose(g.obs_time[0, :, LAC], [0.3, 1.7, NAN], rtol=1e-6)


def test_max_and_min_aggregations():
    cat = Catalogue.from_csv_text(
        "name,unit,lower,upper,aggregation,kind,static,description\n"
        "Hi,u,0,100,max,vital,false,\nLo,u,0,100,min,vital,false,\n")
    clean = long([(1, 0.1, "Hi", 3), (1, 0.9, "Hi", 1), (1, 0.5, "Hi", 8),
                  (1, 0.1, "Lo", 3), (1, 0.9, "Lo", 6), (1, 0.5, "Lo", 2)])
    g = to_grid(clean, [1], cat, window_hours=1, resolution_hours=1)
    np.testing.assert_array_equal(g.values[0, 0], [8, 2])
    np.testing.assert_allclose(g.obs_time[0, 0], [0.9, 0.9], rtol=1e-6)


# -- stays, lengths, statics ----------------------------------------------------------------------------


def test_rows_follow_stay_ids_order_and_other_stays_are_ignored(cat):
    clean = long([
        (10, 0.5, "HR", 50), (20, 1.5, "HR", 60), (30, 0.5, "HR", 999),  # 30 is not asked for
        (20, 0.5, "Pulse", 1.0),  # not in the catalogue: ignored
    ])
    g = to_grid(clean, [20, 10], cat, window_hours=2, resolution_hours=1)
    assert g.stay_ids.tolist() == [20, 10]
    assert g.stay_ids.dtype == np.int64
    np.testing.assert_array_equal(g.values[0, :, HR], [NAN, 60])
    np.testing.assert_array_equal(g.values[1, :, HR], [50, NAN])
    assert g.lengths.tolist() == [2, 1]
    assert np.isnan(g.values[:, :, [URINE, LAC, WT]]).all()


def test_lengths(cat):
    clean = long([
        (1, 0.0, "HR", 80), (1, 2.5, "Lac", 1.0),  # last series bin 2 -> 3
        (2, 0.0, "HR", 80),  # only time 0 -> 1
        (3, 6.0, "Urine", 5),  # exactly the window end -> last bin -> 6
        (4, 0.0, "Age", 70), (4, 1.2, "Wt", 70),  # a static-only descriptor does not count; Wt at 1.2 h does -> 2
        (5, 0.0, "Age", 50), (5, 4.5, "Age", 50),  # no series observation at all -> 1
        (6, 5.99, "HR", 1),  # bin 5 -> 6
    ])
    g = to_grid(clean, [1, 2, 3, 4, 5, 6, 7], cat, window_hours=6, resolution_hours=1)  # 7: no rows
    assert g.lengths.tolist() == [3, 1, 6, 2, 1, 6, 1]
    assert g.lengths.dtype == np.int64
    assert np.isnan(g.values[4]).all() and np.isnan(g.values[6]).all()
    assert np.isnan(g.obs_time[6]).all()
    np.testing.assert_array_equal(g.statics[6], [NAN, NAN])


def test_lengths_half_hour(cat):
    clean = long([(1, 1.2, "HR", 80), (2, 0.49, "HR", 80), (3, 0.5, "HR", 80)])
    g = to_grid(clean, [1, 2, 3], cat, window_hours=3, resolution_hours=0.5)
    # 1.2 h -> bin 2 -> 3 bins; 0.49 -> bin 0 -> 1; 0.5 -> bin 1 -> 2
    assert g.lengths.tolist() == [3, 1, 2]


def test_statics_are_the_time_zero_values(cat):
    clean = long([
        (1, 0.0, "Age", 67), (1, 0.0, "Wt", 81.5), (1, 3.0, "Wt", 79), (1, 0.0, "HR", 90),
        (2, 0.0, "HR", 70), (2, 0.5, "Wt", 60), (2, 0.5, "Age", 44),  # no time-0 Age or Wt -> missing
        (3, 0.0, "Age", 90),
    ])
    g = to_grid(clean, [1, 2, 3], cat, window_hours=4, resolution_hours=1)
    assert g.statics.shape == (3, 2) and g.statics.dtype == np.float32
    np.testing.assert_array_equal(g.statics, [[67, 81.5], [NAN, NAN], [90, NAN]])
    # Wt is also a series: its time-0 value is in bin 0, the later one in bin 3
    np.testing.assert_array_equal(g.values[0, :, WT], [81.5, NAN, NAN, 79])
    np.testing.assert_array_equal(g.values[1, :, WT], [60, NAN, NAN, NAN])


def test_no_statics_in_catalogue():
    cat = Catalogue.from_csv_text("name,unit,lower,upper,aggregation,kind,static,description\n"
                                  "A,u,0,10,mean,vital,false,\n")
    g = to_grid(long([(1, 0.0, "A", 1)]), [1, 2], cat, window_hours=2, resolution_hours=1)
    assert g.statics.shape == (2, 0)
    np.testing.assert_array_equal(g.values[:, :, 0], [[1, NAN], [NAN, NAN]])


def test_observation_on_a_bin_edge_with_one_minute_bins(cat):
    # PhysioNet times are HH:MM; with one-minute bins every minute is its own bin: 02:02 -> 122, 02:03 -> 123.
    clean = long([(1, 122 / 60, "HR", 70), (1, 123 / 60, "HR", 80)])
    g = to_grid(clean, [1], cat, window_hours=4, resolution_hours=1 / 60)
    assert g.values.shape == (1, 240, 4)
    assert np.flatnonzero(~np.isnan(g.values[0, :, HR])).tolist() == [122, 123]
    assert g.values[0, 123, HR] == 80


def test_observations_on_bin_edges_with_quarter_hour_bins(cat):
    # 0.25 h is exact in binary: every HH:MM on a 15-minute boundary starts its own bin.
    clean = long([(1, m / 60, "HR", m) for m in (15, 30, 45, 60, 75)])
    g = to_grid(clean, [1], cat, window_hours=2, resolution_hours=0.25)
    np.testing.assert_array_equal(g.values[0, :, HR], [NAN, 15, 30, 45, 60, 75, NAN, NAN])


def test_simultaneous_time_zero_statics_combine_like_a_bin(cat):
    """Several time-0 rows of a static combine by its aggregation, in value order: ``last`` (Age) takes the
    larger value, ``mean`` (Wt) averages; the file's row order never matters."""
    rows = [(1, 0.0, "HR", 80), (1, 0.0, "Age", 50), (1, 0.0, "Age", 60), (1, 0.0, "Wt", 70), (1, 0.0, "Wt", 90)]
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        g = to_grid(long([rows[i] for i in order]), [1], cat, window_hours=2, resolution_hours=1)
        np.testing.assert_array_equal(g.statics[0], [60, 80])
        assert g.values[0, 0, WT] == 80  # the bin-0 value of the series Wt agrees with its static


def test_a_grid_of_too_many_bins_is_refused_on_every_path():
    """The bins bound is one rule (config.grid_bins): the config, to_grid and the transformer all refuse it before
    allocating anything (48 h in 1e-6 h bins is 48 million bins per stay)."""
    from clinical_lstm.config import DataConfig
    from clinical_lstm.features.impute import GridTransformer

    for make in (lambda: DataConfig(resolution_hours=1e-6),
                 lambda: GridTransformer(Catalogue.default(), 48.0, 1e-6).n_bins,  # checked at fit (sklearn)
                 lambda: n_bins(48.0, 1e-6)):
        with pytest.raises(ValueError, match="48,000,000 bins per stay, more than the 10,000 allowed"):
            make()
