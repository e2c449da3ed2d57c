"""Memory and speed features of diffusers applied to a loaded Wan pipeline, kept correct in vmt's inner loops.

What is applied (each one a diffusers feature; nothing here re-implements them):
  gradient checkpointing  `enable_gradient_checkpointing` with a per-block function (`BlockCheckpointing`):
                          the guided forward keeps only each block's input and recomputes the block in the
                          backward. The capture block itself runs plainly: its forward ends inside attn1
                          (truncation raises there), and what torch's checkpoint does with a region that
                          ended in an exception is not specified (it gave the same gradients when tried).
  group offload           `enable_group_offload`, block level, one block per group; CUDA streams only without
                          checkpointing (the recomputation in the backward runs the blocks in reverse order,
                          against the stream's forward-order prefetch).
  layerwise casting       `enable_layerwise_casting`: weights stored in a float8 dtype, computed in the
                          transformer's dtype.
  attention backend       `set_attention_backend`; guided passes need a backward, so a backend without one
                          (probed, see `has_backward`) is swapped for `GUIDED_FALLBACK` around them.
  regional compilation    `compile_repeated_blocks` (each WanTransformerBlock compiled once, reused by all).
  LoRA                    `load_lora_weights` (diffusers' Wan LoRA layout, PEFT backend), per expert of a
                          two-expert model, scales by `set_adapters`; `unload_lora_weights` restores the model.

Step caches (FirstBlockCache, MagCache, TaylorSeer) are not applied: see docs/DESIGN.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vmt.errors import VmtError, VmtUsageError, param

STORAGE_DTYPES = ("float8_e4m3fn", "float8_e5m2")
GUIDED_FALLBACK = "native"  # torch SDPA: differentiable on every device


class BlockCheckpointing:
    """The checkpoint function handed to diffusers: recompute every block in the backward except those in
    `plain` (module ids), which run as usual (their activations are kept)."""

    def __init__(self) -> None:
        self.plain: set[int] = set()
        self.calls = 0  # blocks run under checkpointing (tests and benchmarks read it)

    def __call__(self, module: torch.nn.Module, *args):
        if id(module) in self.plain:
            return module(*args)
        self.calls += 1
        # non-reentrant: gradients reach inputs that are not block arguments (the captured q/k's graph)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    @contextmanager
    def run_plain(self, module: torch.nn.Module) -> Iterator[None]:
        self.plain.add(id(module))
        try:
            yield
        finally:
            self.plain.discard(id(module))


def enable_checkpointing(transformer) -> BlockCheckpointing:
    """Turn on diffusers' gradient checkpointing of the transformer blocks (active only in forwards with grad
    enabled, i.e. vmt's guided passes; plain sampling runs under no_grad and is unchanged)."""
    fn = BlockCheckpointing()
    transformer.enable_gradient_checkpointing(gradient_checkpointing_func=fn)
    return fn


def storage_dtype(name: str | None) -> torch.dtype | None:
    """A storage dtype name (the `storage_dtype` option) -> torch dtype (None: weights stored in the compute
    dtype)."""
    if name in (None, "", "none"):
        return None
    if name not in STORAGE_DTYPES:
        raise VmtUsageError(f"{param('storage_dtype')} {name!r}: use none or one of "
                            f"{', '.join(STORAGE_DTYPES)}")
    return getattr(torch, name)


def attention_backends() -> list[str]:
    """Names diffusers accepts for `set_attention_backend` (whether usable here is checked on use)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(m.value for m in AttentionBackendName)


def check_attention_backend(name: str | None) -> None:
    """Raise VmtUsageError unless diffusers knows the backend name (cheap: no model needed)."""
    if name in (None, ""):
        return
    known = attention_backends()
    if name.lower() not in known:
        raise VmtUsageError(f"{param('attention_backend')} {name!r}: use one of {', '.join(known)}")


def set_attention_backend(transformer, name: str) -> None:
    """diffusers' set_attention_backend, its failures (missing package, unusable here) as one-line errors.

    diffusers also makes the backend the process-wide default; that is undone (the transformer's processors
    keep it explicitly), so another model in the same process keeps diffusers' default.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    try:
        transformer.set_attention_backend(name.lower())
    except (RuntimeError, ValueError, ImportError) as e:
        raise VmtError(f"{param('attention_backend')} {name}: {e}") from e
    finally:
        _AttentionBackendRegistry.set_active_backend(active)


def current_backend(transformer) -> str | None:
    """The attention backend the transformer's processors use (None: diffusers' default)."""
    for m in transformer.modules():
        b = getattr(getattr(m, "processor", None), "_attention_backend", None)
        if b is not None:
            return getattr(b, "value", str(b))
    return None


def default_backend() -> str:
    """diffusers' process-wide attention backend (DIFFUSERS_ATTN_BACKEND; "native" unless set), used by
    processors that name none."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    b = _AttentionBackendRegistry._active_backend
    return getattr(b, "value", str(b))


_BACKWARD_PROBES: dict[tuple, bool] = {}


def has_backward(name: str, heads: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether attention backend `name` gives gradients to q, k and v: a 16-token call with grad, backward.

    A backend without autograd either raises in backward or returns an output that does not require grad;
    the latter would silently drop the attention's share of the guidance gradient, so both count as none.
    """
    key = (name, heads, head_dim, str(device), dtype)
    if key in _BACKWARD_PROBES:
        return _BACKWARD_PROBES[key]
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 16, heads, head_dim, generator=g).to(device, dtype).requires_grad_(True)
               for _ in range(3))
    ok = False
    try:
        with torch.enable_grad():
            out = dispatch_attention_fn(q, k, v, backend=name)
            if out.requires_grad:
                gq, gk, gv = torch.autograd.grad(out.float().square().sum(), [q, k, v])
                ok = all(bool(torch.isfinite(t).all()) for t in (gq, gk, gv))
    except Exception:  # any failure in the backward means: not usable for guided passes
        ok = False
    _BACKWARD_PROBES[key] = ok
    return ok


@contextmanager
def attention_backend_swapped(transformers: list, name: str | None) -> Iterator[None]:
    """Set `name` on every attention processor of the transformers for the duration, then put each
    processor's own backend back (set per processor, not diffusers' global active backend)."""
    if name is None:
        yield
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    target = AttentionBackendName(name)
    saved = []
    for t in transformers:
        for m in t.modules():
            proc = getattr(m, "processor", None)
            if proc is not None and hasattr(proc, "_attention_backend"):
                saved.append((proc, proc._attention_backend))
                proc._attention_backend = target
    try:
        yield
    finally:
        for proc, b in saved:
            proc._attention_backend = b


def compile_blocks(transformer, backend: str = "inductor") -> None:
    """Regional compilation: every WanTransformerBlock compiled (not fullgraph: the capture processor's
    early stop is a Python exception, a graph break, in the block that captures)."""
    try:
        transformer.compile_repeated_blocks(backend=backend, fullgraph=False, dynamic=False)
    except Exception as e:
        raise VmtError(f"{param('compile')}: {type(e).__name__}: {e}") from e


LORA_EXPERTS = ("both", "high", "low")


@dataclass(frozen=True)
class LoraSpec:
    """One `lora` value PATH[:SCALE][@EXPERT]: a LoRA file or folder (diffusers' Wan LoRA layout), its scale,
    and on a two-expert Wan2.2 model the expert it goes into ("high": transformer, "low": transformer_2,
    "both")."""

    path: str
    scale: float = 1.0
    expert: str = "both"

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        body, expert = text, "both"
        if "@" in text:
            body, expert = text.rsplit("@", 1)
            if expert not in LORA_EXPERTS:
                raise VmtUsageError(f"{param('lora')} {text!r}: the expert after @ is one of "
                                    f"{', '.join(LORA_EXPERTS)}")
        path, scale = body, 1.0
        head, sep, tail = body.rpartition(":")
        if sep and head:
            try:
                scale = float(tail)
                path = head
            except ValueError:
                pass  # a ':' that is part of the path
        if not math.isfinite(scale):
            raise VmtUsageError(f"{param('lora')} {text!r}: the scale must be a finite number")
        if not Path(path).exists():
            raise VmtUsageError(f"{param('lora')} {text!r}: {path} does not exist (a .safetensors file or a "
                                "folder)")
        return cls(path, scale, expert)


def check_peft() -> None:
    """diffusers loads LoRAs through PEFT; say so in one line instead of failing deep in the load."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise VmtError(f"{param('lora')} needs the peft package (pip install peft)")


def load_loras(pipe, specs: list[LoraSpec]) -> list[dict]:
    """Load each LoRA as adapter lora<i> into its expert(s) and set the scales; returns their records."""
    check_peft()
    two = getattr(pipe, "transformer_2", None) is not None and pipe.transformer is not None
    per_model: dict[int, tuple[object, list[str], list[float]]] = {}
    records = []
    for i, spec in enumerate(specs):
        if not two and spec.expert != "both":
            raise VmtUsageError(f"{param('lora')} {spec.path}@{spec.expert}: this model has one transformer; "
                                f"drop @{spec.expert}")
        name = f"lora{i}"
        targets = []
        if spec.expert in ("both", "high") and pipe.transformer is not None:
            targets.append((pipe.transformer, False))
        if spec.expert in ("both", "low") and getattr(pipe, "transformer_2", None) is not None:
            targets.append((pipe.transformer_2, True))
        for model, into_2 in targets:
            try:
                kw = {"load_into_transformer_2": True} if into_2 else {}
                pipe.load_lora_weights(spec.path, adapter_name=name, **kw)
            except Exception as e:
                raise VmtError(f"cannot load LoRA {spec.path}: {type(e).__name__}: {e}") from e
            entry = per_model.setdefault(id(model), (model, [], []))
            entry[1].append(name)
            entry[2].append(spec.scale)
        records.append({"path": spec.path, "scale": spec.scale, "expert": spec.expert, "adapter": name})
    for model, names, scales in per_model.values():
        model.set_adapters(names, weights=scales)
    return records
