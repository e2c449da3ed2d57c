"""Attention Motion Flow (AMF): where each query token's attention lands in another frame, as a displacement.

Pure functions on tensors. Inputs are head-reduced queries and keys on the token grid, q, k: (F, h, w, D).
The AMF of a frame pair (i, j) is, for every query token p of frame i, the expected key position under
softmax(scale * q_i(p) . k_j) minus p, in tokens, ordered (dy, dx). Output: (pairs, S, 2) with S = h * w,
pairs listed in `pairs` (P, 2) as (i, j).

Global (DiTFlow): every pair attends over all S keys. Windowed (FastVMT): pairs with 0 <= j - i < span only;
i == j as global; i != j in two stages: each tile's centre query attends to all keys of frame j to place a
window centre (coarse), then every query of the tile attends to the l x l keys of frame j inside that window
(fine). Unlike the reference release, the window's CENTRE is clamped so the window stays inside the grid, and
the window offset is kept in the displacement, so motions larger than the window are still measured when the
coarse stage finds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def grid_positions(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(S, 2) token positions (y, x) in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], dim=-1)


def all_pairs(num_frames: int, device=None) -> torch.Tensor:
    """Every ordered frame pair (i, j), (F^2, 2): DiTFlow's AMF."""
    i, j = torch.meshgrid(torch.arange(num_frames), torch.arange(num_frames), indexing="ij")
    return torch.stack([i.flatten(), j.flatten()], dim=-1).to(device)


def window_pairs(num_frames: int, span: int, device=None) -> torch.Tensor:
    """Pairs with 0 <= j - i < span, sorted by i then j: (P, 2); P = 78 for F = 21, span = 4."""
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    out = [(i, j) for i in range(num_frames) for j in range(i, min(i + span, num_frames))]
    return torch.tensor(out, dtype=torch.long, device=device).reshape(-1, 2)


def default_scale(dim: int, temperature: float = 1.0) -> float:
    """The logit multiplier tau / sqrt(D)."""
    return temperature / math.sqrt(dim)


def _check(q: torch.Tensor, k: torch.Tensor) -> None:
    if q.ndim != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must both be (F, h, w, D); got {tuple(q.shape)} and {tuple(k.shape)}")


def global_amf(
    q: torch.Tensor, k: torch.Tensor, pairs: torch.Tensor | None = None, *, scale: float | None = None,
    hard: bool = False, chunk: int = 16,
) -> torch.Tensor:
    """AMF over all keys for each pair: (P, S, 2) displacements (dy, dx) in tokens.

    hard: argmax position (DiTFlow's reference AMF; not differentiable) instead of soft-argmax.
    chunk: pairs per batched matmul (memory ~ chunk * S^2 logits).
    """
    _check(q, k)
    f, h, w, d = q.shape
    s = h * w
    scale = default_scale(d) if scale is None else scale
    pairs = all_pairs(f, q.device) if pairs is None else pairs.to(q.device)
    acc = torch.promote_types(q.dtype, torch.float32)  # float32 logits for half inputs, float64 kept
    pos = grid_positions(h, w, q.device, acc)
    qf, kf = q.reshape(f, s, d), k.reshape(f, s, d)
    out = []
    for c in range(0, len(pairs), chunk):
        pi, pj = pairs[c : c + chunk, 0], pairs[c : c + chunk, 1]
        logits = torch.matmul(qf[pi], kf[pj].transpose(1, 2)).to(acc) * scale  # (c, S, S)
        if hard:
            target = pos[logits.argmax(dim=-1)]
        else:
            target = torch.matmul(logits.softmax(dim=-1), pos)
        out.append(target - pos)
    return torch.cat(out) if out else q.new_zeros((0, s, 2), dtype=acc)


@dataclass
class WindowedAMF:
    """Result of `windowed_amf`.

    flow: (P, S, 2) displacements (dy, dx) in tokens, for `pairs` (P, 2).
    window_start: (P, T, 2) top-left token of each tile's window (zeros for i == j pairs).
    window_keys: (P, T, l*l) channel-mean of the keys inside each tile's window (zeros for i == j pairs);
        what the corresponding-window loss compares.
    at_border: (P, S) True where the query's most attended key lies on the window's border while the
        window could have moved further that way: the true match may be outside the window, so that
        displacement is a lower bound, not a measurement. Always False for i == j pairs.
    tiles: (ty, tx) tile counts; T = ty * tx.
    """

    flow: torch.Tensor
    pairs: torch.Tensor
    window_start: torch.Tensor
    window_keys: torch.Tensor
    at_border: torch.Tensor
    tiles: tuple[int, int]


def tile_layout(h: int, w: int, tile: tuple[int, int]) -> tuple[int, int]:
    """Number of tiles (ty, tx) covering an h x w grid with tiles of tile = (th, tw) tokens (last ones partial)."""
    th, tw = tile
    return -(-h // th), -(-w // tw)


def tile_centres(h: int, w: int, tile: tuple[int, int], device=None) -> torch.Tensor:
    """(T, 2) integer (y, x) of each tile's centre token; a partial tile's centre is that of its own tokens."""
    th, tw = tile
    ty, tx = tile_layout(h, w, tile)
    cy = torch.tensor([(a * th + min(h, a * th + th) - 1) // 2 for a in range(ty)], device=device)
    cx = torch.tensor([(b * tw + min(w, b * tw + tw) - 1) // 2 for b in range(tx)], device=device)
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=-1)


def window_start_from_centre(centre: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Top-left (y, x) of an l x l window centred (rounded) at `centre` (..., 2), clamped inside the grid.

    Clamping the centre (equivalently the start to [0, h - l]) keeps the window whole and free of duplicated
    keys at edges and corners; clamping each key index separately (the reference release) duplicates keys.
    """
    if window > h or window > w:
        raise ValueError(f"window {window} does not fit in the {h}x{w} token grid")
    start = torch.round(centre).long() - window // 2
    return torch.stack([start[..., 0].clamp(0, h - window), start[..., 1].clamp(0, w - window)], dim=-1)


def _tile_tokens(x: torch.Tensor, h: int, w: int, tile: tuple[int, int]) -> torch.Tensor:
    """(..., h, w, C) -> (..., T, th*tw, C), padding partial tiles by edge replication (dropped later)."""
    th, tw = tile
    ty, tx = tile_layout(h, w, tile)
    ph, pw = ty * th - h, tx * tw - w
    if ph or pw:
        iy = torch.arange(ty * th, device=x.device).clamp(max=h - 1)
        ix = torch.arange(tx * tw, device=x.device).clamp(max=w - 1)
        x = x[..., iy, :, :][..., :, ix, :]
    lead = x.shape[:-3]
    x = x.reshape(*lead, ty, th, tx, tw, x.shape[-1]).movedim(-4, -3)  # (..., ty, tx, th, tw, C)
    return x.reshape(*lead, ty * tx, th * tw, x.shape[-1])


def _untile(x: torch.Tensor, h: int, w: int, tile: tuple[int, int]) -> torch.Tensor:
    """Inverse of _tile_tokens for (..., T, th*tw, C) -> (..., h*w, C)."""
    th, tw = tile
    ty, tx = tile_layout(h, w, tile)
    lead = x.shape[:-3]
    x = x.reshape(*lead, ty, tx, th, tw, x.shape[-1]).movedim(-3, -4)  # (..., ty, th, tx, tw, C)
    x = x.reshape(*lead, ty * th, tx * tw, x.shape[-1])[..., :h, :w, :]
    return x.reshape(*lead, h * w, x.shape[-1])


def _fine_stage(q_t, kj, start, win_off, pos_tiles, scale: float, window: int, w: int):
    """Fine stage for a chunk of pairs: q_t (c, T, n, D) tile queries, kj (c, S, D) keys of frame j, start
    (c, T, 2) window corners. Returns displacements (c, T, n, 2), window key channel-means (c, T, l2) and the
    in-window position of the most attended key (c, T, n, 2)."""
    c, n_tiles, _, d = q_t.shape
    l2 = window * window
    kpos = start[:, :, None, :] + win_off  # (c, T, l2, 2)
    kidx = kpos[..., 0] * w + kpos[..., 1]  # (c, T, l2)
    kwin = torch.gather(kj, 1, kidx.reshape(c, -1, 1).expand(-1, -1, d)).reshape(c, n_tiles, l2, d)
    acc = torch.promote_types(q_t.dtype, torch.float32)
    logits = torch.matmul(q_t, kwin.transpose(-1, -2)).to(acc) * scale  # (c, T, n, l2)
    target = torch.matmul(logits.softmax(-1), kpos.to(acc))  # absolute positions: the window offset is kept
    best = win_off[logits.detach().argmax(-1)]
    return target - pos_tiles.to(acc), kwin.to(acc).mean(-1), best


def windowed_amf(
    q: torch.Tensor, k: torch.Tensor, *, span: int = 4, tile: tuple[int, int] = (3, 4), window: int = 21,
    scale: float | None = None, chunk: int = 8,
) -> WindowedAMF:
    """FastVMT's AMF on pairs 0 <= j - i < span; see the module docstring. chunk: inter-frame pairs per batch."""
    _check(q, k)
    f, h, w, d = q.shape
    s = h * w
    if window < 1 or window > h or window > w:
        raise ValueError(f"window {window} does not fit in the {h}x{w} token grid")
    if tile[0] < 1 or tile[1] < 1 or tile[0] > h or tile[1] > w:
        raise ValueError(f"tile {tile[0]}x{tile[1]} does not fit in the {h}x{w} token grid")
    scale = default_scale(d) if scale is None else scale
    dev = q.device
    pairs = window_pairs(f, span, dev)
    acc = torch.promote_types(q.dtype, torch.float32)
    pos = grid_positions(h, w, dev, acc)
    ty, tx = tile_layout(h, w, tile)
    n_tiles = ty * tx
    l2 = window * window
    flow = torch.zeros((len(pairs), s, 2), device=dev, dtype=acc)
    starts = torch.zeros((len(pairs), n_tiles, 2), device=dev, dtype=torch.long)
    wkeys = torch.zeros((len(pairs), n_tiles, l2), device=dev, dtype=acc)
    border = torch.zeros((len(pairs), s), device=dev, dtype=torch.bool)
    flow_parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    key_parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    same = (pairs[:, 0] == pairs[:, 1]).nonzero().flatten()
    if len(same):
        flow_parts.append((same, global_amf(q, k, pairs[same], scale=scale, chunk=chunk)))

    inter = (pairs[:, 0] != pairs[:, 1]).nonzero().flatten()
    qf, kf = q.reshape(f, s, d), k.reshape(f, s, d)
    centres = tile_centres(h, w, tile, dev)  # (T, 2)
    centre_idx = centres[:, 0] * w + centres[:, 1]
    q_tiles = _tile_tokens(q, h, w, tile)  # (F, T, n, D), n = th * tw
    pos_tiles = _tile_tokens(pos.reshape(h, w, 2), h, w, tile)  # (T, n, 2)
    ar = torch.arange(window, device=dev)
    win_off = torch.stack(torch.meshgrid(ar, ar, indexing="ij"), dim=-1).reshape(l2, 2)  # (l2, 2) (dy, dx)
    for c in range(0, len(inter), chunk):
        idx = inter[c : c + chunk]
        pi, pj = pairs[idx, 0], pairs[idx, 1]
        kj = kf[pj]  # (c, S, D)
        # Coarse: each tile centre over all keys of frame j -> window centre (soft-argmax, then rounded).
        qc = qf[pi][:, centre_idx]  # (c, T, D)
        coarse = torch.matmul(qc, kj.transpose(1, 2)).to(acc) * scale  # (c, T, S)
        centre = torch.matmul(coarse.softmax(-1), pos).detach()  # (c, T, 2); the window is chosen, not learnt
        start = window_start_from_centre(centre, window, h, w)  # (c, T, 2)
        # Fine: every query of the tile over the l x l keys of its window. Recomputed in backward
        # (checkpoint) so the gathered window keys (T * l^2 * D per pair) are not kept for the gradient.
        args = (q_tiles[pi], kj, start, win_off, pos_tiles, scale, window, w)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            from torch.utils.checkpoint import checkpoint

            disp, wk, hit = checkpoint(_fine_stage, *args, use_reentrant=False)
        else:
            disp, wk, hit = _fine_stage(*args)
        flow_parts.append((idx, _untile(disp, h, w, tile)))
        key_parts.append((idx, wk))
        # Honest reporting: the most attended key on a border the window could still have moved past.
        lo_free = start[:, :, None, :] > 0
        hi_free = start[:, :, None, :] < torch.tensor([h - window, w - window], device=dev)
        hit = ((hit == 0) & lo_free) | ((hit == window - 1) & hi_free)
        border[idx] = _untile(hit.any(-1, keepdim=True).float(), h, w, tile)[..., 0] > 0
        starts[idx] = start

    # Assemble without in-place writes into a tensor that needs grad.
    if flow_parts:
        all_idx = torch.cat([p[0] for p in flow_parts])
        all_flow = torch.cat([p[1] for p in flow_parts])
        flow = flow.index_copy(0, all_idx, all_flow.to(acc))
    if key_parts:
        wkeys = wkeys.index_copy(0, torch.cat([p[0] for p in key_parts]), torch.cat([p[1] for p in key_parts]))
    return WindowedAMF(flow, pairs, starts, wkeys, border, (ty, tx))
