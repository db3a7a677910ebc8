"""The floors of ``benchmarks/bench_prepare.py`` must write the pandas reference's grid: their times are quoted as
what a Python or compiled ``prepare`` could reach, which means nothing if they do less or other work.

Real data: the bundled 500-stay PhysioNet archive split into two archives, its members dealt alternately so that
the two archives' stay ids interleave (the compiled floor's reordering path), plus a stay file with CRLF line ends,
a value that is not a number, a 48:00 row and rows outside the window.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from clinical_lstm.data.sample import bundled_sample

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_prepare.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_prepare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _odd_stay() -> bytes:
    rows = ["Time,Parameter,Value", "00:00,RecordID,999001", "00:00,Age,70", "00:30,HR,80", "00:45,HR,90",
            "03:10,HR,not-a-number", "03:20,Temp,37.5", "47:59,HR,100", "48:00,HR,110", "48:01,HR,500",
            "52:00,Temp,39"]
    return ("\r\n".join(rows) + "\r\n").encode()


@pytest.fixture(scope="module", params=["interleaved", "apart"])
def data_dir(tmp_path_factory, bench, request) -> Path:
    """Members dealt alternately (the two archives' ids interleave: the floors reorder rows) or split at the
    median id (one archive's ids above the other's: the compiled floor's columns are joined as they are)."""
    archive = bundled_sample()
    out = tmp_path_factory.mktemp("sets")
    with tarfile.open(archive, "r:gz") as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]
    odd = tarfile.TarInfo("set-b/999001.txt")
    odd.size = len(_odd_stay())
    if request.param == "apart":
        members.sort(key=lambda m: m[0].name, reverse=True)  # archive order unlike id order, as PhysioNet's
        cut = sorted(m[0].name for m in members)[len(members) // 2]
        first, second = [m for m in members if m[0].name < cut], [m for m in members if m[0].name >= cut]
    else:
        first, second = members[0::2], members[1::2]
    halves = {"set-a.tar.gz": first, "set-b.tar.gz": second + [(odd, _odd_stay())]}
    assert list(halves) == list(bench.SETS)
    for name, part in halves.items():
        with tarfile.open(out / name, "w:gz") as tf:
            for member, data in part:
                tf.addfile(member, io.BytesIO(data))
    return out


def test_the_floors_write_the_reference_grid(bench, data_dir, tmp_path):
    if not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("no C compiler")
    paths = [data_dir / s for s in bench.SETS]
    n = bench.pandas_reference(paths, tmp_path / "pandas")
    assert n == 501
    assert bench.polars_floor(paths, tmp_path / "polars") == n
    lib = bench.build_compiled(tmp_path)
    assert bench.compiled_floor(paths, tmp_path / "compiled", lib) == n
    reference = tmp_path / "pandas" / "grid.parquet"
    assert bench.grid_differences(reference, tmp_path / "polars" / "grid.parquet") == []
    assert bench.grid_differences(reference, tmp_path / "compiled" / "grid.parquet") == []


def test_grid_differences_sees_a_changed_cell(bench, data_dir, tmp_path):
    import polars as pl

    paths = [data_dir / s for s in bench.SETS]
    bench.pandas_reference(paths, tmp_path / "pandas")
    reference = tmp_path / "pandas" / "grid.parquet"
    grid = pl.read_parquet(reference)
    first_hr = pl.col("HR").is_not_null() & (pl.col("HR").is_not_null().cum_sum() == 1)
    changed = grid.with_columns(pl.when(first_hr).then(pl.col("HR") * (1 + 1e-9)).otherwise(pl.col("HR")))
    changed.write_parquet(tmp_path / "changed.parquet")
    grid.with_columns(pl.lit(None, pl.Float64).alias("HR")).write_parquet(tmp_path / "nulls.parquet")
    grid.reverse().write_parquet(tmp_path / "reversed.parquet")
    assert bench.grid_differences(reference, tmp_path / "reversed.parquet") == []
    assert any(p.startswith("HR: values differ") for p in bench.grid_differences(reference, tmp_path / "changed.parquet"))
    assert bench.grid_differences(reference, tmp_path / "nulls.parquet") == ["HR: nulls in other cells"]
