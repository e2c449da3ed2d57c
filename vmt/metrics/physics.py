"""Physics plausibility on scenes with known physics: how far a tracked object's trajectory is from a
constant-acceleration law p(t) = p0 + v t + a t^2 / 2 (free fall, projectile).

The object is found without weights: pixels that differ from the per-pixel temporal median (the static
background) by more than `threshold` levels form its mask. The object is the mask's largest connected
component, and a frame counts only when that component is one compact object: it holds at least
`min_share` of the mask's pixels and covers at most `max_area` of the frame. Noise, a moving camera or a
scene with no object gives a scattered or frame-filling mask, so no object is found in most frames and the
video has *no trajectory* (reported as such, never as a small residual: the centroid of noise sits still at
the frame centre and would fit any law). Its position is the difference-weighted centroid of the component
(sub-pixel for anti-aliased objects).

The law is fitted by least squares on each axis; the residual (RMS distance of the track from the fitted
parabola) is reported in pixels and, as the score that compares videos of different sizes, in frame
diagonals (`rms`). 0 for exact physics, larger for jitter, drift or wrong dynamics. Bounces break the law:
evaluate segments between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmt.errors import VmtError


def track_object(frames: np.ndarray, *, threshold: float = 25.0, min_pixels: int = 4,
                 max_background_frames: int = 31, min_share: float = 0.6,
                 max_area: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (T, 2) (x, y) in pixels of the moving object in each frame, and found (T,) bool.

    frames: (T, H, W, 3) uint8 with a static background; the object must not cover any pixel in more than
    half the frames used for the background median. A frame's object is the largest connected component of
    the difference mask; the frame is `found` only when that component has >= min_pixels pixels, >= min_share
    of the mask and <= max_area of the frame (one compact object, not noise or a moving scene)."""
    import cv2

    f = np.asarray(frames)
    if f.ndim != 4 or len(f) < 3:
        raise VmtError(f"physics residual needs a video (T>=3, H, W, 3), got shape {f.shape}")
    # background: per-pixel median of up to `max_background_frames` evenly spaced frames (uint8 median
    # is exact; a subsample keeps this fast on long videos)
    pick = np.unique(np.linspace(0, len(f) - 1, min(len(f), max_background_frames)).round().astype(int))
    background = np.median(f[pick], axis=0).astype(np.float32)
    h, w = f.shape[1:3]
    ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    pos = np.zeros((len(f), 2))
    found = np.zeros(len(f), bool)
    for t, x in enumerate(f):
        d = np.abs(x.astype(np.float32) - background).max(-1)
        mask = (d > threshold).astype(np.uint8)
        total = int(mask.sum())
        if total < min_pixels:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[big, cv2.CC_STAT_AREA])
        if area < min_pixels or area < min_share * total or area > max_area * h * w:
            continue
        wgt = np.where(labels == big, d, np.float32(0))
        col, row = wgt.sum(0, dtype=np.float64), wgt.sum(1, dtype=np.float64)
        s = col.sum()
        pos[t] = (col @ xs / s, row @ ys / s)
        found[t] = True
    return pos, found


@dataclass
class PhysicsResidual:
    rms_px: float  # RMS distance of the track from the fitted constant-acceleration law
    max_px: float
    acceleration: tuple[float, float]  # fitted (ax, ay) in pixels / frame^2 (y down)
    velocity: tuple[float, float]  # fitted (vx, vy) at the first used frame, pixels / frame
    frames_used: int
    diagonal_px: float = float("nan")  # frame diagonal: rms = rms_px / diagonal_px

    @property
    def rms(self) -> float:
        """RMS residual in frame diagonals (comparable across video sizes)."""
        return self.rms_px / self.diagonal_px

    @property
    def max(self) -> float:
        return self.max_px / self.diagonal_px


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


@dataclass
class PhysicsResult:
    """A video's physics score: `fit` when an object trajectory was found, else None and `reason`."""

    fit: PhysicsResidual | None
    frames: int  # frames in the segment
    found: int  # frames where one compact object was found
    reason: str = ""


def physics_residual(frames: np.ndarray, *, threshold: float = 25.0, start: int = 0, end: int | None = None,
                     min_found: float = 0.5) -> PhysicsResult:
    """Track the moving object in frames[start:end] and score its trajectory against constant acceleration.
    No trajectory (fit None, with the reason) when the object is found in fewer than `min_found` of the
    segment's frames or fewer than 4."""
    pos, found = track_object(frames, threshold=threshold)
    idx = np.arange(len(pos))[start:end]
    n = len(idx)
    idx = idx[found[idx]]
    if len(idx) < max(4, int(np.ceil(min_found * n))):
        return PhysicsResult(None, n, len(idx), f"no trajectory: one compact moving object found in {len(idx)} "
                             f"of {n} frames (noise, a moving camera, or nothing moving)")
    fit = constant_acceleration_residual(idx.astype(np.float64), pos[idx])
    fit.diagonal_px = float(np.hypot(*np.asarray(frames).shape[1:3]))
    return PhysicsResult(fit, n, len(idx))


def score_video(path, *, threshold: float = 25.0, start: int = 0, end: int | None = None,
                max_frames: int | None = None) -> dict:
    """Per-video report row of `vmt eval physics` (residuals in frame diagonals and pixels)."""
    from vmt.io.video import read_video

    frames, _ = read_video(path, max_frames=max_frames)
    r = physics_residual(frames, threshold=threshold, start=start, end=end)
    m: dict = {"trajectory": r.fit is not None, "frames_found": r.found, "frames": r.frames}
    if r.fit is not None:
        m.update(physics_rms=r.fit.rms, physics_max=r.fit.max, physics_rms_px=r.fit.rms_px,
                 physics_max_px=r.fit.max_px, accel_x=r.fit.acceleration[0], accel_y=r.fit.acceleration[1])
    else:
        m["reason"] = r.reason
    return m


def summarize(items: list[dict]) -> dict:
    """Report metrics: mean residuals over videos with a trajectory, and how many have none (a video
    without a trajectory is never averaged in as a small residual)."""
    with_fit = [i["metrics"] for i in items if i["metrics"]["trajectory"]]
    mean = lambda k: float(np.mean([m[k] for m in with_fit])) if with_fit else float("nan")  # noqa: E731
    return {"physics_rms": mean("physics_rms"), "physics_max": mean("physics_max"),
            "physics_rms_px": mean("physics_rms_px"), "no_trajectory": len(items) - len(with_fit),
            "videos": len(items)}
