"""The package's layers import only downward, and no modules import each other in a circle.

The folders read as the data flows (store -> io -> prefetch -> history -> model ->
trainer -> checkpoint -> CLI); a module that imports a layer above it (even lazily,
inside a function) ties the lower layer to the upper one.  Every import of an
``oocgnn`` module, at any depth of the file, is checked against :data:`RANKS`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import oocgnn

ROOT = Path(oocgnn.__file__).parent

#: the layer of every top-level module or subpackage: a module may import only strictly lower layers
#: (or modules of its own group); a new module must be placed here
RANKS = {
    "errors": 0, "_version": 0,
    "utils": 1,
    "config": 2, "store": 2, "io": 2,
    "prepare": 3, "batch": 3, "batching": 3, "lru": 3, "staging": 3, "subgraph": 3,
    "belady": 4, "read_ahead": 4, "history": 4, "models": 4,
    "cache": 5, "prefetch": 5, "device": 5,
    "train": 6, "staleness": 6,
    "checkpoint": 7,
    "runner": 8,
    "api": 9,
    "cli": 10, "testing": 10,
    "": 11,  # the package itself (its public __init__)
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        mod = _module(path)
        found = out.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("oocgnn"):
                found.add(node.module)
                if node.module == "oocgnn":  # `from oocgnn import x` may name a submodule
                    found.update(f"oocgnn.{a.name}" for a in node.names if (ROOT / a.name).exists()
                                 or (ROOT / f"{a.name}.py").exists())
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("oocgnn"))
    return out


def _group(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_import_goes_down_a_layer():
    wrong = []
    for mod, targets in sorted(_imports().items()):
        assert _group(mod) in RANKS, f"{mod}: place its group {_group(mod)!r} in tests/test_layers.py RANKS"
        for t in targets:
            a, b = _group(mod), _group(t)
            if a != b and RANKS[b] >= RANKS[a]:
                wrong.append(f"{mod} imports {t} (layer {RANKS[a]} -> {RANKS[b]})")
    assert not wrong, "imports up (or across) the layers:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    graph = _imports()
    # a module importing its own package's __init__ (re-exports) is not a cycle between modules
    edges = {m: {t for t in ts if t in graph and not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycles, "modules that import each other: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_lazy_upward_import(tmp_path, monkeypatch):
    """The check is not vacuous: an import inside a function, up a layer, is found."""
    pkg = tmp_path / "oocgnn"
    (pkg / "store").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "__init__.py").write_text("")
    (pkg / "store" / "x.py").write_text("def f():\n    from oocgnn.train.loop import Trainer\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    assert "oocgnn.train.loop" in _imports()["oocgnn.store.x"]
