"""Synthetic ICU cohorts in the canonical long format, for tests and large scoring benchmarks.

Stays are drawn from ``data/profile.csv``, a table of aggregates of PhysioNet 2012 set A (written by
``benchmarks/make_profile.py``; no patient rows): per variable, how often a stay has it, how many
observations it has, and the quantiles of its values. Generation is vectorised numpy, 1,000 stays at a
time, so 100,000 stays (about 44 M rows) take seconds and :func:`write_cohort` streams them to Parquet in
bounded memory::

    python -m clinical_lstm.data.synthetic --stays 100000 --out synth.parquet [--seed 0] [--dirt 0.01]

How one stay is drawn:

* statics (Age, Gender, Height, ICUType, admission Weight): one row at time 0 each, recorded with the
  profile's ``at_zero`` frequency;
* each series variable is present with probability ``presence``; a present one gets
  ``1 + NegativeBinomial`` observations (mean ``count_mean``, sd ``count_sd``, scaled to the window) at
  whole minutes uniform in ``[0, window]``, at most one per minute;
* values follow the profile's quantiles (piecewise linear between q01..q99, tails stretched to the
  catalogue range) or its category frequencies, rounded to ``step``. A per-stay latent level carries
  ``stay_share`` of the variance, so a patient's heart rate hovers around their own level.

The stream of random numbers is fixed per (seed, block of 1,000 stays): the first ``n`` stays of a larger
cohort with the same seed are the same stays, and :func:`write_cohort` writes exactly the rows of
:func:`synthetic_cohort`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
from scipy.special import ndtr  # scipy comes with scikit-learn

from ..files import atomic_path
from .catalogue import Catalogue, resolve

PROFILE_HOURS = 48.0  # the window the profile's counts were measured over
CHUNK_STAYS = 1_000  # stays per random stream; fixes the rows whatever the block size
QUANTILE_COLUMNS = ("q01", "q05", "q25", "q50", "q75", "q95", "q99")
KNOTS = np.array([0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0])  # probabilities of the quantile knots
PROFILE_COLUMNS = (
    "name",
    "presence",
    "at_zero",
    "count_mean",
    "count_sd",
    "stay_share",
    "step",
    *QUANTILE_COLUMNS,
    "levels",
)
NEGATIVE_MINUTES = 60  # dirt: negative times fall in the hour before admission
SCHEMA = {"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String, "value": pl.Float64}


def load_profile(profile: str | Path | pl.DataFrame | None = None) -> pl.DataFrame:
    """The generation profile: the bundled one (None), a CSV path, or a frame with ``PROFILE_COLUMNS``."""
    if isinstance(profile, pl.DataFrame):
        table, source = profile, "profile frame"
    elif profile is None:
        text = resources.files("clinical_lstm").joinpath("data/profile.csv").read_bytes()
        table, source = pl.read_csv(text, comment_prefix="#"), "the bundled profile"
    else:
        if not Path(profile).is_file():
            raise FileNotFoundError(f"profile file {profile} does not exist; omit it to use the bundled one")
        table, source = pl.read_csv(profile, comment_prefix="#"), str(profile)
    missing = [c for c in PROFILE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{source} lacks column(s) {missing}; expected {list(PROFILE_COLUMNS)} "
            f"(see benchmarks/make_profile.py)"
        )
    return table


@dataclass
class _Params:
    """The profile as arrays in catalogue order (V variables), ready for vectorised draws."""

    names: pl.Series  # (V,) variable names, gathered by code
    presence: np.ndarray  # (V,) probability that a stay has the series
    at_zero: np.ndarray  # (V,) probability that a static is recorded at time 0 (0 for non-statics)
    nb_n: np.ndarray  # (V,) negative-binomial parameters of (count - 1)
    nb_p: np.ndarray  # (V,)
    rho: np.ndarray  # (V,) weight of the per-stay latent level
    noise: np.ndarray  # (V,) sqrt(1 - rho^2), weight of the per-row noise
    quantiles: np.ndarray  # (V, len(KNOTS)) value at each knot probability
    scale: np.ndarray  # (V,) 1 / step; values are round(v * scale) / scale (step 0: 1e9, no rounding)
    lower: np.ndarray  # (V,) catalogue range
    upper: np.ndarray  # (V,)
    categories: dict  # code -> (values, cumulative frequencies)
    window_minutes: int


def _params(profile: pl.DataFrame, catalogue: Catalogue, window_hours: float) -> _Params:
    if not window_hours > 0:
        raise ValueError(f"window_hours must be > 0, got {window_hours}")
    rows = {r["name"]: r for r in profile.iter_rows(named=True)}
    missing = [n for n in catalogue.names if n not in rows]
    if missing:
        raise ValueError(
            f"the profile has no row for catalogue variable(s) {missing}; regenerate it with "
            f"benchmarks/make_profile.py or pass a catalogue without them"
        )
    table = [rows[n] for n in catalogue.names]
    col = {c: np.array([float(r[c] or 0.0) for r in table]) for c in PROFILE_COLUMNS[1:-1]}
    lower = np.array([v.lower for v in catalogue.variables])
    upper = np.array([v.upper for v in catalogue.variables])
    ratio = window_hours / PROFILE_HOURS
    mean = np.maximum(col["count_mean"] - 1.0, 0.0) * ratio  # extra observations beyond the first
    var = np.maximum(col["count_sd"] ** 2 * ratio, mean + 1e-9)
    nb_p = np.where(mean > 0, mean / var, 1.0)  # var ~ mean: nb_p -> 1, close to Poisson
    nb_n = np.where(mean > 0, mean * nb_p / np.maximum(1.0 - nb_p, 1e-9), 1.0)
    inner = np.column_stack([col[c] for c in QUANTILE_COLUMNS])  # (V, 7)
    low_tail = np.maximum(lower, inner[:, 0] - (inner[:, 1] - inner[:, 0]))
    high_tail = np.minimum(upper, inner[:, -1] + (inner[:, -1] - inner[:, -2]))
    categories = {}
    for code, r in enumerate(table):
        if r["levels"]:
            pairs = [p.split(":") for p in r["levels"].split(";")]
            freq = np.array([float(f) for _, f in pairs])
            categories[code] = (np.array([float(v) for v, _ in pairs]), np.cumsum(freq) / freq.sum())
    static = np.array([v.static for v in catalogue.variables])
    return _Params(
        names=pl.Series("variable", catalogue.names, dtype=pl.String),
        presence=np.where([v.is_series for v in catalogue.variables], col["presence"], 0.0),
        at_zero=np.where(static, col["at_zero"], 0.0),
        nb_n=nb_n,
        nb_p=nb_p,
        rho=np.sqrt(np.clip(col["stay_share"], 0.0, 1.0)),
        noise=np.sqrt(1.0 - np.clip(col["stay_share"], 0.0, 1.0)),
        quantiles=np.column_stack([low_tail, inner, high_tail]),
        scale=(1.0 / np.where(col["step"] > 0, col["step"], 1e-9)).round(6),  # 0.1 -> exactly 10
        lower=lower,
        upper=upper,
        categories=categories,
        window_minutes=int(round(window_hours * 60)),
    )


# -- one chunk of stays --------------------------------------------------------------------------------
def _observations(rng: np.random.Generator, p: _Params, n_stays: int):
    """Which (stay, minute, code) are observed: sorted by stay, minute, code, one row per key.

    Returns ``stay`` (N,) local stay index, ``minute`` (N,), ``code`` (N,).
    """
    n_vars = len(p.presence)
    present = rng.random((n_stays, n_vars)) < p.presence  # (S, V)
    extra = rng.negative_binomial(p.nb_n, p.nb_p, size=(n_stays, n_vars))  # (S, V)
    counts = np.where(present, 1 + np.minimum(extra, p.window_minutes), 0)
    pair = np.repeat(np.arange(n_stays * n_vars), counts.ravel())  # (N_series,) flat (stay, code)
    minute = rng.integers(0, p.window_minutes + 1, size=pair.size)
    statics = np.flatnonzero((rng.random((n_stays, n_vars)) < p.at_zero).ravel())  # time-0 rows
    pair = np.concatenate([pair, statics])
    minute = np.concatenate([minute, np.zeros(statics.size, dtype=minute.dtype)])
    span = p.window_minutes + 1 + NEGATIVE_MINUTES
    stay, code = np.divmod(pair, n_vars)
    key = np.sort((stay * span + minute + NEGATIVE_MINUTES) * n_vars + code)
    key = key[np.r_[True, key[1:] != key[:-1]]]  # one row per (stay, minute, variable)
    rest, code = np.divmod(key, n_vars)
    stay, minute = np.divmod(rest, span)
    return stay, minute - NEGATIVE_MINUTES, code


def _values(rng: np.random.Generator, p: _Params, stay: np.ndarray, code: np.ndarray, n_stays: int):
    """One value per row (N,): the profile's marginal, with a per-(stay, variable) latent level."""
    level = rng.standard_normal(n_stays * len(p.presence))  # (S * V,) flat (stay, variable)
    latent = p.rho[code] * level[stay * len(p.presence) + code]
    u = ndtr(latent + p.noise[code] * rng.standard_normal(code.size))  # U(0, 1): the marginal is exact
    k = 1 + (u[:, None] >= KNOTS[1:-1]).sum(axis=1)  # (N,) knot interval, 1 .. len(KNOTS) - 1
    flat = code * len(KNOTS) + k
    lo, hi = p.quantiles.ravel()[flat - 1], p.quantiles.ravel()[flat]
    value = lo + (u - KNOTS[k - 1]) / (KNOTS[k] - KNOTS[k - 1]) * (hi - lo)
    for c, (levels, cumulative) in p.categories.items():
        rows = code == c
        value[rows] = levels[np.minimum(np.searchsorted(cumulative, u[rows], side="right"), len(levels) - 1)]
    scale = p.scale[code]
    return np.minimum(np.maximum(np.round(value * scale) / scale, p.lower[code]), p.upper[code])


def _add_dirt(rng: np.random.Generator, p: _Params, cols: dict, fraction: float, n_stays: int) -> dict:
    """Corrupt ``fraction`` of the rows, a quarter each: unit slips (value x 100, out of range), ``-1``
    sentinels, exact duplicate rows, negative times. Unrecorded statics become ``-1`` rows (PhysioNet's
    convention). Returns new, re-sorted columns."""
    stay, minute, code, value = (cols[k].copy() for k in ("stay", "minute", "code", "value"))
    picked = rng.choice(stay.size, size=rng.binomial(stay.size, fraction), replace=False)
    slip, sentinel, duplicate, negative = np.array_split(picked, 4)
    slipped = value[slip] * 100
    value[slip] = np.where(
        slipped > p.upper[code[slip]],
        slipped,
        p.upper[code[slip]] + np.maximum(1.0, np.abs(p.upper[code[slip]])),
    )
    value[sentinel] = -1.0
    minute[negative] = -rng.integers(1, NEGATIVE_MINUTES + 1, size=negative.size)
    n_vars = len(p.presence)
    recorded = np.zeros((n_stays, n_vars), dtype=bool)
    recorded[cols["stay"][cols["minute"] == 0], cols["code"][cols["minute"] == 0]] = True
    missing_stay, missing_code = np.nonzero(~recorded & (p.at_zero > 0))  # unrecorded statics
    stay = np.concatenate([stay, stay[duplicate], missing_stay])
    minute = np.concatenate([minute, minute[duplicate], np.zeros(missing_stay.size, dtype=minute.dtype)])
    code = np.concatenate([code, code[duplicate], missing_code])
    value = np.concatenate([value, value[duplicate], np.full(missing_stay.size, -1.0)])
    span = p.window_minutes + 1 + NEGATIVE_MINUTES
    order = np.argsort((stay * span + minute + NEGATIVE_MINUTES) * n_vars + code, kind="stable")
    return {"stay": stay[order], "minute": minute[order], "code": code[order], "value": value[order]}


def _chunk(p: _Params, seed: int, index: int, n_stays: int, dirt: float, first_id: int) -> pl.DataFrame:
    """Stays ``index * CHUNK_STAYS ..`` (the first ``n_stays`` of that chunk) as a long frame."""
    rng = np.random.default_rng([seed, index])
    stay, minute, code = _observations(rng, p, CHUNK_STAYS)
    cols = {"stay": stay, "minute": minute, "code": code, "value": _values(rng, p, stay, code, CHUNK_STAYS)}
    if dirt > 0:
        cols = _add_dirt(rng, p, cols, dirt, CHUNK_STAYS)
    end = np.searchsorted(cols["stay"], n_stays)  # the whole chunk is always drawn: prefixes agree
    return pl.DataFrame(
        {
            "stay_id": cols["stay"][:end] + (first_id + index * CHUNK_STAYS),
            "time": cols["minute"][:end] / 60.0,
            "variable": p.names.gather(cols["code"][:end]),
            "value": cols["value"][:end],
        },
        schema=SCHEMA,
    )


def _chunks(
    n_stays: int,
    seed: int = 0,
    window_hours: float = 48.0,
    profile: str | Path | pl.DataFrame | None = None,
    dirt: float = 0.0,
    first_id: int = 1,
    catalogue: Catalogue | str | Path | None = None,
):
    """Yield the cohort as frames of up to ``CHUNK_STAYS`` stays, in stay order."""
    if not (isinstance(n_stays, int | np.integer) and n_stays >= 0):
        raise ValueError(f"n_stays must be a non-negative integer, got {n_stays!r}")
    if not 0.0 <= dirt < 1.0:
        raise ValueError(f"dirt is the fraction of corrupted rows and must be in [0, 1), got {dirt}")
    p = _params(load_profile(profile), resolve(catalogue), window_hours)
    for index in range(-(-n_stays // CHUNK_STAYS)):
        yield _chunk(p, seed, index, min(CHUNK_STAYS, n_stays - index * CHUNK_STAYS), dirt, first_id)


# -- public API ------------------------------------------------------------------------------------------
def synthetic_cohort(
    n_stays: int,
    seed: int = 0,
    window_hours: float = 48.0,
    profile: str | Path | pl.DataFrame | None = None,
    dirt: float = 0.0,
    first_id: int = 1,
    catalogue: Catalogue | str | Path | None = None,
) -> pl.DataFrame:
    """Draw ``n_stays`` synthetic ICU stays as a long frame.

    Parameters
    ----------
    n_stays : int
        Number of stays; their ids are ``first_id .. first_id + n_stays - 1``.
    seed : int, default 0
        Same seed, same frame. The first ``k`` stays do not depend on ``n_stays``.
    window_hours : float, default 48.0
        Observation times (whole minutes) lie in ``[0, window_hours]``; counts scale with the window.
    profile : path or polars.DataFrame, optional
        Generation profile (default: the bundled ``data/profile.csv``).
    dirt : float, default 0.0
        Fraction of rows corrupted as :func:`_add_dirt` describes; 0 gives only clean, in-range rows.
    first_id : int, default 1
    catalogue : Catalogue or path, optional
        Variables and plausible ranges (default catalogue).

    Returns
    -------
    polars.DataFrame
        ``stay_id`` Int64, ``time`` Float64 hours, ``variable`` String, ``value`` Float64; sorted by
        ``stay_id`` then ``time``. About 440 rows per stay with the bundled profile.
    """
    chunks = list(_chunks(n_stays, seed, window_hours, profile, dirt, first_id, catalogue))  # validates
    return pl.concat(chunks, rechunk=False) if chunks else pl.DataFrame(schema=SCHEMA)


def synthetic_labels(long: pl.DataFrame | pl.LazyFrame, seed: int = 0) -> pl.DataFrame:
    """Outcome labels with a planted signal: risk rises with age and with the stay's highest lactate.

    ``logit = -2.6 + 0.04 (Age - 65) + 0.5 (max Lactate - 2)`` (missing Age 65, missing Lactate 2 mmol/L),
    about 17 % positive on the bundled profile. Only in-range values count. Returns ``stay_id, label``
    (Int8), one row per stay of ``long``, sorted.
    """
    age, lac = Catalogue.default()["Age"], Catalogue.default()["Lactate"]
    lazy = long.lazy()
    stays = lazy.select(pl.col("stay_id").unique())
    valid = (
        pl.when(pl.col("variable") == "Age")
        .then((pl.col("time") == 0) & pl.col("value").is_between(age.lower, age.upper))
        .otherwise((pl.col("time") >= 0) & pl.col("value").is_between(lac.lower, lac.upper))
    )
    feats = (
        lazy.filter(pl.col("variable").is_in(["Age", "Lactate"]))
        .filter(valid)
        .group_by("stay_id")
        .agg(
            pl.col("value").filter(pl.col("variable") == "Age").first().alias("age"),
            pl.col("value").filter(pl.col("variable") == "Lactate").max().alias("lactate"),
        )
    )
    table = stays.join(feats, on="stay_id", how="left").sort("stay_id").collect()
    age = table["age"].fill_null(65.0).to_numpy()
    lactate = table["lactate"].fill_null(2.0).to_numpy()
    risk = 1.0 / (1.0 + np.exp(-(-2.6 + 0.04 * (age - 65.0) + 0.5 * (lactate - 2.0))))
    label = (np.random.default_rng(seed).random(table.height) < risk).astype(np.int8)
    return pl.DataFrame({"stay_id": table["stay_id"], "label": label})


def write_cohort(
    path: str | Path,
    n_stays: int,
    seed: int = 0,
    rows_per_group: int = 1_000_000,
    block_stays: int = 10_000,
    compression: str = "zstd",
    **kwargs,
) -> dict:
    """Write :func:`synthetic_cohort` (same rows, same order) to Parquet in bounded memory, atomically.

    Stays are drawn ``block_stays`` at a time; a row group is cut at the first stay boundary past
    ``rows_per_group`` rows, so every stay lies in one row group. The file appears only when complete
    (temporary file in the same folder, then ``os.replace``). ``kwargs`` go to :func:`synthetic_cohort`.

    Returns
    -------
    dict
        ``path, stays, rows, row_groups, bytes, seconds``.
    """
    import pyarrow.parquet as pq

    if rows_per_group < 1 or block_stays < 1:
        raise ValueError(f"rows_per_group and block_stays must be >= 1, got {rows_per_group}, {block_stays}")
    start, path = time.perf_counter(), Path(path)
    chunks = _chunks(n_stays, seed, **kwargs)  # a TypeError for unknown kwargs comes before any file
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(
            tmp, _arrow(pl.DataFrame(schema=SCHEMA)).schema, compression=compression
        ) as writer:
            pending, per_block = [], max(block_stays // CHUNK_STAYS, 1)
            for i, chunk in enumerate(chunks, start=1):
                pending.append(chunk)
                if i % per_block == 0:
                    pending = [_write_groups(writer, pl.concat(pending), rows_per_group)]
            tail = pl.concat(pending) if pending else pl.DataFrame(schema=SCHEMA)
            if tail.height:
                writer.write_table(_arrow(tail), row_group_size=tail.height)
        meta = pq.ParquetFile(tmp).metadata
    return {
        "path": str(path),
        "stays": n_stays,
        "rows": meta.num_rows,
        "row_groups": meta.num_row_groups,
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _arrow(frame: pl.DataFrame):
    return frame.to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: readable by any reader


def _write_groups(writer, frame: pl.DataFrame, rows_per_group: int) -> pl.DataFrame:
    """Write whole-stay row groups of at least ``rows_per_group`` rows; return the rows left over."""
    ids = frame["stay_id"].to_numpy()
    while len(ids) > rows_per_group:
        cut = int(np.searchsorted(ids, ids[rows_per_group - 1], side="right"))  # end of that stay
        writer.write_table(_arrow(frame.slice(0, cut)), row_group_size=cut)
        frame, ids = frame.slice(cut), ids[cut:]
    return frame


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m clinical_lstm.data.synthetic",
        description="Write a synthetic long-format cohort to Parquet.",
    )
    parser.add_argument("--stays", type=int, required=True, help="number of stays")
    parser.add_argument("--out", type=Path, required=True, help="output .parquet file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dirt", type=float, default=0.0, help="fraction of corrupted rows (default 0)")
    parser.add_argument("--window-hours", type=float, default=48.0)
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("--rows-per-group", type=int, default=1_000_000)
    parser.add_argument("--block-stays", type=int, default=10_000, help="stays drawn per step (memory)")
    parser.add_argument("--labels", type=Path, help="also write stay_id,label CSV (planted signal)")
    args = parser.parse_args(argv)
    result = write_cohort(
        args.out,
        args.stays,
        seed=args.seed,
        rows_per_group=args.rows_per_group,
        block_stays=args.block_stays,
        dirt=args.dirt,
        window_hours=args.window_hours,
        first_id=args.first_id,
    )
    if args.labels:
        labels = synthetic_labels(pl.scan_parquet(args.out), seed=args.seed)
        labels.write_csv(args.labels)
        result["labels"], result["positive_rate"] = str(args.labels), round(float(labels["label"].mean()), 4)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
