"""Run folders: weights as safetensors, configuration and training state as JSON.

A run folder holds
  config.json        {"format", "model": LongGenConfig, "train": TrainSettings, "step", "seed", "data"}
  model.safetensors  generator + encoders (all that sampling and reconstruction need)
  train.safetensors  discriminators and both Adam states (only needed to resume training)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vmt.errors import VmtError, VmtUsageError, param
from vmt.io.atomic import atomic_path, write_json_atomic
from vmt.longgen.config import LongGenConfig
from vmt.longgen.model import EncGAN3

FORMAT = "vmt.longgen/1"
# The small model that ships with the package (cpu preset, moving digits; see its README.md).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def resolve_run_dir(model: str | Path | None) -> Path:
    """Check that `model` is a run folder written by `vmt longgen train`; None means the shipped default."""
    if model is None:
        if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
            raise VmtError(f"the default model is missing from this installation ({DEFAULT_MODEL_DIR}); "
                           f"pass a run folder as {param('model')} (train one with `vmt longgen train "
                           "synthetic:digits -o RUN_DIR`)")
        return DEFAULT_MODEL_DIR
    p = Path(model)
    if not p.is_dir():
        raise VmtUsageError(f"model folder {p} not found; pass a run folder made by `vmt longgen train` "
                            "(e.g. `vmt longgen train synthetic:digits -o RUN_DIR`)")
    if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
        raise VmtUsageError(f"{p} is not a longgen run folder (needs config.json and model.safetensors); "
                            "train one with `vmt longgen train DATA -o RUN_DIR`")
    return p


def read_meta(run_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VmtError(f"cannot read {Path(run_dir) / 'config.json'}: {e}") from e
    if meta.get("format") != FORMAT:
        raise VmtError(f"{run_dir}/config.json has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path, replace=True) as tmp:  # a run folder's files are rewritten at each checkpoint
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated or foreign files
        raise VmtError(f"cannot read weights {path}: {e}") from e


def _with_default_prior(model: EncGAN3, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Runs saved before the fitted sampling priors existed load with the model's initial ones: N(0, I), no
    dependence of motion on content, no learned motion prior."""
    own = model.state_dict()
    fill = {k: v for k, v in own.items() if k.startswith(("prior_", "motion_prior.")) and k not in state}
    return {**fill, **state}


def load_state_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict with one clear error when keys or shapes differ (a checkpoint of another config)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shapes:
        detail = []
        if shapes:
            k = shapes[0]
            detail.append(f"{len(shapes)} tensors differ in shape (e.g. {k}: {tuple(state[k].shape)} in the file, "
                          f"{tuple(own[k].shape)} in the model)")
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            detail.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        raise VmtError(f"{where} was saved from a different model configuration: {'; '.join(detail)}; use the "
                       "config.json it was trained with, or start a new run folder")
    module.load_state_dict(state)


def _optim_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            tensors[f"{prefix}.{idx}.{name}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return tensors, sd["param_groups"]


def _restore_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith(prefix + "."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": dict(sorted(state.items())), "param_groups": groups})


def save_run(run_dir: Path, trainer, *, seed: int, data: str, extra: dict[str, Any] | None = None) -> None:
    """Write model weights, training state and config.json (each file atomically)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT}
    _save_tensors(run_dir / "model.safetensors", trainer.model.state_dict(), meta)
    tensors = {f"disc.{k}": v for k, v in trainer.discs.state_dict().items()}
    opt_g, groups_g = _optim_tensors(trainer.opt_g, "opt_g")
    opt_d, groups_d = _optim_tensors(trainer.opt_d, "opt_d")
    tensors.update(opt_g)
    tensors.update(opt_d)
    _save_tensors(run_dir / "train.safetensors", tensors, meta)
    doc = {
        "format": FORMAT, "model": trainer.cfg.to_dict(), "train": trainer.settings.to_dict(),
        "step": trainer.step_count, "seed": seed, "data": data,
        "optimizer_groups": {"opt_g": groups_g, "opt_d": groups_d}, **(extra or {}),
    }
    write_json_atomic(run_dir / "config.json", doc, replace=True)


def load_model(model: str | Path | None, device=None) -> tuple[EncGAN3, dict[str, Any]]:
    """Load a run folder (None: the shipped default model) for sampling: the model in eval mode and its
    config.json."""
    run_dir = resolve_run_dir(model)
    meta = read_meta(run_dir)
    cfg = LongGenConfig.from_dict(meta["model"])
    net = EncGAN3(cfg)
    state = _with_default_prior(net, _load_tensors(run_dir / "model.safetensors"))
    load_state_checked(net, state, f"{run_dir}/model.safetensors")
    net = net.to(device or "cpu").eval()
    return net, meta


def resume_trainer(run_dir: Path, trainer) -> dict[str, Any]:
    """Load weights and optimiser states of `run_dir` into `trainer`; its config must match."""
    meta = read_meta(run_dir)
    saved = LongGenConfig.from_dict(meta["model"])
    if saved != trainer.cfg:
        diff = {k: (v, getattr(trainer.cfg, k)) for k, v in saved.to_dict().items() if getattr(trainer.cfg, k) != v}
        text = ", ".join(f"{k}: {a} in the run, {b} asked for" for k, (a, b) in diff.items())
        raise VmtUsageError(f"{run_dir} holds a model of another configuration ({text}); use the same preset and "
                            f"sizes to resume, or a new {param('output')} folder")
    state = _with_default_prior(trainer.model, _load_tensors(run_dir / "model.safetensors"))
    load_state_checked(trainer.model, state, f"{run_dir}/model.safetensors")
    tpath = run_dir / "train.safetensors"
    if not tpath.is_file():
        raise VmtError(f"{tpath} is missing, so training cannot resume; start a new {param('output')} folder")
    tensors = _load_tensors(tpath)
    load_state_checked(trainer.discs, {k[5:]: v for k, v in tensors.items() if k.startswith("disc.")},
                       f"{tpath} (discriminators)")
    groups = meta.get("optimizer_groups", {})
    _restore_optim(trainer.opt_g, tensors, "opt_g", groups["opt_g"])
    _restore_optim(trainer.opt_d, tensors, "opt_d", groups["opt_d"])
    trainer.step_count = int(meta["step"])
    return meta
