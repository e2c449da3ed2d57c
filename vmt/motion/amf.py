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
    hard: bool = False, chunk: int = 16, materialize: bool = False,
) -> torch.Tensor:
    """AMF over all keys for each pair: (P, S, 2) displacements (dy, dx) in tokens.

    hard: argmax position (DiTFlow's reference AMF; not differentiable) instead of soft-argmax.
    materialize: compute the (chunk, S, S) logits and probabilities explicitly, as DiTFlow's attention maps
    are (autograd then keeps the probabilities for backward); same result, for comparisons.
    chunk: pairs per batched matmul (memory ~ chunk * S^2 logits); chunks also end where the query or the key
    frames stop being fixed or consecutive, so that the fused path takes views of q and k (`_runs`).
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
    fused = not hard and not materialize and q.dtype == acc and d >= 2
    vpos = torch.cat([pos, pos.new_zeros((s, d - 2))], dim=1) if fused else None
    out = []
    for c0, c1 in _runs(pairs, chunk):
        pi, pj = pairs[c0:c1, 0], pairs[c0:c1, 1]
        if fused:
            # Views of q and k where the run allows (a fixed frame or consecutive frames): attention keeps
            # its inputs for backward, and a view costs nothing to keep, a gathered copy S * D per pair.
            target = torch.nn.functional.scaled_dot_product_attention(
                _frames(qf, pi), _frames(kf, pj), vpos.expand(len(pi), 1, s, d), scale=scale)[:, 0, :, :2]
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


def _runs(pairs: torch.Tensor, chunk: int) -> list[tuple[int, int]]:
    """Cut `pairs` into runs of at most `chunk` in which i and j each stay fixed or step by one frame."""
    p = pairs.tolist()
    runs, c0 = [], 0
    for c in range(1, len(p) + 1):
        if c == len(p) or c - c0 == chunk or not _extends(p[c0], p[c - 1], p[c], c - c0):
            runs.append((c0, c))
            c0 = c
    return runs


def _extends(first, last, nxt, length: int) -> bool:
    for a in range(2):
        step = nxt[a] - last[a]
        if step not in (0, 1) or (length > 1 and last[a] - first[a] != step * (length - 1)):
            return False
    return True


def _frames(xf: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """xf[idx, None] (len(idx), 1, S, D), as a view when idx is one frame repeated or consecutive frames."""
    a = int(idx[0])
    if bool((idx == a).all()):
        return xf[a][None, None].expand(len(idx), 1, *xf.shape[1:])
    if torch.equal(idx, torch.arange(a, a + len(idx), device=idx.device)):
        return xf[a : a + len(idx), None]
    return xf[idx, None]


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
    """(T, 2) integer (y, x) of each tile's centre token: offset n // 2 into the tile's n rows (columns), as
    the FastVMT release places it (th // 2, tw // 2: the lower/right of the two middle tokens for an even
    size). A partial tile at the grid's edge (the release has none) uses its own token count n."""
    th, tw = tile
    ty, tx = tile_layout(h, w, tile)
    cy = torch.tensor([a * th + (min(h, a * th + th) - a * th) // 2 for a in range(ty)], device=device)
    cx = torch.tensor([b * tw + (min(w, b * tw + tw) - b * tw) // 2 for b in range(tx)], device=device)
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=-1)


def window_start_from_centre(centre: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Top-left (y, x) of an l x l window centred at `centre` (..., 2), clamped inside the grid.

    The centre is truncated to a whole token, as the release does (its soft-argmax centres are >= 0, so this
    is the floor). Clamping the centre (equivalently the start to [0, h - l]) keeps the window whole and free of duplicated
    keys at edges and corners; clamping each key index separately (the reference release) duplicates keys.
    """
    if window > h or window > w:
        raise ValueError(f"window {window} does not fit in the {h}x{w} token grid")
    start = torch.trunc(centre).long() - window // 2
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


def _band_axis(h: int, w: int) -> int:
    """0: bands of rows, 1: bands of columns (the default for landscape grids); see `_frame_bands`."""
    return 1 if h <= w else 0


def _frame_bands(k: torch.Tensor, j: int, axis: int, scale: float) -> torch.Tensor:
    """Keys of frame j with the banded axis first, times `scale`, contiguous: (A, B, D).

    A band is l consecutive lines along the other axis, a contiguous slice of this layout of l * B keys. The
    lines run along the longer side (bands of columns when h <= w): a band is l * min(h, w) keys, the fewest
    that contain any l x l window (630 instead of 1092 for a 30 x 52 grid and l = 21). One frame at a time,
    so only one frame's copy is ever held.
    """
    kj = k[j].transpose(0, 1) if axis == 1 else k[j]
    return kj.contiguous().mul(scale)  # mul keeps its input's layout: make that contiguous first


# Masked keys get this logit offset. Before exp, logits are clamped at _EXP_FLOOR below the row's maximum; in
# backward, weights at the floor are then set to exactly 0. So masked keys weigh nothing (at most e^-80, below
# float32 resolution, in forward), and neither exp nor the matmuls that follow ever meet denormal numbers,
# which run tens of times slower on CPUs.
_MASKED = -1.0e4
_EXP_FLOOR = -80.0
_EXP_ZERO = 1.5 * math.exp(_EXP_FLOOR)  # weights up to here are the floor's: set to 0 in backward
# Fixed cost of one group (matmuls too small to run at full speed, a dozen Python-level ops) in units of
# query-key products: a band is widened to serve the next band start when that costs fewer extra products.
_GROUP_COST = 5000


@dataclass
class _FinePlan:
    """Entries (pair, tile) sorted by (key frame, window start across the bands' lines) and cut into groups
    that share one band of keys.

    rows: (E * n,) flat query index i * S + token of each sorted entry's queries; row_shift: (E * n, 2)
    absolute (y, x) of the row's band start; pos_bias: (E, B) 0 on the line positions inside the entry's
    window, _MASKED elsewhere; line_off: (E,) first window line inside the group's band; order: (E,) the
    sorted position of each original entry; groups: (first entry, last entry + 1, key frame, first line,
    number of lines).
    """

    rows: torch.Tensor
    row_shift: torch.Tensor
    pos_bias: torch.Tensor
    line_off: torch.Tensor
    order: torch.Tensor
    groups: list[tuple[int, int, int, int, int]]
    axis: int
    window: int
    n: int


def _fine_plan(pi, pj, start, tok, s: int, n_major: int, minor: int, axis: int, window: int,
               group_cost: int, acc) -> _FinePlan:
    """pi, pj: (E,) query and key frame of each entry; start: (E, 2) window corner (y, x); tok: (E, n) the
    entry's query tokens (row-major); group_cost: see _GROUP_COST (0: one group per band start)."""
    n = tok.shape[1]
    outer, inner = start[:, axis], start[:, 1 - axis]
    key = pj * n_major + outer
    order = torch.argsort(key, stable=True)
    uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
    groups: list[tuple[int, int, int, int, int]] = []
    e0 = 0
    for v, c in zip(uniq.tolist(), counts.tolist()):
        j, s0 = divmod(v, n_major)
        if groups and groups[-1][2] == j:
            g0, g1, _, gs, gl = groups[-1]
            lines = s0 - gs + window
            merged = (g1 - g0 + c) * lines
            apart = (g1 - g0) * gl + c * window
            if (merged - apart) * n * minor < group_cost:
                groups[-1] = (g0, e0 + c, j, gs, lines)
                e0 += c
                continue
        groups.append((e0, e0 + c, j, s0, window))
        e0 += c
    group_start = torch.zeros(len(order), dtype=torch.long, device=start.device)
    for g0, g1, _, gs, _ in groups:
        group_start[g0:g1] = gs
    row_shift = torch.zeros((len(order), 2), dtype=acc, device=start.device)
    row_shift[:, axis] = group_start.to(acc)
    inner_s = inner[order]
    ar = torch.arange(minor, device=start.device)
    inside = (ar >= inner_s[:, None]) & (ar < inner_s[:, None] + window)
    pos_bias = torch.where(inside, 0.0, _MASKED).to(acc)
    return _FinePlan(
        (pi[order, None] * s + tok[order]).flatten(), row_shift.repeat_interleave(n, dim=0), pos_bias,
        outer[order] - group_start, torch.argsort(order), groups, axis, window, n,
    )


def _band_positions(axis: int, lines: int, minor: int, dtype, device) -> torch.Tensor:
    """(lines * B, 3): (y, x) of each band key relative to the band start (its first line at 0), then 1."""
    a, b = torch.meshgrid(torch.arange(lines, device=device, dtype=dtype),
                          torch.arange(minor, device=device, dtype=dtype), indexing="ij")
    yx = (a, b) if axis == 0 else (b, a)
    return torch.stack([yx[0].flatten(), yx[1].flatten(), torch.ones_like(a).flatten()], dim=-1)


def _group_logits(qf, kbj, plan: _FinePlan, g: tuple[int, int, int, int, int], acc, lse=None):
    """One group's queries (M, D), band (L, D) and logits (M, L) in `acc`, _MASKED added outside each window;
    minus `lse` (M,) when given, in the same pass."""
    e0, e1, _, s0, lines = g
    n, minor = plan.n, plan.pos_bias.shape[1]
    qg = qf.index_select(0, plan.rows[e0 * n : e1 * n])
    band = kbj[s0 : s0 + lines].reshape(-1, qf.shape[1])  # contiguous: a view, no copy
    logits = torch.matmul(qg, band.T).to(acc)
    # The window is a run of `window` positions on `window` consecutive lines of the band.
    grid = logits.view(e1 - e0, n, lines, minor)
    pb = plan.pos_bias[e0:e1, None, None, :]
    grid.add_(pb if lse is None else pb - lse.view(e1 - e0, n, 1, 1))
    if lines > plan.window:
        off = plan.line_off[e0:e1, None]
        ar = torch.arange(lines, device=qf.device)
        lb = torch.where((ar >= off) & (ar < off + plan.window), 0.0, _MASKED).to(acc)  # (g, lines)
        grid.add_(lb[:, None, :, None])
    return qg, band, logits


class _FineAttention(torch.autograd.Function):
    """Soft-argmax of every entry's queries over its window of keys, flash-style.

    Forward keeps only the log-sum-exp and the expected position of each query row (O(S) per pair) besides
    references to q and k; backward re-gathers the queries from q and recomputes the logits group by group,
    accumulating each key frame's gradient in one buffer in place.
    """

    @staticmethod
    def forward(ctx, qf, k, plan: _FinePlan, scale: float, acc):
        n, minor = plan.n, plan.pos_bias.shape[1]
        bpos = {gl: _band_positions(plan.axis, gl, minor, acc, qf.device) for gl in {g[4] for g in plan.groups}}
        m_rows = len(plan.rows)
        tz = torch.empty((m_rows, 3), dtype=acc, device=qf.device)  # weighted (y, x) and partition function
        top = torch.empty((m_rows, 3), dtype=acc, device=qf.device)  # the same over the row's maxima only
        mx = torch.empty((m_rows, 1), dtype=acc, device=qf.device)
        kbj, cur = None, -1
        for g in plan.groups:
            r0, r1 = g[0] * n, g[1] * n
            if g[2] != cur:
                kbj, cur = _frame_bands(k, g[2], plan.axis, scale), g[2]
            _, _, logits = _group_logits(qf, kbj, plan, g, acc)
            torch.amax(logits, -1, keepdim=True, out=mx[r0:r1])
            p = logits.sub_(mx[r0:r1]).clamp_(min=_EXP_FLOOR).exp_()
            torch.matmul(p, bpos[g[4]], out=tz[r0:r1])
            # exp(0) = 1 exactly at the row's maximum and < 1 elsewhere: keep only weights at 1 (argmax, or an
            # equality test, is several times slower on CPU). Ties (within 1e-6 in logit) are averaged.
            torch.matmul(torch.nn.functional.threshold_(p, 1.0 - 1e-6, 0.0), bpos[g[4]], out=top[r0:r1])
        del kbj
        target = tz[:, :2] / tz[:, 2:] + plan.row_shift  # absolute (y, x)
        best = top[:, :2] / top[:, 2:] + plan.row_shift
        lse = mx[:, 0] + tz[:, 2].log()
        ctx.save_for_backward(qf, k, target, lse)
        ctx.plan, ctx.scale, ctx.acc = plan, scale, acc
        ctx.mark_non_differentiable(best)
        return target, best

    @staticmethod
    def backward(ctx, g_target, _g_best):
        qf, k, target, lse = ctx.saved_tensors
        plan, scale, acc = ctx.plan, ctx.scale, ctx.acc
        n, minor, axis = plan.n, plan.pos_bias.shape[1], plan.axis
        bpos = {gl: _band_positions(axis, gl, minor, acc, qf.device)[:, :2].T.contiguous()
                for gl in {g[4] for g in plan.groups}}
        g_target = g_target.to(acc).contiguous()
        # d loss / d logit = p * (g . pos - g . E[pos]), positions relative to the row's band start.
        g_mean = (g_target * (target - plan.row_shift)).sum(-1, keepdim=True)
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dq = torch.zeros(qf.shape, dtype=acc, device=qf.device) if need_q else None
        dk = torch.zeros(k.shape, dtype=acc, device=qf.device) if need_k else None
        kbj, dkj, cur = None, None, -1

        def flush():
            if need_k and dkj is not None:  # band layout of frame `cur`, unscaled -> dk[cur]
                dk[cur].add_(dkj.transpose(0, 1) if axis == 1 else dkj, alpha=scale)

        for g in plan.groups:
            r0, r1, j, s0, lines = g[0] * n, g[1] * n, g[2], g[3], g[4]
            if j != cur:
                flush()
                kbj, cur = _frame_bands(k, j, axis, scale), j
                dkj = torch.zeros(kbj.shape, dtype=acc, device=qf.device) if need_k else None
            qg, band, logits = _group_logits(qf, kbj, plan, g, acc, lse[r0:r1])
            p = torch.nn.functional.threshold_(logits.clamp_(min=_EXP_FLOOR).exp_(), _EXP_ZERO, 0.0)
            dl = p.mul_(torch.addmm(g_mean[r0:r1], g_target[r0:r1], bpos[lines], beta=-1)).to(qf.dtype)
            if need_q:  # the band is already scaled
                dq.index_add_(0, plan.rows[r0:r1], torch.matmul(dl, band).to(acc))
            if need_k:
                dkb = dkj[s0 : s0 + lines].view(-1, dkj.shape[-1])
                if acc == qf.dtype:
                    dkb.addmm_(dl.T, qg)
                else:
                    dkb += torch.matmul(dl.T, qg).to(acc)
        flush()
        return (dq.to(qf.dtype) if need_q else None), (dk.to(k.dtype) if need_k else None), None, None, None


def _fine_stage(q, k, pi, pj, start, tok, scale: float, window: int, acc, group_cost: int = _GROUP_COST):
    """Fine stage for E (pair, tile) entries: every query of the tile over the l x l keys of its window.

    q, k: (F, h, w, D); pi, pj: (E,) query and key frames; start: (E, 2) window corner (y, x); tok: (E, n)
    the tile's query tokens (row-major). Returns the absolute expected key position (E, n, 2) in `acc` and the
    in-window (dy, dx) of the most attended key (E, n, 2).

    The window's keys are never gathered (that would be l^2 * D values per tile). Entries with the same key
    frame and band start (window start across the band's lines) form one group: all their queries attend, in
    one matmul, to the band of l whole lines of that frame, a contiguous slice of its keys; keys of the band
    outside an entry's window are masked. The band is min(h, w) / l times the window (1.43 at 30 x 52, l = 21)
    in exchange for one large matmul per group instead of one tiny one per tile. Neighbouring band starts
    share one wider band where the extra products cost less than another group (_GROUP_COST).
    """
    f, h, w, d = q.shape
    axis = _band_axis(h, w)
    n_major, minor = (w, h) if axis == 1 else (h, w)
    plan = _fine_plan(pi, pj, start, tok, h * w, n_major, minor, axis, window, group_cost, acc)
    qf = q.reshape(f * h * w, d)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        target, best = _FineAttention.apply(qf, k, plan, scale, acc)
    else:
        target, best = _FineAttention.forward(_NoCtx(), qf, k, plan, scale, acc)
    e = len(pi)
    target = target.reshape(e, -1, 2)[plan.order]
    hit = best.reshape(e, -1, 2)[plan.order].round().long() - start[:, None, :]
    return target, hit


class _NoCtx:
    """Stands in for the autograd context when the fine stage runs without a graph (nothing is saved)."""

    def save_for_backward(self, *args):
        pass

    def mark_non_differentiable(self, *args):
        pass


def windowed_amf(
    q: torch.Tensor, k: torch.Tensor, *, span: int = 4, tile: tuple[int, int] = (3, 4), window: int = 21,
    scale: float | None = None, chunk: int = 8,
) -> WindowedAMF:
    """FastVMT's AMF on pairs 0 <= j - i < span; see the module docstring. chunk: same-frame pairs per fused
    attention call (as in `global_amf`); inter-frame pairs are batched by key frame."""
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
    if len(inter):
        qf, kf = q.reshape(f, s, d), k.reshape(f, s, d)
        pi, pj = pairs[inter, 0], pairs[inter, 1]
        ni = len(inter)
        centres = tile_centres(h, w, tile, dev)  # (T, 2)
        centre_idx = centres[:, 0] * w + centres[:, 1]
        # Coarse: each tile centre over all keys of frame j -> window centre (soft-argmax, then truncated). The
        # window is chosen, not learnt, so no graph is built here. One matmul per key frame: the pairs sharing
        # it (up to span - 1) stack their centre queries against that frame's keys, a view of k (no copy).
        centre = torch.empty((ni, n_tiles, 2), dtype=acc, device=dev)
        with torch.no_grad():
            for j in torch.unique(pj).tolist():
                sel = (pj == j).nonzero().flatten()
                cq = qf[pi[sel, None], centre_idx] * scale  # (m, T, D)
                coarse = torch.matmul(cq.reshape(-1, d), kf[j].T).to(acc).softmax(-1)  # (m * T, S)
                centre[sel] = torch.matmul(coarse, pos).reshape(len(sel), n_tiles, 2)
                del coarse
        start = window_start_from_centre(centre, window, h, w)  # (ni, T, 2)
        # Fine: every query of the tile over the l x l keys of its window; entries are (pair, tile).
        tok = _tile_tokens(torch.arange(s, device=dev).reshape(h, w, 1), h, w, tile)[..., 0]  # (T, n)
        target, hit = _fine_stage(
            q, k, pi.repeat_interleave(n_tiles), pj.repeat_interleave(n_tiles), start.reshape(-1, 2),
            tok.repeat(ni, 1), scale, window, acc, _GROUP_COST,
        )
        pos_tiles = _tile_tokens(pos.reshape(h, w, 2), h, w, tile)  # (T, n, 2)
        disp = target.reshape(ni, n_tiles, -1, 2) - pos_tiles
        flow_parts.append((inter, _untile(disp, h, w, tile)))
        # Channel-mean keys of each window, for the corresponding-window loss (gathered after the mean: l^2
        # values per tile instead of l^2 * D).
        km = k.mean(-1).unfold(1, window, 1).unfold(2, window, 1)  # (F, h - l + 1, w - l + 1, l, l): a view
        wk = km[pj[:, None].expand(-1, n_tiles), start[..., 0], start[..., 1]]  # (ni, T, l, l)
        key_parts.append((inter, wk.reshape(ni, n_tiles, l2).to(acc)))
        # Honest reporting: the most attended key on a border the window could still have moved past.
        hit = hit.reshape(ni, n_tiles, -1, 2)
        lo_free = start[:, :, None, :] > 0
        hi_free = start[:, :, None, :] < torch.tensor([h - window, w - window], device=dev)
        hit = ((hit == 0) & lo_free) | ((hit == window - 1) & hi_free)
        border[inter] = _untile(hit.any(-1, keepdim=True).float(), h, w, tile)[..., 0] > 0
        starts[inter] = start

    # In place into fresh zero tensors (they need no grad themselves; autograd records the copies).
    for idx, part in flow_parts:
        flow.index_copy_(0, idx, part.to(acc))
    for idx, part in key_parts:
        wkeys.index_copy_(0, idx, part)
    return WindowedAMF(flow, pairs, starts, wkeys, border, (ty, tx))
