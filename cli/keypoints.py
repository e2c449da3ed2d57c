"""`vmt predict-keypoints train|run`: GRU-NF training and GRU-NF / GRU-SNF forecasting of keypoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.display import reflow
from cli.common import (
    DebugOpt,
    DeviceOpt,
    OverwriteOpt,
    QuietOpt,
    RecipeOpt,
    SeedOpt,
    command_line,
    console,
    status,
    step_progress,
)
from cli.scaffold import NPZ_OUTPUT, RUN_FOLDER, CommandSpec, Output, run_command, video_output
from vmt.runs.fields import request_from
from vmt.runs.keypoints import KeypointsRunRequest, KeypointsTrainRequest

app = typer.Typer(
    help="Forecast keypoints of a driving video (GRU-NF) with optional inference-time MCMC refinement "
    "(GRU-SNF).\n\n[bold]Examples[/]\n\n"
    "  vmt predict-keypoints run clip.npz -o pred.npz\n\n"
    "  vmt predict-keypoints train kp.npz -o my_model --val-identities id10283,id10284\n\n"
    "Run `vmt predict-keypoints train --help` or `... run --help` for details.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

TRAIN_HELP = """Train a GRU-NF keypoint forecaster (flow NLL + GRU prediction head).

DATA is a keypoint .npz (`names`, `lengths`, `value` (frames, K, 2), optional `jacobian` (frames, K, 2, 2): the
format of FOMM keypoints, any K), a video or a folder of videos (keypoints from --fomm CKPT, or else from the
Lucas-Kanade tracker; a model trained on tracker points is what `run` needs for tracker input).
--param residual (default) models displacements from the last observed frame, scaled by a per-value scale
fitted on the training windows (an untrained model forecasts zero velocity); --param minmax is the paper's
per-window context min-max. Sequences of --val-identities (clip-name prefix before `#`) are held out for the
validation loss; the best-validation weights are kept as model.safetensors (the last ones without validation).

[bold]Examples[/]

  vmt predict-keypoints train fomm_kp_dev.npz -o kp_model

  vmt predict-keypoints train kp.npz -o kp_model --recipe vox-10-14

  vmt predict-keypoints train my_videos/ -o tracker_model            # Lucas-Kanade points

  vmt predict-keypoints train kp.npz -o kp_model --resume        # continue an interrupted run

Paper-size model: --hidden 512 --layers 3 --flow-hidden 512 --cond-dim 1 --param minmax (slow on a CPU).
"""

RUN_HELP = """Predict the --horizon keypoint frames that follow each input sequence, N samples each.

INPUT is a keypoint .npz (same format as `train`) or a video. For a video, --fomm CKPT (a First Order Motion
Model checkpoint in the public vox-cpk.pth.tar layout, read without running pickle code) extracts the FOMM
keypoints the shipped model was trained on (256x256 frames, 10 keypoints with jacobians), saved beside the
forecast as PRED.keypoints.npz. Without --fomm a video is tracked with Lucas-Kanade corners, which only a model
trained on tracker points accepts (the shipped FOMM model refuses them).
Output pred.npz: `names`, `value` (S, N, H, K, 2), `jacobian` (S, N, H, K, 2, 2) when the model has them,
`context`, `horizon`, and with --backtest `start` (S,): the frame of each input sequence where its forecast
begins (`vmt eval keypoints INPUT pred.npz` scores it); same coordinates as the input. Keypoints tracked from a
video are saved beside it as PRED.keypoints.npz (the input format). A JSON sidecar records everything.

--refine (default) runs GRU-SNF: a Metropolis-Hastings chain after each flow block's inverse, annealed
from the prior to the GRU head's prediction (whole-vector acceptance by default; --acceptance element is the
paper's element-wise form). --no-refine is plain GRU-NF.

[bold]Examples[/]

  vmt predict-keypoints run clip.npz -o pred.npz                     # shipped model, GRU-SNF, 100 samples

  vmt predict-keypoints run talk.mp4 --fomm vox-cpk.pth.tar -o pred.npz

  vmt predict-keypoints run talk.mp4 --fomm vox-cpk.pth.tar -o pred.npz --render out.mp4 --source face.png

  vmt predict-keypoints run clip.npz -o pred.npz --render pred.mp4 --source clip.mp4   # no weights: preview

--render writes one frame per predicted step: the samples' keypoints (dots; rings: their mean; crosses: the
last context frame), then with --fomm the source image animated by the forecast (FOMM's generator, motion
relative to the last observed keypoints; --render-samples picks the mean or samples), else with --preview the
frame warped by the mean forecast (thin-plate spline, no weights).
"""


@app.command("train", help=reflow(TRAIN_HELP), no_args_is_help=True)
def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Keypoint sequences (.npz), a video or a folder of videos.",
                                         show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to write.", show_default=False)],
    context: Annotated[int, typer.Option("--context", help="Context frames.")] = 8,
    horizon: Annotated[int, typer.Option("--horizon", help="Predicted frames.")] = 16,
    val_identities: Annotated[str, typer.Option("--val-identities", help="Comma-separated identities held out "
                                                "for validation (never trained on).")] = "",
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 2000,
    batch: Annotated[int, typer.Option("--batch", help="Windows per step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate of the one-cycle schedule.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="Adam weight decay.")] = 1e-6,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Gradient norm clip.")] = 5.0,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Steps between validation + checkpoint.")] = 100,
    window_stride: Annotated[int, typer.Option("--window-stride", help="Frames between training windows "
                                               "(context+horizon = the paper's non-overlapping windows).")] = 4,
    frame_step: Annotated[int, typer.Option("--frame-step", help="Keep every n-th frame (2 halves the rate "
                                            "as the paper does at 25 fps).")] = 1,
    hidden: Annotated[int, typer.Option("--hidden", help="GRU hidden size (paper 512).")] = 256,
    layers: Annotated[int, typer.Option("--layers", help="GRU layers (paper 3).")] = 2,
    dropout: Annotated[float, typer.Option("--dropout", help="GRU dropout between layers.")] = 0.2,
    cond_dim: Annotated[int, typer.Option("--cond-dim", help="Flow condition size (release: 1).")] = 16,
    flow_hidden: Annotated[int, typer.Option("--flow-hidden", help="Coupling-net width (paper 512).")] = 128,
    blocks: Annotated[int, typer.Option("--blocks", help="Coupling + batch-norm blocks.")] = 5,
    min_range: Annotated[float, typer.Option("--min-range", help="Floor of the min-max range (input units).")] = 0.05,
    head_weight: Annotated[float, typer.Option("--head-weight", help="Weight of the GRU head's MSE.")] = 1.0,
    param: Annotated[str, typer.Option("--param", help="residual: the flow models displacements from the last "
                                       "observed frame (untrained = zero velocity); minmax: the paper's "
                                       "per-window context min-max.")] = "residual",
    rollout: Annotated[bool, typer.Option("--rollout/--teacher-forcing", help="After the context, condition the "
                                          "training loss on the head's own fed-back predictions (what mean "
                                          "feedback gives the GRU when sampling) instead of the true frames.")
                       ] = False,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Mirror, affine jitter, time reversal "
                                          "and 0.8x/1.25x speed replays of the training windows.")] = True,
    fomm: Annotated[Path | None, typer.Option("--fomm", help="Videos as DATA: FOMM keypoints from this "
                                              "checkpoint instead of the Lucas-Kanade tracker.")] = None,
    video_fps: Annotated[float, typer.Option("--video-fps", help="Frame rate videos are read at.")] = 10.0,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved in --output.")] = False,
    seed: SeedOpt = 0,
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    run_command(ctx, TRAIN_SPEC, locals(), _train)


def _train(p: dict) -> None:
    request = request_from(KeypointsTrainRequest, p)
    with status("Reading keypoints...", p["quiet"]):
        inputs = request.read(p["output"], p["overwrite"])
    with step_progress(request.steps - inputs.start, request.progress_label, p["quiet"]) as advance:
        res = request.run(p["output"], inputs=inputs, progress=lambda d, t, info: advance(**info),
                          overwrite=p["overwrite"], record=p, command=command_line())
    if not p["quiet"]:
        best = res["best_val_nll"]
        console.print(f"[green]wrote[/] {p['output']} ({res['layout']}, {res['train_windows']} training windows, "
                      f"{res['train_seconds']:.0f}s" + (f", best validation NLL {best:.3f} nats/frame)"
                                                        if best is not None else ")"))


@app.command("run", help=reflow(RUN_HELP), no_args_is_help=True)
def run(
    ctx: typer.Context,
    input: Annotated[Path, typer.Argument(help="Keypoint .npz or a video file.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Predictions (.npz); a JSON sidecar beside it.",
                                         show_default=False)],
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Model directory (default: the shipped "
                                               "vox model).")] = None,
    context: Annotated[int | None, typer.Option("--context", help="Context frames (default: the model's).")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Frames to predict (default: the model's).")] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", help="Samples per sequence.")] = 100,
    refine: Annotated[bool, typer.Option("--refine/--no-refine", help="GRU-SNF MCMC refinement.")] = True,
    feedback: Annotated[str, typer.Option("--feedback", help="mean: feed the samples' mean back (paper); "
                                          "sample: each sample its own trajectory.")] = "mean",
    mcmc_steps: Annotated[int, typer.Option("--mcmc-steps", help="MH steps per chain stage.")] = 2,
    step_size: Annotated[float, typer.Option("--step-size", help="Random-walk proposal scale.")] = 0.35,
    acceptance: Annotated[str, typer.Option("--acceptance", help="vector (textbook MH) | element (the paper's "
                                            "form; on held-out vox data it spread samples away from the data, "
                                            "see benchmarks/keypoints.py).")] = "vector",
    temperature: Annotated[float, typer.Option("--temperature", help="Scale of the flow's base noise (1: the "
                                               "model's density; below 1: samples nearer its mode).")] = 1.0,
    video_fps: Annotated[float, typer.Option("--video-fps", help="Frame rate video input is read at (the "
                                             "shipped model's data is 10 fps).")] = 10.0,
    fomm: Annotated[Path | None, typer.Option("--fomm", help="FOMM checkpoint (vox-cpk.pth.tar layout): video "
                                              "keypoints from its detector; --render animates --source with "
                                              "its generator.")] = None,
    render: Annotated[Path | None, typer.Option("--render", help="Also render the first sequence's forecast "
                                                "into this video (.mp4).")] = None,
    render_samples: Annotated[str, typer.Option("--render-samples", help="With --fomm: 'mean' or sample "
                                                "indices (0,3) to animate, one panel each.")] = "mean",
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="With --render and a frame: add a "
                                          "panel warping the frame by the mean forecast (thin-plate spline).")] = True,
    source: Annotated[Path | None, typer.Option("--source", help="Image or video whose last frame --render draws "
                                                "on for keypoint-file input (default: grey canvas).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Sequences per forward batch.")] = 16,
    backtest: Annotated[bool, typer.Option("--backtest", help="Forecast the last --horizon frames of each "
                                           "sequence from the --context frames before them (not past the end), "
                                           "so `vmt eval keypoints INPUT pred.npz` can score the forecast.")] = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    run_command(ctx, RUN_SPEC, locals(), _run)


RUN_SPEC = CommandSpec(
    "predict-keypoints", inputs={"input": "file", "model": "dir", "fomm": "file", "source": "file"},
    outputs={"output": NPZ_OUTPUT, "render": lambda: Output(video_output().suffixes, sidecar=False)},
    request=KeypointsRunRequest,
)
TRAIN_SPEC = CommandSpec("predict-keypoints", inputs={"data": "any", "fomm": "file"}, outputs={"output": RUN_FOLDER},
                         request=KeypointsTrainRequest)


def _run(p: dict) -> None:
    request = request_from(KeypointsRunRequest, p)
    with status("Forecasting keypoints...", p["quiet"]):
        r = request.run(p["output"], overwrite=p["overwrite"], record=p, command=command_line())
    if not p["quiet"]:
        console.print(f"[green]wrote[/] {p['output']} ({r['sequences']} sequences x {r['samples']} samples x "
                      f"{r['horizon']} frames, {r['method']})"
                      + "".join(f" and {x}" for x in (r["keypoints_file"], r["render"]) if x))
