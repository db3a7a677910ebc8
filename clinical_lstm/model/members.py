"""The summary members' estimator: a regularised logistic regression and histogram gradient boosting on a matrix
of per-stay summaries (:mod:`clinical_lstm.features.summaries`), scikit-learn style; :mod:`clinical_lstm.model.head`
fits them on the landmark snapshots and exports them to arrays."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

MODEL_NAMES = ("logistic regression", "gradient boosting")
MIN_SAMPLES_LEAF = 20  # the boosting's smallest leaf (scikit-learn's default), stated: the column guard relies on it


# -- models ------------------------------------------------------------------------------------------
class SummaryBaselines:
    """Logistic regression and gradient boosting on a matrix of per-stay summaries (NaN: never observed).

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
