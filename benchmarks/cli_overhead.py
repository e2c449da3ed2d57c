"""CLI and sampling-loop overhead on a tiny random-weight Wan (weights do not matter for timing).

    python benchmarks/cli_overhead.py [--repeats 5]

1. `vmt --help` wall time (fresh interpreter each run).
2. Generation (prompt encoding, denoising loop, VAE decode) through vmt.generate vs a bare diffusers
   WanPipeline call with FlowMatchEulerDiscreteScheduler, same seed/steps/CFG/shift, same process.
3. `vmt refine` end to end (interpreter start, imports, load, generate, write mp4 + sidecar).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import median_time, save  # noqa: E402

SIZE = dict(num_frames=17, height=64, width=64)
STEPS = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    from vmt.testing.tiny_wan import save_tiny_wan
    from vmt.backends.wan import WanBackend
    from vmt.generate import GenerationRequest, generate

    torch.set_num_threads(1)
    py = sys.executable

    def help_run():
        subprocess.run([py, "-m", "cli.main", "--help"], cwd=ROOT, capture_output=True, check=True)

    t_help = median_time(help_run, args.repeats)

    with tempfile.TemporaryDirectory() as d:
        folder = save_tiny_wan(Path(d) / "tiny", "t2v")
        backend = WanBackend.from_pretrained(str(folder))
        pipe = WanPipeline.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
        req = GenerationRequest(prompt="a fox", negative_prompt="blur", steps=STEPS, guidance_scale=5.0,
                                shift=3.0, seed=0, grid="euler", **SIZE)  # diffusers runs FlowMatchEuler

        def run_vmt():
            generate(backend, req)

        def run_diffusers():
            pipe(prompt="a fox", negative_prompt="blur", num_inference_steps=STEPS, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="np", **SIZE)

        # Interleave the two so that machine noise hits both alike.
        t_vmt, t_diff = [], []
        for _ in range(args.repeats):
            t_vmt.append(median_time(run_vmt, 1, warmup=0))
            t_diff.append(median_time(run_diffusers, 1, warmup=0))
        t_vmt.sort()
        t_diff.sort()
        tv, td = t_vmt[len(t_vmt) // 2], t_diff[len(t_diff) // 2]

        out = Path(d) / "o.mp4"
        cli = [py, "-m", "cli.main", "refine", "--prompt", "a fox", "--model", str(folder), "-o", str(out),
               "--steps", str(STEPS), "--num-frames", "17", "--height", "64", "--width", "64", "--quiet",
               "--overwrite"]
        ends = []
        for _ in range(max(3, args.repeats // 2)):
            t0 = time.perf_counter()
            subprocess.run(cli, cwd=ROOT, check=True, capture_output=True)
            ends.append(time.perf_counter() - t0)
        t_cli = sorted(ends)[len(ends) // 2]

    print(f"vmt --help                      {t_help * 1000:8.1f} ms (median of {args.repeats})")
    print(f"generate, vmt loop              {tv * 1000:8.1f} ms")
    print(f"generate, diffusers WanPipeline {td * 1000:8.1f} ms")
    print(f"overhead ratio vmt / diffusers  {tv / td:8.3f}")
    print(f"vmt refine end to end           {t_cli:8.2f} s (tiny model: mostly interpreter + library imports)")
    save("cli_overhead", {
        "repeats": args.repeats, "steps": STEPS, **SIZE,
        "help_ms": round(t_help * 1000, 1), "generate_vmt_ms": round(tv * 1000, 1),
        "generate_diffusers_ms": round(td * 1000, 1), "ratio_vmt_over_diffusers": round(tv / td, 3),
        "refine_end_to_end_s": round(t_cli, 2),
    })


if __name__ == "__main__":
    main()
