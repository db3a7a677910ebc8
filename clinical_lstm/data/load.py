"""``load``: every supported input (PhysioNet sets, long CSV/Parquet tables, several at once) read into one
:class:`~clinical_lstm.data.sources.RawData`, with labels and outcomes joined and the stay ids of one kind.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from ..checks import DataError
from .ids import same_id_kind
from .physionet import is_physionet, read_physionet
from .sources import RawData, read_labels, read_long
from .times import time_hours


def load(paths, labels: str | Path | None = None, outcomes: str | Path | None = None) -> RawData:
    """Read one or more data paths (any mix of layouts) and their labels into one :class:`RawData`.

    Parameters
    ----------
    paths : path or list of paths
        PhysioNet set folders / ``.tar.gz`` archives, or long-format ``.csv`` / ``.parquet`` files.
    labels : path, optional
        ``stay_id, label`` file; overrides outcomes found beside PhysioNet sets.
    outcomes : path, optional
        A PhysioNet ``Outcomes-<x>.txt`` (only with a single PhysioNet path).
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise DataError("no data path given; pass --data PATH (a PhysioNet set folder/.tar.gz or a .csv/.parquet)")
    if outcomes and len(paths) > 1:
        raise DataError("--outcomes applies to a single --data path; for several sets keep each set's "
                        "Outcomes-<x>.txt beside it, or pass --labels FILE")
    for p in paths:
        if not p.exists():
            raise DataError(f"data path {p} does not exist")

    def read(p: Path) -> RawData:
        return read_physionet(p, outcomes) if is_physionet(p) else read_long(p)

    if len(paths) > 1:  # decompression and CSV parsing release the GIL: read the sets side by side
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(len(paths), 4)) as pool:
            parts = list(pool.map(read, paths))
    else:
        parts = [read(paths[0])]
    if len({p.stays.dtype for p in parts}) > 1:  # integer ids in one input, text in another: all text
        parts = [_ids_as_text(p) for p in parts]
    seen: dict = {}
    for part in parts:
        for sid in part.stays.to_list():
            if sid in seen:
                raise DataError(f"stay {sid} appears in both {seen[sid]} and {part.sources[0]}; "
                                f"stay ids must be unique across --data paths")
            seen[sid] = part.sources[0]
    same = all(p.long.schema == parts[0].long.schema for p in parts)
    long = pl.concat([p.long if same else _as_text(p.long, p.sources[0]) for p in parts], how="vertical")
    outs = [p.outcomes for p in parts if p.outcomes is not None]
    if labels is not None:
        out = read_labels(labels)
    elif outs:
        out = pl.concat(outs)
    else:
        out = None
    stays = pl.concat([p.stays for p in parts]).sort()
    if out is not None and out.schema["stay_id"] != stays.dtype:  # e.g. text ids, labels that look like integers
        long, out = same_id_kind([long, out])
        stays = stays.cast(pl.String)
    return RawData(
        long=long,
        stays=stays,
        outcomes=out,
        unreadable={k: v for p in parts for k, v in p.unreadable.items()},
        sources=[s for p in parts for s in p.sources],
        ignored_members=sum(p.ignored_members for p in parts),
    )


def _ids_as_text(raw: RawData) -> RawData:
    long, outcomes = (None if f is None else f.with_columns(pl.col("stay_id").cast(pl.String))
                      for f in (raw.long, raw.outcomes))
    return RawData(long, raw.stays.cast(pl.String), outcomes, {str(k): v for k, v in raw.unreadable.items()},
                   raw.sources, raw.ignored_members)


def _as_text(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """Mixed sources concatenate as text; validation parses once, uniformly. A ``time`` that is neither text nor
    a number (a duration) is read as hours first, by the one rule for time (a timestamp is refused there)."""

    time = pl.col("time")
    if not (df.schema["time"].is_numeric() or df.schema["time"] in (pl.String, pl.Null)):
        time = time_hours(df.schema["time"], f"data file {source}")
    return df.with_columns(time.cast(pl.String).alias("time"), pl.col("value").cast(pl.String))
