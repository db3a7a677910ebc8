"""Tests for clinical_lstm.model.training: a planted-signal cohort the cross-fitted model must find (and must not find
once the labels are shuffled), honest out-of-fold logits, seeded reproducibility, early stopping keeping the
best weights, argument checks."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.features.impute import GridTransformer, Tensors
from clinical_lstm.model.network import ModelConfig
from clinical_lstm.model.training import (
    TrainConfig,
    _pos_weight,
    cross_fit,
    fit_one,
    fold_of,
    predict_logits,
    to_torch,
)

CPU = torch.device("cpu")
WINDOW = 24
SIGNAL_HOURS = 6  # the signal variable's level over a stay's last 6 hours drives the label

CATALOGUE_CSV = """name,unit,lower,upper,aggregation,kind,static,description
Age,years,0,120,last,static,true,noise static
Sig,u,0,500,mean,vital,false,the planted signal
HRn,bpm,0,500,mean,vital,false,dense noise
Lacn,u,0,500,last,lab,false,sparse noise
Urn,mL,0,5000,sum,vital,false,summed noise
Rare,u,0,500,last,lab,false,very sparse noise
Tmp,u,0,500,mean,vital,false,noise
"""
# noise variables: (name, probability of an observation in an hour, population mean, population sd)
NOISE = [("HRn", 0.9, 85.0, 15.0), ("Lacn", 0.15, 2.0, 0.8), ("Urn", 0.5, 60.0, 20.0),
         ("Rare", 0.05, 100.0, 30.0), ("Tmp", 0.6, 37.0, 0.7)]


@dataclass
class Cohort:
    train: Tensors
    val: Tensors
    test: Tensors
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray


def synth_long(n: int, seed: int) -> tuple[pl.DataFrame, np.ndarray, np.ndarray]:
    """Irregularly sampled stays with missingness; label = latent z (+ a little noise) above its ~80th
    percentile, and z shows up only in Sig's level during the stay's last SIGNAL_HOURS hours."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = (z + rng.normal(0, 0.3, n) > 0.84).astype(np.int64)
    ids = np.arange(1000, 1000 + n, dtype=np.int64)
    sid, time, var, val = [], [], [], []

    def add(i, t, name, value):
        sid.append(ids[i])
        time.append(float(t))
        var.append(name)
        val.append(float(value))

    for i in range(n):
        end = int(rng.integers(16, WINDOW + 1))  # stays end (are discharged / data stop) at different hours
        add(i, 0.0, "Age", rng.normal(65, 12))
        for name, p, mu, sd in NOISE:
            level = rng.normal(mu, sd)
            for h in np.flatnonzero(rng.random(end) < p):
                add(i, h + rng.random(), name, abs(level + rng.normal(0, sd / 3)))
        late_start = end - SIGNAL_HOURS
        seen = rng.random(end) < 0.5
        seen[end - 1] = True  # a last observation fixes the stay's length at `end` bins
        for h in np.flatnonzero(seen):
            level = 50.0 + (8.0 * z[i] if h >= late_start else 0.0)
            add(i, h + 0.99 * rng.random(), "Sig", level + rng.normal(0, 2))
    clean = pl.DataFrame({"stay_id": sid, "time": time, "variable": var, "value": val},
                         schema={"stay_id": pl.Int64, "time": pl.Float64, "variable": pl.String,
                                 "value": pl.Float64})
    return clean, ids, y


def split(clean, ids, y, n_train, n_val, seed) -> Cohort:
    order = np.random.default_rng(seed).permutation(len(ids))
    tr, va, te = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    cat = Catalogue.from_csv_text(CATALOGUE_CSV, source="synthetic catalogue")
    gt = GridTransformer(cat, window_hours=WINDOW, resolution_hours=1).fit(clean, ids[tr])  # training stays only
    return Cohort(gt.transform(clean, ids[tr]), gt.transform(clean, ids[va]), gt.transform(clean, ids[te]),
                  y[tr], y[va], y[te])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def long_cohort():
    return synth_long(400, seed=2024)


@pytest.fixture(scope="module")
def cohort(long_cohort) -> Cohort:
    clean, ids, y = long_cohort
    return split(clean, ids, y, n_train=200, n_val=80, seed=7)


@pytest.fixture(scope="module")
def small(long_cohort) -> Cohort:
    """A quick subset for the reproducibility tests."""
    clean, ids, y = long_cohort
    keep = np.arange(160)
    return split(clean.filter(pl.col("stay_id").is_in(ids[keep].tolist())), ids[keep], y[keep], 100, 40, seed=3)


SIGNAL_MODEL = ModelConfig(hidden_size=16, dropout=0.1, decay=True, attention=False)
SIGNAL_TRAIN = TrainConfig(folds=3, epochs=15, patience=5, batch_size=32, lr=5e-3, seed=0, device="cpu")
QUICK_MODEL = ModelConfig(hidden_size=8, dropout=0.2)
QUICK_TRAIN = TrainConfig(folds=2, epochs=3, patience=3, batch_size=32, lr=5e-3, seed=0, device="cpu")


def joined(c: Cohort) -> tuple[Tensors, np.ndarray]:
    """Training and validation stays together: cross-fitting makes its own folds."""
    idx = np.arange(len(c.train) + len(c.val))
    both = Tensors(*(np.concatenate([a, b]) for a, b in zip(
        (c.train.x, c.train.mask, c.train.delta, c.train.lengths, c.train.statics, c.train.stay_ids),
        (c.val.x, c.val.mask, c.val.delta, c.val.lengths, c.val.statics, c.val.stay_ids), strict=True)))
    return both.subset(idx), np.concatenate([c.y_train, c.y_val])


def test_synthetic_cohort_is_what_it_claims(cohort, long_cohort):
    clean, ids, y = long_cohort
    assert 0.1 < y.mean() < 0.35
    assert 0 < cohort.y_val.sum() < len(cohort.y_val) and 0 < cohort.y_test.sum() < len(cohort.y_test)
    assert cohort.train.x.shape == (200, WINDOW, 6)
    assert set(cohort.train.lengths.tolist()) <= set(range(16, WINDOW + 1))
    assert 0.2 < cohort.train.mask.mean() < 0.6  # irregular sampling with plenty of missingness


@pytest.fixture(scope="module")
def signal_fit(cohort):
    """The cross-fit on the true labels, shared by the planted-signal test and the shuffled-label control."""
    t, y = joined(cohort)
    return cross_fit(t, y, SIGNAL_MODEL, SIGNAL_TRAIN, progress=False)


def test_planted_signal_is_learned_and_out_of_fold_logits_are_honest(cohort, signal_fit):
    t, y = joined(cohort)
    fit = signal_fit
    assert len(fit.networks) == 3 and {row["fold"] for row in fit.history} == {0, 1, 2}
    assert roc_auc_score(cohort.y_test, predict_logits(fit.networks, to_torch(cohort.test, CPU))) > 0.85
    assert roc_auc_score(y, fit.oof_logits) > 0.8
    # each stay's out-of-fold logit is the logit of the network of its fold, which never trained on it
    data = to_torch(t, CPU)
    for k, net in enumerate(fit.networks):
        held = np.flatnonzero(fit.fold == k)
        np.testing.assert_allclose(fit.oof_logits[held], predict_logits(net, {n: v[held] for n, v in data.items()}),
                                   atol=1e-6)


def test_shuffled_labels_are_not_learned(cohort, signal_fit):
    # Only the training labels are shuffled; both arms are scored on the TRUE labels of the held-out test stays,
    # which neither arm trained on. The same model, config and stays trained on the true labels must find the
    # signal, so a leak of true labels into the shuffled arm's training (or a scorer that ignores the model)
    # fails here instead of passing at AUROC ~ 0.5 whatever was learned.
    rng = np.random.default_rng(99)
    t, y = joined(cohort)
    y_shuffled = rng.permutation(y)
    assert abs(np.corrcoef(y_shuffled, y)[0, 1]) < 0.2, "precondition: the shuffled labels must not track the true"
    test = to_torch(cohort.test, CPU)
    shuffled = cross_fit(t, y_shuffled, SIGNAL_MODEL, SIGNAL_TRAIN, progress=False)
    auc_true = roc_auc_score(cohort.y_test, predict_logits(signal_fit.networks, test))
    auc_shuffled = roc_auc_score(cohort.y_test, predict_logits(shuffled.networks, test))
    assert auc_true > 0.85, f"trained on true labels: test AUROC {auc_true:.3f}"
    assert 0.35 < auc_shuffled < 0.65, f"trained on shuffled labels: test AUROC {auc_shuffled:.3f} (should be ~0.5)"


def test_folds_are_stratified_and_cover_every_stay():
    y = np.r_[np.ones(10, np.int64), np.zeros(40, np.int64)]
    fold = fold_of(y, 5, seed=3)
    assert sorted(np.unique(fold).tolist()) == [0, 1, 2, 3, 4]
    assert [int(y[fold == k].sum()) for k in range(5)] == [2] * 5
    assert np.array_equal(fold, fold_of(y, 5, seed=3)) and not np.array_equal(fold, fold_of(y, 5, seed=4))
    with pytest.raises(ValueError, match=r"5-fold cross-fitting needs at least 5 stays of each outcome; got 3 "
                                         r"deaths and 40 survivors"):
        fold_of(np.r_[np.ones(3, np.int64), np.zeros(40, np.int64)], 5, seed=0)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_reproduces_exactly(small):
    t, y = joined(small)
    f1, f2 = (cross_fit(t, y, QUICK_MODEL, QUICK_TRAIN, progress=False) for _ in range(2))
    assert f1.history == f2.history and len(f1.history) == QUICK_TRAIN.folds * QUICK_TRAIN.epochs
    assert np.array_equal(f1.oof_logits, f2.oof_logits) and np.array_equal(f1.fold, f2.fold)
    for a, b in zip(f1.networks, f2.networks, strict=True):
        sa, sb = _state(a), _state(b)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_different_seed_gives_different_folds_and_weights(small):
    t, y = joined(small)
    f0 = cross_fit(t, y, QUICK_MODEL, QUICK_TRAIN, progress=False)
    f1 = cross_fit(t, y, QUICK_MODEL, replace(QUICK_TRAIN, seed=1), progress=False)
    assert not np.array_equal(f0.fold, f1.fold)
    s0, s1 = _state(f0.networks[0]), _state(f1.networks[0])
    assert not any(torch.equal(s0[k], s1[k]) for k in s0 if k.startswith("lstm.weight"))


def test_early_stopping_keeps_best_val_auprc_weights(cohort):
    # Noisy labels and a high learning rate: validation AUPRC wanders, so the best epoch is not the last.
    rng = np.random.default_rng(5)
    y_train, y_val = rng.permutation(cohort.y_train), rng.permutation(cohort.y_val)
    cfg = TrainConfig(epochs=12, patience=3, batch_size=32, lr=2e-2, seed=0, device="cpu")
    seen = []
    val = to_torch(cohort.val, CPU)
    model, history = fit_one(to_torch(cohort.train, CPU), y_train, val, y_val, ModelConfig(hidden_size=16, dropout=0.0),
                             cfg, seed=0, device=CPU, progress=False, on_epoch=seen.append, tag={"fold": 0})
    assert seen == history
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    scores = [row["val_auprc"] for row in history]
    best_epoch = int(np.argmax(scores))
    assert best_epoch < len(history) - 1, "precondition: the final epoch must not be the best one"
    val_logit = predict_logits(model, val)
    assert abs(average_precision_score(y_val, val_logit) - max(scores)) < 1e-9
    assert abs(roc_auc_score(y_val, val_logit) - history[best_epoch]["val_auroc"]) < 1e-9
    if len(history) < cfg.epochs:  # stopped early: exactly `patience` epochs without improvement
        assert len(history) - 1 - best_epoch == cfg.patience


def test_bad_training_values_fail_when_the_config_is_built():
    with pytest.raises(ValueError, match=r"\[train\] pos_weight must be one of \('none', 'sqrt', 'balanced'\); "
                                         r"got 'inverse'"):
        TrainConfig(pos_weight="inverse")
    with pytest.raises(ValueError, match=r"\[train\] epochs must be >= 1; got -3"):
        TrainConfig(epochs=-3)


def test_pos_weight_rules_by_hand():
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0])  # 2 positives, 6 negatives -> neg/pos = 3
    assert _pos_weight(y, "none") == 1.0
    assert _pos_weight(y, "balanced") == pytest.approx(3.0)
    assert _pos_weight(y, "sqrt") == pytest.approx(3.0 ** 0.5)
