"""clinical-lstm: in-hospital mortality risk from irregular ICU time series.

Public API (heavy parts load on first use, so ``import clinical_lstm`` stays fast)::

    from clinical_lstm import load_model, load_data, Catalogue, GridTransformer, Config
    m = load_model("model/")            # a bundle directory
    m.predict(long_df)                  # -> stay_id, risk, flag
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "load_model": "clinical_lstm.bundle",
    "RiskModel": "clinical_lstm.bundle",
    "load_data": "clinical_lstm.sources",
    "DataError": "clinical_lstm.sources",
    "Catalogue": "clinical_lstm.catalogue",
    "validate": "clinical_lstm.validate",
    "QualityReport": "clinical_lstm.validate",
    "GridTransformer": "clinical_lstm.impute",
    "Config": "clinical_lstm.config",
    "train": "clinical_lstm.workflow",
    "prepare": "clinical_lstm.workflow",
    "evaluate": "clinical_lstm.workflow",
    "bundled_sample": "clinical_lstm.sample",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module = import_module(_LAZY[name])
        return getattr(module, "load" if name == "load_data" else name)
    raise AttributeError(f"module 'clinical_lstm' has no attribute {name!r}")
