"""--lora: a random LoRA written by the test in diffusers' Wan layout changes the model exactly by scale * B A
(checked against weights merged by hand), unloading restores it; per-expert loading on two-expert Wan2.2;
the one-line errors. Loading goes through diffusers' PEFT backend: those tests need peft installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app

HAS_PEFT = importlib.util.find_spec("peft") is not None
TARGETS = ("attn1.to_q", "attn1.to_v", "ffn.net.2")
RANK = 2


def _write_lora(path, model, seed=0):
    """Random A (r x in), B (out x r) for TARGETS of every block, keyed as diffusers saves Wan LoRAs."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, block in enumerate(model.blocks):
        for name in TARGETS:
            lin = block.get_submodule(name)
            sd[f"transformer.blocks.{i}.{name}.lora_A.weight"] = 0.3 * torch.randn(RANK, lin.in_features, generator=g)
            sd[f"transformer.blocks.{i}.{name}.lora_B.weight"] = 0.3 * torch.randn(lin.out_features, RANK, generator=g)
    save_file(sd, str(path))
    return sd


def _merged(model, sd, scale):
    """A copy of `model` with W + scale * B A merged by hand (PEFT's alpha defaults to the rank: factor 1)."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for i, block in enumerate(m.blocks):
            for name in TARGETS:
                lin = block.get_submodule(name)
                a = sd[f"transformer.blocks.{i}.{name}.lora_A.weight"]
                b = sd[f"transformer.blocks.{i}.{name}.lora_B.weight"]
                lin.weight += scale * (b @ a)
    return m


def _velocity_of(model, backend, sigma=0.7):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(backend.latent_shape(9, 32, 32), generator=g)
    cond = backend.encode_prompt("a cat", "", 1.0)
    x, ts = backend.model_input(z, torch.tensor(1000 * sigma), cond)
    with torch.no_grad():
        return model(hidden_states=x, timestep=ts, encoder_hidden_states=cond.prompt_embeds, return_dict=False)[0]


def _backend(folder, **options):
    from vmt.backends.wan import WanBackend, WanLoadOptions

    torch.set_num_threads(1)
    return WanBackend.from_pretrained(str(folder), WanLoadOptions(device="cpu", dtype="float32", **options))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PEFT, reason="diffusers loads LoRAs through peft, which is not installed")
def test_lora_changes_the_model_by_its_weights_and_unloading_restores_it(tiny_t2v, tmp_path):
    plain = _backend(tiny_t2v)
    path = tmp_path / "lora.safetensors"
    sd = _write_lora(path, plain.pipe.transformer)
    b = _backend(tiny_t2v, loras=(f"{path}:0.7",))
    ref = _velocity_of(plain.pipe.transformer, plain)
    with_lora = _velocity_of(b.pipe.transformer, b)
    expected = _velocity_of(_merged(plain.pipe.transformer, sd, 0.7), plain)
    assert (with_lora - ref).abs().max() > 1e-3  # it changes the output
    torch.testing.assert_close(with_lora, expected, rtol=1e-4, atol=1e-5)  # by exactly scale * B A
    assert b.describe()["loras"] == [{"path": str(path), "scale": 0.7, "expert": "both", "adapter": "lora0"}]
    b.unload_loras()
    torch.testing.assert_close(_velocity_of(b.pipe.transformer, b), ref, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PEFT, reason="diffusers loads LoRAs through peft, which is not installed")
def test_lora_into_one_expert_of_a_two_expert_model(tiny_t2v_2expert, tmp_path):
    plain = _backend(tiny_t2v_2expert)
    path = tmp_path / "low.safetensors"
    _write_lora(path, plain.pipe.transformer_2)
    b = _backend(tiny_t2v_2expert, loras=(f"{path}@low",))
    assert torch.equal(_velocity_of(b.pipe.transformer, b), _velocity_of(plain.pipe.transformer, plain))
    assert (_velocity_of(b.pipe.transformer_2, b) - _velocity_of(plain.pipe.transformer_2, plain)).abs().max() > 1e-3


def test_lora_spec_parsing(tmp_path):
    from vmt.backends.accel import LoraSpec
    from vmt.errors import VmtUsageError

    f = tmp_path / "a.safetensors"
    f.write_bytes(b"")
    assert LoraSpec.parse(str(f)) == LoraSpec(str(f), 1.0, "both")
    assert LoraSpec.parse(f"{f}:0.5@low") == LoraSpec(str(f), 0.5, "low")
    for bad, frag in ((f"{f}@middle", "expert"), (f"{f}:nan", "finite"), (str(tmp_path / "no.safetensors"), "exist")):
        with pytest.raises(VmtUsageError, match=frag):
            LoraSpec.parse(bad)


@pytest.mark.skipif(HAS_PEFT, reason="checks the message shown when peft is missing")
def test_cli_lora_without_peft_is_one_line_before_loading(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"")
    out = tmp_path / "x.mp4"
    r = CliRunner().invoke(app, ["refine", "--prompt", "x", "-o", str(out), "--model", str(tmp_path / "no-model"),
                                 "--device", "cpu", "--height", "32", "--width", "32", "-f", "5", "--lora", str(f)])
    assert r.exit_code == 1, r.output
    assert "--lora needs the peft package" in r.output and "Traceback" not in r.output
    assert not out.exists()
