"""Non-sequential baselines: per-stay summary statistics, two classical models, and SAPS-I.

The LSTM has to beat these to justify itself. They see the same cleaned long table and the same
train/test split, but throw away the timing: every series variable is reduced to six numbers per stay
(first, last, min, max, mean, count), plus the static descriptors.

* :func:`summary_features` turns the canonical long table into a ``(n_stays, n_features)`` matrix
  with one vectorised polars ``group_by`` (no Python loop over stays).
* :class:`SummaryBaselines` fits a regularised logistic regression and a histogram gradient-boosting
  classifier on that matrix.
* :func:`saps_scores` / :func:`saps_probability` give the clinical reference score, SAPS-I, as a
  probability recalibrated on the training stays only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import polars as pl
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .sources import checked_ids, stay_id_key

SERIES_STATS = ("first", "last", "min", "max", "mean", "count")
ICU_TYPES = (1, 2, 3, 4)
ICU_VARIABLE = "ICUType"
MODEL_NAMES = ("logistic regression", "gradient boosting")
MIN_SAMPLES_LEAF = 20  # the boosting's smallest leaf (scikit-learn's default), stated: the column guard relies on it


# -- stay ids ----------------------------------------------------------------------------------------
def _join_ids(stay_ids, dtype: pl.DataType) -> tuple[pl.Series, pl.Expr]:
    """``stay_ids`` (shape (n,)) and a table's ``stay_id`` column (of type ``dtype``) as keys of one kind.

    Each is keyed as :mod:`~clinical_lstm.sources` keys ids (integers as Int64, text as given, see
    :func:`~clinical_lstm.sources.checked_ids`); when one is integer and the other text, both become text, as
    in :func:`~clinical_lstm.sources.same_id_kind`. A text id (an encounter id) is never cast to an integer.
    """
    ids = checked_ids(pl.DataFrame({"stay_id": np.asarray(stay_ids).reshape(-1)}), "stay_ids")["stay_id"]
    key = stay_id_key(dtype).alias("stay_id")
    if ids.dtype != (pl.Int64 if dtype.is_numeric() else pl.String):
        ids, key = ids.cast(pl.String), key.cast(pl.String)
    return ids, key


# -- features ----------------------------------------------------------------------------------------
def feature_names(catalogue) -> list[str]:
    """Column names of :func:`summary_features` for ``catalogue``, in column order.

    ``<series>_<stat>`` for every series variable and stat in :data:`SERIES_STATS`, then
    ``static_<name>`` for every static variable, then ``icu_type_1`` .. ``icu_type_4`` when the
    catalogue has an ``ICUType`` static.
    """
    names = [f"{v}_{s}" for v in catalogue.series for s in SERIES_STATS]
    names += [f"static_{v}" for v in catalogue.statics]
    if ICU_VARIABLE in catalogue.statics:
        names += [f"icu_type_{k}" for k in ICU_TYPES]
    return names


def summary_features(long: pl.DataFrame, catalogue,
                     stay_ids: Sequence[int | str] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-stay summary statistics of the cleaned long table.

    Parameters
    ----------
    long : polars.DataFrame
        Canonical cleaned long table: ``stay_id`` Int64 or text, ``time`` Float64 (hours since admission),
        ``variable`` String, ``value`` Float64. Static descriptors are rows at ``time == 0``.
        Rows need not be sorted; variables not in the catalogue are ignored.
    catalogue : Catalogue
        Gives the series variables (``catalogue.series``) and statics (``catalogue.statics``).
    stay_ids : sequence of int or str, shape (n_stays,)
        Stays to describe, in output row order. A stay without rows gets count 0 and NaN elsewhere.

    Returns
    -------
    X : numpy.ndarray, shape (n_stays, n_features), float64
        For each series variable, in catalogue order: first and last value (by time; ties keep input
        order), min, max, mean, and the number of observations (0 and NaN stats when never observed).
        Then the time-0 value of each static variable (first such row; NaN when absent; a variable
        that is both series and static, e.g. Weight, appears in both blocks). Then a one-hot of
        ``ICUType`` (``icu_type_1`` .. ``icu_type_4``; all 0 when ICUType is missing — the NaN in
        ``static_ICUType`` still records that it is missing).
    names : list of str, length n_features
        Column names, see :func:`feature_names`.
    """
    series, statics = list(catalogue.series), list(catalogue.statics)
    names = feature_names(catalogue)
    ids, key = _join_ids(stay_ids, long.schema["stay_id"])
    n, n_stats = len(ids), len(SERIES_STATS)
    X = np.full((n, len(names)), np.nan)
    X[:, n_stats - 1:len(series) * n_stats:n_stats] = 0.0  # counts: never observed means 0, not unknown
    static_base = len(series) * n_stats

    # Small lookup frames: joining on them maps stays to output rows and variables to column slots,
    # and (inner join) drops stays/variables we were not asked about before the expensive group_by.
    rows = pl.DataFrame({"stay_id": ids, "_row": np.arange(n, dtype=np.int64)})
    known = list(dict.fromkeys(series + statics))
    slots = pl.DataFrame({
        "variable": known,
        "_s": [series.index(v) if v in series else -1 for v in known],
        "_t": [statics.index(v) if v in statics else -1 for v in known],
    }, schema={"variable": pl.String, "_s": pl.Int64, "_t": pl.Int64})

    if n and long.height:
        # Joins need not keep row order, so the input position _i breaks ties explicitly: among rows
        # at the same time "first"/"last" follow the input order, and the first time-0 row wins.
        by_time = pl.col("value").sort_by("time", "_i")
        at0 = pl.col("time") == 0.0
        agg = (
            long.lazy()
            .select(key, pl.col("time").cast(pl.Float64),
                    pl.col("variable").cast(pl.String), pl.col("value").cast(pl.Float64))
            .with_row_index("_i")
            .join(slots.lazy(), on="variable", how="inner")
            .join(rows.lazy(), on="stay_id", how="inner")
            .group_by("_row", "variable")
            .agg(
                pl.col("_s").first(), pl.col("_t").first(),
                by_time.first().alias("first"), by_time.last().alias("last"),
                pl.col("value").min().alias("min"), pl.col("value").max().alias("max"),
                pl.col("value").mean().alias("mean"), pl.len().cast(pl.Float64).alias("count"),
                pl.col("value").filter(at0).sort_by(pl.col("_i").filter(at0)).first().alias("time0"),
            )
            .collect()
        )
        r, s, t = (agg[c].to_numpy() for c in ("_row", "_s", "_t"))
        is_series = s >= 0
        for k, stat in enumerate(SERIES_STATS):
            X[r[is_series], s[is_series] * n_stats + k] = agg[stat].to_numpy()[is_series]
        is_static = t >= 0
        # time0 is null when the variable was seen but never at time 0 -> NaN, as wanted.
        time0 = agg["time0"].fill_null(np.nan).to_numpy()
        X[r[is_static], static_base + t[is_static]] = time0[is_static]

    if ICU_VARIABLE in statics:
        icu = X[:, static_base + statics.index(ICU_VARIABLE)]
        onehot_base = static_base + len(statics)
        for j, k in enumerate(ICU_TYPES):
            X[:, onehot_base + j] = (icu == k).astype(np.float64)  # NaN == k is False -> 0
    return X, names


# -- models ------------------------------------------------------------------------------------------
class SummaryBaselines:
    """Logistic regression and gradient boosting on :func:`summary_features` output.

    scikit-learn style: ``__init__`` only stores parameters, :meth:`fit` sets ``models_`` (a dict of
    fitted :class:`~sklearn.pipeline.Pipeline`, keyed by :data:`MODEL_NAMES`, each taking the full
    feature matrix) and ``n_features_in_``.

    Parameters
    ----------
    seed : int, default 0
        ``random_state`` of the gradient-boosting model (its internal early-stopping split and
        binning subsample). The logistic regression (lbfgs) is deterministic.
    C : float, default 0.1
        Inverse L2 strength of the logistic regression; 0.1 suits ~200 standardised, correlated
        features on a few thousand stays.
    n_threads : int or None, default 1
        OpenMP threads for gradient boosting (fit and predict); None = scikit-learn's default (all
        cores). One thread is the default because OpenMP's spinning threads degrade badly when the
        cores are shared (a concurrent LSTM run, a CI box): a 400-stay fit measured 0.06 s on one
        thread versus 13 s on two busy cores, while a full PhysioNet-sized fit (6,400 stays x 231
        features) takes about a second single-threaded.

    Notes
    -----
    Neither model uses ``class_weight="balanced"``: re-weighting the ~14 % positive class would
    inflate every predicted risk (good for nothing but ranking) and make the baselines' Brier score
    and calibration curves incomparable with the LSTM's calibrated scores. Without it the
    probabilities stay calibrated and AUROC/AUPRC are essentially unchanged.

    Gradient boosting is given only the columns observed in every training stay or in at least
    :data:`MIN_SAMPLES_LEAF` of them: a sparser column (a lab ordered for a handful of stays) could never
    be split on, so leaving it out changes nothing, while keeping it can crash scikit-learn's binning.
    """

    def __init__(self, seed: int = 0, C: float = 0.1, n_threads: int | None = 1):
        self.seed = seed
        self.C = C
        self.n_threads = n_threads

    def _threads(self) -> threadpool_limits | nullcontext:
        if self.n_threads is None:
            return nullcontext()
        return threadpool_limits(limits=self.n_threads, user_api="openmp")

    def _build(self, usable: np.ndarray) -> dict[str, Pipeline]:
        logistic = make_pipeline(
            # add_indicator: missingness itself is informative in ICU data (a lab not ordered).
            # keep_empty_features: a variable never seen in training gets a constant column rather
            # than being dropped, so the column layout does not depend on the training set.
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=2000),
        )
        boosting = make_pipeline(
            # Only the `usable` columns (see fit), so the pipeline still takes the full feature matrix.
            ColumnTransformer([("observed", "passthrough", np.flatnonzero(usable))], remainder="drop"),
            HistGradientBoostingClassifier(
                max_iter=300, learning_rate=0.05, early_stopping=True, validation_fraction=0.15,
                n_iter_no_change=20, min_samples_leaf=MIN_SAMPLES_LEAF,
                random_state=self.seed,  # NaN handled natively: no imputation
            ),
        )
        return {MODEL_NAMES[0]: logistic, MODEL_NAMES[1]: boosting}

    def fit(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> SummaryBaselines:
        """Fit both models.

        Parameters
        ----------
        X : numpy.ndarray, shape (n_stays, n_features)
            Summary features (NaN = missing).
        y : numpy.ndarray, shape (n_stays,)
            0/1 labels; both classes must be present.
        groups : numpy.ndarray, shape (n_stays,), optional
            The stay of each row when a stay gives several rows (landmark snapshots). The boosting's early
            stopping then holds out whole stays (:meth:`_boosting_rounds`): rows of one stay on both sides of
            its validation split would let it overfit unchecked (its out-of-fold risks came out 0.02 for a
            death rate of 0.14 on the bundled sample).

        Returns
        -------
        self
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).reshape(-1)
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise ValueError(f"X must be 2-D with one row per label; got X {X.shape} and y {y.shape}")
        classes = np.unique(y)
        if not np.array_equal(classes, [0, 1]):
            raise ValueError(f"y must contain both classes 0 and 1; got {classes.tolist()}")
        # Gradient boosting sees a column only when it is observed in every training stay or in at least
        # MIN_SAMPLES_LEAF of them. A sparser column can never be split on (a split leaves that many stays
        # on each side, one side holding observed values only), so leaving it out changes no tree; kept, it
        # can be all-NaN in the rows the boosting bins (its internal early-stopping split), where
        # scikit-learn crashes ("window shape cannot be larger than input array shape").
        n_observed = (~np.isnan(X)).sum(axis=0)
        if not n_observed.any():
            raise ValueError("every feature is missing (NaN) for every training stay; nothing to fit")
        usable = n_observed >= min(MIN_SAMPLES_LEAF, X.shape[0])
        if not usable.any():
            raise ValueError(f"no feature is observed in every training stay or in at least {MIN_SAMPLES_LEAF} "
                             f"of them ({X.shape[0]} stays; at most {n_observed.max()} observed): gradient "
                             f"boosting could split on none; fit on more stays")
        models = self._build(usable)
        with self._threads():
            if groups is not None:  # leaves of MIN_SAMPLES_LEAF stays, not rows: a leaf of 20 rows could be 2 stays
                hgb = models[MODEL_NAMES[1]].steps[-1][1]
                rows_per_stay = len(groups) / max(1, len(np.unique(groups)))
                hgb.set_params(min_samples_leaf=int(round(MIN_SAMPLES_LEAF * rows_per_stay)))
                hgb.set_params(early_stopping=False, max_iter=self._boosting_rounds(models[MODEL_NAMES[1]], X, y,
                                                                                      np.asarray(groups)))
            for model in models.values():
                model.fit(X, y.astype(np.int64))
        self.models_ = models
        self.n_features_in_ = X.shape[1]
        return self

    def _boosting_rounds(self, pipe: Pipeline, X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> int:
        """The boosting rounds by early stopping on whole stays: a copy grown 10 rounds at a time (warm start) on
        the rows of 85 % of the stays until its log-loss on the rest has not improved for 20 rounds (the
        boosting's own ``n_iter_no_change``), or the most rounds; the round count at the lowest loss."""
        from sklearn.base import clone
        from sklearn.metrics import log_loss

        unique = np.unique(groups)
        rng = np.random.default_rng(self.seed)
        held = np.isin(groups, rng.choice(unique, size=max(1, int(round(0.15 * len(unique)))), replace=False))
        most = int(pipe.steps[-1][1].max_iter)
        if y[held].min() == y[held].max() or y[~held].min() == y[~held].max():
            return most  # too few stays to hold some out: every round
        trial = clone(pipe)
        hgb = trial.steps[-1][1]
        hgb.set_params(early_stopping=False, warm_start=True)
        fit_X, fit_y = X[~held], y[~held].astype(np.int64)
        losses: list[float] = []
        rounds = 0
        while rounds < most:
            rounds = min(most, rounds + 10)
            hgb.set_params(max_iter=rounds)
            trial.fit(fit_X, fit_y)
            Xv = trial[:-1].transform(X[held])
            done = len(losses)
            losses += [log_loss(y[held], p[:, 1], labels=[0, 1]) for i, p in enumerate(hgb.staged_predict_proba(Xv))
                       if i >= done]
            if len(losses) - 1 - int(np.argmin(losses)) >= 20:
                break
        return int(np.argmin(losses)) + 1

    def predict_proba(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Positive-class probability of each model.

        Parameters
        ----------
        X : numpy.ndarray, shape (n_stays, n_features)
            Same feature layout as in :meth:`fit`.

        Returns
        -------
        dict of str to numpy.ndarray, each shape (n_stays,)
            Keyed by :data:`MODEL_NAMES`.
        """
        if not hasattr(self, "models_"):
            raise NotFittedError("SummaryBaselines is not fitted yet; call fit(X, y) before predict_proba")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must have shape (n_stays, {self.n_features_in_}) as in fit; got {X.shape}")
        with self._threads():
            return {name: model.predict_proba(X)[:, 1] for name, model in self.models_.items()}


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
