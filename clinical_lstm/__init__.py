"""clinical-lstm: in-hospital mortality risk from irregular ICU time series.

Public API (heavy parts load on first use, so ``import clinical_lstm`` stays fast)::

    from clinical_lstm import load_model, load_data, Catalogue, GridTransformer, Config
    m = load_model("model/")            # a bundle directory
    m.predict(long_df)                  # -> stay_id, risk, flag, reason, n_observations, quality_flags
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {  # public name -> (module, attribute)
    "load_model": ("clinical_lstm.serve.bundle", "load_model"),
    "RiskModel": ("clinical_lstm.serve.bundle", "RiskModel"),
    "load_data": ("clinical_lstm.data.load", "load"),
    "DataError": ("clinical_lstm.checks", "DataError"),
    "Catalogue": ("clinical_lstm.data.catalogue", "Catalogue"),
    "QualityReport": ("clinical_lstm.data.validate", "QualityReport"),
    "GridTransformer": ("clinical_lstm.features.impute", "GridTransformer"),
    "Config": ("clinical_lstm.config", "Config"),
    "train": ("clinical_lstm.workflow", "train"),
    "prepare": ("clinical_lstm.workflow", "prepare"),
    "evaluate": ("clinical_lstm.jobs", "evaluate"),
    "score_batch": ("clinical_lstm.serve.batch", "score_batch"),
    "score_spark": ("clinical_lstm.serve.spark", "score_spark"),
    "synthetic_cohort": ("clinical_lstm.data.synthetic", "synthetic_cohort"),
    "run_sweep": ("clinical_lstm.sweep.run", "run_sweep"),
    "Tracker": ("clinical_lstm.tracking.runs", "Tracker"),
    "StayStream": ("clinical_lstm.serve.stream", "StayStream"),
    "bundled_sample": ("clinical_lstm.data.sample", "bundled_sample"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(import_module(module), attr)
    raise AttributeError(f"module 'clinical_lstm' has no attribute {name!r}")
