"""`KeypointsTrainRequest` and `KeypointsRunRequest`: training a GRU-NF keypoint forecaster and forecasting with
it (GRU-NF, or GRU-SNF with MCMC refinement), as typed requests.

    from vmt.runs.keypoints import KeypointsRunRequest, KeypointsTrainRequest

    KeypointsTrainRequest(data="kp.npz", steps=500).run("kp_model")             # + kp_model/train.json
    KeypointsRunRequest(input="clip.npz", model="kp_model").run("pred.npz")      # + pred.json

The fields are the options of `vmt predict-keypoints train` and `... run` (the command line builds these
requests from its flags or a recipe), with their published defaults and ranges. `check()` reads no model,
`run()` does the work through vmt.keypoints.pipeline and writes the outputs with their JSON sidecar, printing
nothing: progress goes to an optional callback `progress(done, total, info)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmt.errors import VmtUsageError, param
from vmt.runs.fields import AT_LEAST_1, FPS, NON_NEGATIVE, POSITIVE, SEED, Range, check_fields, choice, number, text

Progress = Callable[[int, int, dict[str, str]], None]
CONTEXT = Range(2)  # a velocity needs two observed frames
DROPOUT = Range(0, 1, hi_open=True)
# Where each kind of file the requests read must be: a file, a folder, or either (a keypoint file or videos).
_INPUT_KINDS = {"data": "any", "input": "file", "model": "dir", "fomm": "file", "source": "file"}


def _check_inputs(request: Any) -> None:
    """The files a request reads exist and are of their kind (the command line checks these first)."""
    for name, kind in _INPUT_KINDS.items():
        value = getattr(request, name, None)
        if value is None:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            raise VmtUsageError(f"{param(name)} {path} not found; check the path")
        if kind == "file" and path.is_dir():
            raise VmtUsageError(f"{param(name)} {path} is a folder; give a file")
        if kind == "dir" and not path.is_dir():
            raise VmtUsageError(f"{param(name)} {path} is a file; give a folder")


def _load_fomm(path: Path | None, device):
    """The FOMM model of `fomm`, or None."""
    if path is None:
        return None
    from vmt.keypoints.fomm import load_fomm

    return load_fomm(path, device)


# ---------------------------------------------------------------- train


@dataclass
class TrainInputs:
    """What a training run reads before its first step: the keypoint sequences, what kind of keypoints they are
    ('fomm' | 'lucas-kanade'), the device, and the step it starts from (above 0 when resuming)."""

    seqs: Any            # vmt.keypoints.data.Sequences
    source: str
    device: Any          # torch.device
    start: int


@dataclass
class KeypointsTrainRequest:
    """A `vmt predict-keypoints train` run; see `vmt predict-keypoints train --help` for each option."""

    progress_label = "training"  # what a progress bar over its steps says (a class attribute, not a field)

    data: Path | None = None  # keypoint .npz, a video or a folder of videos
    context: int = number(8, CONTEXT, "context frames")
    horizon: int = number(16, AT_LEAST_1, "predicted frames")
    val_identities: str = text("", "comma-separated identities held out for validation", empty_ok=True)
    steps: int = number(2000, AT_LEAST_1, "optimizer steps")
    batch: int = number(64, AT_LEAST_1, "windows per step")
    lr: float = number(1e-3, POSITIVE, "peak learning rate of the one-cycle schedule")
    weight_decay: float = number(1e-6, NON_NEGATIVE, "Adam weight decay")
    grad_clip: float = number(5.0, POSITIVE, "gradient norm clip")
    eval_every: int = number(100, AT_LEAST_1, "steps between validation + checkpoint")
    window_stride: int = number(4, AT_LEAST_1, "frames between training windows")
    frame_step: int = number(1, AT_LEAST_1, "keep every n-th frame")
    hidden: int = number(256, AT_LEAST_1, "GRU hidden size")
    layers: int = number(2, AT_LEAST_1, "GRU layers")
    dropout: float = number(0.2, DROPOUT, "GRU dropout between layers")
    cond_dim: int = number(16, AT_LEAST_1, "flow condition size")
    flow_hidden: int = number(128, AT_LEAST_1, "coupling-net width")
    blocks: int = number(5, AT_LEAST_1, "coupling + batch-norm blocks")
    min_range: float = number(0.05, POSITIVE, "floor of the min-max range (input units)")
    head_weight: float = number(1.0, NON_NEGATIVE, "weight of the GRU head's MSE")
    param: str = choice("residual", ("residual", "minmax"), "how the flow sees a window")
    rollout: bool = False  # condition the loss on the head's own fed-back predictions
    augment: bool = True   # mirror, affine jitter, time reversal and speed replays
    fomm: Path | None = None  # videos as data: FOMM keypoints from this checkpoint instead of the tracker
    video_fps: float = number(10.0, FPS, "frame rate videos are read at")
    device: str = text("auto", "auto | cpu | cuda")
    resume: bool = False   # continue the run saved in the output folder
    seed: int = number(0, SEED, "random seed")

    def check(self, output: str | Path | None = None, overwrite: bool = False) -> None:
        """Every check that reads nothing heavy: values, `data` and `fomm` exist, and the run folder `output`
        (when given) is new, empty, or (`resume`) holds a model, or `overwrite` says it may be replaced."""
        if self.data is None:
            raise VmtUsageError(f"{param('data')} is missing; give a keypoint .npz, a video or a folder of videos")
        check_fields(self)
        _check_inputs(self)
        if output is None:
            return
        out = Path(output)
        if out.exists() and not out.is_dir():
            raise VmtUsageError(f"{param('output')} {out} is a file; give a folder to write the run into")
        if out.is_dir() and any(out.iterdir()) and not (self.resume or overwrite):
            raise VmtUsageError(f"{out} is not empty; pass {param('resume')} to continue it or {param('overwrite')} "
                                "to replace it")
        if self.resume and not (out / "config.json").is_file():
            raise VmtUsageError(f"{param('resume')}: {out} holds no model; drop {param('resume')} to start a new "
                                "run")

    def read(self, output: str | Path, overwrite: bool = False) -> TrainInputs:
        """Check, then read the training keypoints (FOMM's detector on videos with `fomm`, else the tracker)
        and, when resuming, the step the run in `output` reached."""
        self.check(output, overwrite)  # before torch loads: a bad request fails at once
        import torch

        from vmt.keypoints.model import read_config
        from vmt.keypoints.pipeline import training_inputs
        from vmt.runtime import resolve_device

        torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
        device = resolve_device(self.device)
        seqs, source = training_inputs(Path(self.data), self.video_fps, _load_fomm(self.fomm, device))
        start = int(read_config(output).get("step", 0)) if self.resume else 0
        return TrainInputs(seqs, source, device, start)

    def run(self, output: str | Path, *, inputs: TrainInputs | None = None, progress: Progress | None = None,
            overwrite: bool = False, timer=None, record: dict[str, Any] | None = None,
            command: list[str] | None = None) -> dict[str, Any]:
        """Train into the folder `output` (model.safetensors, config.json, the resumable state) and write its
        train.json sidecar. `inputs`: what `read()` gave, if already read. `progress(done, total, info)` after
        each step (info: step, nll, val_nll). `record`: the parameters to write in the sidecar (default: this
        request's fields and the output); `command`: the command line that asked for it. Returns the summary
        (layout, best_val_nll, train_seconds, history, train_windows, val_windows)."""
        from vmt.io.atomic import output_policy, write_json_atomic
        from vmt.keypoints.model import ModelConfig
        from vmt.keypoints.train import TrainConfig, train_model
        from vmt.provenance import build_sidecar
        from vmt.runs.shared import plain
        from vmt.runtime import Timer, peak_memory

        out = Path(output)
        inputs = inputs or self.read(out, overwrite)
        timer = timer or Timer()
        seqs = inputs.seqs
        cfg = ModelConfig(num_kp=seqs.layout.num_kp, jacobian=seqs.layout.jacobian, param=self.param,
                          rollout=self.rollout, **{k: getattr(self, k) for k in (
                              "context", "horizon", "hidden", "layers", "dropout", "cond_dim", "flow_hidden",
                              "blocks", "min_range", "frame_step", "head_weight")})
        tc = TrainConfig(**{k: getattr(self, k) for k in ("steps", "batch", "lr", "weight_decay", "grad_clip",
                                                          "eval_every", "seed")})
        last_val = "-"

        def on_step(step: int, m: dict) -> None:
            nonlocal last_val
            last_val = f"{m['val_nll']:.3f}" if "val_nll" in m else last_val
            if progress is not None:
                progress(step - inputs.start, tc.steps - inputs.start,
                         {"step": str(step), "nll": f"{m['nll']:.3f}", "val_nll": last_val})

        with output_policy(overwrite):
            out.mkdir(parents=True, exist_ok=True)
            with timer.stage("train"):
                res = train_model(seqs, cfg, tc, out, val_identities=self.identities(), augment=self.augment,
                                  window_stride=self.window_stride, resume=self.resume, device=inputs.device,
                                  on_step=on_step, keypoints_source=inputs.source, data_file=str(self.data))
            summary = {k: res[k] for k in ("best_val_nll", "train_seconds", "history", "train_windows",
                                           "val_windows")}
            write_json_atomic(out / "train.json", build_sidecar(
                command or ["vmt.KeypointsTrainRequest.run"], "predict-keypoints train",
                plain(record if record is not None else {**asdict(self), "output": out}), output=out,
                timings=timer.stages, memory=peak_memory(inputs.device), extra=summary),
                replace=True)  # a run folder's own file: rewritten on resume
        return {"layout": seqs.layout.describe(), **summary}

    def identities(self) -> list[str]:
        """`val_identities` as a list."""
        return [t.strip() for t in self.val_identities.split(",") if t.strip()]


# ---------------------------------------------------------------- run


@dataclass
class LoadedForecaster:
    """A loaded keypoint model (GRUNF and its config document, from `model_dir`), FOMM if asked for, the device."""

    net: Any
    doc: dict
    model_dir: Path
    fomm: Any
    device: Any


@dataclass
class KeypointsRunRequest:
    """A `vmt predict-keypoints run`; see `vmt predict-keypoints run --help` for each option. `model` None is
    the shipped vox model; `context` / `horizon` None are the model's own."""

    progress_label = "forecasting"  # what a progress bar over its sequences says (not a field)

    input: Path | None = None  # keypoint .npz or a video
    model: Path | None = None
    context: int | None = number(None, CONTEXT, "context frames; None: the model's")
    horizon: int | None = number(None, AT_LEAST_1, "frames to predict; None: the model's")
    samples: int = number(100, AT_LEAST_1, "samples per sequence")
    refine: bool = True  # GRU-SNF MCMC refinement
    feedback: str = choice("mean", ("mean", "sample"), "what the GRU is fed back")
    mcmc_steps: int = number(2, AT_LEAST_1, "MH steps per chain stage")
    step_size: float = number(0.35, POSITIVE, "random-walk proposal scale")
    acceptance: str = choice("vector", ("vector", "element"), "MH acceptance form")
    temperature: float = number(1.0, POSITIVE, "scale of the flow's base noise")
    video_fps: float = number(10.0, FPS, "frame rate video input is read at")
    fomm: Path | None = None
    render: Path | None = None  # also render the first sequence's forecast into this video
    render_samples: str = text("mean", "with fomm: 'mean' or sample indices (0,3) to animate")
    preview: bool = True
    source: Path | None = None  # image or video whose last frame render draws on
    batch: int = number(16, AT_LEAST_1, "sequences per forward batch")
    backtest: bool = False
    device: str = text("auto", "auto | cpu | cuda")
    seed: int = number(0, SEED, "random seed")

    def check(self, output: str | Path | None = None, overwrite: bool = False) -> list[int] | None:
        """Every check that needs no model: values, the files read exist, `source` / `render` / `fomm` suit each
        other, and (with `output`) the outputs are new or may be replaced and are no input. Returns the render
        samples (None: the mean)."""
        from vmt.io.atomic import check_not_inputs, check_output_path, sidecar_path
        from vmt.io.video import VIDEO_WRITE_SUFFIXES
        from vmt.keypoints.pipeline import check_run_sources, is_video, keypoints_path, parse_samples

        if self.input is None:
            raise VmtUsageError(f"{param('input')} is missing; give a keypoint .npz or a video")
        check_fields(self)
        _check_inputs(self)
        picks = parse_samples(self.render_samples, self.samples)
        check_run_sources(Path(self.input), self.render, self.source, self.fomm)
        if output is None:
            return picks
        out = Path(output)
        outputs = {param("output"): out, f"{param('output')} sidecar": sidecar_path(out), param("render"): self.render}
        if is_video(self.input):  # the extracted keypoints are written beside the forecast
            outputs["keypoints file"] = keypoints_path(out)
        check_not_inputs(outputs, {param(k): getattr(self, k) for k in ("input", "model", "fomm", "source")})
        check_output_path(out, overwrite, suffixes={".npz"}, what=param("output"))
        if self.render is not None:
            check_output_path(self.render, overwrite, sidecar=False, suffixes=VIDEO_WRITE_SUFFIXES,
                              what=param("render"))
        if is_video(self.input):
            check_output_path(keypoints_path(out), overwrite, sidecar=False)
        return picks

    def model_dir(self) -> Path:
        from vmt.keypoints import DEFAULT_MODEL_DIR

        return Path(self.model) if self.model is not None else DEFAULT_MODEL_DIR

    def load(self, device: str | None = None) -> LoadedForecaster:
        """Load the keypoint model (and FOMM when `fomm` is set) onto `device` (default: this request's)."""
        from vmt.keypoints.model import load_model
        from vmt.runtime import resolve_device

        dev = resolve_device(device or self.device)
        net, doc = load_model(self.model_dir())
        net.to(dev)
        return LoadedForecaster(net, doc, self.model_dir(), _load_fomm(self.fomm, dev), dev)

    def run(self, output: str | Path, *, loaded: LoadedForecaster | None = None, progress: Progress | None = None,
            overwrite: bool = False, timer=None, record: dict[str, Any] | None = None,
            command: list[str] | None = None) -> dict[str, Any]:
        """Forecast and write `output` (.npz), for video input the extracted keypoints beside it, with `render`
        the preview video, and the JSON sidecar, committed together. Loads the model unless `loaded` is given.
        `progress(done, total, info)` after each batch of sequences. Returns what was written: sequences,
        samples, horizon, method, keypoints_file, render."""
        from vmt.io.atomic import commit_together, output_policy
        from vmt.keypoints.model import SampleOptions
        from vmt.keypoints.pipeline import forecast_input, render_forecast, run_record, write_forecast
        from vmt.provenance import build_sidecar, write_sidecar
        from vmt.runs.shared import plain
        from vmt.runtime import Timer, peak_memory

        output = Path(output)
        picks = self.check(output, overwrite)
        timer = timer or Timer()
        if loaded is None:
            with timer.stage("load"):
                loaded = self.load()
        net = loaded.net
        context, horizon = self.context or net.cfg.context, self.horizon or net.cfg.horizon
        if context < 2 or horizon < 1:
            raise VmtUsageError(f"{param('context')} must be >= 2 and {param('horizon')} >= 1 (got {context}, "
                                f"{horizon})")
        opts = SampleOptions(samples=self.samples, feedback=self.feedback, refine=self.refine,
                             mcmc_steps=self.mcmc_steps, step_size=self.step_size,
                             elementwise=self.acceptance == "element", temperature=self.temperature)
        on_batch = None if progress is None else (lambda d, t: progress(d, t, {"sequences": f"{d}/{t}"}))
        with timer.stage("predict"):
            fc = forecast_input(net, loaded.doc, loaded.model_dir, Path(self.input), context, horizon, opts,
                                seed=self.seed, batch=self.batch, video_fps=self.video_fps, fomm=loaded.fomm,
                                backtest=self.backtest, on_batch=on_batch)
        with output_policy(overwrite), commit_together():  # forecast, keypoints, preview and sidecar together
            with timer.stage("write"):
                kp_file = write_forecast(fc, output, context, horizon)
            if self.render is not None:
                with timer.stage("render"):
                    render_forecast(fc, Path(self.render), self.video_fps, source=self.source and Path(self.source),
                                    fomm=loaded.fomm, samples=picks, preview=self.preview)
            resolved = plain(record if record is not None else {**asdict(self), "output": output})
            resolved.update(context=context, horizon=horizon, model=str(loaded.model_dir))
            compute, extra = run_record(fc, timer.stages["predict"], horizon, opts, kp_file, self.render,
                                        loaded.fomm is not None)
            write_sidecar(output, build_sidecar(
                command or ["vmt.KeypointsRunRequest.run"], "predict-keypoints run", resolved, output=output,
                timings=timer.stages, memory=peak_memory(loaded.device), compute=compute, extra=extra,
                model={"dir": str(loaded.model_dir), "config": loaded.doc["config"],
                       "best_val_nll": loaded.doc.get("best_val_nll")}))
        return {"sequences": len(fc.contexts), "samples": self.samples, "horizon": horizon,
                "method": extra["method"], "keypoints_file": kp_file, "render": self.render}
