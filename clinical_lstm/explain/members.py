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

CHUNK_STAYS = 64  # stays per tree pass: (stays, nodes) decisions and (reachable leaves, path steps) arrays of a few MB


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
    """Every leaf of a trees member as its root-to-leaf path (padded to the deepest): the node (flat index over the
    member's trees) and branch taken at each step, ``step`` (whether a step is a real one, not padding), each leaf's
    own node and value; and every node's split (``feature``, ``threshold``, ``missing_left``, flat). Cached on the
    head."""
    cache = head.__dict__.setdefault("_leaf_paths", {})
    if group in cache:
        return cache[group]
    b = _buffers(head, group)
    width = b["feature"].shape[1]
    nodes, dirs, leaves = [], [], []
    for t in range(b["feature"].shape[0]):
        stack = [(0, [])]  # (node, [(node, went_left), ...])
        while stack:
            node, path = stack.pop()
            if b["leaf"][t, node]:
                nodes.append([t * width + n for n, _ in path])
                dirs.append([d for _, d in path])
                leaves.append(t * width + node)
                continue
            stack += [(int(b["left"][t, node]), [*path, (node, True)]),
                      (int(b["right"][t, node]), [*path, (node, False)])]
    D = max(1, max(len(n) for n in nodes))
    pad = lambda rows, dtype: np.stack([np.pad(np.asarray(a, dtype), (0, D - len(a))) for a in rows])  # noqa: E731
    cache[group] = {"node": pad(nodes, np.int64), "left": pad(dirs, bool),
                    "step": np.arange(D)[None, :] < np.array([len(n) for n in nodes])[:, None],
                    "leaf": np.asarray(leaves, np.int64), "value": b["value"].reshape(-1)[leaves].astype(np.float64),
                    "feature": b["feature"].reshape(-1), "threshold": b["threshold"].reshape(-1).astype(np.float64),
                    "missing_left": b["missing_left"].reshape(-1), "is_leaf": b["leaf"],
                    "children": (b["left"], b["right"])}
    return cache[group]


def _tree_values(head, group, x, r, owner, n_players):
    """Per stay, only the leaves some coalition reaches (a sixth of them for the shipped members) are visited: a
    node's branches are decided once for the stay and once for the reference, and a leaf is reachable when, at every
    node of its path, the stay or the reference goes its way."""
    p = leaf_paths(head, group)
    slots = _slots(p, owner, n_players)
    lf = np.array([math.lgamma(k + 1) for k in range(n_players + 1)])  # log k!
    U = slots["player"].shape[1]
    unowned = owner[p["feature"]] < 0  # (nodes,) splits on a column no player owns (the hour)
    out = np.zeros((len(x), n_players))
    for lo in range(0, len(x), CHUNK_STAYS):
        go_x, go_r = (_decide(s, p) for s in (x[lo:lo + CHUNK_STAYS], r[lo:lo + CHUNK_STAYS]))  # (n, nodes)
        if ((go_x != go_r) & unowned & ~p["is_leaf"].reshape(-1)).any():
            raise ValueError("a summary column no player owns differs between a stay and its reference")
        reach = _reachable(go_x, go_r, p)[:, p["leaf"]]  # (n, L) the leaves some coalition reaches
        stay, leaf = np.divmod(np.flatnonzero(reach), reach.shape[1])  # as pairs
        node, left, step = p["node"][leaf], p["left"][leaf], p["step"][leaf]  # (pairs, D)
        x_ok, r_ok = (go[stay[:, None], node] == left for go in (go_x, go_r))  # (pairs, D) the step taken
        slot = slots["slot"][leaf]  # (pairs, D)
        need = []  # a leaf's players that must be in (out of) the coalition, by the leaf's own slots: (pairs, U) each
        for only in (x_ok & ~r_ok & step, r_ok & ~x_ok & step):  # steps only the stay (only the reference) takes
            at, d = np.divmod(np.flatnonzero(only), only.shape[1])
            need.append(np.zeros((len(leaf), U + 1), bool))
            need[-1][at, slot[at, d]] = True
        need_in, need_out = need[0][:, :U], need[1][:, :U]
        a, b = need_in.sum(axis=1), need_out.sum(axis=1)  # (pairs,)
        value = np.where((need_in & need_out).any(axis=1), 0.0, p["value"][leaf])  # a leaf needing a player both
        # in and out is never reached; each player of A gets value (a-1)! b! / (a+b)!, each of B -value a! (b-1)! / (a+b)!
        w_in = value * np.exp(lf[np.maximum(a - 1, 0)] + lf[b] - lf[a + b])
        w_out = -value * np.exp(lf[a] + lf[np.maximum(b - 1, 0)] - lf[a + b])
        (i, u), (j, v) = np.nonzero(need_in), np.nonzero(need_out)
        key = np.concatenate([stay[i] * n_players + slots["player"][leaf[i], u],
                              stay[j] * n_players + slots["player"][leaf[j], v]])
        out[lo:lo + CHUNK_STAYS] = np.bincount(key, np.concatenate([w_in[i], w_out[j]]),
                                               len(go_x) * n_players).reshape(len(go_x), n_players)
    return out


def _decide(s: np.ndarray, p: dict) -> np.ndarray:
    """(n, nodes): whether summary rows ``s`` (n, F) go left at each node of a trees member, compared in float64 with
    missing values sent where training sent them, as :meth:`SummaryHead.trees` (meaningless at leaves)."""
    v = s.astype(np.float32).astype(np.float64)[:, p["feature"]]  # (n, nodes)
    with np.errstate(invalid="ignore"):
        return (v <= p["threshold"]) | (np.isnan(v) & p["missing_left"])


def _reachable(go_x: np.ndarray, go_r: np.ndarray, p: dict) -> np.ndarray:
    """(n, nodes): whether some coalition reaches each node, i.e. at every node above it the stay or the reference
    goes its way; walked from the roots (a child's index is above its parent's)."""
    is_leaf, (left, right) = p["is_leaf"], p["children"]
    n_trees, width = is_leaf.shape
    reach = np.zeros((len(go_x), n_trees, width), bool)
    reach[:, :, 0] = True
    gx, gr = go_x.reshape(-1, n_trees, width), go_r.reshape(-1, n_trees, width)
    for j in range(width):
        trees = np.flatnonzero(~is_leaf[:, j])
        if not len(trees):
            continue
        here = reach[:, trees, j]
        reach[:, trees, left[trees, j]] = here & (gx[:, trees, j] | gr[:, trees, j])
        reach[:, trees, right[trees, j]] = here & ~(gx[:, trees, j] & gr[:, trees, j])
    return reach.reshape(len(go_x), -1)


def _slots(p: dict, owner: np.ndarray, n_players: int) -> dict[str, np.ndarray]:
    """Each leaf's players as slots: ``player`` (L, U), the distinct players a leaf's path splits on (``n_players``
    in unused slots); ``slot`` (L, D), which slot each step of the path belongs to (U for padding and for the
    columns no player owns). A path splitting twice on one player's columns gives it one slot, so a slot holds
    exactly one player."""
    key = ("slots", owner.tobytes(), n_players)
    if key in p:
        return p[key]
    step_owner = np.where(p["step"], owner[p["feature"][p["node"]]], -1)  # (L, D)
    L, D = step_owner.shape
    distinct = [np.unique(row[row >= 0]) for row in step_owner]
    U = max(1, max(len(d) for d in distinct))
    player = np.full((L, U), n_players, np.int64)
    slot = np.full((L, D), U, np.int64)
    for leaf, players in enumerate(distinct):
        player[leaf, :len(players)] = players
        steps = np.flatnonzero(step_owner[leaf] >= 0)
        slot[leaf, steps] = np.searchsorted(players, step_owner[leaf, steps])
    p[key] = {"player": player, "slot": slot}
    return p[key]
