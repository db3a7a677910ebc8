"""The training loop: seeded, early-stopped on validation AUPRC, best weights kept, seed ensembles."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import ModelConfig, TrainConfig
from .model import MaskedLSTM, Rows, batch_of, predict_logits, to_torch, widths


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- seeds legacy global numpy users may rely on
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _pos_weight(y: np.ndarray, rule: str) -> float:
    ratio = (len(y) - y.sum()) / max(y.sum(), 1)
    options = {"none": 1.0, "sqrt": float(np.sqrt(ratio)), "balanced": float(ratio)}
    if rule not in options:
        raise ValueError(f"The 'pos_weight' parameter must be one of {tuple(options)}. Got {rule!r} instead.")
    return options[rule]


def loss_fn(logit, step_logits, lengths, y, pos_weight: float, replication: float):
    """BCE on the stay logit plus ``replication`` x mean BCE over every valid step (target replication)."""
    pw = torch.tensor(pos_weight, device=logit.device)
    final = nn.functional.binary_cross_entropy_with_logits(logit, y, pos_weight=pw)
    if replication <= 0:
        return final
    T = step_logits.shape[1]
    valid = (torch.arange(T, device=logit.device)[None, :] < lengths[:, None]).float()  # (B, T)
    steps = nn.functional.binary_cross_entropy_with_logits(
        step_logits, y[:, None].expand_as(step_logits), pos_weight=pw, reduction="none")  # (B, T)
    return final + replication * (steps * valid).sum() / valid.sum()


def run_epoch(model, opt, train: dict[str, torch.Tensor] | Rows, y: torch.Tensor, pos_weight: float, cfg: TrainConfig,
              gen: torch.Generator) -> float:
    """One pass over the training tensors in shuffled mini-batches; returns the mean training loss."""
    model.train()
    n = len(y)
    perm = torch.randperm(n, generator=gen)
    total = 0.0
    for i in range(0, n, cfg.batch_size):
        idx = perm[i:i + cfg.batch_size].to(y.device)
        b = batch_of(train, idx)
        logit, step_logits = model(b["x"], b["mask"], b["delta"], b["statics"], b["lengths"])
        loss = loss_fn(logit, step_logits, b["lengths"], y[idx], pos_weight, cfg.target_replication)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        total += loss.item() * len(idx)
    return total / n


def fit_one(train: dict, y_train: np.ndarray, val: dict, y_val: np.ndarray, model_cfg: ModelConfig,
            cfg: TrainConfig, seed: int, device: torch.device, progress: bool = True, on_epoch=None,
            tag: dict | None = None):
    """Train one network; return ``(model with the best validation-AUPRC weights, history)``."""
    from sklearn.metrics import average_precision_score, roc_auc_score  # heavy: import where used
    from tqdm.auto import tqdm

    gen = seed_everything(seed)
    model = MaskedLSTM(model_cfg, *widths(train)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    yt = torch.from_numpy(y_train.astype(np.float32)).to(device)
    pw = _pos_weight(y_train, cfg.pos_weight)
    best, best_loss, best_state, stale, history = -1.0, np.inf, None, 0, []
    bar = tqdm(range(cfg.epochs), desc="train " + " ".join(f"{k} {v}" for k, v in (tag or {}).items()),
               disable=not progress, leave=False)
    for epoch in bar:
        train_loss = run_epoch(model, opt, train, yt, pw, cfg, gen)
        val_logit = predict_logits(model, val)
        auprc = float(average_precision_score(y_val, val_logit))
        val_loss = float(nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(val_logit), torch.from_numpy(y_val.astype(np.float32))))
        row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_auprc": auprc,
               "val_auroc": float(roc_auc_score(y_val, val_logit)), **(tag or {})}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auprc=f"{auprc:.3f}")
        # better AUPRC wins; at equal AUPRC (e.g. a separable validation set at 1.0) lower validation loss wins
        if auprc > best + 1e-4 or (auprc >= best - 1e-4 and val_loss < best_loss - 1e-4):
            best, best_loss, best_state, stale = max(auprc, best), val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, history


def fold_of(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) the cross-fitting fold of each stay: stratified by outcome, shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise ValueError(f"{folds}-fold cross-fitting needs at least {folds} stays of each outcome; got "
                         f"{counts[1]} deaths and {counts[0]} survivors. Lower [train] folds or add stays")
    out = np.empty(len(y), dtype=np.int64)
    for k, (_, held_out) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y)):
        out[held_out] = k
    return out


@dataclass
class CrossFit:
    """k networks, each trained on k-1 folds and early-stopped on its own held-out fold."""

    networks: list[MaskedLSTM]
    oof_logits: np.ndarray  # (N,) each stay's logit from the network that never saw it
    fold: np.ndarray  # (N,) the fold of each stay
    history: list[dict]  # one row per network and epoch


def cross_fit(t, y: np.ndarray, model_cfg: ModelConfig, cfg: TrainConfig, progress: bool = True,
              on_epoch=None) -> CrossFit:
    """Train ``cfg.folds`` networks by k-fold cross-fitting on every labelled stay of ``t``
    (:class:`~clinical_lstm.impute.Tensors`, or a :class:`~clinical_lstm.cohort.Cohort` read from disk when its
    inputs exceed ``cfg.in_memory_gb``).

    The shipped model is the ensemble of all k networks (each saw (k-1)/k of the stays); the out-of-fold
    logits give honest metrics, calibration and a threshold for every stay.
    """
    fold = fold_of(y, cfg.folds, cfg.seed)
    device = pick_device(cfg.device)
    data = t.source(device, cfg.in_memory_gb) if hasattr(t, "source") else to_torch(t, device)
    networks, history = [], []
    oof = np.zeros(len(y), dtype=np.float32)
    for k in range(cfg.folds):
        train_idx, val_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        net, hist = fit_one(Rows(data, train_idx), y[train_idx], Rows(data, val_idx), y[val_idx], model_cfg, cfg,
                            cfg.seed + k, device, progress, on_epoch, tag={"fold": k})  # folds index, never copy
        oof[val_idx] = predict_logits(net, Rows(data, val_idx))
        networks.append(net.cpu())
        history += hist
    return CrossFit(networks, oof, fold, history)


@dataclass
class SummaryFit:
    """The summary members cross-fitted on the LSTM's folds, refitted on every stay, and the stacking."""

    members: dict  # the shipped members' arrays (fitted on every stay), for SummaryHead
    oof: dict  # member name -> (N,) out-of-fold logits: "logistic regression", "gradient boosting"
    stack: np.ndarray  # (3,) weights of (LSTM, linear, trees) logits, fitted on the out-of-fold logits
    bias: float


def fit_summaries(summary: np.ndarray, y: np.ndarray, fold: np.ndarray, lstm_oof: np.ndarray,
                  seed: int) -> SummaryFit:
    """Logistic regression and gradient boosting on the summaries, on the same folds as the networks (their
    out-of-fold logits are the report's baselines), then the stacking weights of the three out-of-fold logits
    (a logistic regression, as in stacked generalization)."""
    from sklearn.linear_model import LogisticRegression

    from .summaries import SummaryHead, fit_members

    oof = {"logistic regression": np.zeros(len(y)), "gradient boosting": np.zeros(len(y))}
    for k in range(int(fold.max()) + 1):
        fit, held = fold != k, fold == k
        head = SummaryHead(fit_members(summary[fit], y[fit], seed), np.zeros(3), 0.0)
        with torch.inference_mode():
            s = torch.from_numpy(summary[held])
            oof["logistic regression"][held] = head.linear(s).numpy()
            oof["gradient boosting"][held] = head.trees(s).numpy()
    Z = np.column_stack([lstm_oof, oof["logistic regression"], oof["gradient boosting"]])
    stacker = LogisticRegression(C=1.0, max_iter=1000).fit(Z, y)
    return SummaryFit(fit_members(summary, y, seed), oof, stacker.coef_[0], float(stacker.intercept_[0]))


@dataclass
class Fitted:
    """What :func:`fit` learned: the shipped model and the out-of-fold evidence the report is made of."""

    model: object  # RiskModel
    fold: np.ndarray  # (N,) each stay's fold
    oof_risk: np.ndarray  # (N,) the shipped model's calibrated risk, out of fold
    lstm_oof: np.ndarray  # (N,) the networks' logit, out of fold
    members: object  # SummaryHead holding the summary members fitted on every stay
    members_oof: dict  # member name -> (N,) out-of-fold logits
    history: list[dict]
    seconds: dict  # phase -> seconds: networks, summaries, total


def fit(cohort, cfg, progress: bool = True, on_epoch=None, log=print) -> Fitted:
    """The estimator: k cross-fitted networks, summary members, stacking, calibration and the alert threshold,
    from the labelled stays of ``cohort`` (:class:`~clinical_lstm.cohort.Cohort`, whose transformer was fitted on
    those stays only) and nothing else."""
    import time

    from .bundle import RiskModel
    from .calibrate import choose_threshold, make_calibrator
    from .summaries import SummaryHead

    t1 = time.perf_counter()
    y = cohort.y
    nets = cross_fit(cohort, y, cfg.model, cfg.train, progress, on_epoch)
    t2 = time.perf_counter()
    log(f"{cfg.train.folds} networks in {t2 - t1:.0f} s; summary members (logistic regression, gradient "
        f"boosting) on the same folds")
    summ = fit_summaries(cohort.summary, y, nets.fold, nets.oof_logits, cfg.train.seed)
    t3 = time.perf_counter()
    members = SummaryHead(summ.members, summ.stack, summ.bias)
    head = members if cfg.model.summaries else None
    oof = summ.stack @ np.vstack([nets.oof_logits, *summ.oof.values()]) + summ.bias if head else nets.oof_logits
    calibrator = make_calibrator(cfg.calibration.method).fit(oof, y)
    oof_risk = calibrator.predict(oof)
    threshold = choose_threshold(y, oof_risk, cfg.calibration.threshold_rule)
    model = RiskModel(cohort.transformer, nets.networks, calibrator, threshold, head=head)
    log(f"the model: {len(nets.networks)} networks" + (
        f" stacked with the summary members (weights: LSTM {summ.stack[0]:.2f}, logistic regression "
        f"{summ.stack[1]:.2f}, gradient boosting {summ.stack[2]:.2f})" if head else ""))
    seconds = {"networks": t2 - t1, "summaries": t3 - t2, "total": time.perf_counter() - t1}
    return Fitted(model, nets.fold, oof_risk, nets.oof_logits, members, summ.oof, nets.history,
                  {k: round(v, 1) for k, v in seconds.items()})
