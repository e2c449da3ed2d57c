"""Outputs that are never half-written: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmt.errors import VmtUsageError


def sidecar_path(output: str | os.PathLike) -> Path:
    """The provenance file of an output: `out.mp4` -> `out.json` (`out.json` -> `out.json.json`)."""
    p = Path(output)
    return p.with_name(p.name + ".json") if p.suffix == ".json" else p.with_suffix(".json")


def check_output_path(output: str | os.PathLike, overwrite: bool, *, sidecar: bool = True) -> Path:
    """Validate an output path before any expensive work; raise VmtUsageError naming the fix.

    Refuses an existing output (and its JSON sidecar) without `overwrite`, a missing or unwritable
    folder, and a path that is a directory.
    """
    p = Path(output)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise VmtUsageError(f"output {p} is a directory; give a file path such as {p / 'out.mp4'}")
    if not parent.is_dir():
        raise VmtUsageError(f"output folder {parent} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VmtUsageError(f"output folder {parent} is not writable; choose another -o/--output path")
    if not overwrite:
        for q in [p, sidecar_path(p)] if sidecar else [p]:
            if q.exists():
                raise VmtUsageError(f"{q} already exists; pass --overwrite to replace it")
    return p


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` only on success.

    The temporary keeps the target's suffix so tools that infer a format from it (ffmpeg) still work.
    On any exception, including KeyboardInterrupt, the temporary is removed and the target untouched.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}", dir=target.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def check_not_inputs(outputs: list[str | os.PathLike | None], inputs: list[str | os.PathLike]) -> None:
    """Refuse (VmtUsageError) an output that is one of the inputs: the same resolved path, or the same file
    through another name (same inode). Run before any work, so an input is never overwritten."""
    ins = [Path(i) for i in inputs]
    resolved = {i.resolve(): i for i in ins}
    for out in outputs:
        if out is None or str(out) == "-":
            continue
        o = Path(out)
        hit = resolved.get(o.resolve())
        if hit is None and o.exists():
            hit = next((i for i in ins if i.exists() and os.path.samefile(o, i)), None)
        if hit is not None:
            raise VmtUsageError(f"output {o} is the input {hit}; writing it would destroy that input: choose "
                                "another output path")
