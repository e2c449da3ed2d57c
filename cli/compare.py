"""`vmt compare A B`: paired comparison of two sets of outputs of the same jobs (vmt.runs.compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import DebugOpt, DeviceOpt, OverwriteOpt, QuietOpt, command_line, status
from cli.display import show_compare
from cli.eval import eval_exit_code
from cli.scaffold import run_command, HTML_REPORT, JSON_REPORT, CommandSpec
from vmt.runs.compare import CompareRequest
from vmt.runs.fields import request_from

HELP = """Does A beat B? Paired metrics of two sets of outputs of the same jobs, with a bootstrap confidence
interval resampled by prompt, the win rate, a verdict per metric, and the compute each side paid.

A and B: two `--batch` output folders (or their manifest.jsonl), paired by job (prompt, seed, reference),
or two folders of videos paired by file name.

[bold]Examples[/]

  vmt refine --batch prompts.txt --seeds 0-4 -o pnp/ --plan default

  vmt refine --batch prompts.txt --seeds 0-4 -o plain/ --plan none

  vmt compare pnp/ plain/ --json compare.json --gate warp_error

  vmt compare transfers/ baseline/ --metrics temporal,motion          # transfer batches know their references

  vmt compare pnp/ plain/ --html compare.html     # a page to look at: plots, thumbnails, side-by-side videos

  vmt compare pnp/ plain/ --references real/ --i3d i3d_torchscript.pt --inception inception-2015-12-05.pt

FVD (--i3d) and FID (--inception) are set metrics: each side's distance to the --references set, the
difference, and an interval from --set-resamples resamples of the prompt groups (fewer than the per-pair
metrics: every resample recomputes two Frechet distances); there is no per-pair win rate.

Verdicts: a_better or b_better when the whole 95% interval of the mean difference is on one side of 0,
else no_difference. Exit codes: 0 ok, 1 A is detectably worse than B on a --gate metric, 2 bad usage,
3 the comparison could not be computed.
"""


def compare(
    ctx: typer.Context,
    a: Annotated[Path | None, typer.Argument(help="Outputs of method A: a batch output folder, its manifest, "
                                             "or a folder of videos.", show_default=False)] = None,
    b: Annotated[Path | None, typer.Argument(help="Outputs of method B, of the same jobs.",
                                             show_default=False)] = None,
    references: Annotated[Path | None, typer.Option("--references", help="Folder of reference videos paired "
                                                    "by file name (motion metrics).", show_default=False)] = None,
    metrics: Annotated[str, typer.Option("--metrics", help="auto (temporal, + motion with references) or a "
                                         "comma-separated list of temporal, motion, physics, seams.")] = "auto",
    gate: Annotated[list[str] | None, typer.Option("--gate", help="Exit 1 when A is detectably worse than B "
                                                   "on this metric (repeatable).", show_default=False)] = None,
    clip_length: Annotated[int | None, typer.Option("--clip-length", help="Frames per clip (seams).",
                                                    show_default=False)] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Read at most this many frames of "
                                                   "each video.", show_default=False)] = None,
    resamples: Annotated[int, typer.Option("--resamples", help="Bootstrap resamples.")] = 10_000,
    level: Annotated[float, typer.Option("--level", help="Confidence level of the intervals.")] = 0.95,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    html_videos: Annotated[int, typer.Option("--html-videos", help="Pairs shown as side-by-side videos "
                                             "(reference | A | B) in the HTML report: best, worst, median.")] = 3,
    i3d: Annotated[Path | None, typer.Option("--i3d", help="I3D TorchScript file (i3d_torchscript.pt): adds "
                                             "FVD against --references.", show_default=False)] = None,
    inception: Annotated[Path | None, typer.Option("--inception", help="Inception TorchScript file "
                                                   "(inception-2015-12-05.pt): adds per-frame FID against "
                                                   "--references.", show_default=False)] = None,
    set_resamples: Annotated[int, typer.Option("--set-resamples", help="Bootstrap resamples of the set "
                                               "metrics (FVD, FID).")] = 200,
    device: DeviceOpt = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report (schema vmt.compare/1) "
                                                  "here; - for stdout.", show_default=False)] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page of the "
                                                  "report here: verdicts, plots, thumbnails, videos.",
                                                  show_default=False)] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    run_command(ctx, SPEC, locals(), _compare, eval_exit_code)


SPEC = CommandSpec("compare", inputs={"a": "any", "b": "any", "references": "dir"},
                   outputs={"json_out": JSON_REPORT, "html_out": HTML_REPORT}, request=CompareRequest)


def _compare(p: dict) -> None:
    to_stdout = p["json_out"] is not None and str(p["json_out"]) == "-"
    with status("Scoring both sets...", p["quiet"] or to_stdout):
        report = request_from(CompareRequest, p).run(None if to_stdout else p["json_out"], html_out=p["html_out"],
                                                     overwrite=p["overwrite"], command=command_line(),
                                                     debug=p["debug"])
    show_compare(report, p["quiet"], to_stdout)
    if not report["gate"]["passed"]:
        raise typer.Exit(1)
