"""Find a diffusers model folder from a hub id or a local path, check it is complete, fingerprint it."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vmt.errors import VmtError, VmtUsageError

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


def _download(model: str, revision: str | None) -> Path:
    from diffusers import DiffusionPipeline

    try:
        return Path(DiffusionPipeline.download(model, revision=revision))
    except Exception as e:  # the hub client raises many types; all mean "not obtainable"
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        where = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        how = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else f"{type(e).__name__}: {e}"
        raise VmtError(
            f"cannot get model {model!r} ({how}); download it where the hub is reachable "
            f"(`hf download {model}`, cache {where}) or pass a local folder with --model"
        ) from e


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
            raise VmtUsageError(f"--model {model} is a file; pass a diffusers model folder or a hub id")
        folder, source, rev = p.resolve(), "local", None
    elif _is_hub_id(model):
        folder, source = _download(model, revision), "hub"
        # A hub cache snapshot lives in .../snapshots/<commit hash>/
        rev = folder.name if folder.parent.name == "snapshots" else revision
    else:
        raise VmtUsageError(f"--model {model!r} is neither an existing folder nor a hub id like 'org/name'")
    cls, components = check_components(folder)
    return ResolvedModel(model, folder, source, rev, fingerprint_folder(folder), cls, components)


def transformer_layers(folder: Path) -> dict[str, int]:
    """Block count of each transformer component of a model folder, from its config.json (`num_layers`),
    read without loading any weights: {"transformer": 30} (two-expert Wan2.2: also "transformer_2")."""
    out = {}
    for name in ("transformer", "transformer_2"):
        cfg = folder / name / "config.json"
        if cfg.is_file():
            n = json.loads(cfg.read_text()).get("num_layers")
            if isinstance(n, int):
                out[name] = n
    return out
