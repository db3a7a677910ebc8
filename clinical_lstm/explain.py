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
    """The 'nothing measured, typical patient' input for each stay (same lengths as ``t``)."""
    N, T, V = t.x.shape
    valid = (np.arange(T)[None, :] < t.lengths[:, None])[:, :, None]  # (N, T, 1)
    fill = transformer.median_ if transformer.imputation != "zero" else np.zeros(V)
    x = np.where(valid, fill.astype(np.float32)[None, None, :], 0).astype(np.float32)
    hours = ((np.arange(T) + 1) * transformer.resolution_hours).astype(np.float32)
    delta = np.broadcast_to(np.where(valid, hours[None, :, None], 0), (N, T, V)).astype(np.float32)
    statics = np.broadcast_to(transformer.static_mean_.astype(np.float32), t.statics.shape).copy()
    return Tensors(x, np.zeros_like(t.mask), delta, t.lengths.copy(), statics, t.stay_ids.copy())


@torch.inference_mode()
def _logits(networks, x, mask, delta, statics, lengths) -> torch.Tensor:
    out = [net(x, mask, delta, statics, lengths)[0] for net in networks]
    return torch.stack(out).mean(0)


def shap_values(model, t: Tensors, n_permutations: int = 8, seed: int = 0, max_batch: int = 4096,
                progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Grouped permutation SHAP for every stay in ``t``.

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
    ref = reference(t, tr)
    rng = np.random.default_rng(seed)
    n_perm = max(2, n_permutations + n_permutations % 2)  # antithetic pairs
    N = len(t)
    phi = np.zeros((N, len(names)))
    base, output = np.zeros(N), np.zeros(N)
    nets = [n.eval() for n in model.networks]
    stay_col = np.zeros((len(stat), t.statics.shape[1]), dtype=bool)  # static player -> its feature columns
    for j, (_, cols) in enumerate(stat):
        stay_col[j, cols] = True
    for n in tqdm(range(N), desc="explain", disable=not progress, leave=False):
        observed = np.flatnonzero(t.mask[n, : t.lengths[n]].any(axis=0))  # dummy players are skipped
        players = list(observed) + [V + j for j in range(len(stat))]
        M = len(players)
        perms = []
        for _ in range(n_perm // 2):
            p = rng.permutation(M)
            perms += [p, p[::-1]]
        # coalition k of permutation r holds players perms[r][:k]; rows: (n_perm, M + 1) coalitions
        inc = np.zeros((n_perm, M + 1, M), dtype=bool)
        for r, p in enumerate(perms):
            order = np.empty(M, dtype=np.int64)
            order[p] = np.arange(M)  # position of each player in the permutation
            inc[r] = np.arange(M + 1)[:, None] > order[None, :]
        flat = inc.reshape(-1, M)
        values = _evaluate(nets, t, ref, n, flat, players, V, stay_col, max_batch).reshape(n_perm, M + 1)
        marg = np.diff(values, axis=1)  # (n_perm, M): marginal contribution of the k-th player added
        contrib = np.zeros(M)
        for r, p in enumerate(perms):
            contrib[p] += marg[r]
        phi[n, players] = contrib / n_perm
        base[n], output[n] = values[0, 0], values[0, -1]
    return phi, base, output, names


def _evaluate(nets, t, ref, n, coalitions, players, V, stay_col, max_batch) -> np.ndarray:
    """Logits of stay ``n`` with each coalition present and the other players at the reference."""
    K = len(coalitions)
    series_on = np.zeros((K, V), dtype=bool)
    static_on = np.zeros((K, t.statics.shape[1]), dtype=bool)
    for i, pl_ in enumerate(players):
        if pl_ < V:
            series_on[:, pl_] = coalitions[:, i]
        else:
            static_on |= coalitions[:, i][:, None] & stay_col[pl_ - V][None, :]
    L = int(t.lengths[n])
    stay = [torch.from_numpy(a[n, :L]) for a in (t.x, t.mask, t.delta)]  # (L, V) each: padding is irrelevant
    refs = [torch.from_numpy(a[n, :L]) for a in (ref.x, ref.mask, ref.delta)]
    s_stay, s_ref = torch.from_numpy(t.statics[n]), torch.from_numpy(ref.statics[n])
    out = []
    for i in range(0, K, max_batch):
        on = torch.from_numpy(series_on[i:i + max_batch])[:, None, :]  # (k, 1, V)
        x, mask, delta = (torch.where(on, a[None], b[None]) for a, b in zip(stay, refs, strict=True))  # (k, L, V)
        son = torch.from_numpy(static_on[i:i + max_batch])  # (k, S)
        statics = torch.where(son, s_stay[None], s_ref[None])  # (k, S)
        lengths = torch.full((len(son),), L, dtype=torch.int64)
        out.append(_logits(nets, x, mask, delta, statics, lengths).numpy())
    return np.concatenate(out).astype(np.float64)


def explain_table(model, data, top: int | None = None, n_permutations: int = 8, seed: int = 0,
                  progress: bool = False) -> pl.DataFrame:
    """One row per stay and variable: ``stay_id, variable, contribution, rank, base_value, model_output``.

    ``contribution`` is in log-odds; rank 1 is the largest absolute contribution. ``top`` keeps the K
    highest-ranked variables per stay.
    """
    clean, kept, _ = model.clean(data)
    t = model.tensors(clean, kept)
    phi, base, output, names = shap_values(model, t, n_permutations, seed, progress=progress)
    N, P = phi.shape
    order = np.argsort(-np.abs(phi), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, P + 1)[None, :].repeat(N, 0), axis=1)
    df = pl.DataFrame({
        "stay_id": np.repeat(t.stay_ids, P), "variable": np.tile(np.array(names), N),
        "contribution": phi.ravel(), "rank": rank.ravel(), "base_value": np.repeat(base, P),
        "model_output": np.repeat(output, P)})
    if top is not None:
        df = df.filter(pl.col("rank") <= top)
    return df.sort("stay_id", "rank")
