"""Conditional RealNVP: affine coupling blocks (alternating masks) each followed by a batch-norm layer.

Density direction is x -> u (data -> base N(0, I)); `forward` returns u and log|det du/dx| per row.
`inverse` goes u -> x block by block and can call a hook on the intermediate variable after each block's
inverse (GRU-SNF runs its Markov chain there).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _mlp(d_in: int, hidden: int, d_out: int, act: type[nn.Module], depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, hidden)]
    for _ in range(depth):
        layers += [act(), nn.Linear(hidden, hidden)]
    layers += [act(), nn.Linear(hidden, d_out)]
    return nn.Sequential(*layers)


class AffineCoupling(nn.Module):
    """u = m*x + (1-m)*(x*exp(s) + t), with s = tanh(S([m*x, c])), t = T([m*x, c]).

    Scale net uses Tanh activations and a tanh-bounded output (stable exp); shift net uses ReLU.
    """

    def __init__(self, dim: int, cond_dim: int, hidden: int, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.float().clone())
        self.scale_net = _mlp(dim + cond_dim, hidden, dim, nn.Tanh)
        self.shift_net = _mlp(dim + cond_dim, hidden, dim, nn.ReLU)

    def _st(self, masked: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([masked, cond], dim=-1)
        free = 1 - self.mask
        return torch.tanh(self.scale_net(h)) * free, self.shift_net(h) * free

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x * self.mask, cond)
        u = x * self.mask + (1 - self.mask) * (x * torch.exp(s) + t)
        return u, s.sum(-1)

    def inverse(self, u: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s, t = self._st(u * self.mask, cond)
        return u * self.mask + (1 - self.mask) * ((u - t) * torch.exp(-s))


class BatchNormFlow(nn.Module):
    """u = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta.

    Training uses the batch's statistics (and updates running averages); eval uses the running ones, so
    the layer is an exact bijection in eval mode.
    """

    def __init__(self, dim: int, momentum: float = 0.05, eps: float = 1e-5):
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.momentum, self.eps = momentum, eps

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and x.shape[0] > 1:
            mean, var = x.mean(0), x.var(0, unbiased=False) + self.eps
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
            return mean, var
        return self.running_mean, self.running_var

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mean, var = self._stats(x)
        u = (x - mean) / var.sqrt() * self.log_gamma.exp() + self.beta
        logdet = (self.log_gamma - 0.5 * var.log()).sum().expand(x.shape[0])
        return u, logdet

    def inverse(self, u: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return (u - self.beta) * (-self.log_gamma).exp() * self.running_var.sqrt() + self.running_mean


class ConditionalRealNVP(nn.Module):
    """`blocks` x (affine coupling with alternating mask, batch norm) on `dim` values given a `cond_dim` condition."""

    def __init__(self, dim: int, cond_dim: int, hidden: int = 512, blocks: int = 5):
        super().__init__()
        self.dim, self.cond_dim = dim, cond_dim
        base = (torch.arange(dim) % 2).float()
        layers = []
        for k in range(blocks):
            layers.append(AffineCoupling(dim, cond_dim, hidden, base if k % 2 == 0 else 1 - base))
            layers.append(BatchNormFlow(dim))
        self.layers = nn.ModuleList(layers)

    @property
    def num_blocks(self) -> int:
        return len(self.layers) // 2

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, dim), cond (B, cond_dim) -> u (B, dim), log|det du/dx| (B,)."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """log p(x | cond) in nats, (B,)."""
        u, logdet = self(x, cond)
        return -0.5 * (u**2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi) + logdet

    def inverse(self, u: torch.Tensor, cond: torch.Tensor,
                after_block: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
        """u (B, dim) -> x (B, dim). `after_block(y, k)` may replace the intermediate y after the k-th
        block inverted (k = 0 for the block nearest the base, num_blocks - 1 for the one that yields x)."""
        y = u
        for k, i in enumerate(range(len(self.layers) - 2, -1, -2)):
            coupling, bn = self.layers[i], self.layers[i + 1]
            y = coupling.inverse(bn.inverse(y, cond), cond)
            if after_block is not None:
                y = after_block(y, k)
        return y
