"""The package's shape: no import cycles, no private names across modules, layers point down, small files.

These read ``hamjax/`` with ``ast`` (nothing is imported), so they stay fast
and name the offending file and line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "hamjax"
MAX_LINES = 450

# Bottom to top; a module may import its own layer and the layers below it. The names are
# top-level entries of hamjax/ (module or subpackage). docs/architecture.md draws the same map.
LAYERS = (
    ("_base", "_checks", "_select", "_losses", "jaxpr"),
    ("checkpoint", "models"),
    ("prune", "quant", "distill", "precision", "graph", "augment", "regularize"),
    (
        "data",
        "streaming",
        "footprint",
        "compilation",
        "measure",
        "report",
        "parallel",
        "train_steps",
        "train_config",
        "train_views",
        "train",
    ),
    ("search", "export"),
    ("recipes",),
    ("pipeline", "tune", "serve"),
    ("autotune",),
    ("cli", "cli_search", "cli_tune", "cli_autotune", "cli_serve"),
)
# Family modules that run a training loop sit above the engine they call; nothing below imports them.
TRAINING_LOOPS = {"hamjax.prune.iterative", "hamjax.distill.training"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _top_level_imports(tree: ast.Module):
    """Import statements executed when the module is imported (not in functions or TYPE_CHECKING blocks)."""

    def walk(body):
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node
            elif isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                yield from walk(node.body)
                for handler in node.handlers:
                    yield from walk(handler.body)
                yield from walk(node.orelse)
                yield from walk(node.finalbody)

    yield from walk(tree.body)


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(module: str, tree: ast.Module, *, top_level_only: bool = True):
    """(imported module, line, imported name or None) for every hamjax import of ``module``."""
    nodes = (
        _top_level_imports(tree)
        if top_level_only
        else (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom))
    )
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hamjax"):
                    yield alias.name, node.lineno, None
            continue
        target = _absolute(module, node)
        if not target.startswith("hamjax"):
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if sub in MODULES:
                yield sub, node.lineno, None
            else:
                yield target, node.lineno, alias.name


def _trees():
    return {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


TREES = _trees()


def _layer(module: str) -> int:
    if module == "hamjax":
        return len(LAYERS)  # the package's __init__ re-exports from every layer
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    return -1


def test_every_top_level_entry_has_a_layer():
    tops = {name.split(".")[1] for name in MODULES if "." in name}
    missing = sorted(t for t in tops if _layer(f"hamjax.{t}") < 0)
    assert not missing, f"hamjax entries with no layer in tests/test_layout.py LAYERS: {missing}"


def test_no_import_cycles():
    # Importing hamjax.a.b runs hamjax/a/__init__.py first, so a module also depends on the packages
    # above what it imports (except its own ancestors, which are already initialising).
    graph = {m: set() for m in MODULES}
    for module, tree in TREES.items():
        ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        for target, _, _ in _edges(module, tree):
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in graph and dep != module and dep not in ancestors:
                    graph[module].add(dep)
    # Tarjan's strongly connected components.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles among hamjax modules: {cycles}"


def test_no_private_names_across_modules():
    found = []
    for module, tree in TREES.items():
        for target, line, name in _edges(module, tree, top_level_only=False):
            if name and name.startswith("_") and not name.startswith("__") and target != module:
                found.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line} takes {target}.{name}")
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _absolute(module, node).startswith("hamjax"):
                for alias in node.names:
                    sub = f"{_absolute(module, node)}.{alias.name}"
                    if sub in MODULES:
                        aliases[alias.asname or alias.name] = sub
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(
                    f"{MODULES[module].relative_to(ROOT.parent)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"
                )
    assert not found, "private names used across modules (move what is shared down and make it public):\n" + "\n".join(
        found
    )


def test_imports_point_down_the_layers():
    engine = _layer("hamjax.train")
    found = []
    for module, tree in TREES.items():
        own = _layer(module)
        for target, line, _ in _edges(module, tree, top_level_only=False):
            if target == "hamjax":
                continue
            rank = _layer(target)
            if rank <= own or (module in TRAINING_LOOPS and rank <= engine):
                continue
            found.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line} ({module}) imports {target}")
    assert not found, "imports that point up the layers:\n" + "\n".join(found)


def test_files_are_small():
    big = {
        str(p.relative_to(ROOT.parent)): n
        for p in MODULES.values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"files over {MAX_LINES} lines (split them along their responsibilities): {big}"


def test_subpackages_reexport_explicitly():
    tricks = [
        str(p.relative_to(ROOT.parent))
        for name, p in MODULES.items()
        if name != "hamjax"
        and any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in TREES[name].body)
    ]
    assert not tricks, f"module-level __getattr__ outside hamjax/__init__.py: {tricks}"
    missing = [
        str(p.relative_to(ROOT.parent))
        for name, p in MODULES.items()
        if p.name == "__init__.py"
        and not any(
            isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
            for n in TREES[name].body
        )
    ]
    assert not missing, f"packages without an explicit __all__: {missing}"


@pytest.mark.parametrize(
    "heavy", ["onnxruntime", "jax2onnx", "optuna", "onnx", "tensorrt", "fastapi", "uvicorn", "prometheus_client"]
)
def test_import_hamjax_stays_light(heavy):
    code = f"import sys, hamjax; sys.exit(1 if {heavy!r} in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"`import hamjax` imported {heavy}: {result.stderr[-2000:]}"


def test_lazy_subpackages_load_on_first_use():
    code = "import sys, hamjax; e = hamjax.export; print('onnxruntime' in sys.modules, e.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "hamjax.export"], result.stderr[-2000:]
