"""Video, image and file I/O: ffmpeg pipes, frame sampling, resize/crop, images fitted as diffusers fits them,
atomic writes."""

from vmt.io.atomic import atomic_path, check_output_path, sidecar_path, write_json_atomic
from vmt.io.image import IMAGE_FITS, read_image
from vmt.io.video import VideoInfo, probe_video, read_video, valid_wan_frames, write_video

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
