"""The `predict-keypoints` flows callable from Python: read keypoints (file, FOMM detector or tracker), check
that they are the kind the model was trained on, forecast, write, and render (FOMM generator or the
weight-free thin-plate-spline preview).

The paper's system: video -> FOMM keypoints -> GRU-NF -> MCMC refinement -> FOMM renders the forecast onto a
source image. Without FOMM weights, a video's keypoints can only come from the Lucas-Kanade tracker, which
are not FOMM keypoints: a model trained on FOMM keypoints refuses them (`check_keypoint_source`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vmt.errors import VmtUsageError, param
from vmt.keypoints.data import Layout, Sequences, check_context, load_sequences, save_predictions, save_sequences
from vmt.keypoints.model import GRUNF, SampleOptions, check_layout

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
FOMM_SOURCE, TRACKER_SOURCE = "fomm", "lucas-kanade"


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def check_run_sources(input: Path, render: Path | None, source: Path | None, fomm: Path | None) -> None:
    """What `run` needs of its optional files beyond existence and suffixes (checked by the command
    scaffold): `source` is an image or a video; `render` with `fomm` needs a frame to animate."""
    if source is not None and source.suffix.lower() not in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
        raise VmtUsageError(f"{param('source')} {source} is neither an image nor a video")
    if fomm is not None and render is not None and source is None and not is_video(input):
        raise VmtUsageError(f"{param('render')} with {param('fomm')} animates an image: pass "
                            f"{param('source')} face.png (keypoint-file input has no frame of its own)")


def keypoint_source(doc: dict) -> str:
    """What the model was trained on: 'fomm' (FOMM keypoints, the shipped model) or 'lucas-kanade'."""
    return doc.get("keypoints_source") or doc.get("data", {}).get("keypoints_source") or FOMM_SOURCE


def check_keypoint_source(doc: dict, found: str, model_dir: Path) -> None:
    """Refuse keypoints of another kind than the model's training data (a forecast would be meaningless)."""
    trained = keypoint_source(doc)
    if found == TRACKER_SOURCE and trained != TRACKER_SOURCE:
        raise VmtUsageError(
            f"the model {model_dir} was trained on FOMM keypoints, but without {param('fomm')} a video's "
            "keypoints come from the Lucas-Kanade corner tracker, which are different points: pass a FOMM "
            f"checkpoint (vox-cpk.pth.tar) as {param('fomm')} to extract FOMM keypoints, or use a model "
            f"trained on tracker points as {param('model')} (train one with `vmt predict-keypoints train "
            "VIDEO_OR_FOLDER -o DIR`)")
    if found == FOMM_SOURCE and trained == TRACKER_SOURCE:
        raise VmtUsageError(f"the model {model_dir} was trained on Lucas-Kanade tracker points, not FOMM keypoints; "
                            f"drop {param('fomm')} or use a model trained on FOMM keypoints")


@dataclass
class VideoKeypoints:
    seqs: Sequences
    frames: list[np.ndarray]   # per sequence (T, H, W, 3) uint8
    source: str                # 'fomm' | 'lucas-kanade'


def read_image(path: Path) -> np.ndarray:
    """An image or the last frame of a video -> (H, W, 3) uint8 RGB."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        from vmt.io.video import read_video

        return read_video(path)[0][-1]
    from vmt.keypoints.tracker import _cv2

    img = _cv2().imread(str(path), 1)
    if img is None:
        raise VmtUsageError(f"{path} could not be read as an image")
    return img[..., ::-1].copy()


def video_keypoints(paths: list[Path], layout: Layout, fps: float, fomm=None) -> VideoKeypoints:
    """Keypoints of videos: FOMM's detector when `fomm` (a loaded `fomm.Fomm`) is given, else the tracker."""
    from vmt.io.video import read_video

    names, flat, frames = [], [], []
    for path in paths:
        clip, _ = read_video(path, fps=fps)
        if fomm is not None:
            from vmt.keypoints.fomm import detect_keypoints

            pos, jac = detect_keypoints(fomm, clip)
            lay = Layout(pos.shape[1], jac is not None)
        else:
            from vmt.keypoints.tracker import track_keypoints

            pos, jac = track_keypoints(clip, layout.num_kp, layout.jacobian)
            lay = layout
        names.append(path.stem)
        flat.append(lay.flatten(pos, jac))
        frames.append(clip)
    return VideoKeypoints(Sequences(names, flat, lay), frames, FOMM_SOURCE if fomm is not None else TRACKER_SOURCE)


def training_inputs(data: Path, fps: float, fomm=None, num_kp: int = 10) -> tuple[Sequences, str]:
    """`train` input: a keypoint .npz, a video, or a folder of videos (tracked, or FOMM keypoints with `fomm`)."""
    if data.is_dir():
        vids = sorted(p for p in data.iterdir() if is_video(p))
        if not vids:
            raise VmtUsageError(f"{data} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
    elif is_video(data):
        vids = [data]
    else:
        if fomm is not None:
            raise VmtUsageError(f"{param('fomm')} extracts keypoints from videos; {param('data')} is already "
                                "a keypoint file")
        return load_sequences(data), FOMM_SOURCE
    got = video_keypoints(vids, Layout(num_kp, True), fps, fomm)
    return got.seqs, got.source


@dataclass
class Forecast:
    seqs: Sequences
    contexts: np.ndarray            # (S, C, dim) detector units
    pred: np.ndarray                # (S, N, H, dim)
    source: str
    frame: np.ndarray | None        # last frame of the first video input (render background)
    stats: dict
    start: np.ndarray | None = None  # (S,) backtest: the frame of each sequence where its forecast begins


def forecast_input(net: GRUNF, doc: dict, model_dir: Path, input: Path, context: int, horizon: int,
                   opts: SampleOptions, *, seed: int = 0, batch: int = 16, video_fps: float = 10.0, fomm=None,
                   on_batch=None, backtest: bool = False) -> Forecast:
    """Read `input` (keypoint .npz or video), check it suits the model, and forecast `horizon` frames: past
    the end of each sequence, or (`backtest`) its last `horizon` frames from the `context` before them, so
    that the forecast can be scored against the truth (`vmt eval keypoints`). `on_batch(done, total)`: after
    each forward batch, with the sequences forecast so far and in all."""
    from vmt.keypoints.predict import forecast

    cfg = net.cfg
    frame = None
    if is_video(input):
        got = video_keypoints([input], cfg.layout, video_fps, fomm)
        seqs, source, frame = got.seqs, got.source, got.frames[0][-1]
        check_keypoint_source(doc, source, model_dir)
    else:
        if fomm is not None:
            raise VmtUsageError(f"{param('fomm')} extracts keypoints from a video; the input is already a "
                                f"keypoint file (use {param('fomm')} with {param('render')} to animate "
                                f"{param('source')})")
        seqs, source = load_sequences(input), "file"
    check_layout(cfg, seqs.layout, str(input))
    check_context(seqs, context + horizon if backtest else context)
    ends = np.asarray([len(s) - (horizon if backtest else 0) for s in seqs.flat], dtype=np.int64)
    contexts = np.stack([s[e - context : e] for s, e in zip(seqs.flat, ends)])
    stats: dict = {}
    done = 0

    def batch_done(n: int) -> None:
        nonlocal done
        done += n
        if on_batch is not None:
            on_batch(done, len(contexts))

    pred = forecast(net, contexts, horizon, opts, seed=seed, batch=batch, stats=stats, on_batch=batch_done)
    return Forecast(seqs, contexts, pred, source, frame, stats, ends if backtest else None)


def run_record(fc: Forecast, predict_seconds: float, horizon: int, opts: SampleOptions, kp_file: Path | None,
               render: Path | None, fomm_used: bool) -> tuple[dict, dict]:
    """The sidecar's `compute` and `extra` sections of a `run`."""
    acc = fc.stats.get("acceptance")
    per_frame_ms = 1000 * predict_seconds / (horizon * len(fc.contexts))
    compute = {"sequences": len(fc.contexts), "samples": opts.samples,
               "ms_per_predicted_frame": round(per_frame_ms, 3)}
    extra = {"keypoints_source": fc.source, "method": "GRU-SNF" if opts.refine else "GRU-NF",
             "mcmc_acceptance": None if acc is None else round(float(np.mean(acc)), 4),
             "keypoints_file": None if kp_file is None else str(kp_file),
             "render": None if render is None else str(render),
             "renderer": None if render is None else ("fomm" if fomm_used else "preview")}
    return compute, extra


def keypoints_path(output: Path) -> Path:
    """Where `run` saves the keypoints it extracted from a video: pred.npz -> pred.keypoints.npz."""
    return output.with_name(f"{output.stem}.keypoints.npz")


def write_forecast(fc: Forecast, output: Path, context: int, horizon: int) -> Path | None:
    """pred.npz (spec format) and, for video input, the extracted keypoints beside it (input format)."""
    from vmt.io.atomic import atomic_path

    with atomic_path(output) as tmp:
        save_predictions(tmp, fc.seqs.names, fc.pred, fc.seqs.layout, context, horizon, start=fc.start)
    if fc.frame is None:
        return None
    kp_out = keypoints_path(output)
    pos, jac = fc.seqs.layout.unflatten(fc.seqs.flat[0])
    with atomic_path(kp_out) as tmp:
        with open(tmp, "wb") as f:
            save_sequences(f, fc.seqs.names, [pos], None if jac is None else [jac])
    return kp_out


def parse_samples(text: str, n: int) -> list[int] | None:
    """`render_samples`: 'mean' -> None, else comma-separated sample indices in [0, n)."""
    if text.strip() == "mean":
        return None
    try:
        idx = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise VmtUsageError(f"{param('render_samples')} takes 'mean' or sample indices such as 0,3; "
                            f"got {text!r}") from None
    if not idx or any(i < 0 or i >= n for i in idx):
        raise VmtUsageError(f"{param('render_samples')} indices must lie in 0..{n - 1}; got {text!r}")
    return idx


def render_forecast(fc: Forecast, path: Path, fps: float, *, source: Path | None = None, fomm=None,
                    samples: list[int] | None = None, preview: bool = True) -> None:
    """Video of the first sequence's forecast: keypoint panel, then either FOMM renders of the source image
    (the mean forecast, or each chosen sample, relative to the last observed keypoints) or the thin-plate-spline
    preview of the background frame by the mean."""
    from vmt.io.video import write_video
    from vmt.keypoints.render import draw_forecast, warp_preview

    frame = read_image(source) if source is not None else fc.frame
    layout = fc.seqs.layout
    last_pos, last_jac = layout.unflatten(fc.contexts[0, -1])
    pos, jac = layout.unflatten(fc.pred[0])                        # (N, H, K, 2), (N, H, K, 2, 2)
    # Keypoints are drawn over the driving video's last frame when there is one (they are its keypoints).
    backdrop = fc.frame if fc.frame is not None else frame
    panels = [draw_forecast(backdrop, last_pos, pos.transpose(1, 0, 2, 3))]
    if fomm is not None:
        if frame is None:
            raise VmtUsageError(f"{param('fomm')} rendering animates an image: pass {param('source')} "
                                "face.png (or a video input)")
        from vmt.keypoints.fomm import animate

        picks = [(pos.mean(0), None if jac is None else jac.mean(0))] if samples is None else \
            [(pos[i], None if jac is None else jac[i]) for i in samples]
        h = panels[0].shape[1]
        for p, j in picks:
            video = animate(fomm, frame, p, j, last_pos, last_jac)
            panels.append(video if video.shape[1] == h else _resize(video, h))
    elif frame is not None and preview:
        panels.append(warp_preview(frame, last_pos, pos.mean(0)))
    write_video(path, np.concatenate(panels, axis=2), fps=fps)


def _resize(video: np.ndarray, h: int) -> np.ndarray:
    from vmt.keypoints.tracker import _cv2

    cv2 = _cv2()
    w = round(video.shape[2] * h / video.shape[1])
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in video])
