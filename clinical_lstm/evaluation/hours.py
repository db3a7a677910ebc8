"""The report at every hour: each model's risk from the rows up to each reported hour (out of fold from the
training snapshots, or on a test cohort's landmark snapshots), their metrics with paired intervals, the
``hours.csv`` table and the stacking weights by hour (``stacking.csv``).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from .comparison import HYBRID_NAME, MODEL_NAME, SUMMARIES_NAME, Evaluation, compare


def hour_rows(fitted, test=None, hours=()) -> dict:
    """``{hour: (stays (n,), {model: (n,) calibrated risk})}`` at each reported hour: every row of the report
    (the shipped model, the networks alone, the summaries-only stack, each summary member). Out of fold from
    the training snapshots, or on the test cohort ``test`` (built with ``landmarks=hours``, no final column)."""
    model = fitted.model
    shipped = HYBRID_NAME if model.head is not None else MODEL_NAME
    order = [shipped] + [n for n in (MODEL_NAME, SUMMARIES_NAME, "logistic regression", "gradient boosting")
                         if n != shipped]
    out = {}
    if test is None:
        snaps = fitted.snapshots
        for h in hours:
            rows = np.flatnonzero(np.isclose(snaps.hour, h))  # report hours are landmarks: one row per stay
            if len(rows):
                out[h] = (snaps.stay[rows], {n: fitted.rows_oof[n][rows] for n in order})
        return out
    lstm, summary, step = step_logits_at(model, test), test.landmark_summary, test.landmark_step
    for j, h in enumerate(hours):
        stays = np.flatnonzero(step[:, j] >= 0)
        if not len(stays):
            continue
        out[h] = (stays, member_risks(fitted, lstm[stays, j], summary[stays, j], order))
    return out


def step_logits_at(model, cohort) -> np.ndarray:
    """(N, H) the networks' mean step logit of each stay of ``cohort`` at its ``landmark_step`` bins (NaN where -1),
    block by block."""
    import torch

    from ..model.network import predict_logits, to_torch

    parts, start = [], 0
    for t in cohort.blocks():
        at = cohort.landmark_step[start:start + len(t)]
        start += len(t)
        with torch.inference_mode():
            steps = predict_logits(model.networks, to_torch(t, torch.device("cpu")), steps=True)  # (b, T)
        parts.append(np.where(at >= 0, np.take_along_axis(steps, np.maximum(at, 0), axis=1), np.nan))
    return np.concatenate(parts) if parts else np.zeros(cohort.landmark_step.shape, np.float32)


def shipped_hour_risks(model, cohort, hours) -> dict:
    """``{hour: (stays, {name: risk})}`` of a trained model (``evaluate``) at each hour, from the cohort's landmark
    snapshots (built with ``landmarks=hours``, no final column): the shipped model and, from the bundle's
    ``references``, the networks alone, the summaries-only stack and the two snapshot members."""
    from types import SimpleNamespace

    from ..model.calibrate import calibrator_from_dict

    lstm, summary, step = step_logits_at(model, cohort), cohort.landmark_summary, cohort.landmark_step
    shipped = HYBRID_NAME if model.head is not None else MODEL_NAME
    refs = model.references or {}
    order = [shipped]
    if "lstm_calibrator" in refs and model.head is not None:
        order.append(MODEL_NAME)
    if "summaries_calibrator" in refs and model.head is not None:
        order += [SUMMARIES_NAME, "logistic regression", "gradient boosting"]
    fitted = SimpleNamespace(
        model=model, members=model.head,
        lstm_calibrator=calibrator_from_dict(refs["lstm_calibrator"]) if "lstm_calibrator" in refs else None,
        summaries_calibrator=calibrator_from_dict(refs["summaries_calibrator"]) if "summaries_calibrator" in refs
        else None,
        summaries_stack=(np.asarray(refs.get("summaries_weights", [])), np.asarray(refs.get("summaries_bias", []))))
    out = {}
    for j, h in enumerate(hours):
        stays = np.flatnonzero(step[:, j] >= 0)
        if not len(stays):
            continue
        if model.head is None:
            out[h] = (stays, {shipped: model.risk(lstm[stays, j])})
        else:
            out[h] = (stays, member_risks(fitted, lstm[stays, j], summary[stays, j], order))
    return out


def member_risks(fitted, lstm: np.ndarray, summary: np.ndarray, order) -> dict:
    """``{model: (n,) calibrated risk}`` of each report row from the networks' logit and the summaries."""
    import torch
    from scipy.special import expit

    from ..model.head import stack_logit

    model, head = fitted.model, fitted.members
    with torch.inference_mode():
        s = torch.from_numpy(np.ascontiguousarray(summary, np.float32))
        logits = [z.numpy().astype(np.float64) for z in head.member_logits(s)]  # in head.groups order
        lin, trees = logits[0], logits[1]
        shipped = head(torch.from_numpy(lstm.astype(np.float32)), s).numpy() if model.head is not None else lstm
    hour = summary[:, -1]
    knots = head.knots.numpy()
    risks = {HYBRID_NAME: lambda: model.risk(shipped), MODEL_NAME: lambda: fitted.lstm_calibrator.predict(lstm),
             SUMMARIES_NAME: lambda: fitted.summaries_calibrator.predict(
                 stack_logit(np.column_stack(logits), hour, *fitted.summaries_stack, knots)),
             "logistic regression": lambda: expit(lin), "gradient boosting": lambda: expit(trees)}
    return {n: risks[n]() for n in order}


def hourly(rows: dict, y: np.ndarray, thresholds: dict, n_boot: int, seed: int) -> dict:
    """``{hour: Evaluation}`` from :func:`hour_rows` (thresholds: each model's end-of-stay alert threshold)."""
    out = {}
    for h, (stays, risks) in rows.items():
        yh = y[stays]
        if yh.min() == yh.max():  # one class only: no ranking metric at this hour
            continue
        out[h] = compare({n: (p, thresholds.get(n, 0.5)) for n, p in risks.items()}, yh, f"{len(stays)} stays at "
                         f"{h:g} h", n_boot, seed)
    return out


def hours_frame(evaluation: Evaluation) -> pl.DataFrame:
    """The every-hour table in long form: ``hour, model, metric, value, lower, upper`` (metrics with intervals,
    the mean risk and event rate as points, and ``lead over <model>`` rows of paired differences)."""
    rows = []
    for h, e in evaluation.hours.items():
        for name, m in e.metrics.items():
            rows += [(h, name, k, est.value, est.lower, est.upper) for k, est in m.items()]
            rows.append((h, name, "mean_risk", float(e.probs[name][0].mean()), None, None))
        rows.append((h, "observed", "event_rate", float(e.y.mean()), None, None))
        rows.append((h, "observed", "stays", float(len(e.y)), None, None))
        for name, d in e.differences.items():
            rows += [(h, f"lead over {name}", k, est.value, est.lower, est.upper) for k, est in d.items()]
    return pl.DataFrame(rows, schema={"hour": pl.Float64, "model": pl.String, "metric": pl.String,
                                      "value": pl.Float64, "lower": pl.Float64, "upper": pl.Float64}, orient="row")


def stacking_frame(head) -> pl.DataFrame:
    """The stacking weights of the shipped head at each knot (linear in between): ``hour, lstm``, one column per
    summary member, ``bias``."""
    from ..model.head import MEMBER_NAMES

    w, b = head.stack.numpy().astype(float), head.bias.numpy().astype(float)
    return pl.DataFrame({"hour": head.knots.numpy().astype(float), "lstm": w[:, 0],
                         **{MEMBER_NAMES[g]: w[:, 1 + i] for i, g in enumerate(head.groups)}, "bias": b})
