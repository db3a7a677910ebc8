"""Streaming risk for one stay: feed new observations as they arrive, get the current calibrated risk.

::

    m = load_model("model/")            # a bundle directory or an MLflow URI
    s = m.stream()                      # one stream per stay
    s.update(rows)                      # DataFrame: time, variable, value (other columns ignored) -> risk
    state = s.state()                   # JSON-able; RiskModel.stream(state) resumes the stay

The stream keeps what :meth:`RiskModel.predict` would recompute from scratch, and only computes new grid
steps:

* the static features (from the time-0 rows, as :func:`clinical_lstm.grid.to_grid` reads them);
* the *open* bin, i.e. the bin of the latest series observation, as running aggregates per variable
  (sum and count, last, max, min, and the time of the bin's last observation), so several observations in
  one bin combine exactly as the catalogue's aggregation says;
* per series variable the value carried forward (the last standardized observation, or the training
  median / 0 depending on the imputation) and the time of its last observation (for the elapsed hours);
* per ensemble network the LSTM ``(h, c)`` after the last *closed* bin (and, for attention models, the
  running softmax maximum, denominator and weighted sum of hidden states over the closed bins);
* per variable the key of its latest observation, for the duplicate-row rule.

A bin closes when a series observation lands in a later bin. The risk is the LSTM run one step on the open
bin's aggregates from the saved state, without committing that step; because ``predict``'s stay length is
"up to the last bin with a series observation", this is exactly ``predict``'s last step. After all of a
stay's rows have been fed, in any chunking, ``update`` returns ``predict``'s risk (to float32 round-off).

Contract: rows arrive in non-decreasing ``time`` (within and across updates; a row with an earlier time
than one already fed raises ``ValueError`` naming both times and changes nothing). Every row-level rule of
:mod:`clinical_lstm.validate` applies, row by row, with the same outcome (unparseable time or value,
unknown variable, negative time, past the window, a static-only descriptor after time 0, the -1 sentinel,
out of range, exact duplicates). Statics come from time-0 rows; as time never goes backwards, every time-0
row arrives before the first bin closes (a bin closes only at time >= one resolution step), so statics can
never arrive too late. Until the stay has a valid series observation its risk is ``None`` (``predict``
rejects such a stay with ``no_time_series``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

STATE_FORMAT = 1
_COLUMNS = ("time", "variable", "value")
_AGG_CODES = {"mean": 0, "sum": 1, "last": 2, "max": 3, "min": 4}


class _Net:
    """One :class:`~clinical_lstm.model.MaskedLSTM` as float32 numpy arrays, stepped without torch.

    Streaming runs one or a few steps at a time, where torch's per-call overhead (~100 us per ``nn.LSTM``
    call) would dominate; the same arithmetic in numpy takes a few microseconds. It mirrors
    ``MaskedLSTM.step_inputs`` and ``forward`` (PyTorch's LSTM gate order i, f, g, o); the stream tests
    check it against ``predict`` to 1e-5.
    """

    def __init__(self, net, n_series: int):
        cfg = net.cfg
        sd = {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}
        V, self.H, self.L = n_series, cfg.hidden_size, cfg.num_layers
        self.decay, self.attention = bool(cfg.decay), bool(cfg.attention)
        if self.decay:
            self.decay_w, self.decay_b = sd["decay_w"], sd["decay_b"]
        self.w_ih = [np.ascontiguousarray(sd[f"lstm.weight_ih_l{k}"]) for k in range(self.L)]  # (4H, in)
        self.w_hh_t = [np.ascontiguousarray(sd[f"lstm.weight_hh_l{k}"].T) for k in range(self.L)]  # (H, 4H)
        self.bias = [sd[f"lstm.bias_ih_l{k}"] + sd[f"lstm.bias_hh_l{k}"] for k in range(self.L)]
        self.w_series_t = np.ascontiguousarray(self.w_ih[0][:, :3 * V].T)  # (3V, 4H): x, mask, log1p(delta)
        self.w_static = np.ascontiguousarray(self.w_ih[0][:, 3 * V:])  # (4H, S)
        self.head_w, self.head_b = sd["head.weight"].reshape(-1), float(sd["head.bias"][0])
        self.head_static_w = sd["head_static.weight"].reshape(-1)
        if self.attention:
            self.attn_w1, self.attn_b1 = sd["attn.0.weight"], sd["attn.0.bias"]
            self.attn_w2 = sd["attn.2.weight"].reshape(-1)
            self.attn_head_w, self.attn_head_b = sd["attn_head.weight"].reshape(-1), float(sd["attn_head.bias"][0])

    def static_input(self, s: np.ndarray) -> np.ndarray:
        """The statics' (constant) share of layer 0's gate pre-activations, bias included: (4H,)."""
        return (self.w_static @ s + self.bias[0]).astype(np.float32)

    def run(self, x, mask, delta, static_in, h, c):
        """(k, V) inputs from state ``h, c`` (L, H) -> hidden states of the top layer (k, H), new h, c."""
        if self.decay:  # as MaskedLSTM.step_inputs
            gamma = np.exp(-np.maximum(self.decay_w * delta + self.decay_b, 0))
            x = x * (mask + (1 - mask) * gamma)
        inp = np.concatenate([x, mask, np.log1p(delta)], axis=1)  # (k, 3V)
        pre = inp @ self.w_series_t + static_in  # (k, 4H)
        h, c = h.copy(), c.copy()
        H, out = self.H, None
        for layer in range(self.L):
            if out is not None:  # layers above the first read the layer below (no dropout in eval)
                pre = out @ self.w_ih[layer].T + self.bias[layer]
            out = np.empty((len(pre), H), np.float32)
            w_hh_t, hl, cl = self.w_hh_t[layer], h[layer], c[layer]
            for t in range(len(pre)):
                g = pre[t] + hl @ w_hh_t
                i, f = _sigmoid(g[:H]), _sigmoid(g[H:2 * H])
                o = _sigmoid(g[3 * H:])
                cl = f * cl + i * np.tanh(g[2 * H:3 * H])
                hl = o * np.tanh(cl)
                out[t] = hl
            h[layer], c[layer] = hl, cl
        return out, h, c

    def scores(self, hs: np.ndarray) -> np.ndarray:
        """Attention scores of hidden states (k, H) -> (k,)."""
        return np.tanh(hs @ self.attn_w1.T + self.attn_b1) @ self.attn_w2

    def logit(self, h: np.ndarray, s: np.ndarray, pooled: np.ndarray | None = None) -> float:
        if pooled is not None:
            return float(pooled @ self.attn_head_w[:self.H] + s @ self.attn_head_w[self.H:] + self.attn_head_b)
        return float(h @ self.head_w + self.head_b + s @ self.head_static_w)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


class _Engine:
    """Per-model constants for streaming, built once per model and shared by all of its streams."""

    def __init__(self, model):
        tr = model.transformer
        tr._check_fitted()
        cat = tr.catalogue
        self.model = model
        self.T = tr.n_bins
        self.res = float(tr.resolution_hours)
        self.window = float(tr.window_hours)
        self.series = cat.series
        self.statics = cat.statics
        self.V, self.S = len(self.series), len(self.statics)
        s_idx = {n: i for i, n in enumerate(self.series)}
        st_idx = {n: i for i, n in enumerate(self.statics)}
        # name -> (code, series index or -1, static index or -1, lower, upper, static-only, aggregation code)
        self.vars = {v.name: (code, s_idx.get(v.name, -1), st_idx.get(v.name, -1), float(v.lower), float(v.upper),
                              v.kind == "static", _AGG_CODES[v.aggregation])
                     for code, v in enumerate(cat.variables)}
        self.is_mean = [cat[n].aggregation == "mean" for n in self.series]
        self.log_ = tr.log_
        self.center_, self.scale_ = tr.center_, tr.scale_
        self.ffill = tr.imputation == "ffill_median"
        fill = tr.median_ if tr.imputation != "zero" else np.zeros_like(tr.median_)
        self.fill = fill.astype(np.float32)
        self.bin_end = (np.arange(self.T, dtype=np.float32) + 1) * self.res  # as Grid.bin_end_hours
        cfgs = {json.dumps(n.cfg.to_dict(), sort_keys=True) for n in model.networks}
        if len(cfgs) != 1:
            raise ValueError("stream() needs every ensemble network to share one model config")
        self.nets = [_Net(n, self.V) for n in model.networks]
        self.attention = self.nets[0].attention
        self.H, self.L = self.nets[0].H, self.nets[0].L
        self.fingerprint = fingerprint(model)

    def static_features(self, raw: np.ndarray) -> np.ndarray:
        """Raw static values (S,) -> the transformer's static features (F,) float32."""
        return np.ascontiguousarray(self.model.transformer._transform_statics(raw[None, :])[0], dtype=np.float32)


def fingerprint(model) -> str:
    """SHA-256 over everything that changes a stream's numbers: catalogue, transformer, weights, calibrator."""
    h = hashlib.sha256()
    h.update(model.catalogue.digest().encode())
    h.update(json.dumps(model.transformer.to_dict(), sort_keys=True, default=float).encode())
    h.update(json.dumps(model.calibrator.to_dict(), sort_keys=True, default=float).encode())
    for net in model.networks:
        h.update(json.dumps(net.cfg.to_dict(), sort_keys=True).encode())
        for name, p in net.state_dict().items():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def engine(model) -> _Engine:
    """The model's cached :class:`_Engine` (rebuilt if its networks, transformer or calibrator were replaced)."""
    key = (id(model.transformer), id(model.calibrator), tuple(id(n) for n in model.networks))
    cached = model.__dict__.get("_stream_engine")
    if cached is None or cached[0] != key:
        cached = (key, _Engine(model))
        model.__dict__["_stream_engine"] = cached
    return cached[1]


class StayStream:
    """Incremental scoring of one stay; build it with :meth:`RiskModel.stream` (see the module docstring).

    Parameters
    ----------
    model : RiskModel
    state : dict, str or Path, optional
        A :meth:`state` dict (or its JSON text, or a file written by :meth:`save`) to resume from.
    """

    def __init__(self, model, state=None):
        self._e = engine(model)
        self.model = model
        self._reset()
        if state is not None:
            self._restore(state)

    # -- public API -------------------------------------------------------------------------------------
    @property
    def risk(self) -> float | None:
        """The current calibrated risk; None until the stay has a valid series observation."""
        return self._risk

    @property
    def logit(self) -> float | None:
        """The current ensemble-mean logit (before calibration); None like :attr:`risk`."""
        return self._logit

    @property
    def flag(self) -> bool | None:
        """``risk >= threshold`` (the bundle's alert threshold); None like :attr:`risk`."""
        return None if self._risk is None else bool(self._risk >= self.model.threshold)

    @property
    def hours(self) -> float | None:
        """The latest time fed (hours since admission), None before the first row with a valid time."""
        return self._last_time

    @property
    def n_steps(self) -> int:
        """Grid steps the risk covers: closed bins plus the open one (``predict``'s stay length)."""
        return self._n_closed + 1 if self._has_series else 0

    @property
    def dropped(self) -> dict[str, int]:
        """Rows dropped so far, by validation rule (as :class:`~clinical_lstm.validate.QualityReport`)."""
        return dict(self._dropped)

    def update(self, rows=None) -> float | None:
        """Feed new observations and return the current calibrated risk.

        ``rows``: a pandas or polars DataFrame (or anything ``polars.DataFrame`` accepts) with columns
        ``time`` (hours since admission, or ``HH:MM``), ``variable``, ``value``; other columns (``stay_id``...)
        are ignored. ``None`` or no rows returns the current risk. Times must not decrease.
        """
        cols = _columns(rows)
        if cols is None:
            return self._risk
        times, names, values = cols
        self._check_order(times)
        changed = self._ingest(times, names, values)
        if changed:
            self._refresh()
        return self._risk

    def state(self) -> dict:
        """The whole stream state as a JSON-able dict (float32 values round-trip exactly)."""
        nets = []
        for k in range(len(self._e.nets)):
            item = {"h": self._h[k].tolist(), "c": self._c[k].tolist()}
            if self._e.attention:
                mx, den, num = self._att[k]
                item.update({"att_max": None if mx == -np.inf else float(mx), "att_den": float(den),
                             "att_num": num.tolist()})
            nets.append(item)
        return {
            "format": STATE_FORMAT,
            "model": self._e.fingerprint,
            "last_time": self._last_time,
            "has_series": self._has_series,
            "n_closed": self._n_closed,
            "statics": _nan_to_none(self._statics_raw),
            "carry": self._carry.tolist(),
            "last_obs": _nan_to_none(self._last_obs),
            "open": [[v, *acc] for v, acc in sorted(self._open.items())],
            "dedup": [[code, key, sorted(vals)] for code, (key, vals) in sorted(self._dedup.items())],
            "dropped": dict(self._dropped),
            "networks": nets,
        }

    def to_json(self) -> str:
        return json.dumps(self.state(), separators=(",", ":"))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state` as JSON (``.json``) or as tensors plus JSON metadata (``.safetensors``)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            tensors, meta = self.to_tensors()
            save_file(tensors, str(path), metadata=meta)
        else:
            path.write_text(self.to_json())
        return path

    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """The state as float32 arrays (LSTM states, carried values) plus string metadata, for safetensors."""
        st = self.state()
        tensors = {"carry": np.asarray(st.pop("carry"), np.float32),
                   "last_obs": np.asarray([np.nan if v is None else v for v in st.pop("last_obs")], np.float32),
                   "statics": np.asarray([np.nan if v is None else v for v in st.pop("statics")], np.float32)}
        for k, item in enumerate(st.pop("networks")):
            for name, val in item.items():
                if name.startswith("att_"):  # softmax accumulators are float64; the max is -inf before any step
                    tensors[f"net{k}.{name}"] = np.asarray(-np.inf if val is None else val, np.float64).reshape(-1)
                else:
                    tensors[f"net{k}.{name}"] = np.asarray(val, np.float32)
        st["n_networks"] = len(self._e.nets)
        return tensors, {"clinical_lstm.stream": json.dumps(st, separators=(",", ":"))}

    @classmethod
    def from_tensors(cls, model, tensors: dict, metadata: dict) -> StayStream:
        st = json.loads(metadata["clinical_lstm.stream"])
        n = st.pop("n_networks")
        st["networks"] = []
        for k in range(n):
            item = {f: np.asarray(tensors[f"net{k}.{f}"]).tolist() for f in ("h", "c")}
            if f"net{k}.att_num" in tensors:
                mx = float(tensors[f"net{k}.att_max"][0])
                item.update({"att_max": None if mx == -np.inf else mx, "att_den": float(tensors[f"net{k}.att_den"][0]),
                             "att_num": np.asarray(tensors[f"net{k}.att_num"]).tolist()})
            st["networks"].append(item)
        for name in ("carry", "last_obs", "statics"):
            st[name] = _nan_to_none(np.asarray(tensors[name], np.float32))
        return cls(model, st)

    @classmethod
    def load(cls, model, path: str | Path) -> StayStream:
        """Resume from a file written by :meth:`save`."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                return cls.from_tensors(model, {k: f.get_tensor(k) for k in f.keys()}, f.metadata())  # noqa: SIM118
        return cls(model, path.read_text())

    def __repr__(self) -> str:
        risk = "None" if self._risk is None else f"{self._risk:.4f}"
        return f"StayStream(hours={self._last_time}, steps={self.n_steps}, risk={risk})"

    # -- internals ------------------------------------------------------------------------------------
    def _reset(self):
        e = self._e
        self._last_time: float | None = None
        self._has_series = False
        self._n_closed = 0  # bins before the open one, already run through the LSTM
        self._statics_raw = np.full(e.S, np.nan, dtype=np.float32)
        self._set_statics()
        self._carry = e.fill.copy()  # the value an unobserved bin gets, per series variable
        self._last_obs = np.full(e.V, np.nan, dtype=np.float32)  # time of the last observation per variable
        self._open: dict[int, list] = {}  # series index -> [aggregate, count, time of last obs] of the open bin
        self._dedup: dict[int, tuple[int, set]] = {}  # code -> (time key of its latest row, values at that key)
        self._dropped: Counter = Counter()
        self._h = [np.zeros((e.L, e.H), np.float32) for _ in e.nets]  # LSTM state after the closed bins
        self._c = [np.zeros((e.L, e.H), np.float32) for _ in e.nets]
        # attention: running max of the scores, sum of exp(score - max), sum of exp(score - max) * h
        self._att = [(-np.inf, 0.0, np.zeros(e.H)) for _ in e.nets] if e.attention else []
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._risk: float | None = None
        self._logit: float | None = None

    def _set_statics(self):
        self._statics_f = self._e.static_features(self._statics_raw)
        self._static_in = [net.static_input(self._statics_f) for net in self._e.nets]

    def _restore(self, state):
        e = self._e
        if isinstance(state, Path) or (isinstance(state, str) and not state.lstrip().startswith("{")):
            state = Path(state).read_text()
        if isinstance(state, str):
            state = json.loads(state)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"stream state format {state.get('format')!r} is not {STATE_FORMAT}")
        if state.get("model") != e.fingerprint:
            raise ValueError("this stream state was saved from a different model (catalogue, transformer, "
                             "weights or calibrator differ); resume it with the model that produced it")
        if len(state["networks"]) != len(e.nets):
            raise ValueError(f"stream state holds {len(state['networks'])} networks, the model {len(e.nets)}")
        self._last_time = None if state["last_time"] is None else float(state["last_time"])
        self._has_series = bool(state["has_series"])
        self._n_closed = int(state["n_closed"])
        self._statics_raw = _none_to_nan(state["statics"], e.S)
        self._set_statics()
        self._carry = _none_to_nan(state["carry"], e.V)
        self._last_obs = _none_to_nan(state["last_obs"], e.V)
        self._open = {int(v): [float(a), int(n), float(t)] for v, a, n, t in state["open"]}
        self._dedup = {int(c): (int(k), {float(x) for x in vals}) for c, k, vals in state["dedup"]}
        self._dropped = Counter({str(k): int(v) for k, v in state.get("dropped", {}).items()})
        shape = (e.L, e.H)
        self._h = [np.asarray(item["h"], np.float32).reshape(shape) for item in state["networks"]]
        self._c = [np.asarray(item["c"], np.float32).reshape(shape) for item in state["networks"]]
        if e.attention:
            self._att = [(-np.inf if item["att_max"] is None else float(item["att_max"]), float(item["att_den"]),
                          np.asarray(item["att_num"], np.float64).reshape(e.H)) for item in state["networks"]]
        self._refresh()

    def _check_order(self, times: np.ndarray):
        finite = times[np.isfinite(times)]
        if not len(finite):
            return
        prev = np.r_[-np.inf if self._last_time is None else self._last_time, finite[:-1]]
        bad = np.flatnonzero(finite < prev)
        if len(bad):
            i = bad[0]
            raise ValueError(f"stream rows must arrive in non-decreasing time: a row at time {finite[i]:g} h "
                             f"comes after time {prev[i]:g} h; nothing of this update was applied")

    def _ingest(self, times, names, values) -> bool:
        """Apply the row rules, fold valid rows into the open bin / statics; True if anything changed."""
        e = self._e
        vars_, window, res, T, ffill = e.vars, e.window, e.res, e.T, e.ffill
        changed = False
        dropped = self._dropped
        for i in range(len(times)):
            t = float(times[i])
            if not math.isfinite(t):
                dropped["unparseable_time"] += 1
                continue
            self._last_time = t
            name = names[i]
            spec = vars_.get(name.strip() if isinstance(name, str) else None)
            if spec is None:
                dropped["unknown_variable"] += 1
                continue
            code, sv, st, lower, upper, static_only, agg = spec
            v = float(values[i])
            if not math.isfinite(v):
                dropped["unparseable_value"] += 1
                continue
            if t < 0:
                dropped["negative_time"] += 1
                continue
            if t > window:
                dropped["past_window"] += 1
                continue
            if static_only and t > 0:
                dropped["static_after_admission"] += 1
                continue
            if v < lower or v > upper:
                dropped["sentinel_minus_one" if v == -1 else "out_of_range"] += 1
                continue
            key = int(np.rint(t * 3600))
            seen = self._dedup.get(code)
            simultaneous = seen is not None and seen[0] == key
            if simultaneous:
                if v in seen[1]:
                    dropped["duplicate_row"] += 1
                    continue
                seen[1].add(v)
            else:
                self._dedup[code] = (key, {v})
            changed = True
            if st >= 0 and t == 0 and math.isnan(self._statics_raw[st]):  # the first time-0 row wins
                self._statics_raw[st] = v
                self._set_statics()
            if sv < 0:
                continue
            b = min(math.floor(t / res + 1e-9), T - 1)  # as grid.to_grid
            if b > self._n_closed:
                self._close_bins(b, ffill)
            self._has_series = True
            acc = self._open.get(sv)
            if acc is None:
                self._open[sv] = [v, 1, t]
            else:
                if agg <= 1:  # mean, sum
                    acc[0] += v
                elif agg == 2:  # last; of simultaneous values the larger, as validate orders them by value
                    acc[0] = max(acc[0], v) if simultaneous else v
                elif agg == 3:
                    acc[0] = max(acc[0], v)
                else:
                    acc[0] = min(acc[0], v)
                acc[1] += 1
                acc[2] = t
        if self._pending:
            self._advance()
        return changed

    def _open_step(self):
        """(x, mask, delta, new last-observation times, observed indices, their z) for the open bin."""
        e = self._e
        x, mask, last = self._carry.copy(), np.zeros(e.V, np.float32), self._last_obs
        idx = z = None
        if self._open:
            idx = np.fromiter(self._open.keys(), dtype=np.int64, count=len(self._open))
            raw = np.empty(len(idx), np.float32)
            tobs = np.empty(len(idx), np.float32)
            for j, v in enumerate(idx):
                a, n, t = self._open[v]
                raw[j] = a / n if e.is_mean[v] else a  # mean: total / count, as grid._aggregate
                tobs[j] = t
            logged = np.where(e.log_[idx], np.log1p(np.maximum(raw, 0)), raw)
            z = ((logged - e.center_[idx]) / e.scale_[idx]).astype(np.float32)
            x[idx] = z
            mask[idx] = 1.0
            last = last.copy()
            last[idx] = tobs
        end = e.bin_end[self._n_closed]
        delta = np.where(np.isnan(last), end, end - last).astype(np.float32)
        return x, mask, delta, last, idx, z

    def _close_bins(self, upto: int, ffill: bool):
        """Queue the open bin and the empty bins up to (not including) ``upto`` as LSTM steps."""
        e = self._e
        x, mask, delta, last, idx, z = self._open_step()
        self._pending.append((x, mask, delta))
        if idx is not None:
            if ffill:
                self._carry[idx] = z
            self._last_obs = last
        self._open = {}
        empty = np.zeros(e.V, np.float32)
        for j in range(self._n_closed + 1, upto):
            end = e.bin_end[j]
            delta = np.where(np.isnan(self._last_obs), end, end - self._last_obs).astype(np.float32)
            self._pending.append((self._carry.copy(), empty, delta))
        self._n_closed = upto

    def _advance(self):
        """Run the queued closed bins through every network and commit the new states."""
        e = self._e
        x, m, d = (np.stack(a) for a in zip(*self._pending, strict=True))  # (k, V) each
        self._pending = []
        for k, net in enumerate(e.nets):
            hs, self._h[k], self._c[k] = net.run(x, m, d, self._static_in[k], self._h[k], self._c[k])
            if e.attention:
                mx, den, num = self._att[k]
                score = net.scores(hs).astype(np.float64)
                new_max = max(mx, float(score.max()))
                w, scale = np.exp(score - new_max), math.exp(mx - new_max)
                self._att[k] = (new_max, den * scale + w.sum(), num * scale + w @ hs)

    def _refresh(self):
        """Recompute the risk: one uncommitted LSTM step on the open bin from every network's state."""
        e = self._e
        if not self._has_series:
            self._risk = self._logit = None
            return
        x, mask, delta, *_ = self._open_step()
        x, mask, delta = x[None], mask[None], delta[None]
        s = self._statics_f
        logits = np.empty(len(e.nets), np.float32)
        for k, net in enumerate(e.nets):
            hs, _, _ = net.run(x, mask, delta, self._static_in[k], self._h[k], self._c[k])
            h = hs[0]
            pooled = None
            if e.attention:
                mx, den, num = self._att[k]
                score = float(net.scores(hs)[0])
                new_max = max(mx, score)
                w, scale = math.exp(score - new_max), math.exp(mx - new_max)
                pooled = ((num * scale + w * h) / (den * scale + w)).astype(np.float32)
            logits[k] = net.logit(h, s, pooled)
        z = logits.mean(dtype=np.float32, keepdims=True)  # the ensemble mean, as training.predict_logits
        self._logit = float(z[0])
        self._risk = float(self.model.risk(z)[0])

def _columns(rows):
    """``rows`` -> (time float64, variable list, value float64) arrays, or None when there are no rows."""
    if rows is None:
        return None
    if not isinstance(rows, pl.DataFrame) and not _is_pandas(rows):
        rows = pl.DataFrame(rows)
    if len(rows) == 0:
        return None
    missing = [c for c in _COLUMNS if c not in rows.columns]
    if missing:
        from .sources import DataError

        raise DataError(f"stream rows lack column(s) {missing}; expected {list(_COLUMNS)} (others are ignored), "
                        f"got {list(rows.columns)}")
    if _is_pandas(rows):
        time, value = rows["time"].to_numpy(), rows["value"].to_numpy()
        names = rows["variable"].tolist()
        time = time.astype(np.float64) if time.dtype.kind in "fiu" else _parse_text(time, "time")
        value = value.astype(np.float64) if value.dtype.kind in "fiu" else _parse_text(value, "value")
        return time, names, value
    out = []
    for col in ("time", "value"):
        s = rows[col]
        out.append(s.cast(pl.Float64).to_numpy() if s.dtype.is_numeric() else _parse_text(s.to_list(), col))
    return out[0], rows["variable"].cast(pl.String).to_list(), out[1]


def _parse_text(values, column: str) -> np.ndarray:
    """Text (or mixed) times / values parsed with exactly :func:`clinical_lstm.validate.validate`'s rules."""
    from .validate import _parse_time

    texts = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]
    s = pl.Series(column, texts, dtype=pl.String)
    expr = _parse_time(pl.col(column)) if column == "time" else pl.col(column).str.strip_chars().cast(
        pl.Float64, strict=False)
    return pl.DataFrame([s]).select(expr.alias(column))[column].fill_null(np.nan).to_numpy().astype(np.float64)


def _is_pandas(obj) -> bool:
    return type(obj).__module__.startswith("pandas") and hasattr(obj, "iloc")


def _nan_to_none(a) -> list:
    return [None if math.isnan(x) else float(x) for x in np.asarray(a, dtype=np.float64)]


def _none_to_nan(values, n: int) -> np.ndarray:
    out = np.asarray([np.nan if v is None else v for v in values], dtype=np.float32)
    if out.shape != (n,):
        raise ValueError(f"stream state has {out.shape[0]} entries where the model has {n}")
    return out
