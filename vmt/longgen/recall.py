"""REncGAN3's recall chain: long videos as a Markov chain of clips, at constant memory.

Clip 1 is sampled from the prior. Clip j+1 is conditioned on reference frame r of clip j: the content latent is
the content encoder's mean for that frame, the generator starts from the frame itself (its frame 0 equals
x_(j, r)), and the movement latent is fresh, drawn given the chain's state (motion_prior.py), or carried over.
Clip j+1's frame 0 sits on clip j's frame r, so the clips overlap by T - r frames and each new clip adds r
frames. Only the last clip is held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from vmt.errors import VmtUsageError
from vmt.longgen.config import DEFAULT_MOTION_TEMPERATURE
from vmt.longgen.generator import CHAIN_WARP, WarpMode


class ChainModel(Protocol):
    cfg: object

    def encode_content(self, frame: torch.Tensor): ...

    def decode(self, z_x: torch.Tensor, z_v: torch.Tensor, ref: torch.Tensor | None = None,
               warp: WarpMode | None = None) -> torch.Tensor: ...

    def prior(self, batch: int, generator: torch.Generator | None = None, device=None,
              standard: bool = False): ...

    def next_motion(self, z_x: torch.Tensor, z_v: torch.Tensor, generator: torch.Generator | None = None,
                    device=None, standard: bool = False, temperature: float = 1.0): ...


def resolve_ref_index(ref_index: int, frames: int) -> int:
    """Normalise a (possibly negative) reference index into 1..T-1; 0 would never advance the chain."""
    r = ref_index + frames if ref_index < 0 else ref_index
    if not 1 <= r <= frames - 1:
        raise VmtUsageError(f"reference frame index {ref_index} is outside 1..{frames - 1} (or -{frames - 1}..-1) "
                            f"for {frames}-frame clips; use -1 (the last frame)")
    return r


@torch.no_grad()
def recall_chain(
    model: ChainModel,
    num_frames: int,
    *,
    batch: int = 1,
    generator: torch.Generator | None = None,
    ref_index: int = -1,
    carry_motion: bool = False,
    standard_prior: bool = False,
    motion_temperature: float = DEFAULT_MOTION_TEMPERATURE,
    warp: WarpMode = CHAIN_WARP,
    device=None,
) -> Iterator[torch.Tensor]:
    """Yield the new frames of each clip, (B, 3, t, H, W) in [-1, 1], until exactly `num_frames` were yielded.

    motion_temperature scales the noise of each fresh movement latent given the chain's state; warp: how
    warping generators move the reference (default: whole pixels, black enters at the borders)."""
    if num_frames < 1:
        raise VmtUsageError(f"number of frames must be >= 1, got {num_frames}")
    frames = model.cfg.frames
    r = resolve_ref_index(ref_index, frames)
    z_x, z_v = model.prior(batch, generator, device, standard=standard_prior)
    clip = model.decode(z_x, z_v, None, warp)
    done = min(frames, num_frames)
    yield clip[:, :, :done]
    while done < num_frames:
        ref = clip[:, :, r]
        z_x, _ = model.encode_content(ref)
        if not carry_motion:
            z_v = model.next_motion(z_x, z_v, generator, device, standard=standard_prior,
                                    temperature=motion_temperature)
        clip = model.decode(z_x, z_v, ref, warp)
        new = clip[:, :, frames - r:]
        take = min(new.shape[2], num_frames - done)
        done += take
        yield new[:, :, :take]


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()
