"""Throughput of each `vmt eval` metric on an 81-frame 480x832 video pair, on this CPU.

The pair: the shared reference video (a runner, ../shared/data/reference/runner_640x368_81f.mp4) resized and
centre-cropped to 480x832, against its mirror image (reversed horizontal motion); without the shared folder a
synthetic textured pair with known translation is used instead. Fast paths are timed next to their baselines
in the same process (Frechet: eigendecomposition vs scipy sqrtm; warping error: DIS "medium" vs "fast").
Median of --repeats runs. Prints a table and writes benchmarks/results/metrics.json.

    python benchmarks/metrics.py [--repeats 3] [--frames 81]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=81)
    args = ap.parse_args()
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
    add("physics residual (one video)", s, t, "frames/s", round(pr.rms_px, 4), "rms px")
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
