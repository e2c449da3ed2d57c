"""Synthetic queries/keys with a known motion, for tests and benchmarks of the AMF.

Each region of the token grid carries its own smooth random feature field (random Fourier features of an
RBF kernel, so q(a) . k(b) = A^2 k(a - b) with k(r) ~ exp(-|r|^2 / (2 l^2)) even inside a region and ~0 across regions), translating
by its own velocity (dy, dx) tokens per frame, integer or sub-token. The true AMF of a pair (i, j) at a query
of region r is (j - i) * v_r wherever the match stays inside region r and the grid.
"""

from __future__ import annotations

import math

import torch


def region_labels(h: int, w: int, split: str = "halves") -> torch.Tensor:
    """(h, w) long region ids: "one" (single region), "halves" (left/right), "quads" (2 x 2)."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    if split == "one":
        return torch.zeros(h, w, dtype=torch.long)
    if split == "halves":
        return (xs >= w // 2).long()
    if split == "quads":
        return (ys >= h // 2).long() * 2 + (xs >= w // 2).long()
    raise ValueError(f"unknown split {split!r}")


def moving_fields_qk(
    num_frames: int, h: int, w: int, dim: int, velocities: torch.Tensor, labels: torch.Tensor, *,
    lengthscale: float = 1.5, amplitude: float | None = None, sharpness: float = 6.0, heads: int = 1,
    head_noise: float = 0.0, seed: int = 0, dtype=torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k: (F, h, w, D) (or (F, h, w, heads, D) when heads > 1) for regions moving at `velocities` (R, 2).

    sharpness: the peak logit A^2 / sqrt(D) under the AMF's default scale (sets `amplitude` when None).
    heads > 1 gives every head the same field plus independent noise of std `head_noise` (averaging heads
    recovers the field, as in a real DiT where heads share the motion-relevant content).
    """
    g = torch.Generator().manual_seed(seed)
    n_regions = int(labels.max()) + 1
    if velocities.shape != (n_regions, 2):
        raise ValueError(f"velocities must be ({n_regions}, 2), got {tuple(velocities.shape)}")
    if dim % 2:
        raise ValueError(f"dim must be even (cos/sin feature pairs), got {dim}")
    half = dim // 2
    omega = torch.randn(n_regions, half, 2, generator=g, dtype=torch.float64) / lengthscale
    phase = torch.rand(n_regions, half, generator=g, dtype=torch.float64) * 2 * math.pi
    amp = amplitude if amplitude is not None else math.sqrt(sharpness * math.sqrt(dim))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pos = torch.stack([ys, xs], -1)  # (h, w, 2)
    om, ph = omega[labels], phase[labels]  # (h, w, D, 2), (h, w, D)
    vel = velocities.to(torch.float64)[labels]  # (h, w, 2)
    frames = []
    for t in range(num_frames):
        src = pos - t * vel  # content at p in frame t came from p - t v
        # cos/sin pairs make q(a) . k(b) = A^2 mean cos(omega . (a - b)): exactly shift-invariant and even.
        arg = (om * src[..., None, :]).sum(-1) + ph
        frames.append(amp * math.sqrt(1.0 / half) * torch.cat([torch.cos(arg), torch.sin(arg)], -1))
    field = torch.stack(frames)  # (F, h, w, D)
    if heads == 1:
        return field.to(dtype), field.to(dtype).clone()
    noise_q = head_noise * amp * torch.randn(*field.shape[:3], heads, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    noise_k = head_noise * amp * torch.randn(*field.shape[:3], heads, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    q = field[..., None, :] + noise_q
    k = field[..., None, :] + noise_k
    return q.to(dtype), k.to(dtype)


def true_flow(pairs: torch.Tensor, velocities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(P, S, 2): (j - i) * v of each query's region."""
    d = (pairs[:, 1] - pairs[:, 0]).to(torch.float32)
    v = velocities.to(torch.float32)[labels.flatten()]  # (S, 2)
    return d[:, None, None] * v[None]


def valid_mask(pairs: torch.Tensor, velocities: torch.Tensor, labels: torch.Tensor, margin: float = 2.0) -> torch.Tensor:
    """(P, S) True where the true match p + (j - i) v lies at least `margin` tokens inside the query's region
    (and the grid), so the ground truth is unambiguous; elsewhere the match is cut off by a border."""
    h, w = labels.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys, xs], -1).reshape(-1, 2).float()
    lab = labels.flatten()
    flow = true_flow(pairs, velocities, labels)
    tgt = pos[None] + flow  # (P, S, 2)
    ok = torch.ones(flow.shape[:2], dtype=torch.bool)
    # Check the region along a margin box around the target and around the query itself.
    for dy in (-margin, 0.0, margin):
        for dx in (-margin, 0.0, margin):
            for base in (tgt, pos[None].expand_as(tgt)):
                y = torch.round(base[..., 0] + dy).long()
                x = torch.round(base[..., 1] + dx).long()
                inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
                same = torch.zeros_like(inside)
                same[inside] = labels[y[inside], x[inside]] == lab.expand_as(y)[inside]
                ok &= inside & same
    return ok
