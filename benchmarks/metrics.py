"""Does each `vmt eval` metric measure what it claims (--separation, the default), and how fast is it
(--throughput)?

Separation (real clips of ../shared/data, 30 frames each): motion fidelity of same-motion pairs (a clip against
itself; two overlapping 80% crops of it at other places) against unrelated pairs (the other shared clips, the
same clip 40 frames later, whole or cropped), with the AUC, plus the flip (mirror) and time-reversal
distributions; for the new one-to-one score and the published best-match form. Physics: falling balls of
vmt.testing.toy_video with known g, pure noise, an empty scene and the real runner clip. Writes
benchmarks/results/metrics-separation.json.

Throughput of each `vmt eval` metric on an 81-frame 480x832 video pair, on this CPU.

The pair: the shared reference video (a runner, ../shared/data/reference/runner_640x368_81f.mp4) resized and
centre-cropped to 480x832, against its mirror image (reversed horizontal motion); without the shared folder a
synthetic textured pair with known translation is used instead. Fast paths are timed next to their baselines
in the same process (Frechet: eigendecomposition vs scipy sqrtm; warping error: DIS "medium" vs "fast").
Median of --repeats runs. Prints a table and writes benchmarks/results/metrics.json.

    python benchmarks/metrics.py [--throughput] [--repeats 3] [--frames 81]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
REFERENCE = ROOT.parent / "shared" / "data" / "reference" / "runner_640x368_81f.mp4"
H, W = 480, 832


def median_time(fn, repeats: int, warmup: int = 0) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def synthetic_pair(t: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    rng = np.random.default_rng(0)
    lum = cv2.GaussianBlur(rng.random((H + 3 * t + 8, W + 3 * t + 8)).astype(np.float32), (0, 0), 2.0)
    lum = (lum - lum.min()) / (lum.max() - lum.min())
    big = (np.stack([lum, 0.8 * lum + 0.1, 1 - lum], -1) * 230 + 10).astype(np.uint8)
    ref = np.stack([big[k : k + H, 2 * k : 2 * k + W] for k in range(t)])
    return ref, ref[:, :, ::-1].copy()


def load_pair(t: int) -> tuple[np.ndarray, np.ndarray, str]:
    if REFERENCE.is_file():
        from vmt.io.video import read_video

        ref, _ = read_video(REFERENCE, size=(H, W), max_frames=t)
        return ref, np.ascontiguousarray(ref[:, :, ::-1]), f"{REFERENCE.name} vs its mirror image"
    ref, gen = synthetic_pair(t)
    return ref, gen, "synthetic translating texture vs its mirror image"


def ball_video(t: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    frames = np.full((t, H, W, 3), 30, np.uint8)
    for k in range(t):
        x, y = 100 + 6 * k, 20 + 1 * k + 0.04 * k * k  # stays inside the 480x832 frame
        frames[k][((xx - x) ** 2 + (yy - y) ** 2) <= 144] = 230
    return frames


def auc(pos: list[float], neg: list[float]) -> float:
    """P(same-motion score > unrelated score), ties counted half (Mann-Whitney)."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n) + 0.5 * (p == n)).mean())


def separation() -> dict:
    import itertools

    import torch

    from vmt.io.video import read_video
    from vmt.metrics.motion import best_match_score, matched_score, moving_steps, track_grid, trajectory_cosines
    from vmt.metrics.physics import physics_residual
    from vmt.testing.toy_video import BallWorld, render_balls, to_uint8_frames

    data = ROOT.parent / "shared" / "data"
    t = 30
    videos = {f"vox{i}": read_video(q)[0] for i, q in enumerate(sorted((data / "voxceleb").glob("*.mp4")))}
    videos["runner"] = read_video(REFERENCE)[0]
    clips = {}
    for k, f in videos.items():
        a, (h, w) = f[:t], f.shape[1:3]
        ch, cw = int(0.8 * h), int(0.8 * w)
        clips.update({k: a, f"{k}.flip": a[:, :, ::-1], f"{k}.rev": a[::-1], f"{k}.cropA": a[:, :ch, :cw],
                      f"{k}.cropB": a[:, h - ch:, w - cw:], f"{k}.later": f[40:40 + t],
                      f"{k}.laterB": f[40:40 + t, h - ch:, w - cw:]})
    steps = {k: moving_steps(track_grid(np.ascontiguousarray(v)), float(np.hypot(*v.shape[1:3])), 1e-3)
             for k, v in clips.items()}
    base = list(videos)
    groups = {"self": [(k, k) for k in base], "crop_other_place": [(f"{k}.cropA", f"{k}.cropB") for k in base],
              "flip": [(k, f"{k}.flip") for k in base], "reverse": [(k, f"{k}.rev") for k in base],
              "other_clip": list(itertools.combinations(base, 2)), "later": [(k, f"{k}.later") for k in base],
              "later_crop": [(f"{k}.cropA", f"{k}.laterB") for k in base]}
    scores: dict = {"matched": {}, "best_match": {}}
    for g, pairs in groups.items():
        for name in scores:
            scores[name][g] = {}
        for a, b in pairs:
            (sa, wa), (sb, wb) = steps[a], steps[b]
            c = trajectory_cosines(sa, sb)
            scores["matched"][g][f"{a}~{b}"] = round(matched_score(c, wa, wb), 4)
            scores["best_match"][g][f"{a}~{b}"] = round(best_match_score(c, wb), 4)
    out = {"frames": t, "groups": {g: [f"{a}~{b}" for a, b in p] for g, p in groups.items()}, "scores": scores}
    print("motion fidelity on shared real clips (30 frames); same = self + crop_other_place; unrelated = "
          "other_clip + later + later_crop")
    for name, sc in scores.items():
        same = list(sc["self"].values()) + list(sc["crop_other_place"].values())
        un = list(sc["other_clip"].values()) + list(sc["later"].values()) + list(sc["later_crop"].values())
        out[f"auc_{name}"] = auc(same, un)
        print(f"  {name:<10} AUC {out[f'auc_{name}']:.3f}")
        for g, v in sc.items():
            x = np.asarray(list(v.values()))
            print(f"    {g:<17} n={len(x):2d} min {x.min():6.2f} median {np.median(x):6.2f} max {x.max():6.2f}")
    # physics: toy-world balls with known g, noise, an empty scene, the real runner
    world = BallWorld(frames=16, size=96, gravity=0.2)
    tt = np.arange(16.0)
    phys = {"balls": []}
    for vx, vy in ((2.0, -2.0), (-2.5, 0.0), (3.0, -1.0)):
        c = np.stack([48 - 7.5 * vx + vx * tt, 20 + vy * tt + 0.5 * world.gravity * tt**2], 1)
        r = physics_residual(to_uint8_frames(render_balls(world, torch.tensor(c[None], dtype=torch.float32))[0]))
        phys["balls"].append({"g_true": world.gravity, "g_fit": round(r.fit.acceleration[1], 4),
                              "rms_px": round(r.fit.rms_px, 4), "rms_diag": round(r.fit.rms, 6)})
    rng = np.random.default_rng(0)
    for name, v in (("noise", rng.integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)),
                    ("empty", np.full((16, 96, 96, 3), 40, np.uint8)), ("runner", videos["runner"])):
        r = physics_residual(v)
        phys[name] = {"trajectory": r.fit is not None, "found": r.found, "frames": r.frames,
                      "rms_diag": None if r.fit is None else round(r.fit.rms, 6), "reason": r.reason}
    # a ball falling over a still frame of a real clip (real texture in the background), then the real clips
    yy, xx = np.mgrid[0:256, 0:256]
    still = np.repeat(videos["vox0"][:1], 16, 0).copy()
    for k in range(16):
        still[k][(xx - 40 - 9.0 * k) ** 2 + (yy - 30 - 2.0 * k - 0.15 * k * k) ** 2 <= 36] = (255, 40, 40)
    r = physics_residual(still)
    phys["ball_over_real_frame"] = {"g_true": 0.3, "g_fit": round(r.fit.acceleration[1], 4),
                                    "rms_px": round(r.fit.rms_px, 4), "rms_diag": round(r.fit.rms, 6)}
    for k in [k for k in videos if k.startswith("vox")]:
        r = physics_residual(videos[k])
        phys[k] = {"trajectory": r.fit is not None, "found": r.found, "frames": r.frames}
    out["physics"] = phys
    print("physics:", json.dumps(phys))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "metrics-separation.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'metrics-separation.json'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--throughput", action="store_true", help="Time the metrics instead (slow).")
    args = ap.parse_args()
    if not args.throughput:
        separation()
        return
    import cv2
    import torch

    torch.set_num_threads(1)
    from vmt.metrics.detectors import i3d_clips
    from vmt.metrics.energy import energy_distance
    from vmt.metrics.frechet import frechet_distance, gaussian_stats
    from vmt.metrics.motion import direction_check, motion_fidelity, track_grid
    from vmt.metrics.physics import physics_residual
    from vmt.metrics.temporal import psnr, ssim, temporal_consistency

    ref, gen, source = load_pair(args.frames)
    t = len(ref)
    r = args.repeats
    rows = []

    def add(name, seconds, unit_count, unit, value=None, note=""):
        rows.append({"metric": name, "seconds": round(seconds, 4), "throughput": round(unit_count / seconds, 2),
                     "unit": unit, "value": value, "note": note})
        print(f"  {name:<34} {seconds:9.3f} s", flush=True)

    print(f"input: {source}, {t} frames {H}x{W}; load average {os.getloadavg()[0]:.1f}", flush=True)
    s, mf = median_time(lambda: motion_fidelity(ref, gen), r)
    add("motion fidelity (pair)", s, 2 * t, "frames/s", round(mf.score, 4), f"{mf.tracks_ref}/{mf.tracks_gen} tracks")
    s, tr = median_time(lambda: track_grid(ref), r)
    add("  LK tracking (one video)", s, t, "frames/s", None, f"{tr.xy.shape[0]} grid points")
    s, dc = median_time(lambda: direction_check(ref, gen), r)
    add("direction check (pair)", s, 2 * t, "frames/s", None if dc.cosine is None else round(dc.cosine, 4),
        dc.verdict)
    s_med, tc = median_time(lambda: temporal_consistency(ref, flow_preset="medium"), max(1, r - 1))
    add("temporal, DIS medium (one video)", s_med, t, "frames/s", round(tc.warp_error, 6), "warp error")
    s_fast, tcf = median_time(lambda: temporal_consistency(ref, flow_preset="fast"), max(1, r - 1))
    add("temporal, DIS fast (one video)", s_fast, t, "frames/s", round(tcf.warp_error, 6),
        f"warp error; {s_med / s_fast:.2f}x faster than medium")
    s, v = median_time(lambda: [ssim(ref[k], ref[k + 1]) for k in range(t - 1)], r)
    add("SSIM consecutive (one video)", s, t - 1, "pairs/s", round(float(np.mean(v)), 4))
    s, v = median_time(lambda: [psnr(ref[k], ref[k + 1]) for k in range(t - 1)], r)
    add("PSNR consecutive (one video)", s, t - 1, "pairs/s", round(float(np.mean(v)), 3))
    ball = ball_video(t)
    s, pr = median_time(lambda: physics_residual(ball), r)
    add("physics residual (one video)", s, t, "frames/s", round(pr.fit.rms_px, 4), "rms px")
    s, x = median_time(lambda: i3d_clips(ref, clips="all"), r)
    add("FVD preprocessing (I3D clips)", s, t, "frames/s", None, f"{len(x)} clips of 16x224x224")

    rng = np.random.default_rng(0)
    fa, fb = rng.standard_normal((256, 2048)), rng.standard_normal((256, 2048)) + 0.01
    sa, sb = gaussian_stats(fa), gaussian_stats(fb)
    s_eig, d_eig = median_time(lambda: frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma), r)
    add("Frechet 2048-d, eigh (default)", s_eig, 1, "calls/s", round(d_eig, 6), "singular: 256 samples")
    s_sp, d_sp = median_time(lambda: frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma, method="scipy"), 1)
    add("Frechet 2048-d, scipy sqrtm", s_sp, 1, "calls/s", round(d_sp, 6),
        f"baseline; eigh is {s_sp / s_eig:.2f}x faster")
    xa, xb = rng.standard_normal((1000, 60)), rng.standard_normal((1000, 60))
    s, ed = median_time(lambda: energy_distance(xa, xb), r)
    add("energy distance 1000x1000, 60-d", s, 1, "calls/s", round(ed, 6), "V-statistic")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vmt eval metrics, {t} frames {H}x{W} ({source})", title_justify="left")
    for c in ("metric", "median s", "throughput", "value", "note"):
        table.add_column(c, justify="right" if c in ("median s", "throughput") else "left")
    for row in rows:
        table.add_row(row["metric"], f"{row['seconds']:.3f}", f"{row['throughput']:.1f} {row['unit']}",
                      "" if row["value"] is None else str(row["value"]), row["note"])
    Console(width=160).print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "metrics.json"
    out.write_text(json.dumps({
        "benchmark": "metrics", "input": source, "frames": t, "height": H, "width": W, "repeats": r,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2), "opencv_threads": cv2.getNumThreads(),
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
