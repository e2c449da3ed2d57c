"""`vmt predict-keypoints train|run`: GRU-NF training and GRU-NF / GRU-SNF forecasting of keypoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
from cli.scaffold import (
    AT_LEAST_1, NON_NEGATIVE, NPZ_OUTPUT, POSITIVE, RUN_FOLDER, CommandSpec, Output, Range, run_command, video_output,
)

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


def _ints(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@app.command("train", help=TRAIN_HELP, no_args_is_help=True)
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


def _check_train(p: dict) -> Path:
    from vmt.errors import VmtUsageError

    out = Path(p["output"])  # numbers, DATA and the folder kind were checked by the scaffold (TRAIN_SPEC)
    if p["param"] not in ("residual", "minmax"):
        raise VmtUsageError(f"--param must be residual or minmax, got {p['param']!r}")
    if out.is_dir() and any(out.iterdir()) and not (p["resume"] or p["overwrite"]):
        raise VmtUsageError(f"{out} is not empty; pass --resume to continue it or --overwrite to replace it")
    if p["resume"] and not (out / "config.json").is_file():
        raise VmtUsageError(f"--resume: {out} holds no model; drop --resume to start a new run")
    return out


def _train(p: dict) -> None:
    out = _check_train(p)
    import torch

    from vmt.io.atomic import write_json_atomic
    from vmt.keypoints.model import ModelConfig, read_config
    from vmt.keypoints.pipeline import training_inputs
    from vmt.keypoints.train import TrainConfig, train_model
    from vmt.provenance import build_sidecar
    from vmt.runtime import Timer, peak_memory, resolve_device

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    timer, dev = Timer(), resolve_device(p["device"])
    with status("Reading keypoints...", p["quiet"]):
        seqs, kp_source = training_inputs(Path(p["data"]), p["video_fps"], _fomm(p, dev))
    cfg = ModelConfig(num_kp=seqs.layout.num_kp, jacobian=seqs.layout.jacobian, param=p["param"], rollout=p["rollout"],
                      **{k: p[k] for k in ("context", "horizon", "hidden", "layers", "dropout", "cond_dim",
                                           "flow_hidden", "blocks", "min_range", "frame_step", "head_weight")})
    tc = TrainConfig(**{k: p[k] for k in ("steps", "batch", "lr", "weight_decay", "grad_clip", "eval_every", "seed")})
    out.mkdir(parents=True, exist_ok=True)
    start = int(read_config(out).get("step", 0)) if p["resume"] else 0
    last_val = {"v": "-"}
    with step_progress(tc.steps - start, "training", p["quiet"]) as advance, timer.stage("train"):
        def on_step(step: int, m: dict) -> None:
            last_val["v"] = f"{m['val_nll']:.3f}" if "val_nll" in m else last_val["v"]
            advance(step=step, nll=f"{m['nll']:.3f}", val_nll=last_val["v"])

        res = train_model(seqs, cfg, tc, out, val_identities=_ints(p["val_identities"]), augment=p["augment"],
                          window_stride=p["window_stride"], resume=p["resume"], device=dev, on_step=on_step,
                          keypoints_source=kp_source, data_file=str(p["data"]))
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}
    write_json_atomic(out / "train.json", build_sidecar(
        command_line(), "predict-keypoints train", resolved, output=out, timings=timer.stages,
        memory=peak_memory(dev), extra={k: res[k] for k in ("best_val_nll", "train_seconds", "history",
                                                            "train_windows", "val_windows")}),
        replace=True)  # a run folder's own file: rewritten on --resume
    if not p["quiet"]:
        best = res["best_val_nll"]
        console.print(f"[green]wrote[/] {out} ({seqs.layout.describe()}, {res['train_windows']} training windows, "
                      f"{res['train_seconds']:.0f}s" + (f", best validation NLL {best:.3f} nats/frame)"
                                                        if best is not None else ")"))


def _fomm(p: dict, dev):
    """The FOMM model of --fomm, or None."""
    if p.get("fomm") is None:
        return None
    from vmt.keypoints.fomm import load_fomm

    with status("Loading FOMM...", p["quiet"]):
        return load_fomm(p["fomm"], dev)


@app.command("run", help=RUN_HELP, no_args_is_help=True)
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
    ranges={"samples": AT_LEAST_1, "mcmc_steps": AT_LEAST_1, "batch": AT_LEAST_1, "step_size": POSITIVE,
            "temperature": POSITIVE, "context": Range(2), "horizon": AT_LEAST_1},
)
TRAIN_SPEC = CommandSpec(
    "predict-keypoints", inputs={"data": "any", "fomm": "file"}, outputs={"output": RUN_FOLDER},
    ranges={"context": Range(2), "horizon": AT_LEAST_1, "steps": AT_LEAST_1, "batch": AT_LEAST_1,
            "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "grad_clip": POSITIVE, "eval_every": AT_LEAST_1,
            "window_stride": AT_LEAST_1, "frame_step": AT_LEAST_1, "hidden": AT_LEAST_1, "layers": AT_LEAST_1,
            "dropout": Range(0, 1, hi_open=True), "cond_dim": AT_LEAST_1, "flow_hidden": AT_LEAST_1,
            "blocks": AT_LEAST_1, "min_range": POSITIVE, "head_weight": NON_NEGATIVE},
)


def _check_run(p: dict) -> None:
    from vmt.errors import VmtUsageError
    from vmt.io.atomic import check_output_path
    from vmt.keypoints.pipeline import check_run_sources, is_video, keypoints_path

    # Inputs, -o and --render (suffix, folder, overwrite, not an input) were checked by the scaffold (RUN_SPEC).
    check_run_sources(Path(p["input"]), p["render"], p["source"], p["fomm"])
    if is_video(p["input"]):  # the extracted keypoints are written beside the forecast
        check_output_path(keypoints_path(Path(p["output"])), p["overwrite"], sidecar=False)
    if p["feedback"] not in ("mean", "sample"):
        raise VmtUsageError(f"--feedback must be mean or sample, got {p['feedback']!r}")
    if p["acceptance"] not in ("element", "vector"):
        raise VmtUsageError(f"--acceptance must be element or vector, got {p['acceptance']!r}")


def _run(p: dict) -> None:
    _check_run(p)
    from vmt.errors import VmtUsageError
    from vmt.keypoints import DEFAULT_MODEL_DIR
    from vmt.keypoints.model import SampleOptions, load_model
    from vmt.keypoints.pipeline import forecast_input, parse_samples, render_forecast, run_record, write_forecast
    from vmt.io.atomic import commit_together
    from vmt.provenance import build_sidecar, write_sidecar
    from vmt.runtime import Timer, peak_memory, resolve_device

    timer, dev = Timer(), resolve_device(p["device"])
    model_dir = Path(p["model"]) if p["model"] is not None else DEFAULT_MODEL_DIR
    with timer.stage("load"):
        net, doc = load_model(model_dir)
        net.to(dev)
        fomm = _fomm(p, dev)
    context, horizon = p["context"] or net.cfg.context, p["horizon"] or net.cfg.horizon
    if context < 2 or horizon < 1:
        raise VmtUsageError(f"--context must be >= 2 and --horizon >= 1 (got {context}, {horizon})")
    picks = parse_samples(p["render_samples"], p["samples"])
    opts = SampleOptions(samples=p["samples"], feedback=p["feedback"], refine=p["refine"], mcmc_steps=p["mcmc_steps"],
                         step_size=p["step_size"], elementwise=p["acceptance"] == "element",
                         temperature=p["temperature"])
    with status("Reading keypoints...", p["quiet"]), timer.stage("predict"):
        fc = forecast_input(net, doc, model_dir, Path(p["input"]), context, horizon, opts, seed=p["seed"],
                            batch=p["batch"], video_fps=p["video_fps"], fomm=fomm, backtest=p["backtest"])
    with commit_together():  # forecast, keypoints, preview and sidecar appear together
        with timer.stage("write"):
            kp_file = write_forecast(fc, Path(p["output"]), context, horizon)
        if p["render"] is not None:
            with status("Rendering...", p["quiet"]), timer.stage("render"):
                render_forecast(fc, Path(p["render"]), p["video_fps"], source=p["source"] and Path(p["source"]),
                                fomm=fomm, samples=picks, preview=p["preview"])
        resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}
        resolved.update(context=context, horizon=horizon, model=str(model_dir))
        compute, extra = run_record(fc, timer.stages["predict"], horizon, opts, kp_file, p["render"], fomm is not None)
        write_sidecar(Path(p["output"]), build_sidecar(
            command_line(), "predict-keypoints run", resolved, output=Path(p["output"]), timings=timer.stages,
            model={"dir": str(model_dir), "config": doc["config"], "best_val_nll": doc.get("best_val_nll")},
            memory=peak_memory(dev), compute=compute, extra=extra))
    if not p["quiet"]:
        console.print(f"[green]wrote[/] {p['output']} ({len(fc.contexts)} sequences x {p['samples']} samples x "
                      f"{horizon} frames, {extra['method']})" + "".join(f" and {x}" for x in (kp_file, p["render"]) if x))
