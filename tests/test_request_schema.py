"""One schema for every run: a command's options are its run request's fields, field by field (name, default,
type, list-ness), so recipes and batch lines, which take their types from the request, accept exactly what the
command line accepts. The command line's own options (recipe, output, overwrite, quiet, debug, the batch
options) are the only extras."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

import click
import pytest
from typer.main import get_command

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.main import app  # noqa: E402
from cli.scaffold import CommandSpec, param_types  # noqa: E402
from vmt.runs.batch import BATCH_OPTIONS, RUN_OPTIONS  # noqa: E402
from vmt.runs.fields import value_types  # noqa: E402

COMMAND_LINE_ONLY = RUN_OPTIONS | BATCH_OPTIONS


def _commands() -> dict[str, click.Command]:
    """Every leaf command of `vmt` by its path ("refine", "longgen sample")."""
    out: dict[str, click.Command] = {}

    def walk(cmd: click.Command, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        elif path:
            out[" ".join(path)] = cmd

    walk(get_command(app), [])
    return out


def _specs() -> list[tuple[str, CommandSpec]]:
    """(command path, CommandSpec) of every command whose spec names a run request: the spec is found in the
    module of the command's callback, as the module-level CommandSpec the command runs with."""
    found = []
    for path, cmd in _commands().items():
        module = sys.modules[cmd.callback.__module__]
        specs = [v for v in vars(module).values() if isinstance(v, CommandSpec) and v.request is not None]
        leaf = path.split()[-1]
        mine = [s for s in specs if s.name in (path.replace(" ", "-"), leaf, f"{path.split()[0]}-{leaf}")]
        if mine:
            found.append((path, mine[0]))
    return found


def test_refine_and_transfer_have_requests():
    assert {path for path, _ in _specs()} >= {"refine", "transfer"}


@pytest.mark.parametrize("path, spec", _specs(), ids=[p for p, _ in _specs()])
def test_options_are_the_request_fields(path, spec):
    """The command function's parameters (what Typer builds the options from: names, annotations, defaults)
    against the request's dataclass fields."""
    cmd = _commands()[path]
    signature = inspect.signature(cmd.callback).parameters
    options = {name for name in signature if name not in COMMAND_LINE_ONLY | {"ctx"}}
    fields = {f.name: f for f in dataclasses.fields(spec.request)}
    assert options == set(fields), (sorted(options - set(fields)), sorted(set(fields) - options))
    command_types, request_types = param_types(cmd), value_types(spec.request)
    for name in options:
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        assert signature[name].default == default, (name, signature[name].default, default)
        assert command_types[name] == request_types[name], (name, command_types[name], request_types[name])
