"""Time per job of `vmt refine --batch` (one process, one model load) vs a shell loop of single `vmt refine` runs.

Both sides run the real CLI as subprocesses (what a user's shell loop does), on the same jobs, alternating:
  loop    N x `vmt refine -p PROMPT --seed S -o out_i.mp4`   (N processes: N imports, N model loads)
  batch   `vmt refine --batch jobs.jsonl -o out/`            (1 process, 1 load)
on two models saved with random weights:
  tiny    the tests' tiny Wan (vmt.testing.tiny_wan)
  1.3b    the Wan2.1-T2V-1.3B transformer and the Wan2.1 VAE at their published sizes, stored in bfloat16; the
          5.7B-parameter UMT5-XXL text encoder is replaced by a one-layer UMT5 of the same width (4096), which
          this machine can hold; a real run's load is longer by that encoder.
The batch's outputs are checked byte-identical to the loop's. Reported: seconds per job, the ratio, the load
time per process (the single runs' sidecars), and the time saved per job.

    python benchmarks/batch.py [--jobs 6] [--jobs-13b 3] [--skip-13b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import save  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SIZE = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "4", "--plan", "none", "--device",
        "cpu", "--quiet"]


def save_wan13b(folder: Path) -> Path:
    """Wan2.1-T2V-1.3B transformer + Wan2.1 VAE (random weights) + a one-layer 4096-wide UMT5 stand-in."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from benchmarks.memory_budget import WAN_1_3B
    from vmt.testing.tiny_wan import _tokenizer

    torch.manual_seed(0)
    tok = _tokenizer()
    text = UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=4096, d_kv=64, d_ff=1024, num_layers=1,
                                       num_heads=8, relative_attention_num_buckets=32, pad_token_id=0,
                                       eos_token_id=1, decoder_start_token_id=0)).eval()
    pipe = WanPipeline(tokenizer=tok, text_encoder=text.to(torch.bfloat16), vae=AutoencoderKLWan().eval(),
                       transformer=WanTransformer3DModel(**WAN_1_3B).eval().to(torch.bfloat16),
                       scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                         flow_shift=3.0, num_train_timesteps=1000))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def vmt(*args: str) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=ENV, capture_output=True,
                         text=True)
    if res.returncode != 0:
        raise SystemExit(f"vmt {' '.join(args[:3])} failed: {res.stderr[-2000:]}")
    return time.perf_counter() - t0


def compare(name: str, model: Path, jobs: int, work: Path, extra: list[str]) -> dict:
    """One loop of single runs and one batch over the same jobs; outputs must match byte for byte."""
    spec = [{"prompt": f"a ball bouncing, take {i}", "seed": i} for i in range(jobs)]
    jobs_file = work / f"{name}.jsonl"
    jobs_file.write_text("".join(json.dumps(j) + "\n" for j in spec))
    loop_dir, batch_dir = work / f"{name}-loop", work / f"{name}-batch"
    loop_dir.mkdir()
    t_loop = 0.0
    for i, job in enumerate(spec):
        t_loop += vmt("refine", "-p", job["prompt"], "--seed", str(job["seed"]), "-o", str(loop_dir / f"{i:04d}.mp4"),
                      "--model", str(model), *SIZE, *extra)
    t_batch = vmt("refine", "--batch", str(jobs_file), "-o", str(batch_dir), "--model", str(model), *SIZE, *extra)
    for i in range(jobs):
        a, b = (loop_dir / f"{i:04d}.mp4").read_bytes(), (batch_dir / f"{i:04d}.mp4").read_bytes()
        if a != b:
            raise SystemExit(f"{name}: job {i} differs between the loop and the batch")
    loads = [json.loads((loop_dir / f"{i:04d}.json").read_text())["timings_s"]["load"] for i in range(jobs)]
    header = json.loads((batch_dir / "manifest.jsonl").read_text().splitlines()[0])["batch"]
    per_loop, per_batch = t_loop / jobs, t_batch / jobs
    row = {"model": name, "jobs": jobs, "loop_s_per_job": round(per_loop, 3), "batch_s_per_job": round(per_batch, 3),
           "ratio_loop_over_batch": round(per_loop / per_batch, 2),
           "saved_s_per_job": round(per_loop - per_batch, 3),
           "load_s_per_single_run": round(sorted(loads)[len(loads) // 2], 3), "batch_load_s": header["load_s"],
           "identical_outputs": True}
    print(f"{name:5s} {jobs} jobs: loop {per_loop:.2f} s/job, batch {per_batch:.2f} s/job "
          f"({row['ratio_loop_over_batch']}x); model load {row['load_s_per_single_run']:.2f} s per single run, "
          f"saved {row['saved_s_per_job']:.2f} s/job")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--jobs-13b", type=int, default=3)
    ap.add_argument("--skip-13b", action="store_true")
    args = ap.parse_args()
    from vmt.testing.tiny_wan import save_tiny_wan

    rows = []
    with tempfile.TemporaryDirectory(prefix="vmt-batch-bench-") as tmp:
        work = Path(tmp)
        rows.append(compare("tiny", save_tiny_wan(work / "tiny-model", "t2v"), args.jobs, work, []))
        if not args.skip_13b:
            t0 = time.perf_counter()
            model = save_wan13b(work / "wan13b-model")
            print(f"saved the 1.3B-architecture folder in {time.perf_counter() - t0:.0f} s")
            rows.append(compare("1.3b", model, args.jobs_13b, work, ["--dtype", "bfloat16"]))
            # The dry run's memory estimate for this architecture at the release's size (no weights load).
            res = subprocess.run([sys.executable, "-m", "cli.main", "refine", "-p", "x", "-o", str(work / "x.mp4"),
                                  "--model", str(model), "--dry-run", "--format", "json"], cwd=ROOT, env=ENV,
                                 capture_output=True, text=True)
            estimate = json.loads(res.stdout)["gpu_memory_estimate"] if res.returncode == 0 else res.stderr
            print(f"dry-run estimate, 81x480x832 bf16 (UMT5 stand-in): {estimate}")
            rows[-1]["dry_run_memory_81x480x832"] = estimate
    save("batch", {"size": "9x32x32, 4 steps, plan none, CPU, 1 thread per process", "rows": rows})


if __name__ == "__main__":
    main()
