"""Architecture measurements of the mechmod package, from its source alone.

    python scripts/architecture.py            # one JSON object

Reports the import graph between mechmod modules (every ``import`` and
``from ... import`` statement, those inside functions included), its cycles,
the imports that run against the data flow (a module importing a later
stage), the longest modules and functions. ``tests/test_architecture.py``
asserts the invariants (no cycle, nothing against the flow, no module over
500 lines)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mechmod"

#: the data flow, first stage first: a module may import its own stage and
#: earlier ones (``dataset -> model adapter -> runs -> metrics -> lenses &
#: dynamics -> interventions -> figures -> report``); longest prefix wins
STAGES: tuple[tuple[str, ...], ...] = (
    ("mechmod", "mechmod.errors", "mechmod._io", "mechmod.names", "mechmod.stats"),
    ("mechmod.data",),
    ("mechmod.models", "mechmod.backends"),
    ("mechmod.answers", "mechmod.phrases", "mechmod.phrase_answers", "mechmod.uncertainty", "mechmod.tracing",
     "mechmod.decoding",
     "mechmod.prefix", "mechmod.loader", "mechmod.lenses"),
    ("mechmod.following", "mechmod.dynamics"),
    ("mechmod.guards", "mechmod.rundir", "mechmod.scoring"),
    ("mechmod.summary", "mechmod.compare"),
    ("mechmod.interventions",),
    ("mechmod.organism",),
    ("mechmod.report",),
    # orchestration drives every stage: dataset -> scoring -> summary -> report
    ("mechmod.distributed", "mechmod.runner", "mechmod.pipeline", "mechmod.cli", "mechmod.__main__"),
)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, known: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies in."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> mechmod modules it imports (any scope; ``TYPE_CHECKING`` blocks too)."""
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        base = name if is_pkg else name.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    mod = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    mod = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
            for t in targets:
                hit = _resolve(t, known) if t.startswith("mechmod") else None
                if hit and hit != name:
                    out.add(hit)
        graph[name] = out
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def stage(name: str) -> int:
    best, rank = -1, len(STAGES)
    for i, prefixes in enumerate(STAGES):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def against_flow(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports of a later stage by an earlier one (the package facade excepted)."""
    return sorted((a, b) for a, bs in graph.items() for b in bs if a != "mechmod" and stage(b) > stage(a))


def longest_functions(mods: dict[str, Path], k: int = 5) -> list[tuple[str, int]]:
    found = []
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{name}.{node.name}", node.end_lineno - node.lineno + 1))
    return sorted(found, key=lambda t: -t[1])[:k]


def measure() -> dict:
    mods = modules()
    graph = imports(mods)
    lines = {n: len(p.read_text().splitlines()) for n, p in mods.items()}
    return {
        "modules": len(mods),
        "cycles": cycles(graph),
        "against_flow": against_flow(graph),
        "unstaged": sorted(n for n in mods if stage(n) == len(STAGES)),
        "longest_modules": sorted(lines.items(), key=lambda t: -t[1])[:5],
        "longest_functions": longest_functions(mods),
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=1))
