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
    # Soft-argmax is attention whose values are the key positions. In full precision the fused attention
    # kernel (flash on CPU) never stores the S x S probabilities, for backward either; it needs the value
    # width to equal D, so the positions are zero-padded to D columns. Half inputs keep the float32-logit path
    # (the fused kernel would return half-precision positions).
    fused = not hard and q.dtype == acc and d >= 2
    vpos = torch.cat([pos, pos.new_zeros((s, d - 2))], dim=1) if fused else None
    out = []
    for c in range(0, len(pairs), chunk):
        pi, pj = pairs[c : c + chunk, 0], pairs[c : c + chunk, 1]
        if fused:
            target = torch.nn.functional.scaled_dot_product_attention(
                qf[pi, None], kf[pj, None], vpos.expand(len(pi), 1, s, d), scale=scale)[:, 0, :, :2]
            out.append(target - pos)
            continue
        # Scaling q (S*D values) rather than the logits (S^2) saves one full pass over the logits.
        logits = torch.matmul(qf[pi] * scale, kf[pj].transpose(1, 2)).to(acc)  # (c, S, S)
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


def _pad(x: torch.Tensor, pe: torch.Tensor, slot: torch.Tensor, c: int, gmax: int, e_idx: torch.Tensor):
    """Scatter rows x[e_idx] into a zero (c, gmax, ...) tensor at (pair pe, slot): a batch per pair."""
    out = x.new_zeros((c, gmax, *x.shape[1:]))
    out[pe, slot] = x[e_idx]
    return out


def _band_softargmax(qs, kb, pj, groups, col, off, acc, keep_probs: bool):
    """The fine stage's attention, one band position at a time (see `_fine_stage`); no autograd graph.

    qs: (E, n, D) scaled queries of E = c * T (pair, tile) entries; kb: (F, M, D) band-major keys; pj: (c,)
    key frame of each pair; groups: per band position (first key of the band, band length, entries e_idx,
    their pair pe and slot in the pair's batch, slots gmax); col: (E, l2) each window key's column in its
    band; off: (l2, 2) in-window offsets in `acc`. Returns the in-window expected offset (E, n, 2), the index
    of the most attended window key (E, n) and, if keep_probs, the window softmax (E, n, l2).
    """
    e, n, _ = qs.shape
    c = len(pj)
    exp_off = torch.empty((e, n, 2), dtype=acc, device=qs.device)
    best = torch.empty((e, n), dtype=torch.long, device=qs.device)
    probs = torch.empty((e, n, col.shape[1]), dtype=acc, device=qs.device) if keep_probs else None
    for k0, blen, e_idx, pe, slot, gmax in groups:
        bands = kb[pj, k0 : k0 + blen]  # (c, l * B, D): l whole rows (columns) of each pair's key frame
        qpad = _pad(qs, pe, slot, c, gmax, e_idx)  # (c, gmax, n, D)
        logits = torch.matmul(qpad.reshape(c, -1, qs.shape[2]), bands.transpose(1, 2)).reshape(c, gmax, n, blen)
        cpad = _pad(col, pe, slot, c, gmax, e_idx)[:, :, None, :].expand(-1, -1, n, -1)
        logits = logits.gather(-1, cpad)[pe, slot].to(acc)  # (g, n, l2): the window's keys
        best[e_idx] = logits.max(-1).indices
        pr = logits.softmax(-1)
        exp_off[e_idx] = torch.matmul(pr, off)
        if keep_probs:
            probs[e_idx] = pr
    return exp_off, best, probs


class _BandSoftArgmax(torch.autograd.Function):
    """`_band_softargmax` with a hand-written backward: recomputes the padded batches instead of keeping
    them, and accumulates the gradients of the overlapping key bands into one buffer in place (autograd would
    allocate a full-size zero gradient per band slice)."""

    @staticmethod
    def forward(ctx, qs, kb, pj, groups, col, off, acc):
        exp_off, best, probs = _band_softargmax(qs, kb, pj, groups, col, off, acc, keep_probs=True)
        ctx.save_for_backward(qs, kb, pj, col, off, probs)
        ctx.groups = groups
        ctx.mark_non_differentiable(best)
        return exp_off, best

    @staticmethod
    def backward(ctx, g_off, _g_best):
        qs, kb, pj, col, off, probs = ctx.saved_tensors
        n, d = qs.shape[1:]
        c = len(pj)
        g = torch.matmul(g_off.to(probs.dtype), off.T)  # (E, n, l2): d loss / d prob
        g = (probs * (g - (probs * g).sum(-1, keepdim=True))).to(qs.dtype)  # softmax backward: d loss / d logit
        dq = torch.zeros_like(qs) if ctx.needs_input_grad[0] else None
        dk = torch.zeros_like(kb) if ctx.needs_input_grad[1] else None
        for k0, blen, e_idx, pe, slot, gmax in ctx.groups:
            bands = kb[pj, k0 : k0 + blen]
            cpad = _pad(col, pe, slot, c, gmax, e_idx)[:, :, None, :].expand(-1, -1, n, -1)
            # Window keys are distinct, so scattering (not adding) the window's logit gradients is exact;
            # padding slots scatter zeros.
            gb = qs.new_zeros((c, gmax, n, blen)).scatter_(-1, cpad, _pad(g, pe, slot, c, gmax, e_idx))
            gb = gb.reshape(c, gmax * n, blen)
            if dq is not None:
                dq[e_idx] = torch.matmul(gb, bands).reshape(c, gmax, n, d)[pe, slot]
            if dk is not None:
                qpad = _pad(qs, pe, slot, c, gmax, e_idx).reshape(c, gmax * n, d)
                dk[:, k0 : k0 + blen].index_add_(0, pj, torch.matmul(gb.transpose(1, 2), qpad))
        return dq, dk, None, None, None, None, None


def _fine_stage(qs, kb, axis: int, km, pj, start, pos_q, win_off, scale: float, window: int, acc):
    """Fine stage for a chunk of c pairs: E = c * T (pair, tile) entries.

    qs: (E, n, D) queries of each entry's tile; kb: (F, A, B, D) keys with the banded axis first: (F, h, w, D)
    when `axis` = 0 (bands of rows), (F, w, h, D) when `axis` = 1 (bands of columns); km: (F, S) channel-mean
    keys, row-major; pj: (c,) key frame of each pair; start: (E, 2) window corner (y, x); pos_q: (E, n, 2)
    query positions; win_off: (l2, 2) in-window offsets (dy, dx). Returns displacements (E, n, 2), window key
    channel-means (E, l2) and the in-window (dy, dx) of the most attended key (E, n, 2).

    The window's keys are never gathered (that would be l^2 * D values per tile). For each band position s0
    (window start along `axis`), the tiles whose window starts there attend, one batch per pair, to the band
    of l whole rows (columns) s0 .. s0 + l - 1 of the pair's key frame in one batched matmul; the window's
    l^2 keys are then picked from the logits, which are D times smaller than the keys. The band costs B / l
    times the window's multiply-adds (plus the padding of uneven batches) in exchange for few large matmuls
    (at most A - l + 1 per chunk); only the window softmax (E, n, l2) is kept for backward.
    """
    f, n_major, minor, d = kb.shape
    c = len(pj)
    n_tiles = len(start) // c
    kb = kb.reshape(f, n_major * minor, d)
    w = n_major if axis == 1 else minor  # row length of the row-major grid
    key_idx = start[:, :1] * w + start[:, 1:] + (win_off[:, 0] * w + win_off[:, 1])  # (E, l2) row-major keys
    wkeys = km[pj.repeat_interleave(n_tiles)[:, None], key_idx].to(acc)  # (E, l2): channel mean, then gather
    col = start[:, 1 - axis, None] + (win_off[:, axis] * minor + win_off[:, 1 - axis])  # (E, l2) place in band
    s0 = start[:, axis].reshape(c, n_tiles)
    groups = []
    for v in torch.unique(s0).tolist():
        hit = s0 == v  # (c, T)
        e_idx = hit.flatten().nonzero().flatten()
        slot = (hit.cumsum(1) - 1).flatten()[e_idx]
        groups.append((v * minor, window * minor, e_idx, e_idx // n_tiles, slot, int(hit.sum(1).max())))
    qs = qs * scale
    off = win_off.to(acc)
    if torch.is_grad_enabled() and (qs.requires_grad or kb.requires_grad):
        exp_off, best = _BandSoftArgmax.apply(qs, kb, pj, groups, col, off, acc)
    else:
        exp_off, best, _ = _band_softargmax(qs, kb, pj, groups, col, off, acc, keep_probs=False)
    # Absolute target = window corner + in-window expectation: the window offset is kept.
    target = exp_off + start[:, None, :].to(acc)
    return target - pos_q.to(acc), wkeys, win_off[best]


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
    km = kf.mean(-1)  # (F, S) channel-mean keys for the corresponding-window loss
    # The fine stage's key bands run along the longer side: fewer band positions, so fewer and larger matmuls.
    axis = 0 if h <= w else 1
    kb = k.transpose(1, 2).contiguous() if axis == 1 else k
    centres = tile_centres(h, w, tile, dev)  # (T, 2)
    centre_idx = centres[:, 0] * w + centres[:, 1]
    q_tiles = _tile_tokens(q, h, w, tile)  # (F, T, n, D), n = th * tw
    pos_tiles = _tile_tokens(pos.reshape(h, w, 2), h, w, tile)  # (T, n, 2)
    ar = torch.arange(window, device=dev)
    win_off = torch.stack(torch.meshgrid(ar, ar, indexing="ij"), dim=-1).reshape(l2, 2)  # (l2, 2) (dy, dx)
    hi_lim = torch.tensor([h - window, w - window], device=dev)
    for c in range(0, len(inter), chunk):
        idx = inter[c : c + chunk]
        pi, pj = pairs[idx, 0], pairs[idx, 1]
        nc = len(idx)
        # Coarse: each tile centre over all keys of frame j -> window centre (soft-argmax, then rounded). The
        # window is chosen, not learnt, so no graph is built here.
        with torch.no_grad():
            coarse = torch.matmul(qf[pi[:, None], centre_idx] * scale, kf[pj].transpose(1, 2)).to(acc)  # (c, T, S)
            centre = torch.matmul(coarse.softmax(-1), pos)  # (c, T, 2)
            del coarse
        start = window_start_from_centre(centre, window, h, w)  # (c, T, 2)
        # Fine: every query of the tile over the l x l keys of its window; entries are (pair, tile).
        disp, wk, hit = _fine_stage(
            q_tiles[pi].reshape(nc * n_tiles, -1, d), kb, axis, km, pj,
            start.reshape(-1, 2), pos_tiles.expand(nc, -1, -1, -1).reshape(nc * n_tiles, -1, 2), win_off, scale,
            window, acc,
        )
        flow_parts.append((idx, _untile(disp.reshape(nc, n_tiles, -1, 2), h, w, tile)))
        key_parts.append((idx, wk.reshape(nc, n_tiles, l2)))
        # Honest reporting: the most attended key on a border the window could still have moved past.
        hit = hit.reshape(nc, n_tiles, -1, 2)
        lo_free = start[:, :, None, :] > 0
        hi_free = start[:, :, None, :] < hi_lim
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
