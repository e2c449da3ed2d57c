"""The toy ball-physics world (exact law, scoring) and the small flow-matching video model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vmt.testing.toy_video import (
    BallWorld,
    ToyVideoFlow,
    ball_score,
    ball_trajectory,
    flow_matching_loss,
    one_bounce_trajectories,
    patchify,
    render_balls,
    sample_balls,
    to_uint8_frames,
    train_flow,
    unpatchify,
)

WORLD = BallWorld()


@pytest.fixture(scope="module")
def balls():
    return sample_balls(WORLD, 48, torch.Generator().manual_seed(3))


def test_trajectories_obey_gravity_between_bounces(balls):
    """Second differences of the centre: 0 in x, exactly g in y, except across the one bounce."""
    _, centres, bounces = balls
    c = centres.numpy()
    assert 0 < bounces.sum() < len(bounces)  # both kinds are present
    acc = c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]  # (n, T-2, 2)
    np.testing.assert_allclose(acc[..., 0], 0, atol=1e-9)
    for a, b in zip(acc[..., 1], bounces.numpy(), strict=True):
        off = np.abs(a - WORLD.gravity) > 1e-9
        # a bounce spoils the second difference at (at most) the two triples that straddle it
        assert off.sum() == 0 if b == 0 else 1 <= off.sum() <= 2
    r, s = WORLD.radius, WORLD.size
    assert c[..., 0].min() >= r and c[..., 0].max() <= s - 1 - r and c[..., 1].min() >= r
    assert c[..., 1].max() <= WORLD.floor + 1e-9


def test_closed_form_bounce_matches_event_stepping():
    """The vectorised one-bounce trajectory equals the event-by-event reference (any bounce count)."""
    rng = np.random.default_rng(0)
    p0 = np.stack([rng.uniform(4, 27, 64), rng.uniform(3, 20, 64)], 1)
    v0 = np.stack([rng.uniform(-1, 1, 64), rng.uniform(-1.5, 1, 64)], 1)
    c, b = one_bounce_trajectories(WORLD, p0, v0)
    checked = 0
    for i in range(64):
        ref, nb = ball_trajectory(WORLD, p0[i], v0[i])
        assert min(nb, 2) == b[i]
        if nb <= 1:
            np.testing.assert_allclose(c[i], ref, atol=1e-9)
            checked += 1
    assert checked > 20


@pytest.mark.slow
def test_physics_metric_on_ground_truth_is_near_zero(balls):
    videos, _, bounces = balls
    assert videos.shape == (48, 1, 16, 32, 32) and videos.min() >= -1 and videos.max() <= 1
    grav = []
    for v, b in zip(videos, bounces, strict=True):
        sc = ball_score(to_uint8_frames(v), radius=WORLD.radius)
        assert sc.trackable
        assert sc.residual_px < 0.05  # sub-pixel rendering/tracking error only
        assert (sc.bounce_frame >= 0) == bool(b)
        grav.append(sc.gravity_px)
    # 4-frame segments after a late bounce make single fits noisy; the typical fit is tight
    assert np.max(np.abs(np.array(grav) - WORLD.gravity)) < 0.03
    assert np.median(np.abs(np.array(grav) - WORLD.gravity)) < 0.003


def test_metric_detects_wrong_physics_and_noise():
    """Constant velocity with a jump: large residual; a uniform-noise video: not trackable."""
    t = np.arange(16.0)
    c = np.stack([8 + 0.8 * t, 6 + 1.0 * t], 1)
    c[8:, 0] += 3  # teleport sideways mid-flight
    v = render_balls(WORLD, torch.from_numpy(c)[None])[0]
    sc = ball_score(to_uint8_frames(v), radius=WORLD.radius)
    assert sc.trackable and sc.residual_px > 0.5
    noise = torch.rand(1, 16, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert not ball_score(to_uint8_frames(noise), radius=WORLD.radius).trackable


def test_missing_frames_and_min_found(balls):
    """A ball blanked in 3 of 16 frames: untrackable when every frame is required, exact on the rest."""
    v = balls[0][0].clone()
    v[:, [2, 9, 13]] = -1
    f = to_uint8_frames(v)
    assert not ball_score(f, radius=WORLD.radius).trackable
    sc = ball_score(f, radius=WORLD.radius, min_found=0.75)
    assert sc.trackable and sc.residual_px < 0.05 and sc.frames_used <= 13


def test_uint8_conversion():
    v = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    u = to_uint8_frames(v)
    assert u.shape == (3, 1, 4, 3) and u.dtype == np.uint8
    assert u[0, 0, :, 0].tolist() == [0, 128, 255, 255]


def test_patchify_round_trip_and_layout():
    x = torch.randn(2, 3, 16, 32, 32)
    p = patchify(x, (2, 4, 4))
    assert p.shape == (2, 3 * 32, 8, 8, 8)
    assert torch.equal(unpatchify(p, 3, (2, 4, 4)), x)
    # patch (0, 0, 0) holds frames 0-1, rows 0-3, cols 0-3 of channel 0 in (t, h, w) order
    assert torch.equal(p[0, :32, 0, 0, 0], x[0, 0, :2, :4, :4].reshape(-1))


@pytest.mark.parametrize("s", [0.05, 0.5, 0.9])
def test_untrained_model_is_the_gaussian_denoiser(s):
    """With the zero-initialised head, v is the best linear predictor of eps - x0 for Gaussian pixels
    N(m, w): its MSE is the conditional variance 1 + w - (s - (1-s) w)^2 / ((1-s)^2 w + s^2) (closed form),
    while predicting only the mean velocity -m costs 1 + w."""
    model = ToyVideoFlow(channels=1, width=16, mean=-0.5, std=0.6)
    g = torch.Generator().manual_seed(0)
    m, w = -0.5, 0.36
    x0 = m + 0.6 * torch.randn(64, 1, 16, 32, 32, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    with torch.no_grad():
        mse = float(flow_matching_loss(model, x0, eps, torch.full((64,), s)))
    expect = 1 + w - (s - (1 - s) * w) ** 2 / ((1 - s) ** 2 * w + s ** 2)
    n = x0.numel()
    assert mse == pytest.approx(expect, abs=6 * expect * (2 / n) ** 0.5)
    assert mse < 1 + w - 0.05


@pytest.mark.slow
def test_model_shape_and_training_lowers_loss(balls):
    torch.manual_seed(0)
    model = ToyVideoFlow(channels=1, width=16)
    x0 = balls[0][:4]
    g = torch.Generator().manual_seed(1)
    eps, s = torch.randn(x0.shape, generator=g), torch.rand(4, generator=g)
    out = model(x0, torch.tensor(0.5))
    assert out.shape == x0.shape
    with torch.no_grad():
        before = float(flow_matching_loss(model, x0, eps, s))
    # Adam steps on that fixed batch (fixed noise and sigmas) fit it
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(25):
        loss = flow_matching_loss(model, x0, eps, s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        fitted = float(flow_matching_loss(model, x0, eps, s))
    assert fitted < 0.93 * before
    # the trainer (fresh noise and sigmas each step) also lowers the loss on the fixed evaluation batch
    model = ToyVideoFlow(channels=1, width=16)
    _, losses = train_flow(model, lambda n, gen: x0, steps=30, batch=4, lr=2e-3, seed=0)
    assert len(losses) == 30
    with torch.no_grad():
        after = float(flow_matching_loss(model, x0, eps, s))
    assert after < before
