"""Per-stay summaries of the time series: the summary members' features.

**The summaries** come from the imputation scan's running statistics (:class:`~clinical_lstm.features.impute.Carry`),
so batch scoring, the stream (after every update), SHAP (a variable left out is "never observed") and the
export all compute them with :func:`summarize`. Per series variable, in standardized units:

==================  ============================================================================
``<v>:first``       the first observed value          ``<v>:max``    the largest value
``<v>:last``        the latest value                  ``<v>:mean``   the mean of the observed bins
``<v>:min``         the smallest value                ``<v>:count``  observed bins
``<v>:hours``       hours since the last observation (since admission while never observed)
==================  ============================================================================

then the static features of the transformer, then ``hour``: the hours since admission at which the summary is
taken (the end of the bin it follows). NaN marks a statistic of a variable never observed. ``hour`` is the
*context* of a risk, not a measurement: it is no SHAP player (a stay and its "nothing measured" reference share
it), and it lets the members and the stacking tell a 6-hour summary from a 48-hour one.

The models of them (the summary members and the stacking) are in :mod:`clinical_lstm.model.head`.
"""

from __future__ import annotations

import numpy as np

SERIES_STATS = ("first", "last", "min", "max", "mean", "count", "hours")
HOUR = "hour"  # the last summary column: hours since admission at which the summary is taken


def feature_names(series: list[str], static_features: list[str]) -> list[str]:
    return [f"{v}:{s}" for v in series for s in SERIES_STATS] + list(static_features) + [HOUR]


def summarize(carry, hours: np.ndarray, static_features: np.ndarray, now) -> np.ndarray:
    """The summary features: ``(..., V)`` running statistics (a :class:`~clinical_lstm.features.impute.Carry`) and hours
    since each variable's last observation, plus ``(N, F_s)`` static features, plus ``now`` (the hour since
    admission the summary is taken at: a number, or an array broadcastable to the leading dimensions)
    -> ``(..., 7V + F_s + 1)`` float32.

    Leading dimensions are ``(N,)`` for a stay's summary or ``(N, T)`` for one after every bin.
    """
    stats = (carry.first, carry.value, carry.low, carry.high, None, carry.count, hours)  # None: the mean
    lead, V, F_s = hours.shape[:-1], hours.shape[-1], static_features.shape[-1]
    k = len(stats)
    out = np.empty((*lead, k * V + F_s + 1), np.float32)  # written in place: no stacked or broadcast copies
    for j, stat in enumerate(stats):  # (..., V * 7): variable-major
        if stat is None:  # the mean of the observed bins; NaN before the first
            out[..., j:k * V:k] = np.nan
            np.divide(carry.total, carry.count, out=out[..., j:k * V:k], where=carry.count > 0)
        else:
            out[..., j:k * V:k] = stat
    out[..., k * V:-1] = static_features.reshape(static_features.shape[0], *([1] * (len(lead) - 1)), F_s)
    out[..., -1] = now
    return out


def player_columns(n_series: int, static_players: list[list[int]]) -> list[list[int]]:
    """The summary columns of each SHAP player: a series variable's 7 statistics, then each static player's
    feature columns (shifted past the series block)."""
    k = len(SERIES_STATS)
    return [list(range(v * k, (v + 1) * k)) for v in range(n_series)] + [
        [n_series * k + c for c in cols] for cols in static_players]
