"""The ``clinical-lstm`` command. Thin: parse arguments, call :mod:`clinical_lstm.workflow`, print.

Bad input (missing paths, wrong columns, unreadable files, bad configs) prints one sentence to stderr and
exits with code 2, without a traceback. Heavy libraries (torch, scikit-learn) load only in the commands that
need them, so ``prepare`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2


def _data_args(p: argparse.ArgumentParser, labels: bool = True):
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="PhysioNet-2012 set folder or .tar.gz, or long-format .csv/.parquet "
                        "(stay_id,time,variable,value); repeat for several; 'sample' = the bundled sample")
    if labels:
        p.add_argument("--labels", metavar="FILE", help="CSV/Parquet with stay_id,label (0/1)")
        p.add_argument("--outcomes", metavar="FILE", help="PhysioNet Outcomes-<x>.txt (default: found beside the set)")


def _paths(values):
    from .sample import resolve_data

    return [resolve_data(v) for v in values]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="clinical-lstm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"clinical-lstm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="validate and grid data; write grid Parquet + quality report")
    _data_args(p)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", metavar="FILE", help="TOML config (its [data] section applies)")

    p = sub.add_parser("train", help="train, calibrate, compare with baselines, write a model bundle")
    _data_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--config", metavar="FILE", help="TOML config; see pipelines/configs/")
    p.add_argument("--test", action="append", metavar="PATH", help="separate labelled test data for the report")
    p.add_argument("--test-labels", metavar="FILE", help="labels for --test data")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's tracking.experiment)")
    p.add_argument("--no-tracking", action="store_true", help="do not log an MLflow run")

    p = sub.add_parser("evaluate", help="metrics, subgroups and plots of a model on labelled data")
    p.add_argument("--model", required=True, metavar="MODEL", help="bundle directory or MLflow model URI")
    _data_args(p)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")

    p = sub.add_parser("score", help="risk for every stay; rejects and summary beside the output")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="bundle directory, or MLflow URI such as models:/clinical-lstm@champion or runs:/ID/model")
    _data_args(p, labels=False)
    p.add_argument("--out", required=True, metavar="FILE", help="output .parquet or .csv")
    p.add_argument("--explain", type=int, default=0, metavar="K",
                   help="add each stay's top-K variables with signed SHAP contributions (log-odds)")
    p.add_argument("--chunk-stays", type=int, default=2000, metavar="N",
                   help="stays per chunk: bounds memory and is the unit of resume (default 2000)")
    p.add_argument("--catalogue", metavar="FILE",
                   help="catalogue CSV the data follow ('default' = the built-in PhysioNet one); a model "
                        "trained on another catalogue is refused with exit code 2")
    p.add_argument("--workers", type=int, metavar="N",
                   help="chunks scored at once, one thread each (default: CPU count, at most 4)")
    p.add_argument("--restart", action="store_true",
                   help="discard an unfinished earlier run of this job instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")

    p = sub.add_parser("explain", help="per-variable SHAP contributions, stay plots and global importance")
    p.add_argument("--model", required=True, metavar="MODEL", help="bundle directory or MLflow model URI")
    _data_args(p, labels=False)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--stay", type=int, action="append", metavar="ID", help="draw this stay (repeatable; "
                   "default: the three highest-risk stays)")
    p.add_argument("--top", type=int, default=None, metavar="K", help="keep the K largest contributions per stay")
    p.add_argument("--permutations", type=int, default=8, help="permutations per stay (default 8)")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")

    p = sub.add_parser("sweep", help="grid or random search as nested MLflow runs under one parent run")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="TOML with a [sweep] section (data, out, method, n_trials, [sweep.grid]) and base settings")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's tracking.experiment)")

    p = sub.add_parser("demo", help="train and score on the bundled PhysioNet sample")
    p.add_argument("--out", default="runs/demo", metavar="DIR")
    p.add_argument("--no-tracking", action="store_true", help="do not log an MLflow run")

    p = sub.add_parser("ui", help="MLflow tracking server and UI over the local store, on 127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--store", default=".", metavar="DIR", help="folder holding mlflow/ (default: current)")

    p = sub.add_parser("export", help="the network as ONNX (or TorchScript) with its input contract, for "
                                      "edge runtimes")
    p.add_argument("--model", required=True, metavar="MODEL", help="bundle directory or MLflow model URI")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output file (.onnx or .pt); the contract is embedded and also written to FILE.json")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    return parser


def cmd_prepare(a) -> int:
    from .config import load_config
    from .workflow import prepare

    res = prepare(_paths(a.data), a.out, a.labels, a.outcomes, load_config(a.config))
    print(res.report)
    print(f"wrote {res.n_stays} stays to {res.out_dir}/grid.parquet in {res.seconds:.2f} s")
    return 0


def cmd_train(a) -> int:
    from .config import load_config
    from .workflow import train

    cfg = load_config(a.config)
    res = train(_paths(a.data), a.out, a.labels, a.outcomes, cfg,
                test_data=_paths(a.test) if a.test else None, test_labels=a.test_labels,
                progress=not a.no_progress, tracking=_tracking(a))
    print(res.report)
    print(res.comparison())
    print(f"model bundle: {res.out_dir}  (report: {res.out_dir / 'report'})")
    return 0


def _tracking(a):
    if a.no_tracking:
        return False
    from .tracking import Tracker

    return Tracker(experiment=getattr(a, "experiment", None))


def cmd_sweep(a) -> int:
    import tomllib

    from .config import Config
    from .workflow import sweep

    path = Path(a.config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    doc = tomllib.loads(path.read_text())
    spec = doc.pop("sweep", None)
    if not spec or "grid" not in spec or "data" not in spec:
        raise ValueError(f"{path} needs a [sweep] section with data = [...] and a [sweep.grid] table")
    summary = sweep(_paths(spec["data"]), spec.get("out", "runs/sweep"), Config.from_dict(doc, source=str(path)),
                    spec["grid"], spec.get("method", "grid"), spec.get("n_trials"), spec.get("seed", 0),
                    labels=spec.get("labels"), experiment=a.experiment)
    best = summary["best"]
    print(f"best trial {best['trial']}: {best['overrides']} validation AUPRC {best['validation_auprc']:.4f}")
    return 0


def cmd_explain(a) -> int:
    from .workflow import explain

    files = explain(a.model, _paths(a.data), a.out, stays=a.stay, top=a.top, n_permutations=a.permutations,
                    fmt=a.format)
    for name, path in files.items():
        print(f"{name:<18} {path}")
    return 0


def cmd_export(a) -> int:
    from .export import export_model

    try:
        summary = export_model(a.model, a.out, a.format, a.opset)
    except ImportError as exc:  # onnx / onnxruntime not installed
        print(f"clinical-lstm export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(a) -> int:
    from .workflow import evaluate_model

    res = evaluate_model(a.model, _paths(a.data), a.out, a.labels, a.outcomes, a.n_boot)
    for k, e in res["metrics"].items():
        print(f"{k:<16} {e}")
    print(f"wrote metrics, subgroups and plots to {a.out}")
    return 0


def _keep_freed_memory() -> None:
    """glibc: keep freed memory for reuse instead of returning it to the kernel after every chunk (each chunk
    allocates the same large arrays again; refaulting them cost a quarter of the job's system time)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 256 << 20)


def cmd_score(a) -> int:
    from .workflow import score

    _keep_freed_memory()

    summary = score(a.model, _paths(a.data), a.out, explain=a.explain, chunk_stays=a.chunk_stays,
                    catalogue=a.catalogue, restart=a.restart, progress=not a.no_progress,
                    workers=a.workers)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_demo(a) -> int:
    from .config import Config
    from .sample import sample_path
    from .workflow import score, train

    out = Path(a.out)
    res = train([sample_path()], out / "model", config=Config(), progress=sys.stderr.isatty(),
                tracking=_tracking(a))
    print(res.comparison())
    summary = score(out / "model", [sample_path()], out / "scores.parquet", log=lambda _: None)
    print(f"scored {summary['scored']} stays, rejected {summary['rejected']} -> {out / 'scores.parquet'}")
    return 0


def cmd_ui(a) -> int:
    import os

    from .tracking import local_store

    backend, artifacts = local_store(a.store)
    print(f"MLflow UI on http://127.0.0.1:{a.port} over {backend} (Ctrl-C stops it)")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                               "--default-artifact-root", artifacts, "--host", "127.0.0.1", "--port", str(a.port)])
    return 0  # not reached


COMMANDS = {"prepare": cmd_prepare, "train": cmd_train, "evaluate": cmd_evaluate, "score": cmd_score,
            "demo": cmd_demo, "ui": cmd_ui, "sweep": cmd_sweep, "explain": cmd_explain,
            "export": cmd_export}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .sources import DataError

    try:
        return COMMANDS[args.command](args)
    except (DataError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        print(f"clinical-lstm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # bad configs and parameters raise ValueError with the fix in the message
        print(f"clinical-lstm {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
