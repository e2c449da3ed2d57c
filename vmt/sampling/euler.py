"""The Euler flow-matching loop with per-step hooks.

One loop serves every method: interventions plug in before a step (e.g. motion guidance optimises the
latent) or replace the update of a step (e.g. Predict-and-Perturb's inner loop). With no interventions it is
exactly diffusers' FlowMatchEulerDiscreteScheduler: `z <- z + (s_next - s) * v(z, s)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from vmt.errors import VmtError

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(z (B, C, F, h, w), sigma 0-dim) -> guided velocity, shape of z. Each call is one NFE."""


@dataclass
class StepState:
    """The loop's state at outer step `index`, moving from `sigma` to `sigma_next`."""

    index: int
    num_steps: int
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    z: torch.Tensor
    record: dict = field(default_factory=dict)  # what interventions report for this step (goes to out.json)


@runtime_checkable
class Intervention(Protocol):
    """A hook into the loop. Either method may be absent; returning None means "no change"."""

    name: str

    def before_step(self, state: StepState, velocity: VelocityFn) -> torch.Tensor | None:
        """A new latent to take this step from (runs first; may use gradients via torch.enable_grad())."""

    def step(self, state: StepState, velocity: VelocityFn) -> torch.Tensor | None:
        """The latent at sigma_next, replacing the plain Euler update."""

    # Optional: `bind_noise(generator)` receives the run's generator when the run draws all its noise from
    # one stream (generate's noise mode "pipeline"); an intervention that draws noise continues it.


def euler_step(z: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ODE: z + (sigma_next - sigma) * v."""
    return z + (sigma_next - sigma) * v


def sample_euler(
    velocity: VelocityFn,
    z: torch.Tensor,
    sigmas: torch.Tensor,
    interventions: Sequence[Intervention] = (),
    callback: Callable[[StepState], None] | None = None,
) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] with Euler steps; returns the final latent.

    z: (B, C, F, h, w) float32 at sigmas[0]. sigmas: (N + 1,) decreasing. `callback(state)` runs after each
    step (progress bars, logging; `state.z` is then the latent the step started from).
    """
    n = len(sigmas) - 1
    with torch.no_grad():
        for i in range(n):
            state = StepState(i, n, sigmas[i], sigmas[i + 1], z)
            for iv in interventions:
                hook = getattr(iv, "before_step", None)
                new = hook(state, velocity) if hook else None
                if new is not None:
                    state.z = new.detach()
            z_next, by = None, None
            for iv in interventions:
                hook = getattr(iv, "step", None)
                new = hook(state, velocity) if hook else None
                if new is None:
                    continue
                if by is not None:  # two updates of one step cannot both be taken; neither is silently dropped
                    raise VmtError(f"interventions {by!r} and {getattr(iv, 'name', type(iv).__name__)!r} both "
                                   f"replace the update of step {i}; give each step to one of them")
                z_next, by = new, getattr(iv, "name", type(iv).__name__)
            if z_next is None:
                z_next = euler_step(state.z, velocity(state.z, state.sigma), state.sigma, state.sigma_next)
            if callback is not None:
                callback(state)
            z = z_next
    return z
