"""When a variable mattered (time x variable attributions) and the plots a clinician reads.

The time map uses integrated gradients on the input channels with random interpolation points between the
reference (see :mod:`clinical_lstm.explain`) and the stay — the single-baseline form of the expected gradients
that ``shap.GradientExplainer`` computes — summed over each variable's value, mask and elapsed-time channels.
It runs on CPU in eval mode (cuDNN LSTMs cannot backpropagate in eval mode). The map shows *when*; the
per-variable SHAP values in :mod:`clinical_lstm.explain` are the faithful totals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from .explain import reference
from .files import atomic_path

VITALS = ("HR", "MAP", "SysABP", "RespRate", "Temp", "SaO2", "GCS")


def time_attributions(model, t, n: int, n_samples: int = 32, seed: int = 0) -> np.ndarray:
    """(L, V) attribution of stay ``n`` per grid step and series variable, in log-odds.

    It maps the networks' share of the model's logit (their mean logit, times the stacking weight when the model
    has summary members): the summaries have no time axis, their share is in the per-variable SHAP values."""
    L = int(t.lengths[n])
    ref = reference(t.subset([n]), model.transformer)
    stay = [torch.from_numpy(a[n:n + 1, :L]) for a in (t.x, t.mask, t.delta)]  # (1, L, V) each
    base = [torch.from_numpy(a[:, :L]) for a in (ref.x, ref.mask, ref.delta)]
    alpha = torch.rand(n_samples, 1, 1, generator=torch.Generator().manual_seed(seed))  # (k, 1, 1)
    inputs = [(b + alpha * (s - b)).requires_grad_(True) for s, b in zip(stay, base, strict=True)]  # (k, L, V)
    statics = torch.from_numpy(t.statics[n:n + 1]).expand(n_samples, -1)
    lengths = torch.full((n_samples,), L, dtype=torch.int64)
    with torch.enable_grad():
        logit = torch.stack([net.eval()(*inputs, statics, lengths)[0] for net in model.networks]).mean(0)
        if model.head is not None:
            logit = logit * model.head.stack[0]
        grads = torch.autograd.grad(logit.sum(), inputs)
    attr = sum((g.mean(0) * (s[0] - b[0])) for g, s, b in zip(grads, stay, base, strict=True))  # (L, V)
    return attr.detach().numpy()


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    return Path(path)


def plot_stay(model, clean: pl.DataFrame, t, n: int, table: pl.DataFrame, path, top: int = 10) -> Path:
    """Risk trajectory, raw vitals, SHAP waterfall and the time x variable map of one stay, as one PNG."""
    from matplotlib.figure import Figure

    sid = int(t.stay_ids[n])
    L, res = int(t.lengths[n]), model.transformer.resolution_hours
    hours = (np.arange(L) + 1) * res
    risk = model.trajectory(clean.filter(pl.col("stay_id") == sid))["risk"].to_numpy()[:L]
    attr = time_attributions(model, t, n)
    rows = table.filter(pl.col("stay_id") == sid).sort("rank").head(top)
    names = model.catalogue.series
    series_top = [v for v in rows["variable"] if v in names][:top]
    fig = Figure(figsize=(11, 11))
    ax_risk, ax_vit, ax_map, ax_bar = fig.subplots(4, 1, gridspec_kw={"height_ratios": [1.2, 1.6, 2.2, 2]})
    ax_risk.plot(hours, risk, color="crimson", lw=2)
    ax_risk.axhline(model.threshold, ls="--", color="grey", lw=1, label=f"threshold {model.threshold:.2f}")
    ax_risk.set(ylabel="risk", xlim=(0, L * res), ylim=(0, 1), title=f"stay {sid}: calibrated risk over time")
    ax_risk.legend(loc="upper left")
    raw = clean.filter((pl.col("stay_id") == sid) & pl.col("variable").is_in(list(VITALS)))
    for var in VITALS:
        part = raw.filter(pl.col("variable") == var)
        if part.height:
            ax_vit.plot(part["time"], part["value"], marker=".", lw=1, label=var)
    ax_vit.set(ylabel="raw value", xlim=(0, L * res), title="vitals as recorded")
    ax_vit.legend(loc="upper left", ncol=4, fontsize=8)
    idx = [names.index(v) for v in series_top]
    lim = np.abs(attr[:, idx]).max() if idx else 1.0
    im = ax_map.imshow(attr[:, idx].T if idx else np.zeros((1, L)), aspect="auto", cmap="RdBu_r",
                       vmin=-lim, vmax=lim, extent=(0, L * res, len(idx) - 0.5, -0.5))
    ax_map.set_yticks(range(len(idx)), series_top)
    ax_map.set(xlabel="hours since admission", title="when: attribution per hour (log-odds; red raises risk)")
    fig.colorbar(im, ax=ax_map, fraction=0.02)
    _waterfall(ax_bar, rows, top)
    fig.tight_layout()
    return _save(fig, path)


def _waterfall(ax, rows: pl.DataFrame, top: int):
    """Cumulative bars from the reference logit to the stay's logit, largest contributions first."""
    base, out = float(rows["base_value"][0]), float(rows["model_output"][0])
    contrib = rows["contribution"].to_numpy()[::-1]
    labels = rows["variable"].to_list()[::-1]
    rest = out - base - contrib.sum()
    contrib, labels = np.r_[rest, contrib], [f"{max(len(labels) - top, 0) and 'other variables' or 'other'}",
                                             *labels]
    left = base + np.r_[0, np.cumsum(contrib)[:-1]]
    ax.barh(range(len(contrib)), contrib, left=left, color=np.where(contrib > 0, "crimson", "steelblue"))
    ax.set_yticks(range(len(contrib)), labels)
    ax.axvline(base, color="grey", lw=1, ls=":")
    ax.axvline(out, color="black", lw=1)
    ax.set(xlabel=f"log-odds (reference {base:.2f} -> stay {out:.2f})", title="which: SHAP contributions")


def plot_global(table: pl.DataFrame, path, top: int = 20) -> Path:
    """Mean |SHAP| per variable over the explained stays, as a bar chart."""
    from matplotlib.figure import Figure

    imp = (table.group_by("variable").agg(pl.col("contribution").abs().mean().alias("importance"))
           .sort("importance", descending=True).head(top))
    fig = Figure(figsize=(7, 0.3 * imp.height + 1.5))
    ax = fig.subplots()
    ax.barh(imp["variable"].to_list()[::-1], imp["importance"].to_numpy()[::-1], color="steelblue")
    n = table["stay_id"].n_unique()
    ax.set(xlabel="mean |SHAP| (log-odds)", title=f"global importance over {n} stays")
    fig.tight_layout()
    return _save(fig, path)
