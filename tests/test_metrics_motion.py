"""Motion fidelity, direction check, temporal consistency and physics residual on synthetic videos whose
motion is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from vmt.metrics.motion import (
    Tracks,
    best_match_score,
    direction_check,
    global_shifts,
    matched_score,
    motion_fidelity,
    moving_steps,
    track_grid,
    trajectory_cosines,
)
from vmt.metrics.physics import constant_acceleration_residual, physics_residual
from vmt.metrics.temporal import PSNR_CAP, dynamic_degree, flicker_score, psnr, ssim, temporal_consistency

H, W, T = 64, 96, 10
GRID = 20


def texture(h, w, seed=0):
    """Smooth random colour texture (float32, values 10..240)."""
    rng = np.random.default_rng(seed)
    lum = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    lum = (lum - lum.min()) / (lum.max() - lum.min())
    return np.stack([lum, 0.8 * lum + 0.1, 1 - lum], -1) * 230 + 10


def translating(vx, vy, t=T, h=H, w=W, seed=0):
    """Texture whose content moves by (vx, vy) pixels per frame: (t, h, w, 3) uint8."""
    big = texture(h + 80, w + 80, seed)
    frames = [cv2.warpAffine(big, np.float32([[1, 0, -40 + vx * k], [0, 1, -40 + vy * k]]), (w, h),
                             flags=cv2.INTER_LINEAR) for k in range(t)]
    return np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8)


def rotating(deg, t=T, h=H, w=W, seed=0):
    big = texture(h, w, seed)
    frames = [cv2.warpAffine(big, cv2.getRotationMatrix2D((w / 2, h / 2), deg * k, 1.0), (w, h),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for k in range(t)]
    return np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8)


def test_lk_tracks_recover_known_translation():
    tr = track_grid(translating(1.5, -0.5), grid=GRID)
    d = np.diff(tr.xy, axis=1)[tr.alive[:, 1:]]
    assert len(d) > 100
    np.testing.assert_allclose(np.median(d, 0), [1.5, -0.5], atol=0.02)
    assert np.mean(np.linalg.norm(d - [1.5, -0.5], axis=1) < 0.1) > 0.95


def test_cosines_and_matching_match_brute_force():
    from itertools import permutations

    rng = np.random.default_rng(0)
    xy = [np.cumsum(rng.standard_normal((n, 6, 2)), axis=1) for n in (3, 4)]
    alive = np.ones((3, 6), bool)
    alive[1, 4:] = False  # lost at frame 4: not a full track, left out
    xy[0][2] = xy[0][2, :1]  # a static track: left out
    sa, wa = moving_steps(Tracks(xy[0], alive), 10.0, 1e-3)
    sb, wb = moving_steps(Tracks(xy[1], np.ones((4, 6), bool)), 10.0, 1e-3)
    assert len(sa) == 1 and len(sb) == 4
    np.testing.assert_allclose(sa[0], np.diff(xy[0][0], axis=0) / 10.0, atol=1e-12)
    corr = trajectory_cosines(sa, sb)
    for j in range(4):
        a, b = np.diff(xy[0][0], axis=0).ravel(), np.diff(xy[1][j], axis=0).ravel()
        assert corr[0, j] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-12)
    # the matching against every one-to-one assignment, enumerated
    c = rng.uniform(-1, 1, (3, 4))
    w1, w2 = rng.random(3) + 0.1, rng.random(4) + 0.1
    n1, n2 = w1 / w1.sum(), w2 / w2.sum()
    best = max(sum(c[i, j] * (n1[i] + n2[j]) for i, j in enumerate(perm)) / 2 for perm in permutations(range(4), 3))
    assert matched_score(c, w1, w2) == pytest.approx(best, abs=1e-12)
    assert best_match_score(c, w2) == pytest.approx((c.max(0) * w2).sum() / w2.sum(), abs=1e-12)


@pytest.mark.slow
def test_motion_fidelity_identical_reversed_static():
    moving = translating(2.0, 1.0)
    assert motion_fidelity(moving, moving, grid=GRID).score == pytest.approx(1.0, abs=1e-9)
    # the same motion on another texture still matches
    assert motion_fidelity(moving, translating(2.0, 1.0, seed=3), grid=GRID).score > 0.97
    assert motion_fidelity(moving, translating(-2.0, -1.0, seed=1), grid=GRID).score < -0.97
    static = translating(0.0, 0.0, seed=2)
    # nothing moves in the reference: no score, with the reason; a static generated video reproduces nothing
    none = motion_fidelity(static, moving, grid=GRID)
    assert none.score is None and "no moving tracks" in none.reason
    assert motion_fidelity(moving, static, grid=GRID).score == 0.0
    # perpendicular motion: cos = 0 everywhere
    assert abs(motion_fidelity(translating(2.0, 0.0), translating(0.0, 2.0, seed=4), grid=GRID).score) < 0.1


@pytest.mark.slow
def test_motion_fidelity_rotation():
    rot = rotating(2.5)
    assert motion_fidelity(rot, rot, grid=GRID).score == pytest.approx(1.0, abs=1e-9)
    assert motion_fidelity(rot, translating(0.0, 0.0), grid=GRID).score == 0.0
    # a rotation against a translation shares only part of the directions
    assert motion_fidelity(rot, translating(2.0, 0.0), grid=GRID).score < 0.6


def test_phase_correlation_shift_and_direction_verdicts():
    v = translating(2.0, -1.0)
    shifts, resp = global_shifts(v)
    np.testing.assert_allclose(shifts, np.tile([2.0, -1.0], (T - 1, 1)), atol=0.15)
    assert resp.min() > 0.2
    assert direction_check(v, translating(2.0, -1.0, seed=5)).verdict == "agree"
    rev = direction_check(v, translating(-2.0, 1.0, seed=5))
    assert rev.verdict == "reversed" and rev.cosine < -0.95
    assert direction_check(v, translating(0.0, 0.0)).verdict == "no global motion"



def fourier_translating(vx, vy, t=6, h=H, w=W, seed=0):
    """Texture moved by exactly (vx, vy) pixels per frame, sub-pixel steps included: each frame is the
    texture's Fourier shift (a true sub-pixel translation of this smooth texture), the wrap-around cropped off."""
    big = texture(h + 32, w + 32, seed)
    fy, fx = np.fft.fftfreq(h + 32)[:, None, None], np.fft.fftfreq(w + 32)[None, :, None]
    spec = np.fft.fft2(big, axes=(0, 1))
    frames = [np.fft.ifft2(spec * np.exp(-2j * np.pi * (fx * vx + fy * vy) * k), axes=(0, 1)).real
              for k in range(t)]
    frames = [f[16:16 + h, 16:16 + w] for f in frames]
    return np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("v", [(0.3, -1.7), (2.5, 0.25), (-0.6, 0.0), (-1.4, 2.2)])
def test_phase_correlation_sub_pixel_shifts(v):
    # errors measured here 0.04-0.1 px; cv2.phaseCorrelate was off by 0.2-0.45 px (other values on 4.x and 5.x)
    shifts, _ = global_shifts(fourier_translating(*v))
    np.testing.assert_allclose(shifts, np.tile(v, (5, 1)), atol=0.15)


# ---- VBench checks ----

def test_flicker_score_closed_form():
    # frames alternating between two flat levels 10 apart: every step changes every value by 10
    frames = np.stack([np.full((8, 8, 3), 100 + 10 * (k % 2), np.uint8) for k in range(5)])
    score, diff = flicker_score(frames)
    assert diff == 10.0 and score == pytest.approx(245 / 255, abs=1e-12)
    assert flicker_score(np.repeat(frames[:1], 4, 0)) == (1.0, 0.0)


def test_dynamic_degree_known_speeds():
    # VBench threshold at a 64-pixel short side: 6 * 64 / 256 = 1.5 px a frame
    fast = dynamic_degree(translating(3.0, 0.0, t=8))
    slow = dynamic_degree(translating(0.5, 0.0, t=8))
    assert fast.threshold_px == 1.5 and fast.needed_pairs == 2
    assert fast.dynamic and fast.moving_pairs == 7
    assert np.median(fast.pair_magnitudes) == pytest.approx(3.0, abs=0.3)
    assert not slow.dynamic and slow.moving_pairs == 0


# ---- temporal consistency ----

def _ssim_reference(a, b, peak=255.0, sigma=1.5, r=5):
    """Direct float64 SSIM: Gaussian-weighted window statistics at every interior pixel."""
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    g = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    out = []
    for c in range(a.shape[2]):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        vals = []
        for i in range(r, x.shape[0] - r):
            for j in range(r, x.shape[1] - r):
                px, py = x[i - r:i + r + 1, j - r:j + r + 1], y[i - r:i + r + 1, j - r:j + r + 1]
                mx, my = (g * px).sum(), (g * py).sum()
                sx, sy = (g * (px - mx) ** 2).sum(), (g * (py - my) ** 2).sum()
                sxy = (g * (px - mx) * (py - my)).sum()
                vals.append((2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sx + sy + c2)))
        out.append(np.mean(vals))
    return float(np.mean(out))


def test_ssim_psnr_against_references():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(_ssim_reference(a, b), abs=1e-5)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)
    assert psnr(a, a) == PSNR_CAP


def test_temporal_consistency_known_flicker_and_motion():
    base = translating(0.0, 0.0)[0].astype(int)  # values 10..240
    c = 4
    flicker = np.stack([base + c * k for k in range(4)]).astype(np.uint8)  # no clipping: max 252
    tc = temporal_consistency(flicker)
    # no motion, every pixel +c levels: squared RGB error 3 (c/255)^2; PSNR of a uniform offset c
    assert tc.warp_error == pytest.approx(3 * (c / 255) ** 2, rel=0.03)
    assert tc.psnr == pytest.approx(10 * np.log10(255**2 / c**2), rel=1e-9)
    still = temporal_consistency(np.repeat(base[None].astype(np.uint8), 3, 0))
    assert still.warp_error == pytest.approx(0.0, abs=1e-12) and still.ssim == pytest.approx(1.0, abs=1e-6)
    assert still.psnr == PSNR_CAP
    # motion that the flow explains warps away; independent frames do not
    moving = temporal_consistency(translating(2.0, 1.0, t=5))
    shuffled = temporal_consistency(np.stack([translating(0, 0, t=1, seed=s)[0] for s in range(5)]))
    assert moving.warp_error < 1e-3 < shuffled.warp_error
    assert moving.valid_fraction > 0.85 > shuffled.valid_fraction


# ---- physics ----

def _ball_video(path_fn, t=16, h=96, w=64, radius=4.0, ss=4):
    """A soft white ball on a dark textured-free background at sub-pixel positions path_fn(t) -> (x, y)."""
    yy, xx = (np.mgrid[0:h * ss, 0:w * ss] + 0.5) / ss - 0.5
    frames = []
    for k in range(t):
        x, y = path_fn(k)
        disc = ((xx - x) ** 2 + (yy - y) ** 2 <= radius**2).astype(np.float32)
        cover = disc.reshape(h, ss, w, ss).mean((1, 3))  # area coverage: anti-aliased edge
        frames.append(np.repeat((30 + 200 * cover)[..., None], 3, -1))
    return np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8)


def test_physics_residual_falling_ball_and_wobble():
    g = 0.3
    fall = _ball_video(lambda k: (20 + 1.0 * k, 8 + 0.5 * k + 0.5 * g * k * k))
    res = physics_residual(fall)
    r = res.fit
    assert r.frames_used == 16 and res.found == 16
    assert r.rms_px < 0.1 and r.rms == pytest.approx(r.rms_px / np.hypot(*fall.shape[1:3]), rel=1e-12)
    assert r.acceleration[1] == pytest.approx(g, abs=0.01) and abs(r.acceleration[0]) < 0.01
    assert r.velocity[0] == pytest.approx(1.0, abs=0.05)
    wobble = _ball_video(lambda k: (30 + 3.0 * np.sin(1.3 * k), 8 + 0.5 * k + 0.5 * g * k * k))
    assert physics_residual(wobble).fit.rms_px > 1.5


def test_physics_noise_and_empty_scene_have_no_trajectory():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    for video in (noise, np.full((16, 64, 64, 3), 40, np.uint8)):
        r = physics_residual(video)
        assert r.fit is None and "no trajectory" in r.reason


def test_physics_ball_world_recovers_gravity():
    """Balls of the toy world (exact projectile motion, anti-aliased) before their bounce: the fit returns
    the world's g and a residual far below a pixel."""
    import torch

    from vmt.testing.toy_video import BallWorld, render_balls, to_uint8_frames

    world = BallWorld(frames=12, size=64, gravity=0.25)
    t = np.arange(12.0)
    for vx, vy in ((2.0, -1.0), (-2.0, 0.5)):
        c = np.stack([32 - 6 * vx + vx * t, 12 + vy * t + 0.5 * world.gravity * t**2], 1)
        frames = to_uint8_frames(render_balls(world, torch.tensor(c[None], dtype=torch.float32))[0])
        fit = physics_residual(frames).fit
        assert fit.acceleration[1] == pytest.approx(world.gravity, abs=0.01)
        assert fit.rms_px < 0.1


def test_constant_acceleration_residual_closed_form():
    t = np.arange(5.0)
    p = np.stack([3 + 2 * t - 0.25 * t**2, 1 - t + 0.5 * t**2], 1)
    exact = constant_acceleration_residual(t, p)
    assert exact.rms_px == pytest.approx(0.0, abs=1e-10)
    assert exact.acceleration == pytest.approx((-0.5, 1.0), abs=1e-10)
    # (1,-4,6,-4,1) is orthogonal to 1, t, t^2 on 5 points: the fit ignores it, leaving it as residual
    e = np.array([1, -4, 6, -4, 1.0])
    e *= 0.7 / np.linalg.norm(e)
    bumped = constant_acceleration_residual(t, p + np.stack([np.zeros(5), e], 1))
    assert bumped.rms_px == pytest.approx(0.7 / np.sqrt(5), rel=1e-9)
    assert bumped.acceleration == pytest.approx((-0.5, 1.0), abs=1e-9)


def test_physics_ball_over_real_background(shared_data):
    """A falling ball (g = 0.3 px/frame^2) composited over a still frame of a real clip (texture the median
    background must keep); the real clips themselves have no single compact moving object: no trajectory."""
    from vmt.io.video import read_video

    clip, _ = read_video(sorted((shared_data / "voxceleb").glob("*.mp4"))[0], max_frames=16)
    g = 0.3
    yy, xx = np.mgrid[0:256, 0:256]
    frames = np.repeat(clip[:1], 16, 0).copy()
    for k in range(16):
        x, y = 40 + 9.0 * k, 30 + 2.0 * k + 0.5 * g * k * k
        frames[k][(xx - x) ** 2 + (yy - y) ** 2 <= 36] = (255, 40, 40)
    fit = physics_residual(frames).fit
    # a hard-edged disc: its centroid moves in pixel-quantised jumps of a few tenths of a pixel
    assert fit.acceleration[1] == pytest.approx(g, abs=0.01) and fit.rms_px < 0.4
    r = physics_residual(clip)
    assert r.fit is None and "no trajectory" in r.reason
