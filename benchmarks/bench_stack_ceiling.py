"""How much could any stacking of a trained model's parts give? The head's ceiling on a labelled test set.

    python benchmarks/bench_stack_ceiling.py --model runs/physionet_a/model --json ceiling.json

For each hour h the test stays whose grid reaches h are scored from their rows up to h by the model's parts — the
networks' mean logit and every summary member's logit — and three stackings of those parts are compared:

* **shipped**: the model's own hour-dependent stacking weights (fitted out of fold on the training stays);
* **oracle with the LSTM**: a logistic regression on the networks' and members' logits fitted *on the test stays
  of that hour themselves* (5-fold cross-fitted within the test set, so each stay is scored by weights fitted on the
  others): the best linear stacking of these parts there is, with the test set's own labels;
* **oracle without the LSTM**: the same on the members' logits only.

The oracle's paired lead (with − without, 95 % bootstrap interval over the same resampled stays) bounds what the
networks can add to the summaries through any linear head: when it includes 0, no re-weighting of the stacking (per
hour, per stay set, with labels the model never sees) makes the networks' contribution measurable; only networks
that carry other information can. The shipped stacking's AUROC/AUPRC beside the oracle's says how far the
stacking fitted on the training stays is from the best one for the test stays.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from clinical_lstm.config import Config
from clinical_lstm.evaluation.hours import step_logits_at
from clinical_lstm.evaluation.metrics import paired_difference
from clinical_lstm.evaluation.scores import binary_metrics
from clinical_lstm.features.cohort import Cohort
from clinical_lstm.model.head import stack_logit
from clinical_lstm.serve.bundle import load_model
from clinical_lstm.workflow import _parts

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "physionet2012"


def parts_at_hours(model, data, hours):
    """(lstm (N, H) mean network logit, members (N, H, m) member logits, step (N, H), y (N,)) on ``data``."""
    tr = model.transformer
    cfg = Config.from_dict({"data": {"window_hours": tr.window_hours, "resolution_hours": tr.resolution_hours}})
    with tempfile.TemporaryDirectory() as work:
        parts = _parts(data, Path(work), model.catalogue, cfg, None, None, "test data", False)
        cohort = Cohort.build(parts, tr, work, landmarks=hours, final=False)
        lstm = step_logits_at(model, cohort)
        with torch.inference_mode():
            s = torch.from_numpy(np.ascontiguousarray(cohort.landmark_summary, np.float32))
            members = np.stack([z.numpy() for z in model.head.member_logits(s)], -1).astype(np.float64)
        return lstm.astype(np.float64), members, cohort.landmark_step, cohort.y


def cross_fitted(Z, y, seed):
    """(n,) logit of a logistic regression on ``Z``, each stay's from the other 4 folds' fit."""
    out = np.zeros(len(y))
    for fit, held in StratifiedKFold(5, shuffle=True, random_state=seed).split(Z, y):
        out[held] = LogisticRegression(max_iter=2000).fit(Z[fit], y[fit]).decision_function(Z[held])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a trained model folder (with a summary head)")
    ap.add_argument("--test", default=str(DATA / "set-b.tar.gz"), help="labelled test data (default: set B)")
    ap.add_argument("--hours", type=float, nargs="+", default=[6, 12, 24, 36, 48])
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)
    model = load_model(args.model)
    if model.head is None:
        sys.exit("the model has no summary head: nothing is stacked")
    lstm, members, step, y = parts_at_hours(model, args.test, [float(h) for h in args.hours])
    head = model.head
    W, b, knots = head.stack.numpy(), head.bias.numpy(), head.knots.numpy()
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    rows = []
    print(f"{'hour':>5} {'n':>5}  {'shipped AUROC/AUPRC':>20}  {'oracle, LSTM':>14}  {'oracle, no LSTM':>15}  "
          f"oracle lead AUROC (95 %)          AUPRC (95 %)")
    for j, h in enumerate(args.hours):
        ok = step[:, j] >= 0
        yh = y[ok]
        Z = np.column_stack([lstm[ok, j], members[ok, j]])
        shipped = sig(stack_logit(Z, np.full(len(yh), h), W, b, knots))
        with_lstm, without = sig(cross_fitted(Z, yh, 0)), sig(cross_fitted(Z[:, 1:], yh, 0))
        m = {name: binary_metrics(yh, p, 0.5) for name, p in
             (("shipped", shipped), ("oracle", with_lstm), ("oracle_no_lstm", without))}
        lead = paired_difference(yh, with_lstm, without, 0.5, 0.5, n_boot=args.boot)
        row = {"hour": h, "stays": int(ok.sum()), **{f"{k}_{x}": v[x] for k, v in m.items() for x in ("auroc", "auprc")},
               **{f"lead_{x}": (lead[x].value, lead[x].lower, lead[x].upper) for x in ("auroc", "auprc")}}
        rows.append(row)
        la, lp = row["lead_auroc"], row["lead_auprc"]
        print(f"{h:>5g} {row['stays']:>5}  {m['shipped']['auroc']:.3f} / {m['shipped']['auprc']:.3f}       "
              f"{m['oracle']['auroc']:.3f} / {m['oracle']['auprc']:.3f}  {m['oracle_no_lstm']['auroc']:.3f} / "
              f"{m['oracle_no_lstm']['auprc']:.3f}   {la[0]:+.4f} ({la[1]:+.4f} to {la[2]:+.4f})   "
              f"{lp[0]:+.4f} ({lp[1]:+.4f} to {lp[2]:+.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "test": args.test, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
