"""The layers of the code, held by the imports themselves (every import, also those inside functions):

    remax_bench.core   the stage framework, configs, registry, results, models, data: imports nothing above it
    trainers           the training stages: import remax_bench.core and each other, nothing above
    remax_bench        the application (cli, runner, report, bench, check, estimate, variance, evaluation)

and no two modules of the project import each other, directly or through others.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for root in ("remax_bench", "trainers"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` resolved to ``pkg.mod`` where that is one)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                       for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in MODULES and t != name}
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int:
    if module == "remax_bench.core" or module.startswith("remax_bench.core."):
        return 0
    if module.split(".")[0] == "trainers":
        return 1
    return 2


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a))
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    # A package's __init__ importing its own submodules is how packages expose themselves, not a cycle.
    cycles = [c for c in cycles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert not cycles, "\n".join(cycles)


def test_every_file_stays_readable():
    long = {str(path.relative_to(REPO)): n for path in MODULES.values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"
