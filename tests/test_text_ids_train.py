"""End to end: a hospital export whose stay ids are text (encounter ids) trains, and the report names them."""

from __future__ import annotations

import polars as pl
import pytest

from clinical_lstm.config import Config
from clinical_lstm.data.synthetic import synthetic_cohort, synthetic_labels
from clinical_lstm.workflow import train

TINY = {"train": {"folds": 2, "epochs": 1, "patience": 1, "batch_size": 16, "device": "cpu"},
        "model": {"hidden_size": 8}, "evaluation": {"n_boot": 20, "explain_stays": 0}}


def encounter_ids(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.format("ENC-{}-ZQ", pl.col("stay_id").cast(pl.String).str.zfill(6)).alias("stay_id"))


@pytest.mark.filterwarnings("ignore:evaluate:UserWarning")  # 7 deaths: intervals flagged, as intended
def test_train_with_text_stay_ids(tmp_path):
    long = synthetic_cohort(40, seed=1)
    labels = synthetic_labels(long, seed=1)
    encounter_ids(long).write_csv(tmp_path / "enc.csv")
    encounter_ids(labels).write_csv(tmp_path / "enc_labels.csv")
    result = train(tmp_path / "enc.csv", tmp_path / "run", tmp_path / "enc_labels.csv",
                   config=Config.from_dict(TINY), progress=False, log=lambda *_: None)
    oof = pl.read_parquet(result.report_dir / "out_of_fold.parquet")
    assert oof.schema["stay_id"] == pl.String
    want = encounter_ids(labels).sort("stay_id")
    assert oof.sort("stay_id")["stay_id"].to_list() == want["stay_id"].to_list()  # every stay, by its own id
    assert oof.sort("stay_id")["label"].to_list() == want["label"].to_list()
    assert oof["risk"].is_between(0.0, 1.0).all()
    assert {"logistic regression", "gradient boosting"} <= set(result.evaluation.metrics)
