"""Factorised self-attention (F-SA) over video features: temporal attention per pixel, then spatial per frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _SelfAttention1d(nn.Module):
    """Self-attention over the sequence axis of (N, C, L): q/k with max(1, C // 8) channels, v with C.

    The output is gamma * attention + x with gamma starting at 0, so a fresh layer is the identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        inner = max(1, channels // 8)
        self.q = nn.Conv1d(channels, inner, 1)
        self.k = nn.Conv1d(channels, inner, 1)
        self.v = nn.Conv1d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (m(x).transpose(1, 2) for m in (self.q, self.k, self.v))  # (N, L, C')
        out = F.scaled_dot_product_attention(q, k, v)  # (N, L, C)
        return self.gamma * out.transpose(1, 2) + x


class FactorisedSelfAttention(nn.Module):
    """F-SA on (B, C, T, H, W): attention along T at every pixel, then along H*W in every frame."""

    def __init__(self, channels: int):
        super().__init__()
        self.temporal = _SelfAttention1d(channels)
        self.spatial = _SelfAttention1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, t)
        y = self.temporal(y).reshape(b, h, w, c, t).permute(0, 3, 4, 1, 2)
        y = y.permute(0, 2, 1, 3, 4).reshape(b * t, c, h * w)
        y = self.spatial(y).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return y.contiguous()
