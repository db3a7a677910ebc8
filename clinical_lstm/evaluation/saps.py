"""SAPS-I, the clinical reference score of the report: scores aligned to stays, and a probability recalibrated on the
training stays only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from ..data.ids import checked_ids, stay_id_key


# -- stay ids ----------------------------------------------------------------------------------------
def _join_ids(stay_ids, dtype: pl.DataType) -> tuple[pl.Series, pl.Expr]:
    """``stay_ids`` (shape (n,)) and a table's ``stay_id`` column (of type ``dtype``) as keys of one kind.

    Each is keyed as :mod:`~clinical_lstm.data.sources` keys ids (integers as Int64, text as given, see
    :func:`~clinical_lstm.data.sources.checked_ids`); when one is integer and the other text, both become text, as
    in :func:`~clinical_lstm.data.sources.same_id_kind`. A text id (an encounter id) is never cast to an integer.
    """
    ids = checked_ids(pl.DataFrame({"stay_id": np.asarray(stay_ids).reshape(-1)}), "stay_ids")["stay_id"]
    key = stay_id_key(dtype).alias("stay_id")
    if ids.dtype != (pl.Int64 if dtype.is_numeric() else pl.String):
        ids, key = ids.cast(pl.String), key.cast(pl.String)
    return ids, key


# -- SAPS-I ------------------------------------------------------------------------------------------
def saps_scores(outcomes: pl.DataFrame | None, stay_ids: Sequence[int | str] | np.ndarray) -> np.ndarray | None:
    """SAPS-I scores aligned to ``stay_ids``.

    Parameters
    ----------
    outcomes : polars.DataFrame or None
        Has ``stay_id`` and (optionally) ``saps_i``; null or negative (PhysioNet's ``-1``) means
        missing. A stay listed twice keeps its first row. Integer or text ids; either kind joins ``stay_ids``.
    stay_ids : sequence of int or str, shape (n_stays,)
        Output order.

    Returns
    -------
    numpy.ndarray, shape (n_stays,), float64, or None
        Score per stay, NaN when missing or when the stay is not in ``outcomes``. None when there is
        no ``saps_i`` column or no stay in ``stay_ids`` has a score.
    """
    if outcomes is None or "saps_i" not in outcomes.columns or "stay_id" not in outcomes.columns:
        return None
    ids, key = _join_ids(stay_ids, outcomes.schema["stay_id"])
    score = pl.col("saps_i").cast(pl.Float64, strict=False)
    table = (outcomes.select(key, pl.when(score >= 0).then(score).otherwise(None).alias("saps_i"))
             .unique("stay_id", keep="first", maintain_order=True))
    aligned = ids.to_frame().join(table, on="stay_id", how="left", maintain_order="left")
    out = aligned["saps_i"].fill_null(np.nan).to_numpy().astype(np.float64)
    if out.size == 0 or np.isnan(out).all():
        return None
    return out


def saps_probability(saps_train: np.ndarray, y_train: np.ndarray, saps_test: np.ndarray) -> np.ndarray:
    """Turn SAPS-I scores into mortality probabilities with a one-feature logistic regression.

    SAPS-I is an integer severity score, not a probability, so it is mapped to one by a logistic
    regression fitted on the *training* stays that have a score — training labels only, so the
    test evaluation stays honest. Stays without a score get the training prevalence.

    Parameters
    ----------
    saps_train : numpy.ndarray, shape (n_train,)
        Training scores, NaN = missing.
    y_train : numpy.ndarray, shape (n_train,)
        Training 0/1 labels.
    saps_test : numpy.ndarray, shape (n_test,)
        Scores to convert, NaN = missing.

    Returns
    -------
    numpy.ndarray, shape (n_test,)
        Predicted probability of death.
    """
    saps_train = np.asarray(saps_train, dtype=np.float64).reshape(-1)
    saps_test = np.asarray(saps_test, dtype=np.float64).reshape(-1)
    y_train = np.asarray(y_train).reshape(-1).astype(np.int64)
    if saps_train.shape != y_train.shape:
        raise ValueError(f"saps_train {saps_train.shape} and y_train {y_train.shape} must align")
    if y_train.size == 0:
        raise ValueError("saps_probability needs at least one training stay")
    prevalence = float(y_train.mean())
    out = np.full(saps_test.shape, prevalence)
    seen = ~np.isnan(saps_train)
    if np.unique(y_train[seen]).size < 2:
        return out  # no score, or one class only among scored stays: nothing to fit
    # Standardise so the negligible L2 penalty (C=1e4) is scale-free: in effect a plain maximum-likelihood
    # fit of two parameters, which needs no regularisation.
    mu, sd = saps_train[seen].mean(), saps_train[seen].std() or 1.0
    model = LogisticRegression(C=1e4, max_iter=1000)
    model.fit(((saps_train[seen] - mu) / sd)[:, None], y_train[seen])
    has = ~np.isnan(saps_test)
    if has.any():
        out[has] = model.predict_proba(((saps_test[has] - mu) / sd)[:, None])[:, 1]
    return out
