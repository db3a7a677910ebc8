"""Post-hoc calibration of model logits and the choice of an alert threshold.

Calibrators are fitted on a validation split (never the test split) and map raw logits to probabilities.
They serialise to plain JSON-able dicts, so a saved run can be reloaded without pickle.

* :class:`PlattCalibrator` -- ``sigmoid(a * logit + b)``, two parameters fitted by logistic regression.
* :class:`IsotonicCalibrator` -- a monotone step-linear map of ``sigmoid(logit)``.
* :func:`choose_threshold` -- the probability at which a stay is flagged, by the PhysioNet 2012 event-1
  rule ``max min(Se, PPV)`` or by Youden's J.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit

from ..checks import check_binary_inputs

CALIBRATIONS = ("platt", "isotonic")
THRESHOLD_RULES = ("min_se_ppv", "youden")

__all__ = [
    "CALIBRATIONS",
    "THRESHOLD_RULES",
    "IsotonicCalibrator",
    "PlattCalibrator",
    "calibrator_from_dict",
    "choose_threshold",
    "make_calibrator",
]


def _check_logits(logits: Any) -> np.ndarray:
    """Logits as a finite 1-D float array; raise ValueError otherwise."""
    try:
        z = np.asarray(logits, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"logits must be numeric, got {type(logits).__name__}") from exc
    if z.ndim != 1:
        raise ValueError(f"logits must be a 1-D array, got shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"logits must be finite, got {int(np.sum(~np.isfinite(z)))} NaN/inf value(s)")
    return z


def _check_kind(d: dict, kind: str) -> None:
    if not isinstance(d, dict) or d.get("kind") != kind:
        got = d.get("kind") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"expected a dict with kind={kind!r}, got kind={got!r}")


class PlattCalibrator:
    """Platt scaling: ``p = sigmoid(a * logit + b)``.

    ``a`` and ``b`` minimise the log-loss against Platt's (1999) smoothed targets
    ``(n_pos + 1) / (n_pos + 2)`` for deaths and ``1 / (n_neg + 2)`` for survivors, as scikit-learn's
    ``CalibratedClassifierCV(method="sigmoid")`` does: the smoothing keeps the optimum finite when the
    validation logits separate the classes perfectly, and is negligible for large samples. The fit is
    scikit-learn's ``LogisticRegression``, imported only inside :meth:`fit`: scoring never loads it.

    Attributes
    ----------
    a_, b_ : float
        Slope and intercept, set by :meth:`fit`.
    n_iter_ : int
        lbfgs iterations used by :meth:`fit`.
    """

    kind = "platt"

    def __init__(self) -> None:
        # scikit-learn convention: nothing learned is set here, so "fitted" means "has a_".
        pass

    def fit(self, logits: Any, y: Any, max_iter: int = 100, tol: float = 1e-10) -> PlattCalibrator:
        """Fit ``a`` and ``b`` with scikit-learn's ``LogisticRegression`` (lbfgs, no penalty; deterministic).

        Platt's soft targets ``t`` are passed as sample weights: every stay enters twice, as a death with
        weight ``t`` and as a survivor with weight ``1 - t``, so the weighted log-loss is exactly the
        cross-entropy against ``t``.

        Parameters
        ----------
        logits : array-like, shape (n,)
            Raw model scores on the logit scale.
        y : array-like, shape (n,)
            0/1 outcomes; both classes must occur.
        max_iter : int, default 100
            lbfgs iterations at most; the loss is convex in two parameters, so a few dozen is usual.
        tol : float, default 1e-10
            lbfgs stops when the largest gradient component of the (weight-averaged) loss is below this.

        Returns
        -------
        PlattCalibrator
            ``self``.
        """
        from sklearn.linear_model import LogisticRegression  # only to fit: scoring never imports scikit-learn

        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        z = _check_logits(logits)
        y01, _ = check_binary_inputs(y, z, name="logits", probabilities=False, both_classes=True)
        n_pos = float(y01.sum())
        n_neg = float(len(y01) - n_pos)
        t = np.where(y01 == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        X = np.concatenate([z, z])[:, None]  # (2n, 1): each stay once as a death, once as a survivor
        labels = np.concatenate([np.ones_like(z), np.zeros_like(z)])  # (2n,)
        weights = np.concatenate([t, 1.0 - t])  # (2n,)
        # C=inf is "no penalty" in every supported scikit-learn (penalty=None is deprecated from 1.8).
        lr = LogisticRegression(C=np.inf, solver="lbfgs", tol=tol, max_iter=max_iter)
        lr.fit(X, labels, sample_weight=weights)
        self.a_, self.b_ = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        self.n_iter_ = int(np.max(lr.n_iter_))
        return self

    def predict(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities, shape (n,), for logits of shape (n,)."""
        if not hasattr(self, "a_"):
            raise RuntimeError("PlattCalibrator is not fitted yet; call fit(logits, y) first")
        return expit(self.a_ * _check_logits(logits) + self.b_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters: ``{"kind": "platt", "a": float, "b": float}``."""
        if not hasattr(self, "a_"):
            raise RuntimeError("PlattCalibrator is not fitted yet; call fit(logits, y) first")
        return {"kind": self.kind, "a": self.a_, "b": self.b_}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PlattCalibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        _check_kind(d, cls.kind)
        a, b = float(d["a"]), float(d["b"])
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"Platt parameters must be finite, got a={a}, b={b}")
        cal = cls()
        cal.a_, cal.b_ = a, b
        return cal

    def __repr__(self) -> str:
        if hasattr(self, "a_"):
            return f"PlattCalibrator(a={self.a_:.4g}, b={self.b_:.4g})"
        return "PlattCalibrator()"


class IsotonicCalibrator:
    """Isotonic regression of the outcome on ``sigmoid(logit)``, clipped outside the fitted range.

    Prediction is ``np.interp`` on the fitted breakpoints (the same linear interpolation that
    scikit-learn's ``IsotonicRegression.predict`` performs), so a calibrator rebuilt from
    :meth:`to_dict` predicts bit-for-bit what the fitted one does.

    Attributes
    ----------
    X_thresholds_ : ndarray, shape (k,)
        Increasing breakpoints on the probability scale.
    y_thresholds_ : ndarray, shape (k,)
        Non-decreasing calibrated probabilities at the breakpoints.
    """

    kind = "isotonic"

    def __init__(self) -> None:
        pass

    def fit(self, logits: Any, y: Any) -> IsotonicCalibrator:
        """Fit on logits of shape (n,) and 0/1 outcomes of shape (n,) with both classes; returns self."""
        from sklearn.isotonic import IsotonicRegression  # only to fit: scoring never imports scikit-learn

        z = _check_logits(logits)
        y01, _ = check_binary_inputs(y, z, name="logits", probabilities=False, both_classes=True)
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(expit(z), y01.astype(float))
        self.X_thresholds_ = np.asarray(iso.X_thresholds_, dtype=float)
        self.y_thresholds_ = np.asarray(iso.y_thresholds_, dtype=float)
        return self

    def predict(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities, shape (n,), for logits of shape (n,)."""
        if not hasattr(self, "X_thresholds_"):
            raise RuntimeError("IsotonicCalibrator is not fitted yet; call fit(logits, y) first")
        # np.interp holds the end values outside [X[0], X[-1]]: the out_of_bounds="clip" behaviour.
        return np.interp(expit(_check_logits(logits)), self.X_thresholds_, self.y_thresholds_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able breakpoints: ``{"kind": "isotonic", "X_thresholds": [...], "y_thresholds": [...]}``."""
        if not hasattr(self, "X_thresholds_"):
            raise RuntimeError("IsotonicCalibrator is not fitted yet; call fit(logits, y) first")
        return {
            "kind": self.kind,
            "X_thresholds": self.X_thresholds_.tolist(),
            "y_thresholds": self.y_thresholds_.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IsotonicCalibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        _check_kind(d, cls.kind)
        x = np.asarray(d["X_thresholds"], dtype=float)
        yt = np.asarray(d["y_thresholds"], dtype=float)
        if x.ndim != 1 or x.shape != yt.shape or len(x) == 0:
            raise ValueError(
                f"X_thresholds and y_thresholds must be non-empty lists of equal length, "
                f"got shapes {x.shape} and {yt.shape}"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(yt))) or np.any(np.diff(x) < 0):
            raise ValueError("X_thresholds must be finite and non-decreasing, y_thresholds finite")
        cal = cls()
        cal.X_thresholds_, cal.y_thresholds_ = x, yt
        return cal

    def __repr__(self) -> str:
        if hasattr(self, "X_thresholds_"):
            return f"IsotonicCalibrator({len(self.X_thresholds_)} breakpoints)"
        return "IsotonicCalibrator()"


_CALIBRATORS: dict[str, type[PlattCalibrator] | type[IsotonicCalibrator]] = {
    "platt": PlattCalibrator,
    "isotonic": IsotonicCalibrator,
}


def make_calibrator(kind: str) -> PlattCalibrator | IsotonicCalibrator:
    """An unfitted calibrator; ``kind`` is one of :data:`CALIBRATIONS`."""
    if kind not in _CALIBRATORS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS!r}, got {kind!r}")
    return _CALIBRATORS[kind]()


def calibrator_from_dict(d: dict[str, Any]) -> PlattCalibrator | IsotonicCalibrator:
    """Rebuild whichever calibrator ``d["kind"]`` names, from its ``to_dict()`` output."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in _CALIBRATORS:
        raise ValueError(f"calibrator dict 'kind' must be one of {CALIBRATIONS!r}, got {kind!r}")
    return _CALIBRATORS[kind].from_dict(d)


def choose_threshold(y: Any, p: Any, rule: str = "min_se_ppv") -> float:
    """The probability cut-off that flags a stay when ``p >= threshold``.

    Every distinct value of ``p`` is a candidate (flagging nothing is never chosen); sensitivity and PPV
    at all candidates come from scikit-learn's ``precision_recall_curve`` (``"min_se_ppv"``) or
    ``roc_curve`` (``"youden"``).

    Parameters
    ----------
    y : array-like, shape (n,)
        0/1 outcomes with both classes present.
    p : array-like, shape (n,)
        Probabilities in [0, 1] (calibrated, on a validation split).
    rule : {"min_se_ppv", "youden"}, default "min_se_ppv"
        ``"min_se_ppv"`` maximises ``min(sensitivity, PPV)`` (PhysioNet/CinC 2012 event-1 score);
        ``"youden"`` maximises ``sensitivity + specificity - 1``.

    Returns
    -------
    float
        One of the values of ``p``. Ties in the criterion go to the highest threshold, i.e. the
        fewest alerts for the same score.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve  # only to fit: scoring never needs it

    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {THRESHOLD_RULES!r}, got {rule!r}")
    y01, p = check_binary_inputs(y, p, both_classes=True)
    if rule == "min_se_ppv":
        # Ascending thresholds; the extra last point (precision 1, recall 0) flags nothing: dropped.
        precision, recall, thresholds = precision_recall_curve(y01, p, drop_intermediate=False)
        score = np.minimum(recall[:-1], precision[:-1])
        # Se = TP/n_pos and PPV = TP/flagged are each one correctly rounded division, so equal ratios are
        # equal floats. The last maximum in ascending order is the highest threshold.
        return float(thresholds[len(score) - 1 - int(np.argmax(score[::-1]))])
    # Descending thresholds; the first point (threshold above every score) flags nothing: dropped.
    fpr, tpr, thresholds = roc_curve(y01, p, drop_intermediate=False)
    n_pos = float(y01.sum())
    n_neg = len(y01) - n_pos
    # J * n_pos * n_neg = TP * n_neg - FP * n_pos is a whole number: comparing it makes ties exact, where
    # tpr - fpr can differ in the last bit between equal values of J.
    j = np.rint(tpr[1:] * n_pos) * n_neg - np.rint(fpr[1:] * n_neg) * n_pos
    return float(thresholds[1:][int(np.argmax(j))])  # first maximum in descending order: highest threshold
