"""The shape of the code: packages import only the packages below them, with no circles, and no part sets or
replaces an attribute of another object after it was built (docs/design.md, "Code map")."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest
from conftest import REPO

# From the bottom up: a package may import those before it in this list, never one after it.
ORDER = (
    "core",
    "config",
    "state",
    "monitor",
    "sources",
    "archive",
    "intake",
    "upload",
    "ncip",
    "simulators",
    "report",
    "web",
    "runtime",
    "cli",
)
PACKAGE = REPO / "gateway"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _package(module: str) -> str | None:
    """The package by role a module belongs to (None: the top-level gateway/__init__ and __main__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else None


def _imports(path: Path) -> set[str]:
    """Every gateway module the file imports, wherever the import statement is (functions, TYPE_CHECKING)."""
    return _named(ast.walk(ast.parse(path.read_text(), str(path))))


def _named(statements: Iterable[ast.AST]) -> set[str]:
    """The gateway modules these import statements name (others are skipped)."""
    found: set[str] = set()
    for node in statements:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != "gateway"}


def test_every_package_is_in_the_order():
    packages = {_package(module) for module in MODULES} - {None}
    assert packages == set(ORDER), "a new package needs its place in ORDER (and in docs/design.md)"


def test_no_package_imports_one_above_it():
    upward = [
        f"{module} imports {imported}"
        for module, path in MODULES.items()
        for imported in sorted(_imports(path))
        if _package(module) and _package(imported) and ORDER.index(_package(imported)) > ORDER.index(_package(module))
    ]
    assert upward == []


def test_no_circle_between_modules():
    """Module-level imports only (those under TYPE_CHECKING or inside a function are not run at import)."""
    graph = {module: _top_level_imports(path) for module, path in MODULES.items()}
    circles = []
    for start in graph:
        todo, seen = [(start, (start,))], set()
        while todo:
            module, trail = todo.pop()
            for imported in graph.get(module, ()):
                if imported == start:
                    circles.append(" -> ".join((*trail, start)))
                elif imported not in seen:
                    seen.add(imported)
                    todo.append((imported, (*trail, imported)))
    assert circles == []


def _run_at_import(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of body that run when the module is imported: those inside try, if, with and class bodies
    too, not those in functions (TYPE_CHECKING blocks never run)."""
    found: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        found.append(node)
        if isinstance(node, ast.Try | ast.If | ast.With | ast.ClassDef):
            nested = [*node.body, *getattr(node, "orelse", []), *getattr(node, "finalbody", [])]
            nested += [statement for handler in getattr(node, "handlers", []) for statement in handler.body]
            found += _run_at_import(nested)
    return found


def _top_level_imports(path: Path) -> set[str]:
    return _named(_run_at_import(ast.parse(path.read_text(), str(path)).body))


def test_the_ledger_depends_on_no_part():
    assert {_package(name) for name in _reach("gateway.state.ledger")} <= {"core", "config", "state"}


def test_configuration_depends_on_no_part():
    assert {_package(name) for name in _reach("gateway.config.loader")} <= {"core", "config"}


def test_status_reads_the_service_snapshot_not_the_service():
    reached = _reach("gateway.report.status")
    assert "gateway.state.snapshot" in reached and "gateway.runtime.service" not in reached


def _reach(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in _imports(MODULES[todo.pop()]) - seen:
            seen.add(name)
            todo.append(name)
    return seen


# Objects a function builds and fills itself (a plan, a record, a library's session or thread-local), not parts.
OWN_OBJECTS = {
    "gateway/archive/retention.py": {"plan"},
    "gateway/cli/asservice.py": {"identity"},
    "gateway/cli/main.py": {"sys"},
    "gateway/core/http.py": {"session", "manager", "_current", "self.poolmanager"},
    "gateway/core/printfile.py": {"self.fields"},
    "gateway/monitor/monitor.py": {"self._tick"},
    "gateway/ncip/messages.py": {"child"},
    "gateway/ncip/transport.py": {"connection"},
    "gateway/runtime/service.py": {"threading"},
    "gateway/simulators/caiasoft.py": {"receipt"},
    "gateway/sources/local.py": {"observer"},
    "gateway/state/db.py": {"self.connection"},
    "gateway/state/groupcommit.py": {"self._local"},
    "gateway/upload/caiasoft.py": {"self._local"},
}


def _attribute_targets(tree: ast.AST) -> list[tuple[int, ast.Attribute]]:
    """Every attribute a statement sets: assignments, augmented and annotated ones, for and with targets,
    and setattr(obj, ...) calls (as obj.?)."""
    found: list[tuple[int, ast.Attribute]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
            targets = [node.target]
        elif isinstance(node, ast.With | ast.AsyncWith):
            targets = [item.optional_vars for item in node.items if item.optional_vars is not None]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
            targets = [ast.Attribute(value=node.args[0], attr="?", ctx=ast.Store())]
        else:
            continue
        for target in targets:
            for element in target.elts if isinstance(target, ast.Tuple | ast.List) else [target]:
                if isinstance(element, ast.Attribute) and not (
                    isinstance(element.value, ast.Name) and element.value.id in ("self", "cls")
                ):
                    found.append((node.lineno, element))
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(REPO)))
def test_no_part_sets_an_attribute_of_another_object(path):
    """`x.attr = ...` outside x's own methods (self.attr) is how parts were wired after they were built; a part
    now gets what it needs in its constructor. What a function builds itself is listed in OWN_OBJECTS."""
    own = OWN_OBJECTS.get(str(path.relative_to(REPO)), set())
    found = [
        f"line {line}: {ast.unparse(element)}"
        for line, element in _attribute_targets(ast.parse(path.read_text(), str(path)))
        if ast.unparse(element.value) not in own
    ]
    assert found == []


def test_every_exemption_is_still_needed():
    """An entry of OWN_OBJECTS that matches nothing would silently let a later assignment through."""
    unused = {
        (name, holder)
        for name, holders in OWN_OBJECTS.items()
        for holder in holders
        if holder
        not in {
            ast.unparse(element.value) for _line, element in _attribute_targets(ast.parse((REPO / name).read_text()))
        }
    }
    assert unused == set()


def test_the_check_sees_each_way_of_setting_an_attribute():
    code = (
        "def f(part, items):\n    part.x = 1\n    part.y += 1\n    setattr(part, 'z', 2)\n"
        "    for part.w in items:\n        pass\n"
    )
    assert [ast.unparse(element.value) for _line, element in _attribute_targets(ast.parse(code))] == ["part"] * 4
