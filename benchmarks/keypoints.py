"""Keypoint forecasting on unseen faces: leave-one-identity-out (LOIO) over the 4 shared VoxCeleb identities,
GRU-NF and GRU-SNF against zero-, constant- and damped-velocity forecasts on the same windows.

    OMP_NUM_THREADS=1 python benchmarks/keypoints.py [--params residual minmax] [--steps 600] [--seeds 0]

For each encoding (`residual`: displacement from the last observed frame, the shipped default; `minmax`: the
paper's per-window context min-max) and each identity, a model is trained with the shipped recipe on the other
three identities (no validation split: the last weights are kept, so the held-out face chooses nothing) and
evaluated on the non-overlapping context+horizon windows of the held-out identity. Trained folds are cached in
--folds-dir and reused unless --retrain.

Metrics, all in detector units (FOMM coordinates in [-1, 1]) on the predicted frames only:
- ADE / FDE on positions: mean over the N samples (`ade_mean`) and best of N (`ade_best`);
- energy distance between the held-out identity's true futures and the predicted futures (all 60 values a
  frame, flattened; `--ed-samples` samples per window), computed per fold and averaged over folds weighted by
  windows;
- MAE of the best 20 of N samples, APD among those 20, APD/MAE, and sample CRPS (all 60 values).
Deterministic baselines have one sample (APD 0). Damped velocity: x_{C-1} + v * sum_{i<=h} d^i with v the last
observed velocity and d chosen on the training identities of each fold.
--shrink adds rows with displacement shrinkage (`ModelConfig.shrink`): per fold, a calibration model is trained
with the same recipe on the fold's training identities minus one (`calibration_identity`), and the per-step
factors are fitted on that one identity's windows (`train.calibrate_shrink`); the held-out face is dropped
before any of it. --blend adds rows where each step also adds a share of the damped velocity
(`ModelConfig.velocity_gain`, `train.calibrate_blend`): shrink and share fitted together on the same windows,
the damping chosen on the calibration model's own training faces.
Writes benchmarks/results/keypoints.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmt.keypoints.data import identity_of, load_sequences, make_windows, split_by_identity
from vmt.keypoints.model import ModelConfig, SampleOptions, load_model
from vmt.keypoints.baselines import fit_damping, velocity_forecast
from vmt.keypoints.predict import apply_shrink, apply_velocity, fit_blend, fit_shrink, forecast, shrink_gains
from vmt.keypoints.train import TrainConfig, calibration_model, fit, prepare_training
from vmt.metrics.forecast import apd, best_k, crps, energy_distance

DATA = ROOT.parent / "shared" / "data" / "voxceleb" / "fomm_kp_dev.npz"
METHODS = {"GRU-NF": {"refine": False}, "GRU-SNF": {"refine": True, "elementwise": False}}


def metrics(truth: np.ndarray, pred: np.ndarray, num_kp: int, ed_samples: int, best: int = 20) -> dict:
    """truth (W, H, dim), pred (W, N, H, dim) -> per-window sums and the fold's energy distance."""
    w, n, h, d = pred.shape
    per = 6 if d == num_kp * 6 else 2
    pos_t = truth.reshape(w, h, num_kp, per)[..., :2]
    pos_p = pred.reshape(w, n, h, num_kp, per)[..., :2]
    dist = np.linalg.norm(pos_p - pos_t[:, None], axis=-1)          # (W, N, H, K)
    ade, fde = dist.mean((2, 3)), dist[:, :, -1].mean(-1)            # (W, N)
    mae, apds, crpss = [], [], []
    for i in range(w):
        m, idx = best_k(truth[i], pred[i], min(best, n))
        mae.append(m)
        apds.append(apd(pred[i, idx]) if n > 1 else 0.0)
        crpss.append(crps(truth[i], pred[i]))
    k = min(ed_samples, n)
    ed = energy_distance(truth.reshape(w, -1), pred[:, :k].reshape(w * k, -1))
    return {"ade_mean": ade.mean(1), "ade_best": ade.min(1), "fde_mean": fde.mean(1), "fde_best": fde.min(1),
            "mae_best20": np.array(mae), "apd_best20": np.array(apds), "crps": np.array(crpss), "ed": ed}


def calibration_identity(seqs, length: int) -> str:
    """The training identity with the most non-overlapping windows: the calibration model is trained without
    it and the shrinkage fitted on it (the largest face gives the steadiest factors)."""
    ids = sorted({identity_of(n) for n in seqs.names})
    return max(ids, key=lambda i: len(make_windows(split_by_identity(seqs, [j for j in ids if j != i])[0],
                                                   length, length)[0]))


def train_fold(cfg: ModelConfig, tc: TrainConfig, train_seqs: list[np.ndarray], folder: Path, stride: int,
               augment: bool) -> float:
    cfg, raw, transform = prepare_training(cfg, train_seqs, stride, augment)
    t0 = time.perf_counter()
    fit(cfg, tc, raw, None, folder, transform=transform, info={"windows": len(raw)})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--params", nargs="+", default=["residual", "minmax"])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--rollout", action="store_true", help="train on the head's fed-back predictions")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--ed-samples", type=int, default=25)
    ap.add_argument("--context", type=int, default=8)
    ap.add_argument("--horizon", type=int, default=16)
    ap.add_argument("--folds-dir", type=Path, default=ROOT / "runs" / "keypoints_loio")   # git-ignored
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--shrink", action="store_true",
                    help="also score each GRU row with displacement shrinkage fitted on a training identity "
                         "(calibration model trained without it; the held-out face is never used)")
    ap.add_argument("--blend", action="store_true",
                    help="with --shrink: also score each GRU row with shrinkage and a damped-velocity share, both "
                         "fitted per step with the same calibration model (damping chosen on its training faces)")
    ap.add_argument("--held-out", nargs="+", default=None, help="only these folds (default: every identity)")
    ap.add_argument("--model", type=Path, default=None,
                    help="evaluate this trained model on its own validation identities instead of LOIO training")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "keypoints.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.data.is_file():
        sys.exit(f"{args.data} not found: this benchmark needs ../shared/data beside the checkout")
    seqs = load_sequences(args.data)
    ids = sorted({identity_of(n) for n in seqs.names})
    c, h = args.context, args.horizon
    augment = not args.no_augment
    rows: dict[str, dict[str, list]] = {}
    eds: dict[str, list] = {}
    fold_info = []
    folds: list[list[str]] = [[i] for i in (args.held_out or ids)]
    if args.model is not None:
        folds = [load_model(args.model)[1]["data"]["val_identities"]]
        if not folds[0]:
            sys.exit(f"{args.model} has no validation identities: every shared face was trained on")
    for held in folds:
        tr, te = split_by_identity(seqs, held)
        test = make_windows(te, c + h, c + h)[0]
        damping = fit_damping(make_windows(tr, c + h, c + h)[0], c)
        fold_info.append({"held_out": ",".join(held), "windows": len(test), "damping": damping})
        preds = {"zero velocity": velocity_forecast(test[:, :c], h, 0.0),
                 "constant velocity": velocity_forecast(test[:, :c], h, 1.0),
                 "damped velocity": velocity_forecast(test[:, :c], h, damping)}
        for param in args.params if args.model is None else ["model"]:
            tag = f"{param}{'' if augment else '-noaug'}{'-rollout' if args.rollout else ''}"
            folder = args.model or args.folds_dir / f"{tag}-{args.steps}-{held[0]}"
            if args.model is None and (args.retrain or not (folder / "model.safetensors").is_file()):
                cfg = ModelConfig(context=c, horizon=h, param=param, rollout=args.rollout)
                secs = train_fold(cfg, TrainConfig(steps=args.steps, eval_every=max(1, args.steps // 4)),
                                  tr.flat, folder, 4, augment)
                print(f"trained {folder.name} in {secs:.0f}s", flush=True)
            model, _ = load_model(folder)
            gains = blend = None
            if args.shrink and args.model is None:
                # Fitted with the GRU-SNF sampler (the command's default) and used for both rows: one factor
                # list is stored per model. The factors are applied to the same samples afterwards, exactly
                # what `forecast` does with cfg.shrink (and cfg.velocity_gain) set.
                cid = calibration_identity(tr, c + h)
                cal_model, cal_windows, cal_train = calibration_model(
                    seqs, model.cfg, TrainConfig(steps=args.steps, eval_every=max(1, args.steps // 4)),
                    args.folds_dir / f"{tag}-{args.steps}-{held[0]}-calib-{cid}", exclude=held, calib=[cid],
                    window_stride=4, augment=augment, reuse=not args.retrain)
                cal_opts = SampleOptions(samples=args.samples, temperature=args.temperature, **METHODS["GRU-SNF"])
                shrink = fit_shrink(cal_model, cal_windows, c, cal_opts, seed=1000)
                fold_info[-1].update({f"shrink_{param}": shrink, "calib_identity": cid})
                print(f"fold {held[0]}: shrink fitted on {cid}: {shrink}", flush=True)
                gains = shrink_gains(shrink, h)
                if args.blend:
                    cal_damping = fit_damping(cal_train, c)
                    b_shrink, b_gains = fit_blend(cal_model, cal_windows, c, cal_opts, cal_damping, seed=1000)
                    fold_info[-1][f"blend_{param}"] = {"damping": cal_damping, "shrink": b_shrink,
                                                       "velocity_gain": b_gains}
                    print(f"fold {held[0]}: blend fitted on {cid}: damping {cal_damping}, shrink {b_shrink}, "
                          f"velocity gain {b_gains}", flush=True)
                    blend = (shrink_gains(b_shrink, h), shrink_gains(b_gains, h), cal_damping)
            for name, method in METHODS.items():
                for seed in args.seeds:
                    opts = SampleOptions(samples=args.samples, temperature=args.temperature, **method)
                    pred = forecast(model, test[:, :c], h, opts, seed=seed)
                    preds[f"{name} ({param}) s{seed}"] = pred
                    if gains is not None:
                        preds[f"{name} ({param}, shrunk) s{seed}"] = apply_shrink(pred, test[:, c - 1], gains)
                    if blend is not None:
                        b_s, b_g, b_d = blend
                        preds[f"{name} ({param}, blend) s{seed}"] = apply_velocity(
                            apply_shrink(pred, test[:, c - 1], b_s), test[:, :c], b_g, b_d)
        for key, pred in preds.items():
            label = key.rsplit(" s", 1)[0] if key.startswith("GRU") else key
            m = metrics(test[:, c:], pred, seqs.layout.num_kp, args.ed_samples)
            eds.setdefault(label, []).extend([m.pop("ed")] * len(test))   # per-fold ED, weighted by windows
            for k, v in m.items():
                rows.setdefault(label, {}).setdefault(k, []).extend(v.tolist())
    cols = ["ade_mean", "ade_best", "fde_mean", "fde_best", "ed", "mae_best20", "apd_best20", "apd_over_mae",
            "crps"]
    table = {}
    for label, r in rows.items():
        t = {k: float(np.mean(v)) for k, v in r.items()}
        t["ed"] = float(np.mean(eds[label]))
        t["apd_over_mae"] = t["apd_best20"] / t["mae_best20"]
        table[label] = t
    head = f"{'method':30}" + "".join(f"{k:>12}" for k in cols)
    what = (f"{args.model} on its validation identities {fold_info[0]['held_out']}" if args.model else
            f"LOIO (steps {args.steps}, augment {augment}) on unseen identities")
    print(f"{c}->{h}, {what} ({sum(f['windows'] for f in fold_info)} windows, {args.samples} samples, "
          f"temperature {args.temperature}, seeds {args.seeds})")
    print(head)
    print("-" * len(head))
    for label, t in table.items():
        print(f"{label:30}" + "".join(f"{t[k]:12.4f}" for k in cols))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model and str(args.model), "context": c, "horizon": h, "samples": args.samples, "seeds": args.seeds,
                                    "temperature": args.temperature, "steps": args.steps, "augment": augment,
                                    "folds": fold_info, "table": table}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
