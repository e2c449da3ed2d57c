"""`TransferRequest`: one FastVMT motion transfer run (a reference video's motion, a new prompt), as a typed
request. (vmt.transfer.TransferRequest is the lower-level sampling setting a run hands to the pipeline.)

    from vmt import TransferRequest

    TransferRequest(reference="dance.mp4", prompt="a robot dancing on a stage").run("robot.mp4")

The fields are the options of `vmt transfer`, with the FastVMT release's defaults. As with RefineRequest:
`check()` needs no model, `check_model()` only its config files, `estimate()` plans the DiT passes, `run()`
writes the video and its sidecar as one commit, printing nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmt.backends.base import CFG_RULES
from vmt.io.image import IMAGE_FITS
from vmt.runs.batch import JobKind
from vmt.runs.fields import (
    AT_LEAST_1, FPS, NON_NEGATIVE, POSITIVE, SEED, check_fields, choice, number, text,
)
from vmt.runs.shared import GuidanceOptions, PnpOptions, WanModelOptions
from vmt.sampling.modes import ARITHMETIC_MODES, GRIDS, NOISE_MODES

Progress = Callable[[int, int, dict[str, str]], None]


@dataclass
class TransferRequest(GuidanceOptions, PnpOptions, WanModelOptions):
    """A `vmt transfer` run; see `vmt transfer --help` for each option. The SDEdit strength and the guidance
    settings, the P&P gate (with refine), the model and its loading options are the fields of GuidanceOptions,
    PnpOptions and WanModelOptions (keywords only)."""

    job_kind = JobKind("transfer", ("reference", "prompt"), {"reference": "file", "image": "file"})  # for the batch engine (a class attribute, not a field)
    progress_label = "transfer"  # what a progress bar over its steps says (a class attribute, not a field)

    reference: Path | None = None  # the video whose motion is transferred
    prompt: str | None = text(None, "what the new video shows")
    image: Path | None = None  # image-to-video models: the first frame (the photo the motion is transferred onto)
    image_fit: str = choice("stretch", IMAGE_FITS, "how the image meets the output size")
    negative_prompt: str = text("", "what to steer away from (CFG)", empty_ok=True)
    num_frames: int = number(81, AT_LEAST_1, "most frames taken from the reference")
    height: int = number(480, AT_LEAST_1, "pixels (multiple of 16)")
    width: int = number(832, AT_LEAST_1, "pixels (multiple of 16)")
    fps: float | None = number(None, FPS, "resample the reference to this rate; None: its own")
    steps: int = number(50, AT_LEAST_1, "denoising steps from the SDEdit start to 0")
    shift: float = number(7.0, POSITIVE, "flow shift")
    guidance_scale: float = number(5.8, NON_NEGATIVE, "CFG scale")
    refine: bool = False
    grid: str = choice("euler", GRIDS, "sampling grid")
    noise: str = choice("pipeline", NOISE_MODES, "where the seeded noise is drawn")
    arithmetic: str = choice("float32", ARITHMETIC_MODES, "precision of the Euler update")
    cfg_rule: str = choice("diffusers", CFG_RULES, "when CFG applies")
    seed: int = number(42, SEED, "random seed")
    motion_cache: Path | None = None  # folder of the reference latent/AMF cache; None: vmt.motion.cache.default_cache_dir()
    no_motion_cache: bool = False  # compute the reference passes afresh and store nothing

    # ---------------------------------------------------------------- checks and plan (no weights)

    def check(self):
        """Every check that needs no model; returns (guidance config, P&P plan or None)."""
        from vmt.backends.wan import WanGeometry
        from vmt.errors import VmtUsageError, param
        from vmt.generate import check_modes
        from vmt.runs.shared import check_pnp, guidance_config, wan_load_options
        from vmt.transfer import MIN_FRAMES, sdedit_sigmas

        for name in ("reference", "prompt"):
            if getattr(self, name) is None:
                raise VmtUsageError(f"{param(name)} is missing")
        check_fields(self)
        WanGeometry().check_size(5, self.height, self.width)  # Wan2.1's rules, before any model
        if self.num_frames < MIN_FRAMES:
            raise VmtUsageError(f"{param('num_frames')} {self.num_frames} is too few; motion transfer needs >= "
                                f"{MIN_FRAMES}")
        cfg = guidance_config(self, self.height, self.width)
        sdedit_sigmas(self.steps, self.shift, self.strength)  # validates steps and strength
        pnp_plan = check_pnp(self, self.steps) if self.refine else None
        check_modes(grid=self.grid, noise=self.noise, arithmetic=self.arithmetic, cfg_rule=self.cfg_rule)
        wan_load_options(self)
        if self.motion_cache is not None and not self.no_motion_cache and Path(self.motion_cache).exists() \
                and not Path(self.motion_cache).is_dir():
            raise VmtUsageError(f"{param('motion_cache')} {self.motion_cache} is not a folder")
        return cfg, pnp_plan

    def check_model(self, geometry) -> None:
        """Checks against the model's config files (no weights): the capture block exists, and an image is
        given exactly when the model is image-to-video."""
        from vmt.errors import VmtUsageError, param

        geometry.check_block(self.block)
        if geometry.is_i2v and self.image is None:
            raise VmtUsageError(f"{self.model} is an image-to-video model; pass {param('image')} (the first frame "
                                "the reference's motion is transferred onto)")
        if not geometry.is_i2v and self.image is not None:
            raise VmtUsageError(f"{param('image')} needs an image-to-video model (e.g. "
                                f"Wan-AI/Wan2.1-I2V-14B-480P-Diffusers); {self.model} is text-to-video")

    def estimate(self, prepared, geometry) -> dict[str, Any]:
        """Planned model evaluations: sampling NFE (no early exit), DiT forward and backward passes (sampling:
        two per NFE with CFG; guidance: one reference forward per guided step, or one in all for a clean
        reference, and a forward + backward at every reuse_interval-th inner step)."""
        cfg, plan = prepared
        nfe = plan.nfe(self.steps) if plan is not None else self.steps
        branches = 2 if self.guidance_scale > 1.0 else 1
        guided = min(cfg.guided_steps, self.steps)
        grads = guided * math.ceil(cfg.inner_steps / cfg.reuse_interval)
        refs = (1 if guided else 0) if cfg.ref_amf == "clean" else guided
        frames = (self.num_frames - 1) // 4 * 4 + 1  # at most; a shorter reference gives fewer
        return {"steps": self.steps, "nfe": nfe, "dit_forward": nfe * branches + refs + grads,
                "dit_backward": grads, "cfg_branches": branches,
                "tokens": math.prod(geometry.token_grid(frames, self.height, self.width))}

    # ---------------------------------------------------------------- running

    def read_reference(self):
        """The reference as (frames (T, H, W, 3) uint8, fps): resampled, centre-cropped, cut to 4k+1 frames."""
        from vmt.transfer import load_reference

        return load_reference(Path(self.reference), self.num_frames, self.height, self.width, self.fps)

    def cache_key_parts(self) -> dict[str, Any]:
        """Inputs of the reference passes beyond the reference itself, the model and the guidance settings,
        for the cache key (vmt.motion.cache.ReferenceCache.extra): none for text-to-video."""
        return {}

    def reference_cache(self):
        """The cache of the reference passes this run uses (vmt.motion.cache.ReferenceCache), or None when
        `no_motion_cache`. The reference is named by its file's sha256 (when the file is there: frames read
        elsewhere are named by their own digest, which every key holds) and how it was read."""
        if self.no_motion_cache:
            return None
        from vmt.io.digest import file_digest
        from vmt.motion.cache import MotionCache, ReferenceCache, default_cache_dir

        root = Path(self.motion_cache) if self.motion_cache is not None else default_cache_dir()
        ref = Path(self.reference)
        identity = {"file_sha256": file_digest(ref) if ref.is_file() else None, "num_frames": self.num_frames,
                    "height": self.height, "width": self.width, "fps": self.fps}
        return ReferenceCache(MotionCache(root), identity, self.cache_key_parts())

    def read_image(self):
        """The first frame of an image-to-video run, or None without `image`: (fitted (H, W, 3) uint8, the
        image as read for a CLIP encoder, the sidecar's `image` block)."""
        if self.image is None:
            return None
        from vmt.runs.refine import read_first_frame

        return read_first_frame(Path(self.image), self.height, self.width, self.image_fit)

    def load(self, device: str | None = None, inspected=None):
        """Resolve the model, check the capture block and the image against its config, load it (a Wan
        text-to-video model, or an image-to-video one with `image`). `inspected`: (resolved, geometry) already
        read by a caller that ran each job's check_model (a batch: its shared request has no image of its own)."""
        from vmt.backends.wan import WanBackend, inspect_model
        from vmt.runs.shared import quiet_loading, wan_load_options

        resolved, geometry = inspected or inspect_model(self.model, self.revision)
        if inspected is None:
            self.check_model(geometry)
        else:
            geometry.check_block(self.block)
        with quiet_loading():
            return WanBackend.from_pretrained(self.model, wan_load_options(self, resolved, device))

    def run(self, output: str | Path, *, backend=None, progress: Progress | None = None,
            overwrite: bool = False, timer=None, notify: Callable[[str], None] | None = None,
            record: dict[str, Any] | None = None, command: list[str] | None = None,
            sidecar_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Transfer the reference's motion and write `output` with its JSON sidecar, committed together.
        Loads the model unless a loaded `backend` is given. `notify(text)`: notes such as a window clamped to
        the token grid. Returns the compute counts (NFE, DiT forward and backward passes)."""
        from vmt.io.atomic import check_not_inputs, check_output_path, output_policy, sidecar_path
        from vmt.io.video import VIDEO_WRITE_SUFFIXES
        from vmt.runtime import Timer

        output = Path(output)
        prepared = self.check()
        check_output_path(output, overwrite, suffixes=VIDEO_WRITE_SUFFIXES, what="output")
        inputs = {"reference": Path(self.reference)}
        if self.image is not None:
            inputs["image"] = Path(self.image)
        check_not_inputs({"output": output, "sidecar": sidecar_path(output)}, inputs)
        timer = timer or Timer()
        with timer.stage("read_reference"):  # a bad reference or image fails before minutes of loading
            reference = self.read_reference()
            first_frame = self.read_image()  # (None without an image)
        if backend is None:
            with timer.stage("load"):
                backend = self.load()
        with output_policy(overwrite):
            return self.run_on(backend, output, prepared, timer, progress, record, command, sidecar_extra,
                               reference=reference, notify=notify, first_frame=first_frame)

    def read_inputs(self, timer) -> dict[str, Any]:
        """The input files read before the model loads (a bad reference or image fails first), as `run_on`
        keywords: the reference's frames and rate, the first frame of an image-to-video run."""
        with timer.stage("read_reference"):
            return {"reference": self.read_reference(), "first_frame": self.read_image()}

    def summary(self, counts: dict[str, Any], timer) -> str:
        """What a finished run says after "wrote OUTPUT": size, compute, the time of each part."""
        st = timer.stages
        return (f"({self.width}x{self.height}) NFE {counts['nfe']}, DiT forward {counts['dit_forward']}, backward "
                f"{counts['dit_backward']}; guidance {st.get('guidance', 0):.1f}s, reference AMF "
                f"{st.get('reference_amf', 0):.1f}s, sampling {st.get('sampling', 0):.1f}s")

    def run_on(self, backend, output: Path, prepared, timer, progress: Progress | None = None,
               record: dict[str, Any] | None = None, command: list[str] | None = None,
               sidecar_extra: dict[str, Any] | None = None, reference=None,
               notify: Callable[[str], None] | None = None, first_frame=None) -> dict[str, Any]:
        """One video on a loaded backend, checks done (`check()` gave `prepared`): transfer, then write the
        video and its sidecar as one commit. `reference`: (frames, fps) already read, else read here;
        `first_frame`: what `read_image()` gave, else read here."""
        from vmt.io.atomic import commit_together
        from vmt.io.video import write_video
        from vmt.provenance import build_sidecar, write_sidecar
        from vmt.runs.shared import make_pnp, plain, refine_summary
        from vmt.runtime import peak_memory
        from vmt.transfer import TransferRequest as TransferSampling
        from vmt.transfer import transfer

        cfg, pnp_plan = prepared
        if reference is None:
            with timer.stage("read_reference"):
                reference = self.read_reference()
        frames, ref_fps = reference
        timer.sync_cuda = backend.device.type == "cuda"
        if first_frame is None and self.image is not None:
            with timer.stage("read_image"):
                first_frame = self.read_image()
        image, clip_image, image_doc = first_frame or (None, None, None)
        req = TransferSampling(
            prompt=self.prompt, negative_prompt=self.negative_prompt, height=self.height, width=self.width,
            steps=self.steps, shift=self.shift, guidance_scale=self.guidance_scale, strength=self.strength,
            seed=self.seed, grid=self.grid, noise=self.noise, arithmetic=self.arithmetic, cfg_rule=self.cfg_rule,
        )
        # P&P replaces the Euler update of its steps; the guidance (a before-step hook) still runs first.
        pnp = make_pnp(pnp_plan, self, sync_cuda=timer.sync_cuda) if pnp_plan is not None else None

        def on_step(state) -> None:
            if progress is not None:
                progress(state.index + 1, self.steps, {"sigma": f"{float(state.sigma):.3f}", **state.summary})

        cache = self.reference_cache()
        result = transfer(backend, frames, req, cfg, interventions=[pnp] if pnp else [], on_step=on_step,
                          timer=timer, notify=notify, cache=cache, image=image, clip_image=clip_image)
        out_fps = self.fps if self.fps is not None else ref_fps
        with timer.stage("write"), commit_together():  # the video and its sidecar appear together
            write_video(output, result.frames, out_fps)
            resolved = plain(record if record is not None else {**asdict(self), "output": output})
            if pnp_plan is not None:
                resolved["plan"] = str(pnp_plan)
            doc = build_sidecar(
                command or ["vmt.TransferRequest.run"], "transfer", resolved, output=output,
                model=backend.describe(), timings=timer.stages, compute=backend.counts.as_dict(),
                memory=peak_memory(backend.device),
                extra={
                    "sigmas": result.sigmas,
                    "video": {"frames": len(result.frames), "fps": out_fps, "height": self.height,
                              "width": self.width},
                    "reference": {"path": str(self.reference), "frames_used": len(frames), "fps": ref_fps},
                    "image": image_doc,
                    "token_grid": list(result.grid),
                    "motion_cache": None if cache is None else {"dir": str(cache.store.root), **result.cache},
                    "guidance": {"config": result.config, "adjusted": result.adjustments,
                                 "final_amf_loss": [g["final_amf_loss"] for g in result.guidance],
                                 "steps": result.guidance},
                    # P&P's time is part of the sampling stage (the loop minus reference AMF and guidance).
                    "pnp": (refine_summary(pnp, req.steps, backend.counts.nfe, timer.stages.get("sampling", 0.0))
                            if self.refine else None),
                    **(sidecar_extra or {}),
                },
            )
            write_sidecar(output, doc)
        return backend.counts.as_dict()


def parse_tile(text: str) -> tuple[int, int]:
    """"3x4" -> (3, 4): a query tile of rows x columns of tokens."""
    from vmt.errors import VmtUsageError, param

    parts = str(text).lower().split("x")
    try:
        th, tw = (int(v) for v in parts)
    except ValueError:
        raise VmtUsageError(f"{param('tile')} {text!r} must look like 3x4 (rows x columns of tokens)") from None
    if th < 1 or tw < 1:
        raise VmtUsageError(f"{param('tile')} {text!r} must be positive")
    return th, tw
