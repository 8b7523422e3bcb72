"""The dependency rule, checked on the source: every import of every module (function-level ones included),
no cycles, and arrows that only point down the layers.

    runners, scripts -> rgap.harness -> rgap.zoo, rgap.client, rgap.evaluation -> rgap.algorithm -> rgap.attack
    baselines -> rgap.attack (and rgap.algorithm, for the R-GAP/DLG hybrid)
    everything -> rgap.core
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rgap", "baselines", "runners", "scripts")

#: Layer of each part of the code: a module may import its own part and parts of a lower layer only.
LAYERS: dict[str, int] = {
    "rgap.core": 0,
    "rgap.attack": 1,
    "rgap.algorithm": 2,
    "baselines": 3,
    "rgap.client": 3,
    "rgap.zoo": 3,
    "rgap.evaluation": 3,
    "rgap.harness": 4,
    "runners": 5,
    "scripts": 5,
}
#: Parts of the same layer that may not import each other (independent siblings).
SIBLINGS_APART = {"baselines", "rgap.client", "rgap.zoo", "rgap.evaluation", "runners", "scripts"}
#: Besides lower layers, what a part may not import although it is lower (the algorithm sees no data or files).
FORBIDDEN: dict[str, set[str]] = {
    "baselines": {"rgap.client", "rgap.zoo", "rgap.evaluation", "rgap.harness"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (module level, functions, type-checking blocks)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def part_of(module: str) -> str:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} belongs to no part of the layout; add it to LAYERS in this test")
    return best


GRAPH = {name: imports_of(path, name, set(project_modules())) for name, path in project_modules().items()}


def test_every_module_has_a_place():
    for module in GRAPH:
        if module in PACKAGES or module == "rgap":
            continue
        part_of(module)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m not in PACKAGES and m != "rgap"))
def test_imports_point_down(module):
    mine = part_of(module)
    for target in sorted(GRAPH[module]):
        if target in ("rgap",):
            continue
        theirs = part_of(target)
        if theirs == mine:
            continue
        assert LAYERS[theirs] <= LAYERS[mine], f"{module} ({mine}) imports {target} ({theirs}), a higher layer"
        assert not (LAYERS[theirs] == LAYERS[mine] and {mine, theirs} & SIBLINGS_APART), \
            f"{module} ({mine}) imports its sibling {target} ({theirs})"
        assert theirs not in FORBIDDEN.get(mine, set()), f"{module} ({mine}) may not import {target} ({theirs})"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from rgap.harness import trial\n    import rgap.zoo.models\n")
    found = imports_of(source, "rgap.algorithm.mod", set(project_modules()))
    assert {"rgap.harness.trial", "rgap.zoo.models"} <= found
