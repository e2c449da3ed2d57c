"""`vmt eval`: the papers' metrics as one command, with JSON reports and a baseline regression gate.

Metric logic lives in vmt.metrics (each module's `score_*` builds a report row, `summarize` the report's
metrics; vmt.metrics.report builds reports and runs the gate); this module parses options, runs the rows with
a progress bar and prints."""

from __future__ import annotations

import glob
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vmt.errors import VmtError
from cli.scaffold import (
    AT_LEAST_1, JSON_REPORT, NON_NEGATIVE, POSITIVE, CommandSpec, Range, error_text, run_command,
)
from cli.common import (
    DebugOpt,
    DeviceOpt,
    OverwriteOpt,
    QuietOpt,
    command_line,
    console,
    step_progress,
)

HELP = """Score videos with the metrics of the papers vmt implements; print a table, write JSON, gate CI.

[bold]Examples[/]

  vmt eval motion ref.mp4 out.mp4

  vmt eval temporal outputs/ --json temporal.json

  vmt eval fvd real/ 'gen/*.mp4' --i3d ~/detectors/i3d_torchscript.pt --json fvd.json

  vmt eval fvd real/ gen/ --i3d i3d.pt --baseline fvd.json --tolerance fvd=5%   # exit 1 on regression

Inputs (REAL, GEN, VIDEO...) are a video file, a folder of videos, or a quoted glob (an existing path is
taken as it is, even with [ ] in its name; folders and globs skip hidden files, such as vmt's .part
temporaries). A file that fails (unreadable, or a metric that crashes on it) is
listed with its error; the run then exits 3 unless [bold]--skip-bad[/] is given. Reports follow the versioned
schema vmt.eval/1.1 and record the inputs' content hashes and the versions of the packages that decide the
numbers; a report is a valid [bold]--baseline[/] for a later run of the same subcommand on the same inputs with
the same parameters (anything else is refused unless [bold]--allow-different-inputs[/]; a baseline made with
other package versions is compared, with a note). A baseline must hold every metric the subcommand gates, each
with a finite value or null. The seam score is gated by its distance to 1.

[bold]Exit codes[/]: 0 pass, or no --baseline given (the result line says "no baseline"); 1 regression against
--baseline; 2 usage error (bad option, malformed or unusable baseline, an output that is an input); 3 runtime
error (unreadable inputs without --skip-bad, a metric that failed).
"""

app = typer.Typer(name="eval", help=None, no_args_is_help=True, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]})


def _para(text: str) -> str:
    from cli.common import reflow

    return reflow(text)


app.info.help = _para(HELP)

JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the report (schema vmt.eval/1.1) to this "
                                              "file; '-' writes it to stdout.", rich_help_panel="Report")]
BaselineOpt = Annotated[Path | None, typer.Option("--baseline", help="A previous --json report of the same "
                                                  "subcommand, inputs and parameters: exit 1 when a metric is "
                                                  "worse than there by more than its tolerance.",
                                                  rich_help_panel="Report")]
ToleranceOpt = Annotated[list[str] | None, typer.Option("--tolerance", "-t", help="NAME=VALUE (absolute) or "
                                                        "NAME=VALUE% (of the baseline's value); repeatable; "
                                                        "'*=2%' sets the default (0: any worsening fails; for the "
                                                        "seam score, moving further from 1).",
                                                        rich_help_panel="Report")]
AllowDiffOpt = Annotated[bool, typer.Option("--allow-different-inputs", help="Compare with a baseline made on "
                                            "other inputs (content) or parameters (recorded in the report).",
                                            rich_help_panel="Report")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Exit 0 even if some inputs failed (they are "
                                          "still listed and reported).", rich_help_panel="Report")]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", help="Use at most this many frames of each "
                                                  "video.")]


# ---------------------------------------------------------------- shared plumbing

def _visible(path: Path) -> bool:
    """Not a hidden file: names starting with "." are never inputs of a folder or a glob (that includes the
    temporaries vmt writes beside its outputs, `.<stem>.<random>.part<suffix>`, and editors' and OSes' files)."""
    return not path.name.startswith(".")


def expand_inputs(spec: str) -> list[Path]:
    """A file, a folder (its visible video files, sorted) or a glob (its visible files) -> paths. An existing
    path is taken literally (names may contain glob characters), hidden or not; no match is a usage error."""
    from vmt.errors import VmtUsageError
    from vmt.io.video import VIDEO_SUFFIXES

    hidden_note = "hidden files, such as vmt's .part temporaries, are never inputs"
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES and _visible(q))
        if not files:
            raise VmtUsageError(f"folder {p} has no video files ({', '.join(sorted(VIDEO_SUFFIXES))}; "
                                f"{hidden_note})")
        return files
    if p.exists():
        return [p]
    if any(c in spec for c in "*?["):
        files = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file() and _visible(Path(q)))
        if not files:
            raise VmtUsageError(f"no files match {spec!r} ({hidden_note})")
        return files
    raise VmtUsageError(f"{p} not found; give a video, a folder of videos, or a quoted glob")


# Exit codes of `vmt eval`, a CI gate: a regression (1) must be told apart from a run that failed (3).
EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3


class EvalRuntimeError(VmtError):
    """A failure while computing metrics (unreadable inputs without --skip-bad, a crash): exit code 3."""


def _eval_exit_code(error: BaseException) -> int:
    from vmt.errors import VmtUsageError

    return EXIT_USAGE if isinstance(error, VmtUsageError) else EXIT_RUNTIME


def run_eval(ctx: typer.Context, spec: CommandSpec, params: dict[str, Any], body: Callable[[dict], Any]) -> Any:
    """The scaffold's `run_command` (numbers and declared paths checked first, signals, one-line errors) with
    eval's exit codes: usage errors 2, regressions 1 (typer.Exit), anything else that fails (a VmtError or a
    crash) 3, never 1."""
    from vmt.errors import VmtError, VmtUsageError

    debug = bool(params.get("debug", False))

    def wrapped(p: dict) -> Any:
        try:
            return body(p)
        except (VmtUsageError, EvalRuntimeError, typer.Exit):
            raise
        except VmtError as e:
            raise EvalRuntimeError(e.message) from e
        except Exception as e:
            if debug:
                raise
            raise EvalRuntimeError(f"{type(e).__name__}: {e} (rerun with --debug for the traceback)") from e

    return run_command(ctx, spec, params, wrapped, _eval_exit_code)


def eval_spec(name: str, inputs: dict[str, str] | None = None, **ranges: Range) -> CommandSpec:
    """A subcommand's declarations: its file inputs and --baseline must exist, numbers in their ranges.
    Videos given as folders or globs, and --json (which must not be any of them), are checked by EvalRun
    once the inputs are expanded."""
    return CommandSpec(f"eval-{name}", inputs={"baseline": "file", **(inputs or {})}, ranges=ranges)


class EvalRun:
    """One `vmt eval` run: report options validated and the baseline checked before any work, items scored
    with per-file errors collected, report written and gated at the end."""

    def __init__(self, subcommand: str, p: dict, inputs: dict[str, list[Path]], *, skip_bad: bool = False,
                 listed_in: Path | None = None):
        from vmt.errors import VmtUsageError
        from vmt.io.atomic import check_not_inputs, check_output_path
        from vmt.metrics.report import check_comparable, input_digests, load_report, parse_tolerances, require_gated

        self.subcommand, self.p, self.inputs = subcommand, p, inputs
        self.quiet, self.skip_bad = p["quiet"], skip_bad
        self.t0 = time.perf_counter()
        json_out, baseline = p.get("json_out"), p.get("baseline")
        # Named by role for messages ("the input GEN #2 b.mp4"), as the scaffold names its inputs.
        named = {role.upper() + (f" #{i + 1}" if len(paths) > 1 else ""): Path(x)
                 for role, paths in inputs.items() for i, x in enumerate(paths)}
        if baseline is not None:
            named["--baseline"] = Path(baseline)
        if listed_in is not None:  # the --batch file: an input too, though its bytes are not the report's inputs
            named["--batch"] = Path(listed_in)
        if json_out is not None and str(json_out) != "-":  # not an input first: "--overwrite" is no fix for that
            check_not_inputs({"--json": Path(json_out)}, named)
            check_output_path(json_out, p["overwrite"], sidecar=JSON_REPORT.sidecar, suffixes=JSON_REPORT.suffixes,
                              what="--json")
        self.json_out = json_out
        self.tolerances = parse_tolerances(p.get("tolerance") or [])
        if self.tolerances and baseline is None:
            raise VmtUsageError("--tolerance needs --baseline FILE (a previous --json report) to compare with")
        self.params = {k: (str(v) if isinstance(v, Path) else v) for k, v in p.items()}
        self.digests = input_digests({k: [str(x) for x in v] for k, v in inputs.items()})
        self.baseline_path, self.baseline, self.problems = baseline, None, []
        if baseline is not None:
            self.baseline = load_report(baseline)
            stub = {"subcommand": subcommand, "params": self.params, "input_digests": self.digests}
            self.problems = check_comparable(stub, self.baseline, bool(p.get("allow_different_inputs")))
            require_gated(self.baseline, baseline, subcommand, self.params)

    def score(self, paths: list, fn: Callable[[Any], dict], description: str) -> tuple[list[dict], list[dict]]:
        """Rows {"name", "path", "metrics": fn(path)}; any exception from one input is that input's error."""
        items, errors = [], []
        with step_progress(len(paths), description, self.quiet or len(paths) < 2) as advance:
            for x in paths:
                path = x[-1] if isinstance(x, tuple) else x
                try:
                    row = {"name": Path(path).name, "path": str(path), "metrics": fn(x)}
                    if isinstance(x, tuple):
                        row["reference"] = str(x[0])
                    items.append(row)
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    msg = str(e) if isinstance(e, ValueError) else error_text(e)
                    errors.append({"path": str(path), "error": msg})
                advance(file=Path(path).name)
        if not items:
            first = f": {errors[0]['path']}: {errors[0]['error']}" if errors else ""
            raise EvalRuntimeError(f"no input could be scored{first}")
        return items, errors

    def finish(self, metrics: dict[str, Any], items: list[dict], errors: list[dict], *,
               units: dict[str, str] | None = None, columns: list[str] | None = None,
               headline: str | None = None, noun: str = "input", scored_as: str = "scored",
               counted: int | None = None) -> None:
        """Build, print, write and gate the report. The result line counts the inputs the headline metric was
        computed from (`counted`; by default the rows where it is a finite number) of all inputs, e.g.
        "physics_rms=- (0 of 5 videos had a trajectory)", and says "no baseline" when nothing was gated."""
        from rich.markup import escape

        from vmt.io.atomic import write_json_atomic
        from vmt.metrics.report import attach_baseline, build_report, compare, versions_differ, versions_note

        report = build_report(self.subcommand, metrics, command=command_line(), params=self.params,
                              inputs={k: [str(x) for x in v] for k, v in self.inputs.items()}, items=items,
                              errors=errors, units=units, digests=self.digests,
                              timings={"total": round(time.perf_counter() - self.t0, 3)})
        checks = compare(report, self.baseline, self.tolerances) if self.baseline is not None else []
        differ = versions_differ(report, self.baseline) if self.baseline is not None else {}
        if self.baseline is not None:
            attach_baseline(report, self.baseline_path, checks, differ)
            report["baseline"]["not_comparable"] = self.problems
        out = console  # without a terminal it prints at full width (cli.display)
        if not self.quiet:
            _print_tables(out, self.subcommand, report, columns or [])
            for it in items:
                if it["metrics"].get("reason"):
                    out.print(f"[yellow]note:[/] {it['name']}: {it['metrics']['reason']}")
            if checks:
                _print_checks(out, checks)
            for pr in self.problems:
                out.print(f"[yellow]warning:[/] baseline not comparable: {pr} (--allow-different-inputs)")
        if differ:  # said even with --quiet: it qualifies the result
            out.print(f"[yellow]note:[/] {escape(versions_note(differ))}")
        if errors:
            out.print(f"[bold red]{len(errors)} input(s) failed:[/]")
            for e in errors:
                out.print(f"  [red]{e['path']}[/]: {e['error']}")
        if self.json_out is not None:
            if str(self.json_out) == "-":
                import json

                sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
                sys.stdout.flush()
            else:
                write_json_atomic(self.json_out, report)
                if not self.quiet:
                    out.print(f"[green]wrote[/] {self.json_out}")
        key = headline or next(iter(metrics))
        value = report["metrics"][key]["value"]
        if counted is None:
            counted = sum(_finite(it["metrics"].get(key)) for it in items)
        total = len(items) + len(errors)
        summary = (f"vmt eval {self.subcommand}: {key}={_fmt(value)} ({counted} of {total} "
                   f"{noun if total == 1 else noun + 's'} {scored_as}")
        summary += f", {len(errors)} failed)" if errors else ")"
        if errors and not self.skip_bad:
            out.print(f"[bold red]result: ERROR[/] {summary}; pass --skip-bad to accept failed inputs")
            raise typer.Exit(3)
        regressed = [c for c in checks if c.regressed]
        if regressed:
            out.print(f"[bold red]result: REGRESSION[/] {summary}: "
                      + ", ".join(f"{c.name} ({c.reason})" for c in regressed))
            raise typer.Exit(1)
        if self.baseline is None:
            out.print(f"[yellow]result: no baseline[/] {summary}; nothing gated (give --baseline FILE to compare)")
            return
        compared = [c for c in checks if c.compared]
        skipped = [c.name for c in checks if not c.compared]
        tail = f", {len(skipped)} not compared ({', '.join(skipped)}: no value in the baseline)" if skipped else ""
        tail += f"; baseline made with other {', '.join(differ)}" if differ else ""
        if not compared:
            out.print(f"[yellow]result: nothing compared[/] {summary}: the baseline has no value for "
                      f"{', '.join(skipped)}" + (f"; baseline made with other {', '.join(differ)}" if differ else ""))
            return
        out.print(f"[green]result: pass[/] {summary}, {len(compared)} baseline checks ok{tail}")


def _finite(v: Any) -> bool:
    import math

    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _print_tables(out, subcommand: str, report: dict, item_columns: list[str]) -> None:
    from rich.table import Table

    items = report["items"]
    if len(items) > 1 and item_columns:
        t = Table(title=f"vmt eval {subcommand}: per input", title_justify="left")
        t.add_column("input", no_wrap=True)
        paired = any("reference" in it for it in items)
        if paired:
            t.add_column("reference", no_wrap=True)
        for c in item_columns:
            t.add_column(c, justify="right", no_wrap=True)
        for it in items:
            ref = [Path(it["reference"]).name] if paired else []
            t.add_row(it["name"], *ref, *[_fmt(it["metrics"].get(c)) for c in item_columns])
        out.print(t)
    t = Table(title=f"vmt eval {subcommand}", title_justify="left")
    t.add_column("metric", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("better")
    from vmt.metrics.report import direction_text

    for name, m in report["metrics"].items():
        t.add_row(name, _fmt(m["value"]) + (f" {m['unit']}" if m.get("unit") else ""), direction_text(name))
    out.print(t)


def _print_checks(out, checks) -> None:
    from rich.table import Table

    t = Table(title="baseline comparison", title_justify="left")
    for c in ("metric", "baseline", "current", "tolerance", "status"):
        t.add_column(c, justify="right" if c in ("baseline", "current") else "left", no_wrap=True)
    for c in checks:
        status = (f"[red]REGRESSED[/] {c.reason}" if c.regressed else "[green]ok[/]" if c.compared
                  else f"[yellow]not compared:[/] {c.reason}")
        t.add_row(c.name, _fmt(c.baseline), _fmt(c.current), c.tolerance, status)
    out.print(t)


def _videos(specs: list[str]) -> list[Path]:
    return [q for spec in specs for q in expand_inputs(spec)]


# ---------------------------------------------------------------- fvd / fid

@app.command("fvd", no_args_is_help=True, help=_para("""Frechet Video Distance between two sets of videos.

I3D features (StyleGAN-V protocol: the first 16 frames of each video, short side resized to 224 and
centre-cropped, values in [-1, 1]) from the TorchScript detector i3d_torchscript.pt given with --i3d (or found
in $VMT_DETECTORS or ~/.cache/vmt/detectors). Needs at least 2 clips per set; papers use 2048.

[bold]Example[/]  vmt eval fvd real/ gen/ --i3d i3d_torchscript.pt --json fvd.json
"""))
def fvd(
    ctx: typer.Context,
    real: Annotated[str, typer.Argument(help="Real videos: file, folder or glob.", show_default=False)],
    gen: Annotated[str, typer.Argument(help="Generated videos: file, folder or glob.", show_default=False)],
    i3d: Annotated[Path | None, typer.Option("--i3d", help="I3D TorchScript file (i3d_torchscript.pt).")] = None,
    num_frames: Annotated[int, typer.Option("--num-frames", help="Frames per clip.")] = 16,
    size: Annotated[int, typer.Option("--size", help="Clip side in pixels.")] = 224,
    clips: Annotated[str, typer.Option("--clips", help="first: one clip per video (protocol); all: every "
                                       "non-overlapping clip.")] = "first",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Clips per detector call.")] = 8,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, FVD_SPEC, locals(), lambda p: _distribution("fvd", p))


FVD_SPEC = eval_spec("fvd", num_frames=AT_LEAST_1, size=Range(8), batch_size=AT_LEAST_1)


@app.command("fid", no_args_is_help=True, help=_para("""Per-frame FID (and IS of the generated frames) between two
sets of videos.

Inception features (inception-2015-12-05.pt of the StyleGAN2-ADA FID code, 2048-d pool features; frames
resized to 299) from the TorchScript file given with --inception.

[bold]Example[/]  vmt eval fid real/ gen/ --inception inception-2015-12-05.pt --stride 4 --is
"""))
def fid(
    ctx: typer.Context,
    real: Annotated[str, typer.Argument(help="Real videos: file, folder or glob.", show_default=False)],
    gen: Annotated[str, typer.Argument(help="Generated videos: file, folder or glob.", show_default=False)],
    inception: Annotated[Path | None, typer.Option("--inception", help="Inception TorchScript file.")] = None,
    stride: Annotated[int, typer.Option("--stride", help="Use every N-th frame.")] = 1,
    max_frames: MaxFramesOpt = None,
    inception_score: Annotated[bool, typer.Option("--is/--no-is", help="Also the Inception Score of the "
                                                  "generated frames.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Frames per detector call.")] = 32,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, FID_SPEC, locals(), lambda p: _distribution("fid", p))


FID_SPEC = eval_spec("fid", stride=AT_LEAST_1, max_frames=AT_LEAST_1, batch_size=AT_LEAST_1)


def _distribution(kind: str, p: dict) -> None:
    import numpy as np

    from vmt.errors import VmtUsageError
    from vmt.metrics import detectors as D
    from vmt.metrics.frechet import frechet_distance_features
    from vmt.runtime import resolve_device

    if kind == "fvd" and p["clips"] not in ("first", "all"):
        raise VmtUsageError(f"--clips must be 'first' or 'all', got {p['clips']!r}")
    real, gen = expand_inputs(p["real"]), expand_inputs(p["gen"])
    run = EvalRun(kind, p, {"real": real, "gen": gen}, skip_bad=p["skip_bad"])
    dev = str(resolve_device(p["device"]))
    det = D.load_detector(D.I3D if kind == "fvd" else D.INCEPTION, p.get("i3d") or p.get("inception"), dev)
    gen_only, feats, probs = set(gen) - set(real), {}, []

    def features(path: Path) -> dict:
        feats[path] = D.video_features(
            path, det, kind, num_frames=p.get("num_frames", 16), size=p.get("size", 224), clips=p.get("clips", "first"),
            stride=p.get("stride", 1), max_frames=p.get("max_frames"), batch_size=p["batch_size"],
            probabilities=probs if kind == "fid" and p["inception_score"] and path in gen_only else None)
        return {"samples": len(feats[path])}

    unit = "clips" if kind == "fvd" else "frames"
    items, errors = [], []
    for name, paths in (("real", real), ("gen", gen)):
        it, err = run.score(paths, features, f"{kind} {name}")
        items += [dict(i, set=name) for i in it]
        errors += err
    sets = {n: np.concatenate([feats[Path(i["path"])] for i in items if i["set"] == n]) for n in ("real", "gen")}
    for name, f in sets.items():
        if len(f) < 2:
            raise VmtUsageError(f"{kind.upper()} needs at least 2 {unit} per set; the {name} set gave {len(f)}")
    metrics = {kind: frechet_distance_features(sets["real"], sets["gen"]), f"n_real_{unit}": len(sets["real"]),
               f"n_gen_{unit}": len(sets["gen"])}
    if kind == "fid" and p["inception_score"]:
        if not probs:
            raise VmtUsageError("--is scores the generated frames; give GEN videos that are not also in REAL")
        metrics["is"] = D.inception_score(np.concatenate(probs))[0]
    run.params["detector"] = str(det.path)
    run.finish(metrics, items, errors, noun="video", counted=len(items))


# ---------------------------------------------------------------- motion

@app.command("motion", no_args_is_help=True, help=_para("""Motion fidelity of generated videos against a reference,
and a global direction check.

Weight-free: a grid of first-frame points tracked with pyramidal Lucas-Kanade (forward-backward checked);
tracks that move (RMS step >= --min-motion frame diagonals a frame) are compared by the cosine of their
displacement sequences; reference and generated tracks are matched one to one (weighted by how much each
moves), unmatched tracks count 0. 1: the same motion (a video against itself: exactly 1); ~0: unrelated
motion (real unrelated clips: median 0.03, 95th percentile below 0.65, see benchmarks/metrics.py); < 0:
opposite motion. `best_match` is the published form (each generated track's best reference match), which
rates unrelated motion well above 0. The direction check compares per-frame global shifts from phase
correlation and flags reversed motion. A static reference has no score (the reason is reported).

GEN may be several videos: each is compared with REF; if REF is a folder too, videos are paired by file name.
Any other pairing: --batch FILE, JSON Lines with {"reference": ..., "video": ...} a line (relative paths from
the file's folder), or the manifest.jsonl of `vmt transfer --batch` (each job's output against its own
reference; a job that is not done counts as a failed input). Generated videos are resized to the reference size.

[bold]Examples[/]  vmt eval motion ref.mp4 out.mp4
           vmt eval motion refs/ outs/ --json motion.json --baseline last.json -t motion_fidelity=0.02
           vmt eval motion --batch transfers/manifest.jsonl --json motion.json
"""))
def motion(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="Reference video(s): file, folder or glob.", metavar="REF",
                                              show_default=False)] = None,
    gen: Annotated[str | None, typer.Argument(help="Generated video(s): file, folder or glob.", metavar="GEN",
                                              show_default=False)] = None,
    batch: Annotated[Path | None, typer.Option("--batch", help="Pairs to score instead of REF GEN: a .jsonl of "
                                               '{"reference", "video"} lines, or a transfer batch\'s '
                                               "manifest.jsonl.", show_default=False)] = None,
    grid: Annotated[int, typer.Option("--grid", help="Tracked points along the longer side.")] = 40,
    fb_threshold: Annotated[float, typer.Option("--fb-threshold", help="Forward-backward error (pixels) "
                                                "that drops a track.")] = 1.0,
    min_motion: Annotated[float, typer.Option("--min-motion", help="RMS step (frame diagonals per frame) below "
                                              "which a track is static and left out.")] = 1e-3,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, MOTION_SPEC, locals(), _motion)


MOTION_SPEC = eval_spec("motion", grid=Range(2), max_frames=Range(2), fb_threshold=POSITIVE, min_motion=NON_NEGATIVE)


def _motion(p: dict) -> None:
    from vmt.metrics import motion as M

    pairs, not_done = _motion_pairs(p)
    # With --batch the references are listed pair by pair, so the report's digests pin the pairing too.
    refs = [r for r, _ in pairs] if p["batch"] is not None else list(dict.fromkeys(r for r, _ in pairs))
    gens = [g for _, g in pairs]
    run = EvalRun("motion", p, {"ref": refs, "gen": gens}, skip_bad=p["skip_bad"], listed_in=p["batch"])
    items, errors = run.score(pairs, lambda rg: M.score_pair(
        *rg, grid=p["grid"], fb_threshold=p["fb_threshold"], min_motion=p["min_motion"],
        max_frames=p["max_frames"]), "motion")
    errors = not_done + errors
    for it in items:
        if it["metrics"]["direction"] == "reversed" and not p["quiet"]:
            console.print(f"[yellow]warning:[/] {it['name']}: global motion is reversed relative to "
                          f"{Path(it['reference']).name} (cosine {it['metrics']['direction_cosine']:.2f})")
    run.finish(M.summarize(items), items, errors, headline="motion_fidelity", noun="pair",
               columns=["motion_fidelity", "best_match", "direction_cosine", "direction", "tracks_ref", "tracks_gen"])


def _motion_pairs(p: dict) -> tuple[list[tuple[Path, Path]], list[dict]]:
    """(reference, generated) pairs from REF GEN or from --batch, and an error row for each batch job that
    is not done (it has no video to score)."""
    from vmt.metrics.pairs import read_pairs
    from vmt.errors import VmtUsageError
    from vmt.metrics.motion import pair_videos

    if p["batch"] is None:
        if p["ref"] is None or p["gen"] is None:
            raise VmtUsageError("give REF and GEN (videos, folders or globs), or --batch FILE of pairs")
        return pair_videos(expand_inputs(p["ref"]), expand_inputs(p["gen"])), []
    if p["ref"] is not None or p["gen"] is not None:
        raise VmtUsageError("--batch FILE lists the pairs; give it without REF and GEN")
    listed = read_pairs(p["batch"])
    pairs = [(x.reference, x.video) for x in listed if x.done]
    not_done = [{"path": str(x.video), "error": f"{p['batch']} line {x.line}: the job's status is {x.status}, "
                 "so there is no video to score"} for x in listed if not x.done]
    if not pairs:
        raise EvalRuntimeError(f"no job in {p['batch']} is done; nothing to score")
    return pairs, not_done


# ---------------------------------------------------------------- temporal

@app.command("temporal", no_args_is_help=True, help=_para("""Temporal consistency of videos: flow-warping error with
an occlusion mask (DIS optical flow, forward-backward consistency), consecutive-frame SSIM and PSNR, VBench's
temporal flickering and dynamic degree (weight-free).

Warping error: mean over frame pairs of the squared RGB error ([0,1] scale) between frame t and frame t+1
warped back by the flow, over non-occluded pixels (lower is steadier). PSNR of identical frames is capped at
100 dB. flicker: VBench's (255 - mean |frame t+1 - frame t|) / 255 (1: no change). dynamic_degree: the
fraction of videos VBench calls dynamic (enough frame pairs whose top-5% flow exceeds 6 px at a 256-pixel short
side); VBench uses RAFT flow, vmt uses DIS, which underestimates very large or textureless motion.

[bold]Examples[/]  vmt eval temporal out.mp4
           vmt eval temporal outputs/ --json temporal.json
"""))
def temporal(
    ctx: typer.Context,
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    flow_preset: Annotated[str, typer.Option("--flow-preset", help="DIS flow preset: ultrafast | fast | "
                                             "medium.")] = "medium",
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, TEMPORAL_SPEC, locals(), _temporal)


TEMPORAL_SPEC = eval_spec("temporal", max_frames=Range(2))


def _temporal(p: dict) -> None:
    from vmt.errors import VmtUsageError
    from vmt.metrics import temporal as T

    if p["flow_preset"] not in ("ultrafast", "fast", "medium"):
        raise VmtUsageError(f"--flow-preset must be ultrafast, fast or medium, got {p['flow_preset']!r}")
    paths = _videos(p["videos"])
    run = EvalRun("temporal", p, {"videos": paths}, skip_bad=p["skip_bad"])
    items, errors = run.score(paths, lambda x: T.score_video(x, flow_preset=p["flow_preset"],
                                                            max_frames=p["max_frames"]), "temporal")
    run.finish(T.summarize(items), items, errors, units={"psnr": "dB"}, headline="warp_error", noun="video",
               columns=["warp_error", "ssim", "psnr", "flicker", "dynamic"])


# ---------------------------------------------------------------- physics

@app.command("physics", no_args_is_help=True, help=_para("""Physics residual: how far a moving object's tracked
trajectory is from a constant-acceleration law (free fall, projectile), in frame diagonals (physics_rms) and
pixels.

The object is the largest connected part of each frame that differs from the static background (per-pixel
temporal median) by more than --threshold levels, counted only when it is one compact object; its position is
the difference-weighted centroid. A video where no such object is found in most frames (noise, a moving
camera, nothing moving) has no trajectory: it is reported as such (no_trajectory), never as a small residual.
Use --start/--end to score a segment between bounces.

[bold]Example[/]  vmt eval physics falling_ball.mp4 --json physics.json
"""))
def physics(
    ctx: typer.Context,
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    threshold: Annotated[float, typer.Option("--threshold", help="Difference from the background (0-255) "
                                             "that marks the object.")] = 25.0,
    start: Annotated[int, typer.Option("--start", help="First frame of the segment.")] = 0,
    end: Annotated[int | None, typer.Option("--end", help="End frame (exclusive) of the segment.")] = None,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, PHYSICS_SPEC, locals(), _physics)


PHYSICS_SPEC = eval_spec("physics", threshold=Range(0, 255), start=NON_NEGATIVE, end=AT_LEAST_1, max_frames=AT_LEAST_1)


def _physics(p: dict) -> None:
    from vmt.metrics import physics as P

    paths = _videos(p["videos"])
    run = EvalRun("physics", p, {"videos": paths}, skip_bad=p["skip_bad"])
    items, errors = run.score(paths, lambda x: P.score_video(x, threshold=p["threshold"], start=p["start"],
                                                            end=p["end"], max_frames=p["max_frames"]), "physics")
    run.finish(P.summarize(items), items, errors, units={"physics_rms_px": "px"}, headline="physics_rms",
               noun="video", scored_as="had a trajectory",
               columns=["trajectory", "physics_rms", "physics_rms_px", "accel_x", "accel_y", "frames_found"])


# ---------------------------------------------------------------- keypoints

@app.command("keypoints", no_args_is_help=True, help=_para("""Score keypoint forecasts of `vmt predict-keypoints
run --backtest` against the keypoint file they forecast.

TRUTH: the keypoint .npz vmt reads (names, lengths, value (frames, K, 2) [, jacobian]). PRED: what `run`
writes (names, value (S, N, H, K, 2), start (S,): each sequence's first forecast frame). Positions only, in
the files' coordinates. Metrics (means over windows): ADE/FDE as the mean over the N samples and the best of
N, MAE of the best K samples, APD of those K, APD/MAE, the energy distance (V-statistic) between the true
futures and all samples; and the same errors for zero-velocity, constant-velocity and damped-velocity forecasts
of the same windows, the trivial answers to beat (the damping is chosen on the frames before the forecast
windows, which a forecaster has seen too; reported as damped_velocity_damping).

[bold]Example[/]  vmt predict-keypoints run kp.npz -o pred.npz --backtest
           vmt eval keypoints kp.npz pred.npz --k 5 --json kp.json
"""))
def keypoints(
    ctx: typer.Context,
    truth: Annotated[Path, typer.Argument(help="Keypoint file (names, lengths, value).", show_default=False)],
    pred: Annotated[Path, typer.Argument(help="`predict-keypoints run` output.", show_default=False)],
    k: Annotated[int, typer.Option("--k", help="Best K of the N samples for MAE and APD.")] = 5,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    run_eval(ctx, KEYPOINTS_SPEC, locals(), _keypoints)


KEYPOINTS_SPEC = eval_spec("keypoints", {"truth": "file", "pred": "file"}, k=AT_LEAST_1)


def _keypoints(p: dict) -> None:
    from vmt.metrics.forecast import evaluate_forecasts

    run = EvalRun("keypoints", p, {"truth": [p["truth"]], "pred": [p["pred"]]})
    metrics, items = evaluate_forecasts(p["truth"], p["pred"], p["k"])
    run.finish(metrics, items, [], headline="ade_best", noun="window",
               columns=["ade_best", "fde_best", "mae_best_k", "apd", "zero_velocity_ade", "constant_velocity_ade",
                        "damped_velocity_ade"])


# ---------------------------------------------------------------- seams

@app.command("seams", no_args_is_help=True, help=_para("""Seam score of long videos made of clips: the mean
frame change at clip boundaries divided by the mean change inside clips (1: seamless; above 1 the boundaries
jump, below 1 they stall). The gate judges it by its distance to 1: 0.5 is as much a seam as 2.

[bold]Example[/]  vmt eval seams long.mp4 --clip-length 16 --json seams.json
"""))
def seams(
    ctx: typer.Context,
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    clip_length: Annotated[int, typer.Option("--clip-length", help="Frames per generated clip (boundaries "
                                             "every N frames).", show_default=False)] = 0,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    allow_different_inputs: AllowDiffOpt = False, skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    run_eval(ctx, SEAMS_SPEC, locals(), _seams)


SEAMS_SPEC = eval_spec("seams", max_frames=AT_LEAST_1)


def _seams(p: dict) -> None:
    from vmt.errors import VmtUsageError
    from vmt.metrics import seams as S

    if p["clip_length"] < 2:
        raise VmtUsageError("--clip-length N is required (frames per clip, >= 2)")
    paths = _videos(p["videos"])
    run = EvalRun("seams", p, {"videos": paths}, skip_bad=p["skip_bad"])
    items, errors = run.score(paths, lambda x: S.score_video(x, clip_length=p["clip_length"],
                                                            max_frames=p["max_frames"]), "seams")
    run.finish(S.summarize(items), items, errors, headline="seam_score", noun="video",
               columns=["seam_score", "boundary_change", "inside_change", "boundaries"])
