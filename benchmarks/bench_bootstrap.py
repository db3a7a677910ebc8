"""python benchmarks/bench_bootstrap.py --stays 20000 --replicates 1000

The report's comparison table at scale: five models' metrics with 95 % bootstrap intervals and the paired
differences of the first model minus each other one, on synthetic outcomes and risks of ``--stays`` stays.

* one by one: :func:`clinical_lstm.evaluation.metrics.evaluate` per model and :func:`~clinical_lstm.evaluation.metrics.paired_difference`
  per other model (13 bootstraps of one model's worth of work for five models: the report before this change);
* :func:`~clinical_lstm.evaluation.metrics.compare_models`: one bootstrap of all five (what the report runs now), at the
  package's block size and at the 5M-cell blocks it used before (``--blocks``).

After an untimed warm-up, each variant runs once in this process, in the order given (repeat a block size in
``--blocks`` to alternate); the results of every variant are checked equal to the
first's (to 1e-12: matrix products may sum in another order with another block size). Prints seconds per variant.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stays", type=int, default=20_000)
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--blocks", type=int, nargs="+", default=[5_000_000],
                    help="other block sizes (cells) to time compare_models with (default: the old 5M)")
    ap.add_argument("--skip-one-by-one", action="store_true", help="time compare_models only")
    a = ap.parse_args(argv)

    from clinical_lstm.evaluation import bootstrap, metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, a.stays)
    models = {f"m{i}": (np.clip(0.3 * y + rng.normal(0.3, 0.2 + 0.05 * i, a.stays), 0, 1), 0.5)
              for i in range(a.models)}
    names = list(models)
    p0, t0 = models[names[0]]

    def one_by_one():
        got = {n: metrics.evaluate(y, p, t, n_boot=a.replicates, seed=0) for n, (p, t) in models.items()}
        diffs = {n: metrics.paired_difference(y, p0, p, t0, t, n_boot=a.replicates, seed=0)
                 for n, (p, t) in models.items() if n != names[0]}
        return got, diffs

    def together(cells):
        def run():
            before, bootstrap._BLOCK_CELLS = bootstrap._BLOCK_CELLS, cells
            try:
                return metrics.compare_models(y, models, n_boot=a.replicates, seed=0)
            finally:
                bootstrap._BLOCK_CELLS = before
        return run

    variants = [] if a.skip_one_by_one else [("one by one (package block size)", one_by_one)]
    variants += [(f"compare_models, {bootstrap._BLOCK_CELLS:,}-cell blocks (package)", together(bootstrap._BLOCK_CELLS))]
    variants += [(f"compare_models, {c:,}-cell blocks", together(c)) for c in a.blocks]
    print(f"{a.models} models, {a.stays:,} stays, {a.replicates:,} replicates")
    metrics.compare_models(y[:2000], {n: (p[:2000], t) for n, (p, t) in models.items()}, n_boot=50)  # warm-up
    first = None
    for name, run in variants:
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        if first is None:
            first = result
        else:
            for part in (0, 1):
                for model, estimates in result[part].items():
                    for k, e in estimates.items():
                        f = first[part][model][k]
                        if not np.allclose([e.value, e.lower, e.upper], [f.value, f.lower, f.upper],
                                           rtol=0, atol=1e-12):
                            raise SystemExit(f"bench_bootstrap: {name} differs from {variants[0][0]} ({model}, {k})")
        print(f"{seconds:8.2f} s  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
