"""Losses of the VAE-GAN: KL to N(0, I), L1 reconstruction, non-saturating GAN losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) in nats, summed over latent dims, averaged over the batch (dim 0)."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean()


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, device="cpu").to(mu) if generator is not None \
        else torch.randn_like(mu)
    return mu + (0.5 * logvar).exp() * eps


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x - y).abs().mean()


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """-log D(real) - log(1 - D(fake)), with D = sigmoid(logits)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -log D(fake)."""
    return F.softplus(-fake_logits).mean()


def pyramid_l1(x: torch.Tensor, y: torch.Tensor, levels: int) -> torch.Tensor:
    """Mean of the L1 at `levels` scales of videos (B, C, T, H, W): full size, then 2x2 average pools.
    One level is the plain L1."""
    total = l1(x, y)
    for _ in range(levels - 1):
        x, y = F.avg_pool3d(x, (1, 2, 2)), F.avg_pool3d(y, (1, 2, 2))
        total = total + l1(x, y)
    return total / levels
