"""GPU memory a Wan job needs, estimated before any weights load: weights counted from the safetensors headers
of the model folder, activations from the transformer's config, with the memory options (offload, float8
storage, gradient checkpointing of a guided backward). An estimate for planning (`--dry-run`), not a
measurement."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _safetensors_params(folder: Path) -> int | None:
    """Parameters in the .safetensors files of a component folder, from their headers (no tensor data)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                total += math.prod(info["shape"])
    return total


DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def weight_bytes(model_folder: Path, dtype: str, storage_dtype: str | None = None) -> dict[str, int | None]:
    """Bytes of each component's weights as loaded (the VAE stays float32; `storage_dtype` float8: the
    transformers' weights take one byte each), counted from the files' headers."""
    per = DTYPE_BYTES.get(dtype, 4)
    out: dict[str, int | None] = {}
    for comp in ("transformer", "transformer_2", "text_encoder", "image_encoder", "vae"):
        folder = model_folder / comp
        if folder.is_dir():
            n = _safetensors_params(folder)
            size = 4 if comp == "vae" else 1 if storage_dtype and comp.startswith("transformer") else per
            out[comp] = None if n is None else n * size
    return out


def activation_bytes(tokens: int, dim: int, ffn_dim: int, text_tokens: int, branches: int, dtype: str) -> int:
    """A rough peak of one transformer forward's activations: the block's input, attention output and FFN
    intermediate per token, for `branches` (2 with batched CFG). Memory-efficient attention is assumed (no
    token x token matrix). An estimate, not a measurement."""
    per = DTYPE_BYTES.get(dtype, 4)
    return branches * per * (tokens * (4 * dim + ffn_dim) + text_tokens * dim)


def memory_estimate(model_folder: Path, dtype: str, offload: str, tokens: int, latent_numel: int,
                    cfg_branches: int, storage_dtype: str | None = None, guided_blocks: int = 0,
                    checkpointing: bool = True) -> dict[str, Any]:
    """Estimated peak GPU memory of a job from the model's files (weights) and configs (activations), with
    the memory options: `offload` (model / sequential / group: one component, or one block group, at a time)
    and float8 `storage_dtype`. `guided_blocks`: blocks a guided forward runs and back-propagates through
    (transfer: capture block + 1 when truncated); its backward keeps every block's activations, or with
    `checkpointing` only each block's input plus one block's activations."""
    weights = weight_bytes(model_folder, dtype, storage_dtype)
    known = {k: v for k, v in weights.items() if v is not None}
    tcfg: dict = {}
    try:
        tcfg = json.loads((model_folder / ("transformer" if (model_folder / "transformer").is_dir()
                                           else "transformer_2") / "config.json").read_text())
        dim = int(tcfg["num_attention_heads"]) * int(tcfg["attention_head_dim"])
        ffn = int(tcfg["ffn_dim"])
    except (OSError, ValueError, KeyError):
        dim, ffn = 1536, 8960  # Wan2.1-1.3B
    act = activation_bytes(tokens, dim, ffn, 512, cfg_branches, dtype) + 8 * latent_numel * 4
    if guided_blocks:  # one branch, with gradients
        block = activation_bytes(tokens, dim, ffn, 512, 1, dtype)
        kept = guided_blocks * tokens * dim * DTYPE_BYTES.get(dtype, 4) + block if checkpointing \
            else guided_blocks * block
        act = max(act, kept)
    if offload == "none":
        resident = sum(known.values())
    elif offload == "group":  # blocks stream in; the other components still run whole, one at a time
        others = [v for k, v in known.items() if not k.startswith("transformer")]
        layers = int(tcfg.get("num_layers", 30)) if isinstance(tcfg, dict) else 30
        block = max((v for k, v in known.items() if k.startswith("transformer")), default=0) // max(1, layers)
        resident = max([*others, 2 * block], default=0)
    else:  # model offload: the largest component at a time (sequential: less; reported the same, an upper bound)
        resident = max(known.values(), default=0)
    gib = 2**30
    return {"weights_gib": {k: (None if v is None else round(v / gib, 3)) for k, v in weights.items()},
            "activations_gib": round(act / gib, 3), "peak_gib": round((resident + act) / gib, 3),
            "note": "weights from the model files' headers; activations a rough estimate"}
