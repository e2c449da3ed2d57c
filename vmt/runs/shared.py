"""What refine, transfer and the Wan chain share: the Wan model and memory options, Predict-and-Perturb's plan,
gate and out.json block, and FastVMT's guidance settings. Imports no torch at module level."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dataclasses import dataclass

from vmt.runs.fields import NON_NEGATIVE, POSITIVE, Range, choice, number, text

# P&P's gate: tau in [0, inf], the early-exit fraction in (0, 1], the norm p in [1, inf].
PNP_RANGES = {"tau": Range(0, inf_ok=True), "certain_fraction": Range(0, 1, lo_open=True),
              "p_norm": Range(1, inf_ok=True)}
DEFAULT_MODEL = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"


@dataclass(kw_only=True)
class PnpOptions:
    """Predict-and-Perturb's plan and uncertainty gate (fields of refine and of transfer --refine)."""

    plan: str = text("default", "P&P plan: FIRST-LAST:K,..., HIGH-LOW:K, default or none")
    tau: float = number(0.25, PNP_RANGES["tau"], "uncertainty gate")
    certain_fraction: float = number(0.999, PNP_RANGES["certain_fraction"], "early exit of a step's inner loop")
    p_norm: float = number(1.0, PNP_RANGES["p_norm"], "norm of the gate's change over channels")


@dataclass(kw_only=True)
class GuidanceOptions:
    """FastVMT's motion guidance and SDEdit strength, with the FastVMT release's defaults (fields of transfer and
    of the Wan chain with a reference; `guidance_config` turns them into a GuidanceConfig)."""

    strength: float = number(0.75, Range(0, 1, lo_open=True), "SDEdit strength")
    amf: str = choice("windowed", ("windowed", "global"), "AMF form")
    block: int = number(14, None, "capture block")
    span: int = number(4, None, "frame pairs with 0 <= j - i < span")
    tile: str = text("3x4", "query tile HxW in tokens")
    window: int = number(21, None, "key window side in tokens")
    temperature: float = number(1.0, POSITIVE, "AMF softmax temperature")
    head_mode: str = choice("qk", ("qk", "logits"), "how heads are averaged")
    guided_steps: int = number(10, None, "guided steps")
    inner_steps: int = number(10, None, "optimiser steps per guided step")
    reuse_interval: int = number(3, None, "gradient reuse interval")
    lr: float = number(3e-3, POSITIVE, "learning rate at the first inner step")
    lr_end: float = number(2.1e-3, POSITIVE, "learning rate at the last inner step")
    lr_decay: str = choice("inner", ("inner", "outer"), "learning-rate decay")
    optimizer: str = choice("adamw", ("adamw", "adam"), "optimizer")
    loss: str = choice("fastvmt", ("fastvmt", "ditflow"), "guidance loss")
    amf_weight: float = number(5.0, NON_NEGATIVE, "AMF loss weight")
    window_weight: float = number(1.0, NON_NEGATIVE, "window loss weight")
    ref_amf: str = choice("per-step", ("per-step", "clean"), "reference AMF")
    ref_argmax: bool = False
    truncate: bool = True


GUIDANCE_FIELDS = ("amf", "block", "span", "window", "temperature", "head_mode", "guided_steps", "inner_steps",
                   "reuse_interval", "lr", "lr_end", "lr_decay", "optimizer", "loss", "amf_weight",
                   "window_weight", "ref_amf", "ref_argmax", "truncate")


def guidance_config(r: Any, height: int, width: int):
    """The vmt.motion.guidance.GuidanceConfig of a request carrying GuidanceOptions' fields, checked against
    the token grid of height x width (Wan: VAE /8, patch 2; the backend re-checks with its own factors)."""
    from vmt.motion.guidance import GuidanceConfig
    from vmt.runs.transfer import parse_tile

    cfg = GuidanceConfig(tile=parse_tile(r.tile), **{k: getattr(r, k) for k in GUIDANCE_FIELDS})
    cfg.check_grid((2, height // 16, width // 16), (height, width))
    return cfg


@dataclass(kw_only=True)
class WanModelOptions:
    """The Wan model a request runs on and how it loads (one value for a whole batch; `wan_load_options`)."""

    model: str = text(DEFAULT_MODEL, "hub id or local diffusers folder")
    revision: str | None = None
    device: str = text("auto", "auto | cpu | cuda")
    dtype: str = text("auto", "auto | float32 | bfloat16 | float16")
    offload: str = text("none", "none | model | sequential | group")
    vae_tiling: bool = False
    grad_checkpointing: bool = True
    storage_dtype: str = text("none", "none | float8_e4m3fn | float8_e5m2")
    attention_backend: str | None = text(None, "a diffusers attention backend")
    compile: bool = False
    lora: list[str] | None = None  # PATH[:SCALE][@high|low|both]


def wan_load_options(r: Any, resolved: Any = None, device: str | None = None):
    """The vmt.backends.wan.WanLoadOptions of a request's model fields (model, revision, device, dtype, offload,
    vae_tiling, grad_checkpointing, storage_dtype, attention_backend, compile, lora). Checks them without any
    model, so call it before `inspect_model` too."""
    from vmt.backends.wan import WanLoadOptions
    from vmt.errors import VmtUsageError, param
    from vmt.runtime import resolve_device

    opts = WanLoadOptions(
        device=device or r.device, dtype=r.dtype, offload=r.offload, vae_tiling=r.vae_tiling,
        revision=r.revision, resolved=resolved, grad_checkpointing=r.grad_checkpointing,
        storage_dtype=None if r.storage_dtype == "none" else r.storage_dtype,
        attention_backend=r.attention_backend or None, compile=r.compile, loras=tuple(r.lora or ()),
    )
    opts.validate()
    if resolved is None and opts.offload != "none" and resolve_device(opts.device).type != "cuda":
        raise VmtUsageError(f"{param('offload')} needs a CUDA device; on CPU everything is already in host memory")
    return opts


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No progress bars or info logs from diffusers and transformers while a model loads (a library call
    prints nothing), restored afterwards."""
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    levels = dl.get_verbosity(), tl.get_verbosity()
    bars = dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled()
    dl.set_verbosity_error()
    tl.set_verbosity_error()
    dl.disable_progress_bar()
    tl.disable_progress_bar()
    try:
        yield
    finally:
        dl.set_verbosity(levels[0])
        tl.set_verbosity(levels[1])
        if bars[0]:
            dl.enable_progress_bar()
        if bars[1]:
            tl.enable_progress_bar()


def resolve_plan(text: str, steps: int):
    """The P&P plan for a `steps`-step schedule. The keyword "default" is clipped to the schedule; an
    explicit plan that goes beyond it is an error."""
    from vmt.sampling.pnp import parse_plan

    plan = parse_plan(text)
    if text.strip().lower() == "default":
        return plan.clipped(steps)
    return plan.validate(steps)


def check_pnp(r: Any, steps: int):
    """Validate a request's P&P plan and gate (plan, tau, certain_fraction, p_norm); returns the plan."""
    from vmt.sampling.pnp import check_gate

    plan = resolve_plan(r.plan, steps)
    check_gate(r.tau, r.certain_fraction, r.p_norm)
    return plan


def make_pnp(plan, r: Any, sync_cuda: bool = False):
    """The PredictPerturb intervention for `plan` with the request's gate and seed, or None for an empty plan."""
    if plan.empty:
        return None
    from vmt.sampling.pnp import PredictPerturb

    return PredictPerturb(plan, r.tau, r.certain_fraction, r.p_norm, seed=r.seed, sync_cuda=sync_cuda)


def refine_summary(pnp, steps: int, nfe: int, denoise_s: float) -> dict:
    """The `pnp` block of out.json: plan, NFE (planned, used, ratio to plain sampling), certain fraction per
    refined step, and the denoising time split into refined and plain steps."""
    if pnp is None:
        return {"plan": "none", "nfe": nfe, "nfe_ratio": round(nfe / steps, 4), "time_denoise_s": denoise_s}
    doc = pnp.summary(steps, nfe)
    doc["nfe"] = nfe
    doc["nfe_ratio"] = round(nfe / steps, 4)
    doc["time_denoise_s"] = denoise_s
    doc["time_plain_steps_s"] = round(max(0.0, denoise_s - doc["time_refined_steps_s"]), 4)
    return doc


def plain(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON values for out.json (paths as strings)."""
    from pathlib import Path

    def one(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [one(x) for x in v]
        return v

    return {k: one(v) for k, v in params.items()}
