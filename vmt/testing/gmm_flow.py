"""A Gaussian mixture whose flow-matching velocity is known in closed form (ground truth for samplers).

Data x0 ~ sum_k pi_k N(mu_k, w_k I) in d dimensions; forward process x_s = s*eps + (1-s)*x0. Given the
component k, x_s ~ N((1-s) mu_k, c_k I) with c_k = (1-s)^2 w_k + s^2, and (x0, eps, x_s) are jointly Gaussian:

    E[x0  | x_s, k] = mu_k + (1-s) w_k / c_k * (x_s - (1-s) mu_k)
    E[eps | x_s, k] = s / c_k * (x_s - (1-s) mu_k)

The exact velocity is v(x, s) = E[eps - x0 | x_s = x] = sum_k r_k(x) (E[eps|x,k] - E[x0|x,k]) with
posterior responsibilities r_k(x) ~ pi_k N(x; (1-s) mu_k, c_k I). Everything is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture: means (K, d), variances (K,), weights (K,) summing to 1 (float64)."""

    means: torch.Tensor
    variances: torch.Tensor
    weights: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @property
    def num_modes(self) -> int:
        return int(self.means.shape[0])

    def blurred(self, extra_variance: float) -> GaussianMixture:
        """The same mixture convolved with N(0, extra_variance I): what an undertrained model that has not
        resolved the modes' sharpness would have learned."""
        return GaussianMixture(self.means, self.variances + extra_variance, self.weights)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) samples and their component labels (n,)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.variances[k].sqrt()[:, None] * noise, k

    def component_log_prob(self, x: torch.Tensor, s: float = 0.0) -> torch.Tensor:
        """log pi_k + log N(x; (1-s) mu_k, c_k I) for x (n, d): (n, K). s = 0 is the data distribution."""
        x = x.to(torch.float64)
        c = (1 - s) ** 2 * self.variances + s**2  # (K,)
        d2 = torch.cdist(x, (1 - s) * self.means).pow(2)  # (n, K)
        d = self.dim
        return self.weights.log() - 0.5 * (d2 / c + d * torch.log(2 * math.pi * c))

    def log_prob(self, x: torch.Tensor, s: float = 0.0) -> torch.Tensor:
        """log p_s(x): (n,)."""
        return torch.logsumexp(self.component_log_prob(x, s), dim=1)

    def velocity(self, x: torch.Tensor, s: float | torch.Tensor) -> torch.Tensor:
        """Exact flow-matching velocity E[eps - x0 | x_s = x] for x (n, d) at sigma s: (n, d) float64."""
        s = float(s)
        x = x.to(torch.float64)
        c = (1 - s) ** 2 * self.variances + s**2  # (K,)
        r = torch.softmax(self.component_log_prob(x, s), dim=1)  # (n, K)
        # E[eps - x0 | x, k] = (s - (1-s) w_k) / c_k * (x - (1-s) mu_k) - mu_k
        gain = (s - (1 - s) * self.variances) / c  # (K,)
        # sum_k r_k [gain_k (x - (1-s) mu_k) - mu_k], without forming (n, K, d)
        rg = r * gain  # (n, K)
        return rg.sum(1, keepdim=True) * x - (1 - s) * rg @ self.means - r @ self.means


def well_separated_mixture(num_modes: int, dim: int, separation: float = 8.0, variance: float = 1.0,
                           seed: int = 0) -> GaussianMixture:
    """Modes at random directions with pairwise distances >= separation * std, unequal weights."""
    g = torch.Generator().manual_seed(seed)
    std = math.sqrt(variance)
    means: list[torch.Tensor] = []
    radius = separation * std * 0.75 * math.sqrt(max(1.0, num_modes / 2))
    tries = 0
    while len(means) < num_modes:
        m = torch.randn(dim, generator=g, dtype=torch.float64)
        m = m / m.norm() * radius
        if all((m - o).norm() >= separation * std for o in means):
            means.append(m)
        tries += 1
        if tries % 200 == 0:  # crowded (low dimension): spread the modes further out
            radius *= 1.2
    w = torch.linspace(1.0, 2.0, num_modes, dtype=torch.float64)
    return GaussianMixture(torch.stack(means), torch.full((num_modes,), variance, dtype=torch.float64), w / w.sum())
