"""Motion guidance as an intervention of the Euler loop: optimise the latent so its AMF matches the reference's.

At each of the first `guided_steps` outer steps (sigma s):
  1. reference AMF: the reference latent re-noised to s with a fixed noise, z_ref_s = (1 - s) z_ref + s eps',
     through the DiT with the empty prompt, no gradients (FastVMT); or once from the clean latent (DiTFlow);
  2. `inner_steps` of AdamW (fresh each outer step) on the latent z itself, with the learning rate
     linear from lr to lr_end across the inner steps (FastVMT, `lr_decay="inner"`) or constant within a step
     and linear across the guided steps (DiTFlow, `lr_decay="outer"`),
     loss = amf_weight * L_AMF + window_weight * L_window (FastVMT) or DiTFlow's masked MSE;
     gradient reuse: the DiT runs forward+backward only every `reuse_interval` inner steps, the steps in
     between reuse the cached gradient;
then the loop takes its ordinary CFG velocity and Euler step from the optimised latent.
Guided forwards stop after the capture block (`truncate`): later blocks cannot change its q/k.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from vmt.errors import Note, VmtUsageError, param
from vmt.motion.amf import all_pairs, global_amf, window_pairs, windowed_amf
from vmt.motion.capture import HEAD_MODES, reduce_heads
from vmt.motion.losses import distance_weights, masked_amf_loss, weighted_amf_loss, window_consistency_loss
from vmt.sampling.euler import Intervention, StepState, VelocityFn

if TYPE_CHECKING:
    from vmt.backends.base import AttentionAccess

AMF_MODES = ("windowed", "global")
LOSSES = ("fastvmt", "ditflow")
REF_MODES = ("per-step", "clean")
OPTIMIZERS = ("adamw", "adam")
LR_DECAYS = ("inner", "outer")


@dataclass
class GuidanceConfig:
    """Every parameter of the guidance, with FastVMT's published defaults (Wan2.1-T2V-1.3B)."""

    amf: str = "windowed"
    block: int = 14
    span: int = 4
    tile: tuple[int, int] = (3, 4)
    window: int = 21
    temperature: float = 1.0
    head_mode: str = "qk"
    guided_steps: int = 10
    inner_steps: int = 10
    reuse_interval: int = 3
    lr: float = 3e-3
    lr_end: float = 2.1e-3
    lr_decay: str = "inner"
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    loss: str = "fastvmt"
    amf_weight: float = 5.0
    window_weight: float = 1.0
    ref_argmax: bool = False
    ref_amf: str = "per-step"
    truncate: bool = True
    chunk: int = 8

    def __post_init__(self) -> None:
        self.validate()  # once, where the configuration is made: every holder of one has a valid one

    def validate(self) -> None:
        """Raise VmtUsageError naming the option and its valid range."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise VmtUsageError(msg)

        need(self.amf in AMF_MODES, f"{param('amf')} {self.amf!r}: use one of {', '.join(AMF_MODES)}")
        need(self.loss in LOSSES, f"{param('loss')} {self.loss!r}: use one of {', '.join(LOSSES)}")
        need(self.ref_amf in REF_MODES, f"{param('ref_amf')} {self.ref_amf!r}: use one of {', '.join(REF_MODES)}")
        need(self.lr_decay in LR_DECAYS, f"{param('lr_decay')} {self.lr_decay!r}: use one of {', '.join(LR_DECAYS)}")
        need(self.optimizer in OPTIMIZERS, f"{param('optimizer')} {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        need(self.head_mode in HEAD_MODES, f"{param('head_mode')} {self.head_mode!r}: use one of {', '.join(HEAD_MODES)}")
        need(self.span >= 1, f"{param('span')} must be >= 1, got {self.span}")
        need(self.window >= 1, f"{param('window')} must be >= 1, got {self.window}")
        need(self.tile[0] >= 1 and self.tile[1] >= 1, f"{param('tile')} must be positive, got {self.tile}")
        need(self.temperature > 0, f"{param('temperature')} must be positive, got {self.temperature}")
        need(self.guided_steps >= 0, f"{param('guided_steps')} must be >= 0, got {self.guided_steps}")
        need(self.inner_steps >= 1, f"{param('inner_steps')} must be >= 1, got {self.inner_steps}")
        need(self.reuse_interval >= 1, f"{param('reuse_interval')} must be >= 1, got {self.reuse_interval}")
        need(self.lr > 0 and self.lr_end >= 0, f"{param('lr')} must be > 0 and {param('lr_end')} >= 0, got {self.lr}, {self.lr_end}")
        need(self.block >= 0, f"{param('block')} must be >= 0, got {self.block}")

    def check_grid(self, grid: tuple[int, int, int], size: tuple[int, int] | None = None) -> None:
        """Raise VmtUsageError if the (F, h, w) token grid has too few frames for motion. A window or tile
        larger than the grid is not an error: `fit_grid` clamps it."""
        f = grid[0]
        if f < 2:
            raise VmtUsageError(f"the clip has {f} latent frame{'s' * (f != 1)}; motion transfer needs >= 2 "
                                "(at least 5 video frames)")

    def fit_grid(self, grid: tuple[int, int, int], size: tuple[int, int] | None = None
                 ) -> tuple[GuidanceConfig, list[str]]:
        """The configuration that runs on the (F, h, w) token grid, and one vmt.errors.Note per clamped value.

        The window side is clamped to min(h, w) and the tile to (min(th, h), min(tw, w)): the published
        defaults (window 21, tiles 3x4) are sized for the 30x52 grid of 480x832 and must not make smaller
        outputs fail. A window as large as the grid is the global AMF for that pair (every key of frame j).
        """
        self.check_grid(grid, size)
        _, h, w = grid
        if self.amf != "windowed":
            return self, []
        where = f" (output {size[1]}x{size[0]} px)" if size else ""
        notes = []
        window = min(self.window, h, w)
        if window != self.window:
            notes.append(Note(f"{param('window')} {self.window} is larger than the {h}x{w} token grid{where}; "
                              f"using {window}"))
        tile = (min(self.tile[0], h), min(self.tile[1], w))
        if tile != tuple(self.tile):
            notes.append(Note(f"{param('tile')} {self.tile[0]}x{self.tile[1]} is larger than the {h}x{w} token grid"
                              f"{where}; using {tile[0]}x{tile[1]}"))
        if not notes:
            return self, []
        return replace(self, window=window, tile=tile), notes

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tile"] = f"{self.tile[0]}x{self.tile[1]}"
        return d


def lr_schedule(lr: float, lr_end: float, steps: int) -> list[float]:
    """Linear from lr (first inner step) to lr_end (last)."""
    if steps == 1:
        return [lr]
    return [lr + (lr_end - lr) * k / (steps - 1) for k in range(steps)]


def step_lrs(cfg: GuidanceConfig, guided_index: int) -> tuple[float, float]:
    """(first, last) inner-step learning rate of guided step `guided_index` (0-based).

    "inner" (FastVMT): lr -> lr_end across the inner steps, restarted at every guided step.
    "outer" (DiTFlow): constant within a step; across the guided steps g = 0..G-1 it is
    lr + (lr_end - lr) * g / G, DiTFlow's linspace(lr, lr_end, G + 1)[g] (its guidance range 50 -> 40 holds
    G + 1 = 11 timesteps of which the first G = 10 are guided, so lr_end itself is never used).
    """
    if cfg.lr_decay == "outer":
        a = cfg.lr + (cfg.lr_end - cfg.lr) * guided_index / max(cfg.guided_steps, 1)
        return a, a
    return cfg.lr, cfg.lr_end


@dataclass
class OptimResult:
    z: torch.Tensor
    losses: list[float]  # loss at each evaluated inner step, before that step's update
    evaluated: list[int]  # inner steps where the loss and gradient were computed
    extra: list[dict] = field(default_factory=list)  # what loss_fn reported at each evaluation
    lrs: list[float] = field(default_factory=list)  # the learning rate each inner step ran with


def optimise_latent(
    z0: torch.Tensor, loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict]], *, inner_steps: int,
    lr: float, lr_end: float, reuse_interval: int = 1, optimizer: str = "adamw", weight_decay: float = 0.01,
) -> OptimResult:
    """Optimise a copy of z0 with AdamW/Adam (betas 0.9/0.999, eps 1e-8), a fresh optimiser, linear lr.

    loss_fn(z) -> (scalar loss, info) is evaluated (forward + backward) at inner steps 0, r, 2r, ...
    (r = reuse_interval); the steps between reuse the last gradient. r = 1 is full recomputation.
    """
    z = z0.detach().clone().requires_grad_(True)
    if optimizer == "adamw":
        opt = torch.optim.AdamW([z], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam([z], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    else:
        raise VmtUsageError(f"{param('optimizer')} {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    lrs = lr_schedule(lr, lr_end, inner_steps)
    losses: list[float] = []
    evaluated: list[int] = []
    extra: list[dict] = []
    used: list[float] = []
    grad: torch.Tensor | None = None
    for step in range(inner_steps):
        if step % reuse_interval == 0:
            with torch.enable_grad():
                loss, info = loss_fn(z)
                (grad,) = torch.autograd.grad(loss, [z])
            losses.append(float(loss.detach()))
            evaluated.append(step)
            extra.append(info)
        for group in opt.param_groups:
            group["lr"] = lrs[step]
        z.grad = grad.clone()
        opt.step()
        used.append(float(opt.param_groups[0]["lr"]))
    return OptimResult(z.detach(), losses, evaluated, extra, used)


def compute_amf(qk_q: torch.Tensor, qk_k: torch.Tensor, scale: float, cfg: GuidanceConfig, hard: bool = False):
    """AMF of one latent's (F, h, w, D) q/k under cfg: (flow (P, S, 2), pairs, window_keys or None, at_border)."""
    if cfg.amf == "windowed" and not hard:
        r = windowed_amf(qk_q, qk_k, span=cfg.span, tile=cfg.tile, window=cfg.window, scale=scale, chunk=cfg.chunk)
        return r.flow, r.pairs, r.window_keys, r.at_border
    f = qk_q.shape[0]
    pairs = window_pairs(f, cfg.span, qk_q.device) if cfg.amf == "windowed" else all_pairs(f, qk_q.device)
    flow = global_amf(qk_q, qk_k, pairs, scale=scale, hard=hard, chunk=cfg.chunk)
    return flow, pairs, None, None


class MotionGuidance(Intervention):
    """The intervention (a `before_step`), on any backend with attention access (vmt.backends.base.
    AttentionAccess: `check_block`, `capture_qk`, `frozen`).

    z_ref: (1, C, F, h, w) normalised reference latent. cond: the prompt's conditioning (the guided forward
    uses its positive branch only). cond_ref: the empty prompt's. ref_noise: eps' for the re-noised reference
    (fixed across steps). grid: (F, h, w) token grid. timer: optional vmt.runtime.Timer (stages
    "reference_amf" and "guidance"). Per guided step it records `state.record["guidance"]` and `history`.
    references: the reference AMFs already computed (vmt.motion.cache), one per guided step (one in all for
    a clean reference); None: computed here, their DiT forward passes counted in `reference_passes` (from
    the backend's counter) and, with `keep_references`, kept in `computed` (on CPU) for the cache to store.
    """

    name = "motion_guidance"

    def __init__(self, backend: AttentionAccess, cfg: GuidanceConfig, z_ref: torch.Tensor, cond, cond_ref,
                 ref_noise: torch.Tensor, grid: tuple[int, int, int], timer=None,
                 timestep_of: Callable | None = None, references: list[torch.Tensor] | None = None,
                 keep_references: bool = False):
        cfg, self.adjustments = cfg.fit_grid(grid)  # what runs: window and tile clamped to the grid
        self.backend, self.cfg = backend, cfg
        self.z_ref, self.cond, self.cond_ref, self.ref_noise = z_ref, cond, cond_ref, ref_noise
        self.grid = grid
        self.timer = timer
        self.timestep_of = timestep_of  # sigma -> the transformer's timestep (model grid); None: 1000 * sigma
        self.references, self.keep_references = references, keep_references
        self.reset()
        backend.check_block(cfg.block)  # every expert that can run a guided step must have the block

    def reset(self) -> None:
        """A fresh run: no history, and a clean reference AMF computed again (its passes are counted)."""
        self.history: list[dict] = []
        self._clean_ref = None
        self.computed: list[torch.Tensor] = []
        self.reference_passes = 0

    def _stage(self, name: str):
        if self.timer is None:
            from contextlib import nullcontext

            return nullcontext()
        return self.timer.stage(name)

    def _qk(self, z: torch.Tensor, sigma: torch.Tensor, cond, backward: bool):
        """Capture (head-reduced) q/k of latent z at sigma through the backend (it counts its passes)."""
        t = None if self.timestep_of is None else self.timestep_of(sigma)
        q, k = self.backend.capture_qk(z, sigma, cond, self.cfg.block, timestep=t, stop=self.cfg.truncate,
                                       backward=backward)
        r = reduce_heads(q, k, self.grid, self.cfg.head_mode, self.cfg.temperature)
        return r.q[0], r.k[0], r.scale

    @torch.no_grad()
    def reference_amf(self, sigma: torch.Tensor) -> torch.Tensor:
        """The reference AMF at this step (detached): (P, S, 2)."""
        if self.cfg.ref_amf == "clean":
            if self._clean_ref is None:
                q, k, scale = self._qk(self.z_ref, torch.tensor(0.0), self.cond_ref, backward=False)
                self._clean_ref = compute_amf(q, k, scale, self.cfg, hard=self.cfg.ref_argmax)[0]
            return self._clean_ref
        s = float(sigma)
        z = (1 - s) * self.z_ref + s * self.ref_noise
        q, k, scale = self._qk(z, sigma, self.cond_ref, backward=False)
        return compute_amf(q, k, scale, self.cfg, hard=self.cfg.ref_argmax)[0]

    def _reference(self, state: StepState) -> torch.Tensor:
        """This guided step's reference AMF: given (`references`), or computed, counted and kept."""
        if self.references is not None:
            return self.references[0 if self.cfg.ref_amf == "clean" else state.index].to(state.z.device)
        before = self.backend.counts.dit_forward
        ref = self.reference_amf(state.sigma)
        self.reference_passes += self.backend.counts.dit_forward - before
        if self.keep_references and (self.cfg.ref_amf != "clean" or not self.computed):
            self.computed.append(ref.to("cpu"))
        return ref

    def loss(self, z: torch.Tensor, sigma: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The guidance loss of latent z against the reference AMF, and its parts."""
        q, k, scale = self._qk(z, sigma, self.cond, backward=True)
        flow, pairs, wkeys, border = compute_amf(q, k, scale, self.cfg)
        if self.cfg.loss == "ditflow":
            l_amf = masked_amf_loss(ref, flow)
            total, l_win = l_amf, None
        else:
            l_amf = weighted_amf_loss(ref, flow, distance_weights(pairs, self.cfg.span))
            total = self.cfg.amf_weight * l_amf
            l_win = None
            if wkeys is not None and self.cfg.window_weight:
                l_win = window_consistency_loss(wkeys, pairs)
                total = total + self.cfg.window_weight * l_win
        info = {"amf_loss": float(l_amf.detach())}
        if l_win is not None:
            info["window_loss"] = float(l_win.detach())
        if border is not None:
            info["at_border"] = round(float(border[pairs[:, 0] != pairs[:, 1]].float().mean()), 4) \
                if bool((pairs[:, 0] != pairs[:, 1]).any()) else 0.0
        return total, info

    def before_step(self, state: StepState, velocity: VelocityFn) -> torch.Tensor | None:
        cfg = self.cfg
        if state.index >= cfg.guided_steps:
            return None
        with self._stage("reference_amf"):
            ref = self._reference(state)
        lr, lr_end = step_lrs(cfg, state.index)
        with self._stage("guidance"), self.backend.frozen():
            res = optimise_latent(
                state.z, lambda z: self.loss(z, state.sigma, ref), inner_steps=cfg.inner_steps, lr=lr,
                lr_end=lr_end, reuse_interval=cfg.reuse_interval, optimizer=cfg.optimizer,
                weight_decay=cfg.weight_decay,
            )
        amf_losses = [e["amf_loss"] for e in res.extra]
        rec = {"amf_loss": amf_losses, "final_amf_loss": amf_losses[-1], "total_loss": res.losses,
               "evaluated_inner_steps": res.evaluated, "lr": [float(f"{v:.6g}") for v in res.lrs]}
        if "window_loss" in res.extra[-1]:
            rec["window_loss"] = [e["window_loss"] for e in res.extra]
        if "at_border" in res.extra[-1]:
            rec["at_border_fraction"] = res.extra[-1]["at_border"]
        state.record["guidance"] = rec
        self.history.append({"step": state.index, "sigma": float(state.sigma), **rec})
        return res.z

    def step_summary(self, state: StepState) -> dict[str, str]:
        """Display field "amf" on guided steps: the AMF loss before -> after the step's optimisation."""
        rec = state.record.get("guidance")
        if rec is None:
            return {}
        return {"amf": f"{rec['amf_loss'][0]:.4g}->{rec['final_amf_loss']:.4g}"}
