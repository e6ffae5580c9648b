"""The package's shape: no import cycles, one home per shared idea, test doubles kept apart,
and each rule's code version computed from what its script really imports."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

from geolocsft.codegraph import (
    cycles,
    import_graph,
    imported_modules,
    modules_used_by_script,
    package_modules,
)

SRC = REPO / "src"


def test_the_package_has_no_import_cycle_not_even_through_function_local_imports():
    graph = import_graph(SRC)
    assert graph["workflow"] >= {"audit", "codegraph"}  # the graph sees the real imports
    assert cycles(graph) == []


def test_a_cycle_is_found_wherever_the_import_hides():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    local = "def f():\n    from geolocsft.evaluate import x\n"
    typing_only = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import geolocsft.plots\n"
    )
    known = {"__init__", "evaluate", "plots"}
    assert imported_modules(local, "plots", known) == {"__init__", "evaluate"}
    assert imported_modules(typing_only, "evaluate", known) == set()


def test_pipeline_modules_never_import_the_test_doubles():
    graph = import_graph(SRC)
    for module, imports in graph.items():
        if not module.startswith("testing"):
            assert not {m for m in imports if m.startswith("testing")}, module
    assert {"testing.standin", "testing.hub_standin", "testing.loopback"} <= set(graph)


def test_each_public_name_has_one_home():
    """A helper, schema or constant is defined in one module; stages import it from there."""
    homes: dict[str, list[str]] = defaultdict(list)
    for module in package_modules(SRC):
        if module.startswith("testing"):
            continue
        path = (
            SRC
            / "geolocsft"
            / ("__init__.py" if module == "__init__" else module.replace(".", "/") + ".py")
        )
        if not path.is_file():
            path = path.with_suffix("") / "__init__.py"
        for node in ast.parse(path.read_text()).body:
            names = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()]
            homes.update({n: [*homes[n], module] for n in names if not n.startswith("_")})
    shared = {n: m for n, m in homes.items() if len(m) > 1 and len(n) > 1}
    assert not shared, shared
    for name, module in {
        "atomic_write_json": "io",
        "file_sha256": "io",
        "to_rgb8": "images",
        "fit_to_model": "images",
        "assign_split": "splits",
        "PREDICTION_SCHEMA": "predictions",
        "ColumnMap": "tables",
    }.items():
        assert homes[name] == [module], (name, homes[name])


def test_a_scripts_code_version_covers_the_modules_it_uses_indirectly():
    used = modules_used_by_script(REPO / "scripts" / "predict_sft.py", SRC)
    # predict_sft.py imports sft.predict, which imports answers, images, predictions, ...;
    # every job writes its provenance through workflow -> audit.
    assert {"sft.predict", "answers", "images", "predictions", "geo", "audit", "io"} <= set(used)
    assert "evaluate" not in used and not any(m.startswith("testing") for m in used)


def test_stage_scripts_are_thin_wrappers(tmp_path: Path):
    for script in (REPO / "scripts").glob("*.py"):
        assert len(script.read_text().splitlines()) < 80, script.name
