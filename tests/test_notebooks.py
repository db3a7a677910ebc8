"""The analyst notebooks in ``notebooks/`` run top to bottom on the bundled sample, and are committed clean.

Each notebook runs in its own ``python3`` kernel (jupyter_client starts a kernelspec whose command is
``python`` with the interpreter running the tests, i.e. the venv's), from a fresh working directory, with
``MLFLOW_TRACKING_URI`` unset (each notebook makes its own temporary MLflow store, so they can run in any
order or in parallel), ``SAVE_FIGURES`` unset (nothing is written to ``docs/``) and ``TMPDIR`` inside the
test's tmp_path (the temporary stores go away with it). After the last cell the test runs a few checks on the
notebook's own variables. Each notebook's wall time is printed (``pytest -s``) and recorded as a property.
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import nbclient  # dev extra, with nbformat and ipykernel (the python3 kernel)
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# Checks appended as a last cell: they read the variables the notebook defined.
CHECKS = {
    "01_cohort_and_data_quality.ipynb": """
assert report.n_stays_read == 500 and report.n_stays_kept + report.rejects.height == report.n_stays_read
assert set(table.columns) >= {"rule", "action", "variable", "rows"} and len(table) > 0
assert missing.shape == (len(series), 48) and 0 <= missing.min() and missing.max() <= 1
assert intervals.height > 0 and (intervals["median_h"] > 0).all()
assert sorted(by_icu["ICUType"].to_list()) == [1, 2, 3, 4] and by_icu["stays"].sum() == 500
assert stay.height > 0 and STAY in died.to_list()
""",
    "02_train_and_compare_runs.ipynb": """
assert len(runs) == 3 and runs["status"].eq("FINISHED").all()
assert runs["metrics.validation_auprc"].is_monotonic_decreasing
assert (runs["metrics.auroc_lower"] <= runs["metrics.auroc"]).all()
assert (runs["metrics.auroc"] <= runs["metrics.auroc_upper"]).all()
assert str(champion.version) == best["tags.registry.version"]
assert str(STORE) in os.environ["MLFLOW_TRACKING_URI"]
""",
    "03_explain_a_patient.ipynb": """
assert model.metadata["source"]["uri"] == "models:/clinical-lstm@champion"
assert str(WORK) in os.environ["MLFLOW_TRACKING_URI"]
assert trajectory.height == int(tensors.lengths[0]) and trajectory["risk"].is_between(0, 1).all()
assert abs(base + explanation["contribution"].sum() - output) < 1e-3
assert attribution.shape == (int(tensors.lengths[0]), len(series))
assert many["stay_id"].n_unique() == 100
assert set(table["hour"].to_list()) == {6.0, 12.0, 24.0, 36.0, 48.0}
assert {"masked LSTM + summaries", "summaries-only stack", "masked LSTM"} <= set(table["model"].to_list())
""",
}
# What a notebook may import from the package: the top-level public API and these documented submodules.
PUBLIC_SUBMODULES = {"clinical_lstm.explain.plots", "clinical_lstm.tracking.runs"}


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_every_notebook_has_a_check():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip the outputs"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_uses_only_the_public_api(name):
    import clinical_lstm

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for source in _code(nb):
        for node in ast.walk(ast.parse(source)):
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)), \
                f"{name} defines {node.name}: library logic belongs in clinical_lstm"
            if isinstance(node, ast.ImportFrom) and node.module == "clinical_lstm":
                private = {a.name for a in node.names} - set(clinical_lstm.__all__)
                assert not private, f"{name} imports {private}, not in clinical_lstm.__all__"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clinical_lstm."):
                assert node.module in PUBLIC_SUBMODULES, f"{name} imports from {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "clinical_lstm" or not alias.name.startswith("clinical_lstm."), \
                        f"{name} imports {alias.name}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_runs(name, tmp_path, monkeypatch, record_property):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SAVE_FIGURES", "FIGURES_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    work = tmp_path / "cwd"
    work.mkdir()
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    same_python = f"import sys\nassert sys.prefix == {sys.prefix!r}, f'kernel runs {{sys.executable}}'\n"
    nb.cells.append(nbformat.v4.new_code_cell(same_python + CHECKS[name]))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails
    seconds = time.perf_counter() - t0
    record_property("seconds", round(seconds, 1))
    print(f"{name}: {seconds:.1f} s")

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} drew no figure"
    assert not any(work.iterdir()), f"{name} wrote into its working directory: {list(work.iterdir())}"
