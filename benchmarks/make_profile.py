"""python benchmarks/make_profile.py [--data ../shared/data/physionet2012/set-a.tar.gz]

Writes ``clinical_lstm/data/profile.csv``: per catalogue variable, AGGREGATE statistics of PhysioNet 2012
set A that :mod:`clinical_lstm.data.synthetic` draws synthetic stays from. No patient row or id is written.

The rows used are the ones :func:`clinical_lstm.data.validate.validate` keeps (in range, in 0-48 h, exact
duplicates dropped). A static variable's time-0 row is its descriptor; its rows after time 0 (Weight) are its
series. Columns are documented in the CSV's header comment below.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
from scipy.special import ndtri

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.load import load
from clinical_lstm.data.validate import validate

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_LEVELS = 15  # an integer-valued variable with at most this many values is drawn as categories
HEADER = """\
# Synthetic-cohort profile: aggregates of PhysioNet 2012 set A (4,000 stays, in-range rows in 0-48 h),
# computed by benchmarks/make_profile.py. No patient rows or ids. One row per catalogue variable:
#   presence     fraction of stays with >= 1 series observation (time > 0 for static variables)
#   at_zero      static variables: fraction of stays with a recorded (in-range) value at time 0
#   count_mean   mean series observations per stay, among stays that have any; count_sd its sd
#   stay_share   share of the value variance (normal scores) that lies between stays, 0-1
#   step         value resolution (values are multiples of it)
#   q01..q99     quantiles of the values; levels: 'value:frequency;...' for categorical variables
"""


def _step(values: np.ndarray) -> float:
    """The coarsest resolution of which 99 % of the values are multiples."""
    for step in (1.0, 0.1, 0.01, 0.001):
        if np.mean(np.abs(values / step - np.round(values / step)) < 1e-6) >= 0.99:
            return step
    return 0.0


def _stay_share(rows: pl.DataFrame) -> float:
    """1 - mean within-stay variance of the values' normal scores (total variance is 1)."""
    z = ndtri((rows["value"].rank("average").to_numpy() - 0.5) / rows.height)
    within = (
        rows.with_columns(pl.Series("z", z))
        .group_by("stay_id")
        .agg(pl.col("z").var())
        .drop_nulls()["z"]
        .mean()
    )
    if within is None or z.var() == 0:  # one observation per stay, or a constant (MechVent)
        return 0.0
    return float(np.clip(1.0 - within / z.var(), 0.0, 1.0))


def profile_row(var, clean: pl.DataFrame, n_stays: int) -> dict:
    rows = clean.filter(pl.col("variable") == var.name)
    at_zero = rows.filter(pl.col("time") == 0)["stay_id"].n_unique() / n_stays if var.static else 0.0
    series = rows.filter(pl.col("time") > 0) if var.static else rows
    counts = series.group_by("stay_id").len()["len"]
    values = rows["value"].to_numpy()
    levels = np.unique(values)
    row = {
        "name": var.name,
        "kind": var.kind,
        "presence": counts.len() / n_stays,
        "at_zero": at_zero,
        "count_mean": counts.mean() or 0.0,
        "count_sd": counts.std() or 0.0,
        "stay_share": _stay_share(series) if series.height > 1 else 0.0,
        "step": _step(values),
    }
    row |= {f"q{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES}
    categorical = row["step"] == 1.0 and len(levels) <= MAX_LEVELS
    row["levels"] = ";".join(f"{v:g}:{np.mean(values == v):.4f}" for v in levels) if categorical else None
    return row


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=ROOT.parent / "shared/data/physionet2012/set-a.tar.gz", type=Path)
    parser.add_argument("--out", default=ROOT / "clinical_lstm/data/profile.csv", type=Path)
    args = parser.parse_args(argv)
    raw = load(args.data)
    catalogue = Catalogue.default()
    clean, _, _ = validate(raw, catalogue, 48.0)
    table = pl.DataFrame([profile_row(v, clean, len(raw.stays)) for v in catalogue.variables])
    floats = [c for c, t in table.schema.items() if t == pl.Float64]
    table = table.with_columns(pl.col(floats).round(6))
    args.out.write_text(HEADER + table.write_csv())
    print(f"wrote {args.out} ({table.height} variables from {len(raw.stays)} stays)")
    return args.out


if __name__ == "__main__":
    main()
