"""`vmt transfer`: FastVMT motion transfer from a reference video (DiTFlow-style baseline by recipe)."""

from __future__ import annotations

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
    reflow,
)
from cli.refine_options import (
    ArithmeticOpt,
    CertainFractionOpt,
    CfgRuleOpt,
    GridOpt,
    NoiseOpt,
    PlanOpt,
    PNormOpt,
    TauOpt,
)
from cli.batch import BatchOpt, BatchOutputOpt, DryRunOpt, FormatOpt, NamingOpt, SeedsOpt, run_request
from cli.scaffold import CommandSpec, video_output
from cli.transfer_options import guidance_options
from vmt.runs.transfer import TransferRequest

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

  vmt transfer ref.mp4 --image photo.jpg --prompt "..." -o onto-photo.mp4 \\
      --recipe fastvmt-wan2.1-i2v-14b-480p               # image-to-video: the photo is the first frame

  vmt transfer --batch refs.jsonl -o out/ --naming "{reference}-{seed}.mp4"   # "reference" per line

Defaults are the FastVMT release's for Wan2.1-T2V-1.3B: 480x832, up to 81 frames, 50 steps, shift 7,
CFG 5.8, seed 42, strength 0.75, block 14, span 4, tiles 3x4, window 21, 10 guided x 10 inner steps, gradient
reuse every 3, AdamW lr 3e-3 -> 2.1e-3. The output keeps the reference's frame rate unless --fps is given.

--refine runs Predict-and-Perturb (see `vmt refine --help`) in the same loop: at the steps of --plan
(0-based indices of the transfer's own --steps grid, which starts at the SDEdit sigma) the step's latent,
already optimised by the guidance, is refined with K extra forward passes. Guidance is unchanged.
""")

_G = "Guidance"
G = guidance_options(_G)  # --strength and the guidance options (shared with `vmt longgen sample`)


def transfer(
    ctx: typer.Context,
    reference: Annotated[Path | None, typer.Argument(help="Reference video whose motion is transferred (with "
                                                     "--batch: the default of jobs without one).",
                                                     show_default=False)] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="What the new video shows (with --batch: "
                                               "the default of jobs without one).", show_default=False)] = None,
    output: BatchOutputOpt = None,
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", help="What to steer away from (CFG).")] = "",
    image: Annotated[Path | None, typer.Option("--image", help="Image-to-video models: the first frame (a photo) "
                                               "the reference's motion is transferred onto; fitted to the "
                                               "output size by --image-fit.")] = None,
    image_fit: Annotated[str, typer.Option("--image-fit", help="stretch: resize to the output size as "
                                           "diffusers' Wan I2V pipeline does (Lanczos, aspect not kept) | crop: "
                                           "centre-crop to the output's aspect ratio first.")] = "stretch",
    num_frames: Annotated[int, typer.Option("--num-frames", "-f", help="Most frames to take from the reference "
                                            "(cut to the largest 4k+1 available; >= 5).")] = 81,
    height: Annotated[int, typer.Option("--height", help="Height in pixels (multiple of 16).")] = 480,
    width: Annotated[int, typer.Option("--width", help="Width in pixels (multiple of 16).")] = 832,
    fps: Annotated[float | None, typer.Option("--fps", help="Resample the reference to this rate (also the "
                                              "output's); default: the reference's own rate.")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps from the SDEdit start to 0.")] = 50,
    shift: Annotated[float, typer.Option("--shift", help="Flow shift of the sigma grid.")] = 7.0,
    guidance_scale: Annotated[float, typer.Option("--guidance-scale", "-g", help="CFG scale (1 = off).")] = 5.8,
    strength: G.strength = 0.75,
    amf: G.amf = "windowed",
    block: G.block = 14,
    span: G.span = 4,
    tile: G.tile = "3x4",
    window: G.window = 21,
    temperature: G.temperature = 1.0,
    head_mode: G.head_mode = "qk",
    guided_steps: G.guided_steps = 10,
    inner_steps: G.inner_steps = 10,
    reuse_interval: G.reuse_interval = 3,
    lr: G.lr = 3e-3,
    lr_end: G.lr_end = 2.1e-3,
    lr_decay: G.lr_decay = "inner",
    optimizer: G.optimizer = "adamw",
    loss: G.loss = "fastvmt",
    amf_weight: G.amf_weight = 5.0,
    window_weight: G.window_weight = 1.0,
    ref_amf: G.ref_amf = "per-step",
    ref_argmax: G.ref_argmax = False,
    truncate: G.truncate = True,
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
    motion_cache: Annotated[Path | None, typer.Option(
        "--motion-cache", help="Folder caching the reference latent and reference AMF, keyed by the reference's "
        "content, the model and every setting they depend on: a later run on the same reference skips their "
        "VAE encode and DiT passes. Default: $XDG_CACHE_HOME/vmt/motion (~/.cache/vmt/motion).",
        rich_help_panel=_G, show_default=False)] = None,
    no_motion_cache: Annotated[bool, typer.Option("--no-motion-cache", help="Compute the reference passes "
                                                  "afresh and write no cache.", rich_help_panel=_G)] = False,
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
    run_request(ctx, SPEC, locals())


SPEC = CommandSpec("transfer", inputs=TransferRequest.job_kind.inputs, outputs={"output": video_output},
                   request=TransferRequest)
