"""Device, dtype, seeding and resource accounting shared by every command."""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vmt.errors import VmtUsageError, param

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str = "auto"):
    """'auto' picks CUDA when available, else CPU. Asking for CUDA on a machine without it is an error."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise VmtUsageError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VmtUsageError(f"{param('device')} {device} was asked for but torch sees no CUDA GPU; use "
                            f"{param('device')} cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device) -> torch.dtype:  # noqa: F821
    """'auto' is bfloat16 on CUDA and float32 on CPU (CPU half precision is slow and lossy)."""
    import torch

    if dtype not in DTYPES:
        raise VmtUsageError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def make_generator(seed: int) -> torch.Generator:  # noqa: F821
    """A CPU generator: noise is drawn on the CPU and moved, so a seed gives the same start on any device."""
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))


def peak_memory(device) -> dict[str, float]:
    """Peak memory so far in MiB: process resident set and, on CUDA, allocated device memory."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"host_peak_rss_mib": round(rss_kib / 1024, 1)}
    if getattr(device, "type", None) == "cuda":
        import torch

        out["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["cuda_peak_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


def versions() -> dict[str, str]:
    """Versions of the packages that decide a result."""
    import importlib.metadata as md

    import vmt

    out = {"vmt": vmt.__version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "diffusers", "transformers", "numpy", "imageio-ffmpeg"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class Timer:
    """Wall time per named stage, in seconds. CUDA work is synchronised at stage ends."""

    stages: dict[str, float] = field(default_factory=dict)
    sync_cuda: bool = False

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync_cuda:
                import torch

                torch.cuda.synchronize()
            self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t0, 4)
