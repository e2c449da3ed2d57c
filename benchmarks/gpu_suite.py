"""One prepared run of vmt's memory and speed options on a real Wan architecture: seconds and peak memory.

On a GPU (preset "gpu"): the Wan2.1-1.3B transformer (30 blocks, 12 heads x 128, ffn 8960) with random
weights at 81 frames x 480x832 in bfloat16, then, while the time budget lasts, the 14B block shapes (40 x
5120). Timing and memory do not depend on the weights. The VAE and text encoder are minimal stand-ins with the
real latent (16 channels) and text (4096 x 512 tokens) widths. Measured, each with peak memory:
  refine        seconds per plain denoising step (CFG pair), and per model evaluation inside P&P; the
                published 50-step default plan (71 NFE) is extrapolated from them
  transfer      one guided step as released (reference AMF + 10 inner steps, forward+backward every 3rd),
                windowed vs global AMF, with and without gradient checkpointing
  transfer-i2v  the same guided step onto a photo: the architecture as image-to-video (36 input channels,
                the photo conditioning every pass), windowed AMF
  chain         a 3-segment long video (vmt longgen sample on Wan: each segment conditioned on the last frame
                of the one before), the I2V architecture saved and loaded as a user's folder: seconds per
                segment and peak memory
  options       --offload group (CUDA streams with and without checkpointing), --storage-dtype float8_e4m3fn,
                --attention-backend (each usable one of sage / flash / _flash_3 / _native_cudnn; sage has no
                backward, so its guided passes run on the fallback), --compile (inductor, last: compiling takes
                a minute)
Every case runs through vmt's own code (WanBackend with WanLoadOptions, generate, transfer); a failing case
(out of memory, a missing kernel) is recorded with its error and the suite goes on. Cases that would start
after --budget-s are recorded as skipped.

On the CPU (preset "cpu", what CI runs) the same cases run on a 4-block, 64-wide model at 9 x 64x96 in
float32; memory there is the peak resident set size above the case's start, sampled every 2 ms (RSS, with
glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the RSS; at this size activations are
within its ~50 MiB noise: benchmarks/checkpointing_memory.py measures checkpointing on the CPU), and --compile uses torch.compile's "eager" backend (no C++ toolchain needed).

On a lent GPU machine with torch, transformers and accelerate but no diffusers and no network, from the
project folder with a diffusers wheel placed beside it in .whl/ (here, once: `echo /.whl/ >>
.git/info/exclude; pip download --no-deps -d .whl diffusers==0.42.1`; the device call carries `.whl`):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/diffusers-*.whl
    PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_suite.py --out $OUT/results.json   # ~6-8 minutes on an H100

The rest of what it imports is in such images (numpy, safetensors, huggingface_hub, requests, filelock,
regex, tokenizers; no imageio-ffmpeg, OpenCV or SciPy is needed): the CPU preset was run in a venv holding only
those, with transformers 5.17, accelerate 1.15, huggingface_hub 1.33 and the wheel installed as above.

    python benchmarks/gpu_suite.py --preset cpu --out /tmp/suite.json             # here: ~1 minute
    python benchmarks/gpu_suite.py --archs wan2.1-1.3b --budget-s 300 --out r.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

# This checkout's vmt, not whichever one the interpreter has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA = "vmt.gpu_suite/1"
PRESETS = {
    "gpu": dict(archs="wan2.1-1.3b,wan2.1-14b", frames=81, height=480, width=832, dtype="bfloat16", steps=3,
                budget_s=400.0),
    "cpu": dict(archs="small", frames=9, height=64, width=96, dtype="float32", steps=2, budget_s=240.0),
}
PNP_DEFAULT_NFE = 71  # the published plan 2-5:3,6-14:1 on 50 steps
ATTENTION_CANDIDATES = ("sage", "flash", "_flash_3", "_native_cudnn")


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory of a block of work, in MiB above its start ("delta") and in total ("peak").

    CUDA: torch's allocator statistics (max_memory_allocated). CPU: the resident set size read from
    /proc/self/statm every 2 ms by a thread (RSS; includes allocator caching, so it is an upper bound).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.base = self.peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss_mib() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:  # not Linux: the process high-water mark (cannot be reset; less precise)
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss_mib())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            gc.collect()
            self.base = self.peak = self._rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss_mib())

    def as_dict(self) -> dict:
        return {"memory": "cuda max_memory_allocated" if self.device.type == "cuda" else "rss sampled 2 ms",
                "base_mib": round(self.base, 1), "peak_mib": round(self.peak, 1),
                "delta_mib": round(self.peak - self.base, 1)}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ cases
def reference_frames(frames: int, height: int, width: int) -> np.ndarray:
    """A smooth random texture translating 2 px right and 1 px down per frame: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(0)
    big = rng.random((height + frames + 8, width + 2 * frames + 8, 3))
    for _ in range(6):
        for axis in (0, 1):
            big = (big + np.roll(big, 1, axis) + np.roll(big, -1, axis)) / 3
    big = (big - big.min()) / (big.max() - big.min())
    out = [big[t:t + height, 2 * t:2 * t + width] for t in range(frames)]
    return (np.stack(out) * 255).round().astype(np.uint8)


def refine_case(backend, args, plan_text: str) -> dict:
    """Seconds per step of a short run (the first step, with warm-up, left out) and per model evaluation."""
    from vmt.generate import GenerationRequest, generate
    from vmt.sampling.pnp import PredictPerturb, parse_plan

    req = GenerationRequest(prompt="a red fox running through snow", num_frames=args.frames, height=args.height,
                            width=args.width, steps=args.steps, guidance_scale=5.0, seed=0)
    plan = parse_plan(plan_text).validate(args.steps)
    ivs = [PredictPerturb(plan, 0.25, certain_fraction=1.0)] if not plan.empty else []
    marks: list[float] = []
    nfe_at: list[int] = []

    def on_step(state) -> None:
        sync(backend.device)
        marks.append(time.perf_counter())
        nfe_at.append(backend.counts.nfe)

    backend.counts.nfe = backend.counts.dit_forward = backend.counts.dit_backward = 0
    sync(backend.device)
    t0 = time.perf_counter()
    generate(backend, req, ivs, on_step=on_step, decode=False)
    steps = np.diff([t0, *marks])
    nfes = np.diff([0, *nfe_at])
    later = slice(1, None) if len(steps) > 1 else slice(None)  # leave out the first (warm-up) step
    s_per_step = float(np.median(steps[later]))
    s_per_nfe = float(np.sum(steps[later]) / max(int(np.sum(nfes[later])), 1))
    return {"seconds_per_step": round(s_per_step, 4), "seconds_per_nfe": round(s_per_nfe, 4),
            "first_step_s": round(float(steps[0]), 4), "nfe": int(backend.counts.nfe),
            "dit_forward": int(backend.counts.dit_forward), "plan": str(plan)}


def transfer_case(backend, args, amf: str) -> dict:
    """One guided step as released: reference AMF + 10 inner steps with a forward+backward every 3rd. On an
    image-to-video backend the photo (the reference's last frame, mirrored) fixes the first frame."""
    from vmt.motion.guidance import GuidanceConfig
    from vmt.transfer import TransferRequest, transfer

    frames = reference_frames(args.frames, args.height, args.width)
    image = np.ascontiguousarray(frames[-1, :, ::-1]) if backend.is_i2v else None
    req = TransferRequest(prompt="a robot dancing", height=args.height, width=args.width, steps=1, seed=0)
    block = min(14, backend.geometry.num_layers - 1)
    cfg = GuidanceConfig(amf=amf, block=block, guided_steps=1, inner_steps=10, reuse_interval=3)
    backend.counts.nfe = backend.counts.dit_forward = backend.counts.dit_backward = 0
    notes: list[str] = []
    res = transfer(backend, frames, req, cfg, decode=False, notify=notes.append, image=image)
    st = res.timings
    return {"amf": amf, "block": block, "i2v": backend.is_i2v,
            "guided_step_s": round(st.get("guidance", 0) + st.get("reference_amf", 0), 4),
            "guidance_s": round(st.get("guidance", 0), 4), "reference_amf_s": round(st.get("reference_amf", 0), 4),
            "dit_forward": int(backend.counts.dit_forward), "dit_backward": int(backend.counts.dit_backward),
            "final_amf_loss": res.guidance[0]["final_amf_loss"] if res.guidance else None, "notes": notes}


def chain_case(master, args, workdir: Path) -> dict:
    """A 3-segment long video (vmt.runs.chain.WanChainRequest, the recall chain of `vmt longgen sample` on a
    Wan model) on the image-to-video architecture, saved to a folder and loaded as a user's model is: seconds
    per segment (sampling, decode), frames out, the chain's drift numbers."""
    from PIL import Image

    from vmt.runs.chain import WanChainRequest

    folder = workdir / "i2v-model"
    if not folder.is_dir():
        master.save_pretrained(folder)
    photo = workdir / "first.png"
    Image.fromarray(reference_frames(1, args.height, args.width)[0]).save(photo)
    m = args.frames
    request = WanChainRequest(model=str(folder), image=photo, prompt="a boat on a river", frames=3 * m - 2,
                              segment_frames=m, height=args.height, width=args.width, steps=args.steps,
                              plan="none", device=args.device, dtype=args.dtype)
    seconds: list[float] = []
    out = workdir / "chain.mp4"
    t0 = time.perf_counter()
    result = request.run(out, overwrite=True, on_segment=lambda j, n, status, s: seconds.append(round(s, 3)))
    return {"segments": result["segments"], "frames": result["frames"], "segment_s": seconds,
            "seconds_per_segment": round(sum(seconds[1:]) / max(len(seconds) - 1, 1), 4),  # the first warms up
            "wall_s": round(time.perf_counter() - t0, 3), "nfe": result["nfe"],
            "drift": {k: (result["drift"] or {}).get(k) for k in ("final_delta_e", "mean_seam")}}


def option_sets(device: torch.device, arch: str) -> list[tuple[str, dict]]:
    """(name, WanLoadOptions fields) in the order they run; the big architecture gets the memory ones only."""
    sets = [("default", {}), ("no-checkpointing", {"grad_checkpointing": False})]
    sets += [("group-offload", {"offload": "group"}),
             ("group-offload-streams", {"offload": "group", "grad_checkpointing": False}),
             ("float8-storage", {"storage_dtype": "float8_e4m3fn"})]
    if arch == "wan2.1-14b":
        return sets
    if device.type == "cuda":
        sets += [(f"attention-{n}", {"attention_backend": n}) for n in ATTENTION_CANDIDATES]
        sets.append(("compile", {"compile": True}))
    else:
        sets.append(("attention-_native_math", {"attention_backend": "_native_math"}))
        sets.append(("compile", {"compile": True, "compile_backend": "eager"}))
    # Last: it swaps the master for the image-to-video variant of the architecture.
    sets.append(("i2v", {}))
    return sets


def cases_for(name: str, arch: str) -> list[tuple[str, object]]:
    """The measurements of one option set: refine plain always; P&P with the defaults; guided windowed
    always, global AMF with and without checkpointing."""
    if name == "i2v":  # motion transfer onto a photo (vmt transfer --image); a long video on Wan
        return [("transfer-i2v-windowed", "windowed"), ("chain-3-segments", "chain")]
    out = [("refine-plain", "none")]
    if name == "default":
        out.append(("refine-pnp", "pnp"))
    out.append(("transfer-guided-windowed", "windowed"))
    if name in ("default", "no-checkpointing"):
        out.append(("transfer-guided-global", "global"))
    return out


def build_backend(master, device: torch.device, dtype: torch.dtype, options: dict):
    from vmt.backends.wan import WanBackend, WanLoadOptions

    pipe = copy.deepcopy(master)
    return WanBackend(pipe, None, device, dtype, WanLoadOptions(**options), place=True)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def run_suite(args) -> dict:
    from vmt.testing.tiny_wan import WAN_ARCHS, build_arch_wan

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    start = time.perf_counter()
    doc = {"schema": SCHEMA, "device": _device_name(device), "dtype": args.dtype,
           "size": {"frames": args.frames, "height": args.height, "width": args.width}, "steps": args.steps,
           "budget_s": args.budget_s, "versions": _versions(), "cases": []}
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="vmt-gpu-suite-"))
    for arch in [a for a in args.archs.split(",") if a]:
        if arch not in WAN_ARCHS:
            raise SystemExit(f"unknown --archs entry {arch!r}; use {', '.join(WAN_ARCHS)}")
        if time.perf_counter() - start > args.budget_s:
            doc["cases"].append({"arch": arch, "status": "skipped", "reason": "time budget"})
            continue
        t0 = time.perf_counter()
        # Random init on the device (fast), kept on the CPU as the master each option set copies.
        master = build_arch_wan(arch, device=device if device.type == "cuda" else "cpu", dtype=dtype).to("cpu")
        free_memory(device)
        doc.setdefault("build_s", {})[arch] = round(time.perf_counter() - t0, 2)
        only = set(args.options.split(",")) if args.options else None
        for name, opts in option_sets(device, arch):
            if only is not None and name not in only:
                continue
            if name == "i2v":  # the same architecture as image-to-video: its own random-weight master
                del master
                free_memory(device)
                master = build_arch_wan(arch, device=device if device.type == "cuda" else "cpu", dtype=dtype,
                                        i2v=True).to("cpu")
            backend, build_error = None, None
            for case, what in cases_for(name, arch):
                row = {"arch": arch, "options": name, "case": case}
                if time.perf_counter() - start > args.budget_s:
                    row.update(status="skipped", reason="time budget")
                elif build_error is not None:
                    row.update(status="error", error=build_error)
                else:
                    try:
                        if backend is None:  # one copy of the model per option set, its cases share it
                            backend = build_backend(master, device, dtype, opts)
                        with PeakMemory(device) as mem:
                            if case.startswith("refine"):
                                plan = "none" if what == "none" else f"0-{args.steps - 1}:1"
                                row.update(refine_case(backend, args, plan))
                            elif what == "chain":  # loads its own copy from a folder, as a user's run does
                                del backend
                                backend = None
                                free_memory(device)
                                row.update(chain_case(master, args, workdir))
                            else:
                                row.update(transfer_case(backend, args, what))
                        row.update(mem.as_dict(), status="ok")
                        if backend is not None:
                            row["model"] = backend.describe()
                    except Exception as e:  # one failing case (OOM, missing kernel) must not end the suite
                        row.update(status="oom" if is_oom(e) else "error", error=f"{type(e).__name__}: {e}"[:500])
                        if backend is None:
                            build_error = row["error"]
                        if args.debug:
                            traceback.print_exc()
                    free_memory(device)
                doc["cases"].append(row)
                _print_row(row)
            del backend
            free_memory(device)
        del master
        free_memory(device)
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    doc["summary"] = summarize(doc["cases"])
    doc["wall_s"] = round(time.perf_counter() - start, 2)
    return doc


def summarize(cases: list[dict]) -> dict:
    """Ratios the README quotes: checkpointing's memory and time, P&P's default plan, per architecture."""
    out: dict = {}
    ok = {(c["arch"], c["options"], c["case"]): c for c in cases if c.get("status") == "ok"}
    for arch in sorted({c["arch"] for c in cases}):
        s: dict = {}
        plain = ok.get((arch, "default", "refine-plain"))
        pnp = ok.get((arch, "default", "refine-pnp"))
        if plain:
            s["refine_50_steps_s"] = round(50 * plain["seconds_per_step"], 1)
        if pnp:
            s["refine_default_plan_s_estimate"] = round(PNP_DEFAULT_NFE * pnp["seconds_per_nfe"], 1)
        for amf in ("windowed", "global"):
            a = ok.get((arch, "default", f"transfer-guided-{amf}"))
            b = ok.get((arch, "no-checkpointing", f"transfer-guided-{amf}"))
            if a and b:
                s[f"checkpointing_{amf}_delta_memory_ratio"] = round(a["delta_mib"] / max(b["delta_mib"], 1e-9), 3)
                s[f"checkpointing_{amf}_time_ratio"] = round(a["guided_step_s"] / max(b["guided_step_s"], 1e-9), 3)
        out[arch] = s
    return out


def _print_row(row: dict) -> None:
    keys = ("seconds_per_step", "seconds_per_nfe", "guided_step_s", "peak_mib", "delta_mib")
    vals = " ".join(f"{k}={row[k]}" for k in keys if k in row)
    extra = row.get("error", row.get("reason", ""))
    print(f"{row['arch']:12s} {row['options']:26s} {row['case']:26s} {row['status']:7s} {vals} {extra}",
          flush=True)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict:
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                    help="auto: gpu when CUDA is available, else cpu")
    ap.add_argument("--archs", help="comma-separated: wan2.1-1.3b, wan2.1-14b, small")
    ap.add_argument("--frames", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--dtype")
    ap.add_argument("--steps", type=int, help="denoising steps per refine case (>= 2)")
    ap.add_argument("--budget-s", type=float, help="start no case after this many seconds")
    ap.add_argument("--options", help="comma-separated option sets to run (default: all), e.g. default,float8-storage")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, required=True, help="JSON results")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    preset = args.preset if args.preset != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    for k, v in PRESETS[preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.device = args.device or ("cuda" if preset == "gpu" else "cpu")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    doc = run_suite(args)
    doc["preset"] = preset
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc["summary"], indent=1))
    print(f"wrote {args.out} ({doc['wall_s']} s)")
    return 0


if __name__ == "__main__":
    # CPU memory is read as RSS: a fixed mmap threshold makes glibc return every freed block above 64 KiB to
    # the system at once, so RSS follows live tensors instead of the allocator's cache (set before start).
    if sys.platform == "linux" and "MALLOC_MMAP_THRESHOLD_" not in os.environ and not torch.cuda.is_available():
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    raise SystemExit(main())
