"""Windowed (FastVMT) vs global (DiTFlow) AMF at the release's real scale, on synthetic q/k with known motion.

21 latent frames, 30x52 tokens, head dim 128, 12 heads averaged (each head = the shared moving field + its
own noise). Times forward and forward+backward (median of repeats, same process), peak extra memory of
forward+backward (fresh subprocess per method: peak RSS over the inputs' baseline; on CUDA the allocator's
peak), and the error against the known displacement where the match is unambiguous. Repeats interleave
the methods. Global runs twice: as fused attention (the S x S probabilities never stored) and materialized
(the probabilities kept for backward, as explicit attention maps are in DiTFlow).

    python benchmarks/amf.py [--repeats 3] [--threads 1]

On a CPU shared with other jobs use --threads 1: with 2 threads every op waits for both threads to be
scheduled, so a method made of many ops (windowed: a loop over band positions) is slowed far more than one
made of a few large ones (global), and the timing measures the machine's load rather than the work.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

# This checkout's vmt, not whichever one the interpreter has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

F, H, W, D, HEADS = 21, 30, 52, 128, 12
SPAN, TILE, WINDOW = 4, (3, 4), 21


def make_inputs(device="cpu"):
    from vmt.testing.motion_fields import moving_fields_qk, region_labels

    labels = region_labels(H, W, "quads")
    vel = torch.tensor([[0.0, 1.0], [1.0, -1.0], [0.5, 0.25], [-0.75, 0.5]])  # integer and sub-token, tokens/frame
    field, _ = moving_fields_qk(F, H, W, D, vel, labels, sharpness=14.0, seed=0)
    g = torch.Generator().manual_seed(1)
    noise = 0.5 * field.norm(dim=-1, keepdim=True).mean() / D**0.5
    q = sum(field + noise * torch.randn(field.shape, generator=g) for _ in range(HEADS)) / HEADS
    k = sum(field + noise * torch.randn(field.shape, generator=g) for _ in range(HEADS)) / HEADS
    return q.to(device), k.to(device), vel, labels


def run(method: str, q, k, chunk: int):
    from vmt.motion.amf import all_pairs, global_amf, window_pairs, windowed_amf

    if method == "windowed":
        return windowed_amf(q, k, span=SPAN, tile=TILE, window=WINDOW, chunk=chunk).flow, window_pairs(F, SPAN)
    pairs = window_pairs(F, SPAN) if method == "global-same-pairs" else all_pairs(F)
    return global_amf(q, k, pairs, chunk=chunk, materialize=method == "global-materialized"), pairs


def timed(fn, repeats, device):
    ts = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _memory_child(method, chunk, threads, device, conn):
    torch.set_num_threads(threads)
    dev = torch.device(device)
    q, k, _, _ = make_inputs(dev)
    q.requires_grad_(True)
    k.requires_grad_(True)
    # Reset the kernel's peak-RSS mark (VmHWM) so the peak below is that of the AMF alone.
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base_cuda = torch.cuda.memory_allocated(dev)
    flow, _ = run(method, q, k, chunk)
    flow.pow(2).mean().backward()
    if dev.type == "cuda":
        conn.send((torch.cuda.max_memory_allocated(dev) - base_cuda) / 2**20)
    else:
        conn.send((_status_kib("VmHWM") - base) / 1024)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(method, chunk, threads, device):
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_memory_child, args=(method, chunk, threads, device, b))
    # A fixed mmap threshold (it otherwise grows with every large block freed, up to 32 MiB) makes glibc map
    # every block over 64 KiB on its own and unmap it when freed: resident memory then follows the live
    # tensors instead of depending on which heap holes earlier allocations left behind.
    old = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        p.start()
    finally:
        if old is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = old
    val = a.recv()
    p.join()
    return val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=8, help="pairs per batched matmul (both methods)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    from vmt.testing.motion_fields import true_flow, valid_mask

    q, k, vel, labels = make_inputs(dev)
    rows = {}
    flows = {}
    methods = ("windowed", "global-same-pairs", "global", "global-materialized")
    qg, kg = q.clone().requires_grad_(True), k.clone().requires_grad_(True)

    def fwd(method):
        with torch.no_grad():
            run(method, q, k, args.chunk)

    def fwd_bwd(method):
        f, _ = run(method, qg, kg, args.chunk)
        f.pow(2).mean().backward()

    # Repeats interleave the methods, so that a change in the load of a shared machine hits all of them alike.
    t_fwd = {m: [] for m in methods}
    t_fb = {m: [] for m in methods}
    for _ in range(args.repeats):
        for method in methods:
            t_fwd[method].append(timed(lambda m=method: fwd(m), 1, dev))
            t_fb[method].append(timed(lambda m=method: fwd_bwd(m), 1, dev))
    for method in methods:
        with torch.no_grad():
            flow, pairs = run(method, q, k, args.chunk)
        t_fwd_m, t_fb_m = statistics.median(t_fwd[method]), statistics.median(t_fb[method])
        mem = peak_extra_mib(method, args.chunk, args.threads, args.device)
        truth = true_flow(pairs, vel, labels).to(flow.device)
        ok = valid_mask(pairs, vel, labels, margin=2.0).to(flow.device)
        inter = (pairs[:, 0] != pairs[:, 1]).to(flow.device)[:, None] & ok
        err = (flow - truth).norm(dim=-1)
        flows[method] = (flow, pairs)
        rows[method] = {"pairs": len(pairs), "forward_s": round(t_fwd_m, 3), "fwd_bwd_s": round(t_fb_m, 3),
                        "peak_extra_mib_fwd_bwd": round(mem, 1), "err_mean_tokens": round(float(err[inter].mean()), 4),
                        "err_max_tokens": round(float(err[inter].max()), 4),
                        "within_0.5": round(float((err[inter] < 0.5).float().mean()), 4),
                        "checked_queries": int(inter.sum())}
    # agreement windowed vs global on the windowed pairs
    fw, pw = flows["windowed"]
    fg, _ = flows["global-same-pairs"]
    ok = valid_mask(pw, vel, labels, margin=2.0).to(fw.device)
    agree = float((fw - fg).norm(dim=-1)[ok].max())
    g, w = rows["global"], rows["windowed"]
    ratios = {
        "time_forward_global_over_windowed": round(g["forward_s"] / w["forward_s"], 2),
        "time_fwd_bwd_global_over_windowed": round(g["fwd_bwd_s"] / w["fwd_bwd_s"], 2),
        "memory_global_over_windowed": round(g["peak_extra_mib_fwd_bwd"] / max(w["peak_extra_mib_fwd_bwd"], 1e-3), 2),
        "time_forward_global_same_pairs_over_windowed": round(rows["global-same-pairs"]["forward_s"] / w["forward_s"], 2),
        "time_fwd_bwd_global_materialized_over_windowed": round(
            rows["global-materialized"]["fwd_bwd_s"] / w["fwd_bwd_s"], 2),
        "memory_global_materialized_over_windowed": round(
            rows["global-materialized"]["peak_extra_mib_fwd_bwd"] / max(w["peak_extra_mib_fwd_bwd"], 1e-3), 2),
        "max_abs_diff_windowed_vs_global_tokens": round(agree, 4),
    }
    print(f"AMF at {F} frames x {H}x{W} tokens, D={D}, {HEADS} heads averaged; device {dev}, "
          f"{args.threads} threads, chunk {args.chunk}, median of {args.repeats}")
    print(f"{'method':<20}{'pairs':>6}{'fwd s':>9}{'fwd+bwd s':>11}{'peak MiB':>10}{'err mean':>10}{'err max':>9}"
          f"{'<0.5 tok':>10}")
    for m, r in rows.items():
        print(f"{m:<20}{r['pairs']:>6}{r['forward_s']:>9.3f}{r['fwd_bwd_s']:>11.3f}{r['peak_extra_mib_fwd_bwd']:>10.1f}"
              f"{r['err_mean_tokens']:>10.4f}{r['err_max_tokens']:>9.4f}{r['within_0.5']:>10.4f}")
    for k_, v in ratios.items():
        print(f"  {k_}: {v}")
    out = Path(__file__).resolve().parent / "results" / "amf.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {"frames": F, "grid": [H, W], "head_dim": D, "heads": HEADS, "span": SPAN,
                                          "tile": list(TILE), "window": WINDOW, "chunk": args.chunk,
                                          "threads": args.threads, "repeats": args.repeats, "device": str(dev),
                                          "machine": platform.processor() or platform.machine()},
                               "rows": rows, "ratios": ratios}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
