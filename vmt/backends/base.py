"""The protocols a flow-matching video backend implements: exactly what the loop, `generate`, `transfer`, the
interventions and the CLI call on it.

    Denoiser           the guided velocity, its sigma grid and timesteps, prompt encoding, counts, provenance
    LatentCodec        sizes, frames <-> latents, image conditioning, the latent to decode
    AttentionAccess    self-attention q/k of a block, differentiable in the latent (motion guidance)
    GenerationBackend  Denoiser + LatentCodec: what `generate` (and `vmt refine`) needs
    FlowBackend        all three: what `transfer` needs

Conventions (diffusers' flow matching): `z_s = s * eps + (1 - s) * x0` with sigma `s` in [0, 1] (1 = pure
noise); the model predicts the velocity `v ~ eps - x0`; the model's timestep is `num_train_timesteps * s`
unless a schedule gives its own. Latents are (B, C, F, h, w) float32 in the model's normalised latent space;
frames are (T, H, W, 3) uint8.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from vmt.sampling.sigmas import Schedule

CFG_RULES = ("diffusers", "per-expert")


@dataclass
class Conditioning:
    """Everything the velocity needs besides the latent and sigma.

    prompt_embeds / negative_embeds: (B, L, D) text features (negative is None when CFG is off).
    image_embeds: (B, N, D) image-encoder features (Wan2.1 I2V only).
    latent_condition: I2V channels concatenated to the latent, (B, 4 + C, F, h, w) (mask + image latents),
        or, with `first_frame_mask`, the clean first-frame latent (B, C, F, h, w) (Wan2.2 TI2V).
    first_frame_mask: (1, 1, F, h, w), 0 where the latent is given (per-token timesteps, Wan2.2 TI2V).
    guidance_scale: CFG scale of the (high-noise) expert; guidance_scale_2: of the low-noise expert.
    cfg_rule: one of CFG_RULES: "diffusers" (CFG on iff guidance_scale > 1, both experts) or "per-expert".
    """

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    latent_condition: torch.Tensor | None = None
    first_frame_mask: torch.Tensor | None = None
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    cfg_rule: str = "diffusers"

    def with_(self, **changes) -> Conditioning:
        return replace(self, **changes)


@dataclass
class ComputeCounts:
    """NFE: guided velocity evaluations (a CFG pair counts once). DiT passes count every transformer call."""

    nfe: int = 0
    dit_forward: int = 0
    dit_backward: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"nfe": self.nfe, "dit_forward": self.dit_forward, "dit_backward": self.dit_backward}


@runtime_checkable
class Denoiser(Protocol):
    """The model as the sampling loop sees it: a guided velocity on a sigma grid."""

    model_id: str  # names the model in messages and provenance
    device: torch.device  # the device the model was placed on (CUDA timing and peak memory follow it)
    counts: ComputeCounts  # what the model has evaluated so far (callers may reset it between runs)
    num_train_timesteps: int  # timestep = num_train_timesteps * sigma unless a schedule gives its own
    default_shift: float  # the flow shift of the model's own grid (what `schedule(shift=None)` uses)

    @property
    def execution_device(self) -> torch.device:
        """Where latents live and noise is drawn (the accelerator also under CPU offload)."""

    def describe(self) -> dict:
        """Provenance of the loaded model (JSON-serialisable), for out.json's `model` block."""

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 5.0,
                      guidance_scale_2: float | None = None, cfg_rule: str = "diffusers") -> Conditioning:
        """Text features for the prompt (and the negative prompt when CFG is on by `cfg_rule`, one of
        CFG_RULES). guidance_scale_2: the low-noise expert's scale (VmtUsageError where there is none)."""

    def schedule(self, steps: int, shift: float | None = None, grid: str = "model",
                 strength: float = 1.0) -> Schedule:
        """The grid a run steps through: (steps + 1,) sigmas from ~1 (or part-way, `strength` < 1, grid
        "model" only) down to 0, and the timesteps the model is fed (None: num_train_timesteps * sigma).
        grid "model": the model's own scheduler; "euler": diffusers' FlowMatchEuler grid (GRIDS)."""

    def velocity(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 timestep: torch.Tensor | None = None, upcast: bool = True) -> torch.Tensor:
        """Guided velocity at sigma (0-dim tensor), shape of z (B, C, F, h, w); counts one NFE and its model
        passes. Differentiable when grad is enabled. timestep: what the model is fed (0-dim; default
        num_train_timesteps * sigma). upcast: float32 (True) or the model's dtype (False: the release's
        arithmetic, the sampler's products then rounded in that dtype)."""


@runtime_checkable
class LatentCodec(Protocol):
    """Sizes, frames <-> latents, and first-frame conditioning."""

    is_i2v: bool  # needs a first frame (condition_on_image) to generate

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        """Raise VmtUsageError (naming the nearest valid values) if the model cannot make this size."""

    def latent_shape(self, num_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        """Shape (B, C, F, h, w) of the latent of a video of num_frames x height x width."""

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(F, h, w) of the model's token grid for a video of this size (capture_qk's S = F * h * w)."""

    def condition_on_image(self, cond: Conditioning, image: np.ndarray, num_frames: int, height: int,
                           width: int, clip_image: np.ndarray | None = None) -> Conditioning:
        """Add first-frame conditioning from an image (H, W, 3) uint8 already sized to (height, width);
        `clip_image`: the image as given (any size) for a model's image encoder, if it has one (None: `image`)."""

    def first_frame_latent(self, cond: Conditioning) -> torch.Tensor:
        """The normalised latent (1, C, 1, h, w) float32 of the first frame `condition_on_image` gave `cond`."""

    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """Frames (T, H, W, 3) uint8 -> normalised latent (1, C, F, h, w) float32 (posterior mode) on the
        execution device."""

    def finalize(self, z: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The latent to decode after the loop (e.g. a given first frame pasted back); z itself if nothing."""

    def decode(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latent (1, C, F, h, w) -> frames (T, H, W, 3) uint8."""


@runtime_checkable
class AttentionAccess(Protocol):
    """Self-attention of the model's blocks, for interventions that steer it (motion guidance)."""

    def check_block(self, block: int) -> None:
        """Raise VmtUsageError unless `block` indexes a block of every expert."""

    def capture_qk(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, block: int, *,
                   timestep: torch.Tensor | None = None, stop: bool = True, backward: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention q, k (B, S, H, D) of `block` for latent z at sigma (cond's positive branch, no CFG),
        S tokens in token_grid order; from a forward that may stop after that block (`stop`); differentiable
        in z; counts one forward pass, and one backward when `backward` (the caller backpropagates)."""

    def guided_attention(self) -> str | None:
        """Prepare, once, what differentiated passes need (e.g. an attention backend with a backward);
        returns a note for the user when that changes something, else None."""

    def frozen(self) -> AbstractContextManager:
        """Context manager around passes that backpropagate to the latent: no weight gradients (restored
        afterwards, also on errors), and whatever guided_attention decided."""


@runtime_checkable
class GenerationBackend(Denoiser, LatentCodec, Protocol):
    """A flow-matching video generator the loop can drive from a prompt (and image) to frames."""


@runtime_checkable
class FlowBackend(GenerationBackend, AttentionAccess, Protocol):
    """A flow-matching video generator the samplers can drive: generation and motion guidance."""
