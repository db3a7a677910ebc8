"""The training loop: seeded, early-stopped on validation AUPRC, best weights kept, seed ensembles."""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from .network import MaskedLSTM, Rows, batch_of, predict_logits, to_torch, widths


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


def stop_split(train_idx: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``train_idx`` split into the stays a network is fitted on and the stays it early-stops on (a stratified
    ``fraction``): the network's held-out fold is never looked at by any choice made in training it."""
    from sklearn.model_selection import train_test_split

    n_stop = max(2, int(round(fraction * len(train_idx))))
    counts = np.bincount(y[train_idx], minlength=2)
    strat = y[train_idx] if counts.min() >= 2 and n_stop >= 2 else None
    fit_idx, stop_idx = train_test_split(train_idx, test_size=n_stop, stratify=strat, random_state=seed)
    return np.sort(fit_idx), np.sort(stop_idx)


@dataclass
class CrossFit:
    """k networks, each trained on k-1 folds (less its early-stopping split) and scored on its held-out fold."""

    networks: list[MaskedLSTM]
    oof_logits: np.ndarray  # (N,) each stay's logit from the network that never saw it
    fold: np.ndarray  # (N,) the fold of each stay
    history: list[dict]  # one row per network and epoch
    oof_steps: np.ndarray | None = None  # (N, L) the same network's step logits at ``steps_at`` (NaN where -1)


def cross_fit(t, y: np.ndarray, model_cfg: ModelConfig, cfg: TrainConfig, progress: bool = True,
              on_epoch=None, steps_at: np.ndarray | None = None) -> CrossFit:
    """Train ``cfg.folds`` networks by k-fold cross-fitting on every labelled stay of ``t``
    (:class:`~clinical_lstm.features.impute.Tensors`, or a :class:`~clinical_lstm.features.cohort.Cohort` read from disk when its
    inputs exceed ``cfg.in_memory_gb``).

    Network k trains on the other folds less a stratified ``cfg.stop_fraction`` of them, on which it early-stops
    (:func:`stop_split`): its held-out fold is scored only once it is final. The shipped model is the ensemble of
    all k networks; the out-of-fold logits — at the stay's end, and with ``steps_at`` (N, L) at those bins —
    give honest evidence for the stacking, calibration, threshold and report.
    """
    fold = fold_of(y, cfg.folds, cfg.seed)
    device = pick_device(cfg.device)
    data = t.source(device, cfg.in_memory_gb) if hasattr(t, "source") else to_torch(t, device)
    networks, history = [], []
    oof = np.zeros(len(y), dtype=np.float32)
    oof_steps = None if steps_at is None else np.full(steps_at.shape, np.nan, np.float32)
    for k in range(cfg.folds):
        train_idx, val_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        fit_idx, stop_idx = stop_split(train_idx, y, cfg.stop_fraction, cfg.seed + k)
        net, hist = fit_one(Rows(data, fit_idx), y[fit_idx], Rows(data, stop_idx), y[stop_idx], model_cfg, cfg,
                            cfg.seed + k, device, progress, on_epoch, tag={"fold": k})  # folds index, never copy
        oof[val_idx] = predict_logits(net, Rows(data, val_idx))
        if steps_at is not None:
            at = steps_at[val_idx]
            per_step = predict_logits(net, Rows(data, val_idx), steps=True)  # (n, T)
            oof_steps[val_idx] = np.where(at >= 0, np.take_along_axis(per_step, np.maximum(at, 0), axis=1), np.nan)
        networks.append(net.cpu())
        history += hist
    return CrossFit(networks, oof, fold, history, oof_steps)


@dataclass
class Snapshots:
    """The landmark snapshots of the training stays: one row per stay and hour it was summarized at."""

    stay: np.ndarray  # (R,) the stay (position in the cohort) of each row
    hour: np.ndarray  # (R,) hours since admission (the end of that bin)
    final: np.ndarray  # (R,) True on the row at the stay's last bin (the end-of-stay score)
    summary: np.ndarray  # (R, F)
    lstm: np.ndarray  # (R,) the networks' out-of-fold step logit there

    @classmethod
    def of(cls, cohort, lstm_steps: np.ndarray, resolution_hours: float) -> Snapshots:
        step = cohort.landmark_step  # (N, L)
        stay, col = np.nonzero(step >= 0)
        s = step[stay, col]
        return cls(stay, ((s + 1) * resolution_hours).astype(np.float32), s == cohort.lengths[stay] - 1,
                   cohort.landmark_summary[stay, col], lstm_steps[stay, col].astype(np.float64))

    def __len__(self) -> int:
        return len(self.stay)

    def end_rows(self, n_stays: int) -> np.ndarray:
        """(N,) the row of each stay's end-of-stay snapshot (one per stay: its last bin)."""
        end = np.zeros(n_stays, np.int64)
        end[self.stay[self.final]] = np.flatnonzero(self.final)
        return end


@dataclass
class SummaryFit:
    """The summary members cross-fitted on the LSTM's folds over the snapshots, refitted on every snapshot, and
    the stackings (with and without the LSTM) whose weights vary with the hour."""

    members: dict  # the shipped members' arrays (fitted on every snapshot), for SummaryHead
    oof: dict  # member name -> (R,) out-of-fold logits of every snapshot row
    stack: tuple  # (weights (M, 1 + members), bias (M,)) of (LSTM, *members), fitted on every out-of-fold row
    summaries_stack: tuple  # (weights (M, members), bias (M,)) of the members alone


def fit_summaries(snaps: Snapshots, y_rows: np.ndarray, fold_rows: np.ndarray, knots: np.ndarray,
                  seed: int, end_members: bool = True) -> SummaryFit:
    """The summary members on the same folds as the networks (their out-of-fold logits of every snapshot row are
    the report's baselines and the stacking's inputs): logistic regression and gradient boosting fitted on the
    snapshots of every hour, and with ``end_members`` the same two fitted on each stay's last-bin summary only (the
    end-of-stay specialists). Then the hour-dependent stackings of the out-of-fold logits
    (:func:`~clinical_lstm.features.summaries.fit_stack`, as in stacked generalization)."""
    from .head import MEMBER_NAMES, SummaryHead, fit_members, fit_stack

    groups = ["linear", "trees"] + (["elinear", "etrees"] if end_members else [])
    oof = {MEMBER_NAMES[g]: np.zeros(len(y_rows)) for g in groups}

    def fitted(rows) -> dict:
        both = fit_members(snaps.summary[rows], y_rows[rows], seed, snaps.stay[rows])
        if end_members:
            last = rows & snaps.final
            both.update({f"e{k}": v for k, v in fit_members(snaps.summary[last], y_rows[last], seed).items()})
        return both

    for k in range(int(fold_rows.max()) + 1):
        held = fold_rows == k
        head = SummaryHead(fitted(~held), np.zeros(1 + len(groups)), 0.0)
        with torch.inference_mode():
            for g, z in zip(head.groups, head.member_logits(torch.from_numpy(snaps.summary[held])), strict=True):
                oof[MEMBER_NAMES[g]][held] = z.numpy()
    Z = np.column_stack([snaps.lstm, *oof.values()])
    every = np.ones(len(y_rows), bool)
    return SummaryFit(fitted(every), oof, fit_stack(Z, snaps.hour, y_rows, knots),
                      fit_stack(Z[:, 1:], snaps.hour, y_rows, knots))


def cross_fit_stacks(Z: np.ndarray, hour: np.ndarray, y: np.ndarray, fold: np.ndarray, knots: np.ndarray,
                     method: str) -> np.ndarray:
    """(R,) out-of-fold calibrated risks of a stacking: for each fold, the stacking weights and the calibrator
    fitted on the other folds' rows only (as the shipped ones are on all), applied to this fold's rows. So the
    report's risks come from stays that no fitted choice looked at."""
    from .calibrate import make_calibrator
    from .head import fit_stack, stack_logit

    risk = np.zeros(len(y))
    for k in range(int(fold.max()) + 1):
        fit, held = fold != k, fold == k
        w, b = fit_stack(Z[fit], hour[fit], y[fit], knots)
        cal = make_calibrator(method).fit(stack_logit(Z[fit], hour[fit], w, b, knots), y[fit])
        risk[held] = cal.predict(stack_logit(Z[held], hour[held], w, b, knots))
    return risk


def cross_fit_calibration(z: np.ndarray, y: np.ndarray, fold: np.ndarray, method: str) -> np.ndarray:
    """(R,) out-of-fold calibrated risks of one logit: each fold's calibrator fitted on the other folds."""
    from .calibrate import make_calibrator

    risk = np.zeros(len(y))
    for k in range(int(fold.max()) + 1):
        fit, held = fold != k, fold == k
        risk[held] = make_calibrator(method).fit(z[fit], y[fit]).predict(z[held])
    return risk


@dataclass
class Fitted:
    """What :func:`fit` learned: the parts of the shipped model and the out-of-fold evidence the report is made of."""

    parts: dict  # what the shipped model is made of: RiskModel's fields (the caller builds it: the bundle is above)
    fold: np.ndarray  # (N,) each stay's fold
    oof_risk: np.ndarray  # (N,) the shipped model's calibrated risk at the stay's end, out of fold
    lstm_oof: np.ndarray  # (N,) the networks' logit, out of fold
    members: object  # SummaryHead holding the summary members fitted on every snapshot
    members_oof: dict  # member name -> (N,) out-of-fold logits at the stay's end
    history: list[dict]
    seconds: dict  # phase -> seconds: networks, summaries, total
    snapshots: Snapshots | None = None  # the landmark snapshots of the training stays
    rows_oof: dict = field(default_factory=dict)  # model name -> (R,) out-of-fold calibrated risk per snapshot
    summaries_stack: tuple | None = None  # (weights, bias) of the summaries-only stacking, fitted on every row
    lstm_calibrator: object = None  # the networks' own calibrator (the LSTM-alone row)
    summaries_calibrator: object = None  # the summaries-only stacking's calibrator
    model: object = None  # the RiskModel of ``parts``, set by the caller (workflow.train)


def fit(cohort, cfg, progress: bool = True, on_epoch=None, log=print) -> Fitted:
    """The estimator: k cross-fitted networks, summary members and their hour-dependent stacking fitted on
    landmark snapshots, calibration and the alert threshold, from the labelled stays of ``cohort``
    (:class:`~clinical_lstm.features.cohort.Cohort` built with ``landmarks``, whose transformer was fitted on those stays
    only) and nothing else."""
    import time

    from scipy.special import expit

    from .calibrate import choose_threshold, make_calibrator
    from .head import SummaryHead, knots_for, stack_logit

    t1 = time.perf_counter()
    y = cohort.y
    tr = cohort.transformer
    nets = cross_fit(cohort, y, cfg.model, cfg.train, progress, on_epoch, steps_at=cohort.landmark_step)
    t2 = time.perf_counter()
    snaps = Snapshots.of(cohort, nets.oof_steps, tr.resolution_hours)
    y_rows, fold_rows = y[snaps.stay], nets.fold[snaps.stay]
    method = cfg.calibration.method
    log(f"{cfg.train.folds} networks in {t2 - t1:.0f} s; summary members (logistic regression, gradient "
        f"boosting) on {len(snaps):,} landmark snapshots of the same folds")
    knots = knots_for(cfg.model.stack_knots, tr.window_hours)
    lstm_cal = make_calibrator(method).fit(snaps.lstm, y_rows)  # the networks alone, calibrated over the hours
    rows_oof = {"masked LSTM": cross_fit_calibration(snaps.lstm, y_rows, fold_rows, method)}
    # the summary members are fitted whatever ships: they are the report's baselines (summaries = false ships
    # the networks alone, and the report still shows what the summaries reach)
    summ = fit_summaries(snaps, y_rows, fold_rows, knots, cfg.train.seed, cfg.model.end_members)
    Z = np.column_stack([snaps.lstm, *summ.oof.values()])
    summ_cal = make_calibrator(method).fit(stack_logit(Z[:, 1:], snaps.hour, *summ.summaries_stack, knots), y_rows)
    rows_oof["masked LSTM + summaries"] = cross_fit_stacks(Z, snaps.hour, y_rows, fold_rows, knots, method)
    rows_oof["summaries-only stack"] = cross_fit_stacks(Z[:, 1:], snaps.hour, y_rows, fold_rows, knots, method)
    rows_oof.update({name: expit(summ.oof[name]) for name in ("logistic regression", "gradient boosting")})
    members = SummaryHead(summ.members, *summ.stack, knots)
    if cfg.model.summaries:
        head, shipped = members, "masked LSTM + summaries"
        calibrator = make_calibrator(method).fit(stack_logit(Z, snaps.hour, *summ.stack, knots), y_rows)
    else:
        head, shipped, calibrator = None, "masked LSTM", lstm_cal
    t3 = time.perf_counter()
    final = snaps.end_rows(len(y))
    oof_risk = rows_oof[shipped][final]
    threshold = choose_threshold(y, oof_risk, cfg.calibration.threshold_rule)
    references = {"lstm_calibrator": lstm_cal.to_dict()}
    if head is not None:
        references.update(summaries_weights=np.asarray(summ.summaries_stack[0]).tolist(),
                          summaries_bias=np.asarray(summ.summaries_stack[1]).tolist(),
                          summaries_calibrator=summ_cal.to_dict())
    parts = {"transformer": tr, "networks": nets.networks, "calibrator": calibrator, "threshold": threshold,
             "head": head, "references": references}
    if head is not None:
        w = summ.stack[0]
        log(f"the model: {len(nets.networks)} networks stacked with the summary members; weights (LSTM, "
            f"{', '.join(summ.oof)}) by hour: " + "; ".join(
                f"{h:g} h " + "/".join(f"{v:.2f}" for v in w[j]) for j, h in enumerate(knots)))
    else:
        log(f"the model: {len(nets.networks)} networks")
    members_oof = {name: summ.oof[name][final] for name in ("logistic regression", "gradient boosting")}
    seconds = {"networks": t2 - t1, "summaries": t3 - t2, "total": time.perf_counter() - t1}
    return Fitted(parts, nets.fold, oof_risk, nets.oof_logits, members, members_oof, nets.history,
                  {k: round(v, 1) for k, v in seconds.items()}, snaps, rows_oof, summ.summaries_stack, lstm_cal,
                  summ_cal)
