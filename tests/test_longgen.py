"""vmt.longgen: shapes, losses against closed forms, the recall chain, training, data and checkpoints."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from vmt.errors import VmtError, VmtUsageError
from vmt.longgen.config import PRESETS, LongGenConfig, preset
from vmt.longgen.discriminators import Discriminators
from vmt.longgen.losses import kl_standard_normal
from vmt.longgen.model import EncGAN3

torch.set_num_threads(1)


def _seeded_model(name: str, seed: int = 0) -> EncGAN3:
    torch.manual_seed(seed)
    return EncGAN3(preset(name)).eval()


# ---------------------------------------------------------------- shapes and sizes

@pytest.mark.parametrize("name", ["tiny", "cpu", pytest.param("paper", marks=pytest.mark.slow)])
def test_generator_shapes_and_range(name):
    model = _seeded_model(name)
    cfg = model.cfg
    with torch.no_grad():
        z_x, z_v = model.prior(2, torch.Generator().manual_seed(1))
        video = model.decode(z_x[:1] * 3, z_v[:1] * 3)  # large latents: the output must still be in range
    assert video.shape == (1, 3, cfg.frames, cfg.size, cfg.size)
    assert video.min() >= -1 and video.max() <= 1
    assert torch.isfinite(video).all()


def test_paper_preset_is_the_g3an_size():
    cfg = PRESETS["paper"]
    assert (cfg.size, cfg.frames, cfg.base_channels) == (64, 16, 64)
    assert cfg.channels == [512, 512, 256, 128, 64]  # G3AN: 512@4, 512@8, 256@16, 128@32, 64@64
    assert cfg.temporal_upsampling == [True, True, False, False]  # 4 -> 8 -> 16 -> 16 -> 16 frames
    # T0 = n motion steps gives 4 (n + 3) frames at 64x64.
    for n in (1, 2, 5):
        assert LongGenConfig(motion_steps=n, frames=4 * (n + 3)).frames == 4 * (n + 3)


def test_invalid_sizes_name_the_fix():
    with pytest.raises(VmtUsageError, match="power of two"):
        LongGenConfig(size=48)
    with pytest.raises(VmtUsageError, match=r"one of \[4, 8, 16"):
        LongGenConfig(frames=12)
    with pytest.raises(VmtUsageError, match="unknown preset"):
        preset("huge")


@pytest.mark.parametrize("name", ["tiny", "cpu"])
def test_encoder_shapes(name):
    model = _seeded_model(name)
    cfg = model.cfg
    x = torch.rand(3, 3, cfg.frames, cfg.size, cfg.size) * 2 - 1
    mu_x, lv_x = model.encode_content(x[:, :, 0])
    mu_v, lv_v = model.encode_motion(x)
    assert mu_x.shape == lv_x.shape == (3, cfg.dim_content)
    assert mu_v.shape == lv_v.shape == (3, cfg.motion_steps, cfg.dim_motion)


def test_discriminator_shapes_accept_merged_recall_clips():
    cfg = preset("tiny")
    d = Discriminators(cfg)
    for t in (cfg.frames, 2 * cfg.frames - 1):
        out = d.video(torch.zeros(2, 3, t, cfg.size, cfg.size))
        assert out.shape == (2, t - (d.video.min_frames - 1))
    assert d.image(torch.zeros(5, 3, cfg.size, cfg.size)).shape == (5,)
    # spectral norm is on: every conv weight of the discriminators is parametrised
    convs = [m for m in d.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)


def test_movement_encoder_sees_absolute_or_signed_differences():
    from vmt.longgen.encoders import frame_differences

    x = torch.zeros(1, 1, 3, 1, 1)
    x[0, 0, :, 0, 0] = torch.tensor([0.0, 0.5, -0.25])
    assert frame_differences(x)[0, 0, :, 0, 0].tolist() == [0.5, 0.75]
    assert frame_differences(x, signed=True)[0, 0, :, 0, 0].tolist() == [0.5, -0.75]


# ---------------------------------------------------------------- losses

def test_kl_of_standard_normal_posterior_is_zero():
    mu, lv = torch.zeros(4, 7), torch.zeros(4, 7)
    assert kl_standard_normal(mu, lv).item() == 0.0


def test_kl_matches_closed_form_in_float64():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    lv = torch.randn(5, 3, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * lv).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert kl_standard_normal(mu, lv).item() == pytest.approx(ref.item(), rel=1e-12)


def test_pyramid_l1_against_a_numpy_pyramid_in_float64():
    from vmt.longgen.losses import l1, pyramid_l1

    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 3, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    assert pyramid_l1(x, y, 1).item() == l1(x, y).item()
    a, b, terms = x.numpy(), y.numpy(), []
    for _ in range(3):
        terms.append(np.abs(a - b).mean())
        a, b = (v.reshape(*v.shape[:3], v.shape[3] // 2, 2, v.shape[4] // 2, 2).mean((4, 6)) for v in (a, b))
    assert pyramid_l1(x, y, 3).item() == pytest.approx(np.mean(terms), rel=1e-12)


def test_pyramid_l1_sees_a_misplaced_dot_that_plain_l1_does_not():
    # A one-pixel dot 1 vs 2 pixels off: plain L1 is the same (no overlap either way), so it gives no
    # direction; the pyramid's coarse levels still overlap at 1 pixel and rank it closer.
    from vmt.longgen.losses import l1, pyramid_l1

    target = torch.zeros(1, 1, 1, 8, 8)
    target[..., 2, 2] = 1
    near, far = torch.roll(target, 1, dims=-1), torch.roll(target, 3, dims=-1)
    assert l1(near, target).item() == l1(far, target).item()
    assert pyramid_l1(near, target, 3).item() < pyramid_l1(far, target, 3).item()


def test_prior_is_standard_normal_until_fitted():
    model = _seeded_model("tiny")
    cfg = model.cfg
    z_x, z_v = model.prior(3, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(z_x, torch.randn(3, cfg.dim_content, generator=g), rtol=0, atol=0)
    torch.testing.assert_close(z_v.flatten(1), torch.randn(3, cfg.motion_steps * cfg.dim_motion, generator=g),
                               rtol=0, atol=0)


@pytest.mark.slow
def test_fitted_prior_matches_the_posterior_means_in_float64(monkeypatch):
    # Encoders replaced by known Gaussians, z_v correlated with z_x: the fit must give their joint sample mean
    # and covariance (numpy, float64), the conditional of z_v given z_x must be the regression
    # mean_v + C_vx C_xx^-1 (z_x - mean_x), and draws must follow the stored factors.
    model = _seeded_model("tiny")
    cfg = model.cfg
    g = torch.Generator().manual_seed(0)
    n, dx, dv = 500, cfg.dim_content, cfg.motion_steps * cfg.dim_motion
    mix_x, mix_v = torch.randn(dx, dx, generator=g), torch.randn(dv, dv, generator=g)
    couple = torch.randn(dx, dv, generator=g)
    zx = torch.randn(n, dx, generator=g) @ mix_x + 3.0
    zv = torch.randn(n, dv, generator=g) @ mix_v + 0.5 * zx @ couple - 1.0
    clips = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1, 1).expand(n, 3, cfg.frames, 2, 2)
    monkeypatch.setattr(model, "encode_content", lambda f: (zx[f[:, 0, 0, 0].long()], None))
    monkeypatch.setattr(model, "encode_motion", lambda c: (zv[c[:, 0, 0, 0, 0].long()].view(-1, cfg.motion_steps,
                                                                                                  cfg.dim_motion), None))
    model.fit_prior(clips, batch=64)
    joint = torch.cat([zx, zv], 1).double().numpy()
    ref_cov = np.cov(joint.T)
    ref_cov = ref_cov + 1e-4 * np.trace(ref_cov) / len(ref_cov) * np.eye(len(ref_cov))
    ref_mean = joint.mean(0)
    lx, lv, gain = (b.double().numpy() for b in (model.prior_scale_x, model.prior_scale_v, model.prior_gain))
    np.testing.assert_allclose(model.prior_mean_x.double().numpy(), ref_mean[:dx], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.prior_mean_v.double().numpy(), ref_mean[dx:], rtol=1e-5, atol=1e-5)
    cxx, cvx, cvv = ref_cov[:dx, :dx], ref_cov[dx:, :dx], ref_cov[dx:, dx:]
    np.testing.assert_allclose(lx @ lx.T, cxx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gain, cvx @ np.linalg.inv(cxx), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lv @ lv.T, cvv - cvx @ np.linalg.solve(cxx, cvx.T), rtol=1e-4, atol=1e-4)
    # Draws: z_x from the fitted mixture (component k, then mean_k + L_k eps), z_v from the conditional.
    z_x, z_v = model.prior(2, torch.Generator().manual_seed(9))
    eg = torch.Generator().manual_seed(9)
    k = torch.multinomial(model.prior_mix_weight.double(), 2, replacement=True, generator=eg)
    eps_x, eps_v = torch.randn(2, dx, generator=eg), torch.randn(2, dv, generator=eg)
    expected_x = model.prior_mix_mean[k] + (model.prior_mix_scale[k] @ eps_x[:, :, None])[:, :, 0]
    torch.testing.assert_close(z_x, expected_x)
    expected_v = (model.prior_mean_v + (z_x - model.prior_mean_x) @ model.prior_gain.T
                  + eps_v @ model.prior_scale_v.T)
    torch.testing.assert_close(z_v.flatten(1), expected_v)
    # Without a mixture, z_x comes from the Gaussian; `standard` draws N(0, I).
    model.prior_mix_weight.zero_()
    z_x, _ = model.prior(2, torch.Generator().manual_seed(9))
    eg = torch.Generator().manual_seed(9)
    eps_x, eps_v = torch.randn(2, dx, generator=eg), torch.randn(2, dv, generator=eg)
    torch.testing.assert_close(z_x, model.prior_mean_x + eps_x @ model.prior_scale_x.T)
    z_std, v_std = model.prior(2, torch.Generator().manual_seed(9), standard=True)
    torch.testing.assert_close(z_std, eps_x, rtol=0, atol=0)
    torch.testing.assert_close(v_std.flatten(1), eps_v, rtol=0, atol=0)


def test_mixture_prior_finds_known_clusters():
    from vmt.longgen.gaussians import mixture_fit

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [-4.0, 1.0, 0.0]])
    labels = (torch.rand(3000, generator=g) < 0.3).long()  # 30% in cluster 1
    z = centres[labels] + 0.5 * torch.randn(3000, 3, generator=g)
    weights, means, scales = mixture_fit(z, 2, seed=0)
    order = means[:, 0].argsort(descending=True)  # cluster 0 (x = +4) first
    torch.testing.assert_close(means[order], centres.double(), atol=0.05, rtol=0)
    torch.testing.assert_close(weights[order], torch.tensor([0.7, 0.3], dtype=torch.float64), atol=0.03, rtol=0)
    cov = scales @ scales.transpose(1, 2)
    torch.testing.assert_close(cov, 0.25 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3), atol=0.03, rtol=0)
    # More components than the data can support: the extra ones get weight 0 and are never drawn.
    w, _, _ = mixture_fit(z[:6], 10)
    assert (w[3:] == 0).all() and abs(float(w.sum()) - 1) < 1e-9


@pytest.mark.slow
def test_motion_prior_learns_a_bounce_that_a_linear_fit_cannot():
    # Ground truth: the next motion keeps the previous one, reversed where the content is past a wall
    # (|x_0| > 0.8), plus Gaussian noise of known covariance. A linear map cannot reverse on one side only.
    from vmt.longgen.motion_prior import INPUT_RANGE, MotionPrior

    g = torch.Generator().manual_seed(0)
    n, dx, dv = 6000, 3, 2
    z_x, z_v = torch.randn(n, dx, generator=g), torch.randn(n, dv, generator=g)
    noise_scale = torch.tensor([[0.1, 0.0], [0.05, 0.08]])  # known noise
    flip = torch.where(z_x[:, :1].abs() > 0.8, -1.0, 1.0)
    z_next = flip * z_v + torch.randn(n, dv, generator=g) @ noise_scale.T
    prior = MotionPrior(dx, dv, hidden=64)
    assert not prior.is_fitted
    fit = prior.fit(z_x, z_v, z_next, steps=1500, seed=0)
    assert prior.is_fitted and fit["r2"] > 0.9 and fit["r2_linear"] < 0.5, fit
    held = torch.arange(int(0.9 * n), n)
    held = held[(z_x[held, 0].abs() - 0.8).abs() > 0.1]  # away from the wall, where the map jumps
    inputs = (torch.cat([z_x, z_v], 1)[held] - prior.in_mean) / prior.in_std
    held = held[inputs.abs().amax(1) < INPUT_RANGE]  # and inside the range the prior reads (clamped outside)
    with torch.no_grad():
        err = (prior.mean(z_x[held], z_v[held]) - flip[held] * z_v[held]).pow(2).mean().sqrt()
        cov = prior.scale.double() @ prior.scale.double().T
        fit_part = slice(0, int(0.9 * n))
        resid = (z_next[fit_part] - prior.mean(z_x[fit_part], z_v[fit_part])).double().numpy()
    assert err < 0.1, err
    # The noise is the spread of the fit's own residuals (numpy, float64; plus the 1e-4 ridge).
    ref_cov = np.cov(resid.T)
    ref_cov = ref_cov + 1e-4 * np.trace(ref_cov) / dv * np.eye(dv)
    np.testing.assert_allclose(cov.numpy(), ref_cov, rtol=1e-4, atol=1e-6)
    assert np.all(np.diag(ref_cov) < 0.1)  # well under the unit variance of z_next
    eps = torch.randn(4, dv, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(prior.sample(z_x[:4], z_v[:4], eps, 0.5),
                                   prior.mean(z_x[:4], z_v[:4]) + 0.5 * eps @ prior.scale.T)
    assert not any(p.requires_grad for p in prior.parameters())
    # Far outside the fit, inputs are read at the edge of its range, so a chain that feeds the prior its own
    # output cannot run away.
    far_v = 1e6 * z_v[:4].sign()
    edge_v = prior.in_mean[dx:] + INPUT_RANGE * prior.in_std[dx:] * z_v[:4].sign()
    with torch.no_grad():
        torch.testing.assert_close(prior.mean(z_x[:4], far_v), prior.mean(z_x[:4], edge_v))


def test_chain_draws_motion_from_the_learned_prior_once_fitted():
    model = _seeded_model("tiny")
    cfg = model.cfg
    dv = cfg.motion_steps * cfg.dim_motion
    z_x = torch.randn(3, cfg.dim_content, generator=torch.Generator().manual_seed(1))
    z_v = torch.randn(3, cfg.motion_steps, cfg.dim_motion, generator=torch.Generator().manual_seed(2))
    # Unfitted: the Gaussian prior given z_x (N(0, I) here), whatever the previous motion.
    first = model.next_motion(z_x, z_v, torch.Generator().manual_seed(5))
    torch.testing.assert_close(first.flatten(1), torch.randn(3, dv, generator=torch.Generator().manual_seed(5)))
    g = torch.Generator().manual_seed(3)
    xs, vs = torch.randn(512, cfg.dim_content, generator=g), torch.randn(512, dv, generator=g)
    model.motion_prior.fit(xs, vs, -vs, steps=50, seed=0)
    cold = model.next_motion(z_x, z_v, torch.Generator().manual_seed(5), temperature=0.0)
    with torch.no_grad():
        torch.testing.assert_close(cold.flatten(1), model.motion_prior.mean(z_x, z_v.flatten(1)))
    warm = model.next_motion(z_x, z_v, torch.Generator().manual_seed(5), temperature=1.0)
    eps = torch.randn(3, dv, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(warm.flatten(1), cold.flatten(1) + eps @ model.motion_prior.scale.T)
    std = model.next_motion(z_x, z_v, torch.Generator().manual_seed(5), standard=True)
    torch.testing.assert_close(std.flatten(1), eps)


@pytest.mark.slow
def test_videos_too_short_for_two_clips_fit_only_the_gaussian_priors():
    from vmt.longgen.data import ClipSource, moving_digits
    from vmt.longgen.train import fit_sampling_prior

    model = _seeded_model("tiny")
    T = model.cfg.frames
    short = ClipSource(list(moving_digits(6, T, model.cfg.size, seed=2)), [f"v{i}" for i in range(6)])
    assert fit_sampling_prior(model, short, clips=64) == {}
    assert not model.motion_prior.is_fitted and model.prior_mix_weight.sum() > 0
    longer = ClipSource(list(moving_digits(6, 2 * T - 1, model.cfg.size, seed=2)), [f"v{i}" for i in range(6)])
    fit = fit_sampling_prior(model, longer, clips=64, motion_steps=20)
    assert set(fit) == {"r2", "r2_linear"} and model.motion_prior.is_fitted


def test_runs_saved_without_a_fitted_prior_load_with_the_standard_normal(tmp_path):
    from vmt.longgen.checkpoint import load_model, save_run
    from vmt.longgen.train import Trainer, TrainSettings

    trainer = Trainer(preset("tiny"), TrainSettings(batch_size=2))
    with torch.no_grad():
        trainer.model.prior_mean_x.fill_(5.0)
    save_run(tmp_path / "run", trainer, seed=0, data="synthetic:digits")
    from safetensors.torch import load_file, save_file

    path = tmp_path / "run" / "model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if not k.startswith(("prior_", "motion_prior."))}, path)
    model, _ = load_model(tmp_path / "run")
    assert model.prior_mean_x.abs().max() == 0 and torch.equal(model.prior_scale_x, torch.eye(model.cfg.dim_content))
    assert model.prior_gain.abs().max() == 0 and not model.motion_prior.is_fitted
    assert model.prior_mix_weight.sum() == 0  # no mixture: z_x from the (here standard) Gaussian


# ---------------------------------------------------------------- generator details

def test_generator_starts_from_the_reference_frame():
    model = _seeded_model("tiny")
    cfg = model.cfg
    ref = torch.rand(2, 3, cfg.size, cfg.size) * 1.6 - 0.8
    with torch.no_grad():
        video = model.decode(*model.prior(2, torch.Generator().manual_seed(0)), ref=ref)
    torch.testing.assert_close(video[:, :, 0], ref, atol=1e-5, rtol=0)
    assert not torch.allclose(video[:, :, -1], ref, atol=1e-3)  # later frames move away from it


def test_generator_is_the_same_function_in_train_and_eval_mode_and_per_sample():
    # BatchNorm made eval-mode samples (running statistics) differ from what training saw (batch statistics)
    # and made each sample depend on its batch: the sampler then ran a different function than the one trained.
    model = _seeded_model("cpu")
    cfg = model.cfg
    g = torch.Generator().manual_seed(3)
    z_x, z_v = model.prior(4, g)
    ref = torch.rand(4, 3, cfg.size, cfg.size, generator=g) * 2 - 1
    with torch.no_grad():
        model.train()
        train_out = model.decode(z_x, z_v, ref)
        alone = model.decode(z_x[:1], z_v[:1], ref[:1])
        train_mu, _ = model.encode_content(ref)
        model.eval()
        eval_out = model.decode(z_x, z_v, ref)
        eval_mu, _ = model.encode_content(ref)
    torch.testing.assert_close(train_out, eval_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, train_out[:1], atol=1e-5, rtol=0)
    torch.testing.assert_close(train_mu, eval_mu, atol=1e-5, rtol=0)


def test_recall_chain_does_not_depend_on_the_module_mode():
    from vmt.longgen.recall import recall_chain

    model = _seeded_model("tiny")
    runs = []
    for training in (True, False):
        model.train(training)
        runs.append(torch.cat(list(recall_chain(model, 30, batch=2, generator=torch.Generator().manual_seed(0))), 2))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=0)


def test_frames_blend_reference_and_generated_frame():
    # Without warping: x_t = ref + m_t (g_t - ref) with m_t = sigmoid, g_t = tanh of the last layer's 4 output
    # channels (closed form of the documented design, evaluated in float64 from the generator's features).
    torch.manual_seed(0)
    model = EncGAN3(preset("tiny").with_(warp=False)).eval().double()
    cfg = model.cfg
    g = torch.Generator().manual_seed(1)
    z_x, z_v = (z.double() for z in model.prior(2, g))
    ref = (torch.rand(2, 3, cfg.size, cfg.size, generator=g, dtype=torch.float64) * 2 - 1)
    with torch.no_grad():
        video = model.decode(z_x, z_v, ref)
        _, _, feats = model.generator.features(z_x, z_v)
        out = model.generator.to_frames(feats)
    frames, mask = torch.tanh(out[:, :3]), torch.sigmoid(out[:, 3:])
    expected = ref[:, :, None] + mask * (frames - ref[:, :, None])
    torch.testing.assert_close(video[:, :, 1:], expected[:, :, 1:], atol=1e-12, rtol=0)
    # each frame lies between the reference and the generated frame, so it can never leave [-1, 1]
    lo, hi = torch.minimum(ref[:, :, None], frames), torch.maximum(ref[:, :, None], frames)
    assert (video[:, :, 1:] >= lo[:, :, 1:] - 1e-12).all() and (video[:, :, 1:] <= hi[:, :, 1:] + 1e-12).all()


def _reflect(v: float, n: int) -> float:
    """Mirror a coordinate into [0, n - 1] about the centres of the end pixels."""
    period = 2.0 * (n - 1)
    v = abs(v) % period
    return period - v if v > n - 1 else v


def _bilinear_warp_reference(image: np.ndarray, dx: float, dy: float, padding: str = "border") -> np.ndarray:
    """Brute force in float64: out[c, y, x] = image[c] at (y + dy, x + dx), bilinear; coordinates clamped
    ("border") or mirrored ("reflection") into the image."""
    c, h, w = image.shape
    out = np.zeros_like(image)
    for y, x in itertools.product(range(h), range(w)):
        if padding == "border":
            sy, sx = min(max(y + dy, 0.0), h - 1.0), min(max(x + dx, 0.0), w - 1.0)
        else:
            sy, sx = _reflect(y + dy, h), _reflect(x + dx, w)
        y0, x0 = int(math.floor(sy)), int(math.floor(sx))
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        fy, fx = sy - y0, sx - x0
        out[:, y, x] = ((1 - fy) * (1 - fx) * image[:, y0, x0] + (1 - fy) * fx * image[:, y0, x1]
                        + fy * (1 - fx) * image[:, y1, x0] + fy * fx * image[:, y1, x1])
    return out


def test_warp_moves_an_image_by_a_known_displacement():
    from vmt.longgen.generator import warp_frames

    g = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, 12, 12, generator=g, dtype=torch.float64)
    flows = [(2.0, -3.0), (0.25, 0.5), (-1.75, 4.4)]
    flow = torch.tensor(flows, dtype=torch.float64).T[None, :, :, None, None].expand(-1, -1, -1, 12, 12)
    out = warp_frames(img, flow)
    assert out.shape == (1, 3, 3, 12, 12)
    # integer flow (2, -3): a plain shift of the pixels
    torch.testing.assert_close(out[0, :, 0, 3:, :10], img[0, :, :9, 2:], atol=1e-12, rtol=0)
    for t, (dx, dy) in enumerate(flows):
        ref = _bilinear_warp_reference(img[0].numpy(), dx, dy)
        np.testing.assert_allclose(out[0, :, t].numpy(), ref, atol=1e-12)
    mirrored = warp_frames(img, flow * 4, padding="reflection")  # up to 17.6 pixels: past the far border
    for t, (dx, dy) in enumerate(flows):
        ref = _bilinear_warp_reference(img[0].numpy(), 4 * dx, 4 * dy, "reflection")
        np.testing.assert_allclose(mirrored[0, :, t].numpy(), ref, atol=1e-12)


def test_warping_generator_blends_the_reference_moved_by_the_summed_shifts():
    # x_t = w_t + m_t (g_t - w_t), w_t = the reference translated by f_1 + ... + f_t, f = a ReLU MLP of z_v,
    # (x, y) per frame, times size/8 pixels; each frame checked against the brute-force bilinear warp (float64).
    model = _seeded_model("tiny").double()
    cfg = model.cfg
    assert cfg.warp
    with torch.no_grad():  # the shift head starts near zero (almost no motion); give it some
        model.generator.to_shift[-1].bias[:] = torch.linspace(-0.5, 0.5, 2 * cfg.frames, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    z_x, z_v = (z.double() for z in model.prior(1, g))
    ref = torch.rand(1, 3, cfg.size, cfg.size, generator=g, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        video = model.decode(z_x, z_v, ref)
        _, _, feats = model.generator.features(z_x, z_v)
        out = model.generator.to_frames(feats)
        hidden = torch.relu(z_v.flatten(1) @ model.generator.to_shift[0].weight.T + model.generator.to_shift[0].bias)
        head = model.generator.to_shift[-1]
        step = (hidden @ head.weight.T + head.bias).view(2, cfg.frames).numpy() * cfg.size / 8  # (2, T) pixels
    frames, mask = torch.tanh(out[0, :3]).numpy(), torch.sigmoid(out[0, 3]).numpy()
    shift = np.cumsum(step[:, 1:], axis=1)
    assert np.abs(shift).max() > 1.0  # the warp moves by more than a pixel
    np.testing.assert_allclose(video[0, :, 0].numpy(), ref[0].numpy(), atol=1e-12)
    for t in range(1, cfg.frames):
        w = _bilinear_warp_reference(ref[0].numpy(), shift[0, t - 1], shift[1, t - 1], "reflection")
        np.testing.assert_allclose(video[0, :, t].numpy(), w + mask[t] * (frames[:, t] - w), atol=1e-10)
    assert -1 <= video.min() and video.max() <= 1


def test_chain_warp_moves_the_reference_by_whole_pixels_with_black_entering():
    # CHAIN_WARP: the summed shifts rounded to whole pixels, a lossless copy; outside the frame reads -1.
    # (Random content fills the frame, so there is nothing to bounce: see the next test.)
    from vmt.longgen.generator import CHAIN_WARP

    model = _seeded_model("tiny").double()
    cfg = model.cfg
    with torch.no_grad():
        model.generator.to_shift[-1].bias[:] = torch.linspace(-0.7, 0.7, 2 * cfg.frames, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    z_x, z_v = (z.double() for z in model.prior(1, g))
    ref = torch.rand(1, 3, cfg.size, cfg.size, generator=g, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        parts = model.generator.parts(z_x, z_v, ref, CHAIN_WARP)
        step = model.generator.steps(z_v)[0].numpy()
    shift = np.rint(np.cumsum(step[:, 1:], axis=1)).astype(int)  # (2, T-1) whole pixels
    assert np.abs(shift).max() >= 2
    size = cfg.size
    for t in range(1, cfg.frames):
        sx, sy = shift[:, t - 1]
        expected = np.full((3, size, size), -1.0)
        # out(p) = ref(p + s): rows/columns whose source lies inside the frame copy it exactly.
        ys, xs = np.arange(size) + sy, np.arange(size) + sx
        iy, ix = (ys >= 0) & (ys < size), (xs >= 0) & (xs < size)
        rows, cols = np.ix_(iy, ix)
        expected[:, rows, cols] = ref[0].numpy()[:, ys[iy]][:, :, xs[ix]]
        np.testing.assert_allclose(parts.warped[0, :, t].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(parts.video[0, :, 0].numpy(), ref[0].numpy(), atol=1e-12)


def test_bounce_reflects_the_content_at_the_walls_and_keeps_all_of_it():
    from vmt.longgen.generator import bounce_shifts, content_box, warp_frames

    size, T = 32, 8
    img = torch.full((1, 3, size, size), -1.0)
    img[:, :, 10:14, 20:24] = 0.6  # a 4x4 square: columns 20..23, rows 10..13
    assert content_box(img, -1.0).tolist() == [[20, 23, 10, 13]]
    # Content moves right by 3 px and up by 2 px per frame (backward-warp shift = minus that).
    t = torch.arange(T, dtype=torch.float32)
    shift = torch.stack([-3 * t, 2 * t]).view(1, 2, T, 1, 1)
    folded = bounce_shifts(shift, img, -1.0)
    # By hand: x may move by -20..8, y by -10..18. Right: 0 3 6 then 9 -> 8 - 1 = 7, 12 -> 4, 15 -> 1,
    # 18 -> -2, 21 -> -5. Up: 0 -2 ... -10 lands on the wall, then -12 -> -8, -14 -> -6.
    assert (-folded[0, 0].flatten()).tolist() == [0, 3, 6, 7, 4, 1, -2, -5]
    assert (-folded[0, 1].flatten()).tolist() == [0, -2, -4, -6, -8, -10, -8, -6]
    moved = warp_frames(img + 1, folded.expand(-1, -1, -1, size, size), "zeros") - 1
    for k in range(T):  # all of the square, in the folded place
        dx, dy = int(-folded[0, 0, k]), int(-folded[0, 1, k])
        expected = torch.full((3, size, size), -1.0)
        expected[:, 10 + dy : 14 + dy, 20 + dx : 24 + dx] = 0.6
        torch.testing.assert_close(moved[0, :, k], expected, atol=1e-6, rtol=0)
    # Content spanning the whole frame has no walls: its shifts are left alone.
    full = torch.rand(1, 3, size, size)
    torch.testing.assert_close(bounce_shifts(shift, full, -1.0), shift)


def test_warping_generator_starts_with_small_steps_that_depend_on_the_motion_latent():
    # Near a copy of the reference (steps well under a pixel), but not exactly: zero steps would pass no
    # gradient back to z_v, and the movement encoder would never learn the motion.
    model = _seeded_model("cpu")
    z_x, z_v = model.prior(16, torch.Generator().manual_seed(4))
    with torch.no_grad():
        steps = model.generator.steps(z_v)
    assert steps.shape == (16, 2, model.cfg.frames)
    assert steps.abs().max() < 0.5
    assert steps.std(0).mean() > 1e-3


def test_runs_saved_before_warping_load_without_it():
    old = {k: v for k, v in preset("cpu").to_dict().items() if k != "warp"}
    assert LongGenConfig.from_dict(old).warp is False
    assert LongGenConfig.from_dict(preset("cpu").to_dict()) == preset("cpu")


def test_black_reference_pixels_still_get_gradient():
    # With increments in logit space (tanh(atanh(ref) + d)) a black pixel sat at tanh's flat end: the
    # gradient of the output there was ~500x smaller than at grey, so moving digits on black could not be learned.
    model = _seeded_model("tiny")
    cfg = model.cfg
    z_x, z_v = model.prior(2, torch.Generator().manual_seed(0))
    grads = []
    for level in (-1.0, 0.0):
        model.zero_grad()
        ref = torch.full((2, 3, cfg.size, cfg.size), level)
        model.decode(z_x, z_v, ref)[:, :, 1:].sum().backward()
        grads.append(model.generator.to_frames.weight.grad[:3].abs().sum().item())
    assert grads[0] > 0.3 * grads[1] > 0


def test_factorised_attention_matches_brute_force():
    from vmt.longgen.attention import FactorisedSelfAttention

    torch.manual_seed(0)
    c, t, h, w = 16, 3, 2, 2
    fsa = FactorisedSelfAttention(c).double()
    x = torch.randn(1, c, t, h, w, dtype=torch.float64)
    torch.testing.assert_close(fsa(x), x)  # gamma starts at 0: the identity
    with torch.no_grad():
        fsa.temporal.gamma.fill_(0.7)
        fsa.spatial.gamma.fill_(-0.3)

    def attend(layer, seq):  # seq: (C, L), explicit softmax over keys
        q = layer.q.weight[:, :, 0] @ seq + layer.q.bias[:, None]
        k = layer.k.weight[:, :, 0] @ seq + layer.k.bias[:, None]
        v = layer.v.weight[:, :, 0] @ seq + layer.v.bias[:, None]
        out = torch.zeros_like(seq)
        for i in range(seq.shape[1]):
            s = torch.tensor([float(q[:, i] @ k[:, j]) / math.sqrt(q.shape[0]) for j in range(seq.shape[1])],
                             dtype=torch.float64)
            a = torch.softmax(s, 0)
            out[:, i] = (v * a).sum(1)
        return layer.gamma * out + seq

    torch.set_grad_enabled(False)
    y = x[0].clone()
    for i in range(h):
        for j in range(w):
            y[:, :, i, j] = attend(fsa.temporal, y[:, :, i, j])
    z = y.clone()
    for f in range(t):
        z[:, f] = attend(fsa.spatial, y[:, f].reshape(c, h * w)).reshape(c, h, w)
    torch.testing.assert_close(fsa(x)[0], z)
    torch.set_grad_enabled(True)


# ---------------------------------------------------------------- recall chain

class _RampModel:
    """Deterministic stand-in: clip = ref + 0.01 * k for frame k; the prior's first clip starts at 0.

    encode_content records the frames it is given, so the test can check what conditioned each clip.
    """

    def __init__(self, frames: int = 8, size: int = 2):
        self.cfg = LongGenConfig(size=8, frames=frames, motion_steps=frames // 2 - 3 if frames % 2 == 0 else 1)
        self.size = size
        self.seen_refs: list[torch.Tensor] = []
        self.decoded_refs: list[torch.Tensor | None] = []
        self.motion_given: list[torch.Tensor] = []

    def prior(self, batch, generator=None, device=None, standard=False):
        return torch.zeros(batch, 1), torch.zeros(batch, 1, 1)

    def next_motion(self, z_x, z_v, generator=None, device=None, standard=False, temperature=1.0):
        self.motion_given.append(z_x.clone())
        return torch.zeros(z_x.shape[0], 1, 1)

    def encode_content(self, frame):
        self.seen_refs.append(frame.clone())
        return frame.mean(dim=(1, 2, 3))[:, None], torch.zeros(frame.shape[0], 1)

    def decode(self, z_x, z_v, ref=None, warp=None):
        self.decoded_refs.append(None if ref is None else ref.clone())
        start = torch.zeros(z_x.shape[0], 3, self.size, self.size) if ref is None else ref
        steps = 0.01 * torch.arange(self.cfg.frames, dtype=start.dtype)
        return start[:, :, None] + steps[None, None, :, None, None]


@pytest.mark.parametrize("ref_index", [-1, -3, 5])
def test_recall_chain_conditions_each_clip_on_the_previous_reference_frame(ref_index):
    from vmt.longgen.recall import recall_chain

    model = _RampModel(frames=8)
    T = 8
    r = ref_index % T
    chunks = list(recall_chain(model, 40, ref_index=ref_index))
    video = torch.cat(chunks, 2)
    assert video.shape[2] == 40
    # Each clip after the first was decoded from (and its content encoded from) frame r of the previous clip.
    clip_start = 0.0
    for seen, decoded in zip(model.seen_refs, model.decoded_refs[1:]):
        expected = clip_start + 0.01 * r
        assert torch.allclose(seen, torch.full_like(seen, expected))
        assert torch.equal(seen, decoded)
        clip_start = expected
    # Each fresh motion latent was drawn given the content latent of that clip's reference frame.
    assert len(model.motion_given) == len(model.seen_refs)
    for seen, given in zip(model.seen_refs, model.motion_given):
        torch.testing.assert_close(given, seen.mean(dim=(1, 2, 3))[:, None])
    # Ground truth of the ramp: clip j starts at 0.01 * r * j, frame k of the chain is 0.01 * k everywhere,
    # because the next clip's frame 0 sits on frame r of the previous one.
    ramp = 0.01 * torch.arange(40, dtype=video.dtype)
    torch.testing.assert_close(video[0, 0, :, 0, 0], ramp)
    assert [c.shape[2] for c in chunks[:3]] == [T, r, r]


def test_recall_chain_with_the_real_model_continues_from_the_reference_frame():
    from vmt.longgen.recall import recall_chain

    model = _seeded_model("tiny")
    clips = []
    real_decode = model.decode

    def spy(z_x, z_v, ref=None, warp=None):
        out = real_decode(z_x, z_v, ref, warp)
        clips.append(out)
        return out

    model.decode = spy
    frames = torch.cat(list(recall_chain(model, 30, generator=torch.Generator().manual_seed(0))), 2)
    assert frames.shape[2] == 30
    for prev, nxt in itertools.pairwise(clips):
        torch.testing.assert_close(nxt[:, :, 0], prev[:, :, -1], atol=1e-3, rtol=0)
    # The chain's frames are the clips' frames with the shared frame kept once.
    torch.testing.assert_close(frames[:, :, 8:15], clips[1][:, :, 1:8])


@pytest.mark.slow
def test_a_200_frame_sample_has_exactly_200_frames():
    from vmt.longgen.sampling import stream_frames

    model = _seeded_model("tiny")
    chunks = list(stream_frames(model, 200, seed=3))
    frames = np.concatenate(chunks)
    assert frames.shape == (200, 16, 16, 3) and frames.dtype == np.uint8
    again = np.concatenate(list(stream_frames(model, 200, seed=3)))
    assert np.array_equal(frames, again)  # reproducible by seed
    assert not np.array_equal(frames, np.concatenate(list(stream_frames(model, 200, seed=4))))


@pytest.mark.slow
def test_sampling_memory_does_not_grow_with_length():
    """Host allocations while streaming 1,000 vs 100 frames (the frames are consumed, as a writer does).

    numpy buffers are traced by tracemalloc; a sampler that kept the frames would hold 1000 x 16 x 16 x 3
    bytes (768 kB) against ~6 kB per clip. GPU/torch-side memory is measured in benchmarks/longgen.py.
    """
    import tracemalloc

    from vmt.longgen.sampling import write_long_video

    model = _seeded_model("tiny")
    peaks = {}
    for n in (100, 1000):
        tracemalloc.start()
        written = write_long_video(model, n, lambda f: None, seed=0)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert written == n
    assert peaks[1000] <= 1.1 * peaks[100] + 32 * 1024, peaks


# ---------------------------------------------------------------- training

@pytest.mark.slow
def test_a_few_training_steps_lower_the_reconstruction_loss():
    from vmt.longgen.data import ClipSource, moving_digits
    from vmt.longgen.train import Trainer, TrainSettings, reconstruction_l1, train_steps

    cfg = preset("tiny")
    source = ClipSource(list(moving_digits(24, 24, cfg.size, seed=1)), [f"v{i}" for i in range(24)])
    held_out = ClipSource(list(moving_digits(8, 8, cfg.size, seed=99)), [f"h{i}" for i in range(8)])
    eval_clips = held_out.sample(8, cfg.frames, np.random.default_rng(0))
    torch.manual_seed(0)
    trainer = Trainer(cfg, TrainSettings(batch_size=8, lr=1e-3))
    before = reconstruction_l1(trainer.model, eval_clips)
    history = train_steps(trainer, source, 40, seed=0)
    after = reconstruction_l1(trainer.model, eval_clips)
    assert trainer.step_count == 40
    assert np.mean([h["rec"] for h in history[-5:]]) < np.mean([h["rec"] for h in history[:5]])
    assert after < 0.9 * before, (before, after)


@pytest.mark.slow
def test_image_warmup_trains_only_the_content_path_and_sharpens_the_first_frame():
    from vmt.longgen.data import ClipSource, moving_digits
    from vmt.longgen.train import Trainer, TrainSettings, train_steps

    cfg = preset("cpu")
    source = ClipSource(list(moving_digits(32, 16, cfg.size, seed=1)), [f"v{i}" for i in range(32)])
    held = ClipSource(list(moving_digits(8, 8, cfg.size, seed=99)), [f"h{i}" for i in range(8)])
    frames = held.sample(16, cfg.frames, np.random.default_rng(0))[:, :, 0]
    torch.manual_seed(0)
    trainer = Trainer(cfg, TrainSettings(batch_size=8, lr=1e-3, image_warmup=150))
    model = trainer.model
    content_path = {n for n, _ in model.named_parameters()
                    if n.startswith(("content_encoder.", "generator.to_image.", "generator.first.spatial.")) or
                    (n.startswith("generator.blocks.") and ".spatial." in n)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def image_l1() -> float:
        with torch.no_grad():
            return float((model.generator.image(model.encode_content(frames)[0]) - frames).abs().mean())

    black = float((frames + 1).abs().mean())
    start = image_l1()
    train_steps(trainer, source, 150, seed=0)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == content_path
    end = image_l1()
    assert end < min(0.5 * start, 0.8 * black), (start, end, black)


def _centre_of_ink(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> brightness-weighted centre (B, 2, T) in pixels (x, y)."""
    w = (video.max(1).values + 1).clamp(min=0)
    h, wd = w.shape[-2:]
    ys, xs = torch.arange(h, dtype=w.dtype).view(h, 1), torch.arange(wd, dtype=w.dtype).view(1, wd)
    total = w.sum((2, 3)) + 1e-6
    return torch.stack([(w * xs).sum((2, 3)) / total, (w * ys).sum((2, 3)) / total], 1)


@pytest.mark.slow
def test_vae_steps_follow_moving_digits_and_beat_black_and_copy_baselines():
    # Ground truths on held-out moving digits: the L1 of an all-black clip (digits cover ~10% of the canvas)
    # and of frame 0 copied to every frame, and the digits' true motion (centre of ink). Before the warp the
    # VAE faded the reference to black; with the warp but its shift read from the video stream, it did not
    # learn the motion in 200 steps (frames copied the reference).
    from vmt.longgen.data import ClipSource, moving_digits
    from vmt.longgen.train import Trainer, TrainSettings, reconstruction_l1, train_steps

    cfg = preset("cpu")
    source = ClipSource(list(moving_digits(64, 32, cfg.size, seed=1)), [f"v{i}" for i in range(64)])
    held_out = ClipSource(list(moving_digits(16, 8, cfg.size, seed=99)), [f"h{i}" for i in range(16)])
    clips = held_out.sample(16, cfg.frames, np.random.default_rng(0))
    black = float((clips + 1).abs().mean())
    copy0 = float((clips - clips[:, :, :1]).abs().mean())
    torch.manual_seed(0)
    settings = TrainSettings(batch_size=8, lr=1e-3, recall=False)
    assert settings.adv_warmup >= 100  # the default schedule starts VAE-only
    trainer = Trainer(cfg, settings)
    train_steps(trainer, source, 100, seed=0)
    after = reconstruction_l1(trainer.model, clips)
    assert after < 0.9 * black and after < 0.85 * copy0, (after, black, copy0)
    with torch.no_grad():
        mu_v, _ = trainer.model.encode_motion(clips)
        moved = -trainer.model.generator.steps(mu_v)[:, :, 1:].cumsum(2)  # content moves by minus the shift
    true = _centre_of_ink(clips)[:, :, 1:] - _centre_of_ink(clips)[:, :, :1]
    r = np.corrcoef(moved.flatten().numpy(), true.flatten().numpy())[0, 1]
    assert r > 0.5, r


# ---------------------------------------------------------------- data

def test_moving_digits_bounce_inside_the_canvas():
    from vmt.longgen.data import moving_digits

    v = moving_digits(3, 40, 24, speed=(2.0, 3.0), seed=5)
    assert v.shape == (3, 40, 24, 24, 3) and v.dtype == np.uint8
    # One digit, never cut by the border: the same sprite each frame, so the total ink is constant.
    ink = v.reshape(3, 40, -1).astype(np.int64).sum(-1)
    assert (ink == ink[:, :1]).all() and (ink > 0).all()
    # and it moves (40 frames at >= 2 px/frame)
    assert (np.abs(np.diff(v.astype(int), axis=1)).sum(axis=(2, 3, 4)) > 0).mean() > 0.9
    assert np.array_equal(v, moving_digits(3, 40, 24, speed=(2.0, 3.0), seed=5))


def test_clip_source_applies_stride_and_range():
    from vmt.longgen.data import ClipSource

    frames = np.repeat(np.arange(0, 250, 10, dtype=np.uint8)[:, None, None, None], 4, 1)  # (25, 4, 1, 1)
    video = np.broadcast_to(frames, (25, 4, 4, 3)).copy()
    src = ClipSource([video], ["ramp"], strides=(3,))
    clip = src.sample(4, 5, np.random.default_rng(0))
    assert clip.shape == (4, 3, 5, 4, 4)
    vals = (clip[:, 0, :, 0, 0] + 1) * 127.5
    torch.testing.assert_close(vals[:, 1:] - vals[:, :-1], torch.full((4, 4), 30.0), atol=1e-4, rtol=0)
    assert clip.min() >= -1 and clip.max() <= 1


def test_empty_data_folder_is_a_clear_error(tmp_path):
    from vmt.longgen.data import open_source

    (tmp_path / "notes.txt").write_text("no videos here")
    with pytest.raises(VmtUsageError, match="has no videos.*synthetic:digits"):
        open_source(str(tmp_path), 16)
    with pytest.raises(VmtUsageError, match="not found"):
        open_source(str(tmp_path / "missing"), 16)
    with pytest.raises(VmtUsageError, match="unknown synthetic"):
        open_source("synthetic:clouds", 16)


def test_videos_shorter_than_a_clip_are_a_clear_error(tmp_path):
    from conftest import moving_pattern

    from vmt.io.video import write_video
    from vmt.longgen.data import open_source

    write_video(tmp_path / "short.mp4", moving_pattern(5, 32, 32), 10)
    src = open_source(str(tmp_path), 16)
    assert src.videos[0].shape == (5, 16, 16, 3)
    with pytest.raises(VmtUsageError, match=r"shorter than one training window of 8 frames.*short.mp4 \(5 frames\)"):
        src.check(8)
    src.check(5)  # exactly one window fits
    assert src.sample(2, 5, np.random.default_rng(0)).shape == (2, 3, 5, 16, 16)


# ---------------------------------------------------------------- checkpoints

def _trainer(name="tiny", **kw):
    from vmt.longgen.train import Trainer, TrainSettings

    torch.manual_seed(0)
    # adv_warmup=1: both phases (VAE-only, then with the discriminators) run within a few steps
    return Trainer(preset(name), TrainSettings(batch_size=2, **{"adv_warmup": 1, **kw}))


@pytest.mark.slow
def test_checkpoint_round_trip_and_resume(tmp_path):
    from vmt.longgen.checkpoint import load_model, resume_trainer, save_run
    from vmt.longgen.data import synthetic_source
    from vmt.longgen.train import train_steps

    src = synthetic_source(16, num_videos=8, num_frames=20)
    a = _trainer()
    train_steps(a, src, 2, seed=0)
    save_run(tmp_path / "run", a, seed=0, data="synthetic:digits")
    model, meta = load_model(tmp_path / "run")
    assert meta["step"] == 2 and meta["model"] == preset("tiny").to_dict()
    a.model.eval()
    z = a.model.prior(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.decode(*z), a.model.decode(*z), rtol=0, atol=0)

    b = _trainer()
    resume_trainer(tmp_path / "run", b)
    assert b.step_count == 2
    sa, sb = a.opt_g.state_dict()["state"], b.opt_g.state_dict()["state"]
    assert sorted(sa) == sorted(sb) and len(sa) > 0
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    # Resumed and uninterrupted training continue identically.
    la = train_steps(a, src, 1, seed=0)
    lb = train_steps(b, src, 1, seed=0)
    assert la == lb


def test_checkpoint_from_another_config_is_a_clear_error(tmp_path):
    from vmt.longgen.checkpoint import load_state_checked, resume_trainer, save_run

    save_run(tmp_path / "run", _trainer("tiny"), seed=0, data="synthetic:digits")
    with pytest.raises(VmtUsageError, match="another configuration.*size: 16 in the run, 32 asked for"):
        resume_trainer(tmp_path / "run", _trainer("cpu"))
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "run" / "model.safetensors"))
    with pytest.raises(VmtError, match="different model configuration.*differ in shape"):
        load_state_checked(EncGAN3(preset("cpu")), state, "model.safetensors")


def test_missing_run_folder_is_a_clear_error(tmp_path):
    from vmt.longgen.checkpoint import load_model

    with pytest.raises(VmtUsageError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VmtUsageError, match="not a longgen run folder"):
        load_model(tmp_path / "empty")


@pytest.mark.slow
def test_shipped_default_model_keeps_a_moving_digit_for_1000_frames():
    from vmt.longgen.checkpoint import DEFAULT_MODEL_DIR, load_model
    from vmt.longgen.sampling import stream_frames

    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.iterdir() if f.is_file())
    assert size <= 10 * 2**20
    model, meta = load_model(None)
    assert model.cfg == preset("cpu") and meta["data"] == "synthetic:digits"
    assert model.motion_prior.is_fitted and model.prior_gain.abs().max() > 0
    frames = np.concatenate(list(stream_frames(model, 1000, seed=0))).astype(np.float64) / 127.5 - 1
    assert frames.shape == (1000, 32, 32, 3)
    ink = frames.max(axis=-1) > -0.5  # (T, H, W): pixels of the digit
    cover = ink.mean((1, 2))
    # A digit-sized glyph (moving digits cover ~10% of the canvas) is on screen in every one of the last 100
    # frames, about as much of it as at the start: the chain neither fades nor smears.
    assert (cover[-100:] > 0.03).all() and (cover[-100:] < 0.3).all()
    assert abs(cover[-100:].mean() - cover[:100].mean()) < 0.3 * cover[:100].mean()
    assert (frames.min(axis=-1) > 0.98).mean() < 0.02  # no white-out
    # It moves: its centre travels over the last 100 frames, and never leaves the canvas.
    ys, xs = np.arange(32.0).reshape(1, 32, 1), np.arange(32.0).reshape(1, 1, 32)
    cx = (ink * xs).sum((1, 2)) / ink.sum((1, 2))
    cy = (ink * ys).sum((1, 2)) / ink.sum((1, 2))
    path = np.hypot(np.diff(cx[-100:]), np.diff(cy[-100:])).sum()
    assert path > 20, path
    assert ink[:, 0, :].mean() < 0.5 and ink[:, :, 0].mean() < 0.5


def test_real_voxceleb_clips_load_at_model_size(shared_data):
    from vmt.longgen.data import load_video_folder

    src = load_video_folder(shared_data / "voxceleb", 32, max_frames=20, strides=(2,))
    assert len(src.videos) == 4 and all(v.shape == (20, 32, 32, 3) for v in src.videos)
    clips = src.sample(3, 8, np.random.default_rng(0))
    assert clips.shape == (3, 3, 8, 32, 32) and -1 <= clips.min() < clips.max() <= 1
