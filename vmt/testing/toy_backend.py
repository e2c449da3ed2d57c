"""A second FlowBackend in pure torch: a tiny attention velocity net, a linear latent codec, its own grids.

It implements the protocols of `vmt.backends.base` (Denoiser, LatentCodec, AttentionAccess) and imports
nothing of `vmt.backends.wan` or diffusers' pipelines, so tests run `generate()`, Predict-and-Perturb and
`transfer()` on it to show that the protocols are all the loop needs. Its weights are random (seeded): the
velocity is no trained model's, but it is an ordinary nonlinear function of (latent, timestep, text) that a
test can evaluate itself, in float64, through `ToyVelocityNet`.

    backend = ToyFlowBackend()
    result = generate(backend, GenerationRequest(prompt="a dot", num_frames=3, height=8, width=8, steps=4))
    result.frames.shape  # (3, 8, 8, 3) uint8

Geometry: a latent cell is SCALE x SCALE pixels of one frame (frames map to latent frames one to one); the
token grid is the latent grid (patch 1). Latents are C = `channels` linear mixtures of RGB in [-1, 1] divided
by RGB_STD (orthonormal columns, so decode inverts encode on block-constant frames).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from vmt.backends.base import CFG_RULES, ComputeCounts, Conditioning
from vmt.errors import VmtUsageError

SCALE = 2  # pixels per latent cell along each side
RGB_STD = 0.4  # a unit latent decodes to RGB of this size (so noise-like latents mostly stay within [-1, 1])


class ToyBlock(nn.Module):
    """Multi-head self-attention over tokens (B, S, W) with a residual, then a residual tanh MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Linear(width, width)

    def qkv_heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, S, H, D) of tokens h (B, S, W)."""
        b, s, _ = h.shape
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        return tuple(x.reshape(b, s, self.heads, -1) for x in (q, k, v))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = (x.transpose(1, 2) for x in self.qkv_heads(h))  # (B, H, S, D)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        h = h + self.proj(att.transpose(1, 2).flatten(2))
        return h + torch.tanh(self.mlp(h))


class ToyVelocityNet(nn.Module):
    """v(z, t, text): latent z (B, C, F, h, w), t the timestep / num_train_timesteps (0-dim or (B,)), text
    features (B, L, D) -> velocity (B, C, F, h, w). Tokens are the latent cells in (F, h, w) order."""

    def __init__(self, channels: int = 4, width: int = 16, heads: int = 2, text_dim: int = 8, blocks: int = 2,
                 seed: int = 0):
        super().__init__()
        self.inp = nn.Linear(channels, width)
        self.cond = nn.Linear(text_dim + 2, width)
        self.blocks = nn.ModuleList(ToyBlock(width, heads) for _ in range(blocks))
        self.out = nn.Linear(width, channels)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in) * (1.0 if p.dim() > 1 else 0.1))
            self.out.weight.mul_(0.3)  # velocities of order one under CFG 5

    def embed(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Tokens (B, S, W): the latent cells' projection plus an embedding of (text mean, t, sin 3t)."""
        b = z.shape[0]
        tt = torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(-1, 1).expand(b, 1)
        e = torch.cat([text.to(z.dtype).mean(1).expand(b, -1), tt, torch.sin(3 * tt)], dim=-1)
        return self.inp(z.flatten(2).transpose(1, 2)) + self.cond(e)[:, None, :]

    def forward(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.embed(z, t, text)
        for block in self.blocks:
            h = block(h)
        return self.out(h).transpose(1, 2).reshape(z.shape)

    def qk(self, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor, block: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention q, k (B, S, H, D) of `block`, running blocks 0..block-1 and stopping there."""
        h = self.embed(z, t, text)
        for b in self.blocks[:block]:
            h = b(h)
        q, k, _ = self.blocks[block].qkv_heads(h)
        return q, k


class ToyFlowBackend:
    """A FlowBackend (vmt.backends.base) over ToyVelocityNet, on `device` in `dtype`.

    CFG: on iff guidance_scale > 1 (one expert, so both CFG rules agree); both branches run as one batch.
    Grids: "euler" is diffusers' FlowMatchEuler grid (timesteps 1000 * sigma); "model", the toy's own, is the
    same sigmas fed as integer timesteps round(1000 * sigma) (as Wan folders' UniPC feeds integers), and
    `strength` < 1 keeps its last int(steps * strength) steps. Image conditioning pastes the image's latent
    into the first latent frame (in the model input and in `finalize`), as Wan2.2 TI2V does.
    """

    num_train_timesteps = 1000

    def __init__(self, channels: int = 4, blocks: int = 2, heads: int = 2, width: int = 16, text_dim: int = 8,
                 seed: int = 0, shift: float = 3.0, is_i2v: bool = False, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.model_id = f"toy-flow-c{channels}-b{blocks}-s{seed}"
        self.device = torch.device(device)
        self.dtype = dtype
        self.counts = ComputeCounts()
        self.is_i2v = is_i2v
        self.default_shift = float(shift)
        self.channels, self.blocks, self.text_dim, self.seed = channels, blocks, text_dim, seed
        self.net = ToyVelocityNet(channels, width, heads, text_dim, blocks, seed).to(self.device, dtype)
        g = torch.Generator().manual_seed(seed + 1)
        # orthonormal columns: encode (C x 3) @ rgb, decode its transpose @ z
        self.codec = torch.linalg.qr(torch.randn(channels, 3, generator=g, dtype=torch.float64))[0].float()
        self.text_table = torch.randn(256, text_dim, generator=g)

    # ------------------------------------------------------------------ Denoiser
    @property
    def execution_device(self) -> torch.device:
        return self.device

    def describe(self) -> dict:
        return {"id": self.model_id, "backend": "toy", "channels": self.channels, "blocks": self.blocks,
                "seed": self.seed, "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device)}

    def text_features(self, text: str) -> torch.Tensor:
        """(1, 1, D): the mean of a fixed random vector per UTF-8 byte (zeros for the empty text)."""
        data = list(text.encode("utf-8"))
        if not data:
            return torch.zeros(1, 1, self.text_dim)
        return self.text_table[torch.tensor(data)].mean(0).view(1, 1, -1)

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 5.0,
                      guidance_scale_2: float | None = None, cfg_rule: str = "diffusers") -> Conditioning:
        if guidance_scale_2 is not None:
            raise VmtUsageError("--guidance-scale-2 applies only to two-expert models; the toy has one")
        if cfg_rule not in CFG_RULES:
            raise VmtUsageError(f"--cfg-rule {cfg_rule!r}: use one of {', '.join(CFG_RULES)}")
        dev = self.device
        pos = self.text_features(prompt).to(dev, self.dtype)
        neg = self.text_features(negative_prompt).to(dev, self.dtype) if guidance_scale > 1.0 else None
        return Conditioning(pos, neg, guidance_scale=guidance_scale, cfg_rule=cfg_rule)

    def schedule(self, steps: int, shift: float | None = None, grid: str = "model", strength: float = 1.0):
        from vmt.sampling.sigmas import GRIDS, Schedule, flow_sigmas

        if grid not in GRIDS:
            raise VmtUsageError(f"--grid {grid!r}: use one of {', '.join(GRIDS)}")
        sigmas = flow_sigmas(steps, self.default_shift if shift is None else shift, self.num_train_timesteps)
        if grid == "euler":
            return Schedule(sigmas, None, "euler")
        timesteps = (sigmas[:-1].double() * self.num_train_timesteps).round().long()
        start = steps - min(int(steps * strength), steps) if strength < 1.0 else 0
        return Schedule(sigmas[start:], timesteps[start:], "model")

    def _input(self, z: torch.Tensor, sigma, cond: Conditioning, timestep) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent with any given first frame pasted in, in the net's dtype; t = timestep / N)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        t = sigma * self.num_train_timesteps if timestep is None else torch.as_tensor(timestep)
        t = (t.to(torch.float64) / self.num_train_timesteps).to(z.device, self.dtype)
        if cond.first_frame_mask is not None:
            m = cond.first_frame_mask
            z = (1 - m) * cond.latent_condition + m * z
        return z.to(self.dtype), t

    def velocity(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 timestep: torch.Tensor | None = None, upcast: bool = True) -> torch.Tensor:
        x, t = self._input(z, sigma, cond, timestep)
        self.counts.nfe += 1
        if cond.negative_embeds is None:
            self.counts.dit_forward += 1
            v = self.net(x, t, cond.prompt_embeds)
        else:
            self.counts.dit_forward += 2
            v_c, v_u = self.net(torch.cat([x, x]), t,
                                torch.cat([cond.prompt_embeds, cond.negative_embeds])).chunk(2)
            v = v_u + cond.guidance_scale * (v_c - v_u)
        return v.float() if upcast else v

    # ------------------------------------------------------------------ LatentCodec
    def check_size(self, num_frames: int, height: int, width: int) -> None:
        if num_frames < 1:
            raise VmtUsageError(f"--num-frames {num_frames} must be >= 1")
        for name, v in (("--height", height), ("--width", width)):
            if v < SCALE or v % SCALE:
                lo = max(SCALE, v // SCALE * SCALE)
                raise VmtUsageError(f"{name} {v} must be a multiple of {SCALE}; use {lo} or {lo + SCALE}")

    def latent_shape(self, num_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        return (batch, self.channels, num_frames, height // SCALE, width // SCALE)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (num_frames, height // SCALE, width // SCALE)

    def condition_on_image(self, cond: Conditioning, image: np.ndarray, num_frames: int, height: int,
                           width: int, clip_image: np.ndarray | None = None) -> Conditioning:
        if image.shape[:2] != (height, width):
            raise VmtUsageError(f"image is {image.shape[1]}x{image.shape[0]}, expected {width}x{height}")
        first = self.encode_video(image[None])  # (1, C, 1, h, w)
        shape = self.latent_shape(num_frames, height, width)
        given = torch.zeros(shape, device=self.device).index_copy(2, torch.tensor([0], device=self.device), first)
        mask = torch.ones((1, 1, *shape[2:]), device=self.device)
        mask[:, :, 0] = 0
        return cond.with_(latent_condition=given, first_frame_mask=mask)

    def first_frame_latent(self, cond: Conditioning) -> torch.Tensor:
        return cond.latent_condition[:, :, :1].float()

    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)  # (T, H, W, 3)
        x = nn.functional.avg_pool3d(x.permute(3, 0, 1, 2)[None], (1, SCALE, SCALE))  # (1, 3, T, h, w)
        return (torch.einsum("cr,brfhw->bcfhw", self.codec, x) / RGB_STD).to(self.device)

    def finalize(self, z: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if cond.first_frame_mask is None:
            return z
        m = cond.first_frame_mask
        return (1 - m) * cond.latent_condition + m * z

    def decode(self, z: torch.Tensor) -> np.ndarray:
        rgb = RGB_STD * torch.einsum("cr,bcfhw->brfhw", self.codec.to(z.device), z.float())[0]  # (3, F, h, w)
        rgb = rgb.repeat_interleave(SCALE, 2).repeat_interleave(SCALE, 3)
        return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()

    # ------------------------------------------------------------------ AttentionAccess
    def check_block(self, block: int) -> None:
        n = self.blocks
        if not 0 <= block < n:
            raise VmtUsageError(f"--block {block} is out of range: this model has {n} blocks; use 0..{n - 1}")

    def capture_qk(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, block: int, *,
                   timestep: torch.Tensor | None = None, stop: bool = True, backward: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k of `block` from a forward that always stops there (later blocks cannot change them)."""
        x, t = self._input(z, sigma, cond, timestep)
        self.counts.dit_forward += 1
        self.counts.dit_backward += int(backward)
        return self.net.qk(x, t, cond.prompt_embeds, block)

    def guided_attention(self) -> str | None:
        return None  # plain torch attention has a backward

    @contextmanager
    def frozen(self):
        flags = [(p, p.requires_grad) for p in self.net.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p, f in flags:
                p.requires_grad_(f)
