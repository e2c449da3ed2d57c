"""End-to-end frame rate of the paper's real-time loop on this CPU: for each incoming 256x256 frame,
FOMM keypoints -> GRU-SNF forecast of the next frame (N samples) -> FOMM generator renders the mean forecast onto
the source image. Random FOMM weights (vox-256 size): the cost is the real one, the pictures are not.

    OMP_NUM_THREADS=2 python benchmarks/keypoints_realtime.py [--frames 12] [--samples 100] [--threads 1 2]

Per stage: median seconds per frame over --frames frames after one warm-up frame; fps = 1 / total. The source
image's keypoints and encoder features are computed once (they do not change between frames).
Writes benchmarks/results/keypoints_realtime.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vmt.keypoints import DEFAULT_MODEL_DIR
from vmt.keypoints.fomm import Fomm, frames_to_tensor, relative_keypoints
from vmt.keypoints.model import SampleOptions, load_model
from vmt.keypoints.predict import forecast

DATA = ROOT.parent / "shared" / "data" / "voxceleb"


@torch.no_grad()
def measure(frames: np.ndarray, source: np.ndarray, fomm: Fomm, net, samples: int) -> dict:
    """Seconds per frame of each stage, median over frames[1:] (frame 0 warms up)."""
    cfg = net.cfg
    src = frames_to_tensor(source[None])
    kp_s = fomm.kp_detector(src)
    feat = fomm.generator.encode(src)
    history: list[np.ndarray] = []
    ref = None
    times = {"keypoints": [], "forecast": [], "render": []}
    opts = SampleOptions(samples=samples, refine=True, elementwise=False)
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        kp = fomm.kp_detector(frames_to_tensor(frame[None]))
        history.append(cfg.layout.flatten(kp["value"][0].numpy(), kp["jacobian"][0].numpy()))
        ref = ref or kp
        t1 = time.perf_counter()
        ctx = np.stack(history[-cfg.context:])
        ctx = np.concatenate([np.repeat(ctx[:1], cfg.context - len(ctx), 0), ctx])   # pad the first frames
        pred = forecast(net, ctx[None], 1, opts, seed=i)[0, :, 0].mean(0)            # (dim,) mean of N
        pos, jac = cfg.layout.unflatten(pred)
        t2 = time.perf_counter()
        kp_d = relative_keypoints(kp_s, torch.from_numpy(pos)[None], torch.from_numpy(jac)[None],
                                  ref["value"], ref["jacobian"])
        fomm.generator(src, kp_d, kp_s, features=feat)
        t3 = time.perf_counter()
        if i:
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                times[k].append(v)
    out = {k: float(np.median(v)) for k, v in times.items()}
    out["total"] = sum(out.values())
    out["fps"] = 1 / out["total"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "keypoints_realtime.json")
    args = ap.parse_args()
    clip = next(iter(sorted(DATA.glob("id*.mp4"))), None)
    if clip is not None:
        from vmt.io.video import read_video

        frames = read_video(clip, max_frames=args.frames + 1)[0]
    else:
        frames = np.random.default_rng(0).integers(0, 256, (args.frames + 1, 256, 256, 3), dtype=np.uint8)
    torch.manual_seed(0)
    fomm = Fomm().eval()
    net, _ = load_model(DEFAULT_MODEL_DIR)
    res = {"frames": len(frames) - 1, "samples": args.samples, "clip": clip and clip.name,
           "load_average": os.getloadavg(), "cpu_count": os.cpu_count(), "by_threads": {}}
    for n in args.threads:
        torch.set_num_threads(n)
        r = measure(frames, frames[0], fomm, net, args.samples)
        res["by_threads"][str(n)] = r
        print(f"threads {n}: keypoints {1000 * r['keypoints']:.0f} ms, forecast {1000 * r['forecast']:.1f} ms, "
              f"render {1000 * r['render']:.0f} ms per frame -> {r['fps']:.2f} fps end to end (target 25 fps)",
              flush=True)
    print(f"load average during the run: {res['load_average']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
