"""Read and write videos through the ffmpeg binary that imageio-ffmpeg ships, driven by ffmpeg-python.

Frames are numpy arrays (T, H, W, 3) uint8 RGB. There is no ffprobe here: probing runs ffmpeg itself with a
stream copy to the null muxer, which counts packets without decoding.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from vmt.errors import VmtError, VmtUsageError
from vmt.io.atomic import atomic_path, signals_held

# Containers looked for when a folder of videos is given (ffmpeg reads each).
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif", ".m4v", ".mpg", ".mpeg"})
# Containers the H.264 writer produces (WebM cannot hold H.264; GIF is not a video codec).
VIDEO_WRITE_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".m4v", ".avi"})


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (imageio-ffmpeg's, or $IMAGEIO_FFMPEG_EXE)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reports of a file's first video stream. Sizes are as displayed (rotation applied)."""

    path: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float | None
    codec: str
    has_audio: bool
    rotation: int = 0


_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<codec>\w+).*?, (?P<w>\d{1,5})x(?P<h>\d{1,5})")
_FPS_RE = re.compile(r"([\d.]+) fps")
_TBR_RE = re.compile(r"([\d.]+k?) tbr")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")
_FRAMES_RE = re.compile(r"frame=\s*(\d+)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error opening input" not in ln and "Conversion failed" not in ln:
            return ln
    return lines[-1] if lines else "ffmpeg failed"


def _check_input(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise VmtUsageError(f"video {p} not found; check the path")
    if p.is_dir():
        raise VmtUsageError(f"{p} is a directory, not a video file")
    if p.stat().st_size == 0:
        raise VmtError(f"video {p} is empty (0 bytes)")
    return p


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Probe a video's first stream: size, frame rate, frame count (packets), duration, audio presence."""
    p = _check_input(path)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(p), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    err = proc.stderr
    width, height, fps, rotation = _parse_stream(err, p)
    if proc.returncode != 0:
        raise VmtError(f"cannot read video {p}: {_last_error_line(err)}")
    dur_m = _DURATION_RE.search(err)
    duration = None
    if dur_m:
        duration = int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3))
    frames = [int(x) for x in _FRAMES_RE.findall(err)]
    num_frames = frames[-1] if frames else 0
    has_audio = re.search(r"Stream #\d+:\d+.*?: Audio:", err) is not None
    codec = _STREAM_RE.search(err)["codec"]
    return VideoInfo(str(p), width, height, fps, num_frames, duration, codec, has_audio, rotation)


def valid_wan_frames(n: int, temporal_factor: int = 4) -> int:
    """Largest frame count <= n of the form k*temporal_factor + 1 (Wan's VAE: 4k+1). 0 if n < 1."""
    if n < 1:
        return 0
    return (n - 1) // temporal_factor * temporal_factor + 1


def _resize_filter(stream, size: tuple[int, int], mode: str):
    h, w = size
    if mode == "crop":
        stream = stream.filter("scale", w, h, force_original_aspect_ratio="increase", flags="bicubic")
        return stream.filter("crop", w, h)
    if mode == "stretch":
        return stream.filter("scale", w, h, flags="bicubic")
    raise VmtUsageError(f"unknown resize mode {mode!r}; use 'crop' or 'stretch'")


def _parse_stream(err: str, path: Path) -> tuple[int, int, float, int]:
    """(width, height, fps, rotation) of the first video stream in ffmpeg's stderr; displayed size."""
    m = _STREAM_RE.search(err)
    if m is None:
        if re.search(r"Stream #\d+:\d+", err):
            raise VmtError(f"cannot read video {path}: no video stream found (a truncated file, or audio/data only)")
        raise VmtError(f"cannot read video {path}: {_last_error_line(err)}")
    width, height = int(m["w"]), int(m["h"])
    stream_line = err[m.start() : err.find("\n", m.start())]
    fps_m = _FPS_RE.search(stream_line) or _TBR_RE.search(stream_line)
    fps = 0.0
    if fps_m:
        val = fps_m.group(1)
        fps = float(val[:-1]) * 1000 if val.endswith("k") else float(val)
    rot_m = _ROTATION_RE.search(err)
    rotation = int(round(float(rot_m.group(1)))) % 360 if rot_m else 0
    if rotation in (90, 270):
        width, height = height, width
    return width, height, fps, rotation


def read_video(
    path: str | os.PathLike,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    resize: str = "crop",
    frame_rule: str | None = None,
    start: float = 0.0,
) -> tuple[np.ndarray, float]:
    """Decode a video into frames (T, H, W, 3) uint8 RGB and its frame rate.

    fps: resample to this constant rate (ffmpeg's fps filter); None keeps every decoded frame and reports
        the stream's average rate. max_frames: stop after this many output frames. size: (H, W) target;
        `resize="crop"` scales to cover then centre-crops (keeps aspect), "stretch" scales to fit exactly.
        frame_rule: "4k+1" keeps the largest 4k+1 prefix (what Wan's VAE needs). start: seconds to skip.
    One ffmpeg process decodes straight into a preallocated array; size and rate come from its own log.
    """
    import ffmpeg

    p = _check_input(path)
    if fps is not None and fps <= 0:
        raise VmtUsageError(f"target fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise VmtUsageError(f"max_frames must be >= 1, got {max_frames}")
    if frame_rule not in (None, "4k+1"):
        raise VmtUsageError(f"unknown frame rule {frame_rule!r}; use '4k+1'")
    stream = ffmpeg.input(str(p), ss=start) if start > 0 else ffmpeg.input(str(p))
    video = stream["v:0"]
    if fps is not None:
        video = video.filter("fps", fps=str(Fraction(fps).limit_denominator(1001)))
    if size is not None:
        video = _resize_filter(video, size, resize)
    kwargs = {"format": "rawvideo", "pix_fmt": "rgb24"}
    if fps is None:
        kwargs["fps_mode"] = "passthrough"
    if max_frames is not None:
        kwargs["frames:v"] = max_frames
    # One ffmpeg process: its own log (read up to the output header, before any frame) gives the input rate
    # and output size, and the frames stream into a preallocated array; no separate probe.
    args = video.output("pipe:", **kwargs).global_args("-hide_banner", "-nostdin", "-nostats", "-loglevel", "info")
    frames, n, in_fps = _decode(args.compile(cmd=ffmpeg_exe()), p, fps, max_frames)
    if n == 0:
        raise VmtError(f"video {p} has no decodable frames")
    # Drop the unused tail of a generous estimate instead of keeping it alive behind a view.
    frames = frames[:n] if n * 4 >= len(frames) * 3 else frames[:n].copy()
    if frame_rule == "4k+1":
        frames = frames[: valid_wan_frames(n)]
    return frames, float(fps if fps is not None else in_fps)


def _estimate_frames(log: str, rate: float, max_frames: int | None) -> int:
    """Frames ffmpeg will output: duration x rate from its log (+1), capped by max_frames; 64 if unknown."""
    dur_m = _DURATION_RE.search(log)
    duration = int(dur_m.group(1)) * 3600 + int(dur_m.group(2)) * 60 + float(dur_m.group(3)) if dur_m else 0.0
    expected = int(np.ceil(duration * rate)) + 1 if duration > 0 and rate > 0 else 64
    return max(1, min(expected, max_frames) if max_frames is not None else expected)


_OUTPUT_SIZE_RE = re.compile(r"Output #0.*?Stream #\d+:\d+.*?: Video: rawvideo.*?, (\d{1,5})x(\d{1,5})", re.S)


def _decode(args: list[str], path: Path, fps: float | None, max_frames: int | None) -> tuple[np.ndarray, int, float]:
    """Run ffmpeg, read its rgb24 stdout into a numpy buffer; returns (buffer, frames read, input fps).

    The log is read line by line until the output stream header (ffmpeg prints it before any frame), which
    gives the frame size and, with the input's duration and rate, a frame-count estimate for the buffer.
    readinto() into that memory avoids the chunk-list and join copies of communicate(); the buffer grows
    only if ffmpeg has more frames than estimated.
    """
    import threading

    # A 1 MiB pipe (Linux) instead of 64 KiB: fewer context switches between ffmpeg and the reader.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pipesize=1 << 20)
    tail: list[bytes] = []
    drain = threading.Thread(target=lambda: tail.append(proc.stderr.read()), daemon=True)
    try:
        head = []
        size_m = None
        for raw in iter(proc.stderr.readline, b""):
            head.append(raw.decode(errors="replace"))
            if head[-1].lstrip().startswith("Stream #") and any(h.startswith("Output #0") for h in head):
                size_m = _OUTPUT_SIZE_RE.search("".join(head))
                if size_m:
                    break
        log = "".join(head)
        if size_m is None:
            proc.stdout.read()
            proc.wait()
            _parse_stream(log, path)  # raises the precise reason (no video stream, unreadable file)
            raise VmtError(f"cannot decode video {path}: {_last_error_line(log)}")
        _, _, in_fps, _ = _parse_stream(log, path)
        w, h = int(size_m.group(1)), int(size_m.group(2))
        frame_bytes = h * w * 3
        expected = _estimate_frames(log, fps or in_fps, max_frames)
        drain.start()
        buf = np.empty((expected, h, w, 3), np.uint8)
        off = 0
        view = memoryview(buf).cast("B")
        while True:
            if off == len(view):
                # Full: grow only if ffmpeg has more to say (the estimate is usually exact).
                extra = proc.stdout.read(frame_bytes)
                if not extra:
                    break
                buf = np.concatenate([buf, np.empty_like(buf)])
                view = memoryview(buf).cast("B")
                view[off : off + len(extra)] = extra
                off += len(extra)
                continue
            got = proc.stdout.readinto(view[off:])
            if not got:
                break
            off += got
        rc = proc.wait()
        drain.join()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if rc != 0:
        raise VmtError(f"cannot decode video {path}: {_last_error_line(b''.join(tail).decode(errors='replace'))}")
    return buf, off // frame_bytes, in_fps


class VideoWriter:
    """Stream frames (H, W, 3) uint8 into an H.264/yuv420p mp4, atomically.

    The file appears at `path` only after `close()` succeeds; on error or interruption nothing is left.
    yuv420p needs even sizes: odd sides are padded by one replicated pixel (content is kept, not resampled),
    so a 33x17 input reads back as 34x18. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 17, preset: str = "medium"):
        if fps <= 0:
            raise VmtUsageError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = fps
        self.crf = crf
        self.preset = preset
        self.num_frames = 0
        self.size: tuple[int, int] | None = None
        self._proc: subprocess.Popen | None = None
        self._atomic = None
        self._tmp: Path | None = None

    def _start(self, h: int, w: int) -> None:
        import ffmpeg

        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", r=str(rate))
        if h % 2 or w % 2:
            stream = stream.filter("pad", w + w % 2, h + h % 2).filter(
                "fillborders", right=w % 2, bottom=h % 2, mode="smear"
            )
        out = stream.output(
            str(self._tmp), vcodec="libx264", pix_fmt="yuv420p", crf=self.crf, preset=self.preset,
            r=str(rate), movflags="+faststart",
        ).global_args("-hide_banner", "-nostdin", "-loglevel", "error", "-y")
        # Held: a signal inside Popen (after the fork) would leave an ffmpeg that abort() cannot see, which
        # then creates the temporary again after abort() removed it.
        with signals_held():
            self._proc = subprocess.Popen(out.compile(cmd=ffmpeg_exe()), stdin=subprocess.PIPE,
                                          stderr=subprocess.PIPE)
        self.size = (h, w)

    def write(self, frames: np.ndarray) -> None:
        """Append one frame (H, W, 3) or a batch (T, H, W, 3) of uint8 RGB."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise VmtUsageError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        if self._proc is None:
            self._start(frames.shape[1], frames.shape[2])
        if frames.shape[1:3] != self.size:
            raise VmtUsageError(f"frame size {frames.shape[1:3]} differs from the first frame's {self.size}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError as e:
            raise VmtError(f"ffmpeg stopped while writing {self.path}: {self._stderr()}") from e
        self.num_frames += len(frames)

    def _stderr(self) -> str:
        if self._proc is None or self._proc.stderr is None:
            return ""
        return _last_error_line(self._proc.stderr.read().decode(errors="replace"))

    def close(self) -> Path:
        """Finish encoding and move the file into place."""
        if self._proc is None:
            raise VmtError(f"no frames were written to {self.path}")
        self._proc.stdin.close()
        rc = self._proc.wait()
        if rc != 0:
            msg = self._stderr()
            self.abort()
            raise VmtError(f"ffmpeg failed writing {self.path}: {msg}")
        self._atomic.__exit__(None, None, None)
        self._proc = None
        return self.path

    def abort(self) -> None:
        """Stop ffmpeg and remove the temporary file; the target path is left as it was."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._atomic is not None:
            try:
                self._atomic.__exit__(VmtError, VmtError("aborted"), None)
            except Exception:
                pass
            self._atomic = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 17) -> Path:
    """Write frames (T, H, W, 3) uint8 RGB as an H.264/yuv420p mp4 at `path`, atomically."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise VmtUsageError(f"frames must be a non-empty (T, H, W, 3) array, got shape {frames.shape}")
    with VideoWriter(path, fps, crf=crf) as w:
        w.write(frames)
    return Path(path)
