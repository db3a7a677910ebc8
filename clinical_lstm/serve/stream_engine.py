"""What the stream needs of a model, built once per model and shared by all of its streams: the catalogue's codes and
aggregations, the row rules, the bins' ends, the networks' step kernel and the model's digest.
"""

from __future__ import annotations

import numpy as np

from ..data.grid import aggregation_codes
from ..data.quality import ROW_RULES
from ..data.validate import REMOVAL_RULES, RuleTable
from ..model.network import StepKernel


class _Engine:
    """Per-model constants, built once per model and shared by all of its streams."""

    def __init__(self, model):
        tr = model.transformer
        tr._check_fitted()
        cat = tr.catalogue
        self.model, self.tr = model, tr
        self.T, self.res = tr.n_bins, float(tr.resolution_hours)
        self.window = float(tr.window_hours)
        self.V, self.S, self.n_codes = len(cat.series), len(cat.statics), len(cat)
        self.codes = {name: code for code, name in enumerate(cat.names)}
        self.series_of = np.array([cat.series.index(n) if n in cat.series else -1 for n in cat.names])
        self.static_of = np.array([cat.statics.index(n) if n in cat.statics else -1 for n in cat.names])
        self.how_series, self.how_static = aggregation_codes(cat, cat.series), aggregation_codes(cat, cat.statics)
        self.is_series = self.series_of >= 0
        self.removes = np.zeros(1 + len(ROW_RULES), bool)  # by row_rules' number: is it a REMOVAL_RULES rule?
        self.removes[[1 + ROW_RULES.index(r) for r in REMOVAL_RULES]] = True
        self.rules = RuleTable.of(cat, self.window)
        self.no_bin = np.full((1, 1, self.V), np.nan, np.float32)  # a bin without observations (copied, never written)
        self.bin_end = (np.arange(self.T, dtype=np.float32) + 1) * self.res  # as Grid.bin_end_hours
        self.kernel = StepKernel(model.networks)
        self.digest = model.digest()

    def code_of(self, names) -> np.ndarray:
        get = self.codes.get
        return np.fromiter((get(n.strip(), -1) if isinstance(n, str) else -1 for n in names), np.int64, len(names))


def engine(model) -> _Engine:
    """The model's cached :class:`_Engine` (rebuilt if its networks, transformer, calibrator, summary head or
    threshold were replaced: its digest, stamped on every state, must be the model's)."""
    key = (id(model.transformer), id(model.calibrator), tuple(id(n) for n in model.networks), id(model.head),
           float(model.threshold))
    cached = model.__dict__.get("_stream_engine")
    if cached is None or cached[0] != key:
        cached = (key, _Engine(model))
        model.__dict__["_stream_engine"] = cached
    return cached[1]
