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

import torch
from torch import nn

from .config import ModelConfig


class MaskedLSTM(nn.Module):
    """``n_series`` (V) series variables, ``n_static`` (S) static features; see the module docstring."""

    def __init__(self, cfg: ModelConfig, n_series: int, n_static: int):
        super().__init__()
        self.cfg, self.n_series, self.n_static = cfg, n_series, n_static
        V, S, H = n_series, n_static, cfg.hidden_size
        if cfg.decay:
            self.decay_w = nn.Parameter(torch.zeros(V))
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
        if self.cfg.decay:
            gamma = torch.exp(-torch.relu(self.decay_w * delta + self.decay_b))  # (B, T, V)
            x = x * (mask + (1 - mask) * gamma)  # = m * x + (1 - m) * gamma * x
        B, T, _ = x.shape
        s = statics.unsqueeze(1).expand(B, T, statics.shape[1])  # (B, T, S)
        return torch.cat([x, mask, torch.log1p(delta), s], dim=-1)  # (B, T, 3V + S)

    def forward(self, x, mask, delta, statics, lengths, state=None):
        """Return ``(logit, step_logits, state)``.

        Parameters
        ----------
        x, mask, delta : Tensor (B, T, V)
        statics : Tensor (B, S)
        lengths : Tensor (B,) int, true number of steps (>= 1)
        state : optional LSTM ``(h, c)`` to continue from (streaming)

        Returns
        -------
        logit : (B,) the stay's logit at its last valid step (or attention-pooled)
        step_logits : (B, T) a logit per step; entries past ``lengths`` are meaningless
        state : the LSTM ``(h, c)`` after the last input step
        """
        inp = self.step_inputs(x, mask, delta, statics)  # (B, T, 3V + S)
        hs, state = self.lstm(inp, state)  # (B, T, H)
        hs = self._dropout(hs)
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
        return logit, step_logits, state
