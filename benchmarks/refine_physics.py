"""P&P on a learned video model, scored by physics: the residual of a tracked ball against constant acceleration.

Trains a small flow-matching model (vmt.testing.toy_video.ToyVideoFlow) on synthetic 16-frame 32x32 videos
of a ball thrown, falling and bouncing under gravity (fresh videos every step), then samples the same
starting noise with: plain Euler; Euler with twice the steps (NFE x2); P&P with the published default plan
scaled to the step count (tau 0.25); the same plan without the gate (tau 0). Each video is scored with
vmt.metrics.physics (median-background tracking, least-squares constant-acceleration fit) per free-flight
segment (the frame of a bounce dropped): RMS residual in pixels over the videos where the ball is
trackable (found in at least 75% of the frames, and the tracked pixels look like one ball of the right size,
not noise; the fit uses those frames), the trackable fraction, and the fitted vertical acceleration against the true
gravity. Training videos scored the same way give the floor (rendering + tracking error).

Then the paired comparison of `vmt compare` (vmt.metrics.paired.compare_metric) on this ground truth: each P&P
sampler against each Euler sampler, sample by sample (the same starting noise for both), on the "trackable"
indicator (1/0, higher better) and on the residual where both videos are trackable (lower better); each
sample is its own bootstrap group (the starts are independent). Verdicts, intervals and win rates go into the
JSON under "paired".

    python benchmarks/refine_physics.py [--train-minutes 6] [--samples 128] [--steps 20] [--threshold 128]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from vmt.metrics.paired import compare_metric
from vmt.sampling.euler import sample_euler
from vmt.sampling.pnp import DEFAULT_PLAN, Plan, PredictPerturb, parse_plan
from vmt.sampling.sigmas import flow_sigmas
from vmt.testing.toy_video import BallWorld, ToyVideoFlow, ball_score, sample_balls, to_uint8_frames, train_flow

RESULTS = Path(__file__).resolve().parent / "results"


def scaled_plan(steps: int, base: str = DEFAULT_PLAN, base_steps: int = 50) -> Plan:
    """The published plan moved to a `steps`-step schedule: range boundaries scaled and rounded, so the
    refined steps cover the same fraction of the trajectory (2-5:3,6-14:1 at 20 steps -> 1:3,2-5:1)."""
    out, prev_end = [], 0
    for a, b, k in parse_plan(base).ranges:
        lo = max(prev_end, round(a * steps / base_steps))
        hi = round((b + 1) * steps / base_steps) - 1
        if hi >= lo:
            out.append((lo, hi, k))
            prev_end = hi + 1
    return Plan(tuple(out))


def score(videos: torch.Tensor, world: BallWorld, threshold: float, min_found: float,
          per_sample: list | None = None) -> dict:
    """The summary row; with `per_sample` (a list), each video's BallScore is appended to it as well."""
    gravity = world.gravity
    scores = [ball_score(to_uint8_frames(v), threshold=threshold, radius=world.radius, min_found=min_found)
              for v in videos]
    if per_sample is not None:
        per_sample.extend(scores)
    ok = [s for s in scores if s.trackable]
    res = np.array([s.residual_px for s in ok])
    grav = np.array([s.gravity_px for s in ok])
    nan = float("nan")
    return {
        "trackable": round(len(ok) / len(scores), 4),
        "mean_residual_px": round(float(res.mean()), 4) if len(ok) else nan,
        "median_residual_px": round(float(np.median(res)), 4) if len(ok) else nan,
        "p90_residual_px": round(float(np.quantile(res, 0.9)), 4) if len(ok) else nan,
        "median_gravity_error": round(float(np.median(np.abs(grav - gravity))), 4) if len(ok) else nan,
        "bounce_fraction": round(float(np.mean([s.bounce_frame >= 0 for s in ok])), 4) if len(ok) else nan,
    }


def paired_comparisons(per_method: dict[str, list], resamples: int, seed: int) -> list[dict]:
    """Each P&P sampler (A) against each Euler sampler (B), per sample: the trackable indicator (higher
    better) and the residual where both are trackable (lower better; NaN elsewhere, so compare_metric leaves
    those pairs out). One bootstrap group per sample."""
    out = []
    pnps = [m for m in per_method if m.startswith("P&P")]
    eulers = [m for m in per_method if m.startswith("euler")]
    for a in pnps:
        for b in eulers:
            sa, sb = per_method[a], per_method[b]
            groups = np.arange(len(sa))
            metrics = {}
            for metric, better, value in (("trackable", "higher", lambda s: float(s.trackable)),
                                          ("residual_px", "lower",
                                           lambda s: float(s.residual_px) if s.trackable else float("nan"))):
                try:
                    metrics[metric] = compare_metric([value(s) for s in sa], [value(s) for s in sb], groups,
                                                     better, resamples=resamples, seed=seed).as_dict()
                except ValueError:  # no sample trackable on both sides
                    metrics[metric] = {"better": better, "pairs": 0, "verdict": "no_difference", "ci": None,
                                       "a_mean": float("nan"), "b_mean": float("nan"),
                                       "mean_difference": float("nan"), "win_rate": float("nan")}
            both = sum(1 for x, y in zip(sa, sb, strict=True) if x.trackable and y.trackable)
            only_a = sum(1 for x, y in zip(sa, sb, strict=True) if x.trackable and not y.trackable)
            only_b = sum(1 for x, y in zip(sa, sb, strict=True) if y.trackable and not x.trackable)
            out.append({"a": a, "b": b, "samples": len(sa), "both_trackable": both, "only_a_trackable": only_a,
                        "only_b_trackable": only_b, "metrics": metrics})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-steps", type=int, default=3000, help="schedule length (upper bound)")
    ap.add_argument("--train-minutes", type=float, default=6.0, help="wall-clock cap on training")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64, help="videos per sampling batch")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--shift", type=float, default=1.0)
    ap.add_argument("--tau", type=float, default=0.25)
    ap.add_argument("--threshold", type=float, default=128.0,
                    help="tracking threshold in grey levels (ball 255, background 0; the small model leaves "
                         "background noise above the metric's default 25)")
    ap.add_argument("--min-found", type=float, default=0.75,
                    help="trackable: the ball is found and ball-shaped in at least this fraction of frames")
    ap.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the paired comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-model", type=Path, help="write the trained (EMA) weights here")
    ap.add_argument("--load-model", type=Path, help="skip training: sample from these weights")
    ap.add_argument("--dump", type=Path, help="write the sampled videos (uint8, per method) to this .npz")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    world = BallWorld()

    model = ToyVideoFlow(channels=1, width=args.width)
    t0 = time.perf_counter()

    def log(i: int, loss: float) -> None:
        if i % 100 == 0:
            print(f"train step {i}: loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    if args.load_model is not None:
        model.load_state_dict(torch.load(args.load_model))
        ema, losses = model.eval(), [float("nan")]
    else:
        ema, losses = train_flow(model, lambda n, g: sample_balls(world, n, g)[0], args.train_steps, args.batch,
                                 lr=args.lr, seed=args.seed, time_budget_s=60 * args.train_minutes, callback=log)
    if args.save_model is not None:
        torch.save(ema.state_dict(), args.save_model)
    train_s = time.perf_counter() - t0
    tail = losses[-100:]
    print(f"trained {len(losses)} steps in {train_s:.0f} s, final loss (mean of last {len(tail)}) "
          f"{sum(tail) / len(tail):.4f}")

    real, _, _ = sample_balls(world, args.samples, torch.Generator().manual_seed(args.seed + 100))
    z0 = torch.randn(real.shape, generator=torch.Generator().manual_seed(args.seed + 200))
    plan = scaled_plan(args.steps)
    sig = flow_sigmas(args.steps, args.shift)
    sig2 = flow_sigmas(2 * args.steps, args.shift)
    methods = {
        f"euler {args.steps}": (sig, None),
        f"euler {2 * args.steps} (NFE x2)": (sig2, None),
        f"P&P {plan}, tau {args.tau:g}": (sig, args.tau),
        f"P&P {plan}, no gate": (sig, 0.0),
    }
    floor = score(real, world, args.threshold, args.min_found)
    rows = [{"method": "training videos (floor)", "nfe": 0, "seconds": 0.0, **floor}]
    dumps = {"real": np.stack([to_uint8_frames(v)[..., 0] for v in real])}
    per_method: dict[str, list] = {}
    for name, (grid, tau) in methods.items():
        calls = [0]

        def velocity(z, s, calls=calls):
            calls[0] += 1
            return ema(z, s)

        pnp = PredictPerturb(plan, tau=tau, seed=args.seed) if tau is not None else None
        chunks = []
        t1 = time.perf_counter()
        for i in range(0, args.samples, args.chunk):
            chunks.append(sample_euler(velocity, z0[i:i + args.chunk].clone(), grid, [pnp] if pnp else []))
        seconds = time.perf_counter() - t1
        n_chunks = math.ceil(args.samples / args.chunk)
        per_method[name] = []
        row = {"method": name, "nfe": round(calls[0] / n_chunks, 2), "seconds": round(seconds, 1),
               **score(torch.cat(chunks), world, args.threshold, args.min_found, per_method[name])}
        if pnp is not None:
            cf = [r["certain_fraction"][-1] for r in pnp.steps]
            row["mean_final_certain_fraction"] = round(sum(cf) / len(cf), 4)
        rows.append(row)
        dumps[name] = np.stack([to_uint8_frames(v)[..., 0] for v in torch.cat(chunks)])
        print(f"{name}: {row}", flush=True)
    if args.dump is not None:
        np.savez_compressed(args.dump, **dumps)

    cols = ("method", "nfe", "mean_residual_px", "median_residual_px", "p90_residual_px", "trackable",
            "median_gravity_error", "seconds")
    print()
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r.get(c, "")) for c in cols))
    paired = paired_comparisons(per_method, args.resamples, args.seed)
    print()
    print("paired (A against B, same starting noise; diff > 0 favours A) | metric | A | B | diff | 95% CI | "
          "win rate | verdict")
    for p in paired:
        for metric, c in p["metrics"].items():
            ci = "n/a" if c["ci"] is None else f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]"
            print(f"{p['a']} vs {p['b']} | {metric} ({c['pairs']} pairs) | {c['a_mean']:.4f} | {c['b_mean']:.4f} | "
                  f"{c['mean_difference']:+.4f} | {ci} | {c['win_rate']:.3f} | {c['verdict']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "refine_physics.json"
    meta = {"train_steps_run": len(losses), "train_seconds": round(train_s, 1),
            "final_loss": round(sum(tail) / len(tail), 5), "plan": str(plan), "gravity": world.gravity,
            "world": vars(world) if hasattr(world, "__dict__") else str(world),
            "params": sum(p.numel() for p in model.parameters())}
    args_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.write_text(json.dumps({"args": args_json, **meta, "rows": rows, "paired": paired}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
