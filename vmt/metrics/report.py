"""Evaluation reports: a versioned JSON document, and the comparison with a baseline report that turns
`vmt eval` into a CI regression gate.

Schema `vmt.eval/1.1`:
    {"schema": "vmt.eval/1.1", "created", "command", "subcommand", "params", "inputs",
     "metrics": {name: {"value": float | null, "better": "lower" | "higher" | "closer" | null,
                        ["target": float,]  "unit": str}},   # "closer": better the nearer value is to target
     "items": [{"name", "metrics": {name: value}}],     # per file or per pair
     "errors": [{"path", "error"}],                     # unreadable inputs (listed, never hidden)
     "input_digests": {role: [sha256, ...]},            # input contents: a baseline must match them
     "baseline": {"path", "checked": [...], "regressions": [...], "not_compared": [...],
                  "versions_differ": {package: {"baseline", "current"}}} | null,
     "versions": {package: version},                    # vmt.runtime.versions() + the metric's packages
     "metric_packages": [package, ...],                 # those whose versions decide this subcommand's numbers
     "timings_s"}
Non-finite values are written as null. A reader accepts any `vmt.eval/1.x` (same major version); 1.1 added
"closer"/"target", "metric_packages", the metric packages in "versions" and the baseline's "not_compared" and
"versions_differ".

A baseline is data from outside: `load_report` checks its schema and types, that every metric is a
{"value", "better", "unit"} object with a finite number or null, and `require_gated` that it holds every
metric the subcommand gates; anything else is refused as a usage error naming the file and the metric.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmt.errors import VmtUsageError, param

SCHEMA = "vmt.eval/1.1"
SCHEMA_MAJOR = "vmt.eval/1"

# Which way is better for each metric vmt reports; metrics not listed are informational (never gated).
# "closer": better the nearer the value is to TARGET[name] (the seam score: 1 is seamless, 0.5 and 2 are both
# seams). Unscored counts are gated too: more unscored pairs or videos without a trajectory would otherwise
# let a mean over fewer inputs look better.
BETTER: dict[str, str] = {
    "fvd": "lower", "fid": "lower", "is": "higher",
    "energy_distance": "lower",
    "mae_best_k": "lower", "apd": "higher", "apd_mae": "higher", "ade": "lower", "fde": "lower",
    "motion_fidelity": "higher", "direction_cosine": "higher", "reversed_pairs": "lower", "unscored_pairs": "lower",
    "warp_error": "lower", "ssim": "higher", "psnr": "higher",
    "physics_rms": "lower", "physics_max": "lower", "flicker": "higher", "no_trajectory": "lower",
    "ade_mean": "lower", "fde_mean": "lower", "ade_best": "lower", "fde_best": "lower",
    "seam_score": "closer",
    "final_delta_e": "lower", "max_delta_e": "lower", "final_sharpness": "closer", "mean_seam": "closer",
}
TARGET: dict[str, float] = {"seam_score": 1.0, "final_sharpness": 1.0, "mean_seam": 1.0}
DIRECTIONS = ("lower", "higher", "closer")

# The gated metrics (those BETTER names) each subcommand reports: a baseline of that subcommand must hold every
# one, else it would silently gate fewer. `eval fid --is` adds "is" (see `gated_metrics`).
GATED: dict[str, tuple[str, ...]] = {
    "fvd": ("fvd",),
    "fid": ("fid",),
    "motion": ("motion_fidelity", "direction_cosine", "reversed_pairs", "unscored_pairs"),
    "temporal": ("warp_error", "ssim", "psnr", "flicker"),
    "physics": ("physics_rms", "physics_max", "no_trajectory"),
    "keypoints": ("ade_mean", "ade_best", "fde_mean", "fde_best", "mae_best_k", "apd", "apd_mae", "energy_distance"),
    "seams": ("seam_score",),
    "drift": ("final_delta_e", "max_delta_e", "final_sharpness", "mean_seam"),
}

# The packages whose versions decide each subcommand's numbers ("ffmpeg": the binary that decodes the videos).
# scikit-learn decides no metric (only longgen's digits and mixtures use it), so it is not recorded.
METRIC_PACKAGES: dict[str, tuple[str, ...]] = {
    "fvd": ("ffmpeg", "numpy", "scipy", "torch"),
    "fid": ("ffmpeg", "numpy", "scipy", "torch"),
    "motion": ("ffmpeg", "numpy", "opencv", "scipy"),
    "temporal": ("ffmpeg", "numpy", "opencv"),
    "physics": ("ffmpeg", "numpy", "opencv"),
    "keypoints": ("numpy", "scipy"),
    "seams": ("ffmpeg", "numpy"),
    "drift": ("ffmpeg", "numpy", "opencv"),
}


def direction_text(name: str) -> str:
    """How a metric's direction reads in tables: "lower", "higher", "closer to 1", or "" (informational)."""
    better = BETTER.get(name)
    if better == "closer":
        return f"closer to {TARGET[name]:g}"
    return better or ""


def gated_metrics(subcommand: str, params: dict | None = None) -> tuple[str, ...]:
    """The metrics a run of `subcommand` with these parameters gates."""
    extra = ("is",) if subcommand == "fid" and (params or {}).get("inception_score") else ()
    return GATED.get(subcommand, ()) + extra


def _package_version(name: str) -> str | None:
    import importlib.metadata as md

    if name == "opencv":
        try:
            import cv2
        except ImportError:
            return None
        return str(cv2.__version__)
    if name == "ffmpeg":
        try:
            import imageio_ffmpeg

            return imageio_ffmpeg.get_ffmpeg_version()
        except Exception:  # no binary: decoding fails on its own, with its own message
            return None
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def metric_versions(subcommand: str) -> dict[str, str]:
    """Versions of the packages that decide `subcommand`'s numbers (METRIC_PACKAGES), those installed."""
    out = {}
    for name in METRIC_PACKAGES.get(subcommand, ()):
        v = _package_version(name)
        if v is not None:
            out[name] = v
    return out


def clean(value: Any) -> Any:
    """JSON-safe value: numpy scalars to Python, non-finite floats to None."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def build_report(subcommand: str, metrics: dict[str, float], *, command: list[str] | None = None,
                 params: dict | None = None, inputs: dict | None = None, items: list[dict] | None = None,
                 errors: list[dict] | None = None, units: dict[str, str] | None = None,
                 timings: dict[str, float] | None = None, digests: dict | None = None) -> dict:
    """The report document (see the module docstring); `digests`: sha256 of each input by role."""
    from vmt.runtime import versions

    units = units or {}
    return clean({
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or [],
        "subcommand": subcommand,
        "params": params or {},
        "inputs": inputs or {},
        "metrics": {k: _metric_entry(k, v, units.get(k, "")) for k, v in metrics.items()},
        "items": items or [],
        "errors": errors or [],
        "input_digests": digests or {},
        "baseline": None,
        "versions": {**versions(), **metric_versions(subcommand)},
        "metric_packages": list(METRIC_PACKAGES.get(subcommand, ())),
        "timings_s": timings or {},
    })


def _metric_entry(name: str, value: Any, unit: str) -> dict:
    entry = {"value": value, "better": BETTER.get(name), "unit": unit}
    if name in TARGET:
        entry["target"] = TARGET[name]
    return entry


def _fix(p: Path, doc: Any) -> str:
    sub = doc.get("subcommand") if isinstance(doc, dict) and isinstance(doc.get("subcommand"), str) else "SUBCOMMAND"
    return f"regenerate it with `vmt eval {sub} ... --json {p}`"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_report(path: str | Path) -> dict:
    """Read a report written by `vmt eval --json` for use as a baseline; refuse (VmtUsageError, one line
    naming the file, the field and the fix) anything the gate could misread: another schema, fields of the
    wrong type, a metric that is not a {"value", "better", "unit"} object, a value that is not a finite number
    or null (JSON has no NaN, but Python's reader takes NaN and Infinity)."""
    p = Path(path)
    if not p.is_file():
        raise VmtUsageError(f"baseline {p} not found; write one with `vmt eval ... --json {p}`")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VmtUsageError(f"baseline {p} is not JSON ({e}); give a report written by `vmt eval --json`") from e
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not isinstance(schema, str) or not schema.startswith("vmt.eval/"):
        raise VmtUsageError(f"baseline {p} is not a vmt eval report (schema {schema!r}, expected {SCHEMA}); "
                            "give a report written by `vmt eval --json`")
    if schema.split("/")[1].split(".")[0] != SCHEMA_MAJOR.split("/")[1]:
        raise VmtUsageError(f"baseline {p} has schema {schema}, this vmt reads {SCHEMA_MAJOR}.x; "
                            + _fix(p, doc))
    fix = _fix(p, doc)
    if not isinstance(doc.get("subcommand"), str):
        raise VmtUsageError(f"baseline {p}: subcommand is {doc.get('subcommand')!r}, not a subcommand name; {fix}")
    for key in ("params", "versions"):
        if key in doc and not isinstance(doc[key], dict):
            raise VmtUsageError(f"baseline {p}: {key} is {type(doc[key]).__name__}, not an object; {fix}")
    bad_versions = [k for k, v in doc.get("versions", {}).items() if not isinstance(v, str)]
    if bad_versions:
        raise VmtUsageError(f"baseline {p}: versions.{bad_versions[0]} is not a version string; {fix}")
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict):
        raise VmtUsageError(f"baseline {p} has no metrics table; {fix}")
    for name, entry in metrics.items():
        where = f"baseline {p}: metric {name}"
        if not isinstance(entry, dict):
            kind = "a bare number" if _is_number(entry) else f"a {type(entry).__name__}"
            raise VmtUsageError(f"{where} is {kind} ({entry!r}), not a metric object "
                                '{"value": number or null, "better", "unit"}; ' + fix)
        if "value" not in entry:
            raise VmtUsageError(f"{where} has no value; {fix}")
        value = entry["value"]
        if value is not None and not _is_number(value):
            raise VmtUsageError(f"{where} has value {value!r} ({type(value).__name__}), not a number or null; {fix}")
        if value is not None and not math.isfinite(value):
            raise VmtUsageError(f"{where} has value {json.dumps(value)}, not a finite number (vmt writes null "
                                f"for a metric without a value); {fix}")
        if entry.get("better") is not None and entry.get("better") not in DIRECTIONS:
            raise VmtUsageError(f"{where} has better={entry.get('better')!r}, not one of "
                                f"{', '.join(DIRECTIONS)} or null; {fix}")
    return doc


def require_gated(doc: dict, path: str | Path, subcommand: str, params: dict | None = None) -> None:
    """Refuse a baseline of `subcommand` that lacks a metric this run gates (it would gate one fewer)."""
    missing = [m for m in gated_metrics(subcommand, params) if m not in doc["metrics"]]
    if missing:
        raise VmtUsageError(f"baseline {path} lacks the gated metric{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)}; {_fix(Path(path), doc)} (a baseline without "
                            f"{'them' if len(missing) > 1 else 'it'} would gate fewer metrics)")


@dataclass(frozen=True)
class Tolerance:
    """Allowed worsening: `value` percent of the baseline's magnitude when relative, else absolute units; or
    `auto`: from the measured spread of the per-input values of both reports (`auto_allowance`)."""

    value: float
    relative: bool
    auto: bool = False

    def allowed(self, baseline: float) -> float:
        return abs(baseline) * self.value / 100.0 if self.relative else self.value

    def __str__(self) -> str:
        if self.auto:
            return f"auto ({AUTO_SIGMAS:g} standard errors)"
        return f"{self.value:g}%" if self.relative else f"{self.value:g}"


# `--tolerance auto`: a gated mean may be worse than the baseline's by this many standard errors of the
# difference of the two means (one-sided: a rerun of the same method flags a metric about once in 740 times).
AUTO_SIGMAS = 3.0
_TOL_RE = re.compile(r"^\s*([A-Za-z0-9_*.-]+)\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(%?)\s*$")
_AUTO_RE = re.compile(r"^\s*(?:([A-Za-z0-9_*.-]+)\s*=\s*)?auto\s*$")


def parse_tolerances(specs: list[str]) -> dict[str, Tolerance]:
    """`["fvd=5%", "ssim=0.01", "*=2%"]` -> {name: Tolerance}; `*` sets the default for unnamed metrics;
    `auto` (or `NAME=auto`) takes the tolerance from the spread of the per-input values."""
    out = {}
    for spec in specs:
        auto = _AUTO_RE.match(spec)
        if auto:
            out[(auto.group(1) or "*").replace("-", "_")] = Tolerance(0.0, False, auto=True)
            continue
        m = _TOL_RE.match(spec)
        if not m:
            raise VmtUsageError(f"{param('tolerance')} {spec!r} is not NAME=VALUE, NAME=VALUE% or auto; e.g. "
                                "fvd=5%, ssim=0.01 or auto")
        out[m.group(1).replace("-", "_")] = Tolerance(float(m.group(2)), m.group(3) == "%")
    return out


def _item_values(doc: dict, name: str) -> list[float]:
    """The finite per-input values of metric `name` in a report's items ("closer" metrics as the distance to
    their target), the values its mean was taken over."""
    out = []
    for item in doc.get("items") or []:
        v = (item.get("metrics") or {}).get(name)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(abs(v - TARGET[name]) if BETTER.get(name) == "closer" else float(v))
    return out


def auto_allowance(name: str, report: dict, baseline: dict) -> float | None:
    """AUTO_SIGMAS standard errors of the difference of the two means of `name`, each from the spread of its
    report's per-input values (sample standard deviation / sqrt(n)): what a rerun on other seeds or prompts
    moves the mean by. None when either report has fewer than two per-input values (a set metric such as
    FVD, or a count): there is no spread to measure, and the check is then exact."""
    a, b = _item_values(report, name), _item_values(baseline, name)
    if len(a) < 2 or len(b) < 2:
        return None

    def var_of_mean(v: list[float]) -> float:
        m = sum(v) / len(v)
        return sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)

    return AUTO_SIGMAS * math.sqrt(var_of_mean(a) + var_of_mean(b))


@dataclass
class Check:
    name: str
    baseline: float | None
    current: float | None
    better: str
    tolerance: str
    regressed: bool
    reason: str = ""
    compared: bool = True  # False: the baseline has no value for this metric (null), so nothing to compare


def compare(report: dict, baseline: dict, tolerances: dict[str, Tolerance]) -> list[Check]:
    """Check every gated metric (BETTER; the direction is this vmt's, never the baseline's) of this run and of
    the baseline. A metric regresses when it is worse than the baseline by more than its tolerance (default 0:
    any worsening), or is missing or not finite here; "worse" for a "closer" metric is a larger distance to
    its target. A baseline value of null (the metric had no value when it was made) is recorded as not
    compared. A gated metric of this run that the baseline lacks is a usage error (`require_gated`)."""
    default = tolerances.get("*", Tolerance(0.0, False))
    known = set(baseline["metrics"]) | set(report["metrics"])
    unknown = sorted(k for k in tolerances if k != "*" and k not in known)
    if unknown:
        raise VmtUsageError(f"{param('tolerance')} names unknown metric(s) {', '.join(unknown)}; this report "
                            "has " + ", ".join(sorted(known)))
    names = [k for k in report["metrics"] if k in BETTER]
    names += [k for k in baseline["metrics"] if k in BETTER and k not in report["metrics"]]
    missing = [k for k in names if k not in baseline["metrics"]]
    if missing:
        raise VmtUsageError(f"the baseline lacks the gated metric(s) {', '.join(missing)}; regenerate it with "
                            f"`vmt eval {report.get('subcommand')} ... --json FILE`")
    checks = []
    for name in names:
        better = BETTER[name]
        tol = tolerances.get(name, default)
        base = baseline["metrics"][name].get("value")
        cur = (report["metrics"].get(name) or {}).get("value")
        if base is None:
            checks.append(Check(name, None, cur, better, str(tol), False,
                                "the baseline has no value (it was not finite there)", compared=False))
            continue
        if name not in report["metrics"]:
            checks.append(Check(name, base, None, better, str(tol), True, "missing from this run"))
            continue
        if cur is None:
            checks.append(Check(name, base, None, better, str(tol), True, "not finite in this run"))
            continue
        tol_text = str(tol)
        if tol.auto:
            allow = auto_allowance(name, report, baseline)
            if allow is None:
                allow, tol_text = 0.0, "auto: exact (no per-input spread)"
            else:
                tol_text = f"auto {allow:.4g}"
        else:
            allow = tol.allowed(base)
        if better == "closer":
            target = TARGET[name]
            worse = abs(cur - target) - abs(base - target)
            what = f"further from {target:g}"
        else:
            worse = cur - base if better == "lower" else base - cur
            what = "worse"
        regressed = worse > allow + 1e-12 * max(1.0, abs(base))
        reason = f"{what} by {worse:.6g} (> {allow:.6g} allowed)" if regressed else ""
        checks.append(Check(name, base, cur, better, tol_text, regressed, reason))
    return checks


def versions_differ(report: dict, baseline: dict) -> dict[str, dict[str, str | None]]:
    """The packages deciding this subcommand's numbers whose versions differ between the baseline and this
    run: {package: {"baseline": version or None (not recorded), "current": version or None}}."""
    mine, theirs = report.get("versions") or {}, baseline.get("versions") or {}
    return {k: {"baseline": theirs.get(k), "current": mine.get(k)}
            for k in METRIC_PACKAGES.get(report.get("subcommand", ""), ()) if theirs.get(k) != mine.get(k)}


def versions_note(differ: dict[str, dict[str, str | None]]) -> str:
    """One line: "baseline made with opencv 4.14.0, this run 5.1.0; numbers may move"."""
    def v(x: str | None) -> str:
        return x if x is not None else "(not recorded)"

    parts = [f"{k} {v(d['baseline'])}, this run {v(d['current'])}" for k, d in differ.items()]
    return "baseline made with " + "; ".join(parts) + "; numbers may move"


def attach_baseline(report: dict, path: str | Path, checks: list[Check],
                    differ: dict[str, dict[str, str | None]] | None = None) -> dict:
    report["baseline"] = clean({"path": str(path), "checked": [asdict(c) for c in checks],
                                "regressions": [c.name for c in checks if c.regressed],
                                "not_compared": [c.name for c in checks if not c.compared],
                                "versions_differ": differ or {}})
    return report


# ---------------------------------------------------------------- the gate: exit codes, comparability

# Parameters that say how a run reports, not what it computes: never compared with a baseline's.
REPORT_PARAMS = {"json_out", "baseline", "tolerance", "skip_bad", "overwrite", "quiet", "debug",
                 "allow_different_inputs", "device", "batch_size", "detector"}


def input_digests(inputs: dict[str, Any]) -> dict[str, list[str]]:
    """{role: path or [paths]} -> {role: [sha256, ...]} in the same order."""
    from vmt.io.digest import file_digest

    out = {}
    for role, paths in inputs.items():
        out[role] = [file_digest(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    return out


# Paths of inputs (and eval motion's pairs file): their content is compared through the digests instead.
INPUT_PARAMS = ("ref", "gen", "real", "videos", "truth", "pred", "gt", "batch")


def compared_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in REPORT_PARAMS}


def comparability_problems(report: dict, baseline: dict) -> list[str]:
    """Why a baseline is not comparable with this run: another subcommand, other input contents, other
    parameters (empty when comparable)."""
    problems = []
    if baseline.get("subcommand") != report.get("subcommand"):
        problems.append(f"the baseline is a `vmt eval {baseline.get('subcommand')}` report, this run is "
                        f"`vmt eval {report.get('subcommand')}`")
        return problems
    base_dig = baseline.get("input_digests")
    if not isinstance(base_dig, dict):
        problems.append("the baseline records no input content hashes (made by an older vmt)")
    elif base_dig != report.get("input_digests"):
        roles = sorted(r for r in set(base_dig) | set(report.get("input_digests", {}))
                       if base_dig.get(r) != report.get("input_digests", {}).get(r))
        problems.append(f"the inputs differ in content ({', '.join(roles)})")
    mine, theirs = compared_params(report.get("params", {})), compared_params(baseline.get("params", {}))
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k) and k not in INPUT_PARAMS)
    if diff:
        problems.append("parameters differ: " + ", ".join(f"{k}={theirs.get(k)!r} there, {mine.get(k)!r} here"
                                                         for k in diff))
    return problems


def check_comparable(report: dict, baseline: dict, allow_different_inputs: bool) -> list[str]:
    """Raise VmtUsageError when the baseline is not comparable, unless allowed; return the problems (which
    the report records when allowed). Another subcommand is never allowed."""
    problems = comparability_problems(report, baseline)
    if problems and baseline.get("subcommand") != report.get("subcommand"):
        raise VmtUsageError(f"baseline not comparable: {problems[0]}")
    if problems and not allow_different_inputs:
        raise VmtUsageError("baseline not comparable: " + "; ".join(problems)
                            + f" (pass {param('allow_different_inputs')} to compare anyway)")
    return problems
