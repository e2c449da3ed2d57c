"""`vmt longgen` runs as typed requests: train EncGAN3 with recall training, sample a long video as a chain of
clips (REncGAN3), reconstruct a video through the model.

    from vmt.runs.longgen import LonggenSampleRequest, LonggenTrainRequest

    LonggenTrainRequest(data="synthetic:digits", preset="tiny", steps=100).run("runs/digits")
    LonggenSampleRequest(model="runs/digits", frames=1000, seed=3).run("digits.mp4")   # + digits.json

The fields are the options of `vmt longgen train | sample | reconstruct` with their defaults and ranges.
`check()` needs no weights (a sample request reads its run's config.json), `run()` does the work and writes
its outputs with their JSON sidecar exactly as the command line does. Nothing is printed: progress goes to an
optional callback `progress(done, total, info)`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from vmt.longgen.config import DEFAULT_MOTION_TEMPERATURE
from vmt.runs.fields import (
    AT_LEAST_1, FPS, NON_NEGATIVE, POSITIVE, SEED, check_fields, number, text,
)

# progress(done, total, info): after each training step, or each frame written; info holds display fields.
Progress = Callable[[int, int, dict[str, str]], None]
# status(message): a context manager around work without steps (reading the training data).
Status = Callable[[str], AbstractContextManager[Any]]

# The fields that make the model config (a resumed run must keep its own) and the training settings.
MODEL_FIELDS = ("preset", "size", "attention", "signed_motion", "warp")
SETTING_FIELDS = ("batch_size", "lr", "kl_weight", "adv_weight", "image_warmup", "adv_warmup", "mask_weight",
                  "pyramid_levels", "recall")


def parse_strides(value: str) -> tuple[int, ...]:
    """Temporal strides of training clips from "1" or "2,3"; raises VmtUsageError naming `stride`."""
    from vmt.errors import VmtUsageError, param

    try:
        vals = tuple(int(s) for s in str(value).split(",") if s.strip())
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise VmtUsageError(f"{param('stride')} {value!r} must be positive integers separated by commas, "
                            "e.g. 1 or 2,3")
    return vals


def _record(request: Any, output: Path, record: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters a sidecar records: `record` (the command line's resolved options) or the request's
    fields and the output, as JSON values."""
    from vmt.runs.shared import plain

    return plain(record if record is not None else {**asdict(request), "output": output})


def _each_frame(progress: Progress | None, total: int) -> Callable[[int], None]:
    """An on_clip(k) that reports each of the k new frames to `progress`."""
    done = [0]

    def on_clip(k: int) -> None:
        for _ in range(k):
            done[0] += 1
            if progress is not None:
                progress(done[0], total, {})

    return on_clip


@dataclass
class LonggenTrainRequest:
    """A `vmt longgen train` run: EncGAN3 with recall training on a folder of videos or `synthetic:digits`,
    into a run folder (model.safetensors, train.safetensors, config.json, samples/, train.json). See
    `vmt longgen train --help` for each option."""

    data: str = text(doc="folder of videos, or synthetic:digits")
    preset: str = text("cpu", "paper | cpu | tiny (model sizes)")
    size: int | None = number(None, None, "frame side in pixels, a power of two; None: the preset's")
    steps: int = number(1000, AT_LEAST_1, "total training steps (resuming: the step to stop at)")
    batch_size: int = number(16, AT_LEAST_1, "windows per step")
    lr: float = number(5e-4, POSITIVE, "Adam learning rate")
    kl_weight: float = number(1e-4, NON_NEGATIVE, "weight of the KL terms")
    adv_weight: float = number(0.05, NON_NEGATIVE, "weight of the adversarial terms")
    image_warmup: int = number(0, NON_NEGATIVE, "first steps on single frames only")
    adv_warmup: int = number(300, NON_NEGATIVE, "VAE-only steps before the adversarial terms")
    mask_weight: float = number(1.0, NON_NEGATIVE, "weight of the mean blend mask (warping models)")
    pyramid_levels: int = number(3, AT_LEAST_1, "levels of the L1 image pyramid")
    recall: bool = True
    attention: bool | None = None  # factorised self-attention; None: the preset's
    signed_motion: bool | None = None  # signed frame differences or |x_i - x_(i-1)|; None: the preset's
    warp: bool | None = None  # blend with the translated reference; None: the preset's
    stride: str = text("1", "temporal stride(s) of training clips, comma-separated")
    fps: float | None = number(None, FPS, "resample videos to this frame rate first")
    max_frames: int | None = number(None, AT_LEAST_1, "read at most this many frames per video")
    sample_every: int = number(250, NON_NEGATIVE, "a sample grid every N steps (0: only at the end)")
    save_every: int = number(250, NON_NEGATIVE, "a checkpoint every N steps (0: only at the end)")
    resume: bool = False
    device: str = text("auto", "auto | cpu | cuda")
    seed: int = number(0, SEED, "random seed")

    def check(self):
        """Every check that needs no data and no run folder: values, strides, the model config. Returns
        (strides, model config)."""
        from vmt.longgen.config import preset

        check_fields(self)
        strides = parse_strides(self.stride)
        cfg = preset(self.preset)
        overrides = {k: getattr(self, k) for k in MODEL_FIELDS[1:] if getattr(self, k) is not None}
        return strides, (cfg.with_(**overrides) if overrides else cfg)

    def check_run_dir(self, output: str | Path, overwrite: bool = False) -> None:
        """The run folder fits `resume` and `overwrite`: a new run may not land on an old one unless
        overwriting, a resumed run must exist."""
        from vmt.errors import VmtUsageError, param

        output = Path(output)
        if output.exists() and not output.is_dir():
            raise VmtUsageError(f"{param('output')} {output} is a file; give a folder to write the run into")
        has_run = (output / "config.json").exists()
        if has_run and not (self.resume or overwrite):
            raise VmtUsageError(f"{output} already holds a run; pass {param('resume')} to continue it or "
                                f"{param('overwrite')} to start over")
        if self.resume and not has_run:
            raise VmtUsageError(f"{param('resume')}: {output} holds no run (no config.json); drop "
                                f"{param('resume')} to start one")

    def given_fields(self) -> frozenset[str]:
        """The fields set away from their defaults (what a Python caller asked for)."""
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) != f.default)

    def run(self, output: str | Path, *, given: frozenset[str] | None = None, overwrite: bool = False,
            progress: Progress | None = None, status: Status | None = None, record: dict[str, Any] | None = None,
            command: list[str] | None = None) -> dict[str, Any]:
        """Train into the run folder `output` and write its train.json sidecar. `given`: the fields the user
        set (the command line: flags and recipe; default: those away from their defaults); resuming, set
        settings must match the run's and set model fields replace its config. `status(message)`: a context
        around reading the data. Returns {"step", "final_losses", "motion_prior_fit", "videos"}."""
        from vmt.io.atomic import output_policy
        from vmt.longgen.data import open_source
        from vmt.longgen.train import TrainSettings, open_trainer, train_run
        from vmt.provenance import build_sidecar, write_sidecar
        from vmt.runtime import Timer, peak_memory, resolve_device

        output = Path(output)
        strides, cfg = self.check()
        self.check_run_dir(output, overwrite)
        given = self.given_fields() if given is None else given
        dev = resolve_device(self.device)
        timer = Timer(sync_cuda=dev.type == "cuda")
        trainer, settings, seed = open_trainer(
            output, resume=self.resume, settings=TrainSettings(**{k: getattr(self, k) for k in SETTING_FIELDS}),
            cfg=cfg, seed=self.seed, steps=self.steps, device=dev,
            given={k: getattr(self, k) for k in (*SETTING_FIELDS, "seed") if k in given},
            model_given=bool(given & set(MODEL_FIELDS)))
        with (status or nullcontext)("Reading training data..."), timer.stage("data"):
            source = open_source(self.data, trainer.cfg.size, strides=strides, fps=self.fps,
                                 max_frames=self.max_frames, seed=seed)
            source.check(trainer.window)
        total, done = self.steps - trainer.step_count, [0]

        def on_step(logs: dict[str, float]) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total, {k: f"{v:.3f}" for k, v in logs.items()})

        with output_policy(overwrite):
            out = train_run(output, trainer, source, steps=self.steps, seed=seed, data=self.data,
                            sample_every=self.sample_every, save_every=self.save_every, timer=timer, on_step=on_step)
            resolved = {**_record(self, output, record), "seed": seed, **settings.to_dict()}
            doc = build_sidecar(
                command or ["vmt.runs.longgen.LonggenTrainRequest.run"], "longgen train", resolved, output=output,
                model={"config": trainer.cfg.to_dict(),
                       "parameters": sum(q.numel() for q in trainer.model.parameters())},
                timings=timer.stages, compute={"steps": trainer.step_count, "batch_size": settings.batch_size},
                memory=peak_memory(dev), extra={**out, "videos": len(source.videos)})
            write_sidecar(output / "train.mp4", doc, replace=True)  # -> RUN_DIR/train.json, rewritten on resume
        return {"step": trainer.step_count, **out, "videos": len(source.videos)}


@dataclass
class LonggenSampleRequest:
    """A `vmt longgen sample` run: a long video, clip after clip, each conditioned on a frame of the previous
    one, streamed to the video file. `model`: a run folder (None: the small moving-digits model shipped with
    vmt). See `vmt longgen sample --help` for each option."""

    model: str | None = None
    frames: int = number(160, AT_LEAST_1, "frames to generate")
    fps: float | None = number(None, FPS, "frame rate of the written video (None: 10)")
    ref_index: int = number(-1, None, "frame of each clip that conditions the next one (negative: from the end)")
    carry_motion: bool = False
    standard_prior: bool = False
    motion_temperature: float = number(DEFAULT_MOTION_TEMPERATURE, NON_NEGATIVE, "spread of each fresh motion")
    subpixel: bool = False
    device: str = text("auto", "auto | cpu | cuda")
    seed: int = number(0, SEED, "random seed")

    def check(self) -> int:
        """Values, the run folder and the reference frame against its clip length (config.json only, no
        weights). Returns the reference frame index in 1..T-1."""
        from vmt.longgen.checkpoint import read_meta, resolve_run_dir
        from vmt.longgen.config import LongGenConfig
        from vmt.longgen.recall import resolve_ref_index

        check_fields(self)
        cfg = LongGenConfig.from_dict(read_meta(resolve_run_dir(self.model))["model"])
        return resolve_ref_index(self.ref_index, cfg.frames)

    def run(self, output: str | Path, *, overwrite: bool = False, progress: Progress | None = None,
            record: dict[str, Any] | None = None, command: list[str] | None = None) -> dict[str, Any]:
        """Write the long sample to `output` (.mp4, ...) and its JSON sidecar, committed together; progress is
        reported per frame. Returns {"frames", "clips", "size", "seconds"} (seconds: the generation)."""
        from vmt.io.atomic import check_output_path, commit_together, output_policy
        from vmt.io.video import VIDEO_WRITE_SUFFIXES
        from vmt.longgen.checkpoint import load_model
        from vmt.runtime import Timer, resolve_device

        output = Path(output)
        r = self.check()
        check_output_path(output, overwrite, suffixes=VIDEO_WRITE_SUFFIXES, what="output")
        dev = resolve_device(self.device)
        timer = Timer(sync_cuda=dev.type == "cuda")
        with timer.stage("load"):
            net, meta = load_model(self.model, dev)
        with output_policy(overwrite), commit_together():  # the video and its sidecar appear together
            n, clips = self._sample_into(output, net, meta, r, timer, dev, progress, record, command)
        return {"frames": n, "clips": clips, "size": net.cfg.size, "seconds": timer.stages["generate"]}

    def _sample_into(self, output: Path, net, meta, r: int, timer, dev, progress, record, command):
        """Stream the long sample into the video and write its sidecar; returns (frames, clips)."""
        from vmt.io.video import VideoWriter
        from vmt.longgen.checkpoint import resolve_run_dir
        from vmt.longgen.generator import CHAIN_WARP, TRAIN_WARP
        from vmt.longgen.sampling import write_long_video
        from vmt.provenance import build_sidecar, write_sidecar
        from vmt.runtime import peak_memory

        with timer.stage("generate"), VideoWriter(output, self.fps or 10.0) as writer:
            n = write_long_video(net, self.frames, writer.write, seed=self.seed, ref_index=self.ref_index,
                                 carry_motion=self.carry_motion, standard_prior=self.standard_prior,
                                 motion_temperature=self.motion_temperature,
                                 warp=TRAIN_WARP if self.subpixel else CHAIN_WARP,
                                 on_clip=_each_frame(progress, self.frames))
        motion = ("standard normal" if self.standard_prior else
                  "learned" if net.motion_prior.is_fitted else "gaussian given content")
        clips = 1 + -(-max(0, self.frames - net.cfg.frames) // r)
        doc = build_sidecar(command or ["vmt.runs.longgen.LonggenSampleRequest.run"], "longgen sample",
                            _record(self, output, record), output=output,
                            model={"run_dir": str(resolve_run_dir(self.model)), "config": meta["model"],
                                   "trained_steps": meta.get("step"), "data": meta.get("data"),
                                   "motion_prior": motion},
                            timings=timer.stages, compute={"clips": clips, "frames": n}, memory=peak_memory(dev),
                            extra={"video": {"frames": n, "fps": self.fps or 10.0, "height": net.cfg.size,
                                             "width": net.cfg.size}})
        write_sidecar(output, doc)
        return n, clips


@dataclass
class LonggenReconstructRequest:
    """A `vmt longgen reconstruct` run: encode each clip of `video` (content of its first frame, movement of
    its frame differences) with the run folder `model` and decode it; the sidecar reports the L1 error.
    See `vmt longgen reconstruct --help` for each option."""

    video: Path  # a str is taken too
    model: str = text(doc="run folder written by `vmt longgen train`")
    recall: bool = False
    fps: float | None = number(None, FPS, "resample the input to this frame rate first")
    max_frames: int | None = number(None, AT_LEAST_1, "use at most this many input frames")
    device: str = text("auto", "auto | cpu | cuda")

    def check(self) -> None:
        """Values and the run folder (no weights)."""
        from vmt.longgen.checkpoint import resolve_run_dir

        check_fields(self)
        resolve_run_dir(self.model)

    def run(self, output: str | Path, *, overwrite: bool = False, progress: Progress | None = None,
            record: dict[str, Any] | None = None, command: list[str] | None = None) -> dict[str, Any]:
        """Write the reconstruction to `output` and its JSON sidecar (with the L1 error, frames in [-1, 1]),
        committed together; progress is reported per frame. Returns {"frames", "l1"}."""
        from vmt.io.atomic import check_not_inputs, check_output_path, commit_together, output_policy, sidecar_path
        from vmt.io.video import VIDEO_WRITE_SUFFIXES, read_video
        from vmt.longgen.checkpoint import load_model
        from vmt.runtime import Timer, resolve_device

        output = Path(output)
        self.check()
        check_output_path(output, overwrite, suffixes=VIDEO_WRITE_SUFFIXES, what="output")
        check_not_inputs({"output": output, "sidecar": sidecar_path(output)}, {"video": Path(self.video)})
        dev = resolve_device(self.device)
        timer = Timer(sync_cuda=dev.type == "cuda")
        with timer.stage("load"):
            net, meta = load_model(self.model, dev)
        with timer.stage("read"):
            frames, src_fps = read_video(self.video, fps=self.fps, max_frames=self.max_frames,
                                         size=(net.cfg.size, net.cfg.size))
        with output_policy(overwrite), commit_together():  # the video and its sidecar appear together
            done, l1 = self._write(output, net, meta, frames, src_fps if src_fps > 0 else 10.0, timer, dev,
                                   progress, record, command)
        return {"frames": done, "l1": l1}

    def _write(self, output: Path, net, meta, frames, out_fps: float, timer, dev, progress, record, command):
        """Reconstruct clip by clip into the video, measure the L1 and write the sidecar; returns
        (frames, l1)."""
        import numpy as np

        from vmt.io.video import VideoWriter
        from vmt.longgen.checkpoint import resolve_run_dir
        from vmt.longgen.sampling import reconstruct_frames
        from vmt.provenance import build_sidecar, write_sidecar
        from vmt.runtime import peak_memory

        err_sum, done = 0.0, 0
        on_clip = _each_frame(progress, len(frames))
        with timer.stage("reconstruct"), VideoWriter(output, out_fps) as writer:
            for chunk in reconstruct_frames(net, frames, recall=self.recall):
                real = frames[done : done + len(chunk)].astype(np.float64)
                err_sum += float(np.abs(chunk.astype(np.float64) - real).sum()) / 127.5
                done += len(chunk)
                writer.write(chunk)
                on_clip(len(chunk))
        l1 = err_sum / frames[:done].size
        doc = build_sidecar(command or ["vmt.runs.longgen.LonggenReconstructRequest.run"], "longgen reconstruct",
                            _record(self, output, record), output=output,
                            model={"run_dir": str(resolve_run_dir(self.model)), "config": meta["model"],
                                   "trained_steps": meta.get("step")},
                            timings=timer.stages, compute={"frames": done}, memory=peak_memory(dev),
                            extra={"reconstruction_l1": l1, "video": {"frames": done, "fps": out_fps,
                                                                      "height": net.cfg.size, "width": net.cfg.size}})
        write_sidecar(output, doc)
        return done, l1
