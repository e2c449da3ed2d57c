"""One training step of EncGAN3, with REncGAN3's recall training on overlapping clips.

Per step, for a batch of real windows w of 2T - 1 frames (recall) or T frames (no recall):
- clip 1 = w[:T] is encoded (content of frame 0, movement of its differences) and decoded from its frame 0;
- recall: clip 2 = w[T-1:] is decoded from the *generated* last frame of clip 1 (detached; content encoded
  from it, movement encoded from the real clip 2); the two generated clips are merged (2T - 1 frames) and
  shown to the video discriminator against the real window, so the seam has to look like real motion;
- recall, as the sampler runs it: a third clip is decoded from the same generated frame with the content
  encoder's mean and a movement latent from the prior (exactly one step of `recall_chain`), merged with clip 1
  and judged by the video discriminator: the prior's motion and the chain's own references are trained on,
  not only the posterior's (exposure bias);
- unconditional clips from the prior train the generator's own first frame and the prior path;
- losses: L1 reconstruction (video and the spatial stream's own frame; optionally on an image pyramid) + KL
  of both latents + (warp) a penalty on the mean blend mask + non-saturating adversarial losses of the video
  and image discriminators.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from vmt.errors import VmtUsageError, param
from vmt.longgen.config import LongGenConfig
from vmt.longgen.discriminators import Discriminators
from vmt.longgen.losses import d_loss, g_loss, kl_standard_normal, l1, pyramid_l1, reparameterise
from vmt.longgen.model import EncGAN3


@dataclass
class TrainSettings:
    """Optimiser and loss weights (Adam betas (0.5, 0.999) as in G3AN).

    lr 5e-4 (G3AN: 2e-4): the L1 term dominates and CPU budgets are a few hundred steps. kl_weight 1e-4: the
    L1 is a mean over ~25k pixel values while the KL is summed over latent dimensions, so 1e-3 already made the
    movement posterior collapse onto the prior (encoder means with std 0.07 after 200 steps: motion ignored,
    reconstructions blurred into the mean motion); at 1e-4 both latents carry information.
    """

    batch_size: int = 16
    lr: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.999
    l1_weight: float = 1.0
    kl_weight: float = 1e-4
    adv_weight: float = 0.05
    recall: bool = True
    # Image warm-up: first steps that train only the content encoder and the spatial stream (the image of
    # z_x, the first frame of every sample drawn from scratch) on L1 + KL of single frames. In joint training
    # the video path barely needs z_x (it warps the real reference), and after 1,200 joint steps that image
    # was still a grey blob; alone, 3,000 of these steps (~30 ms each on a CPU, vs ~800 ms for a joint step)
    # give recognisable digits in place (held-out L1 0.027). The steps below are counted after these.
    image_warmup: int = 0
    # VAE warm-up: steps of L1 + KL only before the adversarial terms (and the discriminators) start. The
    # reconstruction path has to learn to move the reference first; a discriminator judging clips from an
    # untrained decoder only adds noise to that, and its steps cost ~40% of a training step.
    adv_warmup: int = 300
    # Warping generators: weight of an auxiliary L1 of the reference moved by the shifts alone (no blend).
    # Meant to keep teaching the shifts where the mask has faded a frame to black; off by default: in a
    # 300-step test with the earlier recursive, border-padded warp it kept the mask low but the shifts then
    # moved the digit off the canvas (black again) and did not follow the motion (r 0.02 vs 0.55 without it).
    # The mask penalty below does its job now.
    translation_l1_weight: float = 0.0
    # Weight of the L1 of the spatial stream's own image against the reference frame: that image is the
    # first frame of every sample drawn from scratch.
    image_l1_weight: float = 1.0
    # Warping generators: weight of the mean blend mask (frames 1..T-1), to prefer moving the reference over
    # redrawing it. Without it the mask faded a digit that the shifts had not yet learned to follow (a
    # missing digit costs half the L1 of a misplaced one), and a faded digit teaches the shifts nothing.
    mask_weight: float = 1.0
    # L1 on an image pyramid of this many levels (1: plain L1). Coarser levels still overlap a digit
    # placed a few pixels off, so a wrong shift gets a gradient towards the right one.
    pyramid_levels: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


class Trainer:
    """Holds the model, discriminators and their optimisers; `step(real)` runs one D and one G update."""

    def __init__(self, cfg: LongGenConfig, settings: TrainSettings, device=None):
        self.cfg = cfg
        self.settings = settings
        self.device = torch.device(device or "cpu")
        self.model = EncGAN3(cfg).to(self.device)
        self.discs = Discriminators(cfg).to(self.device)
        betas = (settings.beta1, settings.beta2)
        self.opt_g = torch.optim.Adam(self.model.parameters(), lr=settings.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discs.parameters(), lr=settings.lr, betas=betas)
        self.step_count = 0

    @property
    def window(self) -> int:
        """Frames per real training window: 2T - 1 with recall (two clips sharing one frame), else T."""
        return 2 * self.cfg.frames - 1 if self.settings.recall else self.cfg.frames

    def _random_frame(self, video: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, video.shape[2], (video.shape[0],), generator=gen).to(video.device)
        return video[torch.arange(video.shape[0], device=video.device), :, idx]

    def step(self, real: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        """real: (B, 3, window, H, W) in [-1, 1]. Returns the losses of this step."""
        s, T, model = self.settings, self.cfg.frames, self.model
        model.train()
        self.discs.train()
        real = real.to(self.device)
        if self.step_count < s.image_warmup:
            return self._image_step(real, gen)
        b = real.shape[0]
        clip1 = real[:, :, :T]
        ref = clip1[:, :, 0]

        mu_x, lv_x = model.encode_content(ref)
        mu_v, lv_v = model.encode_motion(clip1)
        z_x, z_v = reparameterise(mu_x, lv_x, gen), reparameterise(mu_v, lv_v, gen)
        parts = model.generator.parts(z_x, z_v, ref)
        rec1 = parts.video
        rec = pyramid_l1(rec1, clip1, s.pyramid_levels) + s.image_l1_weight * l1(parts.image, ref)
        if s.translation_l1_weight:
            rec = rec + s.translation_l1_weight * pyramid_l1(parts.warped, clip1, s.pyramid_levels)
        mask_mean = parts.mask[:, :, 1:].mean()
        mask_w = s.mask_weight if self.cfg.warp else 0.0  # in place, the mask is the only way to show motion
        kl = kl_standard_normal(mu_x, lv_x) + kl_standard_normal(mu_v, lv_v)

        if s.recall:
            clip2 = real[:, :, T - 1 :]
            # Detached: clip 2's L1 teaches the generator to continue from its own frame, not to change that
            # frame. Through it, a digit that clip 2 could not place well was cheapest to fade out of clip 1's
            # last frame, and recall chains, which start each clip there, went black.
            ref2 = rec1[:, :, -1].detach()
            mu_x2, lv_x2 = model.encode_content(ref2)
            mu_v2, lv_v2 = model.encode_motion(clip2)
            rec2 = model.decode(reparameterise(mu_x2, lv_x2, gen), reparameterise(mu_v2, lv_v2, gen), ref2)
            rec = rec + pyramid_l1(rec2, clip2, s.pyramid_levels)
            kl = kl + kl_standard_normal(mu_x2, lv_x2) + kl_standard_normal(mu_v2, lv_v2)
            fake_video = torch.cat([rec1, rec2[:, :, 1:]], 2)  # merged: both clips share frame T-1
            chain_video = None
            if self.step_count >= s.image_warmup + s.adv_warmup:  # only the discriminator judges it
                # One sampler step: content mean of the generated frame, fresh motion from the prior.
                mu_xc, _ = model.encode_content(ref2)
                _, zc_v = model.prior(b, gen, self.device, standard=True)
                chain = model.decode(mu_xc, zc_v, ref2)
                chain_video = torch.cat([rec1, chain[:, :, 1:]], 2)
        else:
            fake_video = rec1
            chain_video = None

        if self.step_count < s.image_warmup + s.adv_warmup:
            loss_g = s.l1_weight * rec + s.kl_weight * kl + mask_w * mask_mean
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            self.opt_g.step()
            self.step_count += 1
            return {"rec": float(rec.detach()), "kl": float(kl.detach()), "adv": 0.0, "d": 0.0,
                    "mask": float(mask_mean.detach())}

        zp_x, zp_v = model.prior(b, gen, self.device, standard=True)
        prior_video = model.decode(zp_x, zp_v, None)
        fake_frames = torch.cat([self._random_frame(rec1, gen), self._random_frame(prior_video, gen)])
        real_frames = self._random_frame(real, gen)

        # Discriminator update.
        dv, di = self.discs.video, self.discs.image
        loss_d = (
            d_loss(dv(real), dv(fake_video.detach()))
            + d_loss(dv(clip1), dv(prior_video.detach()))
            + d_loss(di(real_frames), di(fake_frames.detach()))
        )
        if chain_video is not None:
            loss_d = loss_d + d_loss(dv(real), dv(chain_video.detach()))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # Generator + encoders update (discriminators frozen for this pass).
        for p in self.discs.parameters():
            p.requires_grad_(False)
        adv = g_loss(dv(fake_video)) + g_loss(dv(prior_video)) + g_loss(di(fake_frames))
        if chain_video is not None:
            adv = adv + g_loss(dv(chain_video))
        for p in self.discs.parameters():
            p.requires_grad_(True)
        loss_g = s.l1_weight * rec + s.kl_weight * kl + mask_w * mask_mean + s.adv_weight * adv
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.step_count += 1
        return {"rec": float(rec.detach()), "kl": float(kl.detach()), "adv": float(adv.detach()),
                "d": float(loss_d.detach()), "mask": float(mask_mean.detach())}


    def _image_step(self, real: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
        """Image warm-up: L1 + KL of a random frame per window through z_x and the spatial stream alone."""
        s, model = self.settings, self.model
        frame = self._random_frame(real, gen)
        mu_x, lv_x = model.encode_content(frame)
        image = model.generator.image(reparameterise(mu_x, lv_x, gen))
        rec = pyramid_l1(image[:, :, None], frame[:, :, None], s.pyramid_levels)
        kl = kl_standard_normal(mu_x, lv_x)
        loss = s.l1_weight * rec + s.kl_weight * kl
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.step_count += 1
        return {"rec": float(rec.detach()), "kl": float(kl.detach()), "adv": 0.0, "d": 0.0, "mask": 0.0}


def train_steps(trainer: Trainer, source, steps: int, *, seed: int = 0, on_step=None) -> list[dict[str, float]]:
    """Run `steps` updates on windows drawn from `source` (a ClipSource). Deterministic for a seed on CPU."""
    rng = np.random.default_rng([seed, trainer.step_count])
    gen = torch.Generator("cpu").manual_seed((seed * 1_000_003 + trainer.step_count) % 2**64)
    history = []
    for _ in range(steps):
        real = source.sample(trainer.settings.batch_size, trainer.window, rng)
        logs = trainer.step(real, gen)
        history.append(logs)
        if on_step is not None:
            on_step(trainer.step_count, logs)
    return history


@torch.no_grad()
def reconstruction_l1(model: EncGAN3, clips: torch.Tensor) -> float:
    """Mean |x - reconstruct(x)| over clips (B, 3, T, H, W) in [-1, 1], with latent means (eval mode)."""
    model.eval()
    dev = next(model.parameters()).device
    out = model.reconstruct(clips.to(dev))
    return float((out - clips.to(dev)).abs().mean())


@torch.no_grad()
def fit_sampling_prior(model: EncGAN3, source, clips: int = 2048, seed: int = 0,
                       motion_steps: int = 2000) -> dict[str, float]:
    """Fit the model's sampling priors (EncGAN3.fit_prior) to `clips` random training windows of two
    consecutive clips (2T - 1 frames), or of one clip where no video is that long (then no motion prior).
    Returns the motion prior's held-out R^2 (and a linear fit's, for comparison)."""
    T = model.cfg.frames
    try:
        source.check(2 * T - 1)
        length = 2 * T - 1
    except VmtUsageError:
        length = T
    windows = source.sample(clips, length, np.random.default_rng([seed, 7]))
    return model.fit_prior(windows, motion_steps=motion_steps, seed=seed)


# Settings that may differ when a run is resumed: how long and where it runs, and what data it reads. Everything
# else (model sizes, optimiser and loss settings, seed) is the run's own, read from its config.json.
RESUMABLE = frozenset({"steps", "sample_every", "save_every", "device", "data", "stride", "fps", "max_frames"})


def saved_settings(meta: dict) -> TrainSettings:
    """The TrainSettings a run was saved with (fields it predates keep their defaults)."""
    from dataclasses import fields

    names = {f.name for f in fields(TrainSettings)}
    return TrainSettings(**{k: v for k, v in meta.get("train", {}).items() if k in names})


def resume_conflicts(meta: dict, requested: dict) -> list[str]:
    """Requested settings that differ from the run's (`requested`: name -> value of the settings given)."""
    saved = {**saved_settings(meta).to_dict(), **meta.get("model", {}), "seed": meta.get("seed")}
    return [f"{k} {v!r} (the run has {saved[k]!r})" for k, v in requested.items()
            if k in saved and k not in RESUMABLE and saved[k] != v]


def open_trainer(run_dir, *, resume: bool, settings: TrainSettings, cfg: LongGenConfig, seed: int, steps: int,
                 given: dict, model_given: bool, device=None) -> tuple[Trainer, TrainSettings, int]:
    """The Trainer of a new run (`settings`, `cfg`, `seed`), or of the run in `run_dir` resumed with its own
    settings, model config and seed, weights and optimiser state loaded. `given`: the settings the user set
    (name -> value), an error where they differ from the run's; `model_given`: the model flags were set, so
    `cfg` must equal the run's. Returns (trainer, settings, seed)."""
    from vmt.errors import VmtUsageError
    from vmt.longgen.checkpoint import read_meta, resume_trainer

    if resume:
        meta = read_meta(run_dir)
        bad = resume_conflicts(meta, given)
        if bad:
            raise VmtUsageError(f"{param('resume')}: {run_dir} was trained with other settings: "
                                + "; ".join(bad) + ". Drop these settings (a resumed run keeps its own) or "
                                f"start a new {param('output')} folder")
        settings, seed = saved_settings(meta), meta.get("seed", seed)
        cfg = cfg if model_given else LongGenConfig.from_dict(meta["model"])
    torch.manual_seed(seed)
    trainer = Trainer(cfg, settings, device)
    if resume:  # before any data is read: a mismatching run fails fast
        resume_trainer(run_dir, trainer)
        if trainer.step_count >= steps:
            raise VmtUsageError(f"{run_dir} is already at step {trainer.step_count}; pass {param('steps')} "
                                "above that")
    return trainer, settings, seed


def _next_stop(step: int, total: int, *every: int) -> int:
    """Steps until the next sample/save point or the end."""
    return min([total] + [(step // e + 1) * e for e in every if e]) - step


def train_run(run_dir, trainer: Trainer, source, *, steps: int, seed: int, data: str, sample_every: int = 250,
              save_every: int = 250, on_step=None, timer=None) -> dict:
    """Train `trainer` on `source` up to step `steps`, writing into `run_dir`: sample grids every
    `sample_every` steps, and checkpoints (with the sampling priors fitted to that decoder) every
    `save_every` and at the end. Returns {"final_losses", "motion_prior_fit"}."""
    import contextlib
    from pathlib import Path

    from vmt.longgen.checkpoint import save_run
    from vmt.longgen.sampling import write_sample_grid

    run_dir = Path(run_dir)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    stage = timer.stage if timer is not None else (lambda name: contextlib.nullcontext())
    last: dict[str, float] = {}
    prior_fit: dict[str, float] = {}
    with stage("train"):
        while trainer.step_count < steps:
            chunk = _next_stop(trainer.step_count, steps, sample_every, save_every)
            for logs in train_steps(trainer, source, chunk, seed=seed):
                last = logs
                if on_step is not None:
                    on_step(logs)
            s = trainer.step_count
            if sample_every and s % sample_every == 0 or s == steps:
                write_sample_grid(trainer.model, run_dir / "samples" / f"step_{s:06d}.png", seed=seed)
            if save_every and s % save_every == 0 or s == steps:
                with stage("fit_prior"):  # every saved run samples from where its decoder was trained
                    prior_fit.update(fit_sampling_prior(trainer.model, source, seed=seed))
                save_run(run_dir, trainer, seed=seed, data=data)
    return {"final_losses": last, "motion_prior_fit": prior_fit}
