"""GRU-SNF stochastic refinement: annealed energies and a random-walk Metropolis-Hastings kernel.

Stage k of T interpolates between the base prior and the GRU head's prediction g:
    E_k(y) = (1 - lam_k) * 0.5 * ||y||^2 + lam_k * ||g - y||^2,   lam_k = k / (T - 1).
The energy is a sum over elements, so element-wise acceptance (each element accepted on its own
energy change, the paper's form) and whole-vector acceptance (the textbook form) both leave exp(-E_k)
invariant.
"""

from __future__ import annotations

import torch


def annealing_lambda(stage: int, stages: int) -> float:
    return stage / (stages - 1) if stages > 1 else 1.0


def energy_elements(y: torch.Tensor, g: torch.Tensor, lam: float) -> torch.Tensor:
    """Per-element energy, same shape as y (g broadcasts)."""
    return (1 - lam) * 0.5 * y**2 + lam * (g - y) ** 2


def mh_steps(y: torch.Tensor, g: torch.Tensor, lam: float, *, steps: int = 2, step_size: float = 0.35,
             elementwise: bool = True, generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Run `steps` random-walk MH steps on y (B, D) for target exp(-E_lam). Returns (y, acceptance rate).

    Noise is drawn on the CPU from `generator` (reproducible on any device) and moved to y's device.
    """
    accepted, total = 0.0, 0
    e = energy_elements(y, g, lam)
    for _ in range(steps):
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        prop = y + step_size * noise
        e_prop = energy_elements(prop, g, lam)
        log_u = torch.rand(y.shape[:-1] + ((y.shape[-1],) if elementwise else (1,)), generator=generator,
                           dtype=y.dtype).to(y.device).log()
        if elementwise:
            acc = log_u < -(e_prop - e)
        else:
            acc = log_u < -(e_prop - e).sum(-1, keepdim=True)
        y = torch.where(acc, prop, y)
        e = torch.where(acc, e_prop, e)
        accepted += acc.float().mean().item()
        total += 1
    return y, accepted / max(total, 1)


class SNFRefiner:
    """The `after_block` hook for `ConditionalRealNVP.inverse`: one MH chain stage per block."""

    def __init__(self, g: torch.Tensor, stages: int, *, steps: int = 2, step_size: float = 0.35,
                 elementwise: bool = True, generator: torch.Generator | None = None):
        self.g, self.stages, self.steps, self.step_size = g, stages, steps, step_size
        self.elementwise, self.generator = elementwise, generator
        self.acceptance: list[float] = []

    def __call__(self, y: torch.Tensor, k: int) -> torch.Tensor:
        y, rate = mh_steps(y, self.g, annealing_lambda(k, self.stages), steps=self.steps,
                           step_size=self.step_size, elementwise=self.elementwise, generator=self.generator)
        self.acceptance.append(rate)
        return y
