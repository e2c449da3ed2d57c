"""Wan2.1 / Wan2.2 (T2V, I2V, two-expert A14B, TI2V-5B) as a FlowBackend, over diffusers' own components.

The pipeline object is loaded with diffusers' `from_pretrained`; vmt uses its modules (text encoder,
transformer(s), VAE) and its prompt/image encoding, but runs its own sampling loop.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import json
from pathlib import Path

import numpy as np
import torch

from vmt.backends.base import CFG_RULES, ComputeCounts, Conditioning
from vmt.backends.loading import ResolvedModel, resolve_model
from vmt.errors import VmtError, VmtUsageError, param
from vmt.runtime import resolve_device, resolve_dtype

SUPPORTED_PIPELINES = ("WanPipeline", "WanImageToVideoPipeline")
OFFLOAD_MODES = ("none", "model", "sequential", "group")


@dataclass(frozen=True)
class WanLoadOptions:
    """How to load and place a Wan model.

    offload: "none" keeps everything on the device; "model" moves whole components to the GPU only while
    they run (text encoder, transformer, VAE: peak ~ the largest component); "sequential" streams every
    layer (smallest footprint, much slower); "group" keeps weights in CPU memory and moves one transformer
    block at a time (diffusers' group offloading; CUDA streams overlap the copies unless grad_checkpointing).
    vae_tiling decodes in spatial tiles (bounded VAE memory). batch_cfg evaluates the conditional and
    unconditional branches as one batch of two (faster on GPU, twice the activation memory of one branch).

    grad_checkpointing: guided forwards (transfer) keep only each block's input and recompute the block in
    the backward (same gradients; activation memory of one block instead of all run blocks; one more forward
    of the run blocks per backward). storage_dtype: "float8_e4m3fn" / "float8_e5m2" stores transformer
    weights in float8 and computes in `dtype` (layerwise casting; half the weight memory of bf16).
    attention_backend: a diffusers attention backend name (None: diffusers' default); guided passes switch
    to GUIDED_FALLBACK when it has no backward. compile: regional torch.compile of the transformer blocks
    (compile_backend: torch.compile's backend; "inductor" by default).
    """

    device: str = "auto"
    dtype: str = "auto"
    offload: str = "none"
    vae_tiling: bool = False
    revision: str | None = None
    batch_cfg: bool = True
    max_sequence_length: int = 512
    resolved: ResolvedModel | None = None  # from `inspect_model`, to resolve the folder only once
    grad_checkpointing: bool = True
    storage_dtype: str | None = None
    attention_backend: str | None = None
    compile: bool = False
    compile_backend: str = "inductor"
    loras: tuple[str, ...] = ()  # "PATH[:SCALE][@high|low|both]" (accel.LoraSpec)

    def validate(self) -> None:
        """Raise VmtUsageError for an unknown mode or name (no model needed: run before any loading)."""
        from vmt.backends.accel import check_attention_backend, storage_dtype

        if self.offload not in OFFLOAD_MODES:
            raise VmtUsageError(f"unknown {param('offload')} {self.offload!r}; use one of {', '.join(OFFLOAD_MODES)}")
        storage_dtype(self.storage_dtype)
        check_attention_backend(self.attention_backend)
        if self.loras:
            from vmt.backends.accel import LoraSpec, check_peft

            for spec in self.loras:
                LoraSpec.parse(spec)
            check_peft()


def _dtype_kwarg() -> str:
    """diffusers renamed `torch_dtype` to `dtype` in 0.40; use the name the installed version expects."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__) >= Version("0.40") else "torch_dtype"


def _to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.permute(3, 0, 1, 2).unsqueeze(0)


def _to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    x = ((video[0].float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


@dataclass(frozen=True)
class WanGeometry:
    """A Wan model's size rules, read from its config files alone (no weights): VAE factors, patch size,
    rotary-embedding length, number of transformer blocks. Checks a request before minutes of loading."""

    scale_temporal: int = 4
    scale_spatial: int = 8
    patch_size: tuple[int, int, int] = (1, 2, 2)
    rope_max_seq_len: int = 1024
    num_layers: int = 30
    is_i2v: bool = False  # a WanImageToVideoPipeline folder (model_index.json): it needs a first-frame image

    @classmethod
    def from_folder(cls, folder: str | Path) -> WanGeometry:
        folder = Path(folder)

        def config(name: str) -> dict:
            f = folder / name / "config.json"
            try:
                return json.loads(f.read_text()) if f.is_file() else {}
            except (OSError, json.JSONDecodeError) as e:
                raise VmtError(f"cannot read {f}: {e}") from e

        vae = config("vae")
        index = folder / "model_index.json"
        try:
            pipeline = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
        except (OSError, json.JSONDecodeError) as e:
            raise VmtError(f"cannot read {index}: {e}") from e
        experts = [c for c in (config("transformer"), config("transformer_2")) if c]
        tr = experts[0] if experts else {}
        return cls(
            scale_temporal=int(vae.get("scale_factor_temporal") or 4),
            scale_spatial=int(vae.get("scale_factor_spatial") or 8),
            patch_size=tuple(tr.get("patch_size") or (1, 2, 2)),
            rope_max_seq_len=int(tr.get("rope_max_seq_len") or 1024),
            # every expert that may run a guided step must have the block
            num_layers=min((int(c.get("num_layers") or 30) for c in experts), default=30),
            is_i2v=pipeline == "WanImageToVideoPipeline",
        )

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        """Frames 4k+1, sides multiples of VAE factor x patch, and every token axis within the rotary table."""
        st = self.scale_temporal
        if num_frames < 1 or (num_frames - 1) % st:
            lo = max(1, (num_frames - 1) // st * st + 1)
            raise VmtUsageError(f"{param('num_frames')} {num_frames} is not of the form {st}k+1; use {lo} or {lo + st}")
        mh, mw = self.scale_spatial * self.patch_size[1], self.scale_spatial * self.patch_size[2]
        for name, v, m in (("height", height, mh), ("width", width, mw)):
            if v < m or v % m:
                lo = max(m, v // m * m)
                raise VmtUsageError(f"{param(name)} {v} must be a multiple of {m}; use {lo} or {lo + m}")
        grid = self.token_grid(num_frames, height, width)
        limits = (("num_frames", num_frames, st * self.patch_size[0]), ("height", height, mh), ("width", width, mw))
        for (name, v, per_token), tokens in zip(limits, grid):
            if tokens > self.rope_max_seq_len:
                most = self.rope_max_seq_len * per_token + (1 if name == "num_frames" else 0) - per_token
                raise VmtUsageError(f"{param(name)} {v} gives {tokens} positions along that axis; this model's rotary "
                                    f"embedding covers {self.rope_max_seq_len} (rope_max_seq_len): use at most "
                                    f"{most}")

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(F, h, w) of the transformer's token grid for a video of this size."""
        f = (num_frames - 1) // self.scale_temporal + 1
        pt, ph, pw = self.patch_size
        return f // pt, height // self.scale_spatial // ph, width // self.scale_spatial // pw

    def check_block(self, block: int) -> None:
        """A 0-based transformer block index that exists in this model."""
        if not 0 <= block < self.num_layers:
            raise VmtUsageError(f"{param('block')} {block} is out of range: this model has {self.num_layers} blocks; use "
                                f"0..{self.num_layers - 1} (the release uses 14 of Wan2.1-1.3B's 30)")


def inspect_model(model: str, revision: str | None = None) -> tuple[ResolvedModel, WanGeometry]:
    """Resolve a Wan model (folder, or hub id through the cache) and read its geometry, loading no weights."""
    resolved = resolve_model(model, revision)
    if resolved.pipeline_class not in SUPPORTED_PIPELINES:
        raise VmtError(f"model {model!r} is a {resolved.pipeline_class}; the Wan backend loads "
                       f"{' or '.join(SUPPORTED_PIPELINES)} folders")
    return resolved, WanGeometry.from_folder(resolved.folder)


class WanBackend:
    """A diffusers Wan pipeline as a FlowBackend (vmt.backends.base: Denoiser, LatentCodec, AttentionAccess)."""

    def __init__(self, pipe, resolved: ResolvedModel | None, device: torch.device, dtype: torch.dtype,
                 options: WanLoadOptions = WanLoadOptions(), place: bool = False):
        """place: apply `options` (memory features, offload or move to `device`) to the pipeline; False
        leaves an in-memory pipeline as it is (tests and benchmarks that build one)."""
        self.pipe = pipe
        self.resolved = resolved
        self.model_id = resolved.model_id if resolved else type(pipe).__name__
        self.device = device
        self.dtype = dtype
        self.options = options
        self.counts = ComputeCounts()
        vae = pipe.vae
        self.scale_temporal = int(vae.config.scale_factor_temporal or 4)
        self.scale_spatial = int(vae.config.scale_factor_spatial or 8)
        self.latent_channels = int(vae.config.z_dim)
        main = pipe.transformer if pipe.transformer is not None else pipe.transformer_2
        self.patch_size = tuple(main.config.patch_size)
        self.is_i2v = type(pipe).__name__ == "WanImageToVideoPipeline"
        self.expand_timesteps = bool(pipe.config.get("expand_timesteps", False))
        self.boundary_ratio = pipe.config.get("boundary_ratio", None)
        self.num_train_timesteps = int(pipe.scheduler.config.get("num_train_timesteps", 1000))
        cfg = pipe.scheduler.config
        self.default_shift = float(cfg.get("flow_shift", None) or cfg.get("shift", None) or 1.0)
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._latents_mean, self._latents_std = mean, std
        self._checkpointing: dict[int, object] = {}  # id(transformer) -> accel.BlockCheckpointing
        self._guided_backend: tuple[str | None, str | None] | None = None  # (chosen, used in guided passes)
        self.loras: list[dict] = []  # loaded LoRA adapters (path, scale, expert, adapter name)
        if place:
            self.apply_options()

    def apply_options(self) -> None:
        """Apply the load options to the pipeline, in the order diffusers needs: LoRA adapters, float8 storage
        (both before any offload hooks), offload (or the move to the device), attention backend,
        checkpointing, compilation."""
        from vmt.backends import accel

        o, pipe, device = self.options, self.pipe, self.device
        o.validate()  # (from_pretrained refuses offload off CUDA; here "group" may onload to the CPU: tests)
        if o.loras:  # before float8 storage and offload hooks: PEFT wraps the plain linear layers
            self.loras = accel.load_loras(pipe, [accel.LoraSpec.parse(t) for t in o.loras])
        store = accel.storage_dtype(o.storage_dtype)
        if store is not None:
            for m in self._transformers():
                m.enable_layerwise_casting(storage_dtype=store, compute_dtype=self.dtype)
        if o.offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif o.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        elif o.offload == "group":
            # Streams prefetch the next block in forward order; checkpointing recomputes in reverse order.
            pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                      offload_type="block_level", num_blocks_per_group=1,
                                      use_stream=device.type == "cuda" and not o.grad_checkpointing)
        else:
            pipe.to(device)
        if o.attention_backend:
            for m in self._transformers():
                accel.set_attention_backend(m, o.attention_backend)
        if o.grad_checkpointing:
            for m in self._transformers():
                self._checkpointing[id(m)] = accel.enable_checkpointing(m)
        if o.compile:
            for m in self._transformers():
                accel.compile_blocks(m, o.compile_backend)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, model: str, options: WanLoadOptions = WanLoadOptions()) -> WanBackend:
        """Load a Wan model from a hub id (through the hub cache; HF_HUB_OFFLINE honoured) or a local folder."""
        from diffusers import DiffusionPipeline

        options.validate()
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        if options.offload != "none" and device.type != "cuda":
            raise VmtUsageError(f"{param('offload')} needs a CUDA device; on CPU everything is already in host memory")
        resolved = options.resolved or inspect_model(model, options.revision)[0]
        try:
            # The Wan VAE is kept in float32: its decode is visibly worse in half precision.
            pipe = DiffusionPipeline.from_pretrained(
                str(resolved.folder), **{_dtype_kwarg(): {"default": dtype, "vae": torch.float32}}
            )
        except Exception as e:
            raise VmtError(f"cannot load model {model!r} from {resolved.folder}: {type(e).__name__}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
        if options.vae_tiling:
            pipe.vae.enable_tiling()
        return cls(pipe, resolved, device, dtype, options, place=True)

    def describe(self) -> dict:
        """Provenance of the loaded model, for the JSON sidecar."""
        r = self.resolved
        out = {
            "id": self.model_id,
            "pipeline": type(self.pipe).__name__,
            "two_experts": self.pipe.transformer_2 is not None,
            "boundary_ratio": self.boundary_ratio,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            "offload": self.options.offload,
            "vae_tiling": self.options.vae_tiling,
            "grad_checkpointing": bool(self._checkpointing),
            "storage_dtype": self.options.storage_dtype,
            "compile": self.options.compile,
            "attention_backend": self.attention_backend(),
            "loras": self.loras,
        }
        if self._guided_backend is not None:
            out["guided_attention_backend"] = self._guided_backend[1] or self._guided_backend[0]
        if r is not None:
            out.update(source=r.source, folder=str(r.folder), revision=r.revision, fingerprint=r.fingerprint)
        return out

    # ------------------------------------------------------------------ geometry
    def latent_shape(self, num_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, ...]:
        f = (num_frames - 1) // self.scale_temporal + 1
        return (batch, self.latent_channels, f, height // self.scale_spatial, width // self.scale_spatial)

    @property
    def geometry(self) -> WanGeometry:
        experts = self._transformers()
        return WanGeometry(self.scale_temporal, self.scale_spatial, self.patch_size,
                           int(experts[0].config.get("rope_max_seq_len", 1024)),
                           min(int(m.config.num_layers) for m in experts))

    def check_size(self, num_frames: int, height: int, width: int) -> None:
        self.geometry.check_size(num_frames, height, width)

    def token_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(F, h, w) of the transformer's token grid for a video of this size."""
        return self.geometry.token_grid(num_frames, height, width)

    # ------------------------------------------------------------------ conditioning
    @property
    def execution_device(self) -> torch.device:
        if self.options.offload == "group":  # weights rest on the CPU between blocks; compute is on device
            return self.device
        return self.pipe._execution_device

    def encode_prompt(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 5.0,
                      guidance_scale_2: float | None = None, cfg_rule: str = "diffusers") -> Conditioning:
        """cfg_rule "diffusers": CFG is on when guidance_scale > 1 (diffusers' pipelines and the P&P release;
        a two-expert model then applies each expert's scale, and guidance_scale <= 1 turns CFG off for both
        experts whatever guidance_scale_2 is). "per-expert": each expert applies CFG when its own scale != 1."""
        if guidance_scale_2 is not None and self.boundary_ratio is None:
            raise VmtUsageError(f"{param('guidance_scale_2')} applies only to two-expert models (Wan2.2 A14B)")
        if cfg_rule not in CFG_RULES:
            raise VmtUsageError(f"{param('cfg_rule')} {cfg_rule!r}: use one of {', '.join(CFG_RULES)}")
        if cfg_rule == "diffusers":
            cfg = guidance_scale > 1.0
        else:
            cfg = guidance_scale > 1.0 or (guidance_scale_2 or 0.0) > 1.0
        with torch.no_grad():
            pos, neg = self.pipe.encode_prompt(
                prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
                max_sequence_length=self.options.max_sequence_length, device=self.execution_device,
            )
        pos = pos.to(self.dtype)
        neg = neg.to(self.dtype) if neg is not None else None
        g2 = guidance_scale_2 if guidance_scale_2 is not None else (
            guidance_scale if self.boundary_ratio is not None else None)
        return Conditioning(pos, neg, guidance_scale=guidance_scale, guidance_scale_2=g2, cfg_rule=cfg_rule)

    def condition_on_image(self, cond: Conditioning, image: np.ndarray, num_frames: int, height: int,
                           width: int, clip_image: np.ndarray | None = None,
                           image_embeds: torch.Tensor | None = None) -> Conditioning:
        """The conditioning of an image-to-video model on `image` (H, W, 3) uint8 at the output size (e.g.
        vmt.io.read_image): normalised by the pipeline's own video processor (its Lanczos resize is an identity
        on an image already at the size, so the VAE gets diffusers' tensor bit for bit), VAE-encoded as the
        first frame by the pipeline's prepare_latents; with a CLIP image encoder (Wan2.1 I2V) also
        `clip_image` (None: `image`) through CLIP. diffusers hands CLIP the image as the user passed it, before
        any resize: give the unfitted image there for its embeddings. `image_embeds`: a CLIP image embedding
        to use instead of the image's own (`image_embedding`; a long chain keeps its first frame's)."""
        if not self.is_i2v:
            raise VmtUsageError(
                f"{param('image')} needs an image-to-video model (e.g. Wan-AI/Wan2.1-I2V-14B-480P-Diffusers); "
                f"{self.model_id} is text-to-video"
            )
        if image.shape[:2] != (height, width):
            raise VmtUsageError(f"image is {image.shape[1]}x{image.shape[0]}, expected {width}x{height}")
        from PIL import Image

        dev = self.execution_device
        x = self.pipe.video_processor.preprocess(Image.fromarray(image), height=height, width=width)
        x = x.to(dev, dtype=torch.float32)  # (1, 3, H, W), as the pipeline's __call__ moves it
        dummy = torch.zeros(self.latent_shape(num_frames, height, width), device=dev)
        with torch.no_grad():
            out = self.pipe.prepare_latents(
                x, 1, self.latent_channels, height, width, num_frames, torch.float32, dev, None, dummy, None
            )
            if image_embeds is None or not self.uses_image_embedding:
                image_embeds = self.image_embedding(image if clip_image is None else clip_image)
        if self.expand_timesteps:
            _, condition, mask = out
            return cond.with_(latent_condition=condition, first_frame_mask=mask, image_embeds=image_embeds)
        _, condition = out
        return cond.with_(latent_condition=condition, image_embeds=image_embeds)

    def first_frame_latent(self, cond: Conditioning) -> torch.Tensor:
        """The normalised latent (1, C, 1, h, w) float32 of the image `condition_on_image` encoded: the first
        latent frame of the condition (after the mask channels of a Wan2.1-style I2V model; the VAE is causal
        in time, so that frame is the image's own latent)."""
        if cond.latent_condition is None:
            raise VmtUsageError(f"no first-frame image conditions this run; pass {param('image')}")
        return cond.latent_condition[:, -self.latent_channels:, :1].float()

    @property
    def uses_image_embedding(self) -> bool:
        """Whether the transformer takes a CLIP image embedding (Wan2.1 I2V) besides the image latent."""
        main = self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2
        return main.config.image_dim is not None

    @torch.no_grad()
    def image_embedding(self, image: np.ndarray) -> torch.Tensor | None:
        """The CLIP image embedding of an (H, W, 3) uint8 image, or None on models that use none."""
        if not self.uses_image_embedding:
            return None
        from PIL import Image

        return self.pipe.encode_image(Image.fromarray(image), self.execution_device).to(self.dtype)

    # ------------------------------------------------------------------ the model
    def transformer_at(self, sigma: float, timestep: torch.Tensor | float | None = None):
        """The expert for this step: by its timestep (`timestep`, e.g. the model scheduler's integer one, or
        num_train_timesteps * sigma) against boundary_ratio * num_train_timesteps, as diffusers decides."""
        t = float(sigma) * self.num_train_timesteps if timestep is None else float(timestep)
        if self.pipe.transformer is None:
            return self.pipe.transformer_2
        if self.boundary_ratio is None or self.pipe.transformer_2 is None:
            return self.pipe.transformer
        return self.pipe.transformer if t >= self.boundary_ratio * self.num_train_timesteps else self.pipe.transformer_2

    def _guidance_at(self, sigma: float, cond: Conditioning, timestep=None) -> float:
        model = self.transformer_at(sigma, timestep)
        if model is self.pipe.transformer_2 and self.pipe.transformer is not None:
            return cond.guidance_scale_2 if cond.guidance_scale_2 is not None else cond.guidance_scale
        return cond.guidance_scale

    def model_input(self, z: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden_states, timestep) the transformer takes for latent z at timestep t (0-dim, 1000 * sigma)."""
        b = z.shape[0]
        if self.expand_timesteps:
            mask = cond.first_frame_mask
            if mask is None:
                mask = torch.ones((1, 1, *z.shape[2:]), dtype=torch.float32, device=z.device)
            x = z if cond.latent_condition is None else (1 - mask) * cond.latent_condition + mask * z
            _, ph, pw = self.patch_size
            ts = (mask[0][0][:, ::ph, ::pw] * t).flatten()
            return x.to(self.dtype), ts.unsqueeze(0).expand(b, -1)
        if cond.latent_condition is not None:
            x = torch.cat([z, cond.latent_condition], dim=1)
        else:
            x = z
        return x.to(self.dtype), t.expand(b)

    def velocity(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning,
                 timestep: torch.Tensor | None = None, upcast: bool = True) -> torch.Tensor:
        """Guided velocity v = v_u + g (v_c - v_u) at sigma, shape of z.

        timestep: what the transformer is fed (0-dim; default num_train_timesteps * sigma, float).
        upcast: return float32 (default); False keeps the transformer's dtype, so that the sampler's
        `sigma * v` and `(s_next - s) * v` are computed in that dtype before meeting the float32 latent, as
        the P&P release and diffusers' pipelines do in bf16.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        t = (sigma * self.num_train_timesteps if timestep is None else torch.as_tensor(timestep)).to(z.device)
        model = self.transformer_at(float(sigma), t)
        g = self._guidance_at(float(sigma), cond, t)
        x, ts = self.model_input(z, t, cond)
        # diffusers' rule: once CFG is on, every step runs both branches, even at scale 1
        use_cfg = cond.negative_embeds is not None and (g != 1.0 or cond.cfg_rule == "diffusers")
        kw = {}
        if cond.image_embeds is not None:
            kw["encoder_hidden_states_image"] = cond.image_embeds
        self.counts.nfe += 1
        if not use_cfg:
            self.counts.dit_forward += 1
            v = model(hidden_states=x, timestep=ts, encoder_hidden_states=cond.prompt_embeds,
                      return_dict=False, **kw)[0]
            return v.float() if upcast else v
        self.counts.dit_forward += 2
        if self.options.batch_cfg:
            kw2 = {k: torch.cat([v, v]) for k, v in kw.items()}
            out = model(hidden_states=torch.cat([x, x]), timestep=torch.cat([ts, ts]),
                        encoder_hidden_states=torch.cat([cond.prompt_embeds, cond.negative_embeds]),
                        return_dict=False, **kw2)[0]
            v_c, v_u = out.chunk(2)
        else:
            v_c = model(hidden_states=x, timestep=ts, encoder_hidden_states=cond.prompt_embeds,
                        return_dict=False, **kw)[0]
            v_u = model(hidden_states=x, timestep=ts, encoder_hidden_states=cond.negative_embeds,
                        return_dict=False, **kw)[0]
        v = v_u + g * (v_c - v_u)
        return v.float() if upcast else v

    def sigmas(self, steps: int, shift: float | None = None) -> torch.Tensor:
        from vmt.sampling.sigmas import flow_sigmas

        return flow_sigmas(steps, self.default_shift if shift is None else shift, self.num_train_timesteps)

    def schedule(self, steps: int, shift: float | None = None, grid: str = "model", strength: float = 1.0):
        """The grid to step through (vmt.sampling.sigmas.Schedule): "model" is the folder's own scheduler
        (sigmas and integer timesteps; `shift` overrides its flow_shift), "euler" diffusers' FlowMatchEuler
        grid with float timesteps 1000 * sigma (strength < 1 is only for "model"; see model_schedule)."""
        from vmt.sampling.sigmas import GRIDS, Schedule, model_schedule

        if grid not in GRIDS:
            raise VmtUsageError(f"{param('grid')} {grid!r}: use one of {', '.join(GRIDS)}")
        if grid == "model":
            return model_schedule(self.pipe.scheduler, steps, shift, strength)
        return Schedule(self.sigmas(steps, shift), None, "euler")

    # ------------------------------------------------------------------ attention access (interventions)
    def check_block(self, block: int) -> None:
        """Raise VmtUsageError unless `block` is a block of every expert."""
        from vmt.motion.capture import check_block

        for m in self._transformers():
            check_block(m, block)

    def _transformers(self) -> list:
        return [m for m in (self.pipe.transformer, self.pipe.transformer_2) if m is not None]

    def capture_qk(self, z: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, block: int, *,
                   timestep: torch.Tensor | None = None, stop: bool = True, backward: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k (B, S, H, D) of self-attention `block` (after norm and RoPE) of the expert at sigma, for latent
        z with cond's positive branch only (no CFG). stop: end the forward after that block (later blocks
        cannot change its q/k). Differentiable with respect to z when grad is enabled. Counts one DiT forward,
        and one backward when `backward` (the caller then backpropagates through q/k)."""
        from vmt.motion.capture import capture_forward

        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        t = (sigma * self.num_train_timesteps if timestep is None else torch.as_tensor(timestep)).to(z.device)
        model = self.transformer_at(float(sigma), t)
        x, ts = self.model_input(z, t, cond)
        kw = {}
        if cond.image_embeds is not None:
            kw["encoder_hidden_states_image"] = cond.image_embeds
        ckpt = self._checkpointing.get(id(model))
        # The capture block runs plainly (its forward may end inside attn1: see accel.BlockCheckpointing).
        plain = ckpt.run_plain(model.blocks[block]) if ckpt is not None else nullcontext()
        with plain:
            q, k, _ = capture_forward(model, block, stop=stop, hidden_states=x, timestep=ts,
                                      encoder_hidden_states=cond.prompt_embeds, **kw)
        self.counts.dit_forward += 1
        if backward:
            self.counts.dit_backward += 1
        return q, k

    def unload_loras(self) -> None:
        """Remove every LoRA (diffusers' unload_lora_weights): the transformers are as loaded again."""
        if self.loras:
            self.pipe.unload_lora_weights()
            self.loras = []

    def attention_backend(self) -> str | None:
        """The attention backend of the (first) transformer's processors; None: diffusers' default."""
        from vmt.backends.accel import current_backend

        return current_backend(self._transformers()[0])

    def guided_attention(self) -> str | None:
        """Decide, once, the attention backend of guided (differentiated) passes. Returns a note when the
        chosen backend has no backward and guided passes switch to accel.GUIDED_FALLBACK, else None."""
        from vmt.backends.accel import GUIDED_FALLBACK, default_backend, has_backward

        if self._guided_backend is not None:
            return None
        # no backend named: diffusers' default, which DIFFUSERS_ATTN_BACKEND may have set to one without backward
        chosen = self.attention_backend() or default_backend()
        if chosen == GUIDED_FALLBACK:
            self._guided_backend = (chosen, None)
            return None
        m = self._transformers()[0]
        attn = m.blocks[0].attn1
        if has_backward(chosen, attn.heads, m.config.attention_head_dim, self.execution_device, self.dtype):
            self._guided_backend = (chosen, None)
            return None
        self._guided_backend = (chosen, GUIDED_FALLBACK)
        return (f"attention backend {chosen!r} has no backward pass; guided forward+backward passes use "
                f"{GUIDED_FALLBACK!r} (plain steps keep {chosen!r})")

    @contextmanager
    def frozen(self):
        """The context of passes that differentiate through the model to the latent: no weight gradients
        (flags restored afterwards, also on errors), and attention with a backward (see guided_attention)."""
        from vmt.backends.accel import attention_backend_swapped

        self.guided_attention()
        fallback = self._guided_backend[1] if self._guided_backend else None
        flags = [(p, p.requires_grad) for m in self._transformers() for p in m.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        try:
            with attention_backend_swapped(self._transformers(), fallback):
                yield
        finally:
            for p, f in flags:
                p.requires_grad_(f)

    def finalize(self, z: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The latent to decode: TI2V pastes the given first-frame latent back."""
        if self.expand_timesteps and cond.latent_condition is not None and cond.first_frame_mask is not None:
            m = cond.first_frame_mask
            return (1 - m) * cond.latent_condition + m * z
        return z

    # ------------------------------------------------------------------ VAE
    def normalize(self, z_raw: torch.Tensor) -> torch.Tensor:
        return (z_raw.float() - self._latents_mean.to(z_raw.device)) / self._latents_std.to(z_raw.device)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() * self._latents_std.to(z.device) + self._latents_mean.to(z.device)

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        vae = self.pipe.vae
        x = _to_video_tensor(frames).to(self.execution_device, vae.dtype)
        return self.normalize(vae.encode(x).latent_dist.mode())

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        video = vae.decode(self.denormalize(z).to(self.execution_device, vae.dtype), return_dict=False)[0]
        return _to_uint8_frames(video)
