"""The CLI end to end, in real subprocesses, on the bundled sample."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from helpers import run_cli

SAMPLE_STAYS = 500  # clinical_lstm/data/sample/set-a500.tar.gz
FAST = """
[train]
epochs = 4
patience = 2
[model]
hidden_size = 16
[evaluation]
n_boot = 100
"""


run = run_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "fast.toml").write_text(FAST)
    res = run("train", "--data", "sample", "--out", str(root / "run"), "--config", str(root / "fast.toml"),
              "--no-progress", "--no-tracking")
    assert res.returncode == 0, res.stderr
    return root, res


def test_train_writes_bundle_and_report_apart_and_prints_comparison(trained):
    root, res = trained
    assert sorted(p.name for p in (root / "run" / "model").iterdir()) == [
        "bundle.json", "catalogue.csv", "transformer.json", "weights.safetensors"]  # the bundle names no stay
    for name in ("roc.png", "pr.png", "calibration.png", "comparison.png", "subgroups.csv", "metrics.json",
                 "quality_report.json", "rejects.csv", "out_of_fold.parquet"):
        assert (root / "run" / "report" / name).is_file(), name
    oof = pl.read_parquet(root / "run" / "report" / "out_of_fold.parquet")
    assert oof.height == SAMPLE_STAYS and sorted(oof["fold"].unique().to_list()) == [0, 1, 2, 3, 4]
    for model in ("masked LSTM", "logistic regression", "gradient boosting", "SAPS-I", "paired difference"):
        assert model in res.stdout
    assert "(" in res.stdout and "–" in res.stdout  # intervals printed
    metrics = json.loads((root / "run" / "report" / "metrics.json").read_text())
    auroc = metrics["models"]["masked LSTM"]["auroc"]
    assert auroc["lower"] <= auroc["value"] <= auroc["upper"]
    assert metrics["shipped"] == "masked LSTM + summaries"
    assert set(metrics["differences"]) == {"masked LSTM", "summaries-only stack", "logistic regression",
                                           "gradient boosting", "SAPS-I"}
    assert "out of fold" in metrics["evaluated_on"]
    # every hour: each row of the report at 6 ... 48 h, with the lead over the summaries-only stack, a plot, a table
    assert list(metrics["hours"]) == ["6", "12", "24", "36", "48"]
    for h, row in metrics["hours"].items():
        assert set(row["models"]) == {"masked LSTM + summaries", "masked LSTM", "summaries-only stack",
                                      "logistic regression", "gradient boosting"}, h
        assert "summaries-only stack" in row["differences"] and 0 < row["stays"] <= SAMPLE_STAYS
        assert abs(row["mean_risk"]["masked LSTM + summaries"] - row["event_rate"]) < 0.05, h  # calibrated there
    for name in ("hours.png", "hours.csv", "stacking.csv"):
        assert (root / "run" / "report" / name).is_file(), name
    assert "every hour" in res.stdout
    assert not list((root / "run").glob(".model.*")), "temporary bundle directory left behind"


def test_score_accounts_for_every_stay(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "scores.parquet"
    res = run("score", "--model", str(root / "run"), "--data", "sample", "--out", str(out))
    assert res.returncode == 0, res.stderr
    scores = pl.read_parquet(out)
    rejects = pl.read_parquet(tmp_path / "scores.parquet.rejects.parquet")
    summary = json.loads((tmp_path / "scores.parquet.summary.json").read_text())
    assert scores.height == SAMPLE_STAYS == summary["stays_read"] == summary["scored"] + rejects.height
    assert scores["stay_id"].n_unique() == scores.height
    assert sorted(scores.filter(pl.col("risk").is_null())["stay_id"].to_list()) == sorted(rejects["stay_id"].to_list())
    scores = scores.filter(pl.col("risk").is_not_null())
    assert scores["risk"].is_between(0, 1).all()
    assert res.stdout == ""  # the summary stays in its file unless --json
    closing = res.stderr.strip().splitlines()[-1]
    assert closing.startswith(f"{SAMPLE_STAYS} stays read:") and closing.endswith(f"-> {out}")
    assert closing.count("stays/s") == 1
    threshold = json.loads((root / "run" / "model" / "bundle.json").read_text())["threshold"]
    assert (scores["flag"] == (scores["risk"] >= threshold)).all()
    quiet = run("score", "--model", str(root / "run"), "--data", "sample", "--out", str(tmp_path / "q.parquet"), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == ""


def test_score_csv_output(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "scores.csv"
    res = run("score", "--model", str(root / "run"), "--data", "sample", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert pl.read_csv(out).height == SAMPLE_STAYS
    assert (tmp_path / "scores.csv.rejects.csv").is_file()


def test_evaluate_writes_metrics_and_plots(trained, tmp_path):
    root, _ = trained
    res = run("evaluate", "--model", str(root / "run"), "--data", "sample", "--out", str(tmp_path / "ev"),
              "--n-boot", "50")
    assert res.returncode == 0, res.stderr
    assert "auroc" in res.stdout
    for name in ("metrics.json", "roc.png", "subgroups.csv"):
        assert (tmp_path / "ev" / name).is_file()
    # the model was trained on these very stays: said, in the output and in metrics.json (train refuses a --test
    # that shares stays; a partial overlap is counted: the next test)
    said = "the model's own training stays: in-sample, not held-out performance"
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert said in res.stdout and said in metrics["evaluated_on"]
    # every hour of the model's [evaluation] hours, from the rows up to it: the same risks the trajectory gives
    assert list(metrics["hours"]) == ["6", "12", "24", "36", "48"] and (tmp_path / "ev" / "hours.png").is_file()
    assert set(metrics["hours"]["12"]["models"]) == {"masked LSTM + summaries", "masked LSTM", "summaries-only stack",
                                                     "logistic regression", "gradient boosting"}  # the bundle's references
    from clinical_lstm import bundled_sample, load_data, load_model

    model = load_model(root / "run")
    traj = model.trajectory(load_data(bundled_sample())).filter(pl.col("hour") == 12.0)
    assert metrics["hours"]["12"]["stays"] == traj.height
    assert metrics["hours"]["12"]["mean_risk"]["masked LSTM + summaries"] == pytest.approx(traj["risk"].mean(),
                                                                                          abs=1e-9)
    other = run("evaluate", "--model", str(root / "run"), "--data", "sample", "--out", str(tmp_path / "ev2"),
                "--n-boot", "20", "--hours", "3", "30", "500")  # 500 h lies past the 48-hour window: left out
    assert other.returncode == 0, other.stderr
    assert list(json.loads((tmp_path / "ev2" / "metrics.json").read_text())["hours"]) == ["3", "30"]


def test_evaluate_on_part_of_the_training_stays_counts_them_without_keeping_their_ids(trained, tmp_path):
    """40 of the 500 training stays once evaluated as if held out (AUROC 0.988, no note): the bundle keeps a salted
    hash of each training stay's id and rows (never the ids) and evaluate counts the overlap."""
    from clinical_lstm import bundled_sample, load_data
    from clinical_lstm.jobs import evaluate

    root, _ = trained
    long = load_data(bundled_sample()).long
    ids = long["stay_id"].unique().sort().to_list()
    seen, changed = ids[:40], ids[40:45]
    part = long.filter(pl.col("stay_id").is_in(seen + changed)).with_columns(  # 5 stays with one HR value moved
        pl.when(pl.col("stay_id").is_in(changed) & (pl.col("variable") == "HR")).then(pl.col("value").cast(pl.Float64)
                                                                                     + 1.0)
        .otherwise(pl.col("value").cast(pl.Float64)).alias("value"), pl.col("time").cast(pl.Float64, strict=False))
    part.write_csv(tmp_path / "part.csv")
    labels = pl.DataFrame({"stay_id": seen + changed, "label": [i % 2 for i in range(45)]})
    labels.write_csv(tmp_path / "labels.csv")
    ev = evaluate(str(root / "run"), tmp_path / "part.csv", tmp_path / "ev", tmp_path / "labels.csv", n_boot=20,
                  hours=[12])
    assert ev.in_training == 40
    assert "40 of them were among the model's training stays (same id and rows): partly in-sample" in ev.on
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["stays_in_training"] == 40
    bundle = (root / "run" / "model" / "bundle.json").read_text()
    kept = json.loads(bundle)["training_data"]["stay_hashes"]
    assert set(kept) == {"salt", "sha256_8"} and len(kept["sha256_8"]) == 4 * ((SAMPLE_STAYS * 8 + 2) // 3)
    assert not [s for s in ids if re.search(rf"(?<![0-9.]){s}(?![0-9])", bundle)]  # no training id in the bundle


def test_prepare_writes_grid_and_report(tmp_path):
    res = run("prepare", "--data", "sample", "--out", str(tmp_path / "prep"))
    assert res.returncode == 0, res.stderr
    grid = pl.read_parquet(tmp_path / "prep" / "grid.parquet")
    assert grid["stay_id"].n_unique() == SAMPLE_STAYS
    assert {"HR", "HR__hours_since", "Urine", "hour_end"} <= set(grid.columns)
    assert grid["HR__hours_since"].drop_nulls().min() >= 0
    report = json.loads((tmp_path / "prep" / "quality_report.json").read_text())
    assert report["stays"]["read"] == SAMPLE_STAYS


def test_prepare_does_not_import_torch(tmp_path):
    code = ("import sys; from clinical_lstm.cli import main; main(['prepare','--data','sample','--out',"
            f"{str(tmp_path / 'p')!r}]); print('torch' in sys.modules, 'sklearn' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("args, message", [
    (["prepare", "--data", "no/such/set", "--out", "x"], "data path no/such/set does not exist"),
    (["score", "--model", "no/such/model", "--data", "sample", "--out", "s.parquet"],
     "model no/such/model does not exist"),
    (["explain", "--model", "no/such/model", "--data", "sample", "--out", "e"], "model no/such/model does not exist"),
    (["score", "--model", "empty", "--data", "sample", "--out", "s.parquet"], "empty is not a clinical-lstm model bundle"),
    (["train", "--data", "sample", "--out", "m", "--config", "missing.toml"], "config file missing.toml does not exist"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    res = run(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


def test_wrong_columns_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("stay,hours,name,val\n1,0.5,HR,80\n")
    res = run("prepare", "--data", str(bad), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "lacks column(s) ['stay_id', 'time', 'variable', 'value']" in res.stderr
    assert "Traceback" not in res.stderr


def test_train_without_labels_exit_2(tmp_path):
    long = tmp_path / "long.csv"
    long.write_text("stay_id,time,variable,value\n1,0.5,HR,80\n2,1.5,HR,90\n")
    res = run("train", "--data", str(long), "--out", str(tmp_path / "m"))
    assert res.returncode == 2
    assert "no outcome labels" in res.stderr


def test_unknown_config_key_exit_2(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nhiden_size = 3\n")
    res = run("train", "--data", "sample", "--out", str(tmp_path / "m"), "--config", str(cfg))
    assert res.returncode == 2
    assert "unknown key(s) ['hiden_size'] in [model]" in res.stderr


def test_every_toml_the_repo_ships_loads():
    from clinical_lstm.config import load

    root = Path(__file__).parents[1]
    configs = sorted([*root.joinpath("pipelines", "configs").glob("*.toml"), *root.joinpath("mlflow", "configs").glob("*.toml")])
    assert len(configs) >= 6
    for path in configs:
        text = path.read_text()
        assert text.startswith("# ") and any(cmd in text.split("\n\n")[0] for cmd in ("pipelines/", "clinical-lstm ",
                                                                                         "mlflow run")), \
            f"{path} must open with the command that runs it"
        load(path)  # every section and key checked


@pytest.mark.parametrize("setting, message", [
    ("[calibration]\nmethod = \"platt2\"", "[calibration] method must be one of ('platt', 'isotonic'); got 'platt2'"),
    ("[train]\nepochs = -3", "[train] epochs must be >= 1; got -3"),
    ("[data]\nimputation = \"mean\"", "[data] imputation must be one of"),
    ("[train]\npos_weight = \"inverse\"", "[train] pos_weight must be one of"),
    ("[job]\nchunk_stays = 0", "[job] chunk_stays must be >= 1; got 0"),
])
def test_a_bad_config_value_fails_in_seconds_before_any_data_is_read(tmp_path, setting, message):
    import time

    cfg = tmp_path / "c.toml"
    cfg.write_text(setting + "\n")
    t0 = time.monotonic()
    res = run("train", "--data", "sample", "--out", str(tmp_path / "m"), "--config", str(cfg), "--no-tracking")
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 30 and not (tmp_path / "m").exists()


def test_pipeline_and_cli_train_are_one_job(tmp_path):
    """`python pipelines/train.py --config` and `clinical-lstm train --config` give the same bundle."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('[job]\ndata = ["sample"]\ntracking = false\n[model]\nhidden_size = 8\n[train]\nfolds = 2\n'
                   'epochs = 1\n[evaluation]\nn_boot = 20\nexplain_stays = 0\n')
    script = Path(__file__).parents[1] / "pipelines" / "train.py"
    a = subprocess.run([sys.executable, str(script), "--config", str(cfg), "--out", str(tmp_path / "a")],
                       capture_output=True, text=True, timeout=600)
    b = run("train", "--config", str(cfg), "--out", str(tmp_path / "b"))
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    from safetensors.numpy import load_file

    wa, wb = (load_file(tmp_path / d / "model" / "weights.safetensors") for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    ja, jb = (json.loads((tmp_path / d / "model" / "bundle.json").read_text()) for d in ("a", "b"))
    assert ja["threshold"] == jb["threshold"] and ja["calibrator"] == jb["calibrator"]


def test_explain_writes_table_and_plots(trained, tmp_path):
    root, _ = trained
    res = run("explain", "--model", str(root / "run"), "--data", "sample", "--out", str(tmp_path / "ex"),
              "--stay", "132592", "--top", "4", "--permutations", "2", "--format", "csv")
    assert res.returncode == 0, res.stderr
    table = pl.read_csv(tmp_path / "ex" / "explanations.csv")
    assert table.columns == ["stay_id", "variable", "contribution", "rank", "base_value", "model_output"]
    assert table.group_by("stay_id").len()["len"].max() == 4
    for name in ("global_importance.png", "stay_132592.png"):
        assert (tmp_path / "ex" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rejects = pl.read_csv(tmp_path / "ex" / "rejects.csv")
    assert table["stay_id"].unique().to_list() == [132592] and rejects.height == 0  # the stay asked for, alone
    assert "1 stay explained, 0 rejected (the requested stays of 500 read)" in res.stdout
    assert "explained 1/1 stays (100 %)" in res.stdout  # a job log (not a terminal) gets progress lines


@pytest.mark.parametrize("args, message", [
    (["--stay", "1"], "stay(s) 1 (not in the data) cannot be drawn"),
    (["--top", "-1"], "--top must be at least 1"),
    (["--permutations", "1"], "--permutations must be at least 2"),
])
def test_explain_checks_everything_before_writing_anything(trained, tmp_path, args, message):
    root, _ = trained
    res = run("explain", "--model", str(root / "run"), "--data", "sample", "--out", str(tmp_path / "ex"), *args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "ex").exists()


def test_explain_when_no_stay_can_be_explained_is_exit_2_with_the_reasons(trained, tmp_path):
    root, _ = trained
    (tmp_path / "statics.csv").write_text("stay_id,time,variable,value\n5,0,Age,60\n6,0,Age,70\n")
    res = run("explain", "--model", str(root / "run"), "--data", str(tmp_path / "statics.csv"),
              "--out", str(tmp_path / "ex"))
    assert res.returncode == 2 and "none of the 2 stays can be explained" in res.stderr
    assert "no_time_series 2" in res.stderr and not (tmp_path / "ex").exists()


def test_test_data_that_overlaps_the_training_data_is_refused(tmp_path):
    res = run("train", "--data", "sample", "--test", "sample", "--out", str(tmp_path / "m"), "--no-tracking")
    assert res.returncode == 2 and "shares 500 of its 500 stays with the training data" in res.stderr
    assert not (tmp_path / "m" / "model").exists()


def test_score_with_top_k_explanations(trained, tmp_path):
    root, _ = trained
    out = tmp_path / "s.parquet"
    res = run("score", "--model", str(root / "run"), "--data", "sample", "--out", str(out), "--explain", "2")
    assert res.returncode == 0, res.stderr
    scores = pl.read_parquet(out)
    assert {"top1_variable", "top1_contribution", "top2_variable", "top2_contribution"} <= set(scores.columns)
    assert (scores["top1_contribution"].abs() >= scores["top2_contribution"].abs()).all()
    assert scores.height == SAMPLE_STAYS


def test_score_pipeline_job_with_options_and_closing_summary(trained, tmp_path):
    """`python pipelines/score.py --config` (the nightly job) with explain, chunking and the catalogue check."""
    root, _ = trained
    out = tmp_path / "night.parquet"
    job = (f'[job]\nmodel = "{root / "run"}"\ndata = ["sample"]\nout = "{out}"\ncatalogue = "default"\n'
           f"chunk_stays = 150\nexplain = 2\n")
    (tmp_path / "job.toml").write_text(job)
    script = Path(__file__).parents[1] / "pipelines" / "score.py"
    res = subprocess.run([sys.executable, str(script), "--config", str(tmp_path / "job.toml")], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "night.parquet.summary.json").read_text())
    assert summary["chunks"] == 4 and summary["stays_read"] == SAMPLE_STAYS == summary["scored"] + summary["rejected"]
    assert f"{SAMPLE_STAYS} stays read" in res.stderr  # the closing line
    scores = pl.read_parquet(out)
    assert {"top1_variable", "top2_contribution", "quality_flags", "model", "scored_at"} <= set(scores.columns)

    (tmp_path / "bad.toml").write_text(job.replace('catalogue = "default"', f'catalogue = "{tmp_path / "c.csv"}"'))
    from clinical_lstm.data.catalogue import Catalogue

    (tmp_path / "c.csv").write_text(Catalogue.default().to_csv_text().replace("Lactate,mmol/L,0.1", "Lactate,mmol/L,0.2"))
    res = subprocess.run([sys.executable, str(script), "--config", str(tmp_path / "bad.toml")], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 2 and "mismatch" in res.stderr and "Lactate" in res.stderr


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_an_output_folder_inside_an_input_folder_is_refused(physionet_set, command):
    """`--out set-x/` would write files among the stay files (and a re-run would read them as members)."""
    folder = physionet_set({140001: [("01:00", "HR", "80")]})
    before = sorted(p.name for p in folder.iterdir())
    res = run(command, "--data", str(folder), "--out", str(folder / "out"), *(["--no-tracking"] if command == "train"
                                                                                else []))
    assert res.returncode == 2 and "lies inside the input folder" in res.stderr
    assert sorted(p.name for p in folder.iterdir()) == before


def test_quiet_is_a_general_option_that_prints_nothing(trained, tmp_path):
    root, _ = trained
    jobs = [("prepare", "--data", "sample", "--out", str(tmp_path / "p")),
            ("evaluate", "--model", str(root / "run"), "--data", "sample", "--out", str(tmp_path / "ev"),
             "--n-boot", "20"),
            ("explain", "--model", str(root / "run"), "--data", "sample", "--out", str(tmp_path / "ex"),
             "--stay", "132592", "--permutations", "2")]
    for args in jobs:
        res = run(*args, "--quiet")
        assert res.returncode == 0, res.stderr
        assert res.stdout == "" and res.stderr == "", (args[0], res.stdout[-300:], res.stderr[-300:])
    assert (tmp_path / "p" / "cohort.json").is_file() and (tmp_path / "ex" / "stay_132592.png").is_file()


def test_a_mistyped_option_shows_the_commands_usage_and_the_closest_option(tmp_path):
    res = run("score", "--explian", "3", "--model", "m", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith("usage: clinical-lstm score ")  # the command's usage, not the top-level one
    assert lines[-1] == ("clinical-lstm score: error: unrecognized arguments: --explian 3 "
                         "(did you mean --explain?)")
    res = run("explain", "--stays", "1", "--permutatons", "4", cwd=tmp_path)
    assert res.stderr.splitlines()[-1].endswith("(--stays: did you mean --stay?; --permutatons: did you mean "
                                                "--permutations?)")
    res = run("scroe", "--model", "m", cwd=tmp_path)
    assert res.returncode == 2
    assert "unknown command 'scroe' (did you mean 'score'?)" in res.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["ui", "promote", "score", "demo"])
def test_every_command_answers_dash_h_with_its_usage(command):
    res = run(command, "-h")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"usage: clinical-lstm {command} ")


def test_score_help_says_what_explain_costs():
    res = run("score", "--help")
    text = " ".join(res.stdout.split())
    assert "--explain K" in text and "CPU time of scoring alone" in text and "clinical-lstm explain --stay ID" in text


def test_ui_dash_h_with_a_value_is_refused_not_read_as_help_or_host():
    res = run("ui", "-h", "0.0.0.0")
    assert res.returncode == 2 and "the address to bind is --host HOST" in res.stderr.splitlines()[-1]
