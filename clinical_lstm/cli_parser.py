"""The command line's grammar: every ``clinical-lstm`` command, its options and their help (``build_parser``);
:mod:`clinical_lstm.cli` runs what it parses.
"""

from __future__ import annotations

import argparse

DESCRIPTIONS = {
    "prepare": "validate and grid data; write the grid as Parquet and the data-quality report",
    "train": "cross-fit the model on labelled stays, calibrate it, compare it with the baselines, write "
             "model/ and report/, log an MLflow run and register the model",
    "evaluate": "metrics with intervals, subgroups and plots of a trained model on labelled data",
    "score": "risk for every stay of a hospital's extract, in resumable chunks; rejects and a summary beside it",
    "explain": "per-variable SHAP contributions, a plot per stay and the global importance",
    "export": "the model's logit as ONNX (or TorchScript) with its input contract, for edge runtimes",
    "sweep": "an Optuna study (TPE, median pruning; workers share one study through --storage), each trial a "
             "nested MLflow run under one parent run; the best trial's model is registered",
    "demo": "train on the bundled PhysioNet sample, then score it (a first look, in about a minute)",
    "ui": "the MLflow tracking server and UI over the local store, on 127.0.0.1",
    "promote": "make a registered model version the champion by hand (train moves the alias itself only between "
               "versions validated on the same training data)",
}


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default when it has one worth showing (not None, not a flag's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="clinical-lstm", formatter_class=_Help,
        description="In-hospital mortality risk from irregular ICU vital signs and labs: a masked LSTM over "
                    "a time grid with observation masks and real elapsed time, tracked in MLflow.",
        epilog="Run 'clinical-lstm COMMAND --help' for a command's options. Docs: README.md and docs/.")
    parser.add_argument("--version", action="version", version=f"clinical-lstm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parser.commands = sub.choices  # each command's parser: its usage and options for a mistyped option

    def command(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=DESCRIPTIONS[name], description=DESCRIPTIONS[name], formatter_class=_Help)

    def config(p, what="library sections and a [job] section; options here win"):
        p.add_argument("--config", metavar="FILE", help=f"TOML config ({what}); see pipelines/configs/")

    def data(p, labels: bool = True, required: bool = False, prepared: bool = False):
        p.add_argument("--data", action="append", metavar="PATH", required=required,
                       help="PhysioNet-2012 set folder or .tar.gz, or long-format .csv/.parquet "
                            "(stay_id,time,variable,value); repeat for several; 'sample' = the bundled sample"
                            + ("; or a folder 'clinical-lstm prepare' wrote" if prepared else ""))
        if labels:
            p.add_argument("--labels", metavar="FILE", help="CSV/Parquet with columns stay_id,label (0/1)")
            p.add_argument("--outcomes", metavar="FILE",
                           help="PhysioNet Outcomes-<x>.txt (default: found beside the set)")

    def model(p):
        p.add_argument("--model", metavar="MODEL", help="run folder or bundle directory, or an MLflow model URI "
                       "such as models:/clinical-lstm@champion or runs:/ID/model")

    def quiet(p):
        p.add_argument("--quiet", action="store_true", help="print nothing but errors (no progress bars, "
                                                             "MLflow's included)")

    p = command("prepare")
    data(p)
    p.add_argument("--out", metavar="DIR", help="folder for grid.parquet, statics.parquet, the quality report and "
                                                "the grid as parts/ that 'train --data DIR' reads")
    config(p, "its [data] section applies")
    quiet(p)

    p = command("train")
    data(p, prepared=True)
    p.add_argument("--out", metavar="DIR", help="run folder to write: model/ (the bundle) and report/")
    config(p)
    p.add_argument("--test", action="append", metavar="PATH",
                   help="separate labelled test data for the report (default: out-of-fold metrics)")
    p.add_argument("--test-labels", metavar="FILE", help="labels for the --test data")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's [tracking] experiment)")
    p.add_argument("--no-tracking", action="store_true", help="do not log an MLflow run or register the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (the results are still printed)")
    quiet(p)

    p = command("evaluate")
    model(p)
    data(p, prepared=True)
    p.add_argument("--out", metavar="DIR", help="folder for metrics.json, plots and subgroups")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates for the intervals")
    p.add_argument("--hours", type=float, nargs="+", metavar="H",
                   help="also score each stay from its rows up to each of these hours (default: the model's "
                        "[evaluation] hours, 6 12 24 36 48)")
    quiet(p)

    p = command("score")
    model(p)
    data(p, labels=False)
    p.add_argument("--out", metavar="FILE", help="output .parquet or .csv (rejects and summary beside it)")
    config(p, "a [job] section: model, data, out, catalogue, chunk_stays, workers, explain")
    p.add_argument("--explain", type=int, metavar="K", help="add each stay's top-K variables with signed SHAP "
                   "contributions (log-odds) [default: 0]. Costly: SHAP evaluates the model on many coalitions "
                   "per stay (measured: about 5x the CPU time of scoring alone; docs/explain.md); for a few "
                   "stays use 'clinical-lstm explain --stay ID'")
    p.add_argument("--chunk-stays", type=int, metavar="N", help="stays per chunk: bounds memory and is the unit "
                   "of resume and of progress [default: 2000, or 100 with --explain]")
    p.add_argument("--catalogue", metavar="FILE", help="catalogue CSV the data follow ('default' = the built-in "
                   "PhysioNet one); a model trained on another catalogue is refused with exit code 2")
    p.add_argument("--workers", type=int, metavar="N", help="chunks scored at once, one thread each "
                   "[default: CPU count, at most 4]")
    p.add_argument("--restart", action="store_true", help="discard an unfinished earlier run of this job "
                                                          "instead of resuming it")
    p.add_argument("--json", action="store_true", help="also print the summary JSON (always written to "
                                                       "<out>.summary.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines (the closing "
                                                              "line is still printed)")
    quiet(p)

    p = command("explain")
    model(p)
    data(p, labels=False)
    p.add_argument("--out", metavar="DIR", help="folder for explanations.<format> and the plots")
    p.add_argument("--stay", action="append", metavar="ID",
                   help="draw this stay (repeatable) [default: the three highest-risk stays]")
    p.add_argument("--top", type=int, metavar="K", help="keep the K largest contributions per stay [default: all]")
    p.add_argument("--permutations", type=int, default=8, help="permutations per stay (antithetic pairs)")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="format of the table")
    quiet(p)

    p = command("export")
    model(p)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="graph format")
    p.add_argument("--out", metavar="FILE", help="output file (.onnx or .pt); the input contract is embedded and "
                                                 "also written to FILE.json")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    quiet(p)

    p = command("sweep")
    config(p, "a [sweep] section (data, out, method, n_trials, seed, [sweep.grid] lists, [sweep.space] ranges) "
              "and base settings")
    p.add_argument("--storage", metavar="URL", help="Optuna storage, any SQLAlchemy URL (sqlite:///study.db, "
                   "postgresql://user@host/db); processes started with the same --storage and --study work on one "
                   "study together [default: in memory, this process only]")
    p.add_argument("--study", metavar="NAME", help="Optuna study name; an existing study in --storage is resumed "
                   "[default: the config file's name]")
    p.add_argument("--n-trials", type=int, metavar="N", help="trials of the whole study, every worker together "
                   "[default: the config's n_trials, else the size of the grid]")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's [tracking] experiment; a worker "
                                        "joining a study uses its parent run's)")
    quiet(p)

    p = command("demo")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="run folder: model/, report/, scores")
    p.add_argument("--no-tracking", action="store_true", help="do not log an MLflow run")
    quiet(p)

    p = command("ui")
    p.add_argument("--port", type=int, default=5000, help="port to listen on")
    p.add_argument("--store", default=".", metavar="DIR", help="folder holding mlflow/ (the local store)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback needs "
                                                       "--allow-remote (the server has no authentication)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")

    p = command("promote")
    p.add_argument("version", type=int, help="the registered model version to make champion")
    p.add_argument("--name", default="clinical-lstm", help="registered model name (the config's [tracking] "
                                                           "registered_model)")
    return parser
