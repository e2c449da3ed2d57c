"""`WanChainRequest`: a long video from a Wan image-to-video model as REncGAN3's recall chain of clips.

    from vmt.runs.chain import WanChainRequest

    WanChainRequest(model="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", image=Path("first.png"),
                    prompt="a boat drifting down a river", frames=401).run("long.mp4")   # + long.json

Segment 0 starts from `image` (or is text-to-video on `t2v_model`); segment j + 1 is conditioned on the frame of
segment j at `ref_index` (as EncGAN3's chain, vmt.longgen.recall: -1 = its last frame) and contributes only the
frames after that point in time, so the video has exactly `frames` frames. Segment j uses seed + j.

Resumable: each finished segment is kept, losslessly, in a run folder beside the output (`long.mp4.chain/`:
seg_0000.npz with the segment's frames and its conditioning frame, seg_0000.json with what made it), written
atomically; a rerun of the same request reuses every stored segment whose parameters match (a mismatch is an
error naming the parameter, unless `overwrite`). The final video streams from the run folder into ffmpeg, so
memory holds one segment at a time, and is committed with its sidecar; the run folder is then removed.

Drift controls (each off by its option and recorded): `colour_match` gives the conditioning frame the first
frame's Lab colour statistics before it is encoded (vmt.metrics.drift.match_colour); `anchor_embedding`
conditions every segment on the first frame's CLIP image embedding (models with one, Wan2.1 I2V);
`cond_noise` adds Gaussian noise (std in [-1, 1] pixel units, seeded per segment) to the conditioning frame.

Long motion transfer (`reference`): the reference video is read once, resampled to the output's frame rate and
centre-cropped to its size (held whole, at the output size: frames x height x width x 3 bytes, e.g. 401 frames
at 480x832 are 480 MB), and every segment is a FastVMT transfer (vmt.transfer.transfer, the fields of
GuidanceOptions) of the reference's frames over its own time span: segment j's frame 0 sits at output time
start - keep_from, so it gets reference frames start - keep_from .. start - keep_from + segment_frames - 1. The
conditioning frame is its first frame (FirstFrameAnchor), the reference branch is conditioned on the stretch's
own first frame. The SDEdit start uses `strength`, `shift` (None: the model's flow_shift) and `grid` as `vmt
transfer` does; no motion cache. A reference shorter than `frames` is an error; the last segment's frames past
the output (never written) take the reference's last frame, held.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmt.backends.base import CFG_RULES
from vmt.runs.fields import AT_LEAST_1, FPS, NON_NEGATIVE, POSITIVE, SEED, check_fields, choice, number, text
from vmt.runs.shared import GuidanceOptions, PnpOptions, WanModelOptions
from vmt.sampling.modes import ARITHMETIC_MODES, GRIDS, NOISE_MODES

if TYPE_CHECKING:  # numpy loads with the work, not with `vmt --help`
    import numpy as np

Progress = Callable[[int, int, dict[str, str]], None]
# on_segment(index, total, status, seconds): after each segment ("done", or "resumed" when reused).
OnSegment = Callable[[int, int, str, float], None]

DEFAULT_FPS = 16.0
SEGMENT_SCHEMA = "vmt.chain-segment/1"
# Per-segment keys a JSON Lines timeline may set besides "prompt".
TIMELINE_KEYS = {"prompt": str, "negative_prompt": str, "seed_offset": int, "guidance_scale": float,
                 "shift": float}


# ---------------------------------------------------------------- planning (pure)


@dataclass(frozen=True)
class Segment:
    """One segment of the chain. It generates `segment_frames` frames; its frames keep_from ..
    keep_from + keep - 1 are output frames start .. start + keep - 1. Segment j > 0 is conditioned on frame
    `ref` of segment j - 1 and its frame 0 sits at output time j * ref."""

    index: int
    start: int
    keep_from: int
    keep: int
    cond_ref: int | None  # frame of the previous segment it is conditioned on (None: the first segment)


def resolve_ref(ref_index: int, segment_frames: int) -> int:
    """A (possibly negative) reference index as 1..segment_frames - 1 (0 would never advance the chain)."""
    from vmt.errors import VmtUsageError, param

    r = ref_index + segment_frames if ref_index < 0 else ref_index
    if not 1 <= r <= segment_frames - 1:
        raise VmtUsageError(f"{param('ref_index')} {ref_index} is outside 1..{segment_frames - 1} (or "
                            f"-{segment_frames - 1}..-1) for {segment_frames}-frame segments; use -1 (the last frame)")
    return r


def plan_segments(frames: int, segment_frames: int, ref_index: int = -1) -> list[Segment]:
    """The chain's segments for `frames` output frames: the first gives min(M, N) frames, each next one
    r = resolved ref_index new frames (the last fewer), so there are 1 + ceil(max(0, N - M) / r)."""
    from vmt.errors import VmtUsageError, param

    if frames < 1:
        raise VmtUsageError(f"{param('frames')} must be >= 1, got {frames}")
    r = resolve_ref(ref_index, segment_frames)
    out = [Segment(0, 0, 0, min(segment_frames, frames), None)]
    done = out[0].keep
    while done < frames:
        keep = min(r, frames - done)
        out.append(Segment(len(out), done, segment_frames - r, keep, r))
        done += keep
    return out


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """Per-segment options from a timeline file: text (one prompt a line, blank lines and # comments
    skipped) or JSON Lines (.jsonl: "prompt" and optional TIMELINE_KEYS). Segment j uses entry j, the last
    repeated."""
    from vmt.errors import VmtUsageError, param

    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise VmtUsageError(f"{param('prompts')} {path}: cannot read it ({e})") from None
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if Path(path).suffix != ".jsonl":
            out.append({"prompt": line.strip()})
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise VmtUsageError(f"{param('prompts')} {path} line {n} is not JSON: {e}") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            raise VmtUsageError(f"{param('prompts')} {path} line {n} needs a \"prompt\" (text)")
        for key, value in entry.items():
            kind = TIMELINE_KEYS.get(key)
            if kind is None:
                raise VmtUsageError(f"{param('prompts')} {path} line {n}: unknown key {key!r}; known: "
                                    + ", ".join(TIMELINE_KEYS))
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
                raise VmtUsageError(f"{param('prompts')} {path} line {n}: {key} must be {kind.__name__}")
        out.append(entry)
    if not out:
        raise VmtUsageError(f"{param('prompts')} {path} holds no prompt")
    return out


def sha256_of(array: np.ndarray) -> str:
    import numpy as np

    a = np.ascontiguousarray(array)
    return hashlib.sha256(repr((a.dtype.str, a.shape)).encode() + a.tobytes()).hexdigest()


def chain_folder(output: Path) -> Path:
    """The run folder that keeps the finished segments of `output`: long.mp4 -> long.mp4.chain/."""
    output = Path(output)
    return output.with_name(output.name + ".chain")


# ---------------------------------------------------------------- drift, streamed


class DriftStream:
    """vmt.metrics.drift's numbers over a video given chunk by chunk (one chain segment each), holding one
    frame between chunks: mean Lab colour and Laplacian sharpness per chunk, seams at chunk boundaries. A
    one-frame last chunk joins the one before, as drift() does. Equal chunks give drift(frames, size)."""

    def __init__(self) -> None:
        self.lab: list[np.ndarray] = []  # per chunk: sum of per-frame mean Lab
        self.sharp: list[float] = []  # per chunk: sum of per-frame Laplacian variance
        self.count: list[int] = []
        self.seam_steps: list[float] = []
        self.inside = [0.0, 0]
        self.last: np.ndarray | None = None

    def add(self, chunk: np.ndarray) -> None:
        import numpy as np

        from vmt.metrics.drift import laplacian_variance, mean_lab
        from vmt.metrics.seams import frame_steps

        chunk = np.asarray(chunk)
        lab = sum(mean_lab(f) for f in chunk)
        sharp = sum(laplacian_variance(f) for f in chunk)
        if len(chunk) > 1:
            steps = frame_steps(chunk)
            self.inside = [self.inside[0] + float(steps.sum()), self.inside[1] + len(steps)]
        step = None if self.last is None else float(frame_steps(np.stack([self.last, chunk[0]]))[0])
        if len(chunk) == 1 and self.count:  # a one-frame tail: part of the chunk before
            self.lab[-1] = self.lab[-1] + lab
            self.sharp[-1] += sharp
            self.count[-1] += 1
            self.inside = [self.inside[0] + step, self.inside[1] + 1]
        else:
            self.lab.append(lab)
            self.sharp.append(sharp)
            self.count.append(len(chunk))
            if step is not None:
                self.seam_steps.append(step)
        self.last = chunk[-1].copy()

    def report(self, segment_frames: int):
        """A vmt.metrics.drift.DriftReport, or None with fewer than two chunks."""
        import numpy as np

        from vmt.metrics.drift import DriftReport, delta_e76

        if len(self.count) < 2:
            return None
        labs = [s / c for s, c in zip(self.lab, self.count)]
        sharp = [s / c for s, c in zip(self.sharp, self.count)]
        inside = self.inside[0] / max(self.inside[1], 1)
        seams = [s / max(inside, 1e-12) for s in self.seam_steps]
        delta_e = [delta_e76(lab, labs[0]) for lab in labs]
        sharpness = [s / max(sharp[0], 1e-12) for s in sharp]
        return DriftReport(segment_frames, len(labs), delta_e, sharpness, seams, max(delta_e), delta_e[-1],
                           sharpness[-1], float(np.mean(seams)))


# ---------------------------------------------------------------- the request


@dataclass
class ChainPlan:
    """What check() resolves: the segments, the P&P plan, the timeline entries (None: `prompt` for all)."""

    segments: list[Segment]
    ref: int
    pnp: Any
    timeline: list[dict[str, Any]] | None = None
    guidance: Any = None  # the GuidanceConfig with a reference (vmt.runs.shared.guidance_config), else None

    @property
    def count(self) -> int:
        return len(self.segments)


@dataclass
class WanChainRequest(GuidanceOptions, PnpOptions, WanModelOptions):
    """A long video from a Wan image-to-video model, segment after segment (see the module docstring and
    `vmt longgen sample --help`). The guidance (with `reference`), P&P and model options are the fields of
    GuidanceOptions, PnpOptions and WanModelOptions; `model` has no default here (None: an error)."""

    progress_label = "denoising"

    prompt: str | None = text(None, "what the video shows (every segment)")
    prompts: Path | None = None  # timeline: one prompt a segment (the last repeated), or .jsonl with options
    negative_prompt: str = text("", "what to steer away from (CFG)", empty_ok=True)
    image: Path | None = None  # first frame (resized and centre-cropped); None: segment 0 on t2v_model
    reference: Path | None = None  # a long video whose motion each segment takes over its own time span
    t2v_model: str | None = text(None, "text-to-video model for segment 0 when no image is given")
    frames: int = number(160, AT_LEAST_1, "frames of the output")
    segment_frames: int = number(81, AT_LEAST_1, "frames per segment (4k+1)")
    ref_index: int = number(-1, None, "frame of each segment that conditions the next (negative: from the end)")
    height: int = number(480, AT_LEAST_1, "pixels (multiple of 16)")
    width: int = number(832, AT_LEAST_1, "pixels (multiple of 16)")
    steps: int = number(50, AT_LEAST_1, "denoising steps per segment")
    guidance_scale: float = number(5.0, NON_NEGATIVE, "CFG scale (1 = off)")
    shift: float | None = number(None, POSITIVE, "flow shift; None: the model's flow_shift")
    fps: float | None = number(None, FPS, "frame rate of the written video (None: 16)")
    grid: str = choice("model", GRIDS, "sampling grid")
    noise: str = choice("pipeline", NOISE_MODES, "where the seeded noise is drawn")
    arithmetic: str = choice("float32", ARITHMETIC_MODES, "precision of the Euler update")
    cfg_rule: str = choice("diffusers", CFG_RULES, "when CFG applies")
    seed: int = number(0, SEED, "random seed of segment 0 (segment j: seed + j)")
    colour_match: bool = True
    anchor_embedding: bool = True
    cond_noise: float = number(0.0, NON_NEGATIVE, "noise std added to the conditioning frame ([-1, 1] units)")
    model: str | None = field(default=None, metadata={"doc": "Wan image-to-video hub id or diffusers folder"})

    # ---------------------------------------------------------------- checks and plan (no weights)

    def check(self) -> ChainPlan:
        """Every check that needs no model; returns the plan (segments, P&P plan, timeline)."""
        from vmt.backends.wan import WanGeometry
        from vmt.errors import VmtUsageError, param
        from vmt.generate import check_modes
        from vmt.runs.shared import check_pnp, guidance_config, wan_load_options

        if self.prompt is None and self.prompts is None:
            raise VmtUsageError(f"{param('prompt')} is missing; say what the video shows (or give "
                                f"{param('prompts')}, one prompt a segment)")
        if self.prompt is not None and self.prompts is not None:
            raise VmtUsageError(f"give {param('prompt')} or {param('prompts')}, not both")
        if self.model is None:
            raise VmtUsageError(f"{param('model')} is missing; give a Wan image-to-video model (hub id or "
                                "diffusers folder)")
        check_fields(self)
        if self.frames < 1:
            raise VmtUsageError(f"{param('frames')} must be >= 1, got {self.frames}")
        if self.segment_frames < 5 or (self.segment_frames - 1) % 4:
            raise VmtUsageError(f"{param('segment_frames')} must be 4k+1 and at least 5 (e.g. 33, 81), got "
                                f"{self.segment_frames}")
        segments = plan_segments(self.frames, self.segment_frames, self.ref_index)
        if self.image is None and self.t2v_model is None:
            raise VmtUsageError(f"an image-to-video model cannot start without a first frame: give {param('image')}, "
                                f"or {param('t2v_model')} to make segment 1 text-to-video")
        WanGeometry().check_size(self.segment_frames, self.height, self.width)
        pnp = check_pnp(self, self.steps)
        check_modes(grid=self.grid, noise=self.noise, arithmetic=self.arithmetic, cfg_rule=self.cfg_rule)
        wan_load_options(self)
        timeline = read_timeline(self.prompts) if self.prompts is not None else None
        guidance = guidance_config(self, self.height, self.width) if self.reference is not None else None
        return ChainPlan(segments, resolve_ref(self.ref_index, self.segment_frames), pnp, timeline, guidance)

    def check_model(self, resolved, geometry, t2v: bool = False) -> None:
        """Against the model's config files (no weights): image-to-video (t2v: text-to-video), and the size."""
        from vmt.errors import VmtUsageError, param

        want = "WanPipeline" if t2v else "WanImageToVideoPipeline"
        if resolved.pipeline_class != want:
            name = "t2v_model" if t2v else "model"
            kind = "a text-to-video" if t2v else "an image-to-video"
            raise VmtUsageError(f"{param(name)} {resolved.model_id} is a {resolved.pipeline_class}; the chain "
                                f"needs {kind} Wan model here")
        if self.reference is not None:
            geometry.check_block(self.block)
        geometry.check_size(self.segment_frames, self.height, self.width)

    def segment_options(self, plan: ChainPlan, j: int) -> dict[str, Any]:
        """What segment j is made with: prompt, negative prompt, guidance, shift, seed (seed + j + offset)."""
        entry = plan.timeline[min(j, len(plan.timeline) - 1)] if plan.timeline else {}
        return {"prompt": entry.get("prompt", self.prompt),
                "negative_prompt": entry.get("negative_prompt", self.negative_prompt),
                "guidance_scale": float(entry.get("guidance_scale", self.guidance_scale)),
                "shift": entry.get("shift", self.shift),
                "seed": self.seed + j + int(entry.get("seed_offset", 0))}

    def estimate(self, plan: ChainPlan, geometry) -> dict[str, Any]:
        """Planned compute over the chain: segments, NFE (no early exit), DiT passes (two per NFE with CFG;
        with a reference, each segment's guidance as `vmt transfer` plans it: reference forwards, and a forward
        + backward at every reuse_interval-th inner step; on the model's grid SDEdit runs the last
        int(steps * strength) steps)."""
        steps = self.steps
        if plan.guidance is not None and self.grid == "model" and self.strength < 1:
            steps = min(int(self.steps * self.strength), self.steps)
        nfe = plan.pnp.nfe(steps)
        passes = sum(nfe * (2 if self.segment_options(plan, j)["guidance_scale"] > 1.0 else 1)
                     for j in range(plan.count))
        grads = 0
        if plan.guidance is not None:
            cfg = plan.guidance
            guided = min(cfg.guided_steps, steps)
            grads = guided * math.ceil(cfg.inner_steps / cfg.reuse_interval) * plan.count
            passes += ((1 if guided else 0) if cfg.ref_amf == "clean" else guided) * plan.count + grads
        return {"segments": plan.count, "segment_frames": self.segment_frames, "frames": self.frames,
                "frames_generated": plan.count * self.segment_frames, "nfe_per_segment": nfe,
                "nfe": nfe * plan.count, "dit_forward": passes, "dit_backward": grads,
                "tokens_per_segment": math.prod(geometry.token_grid(self.segment_frames, self.height, self.width))}

    def dry_run(self) -> dict[str, Any]:
        """The plan without weights: segments (which output frames each gives, its seed and prompt), compute,
        and the GPU memory estimate of one segment (vmt.backends.memory, from the model's files)."""
        from vmt.backends.memory import memory_estimate
        from vmt.backends.wan import inspect_model
        from vmt.runtime import resolve_device

        plan = self.check()
        resolved, geometry = inspect_model(self.model, self.revision)
        self.check_model(resolved, geometry)
        est = self.estimate(plan, geometry)
        dtype = self.dtype if self.dtype != "auto" else (
            "bfloat16" if resolve_device(self.device).type == "cuda" else "float32")
        shape = (1, 16, (self.segment_frames - 1) // 4 + 1, self.height // 8, self.width // 8)
        memory = memory_estimate(resolved.folder, dtype, self.offload, est["tokens_per_segment"], math.prod(shape),
                                 2 if self.guidance_scale > 1 else 1,
                                 None if self.storage_dtype == "none" else self.storage_dtype)
        rows = [{"segment": s.index, "output_frames": [s.start, s.start + s.keep - 1],
                 "keeps": [s.keep_from, s.keep_from + s.keep - 1], "conditioned_on": s.cond_ref,
                 "seed": self.segment_options(plan, s.index)["seed"],
                 "prompt": self.segment_options(plan, s.index)["prompt"],
                 **({"reference_frames": list(self.reference_span(s))} if self.reference is not None else {})}
                for s in plan.segments]
        return {"dry_run": True, "model": self.model, "estimate": est, "memory": memory, "segments": rows}

    # ---------------------------------------------------------------- running

    def _key(self, plan: ChainPlan, j: int, fingerprint: str, cond_sha: str | None,
             reference: dict[str, Any] | None = None) -> dict[str, Any]:
        """The parameters segment j's frames depend on: a stored segment is reused only when they match."""
        seg = self.segment_options(plan, j)
        t2v = j == 0 and self.image is None
        return {"model": self.t2v_model if t2v else self.model, "model_fingerprint": fingerprint,
                "height": self.height, "width": self.width, "segment_frames": self.segment_frames,
                "steps": self.steps, "grid": self.grid, "noise": self.noise, "arithmetic": self.arithmetic,
                "cfg_rule": self.cfg_rule, "plan": str(plan.pnp), "tau": self.tau,
                "certain_fraction": self.certain_fraction, "p_norm": self.p_norm, "dtype": self.dtype,
                "storage_dtype": self.storage_dtype, "lora": list(self.lora or []), **seg,
                "ref_index": plan.ref if j else None, "colour_match": self.colour_match if j else None,
                "anchor_embedding": self.anchor_embedding, "cond_noise": self.cond_noise if j else None,
                "cond_sha256": cond_sha, **self._transfer_key(plan, j, reference)}

    def _transfer_key(self, plan: ChainPlan, j: int, reference: dict[str, Any] | None) -> dict[str, Any]:
        """The motion transfer's part of segment j's key: the reference (content, rate, the frames of its
        span) and every GuidanceOptions field; all None without a reference (a plain chain's key)."""
        names = [f.name for f in fields(GuidanceOptions)]
        if reference is None:
            return {"reference_sha256": None, "reference_fps": None, "reference_frames": None,
                    **dict.fromkeys(names)}
        return {"reference_sha256": reference["sha256"], "reference_fps": reference["fps"],
                "reference_frames": list(self.reference_span(plan.segments[j])),
                **{k: getattr(self, k) for k in names}}

    def reference_span(self, seg: Segment) -> tuple[int, int]:
        """The reference frames (first, last; at the output's rate) of segment `seg`'s time span: its frame
        0 is output frame start - keep_from, and it makes segment_frames frames."""
        first = seg.start - seg.keep_from
        return first, first + self.segment_frames - 1

    def read_reference(self, plan: ChainPlan) -> tuple[np.ndarray, dict[str, Any]]:
        """The reference read once: resampled to the output's rate, centre-cropped to the size, as many frames
        as the last segment's span reaches (the ones past the output, if the file ends first, hold its last
        frame); and its sidecar block. Shorter than `frames`: an error naming both lengths."""
        import numpy as np

        from vmt.errors import VmtUsageError, param
        from vmt.io.digest import file_digest
        from vmt.io.video import read_video

        fps = self.fps or DEFAULT_FPS
        need = self.reference_span(plan.segments[-1])[1] + 1
        frames, _ = read_video(self.reference, fps=fps, max_frames=need, size=(self.height, self.width),
                               resize="crop")
        if len(frames) < self.frames:
            raise VmtUsageError(f"{param('reference')} {self.reference} gives {len(frames)} frames at {fps:g} fps; "
                                f"the output needs {self.frames} ({param('frames')}): use a longer reference or "
                                "fewer frames")
        held = need - len(frames)
        if held:
            frames = np.concatenate([frames, np.repeat(frames[-1:], held, axis=0)])
        return frames, {"path": str(self.reference), "sha256": file_digest(self.reference), "fps": fps,
                        "frames_read": need - held, "held_frames": held}

    def conditioning_frame(self, source: np.ndarray, anchor: np.ndarray, seed: int) -> np.ndarray:
        """The frame segment j + 1 is encoded from: segment j's frame at ref_index, colour-matched to the
        anchor (`colour_match`), plus seeded Gaussian noise (`cond_noise`, [-1, 1] units), as uint8."""
        import numpy as np

        from vmt.metrics.drift import match_colour

        frame = match_colour(source, anchor) if self.colour_match else np.array(source, copy=True)
        if self.cond_noise > 0:
            noise = np.random.default_rng(seed).standard_normal(frame.shape) * (127.5 * self.cond_noise)
            frame = np.clip(np.rint(frame.astype(np.float64) + noise), 0, 255).astype(np.uint8)
        return frame

    def run(self, output: str | Path, *, overwrite: bool = False, progress: Progress | None = None,
            on_segment: OnSegment | None = None, record: dict[str, Any] | None = None,
            command: list[str] | None = None, device: str | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Make (or resume) the chain and write `output` with its JSON sidecar, committed together. Returns
        {"frames", "segments", "generated", "resumed", "nfe", "dit_forward", "seconds", "drift"}. `dry_run`:
        check everything, load no weights, write nothing, and return `dry_run()`'s plan."""
        from vmt.backends.wan import inspect_model
        from vmt.io.atomic import check_not_inputs, check_output_path, output_policy, sidecar_path
        from vmt.io.video import VIDEO_WRITE_SUFFIXES, read_video

        output = Path(output)
        plan = self.check()
        check_output_path(output, overwrite, suffixes=VIDEO_WRITE_SUFFIXES, what="output")
        if dry_run:
            return self.dry_run()
        inputs = {k: Path(v) for k, v in (("image", self.image), ("prompts", self.prompts),
                                          ("reference", self.reference)) if v is not None}
        check_not_inputs({"output": output, "sidecar": sidecar_path(output)}, inputs)
        models = {"i2v": inspect_model(self.model, self.revision)}
        self.check_model(*models["i2v"])
        if self.image is None:
            models["t2v"] = inspect_model(self.t2v_model)
            self.check_model(*models["t2v"], t2v=True)
        image = None
        if self.image is not None:
            image = read_video(self.image, size=(self.height, self.width), max_frames=1)[0][0]
        reference = self.read_reference(plan) if self.reference is not None else None  # before any weights
        folder = chain_folder(output)
        folder.mkdir(parents=True, exist_ok=True)
        with output_policy(overwrite):
            return _Chain(self, plan, folder, models, image, overwrite, progress, on_segment, device,
                          reference).run(output, record, command)


class _Chain:
    """One run of a WanChainRequest: segments made or reused in order, then the video from the run folder."""

    def __init__(self, req: WanChainRequest, plan: ChainPlan, folder: Path, models, image, overwrite: bool,
                 progress, on_segment, device, reference=None):
        self.req, self.plan, self.folder, self.models = req, plan, folder, models
        self.image, self.overwrite, self.progress, self.on_segment, self.device = (
            image, overwrite, progress, on_segment, device)
        # with a reference: (its frames at the output's rate and size, its sidecar block)
        self.ref_frames, self.ref_doc = reference if reference is not None else (None, None)
        self.backends: dict[str, Any] = {}
        self.anchor: np.ndarray | None = image
        self.anchor_embeds = None
        self.records: list[dict[str, Any]] = []
        self.nfe = self.dit = self.backward = 0
        self.seconds = 0.0

    def backend(self, kind: str):
        from vmt.backends.wan import WanBackend
        from vmt.runs.shared import quiet_loading, wan_load_options

        if kind not in self.backends:
            self.backends.clear()  # one model in memory at a time (the T2V one is done when the I2V one loads)
            resolved = self.models[kind][0]
            with quiet_loading():
                self.backends[kind] = WanBackend.from_pretrained(
                    resolved.model_id, wan_load_options(self.req, resolved, self.device))
        return self.backends[kind]

    def paths(self, j: int) -> tuple[Path, Path]:
        return self.folder / f"seg_{j:04d}.npz", self.folder / f"seg_{j:04d}.json"

    def stored(self, j: int, key: dict[str, Any]) -> np.ndarray | None:
        """Segment j's frames if stored with `key`; None if absent (or different, with overwrite)."""
        import numpy as np

        from vmt.errors import VmtUsageError, param

        npz, meta = self.paths(j)
        if not meta.is_file() or not npz.is_file():
            return None
        doc = json.loads(meta.read_text())
        old = doc.get("params", {})
        diff = [k for k in key if old.get(k) != key[k]]
        if diff:
            if self.overwrite:
                return None
            k = diff[0]
            what = ("its conditioning frame differs (an earlier segment changed)" if k == "cond_sha256"
                    else f"{param(k) if hasattr(WanChainRequest, k) else k} was {old.get(k)!r}, now {key[k]!r}")
            raise VmtUsageError(f"segment {j} in {self.folder} was made with other parameters: {what}; pass "
                                f"{param('overwrite')} to make it again, or write to another output")
        with np.load(npz) as data:
            frames = data["frames"]
        if sha256_of(frames) != doc.get("frames_sha256"):
            raise VmtUsageError(f"{npz} does not match its record (damaged?); delete it or pass {param('overwrite')}")
        return frames

    def run(self, output: Path, record, command) -> dict[str, Any]:
        prev: np.ndarray | None = None
        generated = resumed = 0
        for seg in self.plan.segments:
            t0 = time.perf_counter()
            frames, status = self.segment(seg, prev)
            generated += status == "done"
            resumed += status == "resumed"
            if self.anchor is None:
                self.anchor = frames[0].copy()
            if self.on_segment is not None:
                self.on_segment(seg.index, self.plan.count, status, time.perf_counter() - t0)
            prev = frames[self.plan.ref].copy() if seg.index + 1 < self.plan.count else None
            del frames
        report = self.write(output, record, command)
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
        return {"frames": self.req.frames, "segments": self.plan.count, "generated": generated, "resumed": resumed,
                "nfe": self.nfe, "dit_forward": self.dit, "dit_backward": self.backward,
                "seconds": round(self.seconds, 3),
                "drift": None if report is None else report.as_dict()}

    def segment(self, seg: Segment, prev: np.ndarray | None) -> tuple[np.ndarray, str]:
        req, j = self.req, seg.index
        opts = req.segment_options(self.plan, j)
        kind = "t2v" if j == 0 and self.image is None else "i2v"
        cond = None
        if j == 0:
            cond = self.image
        else:
            cond = req.conditioning_frame(prev, self.anchor, opts["seed"])
        cond_sha = None if cond is None else sha256_of(cond)
        key = req._key(self.plan, j, self.models[kind][0].fingerprint, cond_sha, self.ref_doc)
        frames = self.stored(j, key)
        if frames is not None:
            self.records.append(self.record(j, key, json.loads(self.paths(j)[1].read_text())))
            return frames, "resumed"
        t0 = time.perf_counter()
        if self.ref_frames is None:
            frames, counts, guidance = *self.generate(kind, j, opts, cond), None
        else:
            frames, counts, guidance = self.transfer(kind, seg, opts, cond)
        self.store(j, key, frames, cond, counts, time.perf_counter() - t0, guidance)
        return frames, "done"

    def record(self, j: int, key: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
        seg = self.plan.segments[j]
        return {"segment": j, "seed": key["seed"], "prompt": key["prompt"], "model": key["model"],
                "output_frames": [seg.start, seg.start + seg.keep - 1], "keeps": [seg.keep_from,
                                                                                  seg.keep_from + seg.keep - 1],
                "conditioned_on": None if j == 0 else {"segment": j - 1, "frame": seg.cond_ref,
                                                       "output_time": j * seg.cond_ref},
                "cond_sha256": key["cond_sha256"], "frames_sha256": doc["frames_sha256"],
                "compute": doc.get("compute", {}), "seconds": doc.get("seconds"),
                **({} if self.ref_frames is None else {"reference_frames": key["reference_frames"],
                                                       "guidance": doc.get("guidance")})}

    def generate(self, kind: str, j: int, opts: dict[str, Any], cond: np.ndarray | None):
        import torch

        from vmt.generate import run_loop, start_noise
        from vmt.runs.shared import make_pnp
        from vmt.runtime import Timer

        req = self.req
        backend = self.backend(kind)
        before = backend.counts.as_dict()
        timer = Timer(sync_cuda=backend.device.type == "cuda")
        with torch.no_grad():
            c = backend.encode_prompt(opts["prompt"], opts["negative_prompt"], opts["guidance_scale"],
                                      cfg_rule=req.cfg_rule)
        if cond is not None:
            if req.anchor_embedding and self.anchor_embeds is None and self.anchor is not None:
                self.anchor_embeds = backend.image_embedding(self.anchor)
            embeds = self.anchor_embeds if req.anchor_embedding else None
            c = backend.condition_on_image(c, cond, req.segment_frames, req.height, req.width, image_embeds=embeds)
        schedule = backend.schedule(req.steps, opts["shift"], req.grid)
        z, gen = start_noise(backend.latent_shape(req.segment_frames, req.height, req.width), opts["seed"],
                             backend.execution_device, req.noise)
        pnp = make_pnp(self.plan.pnp, replace(req, seed=opts["seed"]), sync_cuda=timer.sync_cuda)
        label = {"segment": f"{j + 1}/{self.plan.count}"}

        def on_step(state) -> None:
            if self.progress is not None:
                self.progress(state.index + 1, req.steps, {**label, **state.summary})

        _, frames, _ = run_loop(backend, z, schedule, c, [pnp] if pnp else [], on_step, True, timer,
                                arithmetic=req.arithmetic, noise=gen)
        after = backend.counts.as_dict()
        counts = {k: after[k] - before.get(k, 0) for k in ("nfe", "dit_forward") if k in after}
        self.nfe += counts.get("nfe", 0)
        self.dit += counts.get("dit_forward", 0)
        self.seconds += sum(timer.stages.values())
        return frames, counts

    def transfer(self, kind: str, seg: Segment, opts: dict[str, Any], cond: np.ndarray | None):
        """Segment `seg` as a FastVMT transfer of its stretch of the reference (vmt.transfer.transfer), first
        frame fixed to `cond` on the I2V model: (frames, compute counts, the guidance's record)."""
        from vmt.runs.shared import make_pnp
        from vmt.runtime import Timer
        from vmt.transfer import TransferRequest as Sampling
        from vmt.transfer import transfer

        req, j = self.req, seg.index
        backend = self.backend(kind)
        before = backend.counts.as_dict()
        timer = Timer(sync_cuda=backend.device.type == "cuda")
        first, last = req.reference_span(seg)
        sampling = Sampling(
            prompt=opts["prompt"], negative_prompt=opts["negative_prompt"], height=req.height, width=req.width,
            steps=req.steps, shift=opts["shift"] if opts["shift"] is not None else backend.default_shift,
            guidance_scale=opts["guidance_scale"], strength=req.strength, seed=opts["seed"], grid=req.grid,
            noise=req.noise, arithmetic=req.arithmetic, cfg_rule=req.cfg_rule)
        pnp = make_pnp(self.plan.pnp, replace(req, seed=opts["seed"]), sync_cuda=timer.sync_cuda)
        label = {"segment": f"{j + 1}/{self.plan.count}"}

        def on_step(state) -> None:
            if self.progress is not None:
                self.progress(state.index + 1, req.steps, {**label, **state.summary})

        clip = self.anchor if cond is not None and req.anchor_embedding else None  # the first frame's CLIP
        result = transfer(backend, self.ref_frames[first:last + 1], sampling, self.plan.guidance,
                          interventions=[pnp] if pnp else [], on_step=on_step, timer=timer, notify=None,
                          cache=None, image=cond, clip_image=clip)
        after = backend.counts.as_dict()
        counts = {k: after[k] - before.get(k, 0) for k in ("nfe", "dit_forward", "dit_backward") if k in after}
        self.nfe += counts.get("nfe", 0)
        self.dit += counts.get("dit_forward", 0)
        self.backward += counts.get("dit_backward", 0)
        self.seconds += sum(timer.stages.values())
        guidance = {"final_amf_loss": [g["final_amf_loss"] for g in result.guidance],
                    "adjusted": [str(a) for a in result.adjustments], "shift": sampling.shift,
                    "start_sigma": result.sigmas[0]}
        return result.frames, counts, guidance

    def store(self, j: int, key, frames: np.ndarray, cond, counts, seconds: float, guidance=None) -> None:
        """Segment j's frames (and conditioning frame) and its record, appearing together."""
        import numpy as np

        from vmt.io.atomic import atomic_path, commit_together, write_json_atomic

        npz, meta = self.paths(j)
        doc = {"schema": SEGMENT_SCHEMA, "segment": j, "params": key, "frames_sha256": sha256_of(frames),
               "compute": counts, "seconds": round(seconds, 3), **({} if guidance is None else {"guidance": guidance})}
        with commit_together():
            with atomic_path(npz, replace=True) as tmp, open(tmp, "wb") as fh:
                arrays = {"frames": frames} if cond is None else {"frames": frames, "cond": cond}
                np.savez_compressed(fh, **arrays)
            write_json_atomic(meta, doc, replace=True)
        self.records.append(self.record(j, key, doc))

    def write(self, output: Path, record, command):
        """Stream the kept frames of every segment from the run folder into the video; sidecar with it."""
        import numpy as np

        from vmt.io.atomic import commit_together
        from vmt.io.video import VideoWriter
        from vmt.provenance import build_sidecar, write_sidecar
        from vmt.runs.shared import plain

        req = self.req
        fps = req.fps or DEFAULT_FPS
        drift = DriftStream()
        with commit_together():
            with VideoWriter(output, fps) as writer:
                for seg in self.plan.segments:
                    with np.load(self.paths(seg.index)[0]) as data:
                        kept = data["frames"][seg.keep_from:seg.keep_from + seg.keep]
                    writer.write(kept)
                    drift.add(kept)
            report = drift.report(req.segment_frames)
            params = plain(record if record is not None else {**asdict(req), "output": output})
            doc = build_sidecar(
                command or ["vmt.WanChainRequest.run"], "longgen-sample", params, output=output,
                model={"model": req.model, "fingerprint": self.models["i2v"][0].fingerprint,
                       "t2v_model": req.t2v_model if "t2v" in self.models else None},
                compute={"nfe": self.nfe, "dit_forward": self.dit,
                         **({} if self.ref_frames is None else {"dit_backward": self.backward})},
                extra={"method": "wan-chain", "video": {"frames": req.frames, "fps": fps, "height": req.height,
                                                        "width": req.width},
                       "chain": {"segments": self.plan.count, "segment_frames": req.segment_frames,
                                 "ref_index": req.ref_index, "ref": self.plan.ref,
                                 "controls": {"colour_match": req.colour_match,
                                              "anchor_embedding": req.anchor_embedding,
                                              "anchor_embedding_used": req.anchor_embedding
                                              and takes_image_embedding(self.models["i2v"][0].folder),
                                              "cond_noise": req.cond_noise},
                                 "per_segment": self.records},
                       "drift": None if report is None else report.as_dict(),
                       **({} if self.ref_frames is None else {
                           "reference": self.ref_doc, "guidance": {"config": self.plan.guidance.as_dict()}})})
            write_sidecar(output, doc)
        return report


def takes_image_embedding(folder: Path) -> bool:
    """Whether a Wan I2V folder's transformer takes a CLIP image embedding (its config's image_dim; no weights)."""
    sub = "transformer" if (Path(folder) / "transformer").is_dir() else "transformer_2"
    try:
        return json.loads((Path(folder) / sub / "config.json").read_text()).get("image_dim") is not None
    except (OSError, ValueError):
        return False


def is_wan_model(model: str | None) -> bool:
    """Whether `vmt longgen sample`'s model is a Wan model (a diffusers folder with model_index.json, or a hub
    id) rather than an EncGAN3 run folder (None: the shipped EncGAN3 model)."""
    if model is None:
        return False
    p = Path(model).expanduser()
    if p.is_dir():
        return (p / "model_index.json").is_file()
    from vmt.backends.loading import _is_hub_id

    return _is_hub_id(model)


def sample_request(model: str | None, given: frozenset[str] | set[str] = frozenset()) -> type:
    """The request `vmt longgen sample` runs: WanChainRequest for a Wan model (`is_wan_model`), else
    vmt.runs.longgen.LonggenSampleRequest (EncGAN3). Options given that only the other one takes are an error
    naming the first of them."""
    from dataclasses import fields

    from vmt.errors import VmtUsageError, param
    from vmt.runs.longgen import LonggenSampleRequest

    if model is not None and Path(model).expanduser().is_file():
        raise VmtUsageError(f"{param('model')} {model} is a file; give a folder (an EncGAN3 run folder or a "
                            "diffusers Wan model) or a hub id")
    wan = is_wan_model(model)
    chosen, other = (WanChainRequest, LonggenSampleRequest) if wan else (LonggenSampleRequest, WanChainRequest)
    own = {f.name for f in fields(chosen)} | ({"dry_run"} if wan else set())
    foreign = sorted(({f.name for f in fields(other)} | ({"dry_run"} if not wan else set())) - own)
    bad = [name for name in foreign if name in given]
    if bad:
        what = "EncGAN3 run folders (vmt longgen train)" if wan else "Wan image-to-video models"
        raise VmtUsageError(f"{param(bad[0])} applies to {what}; {param('model')} {model or '(default)'} is "
                            f"{'a Wan model' if wan else 'an EncGAN3 run'}")
    return chosen
