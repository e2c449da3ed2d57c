"""`vmt eval`: the papers' metrics as one command, with JSON reports and a baseline regression gate.

The work is the requests' of vmt.runs.eval (one per subcommand: inputs expanded, rows scored through the
metric modules' `score_*`/`summarize`, the report built, gated and written); this module declares the options,
shows progress, prints what the result says and maps its outcome to the exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.common import (
    DebugOpt,
    DeviceOpt,
    OverwriteOpt,
    QuietOpt,
    command_line,
    console,
    reflow,
    step_progress,
)
from cli.display import rich_table
from cli.scaffold import CommandSpec, note_text, run_command
from vmt.errors import VmtUsageError
from vmt.runs.eval import (
    FidRequest,
    FvdRequest,
    KeypointsEvalRequest,
    MotionEvalRequest,
    PhysicsEvalRequest,
    DriftEvalRequest,
    SeamsEvalRequest,
    TemporalEvalRequest,
)
from vmt.runs.fields import request_from

HELP = """Score videos with the metrics of the papers vmt implements; print a table, write JSON, gate CI.

[bold]Examples[/]

  vmt eval motion ref.mp4 out.mp4

  vmt eval temporal outputs/ --json temporal.json

  vmt eval fvd real/ 'gen/*.mp4' --i3d ~/detectors/i3d_torchscript.pt --json fvd.json

  vmt eval fvd real/ gen/ --i3d i3d.pt --baseline fvd.json --tolerance fvd=5%   # exit 1 on regression

Inputs (REAL, GEN, VIDEO...) are a video file, a folder of videos, or a quoted glob (an existing path is
taken as it is, even with [ ] in its name; folders and globs skip hidden files, such as vmt's .part
temporaries). A file that fails (unreadable, or a metric that crashes on it) is
listed with its error; the run then exits 3 unless [bold]--skip-bad[/] is given. Reports follow the versioned
schema vmt.eval/1.1 and record the inputs' content hashes and the versions of the packages that decide the
numbers; a report is a valid [bold]--baseline[/] for a later run of the same subcommand on the same inputs with
the same parameters (anything else is refused unless [bold]--allow-different-inputs[/]; a baseline made with
other package versions is compared, with a note). A baseline must hold every metric the subcommand gates, each
with a finite value or null. The seam score is gated by its distance to 1.

[bold]Exit codes[/]: 0 pass, or no --baseline given (the result line says "no baseline"); 1 regression against
--baseline; 2 usage error (bad option, malformed or unusable baseline, an output that is an input); 3 runtime
error (unreadable inputs without --skip-bad, a metric that failed).
"""

app = typer.Typer(name="eval", help=None, no_args_is_help=True, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]})


app.info.help = reflow(HELP)

JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the report (schema vmt.eval/1.1) to this "
                                              "file; '-' writes it to stdout.", rich_help_panel="Report")]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Also write a self-contained HTML page of the "
                                              "report (tables, per-input plots, baseline checks) here.",
                                              rich_help_panel="Report", show_default=False)]
BaselineOpt = Annotated[Path | None, typer.Option("--baseline", help="A previous --json report of the same "
                                                  "subcommand, inputs and parameters: exit 1 when a metric is "
                                                  "worse than there by more than its tolerance.",
                                                  rich_help_panel="Report")]
ToleranceOpt = Annotated[list[str] | None, typer.Option("--tolerance", "-t", help="NAME=VALUE (absolute) or "
                                                        "NAME=VALUE% (of the baseline's value); repeatable; "
                                                        "'*=2%' sets the default (0: any worsening fails; for the "
                                                        "seam score, moving further from 1); 'auto': 3 "
                                                        "standard errors of the difference of the means, from "
                                                        "the spread of both reports' per-input values (a "
                                                        "baseline over several seeds does not flap).",
                                                        rich_help_panel="Report")]
AllowDiffOpt = Annotated[bool, typer.Option("--allow-different-inputs", help="Compare with a baseline made on "
                                            "other inputs (content) or parameters (recorded in the report).",
                                            rich_help_panel="Report")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Exit 0 even if some inputs failed (they are "
                                          "still listed and reported).", rich_help_panel="Report")]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", help="Use at most this many frames of each "
                                                  "video.")]


# ---------------------------------------------------------------- shared plumbing

# Exit codes of `vmt eval`, a CI gate: a regression (1) must be told apart from a run that failed (3).
EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3
EXIT_CODES = {"error": EXIT_RUNTIME, "regression": EXIT_REGRESSION}  # by the result's outcome; others pass
# How each kind of line of a result's view (vmt.runs.eval.EvalResult.view) is shown.
STYLES = {"warning": "[yellow]warning:[/] ", "note": "[yellow]note:[/] ", "failed": "[bold red]",
          "input_error": "  [red]", "wrote": "[green]wrote[/] ", "error": "[bold red]result: ERROR[/] ",
          "regression": "[bold red]result: REGRESSION[/] ", "no baseline": "[yellow]result: no baseline[/] ",
          "nothing compared": "[yellow]result: nothing compared[/] ", "pass": "[green]result: pass[/] "}


def run_eval(ctx: typer.Context, spec: CommandSpec, params: dict[str, Any], request_class: type) -> None:
    """The scaffold's `run_command` (numbers and declared paths checked first, signals, one-line errors) with
    eval's exit codes: usage errors 2, anything else that fails 3 (the request raises every failure as a
    VmtError), and by the result's outcome: failed inputs without --skip-bad 3, a regression 1, else 0."""
    def body(p: dict) -> None:
        request = request_from(request_class, p)
        plan = request.check()
        with step_progress(plan.total, request.progress_label, p["quiet"] or plan.total < 2) as advance:
            result = request.run(plan, progress=lambda d, t, i: advance(**i), record=p, command=command_line())
        for kind, block in result.view(p["quiet"]):
            console.print(rich_table(*block) if kind == "table" else STYLES[kind] + escape(note_text(block, ctx)))
        raise typer.Exit(EXIT_CODES.get(result.outcome, EXIT_PASS))
    run_command(ctx, spec, params, body, eval_exit_code)


def eval_exit_code(error: BaseException) -> int:
    """A usage error 2; any other failure 3, never 1 (1 is a regression)."""
    return EXIT_USAGE if isinstance(error, VmtUsageError) else EXIT_RUNTIME


def eval_spec(name: str, request_class: type, inputs: dict[str, str] | None = None) -> CommandSpec:
    """A subcommand's declarations: its file inputs and --baseline must exist, numbers in the request's ranges.
    Videos given as folders or globs, and --json (which must not be any of them), are checked by the request
    once the inputs are expanded."""
    return CommandSpec(f"eval-{name}", inputs={"baseline": "file", **(inputs or {})}, request=request_class)


# ---------------------------------------------------------------- fvd / fid

@app.command("fvd", no_args_is_help=True, help=reflow("""Frechet Video Distance between two sets of videos.

I3D features (StyleGAN-V protocol: the first 16 frames of each video, short side resized to 224 and
centre-cropped, values in [-1, 1]) from the TorchScript detector i3d_torchscript.pt given with --i3d (or found
in $VMT_DETECTORS or ~/.cache/vmt/detectors). Needs at least 2 clips per set; papers use 2048.

[bold]Example[/]  vmt eval fvd real/ gen/ --i3d i3d_torchscript.pt --json fvd.json
"""))
def fvd(
    ctx: typer.Context,
    real: Annotated[str, typer.Argument(help="Real videos: file, folder or glob.", show_default=False)],
    gen: Annotated[str, typer.Argument(help="Generated videos: file, folder or glob.", show_default=False)],
    i3d: Annotated[Path | None, typer.Option("--i3d", help="I3D TorchScript file (i3d_torchscript.pt).")] = None,
    num_frames: Annotated[int, typer.Option("--num-frames", help="Frames per clip.")] = 16,
    size: Annotated[int, typer.Option("--size", help="Clip side in pixels.")] = 224,
    clips: Annotated[str, typer.Option("--clips", help="first: one clip per video (protocol); all: every "
                                       "non-overlapping clip.")] = "first",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Clips per detector call.")] = 8,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, FVD_SPEC, locals(), FvdRequest)


FVD_SPEC = eval_spec("fvd", FvdRequest)


@app.command("fid", no_args_is_help=True, help=reflow("""Per-frame FID (and IS of the generated frames) between two
sets of videos.

Inception features (inception-2015-12-05.pt of the StyleGAN2-ADA FID code, 2048-d pool features; frames
resized to 299) from the TorchScript file given with --inception.

[bold]Example[/]  vmt eval fid real/ gen/ --inception inception-2015-12-05.pt --stride 4 --is
"""))
def fid(
    ctx: typer.Context,
    real: Annotated[str, typer.Argument(help="Real videos: file, folder or glob.", show_default=False)],
    gen: Annotated[str, typer.Argument(help="Generated videos: file, folder or glob.", show_default=False)],
    inception: Annotated[Path | None, typer.Option("--inception", help="Inception TorchScript file.")] = None,
    stride: Annotated[int, typer.Option("--stride", help="Use every N-th frame.")] = 1,
    max_frames: MaxFramesOpt = None,
    inception_score: Annotated[bool, typer.Option("--is/--no-is", help="Also the Inception Score of the "
                                                  "generated frames.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Frames per detector call.")] = 32,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, FID_SPEC, locals(), FidRequest)


FID_SPEC = eval_spec("fid", FidRequest)


# ---------------------------------------------------------------- motion

@app.command("motion", no_args_is_help=True, help=reflow("""Motion fidelity of generated videos against a reference,
and a global direction check.

Weight-free: a grid of first-frame points tracked with pyramidal Lucas-Kanade (forward-backward checked);
tracks that move (RMS step >= --min-motion frame diagonals a frame) are compared by the cosine of their
displacement sequences; reference and generated tracks are matched one to one (weighted by how much each
moves), unmatched tracks count 0. 1: the same motion (a video against itself: exactly 1); ~0: unrelated
motion (real unrelated clips: median 0.03, 95th percentile below 0.65, see benchmarks/metrics.py); < 0:
opposite motion. `best_match` is the published form (each generated track's best reference match), which
rates unrelated motion well above 0. The direction check compares per-frame global shifts from phase
correlation and flags reversed motion. A static reference has no score (the reason is reported).

GEN may be several videos: each is compared with REF; if REF is a folder too, videos are paired by file name.
Any other pairing: --batch FILE, JSON Lines with {"reference": ..., "video": ...} a line (relative paths from
the file's folder), or the manifest.jsonl of `vmt transfer --batch` (each job's output against its own
reference; a job that is not done counts as a failed input). Generated videos are resized to the reference size.

[bold]Examples[/]  vmt eval motion ref.mp4 out.mp4
           vmt eval motion refs/ outs/ --json motion.json --baseline last.json -t motion_fidelity=0.02
           vmt eval motion --batch transfers/manifest.jsonl --json motion.json
"""))
def motion(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="Reference video(s): file, folder or glob.", metavar="REF",
                                              show_default=False)] = None,
    gen: Annotated[str | None, typer.Argument(help="Generated video(s): file, folder or glob.", metavar="GEN",
                                              show_default=False)] = None,
    batch: Annotated[Path | None, typer.Option("--batch", help="Pairs to score instead of REF GEN: a .jsonl of "
                                               '{"reference", "video"} lines, or a transfer batch\'s '
                                               "manifest.jsonl.", show_default=False)] = None,
    grid: Annotated[int, typer.Option("--grid", help="Tracked points along the longer side.")] = 40,
    fb_threshold: Annotated[float, typer.Option("--fb-threshold", help="Forward-backward error (pixels) "
                                                "that drops a track.")] = 1.0,
    min_motion: Annotated[float, typer.Option("--min-motion", help="RMS step (frame diagonals per frame) below "
                                              "which a track is static and left out.")] = 1e-3,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, MOTION_SPEC, locals(), MotionEvalRequest)


MOTION_SPEC = eval_spec("motion", MotionEvalRequest)


# ---------------------------------------------------------------- temporal

@app.command("temporal", no_args_is_help=True, help=reflow("""Temporal consistency of videos: flow-warping error with
an occlusion mask (DIS optical flow, forward-backward consistency), consecutive-frame SSIM and PSNR, VBench's
temporal flickering and dynamic degree (weight-free).

Warping error: mean over frame pairs of the squared RGB error ([0,1] scale) between frame t and frame t+1
warped back by the flow, over non-occluded pixels (lower is steadier). PSNR of identical frames is capped at
100 dB. flicker: VBench's (255 - mean |frame t+1 - frame t|) / 255 (1: no change). dynamic_degree: the
fraction of videos VBench calls dynamic (enough frame pairs whose top-5% flow exceeds 6 px at a 256-pixel short
side); VBench uses RAFT flow, vmt uses DIS, which underestimates very large or textureless motion.

[bold]Examples[/]  vmt eval temporal out.mp4
           vmt eval temporal outputs/ --json temporal.json
"""))
def temporal(
    ctx: typer.Context,
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    flow_preset: Annotated[str, typer.Option("--flow-preset", help="DIS flow preset: ultrafast | fast | "
                                             "medium.")] = "medium",
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, TEMPORAL_SPEC, locals(), TemporalEvalRequest)


TEMPORAL_SPEC = eval_spec("temporal", TemporalEvalRequest)


# ---------------------------------------------------------------- physics

@app.command("physics", no_args_is_help=True, help=reflow("""Physics residual: how far a moving object's tracked
trajectory is from a constant-acceleration law (free fall, projectile), in frame diagonals (physics_rms) and
pixels.

The object is the largest connected part of each frame that differs from the static background (per-pixel
temporal median) by more than --threshold levels, counted only when it is one compact object; its position is
the difference-weighted centroid. A video where no such object is found in most frames (noise, a moving
camera, nothing moving) has no trajectory: it is reported as such (no_trajectory), never as a small residual.
Use --start/--end to score a segment between bounces.

[bold]Example[/]  vmt eval physics falling_ball.mp4 --json physics.json
"""))
def physics(
    ctx: typer.Context,
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    threshold: Annotated[float, typer.Option("--threshold", help="Difference from the background (0-255) "
                                             "that marks the object.")] = 25.0,
    start: Annotated[int, typer.Option("--start", help="First frame of the segment.")] = 0,
    end: Annotated[int | None, typer.Option("--end", help="End frame (exclusive) of the segment.")] = None,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, PHYSICS_SPEC, locals(), PhysicsEvalRequest)


PHYSICS_SPEC = eval_spec("physics", PhysicsEvalRequest)


# ---------------------------------------------------------------- keypoints

@app.command("keypoints", no_args_is_help=True, help=reflow("""Score keypoint forecasts of `vmt predict-keypoints
run --backtest` against the keypoint file they forecast.

TRUTH: the keypoint .npz vmt reads (names, lengths, value (frames, K, 2) [, jacobian]). PRED: what `run`
writes (names, value (S, N, H, K, 2), start (S,): each sequence's first forecast frame). Positions only, in
the files' coordinates. Metrics (means over windows): ADE/FDE as the mean over the N samples and the best of
N, MAE of the best K samples, APD of those K, APD/MAE, the energy distance (V-statistic) between the true
futures and all samples; and the same errors for zero-velocity, constant-velocity and damped-velocity forecasts
of the same windows, the trivial answers to beat (the damping is chosen on the frames before the forecast
windows, which a forecaster has seen too; reported as damped_velocity_damping).

[bold]Example[/]  vmt predict-keypoints run kp.npz -o pred.npz --backtest
           vmt eval keypoints kp.npz pred.npz --k 5 --json kp.json
"""))
def keypoints(
    ctx: typer.Context,
    truth: Annotated[Path, typer.Argument(help="Keypoint file (names, lengths, value).", show_default=False)],
    pred: Annotated[Path, typer.Argument(help="`predict-keypoints run` output.", show_default=False)],
    k: Annotated[int, typer.Option("--k", help="Best K of the N samples for MAE and APD.")] = 5,
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    run_eval(ctx, KEYPOINTS_SPEC, locals(), KeypointsEvalRequest)


KEYPOINTS_SPEC = eval_spec("keypoints", KeypointsEvalRequest, {"truth": "file", "pred": "file"})


# ---------------------------------------------------------------- seams

@app.command("seams", no_args_is_help=True, help=reflow("""Seam score of long videos made of clips: the mean
frame change at clip boundaries divided by the mean change inside clips (1: seamless; above 1 the boundaries
jump, below 1 they stall). The gate judges it by its distance to 1: 0.5 is as much a seam as 2.

[bold]Example[/]  vmt eval seams long.mp4 --clip-length 16 --json seams.json
"""))
def seams(
    ctx: typer.Context,
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    clip_length: Annotated[int, typer.Option("--clip-length", help="Frames per generated clip (boundaries "
                                             "every N frames).", show_default=False)] = 0,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, SEAMS_SPEC, locals(), SeamsEvalRequest)


SEAMS_SPEC = eval_spec("seams", SeamsEvalRequest)


# ---------------------------------------------------------------- drift

@app.command("drift", no_args_is_help=True, help=reflow("""Drift of long videos made of segments (a chain of
clips): per segment the colour shift from the first segment (CIE Lab delta E of the segment means; about 2 is
visible side by side), the sharpness relative to the first segment (variance of the Laplacian; below 1 detail
washes out) and the seam score of each boundary (1 is seamless). Gated: the final and largest delta E (lower),
the final sharpness and the mean seam (closer to 1).

[bold]Example[/]  vmt eval drift long.mp4 --segment-frames 81 --overlap 1 --json drift.json --plot drift.png
"""))
def drift(
    ctx: typer.Context,
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    segment_frames: Annotated[int, typer.Option("--segment-frames", help="Frames of the first segment (and of "
                                                "each, without --overlap).")] = 81,
    overlap: Annotated[int, typer.Option("--overlap", help="Frames each segment shares with the one before and "
                                         "does not repeat (`vmt longgen sample` on Wan, --ref-index -1: 1).")] = 0,
    max_frames: MaxFramesOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Also draw delta E, sharpness and seams per "
                                              "segment into this PNG.", show_default=False)] = None,
    json_out: JsonOpt = None, html_out: HtmlOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, DRIFT_SPEC, locals(), DriftEvalRequest)


DRIFT_SPEC = eval_spec("drift", DriftEvalRequest)
