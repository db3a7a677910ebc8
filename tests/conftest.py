"""Shared fixtures: deterministic seeds for every test, and a factory for tiny PhysioNet-layout sets.

Test modules that need synthetic data outside a fixture can import the plain functions directly:
``from helpers import write_physionet_set, raw_data``.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from helpers import write_physionet_set

try:  # torch is a dependency, but keep the seeding fixture usable without it
    import torch
except ImportError:  # pragma: no cover
    torch = None

SEED = 0


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed ``random``, numpy's global generator and torch before every test."""
    random.seed(SEED)
    np.random.seed(SEED)  # noqa: NPY002 - seeds the legacy global generator some code still uses
    if torch is not None:
        torch.manual_seed(SEED)
    yield


@pytest.fixture
def physionet_set(tmp_path):
    """Factory writing a PhysioNet 2012 set into its own fresh folder under ``tmp_path``.

    ``physionet_set(stays, **kwargs)`` takes the arguments of :func:`helpers.write_physionet_set` (minus
    ``root``) and returns the set folder, or with ``archive=True`` the ``set-<name>.tar.gz``;
    ``Outcomes-<name>.txt`` lies beside it. Each call writes into a new directory, so a test can build
    several sets (e.g. the same stays as a folder and as an archive).
    """
    counter = itertools.count()

    def make(stays, **kwargs):
        root = tmp_path / f"physionet-{next(counter)}"
        return write_physionet_set(root, stays, **kwargs)

    return make


# --- the `slow` marker --------------------------------------------------------------------------------------------
# `pytest -m "not slow"` is the quick loop (under 3 minutes on 2 CPU cores); a plain `pytest` (what CI runs) still
# runs everything: the marker only labels, it deselects nothing by default. Tests are chosen here by module file and
# test name, never by timing at run time, so the quick set is the same on every machine. A test its module already
# marks slow (test_serving.py, test_ui.py, test_notebooks.py's notebook runs) keeps that marker. Names are checked
# against their modules at collection, so a renamed test cannot silently drop out of the slow set.

# Every test in these modules.
SLOW_MODULES = {
    "test_spark.py": "a local[2] Spark session (a JVM) started for the module",
    "test_server.py": "runs mlflow/server.sh or `clinical-lstm ui` (an `mlflow server`) as subprocesses",
    "test_serving.py": "`mlflow models serve` and fresh Python processes (the module marks itself slow too)",
    "test_ui.py": "trains two runs with the CLI, serves them and drives headless Chromium (marks itself slow too)",
    "test_tracking.py": "its `store` fixture trains into an MLflow SQLite store (~90 s on 2 cores), a further test "
                        "trains again (~75 s), three tests run the CLI as a subprocess",
}

# These tests (by function name: every parametrization of a named test) in these modules; the comment says why.
SLOW_TESTS = {
    # The CLI end to end in subprocesses (`python -m clinical_lstm.cli`, pipelines/*.py); the `trained` fixture
    # trains on the bundled sample (~2 min). Only test_every_toml_the_repo_ships_loads (no subprocess) stays quick.
    "test_cli.py": {
        "test_train_writes_bundle_and_report_apart_and_prints_comparison",
        "test_score_accounts_for_every_stay",
        "test_score_csv_output",
        "test_evaluate_writes_metrics_and_plots",
        "test_evaluate_on_part_of_the_training_stays_counts_them_without_keeping_their_ids",
        "test_prepare_writes_grid_and_report",
        "test_prepare_does_not_import_torch",
        "test_bad_input_is_one_sentence_and_exit_2",
        "test_wrong_columns_exit_2",
        "test_train_without_labels_exit_2",
        "test_unknown_config_key_exit_2",
        "test_a_bad_config_value_fails_in_seconds_before_any_data_is_read",
        "test_pipeline_and_cli_train_are_one_job",
        "test_explain_writes_table_and_plots",
        "test_explain_checks_everything_before_writing_anything",
        "test_explain_when_no_stay_can_be_explained_is_exit_2_with_the_reasons",
        "test_test_data_that_overlaps_the_training_data_is_refused",
        "test_score_with_top_k_explanations",
        "test_score_pipeline_job_with_options_and_closing_summary",
        "test_an_output_folder_inside_an_input_folder_is_refused",
        "test_quiet_is_a_general_option_that_prints_nothing",
        "test_a_mistyped_option_shows_the_commands_usage_and_the_closest_option",
        "test_every_command_answers_dash_h_with_its_usage",
        "test_score_help_says_what_explain_costs",
        "test_ui_dash_h_with_a_value_is_refused_not_read_as_help_or_host",
    },
    # `clinical-lstm score` as a subprocess, SIGKILLed mid-job and rerun.
    "test_batch.py": {"test_sigkill_then_rerun_gives_the_uninterrupted_output"},
    # `clinical-lstm score` as a subprocess.
    "test_batch_bad_input.py": {
        "test_cli_missing_value_column_exits_2",
        "test_cli_catalogue_mismatch_exits_2",
        "test_cli_out_equal_to_data_exits_2_and_leaves_the_input_alone",
        "test_cli_real_file_size_limit_exits_2_with_one_line_and_no_stale_work_folder",
        "test_cli_option_out_of_range_exits_2_with_one_line",
    },
    # `clinical-lstm score` as a subprocess.
    "test_bundle.py": {"test_damaged_bundle_from_the_command_line_is_exit_2_and_writes_nothing"},
    # `clinical-lstm train` as a subprocess.
    "test_config_checks.py": {"test_a_huge_grid_exits_2_before_any_data_is_read"},
    # `clinical-lstm prepare/train/evaluate/score` as subprocesses, one per parametrization.
    "test_empty_inputs.py": {
        "test_an_input_without_stays_is_a_one_line_error",
        "test_an_input_without_stays_beside_a_good_one",
    },
    # The CLI's `main(["sweep", ...])` in a subprocess with an extra's imports blocked.
    "test_extras.py": {"test_a_sweep_without_its_extra_names_it"},
    # `clinical-lstm export` as a subprocess.
    "test_export.py": {
        "test_cli_export",
        "test_cli_export_never_writes_into_the_model",
        "test_failed_check_leaves_the_destination_as_it_was",
    },
    # `clinical-lstm score` as a subprocess.
    "test_hostile_sources.py": {"test_damaged_archive_is_exit_code_2_for_the_scorer"},
    # `clinical-lstm train` as a subprocess, stopped and killed mid-run.
    "test_outputs.py": {"test_a_stopped_or_killed_train_leaves_no_patient_data_behind"},
    # Runs every documented command's `--help` as a subprocess, and the README's commands in a fresh shell.
    "test_readme.py": {
        "test_every_documented_clinical_lstm_command_and_option_exists",
        "test_the_readme_commands_run_as_written_from_a_fresh_shell",
    },
    # `clinical-lstm score` as a subprocess.
    "test_trust_inputs.py": {
        "test_score_refuses_a_decompression_bomb_with_exit_code_2_and_one_line",
        "test_score_refuses_a_list_column_with_exit_code_2_and_one_line",
    },
    # Spark: scoring through a local Spark session (a JVM).
    "test_parity.py": {"test_spark_udf_path", "test_text_ids_on_spark"},
    # Executes each notebook in a Jupyter kernel (~2 min each); already marked slow in the module. The static checks
    # on the committed notebooks (no outputs, public API only) take well under a second and stay quick.
    "test_notebooks.py": {"test_notebook_runs"},
    # `clinical-lstm sweep` workers as subprocesses, one killed mid-trial; the others train whole Optuna studies
    # in-process (10-25 s each on 2 cores).
    "test_sweep.py": {
        "test_two_workers_share_one_study_and_one_parent_run",
        "test_a_sweep_killed_mid_trial_resumes_to_the_study_it_would_have_given",
        "test_a_trial_whose_worker_stopped_beating_is_failed_and_not_counted",
        "test_sweep_runs_nested_children_under_a_parent",
        "test_median_pruner_stops_a_clearly_bad_trial_early",
    },
    # For time only (in-process, no subprocess): the `trained` fixture trains 25 epochs on a planted cohort
    # (~30 s on 2 cores) and the tests using it explain with permutation Shapley (~10-15 s each); the exact-Shapley
    # comparison with shap enumerates every coalition (~40 s over its three cases).
    "test_explain.py": {
        "test_efficiency_base_plus_contributions_equals_model_logit",
        "test_a_stays_values_do_not_depend_on_the_stays_explained_with_it",
        "test_explain_and_predicts_top_contributions_agree",
        "test_planted_variable_ranks_first_for_positive_stays",
        "test_deleting_the_top_variable_moves_risk_more_than_a_random_one",
        "test_explain_table_columns_and_ranks",
        "test_time_map_sums_to_the_logit_difference_and_plot_is_written",
        "test_values_agree_with_shap_exact_over_the_same_grouped_masker",
    },
}


def pytest_collection_modifyitems(config, items):
    """Add ``pytest.mark.slow`` to the tests named in SLOW_MODULES and SLOW_TESTS (see above)."""
    here = config.rootpath / "tests"
    gone = sorted(name for name in {*SLOW_MODULES, *SLOW_TESTS} if not (here / name).exists())
    if gone and (here / "conftest.py").exists():
        raise pytest.UsageError(f"tests/conftest.py marks slow tests in modules that do not exist: {gone}")
    checked = set()
    for item in items:
        module = item.path.name
        names = SLOW_TESTS.get(module, ())
        if module not in checked and getattr(item, "module", None) is not None:
            checked.add(module)
            missing = sorted(name for name in names if not hasattr(item.module, name))
            if missing:
                raise pytest.UsageError(f"tests/conftest.py SLOW_TESTS names tests {module} does not have: {missing}")
        if (module in SLOW_MODULES or getattr(item, "originalname", item.name) in names) \
                and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
