"""vmt.metrics.seams on synthetic videos with known discontinuities."""

from __future__ import annotations

import numpy as np
import pytest

from vmt.metrics.seams import chain_boundaries, frame_steps, seam_profile, seam_score


def test_uniform_ramp_with_jumps_at_boundaries_has_the_closed_form_score():
    c, jump, t = 0.02, 0.05, 40
    bounds = [8, 15, 22, 29, 36]
    level = c * np.arange(t, dtype=np.float64)
    for b in bounds:
        level[b:] += jump
    frames = np.broadcast_to(level[:, None, None, None], (t, 4, 5, 3))
    assert seam_score(frames, bounds) == pytest.approx((c + jump) / c, rel=1e-12)
    prof = seam_profile(frames, bounds)
    assert prof["boundary_change"] == pytest.approx(c + jump) and prof["inside_change"] == pytest.approx(c)


def test_constant_motion_is_seamless():
    rng = np.random.default_rng(0)
    base = rng.random((16, 16, 3))
    frames = np.stack([np.roll(base, 2 * k, axis=1) for k in range(30)])  # same translation every step
    assert seam_score(frames, chain_boundaries(30, 8, 7)) == pytest.approx(1.0, rel=1e-12)


def test_repeated_frame_at_a_seam_scores_below_one():
    frames = np.arange(10, dtype=np.float64)[:, None, None] * np.ones((1, 2, 2))
    frames[5] = frames[4]  # a frozen step at the boundary: no change there, one double step after it
    steps = frame_steps(frames)
    assert steps[4] == 0.0 and steps[5] == 2.0
    assert seam_score(frames, [5]) == 0.0


def test_chain_boundaries_follow_the_recall_layout():
    # 8-frame clips, reference = last frame (each next clip adds 7): frames 8, 15, 22, ... start new clips
    assert chain_boundaries(30, 8, 7) == [8, 15, 22, 29]
    assert chain_boundaries(8, 8, 7) == []


def test_bad_boundaries_are_rejected():
    frames = np.zeros((5, 2, 2))
    with pytest.raises(ValueError, match="boundaries must lie"):
        seam_score(frames, [5])
    with pytest.raises(ValueError, match="no clip boundaries"):
        seam_score(frames, [])
    with pytest.raises(ValueError, match="at least 2 frames"):
        frame_steps(frames[:1])
