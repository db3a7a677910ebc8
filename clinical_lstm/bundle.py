"""Kept for models already logged to MLflow: their copied pyfunc code (``pyfunc_model.py`` before the modules moved
into stage subpackages on 2026-12-07) imports ``RiskModel`` from ``clinical_lstm.bundle``. New code uses
``clinical_lstm.RiskModel`` / ``clinical_lstm.load_model`` (:mod:`clinical_lstm.serve.bundle`).
"""

from .serve.bundle import RiskModel, load_model  # noqa: F401
