"""python benchmarks/bench_stream.py --model runs/physionet_a/model --stays 200 --threads 2

Streaming latency: PhysioNet set-B stays fed hour by hour to ``StayStream.update`` (one update per hour that
has rows; the time-0 descriptors come with hour 0), against the reference of re-running
``RiskModel.predict`` on the whole stay so far after each hour. Both run in the same process on the same
stays, interleaved stay by stay, on ``--threads`` torch/BLAS threads pinned to as many CPU cores. Every
update's streaming risk is checked against the reference risk of the same moment (largest difference
reported). The model is the default configuration (5 cross-fitted networks, hidden 64, stacked with the summary members) trained on set A:

    python pipelines/train.py --config pipelines/configs/physionet_a_to_b.toml --no-tracking  # -> runs/physionet_a/model

Timed: the ``update`` call with a pandas DataFrame of that hour's rows (``stay_id, time, variable, value``),
and the ``predict`` call on a pandas DataFrame of all rows so far; building those frames is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]


def hourly_chunks(rows: pl.DataFrame, as_pandas: bool = True):
    """A stay's rows in time order -> (chunks of one clock hour each, all rows so far after each chunk)."""
    rows = rows.sort("time", maintain_order=True)
    hour = rows["time"].floor()
    ends = np.flatnonzero(np.r_[hour.to_numpy()[1:] != hour.to_numpy()[:-1], True]) + 1
    starts = np.r_[0, ends[:-1]]
    conv = (lambda d: d.to_pandas()) if as_pandas else (lambda d: d)
    return ([conv(rows[a:b]) for a, b in zip(starts, ends, strict=True)],
            [conv(rows[:b]) for b in ends])


def summary(ms: np.ndarray) -> dict:
    return {"n": int(len(ms)), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / "runs/physionet_a/model"))
    p.add_argument("--data", default=str(REPO.parent / "shared/data/physionet2012/set-b.tar.gz"))
    p.add_argument("--stays", type=int, default=200, help="first N scorable set-B stays (default 200)")
    p.add_argument("--threads", type=int, default=2, help="torch and BLAS threads, and CPU cores pinned (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed stays first (default 5)")
    p.add_argument("--frame", choices=("pandas", "polars"), default="pandas")
    p.add_argument("--no-reference", action="store_true", help="time streaming only")
    p.add_argument("--cpu-time", action="store_true",
                   help="time by the thread's CPU time instead of the wall clock: steadier on a shared, loaded machine "
                        "(time spent waiting for a core is left out)")
    p.add_argument("--json")
    a = p.parse_args()

    cores = sorted(os.sched_getaffinity(0))[: a.threads]
    os.sched_setaffinity(0, cores)
    import torch
    from threadpoolctl import threadpool_limits

    from clinical_lstm import load_model
    from clinical_lstm.data.load import load
    from clinical_lstm.serve.stream import StayStream

    torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)
    model = load_model(a.model)
    raw = load(a.data)
    _, kept, _ = model.clean(raw)
    ids = kept.to_numpy()[: a.stays + a.warmup]
    long = raw.long.filter(pl.col("stay_id").is_in(ids))
    by_stay = {sid: df for (sid,), df in long.partition_by("stay_id", as_dict=True).items()}
    load_before = os.getloadavg()
    print(f"load average {load_before}; {len(ids) - a.warmup} stays (+{a.warmup} warm-up), "
          f"{len(model.networks)} network(s), {a.threads} thread(s) on cores {cores}")

    clock = time.thread_time if a.cpu_time else time.perf_counter
    stream_ms, ref_ms, worst, n_rows = [], [], 0.0, 0
    for i, sid in enumerate(ids):
        chunks, so_far = hourly_chunks(by_stay[int(sid)], a.frame == "pandas")
        timed = i >= a.warmup
        s = StayStream(model)
        got = []
        for c in chunks:
            t0 = clock()
            r = s.update(c)
            dt = clock() - t0
            got.append(r)
            if timed:
                stream_ms.append(dt * 1e3)
                n_rows += len(c)
        if a.no_reference:
            continue
        for c, r in zip(so_far, got, strict=True):
            t0 = clock()
            want = model.predict(c)["risk"][0]
            dt = clock() - t0
            want = None if want is None or want != want else float(want)  # pandas gives NaN for a rejected stay
            if timed:
                ref_ms.append(dt * 1e3)
            if (want is None) != (r is None):
                raise AssertionError(f"stay {sid}: stream risk {r} but predict {want}")
            if want is not None:
                worst = max(worst, abs(r - want))

    st = summary(np.asarray(stream_ms))
    result = {"model": a.model, "stays": len(ids) - a.warmup, "threads": a.threads, "cores": cores,
              "frame": a.frame, "clock": "thread CPU time" if a.cpu_time else "wall", "rows_per_update": n_rows / len(stream_ms), "stream": st,
              "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
              "load_average_before": load_before}
    print(f"stream   : {st['n']} updates ({result['rows_per_update']:.1f} rows each), median {st['median_ms']:.3f} "
          f"ms, p90 {st['p90_ms']:.3f}, p99 {st['p99_ms']:.3f}, max {st['max_ms']:.2f}")
    if ref_ms:
        ref = summary(np.asarray(ref_ms))
        result.update({"reference_predict": ref, "ratio_median": ref["median_ms"] / st["median_ms"],
                       "ratio_p99": ref["p99_ms"] / st["p99_ms"], "max_abs_risk_difference": worst})
        print(f"reference: {ref['n']} predict calls on the stay so far, median {ref['median_ms']:.3f} ms, "
              f"p90 {ref['p90_ms']:.3f}, p99 {ref['p99_ms']:.3f}, max {ref['max_ms']:.2f}")
        print(f"ratio reference / stream: median {result['ratio_median']:.1f}x, p99 {result['ratio_p99']:.1f}x; "
              f"largest |stream - predict| risk over all updates {worst:.2e}")
    result["load_average_after"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
