"""EncGAN3: the content/movement encoders and the G3AN-style generator as one VAE."""

from __future__ import annotations

import torch
from torch import nn

from vmt.longgen.config import LongGenConfig
from vmt.longgen.encoders import ContentEncoder, MovementEncoder, frame_differences
from vmt.longgen.generator import Generator
from vmt.longgen.losses import reparameterise


class EncGAN3(nn.Module):
    """Encoders + generator. Videos are (B, 3, T, H, W) in [-1, 1]; the reference frame is frame 0."""

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.content_encoder = ContentEncoder(cfg)
        self.movement_encoder = MovementEncoder(cfg)

    def encode_content(self, frame: torch.Tensor):
        """(B, 3, H, W) -> (mu, logvar) of z_x, each (B, dim_content)."""
        return self.content_encoder(frame)

    def encode_motion(self, video: torch.Tensor):
        """(B, 3, T, H, W) -> (mu, logvar) of z_v, each (B, motion_steps, dim_motion)."""
        return self.movement_encoder(frame_differences(video, signed=self.cfg.signed_motion))

    def decode(self, z_x: torch.Tensor, z_v: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z_x, z_v, ref)

    def prior(self, batch: int, generator: torch.Generator | None = None, device=None):
        """z_x (B, Dx), z_v (B, T0, Dv) ~ N(0, I), drawn on the CPU (seeded) and moved to `device`."""
        c = self.cfg
        z_x = torch.randn(batch, c.dim_content, generator=generator)
        z_v = torch.randn(batch, c.motion_steps, c.dim_motion, generator=generator)
        dev = device if device is not None else next(self.parameters()).device
        return z_x.to(dev), z_v.to(dev)

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Encode a real clip (content of frame 0, motion of its differences) and decode it from frame 0."""
        mu_x, lv_x = self.encode_content(video[:, :, 0])
        mu_v, lv_v = self.encode_motion(video)
        z_x = reparameterise(mu_x, lv_x, generator) if sample else mu_x
        z_v = reparameterise(mu_v, lv_v, generator) if sample else mu_v
        return self.decode(z_x, z_v, ref=video[:, :, 0])
