"""Content digests of files: what makes two runs' inputs the same, whatever their paths."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content (hex), read in `chunk`-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
