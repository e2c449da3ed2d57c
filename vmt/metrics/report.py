"""Evaluation reports: a versioned JSON document, and the comparison with a baseline report that turns
`vmt eval` into a CI regression gate.

Schema `vmt.eval/1`:
    {"schema": "vmt.eval/1", "created", "command", "subcommand", "params", "inputs",
     "metrics": {name: {"value": float | null, "better": "lower" | "higher" | null, "unit": str}},
     "items": [{"name", "metrics": {name: value}}],     # per file or per pair
     "errors": [{"path", "error"}],                     # unreadable inputs (listed, never hidden)
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

from vmt.errors import VmtUsageError

SCHEMA = "vmt.eval/1"

# Which way is better for each metric vmt reports; metrics not listed are informational (never gated).
BETTER: dict[str, str] = {
    "fvd": "lower", "fid": "lower", "is": "higher",
    "energy_distance": "lower",
    "mae_best_k": "lower", "apd": "higher", "apd_mae": "higher", "ade": "lower", "fde": "lower",
    "motion_fidelity": "higher", "direction_cosine": "higher", "reversed_pairs": "lower",
    "warp_error": "lower", "ssim": "higher", "psnr": "higher",
    "physics_rms_px": "lower", "physics_max_px": "lower",
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
                 timings: dict[str, float] | None = None) -> dict:
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

