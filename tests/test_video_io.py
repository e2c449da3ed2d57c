"""vmt.io.video against ground truth: round trips, probing, sampling, resizing, atomic writes, bad files."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from vmt.errors import VmtError, VmtUsageError
from vmt.io.video import VideoWriter, ffmpeg_exe, probe_video, read_video, valid_wan_frames, write_video


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_round_trip_keeps_count_fps_size_and_content(tmp_path, pattern_clip):
    path = tmp_path / "clip.mp4"
    write_video(path, pattern_clip, fps=12.5)
    frames, fps = read_video(path)
    assert frames.shape == pattern_clip.shape
    assert fps == pytest.approx(12.5)
    assert mae(frames, pattern_clip) < 3.0
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (12, 48, 64)
    assert info.codec == "h264" and not info.has_audio


def test_odd_size_is_padded_by_one_replicated_pixel(tmp_path, pattern_clip):
    clip = pattern_clip[:, :47, :63]
    path = tmp_path / "odd.mp4"
    write_video(path, clip, fps=10)
    frames, _ = read_video(path)
    assert frames.shape == (12, 48, 64, 3)
    assert mae(frames[:, :47, :63], clip) < 3.0
    # The added column/row repeats the edge, it is not black.
    assert mae(frames[:, :47, 63], clip[:, :, 62]) < 4.0


def test_single_frame_video(tmp_path, pattern_clip):
    path = tmp_path / "one.mp4"
    write_video(path, pattern_clip[:1], fps=24)
    frames, fps = read_video(path)
    assert frames.shape == (1, 48, 64, 3) and fps == pytest.approx(24)


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def test_audio_track_is_ignored(tmp_path, pattern_clip):
    silent = tmp_path / "v.mp4"
    write_video(silent, pattern_clip, fps=10)
    with_audio = tmp_path / "va.mp4"
    _ffmpeg("-i", str(silent), "-f", "lavfi", "-i", "sine=frequency=440:duration=1.2", "-c:v", "copy",
            "-c:a", "aac", "-shortest", str(with_audio))
    assert probe_video(with_audio).has_audio
    frames, fps = read_video(with_audio)
    ref, _ = read_video(silent)
    assert frames.shape[1:] == ref.shape[1:] and abs(len(frames) - len(ref)) <= 1
    assert mae(frames[: len(ref)], ref[: len(frames)]) < 0.5


def test_variable_frame_rate_input_resamples_to_constant_rate(tmp_path, pattern_clip):
    cfr = tmp_path / "cfr.mp4"
    write_video(cfr, pattern_clip, fps=10)
    vfr = tmp_path / "vfr.mkv"
    # Frame i at time i^1.5 / 10 s: gaps grow, so the stream has no constant rate.
    _ffmpeg("-i", str(cfr), "-vf", "setpts='pow(N,1.5)/10/TB'", "-fps_mode", "vfr", "-c:v", "libx264", str(vfr))
    raw, _ = read_video(vfr)
    assert len(raw) == 12
    duration = 11**1.5 / 10
    frames, fps = read_video(vfr, fps=10)
    assert fps == 10
    assert abs(len(frames) - round(duration * 10)) <= 2  # constant-rate frames span the real duration


def test_fps_sampling_and_max_frames(tmp_path, pattern_clip):
    path = tmp_path / "c.mp4"
    write_video(path, np.concatenate([pattern_clip] * 2), fps=24)  # 24 frames = 1 s
    frames, fps = read_video(path, fps=12)
    assert fps == 12 and len(frames) == 12
    frames, _ = read_video(path, max_frames=5)
    assert len(frames) == 5


def test_wan_frame_rule():
    assert [valid_wan_frames(n) for n in (0, 1, 4, 5, 8, 9, 81, 83)] == [0, 1, 1, 5, 5, 9, 81, 81]


def test_frame_rule_4k1_on_read(tmp_path, pattern_clip):
    path = tmp_path / "c.mp4"
    write_video(path, pattern_clip, fps=10)  # 12 frames -> 9
    frames, _ = read_video(path, frame_rule="4k+1")
    assert len(frames) == 9


def test_resize_centre_crop_keeps_the_centre(tmp_path):
    # Left third red, middle green, right third blue: a centre crop to a square keeps mostly green.
    h, w = 60, 180
    img = np.zeros((3, h, w, 3), np.uint8)
    img[:, :, :60, 0] = 255
    img[:, :, 60:120, 1] = 255
    img[:, :, 120:, 2] = 255
    path = tmp_path / "bands.mp4"
    write_video(path, img, fps=5)
    frames, _ = read_video(path, size=(32, 32))
    assert frames.shape == (3, 32, 32, 3)
    centre = frames[:, :, 4:28].astype(float).mean(axis=(0, 1, 2))
    assert centre[1] > 200 and centre[0] < 40 and centre[2] < 40
    stretched, _ = read_video(path, size=(32, 96), resize="stretch")
    assert stretched[:, :, :24, 0].mean() > 200 and stretched[:, :, -24:, 2].mean() > 200


# ------------------------------------------------------------------ bad input
def test_missing_file(tmp_path):
    with pytest.raises(VmtUsageError, match="not found"):
        read_video(tmp_path / "nope.mp4")


def test_text_file_named_mp4(tmp_path):
    p = tmp_path / "fake.mp4"
    p.write_text("this is not a video\n" * 20)
    with pytest.raises(VmtError, match="cannot read video"):
        read_video(p)


def test_truncated_mp4(tmp_path, pattern_clip):
    p = tmp_path / "full.mp4"
    write_video(p, pattern_clip, fps=10)
    data = p.read_bytes()
    t = tmp_path / "trunc.mp4"
    t.write_bytes(data[: len(data) // 3])
    with pytest.raises(VmtError):
        read_video(t)


def test_zero_frames(tmp_path):
    p = tmp_path / "audio_only.mp4"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", str(p))
    with pytest.raises(VmtError, match="cannot read video|no decodable frames"):
        read_video(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(VmtError, match="empty"):
        read_video(p)


def test_writer_error_leaves_nothing(tmp_path, pattern_clip):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError), VideoWriter(target, fps=10) as w:
        w.write(pattern_clip[:3])
        raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_keeps_existing_target_on_failure(tmp_path, pattern_clip):
    target = tmp_path / "out.mp4"
    target.write_bytes(b"previous")
    with pytest.raises(VmtUsageError), VideoWriter(target, fps=10) as w:
        w.write(pattern_clip[:2])
        w.write(pattern_clip[:1, :10])  # size change mid-stream
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


def test_streaming_writer_counts_frames(tmp_path, pattern_clip):
    target = tmp_path / "s.mp4"
    with VideoWriter(target, fps=8) as w:
        for f in pattern_clip:
            w.write(f)
    assert w.num_frames == 12 and probe_video(target).num_frames == 12


def test_read_grows_buffer_when_the_estimate_is_short(tmp_path):
    """A raw H.264 stream has no duration, so the frame estimate is a guess (64); a longer stream must still
    come back whole and in order."""
    import subprocess

    from conftest import moving_pattern
    from vmt.io.video import ffmpeg_exe, read_video

    clip = moving_pattern(100, 32, 48)
    mp4, raw = tmp_path / "c.mp4", tmp_path / "c.h264"
    write_video(mp4, clip, fps=10)
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(mp4), "-c", "copy", "-f", "h264", str(raw)], check=True)
    frames, _ = read_video(raw)
    assert frames.shape == clip.shape
    assert mae(frames, clip) < 3.0
