"""When a variable mattered (time x variable attributions) and the plots a clinician reads.

The time map uses integrated gradients on the input channels with random interpolation points between the
reference (see :mod:`clinical_lstm.explain.shapley`) and the stay — the single-baseline form of the expected gradients
that ``shap.GradientExplainer`` computes — summed over each variable's value, mask and elapsed-time channels.
It runs on CPU in eval mode (cuDNN LSTMs cannot backpropagate in eval mode). The map shows *when*; the
per-variable SHAP values in :mod:`clinical_lstm.explain.shapley` are the faithful totals.

The per-stay waterfall and the global importance bars are SHAP's own ``shap.plots.waterfall`` and
``shap.plots.bar``, drawn from ``shap.Explanation`` objects built from the explanation table, on bare Agg figures
(headless; nothing is left open in pyplot).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ..files import atomic_path
from .shapley import display_text, player_names, readable, reference, to_shap

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
        if model.head is not None:  # the LSTM's stacking weight at the stay's hour
            hour = torch.tensor(L * model.transformer.resolution_hours, dtype=torch.float32)
            logit = logit * model.head.weights(hour)[0][0]
        grads = torch.autograd.grad(logit.sum(), inputs)
    attr = sum((g.mean(0) * (s[0] - b[0])) for g, s, b in zip(grads, stay, base, strict=True))  # (L, V)
    return attr.detach().numpy()


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    return Path(path)


@contextmanager
def _shap_figure(figsize):
    """A bare Agg figure that pyplot treats as its current one while SHAP's plots draw on ``plt.gcf()``.

    No backend is chosen or switched (headless-safe, no window), the caller's current figure and interactive
    mode (``shap.plots.*(show=False)`` turns it off) are restored, and the figure leaves pyplot on exit, so
    nothing leaks from one call into the next.
    """
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureManagerBase
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureManagerBase(FigureCanvasAgg(fig), max(plt.get_fignums(), default=0) + 1)  # a number no figure has
    with plt.ioff():  # restores the interactive mode on exit
        plt.figure(fig)  # a managed figure: pyplot makes it current without asking the backend
        try:
            yield fig
        finally:
            plt.close(fig)  # the caller's current figure is current again


def stay_explanation(model, clean: pl.DataFrame, sid, table: pl.DataFrame):
    """One stay's row of ``table`` (:func:`~clinical_lstm.explain.shapley.table_from`) as a single-row
    ``shap.Explanation`` with its readable values (:func:`~clinical_lstm.explain.shapley.readable`, from ``clean``).

    Players missing from ``table`` (a ``top``-filtered table) count 0 and their total joins as 'other
    variables', so ``base_values + values.sum()`` is still the stay's logit."""
    tr = model.transformer
    rows = table.filter(pl.col("stay_id") == sid)
    if not rows.height:
        raise ValueError(f"stay {sid} has no rows in the explanation table; explain it first")
    names = player_names(tr)
    given = dict(zip(rows["variable"].to_list(), rows["contribution"].to_list(), strict=True))
    phi = np.array([[given.get(v, 0.0) for v in names]])  # (1, P)
    shown = readable(tr, tr.grid(clean.filter(pl.col("stay_id") == sid), [sid]))  # (1, P)
    base, out = float(rows["base_value"][0]), float(rows["model_output"][0])
    rest = out - base - phi.sum()
    text = display_text(tr, shown)
    if abs(rest) > 1e-6:
        names = [*names, "other variables"]
        phi, shown = np.c_[phi, rest], np.c_[shown, np.nan]
        text = np.c_[text, np.array([["not listed"]], dtype=object)]
    return to_shap(phi, [base], names, shown, text, [sid])[0]


def plot_stay(model, clean: pl.DataFrame, t, n: int, table: pl.DataFrame, path, top: int = 10) -> Path:
    """Risk trajectory, raw vitals, the time x variable map and SHAP's waterfall of one stay, as one PNG.

    The waterfall is ``shap.plots.waterfall`` of :func:`stay_explanation`: the ``top`` largest contributions
    (log-odds, from the reference's logit E[f(X)] to the stay's f(x)), the rest as one bar."""
    import shap

    sid = t.stay_ids[n].item()  # a Python int or str: text ids are drawn too
    L, res = int(t.lengths[n]), model.transformer.resolution_hours
    hours = (np.arange(L) + 1) * res
    risk = model.trajectory(clean.filter(pl.col("stay_id") == sid))["risk"].to_numpy()[:L]
    attr = time_attributions(model, t, n)
    rows = table.filter(pl.col("stay_id") == sid).sort("rank").head(top)
    names = model.catalogue.series
    series_top = [v for v in rows["variable"] if v in names][:top]
    row = stay_explanation(model, clean, sid, table)
    shown = min(top + 1, len(row.values))  # SHAP's max_display counts the 'N other features' bar
    size = (11, 8.5 + 0.4 * shown)
    with _shap_figure(size) as fig:
        fig.set_layout_engine("constrained")  # per-row margins: the waterfall's top labels widen only its gap
        ax_risk, ax_vit, ax_map, ax_bar = fig.subplots(
            4, 1, gridspec_kw={"height_ratios": [1.2, 1.6, 2.2, 0.3 * shown + 0.6]})
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
                           vmin=-lim, vmax=lim, extent=(0, L * res, max(len(idx), 1) - 0.5, -0.5))
        ax_map.set_yticks(range(len(idx)), series_top)
        ax_map.set(xlabel="hours since admission", title="when: attribution per hour (log-odds; red raises risk)")
        fig.colorbar(im, ax=ax_map, fraction=0.02)
        fig.sca(ax_bar)
        top_axes = shap.plots.waterfall(row, max_display=shown, show=False)
        fig.set_size_inches(*size)  # SHAP sizes the whole figure for a waterfall alone
        top_axes.set_title("which: SHAP contributions per variable (log-odds; reference E[f(X)] -> stay f(x))")
        return _save(fig, path)


def global_explanation(table: pl.DataFrame):
    """The long table (:func:`~clinical_lstm.explain.shapley.table_from`) as a ``shap.Explanation`` without data:
    one row per stay, one column per variable (first-seen order); a variable a stay lacks counts 0."""
    wide = (table.pivot(on="variable", index="stay_id", values="contribution", maintain_order=True)
            .fill_null(0.0).sort("stay_id"))
    base = table.group_by("stay_id", maintain_order=True).agg(pl.col("base_value").first()).sort("stay_id")
    names = wide.columns[1:]
    return to_shap(wide.select(names).to_numpy().astype(np.float64), base["base_value"].to_numpy(), names,
                   stay_ids=wide["stay_id"].to_numpy())


def plot_global(table: pl.DataFrame, path, top: int = 20) -> Path:
    """Mean |SHAP| per variable over the explained stays: ``shap.plots.bar`` of :func:`global_explanation`
    (the ``top`` variables, the rest summed in one bar)."""
    import shap
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    e = global_explanation(table)
    shown = min(top + 1, e.shape[1])  # SHAP's max_display counts the 'Sum of N other features' bar
    fig = Figure(figsize=(8, 0.4 * shown + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shap.plots.bar(e, max_display=shown, ax=ax, show=False)  # given an axes, SHAP's bar needs no pyplot
    ax.set(xlabel="mean |SHAP| (log-odds)", title=f"global importance over {e.shape[0]} stays")
    fig.tight_layout()
    return _save(fig, path)
