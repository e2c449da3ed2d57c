"""`vmt eval` end to end through the real CLI and the real metric modules: tables, JSON reports, the baseline
gate and its refusals, exit codes, folders with failing files, detectors, keypoint forecasts of `run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from pathlib import Path

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


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = "import sys, cli.main; print('torch' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.slow
def test_motion_report_and_regression_gate(clips, tmp_path):
    base = tmp_path / "base.json"
    r = vmt("eval", "motion", clips["ref"], clips["same"], "--json", base)
    assert r.exit_code == 0, r.output
    doc = json.loads(base.read_text())
    assert doc["schema"] == "vmt.eval/1.1" and doc["subcommand"] == "motion"
    assert doc["metrics"]["motion_fidelity"]["value"] > 0.9
    assert doc["metrics"]["motion_fidelity"]["better"] == "higher"
    assert doc["items"][0]["metrics"]["direction"] == "agree"
    assert "motion_fidelity" in r.output  # the table

    # the same run against its own report passes; a reversed video regresses and is named
    ok = vmt("eval", "motion", clips["ref"], clips["same"], "--baseline", base, "-t", "motion_fidelity=5%")
    assert ok.exit_code == 0, ok.output
    bad = tmp_path / "bad.json"
    # another generated video is another input: refused (exit 2) before any work, unless allowed
    rev = vmt("eval", "motion", clips["ref"], clips["reversed"], "--baseline", base, "-t", "motion_fidelity=5%")
    assert rev.exit_code == 2 and "inputs differ" in rev.output and not bad.exists()
    rev = vmt("eval", "motion", clips["ref"], clips["reversed"], "--baseline", base, "-t", "motion_fidelity=5%",
              "--json", bad, "--allow-different-inputs")
    assert rev.exit_code == 1
    assert "REGRESSION" in rev.output and "motion_fidelity" in rev.output and "reversed" in rev.output
    report = json.loads(bad.read_text())
    assert "motion_fidelity" in report["baseline"]["regressions"]
    assert report["metrics"]["reversed_pairs"]["value"] == 1
    assert report["metrics"]["motion_fidelity"]["value"] < -0.9
    assert report["baseline"]["not_comparable"] == ["the inputs differ in content (gen)"]


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


@pytest.mark.slow
def test_temporal_folder_with_unreadable_file(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", translating(1, 0, t=5), 10)
    (folder / "broken.mp4").write_bytes(b"this is not a video")
    report = tmp_path / "t.json"
    r = vmt("eval", "temporal", folder, "--json", report, "--flow-preset", "fast")
    assert r.exit_code == 3  # runtime error, not a regression
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


@pytest.mark.slow
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
    assert doc["metrics"]["physics_rms"]["value"] == pytest.approx(doc["metrics"]["physics_rms_px"]["value"]
                                                                   / np.hypot(96, 64), rel=1e-9)
    assert doc["items"][0]["metrics"]["accel_y"] == pytest.approx(0.4, abs=0.03)
    assert doc["metrics"]["no_trajectory"]["value"] == 0
    # pure noise: no trajectory, never a small residual
    noise = np.random.default_rng(0).integers(0, 256, (14, 96, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "noise.mp4", noise, 10)
    r = vmt("eval", "physics", tmp_path / "noise.mp4", "--json", tmp_path / "n.json")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "n.json").read_text())
    assert doc["metrics"]["no_trajectory"]["value"] == 1 and doc["metrics"]["physics_rms"]["value"] is None
    assert "no trajectory" in doc["items"][0]["metrics"]["reason"]


def _save_mean_detector(path):
    import torch

    class MeanI3D(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = True) -> torch.Tensor:
            return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], 1)

    torch.jit.script(MeanI3D()).save(str(path))
    return path


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------- gate refusals, exit codes, outputs

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    write_video(d / "a.mp4", translating(1, 0, t=6), 10)
    write_video(d / "b.mp4", translating(2, 0, t=6, seed=3), 10)
    return d


@pytest.mark.slow
def test_gate_refuses_other_subcommand_inputs_and_parameters(small, tmp_path):
    base = tmp_path / "base.json"
    assert vmt("eval", "temporal", small / "a.mp4", "--flow-preset", "fast", "--json", base, "-q").exit_code == 0
    ok = vmt("eval", "temporal", small / "a.mp4", "--flow-preset", "fast", "--baseline", base)
    assert ok.exit_code == 0 and "result: pass" in ok.output
    # another subcommand: refused even with --allow-different-inputs
    r = vmt("eval", "seams", small / "a.mp4", "--clip-length", "3", "--baseline", base, "--allow-different-inputs")
    assert r.exit_code == 2 and "vmt eval temporal" in r.output
    # same path, other content (a copy elsewhere with the same name is fine: contents are compared)
    other = tmp_path / "x"
    other.mkdir()
    (other / "a.mp4").write_bytes((small / "a.mp4").read_bytes())
    assert vmt("eval", "temporal", other / "a.mp4", "--flow-preset", "fast", "--baseline", base).exit_code == 0
    r = vmt("eval", "temporal", small / "b.mp4", "--flow-preset", "fast", "--baseline", base)
    assert r.exit_code == 2 and "inputs differ" in r.output and "--allow-different-inputs" in r.output
    r = vmt("eval", "temporal", small / "a.mp4", "--flow-preset", "medium", "--baseline", base)
    assert r.exit_code == 2 and "flow_preset" in r.output
    r = vmt("eval", "temporal", small / "a.mp4", "--flow-preset", "medium", "--baseline", base,
            "--allow-different-inputs", "-t", "*=100%")
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_outputs_never_inputs_json_stdout_and_result_line(small, tmp_path):
    video = tmp_path / "clip[1].mp4"  # glob characters in an existing name: taken literally
    video.write_bytes((small / "a.mp4").read_bytes())
    before = video.read_bytes()
    r = vmt("eval", "temporal", video, "--json", video, "--overwrite")
    assert r.exit_code == 2 and "same file as the input" in r.output and video.read_bytes() == before
    link = tmp_path / "link.mp4"
    os.link(video, link)  # the same file under another name
    r = vmt("eval", "temporal", video, "--json", link, "--overwrite")
    assert r.exit_code == 2 and "same file as the input" in r.output
    base = tmp_path / "base.json"
    assert vmt("eval", "temporal", video, "--json", base, "-q", "--flow-preset", "fast").exit_code == 0
    r = vmt("eval", "temporal", video, "--baseline", base, "--json", base, "--overwrite")
    assert r.exit_code == 2 and "same file as the input" in r.output
    # --json - writes the report to stdout; --quiet still prints the one-line result (stderr)
    r = runner.invoke(app, ["eval", "temporal", str(video), "--json", "-", "-q", "--flow-preset", "fast"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["subcommand"] == "temporal" and doc["inputs"]["videos"] == [str(video)]
    assert not (tmp_path / "-").exists() and not Path("-").exists()
    assert "result: no baseline" in r.stderr and "warp_error=" in r.stderr
    r = vmt("eval", "temporal", video, "-q", "--flow-preset", "fast")
    assert r.exit_code == 0 and r.output.strip().startswith("result: no baseline")  # --quiet: only the result line


@pytest.mark.slow
def test_per_file_failures_honour_skip_bad_and_seams_real_module(tmp_path):
    """Seams through the real module: steps of 4 levels inside clips of 4 frames and 40 at their boundaries
    (flat frames; H.264 keeps them within a level);
    a video too short for one boundary fails (ValueError) and is listed, and --skip-bad accepts it."""
    folder = tmp_path / "long"
    folder.mkdir()
    levels = np.cumsum([0] + [40 if k % 4 == 0 else 4 for k in range(1, 12)]) + 40
    write_video(folder / "chain.mp4", np.stack([np.full((32, 32, 3), v, np.uint8) for v in levels]), 10)
    write_video(folder / "short.mp4", np.full((3, 32, 32, 3), 90, np.uint8), 10)
    r = vmt("eval", "seams", folder, "--clip-length", "4", "--json", tmp_path / "s.json")
    assert r.exit_code == 3 and "short.mp4" in r.output and "--skip-bad" in r.output
    r = vmt("eval", "seams", folder, "--clip-length", "4", "--json", tmp_path / "s.json", "--skip-bad", "--overwrite")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "s.json").read_text())
    assert [e["path"] for e in doc["errors"]] == [str(folder / "short.mp4")]
    m = doc["items"][0]["metrics"]
    assert m["boundaries"] == 2 and m["seam_score"] == pytest.approx(10.0, rel=0.15)
    assert m["inside_change"] == pytest.approx(4.0, abs=0.5) and m["boundary_change"] == pytest.approx(40, abs=1.5)


@pytest.mark.slow
def test_motion_textureless_reference_says_why(tmp_path):
    write_video(tmp_path / "flat.mp4", np.full((6, 48, 48, 3), 128, np.uint8), 10)
    write_video(tmp_path / "moving.mp4", translating(1, 0, t=6, h=48, w=48), 10)
    r = vmt("eval", "motion", tmp_path / "flat.mp4", tmp_path / "moving.mp4", "--json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "m.json").read_text())
    item = doc["items"][0]["metrics"]
    assert item["motion_fidelity"] is None and "no moving tracks" in item["reason"]
    assert doc["metrics"]["unscored_pairs"]["value"] == 1


# ---------------------------------------------------------------- keypoints: run -> eval round trip

@pytest.mark.slow
def test_predict_keypoints_run_then_eval_keypoints(shared_data, tmp_path):
    from vmt.keypoints.data import load_sequences, save_sequences

    seqs = load_sequences(shared_data / "voxceleb" / "fomm_kp_dev.npz")
    pick = [0, 9, 18, 27]
    pos = [seqs.layout.unflatten(seqs.flat[i]) for i in pick]
    truth = tmp_path / "truth.npz"
    save_sequences(truth, [seqs.names[i] for i in pick], [p for p, _ in pos], [j for _, j in pos])
    pred = tmp_path / "pred.npz"
    r = vmt("predict-keypoints", "run", truth, "-o", pred, "--samples", "6", "--no-refine", "--backtest",
            "--horizon", "5", "-q")
    assert r.exit_code == 0, r.output
    out = np.load(pred)
    h = 5
    lengths = [len(seqs.flat[i]) for i in pick]
    assert out["start"].tolist() == [n - h for n in lengths]  # the forecast windows are the last 5 frames
    r = vmt("eval", "keypoints", truth, pred, "--k", "2", "--json", tmp_path / "kp.json")
    assert r.exit_code == 0, r.output
    m = {k: v["value"] for k, v in json.loads((tmp_path / "kp.json").read_text())["metrics"].items()}
    # float64 references from the files themselves
    ade_mean, ade_best, zv_ade, cv_fde, dv_ade = [], [], [], [], []
    d_fit = m["damped_velocity_damping"]
    assert d_fit in (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
    for s, (p, _) in enumerate(pos):
        gt = p[lengths[s] - h:].astype(np.float64)
        d = np.linalg.norm(out["value"][s].astype(np.float64) - gt, axis=-1)  # (N, H, K)
        ade_mean.append(d.mean())
        ade_best.append(d.mean((1, 2)).min())
        last, prev = p[lengths[s] - h - 1].astype(np.float64), p[lengths[s] - h - 2].astype(np.float64)
        zv_ade.append(np.linalg.norm(gt - last, axis=-1).mean())
        cv_fde.append(np.linalg.norm(gt[-1] - (last + h * (last - prev)), axis=-1).mean())
        gains = np.cumsum(d_fit ** np.arange(1, h + 1))[:, None, None]
        dv_ade.append(np.linalg.norm(gt - (last + gains * (last - prev)), axis=-1).mean())
    assert m["ade_mean"] == pytest.approx(np.mean(ade_mean), rel=1e-6)
    assert m["ade_best"] == pytest.approx(np.mean(ade_best), rel=1e-6)
    assert m["zero_velocity_ade"] == pytest.approx(np.mean(zv_ade), rel=1e-6)
    assert m["constant_velocity_fde"] == pytest.approx(np.mean(cv_fde), rel=1e-6)
    assert m["damped_velocity_ade"] == pytest.approx(np.mean(dv_ade), rel=1e-6)
    assert m["windows"] == 4 and m["samples"] == 6 and m["apd"] > 0
    assert m["apd_mae"] == pytest.approx(m["apd"] / m["mae_best_k"], rel=1e-12)
    # a forecast past the end of its input has no truth: said so, exit 2
    r = vmt("predict-keypoints", "run", truth, "-o", tmp_path / "future.npz", "--samples", "2", "--no-refine",
            "--horizon", "5", "-q")
    assert r.exit_code == 0, r.output
    r = vmt("eval", "keypoints", truth, tmp_path / "future.npz")
    assert r.exit_code == 2 and "--backtest" in " ".join(r.output.split())
    r = vmt("eval", "keypoints", truth, pred, "--k", "9")
    assert r.exit_code == 2 and "--k" in r.output


# ---------------------------------------------------------------- motion fidelity on real clips

@pytest.mark.slow
def test_motion_fidelity_separates_real_clips(shared_data):
    """Threshold 0.75 from benchmarks/metrics.py on the shared clips (30 frames): same-motion pairs (a clip
    against itself, two overlapping crops of it) scored >= 0.79, unrelated pairs (other clips, the same clip
    40 frames later) <= 0.69. The previous score put unrelated pairs at 0.17-0.72 and self at 0.53-0.99."""
    from vmt.io.video import read_video
    from vmt.metrics.motion import motion_fidelity

    vox = sorted((shared_data / "voxceleb").glob("*.mp4"))
    v = [read_video(p, max_frames=70)[0] for p in vox[:3]]
    thr = 0.75
    mf = lambda a, b: motion_fidelity(np.ascontiguousarray(a), np.ascontiguousarray(b)).score  # noqa: E731
    assert mf(v[0][:30], v[0][:30]) == pytest.approx(1.0, abs=1e-9)
    for clip in (v[0], v[2]):
        a = clip[:30]
        assert mf(a[:, :204, :204], a[:, -204:, -204:]) > thr  # crops of the same motion at other places
        assert mf(a, clip[40:70]) < thr  # the same scene at another time
    assert mf(v[0][:30], v[1][:30]) < thr and mf(v[1][:30], v[2][:30]) < thr
    runner, _ = read_video(shared_data / "reference" / "runner_640x368_81f.mp4", max_frames=30)
    assert mf(runner, runner[::-1]) < 0  # time reversal of a pan: opposite motion


@pytest.mark.slow
def test_tables_full_width_without_terminal(small, tmp_path):
    """CliRunner is no terminal: long names print whole in the per-input table, whatever $COLUMNS says."""
    folder = tmp_path / "v"
    folder.mkdir()
    long_name = "a_rather_long_generated_video_name_from_a_parameter_sweep_seed_0000012345.mp4"
    for name in (long_name, "b.mp4"):
        (folder / name).write_bytes((small / "a.mp4").read_bytes())
    r = runner.invoke(app, ["eval", "temporal", str(folder), "--flow-preset", "fast"], env={"COLUMNS": "60"})
    assert r.exit_code == 0, r.output
    assert long_name in r.output and "result: no baseline" in r.output


@pytest.mark.slow
def test_video_input_tracked_keypoints_score_the_forecast(shared_data, tmp_path):
    """`run` on a video saves the tracked keypoints beside the forecast; with --backtest they are the truth.
    (A model trained on tracker points of these videos: the shipped FOMM model refuses tracker points.)"""
    video = sorted((shared_data / "voxceleb").glob("*.mp4"))[0]
    model = tmp_path / "lk"
    r = vmt("predict-keypoints", "train", shared_data / "voxceleb", "-o", model, "--context", "4", "--horizon",
            "4", "--steps", "2", "--eval-every", "2", "--hidden", "8", "--layers", "1", "--flow-hidden", "8",
            "--blocks", "2", "--cond-dim", "2", "--window-stride", "4", "--device", "cpu", "-q")
    assert r.exit_code == 0, r.output
    pred = tmp_path / "pred.npz"
    r = vmt("predict-keypoints", "run", video, "-m", model, "-o", pred, "--samples", "3", "--no-refine",
            "--backtest", "--horizon", "4", "-q")
    assert r.exit_code == 0, r.output
    tracked = tmp_path / "pred.keypoints.npz"
    kp = np.load(tracked)
    assert kp["names"].tolist() == [video.stem] and int(kp["lengths"][0]) == len(kp["value"])
    assert np.load(pred)["start"].tolist() == [len(kp["value"]) - 4]
    r = vmt("eval", "keypoints", tracked, pred, "--k", "2", "--json", tmp_path / "kp.json")
    assert r.exit_code == 0, r.output
    m = {k: v["value"] for k, v in json.loads((tmp_path / "kp.json").read_text())["metrics"].items()}
    assert m["windows"] == 1 and m["ade_best"] <= m["ade_mean"] and m["zero_velocity_ade"] >= 0


@pytest.mark.slow
def test_motion_batch_scores_each_listed_pair_as_a_single_run_does(clips, tmp_path):
    """A pairs file pairs any reference with any video (what REF GEN folders, paired by name, cannot):
    paths are read from the file's folder, rows keep the file's order, each row is the single run's score."""
    local = tmp_path / "v" / "same.mp4"
    local.parent.mkdir()
    local.write_bytes(clips["same"].read_bytes())
    pairs = [{"reference": str(clips["ref"]), "video": "v/same.mp4"},
             {"reference": str(clips["ref"]), "video": str(clips["reversed"])},
             {"reference": "v/same.mp4", "video": "v/same.mp4"}]
    listing = tmp_path / "pairs.jsonl"
    listing.write_text("".join(json.dumps(x) + "\n" for x in pairs))
    r = vmt("eval", "motion", "--batch", listing, "--json", tmp_path / "b.json")
    assert r.exit_code == 0, r.output
    assert "reference" in r.output and "reversed" in r.output
    doc = json.loads((tmp_path / "b.json").read_text())
    got = [(Path(it["reference"]).name, Path(it["path"]).name, it["metrics"]["motion_fidelity"]) for it in doc["items"]]
    singles = []
    for ref, gen in ((clips["ref"], local), (clips["ref"], clips["reversed"]), (local, local)):
        r = vmt("eval", "motion", ref, gen, "--json", tmp_path / "s.json", "--overwrite", "--quiet")
        assert r.exit_code == 0, r.output
        singles.append(json.loads((tmp_path / "s.json").read_text())["items"][0]["metrics"]["motion_fidelity"])
    assert [g[:2] for g in got] == [("ref.mp4", "same.mp4"), ("ref.mp4", "reversed.mp4"), ("same.mp4", "same.mp4")]
    assert [g[2] for g in got] == singles
    assert got[2][2] == pytest.approx(1.0, abs=1e-12) and got[0][2] > 0.9 and got[1][2] < -0.9  # itself, the same motion, its reverse
    assert doc["metrics"]["pairs"]["value"] == 3 and doc["params"]["batch"] == str(listing)


@pytest.mark.parametrize("lines, args, pattern", [
    (None, ["REF"], "give it without REF and GEN"),
    (None, ["REF", "NOBATCH"], "give REF and GEN"),
    (['{"reference": "ref.mp4", "vid": "x.mp4"}'], [], "line 1: unknown key 'vid'"),
    (['{"reference": "ref.mp4"}'], [], "line 1: 'video' must be a path"),
    (['{"reference": "ref.mp4", "video": "ref.mp4"}', '{"reference": "ref.mp4", "video": "gone.mp4"}'], [],
     "line 2: video"),
    (['{"reference": "ref.mp4", "video": "ref.mp4"}', "[1, 2]"], [], "line 2: expected a JSON object"),
    (['{"reference": "ref.mp4",'], [], "line 1: not valid JSON"),
    (['{"batch": {"command": "refine"}}', '{"output": "ref.mp4"}'], [], "manifest of `vmt refine`"),
    ([], [], "has no pairs"),
    (None, ["FOLDER"], "is a folder"),
    (None, ["TXT"], "expected JSON Lines"),
    (['{"reference": "ref.mp4", "video": "ref.mp4"}'], ["SELFJSON"], "same file as the input --batch"),
])
def test_motion_batch_refusals_are_one_line_usage_errors(clips, tmp_path, lines, args, pattern):
    (tmp_path / "ref.mp4").write_bytes(clips["ref"].read_bytes())
    listing = tmp_path / "pairs.jsonl"
    if lines is not None:
        listing.write_text("".join(x + "\n" for x in lines))
    batch = {"FOLDER": tmp_path, "TXT": tmp_path / "pairs.txt"}.get(args[0] if args else "", listing)
    (tmp_path / "pairs.txt").write_text("ref.mp4 ref.mp4\n")
    argv = ["eval", "motion"]
    if "REF" in args:
        argv += [tmp_path / "ref.mp4"]
    if "NOBATCH" not in args:
        argv += ["--batch", batch]
    if "SELFJSON" in args:
        argv += ["--json", listing, "--overwrite"]
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    r = vmt(*argv)
    err = (r.stderr or "").strip()
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert len(err.splitlines()) == 1 and pattern in err, err
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_motion_batch_gate_compares_the_pairs_not_the_listing_path(clips, tmp_path):
    """A baseline from a pairs file is the baseline of the same pairs listed elsewhere; the same videos
    paired otherwise are other inputs (refused without --allow-different-inputs)."""
    def listing(path, pairs):
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"reference": str(r), "video": str(g)}) + "\n" for r, g in pairs))
        return path

    same = [(clips["ref"], clips["same"]), (clips["same"], clips["reversed"])]
    base = tmp_path / "base.json"
    r = vmt("eval", "motion", "--batch", listing(tmp_path / "a" / "pairs.jsonl", same), "--json", base, "-q")
    assert r.exit_code == 0, r.output
    r = vmt("eval", "motion", "--batch", listing(tmp_path / "b" / "other.jsonl", same), "--baseline", base,
            "-t", "motion_fidelity=1e-9")
    assert r.exit_code == 0 and "baseline checks ok" in r.output, r.output
    swapped = [(clips["same"], clips["same"]), (clips["ref"], clips["reversed"])]
    r = vmt("eval", "motion", "--batch", listing(tmp_path / "c" / "pairs.jsonl", swapped), "--baseline", base)
    assert r.exit_code == 2 and "the inputs differ in content (ref)" in r.stderr, r.output


def test_eval_keypoints_damped_velocity_baseline_learns_its_damping_from_the_observed_frames(tmp_path):
    """Keypoints whose velocity decays by 0.8 a frame: the damping chosen on the frames before the forecast
    windows is 0.8, and that forecast is then exact, where zero and constant velocity are not."""
    from vmt.keypoints.data import save_sequences

    rng = np.random.default_rng(3)
    t, st, h = 16, 10, 5
    seqs = []
    for _ in range(3):
        v = rng.normal(size=(1, 3, 2))                                   # 3 keypoints
        steps = v * 0.8 ** np.arange(t)[:, None, None]                    # frame-to-frame moves
        seqs.append(rng.normal(size=(1, 3, 2)) + np.cumsum(steps, axis=0))
    truth = tmp_path / "truth.npz"
    save_sequences(truth, ["a", "b", "c"], seqs)
    pred = tmp_path / "pred.npz"
    np.savez(pred, names=np.array(["a", "b", "c"]), start=np.array([st] * 3),
             value=np.stack([np.repeat(s[None, None, st - 1], h, axis=1).repeat(4, axis=0) for s in seqs]))
    r = vmt("eval", "keypoints", truth, pred, "--k", "2", "--json", tmp_path / "kp.json")
    assert r.exit_code == 0, r.output
    m = {k: v["value"] for k, v in json.loads((tmp_path / "kp.json").read_text())["metrics"].items()}
    assert m["damped_velocity_damping"] == 0.8
    assert m["damped_velocity_ade"] < 1e-5 < m["zero_velocity_ade"] and m["damped_velocity_ade"] < m["constant_velocity_ade"]
    assert m["ade_mean"] == pytest.approx(m["zero_velocity_ade"], rel=1e-6)    # the forecast file holds still
    assert m["damped_velocity_energy_distance"] < m["zero_velocity_energy_distance"]
