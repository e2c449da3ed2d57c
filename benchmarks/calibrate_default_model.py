"""Calibrate a trained keypoint model's forecasts: shrinkage and damped-velocity share, per step.

    OMP_NUM_THREADS=1 python benchmarks/calibrate_default_model.py [--model vmt/keypoints/default_model]
        [--calib id10286] [--work runs/keypoints_calib]

The model's own weights are not touched. A calibration model is trained with the model's recipe (its
config and train settings, augmentation on, windows every 4 frames) on the identities it was trained on minus
`--calib`; the damping is chosen on that calibration model's training faces and the per-step (shrink, gain)
pairs on the windows of `--calib`, a face the calibration model never saw (`train.calibrate_blend`). The
factors and how they were fitted are written into the model's config.json (`config.shrink`,
`config.velocity_gain`, `config.damping`, `shrink_calibration`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmt.io.atomic import write_json_atomic
from vmt.keypoints.data import identity_of, load_sequences
from vmt.keypoints.model import CONFIG_FILE, ModelConfig, SampleOptions, read_config
from vmt.keypoints.train import TrainConfig, calibrate_blend

DATA = ROOT.parent / "shared" / "data" / "voxceleb" / "fomm_kp_dev.npz"
SNF = {"refine": True, "elementwise": False}   # the command's default sampler (GRU-SNF, whole-vector MCMC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "vmt" / "keypoints" / "default_model")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--calib", nargs="+", default=["id10286"])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "keypoints_calib")   # git-ignored
    ap.add_argument("--retrain", action="store_true", help="train the calibration model even if --work has one")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.data.is_file():
        sys.exit(f"{args.data} not found: this script needs ../shared/data beside the checkout")
    doc = read_config(args.model)
    cfg = replace(ModelConfig(**doc["config"]), shrink=None, velocity_gain=None, damping=None)
    trained_on = sorted({identity_of(n) for n in doc["data"]["train_sequences"]})
    seqs = load_sequences(args.data)
    exclude = sorted({identity_of(n) for n in seqs.names} - set(trained_on))
    t = doc["train"]
    tc = TrainConfig(steps=t["steps"], batch=t["batch"], lr=t["lr"], weight_decay=t["weight_decay"],
                     grad_clip=t["grad_clip"], eval_every=t["eval_every"], seed=t["seed"])
    fitted = calibrate_blend(seqs, cfg, tc, args.work, exclude=exclude, calib=args.calib, window_stride=4,
                             augment=True, opts=SampleOptions(samples=args.samples, **SNF), seed=args.seed,
                             reuse=not args.retrain)
    doc["config"].update(fitted)
    doc["shrink_calibration"] = {
        "calib_identities": args.calib, "model_trained_on": [i for i in trained_on if i not in args.calib],
        "objective": f"samples' mean ADE per step over (shrink, velocity gain) pairs, GRU-SNF whole-vector, "
                     f"{args.samples} samples, seed {args.seed}",
        "damping": "chosen on the calibration model's training identities (mean absolute error)",
        "windows": f"{', '.join(args.calib)}, non-overlapping {cfg.context + cfg.horizon}-frame",
        "steps": tc.steps, "tool": "benchmarks/calibrate_default_model.py",
    }
    write_json_atomic(args.model / CONFIG_FILE, doc, replace=True)
    print(json.dumps(fitted))
    print(f"wrote {args.model / CONFIG_FILE}")


if __name__ == "__main__":
    main()
