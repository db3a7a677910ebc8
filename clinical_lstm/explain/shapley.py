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
values do not add up for ``nn.LSTM``.

How the values are computed (:func:`shap_values`): the shipped logit is linear in its parts at a stay's hour
(``w0 * mean_k LSTM_k + sum_m w_m * member_m + b``) and Shapley values are linear in the game, so each part is
explained on its own and the values are added with the stacking weights. The summary members' values are exact
in closed form (:mod:`clinical_lstm.explain.members`). Only the networks need sampled permutations, and each network
plays its own antithetic pairs (the permutations are spread over the networks, at least one pair each): the
mean of unbiased per-network estimates is unbiased for the ensemble, as precise as that many pairs on one
network, and costs one network's evaluations per permutation instead of all K. Every permutation's marginal
contributions telescope to ``f_k(stay) - f_k(reference)`` and each member's exact values to its own difference,
so ``base_value + sum(contributions) == model_output`` holds to float precision. Variables a stay never observed
are dummy players (present = absent) and get exactly 0 without being evaluated.

SHAP's own objects at the boundary: :func:`explanation` returns a ``shap.Explanation`` (one row per stay, one
column per player, ``data`` = what a clinician reads: :func:`readable`) for ``shap.plots.waterfall`` /
``beeswarm`` / ``bar``; :func:`shap_game` hands SHAP's explainers (``shap.explainers.Exact``, ``Permutation``)
the same game — model function and coalition masker — that :func:`shap_values` samples, which is how the tests
check these values against exact Shapley values.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import polars as pl
import torch

from ..features.impute import Tensors
from ..features.summaries import player_columns
from ..model.network import torch_threads

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
    what the imputation scan gives a stay in which nothing was observed (:func:`clinical_lstm.features.summaries.summarize`
    of an empty :class:`~clinical_lstm.features.impute.Carry`)."""
    from ..features.impute import Carry
    from ..features.summaries import summarize

    N, T, V = t.x.shape
    valid = (np.arange(T)[None, :] < t.lengths[:, None])[:, :, None]  # (N, T, 1)
    fill = transformer.median_ if transformer.imputation != "zero" else np.zeros(V)
    x = np.where(valid, fill.astype(np.float32)[None, None, :], 0).astype(np.float32)
    hours = ((np.arange(T) + 1) * transformer.resolution_hours).astype(np.float32)
    delta = np.broadcast_to(np.where(valid, hours[None, :, None], 0), (N, T, V)).astype(np.float32)
    statics = np.broadcast_to(transformer.static_mean_.astype(np.float32), t.statics.shape).copy()
    now = hours[t.lengths - 1]  # (N,) the stay's hour: context, shared by the stay and its reference
    summary = summarize(Carry.empty(N, V), np.repeat(now[:, None], V, axis=1), statics, now)
    return Tensors(x, np.zeros_like(t.mask), delta, t.lengths.copy(), statics, t.stay_ids.copy(), summary)


def shap_values(model, t: Tensors, n_permutations: int = 8, seed: int = 0, max_batch: int = 1024,
                progress: bool | Callable[[int], object] = False, workers: int | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Per-variable SHAP values of the model's logit for every stay in ``t``.

    The shipped logit is ``w0(hour) * mean_k LSTM_k + sum_m w_m(hour) * member_m + b(hour)``, linear in the
    networks and the summary members at the stay's hour (the same for a stay and its reference), and Shapley
    values are linear in the game. So:

    * each summary member's values are exact (:mod:`clinical_lstm.explain.members`);
    * each network ``k`` gets its own antithetic permutation pairs: ``n_permutations`` (rounded up to whole pairs,
      at least one pair per network, the same number for every network) are *spread over* the networks, and the
      ensemble's value is the mean of the networks' estimates. Each network's estimate is unbiased, so the mean
      is; its variance is that of as many pairs on one network, at ``1/K`` of the cost of playing every
      permutation on all ``K`` networks. Only the networks are evaluated on coalitions (in batches of up to
      ``max_batch`` sequences per network).

    ``base + phi.sum(1) == output`` holds to float precision: every permutation's marginal contributions telescope
    to ``f_k(stay) - f_k(reference)``, and each member's exact values sum to its own difference.

    A stay's permutations are drawn from ``seed`` and its id alone, so a stay gets the same values whichever
    stays it is explained with (``explain``, ``score --explain`` in chunks, ``predict(explain=K)``).
    ``progress``: True for a tqdm bar, or a callable given the number of stays finished after each batch.

    ``workers`` threads (default: torch's thread count) play the batches, and the summary members' values, at
    once, each with one torch thread: the coalitions' many small steps scale across threads better than across
    torch's intra-op threads, which wait for each other at every step (and for every other process on a busy
    machine). The values do not depend on ``workers``.

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
    names = player_names(tr)
    P = len(names)
    static_cols = np.zeros((len(stat), t.statics.shape[1]), dtype=bool)  # static player -> feature columns
    for j, (_, cols) in enumerate(stat):
        static_cols[j, cols] = True
    if not len(t):
        return np.zeros((0, P)), np.zeros(0), np.zeros(0), names
    ref = reference(t, tr)
    nets = model.networks
    K, N = len(nets), len(t)
    pairs = -(-max(1, -(-n_permutations // 2)) // K)  # antithetic pairs per network: the total rounded up to K's
    batches, pending, size = [], [], 0
    for n in range(N):
        observed = np.flatnonzero(t.mask[n, : t.lengths[n]].any(axis=0))  # dummy players are skipped
        players = np.r_[observed, V + np.arange(len(stat))]
        rng = np.random.default_rng([seed, _id_key(t.stay_ids[n])])
        perms = np.array([[q for _ in range(pairs) for p in [rng.permutation(len(players))] for q in (p, p[::-1])]
                          for _ in range(K)], dtype=np.int64).reshape(K, 2 * pairs, len(players))
        pending.append((n, players, perms))
        size += 2 * pairs * max(len(players) - 1, 0)
        if size >= max_batch or n == N - 1:
            batches.append(pending)
            pending, size = [], 0

    workers = max(1, torch.get_num_threads() if workers is None else int(workers))
    report = progress if callable(progress) else None
    bar = tqdm(total=N, desc="explain", disable=report is not None or not progress, leave=False)
    phi_net, lstm_out, lstm_base = np.zeros((N, P)), np.zeros(N), np.zeros(N)
    with torch_threads(1 if workers > 1 else None), (ThreadPoolExecutor(workers) if workers > 1 else _InThread()) as pool:
        try:
            members = None if model.head is None else pool.submit(_member_part, model, t, ref, stat)
            for batch, (interior, (none, full)) in zip(batches, pool.map(
                    lambda b: _play(nets, t, ref, b, V, static_cols), batches), strict=True):
                for i, ((m, pl_, pm), values) in enumerate(zip(batch, interior, strict=True)):
                    vals = np.concatenate([np.broadcast_to(none[:, i, None, None], (K, 2 * pairs, 1)), np.stack(values),
                                           np.broadcast_to(full[:, i, None, None], (K, 2 * pairs, 1))], axis=2)
                    marg = np.diff(vals, axis=2)  # (K, 2 * pairs, M): the contribution of each player added
                    phi_net[m, pl_] = np.bincount(pm.ravel(), marg.ravel(), len(pl_)) / (2 * pairs * K)
                    lstm_out[m], lstm_base[m] = full[:, i].mean(), none[:, i].mean()
                if report is not None:
                    report(len(batch))
                bar.update(len(batch))
            w, phi_members = (None, None) if members is None else members.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # a stopped job stops now, not after every batch
            raise
        finally:
            bar.close()
    if model.head is None:
        return phi_net, lstm_base, lstm_out, names
    with torch.inference_mode():  # the stacked logits of the stays and of their references
        output = model.head(torch.from_numpy(lstm_out.astype(np.float32)), torch.from_numpy(t.summary))
        base = model.head(torch.from_numpy(lstm_base.astype(np.float32)), torch.from_numpy(ref.summary))
    return w[:, :1] * phi_net + phi_members, base.double().numpy(), output.double().numpy(), names


class _InThread:
    """The pool's calls, run in the calling thread: one worker needs no pool, and the calling thread's scratch
    buffers (:func:`_scratch`) outlive the call, so a batch job's chunks (each explained with one worker, in the
    job's long-lived threads) reuse them instead of every chunk paging in new ones."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        done = Future()
        done.set_result(fn(*args))
        return done

    def map(self, fn, items):
        return map(fn, items)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _member_part(model, t, ref, stat):
    """The stacking's weights (N, 1 + members) at each stay's hour and the summary members' stacking-weighted exact
    values (N, P)."""
    from .members import column_players, member_values

    head, V = model.head, t.x.shape[2]
    with torch.inference_mode():
        w = head.weights(torch.from_numpy(t.summary[:, -1]))[0].double().numpy()  # (N, 1 + members)
    owner = column_players(t.summary.shape[1], player_columns(V, [cols for _, cols in stat]))
    phi = np.zeros((len(t), V + len(stat)))
    for j, values in enumerate(member_values(head, t.summary, ref.summary, owner, V + len(stat))):
        phi += w[:, 1 + j, None] * values
    return w, phi


def _id_key(stay_id) -> int:
    """A stay id (integer or text) as a 64-bit seed: its text's SHA-256."""
    import hashlib

    return int.from_bytes(hashlib.sha256(str(stay_id).encode()).digest()[:8], "little")


def _coalitions(perms, players, n_players):
    """The players present in the interior prefixes (1 .. M-1 players) of every permutation of ``players``:
    (R, n_players) booleans over all players, R = len(perms) * (M - 1), permutation by permutation."""
    M = len(players)
    position = np.empty((len(perms), M), dtype=np.int64)
    np.put_along_axis(position, np.asarray(perms, dtype=np.int64).reshape(len(perms), M), np.arange(M)[None, :], axis=1)
    inc = (np.arange(1, M)[None, :, None] > position[:, None, :]).reshape(-1, M)  # prefix k: the first k players
    present = np.zeros((len(inc), n_players), dtype=bool)
    present[:, players] = inc
    return present


@torch.inference_mode()
def _play(nets, t, ref, pending, V, static_cols) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Each network's logits on its own interior coalitions of the pending stays (per stay, per network, an array
    (2 * pairs, M - 1)), and on the stays' references and the stays themselves (2, K, stays): every logit of the
    game from the same arithmetic.

    A coalition's step inputs take each player's columns from the stay's or the reference's, so its first-layer
    gate pre-activations are the reference's plus one term per present player: that player's columns of the
    input weights times the stay's minus the reference's inputs, computed once per stay and network. A
    permutation's coalitions are then the reference's pre-activations plus a running sum of its players' terms (no
    matrix product), and the networks only run their recurrences
    (:meth:`~clinical_lstm.model.network.MaskedLSTM.from_gates`). The reversed permutation of an antithetic pair
    needs no sum of its own: its prefix of ``M - j`` players is everyone but the forward prefix of ``j``, i.e. the
    reference's plus the stay's pre-activations minus that prefix's. Its rows are kept in the forward prefixes'
    order (``_layout``) and put back in the end."""
    out = [[None] * len(nets) for _ in pending]
    ends = np.zeros((2, len(nets), len(pending)))  # (reference / stay, network, stay)
    stays = np.array([n for n, _, _ in pending])
    T, P = int(t.lengths[stays].max()), V + len(static_cols)
    members = torch.from_numpy(static_cols.astype(np.float32))  # (static players, S)
    layout = [_layout(len(perms[0]), len(players) - 1) for _, players, perms in pending]  # row -> coalition
    for k, net in enumerate(nets):
        present = [torch.from_numpy(_coalitions(perms[k], players, P)[rows]).float()
                   for (_, players, perms), rows in zip(pending, layout, strict=True)]
        sizes = [len(c) for c in present]
        chunks = list(_chunks(sizes, _ROWS))
        logits = torch.empty(sum(sizes), dtype=torch.float64)
        if chunks:
            net.eval()
            scale = net.gate_scale()  # the g block doubled (from_gates(doubled=True)): once, in the weights
            w = net.lstm.weight_ih_l0.t() * scale  # (3V + S, 4H), a new tensor
            G = w.shape[1]
            w_series = w[:3 * V].reshape(3, V, G).transpose(0, 1)  # (V, 3, 4H): a variable's three columns
            on = torch.cat(present)  # (R, P)
            rows = np.repeat(stays, sizes)
            static_on = (on[:, V:] @ members) > 0  # (R, S) the present static players' columns
            statics = torch.where(static_on, torch.from_numpy(t.statics[rows]), torch.from_numpy(ref.statics[rows]))
            lengths = torch.from_numpy(t.lengths[rows])
            pre = _scratch("pre", (max(b - a + 2 * len(g) for a, b, g in chunks), T, G))  # reused by every chunk
            for a, b, group in chunks:
                idx = stays[group]
                to = lambda arr: torch.from_numpy(arr[idx, :T])  # noqa: B023,E731
                stay_inp, ref_inp = (net.step_inputs(to(d.x), to(d.mask), to(d.delta), torch.from_numpy(d.statics[idx]))
                                     for d in (t, ref))  # (n, T, 3V + S)
                n, diff = len(idx), stay_inp - ref_inp
                # a player's term in a stay's pre-activations is its (T, 3) input differences times its (3, 4H)
                # input weights: a series variable's value, mask and elapsed-hours columns; a static descriptor's
                # difference of its columns' product, constant over the steps (channel 0, against ones)
                d_in = _scratch("d_in", (n, P, T, 3))
                d_in[:, :V] = diff[..., :3 * V].reshape(n, T, 3, V).permute(0, 3, 1, 2)
                d_in[:, V:, :, 0], d_in[:, V:, :, 1:] = 1, 0
                w_in = _scratch("w_in", (n, P, 3, G))
                w_in[:, :V] = w_series
                w_in[:, V:, 0] = torch.einsum("ns,sg,js->njg", diff[:, 0, 3 * V:], w[3 * V:], members)
                w_in[:, V:, 1:] = 0
                c = b - a  # the coalitions' rows, then the references' and the stays' own pre-activations
                base = pre[c:c + n]
                torch.mul(net.input_gates(ref_inp), scale, out=base)  # (n, T, 4H)
                torch.mul(net.input_gates(stay_inp), scale, out=pre[c + n:c + 2 * n])
                at = 0
                for j, i in enumerate(group):
                    if not sizes[i]:  # one player: no interior coalition
                        continue
                    _, players, perms = pending[i]
                    M, perms_k = len(players), np.asarray(perms[k], dtype=np.int64)
                    if not np.array_equal(perms_k[1::2], perms_k[0::2, ::-1]):
                        raise ValueError("_play takes antithetic pairs: each odd permutation reverses the one before")
                    start = base[j].reshape(T * G)
                    block = pre[at:at + sizes[i]].view(-1, 2, M - 1, T * G)  # (pairs, forward / reversed, ...)
                    for q, perm in enumerate(perms_k[0::2]):  # each pair's forward one
                        forward, order = block[q, 0], torch.from_numpy(players[perm])
                        torch.bmm(d_in[j, order[:-1]], w_in[j, order[:-1]], out=forward.view(M - 1, T, G))  # terms
                        forward[0] += start  # prefix j = the reference's + a running sum of j terms
                        for m in range(1, M - 1):
                            forward[m] += forward[m - 1]
                        last = torch.mm(d_in[j, order[-1]], w_in[j, order[-1]]).view(T * G)  # the last player's term
                        whole = start + forward[-1] + last  # the reference's + the stay's
                        torch.sub(whole, forward, out=block[q, 1])  # the reversed prefixes of M - 1 .. 1 players
                    at += sizes[i]
                got = net.from_gates(pre[:c + 2 * n], torch.cat([statics[a:b], torch.from_numpy(ref.statics[idx]),
                                                                 torch.from_numpy(t.statics[idx])]),
                                     torch.cat([lengths[a:b], torch.from_numpy(np.tile(t.lengths[idx], 2))]), doubled=True)
                logits[a:b] = got[:c]
                ends[:, k, group] = got[c:].view(2, n).double().numpy()
        parts = np.split(logits.numpy(), np.cumsum(sizes)[:-1])
        for i, ((_, players, perms), part) in enumerate(zip(pending, parts, strict=True)):
            out[i][k] = part[layout[i]].reshape(len(perms[k]), max(len(players) - 1, 0))
    return out, ends


def _layout(n_perms: int, interior: int) -> np.ndarray:
    """The coalition row (permutation by permutation, prefixes of 1 .. M - 1 players) stored at each row of
    :func:`_play`'s pre-activations: forward permutations in order, each reversed one's prefixes largest first.
    Its own inverse."""
    rows = np.arange(n_perms * interior).reshape(n_perms, interior)
    rows[1::2] = rows[1::2, ::-1]
    return rows.ravel()


_SCRATCH = threading.local()


def _scratch(name: str, shape) -> torch.Tensor:
    """An uninitialised float32 tensor of ``shape`` in this thread's buffer ``name``, kept for the thread's next
    batch: the coalitions' tens of MB, allocated afresh batch after batch, were a tenth of the CPU time in page
    faults. Freed with the thread (the worker threads end with :func:`shap_values`)."""
    size = math.prod(shape)
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.numel() < size:
        buf = torch.empty(size)
        setattr(_SCRATCH, name, buf)
    return buf[:size].view(shape)


_ROWS = 1024  # coalitions per recurrence: ~50 MB of pre-activations per worker thread (_scratch)


def _chunks(sizes, rows):
    """``(first row, end row, stays)`` over consecutive stays whose ``sizes`` add up to about ``rows`` (a stay is
    never split)."""
    start, group, at = 0, [], 0
    for i, size in enumerate(sizes):
        group.append(i)
        at += size
        if at - start >= rows or i == len(sizes) - 1:
            yield start, at, group
            start, group = at, []


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


# -- SHAP's objects: Explanation and the game for SHAP's own explainers -----------------------------------------
def player_names(transformer) -> list[str]:
    """The P player names: series variables (channel order), then static descriptors (:func:`static_players`)."""
    return list(transformer.catalogue.series) + [n for n, _ in static_players(transformer)]


def readable(transformer, grid) -> np.ndarray:
    """(N, P) what each player looked like in each stay, in the catalogue's units, players in
    :func:`player_names` order.

    A series variable's last value in the window (the aggregate of its last observed bin: see
    :mod:`clinical_lstm.data.grid`), a static descriptor's raw time-0 value (a category's level); NaN where never
    observed. ``grid`` is the :class:`~clinical_lstm.data.grid.Grid` the explained tensors were computed from
    (``transformer.grid(clean, stay_ids)``).
    """
    values = grid.values  # (N, T, V), NaN where unobserved
    T = values.shape[1]
    last = T - 1 - np.argmax(~np.isnan(values[:, ::-1, :]), axis=1)  # (N, V) last observed bin (T - 1 if none)
    series = np.take_along_axis(values, last[:, None, :], axis=1)[:, 0, :]  # (N, V): NaN where never observed
    assert grid.statics.shape[1] == len(static_players(transformer))
    return np.concatenate([series, grid.statics], axis=1).astype(np.float64)  # (N, V + S)


def display_text(transformer, data: np.ndarray) -> np.ndarray:
    """(N, P) text for SHAP's plot labels: '7.2 mmol/L', a bare number for categories, flags and scores, or
    'not measured' / 'missing'. No '=' (SHAP splits labels on it)."""
    cat = transformer.catalogue
    players = [(v, "not measured") for v in cat.series] + [(n, "missing") for n in cat.statics]
    out = np.empty(data.shape, dtype=object)
    for j, (name, absent) in enumerate(players):
        unit = cat[name].unit
        bare = unit in ("category", "flag", "score", "", name)  # '3 = ICUType', '7.31 = pH'
        for i, v in enumerate(data[:, j]):
            text = f"{round(float(v), 2):g}"
            out[i, j] = absent if np.isnan(v) else text if bare else f"{text} {unit}"
    return out


def to_shap(phi: np.ndarray, base: np.ndarray, names: list[str], data: np.ndarray | None = None,
            display: np.ndarray | None = None, stay_ids=None):
    """A ``shap.Explanation`` from :func:`shap_values`' arrays.

    Parameters
    ----------
    phi : (N, P) contributions in log-odds; ``base`` (N,) the reference's logit
    names : the P player names (``feature_names``)
    data : (N, P) float, optional
        The players' values a reader recognises (:func:`readable`); NaN where never observed.
    display : (N, P) object, optional
        Text labels for the same (``display_data``: ``shap.plots.waterfall`` prints them).
    stay_ids : (N,), optional
        Kept as ``instance_names`` (text).
    """
    import shap

    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[1] != len(names):
        raise ValueError(f"phi must be (stays, players) with one column per name; got shape {phi.shape} for "
                         f"{len(names)} names")
    for what, a in (("data", data), ("display", display)):
        if a is not None and np.shape(a) != phi.shape:
            raise ValueError(f"{what} must have phi's shape {phi.shape}, got {np.shape(a)}")
    return shap.Explanation(
        values=phi, base_values=np.asarray(base, dtype=np.float64), data=data, display_data=display,
        feature_names=list(names),
        instance_names=None if stay_ids is None else [str(s) for s in np.asarray(stay_ids).tolist()])


def explanation(model, data, n_permutations: int = 8, seed: int = 0, progress: bool = False):
    """Per-variable SHAP values of every scorable stay of ``data`` as a ``shap.Explanation``.

    ``values`` (N, P) in log-odds, ``base_values`` (N,) the reference's logit (so ``base_values +
    values.sum(1)`` is the model's logit), ``data`` the readable values (:func:`readable`), ``display_data``
    their text with units, ``feature_names`` the P players, ``instance_names`` the stay ids. Rejected stays
    are left out (:meth:`RiskModel.predict <clinical_lstm.serve.bundle.RiskModel.predict>` gives their reasons).
    ``shap.plots.waterfall(e[0])``, ``shap.plots.beeswarm(e)`` and ``shap.plots.bar(e)`` draw it.
    """
    clean, kept, _ = model.clean(data)
    t = model.tensors(clean, kept)
    grid = model.transformer.grid(clean, kept)  # what the tensors were computed from: the readable values
    assert np.array_equal(grid.stay_ids, t.stay_ids)
    phi, base, _, names = shap_values(model, t, n_permutations, seed, progress=progress)
    shown = readable(model.transformer, grid)
    return to_shap(phi, base, names, shown, display_text(model.transformer, shown), t.stay_ids)


def shap_game(model, t: Tensors, n: int):
    """The game :func:`shap_values` plays for stay ``n`` of ``t``, in the form SHAP's explainers take.

    Returns ``(f, masker)``: ``masker(mask, x)`` turns a coalition — a boolean (P,) mask over the players of
    :func:`player_names`; ``x`` is the explained row, whose values it ignores — into the model's inputs for
    stay ``n``, every absent player's channels (series: values, mask and elapsed hours; static: its feature
    columns; and their summary columns) taken from :func:`reference`. ``f(*inputs)`` is the model's logit
    (:meth:`RiskModel.network_logits <clinical_lstm.serve.bundle.RiskModel.network_logits>`), (K,) float64::

        f, masker = shap_game(model, t, 0)
        e = shap.explainers.Exact(f, masker, feature_names=player_names(model.transformer))(row)  # row: (1, P)

    Exact enumeration costs 2**P model calls per stay: for small catalogues and checks, not for production.
    """
    tr = model.transformer
    one, ref = t.subset([n]), reference(t.subset([n]), tr)
    L, V = int(one.lengths[0]), t.x.shape[2]
    stat = [cols for _, cols in static_players(tr)]
    P = V + len(stat)
    summary_of = player_columns(V, stat) if model.head is not None else None  # player -> summary columns

    def masker(mask, *_):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (P,):
            raise ValueError(f"a coalition is a boolean mask over the {P} players, got shape {mask.shape}")
        on = mask[None, None, :V]  # (1, 1, V)
        x, m, d = (np.where(on, s[:, :L], r[:, :L]) for s, r in  # (1, L, V) each
                   ((one.x, ref.x), (one.mask, ref.mask), (one.delta, ref.delta)))
        statics = ref.statics.copy()  # (1, S)
        for j, cols in enumerate(stat):
            if mask[V + j]:
                statics[:, cols] = one.statics[:, cols]
        inputs = (x, m, d, one.lengths.copy(), statics)
        if summary_of is None:
            return inputs
        summary = ref.summary.copy()  # (1, F)
        for j, cols in enumerate(summary_of):
            if mask[j]:
                summary[:, cols] = one.summary[:, cols]
        return (*inputs, summary)

    @torch.inference_mode()
    def f(x, mask, delta, lengths, statics, summary=None):
        to = torch.from_numpy
        logit = model.network_logits(to(x), to(mask), to(delta), to(statics), to(lengths),
                                     None if summary is None else to(summary))
        return logit.numpy().astype(np.float64)  # (K,)

    return f, masker
