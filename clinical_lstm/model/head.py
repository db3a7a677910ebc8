"""The summary members and the stacking head that joins them with the LSTM.

**The members**: a regularized logistic regression (median imputation with missing indicators, standard
scaling) and histogram gradient boosting, fitted with scikit-learn and then *exported* to plain arrays:
:class:`SummaryHead` evaluates them in torch (the trees by a vectorized walk from the root), so the model's
logit has one definition for ``predict``, the stream, SHAP and ONNX, and the bundle holds no pickle. They are
fitted on *landmark snapshots* (each training stay summarized at many hours, :mod:`~clinical_lstm.model.training`), so
what they see in training is what they see at every hour of use.

**The stacking** weighs the members' logits with weights that vary with the hour: piecewise linear between
``knots`` (:func:`hour_basis`), fitted by one logistic regression on the out-of-fold snapshot logits
(:func:`fit_stack`). The LSTM can carry the early hours and the summaries the late ones. What the networks add
is the shipped model against the *summaries-only stack* (the same stacking without the LSTM logit), which every
report shows.

The summaries themselves are :mod:`clinical_lstm.features.summaries`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


# -- fitting ---------------------------------------------------------------------------------------------------
def fit_members(X: np.ndarray, y: np.ndarray, seed: int = 0, groups: np.ndarray | None = None):
    """Fit the logistic-regression and gradient-boosting members on summaries ``X`` (N, F) -> their arrays;
    ``groups``: the stay of each row when stays give several (early stopping then holds out whole stays)."""
    from .members import SummaryBaselines

    fitted = SummaryBaselines(seed=seed).fit(X, y, groups)
    return {"linear": export_linear(fitted.models_["logistic regression"]),
            "trees": export_trees(fitted.models_["gradient boosting"], X.shape[1])}


def export_linear(pipe) -> dict:
    """A fitted ``SimpleImputer(median, add_indicator) -> StandardScaler -> LogisticRegression`` as arrays."""
    imputer, scaler, lr = pipe.steps[0][1], pipe.steps[1][1], pipe.steps[2][1]
    indicator = imputer.indicator_.features_ if imputer.indicator_ is not None else np.zeros(0, np.int64)
    return {"median": imputer.statistics_.astype(np.float32), "indicator": np.asarray(indicator, np.int64),
            "mean": scaler.mean_.astype(np.float32), "scale": scaler.scale_.astype(np.float32),
            "coef": lr.coef_[0].astype(np.float32), "intercept": np.asarray(lr.intercept_, np.float32)}


#: the fields of scikit-learn's private node records that :func:`export_trees` reads
_NODE_FIELDS = ("feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf", "value", "depth")


def _check_private_trees(hgb) -> None:
    """The tree export reads scikit-learn's private ``_predictors`` and ``_baseline_prediction``: tested with
    scikit-learn 1.4.2, 1.6.1 and 1.9.1 (``pyproject.toml`` pins ``>=1.4,<1.10``). A release that changes them fails
    here, by name, instead of exporting wrong trees (``tests/test_summaries.py`` compares the export with
    scikit-learn's own ``predict_proba``)."""
    import sklearn

    predictors = getattr(hgb, "_predictors", None)
    fields = ()
    if predictors:
        nodes = getattr(predictors[0][0], "nodes", None)
        fields = getattr(getattr(nodes, "dtype", None), "names", None) or ()
    missing = [f for f in _NODE_FIELDS if f not in fields]
    if not predictors or not hasattr(hgb, "_baseline_prediction") or missing:
        raise RuntimeError(
            f"scikit-learn {sklearn.__version__}'s HistGradientBoostingClassifier no longer holds the private tree "
            f"arrays the export reads (_predictors, _baseline_prediction, node fields {', '.join(_NODE_FIELDS)}); "
            f"clinical-lstm is tested with scikit-learn >=1.4,<1.10: pip install 'scikit-learn>=1.4,<1.10'")


def export_trees(pipe, n_features: int) -> dict:
    """A fitted ``ColumnTransformer(observed columns) -> HistGradientBoostingClassifier`` as padded arrays
    (trees x nodes): the feature (a column of the full summary), threshold (go left when ``x <= threshold``),
    where a missing value goes, the children, and the leaf values; plus the baseline raw score."""
    columns = np.flatnonzero(np.isin(np.arange(n_features), pipe.steps[0][1].transformers_[0][2]))
    hgb = pipe.steps[1][1]
    _check_private_trees(hgb)
    nodes = [pred[0].nodes for pred in hgb._predictors]  # scikit-learn's tree arrays, one per boosting round
    width = max(len(n) for n in nodes)
    out = {"feature": np.zeros((len(nodes), width), np.int64), "threshold": np.zeros((len(nodes), width), np.float64),
           "missing_left": np.zeros((len(nodes), width), bool), "left": np.zeros((len(nodes), width), np.int64),
           "right": np.zeros((len(nodes), width), np.int64), "leaf": np.ones((len(nodes), width), bool),
           "value": np.zeros((len(nodes), width), np.float32)}
    for t, n in enumerate(nodes):
        k = len(n)
        leaf = n["is_leaf"].astype(bool)
        out["feature"][t, :k] = np.where(leaf, 0, columns[n["feature_idx"]])
        out["threshold"][t, :k] = n["num_threshold"]
        out["missing_left"][t, :k] = n["missing_go_to_left"].astype(bool)
        out["left"][t, :k], out["right"][t, :k] = n["left"], n["right"]
        out["leaf"][t, :k] = leaf
        out["value"][t, :k] = np.where(leaf, n["value"], 0)
    out["depth"] = np.asarray(max(int(n["depth"].max()) for n in nodes), np.int64)
    out["baseline"] = np.asarray(hgb._baseline_prediction, np.float32).reshape(1)
    return out


# -- the stacking over the hours ------------------------------------------------------------------------------
def knots_for(knots, window_hours: float) -> np.ndarray:
    """The stacking knots that fall inside the window (sorted, unique), or the window's end when none does."""
    k = sorted({float(h) for h in knots if 0 < float(h) <= window_hours})
    return np.asarray(k or [float(window_hours)], np.float32)


def hour_basis(hour: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """(...,) hours -> (..., M) piecewise-linear "hat" weights of the M knots: 1 at its knot, falling linearly to 0
    at the neighbouring knots, constant beyond the first and last knot; each row sums to 1. A weight per knot
    interpolated this way is a weight that changes linearly with the hour between knots."""
    knots = np.asarray(knots, np.float64)
    h = np.clip(np.asarray(hour, np.float64), knots[0], knots[-1])[..., None]
    lo, lo_w, hi, hi_w = _hat_edges(knots)
    return np.clip(np.minimum((h - lo) / lo_w, (hi - h) / hi_w), 0, 1)


def _hat_edges(knots: np.ndarray):
    """For each knot, the knot before it and the distance to it, the knot after it and the distance to it (an
    outer knot gets a neighbour 1 h beyond it, which the clipped hour never passes)."""
    knots = np.asarray(knots, np.float64)
    lo = np.r_[knots[0] - 1, knots[:-1]]
    hi = np.r_[knots[1:], knots[-1] + 1]
    return lo, knots - lo, hi, hi - knots


def fit_stack(Z: np.ndarray, hour: np.ndarray, y: np.ndarray, knots: np.ndarray, C: float = 1.0):
    """Stacking weights that vary with the hour: one logistic regression of ``y`` on every member logit of ``Z``
    (n, m) times every knot's :func:`hour_basis` weight, plus the basis itself (a per-knot intercept, so the
    stacked logit is calibrated at every hour). Returns ``(weights (M, m), bias (M,))``."""
    from sklearn.linear_model import LogisticRegression

    B = hour_basis(hour, knots)  # (n, M)
    design = np.concatenate([(B[:, :, None] * Z[:, None, :]).reshape(len(Z), -1), B], axis=1)  # (n, M*m + M)
    lr = LogisticRegression(C=C, fit_intercept=False, max_iter=2000).fit(design, y)
    M, m = B.shape[1], Z.shape[1]
    return lr.coef_[0, :M * m].reshape(M, m), lr.coef_[0, M * m:].copy()


def stack_logit(Z: np.ndarray, hour: np.ndarray, weights: np.ndarray, bias: np.ndarray, knots: np.ndarray):
    """(n, m) member logits at ``hour`` (n,) -> (n,) the stacked logit of :func:`fit_stack`'s weights."""
    B = hour_basis(hour, knots)  # (n, M)
    return ((B @ weights) * Z).sum(axis=1) + B @ bias


# -- the head ----------------------------------------------------------------------------------------------------
#: The head's summary members, in stacking order after the LSTM: logistic regression and gradient boosting fitted on
#: the landmark snapshots of every hour, then (when the model has them) the same two fitted on each stay's summary at
#: its last bin only — the end-of-stay specialists that the stacking weighs in late in a stay.
MEMBER_GROUPS = ("linear", "trees", "elinear", "etrees")
MEMBER_NAMES = {"linear": "logistic regression", "trees": "gradient boosting",
                "elinear": "logistic regression, end of stay", "etrees": "gradient boosting, end of stay"}
class SummaryHead(nn.Module):
    """The shipped logit: ``w(hour) . (LSTM logit, linear(summary), trees(summary)) + b(hour)``.

    Buffers hold the exported members (:func:`fit_members`), the stacking ``knots`` (M,), ``stack`` (M, 3) and
    ``bias`` (M,) (:func:`fit_stack`, fitted on out-of-fold snapshot logits of all three); the weights at an hour
    are the knots' interpolated by :func:`hour_basis`, the hour being the summary's last column. ``forward``
    takes the ensemble-mean LSTM logit (B,) and the summaries (B, F), or per step (B, T) and (B, T, F).
    """

    def __init__(self, members: dict, stack: np.ndarray, bias, knots=None):
        super().__init__()
        unknown = sorted(set(members) - set(MEMBER_GROUPS))
        if unknown or not {"linear", "trees"} <= set(members):
            raise ValueError(f"a summary head needs members 'linear' and 'trees' (optionally 'elinear', 'etrees'); "
                             f"got {sorted(members)}")
        self.groups = [g for g in MEMBER_GROUPS if g in members]
        for group in self.groups:
            arrays = dict(members[group])
            if group.endswith("trees"):
                node = np.arange(arrays["leaf"].shape[1])[None, :]
                for side in ("left", "right"):  # a leaf's children are itself: a walk that reached it stays there
                    arrays[side] = np.where(arrays["leaf"], node, arrays[side])
            for name, value in arrays.items():
                self.register_buffer(f"{group}_{name}", torch.as_tensor(np.asarray(value)))
        knots = np.asarray([48.0] if knots is None else knots, np.float32).reshape(-1)
        M = len(knots)
        self.register_buffer("knots", torch.as_tensor(knots))
        self.register_buffer("stack", torch.as_tensor(np.asarray(stack, np.float32)).reshape(M, 1 + len(self.groups)))
        self.register_buffer("bias", torch.as_tensor(np.asarray(bias, np.float32)).reshape(M))
        lo, lo_w, hi, hi_w = _hat_edges(knots)
        for name, value in (("lo", lo), ("lo_w", lo_w), ("hi", hi), ("hi_w", hi_w)):  # derived: not saved
            self.register_buffer(f"_hat_{name}", torch.as_tensor(value.astype(np.float32)), persistent=False)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> SummaryHead:
        """Rebuild from ``state_dict()`` tensors (the bundle's ``head.*`` weights)."""
        members: dict[str, dict] = {}
        for key, value in state.items():
            group, _, name = key.partition("_")
            if group in MEMBER_GROUPS:
                members.setdefault(group, {})[name] = value.numpy()
        return cls(members, state["stack"].numpy(), state["bias"].numpy(), state["knots"].numpy())

    def weights(self, hour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(...,) hours -> the stacking weights (..., 1 + members) of (LSTM, *members) and the bias (...,) there."""
        h = torch.minimum(torch.maximum(hour.float(), self.knots[0]), self.knots[-1])[..., None]  # (..., 1)
        basis = torch.minimum((h - self._hat_lo) / self._hat_lo_w, (self._hat_hi - h) / self._hat_hi_w).clamp(0, 1)
        return basis @ self.stack, basis @ self.bias

    def linear(self, s: torch.Tensor, group: str = "linear") -> torch.Tensor:
        """(..., F) summaries -> (...,) logit of a logistic-regression member (``linear`` or ``elinear``)."""
        b = lambda name: getattr(self, f"{group}_{name}")  # noqa: E731
        missing = torch.isnan(s)
        filled = torch.where(missing, b("median"), s)
        z = torch.cat([filled, missing[..., b("indicator")].to(s.dtype)], dim=-1)  # (..., F + I)
        return ((z - b("mean")) / b("scale")) @ b("coef") + b("intercept")[0]

    def member_logits(self, s: torch.Tensor) -> list[torch.Tensor]:
        """(..., F) summaries -> each summary member's (...,) logit, in :attr:`groups` order."""
        return [self.trees(s, g) if g.endswith("trees") else self.linear(s, g) for g in self.groups]

    def trees(self, s: torch.Tensor, group: str = "trees") -> torch.Tensor:
        """(..., F) summaries -> (...,) raw score of a boosted-trees member (``trees`` or ``etrees``): every tree
        walked from its root at once."""
        b = lambda name: getattr(self, f"{group}_{name}")  # noqa: E731
        shape = s.shape[:-1]
        x = s.reshape(-1, s.shape[-1])  # (B, F)
        n_trees, width = b("feature").shape
        base = (torch.arange(n_trees, device=s.device) * width)[None, :]  # (1, n_trees) flat offset of each tree
        node = torch.zeros(x.shape[0], n_trees, dtype=torch.long, device=s.device)  # (B, n_trees)
        feature, threshold = b("feature").reshape(-1), b("threshold").reshape(-1)
        missing_left, leaf = b("missing_left").reshape(-1), b("leaf").reshape(-1)
        left, right = b("left").reshape(-1), b("right").reshape(-1)
        # a[base + node] (B, n_trees) by index_select: a quarter of advanced indexing's time on CPU
        at_of = lambda a, node: a.index_select(0, (base + node).reshape(-1)).reshape(-1, n_trees)  # noqa: E731
        for _ in range(int(b("depth"))):
            v = torch.gather(x, 1, at_of(feature, node))  # (B, n_trees) the split feature's value
            # float64, as scikit-learn compares; a missing value goes where training sent missing values (NaN <=
            # threshold is False). Logical operators, not torch.where on booleans: onnxruntime has no kernel for that
            go_left = (v.double() <= at_of(threshold, node)) | (torch.isnan(v) & at_of(missing_left, node))
            node = torch.where(go_left, at_of(left, node), at_of(right, node))
            if not torch.jit.is_tracing() and bool(at_of(leaf, node).all()):  # every walk has ended (an
                break  # exported graph always takes the full depth)
        raw = at_of(b("value").reshape(-1), node).sum(dim=1) + b("baseline")[0]  # (B,)
        return raw.reshape(shape)

    def numpy_logit(self, lstm_logit: float, summary: np.ndarray) -> float:
        """:meth:`forward` for one stay in numpy: the stream's fast path (one stay per update, where torch's
        fixed cost per operation would dominate), the same arithmetic on the same buffers, checked against
        :meth:`forward` in the fast tests. With one stay, every split of every tree member is decided at once,
        then the trees' walks only follow those decisions (see :meth:`_numpy_arrays`)."""
        a = self.__dict__.get("_arrays") or self._numpy_arrays()
        s = np.asarray(summary, np.float32)  # (F,)
        missing = np.isnan(s)
        members = [np.float32(lstm_logit)]
        # the split value of each internal node, a missing one replaced by -inf where missing values go left
        # (-inf <= any threshold) and kept NaN where they go right (NaN <= anything is False): as trees()
        v = np.concatenate([np.where(missing, -np.inf, s), s])[a["split_at"]]
        go = np.concatenate([np.where(v <= a["split_below"], a["split_left"], a["split_right"]), a["leaf_self"]])
        node = a["roots"]
        for _ in range(a["depth"]):  # leaves are their own children
            node = go[node]
        value = a["leaf_value"][node]  # (all trees,) each tree's leaf
        for g in self.groups:
            if g.endswith("trees"):
                lo, hi = a[f"{g}_trees"]
                members.append(float(value[lo:hi].sum(dtype=np.float32) + a[f"{g}_baseline"][0]))
            else:
                z = np.concatenate([np.where(missing, a[f"{g}_median"], s), missing[a[f"{g}_indicator"]]])
                members.append(float(((z - a[f"{g}_mean"]) / a[f"{g}_scale"]) @ a[f"{g}_coef"]
                                     + a[f"{g}_intercept"][0]))
        weights, bias = self._numpy_weights(s[-1], a)
        return float(np.array(members, np.float32) @ weights + bias)

    def _numpy_weights(self, hour: np.float32, a: dict):
        """:meth:`weights` at ``hour`` in numpy: the stacking weights (1 + members,) and the bias, kept per hour (a
        stream asks at the ends of its bins, a few dozen hours)."""
        cache = self.__dict__.setdefault("_hour_weights", {})
        got = cache.get(float(hour))
        if got is None:
            h = np.float32(min(max(hour, a["knots"][0]), a["knots"][-1]))  # as weights()
            basis = np.clip(np.minimum((h - a["_hat_lo"]) / a["_hat_lo_w"], (a["_hat_hi"] - h) / a["_hat_hi_w"]), 0, 1)
            if len(cache) >= 4096:
                cache.clear()
            got = cache[float(hour)] = (basis @ a["stack"], basis @ a["bias"])
        return got

    def _numpy_arrays(self) -> dict:
        """The buffers as numpy arrays for :meth:`numpy_logit`, built once, with the tree members' nodes renumbered
        into one list: every tree member's internal nodes first, then their leaves.

        For the internal nodes: ``split_at``, where in ``[summary with NaN as -inf, summary]`` the split value is
        (the first half where missing values go left); ``split_below``, the float32 threshold that a float32 value
        is at or below exactly when it is at or below the float64 threshold (the largest float32 not above it:
        the same decisions without a float64 copy of the values); ``split_left``/``split_right``, the children.
        ``leaf_self``: each leaf is its own child; ``leaf_value``: each node's value (0 but at leaves); ``roots``
        (all trees,) each tree's first node; ``<group>_trees``: the group's range of trees."""
        a = {k: v.numpy() for k, v in self.state_dict().items()}
        a.update({k: v.numpy() for k, v in self.named_buffers() if k.startswith("_hat_")})
        groups = [g for g in self.groups if g.endswith("trees")]
        F = len(a[f"{self.groups[0]}_median"])  # the summary's width
        flat = {name: np.concatenate([a[f"{g}_{name}"].reshape(-1) for g in groups])
                for name in ("feature", "threshold", "missing_left", "left", "right", "leaf", "value")}
        first, nodes, trees, depth = [], 0, 0, 0  # each tree's first node in the one list, before renumbering
        for g in groups:
            n_trees, width = a[f"{g}_feature"].shape
            first.append(nodes + np.arange(n_trees) * width)
            a[f"{g}_trees"] = (trees, trees + n_trees)
            nodes, trees, depth = nodes + n_trees * width, trees + n_trees, max(depth, int(a[f"{g}_depth"]))
        first = np.concatenate(first)
        offset = np.repeat(first, np.diff(np.r_[first, nodes]))  # a node's tree's first node
        inner, leaves = np.flatnonzero(~flat["leaf"]), np.flatnonzero(flat["leaf"])
        order = np.r_[inner, leaves]  # internal nodes first
        new = np.empty_like(order)
        new[order] = np.arange(nodes)  # old position -> new number
        threshold = flat["threshold"][inner]
        with np.errstate(over="ignore"):  # a threshold past float32's range: handled below
            below = threshold.astype(np.float32)
        below = np.where(below > threshold, np.nextafter(below, np.float32(-np.inf)), below).astype(np.float32)
        below[threshold > np.finfo(np.float32).max] = np.inf  # every float32 but NaN is at or below it
        a.update(split_at=flat["feature"][inner] + np.where(flat["missing_left"][inner], 0, F), split_below=below,
                 split_left=new[flat["left"][inner] + offset[inner]], split_right=new[flat["right"][inner] + offset[inner]],
                 leaf_self=np.arange(len(inner), nodes), leaf_value=flat["value"][order], roots=new[first], depth=depth)
        self.__dict__["_arrays"] = a
        return a

    def forward(self, lstm_logit: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        s = summary.float()
        members = torch.stack([lstm_logit.float(), *self.member_logits(s)], dim=-1)  # (..., 1 + members)
        w, b = self.weights(s[..., -1])
        return (members * w).sum(-1) + b
