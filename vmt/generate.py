"""Text/image-to-video generation on a FlowBackend: one sampling loop, optional interventions.

    backend = WanBackend.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    result = generate(backend, GenerationRequest(prompt="a red fox running through snow"))
    write_video("fox.mp4", result.frames, fps=16)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from vmt.backends.base import GenerationBackend
from vmt.runtime import Timer, make_generator
from vmt.sampling.euler import Intervention, StepState, sample_euler


@dataclass
class GenerationRequest:
    """What to generate. Sizes in pixels/frames; guidance_scale_2 is the low-noise expert's (Wan2.2 A14B)."""

    prompt: str
    negative_prompt: str = ""
    image: np.ndarray | None = None  # (H, W, 3) uint8, already sized, for image-to-video (vmt.io.read_image)
    clip_image: np.ndarray | None = None  # the image as given, for a CLIP image encoder (None: `image`)
    num_frames: int = 81
    height: int = 480
    width: int = 832
    steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    shift: float | None = None  # None: the model scheduler's flow_shift
    seed: int = 0
    grid: str = "model"  # "model": the folder scheduler's sigmas and timesteps (the release); "euler"
    noise: str = "pipeline"  # "pipeline": one generator on the execution device (the release); "portable"
    arithmetic: str = "float32"  # "float32": v cast before the update; "release": sigma * v in the model dtype
    cfg_rule: str = "diffusers"  # "diffusers": CFG iff guidance_scale > 1; "per-expert": each expert's scale

    def validate(self) -> None:
        """Raise VmtUsageError naming the option and its choices."""
        check_modes(grid=self.grid, noise=self.noise, arithmetic=self.arithmetic, cfg_rule=self.cfg_rule)

    def params(self) -> dict:
        d = asdict(self)
        d["image"] = None if self.image is None else list(self.image.shape)
        d["clip_image"] = None if self.clip_image is None else list(self.clip_image.shape)
        return d


from vmt.sampling.modes import ARITHMETIC_MODES, NOISE_MODES  # noqa: E402


def check_modes(**modes: str) -> None:
    """Validate the sampling modes shared by refine and transfer: grid, noise, arithmetic, cfg_rule."""
    from vmt.backends.base import CFG_RULES
    from vmt.errors import VmtUsageError, param
    from vmt.sampling.sigmas import GRIDS

    choices = {"grid": GRIDS, "noise": NOISE_MODES, "arithmetic": ARITHMETIC_MODES, "cfg_rule": CFG_RULES}
    for key, value in modes.items():
        if value not in choices[key]:
            raise VmtUsageError(f"{param(key)} {value!r}: use one of {', '.join(choices[key])}")


def start_noise(shape: tuple[int, ...], seed: int, device: torch.device, mode: str
                ) -> tuple[torch.Tensor, torch.Generator | None]:
    """The seeded start latent (float32 on `device`) and the generator later draws continue from.

    "pipeline": one generator on `device` seeded with `seed`, as diffusers' pipelines and the P&P release
    draw (randn_tensor on the execution device); the interventions continue that stream (P&P's
    perturbations), so a seed gives the release's sample, on that device type. "portable": drawn on the CPU
    and moved (the same start on any device); interventions keep generators of their own (returns None).
    """
    from diffusers.utils.torch_utils import randn_tensor

    if mode == "pipeline":
        gen = torch.Generator(device).manual_seed(int(seed))
        return randn_tensor(shape, generator=gen, device=device, dtype=torch.float32), gen
    return randn_tensor(shape, generator=make_generator(seed), device=device, dtype=torch.float32), None


@dataclass
class GenerationResult:
    latents: torch.Tensor  # (1, C, F, h, w) float32, final (normalised) latent
    frames: np.ndarray | None  # (T, H, W, 3) uint8, None when not decoded
    sigmas: list[float]
    steps: list[dict] = field(default_factory=list)  # per-step records of the interventions
    timings: dict[str, float] = field(default_factory=dict)
    timesteps: list[float] | None = None  # the model scheduler's timesteps (grid "model"), per step


def generate(
    backend: GenerationBackend,
    req: GenerationRequest,
    interventions: Sequence[Intervention] = (),
    on_step: Callable[[StepState], None] | None = None,
    decode: bool = True,
    timer: Timer | None = None,
) -> GenerationResult:
    """Encode the prompt (and image), draw the seeded start noise, run the Euler loop, decode."""
    timer = timer or Timer(sync_cuda=backend.device.type == "cuda")
    req.validate()
    backend.check_size(req.num_frames, req.height, req.width)
    with timer.stage("encode_prompt"):
        cond = backend.encode_prompt(req.prompt, req.negative_prompt, req.guidance_scale, req.guidance_scale_2,
                                     cfg_rule=req.cfg_rule)
    if req.image is not None or backend.is_i2v:
        if req.image is None:
            from vmt.errors import VmtUsageError, param

            raise VmtUsageError(f"{backend.model_id} is an image-to-video model; pass {param('image')}")
        with timer.stage("encode_image"):
            extra = {} if req.clip_image is None else {"clip_image": req.clip_image}
            cond = backend.condition_on_image(cond, req.image, req.num_frames, req.height, req.width, **extra)
    schedule = backend.schedule(req.steps, req.shift, req.grid)
    device = backend.execution_device
    shape = backend.latent_shape(req.num_frames, req.height, req.width)
    z, gen = start_noise(shape, req.seed, device, req.noise)

    z, frames, records = run_loop(backend, z, schedule, cond, interventions, on_step, decode, timer,
                                  arithmetic=req.arithmetic, noise=gen)
    return GenerationResult(z, frames, [float(s) for s in schedule.sigmas], records, dict(timer.stages),
                            timesteps_of(schedule))


def timesteps_of(schedule) -> list[float] | None:
    """The model scheduler's timesteps, for out.json (None: 1000 * sigma)."""
    return None if schedule.timesteps is None else [float(t) for t in schedule.timesteps]


def run_loop(
    backend: GenerationBackend,
    z: torch.Tensor,
    schedule,
    cond,
    interventions: Sequence[Intervention] = (),
    on_step: Callable[[StepState], None] | None = None,
    decode: bool = True,
    timer: Timer | None = None,
    arithmetic: str = "float32",
    noise: torch.Generator | None = None,
) -> tuple[torch.Tensor, np.ndarray | None, list[dict]]:
    """The shared tail of every generation: Euler loop ("denoise" stage), finalize, decode ("decode" stage).

    z: (1, C, F, h, w) float32 at the first sigma. schedule: a vmt.sampling.sigmas.Schedule (its timesteps
    are what the transformer gets), or a bare (N + 1,) sigma tensor (timesteps 1000 * sigma). arithmetic
    "release" keeps v in the transformer's dtype (see WanBackend.velocity). noise: the run's generator, which
    the interventions continue (`Intervention.bind_noise`; None: their own). Returns (final latent, frames
    (T, H, W, 3) uint8 or None, per-step records of the interventions).
    """
    from vmt.sampling.sigmas import Schedule

    timer = timer or Timer()
    if not isinstance(schedule, Schedule):
        schedule = Schedule(schedule, None, "euler")
    sigmas = schedule.sigmas.to(z.device)
    timestep_at = schedule.timestep_lookup(backend.num_train_timesteps)
    upcast = arithmetic != "release"
    records: list[dict] = []

    def callback(state: StepState) -> None:
        records.append({"step": state.index, "sigma": float(state.sigma), **state.record})
        if on_step is not None:
            on_step(state)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if schedule.timesteps is None and upcast:
            return backend.velocity(x, sigma, cond)
        return backend.velocity(x, sigma, cond, timestep=timestep_at(sigma), upcast=upcast)

    with timer.stage("denoise"):
        z = sample_euler(velocity, z, sigmas, interventions, callback, noise=noise)
        z = backend.finalize(z, cond)
    frames = None
    if decode:
        with timer.stage("decode"):
            frames = backend.decode(z)
    return z, frames, records
