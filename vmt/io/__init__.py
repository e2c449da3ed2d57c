"""Video, image and file I/O: ffmpeg pipes, frame sampling, resize/crop, images fitted as diffusers fits them,
atomic writes. The names below are imported on first use: importing a submodule (vmt.io.image for its
IMAGE_FITS) stays as cheap as that submodule (the command line's `--help` imports no numpy)."""

_HOMES = {"atomic_path": "atomic", "check_output_path": "atomic", "sidecar_path": "atomic",
          "write_json_atomic": "atomic", "IMAGE_FITS": "image", "read_image": "image", "VideoInfo": "video",
          "probe_video": "video", "read_video": "video", "valid_wan_frames": "video", "write_video": "video"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"vmt.io.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'vmt.io' has no attribute {name!r}")


__all__ = [
    "IMAGE_FITS",
    "VideoInfo",
    "atomic_path",
    "check_output_path",
    "probe_video",
    "read_image",
    "read_video",
    "sidecar_path",
    "valid_wan_frames",
    "write_json_atomic",
    "write_video",
]
