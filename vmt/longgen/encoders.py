"""EncGAN3 encoders: content (one reference frame -> z_x) and movement (frame differences -> z_v per step)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vmt.longgen.config import LongGenConfig
from vmt.longgen.generator import groups_for


def frame_differences(video: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T-1, H, W): |x_i - x_(i-1)| (the paper's v_i), or the signed difference."""
    d = video[:, :, 1:] - video[:, :, :-1]
    return d if signed else d.abs()


def _widths(base: int, size: int) -> list[int]:
    """Channels of the stride-2 stages that take `size` down to 4 pixels (base, 2 base, ... <= 8 base)."""
    n, out = 0, []
    while size > 4:
        out.append(base * min(8, 2**n))
        size //= 2
        n += 1
    return out


def _narrow_start(bias: torch.Tensor, dim: int) -> None:
    """Start the posterior with std e^-2 ~ 0.14 instead of 1 (logvar bias -4): with unit noise on latents whose
    means are still ~0.5 apart, the decoder's first hundreds of steps saw mostly noise and learned to fade
    the reference (the motion it could not read) to black."""
    with torch.no_grad():
        bias[dim:] = -4.0


class ContentEncoder(nn.Module):
    """Reference frame (B, 3, H, W) in [-1, 1] -> (mu, logvar), each (B, dim_content)."""

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(_widths(cfg.enc_channels, cfg.size)):
            layers += [nn.Conv2d(c_in, c, 4, 2, 1, bias=i == 0)]
            layers += [nn.GroupNorm(groups_for(c), c)] if i else []  # see generator.py: no BatchNorm
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * 16, 2 * cfg.dim_content)
        _narrow_start(self.head.bias, cfg.dim_content)

    def forward(self, frame: torch.Tensor):
        h = self.body(frame).flatten(1)
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar


class MovementEncoder(nn.Module):
    """Frame differences (B, 3, T-1, H, W) -> (mu, logvar), each (B, motion_steps, dim_motion)."""

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        self.steps = cfg.motion_steps
        layers, c_in = [], 3
        for i, c in enumerate(_widths(cfg.enc_channels, cfg.size)):
            layers += [nn.Conv3d(c_in, c, (3, 4, 4), (1, 2, 2), (1, 1, 1), bias=i == 0)]
            layers += [nn.GroupNorm(groups_for(c), c)] if i else []
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv1d(c_in, 2 * cfg.dim_motion, 1)
        _narrow_start(self.head.bias, cfg.dim_motion)

    def forward(self, diffs: torch.Tensor):
        h = self.body(diffs).mean(dim=(3, 4))  # (B, C, T-1)
        h = F.adaptive_avg_pool1d(h, self.steps)
        mu, logvar = self.head(h).transpose(1, 2).chunk(2, dim=2)
        return mu, logvar
