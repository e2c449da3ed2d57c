"""`vmt transfer`: FastVMT motion transfer from a reference video (DiTFlow-style baseline by recipe)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    DEFAULT_MODEL,
    AttentionBackendOpt,
    CompileOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    GradCheckpointingOpt,
    LoraOpt,
    ModelOpt,
    OffloadOpt,
    OverwriteOpt,
    QuietOpt,
    RecipeOpt,
    RevisionOpt,
    SeedOpt,
    StorageDtypeOpt,
    VaeTilingOpt,
    command_line,
    console,
    quiet_libraries,
    reflow,
    status,
    step_progress,
    wan_load_options,
)
from cli.refine_options import (
    PNP_RANGES,
    ArithmeticOpt,
    CertainFractionOpt,
    CfgRuleOpt,
    GridOpt,
    NoiseOpt,
    PlanOpt,
    PNormOpt,
    TauOpt,
    check_refine_params,
    make_pnp,
    refine_summary,
)
from cli.batch import (
    BatchCommand, BatchOpt, BatchOutputOpt, DryRunOpt, FormatOpt, NamingOpt, SeedsOpt, is_batch, require,
    run_batch,
    single_params,
)
from cli.scaffold import AT_LEAST_1, NON_NEGATIVE, POSITIVE, CommandSpec, Range, run_command, video_output

HELP = reflow("""Generate a video that moves like a reference video: FastVMT's training-free motion transfer on Wan.

The reference (any size, rate, length) is resampled, centre-cropped to --height x --width and cut to a 4k+1
frame count; generation starts from the noised reference latent (SDEdit, --strength). In the first
--guided-steps steps the latent is optimised so its Attention Motion Flow (AMF, from the self-attention q/k
of --block) matches the reference's, then sampling goes on with ordinary CFG.

[bold]Examples[/]

  vmt transfer dance.mp4 --prompt "a robot dancing on a stage" -o robot.mp4

  vmt transfer ref.mp4 --prompt "..." -o base.mp4 \\
      --recipe ditflow-baseline

  vmt transfer ref.mp4 --prompt "..." -o exact.mp4 \\
      --amf global --reuse-interval 1                    # slow, exact AMF

  vmt transfer ref.mp4 --prompt "..." -o refined.mp4 --refine   # + Predict-and-Perturb

  vmt transfer --batch refs.jsonl -o out/ --naming "{reference}-{seed}.mp4"   # "reference" per line

Defaults are the FastVMT release's for Wan2.1-T2V-1.3B: 480x832, up to 81 frames, 50 steps, shift 7,
CFG 5.8, seed 42, strength 0.75, block 14, span 4, tiles 3x4, window 21, 10 guided x 10 inner steps, gradient
reuse every 3, AdamW lr 3e-3 -> 2.1e-3. The output keeps the reference's frame rate unless --fps is given.

--refine runs Predict-and-Perturb (see `vmt refine --help`) in the same loop: at the steps of --plan
(0-based indices of the transfer's own --steps grid, which starts at the SDEdit sigma) the step's latent,
already optimised by the guidance, is refined with K extra forward passes. Guidance is unchanged.
""")

_G = "Guidance"


def transfer(
    ctx: typer.Context,
    reference: Annotated[Path | None, typer.Argument(help="Reference video whose motion is transferred (with "
                                                     "--batch: the default of jobs without one).",
                                                     show_default=False)] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="What the new video shows (with --batch: "
                                               "the default of jobs without one).", show_default=False)] = None,
    output: BatchOutputOpt = None,
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", help="What to steer away from (CFG).")] = "",
    num_frames: Annotated[int, typer.Option("--num-frames", "-f", help="Most frames to take from the reference "
                                            "(cut to the largest 4k+1 available; >= 5).")] = 81,
    height: Annotated[int, typer.Option("--height", help="Height in pixels (multiple of 16).")] = 480,
    width: Annotated[int, typer.Option("--width", help="Width in pixels (multiple of 16).")] = 832,
    fps: Annotated[float | None, typer.Option("--fps", help="Resample the reference to this rate (also the "
                                              "output's); default: the reference's own rate.")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps from the SDEdit start to 0.")] = 50,
    shift: Annotated[float, typer.Option("--shift", help="Flow shift of the sigma grid.")] = 7.0,
    guidance_scale: Annotated[float, typer.Option("--guidance-scale", "-g", help="CFG scale (1 = off).")] = 5.8,
    strength: Annotated[float, typer.Option("--strength", help="SDEdit denoising strength in (0, 1]: the start "
                                            "sigma is shift(strength) (0.9545 at 0.75, shift 7).")] = 0.75,
    amf: Annotated[str, typer.Option("--amf", help="windowed (FastVMT) | global (DiTFlow: all pairs, all keys).",
                                     rich_help_panel=_G)] = "windowed",
    block: Annotated[int, typer.Option("--block", help="0-based transformer block whose self-attention q/k "
                                       "give the AMF.", rich_help_panel=_G)] = 14,
    span: Annotated[int, typer.Option("--span", help="Windowed AMF: frame pairs with 0 <= j - i < span.",
                                      rich_help_panel=_G)] = 4,
    tile: Annotated[str, typer.Option("--tile", help="Windowed AMF: query tile HxW in tokens (coarse stage).",
                                      rich_help_panel=_G)] = "3x4",
    window: Annotated[int, typer.Option("--window", help="Windowed AMF: side of the key window in tokens "
                                        "(fine stage; clamped to the H/16 x W/16 token grid, where it is global attention).",
                                        rich_help_panel=_G)] = 21,
    temperature: Annotated[float, typer.Option("--temperature", help="AMF softmax temperature tau in "
                                               "softmax(tau q.k / sqrt(D)).", rich_help_panel=_G)] = 1.0,
    head_mode: Annotated[str, typer.Option("--head-mode", help="qk: average q and k over heads (FastVMT) | "
                                           "logits: average the per-head logits (DiTFlow).",
                                           rich_help_panel=_G)] = "qk",
    guided_steps: Annotated[int, typer.Option("--guided-steps", help="Optimise the latent in the first N "
                                              "steps.", rich_help_panel=_G)] = 10,
    inner_steps: Annotated[int, typer.Option("--inner-steps", help="Optimiser steps per guided step.",
                                             rich_help_panel=_G)] = 10,
    reuse_interval: Annotated[int, typer.Option("--reuse-interval", help="Recompute the gradient every N inner "
                                                "steps and reuse it in between (1 = always recompute).",
                                                rich_help_panel=_G)] = 3,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate at the first inner step.",
                                      rich_help_panel=_G)] = 3e-3,
    lr_end: Annotated[float, typer.Option("--lr-end", help="Learning rate at the last inner step (linear).",
                                          rich_help_panel=_G)] = 2.1e-3,
    lr_decay: Annotated[str, typer.Option("--lr-decay", help="inner: lr -> lr-end across each step's inner "
                                          "steps (FastVMT) | outer: constant within a step, decaying across "
                                          "the guided steps (DiTFlow).", rich_help_panel=_G)] = "inner",
    optimizer: Annotated[str, typer.Option("--optimizer", help="adamw (weight decay 0.01) | adam.",
                                           rich_help_panel=_G)] = "adamw",
    loss: Annotated[str, typer.Option("--loss", help="fastvmt: distance-weighted AMF loss + window loss | "
                                      "ditflow: MSE where the reference moves.", rich_help_panel=_G)] = "fastvmt",
    amf_weight: Annotated[float, typer.Option("--amf-weight", help="Weight of the AMF loss (fastvmt loss).",
                                              rich_help_panel=_G)] = 5.0,
    window_weight: Annotated[float, typer.Option("--window-weight", help="Weight of the corresponding-window "
                                                 "loss (fastvmt loss; 0 = off).", rich_help_panel=_G)] = 1.0,
    ref_amf: Annotated[str, typer.Option("--ref-amf", help="per-step: reference re-noised to each guided "
                                         "step's sigma (FastVMT) | clean: once from the clean latent (DiTFlow).",
                                         rich_help_panel=_G)] = "per-step",
    ref_argmax: Annotated[bool, typer.Option("--ref-argmax/--no-ref-argmax", help="Hard argmax for the "
                                             "reference AMF (DiTFlow) instead of soft-argmax.",
                                             rich_help_panel=_G)] = False,
    truncate: Annotated[bool, typer.Option("--truncate/--no-truncate", help="Stop guided forwards after the "
                                           "capture block (later blocks cannot change its q/k).",
                                           rich_help_panel=_G)] = True,
    refine: Annotated[bool, typer.Option("--refine/--no-refine", help="Also run Predict-and-Perturb in the same "
                                         "loop (after each step's guidance), with --plan, --tau, "
                                         "--certain-fraction and --p-norm.", rich_help_panel="Refinement")] = False,
    plan: PlanOpt = "default",
    tau: TauOpt = 0.25,
    certain_fraction: CertainFractionOpt = 0.999,
    p_norm: PNormOpt = 1.0,
    grid: GridOpt = "euler",
    noise: NoiseOpt = "pipeline",
    arithmetic: ArithmeticOpt = "float32",
    cfg_rule: CfgRuleOpt = "diffusers",
    model: ModelOpt = DEFAULT_MODEL,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    offload: OffloadOpt = "none",
    vae_tiling: VaeTilingOpt = False,
    grad_checkpointing: GradCheckpointingOpt = True,
    storage_dtype: StorageDtypeOpt = "none",
    attention_backend: AttentionBackendOpt = None,
    compile: CompileOpt = False,
    lora: LoraOpt = None,
    seed: SeedOpt = 42,
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    batch: BatchOpt = None,
    seeds: SeedsOpt = None,
    naming: NamingOpt = "index",
    dry_run: DryRunOpt = False,
    format: FormatOpt = "text",
) -> None:
    if is_batch(locals()):
        run_batch(ctx, BATCH, locals())
        return
    run_command(ctx, SPEC, single_params(locals()), lambda p: _run(p, ctx))


SPEC = CommandSpec(
    "transfer", inputs={"reference": "file"}, outputs={"output": video_output},
    ranges={"steps": AT_LEAST_1, "guidance_scale": NON_NEGATIVE, "shift": POSITIVE,
            "strength": Range(0, 1, lo_open=True), "temperature": POSITIVE, "lr": POSITIVE, "lr_end": POSITIVE,
            "amf_weight": NON_NEGATIVE, "window_weight": NON_NEGATIVE, **PNP_RANGES},
)


def parse_tile(text: str) -> tuple[int, int]:
    from vmt.errors import VmtUsageError

    parts = str(text).lower().split("x")
    try:
        th, tw = (int(v) for v in parts)
    except ValueError:
        raise VmtUsageError(f"--tile {text!r} must look like 3x4 (rows x columns of tokens)") from None
    if th < 1 or tw < 1:
        raise VmtUsageError(f"--tile {text!r} must be positive")
    return th, tw


def check_job(p: dict):
    """Checks of one job that need no model; returns (guidance config, P&P plan or None)."""
    from vmt.backends.wan import WanGeometry
    from vmt.errors import VmtUsageError

    WanGeometry().check_size(5, p["height"], p["width"])  # Wan2.1's rules, before any model

    from vmt.motion.guidance import GuidanceConfig
    from vmt.transfer import MIN_FRAMES, sdedit_sigmas

    if p["num_frames"] < MIN_FRAMES:
        raise VmtUsageError(f"--num-frames {p['num_frames']} is too few; motion transfer needs >= {MIN_FRAMES}")
    cfg = GuidanceConfig(
        amf=p["amf"], block=p["block"], span=p["span"], tile=parse_tile(p["tile"]), window=p["window"],
        temperature=p["temperature"], head_mode=p["head_mode"], guided_steps=p["guided_steps"],
        inner_steps=p["inner_steps"], reuse_interval=p["reuse_interval"], lr=p["lr"], lr_end=p["lr_end"],
        lr_decay=p["lr_decay"], optimizer=p["optimizer"], loss=p["loss"], amf_weight=p["amf_weight"], window_weight=p["window_weight"],
        ref_amf=p["ref_amf"], ref_argmax=p["ref_argmax"], truncate=p["truncate"],
    )
    # Token grid from the resolution (Wan: VAE /8, patch 2); the backend re-checks with its own factors.
    cfg.check_grid((2, p["height"] // 16, p["width"] // 16), (p["height"], p["width"]))
    sdedit_sigmas(p["steps"], p["shift"], p["strength"])  # validates steps and strength
    pnp_plan = check_refine_params(p, p["steps"]) if p["refine"] else None
    from vmt.generate import check_modes

    check_modes(grid=p["grid"], noise=p["noise"], arithmetic=p["arithmetic"], cfg_rule=p["cfg_rule"])
    wan_load_options(p)  # memory options checked before any model
    return cfg, pnp_plan


def check_model_job(p: dict, geometry, prepared) -> None:
    """Checks of one job against the model's config (no weights)."""
    geometry.check_block(prepared[0].block)


def load_backend(p: dict, geometry_check=None, device: str | None = None, inspected=None):
    """Resolve the model, check its geometry (before minutes of loading weights), load it; a T2V model."""
    from vmt.backends.wan import WanBackend, inspect_model
    from vmt.errors import VmtUsageError

    resolved, geometry = inspected or inspect_model(p["model"], p["revision"])
    if geometry_check is not None:
        geometry_check(geometry)
    backend = WanBackend.from_pretrained(p["model"], wan_load_options({**p, "device": device or p["device"]},
                                                                      resolved))
    if backend.is_i2v:
        raise VmtUsageError(f"{backend.model_id} is an image-to-video model; vmt transfer needs a text-to-video "
                            "Wan model (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    return backend


def estimate(p: dict, prepared, geometry) -> dict:
    """Planned model evaluations of one job: sampling NFE (no early exit), DiT forward and backward passes
    (sampling: two per NFE with CFG; guidance: one reference forward per guided step, or one in all for a clean
    reference, and a forward + backward at every --reuse-interval-th inner step)."""
    cfg, plan = prepared
    nfe = plan.nfe(p["steps"]) if plan is not None else p["steps"]
    branches = 2 if p["guidance_scale"] > 1.0 else 1
    guided = min(cfg.guided_steps, p["steps"])
    grads = guided * math.ceil(cfg.inner_steps / cfg.reuse_interval)
    refs = (1 if guided else 0) if cfg.ref_amf == "clean" else guided
    frames = (p["num_frames"] - 1) // 4 * 4 + 1  # at most; a shorter reference gives fewer
    return {"steps": p["steps"], "nfe": nfe, "dit_forward": nfe * branches + refs + grads, "dit_backward": grads,
            "cfg_branches": branches, "tokens": math.prod(geometry.token_grid(frames, p["height"], p["width"]))}


def run_job(backend, p: dict, prepared, timer, progress=None, report: bool = True,
            sidecar_extra: dict | None = None, reference=None) -> dict:
    """One video on a loaded backend: transfer, write the video and its sidecar. The single command and every
    job of a batch run this. `reference`: (frames, fps) already read, else read here. Returns compute counts."""
    from rich.text import Text

    from vmt.io.atomic import commit_together
    from vmt.io.video import write_video
    from vmt.provenance import build_sidecar, write_sidecar
    from vmt.runtime import peak_memory
    from vmt.transfer import TransferRequest, load_reference
    from vmt.transfer import transfer as run_transfer

    cfg, pnp_plan = prepared
    output, ref_path = p["output"], Path(p["reference"])
    if reference is None:
        with timer.stage("read_reference"):
            reference = load_reference(ref_path, p["num_frames"], p["height"], p["width"], p["fps"])
    frames, ref_fps = reference
    timer.sync_cuda = backend.device.type == "cuda"
    req = TransferRequest(
        prompt=p["prompt"], negative_prompt=p["negative_prompt"], height=p["height"], width=p["width"],
        steps=p["steps"], shift=p["shift"], guidance_scale=p["guidance_scale"], strength=p["strength"],
        seed=p["seed"], grid=p["grid"], noise=p["noise"], arithmetic=p["arithmetic"], cfg_rule=p["cfg_rule"],
    )

    # P&P replaces the Euler update of its steps; the guidance (a before-step hook) still runs first.
    pnp = make_pnp(pnp_plan, p, sync_cuda=timer.sync_cuda) if pnp_plan is not None else None

    def on_step(state) -> None:  # the interventions' own display fields: guidance's AMF loss, P&P's K
        advance(sigma=f"{float(state.sigma):.3f}", **state.summary)

    progress = progress or (lambda total, what: step_progress(total, what, p["quiet"]))
    with progress(req.steps, "transfer") as advance:
        notes = None if p["quiet"] else (lambda msg: console.print(Text.assemble(("note: ", "yellow"), msg)))
        result = run_transfer(backend, frames, req, cfg, interventions=[pnp] if pnp else [], on_step=on_step,
                              timer=timer, notify=notes)
    out_fps = p["fps"] if p["fps"] is not None else ref_fps
    with timer.stage("write"), commit_together():  # the video and its sidecar appear together
        write_video(output, result.frames, out_fps)
        resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}
        if pnp_plan is not None:
            resolved["plan"] = str(pnp_plan)
        doc = build_sidecar(
            command_line(), "transfer", resolved, output=output, model=backend.describe(),
            timings=timer.stages, compute=backend.counts.as_dict(), memory=peak_memory(backend.device),
            extra={
                "sigmas": result.sigmas,
                "video": {"frames": len(result.frames), "fps": out_fps, "height": p["height"],
                          "width": p["width"]},
                "reference": {"path": str(ref_path), "frames_used": len(frames), "fps": ref_fps},
                "token_grid": list(result.grid),
                "guidance": {"config": result.config, "adjusted": result.adjustments, "final_amf_loss": [g["final_amf_loss"] for g in result.guidance],
                             "steps": result.guidance},
                # P&P's time is part of the sampling stage (the loop minus reference AMF and guidance).
                "pnp": (refine_summary(pnp, req.steps, backend.counts.nfe, timer.stages.get("sampling", 0.0))
                        if p["refine"] else None),
                **(sidecar_extra or {}),
            },
        )
        write_sidecar(output, doc)
    if report and not p["quiet"]:
        c = backend.counts
        st = timer.stages
        console.print(
            f"[green]wrote[/] {output} ({len(result.frames)} frames, {p['width']}x{p['height']}, {out_fps:g} fps) "
            f"NFE {c.nfe}, DiT forward {c.dit_forward}, backward {c.dit_backward}; guidance {st.get('guidance', 0):.1f}s, "
            f"reference AMF {st.get('reference_amf', 0):.1f}s, sampling {st.get('sampling', 0):.1f}s"
        )
    return backend.counts.as_dict()


def _run(p: dict, ctx) -> None:
    require(ctx, p, ("reference", "prompt", "output"))
    prepared = check_job(p)
    quiet_libraries(p["debug"])

    from vmt.runtime import Timer
    from vmt.transfer import load_reference

    timer = Timer()
    with timer.stage("read_reference"):  # a bad reference fails before minutes of loading
        reference = load_reference(Path(p["reference"]), p["num_frames"], p["height"], p["width"], p["fps"])
    with status(f"Loading {p['model']}...", p["quiet"]), timer.stage("load"):
        backend = load_backend(p, lambda g: check_model_job(p, g, prepared))
    run_job(backend, p, prepared, timer, reference=reference)


BATCH = BatchCommand(SPEC, check_job, check_model_job, load_backend, run_job, estimate, required=("prompt", "reference"))
