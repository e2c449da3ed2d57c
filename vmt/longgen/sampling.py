"""Long sampling and whole-video reconstruction on top of the recall chain, as uint8 frame streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from vmt.longgen.model import EncGAN3
from vmt.longgen.recall import recall_chain, resolve_ref_index, to_uint8_frames
from vmt.runtime import make_generator


def stream_frames(model: EncGAN3, num_frames: int, *, seed: int = 0, **chain) -> Iterator[np.ndarray]:
    """Yield (t, H, W, 3) uint8 chunks (one per clip) of one long video; only one clip is alive at a time.
    `chain`: recall_chain's keywords (ref_index, carry_motion, standard_prior, motion_temperature, warp)."""
    model.eval()
    gen = make_generator(seed)
    for chunk in recall_chain(model, num_frames, generator=gen, **chain):
        yield to_uint8_frames(chunk[0])


def write_long_video(model: EncGAN3, num_frames: int, write: Callable[[np.ndarray], None], *, seed: int = 0,
                     on_clip: Callable[[int], None] | None = None, **chain) -> int:
    """Stream a long sample into `write` (e.g. VideoWriter.write) clip by clip; returns the frame count."""
    n = 0
    for chunk in stream_frames(model, num_frames, seed=seed, **chain):
        write(chunk)
        n += len(chunk)
        if on_clip is not None:
            on_clip(len(chunk))
    return n


@torch.no_grad()
def reconstruct_frames(model: EncGAN3, frames: np.ndarray, *, recall: bool = False,
                       on_clip: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
    """Reconstruct a whole video (T, H, W, 3) uint8 clip by clip; clips overlap by one frame.

    Each clip is encoded from the real frames; it starts from the real first frame, or with `recall` from the
    previously generated frame (the chain run closed-loop: errors then accumulate as in sampling).
    Yields (t, H, W, 3) uint8 chunks that add up to exactly len(frames) frames.
    """
    model.eval()
    dev = next(model.parameters()).device
    T = model.cfg.frames
    r = resolve_ref_index(-1, T)
    x = torch.from_numpy(np.array(frames)).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)
    total, start, prev_last = len(frames), 0, None
    while True:
        clip = x[:, start : start + T]
        n = clip.shape[1]
        if n < T:  # pad the tail by repeating the last frame; padded outputs are dropped
            clip = torch.cat([clip, clip[:, -1:].expand(-1, T - n, -1, -1)], 1)
        clip = clip[None].to(dev)
        ref = clip[:, :, 0] if (prev_last is None or not recall) else prev_last
        mu_x, _ = model.encode_content(ref)
        mu_v, _ = model.encode_motion(clip)
        out = model.decode(mu_x, mu_v, ref)
        first = 0 if start == 0 else 1
        chunk = to_uint8_frames(out[0, :, first:n])
        if len(chunk):
            yield chunk
            if on_clip is not None:
                on_clip(len(chunk))
        prev_last = out[:, :, r]
        if start + n >= total:
            return
        start += r


def write_sample_grid(model: EncGAN3, path, *, seed: int, rows: int = 6):
    """PNG of `rows` prior samples (one per row, frames left to right), written atomically (replacing)."""
    from pathlib import Path

    from PIL import Image

    from vmt.io.atomic import atomic_path

    was_training = model.training
    model.eval()
    with torch.no_grad():
        z_x, z_v = model.prior(rows, make_generator(seed))
        video = model.decode(z_x, z_v, None)  # (B, 3, T, H, W)
    model.train(was_training)
    x = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    b, c, t, h, w = x.shape
    grid = x.permute(0, 3, 2, 4, 1).reshape(b * h, t * w, c).numpy()
    with atomic_path(path, replace=True) as tmp:
        Image.fromarray(np.ascontiguousarray(grid)).save(tmp, format="PNG")
    return Path(path)
