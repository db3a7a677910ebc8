"""Plain helpers that build tiny synthetic inputs for tests (importable as ``from helpers import ...``).

``write_physionet_set`` writes a PhysioNet Challenge 2012 layout: a set folder ``set-<name>/`` holding one
``<RecordID>.txt`` per stay (header ``Time,Parameter,Value``, ``HH:MM`` times, the ``00:00`` descriptor rows
``RecordID, Age, Gender, Height, ICUType, Weight`` then time-series rows), ``Outcomes-<name>.txt`` beside it,
and optionally packs the folder as ``set-<name>.tar.gz`` the way PhysioNet ships it.

``raw_data`` builds a :class:`clinical_lstm.data.sources.RawData` straight from ``(stay_id, time, variable,
value)`` tuples, with text ``time``/``value`` columns exactly as the text readers produce them.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from clinical_lstm.data.sources import RawData

HEADER = "Time,Parameter,Value"
OUTCOMES_HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
DEFAULT_DESCRIPTORS = {"Age": "64", "Gender": "1", "Height": "172.7", "ICUType": "3", "Weight": "81.5"}
# SAPS-I, SOFA, Length_of_stay, Survival, In-hospital_death
DEFAULT_OUTCOME = (15, 4, 9, -1, 0)
README_TEXT = b"Synthetic PhysioNet-layout test set. Not a stay file.\n"

Row = tuple[str, str, object]  # (HH:MM time, parameter, value)


def stay_text(record_id: int, rows: Iterable[Row] = (), descriptors: Mapping[str, object] | None = None,
              newline: str = "\n") -> str:
    """The text of one ``<RecordID>.txt`` file.

    ``descriptors`` overrides the default ``00:00`` descriptor values (``RecordID`` included); a value of
    None leaves that descriptor row out.
    """
    desc: dict[str, object] = {"RecordID": record_id, **DEFAULT_DESCRIPTORS, **(descriptors or {})}
    lines = [HEADER]
    lines += [f"00:00,{name},{desc[name]}" for name in DESCRIPTORS if desc.get(name) is not None]
    lines += [f"{t},{p},{v}" for t, p, v in rows]
    return newline.join(lines) + newline


def write_physionet_set(
    root: str | Path,
    stays: Mapping[int, Iterable[Row] | bytes],
    *,
    name: str = "x",
    descriptors: Mapping[int, Mapping[str, object]] | None = None,
    outcomes: Mapping[int, tuple] | None = None,
    write_outcomes: bool = True,
    extras: Mapping[str, bytes] | None = None,
    archive: bool = False,
    keep_folder: bool = False,
    newline: str = "\n",
) -> Path:
    """Write a PhysioNet 2012 set under ``root`` and return its path (the folder, or the ``.tar.gz``).

    Parameters
    ----------
    stays
        ``RecordID -> rows`` where rows are ``(time, parameter, value)`` time-series rows written after
        the descriptor rows; or ``RecordID -> bytes`` to write that file verbatim (garbage, header only).
    descriptors
        ``RecordID -> {descriptor: value}`` overrides of :data:`DEFAULT_DESCRIPTORS` (None drops a row).
    outcomes
        ``RecordID -> (SAPS-I, SOFA, Length_of_stay, Survival, In-hospital_death)``. Stays not listed get
        :data:`DEFAULT_OUTCOME`; an outcomes row is written for every stay in ``stays`` plus any extra ids.
    write_outcomes
        False writes no ``Outcomes-<name>.txt``.
    extras
        Non-stay files placed in the set folder (and archive). Default: one ``README.txt``.
    archive
        Pack the folder as ``set-<name>.tar.gz`` (members ``set-<name>/...``, as PhysioNet ships it) and
        return the archive path; the folder is removed unless ``keep_folder``.
    """
    root = Path(root)
    folder = root / f"set-{name}"
    folder.mkdir(parents=True, exist_ok=False)
    descriptors = descriptors or {}
    for rid, content in stays.items():
        target = folder / f"{rid}.txt"
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_bytes(stay_text(rid, content, descriptors.get(rid), newline).encode())
    for fname, data in ({"README.txt": README_TEXT} if extras is None else extras).items():
        (folder / fname).write_bytes(data)
    if write_outcomes:
        outcomes = dict(outcomes or {})
        ids = list(stays) + [rid for rid in outcomes if rid not in stays]
        lines = [OUTCOMES_HEADER]
        lines += [",".join(str(x) for x in (rid, *outcomes.get(rid, DEFAULT_OUTCOME))) for rid in ids]
        (root / f"Outcomes-{name}.txt").write_text("\n".join(lines) + "\n")
    if not archive:
        return folder
    tar_path = root / f"set-{name}.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    if not keep_folder:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return tar_path


RAW_SCHEMA = {"stay_id": pl.Int64, "time": pl.String, "variable": pl.String, "value": pl.String}


def raw_data(
    rows: Iterable[tuple[int, str | None, str, str | None]],
    stays: Iterable[int] | None = None,
    *,
    unreadable: Mapping[int, str] | None = None,
    labels: Mapping[int, int] | None = None,
    sources: list[str] | None = None,
) -> RawData:
    """A :class:`RawData` from ``(stay_id, time, variable, value)`` text tuples.

    ``stays`` defaults to the stays in ``rows`` plus those in ``unreadable``; ``labels`` (stay -> 0/1)
    becomes ``outcomes`` with a null ``saps_i``.
    """
    rows = list(rows)
    long = pl.DataFrame(rows, schema=RAW_SCHEMA, orient="row")
    unreadable = dict(unreadable or {})
    if stays is None:
        stays = {r[0] for r in rows} | set(unreadable)
    outcomes = None
    if labels is not None:
        outcomes = pl.DataFrame(
            {"stay_id": list(labels), "label": list(labels.values()), "saps_i": [None] * len(labels)},
            schema={"stay_id": pl.Int64, "label": pl.Int8, "saps_i": pl.Float64},
        )
    return RawData(long=long, stays=pl.Series("stay_id", sorted(set(stays)), dtype=pl.Int64),
                   outcomes=outcomes, unreadable=unreadable, sources=list(sources or ["test"]))


# -- real server processes on 127.0.0.1 (mlflow server, mlflow models serve) ----------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(cmd: list[str], cwd: Path, env: dict, probe_url: str, timeout_s: float, log_path: Path):
    """Start ``cmd`` in its own process group, wait (bounded) until ``probe_url`` answers 200, yield; then stop
    the whole group (SIGTERM, then SIGKILL for stragglers such as uvicorn workers)."""
    import signal
    import subprocess
    import time
    import urllib.error
    import urllib.request

    import pytest

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def tail() -> str:
        log.flush()
        return log_path.read_text()[-3000:]

    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{cmd[2:4]} exited with {proc.returncode}:\n{tail()}")
            try:
                with opener.open(probe_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{cmd[2:4]} did not answer {probe_url} within {timeout_s} s:\n{tail()}")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # workers leave after their parent
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


# -- a tiny untrained model on the default catalogue and long tables for it ------------------------------------
def random_long(n_stays: int, seed: int = 0, first_id: int = 1, hours: float = 48.0) -> pl.DataFrame:
    """A long table (``stay_id, time, variable, value``, floats) of ``n_stays`` plausible stays, sorted by stay."""
    import numpy as np

    rng = np.random.default_rng(seed)
    series = {"HR": (85, 15), "MAP": (80, 12), "Temp": (37, 0.7), "Lactate": (2.0, 1.0), "Glucose": (130, 40)}
    rows = []
    for sid in range(first_id, first_id + n_stays):
        rows += [(sid, 0.0, "Age", float(rng.integers(20, 90))), (sid, 0.0, "Gender", float(rng.integers(0, 2))),
                 (sid, 0.0, "ICUType", float(rng.integers(1, 5))), (sid, 0.0, "Weight", float(rng.normal(80, 15)))]
        for name, (mu, sd) in series.items():
            k = int(rng.integers(1, 12))
            for t in np.sort(rng.uniform(0, hours, k)):
                rows.append((sid, round(float(t), 3), name, round(float(abs(rng.normal(mu, sd))) + 0.1, 2)))
    return pl.DataFrame(rows, schema=["stay_id", "time", "variable", "value"], orient="row")


def tiny_model(seed: int = 0, n_networks: int = 1, head: bool = False, **model_cfg):
    """An untrained :class:`~clinical_lstm.serve.bundle.RiskModel` (hidden 8, ``model_cfg`` overrides) on the default
    catalogue: its risks differ from stay to stay, which is all that equality and accounting tests need.
    ``head=True`` adds summary members (logistic regression and boosted trees) fitted to 300 other stays whose
    label is planted in their highest lactate, a third of them without any lactate (mostly deaths): the trees
    split, several levels deep, and send missing values both ways, so a tree walk is really exercised."""
    import numpy as np
    import torch

    from clinical_lstm.data.catalogue import Catalogue
    from clinical_lstm.features.impute import GridTransformer
    from clinical_lstm.model.calibrate import PlattCalibrator
    from clinical_lstm.model.network import MaskedLSTM, ModelConfig
    from clinical_lstm.serve.bundle import RiskModel

    torch.manual_seed(seed)
    long = random_long(40, seed=seed)
    tr = GridTransformer(Catalogue.default()).fit(long, np.arange(1, 41))
    cfg = ModelConfig(**{"hidden_size": 8, **model_cfg})
    nets = [MaskedLSTM(cfg, len(tr.catalogue.series), tr.n_static_features).eval() for _ in range(n_networks)]
    cal = PlattCalibrator().fit(np.linspace(-1, 1, 40), np.tile([0, 1], 20))
    summary_head = None
    if head:
        from clinical_lstm.model.head import SummaryHead, fit_members

        rng = np.random.default_rng(seed)
        ids = np.arange(1001, 1301)
        no_lactate = rng.random(len(ids)) < 1 / 3
        big = random_long(len(ids), seed=seed + 1, first_id=int(ids[0])).filter(
            ~((pl.col("variable") == "Lactate") & pl.col("stay_id").is_in(ids[no_lactate].tolist())))
        top = dict(big.filter(pl.col("variable") == "Lactate").group_by("stay_id").agg(pl.col("value").max()).iter_rows())
        lactate = np.array([top.get(int(i), np.nan) for i in ids])
        y = np.where(no_lactate, rng.random(len(ids)) < 0.7, lactate + rng.normal(0, 0.3, len(ids)) > 2.4)
        X = tr.transform(big, ids).summary
        members = fit_members(X, y.astype(np.int64), seed)
        # the default head's shape: end-of-stay members too, and stacking weights that change with the hour
        members.update({f"e{k}": v for k, v in fit_members(X[::2], y[::2].astype(np.int64), seed + 1).items()})
        summary_head = SummaryHead(members, np.array([[1.0, 0.5, 0.5, 0.0, 0.1], [0.6, 0.3, 0.4, 0.2, 0.3]]),
                                   np.array([-0.4, -0.2]), np.array([4.0, 24.0]))
    return RiskModel(tr, nets, cal, 0.5, {"note": "tiny untrained test model"}, summary_head)


def with_conflicts(long: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """``long`` plus, for every other stay, a second time-0 Age, an exact duplicate row and a second value at
    an existing time of a series variable; rows shuffled."""

    extra = []
    for sid in long["stay_id"].unique().sort().to_list()[::2]:
        rows = long.filter(pl.col("stay_id") == sid)
        series = rows.filter(pl.col("time") > 0)
        dup = series.row(len(series) // 2)
        extra += [(sid, 0.0, "Age", 47.0), dup, (dup[0], dup[1], dup[2], dup[3] + 3.0)]
    out = pl.concat([long, pl.DataFrame(extra, schema=long.schema, orient="row")])
    return out.sample(fraction=1.0, shuffle=True, seed=seed)


def run_cli(*args, cwd=None, timeout: int = 600):
    """``clinical-lstm ARGS`` in a real subprocess (``python -m clinical_lstm.cli``), output captured as text."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "clinical_lstm.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def crash_on_call(monkeypatch, n: int, exc: BaseException | None = None) -> dict:
    """Make the ``n``-th ``RiskModel.score_table`` call (one per chunk) raise ``exc`` (default: a MemoryError, a
    crashed run); returns the call counter. How the batch tests make an unfinished run to resume."""
    from clinical_lstm.serve.bundle import RiskModel

    calls = {"n": 0}
    real = RiskModel.score_table

    def failing(self, data, explain=0):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc if exc is not None else MemoryError("simulated crash")
        return real(self, data, explain)

    monkeypatch.setattr(RiskModel, "score_table", failing)
    return calls


def save_pyfunc(bundle_dir, path) -> Path:
    """Write a bundle as an MLflow pyfunc model folder (what ``train`` logs), without a tracking store."""
    import mlflow

    from clinical_lstm.data.catalogue import Catalogue
    from clinical_lstm.tracking.pyfunc import pyfunc_spec
    from clinical_lstm.tracking.store import _quiet_artifacts

    with _quiet_artifacts():
        mlflow.pyfunc.save_model(str(path), **pyfunc_spec(bundle_dir, Catalogue.from_csv(Path(bundle_dir) / "catalogue.csv")))
    return Path(path)
