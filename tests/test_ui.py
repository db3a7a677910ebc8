"""The MLflow UI as a person uses it, all real processes: the CLI trains two runs on the bundled sample into a
temporary SQLite store, ``mlflow server`` serves it on 127.0.0.1, and headless Chromium (driven by playwright)
opens the run list and the compare-runs view and reads the runs' names and AUROC/AUPRC off the page.

Needs ``/usr/bin/chromium`` and the ``playwright`` package (no browser download): ``bash scripts/ci_extras.sh``
installs both. Without them the test fails (it does not skip). ``UPDATE_SCREENSHOTS=1`` writes the screenshots
to ``docs/mlflow_runs.png`` and ``docs/mlflow_compare.png``; otherwise they go to the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, running_server

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server"]  # only ever 127.0.0.1
INSTALL_HINT = "run `bash scripts/ci_extras.sh` (apt chromium + pip playwright into .venv)"
DOCS = Path(__file__).resolve().parents[1] / "docs"
EXPERIMENT = "ui-test"
HIDDEN = (8, 16)
RUN_NAMES = {h: f"ffill_median-h{h}-decay-k5" for h in HIDDEN}  # defaults but hidden size: 5 folds, decay
METRICS = ("auroc", "auprc")
CONFIG = """
[model]
hidden_size = {h}

[train]
epochs = 2

[evaluation]
n_boot = 20
"""
SERVER_TIMEOUT_S = 90
UI_TIMEOUT_MS = 60_000  # generous: the 2-core CI machine may be busy
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the `playwright` package is not installed in {sys.prefix}; {INSTALL_HINT}", pytrace=False)
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM} (set CHROMIUM to another binary); {INSTALL_HINT}", pytrace=False)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium; checked first, so a missing browser fails before any training."""
    sync_playwright = _playwright()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two runs trained by the real CLI (hidden size 8 and 16) in a temporary store; their ids and metrics."""
    root = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # nothing from an outer run
    env.update(MLFLOW_TRACKING_URI=uri, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for h in HIDDEN:
            (root / f"h{h}.toml").write_text(CONFIG.format(h=h))
            done = subprocess.run(
                [sys.executable, "-m", "clinical_lstm.cli", "train", "--data", "sample", "--out",
                 str(root / f"model-h{h}"), "--config", str(root / f"h{h}.toml"), "--experiment", EXPERIMENT,
                 "--no-progress"],
                cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "WARNING" not in done.stdout, done.stdout  # tracking worked
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
        assert sorted(runs) == sorted(RUN_NAMES.values())
        by_h = {h: client.get_run(runs[RUN_NAMES[h]].info.run_id) for h in HIDDEN}
        yield {"root": root, "uri": uri, "env": env, "experiment_id": exp.experiment_id,
               "run_ids": {h: r.info.run_id for h, r in by_h.items()},
               "metrics": {h: {m: r.data.metrics[m] for m in METRICS} for h, r in by_h.items()}}


@pytest.fixture(scope="module")
def server(store):
    """``mlflow server`` over the store on a free port; its whole process group is killed afterwards."""
    root, port = store["root"], free_port()
    env = {**store["env"], "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: fewer processes
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store["uri"], "--default-artifact-root",
           str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    with running_server(cmd, root, env, base + "/health", SERVER_TIMEOUT_S, root / f"server-{port}.log"):
        yield base


def _shot(name: str, tmp_path: Path) -> Path:
    return (DOCS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path) / name


@contextlib.contextmanager
def _page(browser, tmp_path: Path, name: str, height: int = 900):
    """A fresh page; if a step fails, the page as it was is saved beside the test for the report."""
    context = browser.new_context(viewport={"width": 1600, "height": height})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    except Exception:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(tmp_path / f"failed-{name}"), full_page=True)
            print(f"page at failure: {tmp_path / f'failed-{name}'}")
        raise
    finally:
        context.close()


def _close_assistant(page) -> None:
    """MLflow 3 opens its assistant side panel on first visit; it takes a third of the width."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    with contextlib.suppress(Exception):
        close.wait_for(timeout=3000)
    if close.is_visible():
        close.click()


def _row_numbers(label) -> list[float]:
    """The numbers printed on the same line as ``label``, right of it, left to right (as a reader sees them);
    plot tick labels (SVG) are not table cells."""
    label.scroll_into_view_if_needed()
    texts = label.evaluate("""(el) => {
        const r = el.getBoundingClientRect(), cy = r.top + r.height / 2;
        return [...document.querySelectorAll('body *')]
            .filter(e => e.childElementCount === 0 && !e.closest('svg') && /^-?\\d+(\\.\\d+)?(e-?\\d+)?$/.test(e.textContent.trim()))
            .map(e => [e.getBoundingClientRect(), e.textContent.trim()])
            .filter(([b]) => b.height > 0 && b.left >= r.right && Math.abs(b.top + b.height / 2 - cy) < 6)
            .filter(([b, t]) => {  // on top at its centre: not clipped away by a scrolled table
                const hit = document.elementFromPoint(b.left + b.width / 2, b.top + b.height / 2);
                return hit !== null && hit.textContent.trim() === t;
            })
            .sort((a, b) => a[0].left - b[0].left).map(([, t]) => t);
    }""")
    return [float(t) for t in texts]


def _row_numbers_when(label, want, seconds: float = 10.0) -> list[float]:
    """:func:`_row_numbers` once they equal ``want`` or ``seconds`` have passed (then as last read). The compare
    view scrolls its metric names and its values in two panes kept in step by the page's own script: with the
    every-hour metrics the list is long, and just after a scroll the values pane can still show other rows."""
    import time

    end = time.monotonic() + seconds
    while True:
        shown = _row_numbers(label)
        if shown == pytest.approx(want, abs=1e-3) or time.monotonic() > end:
            return shown
        label.page.wait_for_timeout(200)


def test_run_list_shows_both_runs_with_auroc_and_auprc(browser, server, store, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    with _page(browser, tmp_path, "runs.png", height=600) as page:
        page.goto(f"{server}/#/experiments/{store['experiment_id']}/runs")
        for h in HIDDEN:
            expect(page.get_by_text(RUN_NAMES[h], exact=True)).to_be_visible()
        _close_assistant(page)
        page.get_by_text("Model training", exact=True).click()  # the classic runs table
        for metric in METRICS:  # Columns > search > tick the metric, as a person adds a column
            page.get_by_role("button", name="Columns", exact=True).click()
            page.get_by_placeholder("Search columns").fill(metric)
            leaf = page.locator(".du-bois-light-tree-title").filter(has_text=re.compile(f"^{metric}$"))
            try:
                leaf.wait_for(state="visible", timeout=5_000)
            except PlaywrightTimeout:  # seen once under load: the search left the "Metrics (n)" group collapsed
                page.locator(".du-bois-light-tree-treenode").filter(has_text="Metrics").locator(
                    ".du-bois-light-tree-switcher").first.click()
            leaf.click()
            page.keyboard.press("Escape")
        for metric in METRICS:
            expect(page.locator(f'[role=columnheader][col-id="metrics.`{metric}`"]')).to_be_visible()
        for h in HIDDEN:
            expect(page.get_by_text(RUN_NAMES[h], exact=True)).to_be_visible()
            row = page.locator(f'[role=row][row-id="{store["run_ids"][h]}"]')
            for metric in METRICS:
                cell = row.locator(f'[role=gridcell][col-id="metrics.`{metric}`"]')
                expect(cell).to_be_visible()
                assert float(cell.inner_text()) == pytest.approx(store["metrics"][h][metric], abs=1e-3), (h, metric)
        page.screenshot(path=str(_shot("mlflow_runs.png", tmp_path)), full_page=True)


def test_compare_view_shows_both_runs_and_their_metrics(browser, server, store, tmp_path):
    from playwright.sync_api import expect

    ids = [store["run_ids"][h] for h in HIDDEN]  # h8 first: the view keeps this column order
    url = f"{server}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([store['experiment_id']])}"
    with _page(browser, tmp_path, "compare.png") as page:
        page.goto(url)
        expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
        _close_assistant(page)
        names = [page.get_by_text(RUN_NAMES[h], exact=True) for h in HIDDEN]
        for name in names:
            expect(name).to_be_visible()
        assert names[0].bounding_box()["x"] < names[1].bounding_box()["x"], "runs not in the requested order"
        for run_id in ids:
            expect(page.get_by_role("link", name=run_id, exact=True)).to_be_visible()
        for metric in METRICS:
            label = page.get_by_role("link", name=metric, exact=True)
            expect(label).to_be_visible()
            want = [store["metrics"][h][metric] for h in HIDDEN]
            shown = _row_numbers_when(label, want)
            assert shown == pytest.approx(want, abs=1e-3), f"{metric}: page shows {shown}, the store has {want}"

        # for the screenshot: the parallel-coordinates plot over AUROC/AUPRC, only what differs, no artifacts
        plot_metrics = page.locator(".du-bois-light-select").nth(1)  # Parameters:, then Metrics:
        plot_metrics.click()
        for metric in METRICS:  # the list is virtual (every fold's curves are metrics too): filter by typing
            page.keyboard.type(metric)
            page.locator(f'.du-bois-light-select-item-option[title="{metric}"]').click()
        page.keyboard.press("Escape")
        others = plot_metrics.locator(".du-bois-light-select-selection-item").filter(
            has_not_text=re.compile(f"^({'|'.join(METRICS)})$"))
        for _ in range(others.count()):  # the default pick (the first metric logged) goes
            others.first.locator(".du-bois-light-select-selection-item-remove").click()
        expect(plot_metrics.locator(".du-bois-light-select-selection-item")).to_have_text(list(METRICS))
        for section in ("Parameters", "Tags"):
            page.get_by_role("switch", name=f"{section} - Show diff only").click()
        page.get_by_text("Artifacts", exact=True).click()
        expect(page.get_by_text("Select a file to preview").first).to_be_hidden()  # collapsed before measuring
        # the app scrolls inside <main>: grow the window to its full height so the screenshot holds everything
        extra = page.evaluate("() => { const m = document.querySelector('main'); return m.scrollHeight - m.clientHeight }")
        page.set_viewport_size({"width": 1600, "height": 900 + max(0, extra)})
        page.wait_for_timeout(500)  # the plot redraws at the new size
        for metric in METRICS:  # still there after the changes
            expect(page.get_by_role("link", name=metric, exact=True)).to_be_visible()
        page.screenshot(path=str(_shot("mlflow_compare.png", tmp_path)), full_page=True)
