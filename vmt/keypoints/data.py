"""Keypoint sequence files, layouts, windows and per-window min-max normalisation (numpy only).

File format (input of `train` and `run`): npz with `names` (S,) str, `lengths` (S,) int, `value`
(sum(lengths), K, 2) float32 positions, optional `jacobian` (sum(lengths), K, 2, 2); sequences are
concatenated in the order of `names`. Positions stay in the detector's coordinates; normalisation is undone
on output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmt.errors import VmtError, VmtUsageError, param


@dataclass(frozen=True)
class Layout:
    """K keypoints, each a 2-d position and optionally a 2x2 jacobian: `dim` = K*6 or K*2 values a frame."""

    num_kp: int
    jacobian: bool

    @property
    def dim(self) -> int:
        return self.num_kp * (6 if self.jacobian else 2)

    def describe(self) -> str:
        return f"{self.num_kp} keypoints {'with' if self.jacobian else 'without'} jacobians ({self.dim} values)"

    def flatten(self, value: np.ndarray, jacobian: np.ndarray | None) -> np.ndarray:
        """(..., K, 2) [+ (..., K, 2, 2)] -> (..., dim): per keypoint [x, y, j00, j01, j10, j11]."""
        if not self.jacobian:
            return value.reshape(*value.shape[:-2], self.dim)
        parts = np.concatenate([value, jacobian.reshape(*jacobian.shape[:-3], self.num_kp, 4)], axis=-1)
        return parts.reshape(*value.shape[:-2], self.dim)

    def unflatten(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(..., dim) -> (..., K, 2) positions and (..., K, 2, 2) jacobians (None without jacobians)."""
        lead = flat.shape[:-1]
        if not self.jacobian:
            return flat.reshape(*lead, self.num_kp, 2), None
        per = flat.reshape(*lead, self.num_kp, 6)
        return per[..., :2], per[..., 2:].reshape(*lead, self.num_kp, 2, 2)


@dataclass
class Sequences:
    """Keypoint sequences of one file: `flat[i]` is (T_i, layout.dim) float32."""

    names: list[str]
    flat: list[np.ndarray]
    layout: Layout

    def __len__(self) -> int:
        return len(self.names)


def load_sequences(path: str | os.PathLike) -> Sequences:
    """Read and validate a keypoint npz; every problem is a one-line VmtUsageError naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise VmtUsageError(f"keypoint file {path} not found")
    import zipfile

    # np.load reads a non-zip file as a pickle (and then complains about pickles); say what is wrong instead.
    if path.stat().st_size == 0:
        raise VmtUsageError(f"{path} is empty (0 bytes); a keypoint file is an .npz written by numpy.savez")
    if not zipfile.is_zipfile(path):
        raise VmtUsageError(f"{path} is not an .npz archive (not a zip file); a keypoint file is written by "
                            "numpy.savez with names, lengths, value (and optionally jacobian)")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as e:  # a damaged archive, or members that are not plain arrays
        raise VmtUsageError(f"{path} is not a readable npz of plain arrays ({type(e).__name__}); re-save it with "
                            "numpy.savez") from e
    if not arrays:
        raise VmtUsageError(f"{path} holds no arrays; a keypoint file needs names, lengths, value "
                            "(and optionally jacobian)")
    for key in ("names", "lengths", "value"):
        if key not in arrays:
            raise VmtUsageError(f"{path} lacks the array {key!r}; a keypoint file needs names, lengths, value "
                                "(and optionally jacobian)")
    names = [str(n) for n in arrays["names"].reshape(-1)]
    lengths = arrays["lengths"].reshape(-1)
    value = arrays["value"]
    if len(names) != len(lengths):
        raise VmtUsageError(f"{path}: {len(names)} names but {len(lengths)} lengths; they must match")
    if not np.issubdtype(lengths.dtype, np.integer) or (lengths < 1).any():
        raise VmtUsageError(f"{path}: lengths must be positive integers")
    if value.ndim != 3 or value.shape[-1] != 2:
        raise VmtUsageError(f"{path}: value has shape {value.shape}; expected (frames, K, 2) positions")
    if int(lengths.sum()) != value.shape[0]:
        raise VmtUsageError(f"{path}: lengths sum to {int(lengths.sum())} but value has {value.shape[0]} frames")
    jac = arrays.get("jacobian")
    if jac is not None and jac.shape != (*value.shape, 2):
        raise VmtUsageError(f"{path}: jacobian has shape {jac.shape}; expected {(*value.shape, 2)}")
    for key, arr in (("value", value), ("jacobian", jac)):
        if arr is not None and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).reshape(arr.shape[0], -1).any(1).sum())
            raise VmtUsageError(f"{path}: {key} has NaN or infinite entries in {bad} frames; "
                                "interpolate or drop those frames first")
    layout = Layout(num_kp=value.shape[1], jacobian=jac is not None)
    flat = layout.flatten(value.astype(np.float32), None if jac is None else jac.astype(np.float32))
    ends = np.cumsum(lengths)
    seqs = [flat[e - n : e] for n, e in zip(lengths, ends)]
    return Sequences(names=names, flat=seqs, layout=layout)


def save_sequences(path: str | os.PathLike, names: list[str], value: list[np.ndarray],
                   jacobian: list[np.ndarray] | None = None) -> None:
    """Write sequences in the input format (value[i]: (T_i, K, 2); jacobian[i]: (T_i, K, 2, 2))."""
    arrays = {"names": np.asarray(names), "lengths": np.asarray([len(v) for v in value], dtype=np.int64),
              "value": np.concatenate(value).astype(np.float32)}
    if jacobian is not None:
        arrays["jacobian"] = np.concatenate(jacobian).astype(np.float32)
    np.savez(path, **arrays)


def identity_of(name: str) -> str:
    """VoxCeleb clip names start with the speaker id (`id10283#...`); other names are their own identity."""
    for sep in ("#", "_", "/"):
        if sep in name:
            return name.split(sep, 1)[0]
    return name


def split_by_identity(seqs: Sequences, val_identities: list[str]) -> tuple[Sequences, Sequences]:
    """Split sequences so that no identity is on both sides."""
    known = {identity_of(n) for n in seqs.names}
    missing = [v for v in val_identities if v not in known]
    if missing:
        raise VmtUsageError(f"validation identities {missing} not in the data; known: {sorted(known)}")
    tr = [i for i, n in enumerate(seqs.names) if identity_of(n) not in val_identities]
    va = [i for i, n in enumerate(seqs.names) if identity_of(n) in val_identities]
    if not tr:
        raise VmtUsageError("every sequence is a validation identity; leave at least one identity for training")
    pick = lambda idx: Sequences([seqs.names[i] for i in idx], [seqs.flat[i] for i in idx], seqs.layout)
    return pick(tr), pick(va)


def make_windows(seqs: Sequences, length: int, stride: int, frame_step: int = 1) -> tuple[np.ndarray, list[int]]:
    """Windows of `length` frames every `stride` frames (after keeping every `frame_step`-th frame).

    Returns (W, length, dim) float32 and the sequence index of each window. stride == length gives the
    paper's non-overlapping windows.
    """
    out, owner = [], []
    for i, s in enumerate(seqs.flat):
        s = s[::frame_step]
        for start in range(0, len(s) - length + 1, stride):
            out.append(s[start : start + length])
            owner.append(i)
    if not out:
        longest = max(len(s[::frame_step]) for s in seqs.flat)
        raise VmtUsageError(f"no sequence has {length} frames (context + horizon) after "
                            f"{param('frame_step')} {frame_step}; the longest has {longest}: shorten "
                            f"{param('context')}/{param('horizon')}")
    return np.stack(out).astype(np.float32), owner


def minmax_stats(context: np.ndarray, min_range: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension min and range over the context frames (axis -2), range floored at `min_range`.

    The floor keeps near-constant dimensions from blowing up the future frames (which the context's
    statistics never saw).
    """
    lo = context.min(axis=-2, keepdims=True)
    rng = np.maximum(context.max(axis=-2, keepdims=True) - lo, min_range)
    return lo, rng


def normalise(x: np.ndarray, lo: np.ndarray, rng: np.ndarray) -> np.ndarray:
    return (x - lo) / rng


def denormalise(x: np.ndarray, lo: np.ndarray, rng: np.ndarray) -> np.ndarray:
    return x * rng + lo


def save_predictions(path: str | os.PathLike, names: list[str], flat: np.ndarray, layout: Layout,
                     context: int, horizon: int, start: np.ndarray | None = None) -> None:
    """Write `run` predictions: flat (S, N, H, dim) -> value (S, N, H, K, 2) [+ jacobian (S, N, H, K, 2, 2)].

    start (S,): index in each input sequence of the first forecast frame (context = the `context` frames
    before it), so `vmt eval keypoints` aligns forecasts with the truth; recorded only when it lies inside
    the input (a forecast past the end has no truth)."""
    value, jac = layout.unflatten(flat)
    arrays = {"names": np.asarray(names), "value": value.astype(np.float32),
              "context": np.asarray(context, dtype=np.int64), "horizon": np.asarray(horizon, dtype=np.int64)}
    if jac is not None:
        arrays["jacobian"] = jac.astype(np.float32)
    if start is not None:
        arrays["start"] = np.asarray(start, dtype=np.int64)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def check_context(seqs: Sequences, context: int) -> None:
    short = [(n, len(s)) for n, s in zip(seqs.names, seqs.flat) if len(s) < context]
    if short:
        n, t = short[0]
        raise VmtUsageError(f"sequence {n!r} has {t} frames, fewer than {param('context')} {context} "
                            f"({len(short)} such sequences); give longer sequences or a smaller "
                            f"{param('context')}")


def require(cond: bool, message: str) -> None:
    if not cond:
        raise VmtError(message)
