"""Gradient boosting on summaries, fitted three ways, scored on set B at 6, 12 and 48 h and at the stay's end
(docs/benchmarks.md, "Ablation: what carried it"):

    python benchmarks/bench_members.py

1. on each set-A stay's summary at its last bin (the members before landmark training),
2. on landmark snapshots (4, 6, 8, 12, 24, 36, 48 h and the last bin) with the package's whole-stay early stopping
   (``SummaryBaselines.fit(groups=...)``),
3. on the same snapshots with scikit-learn's own early stopping on random rows (rows of one stay on both sides).

The summaries are the package's (``Cohort.build(landmarks=...)``), fitted on set A only.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from clinical_lstm.config import Config
from clinical_lstm.data.catalogue import resolve
from clinical_lstm.features.cohort import Cohort
from clinical_lstm.features.impute import GridTransformer
from clinical_lstm.model.members import SummaryBaselines
from clinical_lstm.workflow import _parts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet2012"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=str(DATA))
    a = p.parse_args()
    cfg, cat, work = Config(), resolve(None), Path(tempfile.mkdtemp())
    data = Path(a.data_dir)
    pa = _parts(data / "set-a.tar.gz", work / "a", cat, cfg, None, None, "set A", False)
    pb = _parts(data / "set-b.tar.gz", work / "b", cat, cfg, None, None, "set B", False)
    tr = GridTransformer(cat, 48, 1, "ffill_median")
    train = Cohort.build(pa, tr, work / "ca", landmarks=[4, 6, 8, 12, 24, 36, 48])
    test = Cohort.build(pb, tr, work / "cb", landmarks=[6, 12, 48], final=False)
    stay, col = np.nonzero(train.landmark_step >= 0)
    X, y = train.landmark_summary[stay, col], train.y[stay]

    def report(name, predict):
        cells = []
        for j, h in enumerate((6, 12, 48)):
            ok = test.landmark_step[:, j] >= 0
            p_ = predict(test.landmark_summary[ok, j])
            cells.append(f"{h} h {roc_auc_score(test.y[ok], p_):.3f} / {average_precision_score(test.y[ok], p_):.3f}")
        p_ = predict(test.summary)
        cells.append(f"end {roc_auc_score(test.y, p_):.3f} / {average_precision_score(test.y, p_):.3f}")
        print(f"{name:<48}" + "   ".join(cells), flush=True)

    end = SummaryBaselines().fit(train.summary, train.y)
    report("last-bin summaries", lambda Z: end.predict_proba(Z)["gradient boosting"])
    grouped = SummaryBaselines().fit(X, y, stay)
    report("snapshots, whole-stay early stopping", lambda Z: grouped.predict_proba(Z)["gradient boosting"])
    rows = HistGradientBoostingClassifier(max_iter=600, learning_rate=0.05, early_stopping=True,
                                          validation_fraction=0.15, n_iter_no_change=20, random_state=0).fit(X, y)
    report(f"snapshots, row-level early stopping ({rows.n_iter_} rounds)", lambda Z: rows.predict_proba(Z)[:, 1])


if __name__ == "__main__":
    main()
