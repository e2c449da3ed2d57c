"""Still images for image-to-video: read and fitted to the output size as diffusers' Wan pipelines have them.

    image = read_image("photo.jpg", 480, 832)                 # (480, 832, 3) uint8, "stretch"
    image = read_image("photo.jpg", 480, 832, fit="crop")     # centre-cropped to 832:480 first

diffusers' WanImageToVideoPipeline (and the P&P release, which calls it) takes a PIL image as
`diffusers.utils.load_image` returns it (PIL decode, EXIF orientation applied, converted to RGB) and resizes it
with its video processor, `pipe.video_processor.preprocess(image, height=h, width=w)`: one PIL `resize` to
exactly (w, h) with Lanczos (VaeImageProcessor's defaults), then /255 and 2x - 1. `read_image` returns the uint8
image of that resize, so the normalisation that follows (vmt.backends.wan.WanBackend.condition_on_image, which
runs the same video processor, its resize then an identity) gives diffusers' tensor bit for bit.
"""

from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING

from vmt.errors import VmtError, VmtUsageError, param

if TYPE_CHECKING:
    import numpy as np

IMAGE_FITS = ("stretch", "crop")


def load_rgb(path: str | os.PathLike):
    """The image as diffusers.utils.load_image reads a file: PIL decode, EXIF orientation, RGB (alpha dropped).
    A video file gives its first frame (decoded by ffmpeg). Raises VmtUsageError when missing, VmtError when
    unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise VmtUsageError(f"{param('image')} {p} not found; check the path")
    if p.is_dir():
        raise VmtUsageError(f"{param('image')} {p} is a directory, not an image file")
    try:
        with Image.open(p) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except UnidentifiedImageError as e:
        if p.suffix.lower() in Image.registered_extensions():  # an image file name, but no image PIL reads
            raise VmtError(f"cannot read image {p}: {e}") from e
        # otherwise a video's first frame (ffmpeg says why when it is neither)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise VmtError(f"cannot read image {p}: {e}") from e
    from vmt.io.video import read_video

    frames, _ = read_video(p, max_frames=1)
    return Image.fromarray(frames[0])


def crop_box(size: tuple[int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest centred box of aspect width:height in an image of `size`
    (W, H): the full height and round(H * width / height) columns, or the full width and round(W * height /
    width) rows; the spare pixels split with the extra one on the right/bottom."""
    w0, h0 = size
    if w0 * height > h0 * width:  # wider than the target: cut columns
        cw = min(w0, max(1, (h0 * width + height // 2) // height))
        left = (w0 - cw) // 2
        return left, 0, left + cw, h0
    ch = min(h0, max(1, (w0 * height + width // 2) // width))
    top = (h0 - ch) // 2
    return 0, top, w0, top + ch


def fit_image(image, height: int, width: int, fit: str = "stretch") -> np.ndarray:
    """A PIL RGB image fitted to (height, width) as uint8 (H, W, 3): "stretch" is diffusers' VaeImageProcessor
    resize (Lanczos to exactly width x height, whatever the aspect); "crop" centre-crops to the aspect first
    (`crop_box`), then the same resize."""
    import numpy as np
    from PIL import Image

    if fit not in IMAGE_FITS:
        raise VmtUsageError(f"{param('image_fit')} {fit!r}: use one of {', '.join(IMAGE_FITS)}")
    if height < 1 or width < 1:
        raise VmtUsageError(f"image size {width}x{height} must be positive")
    if fit == "crop":
        image = image.crop(crop_box(image.size, height, width))
    # VaeImageProcessor.resize with its defaults: resample "lanczos", reducing_gap None.
    image = image.resize((width, height), resample=Image.Resampling.LANCZOS, reducing_gap=None)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | os.PathLike, height: int, width: int, fit: str = "stretch") -> np.ndarray:
    """The image at `path` fitted to (height, width): uint8 (H, W, 3) RGB. `fit` "stretch" (default) is what
    diffusers' Wan image-to-video pipeline does before normalising (load_image, then its video processor's
    Lanczos resize); "crop" centre-crops to the output's aspect ratio first, then the same resize."""
    if fit not in IMAGE_FITS:
        raise VmtUsageError(f"{param('image_fit')} {fit!r}: use one of {', '.join(IMAGE_FITS)}")
    return fit_image(load_rgb(path), height, width, fit)

