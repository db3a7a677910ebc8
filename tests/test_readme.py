"""The commands of the README and docs as written: every ``clinical-lstm`` line names a real command and real
options, no line but the set-up needs ``.venv/bin/``, and the README's first commands run as written in a fresh
shell (nothing inherited but ``PATH``) with the environment activated the way the README says."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from clinical_lstm.cli_parser import build_parser

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "mlflow" / "README.md",
        ROOT / "benchmarks" / "README.md"]
TESTED_BLOCK = "<!-- tests/test_readme.py runs this block as written, in a fresh shell, after the demo -->"
ACTIVATE = "source .venv/bin/activate"


def blocks(text: str) -> list[str]:
    """The shell code blocks of a Markdown text, continuation lines joined."""
    return [b.replace("\\\n", " ") for b in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, re.S)]


def commands(block: str) -> list[str]:
    """The command lines of a block, comments dropped."""
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line]


def all_commands() -> list[tuple[str, str]]:
    """Every command of the documents: the lines of their shell blocks, and inline code that starts like one."""
    out = []
    for path in DOCS:
        text, where = path.read_text(), path.relative_to(ROOT).as_posix()
        out += [(where, line) for b in blocks(text) for line in commands(b)]
        out += [(where, span) for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
                if span.startswith(("clinical-lstm ", "python pipelines/", "python benchmarks/"))]
    return out


def test_the_readme_activates_the_environment_once_right_after_the_two_commands():
    text = (ROOT / "README.md").read_text()
    setup = [c for c in commands(blocks(text)[0])]
    assert len(setup) == 2 and all(c.startswith("bash scripts/setup.sh && ") for c in setup)
    assert commands(blocks(text)[1]) == [ACTIVATE]  # the next block: activation, once
    offenders = [(where, c) for where, c in all_commands() if ".venv/bin/" in c and not
                 c.startswith("bash scripts/setup.sh && ") and c != ACTIVATE]
    assert not offenders, f"commands that bypass the activated environment: {offenders}"


def test_every_documented_clinical_lstm_command_and_option_exists():
    parser = build_parser()
    checked, scripts = 0, {}
    for where, line in all_commands():
        for part in re.split(r"&&|\|\||;|\s&\s|\s&$", line):
            text = re.sub(r"[\[\]]", " ", part.replace("|", " "))
            try:
                words = shlex.split(text)
            except ValueError:  # a quote that opens in one part and closes in the next
                words = text.split()
            words = [w for w in words if "=" not in w or w.startswith("-")]  # VAR=value prefixes
            if not words:
                continue
            if words[0] in ("clinical-lstm", ".venv/bin/clinical-lstm") and len(words) > 1:
                command = words[1]
            elif words[0] == "python" and len(words) > 1 and words[1].startswith("pipelines/"):
                command = {"pipelines/train.py": "train", "pipelines/score.py": "score"}[words[1]]
            elif words[0] == "python" and len(words) > 1 and words[1].startswith("benchmarks/") and \
                    not words[1].endswith("run_at.py"):  # run_at's own arguments are a root and a script
                scripts.setdefault(words[1], set()).update(w.split("=")[0] for w in words if w.startswith("--"))
                continue
            else:
                continue
            if command.isupper():  # a placeholder: `clinical-lstm COMMAND --help`
                continue
            assert command in parser.commands, f"{where}: unknown command in {line!r}"
            known = {o for a in parser.commands[command]._actions for o in a.option_strings}
            unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in known]
            assert not unknown, f"{where}: {command} has no option {unknown} ({line!r})"
            checked += 1
    assert checked >= 25  # the check reads the documents (a broken extraction finds nothing)
    assert len(scripts) >= 8
    for script, options in scripts.items():  # each benchmark's own --help lists every option the docs give it
        assert (ROOT / script).is_file(), f"the docs run {script}, which does not exist"
        res = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
        assert res.returncode == 0, f"{script} --help: {res.stderr[-500:]}"
        unknown = sorted(o for o in options if not re.search(rf"{re.escape(o)}\b", res.stdout))
        assert not unknown, f"{script} has no option {unknown}"


def fresh_shell(command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """``command`` in a new bash with nothing inherited but ``PATH`` (no venv active, no MLflow variables)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A folder laid out like the repository root (``.venv``, ``pipelines`` linked), so that the README's
    commands run from it as written while runs/ and mlflow/ land in a temporary folder."""
    if not (ROOT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv beside the checkout: the README's set-up (scripts/setup.sh) makes it")
    root = tmp_path_factory.mktemp("checkout")
    for name in (".venv", "pipelines"):
        (root / name).symlink_to(ROOT / name)
    return root


def test_the_readme_commands_run_as_written_from_a_fresh_shell(checkout):
    text = (ROOT / "README.md").read_text()
    demo = commands(blocks(text)[0])[0].removeprefix("bash scripts/setup.sh && ")  # set-up is this suite's own
    res = fresh_shell(demo, checkout)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shipped" in res.stdout and (checkout / "runs" / "demo" / "model" / "bundle.json").is_file()
    assert (checkout / "mlflow" / "mlflow.db").is_file()  # tracked, in the folder it ran from

    after = text.split(TESTED_BLOCK, 1)[1]
    lines = commands(blocks(after)[0])
    assert len(lines) >= 3
    res = fresh_shell(" && ".join([ACTIVATE, *lines]), checkout)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = checkout / "runs" / "demo"
    assert (runs / "explain" / "stay_132592.png").is_file()
    assert pl.read_csv(runs / "scores.csv").height == 500
    assert pl.read_parquet(runs / "scores_job.parquet").height == 500
