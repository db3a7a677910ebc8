"""The MLflow pyfunc for a clinical-lstm bundle, logged as "models from code" (no pickled objects).

``predict`` takes the raw long table (``stay_id, time, variable, value``: the same input as
``clinical-lstm score``) and returns one row per stay: ``stay_id, risk, flag, reason``.
"""

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


class ClinicalLSTMPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from clinical_lstm.bundle import RiskModel

        self.model = RiskModel.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        import polars as pl

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.model.predict(pl.from_pandas(frame)).to_pandas()


set_model(ClinicalLSTMPyfunc())
