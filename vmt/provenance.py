"""The JSON sidecar every output carries: what was run, with what, how long it took, what it cost."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from vmt.io.atomic import sidecar_path, write_json_atomic
from vmt.runtime import versions

SCHEMA = "vmt.run/1"


def build_sidecar(
    command: list[str],
    subcommand: str,
    params: dict[str, Any],
    *,
    output: Path,
    model: dict | None = None,
    timings: dict[str, float] | None = None,
    compute: dict[str, Any] | None = None,
    memory: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The sidecar document. `params` are the resolved parameters (after recipe and defaults)."""
    doc = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "subcommand": subcommand,
        "output": str(output),
        "params": params,
        "model": model,
        "versions": versions(),
        "timings_s": timings or {},
        "compute": compute or {},
        "memory": memory or {},
    }
    if extra:
        doc.update(extra)
    return doc


def write_sidecar(output: Path, doc: dict[str, Any], *, replace: bool | None = None) -> Path:
    """Write the sidecar next to `output` (out.mp4 -> out.json), atomically (`replace` as in atomic_path)."""
    return write_json_atomic(sidecar_path(output), doc, replace=replace)
