"""Irregular events -> a fixed time grid.

Bin ``t`` covers ``[t * resolution, (t + 1) * resolution)`` hours; an observation at exactly the window's
end falls into the last bin. Several observations of one variable in one bin combine by the catalogue's
aggregation (Urine is summed, vitals averaged, labs take the last value). Alongside each value the grid keeps
the *time of the last observation in the bin*, so elapsed time can be computed in real hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from .catalogue import Catalogue


@dataclass
class Grid:
    """Binned observations for ``N`` stays, ``T`` bins and ``V`` series variables.

    Attributes
    ----------
    values : ndarray, float32, (N, T, V)
        Aggregated value per bin; NaN where unobserved.
    obs_time : ndarray, float32, (N, T, V)
        Hours since admission of the last observation inside the bin; NaN where unobserved.
    lengths : ndarray, int64, (N,)
        Bins up to and including the last bin with any series observation (at least 1).
    statics : ndarray, float32, (N, S)
        Time-0 value of each static variable (``catalogue.statics`` order); NaN where absent.
    stay_ids : ndarray, int64, (N,)
    """

    values: np.ndarray
    obs_time: np.ndarray
    lengths: np.ndarray
    statics: np.ndarray
    stay_ids: np.ndarray
    resolution_hours: float

    @property
    def bin_end_hours(self) -> np.ndarray:
        """(T,) the time each bin closes, in hours since admission."""
        return (np.arange(self.values.shape[1], dtype=np.float32) + 1) * self.resolution_hours


def n_bins(window_hours: float, resolution_hours: float) -> int:
    if resolution_hours <= 0 or window_hours <= 0:
        raise ValueError(f"window_hours and resolution_hours must be positive, got {window_hours} and "
                         f"{resolution_hours}")
    n = window_hours / resolution_hours
    if abs(n - round(n)) > 1e-9:
        raise ValueError(f"window_hours ({window_hours}) must be a whole multiple of resolution_hours "
                         f"({resolution_hours})")
    return int(round(n))


def to_grid(clean: pl.DataFrame, stay_ids, catalogue: Catalogue, window_hours: float = 48.0,
            resolution_hours: float = 1.0) -> Grid:
    """Bin a validated long table onto the grid, one row per stay in ``stay_ids`` order.

    Stays without rows get an all-NaN grid of length 1 (callers reject them before this point).
    """
    T = n_bins(window_hours, resolution_hours)
    series, statics = catalogue.series, catalogue.statics
    ids = np.asarray(stay_ids, dtype=np.int64)
    N, V = len(ids), len(series)
    index = pl.DataFrame({"stay_id": ids, "row": np.arange(N, dtype=np.int64)})
    var_index = pl.DataFrame({"variable": series, "col": np.arange(V, dtype=np.int64),
                              "agg": [catalogue[v].aggregation for v in series]})

    obs = (clean.lazy()
           .join(index.lazy(), on="stay_id", how="inner")
           .join(var_index.lazy(), on="variable", how="inner")
           .with_columns(pl.min_horizontal((pl.col("time") / resolution_hours + 1e-9).floor().cast(pl.Int64), T - 1)  # 1e-9: 123/60 h is bin 123
                         .alias("bin"))
           .sort("time")  # so that "last" and the bin's last observation time follow real time
           .group_by("row", "bin", "col")
           .agg(pl.col("agg").first(), pl.col("value").mean().alias("mean"), pl.col("value").last().alias("last"),
                pl.col("value").sum().alias("sum"), pl.col("value").max().alias("max"),
                pl.col("value").min().alias("min"), pl.col("time").max().alias("t"))
           .select("row", "bin", "col", "t",
                   pl.when(pl.col("agg") == "mean").then("mean").when(pl.col("agg") == "last").then("last")
                   .when(pl.col("agg") == "sum").then("sum").when(pl.col("agg") == "max").then("max")
                   .otherwise("min").alias("value"))
           .collect())
    values = np.full((N, T, V), np.nan, dtype=np.float32)
    obs_time = np.full((N, T, V), np.nan, dtype=np.float32)
    r, b, c = (obs[k].to_numpy() for k in ("row", "bin", "col"))
    values[r, b, c] = obs["value"].to_numpy()
    obs_time[r, b, c] = obs["t"].to_numpy()
    lengths = np.ones(N, dtype=np.int64)
    last_bin = obs.group_by("row").agg(pl.col("bin").max())
    lengths[last_bin["row"].to_numpy()] = last_bin["bin"].to_numpy() + 1

    stat = np.full((N, len(statics)), np.nan, dtype=np.float32)
    if statics:
        st = (clean.lazy().filter((pl.col("time") == 0) & pl.col("variable").is_in(statics))
              .join(index.lazy(), on="stay_id", how="inner")
              .join(pl.LazyFrame({"variable": statics, "col": np.arange(len(statics), dtype=np.int64)}),
                    on="variable")
              .group_by("row", "col").agg(pl.col("value").first())
              .collect())
        stat[st["row"].to_numpy(), st["col"].to_numpy()] = st["value"].to_numpy()
    return Grid(values, obs_time, lengths, stat, ids, float(resolution_hours))

