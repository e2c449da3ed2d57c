"""Find a diffusers model folder from a hub id or a local path, check it is complete, fingerprint it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vmt.errors import VmtError, VmtUsageError, param

# The file that proves a component folder is there, by component kind.
_COMPONENT_FILES = {
    "tokenizer": ("tokenizer_config.json", "tokenizer.json", "spiece.model"),
    "scheduler": ("scheduler_config.json",),
    "image_processor": ("preprocessor_config.json",),
    "feature_extractor": ("preprocessor_config.json",),
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on disk and where it came from."""

    model_id: str  # what the user passed
    folder: Path
    source: str  # "local" or "hub"
    revision: str | None  # hub commit hash (None for a local folder)
    fingerprint: str  # sha256 over configs and the size/head/tail of each weight file
    pipeline_class: str
    components: dict[str, list]


def _is_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "/", "~"))


def _hub_failure(e: Exception) -> str:
    """The hub client's error in one short clause (its messages point to tracebacks the user never sees)."""
    text = " ".join(str(e).split())
    for cut in (" Please check out the root cause", " To enable repo look-ups"):
        text = text.split(cut)[0]
    return f"{type(e).__name__}: {text[:200]}"


def _download(model: str, revision: str | None) -> Path:
    """The model's snapshot folder: from the hub cache if complete there, else downloaded into it."""
    from diffusers import DiffusionPipeline

    try:  # the cache first: no network, no waiting on time-outs
        return Path(DiffusionPipeline.download(model, revision=revision, local_files_only=True))
    except Exception:  # the hub client raises many types; all mean "not (fully) cached"
        pass
    where = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    fixes = (f"download it where the hub is reachable (`hf download {model}`) into the cache ({where}), or pass "
             f"a local diffusers folder as {param('model')}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise VmtError(f"model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                       f"unset HF_HUB_OFFLINE to download it, {fixes}")
    try:
        return Path(DiffusionPipeline.download(model, revision=revision))
    except Exception as e:
        raise VmtError(f"model {model!r} is not in the local Hugging Face cache and could not be downloaded "
                       f"({_hub_failure(e)}); {fixes}") from e


def fingerprint_folder(folder: Path) -> str:
    """A cheap content fingerprint: every JSON/text config whole, and each weight file's size, head and tail.

    Hashing multi-GB weights in full would take minutes; size plus first/last MiB catches any re-save.
    """
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        rel = p.relative_to(folder).as_posix()
        h.update(rel.encode())
        if p.suffix in (".json", ".txt", ".model", ".toml"):
            h.update(p.read_bytes())
        else:
            size = p.stat().st_size
            h.update(str(size).encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(-(1 << 20), os.SEEK_END)
                    h.update(f.read())
    return h.hexdigest()[:16]


def check_components(folder: Path) -> tuple[str, dict[str, list]]:
    """Read model_index.json and check every listed component folder; return (pipeline class, components)."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise VmtError(f"{folder} is not a diffusers model folder (no model_index.json)")
    try:
        meta = json.loads(index.read_text())
    except json.JSONDecodeError as e:
        raise VmtError(f"{index} is not valid JSON: {e}") from e
    components = {
        k: v for k, v in meta.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None
    }
    for name in components:
        wanted = _COMPONENT_FILES.get(name.rstrip("_0123456789"), ("config.json",))
        if not any((folder / name / f).is_file() for f in wanted):
            raise VmtError(
                f"model folder {folder} is missing component {name!r} (expected {name}/{wanted[0]}); "
                "re-download the model or save it again with save_pretrained"
            )
    return meta.get("_class_name", "?"), components


def resolve_model(model: str, revision: str | None = None) -> ResolvedModel:
    """Resolve `model` (a local folder, or a hub id fetched into / read from the hub cache)."""
    p = Path(model).expanduser()
    if p.exists():
        if not p.is_dir():
            raise VmtUsageError(f"{param('model')} {model} is a file; pass a diffusers model folder or a hub "
                                "id")
        folder, source, rev = p.resolve(), "local", None
    elif _is_hub_id(model):
        folder, source = _download(model, revision), "hub"
        # A hub cache snapshot lives in .../snapshots/<commit hash>/
        rev = folder.name if folder.parent.name == "snapshots" else revision
    else:
        raise VmtUsageError(f"{param('model')} {model!r} is neither an existing folder nor a hub id like "
                            "'org/name'")
    cls, components = check_components(folder)
    return ResolvedModel(model, folder, source, rev, fingerprint_folder(folder), cls, components)

