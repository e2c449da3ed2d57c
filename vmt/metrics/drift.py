"""Drift of a long video made of segments: how far each segment's colour and sharpness have wandered from the
first segment's, and how much each boundary jumps.

For segments S_0, S_1, ... of `segment_frames` frames each (the last may be shorter):

    delta_e[j]   = CIE76 distance between the mean CIE Lab colour of S_j and of S_0 (1 is about the smallest
                   difference a person sees side by side; 0 for the first segment)
    sharpness[j] = mean over S_j's frames of the variance of the Laplacian of the grey image, divided by S_0's
                   (1 = as sharp as the start; detail washing out drives it below 1)
    seam[b]      = the change across boundary b (mean |x_b - x_(b-1)|) over the mean change between
                   consecutive frames inside segments (1.0 is seamless; see vmt.metrics.seams)

Colour is compared as each segment's mean, not pixel by pixel: content moves between segments, colour casts
and exposure drift do not. `match_colour` is the matching drift control: it gives a frame the per-channel Lab
mean and spread of an anchor frame (Reinhard et al.'s colour transfer in Lab).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _cv2():
    import cv2

    return cv2


def to_lab(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 RGB -> float32 CIE Lab (L in [0, 100], a and b about [-128, 127]), D65."""
    cv2 = _cv2()
    x = np.asarray(frames, dtype=np.float32) / 255.0
    flat = x.reshape(-1, x.shape[-3], x.shape[-2], 3)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB) for f in flat]).reshape(x.shape)


def from_lab(lab: np.ndarray) -> np.ndarray:
    """Inverse of `to_lab`: float Lab (H, W, 3) -> uint8 RGB, rounded and clipped."""
    cv2 = _cv2()
    rgb = cv2.cvtColor(np.asarray(lab, dtype=np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def mean_lab(frames: np.ndarray) -> np.ndarray:
    """(3,) mean Lab colour of frames (..., H, W, 3) uint8."""
    return to_lab(frames).reshape(-1, 3).mean(0).astype(np.float64)


def delta_e76(lab_a: np.ndarray, lab_b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(lab_a, np.float64) - np.asarray(lab_b, np.float64)))


def laplacian_variance(frame: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (float64; larger = more fine detail)."""
    cv2 = _cv2()
    grey = cv2.cvtColor(np.ascontiguousarray(frame, dtype=np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def match_colour(frame: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """`frame` (H, W, 3) uint8 with the per-channel Lab mean and standard deviation of `anchor` (any size):
    the conditioning frame of the next segment brought back to the first frame's colours before it is
    encoded. A flat channel keeps its spread (no division by ~0)."""
    lab, ref = to_lab(frame), to_lab(anchor)
    mu, sd = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    mu_r, sd_r = ref.reshape(-1, 3).mean(0), ref.reshape(-1, 3).std(0)
    scale = np.where(sd > 1e-3, sd_r / np.maximum(sd, 1e-3), 1.0)
    return from_lab((lab - mu) * scale + mu_r)


@dataclass
class DriftReport:
    """Per segment and per boundary numbers of one video (see the module docstring)."""

    segment_frames: int
    segments: int
    delta_e: list[float]
    sharpness: list[float]
    seams: list[float]
    max_delta_e: float
    final_delta_e: float
    final_sharpness: float
    mean_seam: float

    def as_dict(self) -> dict:
        return asdict(self)


def drift(frames: np.ndarray, segment_frames: int, overlap: int = 0) -> DriftReport:
    """Drift of frames (T, H, W, 3) uint8 cut into segments: the first of `segment_frames` frames, each next
    one of `segment_frames - overlap` (a recall chain conditioned on the last frame of the segment before,
    whose frame is not repeated: overlap 1). Raises ValueError when there are fewer than two segments or a
    segment has fewer than two frames to measure motion in."""
    from vmt.metrics.seams import chain_boundaries, frame_steps

    frames = np.asarray(frames)
    n = len(frames)
    if segment_frames < 2:
        raise ValueError(f"segments need at least 2 frames, got {segment_frames}")
    if not 0 <= overlap <= segment_frames - 2:
        raise ValueError(f"overlap must be in 0..{segment_frames - 2} for segments of {segment_frames}, got {overlap}")
    starts = [0, *chain_boundaries(n, segment_frames, segment_frames - overlap)]
    if len(starts) < 2:
        raise ValueError(f"{n} frames hold one segment of {segment_frames}; drift needs at least two")
    segs = [frames[a:b] for a, b in zip(starts, [*starts[1:], n])]
    if len(segs[-1]) < 2:  # a one-frame tail has no inside motion and a noisy colour mean: part of the last
        segs[-2:] = [np.concatenate(segs[-2:])]
        starts = starts[:-1]
    labs = [mean_lab(s) for s in segs]
    sharp = [float(np.mean([laplacian_variance(f) for f in s])) for s in segs]
    steps = frame_steps(frames)  # steps[t - 1] = change from frame t - 1 to t
    boundary = np.zeros(len(steps), bool)
    boundary[np.asarray(starts[1:]) - 1] = True
    inside = float(steps[~boundary].mean())
    seams = [float(steps[b - 1] / max(inside, 1e-12)) for b in starts[1:]]
    delta_e = [delta_e76(lab, labs[0]) for lab in labs]
    sharpness = [s / max(sharp[0], 1e-12) for s in sharp]
    return DriftReport(segment_frames, len(segs), delta_e, sharpness, seams, max(delta_e), delta_e[-1],
                       sharpness[-1], float(np.mean(seams)))


def plot_drift(path, videos: list[tuple[str, dict]]) -> None:
    """A PNG (written atomically) of delta E, relative sharpness and seam score per segment, one line per
    video: `videos` are (name, DriftReport.as_dict()) pairs."""
    import matplotlib

    matplotlib.use("Agg")  # no display: a file
    import matplotlib.pyplot as plt

    from vmt.io.atomic import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
    for name, m in videos:
        segs = range(1, len(m["delta_e"]) + 1)
        axes[0].plot(segs, m["delta_e"], marker="o", label=name)
        axes[1].plot(segs, m["sharpness"], marker="o")
        axes[2].plot(range(1, len(m["seams"]) + 1), m["seams"], marker="o")
    for ax, title, ref in zip(axes, ("colour shift from segment 1 (delta E)", "sharpness / segment 1",
                                     "seam score per boundary (1 = seamless)"), (None, 1.0, 1.0)):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("boundary" if "seam" in title else "segment")
        if ref is not None:
            ax.axhline(ref, color="grey", lw=0.8, ls="--")
    if len(videos) <= 8:
        axes[0].legend(fontsize=7)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
