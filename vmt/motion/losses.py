"""Losses between a reference AMF and a generated AMF, and FastVMT's corresponding-window loss."""

from __future__ import annotations

import torch


def distance_weights(pairs: torch.Tensor, span: int, w_min: float = 0.8) -> torch.Tensor:
    """(P,) weights falling linearly with frame distance |j - i| from 1.0 (d = 0) to w_min (d = span - 1)."""
    d = (pairs[:, 1] - pairs[:, 0]).abs().float()
    frac = (d / max(span - 1, 1)).clamp(max=1.0)
    return 1.0 - (1.0 - w_min) * frac


def weighted_amf_loss(ref: torch.Tensor, gen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_p w_p * ||ref[p] - gen[p]||^2, the squared norm over all S x 2 entries of a pair (the spec and the
    FastVMT release); ref, gen: (P, S, 2) in tokens; weights (P,); ref is detached. Scalar in tokens^2.

    The sum (not the mean) over entries keeps the gradients 2S times larger than a plain MSE, far above
    AdamW's eps (1e-8), as the published learning rates expect.
    """
    sq = (ref.detach() - gen).pow(2).sum(dim=(1, 2))  # (P,)
    return (weights.to(sq) * sq).mean()


def masked_amf_loss(ref: torch.Tensor, gen: torch.Tensor) -> torch.Tensor:
    """DiTFlow: MSE over the tokens whose reference displacement is non-zero (a token moving only along one
    axis keeps both components). Zero when nothing moves in the reference."""
    ref = ref.detach()
    mask = (ref != 0).any(-1, keepdim=True).to(gen.dtype)  # (P, S, 1)
    n = mask.sum() * ref.shape[-1]
    if n == 0:
        return gen.sum() * 0.0
    return ((ref - gen).pow(2) * mask).sum() / n


def window_consistency_loss(window_keys: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Corresponding-window loss on the generation.

    window_keys: (P, T, l*l) channel-mean keys of each tile's window, for pairs (P, 2). For each frame i, the
    windows of j = i+1, i+2, ... are compared consecutively: the L2 norm, over the window's l*l slots, of the
    change between j and j+1, averaged over (consecutive j, tile); then the mean over the frames i that have
    at least two such windows (as the FastVMT release computes it, in float32 or wider). Zero if none has.
    """
    terms = []
    for i in torch.unique(pairs[:, 0]).tolist():
        sel = ((pairs[:, 0] == i) & (pairs[:, 1] > i)).nonzero().flatten()
        if len(sel) < 2:
            continue
        order = sel[torch.argsort(pairs[sel, 1])]
        wk = window_keys[order].to(torch.promote_types(window_keys.dtype, torch.float32))  # (n_j, T, l2)
        terms.append(torch.linalg.vector_norm(wk[1:] - wk[:-1], ord=2, dim=-1).mean())
    if not terms:
        return window_keys.sum() * 0.0
    return torch.stack(terms).mean()
