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

from ..data.catalogue import Catalogue, resolve
from ..data.grid import Grid, n_bins, to_grid

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
    stay_ids: np.ndarray  # (N,) int64, or unicode text for text ids
    summary: np.ndarray | None = None  # (N, F) float32 per-stay summaries (clinical_lstm.features.summaries), NaN = never seen

    def __len__(self) -> int:
        return len(self.stay_ids)

    def subset(self, idx) -> Tensors:
        return Tensors(self.x[idx], self.mask[idx], self.delta[idx], self.lengths[idx], self.statics[idx],
                       self.stay_ids[idx], None if self.summary is None else self.summary[idx])


@dataclass
class Carry:
    """What one bin hands the next, per stay and series variable: the last observation so far and running
    statistics of the observed (standardized) values. Fields are (N, V) float32, or (N, k, V) for the state
    after each of k bins (:meth:`advance`)."""

    value: np.ndarray  # standardized value of the last observation; NaN before the first
    time: np.ndarray  # hours since admission of the last observation; NaN before the first
    first: np.ndarray  # standardized value of the first observation; NaN before it
    low: np.ndarray  # smallest and largest standardized value so far; NaN before the first observation
    high: np.ndarray
    total: np.ndarray  # sum of the standardized values so far (0 before the first)
    count: np.ndarray  # observed bins so far

    @classmethod
    def empty(cls, N: int, V: int) -> Carry:
        nan, zero = np.full((N, V), np.nan, np.float32), np.zeros((N, V), np.float32)
        return cls(nan, nan.copy(), nan.copy(), nan.copy(), nan.copy(), zero, zero.copy())

    def advance(self, z: np.ndarray, last_time: np.ndarray, every_step: bool = True) -> Carry:
        """The state after each of the bins ``z`` (N, k, V; NaN = unobserved), continuing from this (N, V)
        state; ``last_time`` (N, k, V) is the forward-filled time of the last observation.

        With ``every_step=False`` only ``value`` and ``time`` are kept for every bin (what the imputation
        needs); the running statistics are the state after the last bin alone, (N, 1, V), the same numbers in
        a seventh of the memory (``at(-1)`` reads either)."""
        def after(start, values):  # (N, 1 + k, V) with this state in front
            return np.concatenate([start[:, None], values], axis=1)

        observed = ~np.isnan(z)
        if z.shape[1] == 1:  # one bin (the stream's update): each statistic's one step of the loops below
            z, seen = z[:, 0], observed[:, 0]
            new = (np.where(seen, z, self.value), last_time[:, 0], np.where(np.isnan(self.first), z, self.first),
                   np.fmin(self.low, z), np.fmax(self.high, z), self.total + np.where(seen, z, np.float32(0)),
                   self.count + seen.astype(np.float32))
            return Carry(*(a[:, None] for a in new))
        value = carry_forward(after(self.value, z))[:, 1:]
        if not every_step:
            first, total, count = self.first.copy(), self.total.copy(), self.count.copy()
            for t in range(z.shape[1]):  # in bin order, as the cumulative sums below add
                np.copyto(first, z[:, t], where=np.isnan(first))
                total += np.where(observed[:, t], z[:, t], np.float32(0))
                count += observed[:, t]
            low, high = np.fmin.reduce(after(self.low, z), axis=1), np.fmax.reduce(after(self.high, z), axis=1)
            return Carry(value, last_time, *(a[:, None] for a in (first, low, high, total, count)))
        first = after(self.first, z)
        for t in range(1, first.shape[1]):  # the first observation, once seen, stays
            cur = first[:, t]
            np.copyto(cur, first[:, t - 1], where=~np.isnan(first[:, t - 1]))
        return Carry(value, last_time, first[:, 1:], np.fmin.accumulate(after(self.low, z), axis=1)[:, 1:],
                     np.fmax.accumulate(after(self.high, z), axis=1)[:, 1:],
                     np.cumsum(after(self.total, np.where(observed, z, 0)), axis=1, dtype=np.float32)[:, 1:],
                     np.cumsum(after(self.count, observed.astype(np.float32)), axis=1, dtype=np.float32)[:, 1:])

    def at(self, step: int) -> Carry:
        """The (N, V) state after bin ``step`` of a (N, k, V) track."""
        return Carry(*(np.ascontiguousarray(a[:, step]) for a in self.fields()))

    def fields(self) -> tuple[np.ndarray, ...]:
        return self.value, self.time, self.first, self.low, self.high, self.total, self.count


def observed_values(values: np.ndarray) -> list[np.ndarray]:
    """(N, T, V) aggregated values -> per variable, its observed (non-NaN) values, float32."""
    return [values[:, :, v][~np.isnan(values[:, :, v])] for v in range(values.shape[2])]


def carry_forward(arr: np.ndarray) -> np.ndarray:
    """In place along time (axis 1): a NaN takes the value of the step before; NaN before a first observation.
    One (N, V) slice at a time: never crosses stays or variables."""
    for t in range(1, arr.shape[1]):
        cur = arr[:, t]
        np.copyto(cur, arr[:, t - 1], where=np.isnan(cur))
    return arr


def hours_since(obs_time: np.ndarray, bin_end: np.ndarray, carry_time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """**Elapsed time**, in real hours: for each bin, its end minus the time of the variable's last observation
    at or before it (``carry_time``: the last one before these bins). NaN where never observed yet.

    ``obs_time`` (N, k, V) is each bin's last observation time (NaN where unobserved), ``bin_end`` (k,) hours.
    Returns ``(delta, last_time)``, both (N, k, V) float32.
    """
    last_t = np.concatenate([carry_time[:, None], np.asarray(obs_time, np.float32)], axis=1)  # (N, 1 + k, V)
    carry_forward(last_t)
    last_t = last_t[:, 1:]
    return np.asarray(bin_end, np.float32)[None, :, None] - last_t, last_t


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
        return self.fit_observed(observed_values(grid.values), grid.statics)

    def fit_observed(self, observed: list[np.ndarray], statics: np.ndarray) -> GridTransformer:
        """Learn from the observed (aggregated, non-NaN) values of each series variable in the training stays'
        bins, and their (N, S) raw statics: what :meth:`fit_grid` reads from one grid, gathered over chunks of
        stays by :mod:`clinical_lstm.features.cohort`. The statistics are exact (medians too): only observed values are
        held, never the grid. They are computed over the values sorted (statics too), an order that depends on the
        values alone: chunking, input order and stay order cannot change a bit of them (a sum's rounding depends
        on its order, and training magnifies a last-bit difference into another model)."""
        self._check_params()
        V = len(observed)
        self.log_ = np.zeros(V, dtype=bool)
        self.center_ = np.zeros(V)
        self.scale_ = np.ones(V)
        self.median_ = np.zeros(V)
        for v in range(V):
            obs = np.sort(np.asarray(observed[v], dtype=np.float64))
            if obs.size < 2:  # never (or once) seen in training: leave the identity scaling
                continue
            sd = obs.std()
            skew = ((obs - obs.mean()) ** 3).mean() / sd**3 if sd > 0 else 0.0
            self.log_[v] = obs.min() >= 0 and skew > 2
            f = np.log1p(obs) if self.log_[v] else obs
            self.center_[v], self.scale_[v] = f.mean(), (f.std() if f.std() > 1e-8 else 1.0)
            self.median_[v] = (np.median(f) - self.center_[v]) / self.scale_[v]
        self._fit_statics(statics)
        # mean static feature vector of the training stays: the reference "typical patient" for explanations
        self.static_mean_ = np.sort(self.static_features(statics), axis=0).mean(axis=0) if len(statics) else \
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
            col = np.sort(statics[:, j][~np.isnan(statics[:, j])])
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
        if grid.values.shape[2] != len(self.center_):
            raise ValueError(f"grid has {grid.values.shape[2]} variables but the transformer was fitted on "
                             f"{len(self.center_)}; use the catalogue the model was trained with")
        from .summaries import summarize

        N, T, V = grid.values.shape
        x, mask, delta, carry = self.steps(grid.values, grid.obs_time, grid.bin_end_hours, Carry.empty(N, V))
        statics = self.static_features(grid.statics)
        last = delta[np.arange(N), grid.lengths - 1]  # (N, V) hours since each variable's last observation
        now = np.asarray(grid.bin_end_hours, np.float32)[grid.lengths - 1]  # (N,) the end of the stay's last bin
        summary = summarize(carry, last, statics, now)  # nothing is observed past a stay's length: its state then
        pad = np.arange(T)[None, :] >= grid.lengths[:, None]  # (N, T) past the true length
        for a in (x, delta):
            a[pad] = 0.0
        return Tensors(x, mask, delta, grid.lengths.copy(), statics, grid.stay_ids.copy(), summary)

    def summary_steps(self, grid: Grid) -> np.ndarray:
        """(N, T, F) the summaries after every bin (a trajectory's inputs; :func:`~clinical_lstm.features.summaries.summarize`)."""
        from .summaries import summarize

        N, T, V = grid.values.shape
        *_, delta, _, track = self.steps(grid.values, grid.obs_time, grid.bin_end_hours, Carry.empty(N, V),
                                         per_step=True)
        return summarize(track, delta, self.static_features(grid.statics),
                         np.asarray(grid.bin_end_hours, np.float32)[None, :])

    def landmark_steps(self, lengths: np.ndarray, hours, final: bool = True) -> np.ndarray:
        """(N, L [+ 1]) the bin after which each stay is summarized at each of ``hours`` (the bin ending at that
        hour), -1 where the stay's grid does not reach it; with ``final`` one more column, the stay's last bin
        (-1 where it is one of the hours already, so no snapshot is taken twice)."""
        T = self.n_bins
        at = np.asarray([int(round(float(h) / self.resolution_hours)) - 1 for h in hours], np.int64)
        at = np.clip(at, 0, T - 1)
        lengths = np.asarray(lengths, np.int64)
        steps = np.where(at[None, :] < lengths[:, None], at[None, :], -1)  # (N, L)
        if final:
            last = lengths - 1
            last = np.where((last[:, None] == at[None, :]).any(axis=1), -1, last)
            steps = np.concatenate([steps, last[:, None]], axis=1)
        return steps

    def landmark_summaries(self, grid: Grid, steps: np.ndarray) -> np.ndarray:
        """(N, L, F) the summaries after bins ``steps`` (N, L) (:meth:`landmark_steps`; NaN rows where -1)."""
        every = self.summary_steps(grid)  # (N, T, F)
        out = np.take_along_axis(every, np.maximum(steps, 0)[:, :, None], axis=1)
        out[steps < 0] = np.nan
        return out

    def standardize(self, raw: np.ndarray) -> np.ndarray:
        """Aggregated values (..., V) -> standardized float32 (log1p first where ``log_``); NaN stays NaN."""
        z = np.array(raw, dtype=np.float32)  # float32: the (N, T, V) arrays are the bulk of the memory traffic
        if self.log_.any():
            cols = np.flatnonzero(self.log_)
            z[..., cols] = np.log1p(np.maximum(z[..., cols], 0))
        z -= self.center_.astype(np.float32)
        z /= self.scale_.astype(np.float32)
        return z

    def steps(self, values: np.ndarray, obs_time: np.ndarray, bin_end: np.ndarray, carry: Carry,
              per_step: bool = False):
        """**The imputation**: ``k`` consecutive bins of ``N`` stays, continuing from ``carry``.

        Both :meth:`transform_grid` (all bins of a stay at once, from :meth:`Carry.empty`) and the stream (the
        bins that closed since its last update) call this, so a stay scored either way gets the same inputs.

        Parameters
        ----------
        values, obs_time : (N, k, V)
            Aggregated values and the hours of each bin's last observation (NaN where unobserved).
        bin_end : (k,)
            Hours since admission at which each bin closes.
        carry : Carry
            The state after the bin before the first of these.

        Returns
        -------
        x, mask, delta : (N, k, V) float32
            Imputed standardized values, 1 where observed, hours since the last observation (since admission
            while never observed).
        carry : Carry
            The state after the last of these bins.
        track : Carry, only with ``per_step``
            The (N, k, V) state after each bin (running statistics for every step).
        """
        z = self.standardize(values)  # (N, k, V)
        mask = (~np.isnan(z)).astype(np.float32)
        delta, last_t = hours_since(obs_time, bin_end, carry.time)
        track = carry.advance(z, last_t, every_step=per_step)  # the state after each bin (statistics: the last)
        fill = (self.median_ if self.imputation != "zero" else np.zeros_like(self.median_)).astype(np.float32)
        x = (track.value if self.imputation == "ffill_median" else z).copy()
        np.copyto(x, np.broadcast_to(fill, x.shape), where=np.isnan(x))
        np.copyto(delta, np.broadcast_to(np.asarray(bin_end, np.float32)[None, :, None], x.shape),
                  where=np.isnan(delta))  # never seen yet: hours since admission
        return (x, mask, delta, track.at(-1), track) if per_step else (x, mask, delta, track.at(-1))

    def static_features(self, statics: np.ndarray) -> np.ndarray:
        """(N, S) raw static values (NaN = missing) -> (N, F) float32 features in ``static_features_`` order."""
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
