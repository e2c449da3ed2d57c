"""Forecast keypoints in detector coordinates: normalise each context by its own min-max, sample, undo."""

from __future__ import annotations

import numpy as np
import torch

from vmt.keypoints.data import denormalise, minmax_stats, normalise
from vmt.keypoints.model import GRUNF, SampleOptions


def normalise_windows(windows: np.ndarray, context: int, min_range: float):
    """windows (B, L, dim) in detector units -> normalised windows, lo, rng (statistics of the context only)."""
    lo, rng = minmax_stats(windows[:, :context], min_range)
    return normalise(windows, lo, rng).astype(np.float32), lo, rng


def forecast(model: GRUNF, contexts: np.ndarray, horizon: int, opts: SampleOptions, seed: int = 0,
             batch: int = 16, stats: dict | None = None, on_batch=None) -> np.ndarray:
    """contexts (B, C, dim) detector units -> samples (B, N, horizon, dim) detector units.

    Windows are processed `batch` at a time; noise comes from one CPU generator seeded with `seed`.
    """
    cfg = model.cfg
    ctx_n, lo, rng = normalise_windows(contexts, contexts.shape[1], cfg.min_range)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    device = next(model.parameters()).device
    out = []
    model.eval()
    for i in range(0, len(ctx_n), batch):
        x = torch.from_numpy(ctx_n[i : i + batch]).to(device)
        y = model.sample(x, horizon, opts, generator=gen, stats=stats).cpu().numpy()
        out.append(denormalise(y, lo[i : i + batch, None], rng[i : i + batch, None]))
        if on_batch is not None:
            on_batch(len(x))
    return np.concatenate(out).astype(np.float32)
