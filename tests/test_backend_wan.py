"""WanBackend + the Euler loop against diffusers' own WanPipeline on tiny random-weight models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from vmt.backends.loading import check_components, resolve_model
from vmt.backends.wan import WanBackend, WanLoadOptions
from vmt.errors import VmtError, VmtUsageError
from vmt.generate import GenerationRequest, generate
from vmt.sampling.sigmas import flow_sigmas

# grid "euler": these compare with WanPipeline driven by FlowMatchEuler (the folder ships UniPC)
REQ = dict(prompt="a fox in the snow", negative_prompt="blurry", num_frames=9, height=32, width=32, steps=4,
           guidance_scale=4.0, shift=5.0, seed=7, grid="euler")


def _diffusers_latents(folder, **overrides):
    from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

    kw = {**REQ, **overrides}
    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=kw["shift"])
    extra = {}
    if "guidance_scale_2" in kw:
        extra["guidance_scale_2"] = kw["guidance_scale_2"]
    return pipe(
        prompt=kw["prompt"], negative_prompt=kw["negative_prompt"], num_frames=kw["num_frames"],
        height=kw["height"], width=kw["width"], num_inference_steps=kw["steps"],
        guidance_scale=kw["guidance_scale"], generator=torch.Generator("cpu").manual_seed(kw["seed"]),
        output_type="latent", **extra,
    ).frames


@pytest.mark.slow
@pytest.mark.parametrize("batch_cfg", [True, False])
def test_t2v_latents_equal_diffusers_wan_pipeline(tiny_t2v, batch_cfg):
    backend = WanBackend.from_pretrained(str(tiny_t2v), WanLoadOptions(batch_cfg=batch_cfg))
    ours = generate(backend, GenerationRequest(**REQ), decode=False).latents
    ref = _diffusers_latents(tiny_t2v)
    assert ours.shape == ref.shape
    assert ref.abs().mean() > 0.1  # a real signal, not a degenerate zero latent
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert backend.counts.nfe == REQ["steps"] and backend.counts.dit_forward == 2 * REQ["steps"]


@pytest.mark.slow
def test_two_expert_latents_equal_diffusers_and_use_both_experts(tiny_t2v_2expert):
    backend = WanBackend.from_pretrained(str(tiny_t2v_2expert))
    sig = backend.sigmas(REQ["steps"], REQ["shift"])[:-1]
    boundary = backend.boundary_ratio
    assert (sig >= boundary).any() and (sig < boundary).any(), "the test grid must cross the boundary"
    used = [backend.transformer_at(float(s)) for s in sig]
    assert used[0] is backend.pipe.transformer and used[-1] is backend.pipe.transformer_2
    ours = generate(backend, GenerationRequest(**REQ, guidance_scale_2=2.0), decode=False).latents
    ref = _diffusers_latents(tiny_t2v_2expert, guidance_scale_2=2.0)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # A different low-noise guidance scale must change the result (the second scale is really used).
    other = generate(backend, GenerationRequest(**REQ, guidance_scale_2=6.0), decode=False).latents
    assert (other - ours).abs().max() > 1e-3


@pytest.mark.slow
def test_two_expert_cfg_off_below_one_as_diffusers(tiny_t2v_2expert):
    """guidance_scale <= 1 turns CFG off for both experts (diffusers and the P&P release), whatever
    guidance_scale_2 is; the per-expert rule applies the low-noise expert's CFG instead."""
    backend = WanBackend.from_pretrained(str(tiny_t2v_2expert))
    req = {**REQ, "guidance_scale": 1.0}
    ours = generate(backend, GenerationRequest(**req, guidance_scale_2=3.0), decode=False).latents
    assert backend.counts.dit_forward == REQ["steps"]  # one pass per step: no CFG anywhere
    ref = _diffusers_latents(tiny_t2v_2expert, guidance_scale=1.0, guidance_scale_2=3.0)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    per = generate(backend, GenerationRequest(**req, guidance_scale_2=3.0, cfg_rule="per-expert"),
                   decode=False).latents
    assert (per - ours).abs().max() > 1e-3


def test_sigma_grid_is_diffusers_flow_match_euler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = flow_sigmas(10, 3.0)
    sch = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sch.set_timesteps(10)
    assert torch.equal(s, sch.sigmas.float())
    # Closed form: the shift applied to linspace(1, shift(1/1000), N) (diffusers' sigma_min is the shifted
    # smallest training sigma, and the inference grid is shifted again).
    base = np.linspace(1.0, 3e-3 / (1 + 2e-3), 10)
    np.testing.assert_allclose(s[:-1].numpy(), 3 * base / (1 + 2 * base), rtol=1e-6)
    assert s[-1] == 0 and torch.all(s[:-1] > s[1:])


@pytest.mark.slow
def test_seed_reproducible_and_seed_sensitive(tiny_t2v):
    backend = WanBackend.from_pretrained(str(tiny_t2v))
    a = generate(backend, GenerationRequest(**REQ), decode=False).latents
    b = generate(backend, GenerationRequest(**REQ), decode=False).latents
    c = generate(backend, GenerationRequest(**{**REQ, "seed": 8}), decode=False).latents
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


def test_vae_round_trip_normalisation(tiny_t2v):
    backend = WanBackend.from_pretrained(str(tiny_t2v))
    z = torch.randn(1, backend.latent_channels, 3, 4, 4)
    raw = backend.denormalize(z)
    mean = torch.tensor(backend.pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(backend.pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(raw, z * std + mean)
    torch.testing.assert_close(backend.normalize(raw), z)
    frames = backend.decode(z)
    assert frames.shape == (9, 32, 32, 3) and frames.dtype == np.uint8
    enc = backend.encode_video(frames)
    assert enc.shape == z.shape


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_i2v", "tiny_i2v_clip"])
def test_i2v_conditions_on_the_image(request, fixture):
    folder = request.getfixturevalue(fixture)
    backend = WanBackend.from_pretrained(str(folder))
    rng = np.random.default_rng(0)
    img_a = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    img_b = 255 - img_a
    ra = generate(backend, GenerationRequest(**REQ, image=img_a), decode=False).latents
    rb = generate(backend, GenerationRequest(**REQ, image=img_b), decode=False).latents
    assert ra.shape == (1, backend.latent_channels, 3, 4, 4)
    assert (ra - rb).abs().max() > 1e-3  # the image really reaches the transformer
    with pytest.raises(VmtUsageError, match="image-to-video"):
        generate(backend, GenerationRequest(**REQ))


@pytest.mark.slow
def test_i2v_latents_equal_diffusers(tiny_i2v):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline

    rng = np.random.default_rng(1)
    img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    backend = WanBackend.from_pretrained(str(tiny_i2v))
    ours = generate(backend, GenerationRequest(**REQ, image=img), decode=False).latents
    pipe = WanImageToVideoPipeline.from_pretrained(str(tiny_i2v))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=REQ["shift"])
    # Hand diffusers the same [-1, 1] tensor so both see identical pixels (no resampling differences).
    x = torch.from_numpy(img).float().div(127.5).sub(1).permute(2, 0, 1)[None]
    ref = pipe(image=x, prompt=REQ["prompt"], negative_prompt=REQ["negative_prompt"], num_frames=9, height=32,
               width=32, num_inference_steps=4, guidance_scale=4.0, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(REQ["seed"])).frames
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_t2v_model_rejects_image(tiny_t2v):
    backend = WanBackend.from_pretrained(str(tiny_t2v))
    with pytest.raises(VmtUsageError, match="image-to-video model"):
        generate(backend, GenerationRequest(**REQ, image=np.zeros((32, 32, 3), np.uint8)))


def test_size_checks_name_valid_values(tiny_t2v):
    backend = WanBackend.from_pretrained(str(tiny_t2v))
    with pytest.raises(VmtUsageError, match="4k\\+1; use 9 or 13"):
        backend.check_size(10, 32, 32)
    with pytest.raises(VmtUsageError, match="multiple of 16; use 32 or 48"):
        backend.check_size(9, 40, 32)
    assert backend.token_grid(81, 480, 832) == (21, 30, 52)


def test_missing_component_is_named(tiny_t2v, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_t2v, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(VmtError, match="missing component 'vae'"):
        check_components(broken)


def test_resolve_local_folder_fingerprint_changes_with_content(tiny_t2v, tmp_path):
    a = resolve_model(str(tiny_t2v))
    assert a.source == "local" and a.revision is None and a.pipeline_class == "WanPipeline"
    copy = tmp_path / "copy"
    shutil.copytree(tiny_t2v, copy)
    assert resolve_model(str(copy)).fingerprint == a.fingerprint
    cfg = copy / "transformer" / "config.json"
    data = json.loads(cfg.read_text())
    data["eps"] = 1e-5
    cfg.write_text(json.dumps(data))
    assert resolve_model(str(copy)).fingerprint != a.fingerprint


def test_hub_id_offline_not_cached_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path), raising=False)
    with pytest.raises(VmtError) as err:
        resolve_model("Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    msg = str(err.value)
    # Says what is wrong and every way out; nothing points to a traceback the user never sees.
    assert "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg, msg
    assert "hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers" in msg, msg
    assert "local diffusers folder as model" in msg, msg
    assert err.value.params == ["model"], msg  # the command line writes it as --model
    assert "stacktrace" not in msg and "\n" not in msg, msg


def test_geometry_from_config_checks_rotary_length_before_weights(tiny_t2v):
    """The size limits come from the config files alone; a request past the rotary table is a usage error
    naming the longest valid value (tiny Wan: rope_max_seq_len from its transformer config)."""
    from vmt.backends.wan import WanGeometry, inspect_model

    cfg = json.loads((tiny_t2v / "transformer" / "config.json").read_text())
    _, geo = inspect_model(str(tiny_t2v))
    assert geo == WanGeometry(4, 8, tuple(cfg["patch_size"]), cfg["rope_max_seq_len"], cfg["num_layers"])
    n = cfg["rope_max_seq_len"]
    geo.check_size(4 * (n - 1) + 1, 16, 16)  # exactly n latent frames: fits
    with pytest.raises(VmtUsageError, match=f"covers {n} .*at most {4 * (n - 1) + 1}"):
        geo.check_size(4 * n + 1, 16, 16)
    with pytest.raises(VmtUsageError, match="^block 99 is out of range"):
        geo.check_block(99)


def test_hub_id_served_from_cache_records_revision(tiny_t2v, monkeypatch, tmp_path):
    """A model in the hub cache layout loads offline by hub id and reports the snapshot's commit."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tiny-org--tiny-wan"
    shutil.copytree(tiny_t2v, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path), raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    r = resolve_model("tiny-org/tiny-wan")
    assert r.source == "hub" and r.revision == commit
    backend = WanBackend.from_pretrained("tiny-org/tiny-wan")
    assert backend.describe()["revision"] == commit
