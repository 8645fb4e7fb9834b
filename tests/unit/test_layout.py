"""The layout keeps the architecture visible: the Faust app on top, nothing below imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def our_files() -> list[Path]:
    """Every module of ``streams/`` and ``detectors/``."""
    return sorted(path for folder in ("streams", "detectors")
                  for path in (ROOT / folder).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any level (type-checking and function bodies too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_only_the_command_line_imports_the_app() -> None:
    # agents, rules, feedback and the lending book receive a streams.runtime.Runtime
    importers = sorted(
        path.relative_to(ROOT).as_posix()
        for path in our_files()
        if path.name != "app.py" and "streams.app" in imported_modules(path)
    )
    assert importers == ["streams/cli.py"], importers


def test_detectors_never_import_kafka_faust_or_streams() -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT).as_posix()}: {module}"
        for path in (ROOT / "detectors").rglob("*.py")
        for module in imported_modules(path)
        if module.split(".")[0] in {"faust", "aiokafka", "streams", "mode"}
    )
    assert not offenders, offenders


#: Packages split one module per concern, lowest layer first: each imports only those before it.
LAYERED_PACKAGES = {
    "detectors.flow": ("params", "records", "tables", "sketch", "typologies"),
    "detectors.portfolio": ("periods", "buckets", "config", "loans", "partial", "book", "limits"),
    "streams.simulate": ("population", "scenarios", "generator", "publishing", "book"),
    "streams.localkafka": ("base", "network", "jars", "secure", "node", "cluster", "cli"),
}


def runtime_imports(path: Path) -> set[str]:
    """Modules ``path`` imports when it runs: ``if TYPE_CHECKING:`` blocks left out."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)  # and what it names, a module or not:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", sorted(LAYERED_PACKAGES))
def test_a_split_package_is_layers_without_a_circle(package: str) -> None:
    layers = LAYERED_PACKAGES[package]
    folder = ROOT / Path(*package.split("."))
    modules = sorted(path.stem for path in folder.glob("*.py") if path.stem != "__init__")
    assert modules == sorted(layers)
    upward = sorted(
        f"{name} imports {module}"
        for level, name in enumerate(layers)
        for module in runtime_imports(folder / f"{name}.py")
        if module.startswith(f"{package}.")
        and module.split(".")[2] not in layers[:level]
    )
    assert not upward, upward


def test_no_production_module_imports_the_conformance_suite() -> None:
    # the suite generates data and runs a whole flow stage in memory: tooling, not runtime
    importers = sorted(
        path.relative_to(ROOT).as_posix()
        for path in our_files()
        if "conformance" not in path.parts
        and any(module.startswith("detectors.conformance") for module in imported_modules(path))
    )
    assert importers == [], importers


#: Development and measurement tools a worker never needs.
TOOLING = ("streams.simulate", "streams.populations", "streams.evaluation", "streams.calibrate",
           "streams.importer", "streams.demo", "streams.localkafka", "streams.portfolio.cli",
           "streams.portfolio.report", "detectors.conformance")


def module_path(module: str) -> Path | None:
    """The file of one of our modules (a package's ``__init__.py``), ``None`` for others."""
    path = ROOT / Path(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def worker_modules() -> set[str]:
    """What a worker loads: every module ``streams.app`` imports when it runs, transitively
    (function bodies included, type-checking imports left out), and their packages."""
    seen: set[str] = set()
    todo = ["streams.app"]
    while todo:
        module = todo.pop()
        path = module_path(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += runtime_imports(path)  # names that are no module of ours are skipped
    return seen


def test_the_worker_never_imports_tooling() -> None:
    modules = worker_modules()
    # the closure reaches the whole account stage, so an empty result means something
    assert {"streams.agents", "streams.pipeline", "streams.stages", "streams.portfolio.agent",
            "detectors.flow"} <= modules
    # a tool renamed or split keeps its entry here, or its modules would go unchecked
    assert all(module_path(tool) is not None for tool in TOOLING), TOOLING
    offenders = sorted(module for module in modules if module.startswith(TOOLING))
    assert not offenders, offenders


#: Longest module the worker runs: past it a module holds more than one concern (issue 14).
MAX_WORKER_MODULE_LINES = 800


def test_no_worker_module_is_longer_than_the_limit() -> None:
    # tools (the simulator's scenarios, say) may run longer; what a worker runs may not
    sizes = {module: len(path.read_text().splitlines())
             for module in worker_modules() if (path := module_path(module)) is not None}
    assert {"detectors.flow.sketch", "detectors.portfolio.loans"} <= set(sizes)
    too_long = sorted(f"{module}: {lines} lines" for module, lines in sizes.items()
                      if lines > MAX_WORKER_MODULE_LINES)
    assert not too_long, too_long


def test_txwatch_has_one_command_line_entry_point() -> None:
    # every command goes through streams/cli.py: settings checked and errors worded once
    entry_points = sorted(
        path.relative_to(ROOT).as_posix()
        for path in our_files()
        for node in ast.parse(path.read_text()).body
        if (isinstance(node, ast.FunctionDef) and node.name == "main")
        or (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))
    )
    assert entry_points == ["streams/cli.py", "streams/cli.py"], entry_points


def test_the_account_stage_names_no_particular_detector() -> None:
    # a detector's gauges, budgets and ledgers reach the pipeline through the base classes
    named = sorted(
        f"{name}: {module}"
        for name in ("streams/pipeline.py", "streams/agents.py", "streams/metrics.py")
        for module in imported_modules(ROOT / name)
        if module.startswith("detectors.") and module.split(".")[1] not in {"base", "registry"}
    )
    assert not named, named


def test_every_package_states_its_role_in_one_line_at_its_top() -> None:
    # A newcomer opening a folder reads what it is for before anything else.
    unstated = []
    for init in sorted([*(ROOT / "streams").rglob("__init__.py"),
                        *(ROOT / "detectors").rglob("__init__.py")]):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        first = doc.splitlines()[0] if doc else ""
        if not (first.endswith(".") and len(first) <= 100):
            unstated.append(f"{init.parent.relative_to(ROOT)}: {first or '(no docstring)'}")
    assert not unstated, "packages without a one-line role at the top:\n" + "\n".join(unstated)
