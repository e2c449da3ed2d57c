"""Options every subcommand shares, recipe loading, progress display and error-to-exit-code mapping.

This module must stay cheap to import: `vmt --help` may not pull in torch or diffusers.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

# Messages, progress and tables for humans go to stderr; stdout stays clean for scripts.
console = Console(stderr=True, highlight=False)

DEFAULT_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Hub id (read through the HF cache) or a local "
                                       "diffusers folder.", rich_help_panel="Model")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).",
                                                 rich_help_panel="Model")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto: cuda when available).",
                                        rich_help_panel="Runtime")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16 "
                                       "(auto: bfloat16 on cuda, float32 on cpu).", rich_help_panel="Runtime")]
OffloadOpt = Annotated[str, typer.Option("--offload", help="none | model | sequential: CPU offload to fit "
                                         "smaller GPUs (model: ~largest component on GPU; sequential: "
                                         "smallest, slowest).", rich_help_panel="Runtime")]
VaeTilingOpt = Annotated[bool, typer.Option("--vae-tiling/--no-vae-tiling", help="Decode the VAE in tiles "
                                            "(bounded memory at large sizes).", rich_help_panel="Runtime")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; fixes the result on the same device and "
                                      "dtype.", rich_help_panel="Runtime")]
RecipeOpt = Annotated[Path | None, typer.Option("--recipe", help="TOML recipe of parameter values; flags given "
                                                "on the command line override it.", rich_help_panel="Runtime")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Output file; a JSON sidecar with the same "
                                         "stem records how it was made.", rich_help_panel="Output")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.",
                                            rich_help_panel="Output")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or tables; errors only.",
                                        rich_help_panel="Output")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and library logs.",
                                        rich_help_panel="Output")]

# Options that describe how to run, not what to compute: never taken from a recipe.
_NOT_FROM_RECIPE = {"recipe", "output", "overwrite", "quiet", "debug"}


def load_recipe(path: Path, command: str, allowed: set[str]) -> dict[str, Any]:
    """Read a TOML recipe: keys at top level or under a [command] table; unknown keys are errors."""
    import tomllib

    from vmt.errors import VmtUsageError

    if not path.is_file():
        raise VmtUsageError(f"recipe {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise VmtUsageError(f"recipe {path} is not valid TOML: {e}") from e
    values: dict[str, Any] = {}
    for key, val in data.items():
        if isinstance(val, dict):
            if key in ("meta", "about"):
                continue  # free-form description of the recipe
            if key != command:
                raise VmtUsageError(f"recipe {path} has a [{key}] table; this command reads [{command}]")
            values.update(val)
        else:
            values[key] = val
    out = {}
    for key, val in values.items():
        name = key.replace("-", "_")
        if name not in allowed:
            raise VmtUsageError(
                f"recipe {path}: unknown key {key!r} for `vmt {command}`; known keys: "
                + ", ".join(sorted(k.replace('_', '-') for k in allowed))
            )
        out[name] = val
    return out


def resolve_params(ctx: typer.Context, command: str, params: dict[str, Any], recipe: Path | None) -> dict[str, Any]:
    """Merge a recipe into the parameters: recipe values replace defaults, command-line flags win."""
    if recipe is None:
        return dict(params)
    allowed = {k for k in params if k not in _NOT_FROM_RECIPE}
    from_recipe = load_recipe(recipe, command, allowed)
    merged = dict(params)
    for key, val in from_recipe.items():
        source = ctx.get_parameter_source(key)
        # Compared by name: typer may ship its own copy of click's ParameterSource enum.
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            merged[key] = val
    return merged


def quiet_libraries(debug: bool) -> None:
    """Silence diffusers/transformers progress bars and info logs unless --debug."""
    if debug:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore")
    try:
        import diffusers.utils.logging as dl
        import transformers.utils.logging as tl

        dl.set_verbosity_error()
        dl.disable_progress_bar()
        tl.set_verbosity_error()
        tl.disable_progress_bar()
    except Exception:  # a missing optional library must not break the command
        pass


def run_guarded(fn: Callable[[], Any], debug: bool) -> Any:
    """Run a command body: user errors -> one line + their exit code; Ctrl-C -> 130; bugs -> 1."""
    from vmt.errors import VmtError

    try:
        return fn()
    except VmtError as e:
        if debug:
            console.print_exception()
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: no output was written")
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except Exception as e:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {type(e).__name__}: {e} (rerun with --debug for the traceback)",
                      soft_wrap=True)
        raise typer.Exit(1) from None


@contextmanager
def step_progress(total: int, description: str, quiet: bool):
    """A rich progress bar over `total` steps; yields `advance(**fields)`. No-op when quiet."""
    if quiet:
        yield lambda **kw: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    ) as progress:
        task = progress.add_task(description, total=total, info="")

        def advance(**fields: Any) -> None:
            info = "  ".join(f"{k}={v}" for k, v in fields.items())
            progress.update(task, advance=1, info=info)

        yield advance


@contextmanager
def status(message: str, quiet: bool):
    """A spinner while something without steps runs (model loading, decoding)."""
    if quiet:
        yield
        return
    t0 = time.perf_counter()
    with console.status(message):
        yield
    console.print(f"[dim]{message.rstrip('.')} done ({time.perf_counter() - t0:.1f}s)[/]")


def reflow(text: str) -> str:
    """Command help for typer's rich markup: typer keeps single line breaks after the first paragraph, so
    source-wrapped prose would break mid-sentence at the terminal's width. Joins the lines of each prose
    paragraph so the terminal wraps it; paragraphs with indented lines (examples) stay as written."""
    out = []
    for para in text.strip("\n").split("\n\n"):
        lines = para.splitlines()
        out.append(para if any(ln.startswith(" ") for ln in lines) else " ".join(ln.strip() for ln in lines))
    return "\n\n".join(out)


def command_line() -> list[str]:
    return ["vmt", *sys.argv[1:]]
