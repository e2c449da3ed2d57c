"""How much detail a recall chain of warping clips loses to resampling alone (no model involved).

A warping generator with its mask closed makes each clip's last frame the reference translated by the clip's
summed shift; the next clip starts from that frame, so a chain of n clips resamples the first reference n
times. This script applies n random translations (up to +-7 pixels per axis, one clip's worth; reflection at
the borders, as the generator does) to held-out moving-digit frames and reports the edge energy (mean
|horizontal| + |vertical| neighbour difference) relative to the original, for bilinear (what the generator
uses) and bicubic interpolation. With 8-frame clips, 7, 28 and 143 warps are ~50, ~200 and ~1,000 frames.

    python benchmarks/longgen_warp_blur.py
Writes benchmarks/results/longgen-warp-blur.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import save  # noqa: E402


def edge_energy(x) -> float:
    """Mean absolute neighbour difference along H plus along W of (B, C, H, W)."""
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def translate(image, dx, dy, mode: str):
    """Sample (B, C, H, W) at (x + dx_b, y + dy_b), pixels, reflection padding, align_corners=True."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = image.shape
    ys = torch.arange(h, dtype=image.dtype).view(1, h, 1)
    xs = torch.arange(w, dtype=image.dtype).view(1, 1, w)
    gx = (xs + dx.view(b, 1, 1)).expand(b, h, w)
    gy = (ys + dy.view(b, 1, 1)).expand(b, h, w)
    grid = torch.stack([2 * gx / (w - 1) - 1, 2 * gy / (h - 1) - 1], -1)
    return F.grid_sample(image, grid, mode=mode, padding_mode="reflection", align_corners=True)


def main() -> None:
    import numpy as np
    import torch

    from vmt.longgen.data import ClipSource, moving_digits

    held = ClipSource(list(moving_digits(64, 8, 32, seed=12345)), [f"h{i}" for i in range(64)])
    x0 = held.sample(64, 8, np.random.default_rng(0))[:, :, 0].double()
    marks = (1, 7, 28, 143)
    results = {"frames": int(x0.shape[0]), "size": 32, "max_shift_px": 7.0, "warps": list(marks), "modes": {}}
    for mode in ("bilinear", "bicubic"):
        g = torch.Generator().manual_seed(0)
        x, kept = x0.clone(), []
        for k in range(1, max(marks) + 1):
            d = torch.rand(2, x.shape[0], generator=g, dtype=torch.float64) * 14 - 7
            x = translate(x, d[0], d[1], mode).clamp(-1, 1)  # bicubic overshoots the range
            if k in marks:
                kept.append(edge_energy(x) / edge_energy(x0))
        results["modes"][mode] = {"edge_energy_vs_original": kept}
        print(f"{mode:<9} edge energy vs the original after " + ", ".join(
            f"{n} warps {v:.3f}" for n, v in zip(marks, kept)))
    save("longgen-warp-blur", results)


if __name__ == "__main__":
    main()
