"""CPU memory of one guided forward+backward (transfer's latent gradient) with and without gradient checkpointing.

Each mode runs in a fresh process (so neither inherits the other's allocator state) on the "mid" Wan
architecture of vmt.testing.tiny_wan (4 heads x 128, ffn 2048, 8 blocks, random weights), float32, capture
block 6 (blocks 0-6 run), 17 frames x 256x256 (5 x 16 x 16 = 1280 tokens), FastVMT's windowed AMF loss.
Reported per mode:
  rss_delta_mib   peak resident set size during the forward+backward minus the RSS just before it, sampled
                  every 2 ms, with glibc's mmap threshold fixed at 64 KiB (freed tensors leave the RSS at once)
  saved_mib       bytes of the tensors autograd keeps for the backward (storages counted once, weights left out; saved-tensor
                  hooks; inside a checkpointed block checkpointing's own hooks take over, so this is what
                  stays resident until the backward)
  seconds         wall time of the forward+backward (median of 3)
and the same latent gradient in both (max abs difference).

    OMP_NUM_THREADS=1 python benchmarks/checkpointing_memory.py       # ~2 minutes; benchmarks/results/...json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FRAMES, SIZE, BLOCK = 17, 256, 6


def child(mode: str, grad_path: str) -> dict:
    from benchmarks.gpu_suite import PeakMemory
    from vmt.backends.wan import WanBackend, WanLoadOptions
    from vmt.motion.guidance import GuidanceConfig, MotionGuidance
    from vmt.testing.tiny_wan import build_arch_wan

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pipe = build_arch_wan("mid")
    backend = WanBackend(pipe, None, torch.device("cpu"), torch.float32,
                         WanLoadOptions(grad_checkpointing=mode == "checkpointing"), place=True)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(backend.latent_shape(FRAMES, SIZE, SIZE), generator=g)
    noise = torch.randn(z.shape, generator=g)
    cond, cond_ref = backend.encode_prompt("a cat", "", 1.0), backend.encode_prompt("", "", 1.0)
    mg = MotionGuidance(backend, GuidanceConfig(block=BLOCK), z, cond, cond_ref, noise,
                        backend.token_grid(FRAMES, SIZE, SIZE))
    sigma = torch.tensor(0.8)
    ref = mg.reference_amf(sigma)
    zz = (z + 0.1 * noise).requires_grad_(True)
    saved = [0]
    weights = {p.untyped_storage().data_ptr() for p in backend.pipe.transformer.parameters()}

    seen: set[int] = set()

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:  # weights are resident anyway; views share one storage
            seen.add(ptr)
            saved[0] += t.untyped_storage().nbytes()
        return t

    with backend.frozen():
        with PeakMemory(torch.device("cpu")) as mem:
            t0 = time.perf_counter()
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, _ = mg.loss(zz, sigma, ref)
                (grad,) = torch.autograd.grad(loss, [zz])
            times = [time.perf_counter() - t0]
        for _ in range(2):  # time: the median of three (the machine is shared); memory: the first run
            t0 = time.perf_counter()
            with torch.enable_grad():
                torch.autograd.grad(mg.loss(zz, sigma, ref)[0], [zz])
            times.append(time.perf_counter() - t0)
    seconds = sorted(times)[1]
    torch.save(grad, grad_path)
    m = mem.as_dict()
    return {"mode": mode, "rss_delta_mib": m["delta_mib"], "rss_base_mib": m["base_mib"],
            "saved_mib": round(saved[0] / 2**20, 1), "seconds": round(seconds, 3), "loss": float(loss)}


def main() -> None:
    import tempfile

    from benchmarks._common import save

    rows, grads = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("no-checkpointing", "checkpointing"):
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            path = str(Path(tmp) / f"{mode}.pt")
            out = subprocess.run([sys.executable, __file__, "--child", mode, path], env=env, check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            grads[mode] = torch.load(path)
            print(rows[-1])
    plain, ckpt = rows
    doc = {"arch": "mid (4x128 heads, ffn 2048, 8 blocks)", "frames": FRAMES, "size": SIZE, "block": BLOCK,
           "tokens": 5 * (SIZE // 16) ** 2, "dtype": "float32", "memory": "RSS sampled every 2 ms, "
           "MALLOC_MMAP_THRESHOLD_=65536; saved = autograd saved-tensor bytes", "rows": rows,
           "rss_ratio": round(ckpt["rss_delta_mib"] / plain["rss_delta_mib"], 3),
           "saved_ratio": round(ckpt["saved_mib"] / plain["saved_mib"], 3),
           "time_ratio": round(ckpt["seconds"] / plain["seconds"], 3),
           "grad_max_abs_diff": float((grads["checkpointing"] - grads["no-checkpointing"]).abs().max())}
    print({k: doc[k] for k in ("rss_ratio", "saved_ratio", "time_ratio", "grad_max_abs_diff")})
    save("checkpointing_memory", doc)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
    else:
        main()
