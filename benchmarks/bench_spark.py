"""python benchmarks/bench_spark.py --model runs/physionet_a/model --data synth20k.parquet --repeats 3

(Run from the repository root with the venv active. Make the data with
``python -m clinical_lstm.data.synthetic --stays 20000 --out synth20k.parquet``.)

Stays per second scoring one long Parquet file, medians over ``--repeats`` runs:

* single: ``load_model(dir).score_table(frame)`` in this process on a frame read once before timing (torch and
  polars on all cores: 2 here);
* spark: :func:`clinical_lstm.serve.spark.score_spark` in Spark ``local[<cores>]``: read the Parquet, score,
  write nothing (``format("noop")`` runs the whole plan); one untimed warm-up run first (JVM, Python workers,
  model load), so the timed runs are the steady state of a long-lived session;
* spark-bucket: ``groupBy(pmod(xxhash64(stay_id), n)).applyInPandas`` with the same per-frame scorer;
* spark-per-stay: ``groupBy("stay_id").applyInPandas``, on the first ``--per-stay-stays`` stays only.

Prints a JSON dict; ``--json FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/physionet_a/model")
    ap.add_argument("--data", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--per-stay-stays", type=int, default=2000)
    ap.add_argument("--only", nargs="*", default=["single", "spark", "spark-bucket", "spark-per-stay"])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.environ["PYSPARK_PYTHON"] = sys.executable

    import polars as pl

    from clinical_lstm import load_model
    from clinical_lstm.serve.spark import output_schema, score_frame, score_spark, stage_bundle

    frame = pl.read_parquet(args.data)
    n_stays = frame["stay_id"].n_unique()
    result = {"data": os.path.basename(args.data), "stays": n_stays, "rows": frame.height,
              "model": args.model,
              "cores": args.cores, "load_before": os.getloadavg()[0]}

    def record(name, seconds, stays):
        med = statistics.median(seconds)
        result[name] = {"seconds": [round(s, 2) for s in seconds], "median_s": round(med, 2),
                        "stays": stays, "stays_per_s": round(stays / med, 1)}
        print(name, result[name], flush=True)

    if "single" in args.only:
        import torch

        torch.set_num_threads(args.cores)
        model = load_model(args.model)
        record("single", timed(lambda: model.score_table(frame), args.repeats), n_stays)
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (SparkSession.builder.master(f"local[{args.cores}]").config("spark.ui.enabled", "false")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(os.path.abspath(args.data))

    def run(out):
        return lambda: out.write.format("noop").mode("overwrite").save()

    if "spark" in args.only:
        out = score_spark(df, args.model)
        run(out)()  # warm-up
        record("spark", timed(run(out), args.repeats), n_stays)
    name = stage_bundle(args.model).name
    spark.sparkContext.addFile(str(stage_bundle(args.model)), recursive=True)

    def by_pandas(pdf):
        from clinical_lstm.serve.spark import _worker_model

        return score_frame(_worker_model(name), pl.from_pandas(pdf)).to_pandas()

    if "spark-bucket" in args.only:
        n = int(spark.conf.get("spark.sql.shuffle.partitions"))
        out = (df.withColumn("bucket", F.pmod(F.xxhash64("stay_id"), F.lit(n)))
               .groupBy("bucket")
               .applyInPandas(lambda pdf: by_pandas(pdf.drop(columns="bucket")), output_schema()))
        run(out)()
        record("spark-bucket", timed(run(out), args.repeats), n_stays)
    if "spark-per-stay" in args.only:
        few = df.filter(F.col("stay_id") <= args.per_stay_stays)
        out = few.groupBy("stay_id").applyInPandas(by_pandas, output_schema())
        run(out)()
        record("spark-per-stay", timed(run(out), args.repeats), args.per_stay_stays)
    spark.stop()
    result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
