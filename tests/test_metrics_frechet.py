"""Frechet distance, energy distance and the FVD/FID detector plumbing, against closed forms and references."""

from __future__ import annotations

import numpy as np
import pytest

from vmt.errors import VmtUsageError
from vmt.metrics.energy import energy_distance
from vmt.metrics.frechet import frechet_distance, frechet_distance_features, gaussian_stats


def _random_cov(rng, d, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = np.geomspace(1.0, cond, d)
    return (q * w) @ q.T


def test_frechet_commuting_covariances_closed_form():
    # diagonal covariances commute: d^2 = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0 + (0.5 - 1) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_scaled_covariance_closed_form():
    # S2 = c S1 (non-diagonal): tr(S1 + c S1 - 2 sqrt(c) S1) = (1 - sqrt c)^2 tr S1
    rng = np.random.default_rng(0)
    s1 = _random_cov(rng, 12)
    c = 2.25
    expected = (1 - np.sqrt(c)) ** 2 * np.trace(s1)
    got = frechet_distance(np.zeros(12), s1, np.zeros(12), c * s1)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_scipy_sqrtm_reference():
    from scipy import linalg

    rng = np.random.default_rng(1)
    for d in (3, 16, 64):
        s1, s2 = _random_cov(rng, d, 50.0), _random_cov(rng, d, 20.0)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        ref = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2))))
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
        assert frechet_distance(mu1, s1, mu2, s2, method="scipy") == pytest.approx(ref, rel=1e-6)


def test_frechet_singular_covariances_are_finite_and_zero_for_identical_sets():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 64))  # 10 samples in 64 dims: rank-9 covariance
    y = rng.standard_normal((10, 64)) + 0.5
    d_same = frechet_distance_features(x, x.copy())
    assert np.isfinite(d_same) and d_same == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(x.T)))
    d = frechet_distance_features(x, y)
    assert np.isfinite(d) and d > 64 * 0.25 * 0.5  # the mean term alone is ~16
    # shifting one set by a constant vector adds exactly |shift|^2 (covariances unchanged)
    shift = rng.standard_normal(64)
    assert frechet_distance_features(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-7)


def test_gaussian_stats_match_numpy_definitions():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 4)).astype(np.float32)
    st = gaussian_stats(x)
    xd = x.astype(np.float64)
    assert st.mu.dtype == np.float64
    np.testing.assert_allclose(st.sigma, (xd - xd.mean(0)).T @ (xd - xd.mean(0)) / 49, rtol=1e-12)


def _energy_brute(x, y, statistic):
    n, m = len(x), len(y)
    xy = sum(np.linalg.norm(a - b) for a in x for b in y) / (n * m)
    xx = sum(np.linalg.norm(x[i] - x[j]) for i in range(n) for j in range(n) if i != j)
    yy = sum(np.linalg.norm(y[i] - y[j]) for i in range(m) for j in range(m) if i != j)
    if statistic == "V":
        return 2 * xy - xx / n**2 - yy / m**2
    return 2 * xy - xx / (n * (n - 1)) - yy / (m * (m - 1))


@pytest.mark.parametrize("statistic", ["V", "U"])
def test_energy_distance_brute_force(statistic):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((17, 5)), rng.standard_normal((11, 5)) * 1.5 + 0.3
    assert energy_distance(x, y, statistic=statistic) == pytest.approx(_energy_brute(x, y, statistic), rel=1e-12)


def test_energy_distance_1d_equals_cramer_integral():
    from scipy.stats import energy_distance as scipy_ed

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal(40), rng.standard_normal(25) + 1.0
    # V-statistic in 1-D = 2 * int (F_n - G_m)^2 dx; scipy returns the square root of that
    assert energy_distance(x, y) == pytest.approx(scipy_ed(x, y) ** 2, rel=1e-10)
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


# ---- FVD / FID plumbing through a TorchScript detector the test builds ----

def _save_linear_i3d(path, a):
    import torch

    class LinearI3D(torch.nn.Module):
        """Features = A @ per-(channel, frame) means of the [-1, 1] input: linear, so shifts are known."""

        def __init__(self, a):
            super().__init__()
            self.a = torch.nn.Parameter(a, requires_grad=False)

        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = True) -> torch.Tensor:
            return x.mean(dim=(3, 4)).flatten(1) @ self.a.T

    torch.jit.script(LinearI3D(a)).save(str(path))
    return path


def _videos(n, rng, frames=16, size=224):
    return [rng.integers(20, 200, (frames, size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.slow
def test_fvd_plumbing_identical_zero_and_shift_known(tmp_path):
    import torch

    from vmt.metrics.detectors import I3D, batched_features, i3d_clips, load_detector

    rng = np.random.default_rng(6)
    a = torch.from_numpy(rng.standard_normal((8, 48))).float()
    det = load_detector(I3D, _save_linear_i3d(tmp_path / "i3d.pt", a))
    real = _videos(6, rng)
    gen = [v + np.uint8(10) for v in real]  # every pixel 10 levels brighter, no clipping (max 209)
    f_real = batched_features(det, (i3d_clips(v) for v in real), batch_size=4)
    f_gen = batched_features(det, (i3d_clips(v) for v in gen), batch_size=4)
    assert f_real.shape == (6, 8)
    assert frechet_distance_features(f_real, f_real.copy()) == pytest.approx(0.0, abs=1e-9)
    # in the [-1, 1] input space the shift is 20/255 on every (channel, frame) mean
    shift = a.double().numpy() @ np.full(48, 20.0 / 255.0)
    assert frechet_distance_features(f_real, f_gen) == pytest.approx(float(shift @ shift), rel=1e-4)


def test_i3d_clips_preprocessing_range_and_shape():
    from vmt.metrics.detectors import i3d_clips

    v = np.zeros((40, 120, 200, 3), np.uint8)
    v[..., 0] = 255
    x = i3d_clips(v, clips="all")
    assert tuple(x.shape) == (2, 3, 16, 224, 224)  # 40 frames -> two non-overlapping 16-frame clips
    assert float(x[:, 0].min()) == pytest.approx(1.0) and float(x[:, 1].max()) == pytest.approx(-1.0)


def test_missing_detector_names_file_and_option(tmp_path, monkeypatch):
    from vmt.metrics.detectors import I3D, INCEPTION, find_detector

    monkeypatch.setenv("VMT_DETECTORS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(VmtUsageError) as e:
        find_detector(I3D, tmp_path / "nope.pt")
    msg = str(e.value)
    # The parameter that passes the file, by its name (the command line writes --i3d).
    assert "nope.pt" in msg and "with i3d PATH" in msg and "--" not in msg and "\n" not in msg
    assert e.value.params == ["i3d"]
    with pytest.raises(VmtUsageError) as e:
        find_detector(INCEPTION, None)
    assert "inception-2015-12-05.pt" in str(e.value) and e.value.params == ["inception"]
    (tmp_path / "i3d_torchscript.pt").write_bytes(b"x")
    assert find_detector(I3D, None) == tmp_path / "i3d_torchscript.pt"


def test_inception_score_closed_form():
    from vmt.metrics.detectors import inception_score

    # N one-hot predictions spread evenly over C classes: IS = C; identical predictions: IS = 1
    assert inception_score(np.eye(5)[np.arange(20) % 5])[0] == pytest.approx(5.0, rel=1e-9)
    assert inception_score(np.tile([[0.2, 0.8]], (7, 1)))[0] == pytest.approx(1.0, rel=1e-12)
