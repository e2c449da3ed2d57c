"""`vmt eval` as typed requests, one per subcommand, whose fields are the subcommand's options.

    from vmt.runs.eval import TemporalEvalRequest

    result = TemporalEvalRequest(["outputs/"], json_out="temporal.json").run()
    result.outcome   # "pass", "regression", "error" (inputs failed), "no baseline" or "nothing compared"
    result.report    # the vmt.eval/1.1 document (vmt.metrics.report), also written to json_out

`check()` checks the values, expands the inputs (a video file, a folder of videos or a glob; hidden files are
never inputs), and checks the report options before any scoring: json_out neither an input nor an existing
file (unless overwrite), tolerances well formed and given with a baseline, the baseline a valid report.
`run()` hashes the inputs, refuses a baseline made on other inputs or parameters (unless
allow_different_inputs), scores every input (an input that fails is listed in the report, never hidden),
builds the report, gates it against the baseline and writes it atomically to json_out. It prints nothing
(json_out "-" writes the report to standard output, as asked); progress goes to an optional callback, and
`EvalResult.view()` says what a reader is shown. A failure that is not a VmtError (a metric crashing, a file
that cannot be read or written) is raised as a VmtError naming it, unless `debug` (then as it is).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from vmt.errors import Note, VmtError, VmtUsageError, param
from vmt.runs.fields import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Range, check_fields, choice, number, text

# progress(done, total, info): after each scored input; info holds display fields (file, and set for fvd/fid).
Progress = Callable[[int, int, dict[str, str]], None]

FLOW_PRESETS = ("ultrafast", "fast", "medium")
CLIP_MODES = ("first", "all")
HIDDEN_NOTE = "hidden files, such as vmt's .part temporaries, are never inputs"


# ---------------------------------------------------------------- inputs


def visible(path: Path) -> bool:
    """Not a hidden file: names starting with "." are never inputs of a folder or a glob (that includes the
    temporaries vmt writes beside its outputs, `.<stem>.<random>.part<suffix>`, and editors' and OSes' files)."""
    return not path.name.startswith(".")


def expand_inputs(spec: str | Path) -> list[Path]:
    """A file, a folder (its visible video files, sorted) or a glob (its visible files) -> paths. An existing
    path is taken literally (names may contain glob characters), hidden or not; no match is a usage error."""
    import glob

    from vmt.io.video import VIDEO_SUFFIXES

    spec = str(spec)
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES and visible(q))
        if not files:
            raise VmtUsageError(f"folder {p} has no video files ({', '.join(sorted(VIDEO_SUFFIXES))}; "
                                f"{HIDDEN_NOTE})")
        return files
    if p.exists():
        return [p]
    if any(c in spec for c in "*?["):
        files = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file() and visible(Path(q)))
        if not files:
            raise VmtUsageError(f"no files match {spec!r} ({HIDDEN_NOTE})")
        return files
    raise VmtUsageError(f"{p} not found; give a video, a folder of videos, or a quoted glob")


def expand_all(specs: str | Path | list) -> list[Path]:
    """Several inputs (each a file, folder or glob) -> their paths, in order."""
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    return [q for spec in specs for q in expand_inputs(spec)]


# ---------------------------------------------------------------- plan, result


@dataclass
class EvalPlan:
    """What `check()` found: the inputs by role (as the report lists them), the work to score in order,
    error rows for inputs that cannot be scored, and the parsed report options."""

    inputs: dict[str, list[Path]]
    work: list
    errors: list[dict] = field(default_factory=list)
    listed_in: Path | None = None  # a file that lists the inputs (eval motion's batch)
    baseline: dict | None = None
    tolerances: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        """How many inputs are scored one by one (what progress counts)."""
        return len(self.work)


class EvalTable(NamedTuple):
    """A table to show: a title, (header, "left" | "right") columns, and rows of text."""

    title: str
    columns: list[tuple[str, str]]
    rows: list[list[str]]


@dataclass
class Scored:
    """What a subcommand's scoring gives the report: metrics, rows, error rows, and what its result says."""

    metrics: dict[str, Any]
    items: list[dict]
    errors: list[dict]
    counted: int | None = None  # inputs the headline metric was computed from (default: its finite rows)
    params: dict[str, Any] = field(default_factory=dict)  # recorded beside the options (the detector file)
    warnings: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    """A finished run: the report (written to json_out when given), the gate's outcome and the line that says
    it, and what else a reader is told (`view`)."""

    report: dict
    outcome: str  # "pass" | "regression" | "error" | "no baseline" | "nothing compared"
    message: Note  # the result line: "vmt eval seams: seam_score=1.02 (1 of 1 video scored); ..."
    checks: list = field(default_factory=list)  # vmt.metrics.report.Check, one per gated metric
    problems: list[str] = field(default_factory=list)  # why the baseline is not comparable (when allowed)
    differ: dict = field(default_factory=dict)  # packages whose versions differ from the baseline's
    warnings: list[str] = field(default_factory=list)
    columns: tuple[str, ...] = ()
    written: Path | None = None  # the report file written

    def tables(self) -> list[EvalTable]:
        """The per-input table (for several inputs) and the metrics table."""
        from vmt.metrics.report import direction_text

        sub, items, out = self.report["subcommand"], self.report["items"], []
        if len(items) > 1 and self.columns:
            paired = any("reference" in it for it in items)
            cols = [("input", "left"), *([("reference", "left")] if paired else []),
                    *[(c, "right") for c in self.columns]]
            rows = [[it["name"], *([Path(it["reference"]).name] if paired else []),
                     *[fmt(it["metrics"].get(c)) for c in self.columns]] for it in items]
            out.append(EvalTable(f"vmt eval {sub}: per input", cols, rows))
        rows = [[name, fmt(m["value"]) + (f" {m['unit']}" if m.get("unit") else ""), direction_text(name)]
                for name, m in self.report["metrics"].items()]
        out.append(EvalTable(f"vmt eval {sub}", [("metric", "left"), ("value", "right"), ("better", "left")], rows))
        return out

    def checks_table(self) -> EvalTable:
        rows = [[c.name, fmt(c.baseline), fmt(c.current), c.tolerance,
                 f"REGRESSED {c.reason}" if c.regressed else "ok" if c.compared else f"not compared: {c.reason}"]
                for c in self.checks]
        return EvalTable("baseline comparison", [("metric", "left"), ("baseline", "right"), ("current", "right"),
                                                 ("tolerance", "left"), ("status", "left")], rows)

    def view(self, quiet: bool = False) -> list[tuple[str, Any]]:
        """What a reader is shown, in order: ("table", EvalTable) or (kind, line) with kind "warning", "note",
        "failed", "input_error", "wrote" or, last, the outcome with the result line. `quiet` keeps what
        qualifies the result: the package-versions note, the failed inputs and the result line."""
        from vmt.metrics.report import versions_note

        out: list[tuple[str, Any]] = []
        if not quiet:
            out += [("warning", w) for w in self.warnings]
            out += [("table", t) for t in self.tables()]
            out += [("note", f"{it['name']}: {it['metrics']['reason']}") for it in self.report["items"]
                    if it["metrics"].get("reason")]
            out += [("table", self.checks_table())] if self.checks else []
            out += [("warning", Note(f"baseline not comparable: {pr} ({param('allow_different_inputs')})"))
                    for pr in self.problems]
        if self.differ:
            out.append(("note", versions_note(self.differ)))
        errors = self.report["errors"]
        if errors:
            out.append(("failed", f"{len(errors)} input(s) failed:"))
            out += [("input_error", Note(f"{e['path']}: {_marked(e['error'])}")) for e in errors]
        if self.written is not None and not quiet:
            out.append(("wrote", str(self.written)))
        return [*out, (self.outcome, self.message)]


def fmt(v: Any) -> str:
    """A value as tables and result lines show it: 6 significant digits, "-" for none."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _marked(text: Any) -> str:
    """A message with its parameter marks (a Note's), for joining into a Note."""
    return text.message if isinstance(text, Note) else str(text)


def _input_error(e: Exception) -> str:
    """An input's failure as its report row says it."""
    if isinstance(e, VmtError):
        return Note(e.message)
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def failures_as_errors(debug: bool) -> Iterator[None]:
    """A failure that is not a VmtError becomes one (the run failed, not the request), naming the exception
    (its cause); with `debug` it propagates as it is, with its traceback."""
    try:
        yield
    except VmtError:
        raise
    except Exception as e:
        if debug:
            raise
        raise VmtError(f"{type(e).__name__}: {e} (rerun with {param('debug')} for the traceback)") from e


def score_rows(work: list, fn: Callable[[Any], dict], progress: Progress, done: int = 0, total: int | None = None,
               **info: str) -> tuple[list[dict], list[dict]]:
    """Rows {"name", "path", "metrics": fn(x)[, "reference"]} of inputs (paths, or (reference, video) pairs);
    any exception from one input is that input's error row. No input scored at all is a VmtError."""
    total = len(work) if total is None else total
    items, errors = [], []
    for x in work:
        path = x[-1] if isinstance(x, tuple) else x
        try:
            row = {"name": Path(path).name, "path": str(path), "metrics": fn(x)}
            if isinstance(x, tuple):
                row["reference"] = str(x[0])
            items.append(row)
        except Exception as e:
            errors.append({"path": str(path), "error": _input_error(e)})
        done += 1
        progress(done, total, {**info, "file": Path(path).name})
    if not items:
        first = f": {errors[0]['path']}: {_marked(errors[0]['error'])}" if errors else ""
        raise VmtError(f"no input could be scored{first}")
    return items, errors


# ---------------------------------------------------------------- the shared request


@dataclass(kw_only=True)
class EvalOptions:
    """The report options of every `vmt eval` request (keywords only), and the run: check, score, report,
    gate, write. A subcommand's request adds its inputs and metric options, `_plan` and `_score`."""

    subcommand: ClassVar[str] = ""
    columns: ClassVar[tuple[str, ...]] = ()  # the per-input table's metric columns
    units: ClassVar[dict[str, str]] = {}
    headline: ClassVar[str | None] = None  # the metric the result line states (default: the first)
    noun: ClassVar[str] = "video"
    scored_as: ClassVar[str] = "scored"

    json_out: Path | None = None  # write the report here ("-": standard output)
    html_out: Path | None = None  # and a self-contained HTML page of it here (vmt.html_report.eval_html)
    baseline: Path | None = None  # a previous report of the same subcommand, inputs and parameters
    tolerance: list[str] | None = None  # NAME=VALUE (absolute) or NAME=VALUE% (of the baseline's value)
    allow_different_inputs: bool = False  # compare with a baseline made on other inputs or parameters
    overwrite: bool = False  # replace an existing json_out
    debug: bool = False  # unexpected exceptions propagate as they are

    @property
    def progress_label(self) -> str:
        """What a progress bar over the inputs says."""
        return self.subcommand

    # ---------------------------------------------------------------- checks (no scoring)

    def check(self) -> EvalPlan:
        """Values, inputs, report options and the baseline's form; returns the plan `run` scores."""
        with failures_as_errors(self.debug):
            check_fields(self)
            plan = self._plan()
            self._check_report(plan)
            return plan

    def _plan(self) -> EvalPlan:
        raise NotImplementedError

    def _check_report(self, plan: EvalPlan) -> None:
        from vmt.io.atomic import check_not_inputs, check_output_path
        from vmt.metrics.report import load_report, parse_tolerances

        # Named by role for messages ("the input gen #2 b.mp4"), as the command line names its inputs.
        named = {param(role) + (f" #{i + 1}" if len(paths) > 1 else ""): Path(x)
                 for role, paths in plan.inputs.items() for i, x in enumerate(paths)}
        if self.baseline is not None:
            named[param("baseline")] = Path(self.baseline)
        if plan.listed_in is not None:  # a file of inputs: an input too, though its bytes are not the report's
            named[param("batch")] = Path(plan.listed_in)
        if self.json_out is not None and str(self.json_out) != "-":  # not an input first: overwrite is no fix
            check_not_inputs({param("json_out"): Path(self.json_out)}, named)
            check_output_path(self.json_out, self.overwrite, sidecar=False, suffixes={".json"},
                              what=param("json_out"))
        if self.html_out is not None:
            outputs = {param("html_out"): Path(self.html_out)}
            if self.json_out is not None and str(self.json_out) != "-":
                outputs[param("json_out")] = Path(self.json_out)
            check_not_inputs(outputs, named)
            check_output_path(self.html_out, self.overwrite, sidecar=False, suffixes={".html"},
                              what=param("html_out"))
        plan.tolerances = parse_tolerances(self.tolerance or [])
        if plan.tolerances and self.baseline is None:
            raise VmtUsageError(f"{param('tolerance')} needs {param('baseline')} FILE (a previous "
                                f"{param('json_out')} report) to compare with")
        if self.baseline is not None:
            plan.baseline = load_report(self.baseline)

    # ---------------------------------------------------------------- running

    def run(self, plan: EvalPlan | None = None, *, progress: Progress | None = None,
            record: dict[str, Any] | None = None, command: list[str] | None = None) -> EvalResult:
        """Score, report, gate, write json_out. `plan`: what `check()` returned (checked again when None).
        `record`: the parameters the report records (default: this request's fields); `command`: the command
        line that asked for it."""
        from vmt.io.atomic import output_policy
        from vmt.metrics.report import check_comparable, input_digests, require_gated

        t0 = time.perf_counter()
        with failures_as_errors(self.debug), output_policy(self.overwrite):
            plan = plan if plan is not None else self.check()
            params = {k: (str(v) if isinstance(v, Path) else v)
                      for k, v in (record if record is not None else asdict(self)).items()}
            digests = input_digests({k: [str(x) for x in v] for k, v in plan.inputs.items()})
            problems = []
            if plan.baseline is not None:
                stub = {"subcommand": self.subcommand, "params": params, "input_digests": digests}
                problems = check_comparable(stub, plan.baseline, self.allow_different_inputs)
                require_gated(plan.baseline, self.baseline, self.subcommand, params)
            scored = self._score(plan, progress or (lambda done, total, info: None))
            params.update(scored.params)
            return self._finish(plan, scored, params, digests, problems, command, t0)

    def _score(self, plan: EvalPlan, progress: Progress) -> Scored:
        raise NotImplementedError

    def _finish(self, plan: EvalPlan, scored: Scored, params: dict, digests: dict, problems: list[str],
                command: list[str] | None, t0: float) -> EvalResult:
        """Build the report, gate it, write it; the result line counts the inputs the headline metric was
        computed from of all inputs, e.g. "physics_rms=- (0 of 5 videos had a trajectory)"."""
        from vmt.metrics.report import attach_baseline, build_report, compare, versions_differ

        report = build_report(self.subcommand, scored.metrics,
                              command=command or [f"vmt.runs.eval.{type(self).__name__}.run"], params=params,
                              inputs={k: [str(x) for x in v] for k, v in plan.inputs.items()}, items=scored.items,
                              errors=scored.errors, units=self.units, digests=digests,
                              timings={"total": round(time.perf_counter() - t0, 3)})
        checks, differ = [], {}
        if plan.baseline is not None:
            checks = compare(report, plan.baseline, plan.tolerances)
            differ = versions_differ(report, plan.baseline)
            attach_baseline(report, self.baseline, checks, differ)
            report["baseline"]["not_comparable"] = problems
        written = self._write(report)
        outcome, message = self._verdict(report, scored, checks, differ)
        return EvalResult(report, outcome, message, checks, problems, differ, scored.warnings, self.columns,
                          written)

    def _write(self, report: dict) -> Path | None:
        """json_out (or stdout) and html_out; the report file and its page appear together."""

        from vmt.io.atomic import commit_together

        if self.html_out is not None:
            from vmt.html_report import eval_html, write_html

            page = eval_html(report)
            with commit_together():
                written = self._write_json(report)
                write_html(self.html_out, page)
            return written
        return self._write_json(report)

    def _write_json(self, report: dict) -> Path | None:
        import json
        import sys

        from vmt.io.atomic import write_json_atomic

        if self.json_out is None:
            return None
        if str(self.json_out) == "-":
            sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
            sys.stdout.flush()
            return None
        return write_json_atomic(self.json_out, report)

    def _verdict(self, report: dict, scored: Scored, checks: list, differ: dict) -> tuple[str, Note]:
        """The outcome and the result line: failed inputs (unless skip_bad), a regression, no baseline,
        nothing compared (the baseline has no value for any gated metric), or a pass."""
        items, errors = scored.items, scored.errors
        key = self.headline or next(iter(scored.metrics))
        counted = scored.counted
        if counted is None:
            counted = sum(_finite(it["metrics"].get(key)) for it in items)
        total = len(items) + len(errors)
        summary = (f"vmt eval {self.subcommand}: {key}={fmt(report['metrics'][key]['value'])} ({counted} of "
                   f"{total} {self.noun if total == 1 else self.noun + 's'} {self.scored_as}")
        summary += f", {len(errors)} failed)" if errors else ")"
        if errors and not getattr(self, "skip_bad", False):
            return "error", Note(f"{summary}; pass {param('skip_bad')} to accept failed inputs")
        regressed = [c for c in checks if c.regressed]
        if regressed:
            return "regression", Note(f"{summary}: " + ", ".join(f"{c.name} ({c.reason})" for c in regressed))
        if report["baseline"] is None:
            return "no baseline", Note(f"{summary}; nothing gated (give {param('baseline')} FILE to compare)")
        compared = [c for c in checks if c.compared]
        skipped = [c.name for c in checks if not c.compared]
        other = f"; baseline made with other {', '.join(differ)}" if differ else ""
        if not compared:
            return "nothing compared", Note(f"{summary}: the baseline has no value for {', '.join(skipped)}{other}")
        tail = f", {len(skipped)} not compared ({', '.join(skipped)}: no value in the baseline)" if skipped else ""
        return "pass", Note(f"{summary}, {len(compared)} baseline checks ok{tail}{other}")


@dataclass(kw_only=True)
class PerInputOptions(EvalOptions):
    """The report options of the subcommands that score input files one by one (all but keypoints)."""

    skip_bad: bool = False  # inputs that failed do not make the outcome "error" (they are still reported)


# ---------------------------------------------------------------- fvd / fid


@dataclass
class _DistributionRequest(PerInputOptions):
    """FVD and FID: detector features of two sets of videos, and the Frechet distance between them."""

    real: str = text(doc="real videos: a file, folder or glob")
    gen: str = text(doc="generated videos: a file, folder or glob")

    def _plan(self) -> EvalPlan:
        real, gen = expand_inputs(self.real), expand_inputs(self.gen)
        return EvalPlan({"real": real, "gen": gen}, [*real, *gen])

    def _detector(self):
        raise NotImplementedError

    def _feature_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def _score(self, plan: EvalPlan, progress: Progress) -> Scored:
        import numpy as np

        from vmt.metrics import detectors as D
        from vmt.metrics.frechet import frechet_distance_features
        from vmt.runtime import resolve_device

        kind, (real, gen) = self.subcommand, (plan.inputs["real"], plan.inputs["gen"])
        det = D.load_detector(*self._detector(), str(resolve_device(self.device)))
        inception_score = bool(getattr(self, "inception_score", False))
        gen_only, feats, probs = set(gen) - set(real), {}, []

        def features(path: Path) -> dict:
            feats[path] = D.video_features(
                path, det, kind, **self._feature_options(), batch_size=self.batch_size,
                probabilities=probs if inception_score and path in gen_only else None)
            return {"samples": len(feats[path])}

        unit = "clips" if kind == "fvd" else "frames"
        items, errors, done = [], [], 0
        for name, paths in (("real", real), ("gen", gen)):
            it, err = score_rows(paths, features, progress, done, plan.total, set=name)
            done += len(paths)
            items += [dict(i, set=name) for i in it]
            errors += err
        sets = {n: np.concatenate([feats[Path(i["path"])] for i in items if i["set"] == n]) for n in ("real", "gen")}
        for name, f in sets.items():
            if len(f) < 2:
                raise VmtUsageError(f"{kind.upper()} needs at least 2 {unit} per set; the {name} set gave {len(f)}")
        metrics = {kind: frechet_distance_features(sets["real"], sets["gen"]), f"n_real_{unit}": len(sets["real"]),
                   f"n_gen_{unit}": len(sets["gen"])}
        if inception_score:
            if not probs:
                raise VmtUsageError(f"{param('inception_score')} scores the generated frames; give {param('gen')} "
                                    f"videos that are not also in {param('real')}")
            metrics["is"] = D.inception_score(np.concatenate(probs))[0]
        return Scored(metrics, items, errors, counted=len(items), params={"detector": str(det.path)})


@dataclass
class FvdRequest(_DistributionRequest):
    """`vmt eval fvd`: Frechet Video Distance of I3D features (StyleGAN-V protocol: the first 16 frames of each
    video, short side resized to 224 and centre-cropped)."""

    subcommand: ClassVar[str] = "fvd"

    i3d: Path | None = None  # the I3D TorchScript file (default: found in $VMT_DETECTORS or the vmt cache)
    num_frames: int = number(16, AT_LEAST_1, "frames per clip")
    size: int = number(224, Range(8), "clip side in pixels")
    clips: str = choice("first", CLIP_MODES, "first: one clip per video (protocol); all: every clip")
    batch_size: int = number(8, AT_LEAST_1, "clips per detector call")
    device: str = "auto"

    def _detector(self):
        from vmt.metrics.detectors import I3D

        return I3D, self.i3d

    def _feature_options(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "size": self.size, "clips": self.clips, "stride": 1,
                "max_frames": None}


@dataclass
class FidRequest(_DistributionRequest):
    """`vmt eval fid`: per-frame FID of Inception pool features (and the Inception Score of the generated
    frames when `inception_score`)."""

    subcommand: ClassVar[str] = "fid"

    inception: Path | None = None  # the Inception TorchScript file (inception-2015-12-05.pt)
    stride: int = number(1, AT_LEAST_1, "use every N-th frame")
    max_frames: int | None = number(None, AT_LEAST_1, "use at most this many frames of each video")
    inception_score: bool = False
    batch_size: int = number(32, AT_LEAST_1, "frames per detector call")
    device: str = "auto"

    def _detector(self):
        from vmt.metrics.detectors import INCEPTION

        return INCEPTION, self.inception

    def _feature_options(self) -> dict[str, Any]:
        return {"num_frames": 16, "size": 224, "clips": "first", "stride": self.stride,
                "max_frames": self.max_frames}


# ---------------------------------------------------------------- motion


@dataclass
class MotionEvalRequest(PerInputOptions):
    """`vmt eval motion`: motion fidelity of generated videos against their references, and a global
    direction check. Pairs: `gen` against `ref` (folders paired by file name), or the lines of `batch` (a
    pairs file, or a transfer batch's manifest)."""

    subcommand: ClassVar[str] = "motion"
    columns: ClassVar[tuple[str, ...]] = ("motion_fidelity", "best_match", "direction_cosine", "direction",
                                          "tracks_ref", "tracks_gen")
    headline: ClassVar[str | None] = "motion_fidelity"
    noun: ClassVar[str] = "pair"

    ref: str | None = None  # reference video(s): a file, folder or glob
    gen: str | None = None  # generated video(s): a file, folder or glob
    batch: Path | None = None  # pairs to score instead of ref and gen (.jsonl)
    grid: int = number(40, Range(2), "tracked points along the longer side")
    fb_threshold: float = number(1.0, POSITIVE, "forward-backward error (pixels) that drops a track")
    min_motion: float = number(1e-3, NON_NEGATIVE, "RMS step (frame diagonals a frame) of a moving track")
    max_frames: int | None = number(None, Range(2), "use at most this many frames of each video")

    def _plan(self) -> EvalPlan:
        pairs, not_done = self._pairs()
        # With a batch the references are listed pair by pair, so the report's digests pin the pairing too.
        refs = [r for r, _ in pairs] if self.batch is not None else list(dict.fromkeys(r for r, _ in pairs))
        return EvalPlan({"ref": refs, "gen": [g for _, g in pairs]}, pairs, not_done, listed_in=self.batch)

    def _pairs(self) -> tuple[list[tuple[Path, Path]], list[dict]]:
        """(reference, generated) pairs from ref and gen or from batch, and an error row for each batch job
        that is not done (it has no video to score)."""
        from vmt.metrics.motion import pair_videos
        from vmt.metrics.pairs import read_pairs

        if self.batch is None:
            if self.ref is None or self.gen is None:
                raise VmtUsageError(f"give {param('ref')} and {param('gen')} (videos, folders or globs), or "
                                    f"{param('batch')} FILE of pairs")
            return pair_videos(expand_inputs(self.ref), expand_inputs(self.gen)), []
        if self.ref is not None or self.gen is not None:
            raise VmtUsageError(f"{param('batch')} FILE lists the pairs; give it without {param('ref')} and "
                                f"{param('gen')}")
        listed = read_pairs(self.batch)
        pairs = [(x.reference, x.video) for x in listed if x.done]
        not_done = [{"path": str(x.video), "error": f"{self.batch} line {x.line}: the job's status is {x.status}, "
                     "so there is no video to score"} for x in listed if not x.done]
        if not pairs:
            raise VmtError(f"no job in {self.batch} is done; nothing to score")
        return pairs, not_done

    def _score(self, plan: EvalPlan, progress: Progress) -> Scored:
        from vmt.metrics import motion as M

        items, errors = score_rows(plan.work, lambda rg: M.score_pair(
            *rg, grid=self.grid, fb_threshold=self.fb_threshold, min_motion=self.min_motion,
            max_frames=self.max_frames), progress)
        warnings = [f"{it['name']}: global motion is reversed relative to {Path(it['reference']).name} "
                    f"(cosine {it['metrics']['direction_cosine']:.2f})"
                    for it in items if it["metrics"]["direction"] == "reversed"]
        return Scored(M.summarize(items), items, plan.errors + errors, warnings=warnings)


# ---------------------------------------------------------------- temporal, physics, seams: videos


@dataclass
class _VideosRequest(PerInputOptions):
    """A metric of each video on its own."""

    videos: list[str]  # files, folders or globs

    def _plan(self) -> EvalPlan:
        paths = expand_all(self.videos)
        return EvalPlan({"videos": paths}, paths)

    def _score_video(self, path: Path) -> dict:
        raise NotImplementedError

    def _summarize(self, items: list[dict]) -> dict:
        raise NotImplementedError

    def _score(self, plan: EvalPlan, progress: Progress) -> Scored:
        items, errors = score_rows(plan.work, self._score_video, progress)
        return Scored(self._summarize(items), items, errors)


@dataclass
class TemporalEvalRequest(_VideosRequest):
    """`vmt eval temporal`: flow-warping error, consecutive-frame SSIM and PSNR, VBench's temporal flickering
    and dynamic degree."""

    subcommand: ClassVar[str] = "temporal"
    columns: ClassVar[tuple[str, ...]] = ("warp_error", "ssim", "psnr", "flicker", "dynamic")
    units: ClassVar[dict[str, str]] = {"psnr": "dB"}
    headline: ClassVar[str | None] = "warp_error"

    flow_preset: str = choice("medium", FLOW_PRESETS, "DIS optical flow preset")
    max_frames: int | None = number(None, Range(2), "use at most this many frames of each video")

    def _score_video(self, path: Path) -> dict:
        from vmt.metrics.temporal import score_video

        return score_video(path, flow_preset=self.flow_preset, max_frames=self.max_frames)

    def _summarize(self, items: list[dict]) -> dict:
        from vmt.metrics.temporal import summarize

        return summarize(items)


@dataclass
class PhysicsEvalRequest(_VideosRequest):
    """`vmt eval physics`: the residual of a moving object's tracked trajectory from a constant-acceleration
    law, in frame diagonals and pixels."""

    subcommand: ClassVar[str] = "physics"
    columns: ClassVar[tuple[str, ...]] = ("trajectory", "physics_rms", "physics_rms_px", "accel_x", "accel_y",
                                          "frames_found")
    units: ClassVar[dict[str, str]] = {"physics_rms_px": "px"}
    headline: ClassVar[str | None] = "physics_rms"
    scored_as: ClassVar[str] = "had a trajectory"

    threshold: float = number(25.0, Range(0, 255), "difference from the background (0-255) marking the object")
    start: int = number(0, NON_NEGATIVE, "first frame of the segment")
    end: int | None = number(None, AT_LEAST_1, "end frame (exclusive) of the segment")
    max_frames: int | None = number(None, AT_LEAST_1, "use at most this many frames of each video")

    def _score_video(self, path: Path) -> dict:
        from vmt.metrics.physics import score_video

        return score_video(path, threshold=self.threshold, start=self.start, end=self.end,
                           max_frames=self.max_frames)

    def _summarize(self, items: list[dict]) -> dict:
        from vmt.metrics.physics import summarize

        return summarize(items)


@dataclass
class SeamsEvalRequest(_VideosRequest):
    """`vmt eval seams`: the mean frame change at clip boundaries over the mean change inside clips (1:
    seamless), gated by its distance to 1."""

    subcommand: ClassVar[str] = "seams"
    columns: ClassVar[tuple[str, ...]] = ("seam_score", "boundary_change", "inside_change", "boundaries")
    headline: ClassVar[str | None] = "seam_score"

    clip_length: int = number(0, None, "frames per generated clip (required, >= 2)")
    max_frames: int | None = number(None, AT_LEAST_1, "use at most this many frames of each video")

    def _plan(self) -> EvalPlan:
        if self.clip_length < 2:
            raise VmtUsageError(f"{param('clip_length')} N is required (frames per clip, >= 2)")
        return super()._plan()

    def _score_video(self, path: Path) -> dict:
        from vmt.metrics.seams import score_video

        return score_video(path, clip_length=self.clip_length, max_frames=self.max_frames)

    def _summarize(self, items: list[dict]) -> dict:
        from vmt.metrics.seams import summarize

        return summarize(items)


@dataclass
class DriftEvalRequest(_VideosRequest):
    """`vmt eval drift`: per segment of a long video, the colour shift from the first segment (CIE Lab delta
    E of the segment means), the sharpness relative to the first segment (variance of the Laplacian) and the
    seam score of each boundary (vmt.metrics.drift); `plot` draws them per segment (PNG)."""

    subcommand: ClassVar[str] = "drift"
    columns: ClassVar[tuple[str, ...]] = ("segments", "max_delta_e", "final_delta_e", "final_sharpness",
                                          "mean_seam")
    headline: ClassVar[str | None] = "final_delta_e"

    segment_frames: int = number(81, Range(2), "frames of the first segment (and of each, without overlap)")
    overlap: int = number(0, NON_NEGATIVE, "frames a segment shares with the one before (a chain on its last frame: 1)")
    max_frames: int | None = number(None, AT_LEAST_1, "use at most this many frames of each video")
    plot: Path | None = None  # a PNG of delta E, sharpness and seams per segment, one line per video

    def _check_report(self, plan: EvalPlan) -> None:
        super()._check_report(plan)
        if self.plot is not None:
            from vmt.io.atomic import check_not_inputs, check_output_path

            check_not_inputs({param("plot"): Path(self.plot)}, {param("videos"): p for p in plan.work})
            check_output_path(self.plot, self.overwrite, sidecar=False, suffixes={".png"}, what=param("plot"))

    def _score_video(self, path: Path) -> dict:
        from vmt.io.video import read_video
        from vmt.metrics.drift import drift

        frames, _ = read_video(path, max_frames=self.max_frames)
        try:
            return drift(frames, self.segment_frames, self.overlap).as_dict()
        except ValueError as e:
            raise VmtUsageError(f"{path}: {e} ({param('segment_frames')} {self.segment_frames}, "
                                f"{param('overlap')} {self.overlap})") from None

    def _summarize(self, items: list[dict]) -> dict:
        import numpy as np

        ms = [i["metrics"] for i in items]
        out = {k: float(np.mean([m[k] for m in ms])) if ms else float("nan")
               for k in ("final_delta_e", "max_delta_e", "final_sharpness", "mean_seam")}
        out["videos"] = len(ms)
        return out

    def _write(self, report: dict) -> Path | None:
        if self.plot is None:
            return super()._write(report)
        from vmt.io.atomic import commit_together
        from vmt.metrics.drift import plot_drift

        with commit_together():
            written = super()._write(report)
            plot_drift(self.plot, [(Path(i["name"]).name, i["metrics"]) for i in report["items"]])
        return written


# ---------------------------------------------------------------- keypoints


@dataclass
class KeypointsEvalRequest(EvalOptions):
    """`vmt eval keypoints`: forecasts of `vmt predict-keypoints run --backtest` against the keypoint file
    they forecast, with the trivial forecasts to beat."""

    subcommand: ClassVar[str] = "keypoints"
    columns: ClassVar[tuple[str, ...]] = ("ade_best", "fde_best", "mae_best_k", "apd", "zero_velocity_ade",
                                          "constant_velocity_ade", "damped_velocity_ade")
    headline: ClassVar[str | None] = "ade_best"
    noun: ClassVar[str] = "window"

    truth: Path  # the keypoint file (names, lengths, value)
    pred: Path  # the `predict-keypoints run` output
    k: int = number(5, AT_LEAST_1, "best K of the N samples for MAE and APD")

    def _plan(self) -> EvalPlan:
        for name in ("truth", "pred"):
            path = getattr(self, name)
            if not Path(path).is_file():
                raise VmtUsageError(f"{param(name)} {path} not found; give a keypoint file (.npz)")
        return EvalPlan({"truth": [Path(self.truth)], "pred": [Path(self.pred)]}, [])

    def _score(self, plan: EvalPlan, progress: Progress) -> Scored:
        from vmt.metrics.forecast import evaluate_forecasts

        metrics, items = evaluate_forecasts(self.truth, self.pred, self.k)
        return Scored(metrics, items, [])
