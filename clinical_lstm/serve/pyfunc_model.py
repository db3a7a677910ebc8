"""The MLflow pyfunc for a clinical-lstm bundle, logged as "models from code" (no pickled objects).

``predict`` takes the raw long table (``stay_id, time, variable, value``: the same input as
``clinical-lstm score``) and returns one row per stay, with a missing value always ``pd.NA`` (JSON ``null``):

==================  =======================  ========================================================
column              pandas dtype             null when
==================  =======================  ========================================================
``stay_id``         ``Int64`` or ``string``  never; integer or text, as the input gave it
``risk``            ``Float64``              the stay was rejected (a calibrated probability in [0, 1])
``flag``            ``boolean``              the stay was rejected (risk at or above the threshold)
``reason``          ``string``               the stay was scored (why a rejected stay has no risk)
``n_observations``  ``Int64``                the stay was rejected (observations the model used)
``quality_flags``   ``string``               the stay was rejected (``;``-joined, ``""`` if none)
==================  =======================  ========================================================

Why nullable dtypes: ``mlflow models serve`` answers with ``json.dump({"predictions":
frame.to_dict(orient="records")})`` (``mlflow.pyfunc.scoring_server.predictions_to_json``, Python's default
``allow_nan=True``). ``to_dict`` turns ``pd.NA`` into ``None`` (pandas >= 2.0), written as ``null``, but leaves
a float ``NaN`` (float64 columns, an integer column with a gap, pandas 3's default ``str`` dtype) as ``NaN``,
which is not JSON and makes strict parsers (``JSON.parse``, Java and .NET) reject the whole answer. So every
column leaves here in a dtype whose missing value is ``pd.NA``, and a non-finite float becomes ``pd.NA`` too.
The signature (:func:`clinical_lstm.tracking.pyfunc.signature`) records the same types and which columns may be null.
Its input columns are ``Any`` and optional, so the input is checked by the bundle's own reader, as ``score``'s
is, whose errors name a column or a row number and never quote the rows (MLflow's enforcement error would).
"""

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model


def nullable_frame(table) -> pd.DataFrame:
    """A polars table as pandas with one nullable (``pd.NA``-missing) dtype per column, as in the table above.

    NaN and ±inf in float columns become null: strict JSON has no such numbers.
    """
    import polars as pl

    def dtype(d):
        if d.is_float():
            return "Float64"
        if d.is_integer():
            return "Int64"
        return {pl.Boolean: "boolean", pl.String: "string"}.get(d, "object")

    floats = [c for c, d in table.schema.items() if d.is_float()]
    table = table.with_columns(pl.when(pl.col(c).is_finite()).then(pl.col(c)).alias(c) for c in floats)
    return table.to_pandas().astype({c: dtype(d) for c, d in table.schema.items()})


class ClinicalLSTMPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from clinical_lstm import RiskModel  # the public name: this file is copied into every logged model


        self.model = RiskModel.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # the frame as given goes to the model's own reader (``bundle.as_raw``), the one every path uses: it turns
        # an object column of ids (ints and text mixed, UUIDs) into text, and its errors name the column, never
        # a row (the signature lets everything through to it; see ``tracking.signature``)
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return nullable_frame(self.model.score_table(frame)[0])


set_model(ClinicalLSTMPyfunc())
