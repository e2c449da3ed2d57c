"""Peak host memory (RSS) of the Wan chain at 12 segments against 3, on the tiny random-weight I2V model: the
chain keeps one segment's frames at a time and streams the video from its run folder, so the peak should not
grow with the number of segments. Each run is a fresh process (its own ru_maxrss), which also samples its
current RSS after every segment (the peak alone moves with allocator spikes inside one segment's decode);
frames are 128x128 and 33 per segment (a video held whole: 12 segments ~18 MiB of frames against ~4.5 MiB
for 3).

    python benchmarks/chain_memory.py            # writes benchmarks/results/chain_memory.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import save  # noqa: E402

SIZE, SEGMENT = 128, 33

CHILD = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from vmt.runs.chain import WanChainRequest
model, image, out, frames = sys.argv[1:5]
def rss_mib():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
after = []
t0 = time.perf_counter()
res = WanChainRequest(model=model, image=Path(image), prompt="x", frames=int(frames), segment_frames={seg},
                      height={size}, width={size}, steps=2, plan="none", device="cpu").run(out, on_segment=lambda *a: after.append(round(rss_mib(), 1)))
print(json.dumps({{"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "rss_after_segment_mib": after,
                   "segments": res["segments"], "frames": res["frames"], "seconds": time.perf_counter() - t0}}))
"""


def frames_for(segments: int) -> int:
    return SEGMENT + (segments - 1) * (SEGMENT - 1)  # ref_index -1: each later segment adds SEGMENT - 1


def main() -> None:
    import numpy as np
    from PIL import Image

    from vmt.testing.tiny_wan import save_tiny_wan

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_tiny_wan(tmp / "model", "i2v")
        image = tmp / "first.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(image)
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        runs = {}
        for segments in (3, 12):
            out = tmp / f"chain{segments}.mp4"
            code = CHILD.format(root=str(ROOT), seg=SEGMENT, size=SIZE)
            proc = subprocess.run([sys.executable, "-c", code, str(model), str(image), str(out),
                                   str(frames_for(segments))], capture_output=True, text=True, env=env, check=True)
            runs[segments] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = runs[segments]
            print(f"{segments:>2} segments, {r['frames']} frames: peak RSS {r['peak_rss_mib']:.0f} MiB, RSS after "
                  f"each segment {min(r['rss_after_segment_mib']):.0f}-{max(r['rss_after_segment_mib']):.0f} MiB "
                  f"({r['seconds']:.1f} s)")
    ratio = runs[12]["peak_rss_mib"] / runs[3]["peak_rss_mib"]
    last = runs[12]["rss_after_segment_mib"]
    growth = last[-1] - last[2]  # after segment 3 to after segment 12, in the same process
    whole = {k: frames_for(k) * SIZE * SIZE * 3 / 2**20 for k in (3, 12)}
    print(f"peak ratio 12/3 segments: {ratio:.3f}; RSS after segment 12 minus after segment 3: {growth:+.1f} MiB "
          f"(frames held whole would be {whole[12]:.0f} vs {whole[3]:.0f} MiB)")
    save("chain_memory", {"model": "tiny random-weight Wan I2V (vmt.testing.tiny_wan, kind i2v)",
                          "size": SIZE, "segment_frames": SEGMENT, "runs": {str(k): v for k, v in runs.items()},
                          "ratio_12_over_3": round(ratio, 4),
                          "rss_growth_segment_3_to_12_mib": round(growth, 1),
                          "video_bytes_if_held_whole_mib": {str(k): round(v, 1) for k, v in whole.items()},
                          "note": "peak RSS of a fresh process per run (ru_maxrss), CPU"})


if __name__ == "__main__":
    main()
