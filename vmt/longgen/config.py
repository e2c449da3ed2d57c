"""Model sizes of the EncGAN3 / REncGAN3 video VAE-GAN, with the paper's preset and a small CPU preset."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from vmt.errors import VmtUsageError


@dataclass(frozen=True)
class LongGenConfig:
    """Sizes of one model. Frames are square `size` x `size` pixels, `frames` per clip.

    dim_content: content latent z_x (G3AN's appearance z_a, 128 in the paper). dim_motion: movement latent
    z_v per motion step (G3AN's z_m, 10). motion_steps: T0; the first block makes T0 + 3 frames, later blocks
    double them until `frames`. base_channels: channels of the last generator block; earlier blocks have
    up to 8x (base 64 -> 512, 512, 256, 128, 64). attention: factorised self-attention (F-SA) after the
    second-to-last block. signed_motion: feed x_i - x_(i-1) instead of the paper's |x_i - x_(i-1)|.
    warp: the generator also predicts a translation per frame (from z_v) and blends with the reference frame
    *translated* by the summed steps, instead of with the reference in place (see generator.py: without it,
    moving anything means redrawing it from z_x at a new position, and the VAE settled on fading the
    reference to black). Off by default, as in G3AN; the cpu and tiny presets turn it on.
    """

    size: int = 64
    frames: int = 16
    base_channels: int = 64
    dim_content: int = 128
    dim_motion: int = 10
    motion_steps: int = 1
    disc_channels: int = 64
    enc_channels: int = 64
    attention: bool = True
    signed_motion: bool = False
    warp: bool = False

    def __post_init__(self) -> None:
        if self.size < 8 or self.size & (self.size - 1):
            raise VmtUsageError(f"size must be a power of two >= 8, got {self.size}; use e.g. 32 or 64")
        for name in ("base_channels", "dim_content", "dim_motion", "motion_steps", "disc_channels", "enc_channels"):
            if getattr(self, name) < 1:
                raise VmtUsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        t, ups = self.motion_steps + 3, 0
        while t < self.frames and ups < self.num_blocks - 1:
            t, ups = t * 2, ups + 1
        if t != self.frames:
            valid = sorted({(self.motion_steps + 3) * 2**k for k in range(self.num_blocks)})
            raise VmtUsageError(
                f"frames={self.frames} cannot be made from motion_steps={self.motion_steps} at size {self.size}: "
                f"frames must be (motion_steps + 3) * 2^k, one of {valid}"
            )

    @property
    def num_blocks(self) -> int:
        """Generator blocks: the first makes 4x4 pixels, each next one doubles the side."""
        return int(math.log2(self.size)) - 1

    @property
    def temporal_upsampling(self) -> list[bool]:
        """Per block after the first: whether it doubles the frame count (early blocks first, as in G3AN)."""
        t, out = self.motion_steps + 3, []
        for _ in range(self.num_blocks - 1):
            up = t < self.frames
            out.append(up)
            t = t * 2 if up else t
        return out

    @property
    def channels(self) -> list[int]:
        """Output channels of each generator block (base 64, 5 blocks: 512, 512, 256, 128, 64)."""
        n = self.num_blocks
        return [self.base_channels * min(8, 2 ** (n - 1 - i)) for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LongGenConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise VmtUsageError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        # Runs saved before `warp` existed blended with the reference in place: the default.
        return cls(**data)

    def with_(self, **changes: Any) -> LongGenConfig:
        return replace(self, **changes)


# Default noise scale of the recall chain's motion prior (1: the fitted spread). On the shipped digits model
# 0 to 1.5 all keep a digit to frame 1,000 in 8 of 8 chains; 0.5 keeps some variety in the motion.
DEFAULT_MOTION_TEMPERATURE = 0.5


PRESETS: dict[str, LongGenConfig] = {
    # The paper's setup (G3AN sizes): 64x64, 16 frames, base 64 channels, F-SA on.
    "paper": LongGenConfig(),
    # Trains in minutes on a laptop CPU: 32x32, 8 frames, small channel counts, no attention.
    # warp: moving a digit is a translation, which a generator this small does not learn to redraw (see
    # generator.py). signed_motion: |x_i - x_(i-1)| does not say which way a digit moves; the warp needs it.
    "cpu": LongGenConfig(size=32, frames=8, base_channels=16, dim_content=32, dim_motion=8, motion_steps=1,
                         disc_channels=16, enc_channels=16, attention=False, signed_motion=True, warp=True),
    # Smallest sensible model, for tests.
    "tiny": LongGenConfig(size=16, frames=8, base_channels=8, dim_content=8, dim_motion=4, motion_steps=1,
                          disc_channels=8, enc_channels=8, attention=True, warp=True),
}


def preset(name: str) -> LongGenConfig:
    if name not in PRESETS:
        raise VmtUsageError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[name]
