"""Temporal consistency of one video: flow-warping error with an occlusion mask, consecutive-frame SSIM/PSNR.

Flow-warping error (as in Lai et al., "Learning Blind Video Temporal Consistency", 2018): for each pair
(t, t+1), optical flow t -> t+1 (OpenCV DIS, weight-free) warps frame t+1 back onto frame t;
    E_t = sum_x M_t(x) ||I_t(x) - I_{t+1}(x + f(x))||^2 / sum_x M_t(x)
with RGB in [0, 1] (squared norm over the 3 channels) and M_t the non-occlusion mask: pixels whose
forward-backward flows are consistent (|f + b(x + f)|^2 <= 0.01 (|f|^2 + |b(x + f)|^2) + 0.5) and land
inside the frame. The video's score is the mean of E_t over pairs (lower is more consistent).

SSIM: Wang et al. 2004, Gaussian window sigma 1.5 (11 x 11), K1 = 0.01, K2 = 0.03, on each RGB channel,
averaged; the 5-pixel border where the window does not fit is left out. PSNR: 10 log10(255^2 / MSE) over
all pixels and channels, capped at `PSNR_CAP` dB for identical frames (JSON has no infinity).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from vmt.errors import VmtError

PSNR_CAP = 100.0
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover
        raise VmtError("the temporal metrics need OpenCV: pip install 'vmt[metrics]'") from e
    return cv2


def psnr(a: np.ndarray, b: np.ndarray, *, peak: float = 255.0) -> float:
    """PSNR in dB between two uint8 images (H, W, C); capped at PSNR_CAP for identical images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, 10.0 * np.log10(peak * peak / mse))


def ssim(a: np.ndarray, b: np.ndarray, *, peak: float = 255.0) -> float:
    """Mean SSIM between two images (H, W) or (H, W, C), per channel then averaged.

    Computed in float32 on values centred at peak/2 (SSIM is shift-free in its variances, and centring
    keeps E[x^2] - E[x]^2 from cancelling); agrees with a float64 reference to ~1e-5."""
    cv2 = _cv2()
    k, r = 2 * SSIM_RADIUS + 1, SSIM_RADIUS
    if a.shape[0] <= 2 * r or a.shape[1] <= 2 * r:
        raise VmtError(f"SSIM needs frames larger than {k}x{k}, got {a.shape[:2]}")
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    half = np.float32(peak / 2)
    x, y = a.astype(np.float32) - half, b.astype(np.float32) - half

    def blur(z):
        return cv2.GaussianBlur(z, (k, k), SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    # the means enter the luminance term un-centred: mu = m + peak/2
    ux, uy = mx + half, my + half
    s = ((2 * ux * uy + c1) * (2 * sxy + c2)) / ((ux * ux + uy * uy + c1) * (sxx + syy + c2))
    s = s[r:-r, r:-r]
    return float(s.reshape(s.shape[0], s.shape[1], -1).mean(axis=(0, 1), dtype=np.float64).mean())


@functools.lru_cache(maxsize=2)
def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y), each (h, w) float32: remap needs absolute positions."""
    return tuple(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))


def warp_error_pair(f0: np.ndarray, f1: np.ndarray, g0: np.ndarray, g1: np.ndarray, dis) -> tuple[float, float]:
    """Warping error of one pair (frames (H, W, 3) uint8, grays (H, W) uint8) and the non-occluded fraction."""
    cv2 = _cv2()
    h, w = g0.shape
    fw = dis.calc(g0, g1, None)
    bw = dis.calc(g1, g0, None)
    gx, gy = _pixel_grid(h, w)
    mx, my = gx + fw[..., 0], gy + fw[..., 1]
    bw_at = cv2.remap(bw, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    warped = cv2.remap(f1, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    s = fw + bw_at
    consistent = np.einsum("hwc,hwc->hw", s, s) <= 0.01 * (
        np.einsum("hwc,hwc->hw", fw, fw) + np.einsum("hwc,hwc->hw", bw_at, bw_at)) + 0.5
    mask = consistent & (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
    n = int(mask.sum())
    if n == 0:
        return float("nan"), 0.0
    diff = cv2.absdiff(f0, warped)[mask].astype(np.float32) / 255.0
    return float(np.einsum("nc,nc->", diff, diff, dtype=np.float64) / n), n / mask.size


@dataclass
class TemporalConsistency:
    warp_error: float  # mean flow-warping error over pairs ([0,1] RGB, squared norm over channels)
    valid_fraction: float  # mean non-occluded fraction of pixels
    ssim: float  # mean consecutive-frame SSIM
    psnr: float  # mean consecutive-frame PSNR (dB), capped at PSNR_CAP
    pairs: int


def dis_flow(preset: str = "medium"):
    """An OpenCV DIS optical flow object (weight-free dense flow)."""
    cv2 = _cv2()
    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    if preset not in presets:
        raise VmtError(f"unknown flow preset {preset!r}; use one of {', '.join(presets)}")
    return cv2.DISOpticalFlow_create(presets[preset])


def temporal_consistency(frames: np.ndarray, *, flow_preset: str = "medium", with_warp: bool = True,
                         on_pair=None) -> TemporalConsistency:
    """Temporal consistency metrics of a video (T, H, W, 3) uint8 over its T-1 consecutive pairs."""
    from vmt.metrics.motion import to_gray

    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or len(f) < 2:
        raise VmtError(f"temporal metrics need a video (T>=2, H, W, 3), got shape {f.shape}")
    gray = to_gray(f)
    dis = dis_flow(flow_preset) if with_warp else None
    errs, fracs, ss, ps = [], [], [], []
    for t in range(len(f) - 1):
        if dis is not None:
            e, frac = warp_error_pair(f[t], f[t + 1], gray[t], gray[t + 1], dis)
            errs.append(e)
            fracs.append(frac)
        ss.append(ssim(f[t], f[t + 1]))
        ps.append(psnr(f[t], f[t + 1]))
        if on_pair is not None:
            on_pair()
    we = float(np.nanmean(errs)) if errs and not np.all(np.isnan(errs)) else float("nan")
    return TemporalConsistency(we, float(np.mean(fracs)) if fracs else float("nan"), float(np.mean(ss)),
                               float(np.mean(ps)), len(f) - 1)


# ---------------------------------------------------------------- VBench-style motion checks (weight-free)

def flicker_score(frames: np.ndarray) -> tuple[float, float]:
    """VBench's temporal flickering on frame differences: mean absolute difference D between consecutive
    frames (0-255 levels, over pixels, channels and pairs) and the score (255 - D) / 255 in [0, 1] (1: no
    change at all; VBench reports it on static-camera clips, where change is flicker). Returns (score, D)."""
    f = np.asarray(frames)
    if f.ndim != 4 or len(f) < 2:
        raise VmtError(f"flicker needs a video (T>=2, H, W, 3), got shape {f.shape}")
    d = float(np.mean([np.abs(f[t + 1].astype(np.int16) - f[t].astype(np.int16)).mean()
                       for t in range(len(f) - 1)]))
    return (255.0 - d) / 255.0, d


@dataclass
class DynamicDegree:
    dynamic: bool  # VBench's verdict: enough frame pairs with large motion
    pair_magnitudes: list[float]  # per pair: mean flow magnitude (px) of the top 5% pixels
    threshold_px: float  # 6 px at a 256-pixel short side, scaled with the short side
    moving_pairs: int
    needed_pairs: int


def dynamic_degree(frames: np.ndarray, *, flow_preset: str = "medium", top: float = 0.05,
                   base_threshold: float = 6.0) -> DynamicDegree:
    """VBench's dynamic degree with classical optical flow: per consecutive pair, the mean magnitude of the
    largest `top` fraction of flow vectors; a pair moves when that exceeds 6 px x (short side / 256); the
    video is dynamic when at least round(4 T / 16) pairs move (T frames). VBench uses RAFT (learned) on
    frames resampled to ~8 fps; here OpenCV DIS (weight-free) on the frames given: DIS is coarse-to-fine
    patch matching, so it underestimates very large or textureless motion that RAFT recovers, and the verdict
    depends on the frame rate you pass (read with `read_video(path, fps=8)` first to match VBench)."""
    from vmt.metrics.motion import to_gray

    f = np.asarray(frames)
    if f.ndim != 4 or len(f) < 2:
        raise VmtError(f"dynamic degree needs a video (T>=2, H, W, 3), got shape {f.shape}")
    gray = to_gray(f)
    dis = dis_flow(flow_preset)
    mags = []
    for t in range(len(f) - 1):
        flow = dis.calc(gray[t], gray[t + 1], None)
        m = np.sort(np.linalg.norm(flow, axis=-1).ravel())
        k = max(1, int(round(top * m.size)))
        mags.append(float(m[-k:].mean()))
    thr = base_threshold * min(f.shape[1:3]) / 256.0
    moving = int(sum(m > thr for m in mags))
    need = max(1, round(4 * len(f) / 16.0))
    return DynamicDegree(moving >= need, mags, thr, moving, need)


def score_video(path, *, flow_preset: str = "medium", max_frames: int | None = None) -> dict:
    """Per-video report row of `vmt eval temporal`."""
    from vmt.io.video import read_video

    frames, _ = read_video(path, max_frames=max_frames)
    tc = temporal_consistency(frames, flow_preset=flow_preset)
    fl, diff = flicker_score(frames)
    dd = dynamic_degree(frames, flow_preset=flow_preset)
    return {"warp_error": tc.warp_error, "ssim": tc.ssim, "psnr": tc.psnr, "valid_fraction": tc.valid_fraction,
            "pairs": tc.pairs, "flicker": fl, "mean_abs_diff": diff, "dynamic": dd.dynamic,
            "moving_pairs": dd.moving_pairs}


def summarize(items: list[dict]) -> dict:
    """Report metrics: means over videos; `dynamic_degree` = fraction of videos VBench would call dynamic."""
    ms = [i["metrics"] for i in items]
    out = {k: float(np.nanmean([m[k] for m in ms])) for k in ("warp_error", "ssim", "psnr", "valid_fraction",
                                                               "flicker")}
    out["dynamic_degree"] = float(np.mean([m["dynamic"] for m in ms]))
    out["videos"] = len(ms)
    return out
