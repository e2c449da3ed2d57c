"""AMF on synthetic q/k with a known motion per region (ground truth by construction), window geometry,
losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from vmt.motion.amf import (
    all_pairs,
    global_amf,
    grid_positions,
    tile_centres,
    window_pairs,
    window_start_from_centre,
    windowed_amf,
)
from vmt.motion.losses import distance_weights, masked_amf_loss, weighted_amf_loss, window_consistency_loss
from vmt.testing.motion_fields import moving_fields_qk, region_labels, true_flow, valid_mask


def test_pair_counts():
    assert len(window_pairs(21, 4)) == 78  # the release's count at 81 frames
    assert len(all_pairs(21)) == 441
    p = window_pairs(5, 3)
    assert p.tolist() == [[0, 0], [0, 1], [0, 2], [1, 1], [1, 2], [1, 3], [2, 2], [2, 3], [2, 4], [3, 3], [3, 4],
                          [4, 4]]


@pytest.fixture(scope="module")
def four_regions():
    """Quadrants moving by integer and sub-token displacements per frame (dy, dx)."""
    f, h, w, d = 4, 16, 24, 128
    labels = region_labels(h, w, "quads")
    vel = torch.tensor([[0.0, 1.0], [1.0, -1.0], [0.5, 0.25], [-0.75, 0.5]])
    q, k = moving_fields_qk(f, h, w, d, vel, labels, sharpness=14.0, seed=3)
    return q, k, vel, labels


def test_global_and_windowed_recover_known_displacement(four_regions):
    q, k, vel, labels = four_regions
    res = windowed_amf(q, k, span=3, tile=(3, 4), window=7)
    pairs = res.pairs
    truth = true_flow(pairs, vel, labels)
    ok = valid_mask(pairs, vel, labels, margin=2.0)
    moving = (pairs[:, 0] != pairs[:, 1])[:, None] & ok
    assert moving.sum() > 200  # enough unambiguous inter-frame queries to mean something
    glob = global_amf(q, k, pairs)
    err_w = (res.flow - truth).norm(dim=-1)[ok]
    err_g = (glob - truth).norm(dim=-1)[ok]
    assert err_w.max() < 0.5 and err_g.max() < 0.5
    assert err_w.mean() < 0.1 and err_g.mean() < 0.1
    # sub-token regions really are sub-token: they are recovered, not rounded to the grid
    sub = (labels.flatten() >= 2)[None].expand_as(ok) & moving
    assert (res.flow - truth).norm(dim=-1)[sub].max() < 0.25
    assert (res.flow - truth.round()).norm(dim=-1)[sub].max() > 0.2
    # and the two agree with each other
    assert (res.flow - glob).norm(dim=-1)[ok].max() < 0.2
    assert not res.at_border[moving].any()


def test_self_pairs_are_zero_displacement(four_regions):
    q, k, vel, labels = four_regions
    res = windowed_amf(q, k, span=2, tile=(3, 4), window=5)
    same = res.pairs[:, 0] == res.pairs[:, 1]
    ok = valid_mask(res.pairs, vel, labels, margin=2.0)[same]  # 2 tokens clear of region borders
    assert ok.sum() > 100
    assert res.flow[same][ok].abs().max() < 0.05


def test_hard_argmax_is_integer_and_matches_integer_motion(four_regions):
    q, k, vel, labels = four_regions
    pairs = window_pairs(4, 2)
    hard = global_amf(q, k, pairs, hard=True)
    assert torch.equal(hard, hard.round())
    truth = true_flow(pairs, vel, labels)
    ok = valid_mask(pairs, vel, labels) & (labels.flatten() < 2)[None]  # integer-motion regions
    assert torch.equal(hard[ok], truth[ok])


def test_large_uniform_motion_is_measured_beyond_the_window():
    """9 tokens per frame with a 7-token window: the coarse stage places the window, the offset is kept, so the
    displacement is measured (the release dropped the offset and would report at most 3)."""
    f, h, w, d = 3, 12, 40, 128
    labels = region_labels(h, w, "one")
    vel = torch.tensor([[0.0, 9.0]])
    q, k = moving_fields_qk(f, h, w, d, vel, labels, sharpness=14.0, seed=4)
    res = windowed_amf(q, k, span=2, tile=(3, 4), window=7)
    truth = true_flow(res.pairs, vel, labels)
    ok = valid_mask(res.pairs, vel, labels, margin=1.0) & (res.pairs[:, 0] != res.pairs[:, 1])[:, None]
    assert ok.sum() > 50
    assert (res.flow - truth).norm(dim=-1)[ok].max() < 0.5
    assert res.flow[ok][:, 1].min() > 8.5


def test_motion_difference_larger_than_window_inside_a_tile_is_flagged():
    """A tile straddling two regions whose motions differ by more than the window: the window follows the
    tile centre's region, so the other region's queries cannot be measured. They come out wrong (global
    gets them right), and at_border flags most of them while no correctly measured query is flagged."""
    f, h, w, d = 3, 12, 40, 128
    xs = torch.arange(w)[None].expand(h, w)
    labels = (xs >= 10).long()  # the tile of columns 8..11 straddles the boundary, its centre (col 10) moves
    vel = torch.tensor([[0.0, 0.0], [0.0, 9.0]])
    q, k = moving_fields_qk(f, h, w, d, vel, labels, sharpness=14.0, seed=2)
    res = windowed_amf(q, k, span=2, tile=(3, 4), window=7)
    glob = global_amf(q, k, res.pairs)
    truth = true_flow(res.pairs, vel, labels)
    ok = valid_mask(res.pairs, vel, labels, margin=1.0) & (res.pairs[:, 0] != res.pairs[:, 1])[:, None]
    straddle = torch.zeros(h, w, dtype=torch.bool)
    straddle[:, 8:10] = True  # the still queries of that tile
    lost = ok & straddle.flatten()[None]
    rest = ok & ~straddle.flatten()[None]
    assert lost.sum() >= 10 and rest.sum() > 100
    err = (res.flow - truth).norm(dim=-1)
    assert err[lost].min() > 3.0  # honestly wrong, not silently near the truth
    assert (glob - truth).norm(dim=-1)[lost].max() < 0.5
    assert err[rest].max() < 0.5
    assert res.at_border[lost].float().mean() >= 0.5
    assert not res.at_border[rest].any()


@pytest.mark.parametrize("h,w,l", [(30, 52, 21), (5, 7, 5), (4, 4, 4), (6, 9, 1)])
def test_window_always_inside_grid_without_duplicates(h, w, l):
    """Every centre on a half-token lattice from 3 tokens outside the grid to 3 beyond it (edges, corners)."""
    cy, cx = torch.meshgrid(torch.arange(-3.0, h + 3, 0.5), torch.arange(-3.0, w + 3, 0.5), indexing="ij")
    centre = torch.stack([cy.flatten(), cx.flatten()], -1)
    start = window_start_from_centre(centre, l, h, w)  # (N, 2)
    ar = torch.arange(l)
    ys = start[:, 0, None] + ar  # (N, l) rows of the window
    xs = start[:, 1, None] + ar
    assert ys.min() >= 0 and ys.max() < h and xs.min() >= 0 and xs.max() < w
    keys = (ys[:, :, None] * w + xs[:, None, :]).reshape(len(centre), -1).sort(-1).values  # flat key indices
    assert keys.shape[1] == l * l and bool((keys[:, 1:] > keys[:, :-1]).all())  # l^2 distinct keys
    # the window covers the (truncated, grid-clamped) centre: as centred as the grid allows
    r = torch.trunc(centre).long()
    ry, rx = r[:, 0].clamp(0, h - 1), r[:, 1].clamp(0, w - 1)
    assert bool(((ys[:, 0] <= ry) & (ry <= ys[:, -1]) & (xs[:, 0] <= rx) & (rx <= xs[:, -1])).all())
    # and exactly centred wherever the grid leaves room
    room = (r[:, 0] >= l // 2) & (r[:, 0] <= h - 1 - (l - 1 - l // 2))
    assert torch.equal(ys[room, l // 2], r[room, 0])


def test_window_offsets_in_amf_are_inside_grid_at_corners():
    """End to end through windowed_amf: regions pushing matches to every edge keep whole windows."""
    f, h, w, d = 2, 9, 11, 32
    labels = region_labels(h, w, "quads")
    vel = torch.tensor([[-3.0, -3.0], [-3.0, 3.0], [3.0, -3.0], [3.0, 3.0]])
    q, k = moving_fields_qk(f, h, w, d, vel, labels, sharpness=14.0, seed=5)
    res = windowed_amf(q, k, span=2, tile=(2, 3), window=5)
    st = res.window_start[res.pairs[:, 0] != res.pairs[:, 1]]
    assert st[..., 0].min() >= 0 and st[..., 0].max() <= h - 5
    assert st[..., 1].min() >= 0 and st[..., 1].max() <= w - 5
    assert res.flow.shape == (len(res.pairs), h * w, 2)


def test_tile_centres_as_release_and_partial_tiles():
    # Release rule: rows th // 2, th + th // 2, ...; columns tw // 2, ... (3x4 tiles: rows 1, 4; columns 2, 6).
    # The partial last row of tiles (row 6 only) and column of tiles (columns 8, 9) use their own size: 6, 9.
    c = tile_centres(7, 10, (3, 4))
    assert c.tolist() == [[1, 2], [1, 6], [1, 9], [4, 2], [4, 6], [4, 9], [6, 2], [6, 6], [6, 9]]
    # Even tile sizes take the lower/right middle token (the release's tw // 2), odd ones the middle.
    assert tile_centres(4, 4, (2, 2)).tolist() == [[1, 1], [1, 3], [3, 1], [3, 3]]
    assert tile_centres(30, 52, (3, 4))[:2].tolist() == [[1, 2], [1, 6]]


def test_window_centre_truncated_as_release():
    # Soft-argmax centres (y, x) -> window start = trunc(centre) - l // 2, then clamped into the grid.
    centre = torch.tensor([[2.7, 5.5], [4.5, 6.99], [0.4, 9.6], [8.9, 1.0]])
    start = window_start_from_centre(centre, 3, 10, 10)
    # by hand: trunc -> (2, 5), (4, 6), (0, 9), (8, 1); minus 1; clamp to [0, 7]
    assert start.tolist() == [[1, 4], [3, 5], [0, 7], [7, 0]]


def test_windowed_rejects_window_larger_than_grid():
    q = torch.randn(2, 4, 5, 8)
    with pytest.raises(ValueError, match="window 6"):
        windowed_amf(q, q, window=6, tile=(2, 2))


@pytest.mark.parametrize("materialize", [False, True])
def test_global_amf_matches_float64_brute_force(materialize):
    torch.manual_seed(0)
    q, k = torch.randn(3, 3, 4, 6), torch.randn(3, 3, 4, 6)
    pairs = all_pairs(3)
    out = global_amf(q, k, pairs, scale=0.7, chunk=4, materialize=materialize)
    pos = grid_positions(3, 4, dtype=torch.float64)
    for p, (i, j) in enumerate(pairs.tolist()):
        for s in range(12):
            logits = [0.7 * float(q[i].reshape(12, 6)[s].double() @ k[j].reshape(12, 6)[t].double()) for t in range(12)]
            m = max(logits)
            wts = [pow(2.718281828459045, v - m) for v in logits]
            z = sum(wts)
            exp = [sum(wts[t] * float(pos[t, a]) for t in range(12)) / z - float(pos[s, a]) for a in range(2)]
            assert abs(float(out[p, s, 0]) - exp[0]) < 1e-4 and abs(float(out[p, s, 1]) - exp[1]) < 1e-4


def test_global_amf_fused_and_materialized_gradients_agree():
    torch.manual_seed(1)
    q, k = torch.randn(4, 3, 5, 8, dtype=torch.float64), torch.randn(4, 3, 5, 8, dtype=torch.float64)
    grads = []
    for materialize in (False, True):
        qg, kg = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        global_amf(qg, kg, chunk=3, materialize=materialize).pow(2).sum().backward()
        grads.append((qg.grad, kg.grad))
    assert grads[0][0].abs().max() > 1e-3  # the loss depends on q at all
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-9, atol=1e-10)


def test_losses_hand_computed():
    pairs = torch.tensor([[0, 0], [0, 1], [0, 3]])
    w = distance_weights(pairs, span=4)
    assert torch.allclose(w, torch.tensor([1.0, 1.0 - 0.2 / 3, 0.8]))
    ref = torch.zeros(3, 2, 2)
    gen = torch.zeros(3, 2, 2)
    gen[2, 1, 0] = 2.0  # one entry off by 2 on the d = 3 pair
    # squared norm over a pair's S x 2 entries, weighted, mean over the 3 pairs
    assert abs(float(weighted_amf_loss(ref, gen, w)) - 0.8 * 4 / 3) < 1e-6
    ref2 = torch.zeros(1, 3, 2)
    ref2[0, 0] = torch.tensor([0.0, 1.0])  # only token 0 moves (along x only)
    gen2 = torch.full((1, 3, 2), 5.0)
    # masked to token 0, both components: ((0-5)^2 + (1-5)^2) / 2
    assert abs(float(masked_amf_loss(ref2, gen2)) - 20.5) < 1e-6
    wk = torch.zeros(4, 1, 2)
    wk[2] = torch.tensor([[1.0, 3.0]])  # pairs (0,0) (0,1) (0,2) (1,2): frame 0 has j = 1, 2
    wp = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 2]])
    # frame 0: one consecutive change (j = 1 -> 2) of one tile, L2 norm over the 2 slots: sqrt(1 + 9);
    # frame 1 has a single j and no term
    assert abs(float(window_consistency_loss(wk, wp)) - 10 ** 0.5) < 1e-6


def _weighted_amf_reference(ref, gen, w) -> float:
    """The spec's formula in float64 loops: (1 / P) sum_p w_p sum_{s, c} (ref - gen)^2."""
    total = 0.0
    for p in range(ref.shape[0]):
        sq = sum((float(ref[p, s, c]) - float(gen[p, s, c])) ** 2 for s in range(ref.shape[1]) for c in range(2))
        total += float(w[p]) * sq
    return total / ref.shape[0]


def _window_reference(wk, pairs) -> float:
    """The release's formula in float64 loops: per frame i with >= 2 windows j > i (sorted by j), the mean over
    (consecutive j, tile) of sqrt(sum over slots of the squared change); then the mean over those frames."""
    terms = []
    for i in sorted({int(a) for a in pairs[:, 0]}):
        js = sorted((int(b), n) for n, (a, b) in enumerate(pairs.tolist()) if a == i and b > i)
        if len(js) < 2:
            continue
        norms = []
        for (_, n0), (_, n1) in zip(js[:-1], js[1:]):
            for t in range(wk.shape[1]):
                norms.append(sum((float(wk[n1, t, m]) - float(wk[n0, t, m])) ** 2 for m in range(wk.shape[2])) ** 0.5)
        terms.append(sum(norms) / len(norms))
    return sum(terms) / len(terms)


def test_fastvmt_losses_match_float64_references_and_gradients():
    torch.manual_seed(3)
    pairs = window_pairs(6, 4)
    p, s = len(pairs), 10
    ref, gen = torch.randn(p, s, 2), torch.randn(p, s, 2, requires_grad=True)
    w = distance_weights(pairs, 4)
    loss = weighted_amf_loss(ref, gen, w)
    assert abs(float(loss.detach()) - _weighted_amf_reference(ref, gen.detach(), w)) < 1e-4 * float(loss.detach())
    loss.backward()
    # d/d gen of (1/P) w_p ||ref - gen||^2 = -2 w_p (ref - gen) / P, by hand
    want = -2.0 * w.double()[:, None, None] * (ref.double() - gen.detach().double()) / p
    torch.testing.assert_close(gen.grad.double(), want, rtol=1e-5, atol=1e-7)
    wk = torch.randn(p, 3, 9, requires_grad=True)
    lw = window_consistency_loss(wk, pairs)
    assert abs(float(lw.detach()) - _window_reference(wk.detach(), pairs)) < 1e-5 * float(lw.detach())
    # gradient against central differences of the float64 reference, on a few entries
    lw.backward()
    base = wk.detach().double()
    for idx in [(1, 0, 0), (2, 2, 5), (7, 1, 8)]:
        e = torch.zeros_like(base)
        e[idx] = 1e-4
        fd = (_window_reference(base + e, pairs) - _window_reference(base - e, pairs)) / 2e-4
        assert abs(float(wk.grad[idx]) - fd) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("h,w", [(4, 5), (5, 4)])
def test_windowed_amf_gradient_matches_finite_differences(h, w):
    """The fine stage has a hand-written backward (band gradients accumulated in place); it must be exact
    both for bands of columns (landscape grid) and bands of rows (portrait grid)."""
    torch.manual_seed(0)
    q = torch.randn(3, h, w, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, h, w, 4, dtype=torch.float64, requires_grad=True)

    def fn(qq, kk):
        r = windowed_amf(qq, kk, span=2, tile=(2, 2), window=3, scale=1.3)
        return r.flow, r.window_keys

    assert torch.autograd.gradcheck(fn, (q, k), eps=1e-6, atol=1e-5)


def test_transposed_grid_gives_transposed_flow():
    """Transposing the grid (and the tile) transposes the AMF and swaps (dy, dx): the row-band and column-band
    forms of the fine stage (picked by the grid's shorter side) compute the same attention."""
    torch.manual_seed(1)
    q, k = torch.randn(3, 7, 10, 8, dtype=torch.float64), torch.randn(3, 7, 10, 8, dtype=torch.float64)
    a = windowed_amf(q, k, span=3, tile=(2, 3), window=5, scale=1.5)
    b = windowed_amf(q.transpose(1, 2), k.transpose(1, 2), span=3, tile=(3, 2), window=5, scale=1.5)
    p = len(a.pairs)
    fa = a.flow.reshape(p, 7, 10, 2)
    fb = b.flow.reshape(p, 10, 7, 2).transpose(1, 2).flip(-1)
    assert (fa - fb).abs().max() < 1e-10
    assert fa[a.pairs[:, 0] != a.pairs[:, 1]].abs().max() > 0.5  # inter-frame pairs are far from trivial
    assert torch.equal(a.at_border.reshape(p, 7, 10), b.at_border.reshape(p, 10, 7).transpose(1, 2))


def _reference_fine(q, k, pi, pj, start, tok, scale, window):
    """Plain autograd: gather each entry's l x l window keys, softmax, expected absolute position; argmax."""
    f, h, w, d = q.shape
    ar = torch.arange(window)
    targets, hits = [], []
    for e in range(len(pi)):
        y0, x0 = start[e].tolist()
        keys = k[pj[e], y0 : y0 + window, x0 : x0 + window].reshape(-1, d)
        yy, xx = torch.meshgrid(y0 + ar, x0 + ar, indexing="ij")
        pos = torch.stack([yy.flatten(), xx.flatten()], -1).to(q.dtype)
        logits = scale * q[pi[e]].reshape(h * w, d)[tok[e]] @ keys.T  # (n, l2)
        targets.append(logits.softmax(-1) @ pos)
        best = logits.argmax(-1)
        hits.append(torch.stack([best // window, best % window], -1))
    return torch.stack(targets), torch.stack(hits)


@pytest.mark.parametrize("h,w", [(6, 9), (9, 6)])  # bands of columns, bands of rows
@pytest.mark.parametrize("group_cost", [0, 10**9])  # one group per band start; widened bands shared
def test_fine_stage_matches_float64_autograd_reference(h, w, group_cost):
    """The fine stage's masked-band forward and hand-written backward against gathered windows + softmax."""
    from vmt.motion.amf import _fine_stage

    torch.manual_seed(0)
    f, d, window, n = 4, 8, 4, 5
    q = torch.randn(f, h, w, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(f, h, w, d, dtype=torch.float64, requires_grad=True)
    e = 40
    pi = torch.randint(0, f, (e,))
    pj = torch.randint(0, 2, (e,)) + 1  # two key frames: several entries share a key frame and a band start
    start = torch.stack([torch.randint(0, h - window + 1, (e,)), torch.randint(0, w - window + 1, (e,))], -1)
    tok = torch.randint(0, h * w, (e, n))
    tok[:, -1] = tok[:, 0]  # a repeated query, as in a partial tile
    scale = 0.9
    out, hit = _fine_stage(q, k, pi, pj, start, tok, scale, window, torch.float64, group_cost)
    ref, ref_hit = _reference_fine(q, k, pi, pj, start, tok, scale, window)
    assert (out - ref).abs().max() < 1e-12
    assert torch.equal(hit, ref_hit)
    weights = torch.randn(out.shape, dtype=torch.float64)
    dq, dk = torch.autograd.grad((out * weights).sum(), (q, k))
    rq, rk = torch.autograd.grad((ref * weights).sum(), (q, k))
    assert rk.abs().max() > 0.1 and rq.abs().max() > 0.1
    assert (dq - rq).abs().max() < 1e-12 and (dk - rk).abs().max() < 1e-12
