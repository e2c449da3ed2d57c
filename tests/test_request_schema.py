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
    """(command path, CommandSpec) of every command whose spec names a run request: the module-level
    CommandSpec its callback runs with (a name its body refers to)."""
    found = []
    for path, cmd in _commands().items():
        fn = inspect.unwrap(cmd.callback)  # typer wraps the command function
        module = vars(sys.modules[fn.__module__])
        specs = [module[n] for n in fn.__code__.co_names
                 if isinstance(module.get(n), CommandSpec) and module[n].request is not None]
        if specs:
            found.append((path, specs[0]))
    return found


def test_commands_with_requests():
    assert {path for path, _ in _specs()} >= {"refine", "transfer", "predict-keypoints train",
                                               "predict-keypoints run", "longgen sample"}
    assert {r.__name__ for p, s in _specs() if p == "longgen sample" for r in s.all_requests} == {
        "LonggenSampleRequest", "WanChainRequest"}


@pytest.mark.parametrize("path, spec", _specs(), ids=[p for p, _ in _specs()])
def test_options_are_the_request_fields(path, spec):
    """The command function's parameters (what Typer builds the options from: names, annotations, defaults)
    against the request's dataclass fields. A command with several requests (spec.requests: longgen sample
    runs EncGAN3 or a Wan chain) has the union of their fields as options, and an option two requests share
    has the default and type of each."""
    cmd = _commands()[path]
    signature = inspect.signature(inspect.unwrap(cmd.callback)).parameters
    for request in spec.all_requests:
        _check_fields(cmd, signature, spec, request, {f.name for r in spec.all_requests
                                                      for f in dataclasses.fields(r)})


def _check_fields(cmd, signature, spec, request, all_fields: set[str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(request)}
    # predict-keypoints train's --batch is a batch size, a field; elsewhere --batch is the job file
    # (outputs are arguments of run(), not fields)
    command_line_only = COMMAND_LINE_ONLY | set(spec.outputs)
    options = {name for name in signature if name != "ctx" and (name in all_fields or name not in command_line_only)}
    assert options == all_fields, (sorted(options - all_fields), sorted(all_fields - options))
    assert set(fields) <= options
    command_types, request_types = param_types(cmd), value_types(request)
    for name in fields:
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        given = signature[name].default
        given = None if given is inspect.Parameter.empty else given  # a required argument: no default
        assert given == default, (name, given, default)
        assert command_types[name] == request_types[name], (name, command_types[name], request_types[name])
