"""Weight memory of the real Wan components, counted from their architectures (no download, no GPU).

    python benchmarks/memory_budget.py

Modules are built on the `meta` device (no memory is allocated), parameters counted, and bytes per dtype
reported. This is the floor of GPU memory for `--offload none` (all components resident) and, for
`--offload model`, the largest single component; activations come on top and need a GPU to measure.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import save  # noqa: E402

# Published configs of the diffusers Wan checkpoints (transformer/config.json, text_encoder/config.json).
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6)
WAN_14B = dict(WAN_1_3B, num_attention_heads=40, ffn_dim=13824, num_layers=40)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    import torch
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        sizes = {
            "transformer Wan2.1-T2V-1.3B": count(WanTransformer3DModel(**WAN_1_3B)),
            "transformer Wan2.1-T2V-14B (each A14B expert)": count(WanTransformer3DModel(**WAN_14B)),
            "text encoder UMT5-XXL (encoder only)": count(UMT5EncoderModel(UMT5Config(**UMT5_XXL))),
            "VAE Wan2.1": count(AutoencoderKLWan()),
        }
    rows = []
    print(f"{'component':48s} {'params':>10s} {'bf16 GiB':>9s} {'fp32 GiB':>9s}")
    for name, n in sizes.items():
        rows.append({"component": name, "params": n, "bf16_gib": round(n * 2 / 2**30, 2),
                     "fp32_gib": round(n * 4 / 2**30, 2)})
        print(f"{name:48s} {n / 1e9:9.3f}B {n * 2 / 2**30:9.2f} {n * 4 / 2**30:9.2f}")
    t13 = sizes["transformer Wan2.1-T2V-1.3B"] * 2 + sizes["text encoder UMT5-XXL (encoder only)"] * 2
    t13 += sizes["VAE Wan2.1"] * 4
    print(f"all resident, 1.3B (bf16 DiT + bf16 UMT5 + fp32 VAE): {t13 / 2**30:.2f} GiB of weights")
    save("memory_budget", {"components": rows, "wan2.1_1.3b_all_resident_gib": round(t13 / 2**30, 2)})


if __name__ == "__main__":
    main()
