"""The risk at every hour, as users see it: a trained model's trajectory on a test set against a gradient-boosting
model trained for that hour alone, side by side in one run (docs/benchmarks.md, "every hour").

    python benchmarks/bench_hours.py --model runs/physionet_a --json hours.json
    python benchmarks/bench_hours.py --model runs/physionet_a --model runs/old_a --names new old

For each hour h (6, 12, 24, 36, 48): every model's calibrated risk at h is ``RiskModel.trajectory`` on the test set
(the rows up to h only: what the stream and the nightly job show); a stay counts at h when its trajectory reaches h.
The reference, outside the package: scikit-learn's ``HistGradientBoostingClassifier`` (5 seeds averaged) on
first/last/min/max/mean/count/hours-since-last of each variable's validated rows up to h plus the descriptors,
trained on the training set at the same hour. Paired 95 % bootstrap intervals (same resampled stays) of each model
minus the reference, and of the first model minus each other model.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from clinical_lstm import load_model
from clinical_lstm.data.catalogue import resolve
from clinical_lstm.data.load import load
from clinical_lstm.data.validate import validate

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "physionet2012"


def features(clean: pl.DataFrame, ids: np.ndarray, hour: float, series: list[str], statics: list[str]):
    """(N, F) raw-row summaries up to ``hour`` of the stays ``ids``."""
    rows = clean.filter(pl.col("time") <= hour)
    stat = rows.filter(pl.col("variable").is_in(statics) & (pl.col("time") == 0))
    ser = rows.filter(pl.col("variable").is_in(series)).sort("stay_id", "time")
    agg = ser.group_by("stay_id", "variable").agg(
        pl.col("value").first().alias("first"), pl.col("value").last().alias("last"),
        pl.col("value").min().alias("min"), pl.col("value").max().alias("max"), pl.col("value").mean().alias("mean"),
        pl.len().alias("count"), (hour - pl.col("time").max()).alias("since"))
    wide = agg.pivot(on="variable", index="stay_id", values=["first", "last", "min", "max", "mean", "count", "since"])
    st = stat.group_by("stay_id", "variable").agg(pl.col("value").first()).pivot(on="variable", index="stay_id",
                                                                                 values="value")
    frame = pl.DataFrame({"stay_id": ids}).join(wide, on="stay_id", how="left").join(st, on="stay_id", how="left")
    return frame.drop("stay_id")


def paired(y, a, b, n_boot=1000, seed=0):
    rng = np.random.default_rng(seed)
    d0 = (roc_auc_score(y, a) - roc_auc_score(y, b), average_precision_score(y, a) - average_precision_score(y, b))
    reps = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        reps.append((roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]),
                     average_precision_score(y[i], a[i]) - average_precision_score(y[i], b[i])))
    lo, hi = np.percentile(np.array(reps), [2.5, 97.5], axis=0)
    return {"auroc": [d0[0], lo[0], hi[0]], "auprc": [d0[1], lo[1], hi[1]]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", action="append", required=True, help="run folder or model/ (repeatable)")
    p.add_argument("--names", nargs="*")
    p.add_argument("--train", default=str(DATA / "set-a.tar.gz"))
    p.add_argument("--test", default=str(DATA / "set-b.tar.gz"))
    p.add_argument("--hours", type=float, nargs="*", default=[6, 12, 24, 36, 48])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json")
    a = p.parse_args()
    names = a.names or [Path(m).name for m in a.model]
    cat = resolve(None)
    clean = {}
    for split, path in (("train", a.train), ("test", a.test)):
        raw = load(path)
        c, kept, _ = validate(raw, cat, 48.0, require_labels=True)
        labels = raw.outcomes.filter(pl.col("stay_id").is_in(kept.implode()))
        clean[split] = (c, labels.sort("stay_id"))
    trajectories = {}
    for name, m in zip(names, a.model, strict=True):
        model = load_model(m)
        trajectories[name] = model.trajectory(clean["test"][0])
        print(f"{name}: trajectory of {trajectories[name]['stay_id'].n_unique()} stays", file=sys.stderr)
    out = {"hours": {}}
    test_labels = clean["test"][1]
    for h in a.hours:
        at = {n: t.filter(pl.col("hour") == h).select("stay_id", pl.col("risk").alias(n)) for n, t in
              trajectories.items()}
        frame = test_labels.select("stay_id", "label")
        for n in names:
            frame = frame.join(at[n], on="stay_id", how="inner")
        ids, y = frame["stay_id"].to_numpy(), frame["label"].to_numpy().astype(int)
        tr_c, tr_l = clean["train"]
        Xtr = features(tr_c, tr_l["stay_id"].to_numpy(), h, cat.series, cat.statics)
        Xte = features(clean["test"][0], ids, h, cat.series, cat.statics).select(Xtr.columns)
        ref = np.mean([HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, early_stopping=True,
                                                      random_state=s).fit(Xtr.to_numpy(), tr_l["label"].to_numpy())
                       .predict_proba(Xte.to_numpy())[:, 1] for s in range(a.seeds)], axis=0)
        row = {"stays": len(y), "event_rate": float(y.mean()), "models": {}}
        risks = {n: frame[n].to_numpy() for n in names} | {"GB for this hour": ref}
        for n, r in risks.items():
            row["models"][n] = {"auroc": roc_auc_score(y, r), "auprc": average_precision_score(y, r),
                                "mean_risk": float(r.mean())}
        row["minus_reference"] = {n: paired(y, risks[n], ref, a.n_boot) for n in names}
        row["first_minus"] = {n: paired(y, risks[names[0]], risks[n], a.n_boot) for n in names[1:]}
        out["hours"][f"{h:g}"] = row
        line = "  ".join(f"{n} {v['auroc']:.3f}/{v['auprc']:.3f}/{v['mean_risk']:.3f}" for n, v in row["models"].items())
        print(f"{h:g} h (n {len(y)}, rate {y.mean():.3f}): {line}")
        for n, d in row["minus_reference"].items():
            print(f"   {n} - GB for this hour: AUROC {d['auroc'][0]:+.3f} ({d['auroc'][1]:+.3f} to {d['auroc'][2]:+.3f})"
                  f"  AUPRC {d['auprc'][0]:+.3f} ({d['auprc'][1]:+.3f} to {d['auprc'][2]:+.3f})")
        for n, d in row["first_minus"].items():
            print(f"   {names[0]} - {n}: AUROC {d['auroc'][0]:+.3f} ({d['auroc'][1]:+.3f} to {d['auroc'][2]:+.3f})"
                  f"  AUPRC {d['auprc'][0]:+.3f} ({d['auprc'][1]:+.3f} to {d['auprc'][2]:+.3f})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
