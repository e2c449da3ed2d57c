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
    resolve_params,
    run_guarded,
    status,
    step_progress,
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

TRAIN_HELP = """Train a GRU-NF keypoint forecaster (flow NLL + GRU prediction head) on a keypoint file.

DATA.npz holds `names`, `lengths`, `value` (frames, K, 2) and optionally `jacobian` (frames, K, 2, 2):
the format of FOMM keypoints (any K, with or without jacobians). Each window of --context + --horizon frames is
min-max normalised with its context's statistics. Sequences of --val-identities (clip-name prefix before `#`)
are held out for the validation loss; the best-validation weights are kept as model.safetensors.

[bold]Examples[/]

  vmt predict-keypoints train fomm_kp_dev.npz -o kp_model --val-identities id10283,id10284

  vmt predict-keypoints train kp.npz -o kp_model --recipe vox-10-14

  vmt predict-keypoints train kp.npz -o kp_model --resume        # continue an interrupted run

Paper-size model: --hidden 512 --layers 3 --flow-hidden 512 --cond-dim 1 (slow on a CPU).
"""

RUN_HELP = """Predict the --horizon keypoint frames that follow each input sequence, N samples each.

INPUT is a keypoint .npz (same format as `train`) or a video: keypoints then come from a weight-free tracker
(Shi-Tomasi corners + pyramidal Lucas-Kanade; needs the keypoints extra: pip install 'vmt\\[keypoints]'). These are not FOMM
keypoints: a model trained on FOMM keypoints will forecast them only roughly.
Output pred.npz: `names`, `value` (S, N, H, K, 2), `jacobian` (S, N, H, K, 2, 2) when the model has them,
`context`, `horizon`, and with --backtest `start` (S,): the frame of each input sequence where its forecast
begins (`vmt eval keypoints INPUT pred.npz` scores it); same coordinates as the input. Keypoints tracked from a
video are saved beside it as PRED.keypoints.npz (the input format). A JSON sidecar records everything.

--refine (default) runs GRU-SNF: a Metropolis-Hastings chain after each flow block's inverse, annealed
from the prior to the GRU head's prediction (whole-vector acceptance by default; --acceptance element is the
paper's element-wise form). --no-refine is plain GRU-NF.

[bold]Examples[/]

  vmt predict-keypoints run clip.npz -o pred.npz                     # shipped model, GRU-SNF, 100 samples

  vmt predict-keypoints run clip.npz -m kp_model --no-refine --samples 20 -o pred.npz

  vmt predict-keypoints run talk.mp4 -o pred.npz --render pred.mp4  # track, forecast, draw

  vmt predict-keypoints run clip.npz -o pred.npz --render pred.mp4 --source clip.mp4

--render writes one frame per predicted step: the samples' keypoints (dots; rings: their mean; crosses: the
last context frame) and, with --preview, the frame warped by the mean forecast (thin-plate spline, no weights).
"""


def _ints(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@app.command("train", help=TRAIN_HELP, no_args_is_help=True)
def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Keypoint sequences (.npz).", show_default=False)],
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
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved in --output.")] = False,
    seed: SeedOpt = 0,
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    params.pop("ctx")
    run_guarded(lambda: _train(ctx, params), debug)


def _train(ctx: typer.Context, params: dict) -> None:
    from vmt.errors import VmtUsageError

    p = resolve_params(ctx, "predict-keypoints", params, params["recipe"])
    out = Path(p["output"])
    for key in ("context", "horizon", "steps", "batch", "eval_every", "window_stride", "frame_step", "hidden",
                "layers", "cond_dim", "flow_hidden", "blocks"):
        if p[key] < 1:
            raise VmtUsageError(f"--{key.replace('_', '-')} must be >= 1, got {p[key]}")
    if p["context"] < 2:
        raise VmtUsageError("--context must be >= 2 (min-max statistics need at least two frames)")
    if out.exists() and not out.is_dir():
        raise VmtUsageError(f"--output {out} is a file; give a directory for the model")
    if out.is_dir() and any(out.iterdir()) and not (p["resume"] or p["overwrite"]):
        raise VmtUsageError(f"{out} is not empty; pass --resume to continue it or --overwrite to replace it")
    if p["resume"] and not (out / "config.json").is_file():
        raise VmtUsageError(f"--resume: {out} holds no model; drop --resume to start a new run")
    if not out.parent.is_dir():
        raise VmtUsageError(f"folder {out.parent} does not exist; create it first (mkdir -p {out.parent})")

    import torch

    from vmt.io.atomic import write_json_atomic
    from vmt.keypoints.data import Sequences, load_sequences, make_windows, split_by_identity
    from vmt.keypoints.model import ModelConfig
    from vmt.keypoints.predict import normalise_windows
    from vmt.keypoints.train import TrainConfig, fit
    from vmt.provenance import build_sidecar
    from vmt.runtime import Timer, peak_memory

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    timer = Timer()
    seqs = load_sequences(p["data"])
    val_ids = _ints(p["val_identities"])
    tr, va = split_by_identity(seqs, val_ids) if val_ids else (seqs, Sequences([], [], seqs.layout))
    cfg = ModelConfig(num_kp=seqs.layout.num_kp, jacobian=seqs.layout.jacobian, context=p["context"],
                      horizon=p["horizon"], hidden=p["hidden"], layers=p["layers"], dropout=p["dropout"],
                      cond_dim=p["cond_dim"], flow_hidden=p["flow_hidden"], blocks=p["blocks"],
                      min_range=p["min_range"], frame_step=p["frame_step"], head_weight=p["head_weight"])
    length = cfg.context + cfg.horizon
    trw = normalise_windows(make_windows(tr, length, p["window_stride"], cfg.frame_step)[0], cfg.context,
                            cfg.min_range)[0]
    vaw = None
    if len(va):
        vaw = normalise_windows(make_windows(va, length, length, cfg.frame_step)[0], cfg.context, cfg.min_range)[0]
    tc = TrainConfig(steps=p["steps"], batch=p["batch"], lr=p["lr"], weight_decay=p["weight_decay"],
                     grad_clip=p["grad_clip"], eval_every=p["eval_every"], seed=p["seed"])
    info = {"data": {"file": str(p["data"]), "train_sequences": tr.names, "val_sequences": va.names,
                     "val_identities": val_ids, "train_windows": len(trw),
                     "val_windows": 0 if vaw is None else len(vaw)}}
    if not p["quiet"]:
        console.print(f"{seqs.layout.describe()}; {len(trw)} training windows from {len(tr)} sequences, "
                      f"{0 if vaw is None else len(vaw)} validation windows from {len(va)} sequences")
    out.mkdir(exist_ok=True)
    last_val = {"v": "-"}
    start = 0
    if p["resume"]:
        from vmt.keypoints.model import read_config

        start = int(read_config(out).get("step", 0))
    with step_progress(tc.steps - start, "training", p["quiet"]) as advance, timer.stage("train"):
        def on_step(step: int, m: dict) -> None:
            if "val_nll" in m:
                last_val["v"] = f"{m['val_nll']:.3f}"
            advance(step=step, nll=f"{m['nll']:.3f}", val_nll=last_val["v"])

        res = fit(cfg, tc, trw, vaw, out, resume=p["resume"], info=info, on_step=on_step)
    resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}
    doc = build_sidecar(command_line(), "predict-keypoints train", resolved, output=out, timings=timer.stages,
                        memory=peak_memory(torch.device("cpu")),
                        extra={"best_val_nll": res["best_val_nll"], "train_seconds_total": res["train_seconds"],
                               "history": res["history"]})
    write_json_atomic(out / "train.json", doc)
    if not p["quiet"]:
        best = res["best_val_nll"]
        console.print(f"[green]wrote[/] {out} ({res['train_seconds']:.0f}s of training"
                      + (f", best validation NLL {best:.3f} nats/frame)" if best is not None else ")"))


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
    video_fps: Annotated[float, typer.Option("--video-fps", help="Frame rate video input is read at (the "
                                             "shipped model's data is 10 fps).")] = 10.0,
    render: Annotated[Path | None, typer.Option("--render", help="Also draw the first sequence's forecast "
                                                "over its last context frame into this .mp4.")] = None,
    preview: Annotated[bool, typer.Option("--preview/--no-preview", help="With --render and a frame: add a "
                                          "panel warping the frame by the mean forecast (thin-plate spline).")] = True,
    source: Annotated[Path | None, typer.Option("--source", help="Image or video whose last frame --render draws "
                                                "on for keypoint-file input (default: grey canvas).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Sequences per forward batch.")] = 16,
    backtest: Annotated[bool, typer.Option("--backtest", help="Forecast the last --horizon frames of each "
                                           "sequence from the --context frames before them (not past the end), "
                                           "so `vmt eval keypoints INPUT pred.npz` can score the forecast.")] = False,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    params.pop("ctx")
    run_guarded(lambda: _run(ctx, params), debug)


VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif"}


def _run(ctx: typer.Context, params: dict) -> None:
    from vmt.errors import VmtUsageError
    from vmt.io.atomic import check_output_path

    p = resolve_params(ctx, "predict-keypoints", params, params["recipe"])
    output = check_output_path(p["output"], p["overwrite"])
    if output.suffix != ".npz":
        raise VmtUsageError(f"-o {output}: predictions are written as .npz; use e.g. {output.with_suffix('.npz')}")
    if p["render"] is not None:
        check_output_path(p["render"], p["overwrite"], sidecar=False)
    if Path(p["input"]).suffix.lower() in VIDEO_SUFFIXES:
        check_output_path(output.with_name(output.stem + ".keypoints.npz"), p["overwrite"], sidecar=False)
    for key in ("samples", "mcmc_steps", "batch"):
        if p[key] < 1:
            raise VmtUsageError(f"--{key.replace('_', '-')} must be >= 1, got {p[key]}")
    if p["feedback"] not in ("mean", "sample"):
        raise VmtUsageError(f"--feedback must be mean or sample, got {p['feedback']!r}")
    if p["acceptance"] not in ("element", "vector"):
        raise VmtUsageError(f"--acceptance must be element or vector, got {p['acceptance']!r}")
    if not Path(p["input"]).is_file():
        raise VmtUsageError(f"input {p['input']} not found")
    if p["source"] is not None and not Path(p["source"]).is_file():
        raise VmtUsageError(f"--source {p['source']} not found")

    import numpy as np
    import torch

    from vmt.keypoints import DEFAULT_MODEL_DIR
    from vmt.keypoints.data import Layout, Sequences, check_context, load_sequences, save_predictions
    from vmt.keypoints.model import SampleOptions, check_layout, load_model
    from vmt.keypoints.predict import forecast
    from vmt.provenance import build_sidecar, write_sidecar
    from vmt.runtime import Timer, peak_memory, resolve_device

    timer = Timer()
    dev = resolve_device(p["device"])
    model_dir = Path(p["model"]) if p["model"] is not None else DEFAULT_MODEL_DIR
    with timer.stage("load"):
        net, doc = load_model(model_dir)
        net.to(dev)
    cfg = net.cfg
    context = p["context"] or cfg.context
    horizon = p["horizon"] or cfg.horizon
    if context < 2 or horizon < 1:
        raise VmtUsageError(f"--context must be >= 2 and --horizon >= 1 (got {context}, {horizon})")
    frame = None
    source = "keypoints"
    is_video = Path(p["input"]).suffix.lower() in VIDEO_SUFFIXES
    with timer.stage("read"):
        if is_video:
            from vmt.io.video import read_video
            from vmt.keypoints.tracker import track_keypoints

            with status("Tracking keypoints (Lucas-Kanade)...", p["quiet"]):
                frames, _ = read_video(p["input"], fps=p["video_fps"])
                if len(frames) < context:
                    raise VmtUsageError(f"{p['input']} has {len(frames)} frames at {p['video_fps']} fps, fewer "
                                        f"than --context {context}; use a longer video or a smaller --context")
                pos, jac = track_keypoints(frames, cfg.num_kp, cfg.jacobian)
            layout = Layout(cfg.num_kp, cfg.jacobian)
            seqs = Sequences([Path(p["input"]).name], [layout.flatten(pos, jac)], layout)
            frame = frames[-1]
            source = "lucas-kanade"
        else:
            seqs = load_sequences(p["input"])
    check_layout(cfg, seqs.layout, str(p["input"]))
    if p["backtest"]:
        check_context(seqs, context + horizon)
        starts = np.asarray([len(s) - horizon for s in seqs.flat], dtype=np.int64)
    else:
        check_context(seqs, context)
        starts = np.asarray([len(s) for s in seqs.flat], dtype=np.int64)
    contexts = np.stack([s[st - context : st] for s, st in zip(seqs.flat, starts)])
    opts = SampleOptions(samples=p["samples"], feedback=p["feedback"], refine=p["refine"],
                         mcmc_steps=p["mcmc_steps"], step_size=p["step_size"],
                         elementwise=p["acceptance"] == "element")
    stats: dict = {}
    torch.manual_seed(p["seed"])
    with step_progress(len(contexts), "forecasting", p["quiet"]) as advance, timer.stage("predict"):
        pred = forecast(net, contexts, horizon, opts, seed=p["seed"], batch=p["batch"], stats=stats,
                        on_batch=lambda n: [advance() for _ in range(n)])
    with timer.stage("write"):
        from vmt.io.atomic import atomic_path

        with atomic_path(output) as tmp:
            save_predictions(tmp, seqs.names, pred, seqs.layout, context, horizon,
                             start=starts if p["backtest"] else None)
        if is_video:  # the tracked keypoints, in the input format: the truth `vmt eval keypoints` reads
            from vmt.keypoints.data import save_sequences

            tracked = output.with_name(output.stem + ".keypoints.npz")
            pos_t, jac_t = seqs.layout.unflatten(seqs.flat[0])
            with atomic_path(tracked) as tmp:
                with open(tmp, "wb") as fh:
                    save_sequences(fh, seqs.names, [pos_t], None if jac_t is None else [jac_t])
        rendered = None
        if p["render"] is not None:
            from vmt.io.video import write_video
            from vmt.keypoints.render import draw_forecast, warp_preview

            if frame is None and p["source"] is not None:
                from vmt.io.video import read_video

                frame = read_video(p["source"])[0][-1]
            last_pos, _ = seqs.layout.unflatten(contexts[0, -1])
            pos_pred, _ = seqs.layout.unflatten(pred[0])          # (N, H, K, 2)
            video = draw_forecast(frame, last_pos, pos_pred.transpose(1, 0, 2, 3))
            if frame is not None and p["preview"]:
                warped = warp_preview(frame, last_pos, pos_pred.mean(0))
                video = np.concatenate([video, warped], axis=2)
            write_video(p["render"], video, fps=p["video_fps"])
            rendered = str(p["render"])
        resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}
        resolved.update(context=context, horizon=horizon, model=str(model_dir))
        per_frame_ms = 1000 * timer.stages["predict"] / (horizon * max(1, len(contexts)))
        acc = stats.get("acceptance")
        sidecar = build_sidecar(
            command_line(), "predict-keypoints run", resolved, output=output,
            model={"dir": str(model_dir), "config": doc["config"], "best_val_nll": doc.get("best_val_nll")},
            timings=timer.stages, memory=peak_memory(dev),
            compute={"sequences": len(contexts), "samples": p["samples"],
                     "ms_per_predicted_frame": round(per_frame_ms, 3)},
            extra={"keypoints_source": source, "method": "GRU-SNF" if p["refine"] else "GRU-NF",
                   "mcmc_acceptance": None if acc is None else round(float(np.mean(acc)), 4),
                   "render": rendered},
        )
        write_sidecar(output, sidecar)
    if not p["quiet"]:
        console.print(f"[green]wrote[/] {output} ({len(contexts)} sequences x {p['samples']} samples x {horizon} "
                      f"frames, {'GRU-SNF' if p['refine'] else 'GRU-NF'}, {per_frame_ms:.1f} ms per predicted frame)"
                      + (f" and {rendered}" if rendered else ""))
