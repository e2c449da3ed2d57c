"""Pairs of (reference, generated video) for `vmt eval motion --batch`: a pairs file, or the manifest of a
`vmt transfer --batch` run (each output against its own reference).

    pairs = read_pairs("transfers/manifest.jsonl")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vmt.batch import DONE_STATUSES, JSONL_SUFFIXES
from vmt.errors import VmtUsageError, param

PAIR_KEYS = ("reference", "video")


@dataclass(frozen=True)
class Pair:
    """One (reference, generated video) line of a pairs file or of a transfer batch's manifest. `status`:
    the manifest's job status (None in a pairs file); a job that is not done has no video to score."""

    line: int
    reference: Path
    video: Path
    status: str | None = None

    @property
    def done(self) -> bool:
        return self.status is None or self.status in DONE_STATUSES


def read_pairs(path: str | Path) -> list[Pair]:
    """Pairs to score, from JSON Lines: a pairs file ({"reference": ..., "video": ...} a line) or the
    manifest.jsonl of `vmt transfer --batch` (its header line, then "reference" and "output" per job; other
    keys are the manifest's own). Relative paths are read from the file's folder. Raises VmtUsageError naming
    the line: not an object, a missing or unknown key, a file that does not exist (for a job that is done)."""
    path = Path(path)
    if path.is_dir():
        raise VmtUsageError(f"{param('batch')} {path} is a folder; give a .jsonl file of pairs or a batch's "
                            "manifest.jsonl")
    if not path.is_file():
        raise VmtUsageError(f"{param('batch')} {path} not found; check the path")
    if path.suffix.lower() not in JSONL_SUFFIXES:
        raise VmtUsageError(f"{param('batch')} {path}: expected JSON Lines (.jsonl), one "
                            '{"reference": "ref.mp4", "video": "out.mp4"} a line')
    manifest = False
    pairs: list[Pair] = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise VmtUsageError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise VmtUsageError(f'{where}: expected a JSON object such as {{"reference": "ref.mp4", '
                                f'"video": "out.mp4"}}, got {type(obj).__name__}')
        if not pairs and not manifest and set(obj) == {"batch"}:
            manifest = True  # a batch manifest's header
            if isinstance(obj["batch"], dict) and obj["batch"].get("command", "transfer") != "transfer":
                raise VmtUsageError(f"{param('batch')} {path} is the manifest of "
                                    f"`vmt {obj['batch']['command']}`, whose jobs have no reference video; "
                                    "give a transfer manifest or a pairs file")
            continue
        video_key = "output" if manifest else "video"
        if not manifest:
            unknown = sorted(set(obj) - set(PAIR_KEYS))
            if unknown:
                raise VmtUsageError(f"{where}: unknown key {unknown[0]!r}; a pairs line has \"reference\" and "
                                    "\"video\"")
        for key in ("reference", video_key):
            if not isinstance(obj.get(key), str) or not obj[key]:
                raise VmtUsageError(f"{where}: {key!r} must be a path (a string)")
        status = obj.get("status") if manifest else None
        ref, video = (Path(obj[k]).expanduser() for k in ("reference", video_key))
        ref, video = (p if p.is_absolute() else path.parent / p for p in (ref, video))
        pair = Pair(lineno, ref, video, None if status is None else str(status))
        for what, f in (("reference", ref), ("video", video)):
            if pair.done and not f.is_file():
                kind = "is a folder" if f.is_dir() else "not found"
                raise VmtUsageError(f"{where}: {what} {f} {kind}")
        pairs.append(pair)
    if not pairs:
        raise VmtUsageError(f"{param('batch')} {path} has no pairs")
    return pairs
