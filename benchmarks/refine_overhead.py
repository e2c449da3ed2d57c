"""Wall time per model evaluation (NFE) with and without P&P: the inner loop must add nothing beyond the NFEs.

Side by side in one process, median of repeats, on the tiny random-weight Wan (CPU):
  plain    50 Euler steps, --plan none              (50 NFE)
  pnp      50 steps, default plan 2-5:3,6-14:1, tau 0.25, early exit off (71 NFE)
and the same two with a free velocity (v = -z) to isolate the loop's own cost per NFE, on the tiny latent and
on the real Wan2.1 480x832x81 latent (noise drawn on the CPU, the gate, the merge).

    python benchmarks/refine_overhead.py [--repeats 5] [--frames 9 --size 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vmt.sampling.euler import sample_euler
from vmt.sampling.pnp import PredictPerturb, parse_plan

RESULTS = Path(__file__).resolve().parent / "results"


def timed_pair(fa, fb, repeats: int) -> tuple[float, float]:
    """Median seconds of fa and fb, interleaved so that load from other processes hits both alike.
    A function may return its own measured time (e.g. the denoise stage only) instead of None."""
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        for f, ts in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            own = f()
            ts.append(own if own is not None else time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from vmt.testing.tiny_wan import build_tiny_wan
    from vmt.backends.wan import WanBackend
    from vmt.generate import GenerationRequest, generate

    backend = WanBackend(build_tiny_wan("t2v"), None, torch.device("cpu"), torch.float32)
    req = GenerationRequest(prompt="a ball falls", num_frames=args.frames, height=args.size, width=args.size,
                            steps=args.steps, seed=0)
    plan = parse_plan("default").validate(args.steps)

    # Time spent inside the model separately, so that the loop's own cost (denoise time minus model time)
    # is measured directly instead of as a difference of two noisy totals.
    model_velocity = backend.velocity
    in_model = [0.0]

    def timed_velocity(z, sigma, cond, **kw):
        t0 = time.perf_counter()
        out = model_velocity(z, sigma, cond, **kw)
        in_model[0] += time.perf_counter() - t0
        return out

    backend.velocity = timed_velocity
    outside = {False: [], True: []}

    def model_run(with_pnp: bool):
        def fn():
            ivs = [PredictPerturb(plan, 0.25, certain_fraction=1.0)] if with_pnp else []
            in_model[0] = 0.0
            denoise = generate(backend, req, ivs, decode=False).timings["denoise"]
            outside[with_pnp].append(denoise - in_model[0])
            return denoise
        return fn

    shape = backend.latent_shape(args.frames, args.size, args.size)
    sig = backend.sigmas(args.steps)

    def free(latent_shape):
        z0 = torch.randn(latent_shape, generator=torch.Generator().manual_seed(0))

        def run(with_pnp: bool):
            def fn():
                ivs = [PredictPerturb(plan, 0.25, certain_fraction=1.0)] if with_pnp else []
                sample_euler(lambda z, s: -z, z0, sig, ivs)
            return fn
        return run

    nfe_plain, nfe_pnp = args.steps, plan.nfe(args.steps)
    rows = []
    real = (1, 16, 21, 60, 104)  # Wan2.1 latent of 480x832, 81 frames
    cases = (("tiny Wan denoise (CFG pair per NFE)", model_run, shape),
             ("free velocity v=-z, tiny latent (loop only)", free(shape), shape),
             ("free velocity v=-z, 480x832x81 latent (loop only)", free(real), real))
    for name, mk, lshape in cases:
        t_plain, t_pnp = timed_pair(mk(False), mk(True), args.repeats if lshape != real else 2)
        rows.append({
            "velocity": name, "latent": list(lshape), "nfe_plain": nfe_plain, "nfe_pnp": nfe_pnp,
            "ms_per_nfe_plain": round(1e3 * t_plain / nfe_plain, 4), "ms_per_nfe_pnp": round(1e3 * t_pnp / nfe_pnp, 4),
            "total_s_plain": round(t_plain, 4), "total_s_pnp": round(t_pnp, 4),
        })
        rows[-1]["per_nfe_ratio_pnp_over_plain"] = round(rows[-1]["ms_per_nfe_pnp"] / rows[-1]["ms_per_nfe_plain"], 3)
        rows[-1]["total_ratio"] = round(t_pnp / t_plain, 3)
        # what the P&P loop itself costs per inner evaluation, beyond the evaluation
        rows[-1]["loop_ms_per_extra_nfe"] = round(1e3 * (t_pnp - t_plain * nfe_pnp / nfe_plain) / (nfe_pnp - nfe_plain), 4)
        if mk is model_run:
            o_plain, o_pnp = statistics.median(outside[False]), statistics.median(outside[True])
            rows[-1]["outside_model_ms_plain"] = round(1e3 * o_plain, 3)
            rows[-1]["outside_model_ms_pnp"] = round(1e3 * o_pnp, 3)
            # the loop's own cost per extra NFE, measured outside the model
            rows[-1]["loop_ms_per_extra_nfe"] = round(1e3 * (o_pnp - o_plain) / (nfe_pnp - nfe_plain), 4)
            rows[-1]["loop_share_of_pnp_denoise"] = round(o_pnp / t_pnp, 4)
    cols = ("velocity", "nfe_plain", "nfe_pnp", "ms_per_nfe_plain", "ms_per_nfe_pnp", "per_nfe_ratio_pnp_over_plain",
            "total_ratio", "loop_ms_per_extra_nfe")
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    m = rows[0]
    print(f"tiny Wan: time outside the model per run {m['outside_model_ms_plain']} ms plain, "
          f"{m['outside_model_ms_pnp']} ms P&P ({100 * m['loop_share_of_pnp_denoise']:.2f}% of P&P denoise)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "refine_overhead.json"
    out.write_text(json.dumps({"args": vars(args), "device": "cpu", "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
