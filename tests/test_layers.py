"""Import direction: state and configuration depend on no part; status reads the snapshot, not the service."""

from __future__ import annotations

import ast

from conftest import REPO

PARTS = (
    "gateway.archive",
    "gateway.caiasoft",
    "gateway.checks",
    "gateway.cli",
    "gateway.collector",
    "gateway.demo",
    "gateway.find",
    "gateway.http",
    "gateway.intake",
    "gateway.pipeline",
    "gateway.placing",
    "gateway.readiness",
    "gateway.recovery",
    "gateway.sidecars",
    "gateway.retry",
    "gateway.service",
    "gateway.status",
    "gateway.ncip",
    "gateway.simulators",
    "gateway.sources",
)


def _file(module: str) -> ast.Module | None:
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    return ast.parse(path.read_text(), str(path)) if path.exists() else None


def _imports(module: str) -> set[str]:
    """Every gateway module this one imports, wherever the import statement is (functions, TYPE_CHECKING)."""
    tree = _file(module)
    found: set[str] = set()
    for node in ast.walk(tree) if tree else ():
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if _file(f"{node.module}.{alias.name}") is not None
            )
    return {name for name in found if name.startswith("gateway.")}


def _reach(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in _imports(todo.pop()) - seen:
            seen.add(name)
            todo.append(name)
    return seen


def _parts(modules: set[str]) -> set[str]:
    return {name for name in modules if name.startswith(PARTS)}


def test_the_ledger_depends_on_no_part():
    assert _parts(_reach("gateway.ledger")) == set()


def test_configuration_depends_on_no_part():
    assert _parts(_reach("gateway.config")) == set()


def test_status_reads_the_service_snapshot_not_the_service():
    reached = _reach("gateway.status")
    assert "gateway.snapshot" in reached and "gateway.service" not in reached
