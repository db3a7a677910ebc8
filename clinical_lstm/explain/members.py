"""Exact Shapley values of the summary members (logistic regression and boosted trees) for one reference.

The players are the explanation's (:mod:`clinical_lstm.explain.shapley`): a series variable owns its seven summary
statistics, a static descriptor its feature columns; the ``hour`` column is context, the same in a stay and in
its "nothing measured" reference. A coalition ``S`` takes its players' columns from the stay ``x`` and every
other column from the reference ``r``. For one reference both members' games are exact in closed form, so
only the networks need sampled permutations:

* **logistic regression** is additive over columns (after median filling, missing indicators and scaling, each
  column of ``z`` depends on one summary column only), so a player's value is the sum of
  ``coef * (z(x) - z(r)) / scale`` over its columns;
* **a tree**: for one reference, a leaf is reached by coalition ``S`` exactly when ``S`` holds every player whose
  column sends only ``x`` down the leaf's path (the set ``A``) and none of those that send only ``r`` down it
  (``B``). That is the game ``value * [A <= S, B & S = {}]``, whose Shapley values are
  ``value * (a-1)! b! / (a+b)!`` for each player of ``A`` and ``-value * a! (b-1)! / (a+b)!`` for each of ``B``
  (``a = |A|, b = |B|``; a path that needs a player both in and out is never taken). The Shapley values of the
  member are the sums over its leaves (the "baseline Shapley" of Sundararajan and Najmi, 2020, walked per leaf
  path as in the interventional TreeSHAP of Lundberg et al., 2020).

Both are exact and additive: a member's values sum to ``member(x) - member(r)``. The tests check them against
the enumeration of every coalition.
"""

from __future__ import annotations

import math

import numpy as np

CHUNK_STAYS = 64  # stays per tree pass: (stays, leaves, players) arrays of ~25 MB for the shipped members


def column_players(n_columns: int, player_columns: list[list[int]]) -> np.ndarray:
    """(F,) the player owning each summary column, -1 for a column no player owns (the hour)."""
    owner = np.full(n_columns, -1, np.int64)
    for p, cols in enumerate(player_columns):
        owner[cols] = p
    return owner


def member_values(head, x: np.ndarray, r: np.ndarray, owner: np.ndarray, n_players: int) -> list[np.ndarray]:
    """Each summary member's exact Shapley values, (N, P) float64 per member in ``head.groups`` order, for
    summaries ``x`` (N, F) against references ``r`` (N, F); ``owner`` from :func:`column_players`."""
    return [(_tree_values if g.endswith("trees") else _linear_values)(head, g, x, r, owner, n_players)
            for g in head.groups]


def _buffers(head, group: str) -> dict[str, np.ndarray]:
    prefix = f"{group}_"
    return {k[len(prefix):]: v.detach().cpu().numpy() for k, v in head.named_buffers() if k.startswith(prefix)}


def _linear_values(head, group, x, r, owner, n_players):
    b = _buffers(head, group)

    def z(s):  # the member's input row as SummaryHead.linear builds it, then scaled
        missing = np.isnan(s)
        filled = np.where(missing, b["median"], s)
        return (np.concatenate([filled, missing[:, b["indicator"]]], axis=1) - b["mean"]) / b["scale"]

    d = (z(x.astype(np.float32)).astype(np.float64) - z(r.astype(np.float32))) * b["coef"]  # (N, F + I)
    col_owner = np.concatenate([owner, owner[b["indicator"]]])
    if (d[:, col_owner < 0] != 0).any():
        raise ValueError("a summary column no player owns differs between a stay and its reference")
    onehot = np.zeros((len(col_owner), n_players))
    onehot[col_owner >= 0, col_owner[col_owner >= 0]] = 1
    return d @ onehot


def leaf_paths(head, group: str) -> dict[str, np.ndarray]:
    """Every leaf of a trees member as its root-to-leaf path (padded to the deepest): the split column, threshold,
    where a missing value goes and the branch taken at each step, plus the leaf's value. Cached on the head."""
    cache = head.__dict__.setdefault("_leaf_paths", {})
    if group in cache:
        return cache[group]
    b = _buffers(head, group)
    feats, thrs, mls, dirs, values = [], [], [], [], []
    for t in range(b["feature"].shape[0]):
        stack = [(0, [])]  # (node, [(node, went_left), ...])
        while stack:
            node, path = stack.pop()
            if b["leaf"][t, node]:
                nodes = [n for n, _ in path]
                feats.append(b["feature"][t, nodes])
                thrs.append(b["threshold"][t, nodes])
                mls.append(b["missing_left"][t, nodes])
                dirs.append(np.array([d for _, d in path], bool))
                values.append(float(b["value"][t, node]))
                continue
            stack += [(int(b["left"][t, node]), [*path, (node, True)]),
                      (int(b["right"][t, node]), [*path, (node, False)])]
    D = max(1, max(len(f) for f in feats))
    pad = lambda rows, dtype: np.stack([np.pad(np.asarray(a, dtype), (0, D - len(a))) for a in rows])  # noqa: E731
    steps = np.arange(D)[None, :] < np.array([len(f) for f in feats])[:, None]
    cache[group] = {"feature": pad(feats, np.int64), "threshold": pad(thrs, np.float64),
                    "missing_left": pad(mls, bool), "left": pad(dirs, bool), "step": steps,
                    "value": np.asarray(values, np.float64)}
    return cache[group]


def _tree_values(head, group, x, r, owner, n_players):
    p = leaf_paths(head, group)
    slots = _slots(p, owner, n_players)
    L, U = slots["player"].shape
    lf = np.array([math.lgamma(k + 1) for k in range(n_players + 1)])  # log k!
    out = np.zeros((len(x), n_players))
    for lo in range(0, len(x), CHUNK_STAYS):
        xs, rs = x[lo:lo + CHUNK_STAYS], r[lo:lo + CHUNK_STAYS]
        x_ok, r_ok = (_follows(s, p) for s in (xs, rs))  # (n, L, D) whether the step is taken
        if ((x_ok != r_ok) & slots["unowned"][None]).any():
            raise ValueError("a summary column no player owns differs between a stay and its reference")
        reachable = (x_ok | r_ok).all(axis=2)  # (n, L) by some coalition
        # a leaf's players that must be in (out of) the coalition, by the leaf's own player slots: (L, n, U)
        need_in = np.matmul((x_ok & ~r_ok).transpose(1, 0, 2).astype(np.float32), slots["onehot"]) > 0
        need_out = np.matmul((r_ok & ~x_ok).transpose(1, 0, 2).astype(np.float32), slots["onehot"]) > 0
        a, b = need_in.sum(axis=2), need_out.sum(axis=2)  # (L, n)
        live = reachable.T & ~(need_in & need_out).any(axis=2) & (a + b > 0)
        value = np.where(live, p["value"][:, None], 0.0)  # (L, n)
        w_in = np.where(a > 0, np.exp(lf[np.maximum(a - 1, 0)] + lf[b] - lf[a + b]), 0)  # (a-1)! b! / (a+b)!
        w_out = np.where(b > 0, np.exp(lf[a] + lf[np.maximum(b - 1, 0)] - lf[a + b]), 0)  # a! (b-1)! / (a+b)!
        share = (np.where(need_in, (value * w_in)[:, :, None], 0.0)
                 - np.where(need_out, (value * w_out)[:, :, None], 0.0))  # (L, n, U) each slot's value
        player = np.broadcast_to(slots["player"][:, None, :], share.shape)  # (L, n, U), n_players: an empty slot
        stay = np.broadcast_to(np.arange(len(xs))[None, :, None], share.shape)
        out[lo:lo + CHUNK_STAYS] = np.bincount((stay * (n_players + 1) + player).ravel(), share.ravel(),
                                               len(xs) * (n_players + 1)).reshape(len(xs), -1)[:, :n_players]
    return out


def _slots(p: dict, owner: np.ndarray, n_players: int) -> dict[str, np.ndarray]:
    """Each leaf's players as slots: ``player`` (L, U), the distinct players a leaf's path splits on (``n_players``
    in unused slots); ``onehot`` (L, D, U) float32, which slot each step of the path belongs to (none for padding
    and for the columns no player owns); ``unowned`` (L, D), the steps on a column no player owns. A path
    splitting twice on one player's columns gives it one slot, so a slot holds exactly one player."""
    key = ("slots", owner.tobytes(), n_players)
    if key in p:
        return p[key]
    step_owner = np.where(p["step"], owner[p["feature"]], -1)  # (L, D)
    L, D = step_owner.shape
    distinct = [np.unique(row[row >= 0]) for row in step_owner]
    U = max(1, max(len(d) for d in distinct))
    player = np.full((L, U), n_players, np.int64)
    onehot = np.zeros((L, D, U), np.float32)
    for leaf, players in enumerate(distinct):
        player[leaf, :len(players)] = players
        steps = np.flatnonzero(step_owner[leaf] >= 0)
        onehot[leaf, steps, np.searchsorted(players, step_owner[leaf, steps])] = 1
    p[key] = {"player": player, "onehot": onehot, "unowned": p["step"] & (step_owner < 0)}
    return p[key]


def _follows(s: np.ndarray, p: dict) -> np.ndarray:
    """(n, L, D): whether summary rows ``s`` (n, F) take each step of each leaf's path (padding always does),
    compared in float64 with missing values sent where training sent them, as :meth:`SummaryHead.trees`."""
    v = s.astype(np.float32).astype(np.float64)[:, p["feature"]]  # (n, L, D)
    with np.errstate(invalid="ignore"):
        left = (v <= p["threshold"]) | (np.isnan(v) & p["missing_left"])
    return (left == p["left"]) | ~p["step"]
