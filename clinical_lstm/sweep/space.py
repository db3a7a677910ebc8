"""What a sweep searches: the ``[sweep.grid]`` lists and ``[sweep.space]`` ranges of a ``[sweep]`` section,
checked against the base config before any data is read (:class:`SearchSpace`), and the number of trials they
give (``_n_trials``). Used by :mod:`clinical_lstm.sweep.run`, which re-exports :class:`SearchSpace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import Config

METHODS = ("tpe", "random", "grid")
RANGE_KEYS = ("low", "high", "step", "log")


@dataclass(frozen=True)
class SearchSpace:
    """``grid``: name -> list of choices; ``ranges``: name -> ``{"type", "low", "high", "log"[, "step"]}``."""

    grid: dict
    ranges: dict

    @classmethod
    def parse(cls, base: Config, grid: dict | None = None, space: dict | None = None, method: str = "tpe",
              source: str = "sweep") -> SearchSpace:
        """Check every name and value against ``base`` (one-line ``ValueError``\\ s, before any training)."""
        if method not in METHODS:
            raise ValueError(f"{source}: [sweep] method must be one of {METHODS}; got {method!r}")
        grid, space = grid or {}, space or {}
        for table, value in (("[sweep.grid]", grid), ("[sweep.space]", space)):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: {table} must be a table of dotted parameter names; got {value!r}")
        flat = base.flat()
        for table, names in (("[sweep.grid]", grid), ("[sweep.space]", space)):
            unknown = [n for n in names if n not in flat]
            if unknown:
                raise ValueError(f"{source}: unknown parameter {unknown[0]!r} in {table}; use dotted config keys "
                                 f"such as 'model.hidden_size' (see Config.flat())")
        both = sorted(set(grid) & set(space))
        if both:
            raise ValueError(f"{source}: {both[0]!r} is in both [sweep.grid] and [sweep.space]; give it once")
        if not grid and not space:
            raise ValueError(f"{source}: [sweep] varies nothing; add lists to [sweep.grid] or ranges to "
                             f"[sweep.space]")
        if method == "grid" and space:
            raise ValueError(f"{source}: method 'grid' takes lists only; the ranges in [sweep.space] "
                             f"({', '.join(space)}) need method 'tpe' or 'random'")
        return cls({n: _choices(base, n, v, source) for n, v in grid.items()},
                   {n: _range(base, n, flat[n], v, source) for n, v in space.items()})

    @property
    def grid_size(self) -> int | None:
        """Points of the grid; None when there are ranges."""
        return None if self.ranges else math.prod(len(v) for v in self.grid.values())

    def suggest(self, trial) -> dict:
        """The trial's overrides: a categorical choice per list, an integer or a float per range."""
        out = {name: trial.suggest_categorical(name, values) for name, values in self.grid.items()}
        for name, r in self.ranges.items():
            if r["type"] == "int":
                out[name] = trial.suggest_int(name, r["low"], r["high"], step=r.get("step", 1), log=r["log"])
            else:
                out[name] = trial.suggest_float(name, r["low"], r["high"], step=r.get("step"), log=r["log"])
        return out


def _choices(base: Config, name: str, values, source: str) -> list:
    where = f"{source}: [sweep.grid] {name!r}"
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where} must be a non-empty list of values; got {values!r}")
    for v in values:
        if not isinstance(v, (bool, int, float, str)):
            raise ValueError(f"{where} must list numbers, text or booleans; got {v!r}")
        base.replace({name: v}, source=where)
    if len({repr(v) for v in values}) < len(values):
        raise ValueError(f"{where} repeats a value: {values!r}")
    return list(values)


def _range(base: Config, name: str, default, spec, source: str) -> dict:
    where = f"{source}: [sweep.space] {name!r}"
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise ValueError(f"{where} is not a number (default {default!r}); list its values in [sweep.grid]")
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a range such as {{low = 1e-4, high = 3e-3, log = true}}; got {spec!r}")
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown or "low" not in spec or "high" not in spec:
        raise ValueError(f"{where} must have low and high, and may have step or log; got {spec!r}")
    kind = int if isinstance(default, int) else float
    for key in ("low", "high", "step"):
        v = spec.get(key, 1)
        ok = isinstance(v, int) if kind is int else isinstance(v, (int, float)) and math.isfinite(v)
        if isinstance(v, bool) or not ok:
            raise ValueError(f"{where}: {key} must be {'an integer' if kind is int else 'a number'}; got {v!r}")
    low, high, log = kind(spec["low"]), kind(spec["high"]), spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}: log must be true or false; got {log!r}")
    if not low < high:
        raise ValueError(f"{where}: low ({low:g}) must be below high ({high:g})")
    if log and low <= 0:
        raise ValueError(f"{where}: a log range needs low > 0; got {low:g}")
    if "step" in spec and (log or spec["step"] <= 0):
        raise ValueError(f"{where}: step must be positive and cannot be combined with log; got {spec!r}")
    for v in (low, high):
        base.replace({name: v}, source=where)
    out = {"type": kind.__name__, "low": low, "high": high, "log": log}
    if "step" in spec:
        out["step"] = kind(spec["step"])
    return out


def _n_trials(space: SearchSpace, method: str, n_trials, source: str = "sweep") -> int:
    size = space.grid_size
    if n_trials is None:
        if size is None:
            raise ValueError(f"{source}: [sweep] n_trials (or --n-trials) is needed: ranges have no natural number "
                             f"of trials")
        return size
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"{source}: n_trials must be a positive integer; got {n_trials!r}")
    if method == "grid" and n_trials > size:
        raise ValueError(f"{source}: n_trials {n_trials} is more than the {size} points of the grid")
    return n_trials
