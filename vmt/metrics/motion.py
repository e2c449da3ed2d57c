"""Motion fidelity between a reference and a generated video, with a weight-free tracker, and a global
motion direction check.

Motion fidelity (the score motion-transfer papers report, there with CoTracker tracks):
1. Tracklets: a grid of first-frame points tracked frame to frame with pyramidal Lucas-Kanade (OpenCV); a point
   is dropped from the step where the forward-backward error exceeds `fb_threshold` pixels or it leaves the
   frame. Tracks alive for fewer than `min_track_fraction` of the steps are discarded.
2. Unit displacements per step; a step shorter than `min_displacement` pixels is "no motion" and counts as a
   zero vector (the epsilon for zero displacements), so static content correlates with nothing.
3. corr(a, b) = mean over the steps where both tracks are alive of cos(v_k, v~_k).
4. Score = symmetric Chamfer: (mean over generated tracks of the best reference match + mean over reference
   tracks of the best generated match) / 2. 1: the same motion; -1: everything moves the opposite way;
   ~0: no shared motion. It ignores where a track is, so a rotation reversed scores like itself. Static
   steps count as cos 0 on both sides, so even a video against itself scores below 1 when parts of it do
   not move (the runner reference against itself: 0.91); compare scores, not against 1.

Direction check: per consecutive frame pair, the global shift by phase correlation; the cosine between the
reference and generated shift, averaged over steps where both move, says whether global motion agrees
(> 0.5), is reversed (< -0.5) or is unclear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vmt.errors import VmtError


@dataclass
class Tracks:
    """Tracklets: positions xy (N, T, 2) in pixels (x, y) and alive (N, T) bool (a lost track stays lost)."""

    xy: np.ndarray
    alive: np.ndarray


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - part of the metrics extra
        raise VmtError("the motion metrics need OpenCV: pip install 'vmt[metrics]'") from e
    return cv2


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8 luma (BT.601 weights, as OpenCV)."""
    f = np.asarray(frames)
    if f.ndim == 3:
        return f.astype(np.uint8)
    if f.ndim != 4 or f.shape[-1] != 3:
        raise VmtError(f"frames must be (T, H, W, 3), got shape {f.shape}")
    cv2 = _cv2()
    f = np.ascontiguousarray(f, dtype=np.uint8)
    return np.stack([cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in f])


def grid_points(height: int, width: int, grid: int) -> np.ndarray:
    """About `grid` points along the longer side, same spacing on both axes, half a step from the edges:
    (N, 2) float32 (x, y)."""
    step = max(height, width) / grid
    ys = np.arange(step / 2, height, step)
    xs = np.arange(step / 2, width, step)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float32)


def track_grid(frames: np.ndarray, *, grid: int = 40, win: int = 15, levels: int = 3,
               fb_threshold: float = 1.0) -> Tracks:
    """Track a grid of first-frame points through frames (T, H, W, 3) or (T, H, W) with pyramidal LK and a
    forward-backward check. Returns Tracks with N = grid points, T = frames."""
    cv2 = _cv2()
    gray = to_gray(frames)
    t, h, w = gray.shape
    p0 = grid_points(h, w, grid)
    n = len(p0)
    xy = np.zeros((n, t, 2), np.float32)
    alive = np.zeros((n, t), bool)
    xy[:, 0], alive[:, 0] = p0, True
    lk = {"winSize": (win, win), "maxLevel": levels,
          "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)}
    for k in range(1, t):
        idx = np.flatnonzero(alive[:, k - 1])
        if len(idx) == 0:
            break
        a = xy[idx, k - 1].reshape(-1, 1, 2)
        b, st, _ = cv2.calcOpticalFlowPyrLK(gray[k - 1], gray[k], a, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(gray[k], gray[k - 1], b, None, **lk)
        b, back = b.reshape(-1, 2), back.reshape(-1, 2)
        fb = np.linalg.norm(back - a.reshape(-1, 2), axis=1)
        ok = (st.ravel() == 1) & (st2.ravel() == 1) & (fb < fb_threshold)
        ok &= (b[:, 0] >= 0) & (b[:, 0] <= w - 1) & (b[:, 1] >= 0) & (b[:, 1] <= h - 1)
        xy[idx, k] = np.where(ok[:, None], b, xy[idx, k - 1])
        alive[idx, k] = ok
    return Tracks(xy, alive)


def unit_steps(tracks: Tracks, min_displacement: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-step unit displacements (N, T-1, 2) (zero for no motion or dead steps) and step validity (N, T-1)."""
    d = np.diff(tracks.xy.astype(np.float64), axis=1)
    valid = tracks.alive[:, 1:] & tracks.alive[:, :-1]
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    moving = (norm[..., 0] >= min_displacement) & valid
    u = np.where(moving[..., None], d / np.maximum(norm, 1e-12), 0.0)
    return u, valid


def correlation_matrix(u_a: np.ndarray, valid_a: np.ndarray, u_b: np.ndarray, valid_b: np.ndarray) -> np.ndarray:
    """corr[i, j] = mean over steps where both tracks are alive of cos(u_a[i, k], u_b[j, k]): (Na, Nb)."""
    k = min(u_a.shape[1], u_b.shape[1])
    a, b = u_a[:, :k].reshape(len(u_a), -1), u_b[:, :k].reshape(len(u_b), -1)
    num = a @ b.T
    den = valid_a[:, :k].astype(np.float64) @ valid_b[:, :k].astype(np.float64).T
    return np.where(den > 0, num / np.maximum(den, 1.0), 0.0)


def chamfer_score(corr: np.ndarray) -> float:
    """Symmetric Chamfer mean of best matches of a correlation matrix (N_ref, N_gen)."""
    if corr.size == 0:
        raise VmtError("no usable tracks in one of the videos (too short, textureless, or all tracks lost)")
    return float(0.5 * (corr.max(0).mean() + corr.max(1).mean()))


@dataclass
class MotionFidelity:
    score: float
    tracks_ref: int
    tracks_gen: int
    steps: int


def _kept(tracks: Tracks, min_track_fraction: float) -> Tracks:
    life = tracks.alive.sum(1) - 1  # steps alive (prefix length)
    keep = life >= max(1, int(np.ceil(min_track_fraction * (tracks.alive.shape[1] - 1))))
    return Tracks(tracks.xy[keep], tracks.alive[keep])


def motion_fidelity(ref: np.ndarray, gen: np.ndarray, *, grid: int = 40, win: int = 15, levels: int = 3,
                    fb_threshold: float = 1.0, min_displacement: float = 0.1,
                    min_track_fraction: float = 0.5) -> MotionFidelity:
    """Motion fidelity score in [-1, 1] between videos ref and gen ((T, H, W, 3) uint8). Videos of different
    lengths are compared over the shorter one; sizes may differ (directions are scale-free)."""
    t = min(len(ref), len(gen))
    if t < 2:
        raise VmtError(f"motion fidelity needs at least 2 frames in both videos, got {len(ref)} and {len(gen)}")
    kw = {"grid": grid, "win": win, "levels": levels, "fb_threshold": fb_threshold}
    tr = _kept(track_grid(ref[:t], **kw), min_track_fraction)
    tg = _kept(track_grid(gen[:t], **kw), min_track_fraction)
    ua, va = unit_steps(tr, min_displacement)
    ub, vb = unit_steps(tg, min_displacement)
    return MotionFidelity(chamfer_score(correlation_matrix(ua, va, ub, vb)), len(ua), len(ub), t - 1)


def global_shifts(frames: np.ndarray, *, max_side: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Global translation (dx, dy) of the content from frame k to k+1 by phase correlation, in pixels of
    the input size: (T-1, 2), and the correlation peak response (T-1,) (confidence, 0..1).
    Frames are downscaled to `max_side` first (the shift is global, fine detail is not needed)."""
    cv2 = _cv2()
    gray = to_gray(frames)
    t, h, w = gray.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        gray = np.stack([cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray])
        sx, sy = w / size[0], h / size[1]
    else:
        sx = sy = 1.0
    gray = gray.astype(np.float32)
    win = cv2.createHanningWindow(gray.shape[1:][::-1], cv2.CV_32F)
    shifts, resp = np.zeros((max(t - 1, 0), 2)), np.zeros(max(t - 1, 0))
    for k in range(t - 1):
        (dx, dy), r = cv2.phaseCorrelate(gray[k], gray[k + 1], win)
        shifts[k] = (dx * sx, dy * sy)
        resp[k] = r
    return shifts, resp


@dataclass
class DirectionCheck:
    cosine: float | None  # mean cosine of reference vs generated global shifts over moving steps
    verdict: str  # "agree" | "reversed" | "unclear" | "no global motion"
    steps_used: int
    ref_speed_px: float  # mean |shift| per frame
    gen_speed_px: float


def direction_check(ref: np.ndarray, gen: np.ndarray, *, min_shift: float = 0.25,
                    min_response: float = 0.05, min_steps: int = 2) -> DirectionCheck:
    """Compare the global motion direction of two videos frame pair by frame pair (phase correlation)."""
    t = min(len(ref), len(gen))
    sr, rr = global_shifts(ref[:t])
    sg, rg = global_shifts(gen[:t])
    # cosines are scale-free, so videos of different sizes compare directly
    nr = np.linalg.norm(sr, axis=1)
    ng = np.linalg.norm(sg, axis=1)
    use = (nr >= min_shift) & (ng >= min_shift) & (rr >= min_response) & (rg >= min_response)
    speed_r, speed_g = float(nr.mean()) if len(nr) else 0.0, float(ng.mean()) if len(ng) else 0.0
    if use.sum() < min_steps:
        return DirectionCheck(None, "no global motion", int(use.sum()), speed_r, speed_g)
    cos = float(np.mean(np.sum(sr[use] * sg[use], 1) / (nr[use] * ng[use])))
    verdict = "agree" if cos > 0.5 else "reversed" if cos < -0.5 else "unclear"
    return DirectionCheck(cos, verdict, int(use.sum()), speed_r, speed_g)
