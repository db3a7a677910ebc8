"""The fitted grid transformer: standardized imputed values, observation mask, real elapsed hours, statics.

``GridTransformer`` follows scikit-learn's contract: ``__init__`` stores parameters, ``fit`` learns from the
training stays only and returns ``self``, learned state ends in ``_``, and using it unfitted raises
:class:`NotFittedError`. Its whole state is JSON (``to_dict`` / ``from_dict``) so it travels in the bundle.

Per series variable ``v`` the transformer learns, from observed training bins:

* ``log_``: whether values are log1p-transformed first (non-negative and right-skewed, skewness > 2,
  e.g. ALT, Lactate), so a few extreme labs do not squash everyone else to zero;
* ``center_`` / ``scale_``: mean and standard deviation after that transform;
* ``median_``: the training median in standardized units, used to fill bins before a first observation.

Elapsed time ``delta[n, t, v]`` is *hours*, from timestamps: the end of bin ``t`` minus the time of the last
observation of ``v`` at or before bin ``t`` in stay ``n``; if ``v`` has not been seen yet, the hours since
admission (the end of bin ``t``). It never carries across stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .catalogue import Catalogue, resolve
from .grid import Grid, n_bins, to_grid

IMPUTATIONS = ("ffill_median", "median", "zero")


class NotFittedError(RuntimeError):
    pass


@dataclass
class Tensors:
    """Model input for ``N`` stays: see :class:`GridTransformer` for units."""

    x: np.ndarray  # (N, T, V) float32, standardized, imputed, 0 past `lengths`
    mask: np.ndarray  # (N, T, V) float32, 1 where observed in the bin
    delta: np.ndarray  # (N, T, V) float32, hours since last observation
    lengths: np.ndarray  # (N,) int64, true number of bins
    statics: np.ndarray  # (N, S) float32, standardized statics + missing indicators + one-hots
    stay_ids: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.stay_ids)

    def subset(self, idx) -> Tensors:
        return Tensors(self.x[idx], self.mask[idx], self.delta[idx], self.lengths[idx], self.statics[idx],
                       self.stay_ids[idx])


def last_observed_index(observed: np.ndarray) -> np.ndarray:
    """(N, T, V) bool -> (N, T, V) int: index of the latest observed bin at or before t, -1 if none."""
    T = observed.shape[1]
    idx = np.where(observed, np.arange(T, dtype=np.int64)[None, :, None], -1)
    np.maximum.accumulate(idx, axis=1, out=idx)  # along time only: never crosses stays or variables
    return idx


def carry_forward(arr: np.ndarray) -> np.ndarray:
    """In place along time (axis 1): a NaN takes the value of the step before; NaN before a first observation.
    Equal to ``forward_fill(arr, last_observed_index(~isnan(arr)))``, one (N, V) slice at a time."""
    for t in range(1, arr.shape[1]):
        cur = arr[:, t]
        np.copyto(cur, arr[:, t - 1], where=np.isnan(cur))
    return arr


def forward_fill(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Carry ``arr`` forward along time using ``last_observed_index``; NaN before a first observation."""
    out = np.take_along_axis(arr, np.maximum(idx, 0), axis=1)
    out[idx < 0] = np.nan
    return out


class GridTransformer:
    """Long table -> model tensors.

    Parameters
    ----------
    catalogue : Catalogue, path or None
        Variables, ranges and aggregations; None means the default PhysioNet catalogue.
    window_hours : float, default 48.0
        Hours since admission covered by the grid.
    resolution_hours : float, default 1.0
        Bin width in hours; must divide ``window_hours``.
    imputation : {"ffill_median", "median", "zero"}, default "ffill_median"
        ``ffill_median`` carries the last observation forward and fills bins before the first observation
        with the training median; ``median`` fills every unobserved bin with the training median; ``zero``
        fills with 0 in standardized units (the training mean). The mask and elapsed time always tell the
        model which values are real.
    """

    def __init__(self, catalogue=None, window_hours: float = 48.0, resolution_hours: float = 1.0,
                 imputation: str = "ffill_median"):
        self.catalogue = resolve(catalogue)
        self.window_hours = float(window_hours)
        self.resolution_hours = float(resolution_hours)
        self.imputation = imputation

    def _check_params(self):
        if self.imputation not in IMPUTATIONS:
            raise ValueError(f"The 'imputation' parameter of GridTransformer must be one of {IMPUTATIONS}. "
                             f"Got {self.imputation!r} instead.")
        n_bins(self.window_hours, self.resolution_hours)

    def _check_fitted(self):
        if not hasattr(self, "center_"):
            raise NotFittedError("This GridTransformer is not fitted yet; call fit(clean_long, stay_ids) on "
                                 "training stays first, or load a fitted one from a model bundle.")

    @property
    def n_bins(self) -> int:
        return n_bins(self.window_hours, self.resolution_hours)

    def grid(self, clean: pl.DataFrame, stay_ids) -> Grid:
        return to_grid(clean, stay_ids, self.catalogue, self.window_hours, self.resolution_hours)

    # -- fitting --------------------------------------------------------------------------------------
    def fit(self, clean: pl.DataFrame, stay_ids) -> GridTransformer:
        """Learn scaling and fill values from the training stays ``stay_ids`` only."""
        return self.fit_grid(self.grid(clean, stay_ids))

    def fit_grid(self, grid: Grid) -> GridTransformer:
        self._check_params()
        V = grid.values.shape[2]
        self.log_ = np.zeros(V, dtype=bool)
        self.center_ = np.zeros(V)
        self.scale_ = np.ones(V)
        self.median_ = np.zeros(V)
        for v in range(V):
            obs = grid.values[:, :, v]
            obs = obs[~np.isnan(obs)].astype(np.float64)
            if obs.size < 2:  # never (or once) seen in training: leave the identity scaling
                continue
            sd = obs.std()
            skew = ((obs - obs.mean()) ** 3).mean() / sd**3 if sd > 0 else 0.0
            self.log_[v] = obs.min() >= 0 and skew > 2
            f = np.log1p(obs) if self.log_[v] else obs
            self.center_[v], self.scale_[v] = f.mean(), (f.std() if f.std() > 1e-8 else 1.0)
            self.median_[v] = (np.median(f) - self.center_[v]) / self.scale_[v]
        self._fit_statics(grid.statics)
        # mean static feature vector of the training stays: the reference "typical patient" for explanations
        self.static_mean_ = self._transform_statics(grid.statics).mean(axis=0) if len(grid.statics) else \
            np.zeros(len(self.static_features_))
        return self

    def _fit_statics(self, statics: np.ndarray):
        names, cats = self.catalogue.statics, {}
        self.static_center_ = np.zeros(len(names))
        self.static_scale_ = np.ones(len(names))
        for j, name in enumerate(names):
            var = self.catalogue[name]
            if var.unit == "category":  # one-hot over the catalogue's integer levels
                cats[name] = list(range(int(var.lower), int(var.upper) + 1))
                continue
            col = statics[:, j][~np.isnan(statics[:, j])]
            if col.size >= 2:
                self.static_center_[j] = np.median(col)  # median imputation -> 0 after centering
                self.static_scale_[j] = col.std() if col.std() > 1e-8 else 1.0
        self.static_levels_ = cats
        self.static_features_ = [f for n in names for f in (
            [f"{n}={lv}" for lv in cats[n]] if n in cats else [n, f"{n}_missing"])]

    # -- transforming ---------------------------------------------------------------------------------
    def transform(self, clean: pl.DataFrame, stay_ids) -> Tensors:
        self._check_fitted()
        return self.transform_grid(self.grid(clean, stay_ids))

    def transform_grid(self, grid: Grid) -> Tensors:
        self._check_fitted()
        raw = grid.values
        if raw.shape[2] != len(self.center_):
            raise ValueError(f"grid has {raw.shape[2]} variables but the transformer was fitted on "
                             f"{len(self.center_)}; use the catalogue the model was trained with")
        observed = ~np.isnan(raw)  # (N, T, V)
        z = raw.copy()  # float32 throughout: the (N, T, V) arrays are the bulk of scoring's memory traffic
        if self.log_.any():
            cols = np.flatnonzero(self.log_)
            z[:, :, cols] = np.log1p(np.maximum(z[:, :, cols], 0))  # NaN stays NaN
        z -= self.center_.astype(np.float32)
        z /= self.scale_.astype(np.float32)
        last_t = grid.obs_time.copy()
        if self.imputation == "ffill_median":
            carry_forward(z)
        carry_forward(last_t)
        fill = self.median_ if self.imputation != "zero" else np.zeros_like(self.median_)
        np.copyto(z, np.broadcast_to(fill.astype(np.float32), z.shape), where=np.isnan(z))

        bin_end = np.broadcast_to(grid.bin_end_hours[None, :, None], z.shape)  # (1, T, 1) -> (N, T, V)
        delta = np.subtract(bin_end, last_t, dtype=np.float32)
        np.copyto(delta, bin_end, where=np.isnan(last_t))  # never seen yet: hours since admission

        pad = np.arange(raw.shape[1])[None, :] >= grid.lengths[:, None]  # (N, T) past the true length
        for a in (z, delta):
            a[pad] = 0.0
        mask = observed.astype(np.float32)
        return Tensors(z, mask, delta, grid.lengths.copy(), self._transform_statics(grid.statics),
                       grid.stay_ids.copy())

    def _transform_statics(self, statics: np.ndarray) -> np.ndarray:
        cols = []
        for j, name in enumerate(self.catalogue.statics):
            col = statics[:, j]
            if name in self.static_levels_:
                cols += [(col == lv).astype(np.float32) for lv in self.static_levels_[name]]
            else:
                missing = np.isnan(col)
                z = np.where(missing, 0.0, (col - self.static_center_[j]) / self.static_scale_[j])
                cols += [np.clip(z, -5, 5).astype(np.float32), missing.astype(np.float32)]
        return np.stack(cols, axis=1) if cols else np.zeros((len(statics), 0), np.float32)

    # -- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "window_hours": self.window_hours, "resolution_hours": self.resolution_hours,
            "imputation": self.imputation, "series": self.catalogue.series,
            "log": self.log_.tolist(), "center": self.center_.tolist(), "scale": self.scale_.tolist(),
            "median": self.median_.tolist(), "statics": self.catalogue.statics,
            "static_center": self.static_center_.tolist(), "static_scale": self.static_scale_.tolist(),
            "static_levels": self.static_levels_, "static_features": self.static_features_,
            "static_mean": self.static_mean_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, catalogue: Catalogue) -> GridTransformer:
        if d["series"] != catalogue.series or d["statics"] != catalogue.statics:
            raise ValueError("the transformer's variables differ from the catalogue's; the bundle is inconsistent")
        self = cls(catalogue, d["window_hours"], d["resolution_hours"], d["imputation"])
        self.log_ = np.asarray(d["log"], dtype=bool)
        for k in ("center", "scale", "median", "static_center", "static_scale"):
            setattr(self, f"{k}_", np.asarray(d[k], dtype=np.float64))
        self.static_levels_ = {k: list(v) for k, v in d["static_levels"].items()}
        self.static_features_ = list(d["static_features"])
        self.static_mean_ = np.asarray(d.get("static_mean", np.zeros(len(self.static_features_))), dtype=np.float64)
        return self

    @property
    def n_static_features(self) -> int:
        self._check_fitted()
        return len(self.static_features_)
