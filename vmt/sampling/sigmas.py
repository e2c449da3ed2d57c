"""Sigma grids for flow matching. sigma in [0, 1], 1 = pure noise; grids run from high to low, ending at 0."""

from __future__ import annotations

import torch


def flow_sigmas(steps: int, shift: float = 1.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The shifted grid of diffusers' FlowMatchEulerDiscreteScheduler: (steps + 1,) float32, last entry 0.

    `sigma' = shift * s / (1 + (shift - 1) * s)` on s = linspace(1, shift(1/N), steps) (N = training
    timesteps). Taken from the scheduler itself so the grid is exactly the one `WanPipeline` +
    FlowMatchEuler steps through.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    sch.set_timesteps(steps, device="cpu")
    return sch.sigmas.to(torch.float32).clone()


def shift_sigma(s: float | torch.Tensor, shift: float):
    """Apply the flow shift to an unshifted sigma (scalar or tensor)."""
    return shift * s / (1 + (shift - 1) * s)
