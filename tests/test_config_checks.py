"""Tests for clinical_lstm.config's up-front checks that the audit found missing: the size of the grid (F12)
and empty text where a name or a path is required (F13). Each is a one-line ValueError naming the key, raised
when the config is built, before any data are read."""

from __future__ import annotations

import dataclasses
import re

import pytest
from helpers import run_cli

from clinical_lstm import config
from clinical_lstm.config import Config, DataConfig, JobConfig, Section, load


# -- F12: the grid of one stay is bounded ---------------------------------------------------------------
@pytest.mark.parametrize("window, resolution, bins", [
    (1e9, 1.0, "1,000,000,000"), (48.0, 1e-6, "48,000,000"), (48.0 * 60, 1 / 60, "172,800")])
def test_too_many_bins_is_refused_with_the_keys_and_the_bound(window, resolution, bins):
    expected = (f"[data] window_hours / resolution_hours = {window:g} / {resolution:g} = {bins} bins per "
                f"stay, more than the 10,000 allowed")
    with pytest.raises(ValueError, match=re.escape(expected)):
        DataConfig(window_hours=window, resolution_hours=resolution)


def test_the_bound_itself_and_a_month_at_five_minutes_are_allowed():
    assert DataConfig(window_hours=config.MAX_BINS, resolution_hours=1.0).n_bins == config.MAX_BINS == 10_000
    assert DataConfig(window_hours=30 * 24, resolution_hours=5 / 60).n_bins == 8640
    assert DataConfig().n_bins == 48


def test_too_many_bins_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("[data]\nwindow_hours = 1e9\n")
    expected = f"{path}: [data] window_hours / resolution_hours = 1e+09 / 1 = 1,000,000,000 bins"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load(path)


def test_stay_size_counts_the_catalogue_series():
    month = DataConfig(window_hours=30 * 24, resolution_hours=5 / 60)  # 8,640 bins
    month.check_stay_size(37)  # the default catalogue: 8,640 * 37 * 20 bytes = 6.1 MiB
    expected = (f"[data] window_hours / resolution_hours = 8,640 bins of the 100 time-series variables of "
                f"my.csv take 16.5 MiB per stay, more than the {config.MAX_STAY_MIB} MiB allowed")
    with pytest.raises(ValueError, match=re.escape(expected)):
        month.check_stay_size(100, "my.csv")


def test_a_huge_grid_exits_2_before_any_data_is_read(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[data]\nresolution_hours = 1e-6\n")
    argv = ["prepare", "--data", "sample", "--out", str(tmp_path / "p"), "--config", str(cfg)]
    res = run_cli(*argv, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "48,000,000 bins per stay, more than the 10,000 allowed" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "p").exists()


# -- F13: no text setting may be empty ------------------------------------------------------------------
@pytest.mark.parametrize("key", ["experiment", "registered_model"])
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_tracking_names_are_refused(key, value):
    expected = f"config: [tracking] {key} must be non-empty text; got {value!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        Config.from_dict({"tracking": {key: value}})
    with pytest.raises(ValueError, match=re.escape(f"overrides: [tracking] {key} must be non-empty text")):
        Config().replace({f"tracking.{key}": value})


def test_empty_experiment_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[tracking]\nexperiment = ""\n')
    expected = f"{path}: [tracking] experiment must be non-empty text; got ''"
    with pytest.raises(ValueError, match=re.escape(expected)):
        load(path)


def _text_keys(section_cls):
    return [name for name, rule in section_cls.constraints.items() if isinstance(rule, config.Text)]


SECTIONS = [f.default_factory for f in dataclasses.fields(Config)] + [JobConfig]


def test_every_text_key_is_declared_and_none_may_be_empty():
    """Every str field of every section is checked as non-empty text (a name or a path): the full list."""
    declared = {s.section: _text_keys(s) for s in SECTIONS}
    assert declared == {"data": ["catalogue"], "model": [], "train": [], "calibration": [], "evaluation": [],
                        "tracking": ["experiment", "registered_model"],
                        "job": ["out", "labels", "outcomes", "test_labels", "model", "catalogue"]}
    for section_cls in SECTIONS:
        assert issubclass(section_cls, Section)
        for key in _text_keys(section_cls):
            expected = f"[{section_cls.section}] {key} must be non-empty text; got ''"
            with pytest.raises(ValueError, match=re.escape(expected)):
                section_cls(**{key: ""})
        # text fields not under Text are choices (a fixed list, so "" is refused there too)
        for f in dataclasses.fields(section_cls):
            if f.type in ("str", "str | None") and f.name not in _text_keys(section_cls):
                expected = f"[{section_cls.section}] {f.name} must be one of"
                with pytest.raises(ValueError, match=re.escape(expected)):
                    section_cls(**{f.name: ""})


@pytest.mark.parametrize("key", ["data", "test"])
def test_empty_paths_in_job_lists_are_refused(key):
    expected = f"[job] {key} must be a list of paths (non-empty text); got ''"
    with pytest.raises(ValueError, match=re.escape(expected)):
        JobConfig(**{key: ["a.csv", ""]})


def test_empty_catalogue_path_is_refused_not_read_as_the_current_folder():
    with pytest.raises(ValueError, match=re.escape("[data] catalogue must be non-empty text; got ''")):
        DataConfig(catalogue="")
    assert DataConfig(catalogue=None).catalogue is None  # left out = the default catalogue
