"""vmt.metrics.forecast against brute-force float64 loops and closed forms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vmt.metrics.forecast import ade_fde, apd, best_k, crps, energy_distance


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_energy_distance_matches_brute_force():
    x, y = _rng(0).normal(size=(7, 3, 2)), _rng(1).normal(size=(5, 3, 2)) + 0.5
    xf, yf = x.reshape(7, -1), y.reshape(5, -1)
    d = lambda a, b: float(np.sqrt(((a - b) ** 2).sum()))
    exy = np.mean([d(a, b) for a in xf for b in yf])
    exx = np.mean([d(a, b) for a in xf for b in xf])
    eyy = np.mean([d(a, b) for a in yf for b in yf])
    assert energy_distance(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(2 * exy - exx - eyy, abs=1e-5)


def test_energy_distance_one_dimensional_closed_form():
    # Two point masses at 0 and a: 2|a| - 0 - 0.
    assert energy_distance(np.zeros((4, 1)), np.full((3, 1), 2.5)) == pytest.approx(5.0)
    # Same sample: zero.
    x = _rng(2).normal(size=(6, 4))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_best_k_and_apd_match_brute_force():
    gt, s = _rng(3).normal(size=(4, 3)), _rng(4).normal(size=(10, 4, 3))
    maes = [np.abs(si - gt).mean() for si in s]
    order = sorted(range(10), key=lambda i: maes[i])[:4]
    mean, idx = best_k(gt, s, 4)
    assert list(idx) == order and mean == pytest.approx(np.mean([maes[i] for i in order]))
    pairs = [np.abs(s[i] - s[j]).mean() for i, j in itertools.permutations(range(10), 2)]
    assert apd(s) == pytest.approx(np.mean(pairs), rel=1e-12)
    assert apd(s[:1]) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        best_k(gt, s, 11)


def test_ade_fde_match_brute_force():
    gt, s = _rng(5).normal(size=(6, 3, 2)), _rng(6).normal(size=(8, 6, 3, 2))
    ade = min(np.mean([np.hypot(*(s[n, h, k] - gt[h, k])) for h in range(6) for k in range(3)]) for n in range(8))
    fde = min(np.mean([np.hypot(*(s[n, 5, k] - gt[5, k])) for k in range(3)]) for n in range(8))
    a, f = ade_fde(gt, s)
    assert a == pytest.approx(ade) and f == pytest.approx(fde)


def test_crps_matches_brute_force_and_the_gaussian_closed_form():
    gt, s = _rng(7).normal(size=(5,)), _rng(8).normal(size=(9, 5))
    ref = np.mean([np.mean(np.abs(s[:, e] - gt[e])) - 0.5 * np.mean(np.abs(s[:, e][:, None] - s[:, e][None]))
                   for e in range(5)])
    assert crps(gt, s) == pytest.approx(ref)
    # CRPS of N(0,1) at y = 0 is (sqrt(2) - 1) / sqrt(pi).
    big = _rng(9).normal(size=(20000, 1))
    assert crps(np.zeros(1), big) == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi), abs=0.01)
