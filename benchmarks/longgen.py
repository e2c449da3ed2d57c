"""Benchmark of `vmt longgen`: EncGAN3 with and without recall training on moving digits (CPU preset).

Trains both variants for the same small budget in one process, then reports per variant
- reconstruction L1 on held-out clips (frames in [-1, 1]),
- the seam score of long samples (change at clip boundaries / change inside clips; 1.0 = seamless),
and for the recall model
- drift over 1,000 frames (mean and std of pixel values, and motion energy, last 100 vs first 100 frames),
- generation throughput (frames/s, median of repeats) at 100 and 1,000 frames,
- peak host memory (fresh subprocess each, ru_maxrss) streaming 100 vs 1,000 frames to an mp4, next to a
  naive baseline that keeps every frame before writing.

    OMP_NUM_THREADS=1 python benchmarks/longgen.py --steps 150
Writes benchmarks/results/longgen.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def chain_seams(model, chains: int, frames: int = 100, **chain) -> dict:
    """Seam score (mean and median) of `chains` sampled chains of `frames` frames, and its two parts: the mean
    change across clip boundaries and inside clips (a frozen chain scores low on both). `chain`: recall_chain's
    keywords."""
    import numpy as np

    from vmt.longgen.sampling import stream_frames
    from vmt.metrics.seams import chain_boundaries, seam_profile, seam_score

    bounds = chain_boundaries(frames, model.cfg.frames, model.cfg.frames - 1)
    seams, profiles = [], []
    for seed in range(chains):
        video = np.concatenate(list(stream_frames(model, frames, seed=seed, **chain)))
        video = video.astype(np.float64) / 127.5 - 1
        seams.append(seam_score(video, bounds))
        profiles.append(seam_profile(video, bounds))
    return {"seam_score_mean": float(np.mean(seams)), "seam_score_median": float(np.median(seams)),
            "boundary_change": float(np.mean([p["boundary_change"] for p in profiles])),
            "inside_change": float(np.mean([p["inside_change"] for p in profiles]))}


def _memprobe(run_dir: str, frames: int, mode: str) -> None:
    """Child process: stream (or collect, then write) `frames` frames; print peak RSS in MiB as JSON.

    Also the peak of host allocations traced by tracemalloc while sampling (numpy frame buffers; torch's own
    allocator is not traced), which isolates what the sampler holds from the fixed cost of torch and the model.
    """
    import resource
    import tracemalloc

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from vmt.io.video import VideoWriter, write_video
    from vmt.longgen.checkpoint import load_model
    from vmt.longgen.sampling import stream_frames

    model, _ = load_model(run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.mp4"
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        tracemalloc.start()
        if mode == "stream":
            with VideoWriter(out, 10, preset="ultrafast") as w:
                for chunk in stream_frames(model, frames, seed=0):
                    w.write(chunk)
        else:  # the baseline: hold every frame (as float, as a naive sampler would), then write
            chunks = [c.astype(np.float32) for c in stream_frames(model, frames, seed=0)]
            allf = np.concatenate(chunks).round().astype(np.uint8)
            write_video(out, allf, 10)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak, 1), "before_sampling_rss_mib": round(base, 1),
                      "sampler_traced_peak_kib": round(traced / 1024, 1)}))


def _probe(run_dir: Path, frames: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--memprobe", str(run_dir), str(frames), mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def motion_following(model, clips) -> dict:
    """Warping models: how well the predicted shifts follow the digits, against the true centre of ink.

    Returns the correlation of predicted and true displacement from frame 0 (x and y of frames 1..T-1 pooled)
    and the mean centre-of-ink error (pixels) of the reconstructions per frame."""
    import numpy as np
    import torch

    def centre(v):  # (B, 3, T, H, W) -> (B, 2, T) brightness-weighted centre in pixels (x, y)
        w = (v.max(1).values + 1).clamp(min=0)
        h, wd = w.shape[-2:]
        ys, xs = torch.arange(h, dtype=w.dtype).view(h, 1), torch.arange(wd, dtype=w.dtype).view(1, wd)
        total = w.sum((2, 3)) + 1e-6
        return torch.stack([(w * xs).sum((2, 3)) / total, (w * ys).sum((2, 3)) / total], 1)

    model.eval()
    with torch.no_grad():
        rec = model.reconstruct(clips)
        out = {"centre_error_px_per_frame": (centre(rec) - centre(clips)).norm(dim=1).mean(0).tolist()}
        if model.cfg.warp:
            mu_v, _ = model.encode_motion(clips)
            moved = -model.generator.steps(mu_v)[:, :, 1:].cumsum(2)
            true = centre(clips)[:, :, 1:] - centre(clips)[:, :, :1]
            out["shift_correlation"] = float(np.corrcoef(moved.flatten().numpy(), true.flatten().numpy())[0, 1])
    return out


def chain_survival(model, chains: int, frames: int = 1000) -> dict:
    """Do sampled chains keep a digit on screen? For `chains` seeds of `frames` frames, per sampler variant:
    the mean fraction of digit-covered pixels (brightest channel above -0.5) in the first and last 100 frames,
    and how many chains still show a digit (over 2% of pixels) in their last frame. Variants: the default
    sampler (learned motion prior, whole-pixel warps, black fill, bounce), the same without the bounce, and the
    previous sampler (Gaussian motion given the content, sub-pixel mirrored warps)."""
    import numpy as np

    from vmt.longgen.generator import TRAIN_WARP, WarpMode
    from vmt.longgen.sampling import stream_frames

    variants = {"default": {}, "no_bounce": {"warp": WarpMode(whole_pixel=True, fill=-1.0)},
                "gaussian_motion_train_warp": {"warp": TRAIN_WARP, "gaussian": True}}
    out = {}
    fitted = model.motion_prior.fitted.clone()
    for name, opts in variants.items():
        opts = dict(opts)
        if opts.pop("gaussian", False):
            model.motion_prior.fitted.zero_()
        fg_first, fg_last, alive, ends = [], [], 0, []
        for seed in range(chains):
            video = np.concatenate(list(stream_frames(model, frames, seed=seed, **opts)))
            cover = (video.max(-1) > 63).mean((1, 2))  # uint8 63 ~ -0.5 in [-1, 1]
            fg_first.append(cover[:100].mean())
            fg_last.append(cover[-100:].mean())
            alive += int(cover[-1] > 0.02)
            ends.append(video[[0, -1]])
        model.motion_prior.fitted.copy_(fitted)
        dist = np.array(digit_distance(np.concatenate(ends))).reshape(chains, 2)
        out[name] = {"foreground_first100": float(np.mean(fg_first)), "foreground_last100": float(np.mean(fg_last)),
                     "chains_with_a_digit_at_the_end": alive, "chains": chains,
                     "digit_distance_first_frame": float(np.nanmedian(dist[:, 0])),
                     "digit_distance_last_frame": float(np.nanmedian(dist[:, 1]))}
    return out


def digit_distance(frames) -> list[float]:
    """How far each frame (N, H, W, 3) uint8 is from being one digit: the Euclidean distance of its ink (the
    brightest channel above 63, cropped, padded square, resized to 8x8, scaled to max 1) to the nearest of
    scikit-learn's 1,797 8x8 digits (the glyphs the data is drawn from; also scaled to max 1). Real frames
    score ~1.2, a round blob 3.3-4.4. Frames without ink: nan."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    glyphs = load_digits().data
    glyphs = glyphs / glyphs.max(1, keepdims=True)
    out = []
    for f in frames:
        grey = f.max(-1).astype(np.float64)
        ys, xs = np.nonzero(grey > 63)
        if len(ys) == 0:
            out.append(float("nan"))
            continue
        crop = grey[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        side = max(crop.shape)
        square = np.zeros((side, side))
        oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
        small = np.asarray(Image.fromarray(square.astype(np.float32)).resize((8, 8), Image.BILINEAR)).ravel()
        out.append(float(np.sqrt(((glyphs - small / max(small.max(), 1e-6)) ** 2).sum(1)).min()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150, help="training steps per variant")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: TrainSettings')")
    ap.add_argument("--kl-weight", type=float, default=None, help="KL weight (default: TrainSettings')")
    ap.add_argument("--chains", type=int, default=8, help="long samples per seam estimate")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--reuse", type=Path, default=None, help="folder with runs recall/ and no_recall/ to reuse")
    ap.add_argument("--recall-run", type=Path, default=None,
                    help="run folder of `vmt longgen train` to use as the recall variant (e.g. the default model's)")
    ap.add_argument("--no-recall-run", type=Path, default=None,
                    help="run folder of `vmt longgen train --no-recall` with the same settings and steps")
    ap.add_argument("--memprobe", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memprobe:
        _memprobe(args.memprobe[0], int(args.memprobe[1]), args.memprobe[2])
        return

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from vmt.longgen.checkpoint import load_model, save_run
    from vmt.longgen.config import preset
    from vmt.longgen.data import ClipSource, moving_digits, synthetic_source
    from vmt.longgen.sampling import stream_frames
    from vmt.longgen.train import Trainer, TrainSettings, fit_sampling_prior, reconstruction_l1, train_steps
    from vmt.metrics.seams import chain_boundaries, seam_profile, seam_score

    cfg = preset("cpu")
    work = args.reuse or Path(tempfile.mkdtemp(prefix="longgen-bench-"))
    source = synthetic_source(cfg.size, num_videos=256, num_frames=64, seed=0)
    held = ClipSource(list(moving_digits(32, cfg.frames, cfg.size, seed=12345)), [f"h{i}" for i in range(32)])
    eval_clips = held.sample(32, cfg.frames, np.random.default_rng(0))

    # Baselines of the L1: copying frame 0 to every frame, and an all-black clip (most pixels are background).
    results: dict = {"preset": cfg.to_dict(), "steps": args.steps, "batch_size": args.batch_size,
                     "copy_first_frame_l1": float((eval_clips - eval_clips[:, :, :1]).abs().mean()),
                     "all_black_l1": float((eval_clips + 1).abs().mean()), "variants": {}}
    given = {"recall": args.recall_run, "no_recall": args.no_recall_run}
    runs: dict[str, Path] = {}
    for name, recall in (("recall", True), ("no_recall", False)):
        run = given[name] or work / name
        runs[name] = run
        if (args.reuse or given[name]) and (run / "config.json").is_file():
            meta = json.loads((run / "config.json").read_text())
            train_s = meta.get("train_seconds")
            if train_s is None and (run / "train.json").is_file():  # a CLI run: its sidecar's timings
                train_s = json.loads((run / "train.json").read_text()).get("timings_s", {}).get("train")
        else:
            torch.manual_seed(0)
            opts = {k: v for k, v in (("lr", args.lr), ("kl_weight", args.kl_weight)) if v is not None}
            trainer = Trainer(cfg, TrainSettings(batch_size=args.batch_size, recall=recall, **opts))
            t0 = time.perf_counter()
            train_steps(trainer, source, args.steps, seed=0,
                        on_step=lambda s, lg: print(f"  {name} step {s} rec {lg['rec']:.3f}", flush=True)
                        if s % 25 == 0 else None)
            train_s = time.perf_counter() - t0
            fit_sampling_prior(trainer.model, source)  # as `vmt longgen train` does at each checkpoint
            save_run(run, trainer, seed=0, data="synthetic:digits", extra={"train_seconds": train_s})
        model, _ = load_model(run)
        rec = reconstruction_l1(model, eval_clips)
        meta = json.loads((run / "config.json").read_text())
        results["variants"][name] = {"train_seconds": train_s, "steps": meta["step"], "train": meta["train"],
                                     "reconstruction_l1": rec, **motion_following(model, eval_clips),
                                     **chain_seams(model, args.chains)}
    results["steps"] = {k: r["steps"] for k, r in results["variants"].items()}
    # Seam score of real data cut at the same positions: what a perfect model would get.
    real_bounds = chain_boundaries(64, cfg.frames, cfg.frames - 1)
    real_seams = float(np.mean([seam_score(v.astype(np.float64) / 127.5 - 1, real_bounds)
                                for v in source.videos[:32]]))
    results["real_data_seam_score"] = real_seams
    real_prof = [seam_profile(v.astype(np.float64) / 127.5 - 1, real_bounds) for v in source.videos[:32]]
    results["real_data_boundary_change"] = float(np.mean([p["boundary_change"] for p in real_prof]))
    results["real_data_inside_change"] = float(np.mean([p["inside_change"] for p in real_prof]))

    model, _ = load_model(runs["recall"])
    long = np.concatenate(list(stream_frames(model, 1000, seed=0))).astype(np.float64) / 127.5 - 1
    first, last = long[:100], long[-100:]
    energy = lambda x: float(np.abs(np.diff(x, axis=0)).mean())  # noqa: E731
    # Fraction of pixels a digit covers (brightest channel above -0.5): 0 for black frames.
    fg = lambda x: float((x.max(axis=-1) > -0.5).mean())  # noqa: E731
    results["drift_1000"] = {
        "mean_first100": float(first.mean()), "mean_last100": float(last.mean()),
        "std_first100": float(first.std()), "std_last100": float(last.std()),
        "motion_first100": energy(first), "motion_last100": energy(last),
        "saturated_fraction_last100": float((np.abs(last) > 0.98).mean()),
        "saturated_fraction_first100": float((np.abs(first) > 0.98).mean()),
        "foreground_first100": fg(first), "foreground_last100": fg(last),
        "foreground_real_data": float(np.mean([fg(v.astype(np.float64) / 127.5 - 1) for v in source.videos[:32]])),
    }
    results["chain_survival_1000"] = chain_survival(model, args.chains)
    real_first = np.stack([v[0] for v in held.videos])
    results["digit_distance_real_frames"] = float(np.median(digit_distance(real_first)))
    speed = {}
    for n in (100, 1000):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _chunk in stream_frames(model, n, seed=0):
                pass
            times.append(time.perf_counter() - t0)
        speed[n] = n / statistics.median(times)
    mem = {f"stream_{n}": _probe(runs["recall"], n, "stream") for n in (100, 1000)}
    mem["collect_1000"] = _probe(runs["recall"], 1000, "collect")
    results["throughput_fps"] = {str(k): v for k, v in speed.items()}
    results["peak_memory"] = mem
    results["peak_memory_ratio_1000_vs_100"] = mem["stream_1000"]["peak_rss_mib"] / mem["stream_100"]["peak_rss_mib"]
    results["sampler_traced_ratio_1000_vs_100"] = (mem["stream_1000"]["sampler_traced_peak_kib"]
                                                   / mem["stream_100"]["sampler_traced_peak_kib"])
    results["torch_threads"] = torch.get_num_threads()

    out = ROOT / "benchmarks" / "results" / "longgen.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    v = results["variants"]
    print("\nlonggen benchmark (CPU preset 32x32x8, moving digits, "
          + ", ".join(f"{k} {r['steps']} steps" for k, r in v.items()) + f", batch {v['recall']['train']['batch_size']})")
    print(f"{'variant':<12}{'steps':>6}{'train s':>9}{'recon L1':>10}{'seam mean':>11}{'seam median':>13}"
          f"{'at seams':>10}{'inside':>8}")
    for name, r in v.items():
        print(f"{name}: shift correlation with the true motion {r.get('shift_correlation', float('nan')):.3f}, "
              "centre-of-ink error per frame (px) " + " ".join(f"{e:.2f}" for e in r["centre_error_px_per_frame"]))
    for name, r in v.items():
        secs = "n/a" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
        print(f"{name:<12}{r['steps']:>6}{secs:>9}{r['reconstruction_l1']:>10.4f}"
              f"{r['seam_score_mean']:>11.3f}{r['seam_score_median']:>13.3f}{r['boundary_change']:>10.4f}"
              f"{r['inside_change']:>8.4f}")
    print(f"{'real data':<12}{'':>6}{'':>9}{'':>10}{real_seams:>11.3f}{'':>13}"
          f"{results['real_data_boundary_change']:>10.4f}{results['real_data_inside_change']:>8.4f}")
    print(f"L1 baselines: copy frame 0 {results['copy_first_frame_l1']:.4f}, all black {results['all_black_l1']:.4f}")
    d = results["drift_1000"]
    print(f"drift over 1000 frames: mean {d['mean_first100']:.3f} -> {d['mean_last100']:.3f}, std "
          f"{d['std_first100']:.3f} -> {d['std_last100']:.3f}, motion {d['motion_first100']:.4f} -> "
          f"{d['motion_last100']:.4f}, saturated {d['saturated_fraction_first100']:.3f} -> "
          f"{d['saturated_fraction_last100']:.3f}, digit-covered pixels {d['foreground_first100']:.3f} -> "
          f"{d['foreground_last100']:.3f} (real data {d['foreground_real_data']:.3f})")
    for name, r in results["chain_survival_1000"].items():
        print(f"chains of 1000 frames, {name}: digit-covered pixels {r['foreground_first100']:.3f} -> "
              f"{r['foreground_last100']:.3f}, a digit at the end in {r['chains_with_a_digit_at_the_end']} of "
              f"{r['chains']}, distance to the nearest real digit (median) first/last frame "
              f"{r['digit_distance_first_frame']:.2f} / {r['digit_distance_last_frame']:.2f} (real frames "
              f"{results['digit_distance_real_frames']:.2f})")
    print(f"throughput: {speed[100]:.0f} frames/s at 100 frames, {speed[1000]:.0f} frames/s at 1000 "
          f"(ratio {speed[1000] / speed[100]:.2f})")
    print(f"peak RSS streaming: {mem['stream_100']['peak_rss_mib']:.0f} MiB at 100 frames, "
          f"{mem['stream_1000']['peak_rss_mib']:.0f} MiB at 1000 (ratio {results['peak_memory_ratio_1000_vs_100']:.3f}); "
          f"collect-then-write baseline at 1000: {mem['collect_1000']['peak_rss_mib']:.0f} MiB")
    print(f"sampler-held host memory (tracemalloc): {mem['stream_100']['sampler_traced_peak_kib']:.0f} KiB at 100, "
          f"{mem['stream_1000']['sampler_traced_peak_kib']:.0f} KiB at 1000 (ratio "
          f"{results['sampler_traced_ratio_1000_vs_100']:.3f}); collect baseline at 1000: "
          f"{mem['collect_1000']['sampler_traced_peak_kib']:.0f} KiB")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
