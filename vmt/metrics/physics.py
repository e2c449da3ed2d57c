"""Physics plausibility on scenes with known physics: how far a tracked object's trajectory is from a
constant-acceleration law p(t) = p0 + v t + a t^2 / 2 (free fall, projectile).

The object is found without weights: pixels that differ from the per-pixel temporal median (the static
background) by more than `threshold` levels form its mask, and its position is the difference-weighted
centroid of that mask (sub-pixel for anti-aliased objects). The law is fitted by least squares on each axis;
the residual (RMS distance of the track from the fitted parabola, in pixels) is the score: 0 for exact
physics, larger for jitter, drift or wrong dynamics. Bounces break the law: evaluate segments between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmt.errors import VmtError


def track_object(frames: np.ndarray, *, threshold: float = 25.0, min_pixels: int = 4,
                 max_background_frames: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (T, 2) (x, y) in pixels of the moving object in each frame, and found (T,) bool.

    frames: (T, H, W, 3) uint8 with a static background; the object must not cover any pixel in more than
    half the frames used for the background median."""
    f = np.asarray(frames)
    if f.ndim != 4 or len(f) < 3:
        raise VmtError(f"physics residual needs a video (T>=3, H, W, 3), got shape {f.shape}")
    # background: per-pixel median of up to `max_background_frames` evenly spaced frames (uint8 median
    # is exact; a subsample keeps this fast on long videos)
    pick = np.unique(np.linspace(0, len(f) - 1, min(len(f), max_background_frames)).round().astype(int))
    background = np.median(f[pick], axis=0).astype(np.float32)
    diff = np.stack([np.abs(x.astype(np.float32) - background).max(-1) for x in f])  # (T, H, W)
    h, w = diff.shape[1:]
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    pos = np.zeros((len(f), 2))
    found = np.zeros(len(f), bool)
    for t, d in enumerate(diff):
        wgt = np.where(d > threshold, d, np.float32(0))
        if np.count_nonzero(wgt) < min_pixels:
            continue
        col, row = wgt.sum(0, dtype=np.float64), wgt.sum(1, dtype=np.float64)
        total = col.sum()
        pos[t] = (col @ xs / total, row @ ys / total)
        found[t] = True
    return pos, found


@dataclass
class PhysicsResidual:
    rms_px: float  # RMS distance of the track from the fitted constant-acceleration law
    max_px: float
    acceleration: tuple[float, float]  # fitted (ax, ay) in pixels / frame^2 (y down)
    velocity: tuple[float, float]  # fitted (vx, vy) at the first used frame, pixels / frame
    frames_used: int


def constant_acceleration_residual(t: np.ndarray, pos: np.ndarray) -> PhysicsResidual:
    """Least-squares fit of p(t) = p0 + v t + a t^2 / 2 to positions pos (N, 2) at times t (N,) (frames)."""
    t = np.asarray(t, np.float64)
    p = np.asarray(pos, np.float64)
    if len(t) < 4:
        raise VmtError(f"the constant-acceleration fit needs the object in at least 4 frames, found {len(t)}")
    t0 = t - t[0]
    design = np.stack([np.ones_like(t0), t0, 0.5 * t0 ** 2], 1)
    coef, *_ = np.linalg.lstsq(design, p, rcond=None)
    res = np.linalg.norm(p - design @ coef, axis=1)
    return PhysicsResidual(float(np.sqrt(np.mean(res ** 2))), float(res.max()), (float(coef[2, 0]), float(coef[2, 1])),
                           (float(coef[1, 0]), float(coef[1, 1])), len(t))


def physics_residual(frames: np.ndarray, *, threshold: float = 25.0, start: int = 0,
                     end: int | None = None) -> PhysicsResidual:
    """Track the moving object in frames[start:end] and score its trajectory against constant acceleration."""
    pos, found = track_object(frames, threshold=threshold)
    idx = np.arange(len(pos))[start:end]
    idx = idx[found[idx]]
    return constant_acceleration_residual(idx.astype(np.float64), pos[idx])
