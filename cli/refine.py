"""`vmt refine`: text/image-to-video with the project's flow-matching sampling loop and Predict-and-Perturb."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    DEFAULT_MODEL, AttentionBackendOpt, CompileOpt, DebugOpt, DeviceOpt, DtypeOpt, GradCheckpointingOpt, LoraOpt,
    ModelOpt, OffloadOpt, OverwriteOpt, QuietOpt, RecipeOpt, RevisionOpt, SeedOpt, StorageDtypeOpt, VaeTilingOpt,
    command_line, console, quiet_libraries, reflow, status, step_progress, wan_load_options,
)
from cli.refine_options import (
    PNP_RANGES, ArithmeticOpt, CertainFractionOpt, CfgRuleOpt, GridOpt, NoiseOpt, PlanOpt, PNormOpt, TauOpt,
    check_refine_params, make_pnp, pnp_progress, refine_summary,
)
from cli.batch import (
    BatchCommand, BatchOpt, BatchOutputOpt, DryRunOpt, FormatOpt, NamingOpt, SeedsOpt, is_batch, require,
    run_batch, single_params,
)
from cli.scaffold import AT_LEAST_1, NON_NEGATIVE, POSITIVE, CommandSpec, run_command, video_output

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
                                               "(resized and centre-cropped to the output size).")] = None,
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
    if is_batch(locals()):
        run_batch(ctx, BATCH, locals())
        return
    run_command(ctx, SPEC, single_params(locals()), lambda p: _run(p, ctx))


SPEC = CommandSpec(
    "refine", inputs={"image": "file"}, outputs={"output": video_output},
    ranges={"steps": AT_LEAST_1, "guidance_scale": NON_NEGATIVE, "guidance_scale_2": NON_NEGATIVE,
            "shift": POSITIVE, **PNP_RANGES},
)


def check_job(p: dict):
    """Checks of one job that need no model: Wan2.1's size rules and the P&P plan. Returns the plan."""
    from vmt.backends.wan import WanGeometry

    WanGeometry().check_size(p["num_frames"], p["height"], p["width"])  # Wan2.1's rules, before any model
    plan = check_refine_params(p, p["steps"])
    wan_load_options(p)  # memory options checked before any model
    return plan


def check_model_job(p: dict, geometry, plan) -> None:
    """Checks of one job against the model's config (no weights)."""
    geometry.check_size(p["num_frames"], p["height"], p["width"])


def load_backend(p: dict, geometry_check=None, device: str | None = None, inspected=None):
    """Resolve the model, check its geometry (before minutes of loading weights), load it."""
    from vmt.backends.wan import WanBackend, inspect_model

    resolved, geometry = inspected or inspect_model(p["model"], p["revision"])
    if geometry_check is not None:
        geometry_check(geometry)
    return WanBackend.from_pretrained(p["model"], wan_load_options({**p, "device": device or p["device"]}, resolved))


def estimate(p: dict, plan, geometry) -> dict:
    """Planned model evaluations of one job: NFE (no early exit) and DiT passes (two per NFE with CFG)."""
    nfe = plan.nfe(p["steps"])
    cfg = p["guidance_scale"] > 1.0 or (p["guidance_scale_2"] or 0.0) > 1.0
    return {"steps": p["steps"], "nfe": nfe, "dit_forward": nfe * (2 if cfg else 1), "dit_backward": 0,
            "cfg_branches": 2 if cfg else 1, "tokens": math.prod(geometry.token_grid(
                p["num_frames"], p["height"], p["width"]))}


def run_job(backend, p: dict, pnp_plan, timer, progress=None, report: bool = True,
            sidecar_extra: dict | None = None) -> dict:
    """One video on a loaded backend: generate, write the video and its sidecar. The single command and every
    job of a batch run this. `progress(total, description)` gives the step bar; returns the compute counts."""
    from vmt.generate import GenerationRequest, generate
    from vmt.io.atomic import commit_together
    from vmt.io.video import read_video, write_video
    from vmt.provenance import build_sidecar, write_sidecar
    from vmt.runtime import peak_memory

    output = p["output"]
    timer.sync_cuda = backend.device.type == "cuda"
    image = None
    if p["image"] is not None:
        with timer.stage("read_image"):
            image = read_video(p["image"], size=(p["height"], p["width"]), max_frames=1)[0][0]
    req = GenerationRequest(
        prompt=p["prompt"], negative_prompt=p["negative_prompt"], image=image, num_frames=p["num_frames"],
        height=p["height"], width=p["width"], steps=p["steps"], guidance_scale=p["guidance_scale"],
        guidance_scale_2=p["guidance_scale_2"], shift=p["shift"], seed=p["seed"], grid=p["grid"],
        noise=p["noise"], arithmetic=p["arithmetic"], cfg_rule=p["cfg_rule"],
    )
    pnp = make_pnp(pnp_plan, p, sync_cuda=timer.sync_cuda)

    def on_step(state) -> None:
        advance(sigma=f"{float(state.sigma):.3f}", **pnp_progress(state))

    progress = progress or (lambda total, what: step_progress(total, what, p["quiet"]))
    with progress(req.steps, "denoising") as advance:
        result = generate(backend, req, interventions=[pnp] if pnp else [], on_step=on_step, timer=timer)
    with timer.stage("write"), commit_together():  # the video and its sidecar appear together
        write_video(output, result.frames, p["fps"])
        resolved = {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}
        resolved["shift"] = req.shift if req.shift is not None else backend.default_shift
        resolved["plan"] = str(pnp_plan)
        pnp_doc = refine_summary(pnp, req.steps, backend.counts.nfe, timer.stages.get("denoise", 0.0))
        doc = build_sidecar(
            command_line(), "refine", resolved, output=output, model=backend.describe(),
            timings=timer.stages, compute=backend.counts.as_dict(), memory=peak_memory(backend.device),
            extra={"sigmas": result.sigmas, "timesteps": result.timesteps,
                   "video": {"frames": int(len(result.frames)), "fps": p["fps"], "height": p["height"],
                             "width": p["width"]},
                   "pnp": pnp_doc, "steps": result.steps, **(sidecar_extra or {})},
        )
        write_sidecar(output, doc)
    if report and not p["quiet"]:
        c = backend.counts
        console.print(f"[green]wrote[/] {output} ({len(result.frames)} frames, {p['width']}x{p['height']}) "
                      f"NFE {c.nfe} ({c.nfe / req.steps:.2f}x), DiT passes {c.dit_forward}, "
                      f"denoise {timer.stages.get('denoise', 0):.1f}s")
    return backend.counts.as_dict()


def _run(p: dict, ctx) -> None:
    require(ctx, p, ("prompt", "output"))
    pnp_plan = check_job(p)
    quiet_libraries(p["debug"])

    from vmt.runtime import Timer

    timer = Timer()
    with status(f"Loading {p['model']}...", p["quiet"]), timer.stage("load"):
        # Geometry checked from the config, before minutes of loading weights.
        backend = load_backend(p, lambda g: g.check_size(p["num_frames"], p["height"], p["width"]))
    run_job(backend, p, pnp_plan, timer)


BATCH = BatchCommand(SPEC, check_job, check_model_job, load_backend, run_job, estimate, required=("prompt",))
