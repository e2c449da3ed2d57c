"""`vmt`: the command-line entry point. Subcommands live one per module and import heavy libraries lazily."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli import eval as eval_cli
from cli import keypoints as predict_keypoints
from cli import compare, longgen, refine, transfer
from cli.display import show_recipes
from cli.scaffold import NOT_FROM_RECIPE, bare_command, main_standalone, recipe_values


class VmtGroup(TyperGroup):
    """The root command: usage errors (a bad flag value, a missing option) are one line on stderr, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = sys.argv[1:] if args is None else list(args)
        if bare_command(self, args):  # `vmt refine` with nothing else: its help, as --help shows it, exit 0
            args = [*args, "--help"]
        code = main_standalone(super(), args, prog_name or "vmt", complete_var=complete_var, **extra)
        if standalone_mode:
            raise SystemExit(code)
        return code


app = typer.Typer(
    cls=VmtGroup,
    name="vmt",
    help="Inference-time video motion methods for flow-matching video generators (Wan2.1 / Wan2.2).\n\n"
    "Every output gets a JSON sidecar (out.mp4 -> out.json) with the parameters, model revision, versions, "
    "timings and compute counts. Run `vmt COMMAND --help` for each command's options.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        import vmt

        typer.echo(f"vmt {vmt.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """vmt: video motion toolkit."""


app.command("refine", help=refine.HELP, no_args_is_help=True,
            short_help="Text/image-to-video on Wan with Predict-and-Perturb self-refining sampling.")(refine.refine)
app.command("transfer", help=transfer.HELP, no_args_is_help=True,
            short_help="Motion transfer from a reference video (FastVMT windowed AMF guidance).")(transfer.transfer)
app.add_typer(longgen.app, name="longgen", help=longgen.HELP)


@app.command("recipes", short_help="List the recipes shipped with vmt (use one with --recipe NAME).")
def recipes() -> None:
    """List the recipes shipped with vmt: the settings of published setups. Pass one to its command with
    --recipe NAME; flags given on the command line override its values. In a terminal: a table; in a pipe:
    one line per recipe (command, name, path, about; tab-separated)."""
    from vmt.recipes import list_recipes

    show_recipes(list_recipes())

app.add_typer(predict_keypoints.app, name="predict-keypoints")
app.add_typer(eval_cli.app, name="eval")
app.command("compare", help=compare.HELP, no_args_is_help=True,
            short_help="Does A beat B? Paired metrics with confidence intervals over seeds and prompts.")(
    compare.compare)


def find_command(path: str) -> Any:
    """The command object of `vmt PATH` ("refine", "longgen train")."""
    from typer.main import get_command

    cmd = get_command(app)
    for part in path.split():
        cmd = cmd.commands[part]
    return cmd


def load_recipe(path: Path, command: str) -> dict[str, Any]:
    """A recipe's typed values for `vmt COMMAND` ("longgen train"), checked against its real options."""
    cmd = find_command(command)
    allowed = {p.name for p in cmd.params if p.name and p.name not in NOT_FROM_RECIPE}
    return recipe_values(cmd, Path(path), command.replace(" ", "-"), allowed)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
