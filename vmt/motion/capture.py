"""Capture q/k of one self-attention block of a diffusers Wan transformer, after q/k RMSNorm and 3D RoPE.

The capture processor computes exactly what diffusers' `WanAttnProcessor` computes for self-attention and
records the rotated q and k on the way. With `stop=True` it raises a private exception right after
recording, which ends the transformer's forward there: later blocks cannot change block `b`'s q/k, so a
guided forward runs blocks 0..b only (and its backward only through them). The original processor is put back
when the context exits, also on error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from vmt.errors import VmtUsageError, param

HEAD_MODES = ("qk", "logits")


class _StopForward(Exception):
    """Raised by the capture processor to end a forward pass after the capture block."""


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved RoPE on (B, S, H, D), as diffusers applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class QKCaptureProcessor:
    """Self-attention processor that records q, k: (B, S, H, D) after norm and RoPE."""

    def __init__(self, original, stop: bool):
        self.original = original
        self.stop = stop
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        if encoder_hidden_states is not None or getattr(attn, "add_k_proj", None) is not None:
            raise RuntimeError("QKCaptureProcessor is for self-attention (attn1) only")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)
        self.q, self.k = query, key
        if self.stop:
            raise _StopForward
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        out = dispatch_attention_fn(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
            backend=getattr(self.original, "_attention_backend", None),
        )
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def num_blocks(transformer) -> int:
    return len(transformer.blocks)


def check_block(transformer, block: int) -> None:
    """Raise VmtUsageError unless `block` indexes a transformer block."""
    n = num_blocks(transformer)
    if not 0 <= block < n:
        raise VmtUsageError(f"{param('block')} {block} is out of range: this model has {n} blocks; use 0..{n - 1} "
                            f"(the release uses 14 of Wan2.1-1.3B's 30)")


@contextmanager
def qk_capture(transformer, block: int, stop: bool = True) -> Iterator[QKCaptureProcessor]:
    """Install a capture processor on `transformer.blocks[block].attn1`; restore the original on exit."""
    check_block(transformer, block)
    attn = transformer.blocks[block].attn1
    original = attn.processor
    proc = QKCaptureProcessor(original, stop)
    attn.set_processor(proc)
    try:
        yield proc
    finally:
        attn.set_processor(original)


@dataclass
class QK:
    """Head-reduced queries/keys on the token grid, q, k: (B, F, h, w, D'), and the logit scale to use.

    head_mode "qk": q and k averaged over heads (D' = D; FastVMT). "logits": heads concatenated and scaled
    by 1/sqrt(H), so q'.k' is the head-average of the per-head logits (D' = H * D; DiTFlow).
    scale = temperature / sqrt(D) with D the per-head dimension.
    """

    q: torch.Tensor
    k: torch.Tensor
    scale: float


def reduce_heads(q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int, int], head_mode: str = "qk",
                 temperature: float = 1.0) -> QK:
    """(B, S, H, D) q, k -> QK on the (F, h, w) token grid (sizes come from the resolution, never fixed)."""
    if head_mode not in HEAD_MODES:
        raise VmtUsageError(f"unknown head mode {head_mode!r}; use one of {', '.join(HEAD_MODES)}")
    b, s, h, d = q.shape
    f, gh, gw = grid
    if f * gh * gw != s:
        raise ValueError(f"token grid {grid} has {f * gh * gw} tokens, the attention has {s}")
    if head_mode == "qk":
        qr, kr = q.mean(2), k.mean(2)
    else:
        qr, kr = q.flatten(2) / math.sqrt(h), k.flatten(2) / math.sqrt(h)
    return QK(qr.reshape(b, f, gh, gw, -1), kr.reshape(b, f, gh, gw, -1), temperature / math.sqrt(d))


def capture_forward(transformer, block: int, stop: bool = True, **forward_kwargs):
    """Run `transformer(**forward_kwargs)` with q/k capture at `block`; returns (q, k, output or None).

    q, k: (B, S, H, D). With stop=True the forward ends after the block's q/k (output None).
    """
    with qk_capture(transformer, block, stop) as proc:
        try:
            out = transformer(**forward_kwargs, return_dict=False)[0]
        except _StopForward:
            out = None
    if proc.q is None:
        raise RuntimeError(f"block {block} self-attention did not run; cannot capture q/k")
    return proc.q, proc.k, out
