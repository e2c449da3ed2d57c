"""A toy video world with known physics and a small flow-matching model of it (ground truth for samplers).

Videos: one anti-aliased bright ball (value 1) on a dark background (-1), (B, 1, T, H, W) in [-1, 1]. The
ball's centre follows exact projectile motion p(t) = p0 + v0 t + g t^2 / 2 (pixels, frames, y down) and
bounces off the floor with restitution e (at most one bounce per video; the bounce instant is solved in
closed form, so frames on either side of it lie on exact parabolas with the same g). Between bounces the
constant-acceleration residual of vmt.metrics.physics is zero up to rendering/tracking error.

Model: a small 3D-conv U-Net on a patchified latent (patch (2, 4, 4): 16x32x32 -> 8x8x8 voxels) with sigma
conditioning (scale/shift per block) and EDM-style preconditioning, trained with the flow-matching objective
of the samplers: x_s = s eps + (1 - s) x0, target velocity eps - x0.

Scoring: `ball_score` tracks the ball with vmt.metrics.physics.track_object and fits the constant-
acceleration law per free-flight segment. Because y(t) is convex under gravity (y down), a single parabola
has its largest y at an end of the interval; an interior maximum of y means a bounce, and dropping that
frame leaves two exact parabolas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vmt.metrics.physics import constant_acceleration_residual, track_object


@dataclass(frozen=True)
class BallWorld:
    """Scene constants. Units: pixels and frames (y grows downwards)."""

    frames: int = 16
    size: int = 32
    radius: float = 3.0
    gravity: float = 0.15  # px / frame^2
    restitution: float = 0.85
    max_cover: int = 7  # no pixel lit in more frames than this: the median background stays dark

    @property
    def floor(self) -> float:
        """Largest y of the centre: the ball touches the bottom row."""
        return self.size - 1 - self.radius


def ball_trajectory(world: BallWorld, p0: tuple[float, float], v0: tuple[float, float]) -> tuple[np.ndarray, int]:
    """Centre positions (T, 2) (x, y) float64 at frames 0..T-1 and the number of floor bounces."""
    g, floor, e = world.gravity, world.floor, world.restitution
    x, y = float(p0[0]), float(p0[1])
    vx, vy = float(v0[0]), float(v0[1])
    t0, bounces = 0.0, 0
    out = np.zeros((world.frames, 2))
    for f in range(world.frames):
        while True:
            # time from t0 until the centre reaches the floor: y + vy dt + g dt^2 / 2 = floor
            disc = vy * vy + 2 * g * (floor - y)
            dt_hit = (-vy + math.sqrt(max(disc, 0.0))) / g
            if f - t0 < dt_hit or bounces > 1000:
                break
            x, y = x + vx * dt_hit, floor
            vy = -e * (vy + g * dt_hit)
            t0 += dt_hit
            bounces += 1
        dt = f - t0
        out[f] = (x + vx * dt, y + vy * dt + 0.5 * g * dt * dt)
    return out, bounces


def render_balls(world: BallWorld, centres: torch.Tensor) -> torch.Tensor:
    """Anti-aliased discs: centres (B, T, 2) (x, y) -> videos (B, 1, T, H, W) float32 in [-1, 1]."""
    n = world.size
    grid = torch.arange(n, dtype=torch.float32)
    c = centres.to(torch.float32)
    dx = grid.view(1, 1, 1, n) - c[..., 0, None, None]
    dy = grid.view(1, 1, n, 1) - c[..., 1, None, None]
    # pixel coverage by a linear ramp one pixel wide across the disc edge
    cover = (world.radius + 0.5 - torch.sqrt(dx * dx + dy * dy)).clamp(0, 1)
    return (2 * cover - 1).unsqueeze(1)


def bounce_time(world: BallWorld, p0: np.ndarray, v0: np.ndarray) -> np.ndarray:
    """Time (frames) of the first floor contact, (n,): y0 + vy t + g t^2 / 2 = floor."""
    g, y0, vy = world.gravity, p0[:, 1], v0[:, 1]
    return (-vy + np.sqrt(np.maximum(vy * vy + 2 * g * (world.floor - y0), 0))) / g


def one_bounce_trajectories(world: BallWorld, p0: np.ndarray, v0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised `ball_trajectory` for up to one bounce: p0, v0 (n, 2) -> (centres (n, T, 2), bounces (n,)).

    bounces is 0 or 1, or 2 meaning "two or more" (those centres are not valid after the second bounce)."""
    g, floor, e = world.gravity, world.floor, world.restitution
    t = np.arange(world.frames, dtype=np.float64)[None]
    x0, y0, vx, vy = p0[:, :1], p0[:, 1:], v0[:, :1], v0[:, 1:]
    hit1 = bounce_time(world, p0, v0)[:, None]
    vy2 = -e * (vy + g * hit1)
    hit2 = hit1 + 2 * (-vy2) / g  # the second flight returns to the floor after 2 |vy2| / g
    d1, d2 = t, t - hit1
    y = np.where(t < hit1, y0 + vy * d1 + 0.5 * g * d1 * d1, floor + vy2 * d2 + 0.5 * g * d2 * d2)
    x = x0 + vx * t
    bounces = (hit1[:, 0] <= world.frames - 1).astype(np.int64) + (hit2[:, 0] <= world.frames - 1)
    return np.stack([x, y], -1), bounces


def sample_balls(world: BallWorld, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random videos: (videos (n, 1, T, H, W), centres (n, T, 2) float64, bounces (n,) int64).

    Start position and velocity are uniform in a box; candidates that leave the frame, bounce more than
    once, bounce within 4 frames of either end or light a pixel in more than `max_cover` frames are
    redrawn."""
    r, s = world.radius, world.size
    videos, centres, bounces = [], [], []
    have = 0
    while have < n:
        m = 2 * (n - have) + 16
        u = torch.rand(m, 4, generator=generator, dtype=torch.float64).numpy()
        p0 = np.stack([r + u[:, 0] * (s - 1 - 2 * r), r + u[:, 1] * (world.floor - r) * 0.7], 1)
        v0 = np.stack([(u[:, 2] * 2 - 1) * 1.2, (u[:, 3] * 2.5 - 1.5)], 1)
        c, b = one_bounce_trajectories(world, p0, v0)
        # a bounce, if any, between frames 4 and T-5: both flights then span >= 4 frames, and the frame of
        # largest y is interior (see `ball_score`)
        hit = bounce_time(world, p0, v0)
        mid = (hit >= 4) & (hit <= world.frames - 5)
        ok = ((b == 0) | ((b == 1) & mid)) & (c[..., 0].min(1) >= r) & (c[..., 0].max(1) <= s - 1 - r) & (c[..., 1].min(1) >= r)
        c, b = torch.from_numpy(c[ok]), torch.from_numpy(b[ok])
        v = render_balls(world, c)
        ok = (v > -0.8).sum(2).amax(dim=(1, 2, 3)) <= world.max_cover
        videos.append(v[ok])
        centres.append(c[ok])
        bounces.append(b[ok])
        have += int(ok.sum())
    return torch.cat(videos)[:n], torch.cat(centres)[:n], torch.cat(bounces)[:n]


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """One video (C, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8, the layout vmt.metrics.physics reads."""
    u8 = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    u8 = u8.permute(1, 2, 3, 0).numpy()
    return np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 else u8


@dataclass
class BallScore:
    trackable: bool  # ball found in every frame and enough frames for the fit
    residual_px: float  # RMS distance of the track from the piecewise constant-acceleration fit (nan if not)
    gravity_px: float  # fitted vertical acceleration, frames-weighted over segments (nan if not)
    bounce_frame: int  # interior frame of largest y that was dropped, -1 when none
    frames_used: int


def ball_like(frames: np.ndarray, pos: np.ndarray, radius: float, threshold: float = 25.0) -> np.ndarray:
    """Per frame (T,) bool: the pixels `track_object` used look like one ball of `radius`: their count is
    within 1/3..3x the disc's area and their RMS distance from the centroid at most 1.5x the disc's
    (R / sqrt 2). Rejects noise spread over the frame, whose centroid would sit still and fake physics."""
    f = np.asarray(frames).astype(np.float32).max(-1)
    diff = np.abs(f - np.median(f, axis=0))
    h, w = diff.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    area, rms_disc = math.pi * (radius + 0.5) ** 2, (radius + 0.5) / math.sqrt(2)
    out = np.zeros(len(f), bool)
    for t, d in enumerate(diff):
        m = d > threshold
        n = int(m.sum())
        if n == 0:
            continue
        spread = math.sqrt(float(((xx[m] - pos[t, 0]) ** 2 + (yy[m] - pos[t, 1]) ** 2).mean()))
        out[t] = area / 3 <= n <= 3 * area and spread <= 1.5 * rms_disc
    return out


def ball_score(frames: np.ndarray, threshold: float = 25.0, min_segment: int = 4,
               radius: float | None = None, min_found: float = 1.0) -> BallScore:
    """Physics residual of one (T, H, W, 3) uint8 video with at most one bounce (see the module docstring).

    Trackable: the object is found (and, with `radius`, looks like that ball: `ball_like`) in at least
    `min_found` of the frames; the fit uses those frames only."""
    pos, found = track_object(frames, threshold=threshold)
    t_len = len(pos)
    nan = float("nan")
    if radius is not None:
        found &= ball_like(frames, pos, radius, threshold)
    if found.sum() < max(min_segment, math.ceil(min_found * t_len)):
        return BallScore(False, nan, nan, -1, int(found.sum()))
    idx = np.flatnonzero(found)
    k = int(idx[np.argmax(pos[idx, 1])])
    if idx[0] < k < idx[-1]:
        segments = [idx[idx < k], idx[idx > k]]
    else:
        segments, k = [idx], -1
    sq, n_used, acc = 0.0, 0, 0.0
    for seg in segments:
        if len(seg) < min_segment:
            continue
        fit = constant_acceleration_residual(seg.astype(np.float64), pos[seg])
        sq += fit.rms_px ** 2 * len(seg)
        acc += fit.acceleration[1] * len(seg)
        n_used += len(seg)
    if n_used < t_len // 2:
        return BallScore(False, nan, nan, k, n_used)
    return BallScore(True, math.sqrt(sq / n_used), acc / n_used, k, n_used)


# ---------------------------------------------------------------- model


def patchify(x: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*pt*ph*pw, T/pt, H/ph, W/pw)."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    return x.permute(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, c * pt * ph * pw, t // pt, h // ph, w // pw)


def unpatchify(x: torch.Tensor, channels: int, patch: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `patchify`."""
    b, _, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, channels, pt, ph, pw, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, channels, t * pt, h * ph, w * pw)


def sigma_embedding(s: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the timestep 1000 s: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=s.device) / half)
    a = 1000.0 * s.float()[:, None] * freqs[None]
    return torch.cat([a.cos(), a.sin()], 1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv3d twice, sigma as scale/shift of the second norm, 1x1x1 skip when widths differ."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.n1 = nn.GroupNorm(8, cin)
        self.c1 = nn.Conv3d(cin, cout, 3, padding=1)
        self.n2 = nn.GroupNorm(8, cout)
        self.film = nn.Linear(emb, 2 * cout)
        self.c2 = nn.Conv3d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.film(e)[:, :, None, None, None].chunk(2, 1)
        h = self.c2(F.silu(self.n2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class ToyVideoFlow(nn.Module):
    """Velocity model v(x_s, s) for (B, C, T, H, W) videos; a two-level 3D-conv U-Net F on patches.

    Preconditioned as in EDM, carried over to velocity: with data mean `mean` and std `std` per pixel,
    c = (1-s)^2 std^2 + s^2,

        v = -mean + a(s) (x_s - (1-s) mean) - b(s) F((x_s - (1-s) mean) / sqrt(c), s),
        a = (s - (1-s) std^2) / c,   b = std / sqrt(c).

    With F = 0 this is E[eps - x0 | x_s] for Gaussian pixels N(mean, std^2) (the best linear denoiser), so
    the network only learns what the Gaussian model misses, its target has unit scale at every s, and the
    noise pass-through at low s (v ~ (x_s - x0) / s) needs no capacity. T, H, W must be divisible by
    2*patch (the inner level halves the patch grid)."""

    def __init__(self, channels: int = 1, width: int = 32, patch: tuple[int, int, int] = (2, 4, 4), emb: int = 128,
                 mean: float = -0.93, std: float = 0.38):
        super().__init__()
        self.channels, self.patch = channels, tuple(patch)
        self.mean, self.std = float(mean), float(std)
        cp = channels * math.prod(patch)
        self.emb_dim = emb
        self.emb = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        w2 = 2 * width
        self.stem = nn.Conv3d(cp, width, 1)
        self.enc = ResBlock(width, width, emb)
        self.down = nn.Conv3d(width, w2, 2, stride=2)
        self.mid = nn.ModuleList([ResBlock(w2, w2, emb) for _ in range(2)])
        self.up = nn.ConvTranspose3d(w2, width, 2, stride=2)
        self.merge = nn.Conv3d(2 * width, width, 1)
        self.dec = ResBlock(width, width, emb)
        self.out_norm = nn.GroupNorm(8, width)
        self.out = nn.Conv3d(width, cp, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def net(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The raw network F(x, s): (B, C, T, H, W), s (B,)."""
        e = self.emb(sigma_embedding(s, self.emb_dim))
        h0 = self.enc(self.stem(patchify(x, self.patch)), e)
        h = self.down(h0)
        for blk in self.mid:
            h = blk(h, e)
        h = self.dec(self.merge(torch.cat([self.up(h), h0], 1)), e)
        return unpatchify(self.out(F.silu(self.out_norm(h))), self.channels, self.patch)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        s = s.reshape(-1).expand(x.shape[0]) if s.numel() == 1 else s.reshape(-1)
        sb = s.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        w = self.std ** 2
        c = (1 - sb) ** 2 * w + sb ** 2
        xc = x - (1 - sb) * self.mean
        a = (sb - (1 - sb) * w) / c
        return -self.mean + a * xc - self.std / c.sqrt() * self.net(xc / c.sqrt(), s)


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Mean squared error of v(x_s, s) against eps - x0 with x_s = s eps + (1 - s) x0; s: (B,)."""
    sb = s.view(-1, *([1] * (x0.dim() - 1)))
    xs = sb * eps + (1 - sb) * x0
    return F.mse_loss(model(xs, s), eps - x0)


def train_flow(model: nn.Module, data: Callable[[int, torch.Generator], torch.Tensor], steps: int, batch: int,
               lr: float = 2e-3, seed: int = 0, ema_decay: float = 0.99, time_budget_s: float | None = None,
               callback: Callable[[int, float], None] | None = None) -> tuple[nn.Module, list[float]]:
    """AdamW with linear warm-up and cosine decay; sigma ~ U(0, 1) per sample; fresh data every step.

    data(batch, generator) -> x0 (B, C, T, H, W). With `time_budget_s` the schedule runs on
    max(step / steps, elapsed / budget) and training stops when that reaches 1 (on a shared CPU the step
    count then depends on the load; len(losses) says how many ran). Returns (EMA copy in eval mode, losses)."""
    import copy
    import time

    g = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    losses: list[float] = []
    model.train()
    t0 = time.perf_counter()
    for i in range(steps):
        progress = i / steps
        if time_budget_s is not None:
            progress = max(progress, (time.perf_counter() - t0) / time_budget_s)
            if progress >= 1:
                break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * progress))
        x0 = data(batch, g)
        eps = torch.randn(x0.shape, generator=g)
        s = torch.rand(batch, generator=g)
        loss = flow_matching_loss(model, x0, eps, s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + i) / (10 + i))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - d)
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(i, losses[-1])
    model.eval()
    return ema, losses
