"""Models logged before the modules moved into stage subpackages still load: their copied pyfunc code imports
``clinical_lstm.bundle.RiskModel``; a real MLflow pyfunc folder written with that code loads and scores as the
current one does."""

from pathlib import Path

import mlflow
import numpy as np
from helpers import random_long, tiny_model

import clinical_lstm
from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.tracking.pyfunc import pyfunc_spec

CODE = Path(clinical_lstm.__file__).parent / "serve" / "pyfunc_model.py"
CURRENT = "from clinical_lstm import RiskModel"


def _saved(tmp_path, name: str, code: str) -> str:
    bundle = tiny_model().save(tmp_path / "bundle")
    model_file = tmp_path / f"{name}_pyfunc_model.py"
    model_file.write_text(code)
    spec = pyfunc_spec(bundle, Catalogue.from_csv(Path(bundle) / "catalogue.csv"))
    spec["python_model"] = str(model_file)
    mlflow.pyfunc.save_model(str(tmp_path / name), **spec)
    return str(tmp_path / name)


def test_a_model_logged_with_the_old_module_path_loads_and_scores_as_a_new_one(tmp_path):
    text = CODE.read_text()
    assert CURRENT in text  # the shipped code imports the public name, which no move changes
    old = text.replace(CURRENT, "from clinical_lstm.bundle import RiskModel")
    long = random_long(6, seed=3).to_pandas()
    got = mlflow.pyfunc.load_model(_saved(tmp_path, "old", old)).predict(long)
    want = mlflow.pyfunc.load_model(_saved(tmp_path, "new", text)).predict(long)
    assert len(got) == 6 and got["risk"].notna().all()
    np.testing.assert_array_equal(got["risk"].to_numpy(float), want["risk"].to_numpy(float))
