"""Forecast keypoints in detector coordinates: encode each window in the model's space, sample, decode.

Two encodings (`ModelConfig.param`), both affine per window, z = (x - anchor) / scale:
- 'minmax' (the paper): anchor = the context's per-value minimum, scale = its range (floored at `min_range`);
- 'residual': anchor = the last observed frame, scale = a fixed per-value scale fitted on the training data.
"""

from __future__ import annotations

import numpy as np
import torch

from vmt.keypoints.baselines import velocity_steps
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


SHRINK_GRID = tuple(i / 20 for i in range(21))   # 0, 0.05, ..., 1
VELOCITY_GRID = tuple(i / 10 for i in range(11))  # 0, 0.1, ..., 1


def shrink_gains(shrink: list[float] | None, horizon: int) -> np.ndarray:
    """Per-step factors (horizon,): `shrink` padded with its last entry (an autoregressive model serves longer
    horizons than it was calibrated on); None is all ones."""
    if shrink is None:
        return np.ones(horizon, np.float32)
    a = np.asarray(shrink, np.float32)[:horizon]
    return np.concatenate([a, np.full(horizon - len(a), a[-1], np.float32)])


def apply_shrink(samples: np.ndarray, last: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """samples (B, N, H, dim), last observed frames (B, dim), gains (H,) -> last + gains * (samples - last)."""
    base = last[:, None, None]
    return (base + gains[None, None, :, None] * (samples - base)).astype(np.float32)


def apply_velocity(samples: np.ndarray, contexts: np.ndarray, gains: np.ndarray, damping: float) -> np.ndarray:
    """samples (B, N, H, dim) + gains (H,) times the damped velocity of contexts (B, C, dim)."""
    return (samples + gains[None, None, :, None] * velocity_steps(contexts, samples.shape[2], damping)[:, None])


def fit_shrink(model: GRUNF, windows: np.ndarray, context: int, opts: SampleOptions, seed: int = 0,
               grid: tuple[float, ...] = SHRINK_GRID, batch: int = 16) -> list[float]:
    """Per-horizon-step shrinkage of `model`'s displacements that minimises the samples' mean ADE on windows
    (W, context + horizon, dim), detector units; the model's own `shrink` is ignored while fitting.

    The windows must come from identities the model was not trained on (its training windows flatter it and
    pull the factors to 1) and never from the ones it is evaluated on. ADE sums over steps, so each step's
    factor is chosen on its own: the grid value with the lowest mean keypoint distance at that step.
    """
    return fit_blend(model, windows, context, opts, 0.0, seed=seed, grid=grid, velocity_grid=(0.0,), batch=batch)[0]


def fit_blend(model: GRUNF, windows: np.ndarray, context: int, opts: SampleOptions, damping: float,
              seed: int = 0, grid: tuple[float, ...] = SHRINK_GRID,
              velocity_grid: tuple[float, ...] = VELOCITY_GRID, batch: int = 16) -> tuple[list[float], list[float]]:
    """Per-step (shrink, velocity gain) for forecasts last + s_h * (sample - last) + g_h * damped velocity:
    the pair of the two grids with the lowest mean keypoint distance over the samples at step h, on windows
    (W, context + horizon, dim) of identities the model never saw (as `fit_shrink`, which is g = 0). (s, g) =
    (0, 1) is the damped-velocity forecast, (1, 0) the model as trained."""
    horizon = windows.shape[1] - context
    pred = forecast(model, windows[:, :context], horizon, opts, seed=seed, batch=batch, shrink=False)
    last = windows[:, context - 1]
    per = 6 if model.cfg.jacobian else 2
    w, n = pred.shape[:2]
    disp = (pred - last[:, None, None]).reshape(w, n, horizon, -1, per)[..., :2]
    vel = velocity_steps(windows[:, :context], horizon, damping).reshape(w, 1, horizon, -1, per)[..., :2]
    true = (windows[:, context:] - last[:, None]).reshape(w, 1, horizon, -1, per)[..., :2]
    shrink, gains = [], []
    for h in range(horizon):
        d, v, t = disp[:, :, h], vel[:, :, h], true[:, :, h]
        errs = np.array([[np.linalg.norm(a * d + g * v - t, axis=-1).mean() for a in grid] for g in velocity_grid])
        gi, ai = np.unravel_index(int(errs.argmin()), errs.shape)
        shrink.append(float(grid[ai]))
        gains.append(float(velocity_grid[gi]))
    return shrink, gains


def forecast(model: GRUNF, contexts: np.ndarray, horizon: int, opts: SampleOptions, seed: int = 0,
             batch: int = 16, stats: dict | None = None, on_batch=None, shrink: bool = True) -> np.ndarray:
    """contexts (B, C, dim) detector units -> samples (B, N, horizon, dim) detector units.

    Windows are processed `batch` at a time; noise comes from one CPU generator seeded with `seed`. With
    `shrink` (default) the model's `cfg.shrink` factors, if any, scale the displacements from the last
    observed frame (see `apply_shrink`) and its `cfg.velocity_gain`, if any, adds that share of the damped
    velocity (`cfg.damping`); shrink=False gives the model's raw samples.
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
    out = np.concatenate(out).astype(np.float32)
    if shrink and model.cfg.shrink is not None:
        out = apply_shrink(out, contexts[:, -1].astype(np.float32), shrink_gains(model.cfg.shrink, horizon))
    if shrink and model.cfg.velocity_gain is not None:
        out = apply_velocity(out, contexts, shrink_gains(model.cfg.velocity_gain, horizon), model.cfg.damping)
    return out.astype(np.float32)
