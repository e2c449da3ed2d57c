"""Tiny random-weight Wan pipelines for tests and offline smoke runs. They produce noise, not video.

`save_tiny_wan(folder, kind)` writes a complete diffusers folder (model_index.json, transformer(s), VAE, UMT5
text encoder, a byte-level tokenizer built in code, the UniPC flow scheduler Wan ships) that loads through
the same `from_pretrained` path as a real hub id. Kinds: "t2v" (Wan2.1 T2V layout), "i2v" (Wan2.2-style I2V:
36 input channels, no image encoder), "i2v-clip" (Wan2.1 I2V with a tiny CLIP image encoder),
"t2v-2expert" (Wan2.2 A14B layout: two transformers and a boundary ratio).
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("t2v", "i2v", "i2v-clip", "t2v-2expert")


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def build_tiny_wan(kind: str = "t2v", seed: int = 0, z_dim: int = 4, num_layers: int = 2):
    """Build an in-memory tiny Wan pipeline of the given kind with seeded random weights (`num_layers`
    transformer blocks: 15 or more reach the published capture block 14 of motion transfer)."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    if kind not in KINDS:
        raise ValueError(f"unknown tiny Wan kind {kind!r}; use one of {KINDS}")
    torch.manual_seed(seed)
    text_dim = 32
    tokenizer = _tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.1 * i for i in range(z_dim)], latents_std=[1.0 + 0.25 * i for i in range(z_dim)],
    ).eval()
    i2v = kind.startswith("i2v")
    image_dim = 16 if kind == "i2v-clip" else None

    def transformer(s: int):
        torch.manual_seed(seed + s)
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
            in_channels=2 * z_dim + 4 if i2v else z_dim, out_channels=z_dim, text_dim=text_dim, freq_dim=32,
            ffn_dim=32, num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            image_dim=image_dim, added_kv_proj_dim=16 if image_dim else None, rope_max_seq_len=32,
        ).eval()

    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
    )
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler)
    if kind == "t2v":
        return WanPipeline(transformer=transformer(1), **common)
    if kind == "t2v-2expert":
        return WanPipeline(transformer=transformer(1), transformer_2=transformer(2), boundary_ratio=0.875, **common)
    if kind == "i2v":
        return WanImageToVideoPipeline(transformer=transformer(1), **common)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed + 3)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=image_dim, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=16,
    )).eval()
    image_processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    return WanImageToVideoPipeline(transformer=transformer(1), image_encoder=image_encoder,
                                   image_processor=image_processor, **common)


def save_tiny_wan(folder: str | Path, kind: str = "t2v", seed: int = 0, num_layers: int = 2) -> Path:
    """Build a tiny Wan pipeline and save it (safetensors) as a diffusers folder; returns the folder."""
    folder = Path(folder)
    build_tiny_wan(kind, seed, num_layers=num_layers).save_pretrained(folder, safe_serialization=True)
    return folder


# Published transformer configs of the diffusers Wan checkpoints (transformer/config.json).
WAN_ARCHS = {
    "wan2.1-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    # CPU-sized: real head width, a quarter of the 1.3B's heads and blocks (memory measurements on the CPU)
    "mid": dict(num_attention_heads=4, attention_head_dim=128, ffn_dim=2048, num_layers=8),
    # small enough for a CPU test, same layout (16 latent channels, text_dim 4096 projected by the DiT)
    "small": dict(num_attention_heads=2, attention_head_dim=32, ffn_dim=128, num_layers=4),
}


def build_arch_wan(arch: str = "small", seed: int = 0, device="cpu", dtype=None, i2v: bool = False):
    """A WanPipeline whose transformer has a real Wan architecture (WAN_ARCHS) with random weights, around a
    minimal VAE (z_dim 16, base_dim 8) and a one-layer UMT5 with d_model 4096 (the real text width, so the
    DiT's text projection and its 512 text tokens are the real ones). For timing and memory, not samples.

    device: where the transformer is built (random init on a GPU takes seconds); dtype: its dtype.
    i2v: an image-to-video pipeline (WanImageToVideoPipeline without a CLIP encoder, as Wan2.2 I2V: the
    transformer reads 16 noisy + 4 mask + 16 image-condition channels).
    """
    import torch
    from diffusers import (
        AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline, WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    if arch not in WAN_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; use one of {', '.join(WAN_ARCHS)}")
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=4096, d_kv=32, d_ff=64, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )).eval()
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    with torch.device(device):
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=36 if i2v else 16, out_channels=16, text_dim=4096, freq_dim=256,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, **WAN_ARCHS[arch],
        ).eval()
    if dtype is not None:
        transformer.to(dtype)
        text_encoder.to(dtype)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    pipeline = WanImageToVideoPipeline if i2v else WanPipeline
    return pipeline(transformer=transformer, tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                    scheduler=scheduler)
