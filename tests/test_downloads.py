"""A registered bundle brought from a real MLflow store: the job log gets no progress bar (a nightly job's log is no
terminal: MLflow's bar wrote a line per artifact into every score and explain log), and the bundle scores as saved."""

import mlflow
import numpy as np
from helpers import random_long, tiny_model

from clinical_lstm import load_model
from clinical_lstm.tracking.downloads import download_bundle


def test_a_downloaded_bundle_prints_no_progress_bar_and_scores_as_saved(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    model = tiny_model()
    bundle = model.save(tmp_path / "bundle")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("downloads")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(bundle), artifact_path="model/artifacts/bundle")
    capfd.readouterr()
    got, provenance = download_bundle(f"runs:/{run.info.run_id}/model", tmp_path / "down")
    out, err = capfd.readouterr()
    assert "Downloading artifacts" not in out + err
    assert provenance["uri"].startswith("runs:/") and (got / "bundle.json").is_file()
    long = random_long(5, seed=2)
    np.testing.assert_array_equal(load_model(got).predict(long)["risk"].to_numpy(), model.predict(long)["risk"].to_numpy())
