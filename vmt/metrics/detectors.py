"""Feature detectors for FVD / FID / IS, loaded from TorchScript files the user provides.

No weights can be downloaded here. The detectors are the ones of the common protocols:
- I3D (Kinetics-400) as `i3d_torchscript.pt` of the StyleGAN-V FVD code: input (N, 3, 16, 224, 224) float in
  [-1, 1]; called with `rescale=False, resize=False, return_features=True` (400-d logits before softmax).
- Inception-v3 as `inception-2015-12-05.pt` of the StyleGAN2-ADA FID code: input (N, 3, H, W) float in
  [0, 255] (resized to 299 inside); `return_features=True` gives the 2048-d pool features and
  `no_output_bias=True` the class probabilities used by IS.
A TorchScript file whose `forward` takes only the input is called as `forward(x)`.

Lookup order for a detector: the path given on the command line, then $VMT_DETECTORS/<file>, then
~/.cache/vmt/detectors/<file>.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vmt.errors import VmtError, VmtUsageError, param


@dataclass(frozen=True)
class DetectorSpec:
    """What a metric needs: the conventional file name, the parameter that passes the file, and how to call
    it."""

    kind: str
    filename: str
    option: str
    metric: str
    feature_kwargs: dict = field(default_factory=dict)


I3D = DetectorSpec("i3d", "i3d_torchscript.pt", "i3d", "FVD",
                   {"rescale": False, "resize": False, "return_features": True})
INCEPTION = DetectorSpec("inception", "inception-2015-12-05.pt", "inception", "FID/IS",
                         {"return_features": True})

I3D_FRAMES = 16
I3D_SIZE = 224
INCEPTION_SIZE = 299


def default_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("VMT_DETECTORS"):
        dirs.append(Path(os.environ["VMT_DETECTORS"]))
    dirs.append(Path.home() / ".cache" / "vmt" / "detectors")
    return dirs


def find_detector(spec: DetectorSpec, path: str | os.PathLike | None) -> Path:
    """Resolve the detector file or raise one line naming the file and the option that passes it."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise VmtUsageError(f"{spec.metric} needs the {spec.kind} detector {spec.filename}; {p} was not found "
                                f"(pass the TorchScript file with {param(spec.option)} PATH)")
        return p
    for d in default_dirs():
        if (d / spec.filename).is_file():
            return d / spec.filename
    where = " or ".join(str(d / spec.filename) for d in default_dirs())
    raise VmtUsageError(f"{spec.metric} needs the {spec.kind} detector {spec.filename}, not found at {where}; "
                        f"pass it with {param(spec.option)} PATH")


class Detector:
    """A loaded TorchScript detector; `features(batch)` returns float64 numpy (N, D)."""

    def __init__(self, spec: DetectorSpec, path: Path, device: str = "cpu"):
        import torch

        self.spec, self.path, self.device = spec, path, torch.device(device)
        try:
            self.module = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as e:  # a corrupt or non-TorchScript file
            raise VmtError(f"cannot load {spec.kind} detector {path} as TorchScript: "
                           f"{str(e).strip().splitlines()[0]}") from e
        try:
            names = {a.name for a in self.module.forward.schema.arguments}
        except (AttributeError, RuntimeError):  # a module without a scripted forward schema
            names = set()
        self.accepts = names

    def _kwargs(self, wanted: dict) -> dict:
        return {k: v for k, v in wanted.items() if k in self.accepts}

    def __call__(self, x, **kwargs):
        import torch

        with torch.no_grad():
            out = self.module(x.to(self.device), **self._kwargs(kwargs))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().to("cpu", torch.float64).reshape(len(x), -1).numpy()

    def features(self, x) -> np.ndarray:
        return self(x, **self.spec.feature_kwargs)

    def probabilities(self, x) -> np.ndarray:
        """Class probabilities for IS (softmax applied when the output is not already a distribution)."""
        p = self(x, no_output_bias=True)
        if p.min() < 0 or not np.allclose(p.sum(1), 1.0, atol=1e-3):
            p = np.exp(p - p.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
        return p


def load_detector(spec: DetectorSpec, path: str | os.PathLike | None, device: str = "cpu") -> Detector:
    return Detector(spec, find_detector(spec, path), device)


def resize_center_crop(frames: np.ndarray, size: int):
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float32 in [0, 255]: short side to `size` (bilinear,
    antialiased), then a centre crop. Frames already of that size pass unchanged."""
    import torch
    import torch.nn.functional as F

    arr = np.ascontiguousarray(frames)
    if not arr.flags.writeable:  # decoded frames are read-only views of ffmpeg's buffer
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x.clamp(0, 255)


def i3d_clips(frames: np.ndarray, *, num_frames: int = I3D_FRAMES, size: int = I3D_SIZE, clips: str = "first"):
    """One video (T, H, W, 3) uint8 -> I3D input (C, 3, num_frames, size, size) float32 in [-1, 1].

    clips: "first" takes the first `num_frames` frames (the StyleGAN-V protocol: one clip per video);
    "all" takes every non-overlapping clip. A video shorter than `num_frames` is an error.
    """
    if len(frames) < num_frames:
        raise VmtError(f"video has {len(frames)} frames; FVD clips need {num_frames}")
    if clips == "first":
        starts = [0]
    elif clips == "all":
        starts = list(range(0, len(frames) - num_frames + 1, num_frames))
    else:
        raise VmtUsageError(f"unknown clip mode {clips!r}; use 'first' or 'all'")
    out = []
    for s in starts:
        x = resize_center_crop(frames[s : s + num_frames], size) / 127.5 - 1.0  # (T, 3, S, S)
        out.append(x.permute(1, 0, 2, 3))
    import torch

    return torch.stack(out)


def inception_frames(frames: np.ndarray, *, size: int = INCEPTION_SIZE, stride: int = 1):
    """Frames (T, H, W, 3) uint8 -> Inception input (T', 3, size, size) float32 in [0, 255]."""
    return resize_center_crop(frames[::stride], size)


def batched_features(detector: Detector, inputs: Iterable, batch_size: int = 8) -> np.ndarray:
    """Run the detector over an iterable of input tensors (each (n, ...)) in batches -> (N, D) float64."""
    import torch

    feats, pending, count = [], [], 0

    def flush() -> None:
        nonlocal pending, count
        if pending:
            feats.append(detector.features(torch.cat(pending)))
            pending, count = [], 0

    for x in inputs:
        for chunk in x.split(batch_size):
            pending.append(chunk)
            count += len(chunk)
            if count >= batch_size:
                flush()
    flush()
    if not feats:
        raise VmtError("no inputs reached the detector")
    return np.concatenate(feats)


def inception_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) from class probabilities (N, C); mean and std over `splits`."""
    p = np.asarray(probs, np.float64)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-12, None)) - np.log(np.clip(py, 1e-12, None)))).sum(1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))



def video_features(path, detector: Detector, kind: str, *, num_frames: int = I3D_FRAMES, size: int = I3D_SIZE,
                   clips: str = "first", stride: int = 1, max_frames: int | None = None, batch_size: int = 8,
                   probabilities: list | None = None) -> np.ndarray:
    """Detector features of one video file for FVD (`kind="fvd"`: I3D clips) or FID (`"fid"`: Inception
    frames, every `stride`-th). With `probabilities` (a list), FID also appends the class probabilities of
    each batch (for the Inception Score)."""
    from vmt.io.video import read_video

    if kind == "fvd":
        frames, _ = read_video(path, max_frames=num_frames if clips == "first" else None)
        x = i3d_clips(frames, num_frames=num_frames, size=size, clips=clips)
    else:
        frames, _ = read_video(path, max_frames=max_frames)
        x = inception_frames(frames, stride=stride)
        if probabilities is not None:
            probabilities.extend(detector.probabilities(c) for c in x.split(batch_size))
    return batched_features(detector, [x], batch_size)
