"""Video I/O throughput: vmt.io (ffmpeg pipes into numpy) vs the ffmpeg binary alone on the same clip.

    python benchmarks/video_io.py [--repeats 5]

Decode: vmt.io.video.read_video vs `ffmpeg -i clip -f rawvideo -pix_fmt rgb24 -> /dev/null` (same decode and
colour conversion, no Python). Encode: vmt.io.video.write_video from a numpy array vs ffmpeg encoding the
same raw frames from a file with the same settings. Ratio = ffmpeg time / vmt time (1.0 = no overhead). "vs pipe" compares with ffmpeg's raw frames
drained through a pipe by `cat`, the floor of any reader that receives frames from ffmpeg; "+array" adds
the first write of an array of the frames' size (page faults), which any reader that returns frames pays.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import median_time, save
from vmt.io.video import ffmpeg_exe, probe_video, read_video, write_video

SHARED_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference" / "runner_640x368_81f.mp4"


def synthetic_clip(path: Path, t: int = 81, h: int = 480, w: int = 832) -> Path:
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([
        np.stack([(xx + 4 * i) % 256, (yy + 2 * i) % 256, ((xx + yy) // 2 + 3 * i) % 256], -1).astype(np.uint8)
        for i in range(t)
    ])
    write_video(path, frames, fps=16)
    return path


def bench_clip(clip: Path, repeats: int, tmp: Path) -> dict:
    info = probe_video(clip)
    exe = ffmpeg_exe()
    frames, fps = read_video(clip)
    raw = tmp / "frames.rgb"
    raw.write_bytes(frames.tobytes())

    def ffmpeg_decode():
        subprocess.run([exe, "-v", "error", "-nostdin", "-i", str(clip), "-f", "rawvideo", "-pix_fmt", "rgb24",
                        "-"], stdout=subprocess.DEVNULL, check=True)

    def ffmpeg_pipe_decode():
        # The floor of any reader fed through a pipe: ffmpeg's raw frames drained by `cat`.
        subprocess.run(f"'{exe}' -v error -nostdin -i '{clip}' -f rawvideo -pix_fmt rgb24 - | cat > /dev/null",
                       shell=True, check=True)

    def touch_array():
        # Any reader that returns frames must write them into fresh memory: its first-touch cost.
        np.empty_like(frames).fill(1)

    def vmt_decode():
        read_video(clip)

    out_ff, out_vmt = tmp / "ff.mp4", tmp / "vmt.mp4"

    def ffmpeg_encode():
        subprocess.run([exe, "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s",
                        f"{info.width}x{info.height}", "-r", str(fps), "-i", str(raw), "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-crf", "17", "-preset", "medium", "-movflags", "+faststart",
                        str(out_ff)], check=True)

    def vmt_encode():
        out_vmt.unlink(missing_ok=True)
        write_video(out_vmt, frames, fps)

    fns = [("ffmpeg_decode", ffmpeg_decode), ("ffmpeg_pipe_decode", ffmpeg_pipe_decode), ("vmt_decode", vmt_decode),
           ("touch_array", touch_array), ("ffmpeg_encode", ffmpeg_encode), ("vmt_encode", vmt_encode)]
    # Interleaved rounds: a burst of machine noise hits every method alike instead of one method's repeats.
    runs: dict[str, list[float]] = {name: [] for name, _ in fns}
    for _ in range(repeats):
        for name, fn in fns:
            runs[name].append(median_time(fn, 1, warmup=0))
    t = {name: statistics.median(v) for name, v in runs.items()}
    n = len(frames)
    return {
        "clip": str(clip.name), "frames": n, "size": [info.height, info.width],
        "seconds": {k: round(v, 4) for k, v in t.items()},
        "fps": {k: round(n / v, 1) for k, v in t.items()},
        "decode_ratio": round(t["ffmpeg_decode"] / t["vmt_decode"], 3),
        "decode_ratio_vs_pipe": round(t["ffmpeg_pipe_decode"] / t["vmt_decode"], 3),
        "decode_ratio_vs_pipe_plus_array": round((t["ffmpeg_pipe_decode"] + t["touch_array"]) / t["vmt_decode"], 3),
        "encode_ratio": round(t["ffmpeg_encode"] / t["vmt_encode"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clips = [synthetic_clip(tmp / "synthetic_480x832_81f.mp4")]
        if SHARED_CLIP.is_file():
            clips.insert(0, SHARED_CLIP)
        rows = [bench_clip(c, args.repeats, tmp) for c in clips]
    print(f"{'clip':32s} {'frames':>6s} {'dec fps vmt/ffmpeg':>20s} {'ratio':>6s} {'vs pipe':>7s} {'+array':>7s} "
          f"{'enc fps vmt/ffmpeg':>20s} {'ratio':>6s}")
    for r in rows:
        f = r["fps"]
        print(f"{r['clip']:32s} {r['frames']:6d} {f['vmt_decode']:9.1f}/{f['ffmpeg_decode']:<9.1f}  "
              f"{r['decode_ratio']:6.2f} {r['decode_ratio_vs_pipe']:7.2f} {r['decode_ratio_vs_pipe_plus_array']:7.2f} {f['vmt_encode']:9.1f}/{f['ffmpeg_encode']:<9.1f}  {r['encode_ratio']:6.2f}")
    save("video_io", {"repeats": args.repeats, "median_of": args.repeats, "clips": rows})


if __name__ == "__main__":
    main()
