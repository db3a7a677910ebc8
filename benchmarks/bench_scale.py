"""python benchmarks/bench_scale.py --sizes 10000 50000 --json scale_bench.json

How ``prepare`` and ``train`` grow with the cohort: for each size, a synthetic cohort from
:mod:`clinical_lstm.data.synthetic` (48 h, set-A profile, planted-signal labels) is written once, then
``clinical-lstm prepare`` runs on it and ``clinical-lstm train --data <the prepared folder>`` on what it wrote
(``--from raw`` trains on the cohort file itself), each a whole process under ``/usr/bin/time -v``: wall seconds, peak resident memory (max RSS), and per-stay microseconds. Training runs a
fixed, small amount of work so sizes compare: ``--folds`` folds of ``--epochs`` epochs each (early stopping
off), no tracking, no progress bars; everything else is the default (summary members, calibration, the report).

``--only prepare`` skips training (e.g. to see where the largest sizes stand without a long training run).
Cohorts are written under ``--work`` (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_score import time_v  # this folder is on sys.path when the script runs

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v``; its wall seconds and peak RSS (MB), or exit on failure."""
    with log.open("w") as out:
        done = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = log.read_text()
    if done.returncode != 0:
        sys.exit(f"bench_scale: {' '.join(cmd[:3])} ... failed (exit {done.returncode}); see {log}:\n{text[-2000:]}")
    seconds, rss_kb = time_v(text)
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(rss_kb / 1024)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--epochs", type=int, default=2, help="epochs per fold (default 2)")
    ap.add_argument("--folds", type=int, default=2, help="cross-fitting folds (default 2)")
    ap.add_argument("--only", choices=["prepare"], help="skip training")
    ap.add_argument("--from", dest="source", choices=["prepared", "raw"], default="prepared",
                    help="train on prepare's output (default) or on the raw cohort file")
    ap.add_argument("--work", type=Path, help="keep cohorts and outputs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    if not Path("/usr/bin/time").exists():
        sys.exit("bench_scale: needs /usr/bin/time (Debian: apt install time)")
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "clinical_lstm.cli"]
    config = work / "scale.toml"
    config.write_text(f"[train]\nfolds = {a.folds}\nepochs = {a.epochs}\npatience = {a.epochs}\n")
    rows = []
    try:
        for n in a.sizes:
            cohort, labels = work / f"cohort_{n}.parquet", work / f"labels_{n}.csv"
            t0 = time.perf_counter()
            if not cohort.exists():
                subprocess.run([sys.executable, "-m", "clinical_lstm.data.synthetic", "--stays", str(n), "--out",
                                str(cohort), "--labels", str(labels)], check=True, capture_output=True)
            row = {"stays": n, "generate_seconds": round(time.perf_counter() - t0, 1),
                   "cohort_mb": round(cohort.stat().st_size / 2**20)}
            row["prepare"] = timed([*cli, "prepare", "--data", str(cohort), "--labels", str(labels), "--out",
                                    str(work / f"prepared_{n}")], work / f"prepare_{n}.log")
            if a.only != "prepare":
                given = ["--data", str(work / f"prepared_{n}")] if a.source == "prepared" else [
                    "--data", str(cohort), "--labels", str(labels)]
                row["train"] = timed([*cli, "train", *given, "--out",
                                      str(work / f"run_{n}"), "--config", str(config), "--no-tracking",
                                      "--no-progress", "--quiet"], work / f"train_{n}.log")
            for step in ("prepare", "train"):
                if step in row:
                    row[step]["us_per_stay"] = round(row[step]["seconds"] / n * 1e6)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'stays':>8} {'prepare s':>10} {'RSS MB':>7} {'us/stay':>8} {'train s':>9} {'RSS MB':>7} {'us/stay':>8}")
    for r in rows:
        p, t = r["prepare"], r.get("train", {})
        print(f"{r['stays']:>8} {p['seconds']:>10} {p['peak_rss_mb']:>7} {p['us_per_stay']:>8} "
              f"{t.get('seconds', '-'):>9} {t.get('peak_rss_mb', '-'):>7} {t.get('us_per_stay', '-'):>8}")
    if a.json:
        a.json.write_text(json.dumps({"benchmark": "prepare and train vs cohort size", "epochs": a.epochs,
                                      "folds": a.folds, "train_from": a.source, "command": sys.argv, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
