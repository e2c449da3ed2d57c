"""`RefineRequest`: one text/image-to-video run with Predict-and-Perturb, as a typed request.

    from vmt import RefineRequest

    RefineRequest(prompt="a red fox running through snow", steps=20).run("fox.mp4")   # + fox.json

The fields are the options of `vmt refine` (the command line builds this request from its flags, a recipe or
a batch line), with their published defaults, ranges and choices. `check()` needs no model, `check_model()`
only the model's config files, `estimate()` plans the compute, and `run()` loads the model (or takes a loaded
backend) and writes the video and its JSON sidecar as one commit. Nothing is printed: progress goes to an
optional callback.
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
from vmt.runs.fields import AT_LEAST_1, FPS, NON_NEGATIVE, POSITIVE, SEED, check_fields, choice, number, text
from vmt.runs.shared import PnpOptions, WanModelOptions
from vmt.sampling.modes import ARITHMETIC_MODES, GRIDS, NOISE_MODES

# progress(done, total, info): after each denoising step; info holds display fields (sigma, P&P's K, ...).
Progress = Callable[[int, int, dict[str, str]], None]


@dataclass
class RefineRequest(PnpOptions, WanModelOptions):
    """A `vmt refine` run. Sizes in pixels and frames; see `vmt refine --help` for each option. The P&P gate and
    the model and its loading options are the fields of PnpOptions and WanModelOptions (keywords only)."""

    job_kind = JobKind("refine", ("prompt",), {"image": "file"})  # for the batch engine (a class attribute, not a field)
    progress_label = "denoising"  # what a progress bar over its steps says (a class attribute, not a field)

    prompt: str = text(doc="what the video shows")
    negative_prompt: str = text("", "what to steer away from (CFG)", empty_ok=True)
    image: Path | None = None  # first frame for image-to-video models (fitted to the size by image_fit)
    image_fit: str = choice("stretch", IMAGE_FITS, "how the image meets the output size")
    num_frames: int = number(81, AT_LEAST_1, "frames (4k+1)")
    height: int = number(480, AT_LEAST_1, "pixels (multiple of 16)")
    width: int = number(832, AT_LEAST_1, "pixels (multiple of 16)")
    steps: int = number(50, AT_LEAST_1, "denoising steps")
    guidance_scale: float = number(5.0, NON_NEGATIVE, "CFG scale (1 = off)")
    guidance_scale_2: float | None = number(None, NON_NEGATIVE, "CFG scale of the low-noise expert")
    shift: float | None = number(None, POSITIVE, "flow shift; None: the model's flow_shift")
    fps: float = number(16.0, FPS, "frame rate of the written video")
    grid: str = choice("model", GRIDS, "sampling grid")
    noise: str = choice("pipeline", NOISE_MODES, "where the seeded noise is drawn")
    arithmetic: str = choice("float32", ARITHMETIC_MODES, "precision of the Euler update")
    cfg_rule: str = choice("diffusers", CFG_RULES, "when CFG applies")
    seed: int = number(0, SEED, "random seed")

    # ---------------------------------------------------------------- checks and plan (no weights)

    def check(self):
        """Every check that needs no model: values, Wan2.1's size rules, the P&P plan, the memory options.
        Returns the resolved P&P plan."""
        from vmt.backends.wan import WanGeometry
        from vmt.errors import VmtUsageError, param
        from vmt.generate import check_modes
        from vmt.runs.shared import check_pnp, wan_load_options

        if not isinstance(self.prompt, str):
            raise VmtUsageError(f"{param('prompt')} is missing; say what the video shows")
        check_fields(self)
        WanGeometry().check_size(self.num_frames, self.height, self.width)
        plan = check_pnp(self, self.steps)
        check_modes(grid=self.grid, noise=self.noise, arithmetic=self.arithmetic, cfg_rule=self.cfg_rule)
        wan_load_options(self)
        return plan

    def check_model(self, geometry) -> None:
        """Checks against the model's config files (a vmt.backends.wan.WanGeometry; no weights)."""
        geometry.check_size(self.num_frames, self.height, self.width)

    def estimate(self, plan, geometry) -> dict[str, Any]:
        """Planned model evaluations: NFE (no early exit), DiT passes (two per NFE with CFG), tokens."""
        nfe = plan.nfe(self.steps)
        cfg = self.guidance_scale > 1.0 or (self.guidance_scale_2 or 0.0) > 1.0
        return {"steps": self.steps, "nfe": nfe, "dit_forward": nfe * (2 if cfg else 1), "dit_backward": 0,
                "cfg_branches": 2 if cfg else 1,
                "tokens": math.prod(geometry.token_grid(self.num_frames, self.height, self.width))}

    # ---------------------------------------------------------------- running

    def load(self, device: str | None = None, inspected=None):
        """Resolve the model, check this request against its config (before minutes of loading weights),
        load it. `inspected`: (resolved, geometry) from vmt.backends.wan.inspect_model, if already read."""
        from vmt.backends.wan import WanBackend, inspect_model
        from vmt.runs.shared import quiet_loading, wan_load_options

        resolved, geometry = inspected or inspect_model(self.model, self.revision)
        self.check_model(geometry)
        with quiet_loading():
            return WanBackend.from_pretrained(self.model, wan_load_options(self, resolved, device))

    def run(self, output: str | Path, *, backend=None, progress: Progress | None = None,
            overwrite: bool = False, timer=None, record: dict[str, Any] | None = None,
            command: list[str] | None = None, sidecar_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Generate and write `output` (.mp4, ...) with its JSON sidecar, committed together. Loads the model
        unless a loaded `backend` is given (a batch loads once). `overwrite`: replace existing files.
        `record`: the parameters to write in the sidecar (default: this request's fields and the output);
        `command`: the command line that asked for it. Returns the compute counts (NFE, DiT passes)."""
        from vmt.io.atomic import check_not_inputs, check_output_path, output_policy, sidecar_path
        from vmt.io.video import VIDEO_WRITE_SUFFIXES
        from vmt.runtime import Timer

        output = Path(output)
        pnp_plan = self.check()
        check_output_path(output, overwrite, suffixes=VIDEO_WRITE_SUFFIXES, what="output")
        if self.image is not None:
            check_not_inputs({"output": output, "sidecar": sidecar_path(output)}, {"image": Path(self.image)})
        timer = timer or Timer()
        if backend is None:
            with timer.stage("load"):
                backend = self.load()
        with output_policy(overwrite):
            return self.run_on(backend, output, pnp_plan, timer, progress, record, command, sidecar_extra)

    def read_inputs(self, timer) -> dict[str, Any]:
        """The input files read before the model loads (a bad one fails first), as `run_on` keywords: the
        first frame of an image-to-video run."""
        if self.image is None:
            return {}
        with timer.stage("read_image"):
            return {"first_frame": read_first_frame(self.image, self.height, self.width, self.image_fit)}

    def summary(self, counts: dict[str, Any], timer) -> str:
        """What a finished run says after "wrote OUTPUT": size, compute, time."""
        return (f"({self.num_frames} frames, {self.width}x{self.height}) NFE {counts['nfe']} "
                f"({counts['nfe'] / self.steps:.2f}x), DiT passes {counts['dit_forward']}, denoise "
                f"{timer.stages.get('denoise', 0):.1f}s")

    def run_on(self, backend, output: Path, pnp_plan, timer, progress: Progress | None = None,
               record: dict[str, Any] | None = None, command: list[str] | None = None,
               sidecar_extra: dict[str, Any] | None = None, notify=None, first_frame=None) -> dict[str, Any]:
        """One video on a loaded backend, checks done (`check()` gave `pnp_plan`): generate, then write the
        video and its sidecar as one commit. The command line's single runs and batch jobs run this.
        `first_frame`: what `read_inputs` read, else read here; `notify`: unused (generation has no notes)."""
        from vmt.generate import GenerationRequest, generate
        from vmt.io.atomic import commit_together
        from vmt.io.video import write_video
        from vmt.provenance import build_sidecar, write_sidecar
        from vmt.runs.shared import make_pnp, plain, refine_summary
        from vmt.runtime import peak_memory

        timer.sync_cuda = backend.device.type == "cuda"
        if first_frame is None:
            first_frame = self.read_inputs(timer).get("first_frame")
        image, clip_image, image_doc = first_frame or (None, None, None)
        req = GenerationRequest(
            prompt=self.prompt, negative_prompt=self.negative_prompt, image=image, clip_image=clip_image,
            num_frames=self.num_frames,
            height=self.height, width=self.width, steps=self.steps, guidance_scale=self.guidance_scale,
            guidance_scale_2=self.guidance_scale_2, shift=self.shift, seed=self.seed, grid=self.grid,
            noise=self.noise, arithmetic=self.arithmetic, cfg_rule=self.cfg_rule,
        )
        pnp = make_pnp(pnp_plan, self, sync_cuda=timer.sync_cuda)

        def on_step(state) -> None:
            if progress is not None:
                progress(state.index + 1, self.steps, {"sigma": f"{float(state.sigma):.3f}", **state.summary})

        result = generate(backend, req, interventions=[pnp] if pnp else [], on_step=on_step, timer=timer)
        with timer.stage("write"), commit_together():  # the video and its sidecar appear together
            write_video(output, result.frames, self.fps)
            resolved = plain(record if record is not None else {**asdict(self), "output": output})
            resolved["shift"] = req.shift if req.shift is not None else backend.default_shift
            resolved["plan"] = str(pnp_plan)
            pnp_doc = refine_summary(pnp, req.steps, backend.counts.nfe, timer.stages.get("denoise", 0.0))
            doc = build_sidecar(
                command or ["vmt.RefineRequest.run"], "refine", resolved, output=output, model=backend.describe(),
                timings=timer.stages, compute=backend.counts.as_dict(), memory=peak_memory(backend.device),
                extra={"sigmas": result.sigmas, "timesteps": result.timesteps,
                       "video": {"frames": int(len(result.frames)), "fps": self.fps, "height": self.height,
                                 "width": self.width},
                       "image": image_doc, "pnp": pnp_doc, "steps": result.steps, **(sidecar_extra or {})},
            )
            write_sidecar(output, doc)
        return backend.counts.as_dict()


def read_first_frame(path, height: int, width: int, fit: str):
    """An image-to-video run's first frame: (fitted (H, W, 3) uint8, the image as read for a CLIP encoder,
    the sidecar's `image` block: path, sha256 of the file, fit, original size)."""
    import numpy as np

    from vmt.io.digest import file_digest
    from vmt.io.image import fit_image, load_rgb

    pil = load_rgb(path)
    fitted = fit_image(pil, height, width, fit)
    doc = {"path": str(path), "sha256": file_digest(path), "fit": fit, "size": [pil.height, pil.width]}
    return fitted, np.asarray(pil), doc
