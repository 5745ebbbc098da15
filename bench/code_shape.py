"""Issue 42: the shape of edgekit's code at a git revision (module and function sizes, import cycles).

Sizes are lines of code (non-blank, non-comment) per module of ``edgekit/`` and per function or method;
import cycles are the strongly connected components (more than one module) of the graph of module-level
``import edgekit...`` statements (imports inside functions are lazy by design and not counted).

Usage: python bench/code_shape.py [REV ...]   (default: HEAD)
"""

from __future__ import annotations

import ast
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _files(rev: str, root: Path) -> Path:
    data = subprocess.run(
        ["git", "archive", rev, "edgekit"], cwd=REPO, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(root, filter="data")
    return root / "edgekit"


def _loc(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip() and not line.strip().startswith("#"))


def _module(path: Path, pkg: Path) -> str:
    parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def shape(rev: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pkg = _files(rev, Path(tmp))
        modules, functions, graph = {}, [], {}
        for path in sorted(pkg.rglob("*.py")):
            text = path.read_text()
            lines = text.splitlines()
            name = _module(path, pkg)
            modules[name] = _loc(lines)
            tree = ast.parse(text)
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    functions.append(_loc(lines[node.lineno - 1 : node.end_lineno]))
            deps = set()
            for node in tree.body:
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgekit"):
                    deps.add((node.module, tuple(a.name for a in node.names)))
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names if a.name.startswith("edgekit"))
            graph[name] = deps
        graph = {m: {d for d in _resolve(deps, graph) if d in graph and d != m} for m, deps in graph.items()}
    return {
        "rev": rev,
        "modules": len(modules),
        "module_loc": _stats(list(modules.values())),
        "largest_modules": sorted(modules.items(), key=lambda kv: -kv[1])[:5],
        "functions": len(functions),
        "function_loc": _stats(functions),
        "import_cycles": [sorted(c) for c in _cycles(graph)],
    }


def _resolve(deps: set, modules: dict) -> set[str]:
    """``from a import b``: the module ``a.b`` when it is one, else ``a`` (``import a.b``: ``a.b``)."""
    out: set[str] = set()
    for dep in deps:
        if isinstance(dep, str):
            out.add(dep)
            continue
        module, names = dep
        subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
        out |= subs if len(subs) == len(names) else subs | {module}
    return out


def _stats(values: list[int]) -> dict:
    values = sorted(values)
    return {
        "median": statistics.median(values),
        "p90": values[int(0.9 * (len(values) - 1))],
        "max": values[-1],
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    revs = sys.argv[1:] or ["HEAD"]
    for rev in revs:
        print(json.dumps(shape(rev), indent=1))


if __name__ == "__main__":
    main()
