"""The trivial keypoint forecasts a forecaster must beat: zero, constant and damped velocity (numpy only).

Arrays are (B, frames, dim) in any units: the forecast of a window is made from its last two observed frames.
"""

from __future__ import annotations

import numpy as np

DAMPING_GRID = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)


def velocity_steps(contexts: np.ndarray, horizon: int, damping: float) -> np.ndarray:
    """contexts (B, C, dim) -> (B, horizon, dim): v * sum_{i=1..h} damping^i with v = x_{C-1} - x_{C-2}, the
    damped-velocity displacement from the last observed frame (damping 0: none; 1: constant velocity).
    Float32, or float64 for float64 contexts."""
    dtype = np.result_type(contexts.dtype, np.float32)
    v = (contexts[:, -1] - contexts[:, -2]).astype(dtype)
    gains = np.cumsum(float(damping) ** np.arange(1, horizon + 1)).astype(dtype)
    return gains[None, :, None] * v[:, None]


def velocity_forecast(contexts: np.ndarray, horizon: int, damping: float) -> np.ndarray:
    """contexts (B, C, dim) -> (B, 1, horizon, dim): the damped-velocity forecast, one sample."""
    return (contexts[:, -1, None] + velocity_steps(contexts, horizon, damping))[:, None].astype(np.float32)


def fit_damping(windows: np.ndarray, context: int, grid: tuple[float, ...] = DAMPING_GRID) -> float:
    """The damping of `grid` with the lowest mean absolute error on windows (W, context + horizon, dim)."""
    horizon = windows.shape[1] - context
    errs = [np.abs(velocity_forecast(windows[:, :context], horizon, d)[:, 0] - windows[:, context:]).mean()
            for d in grid]
    return float(grid[int(np.argmin(errs))])
