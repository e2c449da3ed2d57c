"""EncGAN3: the content/movement encoders and the G3AN-style generator as one VAE."""

from __future__ import annotations

import torch
from torch import nn

from vmt.longgen.config import LongGenConfig
from vmt.longgen.encoders import ContentEncoder, MovementEncoder, frame_differences
from vmt.longgen.gaussians import gaussian_fit, mixture_fit, split_gaussian
from vmt.longgen.generator import Generator, WarpMode
from vmt.longgen.losses import reparameterise
from vmt.longgen.motion_prior import MotionPrior

# Components of the content latent's fitted mixture prior (10 digit classes in the moving-digits data).
PRIOR_COMPONENTS = 10


class EncGAN3(nn.Module):
    """Encoders + generator. Videos are (B, 3, T, H, W) in [-1, 1]; the reference frame is frame 0."""

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.content_encoder = ContentEncoder(cfg)
        self.movement_encoder = MovementEncoder(cfg)
        # The sampling prior, a Gaussian over (z_x, z_v) (z_v flattened), stored as z_x's marginal and z_v's
        # conditional given z_x: z_x = mean_x + L_x eps_x, z_v = mean_v + gain (z_x - mean_x) + L_v eps_v, with
        # lower-triangular scales L. N(0, I) (gain 0) until `fit_prior` sets them from the training posteriors.
        dv = cfg.motion_steps * cfg.dim_motion
        self.register_buffer("prior_mean_x", torch.zeros(cfg.dim_content))
        self.register_buffer("prior_scale_x", torch.eye(cfg.dim_content))
        self.register_buffer("prior_mean_v", torch.zeros(dv))
        self.register_buffer("prior_scale_v", torch.eye(dv))
        self.register_buffer("prior_gain", torch.zeros(dv, cfg.dim_content))
        # The first clip's z_x: a mixture of PRIOR_COMPONENTS full-covariance Gaussians fitted to the content
        # encodings (weights, means, Cholesky factors); unfitted (all weights 0), z_x comes from the Gaussian.
        k = PRIOR_COMPONENTS
        self.register_buffer("prior_mix_weight", torch.zeros(k))
        self.register_buffer("prior_mix_mean", torch.zeros(k, cfg.dim_content))
        self.register_buffer("prior_mix_scale", torch.eye(cfg.dim_content).repeat(k, 1, 1))
        self.motion_prior = MotionPrior(cfg.dim_content, dv)

    def encode_content(self, frame: torch.Tensor):
        """(B, 3, H, W) -> (mu, logvar) of z_x, each (B, dim_content)."""
        return self.content_encoder(frame)

    def encode_motion(self, video: torch.Tensor):
        """(B, 3, T, H, W) -> (mu, logvar) of z_v, each (B, motion_steps, dim_motion)."""
        return self.movement_encoder(frame_differences(video, signed=self.cfg.signed_motion))

    def decode(self, z_x: torch.Tensor, z_v: torch.Tensor, ref: torch.Tensor | None = None,
               warp: WarpMode | None = None) -> torch.Tensor:
        return self.generator(z_x, z_v, ref, warp)

    def prior(self, batch: int, generator: torch.Generator | None = None, device=None, standard: bool = False):
        """z_x (B, Dx), z_v (B, T0, Dv) for a clip drawn from scratch: z_x from the fitted mixture (or the
        fitted Gaussian, or N(0, I) until `fit_prior`; `standard`: N(0, I)), z_v from the Gaussian prior's
        conditional given z_x. Random numbers are drawn on the CPU (seeded); latents moved to `device`."""
        weights = self.prior_mix_weight.detach().cpu().double()
        if not standard and weights.sum() > 0:
            k = torch.multinomial(weights, batch, replacement=True, generator=generator)
            eps = torch.randn(batch, self.cfg.dim_content, generator=generator)
            mean, scale = self.prior_mix_mean.detach().cpu().float(), self.prior_mix_scale.detach().cpu().float()
            z_x = mean[k] + torch.einsum("bij,bj->bi", scale[k], eps)
        else:
            z_x = torch.randn(batch, self.cfg.dim_content, generator=generator)
            if not standard:
                z_x = self.prior_mean_x.detach().cpu().float() + z_x @ self.prior_scale_x.detach().cpu().float().T
        dev = device if device is not None else next(self.parameters()).device
        return z_x.to(dev), self.motion_given_content(z_x, generator, dev, standard=standard)

    def motion_given_content(self, z_x: torch.Tensor, generator: torch.Generator | None = None, device=None,
                             standard: bool = False, temperature: float = 1.0) -> torch.Tensor:
        """z_v (B, T0, Dv) drawn from the Gaussian prior's conditional given z_x (B, Dx) (see `fit_prior`);
        `temperature` scales its spread. eps is drawn on the CPU."""
        c = self.cfg
        z_v = torch.randn(z_x.shape[0], c.motion_steps * c.dim_motion, generator=generator)
        if not standard:
            mx, mv, lv, gain = (b.detach().cpu().float() for b in (self.prior_mean_x, self.prior_mean_v,
                                                                   self.prior_scale_v, self.prior_gain))
            z_v = mv + (z_x.detach().cpu().float() - mx) @ gain.T + temperature * z_v @ lv.T
        dev = device if device is not None else next(self.parameters()).device
        return z_v.view(-1, c.motion_steps, c.dim_motion).to(dev)

    def next_motion(self, z_x: torch.Tensor, z_v: torch.Tensor, generator: torch.Generator | None = None,
                    device=None, standard: bool = False, temperature: float = 1.0) -> torch.Tensor:
        """The recall chain's movement latent (B, T0, Dv) for a clip whose content latent is z_x (B, Dx), after
        a clip that moved with z_v (B, T0, Dv): the learned motion prior (motion_prior.py) once fitted, else
        the Gaussian prior given z_x; `standard` draws from N(0, I). `temperature` scales the noise."""
        if standard or not self.motion_prior.is_fitted:
            return self.motion_given_content(z_x, generator, device, standard, temperature)
        c = self.cfg
        eps = torch.randn(z_x.shape[0], c.motion_steps * c.dim_motion, generator=generator)
        out = self.motion_prior.sample(z_x, z_v.flatten(1), eps.to(z_x.device), temperature)
        dev = device if device is not None else z_x.device
        return out.view(-1, c.motion_steps, c.dim_motion).to(dev)

    @torch.no_grad()
    def fit_prior(self, windows: torch.Tensor, batch: int = 64, motion_steps: int = 2000, seed: int = 0):
        """Fit the sampling priors to real windows (N, 3, L, H, W): a Gaussian over the posterior means of
        (z_x of frame 0, z_v of frames 0..T-1), and, when L >= 2T - 1, the learned motion prior on consecutive
        clips (z_x of frame T-1, z_v of frames 0..T-1 -> z_v of frames T-1..2T-2). Returns the motion prior's
        held-out fit (R^2; empty without it).

        Why fitted: with the small KL weight that keeps both latents informative (1e-4), the encoders'
        aggregate posterior is not N(0, I), and the decoder meets latents in sampling that it never saw in
        training (a 1,200-step cpu-preset run, chained from real digit frames: mean blend mask 0.42 with
        z_v ~ N(0, I), 0.01 with a fitted prior, 0.11 in reconstructions). A Gaussian fitted to the encoded
        training set after training ("ex-post density estimation", Ghosh et al., ICLR 2020) puts samples where
        the decoder was trained; `prior(standard=True)` keeps the paper's N(0, I).
        Why a mixture for z_x: one Gaussian over the content code also puts mass between digits; the first
        frames it decodes were 1.87 from the nearest real 8x8 digit (benchmarks/longgen.py), frames decoded from
        a 10-component mixture 1.57, reconstructions 1.51 (real frames 1.19). Ghosh et al. fit such mixtures.
        Why jointly: the motion of a clip depends on where its content is (a digit at the right border moves
        left). In the same run, a linear map of z_x predicts the digit's position with R^2 0.98 and its
        displacement over the clip with R^2 0.46; drawn independently of z_x, the chain's motion walked digits
        into the borders. Chains without a fitted motion prior draw z_v from the conditional given z_x.
        """
        self.eval()
        T = self.cfg.frames
        xs, vs, x2s, v2s = [], [], [], []
        for i in range(0, len(windows), batch):
            w = windows[i : i + batch].to(self.prior_mean_x.device)
            xs.append(self.encode_content(w[:, :, 0])[0].double().cpu())
            vs.append(self.encode_motion(w[:, :, :T])[0].flatten(1).double().cpu())
            if w.shape[2] >= 2 * T - 1:
                x2s.append(self.encode_content(w[:, :, T - 1])[0].double().cpu())
                v2s.append(self.encode_motion(w[:, :, T - 1 : 2 * T - 1])[0].flatten(1).double().cpu())
        z_x, z_v = torch.cat(xs), torch.cat(vs)
        mean, scale = gaussian_fit(torch.cat([z_x, z_v], 1))
        mean_x, mean_v, gain, scale_x, scale_v = split_gaussian(mean, scale, z_x.shape[1])
        for name, value in (("mean_x", mean_x), ("scale_x", scale_x), ("mean_v", mean_v), ("scale_v", scale_v),
                            ("gain", gain)):
            getattr(self, f"prior_{name}").copy_(value)
        for name, value in zip(("weight", "mean", "scale"), mixture_fit(z_x, PRIOR_COMPONENTS, seed=seed)):
            getattr(self, f"prior_mix_{name}").copy_(value)
        if not x2s:
            return {}
        return self.motion_prior.fit(torch.cat(x2s), z_v, torch.cat(v2s), steps=motion_steps, seed=seed)

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Encode a real clip (content of frame 0, motion of its differences) and decode it from frame 0."""
        mu_x, lv_x = self.encode_content(video[:, :, 0])
        mu_v, lv_v = self.encode_motion(video)
        z_x = reparameterise(mu_x, lv_x, generator) if sample else mu_x
        z_v = reparameterise(mu_v, lv_v, generator) if sample else mu_v
        return self.decode(z_x, z_v, ref=video[:, :, 0])

