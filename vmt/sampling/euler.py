"""The Euler flow-matching loop and the interventions that hook into it.

One loop serves every method: interventions plug in before a step (e.g. motion guidance optimises the
latent) or replace the update of a step (e.g. Predict-and-Perturb's inner loop). With no interventions it is
exactly diffusers' FlowMatchEulerDiscreteScheduler: `z <- z + (s_next - s) * v(z, s)`.

An intervention subclasses `Intervention` (after diffusers' `ModelHook`: every method has a do-nothing
default). Per run the loop calls, in this order: `reset()` and `bind_noise(generator)` once, then at each outer
step `before_step` of every intervention, `step` of every intervention (at most one may replace the update),
and, when someone watches the steps, `step_summary` of every intervention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from vmt.errors import VmtError

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(z (B, C, F, h, w), sigma 0-dim) -> guided velocity, shape of z. Each call is one NFE."""


@dataclass
class StepState:
    """The loop's state at outer step `index`, moving from `sigma` to `sigma_next`.

    record: what the interventions report for this step, each under its own key (goes to out.json's `steps`).
    summary: short display fields for this step (name -> text), filled after the step from every
    intervention's `step_summary`; what progress bars show.
    """

    index: int
    num_steps: int
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    z: torch.Tensor
    record: dict = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)


class Intervention:
    """A hook into the loop. Subclasses override what they need; the defaults change nothing.

    `before_step` returns a new latent to take the step from (or None); `step` returns the latent at
    sigma_next, replacing the plain Euler update (or None). Either may evaluate `velocity` (each call is one
    NFE) and may use gradients inside `torch.enable_grad()` (the loop runs under no_grad).
    """

    name: str = "intervention"  # names it in errors and records

    def reset(self) -> None:
        """Forget what an earlier run left (records, generator streams): the loop calls it at the start of
        every run, so a reused intervention gives what a fresh one would."""

    def bind_noise(self, generator: torch.Generator | None) -> None:
        """The run's generator, when the run draws all its noise from one stream (generate's noise mode
        "pipeline"): an intervention that draws noise continues it. None: use a generator of its own. Called
        once per run, after `reset`."""

    def before_step(self, state: StepState, velocity: VelocityFn) -> torch.Tensor | None:
        """A new latent to take this step from (runs before any `step`), or None."""
        return None

    def step(self, state: StepState, velocity: VelocityFn) -> torch.Tensor | None:
        """The latent at sigma_next, replacing the plain Euler update, or None."""
        return None

    def step_summary(self, state: StepState) -> dict[str, str]:
        """Display fields (name -> short text) for the step just taken; empty when it did nothing there."""
        return {}


def euler_step(z: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ODE: z + (sigma_next - sigma) * v."""
    return z + (sigma_next - sigma) * v


def sample_euler(
    velocity: VelocityFn,
    z: torch.Tensor,
    sigmas: torch.Tensor,
    interventions: Sequence[Intervention] = (),
    callback: Callable[[StepState], None] | None = None,
    noise: torch.Generator | None = None,
) -> torch.Tensor:
    """Integrate from sigmas[0] to sigmas[-1] with Euler steps; returns the final latent.

    z: (B, C, F, h, w) float32 at sigmas[0]. sigmas: (N + 1,) decreasing. `callback(state)` runs after each
    step (progress bars, logging; `state.z` is then the latent the step started from, `state.summary` holds
    the interventions' display fields). noise: the run's generator handed to every intervention's
    `bind_noise` (None: they use their own).
    """
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"{type(iv).__name__} is not a vmt.sampling.euler.Intervention; subclass it")
    for iv in interventions:
        iv.reset()
        iv.bind_noise(noise)
    n = len(sigmas) - 1
    with torch.no_grad():
        for i in range(n):
            state = StepState(i, n, sigmas[i], sigmas[i + 1], z)
            for iv in interventions:
                new = iv.before_step(state, velocity)
                if new is not None:
                    state.z = new.detach()
            z_next, by = None, None
            for iv in interventions:
                new = iv.step(state, velocity)
                if new is None:
                    continue
                if by is not None:  # two updates of one step cannot both be taken; neither is silently dropped
                    raise VmtError(f"interventions {by!r} and {iv.name!r} both replace the update of step {i}; "
                                   f"give each step to one of them")
                z_next, by = new, iv.name
            if z_next is None:
                z_next = euler_step(state.z, velocity(state.z, state.sigma), state.sigma, state.sigma_next)
            if callback is not None:
                for iv in interventions:
                    state.summary.update(iv.step_summary(state))
                callback(state)
            z = z_next
    return z
