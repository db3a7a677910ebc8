"""Streaming risk for one stay: feed new observations as they arrive, get the current calibrated risk.

::

    m = load_model("model/")            # a bundle directory or an MLflow URI
    s = m.stream()                      # one stream per stay
    s.update(rows)                      # DataFrame: time, variable, value (+ stay_id, checked) -> risk
    state = s.state()                   # JSON-able; RiskModel.stream(state) resumes the stay

The stream holds **state only**; every rule and formula is the batch path's own function:

=============================  ===========================================================================
step                           function (shared with ``predict``, batch scoring and SHAP)
=============================  ===========================================================================
time resolution (the second)   :func:`clinical_lstm.data.times.snap_seconds`
row rules                      :func:`clinical_lstm.data.validate.row_rules`
same-time rows, duplicates     :func:`clinical_lstm.data.validate.order_rows`
bin of a row                   :func:`clinical_lstm.data.grid.bin_index`
in-bin aggregation, statics    :func:`clinical_lstm.data.grid.aggregate_cells` (a bin where no variable has two
                               rows: each row is its cell, checked against it in the fast tests)
scaling, fill, elapsed hours   :meth:`clinical_lstm.features.impute.GridTransformer.steps` (carried :class:`Carry`)
static features                :meth:`clinical_lstm.features.impute.GridTransformer.static_features`
the networks                   :class:`clinical_lstm.model.network.StepKernel`, generated from the ``MaskedLSTM``
                               weights and checked against its ``forward`` in the fast tests
summaries and their members     :func:`clinical_lstm.features.summaries.summarize` of the carried state, and the model's
                               own :class:`~clinical_lstm.features.summaries.SummaryHead` (its numpy fast path for one
                               stay, checked against its torch ``forward`` in the fast tests)
calibration                    :meth:`clinical_lstm.serve.bundle.RiskModel.risk`
quality flags                  :func:`clinical_lstm.data.validate.flag_stays` (of counts the state carries)
=============================  ===========================================================================

State: the usable rows of the *open* bin (the bin of the latest series observation), the imputation
:class:`~clinical_lstm.features.impute.Carry` and the networks' state after the closed bins, and the statics (fixed
when bin 0 closes). A bin closes when a series observation lands in a later bin: its rows are aggregated,
imputed and run through the networks once (with the empty bins before the new one); when it closes with the rows
the last update stepped (the usual hourly update), that step is committed as it is (bit for bit what running it
again gives). The risk is one more, uncommitted step on the open bin; since ``predict``'s stay length is "up to the
last bin with a series observation", that is exactly ``predict``'s last step, so after all of a stay's rows (in any chunking) the
stream's risk is ``predict``'s.

Contract: one stream is one stay: rows with a ``stay_id`` column must all carry the stay's id (the first
id fed is kept in the state); rows of another stay raise ``ValueError`` naming both ids and change nothing.
Usable rows arrive in non-decreasing ``time`` (a usable row earlier than one already fed raises
``ValueError`` naming both times and changes nothing). A row that breaks a row rule (out of the window,
unparseable, out of range, ...) is counted in :attr:`StayStream.dropped` and ignored, as in batch, and does
not move the stream's clock. Times are snapped to the second first, as in batch: a row a fraction of a second
before the latest one, in the same second, is no step back. Until the stay has a usable series observation its
risk is ``None`` (``predict`` rejects such a stay with ``no_time_series``).

A state carries the SHA-256 of its content (``digest``); a state without one, or whose content does not match
it, is refused (:class:`~clinical_lstm.data.sources.DataError`): an edited clock or carry would give a silently
wrong risk.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from ..data.grid import aggregate_cells, bin_index
from ..data.quality import ROW_RULES
from ..data.sources import DataError
from ..data.times import snap_seconds
from ..data.validate import VALUE_RULES, flag_stays, order_rows, row_rules, time_key
from ..features.impute import Carry
from ..features.summaries import summarize
from ..files import atomic_path, write_text
from .stream_engine import engine
from .stream_rows import _all_equal, _columns, _is_pandas, _listed, _one_stay, _state_digest, _unlisted

STATE_FORMAT = 3  # 3: times snapped to the second; counts for the quality flags
STATE_KEY = "clinical_lstm.stream"  # the safetensors metadata key of a saved state (a format, kept when modules move)


class _Ahead(NamedTuple):
    """The open bin's step as the last refresh ran it: the bin, its row count, and what committing it gives."""

    bin: int
    rows: int
    carry: Carry  # the imputation state after the bin
    net: dict  # the networks' state after the bin
    statics: np.ndarray | None  # the raw statics of _open_rows
    dups: np.ndarray  # the bin's exact duplicates per catalogue code


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
        """The current calibrated risk; None until the stay has a usable series observation."""
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
        """The time of the latest usable row (hours since admission), None before the first."""
        return self._last_time

    @property
    def n_steps(self) -> int:
        """Grid steps the risk covers: closed bins plus the open one (``predict``'s stay length)."""
        return self._open + 1 if self._has_series else 0

    @property
    def stay_id(self) -> int | str | None:
        """The stay's id, from the first rows that had a ``stay_id`` column; None before."""
        return self._stay_id

    @property
    def dropped(self) -> dict[str, int]:
        """Rows dropped so far, by validation rule (as :class:`~clinical_lstm.data.validate.QualityReport`)."""
        out = Counter(self._dropped)
        out["duplicate_row"] += int(self._dups.sum() + self._open_rows()[3].sum())
        return {k: v for k, v in sorted(out.items()) if v}

    @property
    def quality_flags(self) -> str | None:
        """``predict``'s ``quality_flags`` for the rows fed so far (``;``-joined, ``""`` when none; see
        :data:`~clinical_lstm.data.validate.QUALITY_FLAGS`), by :func:`~clinical_lstm.data.validate.flag_stays`; None
        like :attr:`risk`."""
        if not self._has_series:
            return None
        e, cat = self._e, self._e.tr.catalogue
        _, _, statics, open_dups = self._open_rows()
        kept = self._usable - self._dups - open_dups  # (n_codes,) clean rows per variable, as validate keeps them
        stats = pl.DataFrame(
            {"stay_id": [0], "n_observations": [int(kept.sum())], "n_series": [int(kept[e.is_series].sum())],
             "last_hour": [self._last_series], "has_static": [bool(np.isfinite(statics).any())],
             "n_bad": [sum(self._dropped[r] for r in VALUE_RULES)],
             "has_unknown": [self._dropped["unknown_variable"] > 0]},
            schema_overrides={"last_hour": pl.Float64})
        gone = [(0, cat.names[c], ROW_RULES[r - 1], n) for (c, r), n in self._removed.items() if not self._usable[c]]
        removed = pl.DataFrame(gone, schema=["stay_id", "variable", "rule", "rows"], orient="row") if gone else None
        return flag_stays(stats, removed, cat, e.window)["quality_flags"][0]

    def update(self, rows=None) -> float | None:
        """Feed new observations and return the current calibrated risk.

        ``rows``: a pandas or polars DataFrame (or anything ``polars.DataFrame`` accepts) with columns
        ``time`` (hours since admission, ``HH:MM``, or a timedelta), ``variable``, ``value``, and optionally
        ``stay_id``, which must be this stream's stay in every row; other columns are ignored. ``None`` or no
        rows returns the current risk. Usable rows must not go back in time.
        """
        cols = _columns(rows)
        if cols is None:
            return self._risk
        e = self._e
        time, code, value, stay = snap_seconds(cols[0]), e.code_of(cols[1]), cols[2], self._stay_of(cols[3])
        if stay is not None and self._stay_id is not None and stay != self._stay_id:
            raise ValueError(f"this stream scores stay {self._stay_id!r}; rows of stay {stay!r} belong to "
                             f"another stream (RiskModel.stream() per stay); nothing of this update was "
                             f"applied")
        rule = row_rules(time, code, value, e.rules)
        bad = bool(rule.any())  # usually no row breaks a rule: then there is nothing to count or leave out
        ok = rule == 0 if bad else slice(None)
        self._check_order(time[ok])
        if stay is not None:
            self._stay_id = stay
        if bad:
            self._dropped.update(ROW_RULES[r - 1] for r in rule[~ok])
            gone = e.removes[rule] & (code >= 0)  # catalogue rows a value rule removed: the flags' counts
            self._removed.update(zip(code[gone].tolist(), rule[gone].tolist(), strict=True))
            time, code, value = time[ok], code[ok], value[ok]
        if len(time):
            self._usable += np.bincount(code, minlength=e.n_codes)
            self._ingest(time, code, value)
            self._refresh()
        return self._risk

    def state(self) -> dict:
        """The whole stream state as a JSON-able dict (strict JSON: no NaN; float32 values round-trip), with the
        SHA-256 of its content (``digest``): a state edited or damaged in storage is refused on resume."""
        net = {k: _listed(v) for k, v in self._net.items()}
        st = {
            "format": STATE_FORMAT,
            "model": self._e.digest,
            "stay_id": self._stay_id,
            "last_time": self._last_time,
            "open": self._open,
            "has_series": self._has_series,
            "rows": [self._code.tolist(), self._time.tolist(), self._value.tolist()],
            "statics": None if self._statics is None else _listed(self._statics),
            "carry": [_listed(f[0]) for f in self._carry.fields()],
            "networks": net,
            "dropped": dict(sorted(self._dropped.items())),
            "usable": self._usable.tolist(),
            "duplicates": self._dups.tolist(),
            "last_series": self._last_series,
            "removed": [[c, ROW_RULES[r - 1], n] for (c, r), n in sorted(self._removed.items())],
        }
        return {**st, "digest": _state_digest(st)}

    def to_json(self) -> str:
        return json.dumps(self.state(), separators=(",", ":"), allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`state` atomically, as JSON (``.json``) or as safetensors (``.safetensors``: the arrays as
        tensors, the rest as JSON metadata)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            return write_text(path, self.to_json())
        from safetensors.numpy import save_file

        st = self.state()
        tensors = {f"net.{k}": np.asarray(_unlisted(v), np.float64) for k, v in st.pop("networks").items()}
        with atomic_path(path) as tmp:  # the metadata key is part of the file format, not a module path
            save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(st, allow_nan=False)})
        return path

    @classmethod
    def load(cls, model, path: str | Path) -> StayStream:
        """Resume from a file written by :meth:`save`."""
        path = Path(path)
        if path.suffix != ".safetensors":
            return cls(model, path)  # read by _restore, which names the file in its errors
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            st = json.loads(f.metadata()[STATE_KEY])
            st["networks"] = {k[len("net."):]: _listed(f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118
        return cls(model, st)

    def __repr__(self) -> str:
        risk = "None" if self._risk is None else f"{self._risk:.4f}"
        return f"StayStream(hours={self._last_time}, steps={self.n_steps}, risk={risk})"

    # -- internals ------------------------------------------------------------------------------------
    def _reset(self):
        e = self._e
        self._stay_id: int | str | None = None
        self._stay_seen = None  # (raw stay_id key, its id) of the last update: not state, a cache
        self._last_time: float | None = None
        self._open = 0  # the open bin; bins before it have been run through the networks
        self._has_series = False
        self._code, self._time, self._value = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)  # its rows
        self._statics: np.ndarray | None = None  # raw static values, fixed when bin 0 closes
        self._features: np.ndarray | None = None  # their static features, once fixed
        self._closed: list = []  # (values, obs_time) of bins closed in this update, run by _refresh
        self._ahead: _Ahead | None = None  # the open bin's step of the last _refresh: not state, a cache
        self._carry = Carry.empty(1, e.V)
        self._net = e.kernel.initial_state()
        self._dropped: Counter = Counter()  # rows by rule broken (duplicates are in _dups)
        self._usable = np.zeros(e.n_codes, np.int64)  # usable rows fed, per catalogue code
        self._dups = np.zeros(e.n_codes, np.int64)  # exact duplicates in the closed bins, per code
        self._last_series: float | None = None  # time of the latest usable series row
        self._removed: Counter = Counter()  # (code, rule number): catalogue rows removed by a REMOVAL_RULES rule
        self._risk: float | None = None
        self._logit: float | None = None

    def _restore(self, state):
        where = "the stream state"
        if isinstance(state, Path) or (isinstance(state, str) and not state.lstrip().startswith("{")):
            where = f"stream state {state}"
            state = Path(state).read_text()
        if isinstance(state, str):
            try:
                state = json.loads(state)
            except ValueError:
                raise ValueError(f"{where} is not JSON (truncated or damaged)") from None
        if not isinstance(state, dict):
            raise ValueError(f"{where} is a {type(state).__name__}, not what StayStream.state() returns")
        given = state.get("digest")
        if not isinstance(given, str) or not given:
            raise DataError(f"{where} has no valid digest: it is unsigned or edited, and an edited state gives a "
                            f"silently wrong risk; resume from the file StayStream.save wrote (unedited), or start a "
                            f"new stream and feed the stay's rows again")
        if given != _state_digest({k: v for k, v in state.items() if k != "digest"}):
            raise DataError(f"{where} does not match its digest: edited or damaged since it was saved; resume from "
                            f"an intact copy, or start a new stream and feed the stay's rows again")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"stream state format {state.get('format')!r} is not {STATE_FORMAT} (another version of "
                             f"clinical-lstm wrote it); start a new stream and feed the stay's rows again")
        if state.get("model") != self._e.digest:
            raise ValueError("this stream state was saved from a different model (catalogue, transformer, "
                             "weights or calibrator differ); resume it with the model that produced it")
        try:
            self._restore_fields(state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ValueError(f"{where} is not one StayStream.state() wrote ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None

    def _restore_fields(self, state):
        e = self._e
        self._stay_id = state.get("stay_id")
        self._last_time = None if state["last_time"] is None else float(state["last_time"])
        self._open, self._has_series = int(state["open"]), bool(state["has_series"])
        code, time, value = state["rows"]
        self._code, self._time, self._value = (np.asarray(code, np.int64), np.asarray(time, np.float64),
                                               np.asarray(value, np.float64))
        self._statics = None if state["statics"] is None else _unlisted(state["statics"], np.float32)
        self._features, self._closed, self._ahead = None, [], None
        self._carry = Carry(*(_unlisted(a, np.float32).reshape(1, e.V) for a in state["carry"]))  # Carry.fields()
        init = e.kernel.initial_state()
        self._net = {k: _unlisted(state["networks"][k], v.dtype).reshape(v.shape) for k, v in init.items()}
        if "att_max" in self._net:  # -inf (no step yet) was written as null
            self._net["att_max"] = np.nan_to_num(self._net["att_max"], nan=-np.inf)
        self._dropped = Counter({str(k): int(v) for k, v in state["dropped"].items()})
        self._usable = np.asarray(state["usable"], np.int64).reshape(e.n_codes)
        self._dups = np.asarray(state["duplicates"], np.int64).reshape(e.n_codes)
        self._last_series = None if state["last_series"] is None else float(state["last_series"])
        self._removed = Counter({(int(c), 1 + ROW_RULES.index(r)): int(n) for c, r, n in state["removed"]})
        self._refresh()

    def _stay_of(self, ids) -> int | str | None:
        """The one stay of an update's ``stay_id`` column (None: no such column). The last single value as
        given is remembered, so that the next update of the same stay is not read again."""
        if ids is None:
            return None
        if isinstance(ids, np.ndarray):  # a pandas column's numbers (stream_rows._pandas_numbers)
            first = ids[0]
            same = _all_equal(ids, first)
        elif _is_pandas(ids):
            first = ids.iloc[0]
            same = _all_equal(ids.to_numpy(), first)
        else:
            first = ids[0]
            same = ids.n_unique() == 1
        key = (type(first), first)
        if same and self._stay_seen is not None and self._stay_seen[0] == key:
            return self._stay_seen[1]
        stay = _one_stay(ids)
        self._stay_seen = (key, stay) if same else None
        return stay

    def _check_order(self, times: np.ndarray):
        last = -np.inf if self._last_time is None else self._last_time
        if not len(times) or (times[0] >= last and bool((times[1:] >= times[:-1]).all())):
            return
        prev = np.concatenate([[-np.inf if self._last_time is None else self._last_time], times[:-1]])
        bad = np.flatnonzero(times < prev)
        if len(bad):
            i = bad[0]
            raise ValueError(f"stream rows must arrive in non-decreasing time: a row at time {times[i]:g} h "
                             f"comes after time {prev[i]:g} h; nothing of this update was applied")

    def _ingest(self, time, code, value):
        """Append usable rows (in time order) to the open bin, closing bins as later series rows arrive."""
        e = self._e
        self._last_time = float(time[-1])
        b = bin_index(time, e.res, e.T)
        series = e.is_series[code]
        if series.any():
            self._last_series = float(time[series][-1])
        if b[0] == b[-1]:  # one bin (the usual update); the bins of rows in time order never decrease
            starts = [0]
        else:  # runs of rows in one bin, in time order
            starts = np.flatnonzero(np.concatenate([[True], b[1:] != b[:-1]])).tolist()
        for start, end in zip(starts, [*starts[1:], len(b)], strict=True):
            if b[start] > self._open:  # only series rows reach a later bin (statics are time-0 rows)
                self._close(int(b[start]))
            if len(self._code):
                self._code = np.concatenate([self._code, code[start:end]])
                self._time = np.concatenate([self._time, time[start:end]])
                self._value = np.concatenate([self._value, value[start:end]])
            else:  # a new bin: this update's own arrays (built by update, never the caller's)
                self._code, self._time, self._value = code[start:end], time[start:end], value[start:end]
            self._has_series |= bool(series[start:end].any())

    def _open_rows(self):
        """The open bin aggregated: values and last-observation hours (1, 1, V), raw statics (S,), duplicates
        per catalogue code (n_codes,)."""
        e = self._e
        code = self._code
        if self._statics is not None and len(code) and len(set(code.tolist())) == len(code):
            # Past bin 0, a bin in which no variable has two rows (most hours): no duplicate, no same-time
            # conflict, and every aggregation of a single value is that value, so each row is its cell (what
            # _aggregate_open gives, bit for bit: tests/test_stream.py checks it)
            values, obs_time = e.no_bin.copy(), e.no_bin.copy()
            col = e.series_of[code]
            sel = col >= 0
            values[0, 0, col[sel]], obs_time[0, 0, col[sel]] = self._value[sel], self._time[sel]
            return values, obs_time, self._statics, np.zeros(e.n_codes, np.int64)
        return self._aggregate_open()

    def _aggregate_open(self):
        """:meth:`_open_rows` by the batch path's rules: same-time rows and duplicates by ``order_rows``, each cell
        by ``aggregate_cells``."""
        e = self._e
        values = np.full((1, 1, e.V), np.nan, np.float32)
        obs_time = np.full((1, 1, e.V), np.nan, np.float32)
        statics = self._statics
        if not len(self._code):
            return values, obs_time, statics, np.zeros(e.n_codes, np.int64)
        key = time_key(np.zeros(len(self._code), np.int64), self._code, e.n_codes, self._time, e.window)
        order, keep, _ = order_rows(key, self._value)
        code, t, v = (a[order][keep] for a in (self._code, self._time, self._value))
        col = e.series_of[code]
        if (col >= 0).any():
            sel = col >= 0
            cells, agg, last_t, _ = aggregate_cells(col[sel], t[sel], v[sel], lambda c: e.how_series[c])
            values[0, 0, cells], obs_time[0, 0, cells] = agg, last_t
        if statics is None:  # bin 0 is open: the statics are its time-0 rows, as to_grid reads them
            statics = np.full(e.S, np.nan, np.float32)
            scol = np.where(t == 0, e.static_of[code], -1)
            if (scol >= 0).any():
                sel = scol >= 0
                cells, agg, _, _ = aggregate_cells(scol[sel], t[sel], v[sel], lambda c: e.how_static[c])
                statics[cells] = agg
        return values, obs_time, statics, np.bincount(self._code[order][~keep], minlength=e.n_codes)

    def _static_features(self, statics):
        """The static features (cached once the statics are fixed, i.e. once bin 0 has closed)."""
        if statics is self._statics and self._features is not None:
            return self._features
        features = self._e.tr.static_features(statics[None])[0]
        if statics is self._statics:
            self._features = features
        return features

    def _close(self, upto: int):
        """Close the open bin and the empty bins before ``upto``.

        When the open bin still holds the rows the last :meth:`_refresh` stepped (the usual hourly update: the
        bin that closes is the one the previous update scored), that step is committed as it is (``_ahead``):
        the same numbers as running it again, since a bin's step depends only on its rows and the state before
        it, and every step of the imputation and of the kernel has the shape of one step however many run in a
        call. Otherwise the open bin waits in ``_closed``; so do the empty bins, for :meth:`_refresh`."""
        e = self._e
        ahead = self._ahead
        if ahead is not None and ahead.bin == self._open and ahead.rows == len(self._code):
            assert not self._closed  # the stepped bin was open at the last refresh: the first to close since
            statics, dups = ahead.statics, ahead.dups
            self._carry, self._net = ahead.carry, ahead.net
        else:
            values, obs_time, statics, dups = self._open_rows()
            self._closed.append((values[0], obs_time[0]))
        self._ahead = None
        if upto > self._open + 1:
            empty = np.full((upto - self._open - 1, e.V), np.nan, np.float32)
            self._closed.append((empty, empty))
        self._statics = statics
        self._dups += dups
        self._open = upto
        self._code, self._time, self._value = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)

    def _refresh(self):
        """Commit the closed bins and recompute the risk with one more, uncommitted step on the open bin (kept in
        ``_ahead`` for :meth:`_close`)."""
        e = self._e
        if not self._has_series:
            self._risk = self._logit = None
            return
        values, obs_time, statics, dups = self._open_rows()
        k = sum(len(v) for v, _ in self._closed)  # closed bins not yet run
        if k:
            values = np.concatenate([*(v for v, _ in self._closed), values[0]])[None]  # (1, k + 1, V)
            obs_time = np.concatenate([*(t for _, t in self._closed), obs_time[0]])[None]
        x, mask, delta, carry, track = e.tr.steps(values, obs_time, e.bin_end[self._open - k:self._open + 1],
                                                  self._carry, per_step=True)
        x, mask, delta = x[0], mask[0], delta[0]  # (k + 1, V)
        features = self._static_features(statics)
        if k:  # the closed bins, committed; then the open bin from there, its state kept for _close
            self._net, _ = e.kernel.run(x[:k], mask[:k], delta[:k], features, self._net)
            self._carry, self._closed = track.at(k - 1), []
        net, logits = e.kernel.run(x[k:], mask[k:], delta[k:], features, self._net)
        self._ahead = _Ahead(self._open, len(self._code), carry, net, statics, dups)
        z = np.float32(logits.mean())  # the ensemble mean, as RiskModel.network_logits
        if self.model.head is not None:  # the summary members on the summaries so far, in the model's own head
            now = e.bin_end[self._open]  # the open bin's end: the hour predict's last step is taken at
            z = np.float32(self.model.head.numpy_logit(z, summarize(carry, delta[None, -1], features[None], now)[0]))
        self._logit = float(z)
        self._risk = float(self.model.risk(np.array([z]))[0])


