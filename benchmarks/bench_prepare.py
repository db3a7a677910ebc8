"""python benchmarks/bench_prepare.py --repeats 3 --json prepare_bench.json

(Run from the repository root with the venv active: ``. .venv/bin/activate``.)

Compares two WHOLE PROCESSES on PhysioNet 2012 sets A and B (8,000 stays), timed by wall clock from
process start to exit, so interpreter start-up and imports count:

* ours: ``clinical-lstm prepare --data set-a.tar.gz --data set-b.tar.gz --out TMP``
* pandas: ``python benchmarks/bench_prepare.py --pandas-reference --out TMP``, a plain pandas pipeline
  defined below: ``pd.read_csv`` per tar member, one concat, ``HH:MM`` -> hours, one group-by to hourly
  bins (bin = floor(hours), 48:00 into the last bin; mean per stay, bin and parameter), unstack to wide,
  complete the grid (every stay x 48 bins, reindex on a MultiIndex), forward-fill per stay, write Parquet.

The reference does strictly less than ``prepare``: no validation rules or quality report, no per-variable
aggregation (mean only), no ``__hours_since`` columns, no separate statics or labels files. So the ratio
pandas/ours is, if anything, generous to pandas.

Before timing, each command runs once untimed (this also warms the page cache for both) and the stay
counts are checked: ours = unique ``stay_id`` in ``grid.parquet`` + rejected stays in
``quality_report.json``; the reference = the stay files it read. Then the runs alternate
(pandas, ours, pandas, ours, ...) ``--repeats`` times. Prints a table, the median seconds of each and the
ratio of the medians pandas/ours, the same for CPU seconds (user+sys of each child process), and the load
average before and after; ``--json FILE`` writes the same. Run it on an otherwise idle machine: both sides
slow down when other work competes for the cores, and a warning is printed when the load average is high
before timing starts.

``--floor`` adds a third process to the interleaved runs, ``python benchmarks/bench_prepare.py --polars-floor
--out TMP`` (:func:`polars_floor`): the reference's work and nothing more, done as fast as Python, polars and numpy
go here. It is not a pipeline to ship; it says what ratio a Python ``prepare`` could reach at best.

``--compiled`` adds a fourth (:func:`compiled_floor`): the same work with its per-row part in C
(``compiled_floor.c``, built with gcc into the scratch folder before timing, called through ctypes). It measures
the issue's question: how far a compiled piece would take ``prepare``. Before timing, each floor's ``grid.parquet``
is checked against the reference's (same stays, bins, columns, nulls; values to 1e-12 relative).

Only the standard library is imported at module level, so the reference process pays for exactly the
imports it uses (pandas, numpy, pyarrow), as ``clinical-lstm prepare`` pays for its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = (REPO / ".." / "shared" / "data" / "physionet2012").resolve()
SETS = ("set-a.tar.gz", "set-b.tar.gz")
WINDOW_BINS = 48  # 48 one-hour bins
_STAY_FILE = re.compile(r"^(\d+)\.txt$")


# -- the pandas reference (runs in its own process) --------------------------------------------------------
def pandas_reference(paths: list[Path], out: Path) -> int:
    """Read, bin, complete, forward-fill and write ``out/grid.parquet`` with pandas; return the stay count."""
    import tarfile

    import numpy as np
    import pandas as pd

    frames, ids, sizes = [], [], []
    for path in paths:
        with tarfile.open(path, "r:gz") as tf:
            for member in tf:  # streaming: one pass over the gzip stream
                m = _STAY_FILE.match(PurePosixPath(member.name).name)
                if not (member.isfile() and m):
                    continue
                df = pd.read_csv(tf.extractfile(member))  # default inference: the fastest option measured
                ids.append(int(m.group(1)))
                sizes.append(len(df))
                frames.append(df)
    long = pd.concat(frames, ignore_index=True)
    long["Value"] = pd.to_numeric(long["Value"], errors="coerce")  # a no-op when every file parsed as float
    long["stay_id"] = np.repeat(np.asarray(ids, dtype=np.int64), sizes)  # cheaper than a column per frame
    long = long[long["Parameter"] != "RecordID"]  # the id is stay_id

    t = long["Time"].astype(str)  # "HH:MM"; slicing is ~8x faster than str.split(expand=True) here
    hours = t.str[:-3].astype(float) + t.str[-2:].astype(float) / 60.0
    keep = (hours >= 0) & (hours <= WINDOW_BINS)
    long, hours = long[keep], hours[keep]
    long = long.assign(bin=np.minimum(np.floor(hours.to_numpy()), WINDOW_BINS - 1).astype(np.int64),
                       Parameter=long["Parameter"].astype("category"))

    wide = (long.groupby(["stay_id", "bin", "Parameter"], observed=True, sort=False)["Value"].mean()
            .unstack("Parameter"))
    full = pd.MultiIndex.from_product([sorted(ids), range(WINDOW_BINS)], names=["stay_id", "bin"])
    wide = wide.reindex(full)  # every stay x every bin, NaN where unobserved
    wide = wide.groupby(level="stay_id").ffill()
    wide.columns = [str(c) for c in wide.columns]
    out.mkdir(parents=True, exist_ok=True)
    wide.reset_index().to_parquet(out / "grid.parquet", index=False)
    n = len(ids)
    (out / "reference_summary.json").write_text(json.dumps({"stays": n, "rows": len(wide),
                                                            "columns": wide.shape[1]}))
    print(f"pandas reference: {n} stays, grid {wide.shape[0]} x {wide.shape[1]} -> {out / 'grid.parquet'}")
    return n


# -- the floor: the reference's work as fast as Python + polars + numpy go (runs in its own process) -----------
def polars_floor(paths: list[Path], out: Path) -> int:
    """The pandas reference's work with none of ``prepare``'s: no validation, no quality report, no digests, no
    parts, mean only. Each archive is decompressed whole in its own thread (zlib releases the GIL) and split into
    members by reading the tar headers' name and size fields directly (no checksum or type checks), all members'
    bytes go to ONE polars CSV parse (each member's header line marks where the next stay starts), hours, window
    and bin are one expression, the mean per (stay, bin, parameter) is a group-by over one integer key, the dense
    grid is filled and forward-filled in numpy and written as Parquet. Not a pipeline anyone should ship (a
    damaged or unusual archive is silently misread): it measures how fast the reference's work can go here."""
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import polars as pl

    def members(path: Path) -> list[tuple[int, bytes]]:
        tar, found, offset = zlib.decompress(path.read_bytes(), 31), [], 0
        while offset + 512 <= len(tar) and tar[offset:offset + 512] != bytes(512):
            name = tar[offset:offset + 100].rstrip(b"\0").decode()
            size = int(tar[offset + 124:offset + 136].rstrip(b"\0 ") or b"0", 8)
            m = _STAY_FILE.match(PurePosixPath(name).name)
            if m and tar[offset + 156:offset + 157] in (b"0", b"\0"):
                found.append((int(m.group(1)), tar[offset + 512:offset + 512 + size]))
            offset += 512 + (size + 511) // 512 * 512
        return found

    with ThreadPoolExecutor(len(paths)) as pool:
        files = [f for found in pool.map(members, paths) for f in found]
    ids = np.array([i for i, _ in files], dtype=np.int64)
    text = pl.read_csv(b"".join(d if d.endswith(b"\n") else d + b"\n" for _, d in files), has_header=False,
                       new_columns=["time", "parameter", "value"], schema_overrides=[pl.String] * 3)
    header = text["time"] == "Time"
    long = text.with_columns(stay=header.cum_sum() - 1).filter(~header & (pl.col("parameter") != "RecordID"))
    names = long["parameter"].unique().sort()
    hours = (pl.col("time").str.slice(0, 2).cast(pl.Int64, strict=False)
             + pl.col("time").str.slice(3, 2).cast(pl.Int64, strict=False) / 60.0)
    long = long.select(
        "stay", hours.alias("hours"), pl.col("value").cast(pl.Float64, strict=False),
        pl.col("parameter").cast(pl.Enum(names.to_list())).to_physical().cast(pl.Int64).alias("p"),
    ).filter(pl.col("hours").is_between(0, WINDOW_BINS))
    P = len(names)
    b = pl.col("hours").floor().clip(0, WINDOW_BINS - 1).cast(pl.Int64)
    cells = long.group_by(((pl.col("stay") * WINDOW_BINS + b) * P + pl.col("p")).alias("key")).agg(
        pl.col("value").mean())
    grid = np.full((len(ids), WINDOW_BINS, P), np.nan)
    grid.reshape(-1)[cells["key"].to_numpy()] = cells["value"].to_numpy()
    for t in range(1, WINDOW_BINS):  # forward fill along the bins
        np.copyto(grid[:, t], grid[:, t - 1], where=np.isnan(grid[:, t]))
    columns = np.ascontiguousarray(grid.reshape(-1, P).T)  # (P, stays x bins): one contiguous row per parameter
    frame = pl.DataFrame({"stay_id": np.repeat(ids, WINDOW_BINS), "bin": np.tile(np.arange(WINDOW_BINS), len(ids)),
                          **{n: columns[j] for j, n in enumerate(names)}}).fill_nan(None)
    out.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(out / "grid.parquet")
    (out / "reference_summary.json").write_text(json.dumps({"stays": len(ids), "rows": frame.height,
                                                            "columns": frame.width - 2}))
    print(f"polars floor: {len(ids)} stays, grid {frame.height} x {frame.width - 2} -> {out / 'grid.parquet'}")
    return len(ids)


# -- the compiled floor: the reference's work as one C pass per archive (runs in its own process) --------------
COMPILED_SOURCE = Path(__file__).resolve().with_name("compiled_floor.c")


def build_compiled(build_dir: Path) -> Path:
    """``gcc -O2 -shared -fPIC compiled_floor.c`` into ``build_dir``: a build step, done once, outside the timing."""
    lib = build_dir / "compiled_floor.so"
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        sys.exit("bench_prepare: --compiled needs a C compiler (gcc or cc)")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(COMPILED_SOURCE), "-lm"], check=True)
    return lib


def compiled_floor(paths: list[Path], out: Path, lib: Path) -> int:
    """The reference's work with its per-row part in C (``compiled_floor.c``): each archive decompressed whole by
    zlib and gridded by one C call in its own thread (ctypes releases the GIL), the two archives' columns joined
    by parameter name, ``grid.parquet`` written by pyarrow. Only numpy and pyarrow are imported. Like the polars
    floor it checks nothing; it measures what a compiled piece of ``prepare`` could reach."""
    import ctypes
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    ptr, long = ctypes.c_void_p, ctypes.c_long
    c = ctypes.CDLL(str(lib))
    c.list_members.argtypes, c.list_members.restype = [ctypes.c_char_p, long, ptr, ptr, ptr, long], long
    c.grid_members.argtypes = [ctypes.c_char_p, ptr, ptr, long, ptr, ctypes.c_char_p]
    c.grid_members.restype = ctypes.c_int
    bins, max_params, name_len = WINDOW_BINS, 64, 32  # as in compiled_floor.c

    def grid(path: Path):
        tar = zlib.decompress(path.read_bytes(), 31)
        n = c.list_members(tar, len(tar), None, None, None, 0)
        ids, offsets, sizes = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n, np.int64)
        c.list_members(tar, len(tar), ids.ctypes.data, offsets.ctypes.data, sizes.ctypes.data, n)
        by_id = np.argsort(ids, kind="stable")  # gridded in stay order: no reordering of the columns after
        ids, offsets, sizes = ids[by_id], np.ascontiguousarray(offsets[by_id]), np.ascontiguousarray(sizes[by_id])
        values = np.empty((max_params, n * bins))  # only the planes of the parameters found are written
        names = ctypes.create_string_buffer(max_params * name_len)
        k = c.grid_members(tar, offsets.ctypes.data, sizes.ctypes.data, n, values.ctypes.data, names)
        if k < 0:
            sys.exit(f"compiled floor: more than {max_params} parameters in {path}")
        found = [names.raw[j * name_len:(j + 1) * name_len].split(b"\0")[0].decode() for j in range(k)]
        return ids, dict(zip(found, values[:k], strict=True))

    with ThreadPoolExecutor(len(paths)) as pool:
        parts = list(pool.map(grid, paths))
    def arrow(values, valid=None):  # not pa.array: given numpy data it imports pandas (0.16 s) to look for it
        valid = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [valid, pa.py_buffer(values)])

    def nullable(values):  # NaN -> null, as pandas writes it (pa.array's from_pandas=True: 50x slower here)
        return arrow(values, ~np.isnan(values))

    ids = np.concatenate([i for i, _ in parts])
    order = np.argsort(ids, kind="stable")  # the reference's rows are in stay-id order
    names = sorted(set().union(*(cols for _, cols in parts)))
    columns = {"stay_id": arrow(np.repeat(ids[order], WINDOW_BINS)),
               "bin": arrow(np.tile(np.arange(WINDOW_BINS, dtype=np.int64), len(ids)))}
    in_order = bool(np.all(order == np.arange(len(ids))))  # one archive's stay ids above the other's: no reordering
    rows = None if in_order else (order[:, None] * WINDOW_BINS + np.arange(WINDOW_BINS)).reshape(-1)
    for name in names:
        chunks = [cols[name] if name in cols else np.full(len(i) * WINDOW_BINS, np.nan) for i, cols in parts]
        if in_order:
            columns[name] = pa.chunked_array([nullable(c) for c in chunks])
        else:
            columns[name] = nullable(np.concatenate(chunks)[rows])
    table = pa.table(columns)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "grid.parquet")
    (out / "reference_summary.json").write_text(json.dumps({"stays": len(ids), "rows": table.num_rows,
                                                            "columns": table.num_columns - 2}))
    print(f"compiled floor: {len(ids)} stays, grid {table.num_rows} x {table.num_columns - 2} -> {out / 'grid.parquet'}")
    return len(ids)


# -- the benchmark driver --------------------------------------------------------------------------------------
def _clinical_lstm_exe() -> str:
    exe = Path(sys.executable).parent / "clinical-lstm"  # the venv's own entry point
    found = str(exe) if exe.is_file() else shutil.which("clinical-lstm")
    if not found:
        sys.exit("bench_prepare: cannot find the clinical-lstm command; activate the venv first")
    return found


def _commands(data_dir: Path, out: Path, lib: Path | None = None) -> dict[str, list[str]]:
    data = [str(data_dir / s) for s in SETS]
    script = [sys.executable, str(Path(__file__).resolve())]
    return {
        "pandas": [*script, "--pandas-reference", "--data-dir", str(data_dir), "--out", str(out)],
        "ours": [_clinical_lstm_exe(), "prepare", "--data", data[0], "--data", data[1], "--out", str(out)],
        "floor": [*script, "--polars-floor", "--data-dir", str(data_dir), "--out", str(out)],
        "compiled": [*script, "--compiled-floor", str(lib), "--data-dir", str(data_dir), "--out", str(out)],
    }


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds user+sys) of the whole process; exits the benchmark if it fails."""
    c0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    dt, dc = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        sys.exit(f"bench_prepare: command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return dt, dc


def _stay_counts(scratch: Path, data_dir: Path) -> dict:
    """Run each command once (untimed) and count stays the way each reports them."""
    import polars as pl  # driver only: the package's own dependency

    out_p, out_o = scratch / "check-pandas", scratch / "check-ours"
    cmds_p, cmds_o = _commands(data_dir, out_p), _commands(data_dir, out_o)
    _run(cmds_p["pandas"])
    _run(cmds_o["ours"])
    ref = json.loads((out_p / "reference_summary.json").read_text())
    ref_grid = pl.read_parquet(out_p / "grid.parquet", columns=["stay_id"])["stay_id"].n_unique()
    grid_ids = pl.read_parquet(out_o / "grid.parquet", columns=["stay_id"])["stay_id"].n_unique()
    report = json.loads((out_o / "quality_report.json").read_text())
    rejected = int(report["stays"]["rejected"])
    counts = {"pandas_stays": int(ref["stays"]), "pandas_grid_stays": int(ref_grid),
              "ours_grid_stays": int(grid_ids), "ours_rejected": rejected, "ours_stays": int(grid_ids) + rejected}
    print(f"stays: pandas reference {counts['pandas_stays']} (grid {counts['pandas_grid_stays']}); "
          f"ours {counts['ours_grid_stays']} in grid.parquet + {rejected} rejected = {counts['ours_stays']}")
    if not counts["pandas_stays"] == counts["pandas_grid_stays"] == counts["ours_stays"]:
        sys.exit("bench_prepare: the two pipelines do not account for the same stays; not timing them")
    shutil.rmtree(out_p)
    shutil.rmtree(out_o)
    return counts


_LABELS = {"floor": "polars floor", "compiled": "compiled floor"}


def grid_differences(reference: Path, other: Path) -> list[str]:
    """How the grid in Parquet file ``other`` differs from the one in ``reference`` (empty: the same grid): the
    same (stay, bin) rows in any order, the same columns by name, nulls in the same cells, values equal to 1e-12
    relative (the order of summing a cell's values may differ in the last bit)."""
    import numpy as np
    import polars as pl

    ref, got = (pl.read_parquet(path).sort("stay_id", "bin") for path in (reference, other))
    if sorted(ref.columns) != sorted(got.columns) or ref.height != got.height:
        return [f"shape/columns differ: {ref.shape} {sorted(ref.columns)} vs {got.shape} {sorted(got.columns)}"]
    problems = []
    for col in ref.columns:
        x, y = ref[col], got[col]
        if not x.is_null().equals(y.is_null()):
            problems.append(f"{col}: nulls in other cells")
            continue
        x, y = x.drop_nulls().cast(pl.Float64).to_numpy(), y.drop_nulls().cast(pl.Float64).to_numpy()
        if not np.allclose(x, y, rtol=1e-12, atol=0):
            problems.append(f"{col}: values differ (max |diff| {np.max(np.abs(x - y)):.3g})")
    return problems


def _check_same_grid(scratch: Path, data_dir: Path, name: str, lib: Path | None) -> None:
    """Run the pandas reference and floor ``name`` once (untimed); exit unless they write the same grid."""
    out_p, out_f = scratch / "same-pandas", scratch / f"same-{name}"
    _run(_commands(data_dir, out_p)["pandas"])
    _run(_commands(data_dir, out_f, lib)[name])
    problems = grid_differences(out_p / "grid.parquet", out_f / "grid.parquet")
    if problems:
        sys.exit(f"bench_prepare: the {_LABELS[name]} does not write the reference's grid; not timing it:\n  "
                 + "\n  ".join(problems[:10]))
    print(f"{_LABELS[name]}: grid.parquet equals the reference's")
    shutil.rmtree(out_p)
    shutil.rmtree(out_f)


def _check_load(warn: bool) -> list[float]:
    """The 1/5/15-minute load averages; with ``warn``, say so when other work is likely competing for cores."""
    load = list(os.getloadavg())
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} CPUs)")
    if warn and load[0] > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy; these timings may be far off")
    return load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                    help=f"folder with {' and '.join(SETS)} (default: {DEFAULT_DATA_DIR})")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each command (default 3)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    ap.add_argument("--pandas-reference", action="store_true", help="run the pandas reference (needs --out)")
    ap.add_argument("--polars-floor", action="store_true", help="run the floor (see polars_floor; needs --out)")
    ap.add_argument("--compiled-floor", type=Path, metavar="LIB",
                    help="run the compiled floor with the library LIB built by build_compiled (needs --out)")
    ap.add_argument("--floor", action="store_true", help="time the floor too, interleaved with the others")
    ap.add_argument("--compiled", action="store_true",
                    help="build compiled_floor.c (gcc) and time the compiled floor too, interleaved with the others")
    ap.add_argument("--out", type=Path, metavar="DIR", help="output folder of --pandas-reference / --polars-floor")
    a = ap.parse_args(argv)

    data_dir = a.data_dir.resolve()
    missing = [s for s in SETS if not (data_dir / s).is_file()]
    if missing:
        sys.exit(f"bench_prepare: {', '.join(missing)} not found in {data_dir}; pass --data-dir")
    if a.pandas_reference or a.polars_floor or a.compiled_floor:
        if a.out is None:
            sys.exit("bench_prepare: --pandas-reference, --polars-floor and --compiled-floor need --out DIR")
        paths = [data_dir / s for s in SETS]
        if a.compiled_floor:
            compiled_floor(paths, a.out, a.compiled_floor)
        else:
            (pandas_reference if a.pandas_reference else polars_floor)(paths, a.out)
        return 0
    if a.repeats < 1:
        sys.exit("bench_prepare: --repeats must be at least 1")

    load_before = _check_load(warn=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        lib = build_compiled(scratch) if a.compiled else None
        counts = _stay_counts(scratch, data_dir)
        names = ("pandas", "ours") + (("floor",) if a.floor else ()) + (("compiled",) if a.compiled else ())
        for name in names[2:]:  # a floor must write the reference's grid, or its time means nothing
            _check_same_grid(scratch, data_dir, name, lib)
        times: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        extra = names[2:]
        print(f"\n{'run':>4} {'pandas s':>10} {'ours s':>10} {'pandas/ours':>12} {'pandas cpu s':>13} "
              f"{'ours cpu s':>11}" + "".join(f" {n + ' s':>11} {'pandas/' + n:>16}" for n in extra))
        for r in range(a.repeats):
            for name in names:  # interleaved: pandas, ours, [floor,] pandas, ours, ...
                out = scratch / f"{name}-{r}"
                wall, c = _run(_commands(data_dir, out, lib)[name])
                times[name].append(wall)
                cpu[name].append(c)
                shutil.rmtree(out, ignore_errors=True)
            print(f"{r + 1:>4} {times['pandas'][-1]:>10.2f} {times['ours'][-1]:>10.2f} "
                  f"{times['pandas'][-1] / times['ours'][-1]:>12.2f} {cpu['pandas'][-1]:>13.2f} "
                  f"{cpu['ours'][-1]:>11.2f}" + "".join(f" {times[n][-1]:>11.2f} "
                                                        f"{times['pandas'][-1] / times[n][-1]:>16.2f}" for n in extra))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    load_after = _check_load(warn=False)  # includes this benchmark's own load
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = med["pandas"] / med["ours"]
    print(f"\nmedian over {a.repeats} runs: pandas {med['pandas']:.2f} s, ours {med['ours']:.2f} s, "
          f"pandas/ours {ratio:.2f}")
    print(f"median CPU (user+sys): pandas {med_cpu['pandas']:.2f} s, ours {med_cpu['ours']:.2f} s, "
          f"pandas/ours {med_cpu['pandas'] / med_cpu['ours']:.2f}")
    for n in names[2:]:
        print(f"{_LABELS[n]} (the reference's work, no validation): {med[n]:.2f} s, pandas/{n} "
              f"{med['pandas'] / med[n]:.2f}, CPU {med_cpu[n]:.2f} s")
    if a.json:
        import pandas as pd
        import polars as pl

        result = {
            "benchmark": "prepare, whole process, PhysioNet 2012 sets A+B",
            "commands": {k: " ".join(v) for k, v in _commands(data_dir, Path("TMP"), lib).items() if k in names},
            "repeats": a.repeats, "seconds": times, "median_seconds": med, "ratio_pandas_over_ours": ratio,
            "cpu_seconds": cpu, "median_cpu_seconds": med_cpu,
            "ratio_cpu_pandas_over_ours": med_cpu["pandas"] / med_cpu["ours"],
            "stays": counts, "load_average": {"before": load_before, "after": load_after},
            "environment": {"python": platform.python_version(), "pandas": pd.__version__,
                            "polars": pl.__version__, "platform": platform.platform(),
                            "cpus": os.cpu_count()},
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
