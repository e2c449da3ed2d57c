"""`vmt compare` and its statistics: the cluster bootstrap against closed forms and simulated coverage, P&P
against plain Euler on a Gaussian mixture whose true density is known, real clips against the same clips with
temporal jitter, and the command's pairing, gate, report and errors on real files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.main import app  # noqa: E402
from vmt.io.video import read_video, write_video  # noqa: E402
from vmt.metrics.paired import cluster_bootstrap, compare_metric, goodness, verdict_of, win_rate  # noqa: E402

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- statistics


def test_cluster_bootstrap_matches_the_standard_error_of_group_means():
    """Equal groups: the mean over pairs is the mean of the k group means, so the bootstrap interval is about
    mean +- z * sd(group means) / sqrt(k) (sd with ddof 0, the bootstrap's own): within 10%."""
    rng = np.random.default_rng(0)
    k, m = 60, 5
    effects = rng.normal(0.0, 1.0, k)
    diffs = np.repeat(effects, m) + rng.normal(0.0, 0.05, k * m)
    groups = np.repeat(np.arange(k), m)
    lo, hi = cluster_bootstrap(diffs, groups, resamples=20_000, seed=1)
    means = diffs.reshape(k, m).mean(1)
    half = 1.959964 * means.std() / math.sqrt(k)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(diffs.mean(), abs=0.1 * half)
    # Treating the 300 correlated pairs as independent would claim an interval about sqrt(5) times narrower.
    naive = cluster_bootstrap(diffs, np.arange(k * m), resamples=20_000, seed=1)
    assert (naive[1] - naive[0]) < 0.6 * (hi - lo)


def test_cluster_bootstrap_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    k, m, true, hits, trials = 25, 4, 0.3, 0, 300
    groups = np.repeat(np.arange(k), m)
    for t in range(trials):
        diffs = true + np.repeat(rng.normal(0, 0.5, k), m) + rng.normal(0, 0.5, k * m)
        lo, hi = cluster_bootstrap(diffs, groups, resamples=1000, seed=t)
        hits += lo <= true <= hi
    assert 0.88 <= hits / trials <= 0.99, hits / trials


def test_orientation_win_rate_and_verdicts():
    assert list(goodness([1.0, 2.0], "lower")) == [-1.0, -2.0]
    assert list(goodness([0.5, 1.5, 1.0], "closer", 1.0)) == [-0.5, -0.5, -0.0]
    assert win_rate(np.array([1.0, -1.0, 0.0, 2.0])) == pytest.approx(0.625)
    assert verdict_of((0.1, 0.2)) == "a_better" and verdict_of((-0.2, -0.1)) == "b_better"
    assert verdict_of((-0.1, 0.1)) == "no_difference" and verdict_of((0.0, 0.0)) == "no_difference"
    # lower is better: A's errors are smaller -> A better, and the difference is reported favouring A
    c = compare_metric([1.0, 2.0, 3.0, 1.5], [2.0, 3.0, 4.0, 2.5], ["p", "q", "r", "s"], "lower", resamples=500)
    assert c.verdict == "a_better" and c.mean_difference == pytest.approx(1.0) and c.win_rate == 1.0
    same = compare_metric([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], ["p", "q", "r"], "higher", resamples=500)
    assert same.verdict == "no_difference" and same.ci == (0.0, 0.0)
    nan = compare_metric([1.0, float("nan"), 3.0], [0.0, 2.0, 2.0], ["p", "q", "r"], "higher", resamples=500)
    assert nan.pairs == 2


@pytest.mark.slow
def test_pnp_beats_plain_euler_on_a_mixture_whose_density_is_known():
    """Ground truth: a blurred (undertrained) velocity of a Gaussian mixture spreads samples off the modes;
    Predict-and-Perturb pulls them back (benchmarks/refine_gmm.py, its 64-d mixture, seed 0). Per sample, the
    TRUE log-density of P&P's sample against Euler's from the same start noise, grouped in blocks of 20
    starts: "A better" with an interval above 0, and "B better" with the sides swapped. (The effect is not
    universal: on the mixture of seed 1 the same comparison finds no detectable difference, which is why
    verdicts come with intervals.)"""
    from vmt.sampling.euler import sample_euler
    from vmt.sampling.pnp import PredictPerturb, parse_plan
    from vmt.sampling.sigmas import flow_sigmas
    from vmt.testing.gmm_flow import well_separated_mixture

    gmm = well_separated_mixture(8, 64, separation=8.0, seed=0)
    blur = gmm.blurred(1.0)
    z0 = torch.randn(800, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sig = flow_sigmas(50, 3.0).double()
    plan = parse_plan("default").validate(50)
    velocity = lambda z, s: blur.velocity(z, float(s))  # noqa: E731
    euler = gmm.log_prob(sample_euler(velocity, z0.clone(), sig, [])).numpy()
    pnp = gmm.log_prob(sample_euler(velocity, z0.clone(), sig, [PredictPerturb(plan, seed=0, tau=0.25)])).numpy()
    groups = np.arange(800) // 20
    c = compare_metric(pnp, euler, groups, "higher", resamples=5000)
    assert c.verdict == "a_better" and c.ci[0] > 0 and c.win_rate > 0.5, c
    assert compare_metric(euler, pnp, groups, "higher", resamples=5000).verdict == "b_better"


# ---------------------------------------------------------------- the command on real clips


def _clips(shared_data, folder: Path, n: int = 4, jitter: int = 0) -> list[Path]:
    folder.mkdir()
    out = []
    for p in sorted((shared_data / "voxceleb").glob("*.mp4"))[:n]:
        frames, fps = read_video(p, max_frames=20, size=(96, 96))
        if jitter:  # every other frame shifted sideways: the same content, shaking
            frames = frames.copy()
            frames[1::2] = np.roll(frames[1::2], jitter, axis=2)
        out.append(write_video(folder / p.name, frames, fps))
    return out


@pytest.mark.slow
def test_real_clips_against_jittered_copies(shared_data, tmp_path):
    real = _clips(shared_data, tmp_path / "real")
    _clips(shared_data, tmp_path / "jitter", jitter=3)
    before = {p: p.read_bytes() for p in real}
    res = invoke("compare", tmp_path / "jitter", tmp_path / "real", "--resamples", 2000, "--json",
                 tmp_path / "r.json", "--gate", "warp_error", "-q")
    assert res.exit_code == 1, res.output  # the jittered set is detectably worse on a gated metric
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["schema"] == "vmt.compare/1" and report["pairs"] == 4 and report["groups"] == 4
    for name in ("warp_error", "ssim", "psnr", "flicker"):
        m = report["metrics"][name]
        assert m["verdict"] == "b_better" and m["ci"][1] < 0 and m["win_rate"] == 0.0, (name, m)
    assert report["gate"] == {"metrics": ["warp_error"], "failed": ["warp_error"], "passed": False}
    assert {p: p.read_bytes() for p in real} == before
    # the same set against itself: nothing to detect, exit 0 with the gate on
    res = invoke("compare", tmp_path / "real", tmp_path / "real", "--resamples", 500, "--gate", "ssim",
                 "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert all(m["verdict"] == "no_difference" for m in doc["metrics"].values())


def test_unpaired_sets_and_bad_input_are_one_line_errors(shared_data, tmp_path):
    _clips(shared_data, tmp_path / "a", n=3)
    _clips(shared_data, tmp_path / "b", n=2)
    res = invoke("compare", tmp_path / "a", tmp_path / "b")
    assert res.exit_code == 2 and "not the same jobs" in res.output and "only in A" in res.output, res.output
    res = invoke("compare", tmp_path / "a", tmp_path / "a", "--gate", "nonsense")
    assert res.exit_code == 2 and "--gate 'nonsense'" in res.output
    res = invoke("compare", tmp_path / "a", tmp_path / "a", "--metrics", "motion")
    assert res.exit_code == 2 and "--references" in res.output
    # the report is never one of the files compare reads, --overwrite or not: a video's sidecar (its cost)
    sidecar = sorted((tmp_path / "a").glob("*.mp4"))[0].with_suffix(".json")
    sidecar.write_text('{"compute": {"nfe": 3}}')
    res = invoke("compare", tmp_path / "a", tmp_path / "a", "--json", sidecar, "--overwrite", "-q")
    assert res.exit_code == 2 and "same file as the input" in res.output, res.output
    assert sidecar.read_text() == '{"compute": {"nfe": 3}}'

    assert "Traceback" not in res.output


def test_manifests_pair_by_job_and_report_the_compute_each_side_paid(tmp_path, shared_data):
    """Two batch manifests of the same jobs written in another order pair by (prompt, seed); the cost line is
    read from the sidecars; a job that is not done is an error naming it."""
    clips = _clips(shared_data, tmp_path / "clips", n=2)
    for side, order, nfe in (("a", [0, 1], 71), ("b", [1, 0], 50)):
        folder = tmp_path / side
        folder.mkdir()
        rows = [{"batch": {"command": "refine"}}]
        for i in order:
            video = folder / f"{i}.mp4"
            video.write_bytes(clips[i].read_bytes())
            video.with_suffix(".json").write_text(json.dumps({"compute": {"nfe": nfe, "dit_forward": 2 * nfe},
                                                              "timings_s": {"load": 9.0, "denoise": nfe / 10}}))
            rows.append({"job": i, "output": str(video), "status": "done", "prompt": f"p{i}", "seed": 0})
        (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = invoke("compare", tmp_path / "a", tmp_path / "b", "--resamples", 500, "--json", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["pairs"] == 2
    assert [Path(i["a"]).name for i in report["items"]] == [Path(i["b"]).name for i in report["items"]]
    assert report["cost"]["a_over_b"]["nfe"] == pytest.approx(71 / 50)
    assert report["cost"]["a"]["seconds"] == pytest.approx(7.1)  # the shared model load is not a video's cost
    assert all(m["verdict"] == "no_difference" for m in report["metrics"].values())  # the same videos
    lines = (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"done"', '"failed"')
    (tmp_path / "b" / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    res = invoke("compare", tmp_path / "a", tmp_path / "b")
    assert res.exit_code == 2 and "line 2" in res.output and "failed" in res.output, res.output


@pytest.mark.slow
def test_compare_of_two_refine_batches_pairs_by_job_and_draws_the_step_records(tiny_t2v, tmp_path):
    """Two real batches of the same jobs (P&P against plain Euler on the tiny model): paired by job, the
    NFE ratio read from the sidecars is the plans' (3 steps + 2 refinements over 3), and the HTML page draws
    P&P's per-step certain fraction from A's sidecars (B has none)."""
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red fox\na blue boat\n")
    small = ["--model", tiny_t2v, "--num-frames", "5", "--height", "32", "--width", "32", "--steps", "3",
             "--device", "cpu", "-q"]
    for out, plan in (("pnp", "0-1:1"), ("plain", "none")):
        res = invoke("refine", "--batch", jobs, "-o", tmp_path / out, "--plan", plan, *small)
        assert res.exit_code == 0, res.output
    res = invoke("compare", tmp_path / "pnp", tmp_path / "plain", "--resamples", 200, "--json",
                 tmp_path / "c.json", "--html", tmp_path / "c.html", "--html-videos", 1, "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["pairs"] == 2 and report["groups"] == 2
    assert report["cost"]["a_over_b"]["nfe"] == pytest.approx(5 / 3)
    page = (tmp_path / "c.html").read_text()
    assert "Step records" in page and "P&amp;P certain fraction" in page
    records = page.split("Step records", 1)[1].split("<h2>", 1)[0]
    figures = records.count("<figure>")
    assert figures == 1 and records.count("<polyline") == 1  # A's line; plain Euler recorded no gate


# ---------------------------------------------------------------- set metrics (FVD, FID)


def test_frechet_to_a_fixed_reference_equals_the_two_set_distance():
    """The bootstrap's fast route (reference square root once, Gram matrix when N < D) against
    frechet_distance_features, with fewer and with more samples than dimensions, duplicates included."""
    from vmt.metrics.frechet import frechet_distance_features, frechet_to_reference, reference_fit

    rng = np.random.default_rng(4)
    ref = rng.normal(0, 1, (40, 12)) @ rng.normal(0, 1, (12, 12))
    ref_fit = reference_fit(ref)
    for n in (5, 30):
        x = rng.normal(0.3, 1.5, (n, 12))
        x = np.concatenate([x, x[:2]])  # a resample repeats rows
        # rel 1e-7: square roots of the rounding-level eigenvalues of a singular covariance (N < D)
        assert frechet_to_reference(x, ref_fit) == pytest.approx(frechet_distance_features(x, ref), rel=1e-7)


def test_set_metric_comparison_on_features_with_a_known_shift():
    """A drawn from the reference distribution, B the same draws shifted by 3 on every axis: B's distance
    is larger by about |shift|^2 = 36, A better; A against itself: every resample's difference is 0."""
    from vmt.metrics.paired import compare_set_metric

    rng = np.random.default_rng(5)
    reference = rng.normal(0, 1, (200, 4))
    a = [rng.normal(0, 1, (3, 4)) for _ in range(30)]  # 30 jobs of 3 feature rows (frames) each
    b = [x + 3.0 for x in a]
    groups = np.arange(30) // 2  # 15 prompts, 2 seeds each
    c = compare_set_metric(a, b, reference, groups, resamples=200, seed=0)
    assert c.verdict == "a_better" and c.ci[0] > 20 and c.groups == 15 and c.pairs == 30
    assert c.difference == pytest.approx(c.b_value - c.a_value) and c.difference == pytest.approx(36, rel=0.2)
    same = compare_set_metric(a, a, reference, groups, resamples=200, seed=0)
    assert same.verdict == "no_difference" and same.ci == (0.0, 0.0) and same.difference == 0.0
    with pytest.raises(ValueError, match="2 groups"):
        compare_set_metric(a, b, reference, [0] * 30)


def _save_projection_detectors(folder: Path) -> tuple[Path, Path]:
    """Tiny deterministic TorchScript feature extractors: 4x4 average-pooled colours (clip: pooled over the
    16 frames too) through a fixed random projection; I3D-like to 3 dims, Inception-like to 8 per frame."""
    gen = torch.Generator().manual_seed(0)

    class PoolI3D(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(48, 3, generator=gen))

        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = True) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool3d(x, [1, 4, 4]).flatten(1) @ self.w

    class PoolInception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(48, 8, generator=gen))

        def forward(self, x: torch.Tensor, return_features: bool = False,
                    no_output_bias: bool = False) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, [4, 4]).flatten(1) @ self.w

    i3d, inception = folder / "i3d.pt", folder / "inception.pt"
    torch.jit.save(torch.jit.script(PoolI3D()), str(i3d))
    torch.jit.save(torch.jit.script(PoolInception()), str(inception))
    return i3d, inception


@pytest.mark.slow
def test_fvd_and_fid_find_re_encoded_clips_closer_to_the_real_ones_than_degraded_copies(shared_data, tmp_path):
    """References: real clips. A: the same clips decoded and encoded again (near-identical). B: blurred and
    colour-shifted copies. FVD and FID both say A is better, with intervals above 0; A against itself finds
    no difference; one FVD value matches an independent float64 computation with scipy.linalg.sqrtm."""
    from scipy import linalg

    from vmt.metrics.detectors import i3d_clips

    videos = sorted((shared_data / "voxceleb").glob("*.mp4"))[:4]
    if len(videos) < 4:
        pytest.skip("needs 4 VoxCeleb clips in shared data")
    for side in ("refs", "a", "b"):
        (tmp_path / side).mkdir()
    refs = []
    for v in videos:  # five 16-frame clips of each video: 20 clips, 20 groups (4 are too few to resample)
        frames, fps = read_video(v, max_frames=80, size=(64, 64))
        for s in range(5):
            refs.append(write_video(tmp_path / "refs" / f"{v.stem}_{s}.mp4", frames[16 * s:16 * (s + 1)], fps))
    for p in refs:
        frames, fps = read_video(p)
        write_video(tmp_path / "a" / p.name, frames, fps)
        x = frames.astype(np.float32)
        blurred = sum(np.roll(np.roll(x, dy, 1), dx, 2) for dy in range(-3, 4) for dx in range(-3, 4)) / 49
        write_video(tmp_path / "b" / p.name, np.clip(blurred + np.array([70.0, 50.0, 30.0]), 0, 255)
                    .astype(np.uint8), fps)
    i3d, inception = _save_projection_detectors(tmp_path)
    res = invoke("compare", tmp_path / "a", tmp_path / "b", "--references", tmp_path / "refs", "--metrics",
                 "temporal", "--i3d", i3d, "--inception", inception, "--resamples", 500, "--device", "cpu",
                 "--json", tmp_path / "r.json", "--html", tmp_path / "r.html", "--gate", "fvd")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    for name in ("fvd", "fid"):
        m = report["metrics"][name]
        assert m["kind"] == "set" and m["resamples"] == 200 and m["better"] == "lower", m
        assert m["verdict"] == "a_better" and m["ci"][0] > 0 and m["b_value"] > 5 * m["a_value"], (name, str(m))
        assert m["difference"] == pytest.approx(m["b_value"] - m["a_value"])
    assert report["pairs"] == 20 and report["groups"] == 20
    assert report["metrics"]["fid"]["reference_samples"] == 20 * 16  # every frame of the 20 references
    assert report["metrics"]["fvd"]["reference_samples"] == 20  # one 16-frame clip per reference
    assert "fvd: a set metric" in (tmp_path / "r.html").read_text()

    # The FVD of A, independently: features by the detector file itself, sqrtm of the covariance product.
    module = torch.jit.load(str(i3d))

    def feats(folder: Path) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([module(i3d_clips(read_video(folder / p.name, max_frames=16)[0])).double()
                                   .numpy() for p in refs])

    fa, fr = feats(tmp_path / "a"), feats(tmp_path / "refs")
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fr, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    diff = fa.mean(0) - fr.mean(0)
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert report["metrics"]["fvd"]["a_value"] == pytest.approx(expected, rel=1e-5, abs=1e-9)

    (tmp_path / "a4").mkdir()  # A against itself on 4 of the clips (their 4 references), to keep it quick
    for p in refs[::5]:
        (tmp_path / "a4" / p.name).write_bytes((tmp_path / "a" / p.name).read_bytes())
    res = invoke("compare", tmp_path / "a4", tmp_path / "a4", "--references", tmp_path / "refs", "--metrics",
                 "temporal", "--i3d", i3d, "--inception", inception, "--set-resamples", 50, "--device", "cpu",
                 "--json", "-")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for name in ("fvd", "fid"):
        assert doc["metrics"][name]["verdict"] == "no_difference" and doc["metrics"][name]["ci"] == [0.0, 0.0]
        assert doc["metrics"][name]["resamples"] == 50


def test_set_metrics_need_references_and_their_detector(shared_data, tmp_path):
    _clips(shared_data, tmp_path / "a", n=2)
    i3d, _ = _save_projection_detectors(tmp_path)
    res = invoke("compare", tmp_path / "a", tmp_path / "a", "--i3d", i3d)
    assert res.exit_code == 2 and "--references" in res.output and "Traceback" not in res.output, res.output
    res = invoke("compare", tmp_path / "a", tmp_path / "a", "--references", tmp_path / "a", "--gate", "fid")
    assert res.exit_code == 2 and "--inception" in res.output, res.output
    res = invoke("compare", tmp_path / "a", tmp_path / "a", "--references", tmp_path / "a", "--i3d",
                 tmp_path / "missing_i3d.pt")
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "missing_i3d.pt" in text and "--i3d PATH" in text, res.output


def test_the_physics_benchmark_pairs_samples_by_start_noise():
    """benchmarks/refine_physics.py's paired comparison on rendered ground truth: A = 40 real ball videos
    (all trackable), B = the same videos with the first 20 replaced by noise (not trackable). Trackable:
    difference 0.5, a_better, win rate 0.75 (20 wins, 20 ties); the residual compares only the 20 pairs
    trackable on both sides, which are identical: an interval of exactly 0."""
    import importlib.util

    from vmt.testing.toy_video import BallWorld, ball_score, sample_balls, to_uint8_frames

    spec = importlib.util.spec_from_file_location("refine_physics", ROOT / "benchmarks" / "refine_physics.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    world = BallWorld()
    videos, _, _ = sample_balls(world, 40, torch.Generator().manual_seed(0))
    noise = torch.rand(videos.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a = [ball_score(to_uint8_frames(v), threshold=128, radius=world.radius, min_found=0.75) for v in videos]
    b = [ball_score(to_uint8_frames(v), threshold=128, radius=world.radius, min_found=0.75)
         for v in torch.cat([noise[:20], videos[20:]])]
    assert all(s.trackable for s in a) and not any(s.trackable for s in b[:20])
    (row,) = bench.paired_comparisons({"P&P x": a, "euler y": b}, resamples=2000, seed=0)
    assert (row["a"], row["b"], row["both_trackable"], row["only_a_trackable"]) == ("P&P x", "euler y", 20, 20)
    t = row["metrics"]["trackable"]
    assert t["verdict"] == "a_better" and t["mean_difference"] == 0.5 and t["win_rate"] == 0.75 and t["ci"][0] > 0.2
    r = row["metrics"]["residual_px"]
    assert r["pairs"] == 20 and r["ci"] == [0.0, 0.0] and r["verdict"] == "no_difference"
