"""Motion transfer (FastVMT; DiTFlow-style baseline by configuration) on a flow-matching backend.

    frames, fps = load_reference("ref.mp4", num_frames=81, height=480, width=832)
    result = transfer(backend, frames, TransferRequest(prompt="a tiger walking"), GuidanceConfig())
    write_video("out.mp4", result.frames, fps)

Reads top to bottom: encode the reference -> SDEdit start latent -> the Euler loop with the motion guidance
intervention (plus any other interventions, e.g. Predict-and-Perturb) -> decode.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vmt.backends.base import FlowBackend
from vmt.errors import Note, VmtError, VmtUsageError, param
from vmt.motion.cache import ReferenceCache
from vmt.motion.guidance import GuidanceConfig, MotionGuidance
from vmt.runtime import Timer, make_generator
from vmt.generate import run_loop
from vmt.sampling.euler import Intervention, StepState
from vmt.sampling.sigmas import Schedule, shift_sigma

MIN_FRAMES = 5  # two latent frames: the least that has motion


@dataclass
class TransferRequest:
    """What to generate. Defaults are the FastVMT release's (Wan2.1-T2V-1.3B)."""

    prompt: str
    negative_prompt: str = ""
    height: int = 480
    width: int = 832
    steps: int = 50
    shift: float = 7.0
    guidance_scale: float = 5.8
    strength: float = 0.75
    seed: int = 42
    grid: str = "euler"  # "euler": the release's own SDEdit grid (sdedit_sigmas); "model": the folder's scheduler
    noise: str = "pipeline"  # "pipeline": the release's draws; "portable": one CPU stream (any device)
    arithmetic: str = "float32"  # "release": sigma * v in the transformer's dtype (see WanBackend.velocity)
    cfg_rule: str = "diffusers"

    def validate(self) -> None:
        from vmt.generate import check_modes

        check_modes(grid=self.grid, noise=self.noise, arithmetic=self.arithmetic, cfg_rule=self.cfg_rule)


@dataclass
class TransferResult:
    latents: torch.Tensor  # (1, C, F, h, w) final latent
    frames: np.ndarray | None  # (T, H, W, 3) uint8
    sigmas: list[float]
    guidance: list[dict]  # per guided step: AMF losses over the inner steps, final AMF loss, ...
    steps: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    grid: tuple[int, int, int] = (0, 0, 0)
    config: dict = field(default_factory=dict)  # the guidance configuration that ran (window/tile as clamped)
    adjustments: list[str] = field(default_factory=list)  # what was clamped to the token grid, and why
    cache: dict | None = None  # the reference cache's report (ReferenceCache.report); None: no cache


def load_reference(path: str | Path, num_frames: int, height: int, width: int,
                   fps: float | None = None) -> tuple[np.ndarray, float]:
    """Read a reference video of any size, rate and length: resampled to `fps` (None: its own rate),
    centre-cropped to height x width, cut to the largest 4k+1 frame count <= num_frames.

    Raises VmtUsageError/VmtError (no partial state) when it is missing, unreadable or too short.
    """
    from vmt.io.video import read_video, valid_wan_frames

    if num_frames < MIN_FRAMES:
        raise VmtUsageError(f"{param('num_frames')} {num_frames} is too few; motion transfer needs >= {MIN_FRAMES}")
    frames, ref_fps = read_video(path, fps=fps, max_frames=num_frames, size=(height, width), resize="crop")
    n = valid_wan_frames(len(frames))
    if n < MIN_FRAMES:
        raise VmtUsageError(
            f"reference {path} has {len(frames)} frame{'s' * (len(frames) != 1)} at {ref_fps:g} fps; motion "
            f"transfer needs at least {MIN_FRAMES} (use a longer clip or a higher {param('fps')})"
        )
    if ref_fps <= 0:
        raise VmtError(f"reference {path} reports no frame rate; pass {param('fps')}")
    return frames[:n], ref_fps


def sdedit_sigmas(steps: int, shift: float, strength: float) -> torch.Tensor:
    """(steps + 1,) shifted grid from shift(strength) to 0: `shift(linspace(strength, 0, steps + 1))`.

    Strength 0.75 with shift 7 starts at 0.9545 (the release's s0). At strength 1 it is diffusers'
    FlowMatchEuler grid except at the low end, where diffusers stops at shift(shift(1/1000)) before 0.
    """
    if not 0 < strength <= 1:
        raise VmtUsageError(f"{param('strength')} must be in (0, 1], got {strength}")
    if steps < 1:
        raise VmtUsageError(f"{param('steps')} must be >= 1, got {steps}")
    u = torch.linspace(strength, 0.0, steps + 1, dtype=torch.float64)
    return shift_sigma(u, shift).to(torch.float32)


def transfer_noise(shape: tuple[int, ...], seed: int, device: torch.device, mode: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(eps, eps') float32 on `device`: the SDEdit start noise and the reference's fixed re-noising noise.

    "pipeline" (the FastVMT release): eps from a CPU generator seeded `seed`, eps' from a fresh generator
    seeded `seed` on `device` (the release re-draws it so at every guided step; on a CPU run eps' = eps).
    "portable": both from one CPU stream, in that order (the same pair on any device).
    """
    from diffusers.utils.torch_utils import randn_tensor

    gen = make_generator(seed)
    eps = randn_tensor(shape, generator=gen, device=device, dtype=torch.float32)
    if mode == "pipeline":
        gen = torch.Generator(device).manual_seed(int(seed))
    eps_ref = randn_tensor(shape, generator=gen, device=device, dtype=torch.float32)
    return eps, eps_ref


class FirstFrameAnchor(Intervention):
    """Image-to-video transfer: the first latent frame is the image's latent, re-noised to each step's sigma
    with the SDEdit start noise, before every step: (1 - s) z_img + s eps. At sigma 0 (`at_end`) it is z_img
    itself, so the first output frame is the image through the VAE.

    Why: SDEdit starts every frame from the noised reference (frame 0 from the reference's first frame, not
    the photo) and the motion guidance optimises the whole latent, frame 0 included, towards the reference's
    attention; on their own they would pull the first frame away from the photo that should fix it. The
    replacement keeps frame 0 on the photo's own noising path (what the model would see of a video that
    starts with the photo), and leaves frames 1.. to the model, the guidance and any other intervention."""

    name = "first_frame"

    def __init__(self, z_img: torch.Tensor, eps: torch.Tensor):
        self.z_img = z_img  # (1, C, 1, h, w)
        self.eps = eps[:, :, :1]

    def at(self, z: torch.Tensor, sigma) -> torch.Tensor:
        s = float(sigma)
        out = z.clone()
        out[:, :, :1] = (1 - s) * self.z_img + s * self.eps
        return out

    def before_step(self, state: StepState, velocity) -> torch.Tensor | None:
        return self.at(state.z, state.sigma)

    def at_end(self, z: torch.Tensor) -> torch.Tensor:
        return self.at(z, 0.0)


def _stderr(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def transfer(
    backend: FlowBackend,
    reference: np.ndarray,
    req: TransferRequest,
    cfg: GuidanceConfig,
    interventions: Sequence[Intervention] = (),
    on_step: Callable[[StepState], None] | None = None,
    decode: bool = True,
    timer: Timer | None = None,
    notify: Callable[[str], None] | None = _stderr,
    cache: ReferenceCache | None = None,
    image: np.ndarray | None = None,
    clip_image: np.ndarray | None = None,
) -> TransferResult:
    """Generate a video with `req.prompt` that moves like `reference` (T, H, W, 3) uint8 at the output size.

    On an image-to-video model `image` (H, W, 3) uint8 at the output size (vmt.io.read_image) is the first
    frame (`clip_image`: the image as given, for a CLIP image encoder; None: `image`): the generated branch is
    conditioned on it, the reference branch on the reference's own first frame, and the first latent frame
    follows the image's own noising path (FirstFrameAnchor).

    `interventions` run after the motion guidance in the same loop (e.g. Predict-and-Perturb's `step`).
    A window or tile larger than the token grid is clamped to it (`GuidanceConfig.fit_grid`); `notify`
    (default: stderr) hears about it once, as a `vmt.errors.Note` (a str naming parameters; the command line
    writes them as flags), and the result's `config` / `adjustments` record it.
    `cache` (vmt.motion.cache): load the reference latent and reference AMF from it, or compute and store
    them; a hit skips the VAE encode and the reference DiT passes and gives the same result.
    """
    timer = timer or Timer(sync_cuda=backend.device.type == "cuda")
    req.validate()
    t_frames, h, w = reference.shape[:3]
    if (h, w) != (req.height, req.width):
        raise VmtUsageError(f"reference frames are {w}x{h}, expected {req.width}x{req.height}; use load_reference")
    backend.check_size(t_frames, req.height, req.width)
    grid = backend.token_grid(t_frames, req.height, req.width)
    cfg, adjustments = cfg.fit_grid(grid, (req.height, req.width))
    # A backend may have to switch attention for the differentiated passes (no backward): say so once.
    note = backend.guided_attention() if cfg.guided_steps > 0 else None
    if note:
        adjustments = [*adjustments, note]
    if adjustments and notify is not None:
        notify(Note("; ".join(getattr(a, "message", a) for a in adjustments)))
    sdedit_sigmas(req.steps, req.shift, req.strength)  # validates steps and strength
    if req.grid == "model":
        schedule = backend.schedule(req.steps, req.shift, "model", strength=req.strength)
    else:
        schedule = Schedule(sdedit_sigmas(req.steps, req.shift, req.strength), None, "euler")
    sigmas = schedule.sigmas

    with timer.stage("encode_reference"):
        if cache is None:
            z_ref = backend.encode_video(reference).float()  # (1, C, F, h, w)
        else:
            z_ref = cache.latent(backend, reference, lambda: backend.encode_video(reference).float(),
                                 notify).to(backend.execution_device)
    with timer.stage("encode_prompt"):
        cond = backend.encode_prompt(req.prompt, req.negative_prompt, req.guidance_scale, cfg_rule=req.cfg_rule)
        cond_ref = backend.encode_prompt("", "", 1.0)  # the reference branch: empty prompt, no CFG
    anchor = None
    if image is not None or backend.is_i2v:
        if image is None:
            raise VmtUsageError(f"{backend.model_id} is an image-to-video model; pass {param('image')}")
        with timer.stage("encode_image"):
            extra = {} if clip_image is None else {"clip_image": clip_image}
            cond = backend.condition_on_image(cond, image, t_frames, h, w, **extra)  # refuses a T2V model
            # The reference AMF is the attention of the reference's own latent. An I2V model reads a latent
            # together with its first-frame condition; conditioned on the photo, the reference's frames would
            # contradict their condition and its attention would no longer be the reference's motion. So the
            # reference branch is conditioned on the reference's first frame: the AMF is taken under the
            # conditioning the model would have had, had it generated the reference from its first frame.
            cond_ref = backend.condition_on_image(cond_ref, reference[0], t_frames, h, w)
    device = z_ref.device
    eps, eps_ref = transfer_noise(z_ref.shape, req.seed, device, req.noise)
    s0 = float(sigmas[0])
    z = (1 - s0) * z_ref + s0 * eps  # SDEdit start from the noised reference
    if image is not None:  # ... whose first frame is the image's (runs first: the guidance sees it)
        anchor = FirstFrameAnchor(backend.first_frame_latent(cond).to(device), eps)
        z = anchor.at(z, s0)

    timestep_at = schedule.timestep_lookup(backend.num_train_timesteps)
    timestep_of = timestep_at if schedule.timesteps is not None else None
    refs = None
    n_refs = 0 if cfg.guided_steps == 0 else 1 if cfg.ref_amf == "clean" else min(cfg.guided_steps, len(sigmas) - 1)
    if cache is not None and n_refs:
        refs = cache.amf(*_reference_key(cfg, req, sigmas[:n_refs], timestep_of), [amf_shape(cfg, grid)] * n_refs,
                         notify)
    guidance = MotionGuidance(backend, cfg, z_ref, cond, cond_ref, eps_ref, grid, timer=timer,
                              timestep_of=timestep_of, references=refs,
                              keep_references=cache is not None and refs is None)
    loop = [guidance, *interventions] if anchor is None else [anchor, guidance, *interventions]
    z, frames, records = run_loop(backend, z, schedule, cond, loop, on_step, decode and anchor is None, timer,
                                  arithmetic=req.arithmetic)
    if guidance.keep_references and len(guidance.computed) == n_refs > 0:
        cache.put_amf(guidance.computed, guidance.reference_passes, notify)
    if anchor is not None:
        z = anchor.at_end(z)
        if decode:
            with timer.stage("decode"):
                frames = backend.decode(z)
    # The loop's time minus the guidance's own stages is the ordinary sampling.
    st = timer.stages
    st["sampling"] = round(st.pop("denoise") - st.get("reference_amf", 0.0) - st.get("guidance", 0.0), 4)
    return TransferResult(z, frames, [float(s) for s in sigmas], guidance.history, records, dict(timer.stages),
                          grid, cfg.as_dict(), adjustments, None if cache is None else cache.report)


def amf_shape(cfg: GuidanceConfig, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """(P, S, 2): the shape of the AMF under cfg on the (F, h, w) token grid."""
    from vmt.motion.amf import window_pairs

    f, h, w = grid
    pairs = len(window_pairs(f, cfg.span)) if cfg.amf == "windowed" else f * f
    return pairs, h * w, 2


def _reference_key(cfg: GuidanceConfig, req: TransferRequest, sigmas: torch.Tensor, timestep_of
                   ) -> tuple[dict, dict]:
    """What the reference AMF depends on beyond the reference latent (the cache's key): the AMF settings
    (window and tile as clamped) and the passes' own inputs. A clean reference is one pass at sigma 0; a
    per-step one re-noises with eps' at each guided sigma, so the seed and noise mode that draw eps' are in
    it. Not in it: the prompt, CFG, the optimiser and loss settings, `truncate` (the capture block's q/k are
    the same with or without the later blocks)."""
    amf = {k: getattr(cfg, k) for k in ("amf", "block", "span", "window", "temperature", "head_mode", "chunk",
                                       "ref_amf", "ref_argmax")}
    amf["tile"] = list(cfg.tile)

    def t(s) -> float | None:
        return None if timestep_of is None else float(timestep_of(s))

    if cfg.ref_amf == "clean":
        return amf, {"sigmas": [0.0], "timesteps": [t(torch.tensor(0.0))]}
    return amf, {"sigmas": [float(s) for s in sigmas], "timesteps": [t(s) for s in sigmas], "grid": req.grid,
                 "steps": req.steps, "shift": req.shift, "strength": req.strength, "seed": req.seed,
                 "noise": req.noise}
