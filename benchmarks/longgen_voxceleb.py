"""Benchmark of `vmt longgen` on real faces: a run trained on VoxCeleb clips, scored on a held-out identity.

Train with the CLI on three of the shared VoxCeleb clips (ids 10284, 10286, 10291; 256x256, 10 fps), holding
out id10283, e.g.

    mkdir -p vox/train && ln -s ../shared/data/voxceleb/id1028[46]_*.mp4 ../shared/data/voxceleb/id10291_*.mp4 vox/train/
    vmt longgen train vox/train -o vox/run --preset cpu --size 64 --steps 1000 -b 8 --lr 1e-3
    vmt longgen train vox/train -o vox/run-nr --no-recall --preset cpu --size 64 --steps 1000 -b 8 --lr 1e-3
    python benchmarks/longgen_voxceleb.py vox/run --no-recall-run vox/run-nr

Reports, for the held-out clip: reconstruction L1 (frames in [-1, 1]) next to copying frame 0 and a constant
mean-grey clip; the seam score of long samples (change at clip boundaries / change inside clips; 1.0 is
seamless) next to the held-out video cut at the same places; drift over 1,000 frames (mean, std and motion
of the first vs last 100 frames). Writes benchmarks/results/longgen-voxceleb.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import save  # noqa: E402
from longgen import chain_seams  # noqa: E402

HELD_OUT = "id10283_*.mp4"


def _stats(frames):
    return {"mean": float(frames.mean()), "std": float(frames.std()),
            "motion": float(abs(frames[1:] - frames[:-1]).mean())}


def score(run: Path, video, chains: int) -> dict:
    """Reconstruction, seams and drift of one run on the held-out video (T, H, W, 3) uint8."""
    import numpy as np

    from vmt.longgen.checkpoint import load_model
    from vmt.longgen.data import ClipSource
    from vmt.longgen.generator import TRAIN_WARP
    from vmt.longgen.sampling import stream_frames
    from vmt.longgen.train import reconstruction_l1
    from vmt.metrics.seams import chain_boundaries, seam_score

    model, meta = load_model(run)
    cfg = model.cfg
    clips = ClipSource([video], ["held-out"]).sample(32, cfg.frames, np.random.default_rng(0))
    grey = clips.mean()
    out = {
        "run": {"steps": meta["step"], "model": meta["model"], "train": meta["train"], "data": meta["data"]},
        "reconstruction_l1": reconstruction_l1(model, clips),
        "copy_first_frame_l1": float((clips - clips[:, :, :1]).abs().mean()),
        "mean_grey_l1": float((clips - grey).abs().mean()),
    }
    t0 = time.perf_counter()
    # Faces fill the frame: sample with the training warp (sub-pixel, mirrored borders), not the chain warp
    # made for content on a black background.
    out.update(chain_seams(model, chains, frames=100, warp=TRAIN_WARP))
    out["sampling_fps"] = chains * 100 / (time.perf_counter() - t0)
    real = video.astype(np.float64) / 127.5 - 1
    out["real_data_seam_score"] = float(seam_score(real, chain_boundaries(len(real), cfg.frames, cfg.frames - 1)))
    long = np.concatenate(list(stream_frames(model, 1000, seed=0, warp=TRAIN_WARP))).astype(np.float64) / 127.5 - 1
    out["drift_1000"] = {"first100": _stats(long[:100]), "last100": _stats(long[-100:]), "real_data": _stats(real)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="run folder of `vmt longgen train` on the VoxCeleb clips (recall)")
    ap.add_argument("--no-recall-run", type=Path, help="the same training with --no-recall, to compare")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "voxceleb")
    ap.add_argument("--chains", type=int, default=8, help="long samples per seam estimate")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from vmt.io.video import read_video
    from vmt.longgen.checkpoint import read_meta

    held = sorted(args.data.glob(HELD_OUT))
    if not held:
        sys.exit(f"held-out clip {HELD_OUT} not found in {args.data}; pass --data")
    size = read_meta(args.run)["model"]["size"]
    video, _ = read_video(held[0], size=(size, size), resize="crop")
    runs = {"recall": args.run, "no_recall": args.no_recall_run}
    results = {"held_out": held[0].name, "variants": {k: score(r, video, args.chains) for k, r in runs.items() if r}}
    print(f"held-out {results['held_out']} at {size}x{size}")
    for name, r in results["variants"].items():
        d = r["drift_1000"]
        print(f"{name} (step {r['run']['steps']}): reconstruction L1 {r['reconstruction_l1']:.4f} (copy frame 0 "
              f"{r['copy_first_frame_l1']:.4f}, mean grey {r['mean_grey_l1']:.4f}); seam score "
              f"{r['seam_score_mean']:.3f} (real data cut alike {r['real_data_seam_score']:.3f}; change at seams "
              f"{r['boundary_change']:.4f}, inside {r['inside_change']:.4f}); drift over 1,000 frames: mean "
              f"{d['first100']['mean']:.3f} -> {d['last100']['mean']:.3f}, std {d['first100']['std']:.3f} -> "
              f"{d['last100']['std']:.3f}, motion {d['first100']['motion']:.4f} -> {d['last100']['motion']:.4f} "
              f"(real: {d['real_data']['mean']:.3f}, {d['real_data']['std']:.3f}, {d['real_data']['motion']:.4f})")
    save("longgen-voxceleb", results)


if __name__ == "__main__":
    main()
