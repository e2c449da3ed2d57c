"""`vmt refine`: text/image-to-video with the project's flow-matching sampling loop and Predict-and-Perturb."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    DEFAULT_MODEL, AttentionBackendOpt, CompileOpt, DebugOpt, DeviceOpt, DtypeOpt, GradCheckpointingOpt, LoraOpt,
    ModelOpt, OffloadOpt, OverwriteOpt, QuietOpt, RecipeOpt, RevisionOpt, SeedOpt, StorageDtypeOpt, VaeTilingOpt,
    reflow,
)
from cli.refine_options import (
    ArithmeticOpt, CertainFractionOpt, CfgRuleOpt, GridOpt, NoiseOpt, PlanOpt, PNormOpt, TauOpt,
)
from cli.batch import BatchOpt, BatchOutputOpt, DryRunOpt, FormatOpt, NamingOpt, SeedsOpt, run_request
from cli.scaffold import CommandSpec, video_output
from vmt.runs.refine import RefineRequest

HELP = reflow("""Generate a video from a text prompt (or an image) with a Wan model, refining the early (motion)
steps with Predict-and-Perturb: at a fixed noise level the model re-noises and re-denoises its own clean
estimate K times (forward passes only), and an uncertainty gate keeps voxels that have settled.

[bold]Examples[/]

  vmt refine --prompt "a red fox running through snow" -o fox.mp4          # published plan 2-5:3,6-14:1

  vmt refine --prompt "..." --plan none -o plain.mp4                          # plain Euler sampling

  vmt refine --prompt "..." --plan "2-5:3,6-14:1" --tau 0.25 -o fox.mp4

  vmt refine --recipe wan2.2-a14b-t2v --prompt "..." -o out.mp4

  vmt refine --model Wan-AI/Wan2.2-I2V-A14B-Diffusers --image first.png --prompt "..." \\
      --recipe wan2.2-a14b-i2v -o clip.mp4

  vmt refine --batch prompts.txt --seeds 0-4 --naming vbench -o vbench/     # one model load, resumable

  torchrun --nproc-per-node 8 -m cli.main refine --batch jobs.jsonl -o out/  # jobs split over 8 GPUs

Plans: FIRST-LAST:K items, 0-based inclusive outer steps, K extra model evaluations each (NFE = steps +
sum of K; the default adds 21 to 50 steps, 1.42x). `--plan default` (the default) is the published
50-step plan; on schedules shorter than 15 steps it keeps only the steps that exist.

Batches: --batch JOBS runs a .jsonl file (one job a line: prompt, seed, output, any option) or a prompt list
with one model load; -o is then the output folder, with manifest.jsonl. Re-running resumes; --dry-run prints
the plan (NFE, DiT passes, estimated GPU memory) without loading weights.

Sizes: --num-frames must be 4k+1 and --height/--width multiples of 16 (Wan's VAE and patch size).
""")


def refine(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="What the video shows (with --batch: the "
                                               "default of jobs without one).", show_default=False)] = None,
    output: BatchOutputOpt = None,
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", help="What to steer away from (CFG).")] = "",
    image: Annotated[Path | None, typer.Option("--image", help="First frame for image-to-video models "
                                               "(a still image, or a video's first frame; fitted to the "
                                               "output size by --image-fit).")] = None,
    image_fit: Annotated[str, typer.Option("--image-fit", help="stretch: resize to the output size as "
                                           "diffusers' Wan I2V pipeline does (Lanczos, aspect not kept) | crop: "
                                           "centre-crop to the output's aspect ratio first.")] = "stretch",
    num_frames: Annotated[int, typer.Option("--num-frames", "-f", help="Frames to generate (4k+1).")] = 81,
    height: Annotated[int, typer.Option("--height", help="Height in pixels (multiple of 16).")] = 480,
    width: Annotated[int, typer.Option("--width", help="Width in pixels (multiple of 16).")] = 832,
    steps: Annotated[int, typer.Option("--steps", help="Denoising steps (Euler on the shifted sigma grid).")] = 50,
    guidance_scale: Annotated[float, typer.Option("--guidance-scale", "-g", help="Classifier-free guidance "
                                                  "scale (1 = off).")] = 5.0,
    guidance_scale_2: Annotated[float | None, typer.Option("--guidance-scale-2", help="CFG scale of the "
                                                           "low-noise expert (Wan2.2 A14B); default: "
                                                           "--guidance-scale.")] = None,
    shift: Annotated[float | None, typer.Option("--shift", help="Flow shift of the sigma grid; default: the "
                                                "model's flow_shift (3 for Wan 480p, 5 for 720p).")] = None,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the written video.")] = 16.0,
    plan: PlanOpt = "default",
    tau: TauOpt = 0.25,
    certain_fraction: CertainFractionOpt = 0.999,
    p_norm: PNormOpt = 1.0,
    grid: GridOpt = "model",
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
    seed: SeedOpt = 0,
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


SPEC = CommandSpec("refine", inputs=RefineRequest.job_kind.inputs, outputs={"output": video_output},
                   request=RefineRequest)
