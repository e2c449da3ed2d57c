"""The shape of the command line layer: cli/ modules import each other without cycles (a cycle makes import
order matter and hides which module owns what)."""

from __future__ import annotations

import ast
from pathlib import Path

CLI = Path(__file__).resolve().parents[1] / "cli"


def cli_imports() -> dict[str, set[str]]:
    """cli module -> the cli modules it imports anywhere (module level or inside functions)."""
    modules = {p.stem for p in CLI.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(CLI.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "cli":  # from cli import eval as eval_cli
                    deps |= {a.name for a in node.names if a.name in modules}
                elif node.module.startswith("cli."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cli.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_cli_modules_import_each_other_without_cycles():
    graph = cli_imports()
    assert {"main", "scaffold", "batch", "refine"} <= set(graph)
    assert "main" in graph and "scaffold" in graph["refine"]  # the graph is read, not empty
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_command_sizes_measure_every_command_and_follow_the_work():
    """scripts/command_sizes.py (the measure of how thin each command is) sees every command and the helpers
    its callback hands the work to."""
    import sys

    sys.path.insert(0, str(CLI.parent / "scripts"))
    from command_sizes import command_sizes

    rows = {r["command"]: r for r in command_sizes()}
    assert {"refine", "transfer", "longgen train", "longgen sample", "predict-keypoints run", "eval fvd",
            "eval motion", "eval drift", "compare", "recipes"} <= set(rows)
    assert "longgen._sample" in rows["longgen sample"]["helpers"] and "compare._compare" in rows["compare"]["helpers"]
    assert all(r["with_helpers"] >= r["body_lines"] >= 1 for r in rows.values())
    # A command is its options plus one call: with the helpers of its own module, under 15 lines.
    assert {r["command"]: r["with_helpers"] for r in rows.values() if r["with_helpers"] >= 15} == {}
