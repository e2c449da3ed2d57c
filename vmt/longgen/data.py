"""Training data: clips from a folder of videos (via vmt.io) and synthetic moving digits.

Videos are held as uint8 arrays (T, H, W, 3); clips come out as float tensors (B, 3, L, H, W) in [-1, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vmt.errors import VmtError, VmtUsageError, param
from vmt.io.video import VIDEO_SUFFIXES

SYNTHETIC_DIGITS = "synthetic:digits"


@functools.lru_cache(maxsize=1)
def _load_digit_images() -> np.ndarray:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16, shipped with the package: no download).

    The CSV that `sklearn.datasets.load_digits` reads is parsed directly when present: importing scikit-learn
    itself costs seconds, the file a few milliseconds. Returns (N, 8, 8) float32 in [0, 1].
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise VmtError("moving digits need scikit-learn's bundled digits; install it with `pip install vmt[longgen]`")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        images = table[:, :64].reshape(-1, 8, 8)
    else:  # another layout of the package: take the public API
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.float32)
    return images / 16.0


def moving_digits(
    num_videos: int,
    num_frames: int,
    size: int = 32,
    *,
    digits_per_video: int = 1,
    digit_size: int | None = None,
    speed: tuple[float, float] = (1.0, 2.5),
    seed: int = 0,
) -> np.ndarray:
    """Coloured digits bouncing off the borders of a black canvas: (N, T, size, size, 3) uint8.

    Each digit has a random colour, start and velocity (pixels per frame, magnitude in `speed`) and is
    reflected at the canvas border; overlapping digits combine by maximum.
    """
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    images = _load_digit_images()
    d = digit_size or max(4, size // 2)
    if d > size:
        raise VmtUsageError(f"digit size {d} is larger than the canvas {size}")
    picks = rng.integers(0, len(images), (num_videos, digits_per_video))
    glyphs = F.interpolate(torch.from_numpy(images[picks.ravel()])[:, None], size=(d, d), mode="bilinear",
                           align_corners=False)[:, 0].clamp(0, 1).numpy().reshape(num_videos, digits_per_video, d, d)
    out = np.zeros((num_videos, num_frames, size, size, 3), np.float32)
    span = size - d
    for n in range(num_videos):
        for k in range(digits_per_video):
            colour = 0.35 + 0.65 * rng.random(3)
            pos = rng.random(2) * span
            ang = rng.random() * 2 * np.pi
            vel = rng.uniform(*speed) * np.array([np.cos(ang), np.sin(ang)])
            sprite = glyphs[n, k][..., None] * colour
            for t in range(num_frames):
                y, x = round(float(pos[0])), round(float(pos[1]))
                region = out[n, t, y : y + d, x : x + d]
                np.maximum(region, sprite, out=region)
                pos = pos + vel
                for i in range(2):  # reflect at the borders
                    if pos[i] < 0:
                        pos[i], vel[i] = -pos[i], -vel[i]
                    elif pos[i] > span:
                        pos[i], vel[i] = 2 * span - pos[i], -vel[i]
    return (out * 255).round().astype(np.uint8)


@dataclass
class ClipSource:
    """Videos (each (T, H, W, 3) uint8) that clips of `length` frames at a temporal stride are drawn from.

    strides: the temporal strides to pick from at random per clip (G3AN: 2 or 3; 1 keeps every frame).
    """

    videos: list[np.ndarray]
    names: list[str]
    strides: tuple[int, ...] = (1,)

    def check(self, length: int) -> None:
        """Raise a clear error if no video is long enough for a clip of `length` frames."""
        if not self.videos:
            raise VmtUsageError("no training videos were given")
        if any(s < 1 for s in self.strides):
            raise VmtUsageError(f"temporal strides must be >= 1, got {self.strides}")
        need = (length - 1) * min(self.strides) + 1
        short = [f"{n} ({len(v)} frames)" for n, v in zip(self.names, self.videos) if len(v) < need]
        if len(short) == len(self.videos):
            raise VmtUsageError(
                f"every video is shorter than one training window of {need} frames ({length} frames at stride "
                f"{min(self.strides)}): {', '.join(short[:3])}{' ...' if len(short) > 3 else ''}; use longer "
                f"videos, a smaller {param('stride')}, or a preset with fewer frames"
            )

    def sample(self, batch: int, length: int, rng: np.random.Generator) -> torch.Tensor:
        """`batch` random windows of `length` frames: (B, 3, L, H, W) float32 in [-1, 1]."""
        self.check(length)
        clips = []
        while len(clips) < batch:
            stride = int(rng.choice(self.strides))
            v = self.videos[int(rng.integers(len(self.videos)))]
            span = (length - 1) * stride + 1
            if len(v) < span:
                continue  # this video is too short for this stride; check() made sure some video fits
            t0 = int(rng.integers(0, len(v) - span + 1))
            clip = v[t0 : t0 + span : stride]
            if rng.random() < 0.5:
                clip = clip[:, :, ::-1]  # horizontal flip: cheap augmentation that keeps motion physical
            clips.append(clip)
        x = torch.from_numpy(np.ascontiguousarray(np.stack(clips))).float()
        return (x / 127.5 - 1.0).permute(0, 4, 1, 2, 3).contiguous()


def list_videos(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise VmtUsageError(f"data folder {folder} not found; give a folder of videos or {SYNTHETIC_DIGITS}")
    if not folder.is_dir():
        raise VmtUsageError(f"{folder} is not a folder; give a folder of videos or {SYNTHETIC_DIGITS}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise VmtUsageError(f"data folder {folder} has no videos ({', '.join(sorted(VIDEO_SUFFIXES))}); add some or use "
                            f"{SYNTHETIC_DIGITS}")
    return files


def load_video_folder(folder: str | Path, size: int, *, fps: float | None = None, max_frames: int | None = None,
                      strides: Sequence[int] = (1,)) -> ClipSource:
    """Decode every video in `folder` (recursively) at size x size (scale to cover + centre crop)."""
    from vmt.io.video import read_video

    videos, names = [], []
    for path in list_videos(folder):
        frames, _ = read_video(path, fps=fps, max_frames=max_frames, size=(size, size), resize="crop")
        videos.append(frames)
        names.append(path.name)
    return ClipSource(videos, names, tuple(strides))


def synthetic_source(size: int, *, num_videos: int = 256, num_frames: int = 64, seed: int = 0,
                     strides: Sequence[int] = (1,)) -> ClipSource:
    vids = moving_digits(num_videos, num_frames, size, seed=seed)
    return ClipSource(list(vids), [f"digits-{i}" for i in range(num_videos)], tuple(strides))


def open_source(data: str, size: int, *, strides: Sequence[int] = (1,), fps: float | None = None,
                max_frames: int | None = None, seed: int = 0) -> ClipSource:
    """`synthetic:digits` or a folder of videos."""
    if data.startswith("synthetic:"):
        if data != SYNTHETIC_DIGITS:
            raise VmtUsageError(f"unknown synthetic data {data!r}; use {SYNTHETIC_DIGITS}")
        return synthetic_source(size, seed=seed, strides=strides)
    return load_video_folder(data, size, fps=fps, max_frames=max_frames, strides=strides)
