"""Per-variable SHAP values: which clinical variables pushed a stay's risk up or down, and by how much.

Method: **grouped permutation SHAP** on the model's output in log-odds (the ensemble-mean logit, before
calibration). Each *player* is one clinical variable — all of its channels (values, mask, elapsed hours) over
all time steps — or one static descriptor (all of its one-hot / indicator columns). A player that is "absent"
takes its value from the reference:

* a series variable is replaced by *never observed*: mask 0, the training median in every bin, elapsed
  time = hours since admission. This is the model's own state for an unmeasured variable, so a contribution
  answers "how much did measuring this variable, with these values, move the risk?";
* a static descriptor is replaced by the training stays' mean feature vector (``static_mean_``).

Both references come from the training split and travel in the bundle. Why not ``shap.DeepExplainer``: its
values do not add up for ``nn.LSTM``. Permutation sampling with antithetic pairs is exact in efficiency for
any number of permutations — each permutation's marginal contributions telescope to
``f(stay) - f(reference)`` — so ``base_value + sum(contributions) == model_output`` holds to float precision,
and its error in the individual values shrinks as ``n_permutations`` grows. Variables a stay never observed
are dummy players (present = absent) and get exactly 0 without being evaluated.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from .impute import Tensors
from .summaries import player_columns

EXPLAIN_COLUMNS = ("stay_id", "variable", "contribution", "rank", "base_value", "model_output")


def static_players(transformer) -> list[tuple[str, list[int]]]:
    """``(player name, static feature columns)`` per static descriptor; Weight's is 'Weight (admission)'."""
    series = set(transformer.catalogue.series)
    players, col = [], 0
    for name in transformer.catalogue.statics:
        width = len(transformer.static_levels_[name]) if name in transformer.static_levels_ else 2
        players.append((f"{name} (admission)" if name in series else name, list(range(col, col + width))))
        col += width
    return players


def reference(t: Tensors, transformer) -> Tensors:
    """The 'nothing measured, typical patient' input for each stay (same lengths as ``t``), summaries included:
    what the imputation scan gives a stay in which nothing was observed (:func:`clinical_lstm.summaries.summarize`
    of an empty :class:`~clinical_lstm.impute.Carry`)."""
    from .impute import Carry
    from .summaries import summarize

    N, T, V = t.x.shape
    valid = (np.arange(T)[None, :] < t.lengths[:, None])[:, :, None]  # (N, T, 1)
    fill = transformer.median_ if transformer.imputation != "zero" else np.zeros(V)
    x = np.where(valid, fill.astype(np.float32)[None, None, :], 0).astype(np.float32)
    hours = ((np.arange(T) + 1) * transformer.resolution_hours).astype(np.float32)
    delta = np.broadcast_to(np.where(valid, hours[None, :, None], 0), (N, T, V)).astype(np.float32)
    statics = np.broadcast_to(transformer.static_mean_.astype(np.float32), t.statics.shape).copy()
    summary = summarize(Carry.empty(N, V), np.repeat(hours[t.lengths - 1][:, None], V, axis=1), statics)
    return Tensors(x, np.zeros_like(t.mask), delta, t.lengths.copy(), statics, t.stay_ids.copy(), summary)


def shap_values(model, t: Tensors, n_permutations: int = 8, seed: int = 0, max_batch: int = 2048,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Grouped permutation SHAP for every stay in ``t``.

    Coalitions of several stays are evaluated together in batches of up to ``max_batch`` sequences.

    Returns
    -------
    phi : (N, P) contributions in log-odds, players in ``names`` order
    base : (N,) the reference's logit
    output : (N,) the stay's logit (``base + phi.sum(1) == output``)
    names : list of P player names (series variables, then static descriptors)
    """
    from tqdm.auto import tqdm

    tr = model.transformer
    V = t.x.shape[2]
    stat = static_players(tr)
    names = list(tr.catalogue.series) + [n for n, _ in stat]
    static_cols = np.zeros((len(stat), t.statics.shape[1]), dtype=bool)  # static player -> feature columns
    for j, (_, cols) in enumerate(stat):
        static_cols[j, cols] = True
    summary_cols = None  # player -> summary columns (a variable's statistics, a static's features)
    if model.head is not None:
        columns = player_columns(V, [cols for _, cols in stat])
        summary_cols = np.zeros((len(columns), t.summary.shape[1]), dtype=bool)
        for j, cols in enumerate(columns):
            summary_cols[j, cols] = True
    ref = reference(t, tr)
    rng = np.random.default_rng(seed)
    n_perm = max(2, n_permutations + n_permutations % 2)  # antithetic pairs
    N = len(t)
    phi, base, output = np.zeros((N, len(names))), np.zeros(N), np.zeros(N)
    pending, size = [], 0
    for n in tqdm(range(N), desc="explain", disable=not progress, leave=False):
        observed = np.flatnonzero(t.mask[n, : t.lengths[n]].any(axis=0))  # dummy players are skipped
        players = np.r_[observed, V + np.arange(len(stat))]
        perms = []
        for _ in range(n_perm // 2):
            p = rng.permutation(len(players))
            perms += [p, p[::-1]]
        pending.append((n, players, perms, _coalitions(perms, players, V, static_cols, summary_cols)))
        size += len(pending[-1][3][0])
        if size >= max_batch or n == N - 1:
            values = _evaluate(model, t, ref, pending)
            for (m, pl_, pm, _), vals in zip(pending, values, strict=True):
                vals = vals.reshape(len(pm), len(pl_) + 1)
                marg = np.diff(vals, axis=1)  # (n_perm, M): contribution of the k-th player added
                contrib = np.zeros(len(pl_))
                for r, perm in enumerate(pm):
                    contrib[perm] += marg[r]
                phi[m, pl_] = contrib / len(pm)
                base[m], output[m] = vals[0, 0], vals[0, -1]
            pending, size = [], 0
    return phi, base, output, names


def _coalitions(perms, players, V, static_cols, summary_cols=None):
    """Masks of present channels for every prefix of every permutation: ``(K, V)`` series, ``(K, S)`` statics
    and, for a model with a summary head, ``(K, F)`` summary columns."""
    M = len(players)
    inc = np.zeros((len(perms), M + 1, M), dtype=bool)
    for r, p in enumerate(perms):
        position = np.empty(M, dtype=np.int64)
        position[p] = np.arange(M)
        inc[r] = np.arange(M + 1)[:, None] > position[None, :]  # prefix k holds the first k players
    inc = inc.reshape(-1, M)  # (K, M)
    series_on = np.zeros((len(inc), V), dtype=bool)
    is_series = players < V
    series_on[:, players[is_series]] = inc[:, is_series]
    static_on = inc[:, ~is_series] @ static_cols[players[~is_series] - V] > 0  # (K, S)
    if summary_cols is None:
        return series_on, static_on
    return series_on, static_on, inc @ summary_cols[players] > 0  # (K, F)


@torch.inference_mode()
def _evaluate(model, t, ref, pending) -> list[np.ndarray]:
    """Logits for every coalition of the pending stays, one array per stay."""
    rows = np.concatenate([np.full(len(c[0]), n) for n, _, _, c in pending])  # stay of each coalition
    series_on = torch.from_numpy(np.concatenate([c[0] for *_, c in pending]))[:, None, :]  # (K, 1, V)
    static_on = torch.from_numpy(np.concatenate([c[1] for *_, c in pending]))  # (K, S)
    T = int(t.lengths[rows].max())
    stay = [torch.from_numpy(a[rows, :T]) for a in (t.x, t.mask, t.delta)]  # (K, T, V) each
    refs = [torch.from_numpy(a[rows, :T]) for a in (ref.x, ref.mask, ref.delta)]
    x, mask, delta = (torch.where(series_on, s, r) for s, r in zip(stay, refs, strict=True))
    statics = torch.where(static_on, torch.from_numpy(t.statics[rows]), torch.from_numpy(ref.statics[rows]))
    lengths = torch.from_numpy(t.lengths[rows])
    summary = None
    if model.head is not None:
        summary_on = torch.from_numpy(np.concatenate([c[2] for *_, c in pending]))  # (K, F)
        summary = torch.where(summary_on, torch.from_numpy(t.summary[rows]), torch.from_numpy(ref.summary[rows]))
    logits = model.network_logits(x, mask, delta, statics, lengths, summary).numpy().astype(np.float64)
    return np.split(logits, np.cumsum([len(c[0]) for *_, c in pending])[:-1])


def explain_table(model, data, top: int | None = None, n_permutations: int = 8, seed: int = 0,
                  progress: bool = False) -> pl.DataFrame:
    """One row per stay and variable: ``stay_id, variable, contribution, rank, base_value, model_output``.

    ``contribution`` is in log-odds; rank 1 is the largest absolute contribution. ``top`` keeps the K
    highest-ranked variables per stay.
    """
    clean, kept, _ = model.clean(data)
    t = model.tensors(clean, kept)
    df = table_from(*shap_values(model, t, n_permutations, seed, progress=progress), t.stay_ids)
    return df if top is None else df.filter(pl.col("rank") <= top)


def table_from(phi, base, output, names, stay_ids) -> pl.DataFrame:
    """Long table from :func:`shap_values`' arrays, rank 1 = largest absolute contribution."""
    N, P = phi.shape
    order = np.argsort(-np.abs(phi), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, P + 1)[None, :].repeat(N, 0), axis=1)
    return pl.DataFrame({
        "stay_id": np.repeat(stay_ids, P), "variable": np.tile(np.array(names), N),
        "contribution": phi.ravel(), "rank": rank.ravel(), "base_value": np.repeat(base, P),
        "model_output": np.repeat(output, P)}).sort("stay_id", "rank")
