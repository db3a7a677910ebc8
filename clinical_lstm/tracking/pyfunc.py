"""A bundle as an MLflow pyfunc: "models from code" (``clinical_lstm/serve/pyfunc_model.py``, no pickle) with the bundle
directory as its only artifact, its signature (every input column ``Any``, checked by the package's own reader) and a
synthetic input example (no patient rows reach MLflow).
"""

from __future__ import annotations

from pathlib import Path


def pyfunc_spec(bundle_dir: str | Path, catalogue) -> dict:
    """How a bundle becomes an MLflow pyfunc: "models from code" (``pyfunc_model.py``, no pickle) with the bundle
    directory as its only artifact, the signature and a synthetic input example."""
    return {"python_model": str(Path(__file__).parents[1] / "serve" / "pyfunc_model.py"),
            "artifacts": {"bundle": str(bundle_dir)}, "signature": signature(),
            "input_example": synthetic_example(catalogue), "pip_requirements": pip_requirements()}


def signature():
    """Input: the raw long table. Output: one row per stay (:data:`clinical_lstm.serve.bundle.SCORES`).

    Every input column is ``Any`` and optional: the package's own reader (:func:`clinical_lstm.serve.bundle.as_raw`,
    the rules of ``clinical_lstm/data/validate.py``) checks the table, as it does for files. It accepts what MLflow's
    strict types would refuse (integer or text ids, ``HH:MM`` text or timedelta times, text values counted as
    ``unparseable_value``), and it names a missing column or a bad type without quoting rows: MLflow's own
    enforcement error prints the input frame, stay ids and values, into the message that ``mlflow models serve``
    logs and answers. The columns hold: ``stay_id`` integer or text; ``time`` hours since ICU admission (a
    number, ``HH:MM`` text or a timedelta); ``variable`` a catalogue name; ``value`` a number.

    ``required=False`` marks the output columns that can be null (JSON ``null`` when served, never ``NaN``; see
    ``pyfunc_model.py``): a rejected stay has a null ``risk``, ``flag``, ``n_observations`` and
    ``quality_flags``, a scored stay a null ``reason``. The output ``stay_id`` comes back as given.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    from ..data.sources import LONG_COLUMNS

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), name, required=False) for name in LONG_COLUMNS]),
        outputs=Schema([ColSpec(AnyType(), "stay_id"),
                        ColSpec("double", "risk", required=False),  # calibrated probability in [0, 1]
                        ColSpec("boolean", "flag", required=False),  # risk >= the bundle's threshold
                        ColSpec("string", "reason", required=False),  # why a rejected stay has no risk
                        ColSpec("long", "n_observations", required=False),
                        ColSpec("string", "quality_flags", required=False)]))  # ";"-joined, "" when none


def synthetic_example(catalogue, n_stays: int = 2):
    """A made-up long table (pandas) for signatures and docs: plausible mid-range values, never real rows."""
    import pandas as pd

    rows = []
    for sid in range(1, n_stays + 1):
        for v in catalogue.variables:
            mid = (v.lower + v.upper) / 2 if v.unit != "category" else v.lower
            if v.static:
                rows.append((sid, 0.0, v.name, float(mid)))
            if v.is_series and v.kind == "vital":
                rows += [(sid, t, v.name, float(mid)) for t in (0.5, 1.5 + sid)]
    return pd.DataFrame(rows, columns=["stay_id", "time", "variable", "value"])


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    names = ("torch", "polars", "pandas", "numpy", "scikit-learn", "safetensors", "pyarrow", "mlflow")
    return [f"clinical-lstm=={version('clinical-lstm')}"] + [f"{n}=={version(n)}" for n in names]
