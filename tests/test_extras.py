"""Optional features need their extra: without it, the feature says which ``pip install 'clinical-lstm[...]'`` to
run, in the CLI's one-line error (a subprocess with the package blocked), and the core install imports cleanly."""

import subprocess
import sys
import textwrap

import pytest

# a module set to None in sys.modules cannot be imported: the package behaves as if it were not installed
BLOCK = "import sys\nfor m in {mods!r}: sys.modules[m] = None\n"


def _run(code: str, mods: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK.format(mods=mods) + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_the_core_imports_every_module_without_the_extras():
    r = _run("""
        import importlib, pkgutil, clinical_lstm
        for m in pkgutil.walk_packages(clinical_lstm.__path__, "clinical_lstm."):
            if not m.name.endswith("pyfunc_model"):  # MLflow's models-from-code file, loaded by MLflow only
                importlib.import_module(m.name)
        print("imported")
    """, ("optuna", "pyspark", "onnx", "onnxruntime", "sqlalchemy", "playwright"))
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr


@pytest.mark.parametrize("blocked", [("optuna",), ("sqlalchemy",)])
def test_a_sweep_without_its_extra_names_it(tmp_path, blocked):
    config = tmp_path / "sweep.toml"
    config.write_text(f'[sweep]\ndata = ["sample"]\nout = "{tmp_path / "out"}"\nn_trials = 1\n'
                      '[sweep.grid]\n"train.lr" = [0.001]\n')
    r = _run(f"""
        from clinical_lstm.cli import main
        raise SystemExit(main(["sweep", "--config", {str(config)!r}]))
    """, blocked)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"'{blocked[0]}'" in r.stderr and "pip install 'clinical-lstm[sweep]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is made


def test_spark_and_onnx_without_their_extras_name_them(tmp_path):
    r = _run(f"""
        from clinical_lstm.checks import MissingDependency
        from clinical_lstm.serve import export, spark
        try:
            spark._require_pyspark()
        except MissingDependency as e:
            print("spark:", e)
        try:
            export.export_onnx(None, {str(tmp_path / "m.onnx")!r})
        except MissingDependency as e:
            print("onnx:", e)
    """, ("pyspark", "onnx", "onnxruntime"))
    assert "spark: " in r.stdout and "clinical-lstm[spark]" in r.stdout, (r.stdout, r.stderr)
    assert "onnx: " in r.stdout and "clinical-lstm[onnx]" in r.stdout, (r.stdout, r.stderr)
