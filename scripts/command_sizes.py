"""How much code each `vmt` command has in cli/: the lines of its callback's body and of every cli/ function
it reaches from there (calls by name, transitively: the code that turns options into work), option
declarations and docstrings not counted. Prints a table; `--json` for a machine-readable list.

    python scripts/command_sizes.py
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _functions() -> dict[str, tuple[str, ast.FunctionDef]]:
    """Every top-level function of cli/ by name (module, node); a name defined twice keeps both by module."""
    out: dict[str, tuple[str, ast.FunctionDef]] = {}
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                out[f"{path.stem}.{node.name}"] = (path.stem, node)
    return out


def body_lines(node: ast.FunctionDef) -> int:
    """Lines of a function's body, its docstring left out."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return 0 if not body else body[-1].end_lineno - body[0].lineno + 1


def reached(module: str, node: ast.FunctionDef, funcs: dict) -> set[str]:
    """Names (module.function) of the functions of its own cli/ module that `node` calls or hands on,
    transitively."""
    seen: set[str] = set()
    todo = [node]
    while todo:
        for ref in ast.walk(todo.pop()):  # calls and functions handed on (run_command(..., _sample))
            if isinstance(ref, ast.Name) and isinstance(ref.ctx, ast.Load):
                key = f"{module}.{ref.id}"
                if key in funcs and key not in seen:
                    seen.add(key)
                    todo.append(funcs[key][1])
    return seen


def command_sizes() -> list[dict]:
    from typer.main import get_command

    from cli.main import app

    funcs = _functions()
    rows = []

    def walk(cmd, path):
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            walk(sub, [*path, name])
        cb = getattr(cmd, "callback", None)
        if path and not getattr(cmd, "commands", None) and cb is not None:
            module = cb.__module__.split(".")[-1]
            key = f"{module}.{cb.__name__}"
            if key not in funcs:
                return
            own = body_lines(funcs[key][1])
            helpers = sorted(reached(module, funcs[key][1], funcs) - {key})
            total = own + sum(body_lines(funcs[h][1]) for h in helpers)
            rows.append({"command": " ".join(path), "body_lines": own, "with_helpers": total, "helpers": helpers})

    walk(get_command(app), [])
    return rows


def main() -> None:
    rows = command_sizes()
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'command':<28} {'body':>5} {'+helpers':>9}  helpers")
    for r in rows:
        print(f"{r['command']:<28} {r['body_lines']:>5} {r['with_helpers']:>9}  {', '.join(r['helpers'])}")
    total = sum(len(p.read_text().splitlines()) for p in (ROOT / "cli").glob("*.py"))
    print(f"cli/: {total} lines")


if __name__ == "__main__":
    main()
