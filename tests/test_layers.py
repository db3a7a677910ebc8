"""The package's stages import downwards only, and no module imports itself back through others.

Every ``import`` in ``clinical_lstm`` counts, those inside functions included: a late import is still a dependency.
The stages, bottom to top, are the subpackages' order below; each subpackage's ``__init__`` docstring says the same.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "clinical_lstm"

#: bottom to top; a module may import its own stage and the stages before it
STAGES = ["base", "data", "features", "model", "explain", "evaluation", "tracking", "serve", "workflow", "sweep", "cli",
          "compat"]
BASE = {"clinical_lstm", "clinical_lstm.config", "clinical_lstm.files", "clinical_lstm.progress", "clinical_lstm.checks"}


def module_name(path: Path) -> str:
    parts = ("clinical_lstm", *path.relative_to(PKG).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


#: top-level modules outside the base: the jobs and the command line
TOP = {"clinical_lstm.workflow": "workflow", "clinical_lstm.jobs": "workflow", "clinical_lstm.cli": "cli",
       "clinical_lstm.cli_parser": "cli", "clinical_lstm.bundle": "compat"}  # compat: old paths logged models import


def stage(module: str) -> str:
    if module in BASE:
        return "base"
    if module in TOP:
        return TOP[module]
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "base"


def imports(module: str) -> set[str]:
    """The package modules ``module`` imports (anywhere in its text), resolved to modules that exist."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for name in candidates:
            if name in MODULES and name != module:
                found.add(name)
    return found


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_belongs_to_a_known_stage():
    assert {stage(m) for m in MODULES} <= set(STAGES), sorted({stage(m) for m in MODULES} - set(STAGES))


def test_imports_point_down_the_stages():
    upward = [f"{m} ({stage(m)}) imports {t} ({stage(t)})" for m, targets in GRAPH.items() for t in sorted(targets)
              if STAGES.index(stage(t)) > STAGES.index(stage(m)) and m != "clinical_lstm"]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for t in sorted(GRAPH[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("package", [m for m, p in MODULES.items() if p.name == "__init__.py" and m != "clinical_lstm"])
def test_each_stage_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and "May import" in doc, f"{package}/__init__.py needs a docstring saying what it owns and may import"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk resolves relative imports as Python does: a planted upward import is found."""
    MODULES["clinical_lstm.data._planted"] = tmp_path / "_planted.py"
    (tmp_path / "_planted.py").write_text("def f():\n    from ..serve.bundle import RiskModel\n")
    try:
        assert imports("clinical_lstm.data._planted") == {"clinical_lstm.serve.bundle"}
    finally:
        del MODULES["clinical_lstm.data._planted"]
