"""The architecture table of the README, enforced: which folder may import which, no import circles, and no
module over 700 lines."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "gradsift"
GROUND = {"atomic", "stats", "machine", "version", "settings", "rundir", "progress", "costs"}
ALLOWED = {
    "cli": {"gradsift", "cli"},
    "api": {"benchmark", "pipeline", "select_report", "recipes", "selection", "score", "gradients", "training"}
    | {"evaluation", "model", "store", "data", "report"}
    | GROUND,
    "gradsift": {"api", "benchmark", "pipeline", "gradients", "training", "evaluation", "store", "version"},
    "__main__": {"cli"},
    "benchmark": {"pipeline", "recipes", "selection", "score", "gradients", "training", "evaluation", "model"}
    | {"store", "data", "report"}
    | GROUND,
    "pipeline": {"select_report", "recipes", "selection", "score", "model", "store", "data"} | GROUND,
    "select_report": {"data", "report"} | GROUND,
    "recipes": {"selection", "score", "gradients", "training", "evaluation", "model", "store", "data"} | GROUND,
    "selection": {"score"} | GROUND,
    "score": set(),
    "gradients": {"model", "store", "data"} | GROUND,
    "training": {"model", "data"} | GROUND,
    "evaluation": {"model", "data"} | GROUND,
    "model": {"data"} | GROUND,
    "store": GROUND,
    "data": GROUND,
    "report": set(),
    **{g: set() for g in GROUND},
    "machine": {"version"},
    "rundir": {"atomic", "settings"},
    "costs": {"atomic"},
}


def _modules() -> dict[str, set[str]]:
    """Module name (``gradsift.x.y``) -> the gradsift modules it imports (module level and inside functions)."""
    out: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gradsift":
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "gradsift")
        out[name] = deps
    # keep only names that are modules
    return {m: {d for d in deps if d in out} for m, deps in out.items()}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "gradsift"


def test_each_folder_imports_only_what_the_architecture_table_allows():
    wrong = []
    for module, deps in _modules().items():
        own = _folder(module)
        for dep in deps:
            other = _folder(dep)
            if other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_nothing_imports_the_cli_but_the_entry_point():
    users = [m for m, deps in _modules().items() if any(_folder(d) == "cli" for d in deps) and _folder(m) != "cli"]
    assert users == ["gradsift.__main__"]


def test_there_are_no_import_circles():
    graph = _modules()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if dep == node or dep == "gradsift":
                continue  # a package importing its own submodule by name, or the lazy public API
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep] if dep in path else [*path, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_over_700_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 700}
    assert not long, long
