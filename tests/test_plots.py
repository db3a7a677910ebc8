"""Tests for clinical_lstm.evaluation.plots: the curve figures (drawn by scikit-learn's Display classes), the forest
plot of paired differences, atomic PNG output and the headless, import-light module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clinical_lstm.evaluation import plots
from clinical_lstm.evaluation.metrics import Estimate, paired_difference
from clinical_lstm.evaluation.plots import plot_calibration, plot_differences, plot_pr, plot_roc

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def two_models(n: int = 300, seed: int = 9) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A calibrated model and a noisier one on the same ~15%-mortality stays."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-rng.normal(-2.0, 1.3, n)))
    y = (rng.random(n) < p).astype(int)
    noisy = np.clip(p + rng.normal(0.0, 0.1, n), 0.0, 1.0)
    return {"masked LSTM": (y, p), "logistic regression": (y, noisy)}


def legend_texts(fig) -> list[str]:
    (ax, *_) = fig.axes
    return [t.get_text() for t in ax.get_legend().get_texts()]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


@pytest.mark.parametrize("plot", [plot_roc, plot_pr, plot_calibration])
def test_plots_write_png_atomically(plot, tmp_path):
    out = plot(two_models(), tmp_path / "figs" / "fig.png")
    assert Path(out) == tmp_path / "figs" / "fig.png"
    assert_png(Path(out))
    assert os.listdir(tmp_path / "figs") == ["fig.png"]  # no temp file left behind


def test_roc_legend_gives_each_models_auroc():
    from sklearn.metrics import roc_auc_score

    curves = two_models()
    texts = legend_texts(plots._roc_figure(curves))
    expected = [f"{name} (AUROC {roc_auc_score(y, p):.3f})" for name, (y, p) in curves.items()]
    assert texts == [*expected, "chance"]


def test_pr_legend_gives_each_models_auprc_and_the_prevalence():
    from sklearn.metrics import average_precision_score

    curves = two_models()
    texts = legend_texts(plots._pr_figure(curves))
    expected = [f"{name} (AUPRC {average_precision_score(y, p):.3f})" for name, (y, p) in curves.items()]
    y = curves["masked LSTM"][0]
    assert texts == [*expected, f"prevalence {y.mean():.3f}"]


def test_calibration_legend_and_points_match_binned_mortality():
    curves = two_models()
    fig = plots._calibration_figure(curves, n_bins=10)
    texts = legend_texts(fig)
    assert texts[0] == "perfect calibration"
    assert [t.split(" (Brier")[0] for t in texts[1:]] == list(curves)
    y, p = curves["masked LSTM"]
    line = fig.axes[0].get_lines()[1]
    # First drawn bin [0, 0.1]: mean predicted probability and observed mortality of its stays.
    first = p <= 0.1
    assert line.get_xdata()[0] == pytest.approx(p[first].mean())
    assert line.get_ydata()[0] == pytest.approx(y[first].mean())


def test_plots_validate_curves(tmp_path):
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="both classes"):
        plot_pr({"m": ([0, 0], [0.1, 0.2])}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\(y, p\) pair"):
        plot_calibration({"m": [0, 1, 0]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="n_bins must be a positive integer, got 0"):
        plot_calibration(two_models(), tmp_path / "x.png", n_bins=0)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- forest plot


def test_plot_differences_writes_a_forest_plot(tmp_path):
    curves = two_models(n=400)
    y, p_lstm = curves["masked LSTM"]
    _, p_lr = curves["logistic regression"]
    diffs = {
        "masked LSTM \u2212 logistic regression": paired_difference(y, p_lstm, p_lr, 0.3, 0.3, n_boot=100),
        "masked LSTM \u2212 itself": paired_difference(y, p_lstm, p_lstm, 0.3, 0.3, n_boot=100),
    }
    fig = plots._differences_figure(diffs, ("auroc", "auprc", "brier"))
    assert len(fig.axes) == 3
    assert [ax.get_xlabel() for ax in fig.axes] == [
        "Difference in AUROC",
        "Difference in AUPRC (average precision)",
        "Difference in Brier score",
    ]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == list(diffs)
    # What is drawn is the estimates: each comparison's point at its value, on its label's row, and its bar from
    # the interval's lower to its upper bound ("itself" is 0 with a zero-width interval).
    row_of = dict(zip([t.get_text() for t in fig.axes[0].get_yticklabels()], fig.axes[0].get_yticks(), strict=True))
    for ax, metric in zip(fig.axes, ("auroc", "auprc", "brier"), strict=True):
        (bars,) = ax.containers
        point, _, (segments,) = bars.lines
        est = [d[metric] for d in diffs.values()]
        np.testing.assert_allclose(point.get_xdata(), [e.value for e in est], rtol=0, atol=1e-12)
        np.testing.assert_allclose(point.get_ydata(), [row_of[label] for label in diffs], rtol=0, atol=0)
        spans = [(seg[:, 0].min(), seg[:, 0].max()) for seg in segments.get_segments()]
        np.testing.assert_allclose(spans, [(e.lower, e.upper) for e in est], rtol=0, atol=1e-12)
        assert est[1].value == est[1].lower == est[1].upper == 0.0 and est[0].lower < est[0].upper, metric
    out = plot_differences(diffs, tmp_path / "diff.png")
    assert out == tmp_path / "diff.png"
    assert_png(out)


def test_plot_differences_validates(tmp_path):
    with pytest.raises(
        ValueError, match=r"diffs must be a non-empty dict \{comparison: \{metric: Estimate\}\}"
    ):
        plot_differences({}, tmp_path / "x.png")
    one = {"a \u2212 b": {"auroc": Estimate(0.02, 0.01, 0.03)}}
    with pytest.raises(
        ValueError, match=r"diffs\['a − b'\] has no Estimate for \['auprc'\]; it has \['auroc'\]"
    ):
        plot_differences(one, tmp_path / "x.png")
    with pytest.raises(ValueError, match="metrics must name at least one metric"):
        plot_differences(one, tmp_path / "x.png", metrics=())
    assert not list(tmp_path.iterdir())


def test_importing_plots_imports_neither_matplotlib_nor_sklearn():
    root = Path(plots.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    code = (
        "import sys, clinical_lstm.evaluation.metrics, clinical_lstm.evaluation.plots; "
        "sys.exit(any(m in sys.modules for m in ('matplotlib', 'sklearn')))"
    )
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_hours_plot_draws_each_models_metric_and_mean_risk_at_every_hour(tmp_path):
    """Two models whose ranking we set per hour: the AUROC panel's lines are those AUROCs, the calibration panel's
    the mean risks and the event rate, in hour order."""
    from sklearn.metrics import roc_auc_score

    from clinical_lstm.evaluation.comparison import compare

    rng = np.random.default_rng(4)
    hours = {}
    for h, signal in ((24.0, 1.0), (6.0, 0.2), (48.0, 2.0)):  # out of order on purpose
        y = (rng.random(400) < 0.2).astype(int)
        good = 1 / (1 + np.exp(-(signal * y * 2 - 1 + rng.normal(0, 1, 400))))
        flat = rng.random(400)
        hours[h] = compare({"model": (good, 0.5), "noise": (flat, 0.5)}, y, f"{h} h", n_boot=20, seed=0)
    fig = plots._hours_figure(hours, "a title")
    auroc_ax, _, calibration_ax = fig.axes
    lines = {line.get_label().replace(" (shipped)", ""): line for line in auroc_ax.get_lines()}
    for name in ("model", "noise"):
        assert list(lines[name].get_xdata()) == [6.0, 24.0, 48.0]
        want = [roc_auc_score(hours[h].y, hours[h].probs[name][0]) for h in (6.0, 24.0, 48.0)]
        np.testing.assert_allclose(lines[name].get_ydata(), want)
    assert np.diff(lines["model"].get_ydata()).min() > 0  # the planted signal grows with the hour
    calibration = {line.get_label(): line.get_ydata() for line in calibration_ax.get_lines()}
    np.testing.assert_allclose(calibration["event rate"], [hours[h].y.mean() for h in (6.0, 24.0, 48.0)])
    np.testing.assert_allclose(calibration["noise"], [hours[h].probs["noise"][0].mean() for h in (6.0, 24.0, 48.0)])
    assert calibration_ax.get_ylim()[1] > max(max(v) for v in calibration.values())  # nothing drawn off the top
    assert_png(plots.plot_hours(hours, tmp_path / "hours.png"))
    with pytest.raises(ValueError, match="at least one hour"):
        plots.plot_hours({}, tmp_path / "none.png")


def test_every_report_plot_says_what_it_was_measured_on():
    """A plot read on its own (in the MLflow UI, a slide) names its stays and whether they were out of fold or held
    out: the subtitle goes under the plot's own title, or is the title."""
    from clinical_lstm.evaluation.metrics import Estimate

    on = "out of fold: the 400 training stays"
    for figure in (plots._roc_figure(two_models()), plots._pr_figure(two_models()),
                   plots._calibration_figure(two_models(), 10)):
        assert plots._titled(figure, on).get_suptitle() == on
    diffs = {"m - other": {"auroc": Estimate(0.01, 0.0, 0.02), "auprc": Estimate(0.02, -0.01, 0.05)}}
    titled = plots._titled(plots._differences_figure(diffs, ("auroc", "auprc")), on)
    assert titled.get_suptitle() == f"Paired differences with 95% bootstrap intervals\n{on}"
    assert plots._titled(plots._roc_figure(two_models()), "").get_suptitle() == ""
