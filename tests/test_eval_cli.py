"""`vmt eval` end to end: tables, JSON reports, the baseline gate, folders with unreadable files, detectors."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from vmt.errors import VmtUsageError
from vmt.io.video import write_video
from vmt.metrics.report import Tolerance, build_report, compare, parse_tolerances

cv2 = pytest.importorskip("cv2")
runner = CliRunner()


def vmt(*args):
    return runner.invoke(app, [str(a) for a in args])


def texture(h, w, seed):
    rng = np.random.default_rng(seed)
    lum = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.5)
    lum = (lum - lum.min()) / (lum.max() - lum.min())
    return np.stack([lum, 0.8 * lum + 0.1, 1 - lum], -1) * 220 + 15


def translating(vx, vy, t=10, h=64, w=96, seed=0):
    big = texture(h + 80, w + 80, seed)
    frames = [cv2.warpAffine(big, np.float32([[1, 0, -40 + vx * k], [0, 1, -40 + vy * k]]), (w, h))
              for k in range(t)]
    return np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    paths = {
        "ref": write_video(d / "ref.mp4", translating(2, 1), 10),
        "same": write_video(d / "same.mp4", translating(2, 1, seed=1), 10),
        "reversed": write_video(d / "reversed.mp4", translating(-2, -1, seed=2), 10),
    }
    return paths


def test_help_does_not_import_torch():
    code = "import sys, cli.main; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_motion_report_and_regression_gate(clips, tmp_path):
    base = tmp_path / "base.json"
    r = vmt("eval", "motion", clips["ref"], clips["same"], "--json", base)
    assert r.exit_code == 0, r.output
    doc = json.loads(base.read_text())
    assert doc["schema"] == "vmt.eval/1" and doc["subcommand"] == "motion"
    assert doc["metrics"]["motion_fidelity"]["value"] > 0.9
    assert doc["metrics"]["motion_fidelity"]["better"] == "higher"
    assert doc["items"][0]["metrics"]["direction"] == "agree"
    assert "motion_fidelity" in r.output  # the table

    # the same run against its own report passes; a reversed video regresses and is named
    ok = vmt("eval", "motion", clips["ref"], clips["same"], "--baseline", base, "-t", "motion_fidelity=5%")
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.json"
    rev = vmt("eval", "motion", clips["ref"], clips["reversed"], "--baseline", base, "-t", "motion_fidelity=5%",
              "--json", bad)
    assert rev.exit_code == 1
    assert "regression" in rev.output and "motion_fidelity" in rev.output and "reversed" in rev.output
    report = json.loads(bad.read_text())
    assert "motion_fidelity" in report["baseline"]["regressions"]
    assert report["metrics"]["reversed_pairs"]["value"] == 1
    assert report["metrics"]["motion_fidelity"]["value"] < -0.9


def test_compare_tolerances_within_and_beyond():
    base = build_report("fvd", {"fvd": 100.0, "ssim": 0.8, "n_real_clips": 10})
    # fvd lower is better: +4% passes a 5% tolerance, +6% fails; ssim absolute tolerance 0.01
    cur = build_report("fvd", {"fvd": 104.0, "ssim": 0.795, "n_real_clips": 3})
    checks = {c.name: c for c in compare(cur, base, parse_tolerances(["fvd=5%", "ssim=0.01"]))}
    assert set(checks) == {"fvd", "ssim"}  # counts are informational
    assert not checks["fvd"].regressed and not checks["ssim"].regressed
    cur = build_report("fvd", {"fvd": 106.0, "ssim": 0.785})
    checks = {c.name: c for c in compare(cur, base, parse_tolerances(["fvd=5%", "ssim=0.01"]))}
    assert checks["fvd"].regressed and checks["ssim"].regressed
    # improvements never regress, default tolerance is 0, and a missing metric regresses
    better = build_report("fvd", {"fvd": 50.0})
    checks = {c.name: c for c in compare(better, base, {})}
    assert not checks["fvd"].regressed and checks["ssim"].regressed and checks["ssim"].current is None
    assert parse_tolerances(["*=2%"])["*"] == Tolerance(2.0, True)
    with pytest.raises(VmtUsageError, match="fdv"):
        compare(cur, base, parse_tolerances(["fdv=5%"]))
    with pytest.raises(VmtUsageError, match="NAME=VALUE"):
        parse_tolerances(["fvd:5"])


def test_temporal_folder_with_unreadable_file(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", translating(1, 0, t=5), 10)
    (folder / "broken.mp4").write_bytes(b"this is not a video")
    report = tmp_path / "t.json"
    r = vmt("eval", "temporal", folder, "--json", report, "--flow-preset", "fast")
    assert r.exit_code == 1
    assert "broken.mp4" in r.output and "--skip-bad" in r.output
    doc = json.loads(report.read_text())
    assert [e["path"] for e in doc["errors"]] == [str(folder / "broken.mp4")]
    assert doc["metrics"]["videos"]["value"] == 1 and doc["metrics"]["warp_error"]["value"] < 0.01
    r = vmt("eval", "temporal", str(folder / "*.mp4"), "--skip-bad", "--flow-preset", "fast", "-q")
    assert r.exit_code == 0, r.output
    # an existing report is never replaced without --overwrite
    before = report.read_text()
    r = vmt("eval", "temporal", folder / "a.mp4", "--json", report)
    assert r.exit_code == 2 and "--overwrite" in r.output and report.read_text() == before


def test_physics_cli_on_falling_ball(tmp_path):
    h, w, ss = 96, 64, 4
    yy, xx = (np.mgrid[0 : h * ss, 0 : w * ss] + 0.5) / ss - 0.5
    frames = []
    for k in range(14):
        x, y = 20 + 1.0 * k, 8 + 0.5 * k + 0.2 * k * k  # ay = 0.4 px/frame^2
        cover = (((xx - x) ** 2 + (yy - y) ** 2) <= 25).reshape(h, ss, w, ss).mean((1, 3))
        frames.append(np.repeat((30 + 200 * cover)[..., None], 3, -1))
    write_video(tmp_path / "ball.mp4", np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8), 10)
    r = vmt("eval", "physics", tmp_path / "ball.mp4", "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["metrics"]["physics_rms_px"]["value"] < 0.3
    assert doc["items"][0]["metrics"]["accel_y"] == pytest.approx(0.4, abs=0.03)


def _save_mean_detector(path):
    import torch

    class MeanI3D(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = True) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1)

    torch.jit.script(MeanI3D()).save(str(path))
    return path


def test_fvd_cli_identical_sets_and_missing_detector(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for s in range(4):
        write_video(real / f"v{s}.mp4", translating(1, 0, t=16, h=48, w=48, seed=s), 8)
    det = _save_mean_detector(tmp_path / "i3d.pt")
    r = vmt("eval", "fvd", real, real, "--i3d", det, "--json", tmp_path / "fvd.json", "--device", "cpu",
            "--size", "32")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "fvd.json").read_text())
    assert doc["metrics"]["fvd"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert doc["metrics"]["n_real_clips"]["value"] == 4
    r = vmt("eval", "fvd", real, real, "--i3d", tmp_path / "missing_i3d.pt")
    assert r.exit_code == 2
    text = " ".join(r.output.split())  # the console wraps long lines at the terminal width
    assert r.output.count("error:") == 1 and "Traceback" not in r.output
    assert "missing_i3d.pt" in text and "--i3d PATH" in text


def test_keypoints_cli_plumbing_and_missing_module(tmp_path, monkeypatch):
    gt = np.zeros((2, 3, 2))
    samples = np.zeros((2, 4, 3, 2))
    samples[:, :, :, 0] = np.arange(4.0)[None, :, None]  # sample n is off by n in the first value
    np.savez(tmp_path / "gt.npz", gt=gt)
    np.savez(tmp_path / "pred.npz", samples=samples)
    monkeypatch.setitem(sys.modules, "vmt.metrics.forecast", None)
    r = vmt("eval", "keypoints", tmp_path / "gt.npz", tmp_path / "pred.npz", "--k", "2")
    assert r.exit_code == 1 and "vmt.metrics.forecast" in r.output
    # a stand-in with hand-checkable outputs: the command wires the kept samples into APD and the ratio
    fake = types.ModuleType("vmt.metrics.forecast")
    fake.best_of_k_mae = lambda g, s, k: (0.5, np.tile(np.arange(k), (len(s), 1)))
    fake.apd = lambda kept: float(kept.shape[1])  # K of the kept samples
    fake.ade_fde = lambda g, s: (1.25, 2.5)
    monkeypatch.setitem(sys.modules, "vmt.metrics.forecast", fake)
    r = vmt("eval", "keypoints", tmp_path / "gt.npz", tmp_path / "pred.npz", "--k", "2",
            "--json", tmp_path / "kp.json")
    assert r.exit_code == 0, r.output
    m = {k: v["value"] for k, v in json.loads((tmp_path / "kp.json").read_text())["metrics"].items()}
    assert m["apd"] == 2.0 and m["apd_mae"] == 4.0 and m["ade"] == 1.25 and m["fde"] == 2.5
    # energy distance, V-statistic, between the 2 gt futures (all zero) and the 8 samples, by hand:
    # sample n differs from zero by n in 3 of the 6 flattened values: distance n*sqrt(3) to gt, and
    # |n - m|*sqrt(3) between samples n and m (2 sequences, so each offset appears twice)
    cross = np.mean(np.tile(np.arange(4.0), 2))
    within = np.mean(np.abs(np.subtract.outer(np.tile(np.arange(4.0), 2), np.tile(np.arange(4.0), 2))))
    assert m["energy_distance"] == pytest.approx(np.sqrt(3) * (2 * cross - within), rel=1e-12)
    r = vmt("eval", "keypoints", tmp_path / "gt.npz", tmp_path / "pred.npz", "--k", "9")
    assert r.exit_code == 2 and "--k" in r.output


def test_seams_cli_uses_module_and_reports_missing(tmp_path, monkeypatch):
    write_video(tmp_path / "long.mp4", translating(1, 0, t=8), 10)
    monkeypatch.setitem(sys.modules, "vmt.metrics.seams", None)
    r = vmt("eval", "seams", tmp_path / "long.mp4", "--clip-length", "4")
    assert r.exit_code == 1 and "vmt.metrics.seams" in r.output
    fake = types.ModuleType("vmt.metrics.seams")
    fake.seam_score = lambda frames, clip_length: {"frames": float(len(frames)), "clip_length": clip_length}
    monkeypatch.setitem(sys.modules, "vmt.metrics.seams", fake)
    r = vmt("eval", "seams", tmp_path / "long.mp4", "--clip-length", "4", "--json", tmp_path / "s.json")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "s.json").read_text())["metrics"]
    assert m["frames"]["value"] == 8 and m["clip_length"]["value"] == 4


def test_fid_cli_identical_sets_and_inception_score(tmp_path, monkeypatch):
    import torch

    class ConstInception(torch.nn.Module):
        """Features: per-channel mean and std of each frame; probabilities: uniform over 2 classes."""

        def forward(self, x: torch.Tensor, return_features: bool = False,
                    no_output_bias: bool = False) -> torch.Tensor:
            if return_features:
                return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)
            return torch.full((x.shape[0], 2), 0.5)

    det = tmp_path / "inception.pt"
    torch.jit.script(ConstInception()).save(str(det))
    real, gen = tmp_path / "real", tmp_path / "gen"
    real.mkdir()
    gen.mkdir()
    for s in range(2):
        v = translating(1, 0, t=4, h=32, w=32, seed=s)
        write_video(real / f"v{s}.mp4", v, 8)
        write_video(gen / f"v{s}.mp4", v, 8)
    r = vmt("eval", "fid", real, gen, "--inception", det, "--is", "--device", "cpu", "--json", tmp_path / "f.json")
    assert r.exit_code == 0, r.output
    m = {k: v["value"] for k, v in json.loads((tmp_path / "f.json").read_text())["metrics"].items()}
    assert m["n_real_frames"] == 8 and m["n_gen_frames"] == 8
    assert m["fid"] == pytest.approx(0.0, abs=1e-9)  # same encoded files on both sides
    assert m["is"] == pytest.approx(1.0, abs=1e-12)  # identical predictions: IS = 1
    monkeypatch.setenv("HOME", str(tmp_path))  # no detector cache to find
    monkeypatch.delenv("VMT_DETECTORS", raising=False)
    r = vmt("eval", "fid", real, gen)
    assert r.exit_code == 2 and "inception-2015-12-05.pt" in " ".join(r.output.split())
