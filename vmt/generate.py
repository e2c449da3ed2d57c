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

from vmt.backends.base import FlowBackend
from vmt.runtime import Timer, make_generator
from vmt.sampling.euler import Intervention, StepState, sample_euler


@dataclass
class GenerationRequest:
    """What to generate. Sizes in pixels/frames; guidance_scale_2 is the low-noise expert's (Wan2.2 A14B)."""

    prompt: str
    negative_prompt: str = ""
    image: np.ndarray | None = None  # (H, W, 3) uint8, already sized, for image-to-video
    num_frames: int = 81
    height: int = 480
    width: int = 832
    steps: int = 50
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    shift: float | None = None  # None: the model scheduler's flow_shift
    seed: int = 0

    def params(self) -> dict:
        d = asdict(self)
        d["image"] = None if self.image is None else list(self.image.shape)
        return d


@dataclass
class GenerationResult:
    latents: torch.Tensor  # (1, C, F, h, w) float32, final (normalised) latent
    frames: np.ndarray | None  # (T, H, W, 3) uint8, None when not decoded
    sigmas: list[float]
    steps: list[dict] = field(default_factory=list)  # per-step records of the interventions
    timings: dict[str, float] = field(default_factory=dict)


def generate(
    backend: FlowBackend,
    req: GenerationRequest,
    interventions: Sequence[Intervention] = (),
    on_step: Callable[[StepState], None] | None = None,
    decode: bool = True,
    timer: Timer | None = None,
) -> GenerationResult:
    """Encode the prompt (and image), draw the seeded start noise, run the Euler loop, decode."""
    from diffusers.utils.torch_utils import randn_tensor

    timer = timer or Timer(sync_cuda=backend.device.type == "cuda")
    backend.check_size(req.num_frames, req.height, req.width)
    with timer.stage("encode_prompt"):
        cond = backend.encode_prompt(req.prompt, req.negative_prompt, req.guidance_scale, req.guidance_scale_2)
    if req.image is not None or getattr(backend, "is_i2v", False):
        if req.image is None:
            from vmt.errors import VmtUsageError

            raise VmtUsageError(f"{backend.model_id} is an image-to-video model; pass --image")
        with timer.stage("encode_image"):
            cond = backend.condition_on_image(cond, req.image, req.num_frames, req.height, req.width)
    sigmas = backend.sigmas(req.steps, req.shift)
    device = backend.execution_device if hasattr(backend, "execution_device") else backend.device
    shape = backend.latent_shape(req.num_frames, req.height, req.width)
    z = randn_tensor(shape, generator=make_generator(req.seed), device=device, dtype=torch.float32)

    z, frames, records = run_loop(backend, z, sigmas.to(device), cond, interventions, on_step, decode, timer)
    return GenerationResult(z, frames, [float(s) for s in sigmas], records, dict(timer.stages))


def run_loop(
    backend: FlowBackend,
    z: torch.Tensor,
    sigmas: torch.Tensor,
    cond,
    interventions: Sequence[Intervention] = (),
    on_step: Callable[[StepState], None] | None = None,
    decode: bool = True,
    timer: Timer | None = None,
) -> tuple[torch.Tensor, np.ndarray | None, list[dict]]:
    """The shared tail of every generation: Euler loop ("denoise" stage), finalize, decode ("decode" stage).

    z: (1, C, F, h, w) float32 at sigmas[0]. Returns (final latent, frames (T, H, W, 3) uint8 or None,
    per-step records of the interventions).
    """
    timer = timer or Timer()
    records: list[dict] = []

    def callback(state: StepState) -> None:
        records.append({"step": state.index, "sigma": float(state.sigma), **state.record})
        if on_step is not None:
            on_step(state)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return backend.velocity(x, sigma, cond)

    with timer.stage("denoise"):
        z = sample_euler(velocity, z, sigmas, interventions, callback)
        z = backend.finalize(z, cond) if hasattr(backend, "finalize") else z
    frames = None
    if decode:
        with timer.stage("decode"):
            frames = backend.decode(z)
    return z, frames, records
