"""python benchmarks/bench_score.py --model runs/physionet_a/model --stays 100000 --repeats 3

Batch scoring at hospital scale: ``clinical-lstm score`` over ``--stays`` synthetic stays (48 h, drawn from
the catalogue's distributions and set-A missingness by :mod:`clinical_lstm.data.synthetic`, long-format Parquet
sorted by stay), each run a whole process under ``/usr/bin/time -v``: wall seconds from process start to exit
(interpreter start-up, imports, model load, the index pass, every chunk, the final output and the
accounting check all count) and the peak resident memory. The model is the default configuration (5
cross-fitted networks, hidden 64, stacked with the summary members) trained on set A:

    python pipelines/train.py --config pipelines/configs/physionet_a_to_b.toml --no-tracking  # -> runs/physionet_a/model

Reports, per run and as medians: whole-process stays/s, in-job stays/s (the summary's, without start-up),
peak RSS, and the summary's stage seconds; the load average before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def time_v(text: str) -> tuple[float, int, float]:
    """(wall seconds, peak RSS in kB, CPU seconds: user + system) from the report of ``/usr/bin/time -v``."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", text).group(1)) for k in ("User", "System"))
    return seconds, int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)), cpu


def run_once(cli: list[str], out_dir: Path) -> dict:
    out = out_dir / "scores.parquet"
    shutil.rmtree(out_dir, ignore_errors=True)
    load_before = os.getloadavg()[0]
    res = subprocess.run(["/usr/bin/time", "-v", *cli, "--out", str(out), "--no-progress"], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"scoring failed ({res.returncode}):\n{res.stderr[-3000:]}")
    seconds, rss_kb, cpu = time_v(res.stderr)
    summary = json.loads((out_dir / "scores.parquet.summary.json").read_text())
    return {"wall_s": round(seconds, 2), "cpu_s": round(cpu, 1), "stays": summary["stays_read"],
            "scored": summary["scored"],
            "stays_per_s_process": round(summary["stays_read"] / seconds, 1),
            "stays_per_s_job": summary["stays_per_second"], "peak_rss_mb": round(rss_kb / 1024, 1),
            "chunk_seconds": summary["chunk_seconds"], "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def text_ids(src: Path, dst: Path) -> None:
    """``src`` with every stay id replaced by a UUID (text), one per stay, rows and order unchanged."""
    import uuid

    import polars as pl

    ids = pl.scan_parquet(src).select(pl.col("stay_id").unique()).collect()["stay_id"]
    names = pl.DataFrame({"stay_id": ids,
                          "uuid": [str(uuid.uuid5(uuid.NAMESPACE_OID, str(i))) for i in ids.to_list()]})
    (pl.scan_parquet(src).join(names.lazy(), on="stay_id", how="left", maintain_order="left")
     .with_columns(pl.col("uuid").alias("stay_id")).drop("uuid").sink_parquet(dst))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "runs/physionet_a/model"))
    ap.add_argument("--stays", type=int, default=100_000)
    ap.add_argument("--data", help="existing long Parquet to score (default: generate --stays synthetic stays)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-stays", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--ids", choices=["int", "text", "both"], default="int",
                    help="stay ids as generated (int), as UUID text (text), or both, alternating run by run "
                         "(side by side: the ratio of the medians says what text ids cost)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_score."))
    try:
        data = Path(a.data) if a.data else tmp / f"synthetic-{a.stays}.parquet"
        if not a.data:
            from clinical_lstm.data.synthetic import write_cohort

            info = write_cohort(data, a.stays, seed=0)
            print(f"generated {info['stays']:,} stays, {info['rows']:,} rows, {info['bytes'] / 1e6:.0f} MB "
                  f"in {info['seconds']:.1f} s -> {data}")
        inputs = {"int": data}
        if a.ids != "int":
            inputs["text"] = tmp / f"{data.stem}-uuid.parquet"
            text_ids(data, inputs["text"])
            if a.ids == "text":
                del inputs["int"]
        options = (["--chunk-stays", str(a.chunk_stays)] if a.chunk_stays else []) + (
            ["--workers", str(a.workers)] if a.workers else [])
        commands = {kind: [str(Path(sys.executable).parent / "clinical-lstm"), "score", "--model", a.model, "--data",
                           str(path), *options] for kind, path in inputs.items()}
        results = {}
        for i in range(a.repeats):
            for kind, cli in commands.items():  # alternating, so drift hits both alike
                r = run_once(cli, tmp / f"run{i}-{kind}")
                results.setdefault(kind, []).append(r)
                print(f"run {i + 1} ({kind} ids): {r['wall_s']:.1f} s ({r['cpu_s']:.1f} s CPU), "
                      f"{r['stays_per_s_process']:,.0f} stays/s whole "
                      f"process, {r['stays_per_s_job']:,.0f} in job, peak RSS {r['peak_rss_mb']:,.0f} MB, stages "
                      f"{r['chunk_seconds']}, load {r['load_before']} -> {r['load_after']}")
        medians = {}
        for kind, runs in results.items():
            med = {k: float(np.median([r[k] for r in runs]))
                   for k in ("wall_s", "cpu_s", "stays_per_s_process", "stays_per_s_job", "peak_rss_mb")}
            medians[kind] = med
            print(f"median of {a.repeats} ({kind} ids): {med['stays_per_s_process']:,.0f} stays/s whole process "
                  f"({med['wall_s']:.1f} s, {med['cpu_s']:.1f} s CPU), {med['stays_per_s_job']:,.0f} stays/s in job, peak RSS "
                  f"{med['peak_rss_mb']:,.0f} MB; cores: {len(os.sched_getaffinity(0))}")
        if len(medians) == 2:
            print(f"text / int wall time: {medians['text']['wall_s'] / medians['int']['wall_s']:.3f}")
        if a.json:
            Path(a.json).write_text(json.dumps({"commands": commands, "runs": results, "median": medians,
                                                "cores": len(os.sched_getaffinity(0))}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
