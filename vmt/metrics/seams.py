"""Seam score: how much more a video jumps at clip boundaries than between frames inside clips.

For frames x_0..x_(T-1) and boundary indices B (frame b starts a new clip, so the seam is between b-1 and b),
with the per-step change D(t) = mean |x_t - x_(t-1)| over pixels and channels:

    seam_score = mean_{b in B} D(b) / mean_{t not in B, t >= 1} D(t)

1.0 means boundaries look like any other frame step (seamless); 3.0 means seams jump three times as much as
ordinary motion. Values below 1 mean the boundaries are stiller than the rest (e.g. a repeated frame).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def frame_steps(frames) -> np.ndarray:
    """(T, ...) frames -> (T-1,) mean absolute change between consecutive frames, in float64."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim < 2 or len(x) < 2:
        raise ValueError(f"need at least 2 frames, got shape {x.shape}")
    return np.abs(np.diff(x, axis=0)).reshape(len(x) - 1, -1).mean(axis=1)


def chain_boundaries(num_frames: int, clip_frames: int, new_per_clip: int) -> list[int]:
    """Boundary frame indices of a recall chain: the first clip gives `clip_frames` frames, each next one
    `new_per_clip` (T - overlap). Frame b is the first frame contributed by a new clip."""
    if clip_frames < 1 or new_per_clip < 1:
        raise ValueError("clip_frames and new_per_clip must be >= 1")
    return list(range(clip_frames, num_frames, new_per_clip))


def seam_score(frames, boundaries: Sequence[int], eps: float = 1e-12) -> float:
    """Mean change across boundaries divided by the mean change inside clips (see the module docstring)."""
    steps = frame_steps(frames)
    b = np.asarray(sorted({int(i) for i in boundaries}), dtype=int)
    if b.size == 0:
        raise ValueError("no clip boundaries given")
    if b.min() < 1 or b.max() > len(steps):
        raise ValueError(f"boundaries must lie in 1..{len(steps)} for {len(steps) + 1} frames, got {b.tolist()}")
    at = np.zeros(len(steps), bool)
    at[b - 1] = True
    if at.all():
        raise ValueError("every step is a boundary; there are no frames inside clips to compare with")
    return float(steps[at].mean() / max(steps[~at].mean(), eps))


def seam_profile(frames, boundaries: Sequence[int]) -> dict[str, float]:
    """The score and its two parts (mean change at boundaries, inside clips), for reports."""
    steps = frame_steps(frames)
    at = np.zeros(len(steps), bool)
    at[np.asarray(list(boundaries), int) - 1] = True
    return {"seam_score": seam_score(frames, boundaries), "boundary_change": float(steps[at].mean()),
            "inside_change": float(steps[~at].mean())}


def score_video(path, *, clip_length: int, max_frames: int | None = None) -> dict:
    """Per-video report row of `vmt eval seams`: clips of `clip_length` frames back to back (boundaries at
    clip_length, 2 clip_length, ...)."""
    from vmt.io.video import read_video

    frames, _ = read_video(path, max_frames=max_frames)
    boundaries = list(range(clip_length, len(frames), clip_length))
    if not boundaries:
        raise ValueError(f"{len(frames)} frames hold no boundary of clips of {clip_length} frames")
    out = seam_profile(frames, boundaries)
    out["boundaries"] = len(boundaries)
    return out


def summarize(items: list[dict]) -> dict:
    ms = [i["metrics"] for i in items]
    out = {k: float(np.mean([m[k] for m in ms])) for k in ("seam_score", "boundary_change", "inside_change")}
    out["videos"] = len(ms)
    return out
