"""The masked LSTM classifier.

Per grid step the LSTM reads the standardized imputed values, the observation mask, log1p of the elapsed
hours since each variable was last seen, and the static features. It is unidirectional, so the hidden state
at step ``t`` depends only on steps ``<= t``: padding after a stay's true length can never change its
output, and a stay can be scored online one bin at a time.

Options:

* ``decay`` (GRU-D input decay, Che et al. 2018): an unobserved value decays from the last observation
  toward the training mean (0 in standardized units) with a learned per-variable rate,
  ``x_hat = m * x + (1 - m) * exp(-relu(w * delta + b)) * x``.
* ``attention``: the stay's logit comes from attention pooling over the hidden states of its valid steps
  (the hybrid LSTM + attention) instead of the last state.

Every step also gets a logit from the step head (trained with target replication), which gives the risk
trajectory over the stay.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig


class MaskedLSTM(nn.Module):
    """``n_series`` (V) series variables, ``n_static`` (S) static features; see the module docstring."""

    def __init__(self, cfg: ModelConfig, n_series: int, n_static: int):
        super().__init__()
        self.cfg, self.n_series, self.n_static = cfg, n_series, n_static
        V, S, H = n_series, n_static, cfg.hidden_size
        if cfg.decay:
            # a small positive rate to start from: at w = b = 0 the ReLU's gradient is 0 and the decay would
            # never learn (half-life of a carried value at the start: about 14 h)
            self.decay_w = nn.Parameter(torch.full((V,), 0.05))
            self.decay_b = nn.Parameter(torch.zeros(V))
        self.lstm = nn.LSTM(3 * V + S, H, num_layers=cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        # step head: a risk logit at every step from [h_t, statics], as two linear maps (no (B, T, H+S) concat)
        self.head = nn.Linear(H, 1)
        self.head_static = nn.Linear(S, 1, bias=False)
        if cfg.attention:
            self.attn = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 1, bias=False))
            self.attn_head = nn.Linear(H + S, 1)

    def _dropout(self, h):
        """Inverted dropout from a uniform draw: same distribution as nn.Dropout, but torch's CPU
        ``bernoulli_`` took 15 % of a training epoch; ``rand`` is vectorized."""
        p = self.cfg.dropout
        if not self.training or p <= 0:
            return h
        return h * (torch.rand_like(h) >= p) / (1 - p)

    def step_inputs(self, x, mask, delta, statics):
        """(B, T, V) x3 and (B, S) -> (B, T, 3V + S)."""
        B, T, _ = x.shape
        s = statics.unsqueeze(1).expand(B, T, statics.shape[1])  # (B, T, S)
        return torch.cat([self.decayed(x, mask, delta), mask, torch.log1p(delta), s], dim=-1)  # (B, T, 3V + S)

    def decayed(self, x, mask, delta):
        """The value channels of :meth:`step_inputs` (B, T, V): ``x``, decayed where unobserved with ``decay``; the
        only columns that differ between the networks of an ensemble (:func:`predict_logits` builds the rest once)."""
        if not self.cfg.decay:
            return x
        gamma = torch.exp(-torch.relu(self.decay_w * delta + self.decay_b))  # (B, T, V)
        return x * (mask + (1 - mask) * gamma)  # = m * x + (1 - m) * gamma * x

    def forward(self, x, mask, delta, statics, lengths):
        """Return ``(logit, step_logits)``.

        Parameters
        ----------
        x, mask, delta : Tensor (B, T, V)
        statics : Tensor (B, S)
        lengths : Tensor (B,) int, true number of steps (>= 1)

        Returns
        -------
        logit : (B,) the stay's logit at its last valid step (or attention-pooled)
        step_logits : (B, T) a logit per step; entries past ``lengths`` are meaningless
        """
        return self.from_inputs(self.step_inputs(x, mask, delta, statics), statics, lengths)

    def from_inputs(self, inp, statics, lengths):
        """:meth:`forward` from the step inputs ``inp`` (B, T, 3V + S) of :meth:`step_inputs` (each column depends on
        one variable's channels or one static feature; SHAP's coalitions use that through :meth:`from_gates`)."""
        hs, _ = self.lstm(inp)  # (B, T, H)
        return self._readout(self._dropout(hs), statics, lengths)

    def input_gates(self, inp):
        """The first layer's gate pre-activations from the step inputs, ``W_ih inp + b_ih + b_hh``: (..., 4H)."""
        lstm = self.lstm
        return torch.nn.functional.linear(inp, lstm.weight_ih_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)

    def gate_scale(self) -> torch.Tensor:
        """(4H,) ones, and 2 over the g block: :meth:`from_gates` with ``doubled=True`` takes pre-activations
        scaled by it (see :func:`_recur`), so that a caller summing many of them scales its terms once."""
        H = self.cfg.hidden_size
        scale = torch.ones(4 * H)
        scale[2 * H:3 * H] = 2
        return scale

    def from_gates(self, pre, statics, lengths, doubled: bool = False):
        """The stays' logits (B,) as :meth:`from_inputs` gives them (eval mode), from the first layer's gate
        pre-activations ``pre`` (B, T, 4H), the :meth:`input_gates` of the step inputs (times :meth:`gate_scale`
        with ``doubled``); ``pre`` is used as scratch space (overwritten).

        SHAP's coalitions differ from each other by a few players' columns: their pre-activations are the
        reference's plus the present players' terms, which costs a third of the input product; only the
        recurrence is run here. PyTorch's LSTM arithmetic (gate order i, f, g, o); checked against
        :meth:`forward` in the tests."""
        if self.training:
            raise RuntimeError("from_gates is for evaluation: call .eval() first")
        if self.cfg.num_layers == 1 and not self.cfg.attention:  # only each stay's last valid state is read
            last = _recur(pre, self.lstm.weight_hh_l0, lengths, doubled=doubled)  # (B, H)
            return self.head(last).squeeze(-1) + self.head_static(statics).squeeze(-1)
        hs = _recur(pre, self.lstm.weight_hh_l0, doubled=doubled)  # (B, T, H)
        for k in range(1, self.cfg.num_layers):
            w, b = getattr(self.lstm, f"weight_ih_l{k}"), getattr(self.lstm, f"bias_ih_l{k}")
            hs = _recur(torch.nn.functional.linear(hs, w, b + getattr(self.lstm, f"bias_hh_l{k}")),
                        getattr(self.lstm, f"weight_hh_l{k}"))
        return self._readout(hs, statics, lengths)[0]

    def _readout(self, hs, statics, lengths):
        """(logit, step_logits) from the last layer's hidden states ``hs`` (B, T, H)."""
        B, T, H = hs.shape
        step_logits = self.head(hs).squeeze(-1) + self.head_static(statics)  # (B, T) + (B, 1) -> (B, T)
        last = (lengths - 1).clamp(min=0).long()  # (B,)
        if self.cfg.attention:
            valid = torch.arange(T, device=hs.device)[None, :] < lengths[:, None]  # (B, T)
            score = self.attn(hs).squeeze(-1).masked_fill(~valid, float("-inf"))  # (B, T)
            weights = torch.softmax(score, dim=1).unsqueeze(-1)  # (B, T, 1)
            pooled = (weights * hs).sum(dim=1)  # (B, H)
            logit = self.attn_head(torch.cat([pooled, statics], dim=-1)).squeeze(-1)  # (B,)
        else:
            logit = step_logits.gather(1, last[:, None]).squeeze(1)  # (B,)
        return logit, step_logits


def _recur(pre, w_hh, lengths=None, doubled: bool = False):
    """An LSTM layer's hidden states (B, T, H) from its gate pre-activations ``pre`` (B, T, 4H), which it overwrites,
    and its recurrent weights ``w_hh`` (4H, H), from a zero state; each step writes into buffers made once. With
    ``lengths`` (B,), only each row's state at its last valid step: (B, H).

    ``tanh(x) = 2 sigmoid(2x) - 1``: torch's CPU tanh costs six sigmoids per element, so the g block's
    pre-activations and weights are doubled and one sigmoid covers every gate; the cell state is kept doubled
    (``c2 = 2c``) so that ``tanh(c)`` is one more sigmoid. ``doubled``: ``pre``'s g block is doubled already.
    Equal to nn.LSTM within float32 rounding (tested)."""
    B, T, G = pre.shape
    H = G // 4
    double = torch.ones(G, dtype=pre.dtype)
    double[2 * H:3 * H] = 2
    u = (w_hh.t() * double).contiguous()  # (H, 4H), a new tensor: the weights are never written
    if not doubled:
        pre[:, :, 2 * H:3 * H] *= 2
    if lengths is None:
        hs = torch.empty(B, T, H, dtype=pre.dtype)
    else:
        hs, last = torch.empty(B, H, dtype=pre.dtype), (lengths.long() - 1).clamp(min=0)
        ends = {int(t): torch.nonzero(last == t).squeeze(1) for t in torch.unique(last)}
    h, c2 = torch.zeros(B, H, dtype=pre.dtype), torch.zeros(B, H, dtype=pre.dtype)
    g, s, a = torch.empty(B, G, dtype=pre.dtype), torch.empty(B, G, dtype=pre.dtype), torch.empty(B, H, dtype=pre.dtype)
    minus2, minus1 = torch.full((B, H), -2.0, dtype=pre.dtype), torch.full((B, H), -1.0, dtype=pre.dtype)
    for t in range(T if lengths is None else max(ends, default=-1) + 1):
        if t:
            torch.addmm(pre[:, t], h, u, out=g)
            torch.sigmoid(g, out=s)  # i, f, sigmoid(2 g), o
        else:  # from the zero state: no recurrent term
            torch.sigmoid(pre[:, 0], out=s)
        torch.add(minus2, s[:, 2 * H:3 * H], alpha=4, out=a)  # 2 tanh(g)
        c2.mul_(s[:, H:2 * H]).addcmul_(s[:, :H], a)  # 2c = f * 2c + i * 2 tanh(g)
        torch.sigmoid(c2, out=a)
        torch.add(minus1, a, alpha=2, out=a)  # tanh(c)
        torch.mul(s[:, 3 * H:], a, out=h)  # h = o * tanh(c)
        if lengths is None:
            hs[:, t] = h
        elif t in ends:
            hs[ends[t]] = h[ends[t]]
    return hs


def to_torch(t, device: torch.device) -> dict[str, torch.Tensor]:
    """:class:`~clinical_lstm.features.impute.Tensors` as torch tensors on ``device`` (``summary`` only when present)."""
    out = {
        "x": torch.from_numpy(t.x).to(device),  # (N, T, V)
        "mask": torch.from_numpy(t.mask).to(device),  # (N, T, V)
        "delta": torch.from_numpy(t.delta).to(device),  # (N, T, V)
        "statics": torch.from_numpy(t.statics).to(device),  # (N, S)
        "lengths": torch.from_numpy(t.lengths).to(device),  # (N,)
    }
    if getattr(t, "summary", None) is not None:
        out["summary"] = torch.from_numpy(t.summary).to(device)  # (N, F) or (N, T, F)
    return out


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` (None: left as it is) for a block of work, then restored."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Rows:
    """Some stays of a data source, not copied: :func:`batch_of` gathers each batch from the whole source.
    A cross-fitting fold is one, so k folds cost no copy of the training data."""

    def __init__(self, data, idx):
        self.data, self.idx = data, torch.as_tensor(idx, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.idx)


def batch_of(data, idx) -> dict[str, torch.Tensor]:
    """The batch ``idx`` (a slice, or positions) of a data source: a dict of tensors (:func:`to_torch`), an
    object with ``batch(positions)`` (:class:`clinical_lstm.features.cohort.StayFile`, read from disk), or
    :class:`Rows` of either."""
    if isinstance(data, Rows):
        return batch_of(data.data, data.idx[idx.cpu() if isinstance(idx, torch.Tensor) else idx])
    if isinstance(data, dict):
        return {k: v[idx.to(v.device) if isinstance(idx, torch.Tensor) else idx] for k, v in data.items()}
    return data.batch(np.arange(len(data))[idx] if isinstance(idx, slice) else idx)


def n_stays(data) -> int:
    return len(data["lengths"]) if isinstance(data, dict) else len(data)


def widths(data) -> tuple[int, int]:
    """(V, S): the series and static widths of a data source (see :func:`batch_of`)."""
    d = data.data if isinstance(data, Rows) else data
    return (d["x"].shape[2], d["statics"].shape[1]) if isinstance(d, dict) else d.widths


@torch.no_grad()
def predict_logits(models, data, batch_size: int = 1024, steps: bool = False):
    """Mean logit over the ensemble, (N,) — or (N, T) per-step logits with ``steps=True``.

    Each batch's step inputs are built once for all the networks: the mask, elapsed-hours and statics columns are
    the same for every network; each network writes only its own value columns (:meth:`MaskedLSTM.decayed`) before
    its pass (they were a seventh of batch scoring's time, built per network)."""
    models = models if isinstance(models, (list, tuple)) else [models]
    n = n_stays(data)
    outs = [[] for _ in models]
    for m in models:
        m.eval()
    for i in range(0, n, batch_size):
        b = batch_of(data, slice(i, i + batch_size))
        x, mask, delta, statics = b["x"], b["mask"], b["delta"], b["statics"]
        inp = models[0].step_inputs(x, mask, delta, statics)  # (B, T, 3V + S), the first network's
        V, raw = x.shape[-1], not models[0].cfg.decay  # whether inp's value columns hold the raw values
        for k, m in enumerate(models):
            if k and (m.cfg.decay or not raw):
                inp[..., :V] = m.decayed(x, mask, delta)
                raw = not m.cfg.decay
            logit, step_logits = m.from_inputs(inp, statics, b["lengths"])
            outs[k].append((step_logits if steps else logit).float().cpu())
    return torch.stack([torch.cat(o) if o else torch.zeros(0) for o in outs]).mean(0).numpy()


class StepKernel:
    """The networks of an ensemble stepped forward a few bins at a time in numpy: the stream's fast path.

    Generated from the :class:`MaskedLSTM` weights (never trained or saved on its own) and checked against
    ``MaskedLSTM.forward`` in the fast tests. It exists for latency only: one update of a stream runs one
    or two steps, where torch's fixed cost per call (~100 us per module) would be most of the time; here the
    ensemble's members are stacked, so the cost hardly grows with their number. The arithmetic is
    ``step_inputs`` and ``forward`` (PyTorch's LSTM gate order i, f, g, o).

    A state is a dict of float arrays: ``h``, ``c`` (K, L, H) after the steps so far, and for attention
    models the running softmax over those steps (``att_max`` (K,), ``att_den`` (K,), ``att_num`` (K, H)).
    """

    def __init__(self, networks):
        cfgs = {repr(n.cfg) for n in networks}
        if len(cfgs) != 1:
            raise ValueError("the networks of an ensemble must share one model config")
        net = networks[0]
        self.K, self.V, self.S = len(networks), net.n_series, net.n_static
        self.H, self.L = net.cfg.hidden_size, net.cfg.num_layers
        self.decay, self.attention = bool(net.cfg.decay), bool(net.cfg.attention)
        sd = [{k: v.detach().cpu().float().numpy() for k, v in n.state_dict().items()} for n in networks]
        stack = lambda key: np.stack([d[key] for d in sd])  # noqa: E731 -- (K, ...)
        V = self.V
        if self.decay:
            self.decay_w, self.decay_b = stack("decay_w"), stack("decay_b")  # (K, V)
        w0 = stack("lstm.weight_ih_l0")  # (K, 4H, 3V + S)
        self.w_series = w0[:, :, :3 * V].transpose(0, 2, 1).copy()  # (K, 3V, 4H)
        self.w_static = w0[:, :, 3 * V:].transpose(0, 2, 1).copy()  # (K, S, 4H)
        self.w_ih = [None] + [stack(f"lstm.weight_ih_l{k}").transpose(0, 2, 1).copy() for k in range(1, self.L)]
        self.w_hh = [stack(f"lstm.weight_hh_l{k}").transpose(0, 2, 1).copy() for k in range(self.L)]  # (K, H, 4H)
        self.bias = [stack(f"lstm.bias_ih_l{k}") + stack(f"lstm.bias_hh_l{k}") for k in range(self.L)]  # (K, 4H)
        self.head_w, self.head_b = stack("head.weight")[:, 0], stack("head.bias")[:, 0]  # (K, H), (K,)
        self.head_static = stack("head_static.weight")[:, 0]  # (K, S)
        if self.attention:
            self.attn_w1, self.attn_b1 = stack("attn.0.weight").transpose(0, 2, 1).copy(), stack("attn.0.bias")
            self.attn_w2 = stack("attn.2.weight")[:, 0]  # (K, H)
            w = stack("attn_head.weight")[:, 0]  # (K, H + S)
            self.attn_head_h, self.attn_head_s, self.attn_head_b = w[:, :self.H], w[:, self.H:], stack("attn_head.bias")[:, 0]

    def initial_state(self) -> dict:
        K, L, H = self.K, self.L, self.H
        state = {"h": np.zeros((K, L, H), np.float32), "c": np.zeros((K, L, H), np.float32)}
        if self.attention:  # the softmax accumulators stay float64: they add up over the whole stay
            state.update(att_max=np.full(K, -np.inf), att_den=np.zeros(K), att_num=np.zeros((K, H)))
        return state

    def run(self, x, mask, delta, statics, state: dict, commit: int | None = None) -> tuple[dict, np.ndarray]:
        """``k`` steps (x, mask, delta (k, V); statics (S,)) from ``state`` -> (the state after the first
        ``commit`` steps (default: all k), per-member logits (K,) of the stay after all k). ``state`` is kept.

        The stream runs the bins that closed since its last update and the open bin in one call: it keeps the
        state after the closed ones and reports the risk after the open one."""
        H, K, V = self.H, self.K, self.V
        k = len(x)
        commit = k if commit is None else commit
        x, mask, delta = (np.asarray(a, np.float32) for a in (x, mask, delta))  # (k, V), float32 as torch
        inp = np.empty((K, k, 3 * V), np.float32)  # (K, k, 3V): x, mask, log1p(delta) of each member's input
        if self.decay:  # as MaskedLSTM.step_inputs
            gamma = np.exp(-np.maximum(self.decay_w[:, None] * delta + self.decay_b[:, None], 0))  # (K, k, V)
            np.multiply(x, mask + (1 - mask) * gamma, out=inp[:, :, :V])
        else:
            inp[:, :, :V] = x
        inp[:, :, V:2 * V] = mask
        inp[:, :, 2 * V:] = np.log1p(delta)
        s, static_pre = self._static_pre(statics)  # (S,), (K, 1, 4H)
        # Every product below has the shape of one step, whatever k is: a stream resumed from a saved state
        # (one step) then gets bit for bit the numbers of a stream that ran these steps in one call.
        h, c = state["h"].copy(), state["c"].copy()  # (K, L, H), written in place below
        pool = {key: state[key] for key in ("att_max", "att_den", "att_num") if key in state}
        new = {"h": h.copy(), "c": c.copy(), **pool} if commit == 0 else None  # the state after `commit` steps
        for t in range(k):
            below = None
            for layer in range(self.L):
                pre = (inp[:, t:t + 1] @ self.w_series + static_pre if layer == 0
                       else below @ self.w_ih[layer] + self.bias[layer][:, None])  # (K, 1, 4H)
                g = (pre + h[:, layer, None, :] @ self.w_hh[layer])[:, 0]  # (K, 4H)
                gates = _sigmoid(g)  # every gate at once (the g block's sigmoid is not used): fewer calls
                i, f, o = gates[:, :H], gates[:, H:2 * H], gates[:, 3 * H:]
                c[:, layer] = f * c[:, layer] + i * np.tanh(g[:, 2 * H:3 * H])
                h[:, layer] = o * np.tanh(c[:, layer])
                below = h[:, layer, None, :]  # (K, 1, H); no dropout in eval
            if self.attention:
                score = (np.tanh(below @ self.attn_w1 + self.attn_b1[:, None])[:, 0] * self.attn_w2).sum(axis=1)
                pool = _softmax_pool(pool, score[:, None], below.astype(np.float64))
            if t == commit - 1:  # the last step needs no copy: h and c are not written after it
                new = {"h": h.copy(), "c": c.copy(), **pool} if t < k - 1 else {"h": h, "c": c, **pool}
        if not self.attention:
            return new, np.einsum("kh,kh->k", h[:, -1], self.head_w) + self.head_b + self.head_static @ s
        pooled = pool["att_num"] / pool["att_den"][:, None]  # (K, H)
        logits = (np.einsum("kh,kh->k", pooled, self.attn_head_h) + np.einsum("ks,s->k", self.attn_head_s, s)
                  + self.attn_head_b)
        return new, logits

    def _static_pre(self, statics) -> tuple[np.ndarray, np.ndarray]:
        """The statics as float32 (S,) and their first-layer term with the bias (K, 1, 4H): the same at every step
        of a stay, so it is computed once per statics (kept by their bytes, for the streams of a few hundred stays
        at a time)."""
        s = np.asarray(statics, np.float32)
        key = s.tobytes()
        cache = self.__dict__.setdefault("_static_cache", {})
        got = cache.get(key)
        if got is None:
            if len(cache) >= 512:
                cache.clear()
            got = cache[key] = (s.copy(), (s @ self.w_static + self.bias[0])[:, None])
        return got


def _softmax_pool(state: dict, score: np.ndarray, hs: np.ndarray) -> dict:
    """Attention accumulators after adding steps with ``score`` (K, k) and hidden states ``hs`` (K, k, H): the
    running maximum, sum of exp(score - max) and the exp-weighted sum of hidden states."""
    if score.shape[1] == 0:
        return {key: state[key] for key in ("att_max", "att_den", "att_num")}
    mx = np.maximum(state["att_max"], score.max(axis=1))
    scale, w = np.exp(state["att_max"] - mx), np.exp(score - mx[:, None])  # (K,), (K, k)
    return {"att_max": mx, "att_den": state["att_den"] * scale + w.sum(axis=1),
            "att_num": state["att_num"] * scale[:, None] + np.einsum("kt,kth->kh", w, hs)}


def _sigmoid(z):
    return 1 / (1 + np.exp(-np.maximum(z, -80)))  # float32 exp overflows past 88; at -80 it is 1.8e-35 already
