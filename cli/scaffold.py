"""The one path every command takes: recipe merged with typed conversion, every number, input and output
validated before any heavy import, SIGTERM/SIGHUP handled like Ctrl-C, errors mapped to exit codes once.

A command declares a `CommandSpec` (which parameters are input paths, which are outputs and of what kind,
which numbers have which range) and calls `run_command(ctx, SPEC, locals(), body)`; `body(p)` receives the
resolved parameters and makes one call into `vmt/`. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from cli.display import console

# Exit codes: 0 success, 1 runtime error, 2 usage error, 128 + N killed by signal N (130 Ctrl-C, 143 SIGTERM).
EXIT_RUNTIME = 1
EXIT_USAGE = 2

# Options that say how to run, not what to compute: never taken from a recipe.
NOT_FROM_RECIPE = frozenset({"recipe", "output", "overwrite", "quiet", "debug"})


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM / SIGHUP, so that every `finally` (temporaries, ffmpeg) runs.

    A BaseException like KeyboardInterrupt: library code that catches Exception does not swallow it.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def termination_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` for the duration; a second signal during cleanup is ignored."""
    fired = False

    def handler(signum, frame):
        nonlocal fired
        if fired:
            return
        fired = True
        raise Terminated(signum)

    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    try:
        previous = {s: signal.signal(getattr(signal, s), handler) for s in names}
    except ValueError:  # not the main thread (e.g. called from a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(getattr(signal, s), h)


def print_error(message: str) -> None:
    """One line on stderr, printed literally: bracketed text (ffmpeg's `[in#0 @ ...]`) is not markup."""
    from rich.text import Text

    line = " ".join(str(message).split())
    console.print(Text.assemble(("error: ", "bold red"), line), soft_wrap=True)


def exit_code(error: BaseException) -> int:
    """The exit code of a library error: a bad request 2, anything else 1 (eval maps runtime errors to 3)."""
    from vmt.errors import VmtUsageError

    return EXIT_USAGE if isinstance(error, VmtUsageError) else EXIT_RUNTIME


def run_guarded(fn: Callable[[], Any], debug: bool, ctx: Any = None,
                code_of: Callable[[BaseException], int] = exit_code) -> Any:
    """Run a command body: user errors -> one line (parameters written as the command's flags) + their exit
    code (`code_of`); Ctrl-C -> 130; SIGTERM -> 143, SIGHUP -> 129 (temporaries removed on the way out);
    bugs -> 1 with a hint to rerun with --debug."""
    from vmt.errors import VmtError
    from vmt.io.atomic import placed_count

    mark = placed_count()
    with termination_signals():
        try:
            return fn()
        except VmtError as e:
            if debug:
                console.print_exception()
            print_error(error_text(e, ctx))
            raise typer.Exit(code_of(e)) from None
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]: {_written_before_signal(mark)}", soft_wrap=True)
            raise typer.Exit(130) from None
        except Terminated as e:
            name = signal.Signals(e.signum).name
            console.print(f"[yellow]terminated[/] ({name}): {_written_before_signal(mark)}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as e:
            if debug:
                raise
            print_error(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)")
            raise typer.Exit(EXIT_RUNTIME) from None


def _written_before_signal(mark: int) -> str:
    """What an interrupted command leaves: the files it completed (a commit the signal waited for), or none."""
    from rich.markup import escape

    from vmt.io.atomic import placed_since

    done = placed_since(mark)
    if not done:
        return "no output was written"
    names = ", ".join(escape(str(p)) for p in done[-2:])
    more = f" and {len(done) - 2} more" if len(done) > 2 else ""
    return f"{names}{more} {'was' if len(done) == 1 else 'were'} written whole before the signal; nothing is half-written"


# ---------------------------------------------------------------- declarations


# Ranges are declared in the library (on the run requests' fields); the command line uses the same ones.
from vmt.runs.fields import (  # noqa: E402  (re-exported for the command modules)
    AT_LEAST_1 as AT_LEAST_1,
    FPS as FPS,
    NON_NEGATIVE as NON_NEGATIVE,
    POSITIVE as POSITIVE,
    SEED as SEED,
    UNIT as UNIT,
    Range as Range,
)

# Ranges every command gets for these parameter names unless its CommandSpec says otherwise.
DEFAULT_RANGES = {"seed": SEED, "fps": FPS, "video_fps": FPS}
# Text options that may be empty: everything else given as "" (an unset shell variable) is an error.
EMPTY_OK = frozenset({"negative_prompt"})


@dataclass(frozen=True)
class Output:
    """An output parameter: a file with one of `suffixes` (and a JSON sidecar), or a folder."""

    suffixes: frozenset[str] | None = None
    sidecar: bool = True
    folder: bool = False
    stdout_ok: bool = False  # "-" writes to standard output


def video_output() -> Output:
    from vmt.io.video import VIDEO_WRITE_SUFFIXES

    return Output(VIDEO_WRITE_SUFFIXES)


NPZ_OUTPUT = Output(frozenset({".npz"}))
JSON_REPORT = Output(frozenset({".json"}), sidecar=False, stdout_ok=True)
HTML_REPORT = Output(frozenset({".html"}), sidecar=False)
RUN_FOLDER = Output(folder=True, sidecar=False)


@dataclass(frozen=True)
class CommandSpec:
    """What the scaffold checks for one command before its body runs.

    name: the recipe table and sidecar subcommand ("refine", "longgen-sample").
    inputs: parameter -> "file" | "dir" | "any" (must exist, and be of that kind).
    outputs: parameter -> Output.
    ranges: parameter -> Range, for numbers beyond "finite" (every float must at least be finite); by
    default the declared ranges of `request`.
    request: the run request (vmt.runs) whose fields the options are: recipe values take their types from it.
    requests: further run requests of a command that runs one of several (longgen sample: EncGAN3 or a Wan
    chain); every option is a field of one of them, and an option two of them share has one default and type.
    """

    name: str
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, Output | Callable[[], Output]] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)
    request: type | None = None
    requests: tuple[type, ...] = ()

    def __post_init__(self) -> None:
        if self.request is not None and not self.ranges:  # declared once, on the request's fields
            from vmt.runs.fields import ranges_of

            merged: dict[str, Range] = {}
            for cls in (*self.requests[::-1], self.request):
                merged.update(ranges_of(cls))
            object.__setattr__(self, "ranges", merged)

    @property
    def all_requests(self) -> tuple[type, ...]:
        return () if self.request is None else (self.request, *self.requests)

    def output(self, name: str) -> Output:
        out = self.outputs[name]
        return out() if callable(out) else out


# ---------------------------------------------------------------- recipes


def _params_by_name(ctx: Any) -> dict[str, Any]:
    """`ctx`: a typer Context, or a command object itself."""
    cmd = getattr(ctx, "command", ctx)
    return {p.name: p for p in cmd.params if p.name}


def _as_flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def error_text(error: BaseException, ctx: Any = None) -> str:
    """An error as the command line says it: a library error with its parameters written as flags, anything
    else with its type."""
    from vmt.errors import VmtError

    if isinstance(error, VmtError):
        return _with_flags(error, ctx)
    return f"{type(error).__name__}: {error}"


def note_text(note: str, ctx: Any = None) -> str:
    """A library note as the command line says it: a vmt.errors.Note with its parameters written as flags,
    any other text as it is."""
    from vmt.errors import Note

    return _with_flags(note, ctx) if isinstance(note, Note) else note


def _with_flags(text: Any, ctx: Any) -> str:
    """A VmtError or Note rendered with each parameter as the command's flag."""
    return text.render(lambda name: flag(ctx, name)) if ctx is not None else text.render(_as_flag)


def flag(ctx: Any, name: str) -> str:
    """How the user writes parameter `name`: its long option (--guidance-scale) or its argument (REFERENCE)."""
    param = _params_by_name(ctx).get(name)
    opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
    if param is None:
        return "--" + name.replace("_", "-")
    if not opts:
        return name.upper()
    longs = [o for o in opts if o.startswith("--")]
    return longs[0] if longs else opts[0]


def param_types(ctx: Any, request: type | None = None) -> dict[str, tuple[type, bool]]:
    """Parameter name -> (base type, is a list): a run request's fields as the request declares them
    (vmt.runs.fields.value_types), the command's other options from the command function's annotations."""
    if request is not None:
        from vmt.runs.fields import value_types

        return {**param_types(ctx), **value_types(request)}
    import types
    import typing

    fn = getattr(ctx, "command", ctx).callback
    if fn in _TYPES_CACHE:  # the annotations never change
        return _TYPES_CACHE[fn]
    hints = typing.get_type_hints(fn, include_extras=False) if fn is not None else {}
    out = {}
    for name, hint in hints.items():
        if name == "return":  # the function's return annotation, not a parameter
            continue
        is_list = False
        for _ in range(3):  # peel Optional[...] and list[...]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            origin = typing.get_origin(hint)
            if origin in (typing.Union, types.UnionType) and len(args) == 1:
                hint = args[0]
            elif origin is list and args:
                hint, is_list = args[0], True
        out[name] = (hint if isinstance(hint, type) else str, is_list)
    if fn is not None:
        _TYPES_CACHE[fn] = out
    return out


_TYPES_CACHE: dict[Any, dict[str, tuple[type, bool]]] = {}


def recipe_values(ctx: Any, path: Path, command: str, allowed: set[str],
                  request: type | None = None) -> dict[str, Any]:
    """A TOML recipe's values in the options' types (vmt.recipes.recipe_values; a request's fields as it
    declares them, the command's other options as annotated)."""
    from vmt.recipes import recipe_values as read

    return read(path, command, param_types(ctx, request), allowed)


class Params(dict):
    """Resolved parameter values; `given` names those set on the command line or by the recipe (not defaults)."""

    given: frozenset[str] = frozenset()


def _from_default(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    # Compared by name: typer ships its own copy of click's ParameterSource enum.
    return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")


def resolve_params(ctx: typer.Context, command: str, params: dict[str, Any], recipe: Path | None,
                   not_from_recipe: frozenset[str] = NOT_FROM_RECIPE, request: type | None = None) -> Params:
    """Merge a recipe into the parameters: recipe values replace defaults, command-line flags win."""
    from vmt.recipes import find_recipe

    merged = Params(params)
    given = {k for k in params if not _from_default(ctx, k)}
    if recipe is not None:
        merged["recipe"] = path = find_recipe(recipe, command)
        allowed = {k for k in params if k not in not_from_recipe and k in _params_by_name(ctx)}
        for key, val in recipe_values(ctx, path, command, allowed, request).items():
            if _from_default(ctx, key):
                merged[key] = val
                given.add(key)
    merged.given = frozenset(given)
    return merged


# ---------------------------------------------------------------- validation


def check_values(ctx: typer.Context, spec: CommandSpec, p: dict[str, Any]) -> None:
    """Every float is finite (unless its Range allows inf), every declared range holds (and the default ranges
    of seeds and frame rates), and no text option is empty unless it may be."""
    from vmt.errors import VmtUsageError

    types_ = param_types(ctx, spec.request)
    declared = _params_by_name(ctx)
    for name, value in p.items():
        if (isinstance(value, str) and not value.strip() and name not in EMPTY_OK and name in declared
                and value != declared[name].default):  # an option whose own default is "" keeps it
            raise VmtUsageError(f"{flag(ctx, name)} is empty (an unset shell variable?); give a value or leave "
                                "the option out")
        rng = spec.ranges.get(name, DEFAULT_RANGES.get(name))
        is_float = types_.get(name, (None,))[0] is float
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if rng is None:
            if is_float and not math.isfinite(value):
                raise VmtUsageError(f"{flag(ctx, name)} must be a finite number, got {value}")
            continue
        if not rng.holds(value):
            raise VmtUsageError(f"{flag(ctx, name)} must be {rng.describe()}, got {value}")


def check_paths(ctx: typer.Context, spec: CommandSpec, p: dict[str, Any]) -> None:
    """Inputs exist and are of their kind; outputs have a valid suffix, folder and overwrite state, and no
    output (sidecars included) is an input or another output."""
    from vmt.errors import VmtUsageError
    from vmt.io.atomic import check_not_inputs, check_output_path, sidecar_path

    inputs: dict[str, Path] = {}
    for name, kind in spec.inputs.items():
        values = p.get(name)
        values = values if isinstance(values, list) else [values]
        for i, v in enumerate(x for x in values if x is not None):
            path, f = Path(v).expanduser(), flag(ctx, name)
            label = f"{f} {path}" if f.startswith("-") else str(path)
            if not path.exists():
                raise VmtUsageError(f"{label} not found; check the path")
            if kind == "file" and path.is_dir():
                raise VmtUsageError(f"{label} is a folder; give a file")
            if kind == "dir" and not path.is_dir():
                raise VmtUsageError(f"{label} is a file; give a folder")
            inputs[f if i == 0 else f"{f} #{i + 1}"] = path
    if p.get("recipe") is not None and Path(p["recipe"]).is_file():
        inputs["--recipe"] = Path(p["recipe"])
    outputs: dict[str, Path] = {}
    files: list[tuple[str, Path, Output]] = []
    for name in spec.outputs:
        v = p.get(name)
        out, f = spec.output(name), flag(ctx, name)
        if v is None or (out.stdout_ok and str(v) == "-"):
            continue
        path = Path(v).expanduser()
        outputs[f] = path
        if out.folder:
            if path.exists() and not path.is_dir():
                raise VmtUsageError(f"{f} {path} is a file; give a folder to write the run into")
            continue
        files.append((f, path, out))
        if out.sidecar:
            outputs[f"{f} sidecar"] = sidecar_path(path)
    check_not_inputs(outputs, inputs)  # first: "pass --overwrite" would be the wrong advice for an input
    for f, path, out in files:
        check_output_path(path, bool(p.get("overwrite", False)), sidecar=out.sidecar, suffixes=out.suffixes,
                          what=f)


# ---------------------------------------------------------------- the command path


def run_command(ctx: typer.Context, spec: CommandSpec, params: dict[str, Any],
                body: Callable[[dict[str, Any]], Any], code_of: Callable[[BaseException], int] = exit_code) -> Any:
    """Resolve, validate and run one command. `params` are the command function's locals()."""
    from vmt.io.atomic import output_policy

    params = {k: v for k, v in params.items() if k != "ctx"}

    def go() -> Any:
        p = resolve_params(ctx, spec.name, params, params.get("recipe"),
                           NOT_FROM_RECIPE | frozenset(spec.outputs), spec.request)
        check_values(ctx, spec, p)
        check_paths(ctx, spec, p)
        with output_policy(bool(p.get("overwrite", False))):
            return body(p)

    return run_guarded(go, bool(params.get("debug", False)), ctx, code_of)


def bare_command(root: Any, args: list[str]) -> bool:
    """Whether `args` name a (sub)command that shows its help when given nothing (`no_args_is_help`) and
    give it nothing: `vmt`, `vmt refine`, `vmt longgen train`. Walks the public command tree."""
    cmd = root
    for arg in args:
        cmd = getattr(cmd, "commands", {}).get(arg)
        if cmd is None:
            return False
    return bool(getattr(cmd, "no_args_is_help", False))


def main_standalone(command: Any, args: list[str] | None, prog_name: str | None, **extra: Any) -> int:
    """Run the root command; usage errors become one line on stderr (exit 2); returns the exit code."""
    try:
        rv = command.main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        console.print("[yellow]interrupted[/]")
        return 130
    except typer.TyperException as e:  # typer's click: UsageError, BadParameter, NoSuchOption, ...
        ctx = getattr(e, "ctx", None)
        msg = " ".join(e.format_message().split()) if hasattr(e, "format_message") else str(e)
        if ctx is not None:
            msg += f" (see `{ctx.command_path} --help`)"
        print_error(msg)
        return getattr(e, "exit_code", EXIT_USAGE)
    return rv if isinstance(rv, int) else 0
