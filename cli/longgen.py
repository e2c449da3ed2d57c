"""`vmt longgen`: train, sample and reconstruct with EncGAN3 / REncGAN3 (long videos as a chain of clips)."""

from __future__ import annotations

import functools
from contextlib import ExitStack, contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    AttentionBackendOpt, CompileOpt, DebugOpt, DeviceOpt, DtypeOpt, GradCheckpointingOpt, LoraOpt, OffloadOpt,
    OutputOpt, OverwriteOpt, QuietOpt, RecipeOpt, RevisionOpt, SeedOpt, StorageDtypeOpt, VaeTilingOpt,
    command_line, console, status, step_progress,
)
from cli.display import ChainProgress, reflow, show_chain
from cli.refine_options import (
    ArithmeticOpt, CertainFractionOpt, CfgRuleOpt, GridOpt, NoiseOpt, PlanOpt, PNormOpt, TauOpt,
)
from cli.scaffold import RUN_FOLDER, CommandSpec, run_command, video_output
from cli.transfer_options import guidance_options
from vmt.longgen.config import DEFAULT_MOTION_TEMPERATURE
from vmt.runs.chain import WanChainRequest, sample_request
from vmt.runs.fields import request_from
from vmt.runs.longgen import LonggenReconstructRequest, LonggenSampleRequest, LonggenTrainRequest

HELP = """Long videos from a small video VAE-GAN (EncGAN3) run as a Markov chain of clips (REncGAN3).

The model is trained here, on your videos or on synthetic moving digits (no weights are downloaded).

[bold]Examples[/]

  vmt longgen train synthetic:digits -o runs/digits --recipe cpu-digits

  vmt longgen sample --frames 1000 -o digits.mp4 --seed 3   # the shipped moving-digits model

  vmt longgen sample -m runs/digits --frames 1000 -o digits.mp4 --seed 3

  vmt longgen train ~/videos -o runs/faces --preset paper --stride 2,3 --device cuda

  vmt longgen sample -m runs/faces --frames 1000 -o long.mp4

  vmt longgen reconstruct clip.mp4 -m runs/faces -o rec.mp4
"""

app = typer.Typer(help=reflow(HELP), no_args_is_help=True, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]})

ModelDirOpt = Annotated[str, typer.Option("--model", "-m", help="Run folder written by `vmt longgen train`.",
                                          rich_help_panel="Model", show_default=False)]
DefaultModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Run folder written by `vmt longgen train` (default: the small moving-digits model "
    "shipped with vmt, cpu preset), or a Wan image-to-video model: a hub id or a diffusers folder (one with "
    "model_index.json) runs the Wan chain.", rich_help_panel="Model", show_default=False)]
RefIndexOpt = Annotated[int, typer.Option("--ref-index", help="Frame of each clip that conditions the next one "
                                          "(-1: the last frame, one frame of overlap; -k: k frames of overlap).")]
CHAIN = "Wan chain (with a Wan image-to-video --model)"

_chain_opt = functools.partial(typer.Option, rich_help_panel=CHAIN)  # an option of the Wan chain's panel
MOTION = "Motion transfer (with --reference)"
G = guidance_options(MOTION, MOTION)  # `vmt transfer`'s --strength and guidance options, with its defaults

TRAIN_HELP = """Train EncGAN3 with recall training on a folder of videos or on synthetic moving digits.

DATA is a folder of videos (searched recursively; each is resized to the preset's size by scale + centre
crop) or `synthetic:digits`. RUN_DIR receives model.safetensors (what sampling needs), train.safetensors
(discriminators and optimiser state, for --resume), config.json, samples/step_*.png (rows: samples, columns:
frames) and train.json (the sidecar).

[bold]Examples[/]

  vmt longgen train synthetic:digits -o runs/digits --recipe cpu-digits   # the shipped model

  vmt longgen train synthetic:digits -o runs/quick --preset cpu --image-warmup 2000 --steps 2600

  vmt longgen train ~/videos -o runs/faces --preset paper --stride 2,3 --fps 25 --device cuda

  vmt longgen train synthetic:digits -o runs/quick --steps 4000 --resume   # continue to step 4000

Presets: paper (64x64, 16 frames, base 64, F-SA; the G3AN/EncGAN3 size), cpu (32x32, 8 frames, trains in
minutes on a CPU), tiny (16x16, for tests).
"""


@app.command("train", help=reflow(TRAIN_HELP), no_args_is_help=True)
def train(
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="Folder of videos, or synthetic:digits.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run folder to write (created if missing).",
                                         show_default=False)],
    preset: Annotated[str, typer.Option("--preset", help="paper | cpu | tiny (model sizes).")] = "cpu",
    size: Annotated[int | None, typer.Option("--size", help="Frame side in pixels, a power of two (default: the "
                                             "preset's; e.g. --preset cpu --size 64 for 64x64 faces).",
                                             show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Total training steps (with --resume: the step to "
                                       "stop at).")] = 1000,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Windows per step.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (betas 0.5, 0.999).")] = 5e-4,
    kl_weight: Annotated[float, typer.Option("--kl-weight", help="Weight of the KL terms (1e-3 already "
                                             "makes the movement latent collapse).")] = 1e-4,
    adv_weight: Annotated[float, typer.Option("--adv-weight", help="Weight of the adversarial terms "
                                              "(L1 reconstruction has weight 1).")] = 0.05,
    image_warmup: Annotated[int, typer.Option("--image-warmup", help="First steps that train only the content "
                                              "encoder and the spatial stream on single frames (~30x cheaper "
                                              "than a joint step); they count towards --steps.")] = 0,
    adv_warmup: Annotated[int, typer.Option("--adv-warmup", help="Steps of VAE-only training (L1 + KL) before "
                                            "the adversarial terms start, counted after --image-warmup.")] = 300,
    mask_weight: Annotated[float, typer.Option("--mask-weight", help="Warping models: weight of the mean blend "
                                               "mask, to prefer moving the reference over redrawing it.")] = 1.0,
    pyramid_levels: Annotated[int, typer.Option("--pyramid-levels", help="L1 on an image pyramid of this many "
                                                "levels (1: plain L1); coarse levels guide the shifts.")] = 3,
    recall: Annotated[bool, typer.Option("--recall/--no-recall", help="Recall training: overlapping clip pairs, "
                                         "the video discriminator judges merged clips.")] = True,
    attention: Annotated[bool | None, typer.Option("--attention/--no-attention", help="Factorised "
                                                   "self-attention in the generator (default: the preset's).",
                                                   show_default=False)] = None,
    signed_motion: Annotated[bool | None, typer.Option("--signed-motion/--abs-motion", help="Movement encoder "
                                                       "reads signed frame differences or |x_i - x_(i-1)| "
                                                       "(default: the preset's; cpu: signed).",
                                                       show_default=False)] = None,
    warp: Annotated[bool | None, typer.Option("--warp/--no-warp", help="Generator blends with the reference "
                                              "translated by predicted per-frame shifts instead of in place "
                                              "(default: the preset's; cpu and tiny: on, paper: off as in G3AN).",
                                              show_default=False)] = None,
    stride: Annotated[str, typer.Option("--stride", help="Temporal stride(s) of training clips, comma-separated; "
                                        "one is picked at random per clip (G3AN: 2,3).")] = "1",
    fps: Annotated[float | None, typer.Option("--fps", help="Resample videos to this frame rate first.",
                                              show_default=False)] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Read at most this many frames per video.",
                                                   show_default=False)] = None,
    sample_every: Annotated[int, typer.Option("--sample-every", help="Write a sample grid every N steps "
                                              "(0: only at the end).")] = 250,
    save_every: Annotated[int, typer.Option("--save-every", help="Save a checkpoint every N steps "
                                            "(0: only at the end).")] = 250,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in RUN_DIR (same preset).")] = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    run_command(ctx, TRAIN_SPEC, locals(), _train)


TRAIN_SPEC = CommandSpec("longgen-train", outputs={"output": RUN_FOLDER}, request=LonggenTrainRequest)


def _request(cls, p: dict):
    """The run request of the resolved parameters (its fields; output, quiet and the like stay here)."""
    return cls(**{f.name: p[f.name] for f in fields(cls) if f.name in p})


@contextmanager
def _bar(label: str, quiet: bool):
    """A progress(done, total, info) for a request's run() whose bar opens at its first call: the total is
    known then, and the checks, loading and data reading (with their own spinner) are over."""
    with ExitStack() as stack:
        opened = functools.cache(lambda total: stack.enter_context(step_progress(total, label, quiet)))
        yield lambda done, total, info: opened(total)(**info)


def _train(p) -> None:
    with _bar("training", p["quiet"]) as progress:
        out = _request(LonggenTrainRequest, p).run(
            p["output"], given=p.given, overwrite=p["overwrite"], progress=progress, record=p,
            command=command_line(), status=lambda message: status(message, p["quiet"]))
    if not p["quiet"]:
        console.print(f"[green]trained[/] {p['output']} to step {out['step']} "
                      + "  ".join(f"{k}={v:.3f}" for k, v in out["final_losses"].items()))


SAMPLE_HELP = """Sample a long video: clip after clip, each conditioned on a frame of the previous one.

Frames are streamed to ffmpeg as clips are made, so memory does not grow with --frames. Without -m the small
model shipped with vmt is used (32x32 moving digits, cpu preset).

With a Wan image-to-video model as -m (a hub id, or a diffusers folder with model_index.json) the clips are Wan
segments of --segment-frames frames: segment 1 starts from --image (or is text-to-video on --t2v-model), each
next one is conditioned on the frame of the one before at --ref-index, and the video has exactly --frames
frames (segment j uses seed + j). Finished segments are kept in a run folder beside the output (OUT.chain/):
rerun the same command after an interruption and it continues; the folder is removed once the video is
written. Drift controls: --colour-match, --anchor-embedding, --cond-noise (see the README on what was and was
not measured). --dry-run prints the segments, NFE and a GPU memory estimate without loading weights.

With --reference VIDEO each segment is a FastVMT motion transfer (as `vmt transfer`) of the reference's frames
over the segment's own time span, so a 20-second dance drives a 20-second video; the first frame of each
segment is still its conditioning frame.

[bold]Examples[/]

  vmt longgen sample --frames 1000 -o digits.mp4

  vmt longgen sample -m runs/digits --frames 1000 -o digits.mp4

  vmt longgen sample -m runs/faces --frames 300 --seed 7 -o faces.mp4

  vmt longgen sample -m runs/faces --frames 300 --ref-index -4 -o overlap4.mp4

  vmt longgen sample -m Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --image first.png -p "a boat on a river" \\
      --frames 401 -o long.mp4

  vmt longgen sample -m Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --image first.png --reference dance.mp4 \\
      -p "a robot dancing on a stage" --frames 321 -o robot.mp4

  vmt longgen sample -m Wan-AI/Wan2.1-I2V-14B-480P-Diffusers --image first.png --prompts story.txt \\
      --frames 801 --dry-run -o long.mp4
"""


@app.command("sample", help=reflow(SAMPLE_HELP), no_args_is_help=True)
def sample(
    ctx: typer.Context,
    output: OutputOpt,
    model: DefaultModelOpt = None,
    frames: Annotated[int, typer.Option("--frames", "-f", help="Frames to generate (any count >= 1).")] = 160,
    fps: Annotated[float | None, typer.Option("--fps", help="Frame rate of the written video (default: 10 for "
                                              "EncGAN3, 16 for Wan).", show_default=False)] = None,
    ref_index: RefIndexOpt = -1,
    carry_motion: Annotated[bool, typer.Option("--carry-motion", help="Reuse the motion latent of the previous "
                                               "clip instead of drawing a fresh one.")] = False,
    standard_prior: Annotated[bool, typer.Option("--standard-prior", help="Draw latents from N(0, I), as in the "
                                                 "paper, instead of the Gaussian fitted to the training "
                                                 "data's encodings when the run was saved.")] = False,
    motion_temperature: Annotated[float, typer.Option("--motion-temperature", help="Spread of each clip's fresh "
                                                      "motion around the motion predicted from the chain's "
                                                      "state (0: the prediction, 1: the fitted "
                                                      "spread).")] = DEFAULT_MOTION_TEMPERATURE,
    subpixel: Annotated[bool, typer.Option("--subpixel", help="Move references by sub-pixel shifts with "
                                           "mirrored borders, as in training, instead of by whole pixels with "
                                           "black entering at the borders (resampling blurs long chains; "
                                           "mirroring folds content into copies).")] = False,
    prompt: Annotated[str | None, _chain_opt("--prompt", "-p", help="What the video shows (every segment).",
                                             show_default=False)] = None,
    prompts: Annotated[Path | None, _chain_opt("--prompts", help="Timeline file: one prompt a line, a segment "
                                               "each (the last repeated); or .jsonl with \"prompt\" and optional "
                                               "negative_prompt, seed_offset, guidance_scale, shift per segment.",
                                               show_default=False)] = None,
    negative_prompt: Annotated[str, _chain_opt("--negative-prompt", help="What to steer away from (CFG).")] = "",
    image: Annotated[Path | None, _chain_opt("--image", help="First frame (resized and centre-cropped to the "
                                             "output size).", show_default=False)] = None,
    t2v_model: Annotated[str | None, _chain_opt("--t2v-model", help="Text-to-video Wan model that makes segment "
                                                "1 when no --image is given (loaded, used, freed).",
                                                show_default=False)] = None,
    segment_frames: Annotated[int, _chain_opt("--segment-frames", help="Frames per segment (4k+1).")] = 81,
    height: Annotated[int, _chain_opt("--height", help="Height in pixels (multiple of 16).")] = 480,
    width: Annotated[int, _chain_opt("--width", help="Width in pixels (multiple of 16).")] = 832,
    steps: Annotated[int, _chain_opt("--steps", help="Denoising steps per segment.")] = 50,
    guidance_scale: Annotated[float, _chain_opt("--guidance-scale", "-g", help="CFG scale (1 = off).")] = 5.0,
    shift: Annotated[float | None, _chain_opt("--shift", help="Flow shift (default: the model's).",
                                              show_default=False)] = None,
    colour_match: Annotated[bool, _chain_opt("--colour-match/--no-colour-match", help="Give each conditioning "
                                             "frame the first frame's Lab colour mean and spread before it is "
                                             "encoded.")] = True,
    anchor_embedding: Annotated[bool, _chain_opt("--anchor-embedding/--no-anchor-embedding", help="Condition "
                                                 "every segment on the first frame's CLIP image embedding "
                                                 "(models with one: Wan2.1 I2V).")] = True,
    cond_noise: Annotated[float, _chain_opt("--cond-noise", help="Std of Gaussian noise added to each "
                                            "conditioning frame ([-1, 1] pixel units; 0: none).")] = 0.0,
    reference: Annotated[Path | None, typer.Option(
        "--reference", help="Wan chain: a long video whose motion each segment takes over its own time span "
        "(FastVMT, as `vmt transfer`): resampled to the output's rate, centre-cropped; at least --frames long. "
        "--strength, --shift and --grid start each segment's SDEdit as in `vmt transfer` (defaults here: the "
        "model's shift and grid); the options below are `vmt transfer`'s.", rich_help_panel=MOTION,
        show_default=False)] = None,
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
    plan: PlanOpt = "default",
    tau: TauOpt = 0.25,
    certain_fraction: CertainFractionOpt = 0.999,
    p_norm: PNormOpt = 1.0,
    grid: GridOpt = "model",
    noise: NoiseOpt = "pipeline",
    arithmetic: ArithmeticOpt = "float32",
    cfg_rule: CfgRuleOpt = "diffusers",
    revision: RevisionOpt = None,
    dtype: DtypeOpt = "auto",
    offload: OffloadOpt = "none",
    vae_tiling: VaeTilingOpt = False,
    grad_checkpointing: GradCheckpointingOpt = True,
    storage_dtype: StorageDtypeOpt = "none",
    attention_backend: AttentionBackendOpt = None,
    compile: CompileOpt = False,
    lora: LoraOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    dry_run: Annotated[bool, _chain_opt("--dry-run", help="Wan chain: print the segments, NFE and the GPU "
                                        "memory estimate; load no weights, write nothing.")] = False,
) -> None:
    run_command(ctx, SAMPLE_SPEC, locals(), _sample)


SAMPLE_SPEC = CommandSpec("longgen-sample", inputs={"image": "file", "prompts": "file", "reference": "file"},
                          outputs={"output": video_output}, request=LonggenSampleRequest,
                          requests=(WanChainRequest,))


def _sample(p) -> None:
    (_chain if sample_request(p["model"], p.given) is WanChainRequest else _encgan3)(p)


def _chain(p) -> None:
    with ChainProgress(p["quiet"]) as bars:  # the segments' bar and the steps' bar of the one in flight
        show_chain(request_from(WanChainRequest, p).run(p["output"], dry_run=p["dry_run"], overwrite=p["overwrite"],
                                                        record=p, command=command_line(), **bars.callbacks), p["quiet"])


def _encgan3(p) -> None:
    with _bar("sampling", p["quiet"]) as progress:
        out = request_from(LonggenSampleRequest, p).run(p["output"], overwrite=p["overwrite"], progress=progress,
                                                    record=p, command=command_line())
    if not p["quiet"]:
        console.print(f"[green]wrote[/] {p['output']} ({out['frames']} frames from {out['clips']} clips, "
                      f"{out['size']}x{out['size']}) in {out['seconds']:.1f}s")


RECON_HELP = """Reconstruct a video through the model: encode each clip (content of its first frame, movement of
its frame differences) and decode it. Shows what the model keeps of real footage.

[bold]Examples[/]

  vmt longgen reconstruct clip.mp4 -m runs/faces -o rec.mp4

  vmt longgen reconstruct clip.mp4 -m runs/faces --recall -o rec_chain.mp4   # chain from generated frames
"""


@app.command("reconstruct", help=reflow(RECON_HELP), no_args_is_help=True)
def reconstruct(
    ctx: typer.Context,
    video: Annotated[Path, typer.Argument(help="Input video (resized to the model's size, centre crop).",
                                          show_default=False)],
    output: OutputOpt,
    model: ModelDirOpt,
    recall: Annotated[bool, typer.Option("--recall", help="Start each clip from the previous generated frame "
                                         "instead of the real one.")] = False,
    fps: Annotated[float | None, typer.Option("--fps", help="Resample the input to this frame rate first.",
                                              show_default=False)] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Use at most this many input frames.",
                                                   show_default=False)] = None,
    device: DeviceOpt = "auto",
    recipe: RecipeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    run_command(ctx, RECON_SPEC, locals(), _reconstruct)


RECON_SPEC = CommandSpec("longgen-reconstruct", inputs={"video": "file", "model": "dir"},
                         outputs={"output": video_output}, request=LonggenReconstructRequest)


def _reconstruct(p) -> None:
    with _bar("reconstructing", p["quiet"]) as progress:
        out = _request(LonggenReconstructRequest, p).run(p["output"], overwrite=p["overwrite"], progress=progress,
                                                         record=p, command=command_line())
    if not p["quiet"]:
        console.print(f"[green]wrote[/] {p['output']} ({out['frames']} frames) reconstruction L1 {out['l1']:.4f} "
                      "(frames in [-1, 1])")
