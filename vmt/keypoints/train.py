"""Training of GRU-NF (flow NLL + prediction-head MSE) with validation, checkpoints and resume.

Checkpoint directory: `model.safetensors` (best validation weights, or the latest without validation),
`last.safetensors` + `train_state.pt` (optimizer, schedule, step, RNG: what `resume` needs) and `config.json`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vmt.errors import VmtUsageError, param
from vmt.keypoints.model import GRUNF, ModelConfig, load_model, read_config, save_model

STATE_FILE, LAST_FILE = "train_state.pt", "last.safetensors"


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3            # one-cycle peak (the release's effective peak was ~1e-5, which barely trains)
    weight_decay: float = 1e-6
    grad_clip: float = 5.0
    eval_every: int = 100
    seed: int = 0


def batch_transform(cfg: ModelConfig, augment: bool) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Raw windows (B, L, dim) -> (optionally augmented) windows encoded in the model's space."""
    from vmt.keypoints.augment import augment_batch
    from vmt.keypoints.predict import encode_windows

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if augment:
            x = augment_batch(x, cfg.layout, gen)
        return torch.from_numpy(encode_windows(cfg, x.numpy(), cfg.context)[0])

    return apply


@torch.no_grad()
def evaluate(model: GRUNF, windows: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Mean NLL (nats per frame) and head MSE over `windows` (B, L, dim), eval mode."""
    was = model.training
    model.eval()
    nll = mse = 0.0
    for i in range(0, len(windows), batch):
        w = windows[i : i + batch]
        a, b = model.losses(w)
        nll += a.item() * len(w)
        mse += b.item() * len(w)
    model.train(was)
    return {"nll": nll / len(windows), "mse": mse / len(windows)}


def fit(model_cfg: ModelConfig, train_cfg: TrainConfig, train_windows: np.ndarray, val_windows: np.ndarray | None,
        out_dir: str | Path, *, resume: bool = False, info: dict | None = None,
        on_step: Callable[[int, dict], None] | None = None, stop_after: int | None = None,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        device: str | torch.device = "cpu") -> dict:
    """Train on windows (W, L, dim); returns a summary (losses, best validation, timings).

    Without `transform` the windows are already in the model's space; with it, each sampled batch is passed
    through `transform(batch, generator)` (augmentation + encoding, see `batch_transform`) and the training
    windows may be raw. Validation windows are always in the model's space.
    `stop_after` ends this call after that many steps (a later `resume=True` call continues exactly).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(train_cfg.seed)
    model = GRUNF(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train_cfg.lr, total_steps=train_cfg.steps)
    gen = torch.Generator("cpu").manual_seed(train_cfg.seed)
    start, best, history, elapsed = 0, float("inf"), [], 0.0
    if resume:
        doc = read_config(out_dir)
        if doc["config"] != asdict(model_cfg):
            raise VmtUsageError(f"{out_dir} was trained with a different architecture or layout; resume with "
                                f"the same options or train into a new {param('output')} directory")
        if doc.get("train", {}).get("steps") != train_cfg.steps:
            raise VmtUsageError(f"{out_dir} was started with {param('steps')} "
                                f"{doc.get('train', {}).get('steps')}; resume with the same {param('steps')} "
                                "(the one-cycle schedule depends on it)")
        if not (out_dir / STATE_FILE).is_file():
            raise VmtUsageError(f"{out_dir} has no {STATE_FILE}; nothing to resume (train without "
                                f"{param('resume')})")
        last, _ = load_model(out_dir, LAST_FILE)
        model.load_state_dict(last.state_dict())
        state = torch.load(out_dir / STATE_FILE, weights_only=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, best, history = int(state["step"]), float(state["best"]), doc.get("history", [])
        elapsed = float(doc.get("train_seconds", 0.0))
    tr = torch.from_numpy(train_windows)
    va = torch.from_numpy(val_windows).to(device) if val_windows is not None and len(val_windows) else None
    model.to(device)
    model.train()
    t0 = time.perf_counter()

    best_step = None if not resume else read_config(out_dir).get("best_step")

    def checkpoint(step: int, metrics: dict) -> None:
        nonlocal best, best_step
        improved = va is not None and metrics.get("val_nll", float("inf")) < best
        if improved:
            best, best_step = metrics["val_nll"], step
        seconds = round(elapsed + time.perf_counter() - t0, 2)
        doc = {"train": asdict(train_cfg), "history": history, "train_seconds": seconds, "step": step,
               "best_val_nll": None if best == float("inf") else best, "best_step": best_step, **(info or {})}
        if improved or va is None:
            save_model(model, out_dir, info=doc)
        save_model(model, out_dir, weights_name=LAST_FILE, info=doc)
        tmp = out_dir / f".{STATE_FILE}.part"
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step, "best": best}, tmp)
        tmp.replace(out_dir / STATE_FILE)

    if start == 0 and va is not None:
        history.append({"step": 0, **{f"val_{k}": round(v, 4) for k, v in evaluate(model, va).items()}})
    end = train_cfg.steps if stop_after is None else min(train_cfg.steps, start + stop_after)
    for step in range(start + 1, end + 1):
        idx = torch.randint(len(tr), (min(train_cfg.batch, len(tr)),), generator=gen)
        xb = tr[idx] if transform is None else transform(tr[idx], gen)
        nll, mse = model.losses(xb.to(device))
        loss = nll + model_cfg.head_weight * mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        opt.step()
        sched.step()
        metrics = {"nll": round(nll.item(), 4), "mse": round(mse.item(), 5)}
        if step % train_cfg.eval_every == 0 or step == end:
            if va is not None:
                v = evaluate(model, va)
                metrics.update(val_nll=round(v["nll"], 4), val_mse=round(v["mse"], 5))
            history.append({"step": step, **metrics})
            checkpoint(step, metrics)
        if on_step is not None:
            on_step(step, metrics)
    seconds = round(elapsed + time.perf_counter() - t0, 2)
    return {"history": history, "best_val_nll": None if best == float("inf") else best, "train_seconds": seconds}


SPEEDS = (0.8, 1.0, 1.25)   # replay factors of the speed augmentation


def prepare_training(cfg: ModelConfig, seqs: list[np.ndarray], stride: int, augment: bool
                     ) -> tuple[ModelConfig, np.ndarray, Callable[[torch.Tensor, torch.Generator], torch.Tensor]]:
    """Training windows and batch transform for sequences (T_i, dim) in detector units.

    Returns the config (with `residual_scale` fitted on these windows for the residual encoding), the raw
    windows (W, L, dim) (with `augment`, also replayed at 0.8x and 1.25x speed) and the batch transform
    (with `augment`: random mirror, affine jitter and time reversal per window, then the encoding).
    """
    from vmt.keypoints.augment import speed_windows
    from vmt.keypoints.predict import fit_residual_scale

    length = cfg.context + cfg.horizon
    seqs = [s[:: cfg.frame_step] for s in seqs]
    if not any(len(s) >= length for s in seqs):
        raise VmtUsageError(f"no training sequence has {length} frames (context + horizon) after "
                            f"{param('frame_step')} {cfg.frame_step}; shorten {param('context')}/"
                            f"{param('horizon')}")
    raw = speed_windows(seqs, length, stride, SPEEDS if augment else (1.0,))
    if cfg.param == "residual":
        cfg = replace(cfg, residual_scale=fit_residual_scale(raw, cfg.context))
    return cfg, raw, batch_transform(cfg, augment)


def train_model(seqs, cfg: ModelConfig, tc: TrainConfig, out_dir: str | Path, *, val_identities: list[str],
                window_stride: int, augment: bool, resume: bool = False, device: str | torch.device = "cpu",
                keypoints_source: str = "fomm", data_file: str = "", on_step=None) -> dict:
    """`vmt predict-keypoints train` as a function: split by identity, build windows, fit, return the summary
    (with `train_windows` / `val_windows` counts). `seqs` is a `data.Sequences`."""
    from vmt.keypoints.data import Sequences, make_windows, split_by_identity
    from vmt.keypoints.predict import encode_windows

    tr, va = split_by_identity(seqs, val_identities) if val_identities else (seqs, Sequences([], [], seqs.layout))
    if resume:   # the residual scale was fitted when the run started; refitting could differ in the last bit
        cfg = ModelConfig(**read_config(out_dir)["config"])
        _, raw, transform = prepare_training(cfg, tr.flat, window_stride, augment)
    else:
        cfg, raw, transform = prepare_training(cfg, tr.flat, window_stride, augment)
    length = cfg.context + cfg.horizon
    vaw = None
    if len(va):
        vaw = encode_windows(cfg, make_windows(va, length, length, cfg.frame_step)[0], cfg.context)[0]
    info = {"keypoints_source": keypoints_source,
            "data": {"file": data_file, "train_sequences": tr.names, "val_sequences": va.names,
                     "val_identities": val_identities, "train_windows": len(raw), "augment": augment,
                     "val_windows": 0 if vaw is None else len(vaw), "keypoints_source": keypoints_source}}
    res = fit(cfg, tc, raw, vaw, out_dir, resume=resume, info=info, on_step=on_step, transform=transform,
              device=device)
    return {**res, "train_windows": len(raw), "val_windows": 0 if vaw is None else len(vaw),
            "train_sequences": len(tr), "val_sequences": len(va)}


def calibration_model(seqs, cfg: ModelConfig, tc: TrainConfig, out_dir: str | Path, *, exclude: list[str],
                      calib: list[str], window_stride: int, augment: bool, reuse: bool = False):
    """The calibration model of a model trained on `seqs` minus `exclude`, and what to fit on.

    `exclude` are the evaluation identities: they are dropped first, before anything is trained or fitted,
    so neither the calibration model nor anything fitted with it can depend on them. Of the rest, a model
    with the same recipe is trained into `out_dir` without the `calib` identities (`reuse` loads one already
    there). Returns (model, the non-overlapping windows of `calib`: faces that model never saw, as the
    shipped model's users' faces are, the windows of the identities it was trained on).
    """
    from vmt.keypoints.data import make_windows, split_by_identity

    if set(calib) & set(exclude):
        raise VmtUsageError(f"calibration identities {sorted(set(calib) & set(exclude))} are evaluation "
                            "identities; calibrate on identities the evaluation never uses")
    rest = split_by_identity(seqs, exclude)[0] if exclude else seqs
    inner, held = split_by_identity(rest, calib)
    length = cfg.context + cfg.horizon
    windows = make_windows(held, length, length, cfg.frame_step)[0]
    if not len(windows):
        raise VmtUsageError(f"calibration identities {calib} have no {length}-frame window")
    if not (reuse and (Path(out_dir) / "model.safetensors").is_file()):
        icfg, raw, transform = prepare_training(replace(cfg, shrink=None, velocity_gain=None, damping=None),
                                                inner.flat, window_stride, augment)
        fit(icfg, tc, raw, None, out_dir, transform=transform,
            info={"calibration_model": True, "train_sequences": inner.names, "calib_identities": calib})
    model, _ = load_model(out_dir)
    return model, windows, make_windows(inner, length, length, cfg.frame_step)[0]


def calibrate_shrink(seqs, cfg: ModelConfig, tc: TrainConfig, out_dir: str | Path, *, exclude: list[str],
                     calib: list[str], window_stride: int, augment: bool, opts, seed: int = 0,
                     reuse: bool = False) -> list[float]:
    """Displacement shrinkage (`ModelConfig.shrink`) for a model trained on `seqs` minus `exclude`: factors
    fitted (`predict.fit_shrink`, samples' mean ADE) on the `calib` identities with a calibration model that
    never saw them nor `exclude` (see `calibration_model`). `seqs` is a `data.Sequences`."""
    from vmt.keypoints.predict import fit_shrink

    model, windows, _ = calibration_model(seqs, cfg, tc, out_dir, exclude=exclude, calib=calib,
                                          window_stride=window_stride, augment=augment, reuse=reuse)
    return fit_shrink(model, windows, cfg.context, opts, seed=seed)


def calibrate_blend(seqs, cfg: ModelConfig, tc: TrainConfig, out_dir: str | Path, *, exclude: list[str],
                    calib: list[str], window_stride: int, augment: bool, opts, seed: int = 0,
                    reuse: bool = False) -> dict:
    """Shrinkage and damped-velocity blend (`ModelConfig.shrink`, `velocity_gain`, `damping`) for a model
    trained on `seqs` minus `exclude`, with the calibration model of `calibrate_shrink`: the damping is chosen
    on that model's training identities, the per-step (shrink, gain) pairs (`predict.fit_blend`) on `calib`."""
    from vmt.keypoints.baselines import fit_damping
    from vmt.keypoints.predict import fit_blend

    model, windows, train_windows = calibration_model(seqs, cfg, tc, out_dir, exclude=exclude, calib=calib,
                                                      window_stride=window_stride, augment=augment, reuse=reuse)
    damping = fit_damping(train_windows, cfg.context)
    shrink, gains = fit_blend(model, windows, cfg.context, opts, damping, seed=seed)
    return {"shrink": shrink, "velocity_gain": gains, "damping": damping}
