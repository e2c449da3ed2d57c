"""G3AN-style three-stream generator conditioned on a content latent z_x and movement latents z_v.

Streams per block: spatial (2D, the appearance: one image), temporal (1D over time: the motion), video
(factorised 3D: temporal then spatial transposed convolutions). Fusion per block: video += temporal broadcast
over H, W; then video = concat(spatial broadcast over T, video), as in G3AN.

Output (design): the video stream predicts, per frame t, a residual on top of a reference frame as a
pixel-space blend x_t = x_ref + m_t * (g_t - x_ref), with a mask m_t in (0, 1) and a frame g_t in (-1, 1);
x_0 = x_ref (m_0 = 0). Every frame is a convex combination of two frames in [-1, 1], so it stays in range
without squashing, pixels at the range limits (a black background) get the same gradient as any other, and
the chain cannot compound a saturation from clip to clip. (An earlier version added increments in logit space,
x_t = tanh(atanh(x_ref) + d_1 + ... + d_t): black pixels sat where tanh has no gradient, and the logits of a
recall chain performed a random walk that ended in black or saturated frames.) The reference is the real
first frame when reconstructing, the previous clip's reference frame in the recall chain, and the spatial
stream's own image when sampling from scratch. Frames are in [-1, 1].

Warping (design, `cfg.warp`; on in the cpu and tiny presets, off in the paper preset as in G3AN): the blend
partner of g_t is the reference *translated* by the summed per-frame steps s_1 + ... + s_t (pixels, from a
small MLP of z_v; bilinear, reflection at the borders):
x_t = w_t + m_t * (g_t - w_t), w_t = warp(x_ref, s_1 + ... + s_t), s_0 = 0. A bilinear warp of a frame in
[-1, 1] stays in [-1, 1], so frames are still convex combinations of two in-range frames. Why: without it the
video stream can move something only by redrawing it from the 32-number content code at a new position, which
a small generator does not learn in CPU budgets; L1 then prefers fading the reference to black (held-out
moving digits: L1 0.083 after 600 VAE-only steps, all-black clip 0.103, digits faded out by frame 4). Moving a
digit is a translation: with the warp it is two numbers per frame. Training adds a penalty on the mean mask
and an image-pyramid L1 (train.py), so that the shifts, not the mask, carry the motion.

Normalisation (design): GroupNorm instead of G3AN's BatchNorm, here and in the encoders. A sample then does
not depend on the rest of its batch, and train and eval mode compute the same function: with BatchNorm, the
running statistics (averaged over reconstructions from posterior latents and samples from the prior) did not
match any input the sampler gives, and long chains collapsed in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from vmt.longgen.attention import FactorisedSelfAttention
from vmt.longgen.config import LongGenConfig

class GeneratorParts(NamedTuple):
    """video (B, 3, T, H, W) = warped + mask * (redrawn - warped); image: the spatial stream's own frame
    (B, 3, H, W); mask (B, 1, T, H, W) in [0, 1), 0 at t = 0; warped: the reference moved by the shifts alone
    (the reference in place without warping), (B, 3, T, H, W)."""

    video: torch.Tensor
    image: torch.Tensor
    mask: torch.Tensor
    warped: torch.Tensor


@dataclass(frozen=True)
class WarpMode:
    """How a warping generator moves the reference frame. whole_pixel: round the summed shifts to whole pixels
    (a lossless copy). fill: the value of pixels moved in from outside the frame, in [-1, 1]; None mirrors
    the frame at its borders.

    Training uses the default (sub-pixel, mirrored): every shift gets a gradient, and content cannot leave the
    canvas while the shifts do not yet know the motion. Long chains sample with `CHAIN_WARP`: a chain of 143
    bilinear warps (1,000 frames) erases a digit's edges (benchmarks/longgen_warp_blur.py), and mirrored
    borders fold content at the border into mirrored copies that the next clips carry on.
    """

    whole_pixel: bool = False
    fill: float | None = None
    # Reflect each frame's displacement at the walls so that the reference's content (pixels away from
    # `fill`) stays inside the frame: an elastic bounce, the law of the moving-digits data. Needs a `fill`;
    # content that fills the frame (faces) moves freely.
    # Why: the shifts decoded from z_v are a few pixels off by the end of a clip (centre-of-ink error 3.6 px
    # at frame 7 in reconstructions), chains add these errors up, and with a constant fill any content pushed
    # over a border is gone for good: without it, digits left the frame one by one within ~200 frames.
    bounce: bool = False

    def __post_init__(self) -> None:
        if self.bounce and self.fill is None:
            raise ValueError("WarpMode(bounce=True) needs a constant fill to tell content from background")


TRAIN_WARP = WarpMode()
# For content on a dark background, as the moving digits: whole pixels, black enters, content bounces.
CHAIN_WARP = WarpMode(whole_pixel=True, fill=-1.0, bounce=True)


def _sn(m: nn.Module) -> nn.Module:
    return spectral_norm(m)


def warp_frames(image: torch.Tensor, flow: torch.Tensor, padding: str = "border",
                fill: float = 0.0) -> torch.Tensor:
    """Backward-warp one image per sample by T flows: image (B, C, H, W), flow (B, 2, T, H, W) in pixels
    (channel 0: x, 1: y) -> (B, C, T, H, W) with out[t](p) = image(p + flow[t](p)), bilinear. Outside the
    image, `padding` "border" repeats the edge pixels, "reflection" mirrors about their centres, "constant"
    reads `fill`."""
    if padding == "constant":
        return warp_frames(image - fill, flow, "zeros") + fill
    b, c, h, w = image.shape
    t = flow.shape[2]
    ys = torch.arange(h, dtype=flow.dtype, device=flow.device)
    xs = torch.arange(w, dtype=flow.dtype, device=flow.device)
    gx = xs.view(1, 1, 1, w) + flow[:, 0]  # (B, T, H, W) source x in pixels
    gy = ys.view(1, 1, h, 1) + flow[:, 1]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels.
    grid = torch.stack([2 * gx / max(w - 1, 1) - 1, 2 * gy / max(h - 1, 1) - 1], -1).reshape(b * t, h, w, 2)
    src = image[:, None].expand(-1, t, -1, -1, -1).reshape(b * t, c, h, w)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode=padding, align_corners=True)
    return out.reshape(b, t, c, h, w).transpose(1, 2)


def content_box(image: torch.Tensor, fill: float, threshold: float = 0.25) -> torch.Tensor:
    """(B, C, H, W) -> (B, 4) pixel bounds (x0, x1, y0, y1) of the pixels more than `threshold` from `fill`
    in any channel; an image without such pixels gets the whole frame (bounce_shifts then leaves it alone)."""
    b, _, h, w = image.shape
    on = (image - fill).abs().amax(1) > threshold  # (B, H, W)
    bounds = []
    for along, n in ((on.any(1), w), (on.any(2), h)):  # columns with content, rows with content
        idx = torch.arange(n, device=image.device).expand(b, n)
        first = torch.where(along, idx, n).amin(1)
        last = torch.where(along, idx, -1).amax(1)
        empty = ~along.any(1)
        bounds += [torch.where(empty, 0, first), torch.where(empty, n - 1, last)]
    return torch.stack(bounds, 1)


def bounce_shifts(shift: torch.Tensor, image: torch.Tensor, fill: float) -> torch.Tensor:
    """Fold backward-warp shifts (B, 2, T, 1, 1) (pixels, x then y; content moves by -shift) so that the
    content box of `image` (B, C, H, W) stays in the frame: a displacement past a wall is reflected back,
    as a ball bounces. Along an axis that the content spans, shifts are left as they are."""
    b, _, h, w = image.shape
    box = content_box(image, fill).to(shift.dtype)  # (B, 4)
    out = []
    for axis, size in ((0, w), (1, h)):
        lo = -box[:, 2 * axis].view(b, 1, 1, 1)  # the content may move by lo..hi pixels
        hi = (size - 1 - box[:, 2 * axis + 1]).view(b, 1, 1, 1)
        span = hi - lo
        y = torch.remainder(-shift[:, axis] - lo, (2 * span).clamp(min=1e-6))
        moved = lo + torch.where(y > span, 2 * span - y, y)
        # Content that spans the whole axis has no walls to bounce off: its shifts stay as they are.
        out.append(torch.where(span > 0, -moved, shift[:, axis]))
    return torch.stack(out, 1)


def groups_for(c: int) -> int:
    """GroupNorm groups for `c` channels: 8 when they divide evenly, else the largest of 4, 2, 1 that does."""
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


def _bn_relu(c: int, dims: int) -> list[nn.Module]:
    # `dims` is kept for the call sites' readability; GroupNorm handles (B, C, *) of any rank.
    return [nn.GroupNorm(groups_for(c), c), nn.ReLU(inplace=True)]


class _FirstBlock(nn.Module):
    """z_x (B, Dx), z_v (B, Dv, T0) -> spatial (B, C, 4, 4), temporal (B, C, T0+3), video (B, C, T0+3, 4, 4)."""

    def __init__(self, dim_x: int, dim_v: int, c: int):
        super().__init__()
        self.spatial = nn.Sequential(_sn(nn.ConvTranspose2d(dim_x, c, 4, bias=False)), *_bn_relu(c, 2))
        self.temporal = nn.Sequential(_sn(nn.ConvTranspose1d(dim_v, c, 4, bias=False)), *_bn_relu(c, 1))
        self.video = nn.Sequential(
            _sn(nn.ConvTranspose3d(dim_x + dim_v, c, (4, 1, 1), bias=False)), *_bn_relu(c, 3),
            _sn(nn.ConvTranspose3d(c, c, (1, 4, 4), bias=False)), *_bn_relu(c, 3),
        )

    def forward(self, z_x: torch.Tensor, z_v: torch.Tensor):
        t0 = z_v.shape[-1]
        s = self.spatial(z_x[:, :, None, None])
        t = self.temporal(z_v)
        v_in = torch.cat([z_x[:, :, None].expand(-1, -1, t0), z_v], 1)[..., None, None]
        return s, t, self.video(v_in)


class _Block(nn.Module):
    """Doubles H, W (and T when `t_up`); the video input holds concat(spatial, video) of the last block."""

    def __init__(self, c_in: int, c: int, t_up: bool):
        super().__init__()
        self.spatial = nn.Sequential(_sn(nn.ConvTranspose2d(c_in, c, 4, 2, 1, bias=False)), *_bn_relu(c, 2))
        if t_up:
            tconv1 = nn.ConvTranspose1d(c_in, c, 4, 2, 1, bias=False)
            tconv3 = nn.ConvTranspose3d(2 * c_in, c, (4, 1, 1), (2, 1, 1), (1, 0, 0), bias=False)
        else:
            tconv1 = nn.Conv1d(c_in, c, 3, 1, 1, bias=False)
            tconv3 = nn.Conv3d(2 * c_in, c, (3, 1, 1), 1, (1, 0, 0), bias=False)
        self.temporal = nn.Sequential(_sn(tconv1), *_bn_relu(c, 1))
        self.video = nn.Sequential(
            _sn(tconv3), *_bn_relu(c, 3),
            _sn(nn.ConvTranspose3d(c, c, (1, 4, 4), (1, 2, 2), (0, 1, 1), bias=False)), *_bn_relu(c, 3),
        )

    def forward(self, s, t, v):
        return self.spatial(s), self.temporal(t), self.video(v)


def _fuse(s: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    v = v + t[..., None, None]
    return torch.cat([s[:, :, None].expand(-1, -1, v.shape[2], -1, -1), v], 1)


class Generator(nn.Module):
    """(z_x (B, Dx), z_v (B, T0, Dv), ref (B, 3, H, W) or None) -> video (B, 3, T, H, W) in [-1, 1]."""

    def __init__(self, cfg: LongGenConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.first = _FirstBlock(cfg.dim_content, cfg.dim_motion, ch[0])
        self.blocks = nn.ModuleList(
            _Block(ch[i], ch[i + 1], up) for i, up in enumerate(cfg.temporal_upsampling)
        )
        # F-SA after the second-to-last block (G3AN: after block 4 of 5), on the fused video features.
        self.attn_after = len(self.blocks) - 2 if cfg.attention else None
        self.attention = FactorisedSelfAttention(2 * ch[-2]) if cfg.attention else None
        # 3 channels of the frame g_t and 1 of the mask m_t's logit.
        self.to_frames = nn.Conv3d(2 * ch[-1], 4, (1, 3, 3), 1, (0, 1, 1))
        self.to_image = nn.Conv2d(ch[-1], 3, 3, 1, 1)
        if cfg.warp:
            # One translation per frame step (x, y) in pixels, a small MLP of z_v alone. (A dense flow from the
            # video stream tore glyphs apart; its mean over the frame did not learn the motion in 200 steps; a
            # head on G3AN's temporal stream, supervised on the true motion, reached r 0.44 after 300 steps,
            # this MLP 0.75, a linear probe on z_v 0.98 after 100: through the normalised, spectrally-normed
            # streams the movement encoder got little gradient.)
            hidden = 8 * cfg.dim_motion
            self.to_shift = nn.Sequential(nn.Linear(cfg.motion_steps * cfg.dim_motion, hidden), nn.ReLU(),
                                          nn.Linear(hidden, 2 * cfg.frames))
            # Units: one output unit is size/8 pixels, so a step of a few pixels is ~1 unit.
            self.shift_scale = cfg.size / 8
            with torch.no_grad():
                # Start from small shifts (frames close to copies of the reference), not from ones that put the
                # digit pixels off before the first step. Small, not zero: with zero weights no gradient
                # reaches z_v, so the movement encoder never starts to encode the motion.
                self.to_shift[-1].weight.mul_(0.1)
                self.to_shift[-1].bias.zero_()
                # Start mostly warping (m ~ 0.12), not mostly redrawing: redrawing fades to black first.
                self.to_frames.bias[3] = -2.0

    def features(self, z_x: torch.Tensor, z_v: torch.Tensor):
        s, t, v = self.first(z_x, z_v.transpose(1, 2))
        v = _fuse(s, t, v)
        if self.attn_after == -1:
            v = self.attention(v)
        for i, block in enumerate(self.blocks):
            s, t, v = block(s, t, v)
            v = _fuse(s, t, v)
            if i == self.attn_after:
                v = self.attention(v)
        return s, t, v

    def forward(self, z_x: torch.Tensor, z_v: torch.Tensor, ref: torch.Tensor | None = None,
                warp: WarpMode | None = None) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1]."""
        return self.parts(z_x, z_v, ref, warp).video

    def parts(self, z_x: torch.Tensor, z_v: torch.Tensor, ref: torch.Tensor | None = None,
              warp: WarpMode | None = None) -> GeneratorParts:
        """The video and the pieces it is blended from (training puts losses on them). `warp`: how the
        reference is moved (warping generators only; default TRAIN_WARP)."""
        warp = warp or TRAIN_WARP
        s, t, v = self.features(z_x, z_v)
        own = torch.tanh(self.to_image(s))
        base = own if ref is None else ref
        out = self.to_frames(v)
        frames, mask = torch.tanh(out[:, :3]), torch.sigmoid(out[:, 3:4])
        mask = torch.cat([torch.zeros_like(mask[:, :, :1]), mask[:, :, 1:]], 2)  # x_0 is the reference itself
        if not self.cfg.warp:
            partner = base[:, :, None]
        else:
            # Frame t warps the reference once, by the summed steps s_1 + ... + s_t (the spec's
            # x_t = x_(t-1) + v_t, in displacement). Warping the previous *output* instead (recursively)
            # resampled a digit t times and, once the mask had redrawn frame t, the shifts of every later frame
            # warped that redrawn frame and got no gradient from the reference: digits moved for 2-3 frames,
            # then faded to black.
            step = self.steps(z_v)[..., None, None]  # (B, 2, T, 1, 1)
            shift = torch.cat([torch.zeros_like(step[:, :, :1]), step[:, :, 1:]], 2).cumsum(2)
            # Reflection at the borders: with border padding, moving the digit off the canvas was the cheapest
            # way to cut L1 while the movement encoder did not yet know the direction (a digit in the wrong
            # place costs twice its area, a missing one once), and off the canvas the shift gets no gradient.
            # Mirrored, a warp keeps the content on the canvas, as the data's bounces do.
            if warp.bounce:
                shift = bounce_shifts(shift, base, warp.fill)
            if warp.whole_pixel:
                shift = shift.round()
            flow = shift.expand(-1, -1, -1, *out.shape[3:])
            if warp.fill is None:
                partner = warp_frames(base, flow, padding="reflection")
            else:
                partner = warp_frames(base, flow, padding="constant", fill=warp.fill)
        video = partner + mask * (frames - partner)
        return GeneratorParts(video=video, image=own, mask=mask, warped=partner.expand_as(video))

    def steps(self, z_v: torch.Tensor) -> torch.Tensor:
        """Warp only: the per-frame translation steps (B, 2, T) in pixels (x, y) for z_v (B, T0, Dv); frame t
        samples the reference at p + steps[1] + ... + steps[t], so content moves by minus that sum."""
        return self.to_shift(z_v.flatten(1)).view(-1, 2, self.cfg.frames) * self.shift_scale

    def image(self, z_x: torch.Tensor) -> torch.Tensor:
        """The spatial stream's own first frame (B, 3, H, W) in [-1, 1] (the reference when there is none).
        The spatial stream reads z_x alone, so this runs it without the temporal and video streams."""
        s = self.first.spatial(z_x[:, :, None, None])
        for block in self.blocks:
            s = block.spatial(s)
        return torch.tanh(self.to_image(s))
