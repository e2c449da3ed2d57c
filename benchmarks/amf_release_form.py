"""What the spec's deliberate fixes of the FastVMT release's windowed AMF change, measured on synthetic q/k with
known motion (the inputs of benchmarks/amf.py at 5 frames).

The release's fine stage, written out here from its description (docs/DESIGN.md, Differences from the
releases): window key rows/columns are `trunc(clamp(centre + offset, l // 2, size - l // 2 - 1))` per element
(not a clamped centre: windows near an edge repeat keys and never reach the outer l // 2 rows/columns); the
displacement is the in-window expected slot position minus the query's position inside its tile (the window's
and the tile's offsets dropped); slots with an odd linear index are zeroed in the expected position. Variants:

    vmt            windowed_amf (clamped centre, offsets kept, every slot)
    element-clamp  the release's per-element clamp, offsets kept, every slot (the clamp's own effect)
    release        per-element clamp, offsets dropped, odd slots zeroed (the release's form)

Reports the mean/max error in tokens against the known displacement (inter-frame pairs, unambiguous
tokens) and the mean |AMF| of a static scene (ground truth 0).

    python benchmarks/amf_release_form.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save  # noqa: E402

F, H, W, D = 5, 30, 52, 128
SPAN, TILE, WINDOW = 4, (3, 4), 21


def release_form_flow(q: torch.Tensor, k: torch.Tensor, pairs: torch.Tensor, keep_offset: bool,
                      all_slots: bool) -> torch.Tensor:
    """(P, S, 2) AMF of inter-frame pairs with the per-element window clamp; see the module docstring."""
    from vmt.motion.amf import grid_positions

    f, h, w, d = q.shape
    s, half, (th, tw) = h * w, WINDOW // 2, TILE
    ty, tx = h // th, w // tw
    pos = grid_positions(h, w, dtype=torch.float64)
    rows = torch.arange(th // 2, h, th)[:ty]
    cols = torch.arange(tw // 2, w, tw)[:tx]
    centre_idx = (rows[:, None] * w + cols[None, :]).flatten()
    offs = torch.arange(-half, half + 1, dtype=torch.float64)
    slot = torch.arange(WINDOW * WINDOW)
    keep = (slot % 2 == 0).double() if not all_slots else torch.ones(len(slot), dtype=torch.float64)
    in_tile = torch.stack(torch.meshgrid(torch.arange(th), torch.arange(tw), indexing="ij"), -1).reshape(-1, 2)
    scale = d**-0.5
    out = []
    for i, j in pairs.tolist():
        qi, kj = q[i].reshape(s, d).double(), k[j].reshape(s, d).double()
        c = torch.softmax(qi[centre_idx] @ kj.T * scale, -1) @ pos  # (T, 2) window centres
        wy = (c[:, :1] + offs).clamp(half, h - half - 1).long()  # (T, l) per element, then truncated
        wx = (c[:, 1:] + offs).clamp(half, w - half - 1).long()
        idx = (wy[:, :, None] * w + wx[:, None, :]).reshape(len(c), -1)  # (T, l*l), may repeat keys
        qt = qi.reshape(ty, th, tx, tw, d).permute(0, 2, 1, 3, 4).reshape(ty * tx, th * tw, d)
        p = torch.softmax(qt @ kj[idx].transpose(1, 2) * scale, -1)  # (T, n, l*l)
        if keep_offset:
            key_pos = torch.stack([wy[:, slot // WINDOW], wx[:, slot % WINDOW]], -1).double()  # (T, l*l, 2)
            tile_origin = torch.stack(torch.meshgrid(rows - th // 2, cols - tw // 2, indexing="ij"), -1)
            q_pos = tile_origin.reshape(-1, 1, 2) + in_tile[None]  # (T, n, 2)
            disp = (p * keep) @ key_pos - q_pos
        else:
            local = torch.stack([slot // WINDOW, slot % WINDOW], -1).double() * keep[:, None]
            disp = p @ local - in_tile[None].double()
        out.append(disp.reshape(ty, tx, th, tw, 2).permute(0, 2, 1, 3, 4).reshape(s, 2))
    return torch.stack(out)


def main() -> None:
    torch.set_num_threads(1)
    from vmt.motion.amf import window_pairs, windowed_amf
    from vmt.testing.motion_fields import moving_fields_qk, region_labels, true_flow, valid_mask

    labels = region_labels(H, W, "quads")
    rows = {}
    for scene, vel in (("moving", torch.tensor([[0.0, 1.0], [1.0, -1.0], [0.5, 0.25], [-0.75, 0.5]])),
                       ("static", torch.zeros(4, 2))):
        q, k = moving_fields_qk(F, H, W, D, vel, labels, sharpness=14.0, seed=0)
        pairs = window_pairs(F, SPAN)
        inter = pairs[:, 0] != pairs[:, 1]
        truth = true_flow(pairs[inter], vel, labels)
        ok = valid_mask(pairs[inter], vel, labels)
        flows = {
            "vmt": windowed_amf(q, k, span=SPAN, tile=TILE, window=WINDOW).flow[inter].double(),
            "element-clamp": release_form_flow(q, k, pairs[inter], keep_offset=True, all_slots=True),
            "release": release_form_flow(q, k, pairs[inter], keep_offset=False, all_slots=False),
        }
        for name, fl in flows.items():
            err = (fl - truth.double()).norm(dim=-1)[ok]
            rows.setdefault(name, {})[scene] = {"err_mean_tokens": round(float(err.mean()), 4),
                                                "err_max_tokens": round(float(err.max()), 4),
                                                "mean_abs_amf": round(float(fl.norm(dim=-1).mean()), 4)}
    for name, r in rows.items():
        print(f"{name:<14} moving: err mean {r['moving']['err_mean_tokens']:.3f} max {r['moving']['err_max_tokens']:.3f}"
              f" | static: mean |AMF| {r['static']['mean_abs_amf']:.3f} (truth 0)")
    save("amf_release_form", {"grid": [F, H, W], "dim": D, "tile": list(TILE), "window": WINDOW, "rows": rows})


if __name__ == "__main__":
    main()
