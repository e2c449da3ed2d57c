"""`vmt eval`: the papers' metrics as one command, with JSON reports and a baseline regression gate."""

from __future__ import annotations

import glob
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    DebugOpt,
    DeviceOpt,
    OverwriteOpt,
    QuietOpt,
    command_line,
    console,
    run_guarded,
    step_progress,
)

HELP = """Score videos with the metrics of the papers vmt implements; print a table, write JSON, gate CI.

[bold]Examples[/]

  vmt eval motion ref.mp4 out.mp4

  vmt eval temporal outputs/ --json temporal.json

  vmt eval fvd real/ 'gen/*.mp4' --i3d ~/detectors/i3d_torchscript.pt --json fvd.json

  vmt eval fvd real/ gen/ --i3d i3d.pt --baseline fvd.json --tolerance fvd=5%   # exit 1 on regression

Inputs (REAL, GEN, VIDEO...) are a video file, a folder of videos, or a quoted glob. Unreadable videos are
listed with their error and the run exits 1 unless [bold]--skip-bad[/] is given. Reports follow the
versioned schema vmt.eval/1; a report is a valid [bold]--baseline[/] for a later run.
"""

def _para(text: str) -> str:
    """Join wrapped lines of each paragraph (rich keeps single newlines); lines that start with two spaces
    (examples) stay as they are."""
    out = []
    for block in text.strip("\n").split("\n\n"):
        lines = block.split("\n")
        if any(ln.startswith("  ") for ln in lines):
            out.append("\n\n".join(ln for ln in lines))
        else:
            out.append(" ".join(ln.strip() for ln in lines))
    return "\n\n".join(out)


app = typer.Typer(name="eval", help=_para(HELP), no_args_is_help=True, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]})

VIDEO_EXTS = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif", ".m4v", ".mpg", ".mpeg"}

JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the report (schema vmt.eval/1) to this "
                                              "file.", rich_help_panel="Report")]
BaselineOpt = Annotated[Path | None, typer.Option("--baseline", help="A previous --json report: exit 1 when a "
                                                  "metric is worse than there by more than its tolerance.",
                                                  rich_help_panel="Report")]
ToleranceOpt = Annotated[list[str] | None, typer.Option("--tolerance", "-t", help="NAME=VALUE (absolute) or "
                                                        "NAME=VALUE% (of the baseline); repeatable; '*=2%' sets "
                                                        "the default (0: any worsening fails).",
                                                        rich_help_panel="Report")]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Exit 0 even if some inputs were unreadable "
                                          "(they are still listed and reported).", rich_help_panel="Report")]
MaxFramesOpt = Annotated[int | None, typer.Option("--max-frames", help="Use at most this many frames of each "
                                                  "video.")]


# ---------------------------------------------------------------- shared plumbing

def expand_inputs(spec: str) -> list[Path]:
    """A file, a folder (its video files, sorted) or a glob -> paths. No match is a usage error."""
    from vmt.errors import VmtUsageError

    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_EXTS)
        if not files:
            raise VmtUsageError(f"folder {p} has no video files ({', '.join(sorted(VIDEO_EXTS))})")
        return files
    if any(c in spec for c in "*?["):
        files = sorted(Path(q) for q in glob.glob(str(p), recursive=True) if Path(q).is_file())
        if not files:
            raise VmtUsageError(f"no files match {spec!r}")
        return files
    if not p.exists():
        raise VmtUsageError(f"{p} not found; give a video, a folder of videos, or a quoted glob")
    return [p]


class Gate:
    """Report options of a subcommand: validated before any work, applied at the end."""

    def __init__(self, json_out: Path | None, baseline: Path | None, tolerance: list[str] | None,
                 skip_bad: bool, overwrite: bool, quiet: bool):
        from vmt.io.atomic import check_output_path
        from vmt.metrics.report import load_report, parse_tolerances

        self.json_out = check_output_path(json_out, overwrite, sidecar=False) if json_out else None
        self.baseline_path = baseline
        self.baseline = load_report(baseline) if baseline else None
        self.tolerances = parse_tolerances(tolerance or [])
        if self.tolerances and self.baseline is None:
            from vmt.errors import VmtUsageError

            raise VmtUsageError("--tolerance needs --baseline FILE (a previous --json report) to compare with")
        self.skip_bad = skip_bad
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def finish(self, subcommand: str, metrics: dict[str, float], *, params: dict, inputs: dict,
               items: list[dict], errors: list[dict], units: dict[str, str] | None = None,
               item_columns: list[str] | None = None) -> None:
        from vmt.io.atomic import write_json_atomic
        from vmt.metrics.report import attach_baseline, build_report, compare

        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}
        report = build_report(subcommand, metrics, command=command_line(), params=params, inputs=inputs,
                              items=items, errors=errors, units=units,
                              timings={"total": round(time.perf_counter() - self.t0, 3)})
        checks = compare(report, self.baseline, self.tolerances) if self.baseline is not None else []
        if self.baseline is not None:
            attach_baseline(report, self.baseline_path, checks)
        if not self.quiet:
            _print_tables(subcommand, report, item_columns or [])
        if errors:
            console.print(f"[bold red]{len(errors)} unreadable input(s):[/]")
            for e in errors:
                console.print(f"  [red]{e['path']}[/]: {e['error']}")
        if self.json_out is not None:
            write_json_atomic(self.json_out, report)
            if not self.quiet:
                console.print(f"[green]wrote[/] {self.json_out}")
        regressed = [c for c in checks if c.regressed]
        if checks and not self.quiet:
            _print_checks(checks)
        if regressed:
            console.print("[bold red]regression:[/] " + ", ".join(f"{c.name} ({c.reason})" for c in regressed))
            raise typer.Exit(1)
        if errors and not self.skip_bad:
            console.print("[bold red]error:[/] some inputs could not be read (pass --skip-bad to accept that)")
            raise typer.Exit(1)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _print_tables(subcommand: str, report: dict, item_columns: list[str]) -> None:
    from rich.table import Table

    items = report["items"]
    if len(items) > 1 and item_columns:
        t = Table(title=f"vmt eval {subcommand}: per input", title_justify="left")
        t.add_column("input")
        for c in item_columns:
            t.add_column(c, justify="right")
        for it in items:
            t.add_row(it["name"], *[_fmt(it["metrics"].get(c)) for c in item_columns])
        console.print(t)
    t = Table(title=f"vmt eval {subcommand}", title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("better")
    for name, m in report["metrics"].items():
        t.add_row(name, _fmt(m["value"]) + (f" {m['unit']}" if m.get("unit") else ""), m["better"] or "")
    console.print(t)


def _print_checks(checks) -> None:
    from rich.table import Table

    t = Table(title="baseline comparison", title_justify="left")
    for c in ("metric", "baseline", "current", "tolerance", "status"):
        t.add_column(c, justify="right" if c in ("baseline", "current") else "left")
    for c in checks:
        status = f"[red]REGRESSED[/] {c.reason}" if c.regressed else "[green]ok[/]"
        t.add_row(c.name, _fmt(c.baseline), _fmt(c.current), c.tolerance, status)
    console.print(t)


def for_each(paths: list[Path], fn: Callable[[Path], Any], description: str, quiet: bool):
    """Run fn on every path with a progress bar; per-file errors (VmtError) are collected, not raised."""
    from vmt.errors import VmtError

    results, errors = [], []
    with step_progress(len(paths), description, quiet or len(paths) < 2) as advance:
        for p in paths:
            try:
                results.append((p, fn(p)))
            except VmtError as e:
                errors.append({"path": str(p), "error": str(e)})
            advance(file=p.name)
    return results, errors


def _no_results(what: str, errors: list[dict]):
    from vmt.errors import VmtError

    first = f": {errors[0]['path']}: {errors[0]['error']}" if errors else ""
    return VmtError(f"no readable {what}{first}")


def _mean(values) -> float:
    import numpy as np

    v = [x for x in values if x is not None]
    return float(np.nanmean(v)) if v else float("nan")


# ---------------------------------------------------------------- fvd / fid

@app.command("fvd", no_args_is_help=True, help=_para("""Frechet Video Distance between two sets of videos.

I3D features (StyleGAN-V protocol: the first 16 frames of each video, short side resized to 224 and
centre-cropped, values in [-1, 1]) from the TorchScript detector i3d_torchscript.pt given with --i3d (or found
in $VMT_DETECTORS or ~/.cache/vmt/detectors). Needs at least 2 clips per set; papers use 2048.

[bold]Example[/]  vmt eval fvd real/ gen/ --i3d i3d_torchscript.pt --json fvd.json
"""))
def fvd(
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
    skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    run_guarded(lambda: _distribution("fvd", params), debug)


@app.command("fid", no_args_is_help=True, help=_para("""Per-frame FID (and IS of the generated frames) between two
sets of videos.

Inception features (inception-2015-12-05.pt of the StyleGAN2-ADA FID code, 2048-d pool features; frames
resized to 299) from the TorchScript file given with --inception.

[bold]Example[/]  vmt eval fid real/ gen/ --inception inception-2015-12-05.pt --stride 4 --is
"""))
def fid(
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
    skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    run_guarded(lambda: _distribution("fid", params), debug)


def _distribution(kind: str, p: dict) -> None:
    from vmt.errors import VmtUsageError

    gate = Gate(p["json_out"], p["baseline"], p["tolerance"], p["skip_bad"], p["overwrite"], p["quiet"])
    if p["batch_size"] < 1:
        raise VmtUsageError(f"--batch-size must be >= 1, got {p['batch_size']}")
    real, gen = expand_inputs(p["real"]), expand_inputs(p["gen"])
    import numpy as np

    from vmt.io.video import read_video
    from vmt.metrics import detectors as D
    from vmt.metrics.frechet import frechet_distance_features
    from vmt.runtime import resolve_device

    dev = str(resolve_device(p["device"]))
    if kind == "fvd":
        if p["num_frames"] < 1 or p["size"] < 8:
            raise VmtUsageError("--num-frames must be >= 1 and --size >= 8")
        if p["clips"] not in ("first", "all"):
            raise VmtUsageError(f"--clips must be 'first' or 'all', got {p['clips']!r}")
        det = D.load_detector(D.I3D, p["i3d"], dev)
        max_frames = p["num_frames"] if p["clips"] == "first" else None

        def feats(path: Path) -> np.ndarray:
            frames, _ = read_video(path, max_frames=max_frames)
            return D.batched_features(det, [D.i3d_clips(frames, num_frames=p["num_frames"], size=p["size"],
                                                        clips=p["clips"])], p["batch_size"])
    else:
        if p["stride"] < 1:
            raise VmtUsageError(f"--stride must be >= 1, got {p['stride']}")
        det = D.load_detector(D.INCEPTION, p["inception"], dev)
        probs: list[np.ndarray] = []

        def feats(path: Path) -> np.ndarray:
            frames, _ = read_video(path, max_frames=p["max_frames"])
            x = D.inception_frames(frames, stride=p["stride"])
            if p["inception_score"] and path in gen_set:
                probs.extend(det.probabilities(c) for c in x.split(p["batch_size"]))
            return D.batched_features(det, [x], p["batch_size"])

    gen_set = set(gen) - set(real)
    sets, errors = {}, []
    for name, paths in (("real", real), ("gen", gen)):
        res, err = for_each(paths, feats, f"{kind} {name}", p["quiet"])
        errors += err
        if not res:
            raise _no_results(f"{name} videos", err)
        sets[name] = np.concatenate([f for _, f in res])
    for name, f in sets.items():
        if len(f) < 2:
            raise VmtUsageError(f"{kind.upper()} needs at least 2 {'clips' if kind == 'fvd' else 'frames'} per "
                                f"set; the {name} set gave {len(f)}")
    value = frechet_distance_features(sets["real"], sets["gen"])
    metrics = {kind: value, f"n_real_{'clips' if kind == 'fvd' else 'frames'}": len(sets["real"]),
               f"n_gen_{'clips' if kind == 'fvd' else 'frames'}": len(sets["gen"])}
    if kind == "fid" and p["inception_score"]:
        if not probs:
            raise VmtUsageError("--is scores the generated frames; give GEN videos that are not also in REAL")
        metrics["is"] = D.inception_score(np.concatenate(probs))[0]
    det_path = str(det.path)
    gate.finish(kind, metrics, params=p | {"detector": det_path},
                inputs={"real": [str(x) for x in real], "gen": [str(x) for x in gen]}, items=[], errors=errors)


# ---------------------------------------------------------------- motion

@app.command("motion", no_args_is_help=True, help=_para("""Motion fidelity of generated videos against a reference,
and a global direction check.

Weight-free: a grid of first-frame points tracked with pyramidal Lucas-Kanade (forward-backward checked);
per-step unit displacements; per track pair the mean cosine; score = symmetric Chamfer mean of best matches
(1 same motion, -1 reversed, ~0 unrelated). The direction check compares per-frame global shifts from
phase correlation and flags reversed motion.

GEN may be several videos: each is compared with REF; if REF is a folder too, videos are paired by file name.
Generated videos are resized to the reference size.

[bold]Examples[/]  vmt eval motion ref.mp4 out.mp4
           vmt eval motion refs/ outs/ --json motion.json --baseline last.json -t motion_fidelity=0.02
"""))
def motion(
    ref: Annotated[str, typer.Argument(help="Reference video(s): file, folder or glob.", show_default=False)],
    gen: Annotated[str, typer.Argument(help="Generated video(s): file, folder or glob.", show_default=False)],
    grid: Annotated[int, typer.Option("--grid", help="Tracked points along the longer side.")] = 40,
    fb_threshold: Annotated[float, typer.Option("--fb-threshold", help="Forward-backward error (pixels) "
                                                "that drops a track.")] = 1.0,
    min_displacement: Annotated[float, typer.Option("--min-displacement", help="Steps shorter than this "
                                                    "(pixels) count as no motion.")] = 0.1,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    run_guarded(lambda: _motion(params), debug)


def _motion(p: dict) -> None:
    from vmt.errors import VmtUsageError

    gate = Gate(p["json_out"], p["baseline"], p["tolerance"], p["skip_bad"], p["overwrite"], p["quiet"])
    if p["grid"] < 2:
        raise VmtUsageError(f"--grid must be >= 2, got {p['grid']}")
    refs, gens = expand_inputs(p["ref"]), expand_inputs(p["gen"])
    if len(refs) == 1:
        pairs = [(refs[0], g) for g in gens]
    else:
        by_stem = {r.stem: r for r in refs}
        missing = [g.name for g in gens if g.stem not in by_stem]
        if missing:
            raise VmtUsageError(f"no reference with the same name for {', '.join(missing[:5])}; with a folder of "
                                "references, generated videos are paired by file name")
        pairs = [(by_stem[g.stem], g) for g in gens]
    from vmt.io.video import read_video
    from vmt.metrics.motion import direction_check, motion_fidelity

    cache: dict[Path, Any] = {}

    def score(pair_gen: Path):
        r = pair_of[pair_gen]
        if r not in cache:
            cache[r] = read_video(r, max_frames=p["max_frames"])[0]
        rf = cache[r]
        gf, _ = read_video(pair_gen, max_frames=p["max_frames"], size=rf.shape[1:3])
        mf = motion_fidelity(rf, gf, grid=p["grid"], fb_threshold=p["fb_threshold"],
                             min_displacement=p["min_displacement"])
        dc = direction_check(rf, gf)
        return r, mf, dc

    pair_of = {g: r for r, g in pairs}
    res, errors = for_each([g for _, g in pairs], score, "motion", p["quiet"])
    if not res:
        raise _no_results("video pairs", errors)
    items = []
    for g, (r, mf, dc) in res:
        items.append({"name": g.name, "reference": str(r), "metrics": {
            "motion_fidelity": mf.score, "direction_cosine": dc.cosine, "direction": dc.verdict,
            "tracks_ref": mf.tracks_ref, "tracks_gen": mf.tracks_gen, "steps": mf.steps,
            "ref_speed_px": dc.ref_speed_px, "gen_speed_px": dc.gen_speed_px}})
    metrics = {
        "motion_fidelity": _mean(i["metrics"]["motion_fidelity"] for i in items),
        "direction_cosine": _mean(i["metrics"]["direction_cosine"] for i in items),
        "reversed_pairs": sum(i["metrics"]["direction"] == "reversed" for i in items),
        "pairs": len(items),
    }
    for it in items:
        if it["metrics"]["direction"] == "reversed" and not p["quiet"]:
            console.print(f"[yellow]warning:[/] {it['name']}: global motion is reversed relative to "
                          f"{Path(it['reference']).name} (cosine {it['metrics']['direction_cosine']:.2f})")
    gate.finish("motion", metrics, params=p, inputs={"ref": [str(r) for r in refs], "gen": [str(g) for g in gens]},
                items=items, errors=errors,
                item_columns=["motion_fidelity", "direction_cosine", "direction", "tracks_ref", "tracks_gen"])


# ---------------------------------------------------------------- temporal

@app.command("temporal", no_args_is_help=True, help=_para("""Temporal consistency of videos: flow-warping error with
an occlusion mask (DIS optical flow, forward-backward consistency), consecutive-frame SSIM and PSNR.

Warping error: mean over frame pairs of the squared RGB error ([0,1] scale) between frame t and frame t+1
warped back by the flow, over non-occluded pixels (lower is steadier). PSNR of identical frames is capped at
100 dB.

[bold]Examples[/]  vmt eval temporal out.mp4
           vmt eval temporal outputs/ --json temporal.json
"""))
def temporal(
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    flow_preset: Annotated[str, typer.Option("--flow-preset", help="DIS flow preset: ultrafast | fast | "
                                             "medium.")] = "medium",
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    run_guarded(lambda: _temporal(params), debug)


def _temporal(p: dict) -> None:
    from vmt.errors import VmtUsageError

    gate = Gate(p["json_out"], p["baseline"], p["tolerance"], p["skip_bad"], p["overwrite"], p["quiet"])
    if p["flow_preset"] not in ("ultrafast", "fast", "medium"):
        raise VmtUsageError(f"--flow-preset must be ultrafast, fast or medium, got {p['flow_preset']!r}")
    paths = [q for spec in p["videos"] for q in expand_inputs(spec)]
    from vmt.io.video import read_video
    from vmt.metrics.temporal import temporal_consistency

    def score(path: Path):
        frames, _ = read_video(path, max_frames=p["max_frames"])
        return temporal_consistency(frames, flow_preset=p["flow_preset"])

    res, errors = for_each(paths, score, "temporal", p["quiet"])
    if not res:
        raise _no_results("videos", errors)
    items = [{"name": path.name, "path": str(path), "metrics": {
        "warp_error": tc.warp_error, "ssim": tc.ssim, "psnr": tc.psnr, "valid_fraction": tc.valid_fraction,
        "pairs": tc.pairs}} for path, tc in res]
    metrics = {k: _mean(i["metrics"][k] for i in items) for k in ("warp_error", "ssim", "psnr", "valid_fraction")}
    metrics["videos"] = len(items)
    gate.finish("temporal", metrics, params=p, inputs={"videos": [str(x) for x in paths]}, items=items,
                errors=errors, units={"psnr": "dB"},
                item_columns=["warp_error", "ssim", "psnr", "valid_fraction"])


# ---------------------------------------------------------------- physics

@app.command("physics", no_args_is_help=True, help=_para("""Physics residual: how far a moving object's tracked
trajectory is from a constant-acceleration law (free fall, projectile), in pixels.

The object is the part of each frame that differs from the static background (per-pixel temporal median)
by more than --threshold levels; its position is the difference-weighted centroid. Use --start/--end to
score a segment between bounces.

[bold]Example[/]  vmt eval physics falling_ball.mp4 --json physics.json
"""))
def physics(
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    threshold: Annotated[float, typer.Option("--threshold", help="Difference from the background (0-255) "
                                             "that marks the object.")] = 25.0,
    start: Annotated[int, typer.Option("--start", help="First frame of the segment.")] = 0,
    end: Annotated[int | None, typer.Option("--end", help="End frame (exclusive) of the segment.")] = None,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    run_guarded(lambda: _physics(params), debug)


def _physics(p: dict) -> None:
    gate = Gate(p["json_out"], p["baseline"], p["tolerance"], p["skip_bad"], p["overwrite"], p["quiet"])
    paths = [q for spec in p["videos"] for q in expand_inputs(spec)]
    from vmt.io.video import read_video
    from vmt.metrics.physics import physics_residual

    def score(path: Path):
        frames, _ = read_video(path, max_frames=p["max_frames"])
        return physics_residual(frames, threshold=p["threshold"], start=p["start"], end=p["end"])

    res, errors = for_each(paths, score, "physics", p["quiet"])
    if not res:
        raise _no_results("videos", errors)
    items = [{"name": path.name, "path": str(path), "metrics": {
        "physics_rms_px": r.rms_px, "physics_max_px": r.max_px, "accel_x": r.acceleration[0],
        "accel_y": r.acceleration[1], "frames_used": r.frames_used}} for path, r in res]
    metrics = {k: _mean(i["metrics"][k] for i in items) for k in ("physics_rms_px", "physics_max_px")}
    metrics["videos"] = len(items)
    gate.finish("physics", metrics, params=p, inputs={"videos": [str(x) for x in paths]}, items=items,
                errors=errors, units={"physics_rms_px": "px", "physics_max_px": "px"},
                item_columns=["physics_rms_px", "physics_max_px", "accel_x", "accel_y", "frames_used"])


# ---------------------------------------------------------------- keypoints / seams (modules of other issues)

def _optional(module: str, what: str):
    import importlib

    from vmt.errors import VmtError

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise VmtError(f"`vmt eval {what}` needs {module}, which this vmt installation does not include; "
                           "update vmt") from e
        raise


def _load_array(path: Path, keys: tuple[str, ...], what: str):
    import numpy as np

    from vmt.errors import VmtUsageError

    if not path.is_file():
        raise VmtUsageError(f"{what} file {path} not found")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise VmtUsageError(f"cannot read {what} file {path} as .npy/.npz: {e}") from e
    if isinstance(data, np.ndarray):
        return data.astype(np.float64)
    names = list(data.files)
    for k in keys:
        if k in names:
            return data[k].astype(np.float64)
    if len(names) == 1:
        return data[names[0]].astype(np.float64)
    raise VmtUsageError(f"{what} file {path} has arrays {', '.join(names)}; name one of them {' or '.join(keys)}")


@app.command("keypoints", no_args_is_help=True, help=_para("""Stochastic keypoint forecasts against ground truth:
MAE of the best K of N samples, APD of the kept samples, APD/MAE, ADE/FDE, and the energy distance
(V-statistic) between ground-truth futures and all samples.

GT: .npy/.npz array (S, H, D) (sequences, future steps, values; key 'gt'). PRED: (S, N, H, D) samples
(key 'samples').

[bold]Example[/]  vmt eval keypoints gt.npz pred.npz --k 5 --json kp.json
"""))
def keypoints(
    gt: Annotated[Path, typer.Argument(help="Ground truth (S, H, D) .npy/.npz.", show_default=False)],
    pred: Annotated[Path, typer.Argument(help="Samples (S, N, H, D) .npy/.npz.", show_default=False)],
    k: Annotated[int, typer.Option("--k", help="Best K of the N samples for MAE and APD.")] = 5,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    run_guarded(lambda: _keypoints(params), debug)


def _keypoints(p: dict) -> None:
    import numpy as np

    from vmt.errors import VmtUsageError

    gate = Gate(p["json_out"], p["baseline"], p["tolerance"], False, p["overwrite"], p["quiet"])
    gt = _load_array(p["gt"], ("gt",), "ground-truth")
    samples = _load_array(p["pred"], ("samples", "pred"), "prediction")
    if gt.ndim != 3 or samples.ndim != 4 or samples.shape[0] != gt.shape[0] or samples.shape[2:] != gt.shape[1:]:
        raise VmtUsageError(f"shapes do not fit: ground truth {gt.shape} must be (S, H, D) and samples "
                            f"{samples.shape} (S, N, H, D)")
    if not 1 <= p["k"] <= samples.shape[1]:
        raise VmtUsageError(f"--k must be between 1 and the {samples.shape[1]} samples, got {p['k']}")
    fc = _optional("vmt.metrics.forecast", "keypoints")
    mae, kept = fc.best_of_k_mae(gt, samples, p["k"])
    kept = np.asarray(kept)
    chosen = np.take_along_axis(samples, kept[:, :, None, None], axis=1)
    apd = fc.apd(chosen)
    ade, fde = fc.ade_fde(gt, samples)
    from vmt.metrics.energy import energy_distance

    s, n = samples.shape[:2]
    ed = energy_distance(gt.reshape(s, -1), samples.reshape(s * n, -1), statistic="V")
    metrics = {"mae_best_k": float(mae), "apd": float(apd), "apd_mae": float(apd) / float(mae) if mae else float("nan"),
               "ade": float(ade), "fde": float(fde), "energy_distance": ed, "sequences": s, "samples": n}
    gate.finish("keypoints", metrics, params=p, inputs={"gt": str(p["gt"]), "pred": str(p["pred"])}, items=[],
                errors=[])


@app.command("seams", no_args_is_help=True, help=_para("""Seam score of long videos made of clips: the temporal
metrics at clip boundaries compared with inside clips.

[bold]Example[/]  vmt eval seams long.mp4 --clip-length 16 --json seams.json
"""))
def seams(
    videos: Annotated[list[str], typer.Argument(help="Video(s): files, folders or globs.", show_default=False)],
    clip_length: Annotated[int, typer.Option("--clip-length", help="Frames per generated clip (boundaries "
                                             "every N frames).", show_default=False)] = 0,
    max_frames: MaxFramesOpt = None,
    json_out: JsonOpt = None, baseline: BaselineOpt = None, tolerance: ToleranceOpt = None,
    skip_bad: SkipBadOpt = False, overwrite: OverwriteOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False,
) -> None:
    params = dict(locals())
    run_guarded(lambda: _seams(params), debug)


def _seams(p: dict) -> None:
    from vmt.errors import VmtUsageError

    if p["clip_length"] < 2:
        raise VmtUsageError("--clip-length N is required (frames per clip, >= 2)")
    gate = Gate(p["json_out"], p["baseline"], p["tolerance"], p["skip_bad"], p["overwrite"], p["quiet"])
    paths = [q for spec in p["videos"] for q in expand_inputs(spec)]
    mod = _optional("vmt.metrics.seams", "seams")
    from vmt.io.video import read_video

    def score(path: Path) -> dict:
        frames, _ = read_video(path, max_frames=p["max_frames"])
        return mod.seam_score(frames, p["clip_length"])

    res, errors = for_each(paths, score, "seams", p["quiet"])
    if not res:
        raise _no_results("videos", errors)
    items = [{"name": path.name, "path": str(path), "metrics": d} for path, d in res]
    numeric = [k for k, v in items[0]["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    metrics = {k: _mean(i["metrics"].get(k) for i in items) for k in numeric}
    gate.finish("seams", metrics, params=p, inputs={"videos": [str(x) for x in paths]}, items=items,
                errors=errors, item_columns=numeric[:6])
