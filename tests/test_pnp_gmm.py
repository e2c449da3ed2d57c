"""The closed-form flow-matching velocity of a Gaussian mixture, checked against Monte-Carlo estimates."""

from __future__ import annotations

import math

import pytest
import torch

from vmt.testing.gmm_flow import GaussianMixture, well_separated_mixture


def _mixture_2d() -> GaussianMixture:
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -3.0]], dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.5, 1.0, 0.2], dtype=torch.float64),
                           torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))


@pytest.mark.parametrize("s", [0.3, 0.6, 0.9])
def test_velocity_matches_importance_sampled_posterior_mean(s):
    """E[eps - x0 | x_s = x] by self-normalised importance sampling over the prior: x0_i ~ data,
    weight N(x; (1-s) x0_i, s^2 I), eps_i = (x - (1-s) x0_i) / s. Tolerance: 5 Monte-Carlo standard errors."""
    gmm = _mixture_2d()
    g = torch.Generator().manual_seed(0)
    x0, _ = gmm.sample(400_000, g)
    points = torch.tensor([[0.0, 0.0], [-1.0, 0.5], [1.5, 1.0], [0.3, -2.0]], dtype=torch.float64)
    v = gmm.velocity(points, s)
    for x, v_x in zip(points, v):
        logw = -((x - (1 - s) * x0) ** 2).sum(1) / (2 * s**2)
        wts = torch.softmax(logw, 0)
        f = (x - (1 - s) * x0) / s - x0  # eps - x0 for each prior draw
        est = wts @ f
        se = ((wts[:, None] ** 2) * (f - est) ** 2).sum(0).sqrt()
        assert torch.all((v_x - est).abs() < 5 * se + 1e-9), (s, x, v_x, est, se)


def test_velocity_is_the_regression_target_in_high_dimension():
    """v(x_s) = E[eps - x0 | x_s] means the residual eps - x0 - v(x_s) is uncorrelated with any function of
    x_s: checked for 1 and x_s itself, per coordinate, in 64 dimensions (5 standard errors)."""
    gmm = well_separated_mixture(6, 64, seed=1)
    g = torch.Generator().manual_seed(1)
    n = 20_000
    for s in (0.2, 0.7):
        x0, _ = gmm.sample(n, g)
        eps = torch.randn(n, 64, generator=g, dtype=torch.float64)
        xs = s * eps + (1 - s) * x0
        res = eps - x0 - gmm.velocity(xs, s)
        for feat in (torch.ones_like(xs), xs):
            prod = res * feat
            m, se = prod.mean(0), prod.std(0) / math.sqrt(n)
            assert torch.all(m.abs() < 5 * se + 1e-12)
        # At s = 0.2 the modes are unambiguous, so the error is the within-mode Bayes error of the jointly
        # Gaussian (eps - x0, x_s): 1 + w - (s - (1-s) w)^2 / c (w = 1); no predictor can do better.
        if s == 0.2:
            c = (1 - s) ** 2 + s**2
            bayes = 2.0 - (s - (1 - s)) ** 2 / c
            assert abs(float(res.pow(2).mean()) - bayes) < 0.01 * bayes


def test_clean_estimate_at_tiny_sigma_is_the_input_and_log_prob_integrates():
    gmm = _mixture_2d()
    x = torch.tensor([[0.3, -0.4], [2.0, 1.0]], dtype=torch.float64)
    s = 1e-6
    torch.testing.assert_close(x - s * gmm.velocity(x, s), x, rtol=0, atol=1e-5)
    # density integrates to 1 on a grid (checks the normalising constants of log_prob)
    t = torch.linspace(-9, 9, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(t, t, indexing="ij")
    p = gmm.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert abs(float(p.sum()) * float(t[1] - t[0]) ** 2 - 1.0) < 1e-4


def test_well_separated_modes():
    gmm = well_separated_mixture(8, 2, separation=8.0, seed=0)
    d = torch.cdist(gmm.means, gmm.means) + torch.eye(8) * 1e9
    assert float(d.min()) >= 8.0 and abs(float(gmm.weights.sum()) - 1) < 1e-12
