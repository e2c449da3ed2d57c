"""EncGAN3: the content/movement encoders and the G3AN-style generator as one VAE."""

from __future__ import annotations

import torch
from torch import nn

from vmt.longgen.config import LongGenConfig
from vmt.longgen.encoders import ContentEncoder, MovementEncoder, frame_differences
from vmt.longgen.generator import Generator
from vmt.longgen.losses import reparameterise


class EncGAN3(nn.Module):
    """Encoders + generator. Videos are (B, 3, T, H, W) in [-1, 1]; the reference frame is frame 0."""

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.content_encoder = ContentEncoder(cfg)
        self.movement_encoder = MovementEncoder(cfg)
        # The sampling prior of z_x and z_v (flattened): mean and lower-triangular scale L, z = mean + L eps.
        # N(0, I) until `fit_prior` sets them to the training posteriors' statistics (see there).
        dv = cfg.motion_steps * cfg.dim_motion
        self.register_buffer("prior_mean_x", torch.zeros(cfg.dim_content))
        self.register_buffer("prior_scale_x", torch.eye(cfg.dim_content))
        self.register_buffer("prior_mean_v", torch.zeros(dv))
        self.register_buffer("prior_scale_v", torch.eye(dv))

    def encode_content(self, frame: torch.Tensor):
        """(B, 3, H, W) -> (mu, logvar) of z_x, each (B, dim_content)."""
        return self.content_encoder(frame)

    def encode_motion(self, video: torch.Tensor):
        """(B, 3, T, H, W) -> (mu, logvar) of z_v, each (B, motion_steps, dim_motion)."""
        return self.movement_encoder(frame_differences(video, signed=self.cfg.signed_motion))

    def decode(self, z_x: torch.Tensor, z_v: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator(z_x, z_v, ref)

    def prior(self, batch: int, generator: torch.Generator | None = None, device=None, standard: bool = False):
        """z_x (B, Dx), z_v (B, T0, Dv): eps ~ N(0, I) drawn on the CPU (seeded), mapped through the fitted
        prior (identity until `fit_prior`; `standard` skips it), moved to `device`."""
        c = self.cfg
        z_x = torch.randn(batch, c.dim_content, generator=generator)
        z_v = torch.randn(batch, c.motion_steps * c.dim_motion, generator=generator)
        if not standard:
            mx, lx, mv, lv = (b.detach().cpu().float() for b in (self.prior_mean_x, self.prior_scale_x,
                                                                  self.prior_mean_v, self.prior_scale_v))
            z_x, z_v = mx + z_x @ lx.T, mv + z_v @ lv.T
        dev = device if device is not None else next(self.parameters()).device
        return z_x.to(dev), z_v.view(batch, c.motion_steps, c.dim_motion).to(dev)

    @torch.no_grad()
    def fit_prior(self, clips: torch.Tensor, batch: int = 64) -> None:
        """Set the sampling prior to a Gaussian fitted to the posterior means of `clips` (N, 3, T, H, W).

        Why: with the small KL weight that keeps both latents informative (1e-4), the encoders' aggregate
        posterior is not N(0, I), and the decoder meets latents in sampling that it never saw in training
        (a 1,200-step cpu-preset run, chained from real digit frames: mean blend mask 0.42 with z_v ~ N(0, I),
        0.01 with the fitted prior, 0.11 in reconstructions). A Gaussian fitted to the encoded training set
        after training ("ex-post density estimation", Ghosh et al., ICLR 2020) puts samples where the decoder
        was trained; `prior(standard=True)` keeps the paper's N(0, I).
        """
        self.eval()
        xs, vs = [], []
        for i in range(0, len(clips), batch):
            c = clips[i : i + batch].to(self.prior_mean_x.device)
            xs.append(self.encode_content(c[:, :, 0])[0].double().cpu())
            vs.append(self.encode_motion(c)[0].flatten(1).double().cpu())
        for name, z in (("x", torch.cat(xs)), ("v", torch.cat(vs))):
            mean, scale = gaussian_fit(z)
            getattr(self, f"prior_mean_{name}").copy_(mean)
            getattr(self, f"prior_scale_{name}").copy_(scale)

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Encode a real clip (content of frame 0, motion of its differences) and decode it from frame 0."""
        mu_x, lv_x = self.encode_content(video[:, :, 0])
        mu_v, lv_v = self.encode_motion(video)
        z_x = reparameterise(mu_x, lv_x, generator) if sample else mu_x
        z_v = reparameterise(mu_v, lv_v, generator) if sample else mu_v
        return self.decode(z_x, z_v, ref=video[:, :, 0])


def gaussian_fit(z: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and Cholesky factor L (D, D) of the sample covariance of z (N, D), float64; `ridge` times the
    mean variance is added to the diagonal so L exists for N <= D or collapsed dimensions."""
    z = z.double()
    mean = z.mean(0)
    cov = torch.cov(z.T).reshape(z.shape[1], z.shape[1])
    cov = cov + ridge * cov.diagonal().mean().clamp(min=1e-12) * torch.eye(z.shape[1], dtype=torch.float64)
    return mean, torch.linalg.cholesky(cov)
