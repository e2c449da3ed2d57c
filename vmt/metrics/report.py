"""Evaluation reports: a versioned JSON document, and the comparison with a baseline report that turns
`vmt eval` into a CI regression gate.

Schema `vmt.eval/1`:
    {"schema": "vmt.eval/1", "created", "command", "subcommand", "params", "inputs",
     "metrics": {name: {"value": float | null, "better": "lower" | "higher" | null, "unit": str}},
     "items": [{"name", "metrics": {name: value}}],     # per file or per pair
     "errors": [{"path", "error"}],                     # unreadable inputs (listed, never hidden)
     "input_digests": {role: [sha256, ...]},            # input contents: a baseline must match them
     "baseline": {"path", "checked": [...], "regressions": [...]} | null,
     "versions", "timings_s"}
Non-finite values are written as null. A reader accepts any `vmt.eval/1.x` (same major version).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmt.errors import VmtError, VmtUsageError

SCHEMA = "vmt.eval/1"

# Which way is better for each metric vmt reports; metrics not listed are informational (never gated).
BETTER: dict[str, str] = {
    "fvd": "lower", "fid": "lower", "is": "higher",
    "energy_distance": "lower",
    "mae_best_k": "lower", "apd": "higher", "apd_mae": "higher", "ade": "lower", "fde": "lower",
    "motion_fidelity": "higher", "direction_cosine": "higher", "reversed_pairs": "lower",
    "warp_error": "lower", "ssim": "higher", "psnr": "higher",
    "physics_rms": "lower", "physics_max": "lower", "flicker": "higher", "no_trajectory": "lower",
    "ade_mean": "lower", "fde_mean": "lower", "ade_best": "lower", "fde_best": "lower",
    "seam_score": "lower",
}


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
        "metrics": {k: {"value": v, "better": BETTER.get(k), "unit": units.get(k, "")} for k, v in metrics.items()},
        "items": items or [],
        "errors": errors or [],
        "input_digests": digests or {},
        "baseline": None,
        "versions": versions(),
        "timings_s": timings or {},
    })


def load_report(path: str | Path) -> dict:
    """Read a report written by `vmt eval --json`; reject other files with the reason."""
    p = Path(path)
    if not p.is_file():
        raise VmtUsageError(f"baseline {p} not found; write one with `vmt eval ... --json {p}`")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VmtUsageError(f"baseline {p} is not JSON ({e}); give a report written by `vmt eval --json`") from e
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not isinstance(schema, str) or not schema.startswith("vmt.eval/"):
        raise VmtUsageError(f"baseline {p} is not a vmt eval report (schema {schema!r}, expected {SCHEMA})")
    if schema.split("/")[1].split(".")[0] != SCHEMA.split("/")[1]:
        raise VmtUsageError(f"baseline {p} has schema {schema}, this vmt reads {SCHEMA}; regenerate the baseline")
    if not isinstance(doc.get("metrics"), dict):
        raise VmtUsageError(f"baseline {p} has no metrics table")
    return doc


@dataclass(frozen=True)
class Tolerance:
    """Allowed worsening: `value` percent of the baseline's magnitude when relative, else absolute units."""

    value: float
    relative: bool

    def allowed(self, baseline: float) -> float:
        return abs(baseline) * self.value / 100.0 if self.relative else self.value

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.relative else f"{self.value:g}"


_TOL_RE = re.compile(r"^\s*([A-Za-z0-9_*.-]+)\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(%?)\s*$")


def parse_tolerances(specs: list[str]) -> dict[str, Tolerance]:
    """`["fvd=5%", "ssim=0.01", "*=2%"]` -> {name: Tolerance}; `*` sets the default for unnamed metrics."""
    out = {}
    for spec in specs:
        m = _TOL_RE.match(spec)
        if not m:
            raise VmtUsageError(f"--tolerance {spec!r} is not NAME=VALUE or NAME=VALUE%; e.g. --tolerance fvd=5%")
        out[m.group(1).replace("-", "_")] = Tolerance(float(m.group(2)), m.group(3) == "%")
    return out


@dataclass
class Check:
    name: str
    baseline: float | None
    current: float | None
    better: str
    tolerance: str
    regressed: bool
    reason: str = ""


def compare(report: dict, baseline: dict, tolerances: dict[str, Tolerance]) -> list[Check]:
    """Check every gated metric of the baseline against the report. A metric regresses when it is worse
    than the baseline by more than its tolerance (default 0: any worsening), or is missing or not finite."""
    default = tolerances.get("*", Tolerance(0.0, False))
    known = set(baseline["metrics"]) | set(report["metrics"])
    unknown = sorted(k for k in tolerances if k != "*" and k not in known)
    if unknown:
        raise VmtUsageError(f"--tolerance names unknown metric(s) {', '.join(unknown)}; this report has "
                            + ", ".join(sorted(known)))
    checks = []
    for name, entry in baseline["metrics"].items():
        better = (report["metrics"].get(name) or {}).get("better") or entry.get("better")
        if better not in ("lower", "higher"):
            continue  # informational
        tol = tolerances.get(name, default)
        base = entry.get("value")
        cur = (report["metrics"].get(name) or {}).get("value")
        if base is None:
            continue  # nothing to compare against
        if name not in report["metrics"]:
            checks.append(Check(name, base, None, better, str(tol), True, "missing from this run"))
            continue
        if cur is None:
            checks.append(Check(name, base, None, better, str(tol), True, "not finite in this run"))
            continue
        allow = tol.allowed(base)
        worse = cur - base if better == "lower" else base - cur
        regressed = worse > allow + 1e-12 * max(1.0, abs(base))
        reason = f"worse by {worse:.6g} (> {allow:.6g} allowed)" if regressed else ""
        checks.append(Check(name, base, cur, better, str(tol), regressed, reason))
    return checks


def attach_baseline(report: dict, path: str | Path, checks: list[Check]) -> dict:
    report["baseline"] = clean({"path": str(path), "checked": [asdict(c) for c in checks],
                                "regressions": [c.name for c in checks if c.regressed]})
    return report



# ---------------------------------------------------------------- the gate: exit codes, comparability

EXIT_PASS, EXIT_REGRESSION, EXIT_USAGE, EXIT_RUNTIME = 0, 1, 2, 3


class EvalRuntimeError(VmtError):
    """A failure while computing metrics (unreadable inputs without --skip-bad, a crash): exit code 3, so
    that CI can tell it from a regression (1)."""

    exit_code = EXIT_RUNTIME


# Parameters that say how a run reports, not what it computes: never compared with a baseline's.
REPORT_PARAMS = {"json_out", "baseline", "tolerance", "skip_bad", "overwrite", "quiet", "debug",
                 "allow_different_inputs", "device", "batch_size", "detector"}


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (hex): what makes two runs' inputs the same, whatever their paths."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_digests(inputs: dict[str, Any]) -> dict[str, list[str]]:
    """{role: path or [paths]} -> {role: [sha256, ...]} in the same order."""
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
                            + " (pass --allow-different-inputs to compare anyway)")
    return problems
