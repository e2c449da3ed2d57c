"""GRU-NF: a GRU summarises the past frames; a conditional RealNVP models the next frame given that summary.

Leak-free conditioning: the flow density of frame x_t is conditioned on the GRU state after x_0..x_{t-1}
only (the public release conditioned x_t on a state that had already read x_t). The GRU prediction head
g_t = Linear(hidden -> dim)(h_{t-1}) is trained with MSE to x_t; GRU-SNF uses it as the MCMC anchor.
All tensors here are in the model's normalised space (`ModelConfig.param`, see `predict.encode_windows`):
'minmax' (the paper: each window min-max scaled by its context's statistics) or 'residual' (displacements
from the last observed frame divided by a fixed per-value scale fitted on the training data, so a flow that
outputs zero is the zero-velocity forecast).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from vmt.errors import VmtUsageError
from vmt.keypoints.data import Layout
from vmt.keypoints.flow import ConditionalRealNVP
from vmt.keypoints.mcmc import SNFRefiner

FORMAT = "vmt.keypoints.grunf/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class ModelConfig:
    """Architecture and data conventions; saved as config.json beside the weights."""

    num_kp: int = 10
    jacobian: bool = True
    context: int = 8
    horizon: int = 16
    hidden: int = 256          # paper: 512
    layers: int = 2            # paper: 3
    dropout: float = 0.2
    cond_dim: int = 16         # paper release: 1
    flow_hidden: int = 128     # paper: 512
    blocks: int = 5
    min_range: float = 0.05    # floor of the per-window min-max range, detector units
    frame_step: int = 1        # keep every n-th frame (the paper halves 25 fps; the shared data is 10 fps)
    head_weight: float = 1.0   # weight of the prediction head's MSE in the training loss
    extra: dict = field(default_factory=dict)
    param: str = "minmax"      # 'minmax' (paper) | 'residual' (displacement from the last observed frame)
    residual_scale: list[float] | None = None   # per value (dim,), detector units; 'residual' only
    rollout: bool = False      # train the future frames' conditions on the head's own fed-back predictions
    # Displacement shrinkage (calibration): forecast step h = last observed frame + shrink[h] * (model's
    # frame - last observed frame), in detector units; steps past the list use its last entry. None (or all
    # ones) is the model as trained, all zeros the zero-velocity forecast. Fitted by `predict.fit_shrink` on
    # windows of identities the model was not trained on, never on the ones it is evaluated on.
    shrink: list[float] | None = None
    # Damped-velocity blend (calibration, with `shrink`): forecast step h also adds velocity_gain[h] * v *
    # (damping + ... + damping^h), v the last observed velocity; steps past the list use its last entry.
    # shrink all zeros with gains all ones is the damped-velocity forecast. Fitted by `predict.fit_blend`.
    velocity_gain: list[float] | None = None
    damping: float | None = None

    @property
    def layout(self) -> Layout:
        return Layout(self.num_kp, self.jacobian)


@dataclass
class SampleOptions:
    """Sampling: N samples, feedback 'mean' (paper) or 'sample' (each sample its own trajectory), SNF chain."""

    samples: int = 100
    feedback: str = "mean"
    refine: bool = False
    mcmc_steps: int = 2
    step_size: float = 0.35
    elementwise: bool = True
    temperature: float = 1.0   # scale of the base noise u ~ N(0, temperature^2 I); 1 is the model's density


class GRUNF(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.layout.dim
        self.gru = nn.GRU(d, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.cond = nn.Linear(cfg.hidden, cfg.cond_dim)
        self.head = nn.Linear(cfg.hidden, d)
        self.flow = ConditionalRealNVP(d, cfg.cond_dim, cfg.flow_hidden, cfg.blocks)
        if cfg.param == "residual":
            # Start as the zero-velocity forecast: the head predicts zero displacement and every coupling is
            # the identity (zero scale and shift), so the flow's mean is the last observed frame until trained.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            for layer in self.flow.layers[::2]:
                for net in (layer.scale_net, layer.shift_net):
                    nn.init.zeros_(net[-1].weight)
                    nn.init.zeros_(net[-1].bias)

    @property
    def dim(self) -> int:
        return self.cfg.layout.dim

    def states(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, dim) -> (B, L-1, hidden): entry t is the last layer's state after x_0..x_t, which
        conditions x_{t+1}."""
        out, _ = self.gru(x[:, :-1])
        return out

    def conditions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) -> (B, L-1, cond_dim): the condition of frames 1..L-1."""
        return self.cond(self.states(x))

    def rollout_states(self, x: torch.Tensor) -> torch.Tensor:
        """Like `states`, but after the context the GRU reads the head's own (detached) predictions instead of
        the true frames: the inputs it gets when sampling feeds back the samples' mean."""
        c = self.cfg.context
        out, h = self.gru(x[:, :c])
        last, conds = out[:, -1], [out[:, :-1]]
        for _ in range(x.shape[1] - 1 - c):
            conds.append(last[:, None])
            step, h = self.gru(self.head(last).detach()[:, None], h)
            last = step[:, 0]
        conds.append(last[:, None])
        return torch.cat(conds, dim=1)

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """NLL (nats per frame) of frames 1..L-1 and the head's MSE, both scalars; teacher-forced, or with
        `cfg.rollout` conditioned on the head's fed-back predictions after the context."""
        h = self.rollout_states(x) if self.cfg.rollout and x.shape[1] > self.cfg.context else self.states(x)
        target = x[:, 1:].reshape(-1, self.dim)
        nll = -self.flow.log_prob(target, self.cond(h).reshape(-1, self.cfg.cond_dim)).mean()
        mse = ((self.head(h).reshape(-1, self.dim) - target) ** 2).mean()
        return nll, mse

    @torch.no_grad()
    def sample(self, context: torch.Tensor, horizon: int, opts: SampleOptions,
               generator: torch.Generator | None = None, stats: dict | None = None) -> torch.Tensor:
        """context (B, C, dim) -> (B, N, horizon, dim) samples, autoregressively.

        feedback='mean' feeds the mean of the N samples back into one shared GRU state per window (the
        paper); 'sample' gives each sample its own GRU state. With opts.refine, each block's inverse is
        followed by an MH stage on exp(-E_k) (GRU-SNF). `stats`, if given, collects acceptance rates.
        """
        if opts.feedback not in ("mean", "sample"):
            raise VmtUsageError(f"feedback must be 'mean' or 'sample', got {opts.feedback!r}")
        b, n, d = context.shape[0], opts.samples, self.dim
        _, h = self.gru(context)                       # (layers, B, hidden)
        if opts.feedback == "sample":
            h = h.repeat_interleave(n, dim=1)          # (layers, B*N, hidden)
        outs = []
        for _ in range(horizon):
            last = h[-1] if opts.feedback == "sample" else h[-1].repeat_interleave(n, dim=0)
            cond, g = self.cond(last), self.head(last)
            u = opts.temperature * torch.randn((b * n, d), generator=generator, dtype=context.dtype).to(context.device)
            hook = None
            if opts.refine:
                hook = SNFRefiner(g, self.flow.num_blocks, steps=opts.mcmc_steps, step_size=opts.step_size,
                                  elementwise=opts.elementwise, generator=generator)
            x = self.flow.inverse(u, cond, hook)       # (B*N, dim)
            if stats is not None and hook is not None:
                stats.setdefault("acceptance", []).extend(hook.acceptance)
            outs.append(x.view(b, n, d))
            feed = x[:, None] if opts.feedback == "sample" else x.view(b, n, d).mean(1)[:, None]
            _, h = self.gru(feed, h)
        return torch.stack(outs, dim=2)


def save_model(model: GRUNF, folder: str | Path, weights_name: str = WEIGHTS_FILE, info: dict | None = None) -> Path:
    """Write weights (safetensors) and config.json (architecture, layout, training info) into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / f".{weights_name}.part"
    save_file(tensors, str(tmp))
    tmp.replace(folder / weights_name)
    doc = {"format": FORMAT, "config": asdict(model.cfg), **(info or {})}
    tmpc = folder / f".{CONFIG_FILE}.part"
    tmpc.write_text(json.dumps(doc, indent=2) + "\n")
    tmpc.replace(folder / CONFIG_FILE)
    return folder


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise VmtUsageError(f"model directory {folder} not found; train one with `vmt predict-keypoints train`")
    if not path.is_file():
        raise VmtUsageError(f"{folder} has no {CONFIG_FILE}; it is not a predict-keypoints model directory")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VmtUsageError(f"{path} is not valid JSON: {e}") from e
    if doc.get("format") != FORMAT:
        raise VmtUsageError(f"{folder} holds a {doc.get('format')!r} model, not {FORMAT!r}; "
                            "pass a directory written by `vmt predict-keypoints train`")
    return doc


def load_model(folder: str | Path, weights_name: str = WEIGHTS_FILE) -> tuple[GRUNF, dict]:
    """Load a model directory; returns the model in eval mode and the config document."""
    from safetensors.torch import load_file

    doc = read_config(folder)
    cfg = ModelConfig(**doc["config"])
    if cfg.param not in ("minmax", "residual") or (cfg.param == "residual" and cfg.residual_scale is None):
        raise VmtUsageError(f"{folder}/{CONFIG_FILE}: param {cfg.param!r} needs to be 'minmax' or 'residual' "
                            "(with residual_scale); retrain the model")
    if cfg.shrink is not None and (not cfg.shrink or not all(0.0 <= a <= 1.0 for a in cfg.shrink)):
        raise VmtUsageError(f"{folder}/{CONFIG_FILE}: shrink needs to be a non-empty list of factors in [0, 1], "
                            f"got {cfg.shrink!r}")
    if cfg.velocity_gain is not None and (
            not cfg.velocity_gain or not all(0.0 <= a <= 1.0 for a in cfg.velocity_gain)
            or cfg.damping is None or not 0.0 <= cfg.damping <= 1.0):
        raise VmtUsageError(f"{folder}/{CONFIG_FILE}: velocity_gain needs to be a non-empty list of factors in "
                            f"[0, 1] with a damping in [0, 1], got {cfg.velocity_gain!r} and {cfg.damping!r}")
    model = GRUNF(cfg)
    wpath = Path(folder) / weights_name
    if not wpath.is_file():
        raise VmtUsageError(f"{folder} has no {weights_name}; the training run did not finish a checkpoint")
    state = load_file(str(wpath))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VmtUsageError(f"{wpath} does not match its config.json (missing {len(missing)}, unexpected "
                            f"{len(unexpected)} tensors); retrain or restore the directory")
    model.eval()
    return model, doc


def check_layout(cfg: ModelConfig, layout: Layout, where: str) -> None:
    """The model and the keypoint file must agree on K and on jacobians."""
    if cfg.layout != layout:
        raise VmtUsageError(f"the model expects {cfg.layout.describe()} but {where} has {layout.describe()}; "
                            "use a model trained on this keypoint layout")
