"""Spectral-normalised discriminators: a (2+1)D video critic and a DCGAN-style image critic."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn

from vmt.longgen.config import LongGenConfig
from vmt.longgen.encoders import _widths


class VideoDiscriminator(nn.Module):
    """Video (B, 3, T, H, W) -> logits (B, T') with T' = T - (number of stages).

    Each stage: spatial conv 1x4x4 stride (1, 2, 2), then temporal conv 4x1x1 (stride 1, padding 1, so each
    stage shortens T by one). The logits are per temporal position (a temporal patch critic): a seam between
    two clips is judged by the positions that see it instead of being averaged away over a long sequence.
    Works for any T > number of stages, so merged recall sequences (2T - 1 frames) go through the same net.
    """

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in _widths(cfg.disc_channels, cfg.size):
            layers += [sn(nn.Conv3d(c_in, c, (1, 4, 4), (1, 2, 2), (0, 1, 1))), nn.LeakyReLU(0.2, inplace=True)]
            layers += [sn(nn.Conv3d(c, c, (4, 1, 1), 1, (1, 0, 0))), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = sn(nn.Conv3d(c_in, 1, (1, 4, 4)))
        self.min_frames = len(_widths(cfg.disc_channels, cfg.size)) + 1

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(video)).flatten(1)


class ImageDiscriminator(nn.Module):
    """Frame (B, 3, H, W) -> logit (B,)."""

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in _widths(cfg.disc_channels, cfg.size):
            layers += [sn(nn.Conv2d(c_in, c, 4, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.head = sn(nn.Conv2d(c_in, 1, 4))

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(frame)).flatten()


class Discriminators(nn.Module):
    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        self.video = VideoDiscriminator(cfg)
        self.image = ImageDiscriminator(cfg)
