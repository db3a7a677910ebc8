"""python benchmarks/bench_explain.py --model runs/physionet_a/model --stays 1000 --repeats 3

Per-variable SHAP explanations (grouped permutation SHAP, 8 permutations) for N stays of PhysioNet set B,
on 2 CPU threads, timed in one process: median stays/s over ``--repeats`` runs. The model is the default
configuration (5 cross-fitted networks, hidden 64, stacked with the summary members) trained on set A:

    python pipelines/train.py --config pipelines/configs/physionet_a_to_b.toml --no-tracking  # -> runs/physionet_a/model

Only explanation time is measured (reading and gridding the stays happen once, before timing).

``--accuracy N`` also measures how close the timed estimates are to the Shapley values, on the first N stays: the
root-mean-square difference (log-odds, over stays and players) from a reference estimate with
``--reference-permutations`` permutations, read from ``--reference FILE`` when it exists, else computed by the
running version and written there, so that two versions (``benchmarks/run_at.py``) are compared with one
reference. Every version's estimator is unbiased for the same values, so the reference's own (small) sampling
error adds the same floor to both versions' differences.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from clinical_lstm import load_model
from clinical_lstm.explain.shapley import shap_values

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/physionet2012/set-b.tar.gz"))
    p.add_argument("--stays", type=int, default=1000)
    p.add_argument("--permutations", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accuracy", type=int, default=0, help="stays whose estimates are compared with a reference")
    p.add_argument("--reference", help="the reference estimate's .npy file (read, or written when missing)")
    p.add_argument("--reference-permutations", type=int, default=400)
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(2)
    model = load_model(a.model)
    clean, kept, _ = model.clean(a.data)
    ids = kept.to_numpy()[: a.stays]
    t = model.tensors(clean, ids)
    print(f"load average {os.getloadavg()}; {len(t)} stays, {len(model.networks)} network(s)")
    reference = None
    if a.accuracy:
        if a.reference and Path(a.reference).exists():
            reference = np.load(a.reference)
        else:
            reference = shap_values(model, t.subset(np.arange(a.accuracy)), a.reference_permutations, seed=10_000)[0]
            if a.reference:
                np.save(a.reference, reference)
    rates, errors, rms = [], [], []
    for r in range(a.repeats):
        t0 = time.perf_counter()
        phi, base, out, _ = shap_values(model, t, a.permutations, seed=r)
        dt = time.perf_counter() - t0
        rates.append(len(t) / dt)
        errors.append(float(np.abs(base + phi.sum(1) - out).max()))
        line = f"run {r + 1}: {dt:.2f} s, {rates[-1]:.1f} stays/s, max efficiency error {errors[-1]:.2e}"
        if reference is not None:
            rms.append(float(np.sqrt(np.mean(np.square(phi[: len(reference)] - reference)))))
            line += f", RMS difference from the reference {rms[-1]:.4f} log-odds"
        print(line)
    result = {"stays": len(t), "networks": len(model.networks), "permutations": a.permutations,
              "stays_per_second": rates, "median_stays_per_second": statistics.median(rates),
              "max_efficiency_error": max(errors), "load_average_after": os.getloadavg(),
              "rms_difference_from_reference": rms, "reference_permutations": a.reference_permutations}
    print(f"median {result['median_stays_per_second']:.1f} stays/s")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
