"""GRU-NF vs GRU-SNF on held-out identities of the shared VoxCeleb keypoints; latency per predicted frame.

    OMP_NUM_THREADS=1 python benchmarks/keypoints.py [--model DIR] [--seeds 0 1 2] [--samples 100]

Test windows: non-overlapping context+horizon windows of the sequences of the model's validation identities
(never trained on; note they did pick the best checkpoint). Per window: 100 samples.
Metrics (normalised space = min-max of each window's context, all 60 values a frame, as the release's anchors):
- energy distance between ground-truth windows and predicted windows (context + prediction, flattened), using
  the first `--ed-samples` of each window's samples (i.i.d., so an unbiased subset; full N is O((W N)^2));
- MAE of the best 20 of 100 samples, APD among those 20 (same units), APD/MAE, CRPS;
- ADE/FDE best-of-100 on positions, in pixels of a 256x256 frame.
Latency: one window, 100 samples, median of repeats, ms per predicted frame (GRU-NF vs GRU-SNF).
Extra rows: SNF-vec (GRU-SNF with whole-vector MH acceptance), NF-per (GRU-NF with per-sample feedback).
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

from vmt.keypoints import DEFAULT_MODEL_DIR
from vmt.keypoints.data import Sequences, load_sequences, make_windows, split_by_identity
from vmt.keypoints.model import SampleOptions, load_model
from vmt.keypoints.predict import forecast, normalise_windows
from vmt.metrics.forecast import ade_fde, apd, best_k, crps, energy_distance

DATA = ROOT.parent / "shared" / "data" / "voxceleb" / "fomm_kp_dev.npz"


METHODS = {  # name -> sampling options besides the sample count
    "GRU-NF": {"refine": False},
    "GRU-SNF": {"refine": True},
    "SNF-vec": {"refine": True, "elementwise": False},     # whole-vector MH acceptance
    "NF-per": {"refine": False, "feedback": "sample"},     # per-sample feedback
}


def evaluate(model, windows: np.ndarray, context: int, horizon: int, method: dict, seed: int, samples: int,
             ed_samples: int, best: int = 20) -> dict:
    layout = model.cfg.layout
    pred = forecast(model, windows[:, :context], horizon, SampleOptions(samples=samples, **method), seed=seed)
    norm, lo, rng = normalise_windows(windows, context, model.cfg.min_range)
    pred_n = (pred - lo[:, None]) / rng[:, None]                       # (W, N, H, D)
    gt_n = norm[:, context:]
    maes, apds, crpss, ades, fdes = [], [], [], [], []
    for w in range(len(windows)):
        m, idx = best_k(gt_n[w], pred_n[w], best)
        maes.append(m)
        apds.append(apd(pred_n[w, idx]))
        crpss.append(crps(gt_n[w], pred_n[w]))
        gp, _ = layout.unflatten(windows[w, context:])
        sp, _ = layout.unflatten(pred[w])
        a, f = ade_fde(gp * 127.5, sp * 127.5)
        ades.append(a)
        fdes.append(f)
    ctx = np.repeat(norm[:, None, :context], ed_samples, axis=1)
    pw = np.concatenate([ctx, pred_n[:, :ed_samples]], axis=2).reshape(-1, (context + horizon) * layout.dim)
    ed = energy_distance(norm.reshape(len(norm), -1), pw)
    mae, ap = float(np.mean(maes)), float(np.mean(apds))
    return {"energy_distance": ed, "mae_best20": mae, "apd_best20": ap, "apd_over_mae": ap / mae,
            "crps": float(np.mean(crpss)), "ade_px": float(np.mean(ades)), "fde_px": float(np.mean(fdes))}


def latency(model, window: np.ndarray, context: int, horizon: int, method: dict, samples: int, repeats: int) -> float:
    opts = SampleOptions(samples=samples, **method)
    forecast(model, window[None, :context], 2, opts, seed=0)            # warm-up
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        forecast(model, window[None, :context], horizon, opts, seed=r)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / horizon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--ed-samples", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "keypoints.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if not args.data.is_file():
        sys.exit(f"{args.data} not found: this benchmark needs ../shared/data beside the checkout")
    model, doc = load_model(args.model)
    val_ids = doc["data"]["val_identities"]
    seqs = load_sequences(args.data)
    _, test = split_by_identity(seqs, val_ids)
    results = {"model": str(args.model), "train_seconds": doc.get("train_seconds"), "train_steps": doc.get("step"),
               "best_val_nll": doc.get("best_val_nll"), "held_out_identities": val_ids,
               "samples": args.samples, "seeds": args.seeds, "ed_samples": args.ed_samples, "horizons": {},
               "torch_threads": torch.get_num_threads()}
    rows = []
    for context, horizon in ((8, 16), (10, 14)):
        windows, _ = make_windows(Sequences(test.names, test.flat, test.layout), context + horizon,
                                  context + horizon, model.cfg.frame_step)
        entry = {"windows": len(windows)}
        for name, method in METHODS.items():
            per_seed = [evaluate(model, windows, context, horizon, method, s, args.samples, args.ed_samples)
                        for s in args.seeds]
            keys = per_seed[0].keys()
            entry[name] = {k: {"mean": float(np.mean([r[k] for r in per_seed])),
                               "std": float(np.std([r[k] for r in per_seed])),
                               "per_seed": [r[k] for r in per_seed]} for k in keys}
            entry[name]["ms_per_frame"] = latency(model, windows[0], context, horizon, method, args.samples,
                                                  args.repeats)
            rows.append((f"{context}->{horizon}", name, entry[name]))
        nf, snf = entry["GRU-NF"], entry["GRU-SNF"]
        entry["snf_minus_nf_energy_distance"] = snf["energy_distance"]["mean"] - nf["energy_distance"]["mean"]
        entry["snf_over_nf_apd_mae"] = snf["apd_over_mae"]["mean"] / nf["apd_over_mae"]["mean"]
        entry["snf_over_nf_latency"] = snf["ms_per_frame"] / nf["ms_per_frame"]
        results["horizons"][f"{context}->{horizon}"] = entry

    cols = ["energy_distance", "mae_best20", "apd_best20", "apd_over_mae", "crps", "ade_px", "fde_px"]
    head = f"{'horizon':8} {'method':8} " + " ".join(f"{c:>16}" for c in cols) + f" {'ms/frame':>9}"
    print(head)
    print("-" * len(head))
    for hz, name, e in rows:
        cells = " ".join(f"{e[c]['mean']:9.4f}±{e[c]['std']:.4f}"[:16].rjust(16) for c in cols)
        print(f"{hz:8} {name:8} {cells} {e['ms_per_frame']:9.2f}")
    for hz, e in results["horizons"].items():
        print(f"{hz}: windows {e['windows']}, SNF-NF energy distance {e['snf_minus_nf_energy_distance']:+.4f}, "
              f"APD/MAE ratio SNF/NF {e['snf_over_nf_apd_mae']:.3f}, latency SNF/NF {e['snf_over_nf_latency']:.2f}x")
    print(f"frame period at 25 fps: 40 ms; shipped model trained {results['train_seconds']} s "
          f"({results['train_steps']} steps)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
