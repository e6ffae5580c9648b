"""The package's static import graph, and the code version of what a rule's script runs.

Snakemake does not track code that a script imports. A rule therefore passes, as a ``param``,
the code version of every ``geolocsft`` module its script uses (params are a default rerun
trigger), so that a change to any of them reruns the rule. That set is computed here from the
source, never kept by hand: the script's imports and, transitively, the imports of every package
module they reach (top-level and function-local ``import``/``from`` statements; imports under
``if TYPE_CHECKING:`` do not run and are left out). Importing ``geolocsft.a.b`` also runs the
package ``geolocsft.a``: packages count as the modules of their ``__init__.py``.

The same graph is what ``tests/test_package_shape.py`` checks for import cycles.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

from geolocsft.errors import GeolocsftError

PACKAGE = "geolocsft"
#: The name of the package's own ``__init__`` in code versions.
ROOT = "__init__"


def package_dir(src_dir: Path | None = None) -> Path:
    """The package folder: ``<src_dir>/geolocsft``, or the importable package's."""
    if src_dir is not None:
        return src_dir / PACKAGE
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{PACKAGE} is not importable")
    return Path(spec.origin).parent


def module_source(name: str, src_dir: Path | None = None) -> Path:
    """The source file of a package module named relative to the package (``captions.runner``)."""
    base = package_dir(src_dir)
    if name == ROOT:
        return base / "__init__.py"
    path = base / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise GeolocsftError(f"{PACKAGE}.{name} is not a module of the package in {base.parent}")


def package_modules(src_dir: Path | None = None) -> list[str]:
    """Every module of the package, named relative to it (packages by their ``__init__``)."""
    base = package_dir(src_dir)
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        if parts == ("__init__",):
            names.append(ROOT)
        elif parts[-1] == "__init__":
            names.append(".".join(parts[:-1]))
        else:
            names.append(".".join(parts))
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (anywhere in the file, not under TYPE_CHECKING)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` and the packages it runs: ``a``, ``a.b`` (and the package's root)."""
    parts = name.split(".")
    return [ROOT, *(".".join(parts[: i + 1]) for i in range(len(parts)))]


def imported_modules(source: str, module: str | None, known: set[str]) -> set[str]:
    """The package modules that ``source`` imports (``module``: its own name, for relative
    imports; ``None`` for a script outside the package). Names are relative to the package."""
    found: set[str] = set()
    package_of = module.rsplit(".", 1)[0] if module and "." in module else ""
    for node in _runtime_imports(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
            bases = [t for t in targets if t == PACKAGE or t.startswith(PACKAGE + ".")]
            names = [t[len(PACKAGE) + 1 :] if t != PACKAGE else ROOT for t in bases]
        else:
            if node.level:
                anchor = package_of.split(".") if package_of else []
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            elif node.module == PACKAGE:
                base = ""
            elif node.module and node.module.startswith(PACKAGE + "."):
                base = node.module[len(PACKAGE) + 1 :]
            else:
                continue
            names = []
            for alias in node.names:
                # ``from geolocsft.x import y``: y is a submodule or a name in x.
                submodule = f"{base}.{alias.name}" if base else alias.name
                names.append(submodule if submodule in known else base or ROOT)
        for name in names:
            found.update(n for n in _with_parents(name) if n in known)
    return found


def import_graph(src_dir: Path | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports (directly)."""
    known = set(package_modules(src_dir))
    graph = {}
    for name in sorted(known):
        source = module_source(name, src_dir).read_text(encoding="utf-8")
        own = None if name == ROOT else name
        graph[name] = imported_modules(source, own, known) - {name}
    return graph


@functools.cache
def _known_modules(src_dir: Path | None) -> frozenset[str]:
    return frozenset(package_modules(src_dir))


@functools.cache
def _imports_of(name: str, src_dir: Path | None) -> frozenset[str]:
    """The package modules ``name`` imports directly, read once per process (only the modules
    a lookup reaches are parsed: a job asking for one module's code version reads a few files,
    not the whole package)."""
    known = set(_known_modules(src_dir))
    source = module_source(name, src_dir).read_text(encoding="utf-8")
    return frozenset(imported_modules(source, None if name == ROOT else name, known) - {name})


def _reachable(start: Iterable[str], src_dir: Path | None) -> list[str]:
    todo, seen = list(start), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports_of(name, src_dir) - seen)
    return sorted(seen)


def modules_used_by_script(script: Path, src_dir: Path | None = None) -> list[str]:
    """Every package module a script runs: its imports and, transitively, theirs.

    Each module is read at most once per process (a workflow parse computes many of these).
    """
    known = set(_known_modules(src_dir))
    return _reachable(imported_modules(script.read_text(encoding="utf-8"), None, known), src_dir)


def modules_used_by_module(module: str, src_dir: Path | None = None) -> list[str]:
    """A package module and every package module it imports, transitively."""
    return _reachable([module], src_dir)


def module_code_version(module: str, src_dir: Path | None = None) -> str:
    """The code version of a package module and everything it imports (for per-item memo
    versions: the code that shapes an item, not the whole job's)."""
    return code_version_from_files(modules_used_by_module(module, src_dir), src_dir)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (each as the list of modules around it)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def code_version_from_files(modules: Sequence[str], src_dir: Path | None = None) -> str:
    """``"<module>,<module>:<hash>"``: the modules and a short hash of their source.

    ``src_dir`` is a checkout's ``src/`` folder; ``None`` uses the importable package.
    """
    names = sorted(set(modules))
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + module_source(name, src_dir).read_bytes() + b"\0")
    return f"{','.join(names)}:{digest.hexdigest()[:16]}"


def script_code_version(script: Path, src_dir: Path | None = None) -> str:
    """The code version of every package module ``script`` runs (see the module doc)."""
    return code_version_from_files(modules_used_by_script(script, src_dir), src_dir)
