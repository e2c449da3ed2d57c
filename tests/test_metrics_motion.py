"""Motion fidelity, direction check, temporal consistency and physics residual on synthetic videos whose
motion is known exactly."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from vmt.metrics.motion import (
    Tracks,
    chamfer_score,
    correlation_matrix,
    direction_check,
    global_shifts,
    motion_fidelity,
    track_grid,
    unit_steps,
)
from vmt.metrics.physics import constant_acceleration_residual, physics_residual
from vmt.metrics.temporal import PSNR_CAP, psnr, ssim, temporal_consistency

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


def test_correlation_and_chamfer_match_brute_force():
    rng = np.random.default_rng(0)
    tracks = []
    for n in (5, 7):
        xy = np.cumsum(rng.standard_normal((n, 6, 2)), axis=1)
        xy[0, 2:] = xy[0, 2]  # a static stretch: zero displacements
        alive = np.ones((n, 6), bool)
        alive[1, 4:] = False  # lost at frame 4
        tracks.append(Tracks(xy, alive))
    (ua, va), (ub, vb) = (unit_steps(t, 0.1) for t in tracks)
    corr = correlation_matrix(ua, va, ub, vb)
    ta, tb = tracks
    for i in range(5):
        for j in range(7):
            cos = []
            for k in range(5):
                if not (ta.alive[i, k:k + 2].all() and tb.alive[j, k:k + 2].all()):
                    continue
                a, b = ta.xy[i, k + 1] - ta.xy[i, k], tb.xy[j, k + 1] - tb.xy[j, k]
                na, nb = np.linalg.norm(a), np.linalg.norm(b)
                cos.append(0.0 if na < 0.1 or nb < 0.1 else a @ b / (na * nb))
            assert corr[i, j] == pytest.approx(np.mean(cos), abs=1e-12)
    expected = 0.5 * (np.mean([corr[:, j].max() for j in range(7)]) + np.mean([corr[i].max() for i in range(5)]))
    assert chamfer_score(corr) == pytest.approx(expected, abs=1e-12)


def test_motion_fidelity_identical_reversed_static():
    moving = translating(2.0, 1.0)
    assert motion_fidelity(moving, moving, grid=GRID).score > 0.99
    # the same motion on another texture still matches
    assert motion_fidelity(moving, translating(2.0, 1.0, seed=3), grid=GRID).score > 0.97
    assert motion_fidelity(moving, translating(-2.0, -1.0, seed=1), grid=GRID).score < -0.97
    static = translating(0.0, 0.0, seed=2)
    assert abs(motion_fidelity(static, moving, grid=GRID).score) < 0.02
    # perpendicular motion: cos = 0 everywhere
    assert abs(motion_fidelity(translating(2.0, 0.0), translating(0.0, 2.0, seed=4), grid=GRID).score) < 0.1


def test_motion_fidelity_rotation():
    rot = rotating(2.5)
    assert motion_fidelity(rot, rot, grid=GRID).score > 0.95
    assert abs(motion_fidelity(rot, translating(0.0, 0.0), grid=GRID).score) < 0.02
    # a rotation against a translation shares only part of the directions
    assert motion_fidelity(rot, translating(2.0, 0.0), grid=GRID).score < 0.9


def test_phase_correlation_shift_and_direction_verdicts():
    v = translating(2.0, -1.0)
    shifts, resp = global_shifts(v)
    np.testing.assert_allclose(shifts, np.tile([2.0, -1.0], (T - 1, 1)), atol=0.15)
    assert resp.min() > 0.2
    assert direction_check(v, translating(2.0, -1.0, seed=5)).verdict == "agree"
    rev = direction_check(v, translating(-2.0, 1.0, seed=5))
    assert rev.verdict == "reversed" and rev.cosine < -0.95
    assert direction_check(v, translating(0.0, 0.0)).verdict == "no global motion"


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
    r = physics_residual(fall)
    assert r.frames_used == 16
    assert r.rms_px < 0.1
    assert r.acceleration[1] == pytest.approx(g, abs=0.01) and abs(r.acceleration[0]) < 0.01
    assert r.velocity[0] == pytest.approx(1.0, abs=0.05)
    wobble = _ball_video(lambda k: (30 + 3.0 * np.sin(1.3 * k), 8 + 0.5 * k + 0.5 * g * k * k))
    assert physics_residual(wobble).rms_px > 1.5


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
