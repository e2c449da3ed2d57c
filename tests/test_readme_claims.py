"""README sentences are claims: the shared-options table names, for each option, the commands that have it.
Checked against the real commands' parameters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.main import find_command

README = Path(__file__).resolve().parents[1] / "README.md"
EVAL = ["eval " + s for s in ("fvd", "fid", "motion", "temporal", "physics", "keypoints", "seams")]
ALL = ["refine", "transfer", "longgen train", "longgen sample", "longgen reconstruct", "predict-keypoints train",
       "predict-keypoints run", *EVAL]
GROUPS = {
    "all": ALL,
    "longgen": ["longgen train", "longgen sample", "longgen reconstruct"],
    "predict-keypoints": ["predict-keypoints train", "predict-keypoints run"],
    "longgen train/sample": ["longgen train", "longgen sample"],
    "longgen sample/reconstruct": ["longgen sample", "longgen reconstruct"],
    "all but eval temporal/physics/motion/keypoints/seams": [c for c in ALL if c not in EVAL[2:]],
}


def _table() -> list[tuple[list[str], list[str]]]:
    text = README.read_text()
    start = text.index("| option | meaning | commands |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        options = re.findall(r"`(--?[a-z][a-z0-9-]*)", cells[0])
        commands = [c for part in cells[2].split(", ") for c in GROUPS.get(part, [part])]
        rows.append((options, commands))
    return rows


def _opts(command: str) -> set[str]:
    return {o for p in find_command(command).params for o in (*getattr(p, "opts", []), *getattr(p, "secondary_opts", []))}


@pytest.mark.slow
@pytest.mark.parametrize("options, commands", _table(), ids=lambda v: " ".join(v)[:60])
def test_readme_shared_options_exist_on_the_commands_it_names(options, commands):
    assert options and commands
    for command in commands:
        have = _opts(command)
        for opt in options:
            if command.startswith("eval") and opt in ("-o", "--output"):
                opt = "--json"  # the table says so: "(eval: `--json`)"
            assert opt in have, f"README says `vmt {command}` has {opt}"
