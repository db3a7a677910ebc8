"""Levers for the masked LSTM, measured outside the package's training code (the ablation in docs/benchmarks.md).

    python benchmarks/bench_levers.py --name base5                       # 5-fold cross-fit ensemble, defaults
    python benchmarks/bench_levers.py --name single --single             # the old default: one net, 64 % of A
    python benchmarks/bench_levers.py --name aux --aux 0.3               # + auxiliary targets (LOS, SOFA, ...)
    python benchmarks/bench_levers.py --name stats --stats               # + causal running-statistic channels
    python benchmarks/bench_levers.py --name embed8 --embed 8            # + per-variable embeddings
    python benchmarks/bench_levers.py --name distill1 --distill 1.0      # + distillation from out-of-fold GBM
    python benchmarks/bench_levers.py --table                            # the table: paired vs base5 on set B

Every run: k networks cross-fitted on set A (each early-stopped on its held-out fold), their mean logit scored on
set B; the B predictions go to ``--work`` and one JSON line per run to ``--work/results.jsonl``. Inputs are the
package's own (``data.load.load`` -> ``validate`` -> ``to_grid`` -> ``GridTransformer``, fitted on set A); the
network, loss and training loop are a small self-contained copy with the levers as options, so that a lever can be
tried before it is built into the package. Single runs of one configuration vary by about +-0.003 AUROC.
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from torch import nn

from clinical_lstm.data.catalogue import Catalogue
from clinical_lstm.data.grid import Grid
from clinical_lstm.features.impute import GridTransformer

REPO = Path(__file__).resolve().parents[1]
p = argparse.ArgumentParser()
p.add_argument("--name")
p.add_argument("--work", default=str(REPO / "runs" / "levers"))
p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "physionet2012"))
p.add_argument("--table", action="store_true", help="print the paired table of every run so far and exit")
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--layers", type=int, default=1)
p.add_argument("--dropout", type=float, default=0.2)
p.add_argument("--stats", action="store_true")
p.add_argument("--embed", type=int, default=0)  # per-variable embedding width (0 = none)
p.add_argument("--aux", type=float, default=0.0)  # weight of auxiliary targets
p.add_argument("--folds", type=int, default=5)
p.add_argument("--seeds", type=int, default=1)  # networks per fold
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--wd", type=float, default=1e-2)
p.add_argument("--epochs", type=int, default=40)
p.add_argument("--patience", type=int, default=8)
p.add_argument("--rep", type=float, default=0.5)
p.add_argument("--pw", default="sqrt")
p.add_argument("--bs", type=int, default=64)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--select", default="auprc")  # early stopping metric: auprc | loss | auroc
p.add_argument("--nodecay", action="store_true")
p.add_argument("--ema", type=float, default=0.0)
p.add_argument("--single", action="store_true")  # old default: one net on 64 %
p.add_argument("--pool", default="last")
p.add_argument("--distill", type=float, default=0.0)
p.add_argument("--fold_seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(a.threads)

cat = Catalogue.default()
WORK = Path(a.work)
WORK.mkdir(parents=True, exist_ok=True)


def cache(s):
    """Set ``s``'s grid, outcomes and summary features, computed once into ``--work``."""
    path = WORK / f"set_{s}.npz"
    if not path.exists():
        import polars as pl
        from raw_summaries import summary_features  # beside this script

        from clinical_lstm.data.grid import to_grid
        from clinical_lstm.data.load import load as load_set
        from clinical_lstm.data.validate import validate

        raw = load_set(f"{a.data_dir}/set-{s}.tar.gz")
        clean, kept, _ = validate(raw, cat, 48.0, require_labels=True)
        ids = kept.to_numpy()
        g = to_grid(clean, ids, cat)
        out = pl.read_csv(f"{a.data_dir}/Outcomes-{s}.txt").rename({"RecordID": "stay_id"})
        o = pl.DataFrame({"stay_id": ids}).join(out, on="stay_id", how="left")
        np.savez_compressed(
            path,
            values=g.values,
            obs_time=g.obs_time,
            lengths=g.lengths,
            statics=g.statics,
            ids=ids,
            y=o["In-hospital_death"].to_numpy(),
            saps=o["SAPS-I"].to_numpy(),
            sofa=o["SOFA"].to_numpy(),
            los=o["Length_of_stay"].to_numpy(),
            surv=o["Survival"].to_numpy(),
            summ=summary_features(clean, cat, ids)[0],
        )
    return dict(np.load(path, allow_pickle=True))


def teacher_oof(A):
    """Out-of-fold gradient-boosting probabilities on set A (the distillation teacher), cached."""
    path = WORK / "oof_gbm_a.npy"
    if not path.exists():
        from clinical_lstm.model.members import SummaryBaselines

        oof = np.zeros(len(A["y"]))
        for tr_i, va_i in StratifiedKFold(5, shuffle=True, random_state=0).split(A["summ"], A["y"]):
            oof[va_i] = (
                SummaryBaselines(seed=0)
                .fit(A["summ"][tr_i], A["y"][tr_i])
                .predict_proba(A["summ"][va_i])["gradient boosting"]
            )
        np.save(path, oof)
    return np.load(path)


if a.table:
    from scipy.special import expit

    from clinical_lstm.evaluation.metrics import evaluate, paired_difference

    yB = cache("b")["y"]
    ref = expit(np.load(WORK / "pred_base5.npy"))
    print("| run | AUROC | AUPRC | AUROC - base5 | AUPRC - base5 |\n| --- | --- | --- | --- | --- |")
    for line in (WORK / "results.jsonl").read_text().splitlines():
        name = json.loads(line)["name"]
        p = expit(np.load(WORK / f"pred_{name}.npy"))
        e, d = evaluate(yB, p, 0.5), paired_difference(yB, p, ref, 0.5, 0.5)
        print(f"| {name} | {e['auroc']} | {e['auprc']} | {d['auroc']} | {d['auprc']} |")
    sys.exit(0)
if not a.name:
    p.error("--name is required (or --table)")


def load(s):
    return cache(s)


A, B = load("a"), load("b")


def grid(d):
    return Grid(d["values"], d["obs_time"], d["lengths"], d["statics"], d["ids"], 1.0)


tr = GridTransformer(cat).fit_grid(grid(A))


def running_stats(d, t):
    """Causal per-variable: count, mean, min, max, first (standardized units)."""
    raw = d["values"]
    z = raw.copy()
    cols = np.flatnonzero(tr.log_)
    z[:, :, cols] = np.log1p(np.maximum(z[:, :, cols], 0))
    z = (z - tr.center_.astype(np.float32)) / tr.scale_.astype(np.float32)
    obs = ~np.isnan(z)
    cnt = np.cumsum(obs, axis=1).astype(np.float32)
    s = np.cumsum(np.where(obs, z, 0), axis=1)
    mean = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    mn = np.fmin.accumulate(np.where(obs, z, np.nan), axis=1)
    mx = np.fmax.accumulate(np.where(obs, z, np.nan), axis=1)
    seen = cnt > 0  # the first observed value, from the step it is seen on (causal)
    fi = np.argmax(obs, axis=1)  # (N, V) first obs index
    fv = np.take_along_axis(z, fi[:, None, :], axis=1)  # (N,1,V)
    first = np.where(seen, fv, np.nan)
    med = tr.median_.astype(np.float32)[None, None, :]
    out = [np.log1p(cnt)]
    for arr in (mean, mn, mx, first):
        out.append(np.where(np.isnan(arr), med, arr))
    res = np.concatenate(out, axis=2).astype(np.float32)
    pad = np.arange(z.shape[1])[None, :] >= d["lengths"][:, None]
    res[pad] = 0
    return res


def tensors(d):
    t = tr.transform_grid(grid(d))
    extra = running_stats(d, t) if a.stats else np.zeros((len(t), t.x.shape[1], 0), np.float32)
    return t, extra


tA, eA = tensors(A)
tB, eB = tensors(B)


def aux_targets(d):
    los = np.log1p(np.clip(d["los"], 0, None)).astype(np.float32)
    sofa = d["sofa"].astype(np.float32)
    sofa = np.where(sofa < 0, np.nan, sofa)
    saps = d["saps"].astype(np.float32)
    saps = np.where(saps < 0, np.nan, saps)
    surv = d["surv"].astype(np.float32)
    died30 = ((surv >= 0) & (surv <= 30)).astype(np.float32)
    died_any = (surv >= 0).astype(np.float32)
    Y = np.stack([(los - 2) / 1, (sofa - 6) / 4, (saps - 14) / 5, died30, died_any], axis=1)
    return Y


auxA = aux_targets(A)
teacher = teacher_oof(A).astype(np.float32) if a.distill else np.zeros(len(A["y"]), np.float32)
AUX_BIN = [3, 4]


class Net(nn.Module):
    def __init__(self, V, E, S, H):
        super().__init__()
        self.V = V
        self.decay = not a.nodecay
        if self.decay:
            self.dw = nn.Parameter(torch.zeros(V))
            self.db = nn.Parameter(torch.zeros(V))
        per = 3 + E // V
        if a.embed:
            self.emb = nn.Parameter(torch.randn(V, per, a.embed) / per**0.5)
            self.emb_b = nn.Parameter(torch.zeros(V, a.embed))
            inp = V * a.embed + S
        else:
            inp = 3 * V + E + S
        self.lstm = nn.LSTM(
            inp, H, num_layers=a.layers, batch_first=True, dropout=a.dropout if a.layers > 1 else 0
        )
        self.head = nn.Linear(H + S, 1)
        if a.pool == "attn":
            self.att = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 1))
        if a.aux:
            self.aux = nn.Linear(H + S, 5)

    def forward(self, x, m, d, e, s, L):
        if self.decay:
            g = torch.exp(-torch.relu(self.dw * d + self.db))
            x = x * (m + (1 - m) * g)
        B, T, V = x.shape
        if a.embed:
            parts = [x, m, torch.log1p(d)]
            if e.shape[2]:
                parts += list(e.reshape(B, T, -1, V).unbind(2))
            ch = torch.stack(parts, dim=-1)  # (B,T,V,per)
            z = torch.relu(torch.einsum("btvc,vce->btve", ch, self.emb) + self.emb_b).reshape(B, T, -1)
            inp = torch.cat([z, s[:, None].expand(B, T, s.shape[1])], -1)
        else:
            inp = torch.cat([x, m, torch.log1p(d), e, s[:, None].expand(B, T, s.shape[1])], -1)
        hs, _ = self.lstm(inp)
        if self.training and a.dropout > 0:
            hs = nn.functional.dropout(hs, a.dropout)
        sx = s[:, None].expand(B, T, s.shape[1])
        steps = self.head(torch.cat([hs, sx], -1)).squeeze(-1)
        last = (L - 1).long()
        if a.pool == "last":
            logit = steps.gather(1, last[:, None]).squeeze(1)
            hl = hs[torch.arange(B), last]
        else:
            valid = torch.arange(T)[None] < L[:, None]
            if a.pool == "attn":
                sc = self.att(hs).squeeze(-1).masked_fill(~valid, -1e9)
                w = torch.softmax(sc, 1)[..., None]
                hl = (w * hs).sum(1)
            elif a.pool == "mean":
                hl = (hs * valid[..., None]).sum(1) / L[:, None]
            else:
                hl = hs.masked_fill(~valid[..., None], -1e9).max(1).values
            logit = self.head(torch.cat([hl, s], -1)).squeeze(-1)
        auxo = self.aux(torch.cat([hl, s], -1)) if a.aux else None
        return logit, steps, auxo


def T(t, e, idx):
    return [
        torch.from_numpy(t.x[idx]),
        torch.from_numpy(t.mask[idx]),
        torch.from_numpy(t.delta[idx]),
        torch.from_numpy(e[idx]),
        torch.from_numpy(t.statics[idx]),
        torch.from_numpy(t.lengths[idx]),
    ]


@torch.no_grad()
def predict(net, data):
    net.eval()
    out = []
    n = len(data[0])
    for i in range(0, n, 1024):
        out.append(net(*[d[i : i + 1024] for d in data])[0])
    return torch.cat(out).numpy()


def fit(tr_idx, va_idx, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    y = A["y"].astype(np.float32)
    dtr, dva = T(tA, eA, tr_idx), T(tA, eA, va_idx)
    ytr, yva = torch.from_numpy(y[tr_idx]), y[va_idx]
    auxtr = torch.from_numpy(auxA[tr_idx])
    teach = torch.from_numpy(teacher[tr_idx])
    net = Net(37, eA.shape[2], tA.statics.shape[1], a.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.wd)
    ratio = (1 - y[tr_idx].mean()) / y[tr_idx].mean()
    pw = torch.tensor({"sqrt": ratio**0.5, "none": 1.0, "bal": ratio}[a.pw])
    best, bstate, stale, besti = -1e9, None, 0, 0
    ema = copy.deepcopy(net) if a.ema else None
    n = len(tr_idx)
    for ep in range(a.epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, a.bs):
            b = perm[i : i + a.bs]
            logit, steps, auxo = net(*[d[b] for d in dtr])
            yb = ytr[b]
            loss = nn.functional.binary_cross_entropy_with_logits(logit, yb, pos_weight=pw)
            if a.rep:
                L = dtr[5][b]
                valid = (torch.arange(steps.shape[1])[None] < L[:, None]).float()
                sl = nn.functional.binary_cross_entropy_with_logits(
                    steps, yb[:, None].expand_as(steps), pos_weight=pw, reduction="none"
                )
                loss = loss + a.rep * (sl * valid).sum() / valid.sum()
            if a.aux:
                tgt = auxtr[b]
                ok = ~torch.isnan(tgt)
                reg = ((auxo[:, :3] - torch.nan_to_num(tgt[:, :3])) ** 2 * ok[:, :3]).sum() / ok[
                    :, :3
                ].sum().clamp(min=1)
                bce = nn.functional.binary_cross_entropy_with_logits(auxo[:, 3:], tgt[:, 3:])
                loss = loss + a.aux * (reg + bce)
            if a.distill:
                loss = loss + a.distill * nn.functional.binary_cross_entropy_with_logits(logit, teach[b])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pn in zip(ema.parameters(), net.parameters(), strict=True):
                        pe.mul_(a.ema).add_(pn, alpha=1 - a.ema)
        ev = ema if ema is not None else net
        lv = predict(ev, dva)
        if a.select == "auprc":
            score = average_precision_score(yva, lv)
        elif a.select == "auroc":
            score = roc_auc_score(yva, lv)
        else:
            score = -float(
                nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(lv), torch.from_numpy(yva))
            )
        if score > best + 1e-4:
            best, bstate, stale, besti = score, copy.deepcopy(ev.state_dict()), 0, ep
        else:
            stale += 1
            if stale >= a.patience:
                break
    net.load_state_dict(bstate)
    return net, besti


t0 = time.time()
y = A["y"]
oof = np.zeros(len(y))
predB = []
if a.single:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    dev, _ = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    tr_i, va_i = train_test_split(dev, test_size=0.2, stratify=y[dev], random_state=0)
    splits = [(tr_i, va_i)]
else:
    splits = list(StratifiedKFold(a.folds, shuffle=True, random_state=a.fold_seed).split(np.zeros(len(y)), y))
epochs = []
for k, (tr_i, va_i) in enumerate(splits):
    fold_oof = []
    for s in range(a.seeds):
        net, be = fit(tr_i, va_i, 1000 * s + k)
        epochs.append(be)
        fold_oof.append(predict(net, T(tA, eA, va_i)))
        predB.append(predict(net, T(tB, eB, np.arange(len(B["y"])))))
    oof[va_i] = np.mean(fold_oof, 0)
pB = np.mean(predB, 0)
res = {
    "name": a.name,
    "args": vars(a),
    "B_auroc": roc_auc_score(B["y"], pB),
    "B_auprc": average_precision_score(B["y"], pB),
    "oof_auroc": roc_auc_score(y, oof) if not a.single else None,
    "seconds": time.time() - t0,
    "best_epochs": epochs,
}
np.save(WORK / f"pred_{a.name}.npy", pB)
if not a.single:
    np.save(WORK / f"oof_{a.name}.npy", oof)
print(json.dumps(res))
with open(WORK / "results.jsonl", "a") as fh:
    fh.write(json.dumps(res) + "\n")
