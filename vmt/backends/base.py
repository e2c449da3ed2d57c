"""The small protocol every flow-matching video backend implements.

Conventions (diffusers' flow matching): `z_s = s * eps + (1 - s) * x0` with sigma `s` in [0, 1] (1 = pure
noise); the model predicts the velocity `v ~ eps - x0`; the transformer's timestep is `1000 * s`. Latents are
(B, C, F, h, w) in the model's normalised latent space.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class Conditioning:
    """Everything the velocity needs besides the latent and sigma.

    prompt_embeds / negative_embeds: (B, L, D) text features (negative is None when CFG is off).
    image_embeds: (B, N, D) image-encoder features (Wan2.1 I2V only).
    latent_condition: I2V channels concatenated to the latent, (B, 4 + C, F, h, w) (mask + image latents),
        or, with `first_frame_mask`, the clean first-frame latent (B, C, F, h, w) (Wan2.2 TI2V).
    first_frame_mask: (1, 1, F, h, w), 0 where the latent is given (per-token timesteps, Wan2.2 TI2V).
    guidance_scale: CFG scale of the (high-noise) expert; guidance_scale_2: of the low-noise expert.
    """

    prompt_embeds: torch.Tensor
    negative_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    latent_condition: torch.Tensor | None = None
    first_frame_mask: torch.Tensor | None = None
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    cfg_rule: str = "diffusers"  # "diffusers": CFG on iff guidance_scale > 1 (both experts); "per-expert"

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
class FlowBackend(Protocol):
    """A flow-matching video generator the samplers can drive."""

    model_id: str
    device: torch.device
    dtype: torch.dtype
    counts: ComputeCounts
    is_i2v: bool  # needs a first frame (condition_on_image) to generate
    num_train_timesteps: int  # timestep = num_train_timesteps * sigma unless a schedule gives its own

    @property
    def execution_device(self) -> torch.device:
        """Where latents live and noise is drawn (the accelerator also under CPU offload)."""

    def latent_shape(self, num_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        """Shape (B, C, F, h, w) of the latent of a video of num_frames x height x width."""

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        """Raise VmtUsageError (naming the nearest valid values) if the model cannot make this size."""

    def encode_prompt(
        self, prompt: str, negative_prompt: str = "", guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
    ) -> Conditioning:
        """Text features for the prompt (and the negative prompt when CFG is on)."""

    def condition_on_image(
        self, cond: Conditioning, image: np.ndarray, num_frames: int, height: int, width: int
    ) -> Conditioning:
        """Add first-frame conditioning from an image (H, W, 3) uint8 already sized to (height, width)."""

    def velocity(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 timestep: torch.Tensor | None = None, upcast: bool = True) -> torch.Tensor:
        """Guided velocity at sigma (0-dim tensor); counts one NFE. Differentiable when grad is enabled.
        timestep: what the model is fed (default num_train_timesteps * sigma); upcast=False returns the
        model's dtype (the release's arithmetic), True float32."""

    def sigmas(self, steps: int, shift: float | None = None) -> torch.Tensor:
        """Sigma grid (steps + 1,), from ~1 down to 0, float32."""

    def schedule(self, steps: int, shift: float | None = None, grid: str = "model", strength: float = 1.0):
        """The vmt.sampling.sigmas.Schedule (sigmas and the timesteps the model is fed) of grid "model" (the
        model's own scheduler) or "euler"."""

    def finalize(self, z: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The latent to decode after the loop (e.g. a given first frame pasted back); z itself if nothing."""

    def check_block(self, block: int) -> None:
        """Raise VmtUsageError unless `block` indexes a transformer block of every expert."""

    def capture_qk(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, block: int, *,
                   timestep: torch.Tensor | None = None, stop: bool = True, backward: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention q, k (B, S, H, D) of `block` for latent z at sigma (positive branch, no CFG), from a
        forward that may stop after that block; differentiable in z; counts its own DiT passes."""

    def frozen(self):
        """Context manager: no weight gradients while an intervention backpropagates to the latent (and
        whatever else such passes need, e.g. an attention backend with a backward). A backend may also offer
        `guided_attention() -> str | None` (optional): decide that once, returning a note for the user."""

    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """Frames (T, H, W, 3) uint8 -> normalised latent (1, C, F, h, w) (posterior mode)."""

    def decode(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latent (1, C, F, h, w) -> frames (T, H, W, 3) uint8."""

    def transformer_at(self, sigma: float):
        """The transformer (expert) that denoises at this sigma, for attention hooks."""
