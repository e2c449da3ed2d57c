"""Training-time augmentation of raw keypoint windows (detector units): mirror, affine jitter, time reversal,
speed change.

Positions p map as p' = A p + b and FOMM jacobians (local maps from the keypoint's reference frame into the
image) as J' = A J: the equivariance FOMM's own detector is trained with. A mirror is A = diag(-1, 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vmt.keypoints.data import Layout


def resample_speed(seq: np.ndarray, factor: float) -> np.ndarray:
    """(T, dim) -> about T / factor frames by linear interpolation: factor > 1 plays the sequence faster."""
    t_new = np.arange(0.0, len(seq) - 1 + 1e-9, factor)
    lo = np.floor(t_new).astype(int)
    hi = np.minimum(lo + 1, len(seq) - 1)
    w = (t_new - lo)[:, None]
    return ((1 - w) * seq[lo] + w * seq[hi]).astype(np.float32)


def random_affine(batch: int, gen: torch.Generator, rotate_deg: float, scale: float, shift: float,
                  mirror: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2, 2) matrices A (rotation, isotropic scale, optional mirror) and (B, 2) offsets b."""
    u = torch.rand(batch, 5, generator=gen)
    ang = (2 * u[:, 0] - 1) * math.radians(rotate_deg)
    s = 1 + (2 * u[:, 1] - 1) * scale
    a = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1), torch.stack([ang.sin(), ang.cos()], -1)], -2)
    a = a * s[:, None, None]
    if mirror:
        flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
        a = a * torch.stack([flip, torch.ones_like(flip)], -1)[:, :, None]   # rows: x' = flip * (a p)_x
    b = (2 * u[:, 3:5] - 1) * shift
    return a, b


def augment_batch(x: torch.Tensor, layout: Layout, gen: torch.Generator, *, rotate_deg: float = 5.0,
                  scale: float = 0.05, shift: float = 0.05, mirror: bool = True, reverse: bool = True) -> torch.Tensor:
    """x (B, L, dim) raw windows -> augmented copy: one random affine map per window, and with probability 1/2
    the window played backwards."""
    bsz, length, _ = x.shape
    a, b = random_affine(bsz, gen, rotate_deg, scale, shift, mirror)
    per = x.reshape(bsz, length, layout.num_kp, 6 if layout.jacobian else 2)
    pos = torch.einsum("bij,btkj->btki", a, per[..., :2]) + b[:, None, None]
    parts = [pos]
    if layout.jacobian:
        jac = per[..., 2:].reshape(bsz, length, layout.num_kp, 2, 2)
        parts.append((a[:, None, None] @ jac).reshape(bsz, length, layout.num_kp, 4))
    out = torch.cat(parts, -1).reshape(bsz, length, -1)
    if reverse:
        back = torch.rand(bsz, generator=gen) < 0.5
        out = torch.where(back[:, None, None], out.flip(1), out)
    return out


def speed_windows(seqs: list[np.ndarray], length: int, stride: int, speeds: tuple[float, ...]) -> np.ndarray:
    """Windows of `length` frames every `stride` frames from each sequence (T, dim) replayed at every speed
    factor (1.0 = as recorded). Returns (W, length, dim) float32."""
    out = []
    for factor in speeds:
        for s in seqs:
            r = s if factor == 1.0 else resample_speed(s, factor)
            out.extend(r[i : i + length] for i in range(0, len(r) - length + 1, stride))
    return np.stack(out).astype(np.float32)
