"""On-disk cache of a motion transfer's reference passes: the reference latent and the reference AMF.

A transfer spends, before any guidance, one VAE encode of the reference and one DiT forward per guided step
(the reference re-noised to that step's sigma with the fixed noise eps', `ref_amf="per-step"`) or one in all
(`ref_amf="clean"`). Neither depends on the prompt, so a second run on the same reference (another prompt,
other guidance weights, a batch over prompts) can load them:

    cache = ReferenceCache(MotionCache(default_cache_dir()), identity={"file_sha256": file_digest(path)})
    transfer(backend, frames, req, cfg, cache=cache)   # cache.report: hit or miss, DiT passes saved

Two kinds of entry, each a safetensors file (no pickle) named by the sha256 of its key, a JSON document of
everything the tensors depend on (`latent_key`, `amf_key`):

    latent-<sha256>.safetensors  the reference latent z_ref, float32 (1, C, F, h, w)
    amf-<sha256>.safetensors     the reference AMF of each guided step, "amf.0" ... (one for a clean reference)

Each file holds, in its metadata, the key document itself, the tensors' names, shapes and dtypes, a sha256
of their bytes and the DiT forward passes their computation took. A load checks all of it (and the shapes the
run expects); an entry that is missing, unreadable, truncated, corrupted or keyed differently is recomputed
and rewritten, never used. Entries are written whole (vmt.io.atomic) and hold nothing run-specific (no time,
no process id), so runs that miss together (two commands, torchrun ranks) write identical files and the last
rename wins. Nothing is ever deleted: remove the folder to reclaim its space.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FORMAT = 1
META_KEY = "vmt_motion_cache"


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/vmt/motion, or ~/.cache/vmt/motion when XDG_CACHE_HOME is unset or relative."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "vmt" / "motion"


def key_digest(key: dict) -> str:
    """sha256 (hex) of a key document, as canonical JSON."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def frames_digest(frames) -> str:
    """sha256 of a (T, H, W, 3) uint8 array's shape and bytes: exactly what the VAE encodes."""
    import numpy as np

    a = np.ascontiguousarray(frames)
    h = hashlib.sha256(f"{a.dtype}|{list(a.shape)}|".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


@dataclass
class Lookup:
    """What a load found: `tensors` (on CPU) and the entry's `info` on a hit; `problem` says why an entry
    that exists was not used (None: a hit, or no entry at all)."""

    path: Path
    tensors: dict[str, torch.Tensor] | None = None
    info: dict = field(default_factory=dict)
    problem: str | None = None

    @property
    def hit(self) -> bool:
        return self.tensors is not None


class MotionCache:
    """A folder of verified safetensors entries (see the module doc). Created when first written."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, key: dict) -> Path:
        return self.root / f"{kind}-{key_digest(key)}.safetensors"

    def load(self, kind: str, key: dict, check: Callable[[dict[str, torch.Tensor]], str | None] | None = None
             ) -> Lookup:
        """The entry of `key`, verified: its stored key, tensor list, shapes and bytes, then `check(tensors)`
        (a reason to refuse them, or None). Any failure is a miss with `problem` set."""
        path = self.path(kind, key)
        if not path.is_file():
            return Lookup(path)
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = json.loads((f.metadata() or {})[META_KEY])
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception as e:  # truncated, not safetensors, no or bad metadata: whatever it is, not trusted
            return Lookup(path, problem=f"unreadable ({type(e).__name__})")
        problem = _verify(meta, kind, key, tensors)
        if problem is None and check is not None:
            problem = check(tensors)
        if problem is not None:
            return Lookup(path, problem=problem)
        return Lookup(path, tensors, meta.get("info", {}))

    def store(self, kind: str, key: dict, tensors: dict[str, torch.Tensor], info: dict | None = None
              ) -> str | None:
        """Write the entry of `key` whole (replacing any). Returns None, or why it could not be written (the
        run goes on without it: a cache is never a reason to fail)."""
        from safetensors.torch import save_file

        from vmt.io.atomic import atomic_path

        tensors = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
        meta = {"format": FORMAT, "kind": kind, "key": key, "sha256": tensors_digest(tensors),
                "tensors": {n: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                            for n, t in sorted(tensors.items())},
                "info": info or {}}
        path = self.path(kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path, replace=True) as tmp:  # concurrent writers: the last rename wins
                save_file(tensors, str(tmp), metadata={META_KEY: _canonical(meta)})
        except OSError as e:
            return f"{path} could not be written ({e.strerror or type(e).__name__})"
        return None


def _verify(meta: Any, kind: str, key: dict, tensors: dict[str, torch.Tensor]) -> str | None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") != kind:
        return "another format or kind"
    if _canonical(meta.get("key")) != _canonical(key):
        return "stored key differs"
    listed = meta.get("tensors")
    if not isinstance(listed, dict) or set(listed) != set(tensors):
        return "tensor list differs"
    for name, t in tensors.items():
        if list(t.shape) != listed[name].get("shape") or str(t.dtype).replace("torch.", "") != listed[name].get("dtype"):
            return f"tensor {name} has another shape or dtype"
    if tensors_digest(tensors) != meta.get("sha256"):
        return "content digest differs (corrupted)"
    return None


# ---------------------------------------------------------------------------- the transfer's reference passes


def model_key(backend) -> dict:
    """What of a loaded model changes the reference passes' numbers: its content fingerprint (configs and
    weights), LoRAs (with their files' sha256), dtypes, device type and GPU name, attention backend, VAE
    tiling, compilation, and the torch/diffusers versions. Not: the folder's path, offloading, gradient
    checkpointing (the reference passes take no gradient). A backend without a fingerprint (no model folder)
    is keyed by its whole `describe()`."""
    import diffusers

    from vmt.io.digest import file_digest

    d = backend.describe()
    device = torch.device(backend.device)
    common = {"device_type": device.type, "torch": torch.__version__, "diffusers": diffusers.__version__,
              # another GPU model can round differently
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    if not d.get("fingerprint"):
        return {"describe": d, **common}
    loras = []
    for lo in d.get("loras") or []:
        p = Path(str(lo.get("path", "")))
        loras.append({**{k: lo.get(k) for k in ("scale", "expert")},
                      "sha256": file_digest(p) if p.is_file() else str(lo.get("path"))})
    return {"fingerprint": d["fingerprint"],
            **{k: d.get(k) for k in ("pipeline", "two_experts", "boundary_ratio", "dtype", "storage_dtype",
                                     "vae_tiling", "compile", "attention_backend")},
            "loras": loras, **common}


@dataclass
class ReferenceCache:
    """The cache as one transfer uses it.

    store: the folder. identity: what names the reference beyond its decoded frames (the request puts the
    file's sha256 and its frame count, size and rate here). extra: any other input the reference passes
    depend on, for a caller that adds one (e.g. a conditioning image's sha256); it is part of both keys.
    report: filled by the run, for its sidecar: per entry hit or miss, the key's digest, the DiT forward
    passes the reference AMF took (miss) or saved (hit), and why a stored entry was refused.
    """

    store: MotionCache
    identity: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    def latent_key(self, backend, frames) -> dict:
        return {"entry": "reference latent", "reference": self.identity, "frames_sha256": frames_digest(frames),
                "frames_shape": list(frames.shape), "model": model_key(backend), "extra": self.extra}

    def amf_key(self, latent_key: dict, amf: dict, passes: dict) -> dict:
        """latent_key + the AMF settings + the reference passes' own inputs (sigmas and timesteps, the
        reference noise's seed and mode for a per-step reference)."""
        return {**latent_key, "entry": "reference AMF", "amf": amf, "passes": passes}

    def latent(self, backend, frames, encode: Callable[[], torch.Tensor], notify=None) -> torch.Tensor:
        """z_ref from the cache, or `encode()` and store it."""
        key = self.latent_key(backend, frames)
        self._latent_key = key
        expected = list(backend.latent_shape(len(frames), frames.shape[1], frames.shape[2]))

        def check(t: dict) -> str | None:
            z = t.get("z_ref")
            if z is None or list(z.shape) != expected or z.dtype != torch.float32:
                return "latent of another shape"
            return None

        found, rep = self._lookup("latent", key, check, notify)
        if found.hit:
            return found.tensors["z_ref"]
        z = encode()
        problem = self.store.store("latent", key, {"z_ref": z})
        if problem:
            rep["not_stored"] = problem
            _tell(notify, f"motion cache: {problem}")
        return z

    def _lookup(self, kind: str, key: dict, check, notify):
        """Load an entry of `kind` and start its report (hit or miss, and why a stored one was refused)."""
        found = self.store.load(kind, key, check)
        rep = {"key": key_digest(key), "status": "hit" if found.hit else "miss"}
        if found.problem:
            rep["refused"] = found.problem
            _tell(notify, f"motion cache: {found.path.name} {found.problem}; recomputed")
        self.report[kind] = rep
        return found, rep

    def amf(self, amf: dict, passes: dict, expected_shapes: list[tuple[int, ...]], notify=None
            ) -> list[torch.Tensor] | None:
        """The stored reference AMFs (CPU) of this run, or None (a miss: the run computes them and calls
        `put_amf`)."""
        key = self.amf_key(self._latent_key, amf, passes)
        self._amf_key = key

        def check(t: dict) -> str | None:
            names = [f"amf.{i}" for i in range(len(expected_shapes))]
            if sorted(t) != sorted(names):
                return "another number of reference steps"
            if any(tuple(t[n].shape) != s for n, s in zip(names, expected_shapes)):
                return "reference AMF of another shape"
            return None

        found, rep = self._lookup("amf", key, check, notify)
        if not found.hit:
            return None
        rep["dit_forward_saved"] = int(found.info.get("dit_forward", 0))
        return [found.tensors[f"amf.{i}"] for i in range(len(expected_shapes))]

    def put_amf(self, refs: list[torch.Tensor], dit_forward: int, notify=None) -> None:
        """Store the reference AMFs a miss computed, with the DiT forward passes they took (measured)."""
        rep = self.report["amf"]
        rep["dit_forward_spent"] = dit_forward
        problem = self.store.store("amf", self._amf_key, {f"amf.{i}": r for i, r in enumerate(refs)},
                                   {"dit_forward": dit_forward})
        if problem:
            rep["not_stored"] = problem
            _tell(notify, f"motion cache: {problem}")


def _tell(notify, msg: str) -> None:
    if notify is not None:
        from vmt.errors import Note

        notify(Note(msg))
