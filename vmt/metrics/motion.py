"""Motion fidelity between a reference and a generated video, with a weight-free tracker, and a global
motion direction check.

Motion fidelity (the score motion-transfer papers report, there with CoTracker tracks on a grid):
1. Tracklets: a grid of first-frame points tracked frame to frame with pyramidal Lucas-Kanade (OpenCV); a point
   is dropped when the forward-backward error exceeds `fb_threshold` pixels or it leaves the frame. Only tracks
   alive in every frame are used.
2. Moving tracks: displacements are divided by the frame diagonal (videos of any size compare); a track whose
   RMS step is below `min_motion` diagonals per frame is static and left out. Static content has no direction:
   with a tracker's sub-pixel jitter its "directions" are noise, and best-of-many matches of noise are high.
3. corr(a, b) = cosine between the two tracks' whole displacement sequences (steps flattened): the
   displacement-weighted mean of the per-step cosines, 1 for the same motion, -1 for the opposite one.
4. Score (`motion_fidelity`): a one-to-one matching of reference and generated tracks (Hungarian, maximising
   the summed correlation weighted by each track's share of its video's motion); unmatched tracks count 0.
   1: the same motion (a video against itself scores exactly 1); ~0: unrelated motion; < 0: opposite motion.
   `best_match` is the published form: each generated track's best reference correlation, averaged (weighted
   by motion). Any track may be the best match of many, so unrelated videos with many tracks find good
   matches by chance; measured on real clips (benchmarks/metrics.py) best_match separates same from unrelated
   motion like the matched score does but sits far above 0 for unrelated pairs, and the reversal of a pan
   still finds positive matches. Why the previous score rated unrelated clips ~0.95: best matches over every
   track including static ones whose jitter directions are noise, plus a mean of per-step cosines that lets
   near-static tracks match anything.

Direction check: per consecutive frame pair, the global shift by phase correlation; the cosine between the
reference and generated shift, averaged over steps where both move, says whether global motion agrees
(> 0.5), is reversed (< -0.5) or is unclear.
"""

from __future__ import annotations

import functools
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


def moving_steps(tracks: Tracks, frame_diag: float, min_motion: float) -> tuple[np.ndarray, np.ndarray]:
    """Displacements (N, T-1, 2) in frame diagonals of the tracks alive in every frame whose RMS step is at
    least `min_motion` diagonals per frame, and that RMS step (N,) (each track's amount of motion)."""
    full = tracks.alive.all(1)
    d = np.diff(tracks.xy[full].astype(np.float64), axis=1) / frame_diag
    if d.shape[1] == 0:
        return d, np.zeros(len(d))
    rms = np.sqrt((d ** 2).sum((1, 2)) / d.shape[1])
    keep = rms >= min_motion
    return d[keep], rms[keep]


def trajectory_cosines(steps_a: np.ndarray, steps_b: np.ndarray) -> np.ndarray:
    """corr[i, j] = cosine between track i's and track j's displacement sequences (steps flattened):
    (Na, T-1, 2), (Nb, T-1, 2) -> (Na, Nb). Equal to the per-step cosines averaged with weights |a_k| |b_k|."""
    a = steps_a.reshape(len(steps_a), -1)
    b = steps_b.reshape(len(steps_b), -1)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-300)
    return a @ b.T


def matched_score(corr: np.ndarray, weight_a: np.ndarray, weight_b: np.ndarray) -> float:
    """One-to-one matching score: max over matchings M of sum_{(i,j) in M} corr[i,j] (w_a[i] + w_b[j]) / 2,
    with the weights normalised to sum 1 on each side; unmatched tracks count 0. In [-1, 1]."""
    if corr.size == 0:
        return 0.0
    from scipy.optimize import linear_sum_assignment

    wa = weight_a / weight_a.sum()
    wb = weight_b / weight_b.sum()
    gain = corr * (wa[:, None] + wb[None, :])
    rows, cols = linear_sum_assignment(gain, maximize=True)
    # a negative pair is still matched (the assignment is complete on the smaller side): opposite motion
    # must lower the score, not vanish from it
    return float(0.5 * gain[rows, cols].sum())


def best_match_score(corr: np.ndarray, weight_gen: np.ndarray) -> float:
    """Published form: mean over generated tracks (weighted) of their best reference correlation.
    corr is (N_ref, N_gen)."""
    if corr.size == 0:
        return 0.0
    return float((corr.max(0) * weight_gen).sum() / weight_gen.sum())


@dataclass
class MotionFidelity:
    score: float | None  # one-to-one matched score in [-1, 1]; None when it cannot be computed (`reason`)
    best_match: float | None  # the published best-match mean (biased upwards, see the module docstring)
    tracks_ref: int  # moving tracks used
    tracks_gen: int
    steps: int
    reason: str = ""  # why score is None


def motion_fidelity(ref: np.ndarray, gen: np.ndarray, *, grid: int = 40, win: int = 15, levels: int = 3,
                    fb_threshold: float = 1.0, min_motion: float = 1e-3) -> MotionFidelity:
    """Motion fidelity between videos ref and gen ((T, H, W, 3) uint8), see the module docstring. Videos of
    different lengths are compared over the shorter one; sizes may differ (displacements are in diagonals).
    min_motion: RMS step, in frame diagonals per frame, below which a track counts as static (1e-3: 0.36 px
    a frame at 256x256). A static reference gives no score (reason given); a static generated video scores 0
    against a moving reference (no motion reproduced)."""
    t = min(len(ref), len(gen))
    if t < 2:
        return MotionFidelity(None, None, 0, 0, max(t - 1, 0), f"needs at least 2 frames in both videos, got "
                              f"{len(ref)} and {len(gen)}")
    kw = {"grid": grid, "win": win, "levels": levels, "fb_threshold": fb_threshold}
    sa, wa = moving_steps(track_grid(ref[:t], **kw), float(np.hypot(*ref.shape[1:3])), min_motion)
    sb, wb = moving_steps(track_grid(gen[:t], **kw), float(np.hypot(*gen.shape[1:3])), min_motion)
    if len(sa) == 0:
        return MotionFidelity(None, None, 0, len(sb), t - 1, "the reference has no moving tracks (static, "
                              "textureless, or every track lost): there is no motion to compare with")
    if len(sb) == 0:
        return MotionFidelity(0.0, 0.0, len(sa), 0, t - 1, "")
    corr = trajectory_cosines(sa, sb)
    return MotionFidelity(matched_score(corr, wa, wb), best_match_score(corr, wb), len(sa), len(sb), t - 1)


# Phase correlation is done here in numpy, not with cv2.phaseCorrelate, whose result depends on the OpenCV
# version and is biased on known shifts. OpenCV 4.x multiplies its inputs by the window in place when the frame
# size needs no DFT padding, so each frame after the first entered its second pair already windowed (twice);
# 5.x copies, and the same frames give other shifts (2 px steps: 1.89-1.97 px with 4.14, 1.83-1.92 with 5.1).
# Its sub-pixel step, a 5x5 weighted centroid, is biased on either version: the window times the frame's mean
# is an image that does not move, a peak at zero shift that pulls the centroid towards 0, and the 5x5 patch
# takes in side lobes (errors up to 0.3 px on exact shifts of real frames, 0.5 px more when a frame is padded
# to an odd DFT size). Here the windowed mean is removed first, the phase-only spectrum is tapered by a
# Gaussian (the surface smoothed by a Gaussian of ~1 px: a symmetric peak stays in place, while the high
# frequencies, mostly noise and aliasing once whitened, no longer jitter it), and the peak of that smooth
# surface is found by Newton's method on its Fourier series, started from a parabola through the pixels
# around the largest sample. Errors on exact shifts of real and synthetic frames, on OpenCV 4.14 and 5.1 alike:
# 0.1 px at most on frames of 64x96 px and more (0.2 px at 32x48).
_TAPER_SIGMA = 0.15  # cycles per pixel


def _refine_peak(spec: np.ndarray, surf: np.ndarray) -> tuple[float, float]:
    """(dy, dx) maximising the smooth surface s(d) = Re sum_f spec(f) exp(2 pi i f.d), whose samples on the
    pixel grid are `surf` (= ifft2(spec).real): a parabola through the samples around the largest, then
    Newton steps on s itself (its exact derivatives from the spectrum), kept when they converge nearby."""
    h, w = surf.shape
    iy, ix = np.unravel_index(np.argmax(surf), surf.shape)
    at = lambda a, b: surf[(iy + a) % h, (ix + b) % w]
    start = []
    for lo, hi in ((at(-1, 0), at(1, 0)), (at(0, -1), at(0, 1))):
        curv = lo - 2 * at(0, 0) + hi
        start.append(float(np.clip(0.5 * (lo - hi) / curv, -0.5, 0.5)) if curv < 0 else 0.0)
    d0 = np.array([(iy - h if iy > h // 2 else iy) + start[0], (ix - w if ix > w // 2 else ix) + start[1]])
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    d = d0.copy()
    for _ in range(6):
        z = spec * np.exp(2j * np.pi * fy * d[0])[:, None] * np.exp(2j * np.pi * fx * d[1])[None, :]
        re, im = z.real, z.imag
        cross = fy @ re @ fx
        grad = -2 * np.pi * np.array([fy @ im.sum(1), fx @ im.sum(0)])
        hess = -4 * np.pi ** 2 * np.array([[fy ** 2 @ re.sum(1), cross], [cross, fx ** 2 @ re.sum(0)]])
        if not (np.linalg.eigvalsh(hess) < 0).all():
            return float(d0[0]), float(d0[1])
        step = -np.linalg.solve(hess, grad)
        d += step
        if np.abs(d - d0).max() > 1:
            return float(d0[0]), float(d0[1])
        if np.abs(step).max() < 1e-4:
            break
    return float(d[0]), float(d[1])


def global_shifts(frames: np.ndarray, *, max_side: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Global translation (dx, dy) of the content from frame k to k+1 by phase correlation, in pixels of
    the input size: (T-1, 2), and the correlation peak response (T-1,) (confidence: the phase-correlation
    surface summed over the 5x5 pixels around its peak, OpenCV's definition; about 1 for a clean shift, lower
    when the correlation spreads over several peaks).
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
    h, w = gray.shape[1:]
    # the window of cv2.createHanningWindow (the square root of a 2-D Hann window)
    win = np.outer(np.sin(np.pi * np.arange(h) / max(h - 1, 1)), np.sin(np.pi * np.arange(w) / max(w - 1, 1)))
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    taper = np.exp(-(fy ** 2 + fx ** 2) / (2 * _TAPER_SIGMA ** 2))
    near = np.ix_(np.arange(-2, 3), np.arange(-2, 3))

    def spectrum(g: np.ndarray) -> np.ndarray:
        g = g.astype(np.float64)
        return np.fft.fft2((g - (g * win).sum() / win.sum()) * win)

    shifts, resp = np.zeros((max(t - 1, 0), 2)), np.zeros(max(t - 1, 0))
    prev = spectrum(gray[0]) if t else None
    for k in range(t - 1):
        cur = spectrum(gray[k + 1])
        cross = cur * np.conj(prev)
        mag = np.abs(cross)
        phase = np.where(mag > 1e-12 * mag.max(), cross / np.maximum(mag, 1e-300), 0.0)
        surf = np.fft.ifft2(phase).real
        iy, ix = np.unravel_index(np.argmax(surf), surf.shape)
        resp[k] = surf[(iy + near[0]) % h, (ix + near[1]) % w].sum()
        smooth = phase * taper
        dy, dx = _refine_peak(smooth, np.fft.ifft2(smooth).real)
        shifts[k] = (dx * sx, dy * sy)
        prev = cur
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


def pair_videos(refs: list, gens: list) -> list[tuple]:
    """(reference, generated) pairs: one reference against every generated video, or references and
    generated videos paired by file stem."""
    from pathlib import Path

    from vmt.errors import VmtUsageError

    if len(refs) == 1:
        return [(refs[0], g) for g in gens]
    by_stem = {Path(r).stem: r for r in refs}
    missing = [Path(g).name for g in gens if Path(g).stem not in by_stem]
    if missing:
        raise VmtUsageError(f"no reference with the same name for {', '.join(missing[:5])}; with a folder of "
                            "references, generated videos are paired by file name")
    return [(by_stem[Path(g).stem], g) for g in gens]


@functools.lru_cache(maxsize=1)
def _read_reference(path: str, max_frames: int | None, stamp: tuple[int, int]) -> np.ndarray:
    """The last reference read, kept: one reference is usually scored against many generated videos
    (`stamp`: the file's mtime and size, so a changed file is read again)."""
    from vmt.io.video import read_video

    frames, _ = read_video(path, max_frames=max_frames)
    frames.setflags(write=False)
    return frames


def score_pair(ref_path, gen_path, *, grid: int = 40, fb_threshold: float = 1.0, min_motion: float = 1e-3,
               max_frames: int | None = None) -> dict:
    """Per-pair report row of `vmt eval motion` (the generated video is resized to the reference size)."""
    from vmt.io.video import read_video

    import os

    st = os.stat(ref_path)
    rf = _read_reference(str(ref_path), max_frames, (st.st_mtime_ns, st.st_size))
    gf, _ = read_video(gen_path, max_frames=max_frames, size=rf.shape[1:3])
    mf = motion_fidelity(rf, gf, grid=grid, fb_threshold=fb_threshold, min_motion=min_motion)
    dc = direction_check(rf, gf)
    m = {"motion_fidelity": mf.score, "best_match": mf.best_match, "direction_cosine": dc.cosine,
         "direction": dc.verdict, "tracks_ref": mf.tracks_ref, "tracks_gen": mf.tracks_gen, "steps": mf.steps,
         "ref_speed_px": dc.ref_speed_px, "gen_speed_px": dc.gen_speed_px}
    if mf.reason:
        m["reason"] = mf.reason
    return m


def summarize(items: list[dict]) -> dict:
    """Report metrics: means over the pairs that have a score, and counts."""
    ms = [i["metrics"] for i in items]

    def mean(k: str) -> float:
        v = [m[k] for m in ms if m.get(k) is not None]
        return float(np.mean(v)) if v else float("nan")

    return {"motion_fidelity": mean("motion_fidelity"), "best_match": mean("best_match"),
            "direction_cosine": mean("direction_cosine"),
            "reversed_pairs": sum(m["direction"] == "reversed" for m in ms),
            "unscored_pairs": sum(m["motion_fidelity"] is None for m in ms), "pairs": len(ms)}
