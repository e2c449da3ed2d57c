"""Forecast keypoints in detector coordinates: encode each window in the model's space, sample, decode.

Two encodings (`ModelConfig.param`), both affine per window, z = (x - anchor) / scale:
- 'minmax' (the paper): anchor = the context's per-value minimum, scale = its range (floored at `min_range`);
- 'residual': anchor = the last observed frame, scale = a fixed per-value scale fitted on the training data.
"""

from __future__ import annotations

import numpy as np
import torch

from vmt.keypoints.data import denormalise, minmax_stats, normalise
from vmt.keypoints.model import GRUNF, ModelConfig, SampleOptions


def normalise_windows(windows: np.ndarray, context: int, min_range: float):
    """windows (B, L, dim) in detector units -> normalised windows, lo, rng (statistics of the context only)."""
    lo, rng = minmax_stats(windows[:, :context], min_range)
    return normalise(windows, lo, rng).astype(np.float32), lo, rng


def fit_residual_scale(windows: np.ndarray, context: int, floor: float = 1e-3) -> list[float]:
    """Per-value RMS of the displacement from the last context frame over windows (W, L, dim), floored."""
    disp = windows - windows[:, context - 1 : context]
    return np.maximum(np.sqrt((disp**2).mean(axis=(0, 1))), floor).astype(float).tolist()


def encode_windows(cfg: ModelConfig, windows: np.ndarray, context: int):
    """windows (B, L, dim) detector units -> (z (B, L, dim) float32, anchor (B, 1, dim), scale (B|1, 1, dim)).

    Only the first `context` frames decide the anchor and scale, so the future never leaks into them.
    """
    if cfg.param == "residual":
        anchor = windows[:, context - 1 : context]
        scale = np.asarray(cfg.residual_scale, np.float32)[None, None]
        return ((windows - anchor) / scale).astype(np.float32), anchor, scale
    return normalise_windows(windows, context, cfg.min_range)


def forecast(model: GRUNF, contexts: np.ndarray, horizon: int, opts: SampleOptions, seed: int = 0,
             batch: int = 16, stats: dict | None = None, on_batch=None) -> np.ndarray:
    """contexts (B, C, dim) detector units -> samples (B, N, horizon, dim) detector units.

    Windows are processed `batch` at a time; noise comes from one CPU generator seeded with `seed`.
    """
    ctx_n, lo, rng = encode_windows(model.cfg, contexts, contexts.shape[1])
    rng = np.broadcast_to(rng, lo.shape)
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
