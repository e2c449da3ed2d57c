"""Drift of long videos (vmt.metrics.drift): Lab colour against the CIE formulas in float64, real clips clean
and with injected colour ramps, blur and splices, and colour matching of a shifted conditioning frame."""

from __future__ import annotations

import numpy as np
import pytest

from vmt.io.video import read_video
from vmt.metrics.drift import delta_e76, drift, laplacian_variance, match_colour, mean_lab


def _lab_reference(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 (3,) -> CIE Lab (D65), written from the standards' formulas in float64."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = m @ lin / np.array([0.950456, 1.0, 1.088754])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


@pytest.mark.parametrize("rgb", [(255, 255, 255), (200, 30, 40), (10, 120, 220), (128, 128, 128)])
def test_lab_matches_the_cie_formulas(rgb):
    """OpenCV's float conversion (tabulated gamma, a and b in steps of 1/64) within 0.3 of the formulas:
    a tenth of the smallest difference a person sees (delta E about 2.3)."""
    frame = np.full((4, 6, 3), rgb, np.uint8)
    assert mean_lab(frame) == pytest.approx(_lab_reference(np.array(rgb)), abs=0.3)


def test_flat_segments_have_the_closed_form_delta_e():
    a, b = (200, 30, 40), (180, 60, 40)
    video = np.concatenate([np.full((5, 8, 8, 3), a, np.uint8), np.full((5, 8, 8, 3), b, np.uint8)])
    r = drift(video, 5)
    want = float(np.linalg.norm(_lab_reference(np.array(b)) - _lab_reference(np.array(a))))
    assert r.segments == 2 and r.delta_e[0] == 0.0
    assert r.delta_e[1] == pytest.approx(want, rel=0.02, abs=0.3)


def _clip(shared_data, i: int = 0) -> np.ndarray:
    path = sorted((shared_data / "voxceleb").glob("*.mp4"))[i]
    return read_video(path, size=(128, 128))[0]


@pytest.mark.slow
def test_clean_real_clips_stay_put_and_a_colour_ramp_rises(shared_data):
    for i in range(4):
        frames = _clip(shared_data, i)
        clean = drift(frames, 20)
        assert clean.max_delta_e < 5.0, clean  # faces move and light changes a little, no colour drift
        assert 0.5 < clean.mean_seam < 1.5, clean  # a cut into 20-frame pieces is no seam
        ramped = frames.astype(np.int16)
        for j, start in enumerate(range(0, len(frames), 20)):  # later segments warmer and warmer
            ramped[start:start + 20, ..., 0] += 4 * j
            ramped[start:start + 20, ..., 2] -= 4 * j
        r = drift(np.clip(ramped, 0, 255).astype(np.uint8), 20)
        assert all(b > a for a, b in zip(r.delta_e, r.delta_e[1:])), r.delta_e
        assert r.final_delta_e > clean.final_delta_e + 5


def test_blur_lowers_sharpness_and_a_splice_is_a_seam(shared_data):
    import cv2

    frames = _clip(shared_data, 1)
    blurred = frames.copy()
    blurred[40:] = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in frames[40:]])
    assert drift(frames, 20).sharpness[-1] > 0.7
    assert drift(blurred, 20).sharpness[-1] < 0.5
    other = _clip(shared_data, 2)
    spliced = np.concatenate([frames[:20], other[:20], frames[20:40]])
    assert drift(spliced, 20).mean_seam > 3.0
    assert laplacian_variance(np.zeros((8, 8, 3), np.uint8)) == 0.0


def test_colour_matching_brings_a_shifted_frame_back_to_the_anchor(shared_data):
    frames = _clip(shared_data, 3)
    anchor, last = frames[0], frames[-1]
    shifted = np.clip(last.astype(np.int16) + np.array([25, -10, 5]), 0, 255).astype(np.uint8)
    assert delta_e76(mean_lab(shifted), mean_lab(anchor)) > 10
    matched = match_colour(shifted, anchor)
    assert matched.shape == shifted.shape and matched.dtype == np.uint8
    assert delta_e76(mean_lab(matched), mean_lab(anchor)) < 1.0
    # the content is the frame's own, not the anchor's
    assert np.abs(matched.astype(float) - shifted.astype(float)).mean() < np.abs(
        matched.astype(float) - anchor.astype(float)).mean()


@pytest.mark.slow
def test_eval_drift_reports_plots_and_gates_a_ramp_against_the_clean_clip(shared_data, tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from cli.main import app
    from vmt.io.video import write_video

    frames = _clip(shared_data, 1)
    ramped = frames.astype(np.int16)
    for j, start in enumerate(range(0, len(frames), 20)):
        ramped[start:start + 20, ..., 0] += 4 * j
    write_video(tmp_path / "clean.mp4", frames, 10.0)
    write_video(tmp_path / "ramp.mp4", np.clip(ramped, 0, 255).astype(np.uint8), 10.0)
    run = CliRunner().invoke
    res = run(app, ["eval", "drift", str(tmp_path / "clean.mp4"), "--segment-frames", "20", "--json",
                    str(tmp_path / "clean.json"), "--plot", str(tmp_path / "clean.png"), "-q"])
    assert res.exit_code == 0, res.output
    clean = json.loads((tmp_path / "clean.json").read_text())
    item = clean["items"][0]["metrics"]
    assert item["segments"] == -(-len(frames) // 20) and len(item["delta_e"]) == item["segments"]
    assert clean["metrics"]["max_delta_e"]["value"] < 5
    with Image.open(tmp_path / "clean.png") as im:
        assert im.format == "PNG" and im.size[0] > 600
        assert np.asarray(im.convert("L")).std() > 5  # drawn, not blank
    res = run(app, ["eval", "drift", str(tmp_path / "ramp.mp4"), "--segment-frames", "20", "--baseline",
                    str(tmp_path / "clean.json"), "--allow-different-inputs", "--json", str(tmp_path / "r.json"),
                    "-q"])
    assert res.exit_code == 1, res.output  # the colour drifted: a regression against the clean clip
    report = json.loads((tmp_path / "r.json").read_text())
    deltas = report["items"][0]["metrics"]["delta_e"]
    assert all(b > a for a, b in zip(deltas, deltas[1:]))
    assert "final_delta_e" in report["baseline"]["regressions"]
    res = run(app, ["eval", "drift", str(tmp_path / "clean.mp4"), "--segment-frames", "200"])
    assert res.exit_code == 3 and "at least two" in res.output  # one segment: nothing to drift from


def test_overlap_puts_the_boundaries_where_a_chain_has_them():
    """A chain of 9-frame segments conditioned on the last frame adds 8 new frames a segment: boundaries at
    9 and 17. Flat colours changing exactly there give the closed-form delta E with overlap 1, not without."""
    colours = [(200, 30, 40), (180, 60, 40), (150, 90, 60)]
    video = np.concatenate([np.full((n, 8, 8, 3), c, np.uint8) for n, c in zip((9, 8, 8), colours)])
    want = [float(np.linalg.norm(_lab_reference(np.array(c)) - _lab_reference(np.array(colours[0]))))
            for c in colours]
    r = drift(video, 9, overlap=1)
    assert r.segments == 3 and r.delta_e == pytest.approx(want, rel=0.02, abs=0.3)
    assert drift(video, 9).delta_e[1] != pytest.approx(want[1], rel=0.02, abs=0.3)  # boundaries at 9 and 18
    with pytest.raises(ValueError):
        drift(video, 9, overlap=8)
