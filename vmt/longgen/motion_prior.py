"""Learned motion prior of the recall chain: the next clip's movement latent given where the content is and how
it moved in the previous clip, z_v' ~ N(f(z_x', z_v), L L^T), fitted after training on encoded real windows.

Why: REncGAN3's chain draws each clip's motion independently of the content it moves. For moving digits that
walks a digit off the canvas within ~100 frames, because the data's motion depends on the state (a digit at a
border bounces; otherwise it keeps its velocity). A Gaussian fitted jointly to (z_x, z_v) predicts the motion
from the content only linearly (held-out R^2 0.60 of the next clip's z_v from (z_x', z_v) for the shipped
cpu-preset model); this small MLP reaches 0.84, and with it 8 of 8 sampled chains keep their digit for 1,000
frames (README, benchmarks/longgen.py). It is the learned prior of sequential VAEs (SVG-LP, Denton and
Fergus, ICML 2018) fitted post hoc, as the Gaussian prior is ("ex-post density estimation"), so training is
unchanged. f works on standardised inputs and outputs; L is the Cholesky factor of the fit's residuals.
"""

from __future__ import annotations

import torch
from torch import nn

from vmt.longgen.gaussians import gaussian_fit


INPUT_RANGE = 2.0


class MotionPrior(nn.Module):
    """(z_x (B, Dx), z_v of the previous clip (B, Dv)) -> mean (B, Dv) of the next clip's z_v; unfitted until
    `fit` (`fitted` is 0 and the chain falls back to the Gaussian prior). Its weights are fitted by `fit`,
    never by the training optimiser (requires_grad is off)."""

    def __init__(self, dim_content: int, dim_motion: int, hidden: int = 256):
        super().__init__()
        d_in = dim_content + dim_motion
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim_motion))
        self.requires_grad_(False)
        self.register_buffer("in_mean", torch.zeros(d_in))
        self.register_buffer("in_std", torch.ones(d_in))
        self.register_buffer("out_mean", torch.zeros(dim_motion))
        self.register_buffer("out_std", torch.ones(dim_motion))
        self.register_buffer("scale", torch.eye(dim_motion))
        self.register_buffer("fitted", torch.zeros(()))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    def mean(self, z_x: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
        # Inputs are clamped to INPUT_RANGE standard deviations of the fit's: outside, the map extrapolates,
        # and fed its own output clip after clip it diverged (cpu preset, moving digits: standardised z_v
        # 2 -> 5 -> 10^6 within 30 clips, the blend mask redrawing the digit black on the way).
        x = ((torch.cat([z_x, z_v], 1) - self.in_mean) / self.in_std).clamp(-INPUT_RANGE, INPUT_RANGE)
        return self.net(x) * self.out_std + self.out_mean

    def sample(self, z_x: torch.Tensor, z_v: torch.Tensor, eps: torch.Tensor, temperature: float = 1.0):
        """z_v of the next clip (B, Dv) = mean + temperature * L eps, eps (B, Dv) ~ N(0, I)."""
        return self.mean(z_x, z_v) + temperature * eps.to(z_x) @ self.scale.T

    @torch.enable_grad()
    def fit(self, z_x: torch.Tensor, z_v: torch.Tensor, z_v_next: torch.Tensor, *, steps: int = 2000,
            batch: int = 256, lr: float = 3e-3, seed: int = 0) -> dict[str, float]:
        """Least squares of z_v_next (N, Dv) on (z_x, z_v) (N, Dx), (N, Dv), then the residuals' covariance.
        The last tenth of the pairs is held out; returns R^2 of this fit and of a linear one on it."""
        dev = self.in_mean.device
        x = torch.cat([z_x, z_v], 1).float().to(dev)
        y = z_v_next.float().to(dev)
        n_fit = max(int(0.9 * len(x)), 1)
        fit_x, fit_y = x[:n_fit], y[:n_fit]
        self.in_mean.copy_(fit_x.mean(0))
        self.in_std.copy_(fit_x.std(0).nan_to_num(1.0).clamp(min=1e-6))
        self.out_mean.copy_(fit_y.mean(0))
        self.out_std.copy_(fit_y.std(0).nan_to_num(1.0).clamp(min=1e-6))
        gen = torch.Generator().manual_seed(seed)
        for layer in self.net:
            if isinstance(layer, nn.Linear):  # a fresh fit at every checkpoint, reproducible for a seed
                bound = layer.in_features ** -0.5
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen).mul(2 * bound).sub(bound))
                layer.bias.zero_()
        params = list(self.net.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        target = (fit_y - self.out_mean) / self.out_std
        inputs = (fit_x - self.in_mean) / self.in_std
        for _ in range(steps):
            idx = torch.randint(0, n_fit, (min(batch, n_fit),), generator=gen).to(dev)
            loss = (self.net(inputs[idx]) - target[idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            resid = fit_y - self.mean(fit_x[:, : z_x.shape[1]], fit_x[:, z_x.shape[1]:])
            self.scale.copy_(gaussian_fit(resid)[1])
            self.fitted.fill_(1.0)
            held_x, held_y = x[n_fit:], y[n_fit:]
            if len(held_x) < 2:
                return {"r2": float("nan"), "r2_linear": float("nan")}
            pred = self.mean(held_x[:, : z_x.shape[1]], held_x[:, z_x.shape[1]:])
            ones = torch.ones(n_fit, 1, dtype=torch.float64, device=dev)
            coef = torch.linalg.lstsq(torch.cat([fit_x.double(), ones], 1), fit_y.double()).solution
            lin = torch.cat([held_x.double(), ones[: len(held_x)]], 1) @ coef
            return {"r2": r_squared(pred.double(), held_y.double()), "r2_linear": r_squared(lin, held_y.double())}


def r_squared(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - SS_res / SS_tot over all coordinates of (N, D) targets."""
    return float(1 - (pred - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp(min=1e-12))
