"""Sigma grids for flow matching. sigma in [0, 1], 1 = pure noise; grids run from high to low, ending at 0."""

from __future__ import annotations

from dataclasses import dataclass

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


from vmt.sampling.modes import GRIDS  # noqa: E402,F401  (re-exported)


@dataclass(frozen=True)
class Schedule:
    """The grid a run steps through.

    sigmas: (N + 1,) float32, decreasing to 0. timesteps: (N,) what the transformer is fed at each step (the
    model scheduler's own values, int64 for UniPC), or None for `num_train_timesteps * sigma` (float).
    grid: "model" (the model folder's scheduler) or "euler" (diffusers' FlowMatchEuler grid).
    """

    sigmas: torch.Tensor
    timesteps: torch.Tensor | None
    grid: str

    def timestep_lookup(self, num_train_timesteps: int = 1000):
        """sigma (0-dim tensor or float) -> the timestep the transformer gets at that grid point (0-dim).

        Every hook evaluates at grid points (an outer step's sigma), so a table keyed by the float value finds
        the scheduler's own timestep; any other sigma gets `num_train_timesteps * sigma`.
        """
        table = {} if self.timesteps is None else {
            float(s): t for s, t in zip(self.sigmas[:-1].tolist(), self.timesteps)}

        def lookup(sigma) -> torch.Tensor:
            t = table.get(float(sigma))
            if t is not None:
                return t
            return torch.as_tensor(sigma, dtype=torch.float32) * num_train_timesteps

        return lookup


def model_schedule(scheduler, steps: int, shift: float | None = None, strength: float = 1.0) -> Schedule:
    """The model folder's own grid: a fresh copy of `scheduler` (its class and config; `shift` overrides its
    flow shift), `set_timesteps(steps)`, its sigmas and timesteps exactly as `WanPipeline` and the P&P release
    step through them (Euler steps between its sigmas, its timesteps fed to the transformer).

    strength < 1 starts part-way, by diffusers' video-to-video rule: the last int(steps * strength) steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cfg = dict(scheduler.config)
    if shift is not None:
        if "flow_shift" in cfg:
            cfg["flow_shift"] = float(shift)
        elif "shift" in cfg:
            cfg["shift"] = float(shift)
    sch = type(scheduler).from_config(cfg)
    sch.set_timesteps(steps, device="cpu")
    sigmas = torch.as_tensor(sch.sigmas).to(torch.float32).clone()
    timesteps = torch.as_tensor(sch.timesteps).clone()
    if len(sigmas) != steps + 1 or len(timesteps) != steps:
        raise ValueError(f"{type(scheduler).__name__} gave {len(timesteps)} timesteps and {len(sigmas)} sigmas for "
                         f"{steps} steps; the model grid needs one sigma per step plus the final 0")
    if strength < 1.0:
        start = steps - min(int(steps * strength), steps)
        sigmas, timesteps = sigmas[start:], timesteps[start:]
    return Schedule(sigmas, timesteps, "model")
