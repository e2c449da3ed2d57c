"""Shared fixtures: tiny Wan model folders built once per session, synthetic clips, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when this checkout has no shared folder beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside this checkout")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def private_user_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own empty XDG_CACHE_HOME (what `vmt transfer` caches by default goes there, never
    into the user's ~/.cache, and no test sees another's entries). Hugging Face and torch keep finding their
    caches where they were."""
    home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    for var, sub in (("HF_HOME", "huggingface"), ("TORCH_HOME", "torch")):
        if not os.environ.get(var):
            monkeypatch.setenv(var, os.path.join(home, sub))
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def _tiny(tmp_path_factory, kind: str) -> Path:
    from vmt.testing.tiny_wan import save_tiny_wan

    return save_tiny_wan(tmp_path_factory.mktemp(f"tiny-{kind}") / "model", kind)


@pytest.fixture(scope="session")
def tiny_t2v(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "t2v")


@pytest.fixture(scope="session")
def tiny_i2v(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "i2v")


@pytest.fixture(scope="session")
def tiny_i2v_clip(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "i2v-clip")


@pytest.fixture(scope="session")
def tiny_t2v_2expert(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "t2v-2expert")


def moving_pattern(num_frames: int, height: int, width: int, dx: int = 2, dy: int = 1, seed: int = 0) -> np.ndarray:
    """A smooth random texture translating by (dx, dy) pixels per frame: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    bh, bw = height + abs(dy) * num_frames + 8, width + abs(dx) * num_frames + 8
    lum = rng.random((bh, bw))
    # Smooth luminance texture with slowly varying colour, like real footage: H.264 at 4:2:0 keeps such
    # content within a few levels (per-pixel colour noise is the codec's worst case and no real video).
    for _ in range(12):
        for axis in (0, 1):
            lum = (lum + np.roll(lum, 1, axis) + np.roll(lum, -1, axis)) / 3
    lum = (lum - lum.min()) / (lum.max() - lum.min())
    yy, xx = np.meshgrid(np.linspace(0, 1, bh), np.linspace(0, 1, bw), indexing="ij")
    tint = np.stack([0.8 + 0.2 * xx, 0.9 - 0.2 * yy, 0.7 + 0.2 * yy * xx], axis=-1)
    big = 0.1 + 0.85 * lum[..., None] * tint
    frames = []
    for t in range(num_frames):
        y0, x0 = 4 + (dy * t if dy >= 0 else abs(dy) * (num_frames - t)), 4 + (dx * t if dx >= 0 else abs(dx) * (num_frames - t))
        frames.append(big[y0 : y0 + height, x0 : x0 + width])
    return (np.stack(frames) * 255).round().astype(np.uint8)


@pytest.fixture
def pattern_clip() -> np.ndarray:
    return moving_pattern(12, 48, 64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of two uint8 images in dB (inf when equal), computed here in float64."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def vae_round_trip(model: Path, image: np.ndarray) -> np.ndarray:
    """The image through a tiny Wan folder's VAE alone (diffusers' normalisation, encode mode, decode), as
    uint8: what an image-to-video model's first frame should come back as."""
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    vae = AutoencoderKLWan.from_pretrained(str(model / "vae"))
    x = VideoProcessor(vae_scale_factor=8).preprocess(Image.fromarray(image), *image.shape[:2])
    with torch.no_grad():
        y = vae.decode(vae.encode(x[:, :, None]).latent_dist.mode()).sample
    return ((y[0, :, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
