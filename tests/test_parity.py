"""Release parity of the sampling: the model folder's grid and timesteps, the pipeline generator's noise, the
release's bf16 arithmetic and CFG rule. Expected values come from the folder's own scheduler, replays of
the release's loop written out here from its algorithm, and diffusers' own pipelines."""

from __future__ import annotations

import pytest
import torch

from vmt.backends.wan import WanBackend, WanLoadOptions
from vmt.generate import GenerationRequest, generate

REQ = dict(prompt="a fox in the snow", negative_prompt="low quality", num_frames=9, height=32, width=32, steps=4,
           seed=3)


def _folder_scheduler(folder, steps, **overrides):
    """The folder's scheduler as diffusers loads it, after set_timesteps: the release's grid."""
    from diffusers import UniPCMultistepScheduler

    sch = UniPCMultistepScheduler.from_pretrained(str(folder), subfolder="scheduler", **overrides)
    sch.set_timesteps(steps, device="cpu")
    return sch


def _record_timesteps(model, store):
    return model.register_forward_pre_hook(lambda m, a, kw: store.append(kw["timestep"].clone()), with_kwargs=True)


def test_model_grid_feeds_the_folder_schedulers_sigmas_and_timesteps(tiny_t2v):
    backend = WanBackend.from_pretrained(str(tiny_t2v), WanLoadOptions(device="cpu", dtype="float32"))
    sch = _folder_scheduler(tiny_t2v, REQ["steps"])
    seen: list[torch.Tensor] = []
    hook = _record_timesteps(backend.pipe.transformer, seen)
    try:
        res = generate(backend, GenerationRequest(**REQ, guidance_scale=1.0, grid="model"), decode=False)
    finally:
        hook.remove()
    assert res.sigmas == sch.sigmas.tolist()
    assert [t.tolist() for t in seen] == [[int(t)] for t in sch.timesteps]  # integer timesteps, one per step
    assert all(t.dtype == torch.int64 for t in seen)
    # The loop: Euler steps between the scheduler's sigmas, replayed with the transformer called directly.
    from diffusers.utils.torch_utils import randn_tensor

    pipe = backend.pipe
    with torch.no_grad():
        pos, _ = pipe.encode_prompt(prompt=REQ["prompt"], do_classifier_free_guidance=False, device="cpu",
                                    max_sequence_length=512)
        z = randn_tensor(backend.latent_shape(9, 32, 32), generator=torch.Generator("cpu").manual_seed(REQ["seed"]),
                         dtype=torch.float32)
        for i, t in enumerate(sch.timesteps):
            v = pipe.transformer(hidden_states=z, timestep=t.expand(1), encoder_hidden_states=pos,
                                 return_dict=False)[0]
            z = z + (sch.sigmas[i + 1] - sch.sigmas[i]) * v.float()
    torch.testing.assert_close(res.latents, z, rtol=0, atol=0)
    # the Euler grid is really a different grid: last non-zero sigma and timesteps differ
    eul = generate(backend, GenerationRequest(**REQ, guidance_scale=1.0, grid="euler"), decode=False)
    assert abs(eul.sigmas[-2] - res.sigmas[-2]) > 1e-3 and eul.timesteps is None


def test_model_grid_switches_experts_at_the_schedulers_integer_timestep(tiny_t2v_2expert):
    backend = WanBackend.from_pretrained(str(tiny_t2v_2expert), WanLoadOptions(device="cpu", dtype="float32"))
    steps = 6
    sch = _folder_scheduler(tiny_t2v_2expert, steps)
    boundary = backend.boundary_ratio * 1000
    high: list[torch.Tensor] = []
    low: list[torch.Tensor] = []
    hooks = [_record_timesteps(backend.pipe.transformer, high), _record_timesteps(backend.pipe.transformer_2, low)]
    try:
        generate(backend, GenerationRequest(**{**REQ, "steps": steps}, guidance_scale=1.0, grid="model"),
                 decode=False)
    finally:
        for h in hooks:
            h.remove()
    # diffusers' rule on the scheduler's own timesteps: t >= boundary_ratio * 1000 -> the high-noise expert
    want_high = [int(t) for t in sch.timesteps if t >= boundary]
    assert [int(t) for t in high] == want_high and [int(t) for t in low] == [
        int(t) for t in sch.timesteps if t < boundary]
    assert want_high and len(want_high) < steps


def _release_pnp_replay(pipe, folder, shape, steps, k_at, seed, prompt, negative, g, dtype):
    """The release's loop (functions/pipeline_wan_pnp.py) for a plan {outer step: K} with tau = 0 (every voxel
    refined, no early exit): one generator for the start latent and then every perturbation, the folder's
    grid and integer timesteps, separate CFG branches, sigma * v and dsigma * v in the transformer's dtype.
    Returns (final latent, the transformer inputs of the perturbed iterations)."""
    from diffusers.utils.torch_utils import randn_tensor

    sch = _folder_scheduler(folder, steps)
    gen = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompt=prompt, negative_prompt=negative, do_classifier_free_guidance=True,
                                      max_sequence_length=512, device="cpu")
        pos, neg = pos.to(dtype), neg.to(dtype)
        z = randn_tensor(shape, generator=gen, device=torch.device("cpu"), dtype=torch.float32)
        perturbed = []

        def v_of(x, t):
            xi = x.to(dtype)
            c = pipe.transformer(hidden_states=xi, timestep=t.expand(1), encoder_hidden_states=pos,
                                 return_dict=False)[0]
            u = pipe.transformer(hidden_states=xi, timestep=t.expand(1), encoder_hidden_states=neg,
                                 return_dict=False)[0]
            return u + g * (c - u)

        for i, t in enumerate(sch.timesteps):
            s, s_next = sch.sigmas[i], sch.sigmas[i + 1]
            v = v_of(z, t)
            x0, zn = z - s * v, z + (s_next - s) * v
            for _ in range(k_at.get(i, 0)):
                eps = randn_tensor(z.shape, generator=gen, device=torch.device("cpu"), dtype=torch.float32)
                zt = (1.0 - s) * x0 + s * eps
                perturbed.append(zt.to(dtype))
                v = v_of(zt, t)
                x0, zn = zt - s * v, zt + (s_next - s) * v
            z = zn
    return z, perturbed


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_pipeline_noise_and_release_arithmetic_replay_the_release(tiny_t2v, dtype):
    """P&P in the parity modes equals the release's loop replayed from one generator: the start latent, then
    each perturbation in order; in bf16 with sigma * v in bf16. The transformer inputs of the perturbed
    iterations are the replay's (1 - s) x0 + s eps."""
    from vmt.sampling.pnp import PredictPerturb, parse_plan

    torch.set_num_threads(1)
    backend = WanBackend.from_pretrained(str(tiny_t2v), WanLoadOptions(device="cpu", dtype=dtype,
                                                                       batch_cfg=False))
    req = GenerationRequest(**REQ, guidance_scale=4.0, grid="model", noise="pipeline", arithmetic="release")
    inputs: list[torch.Tensor] = []
    hook = backend.pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: inputs.append(kw["hidden_states"].clone()), with_kwargs=True)
    try:
        ours = generate(backend, req, [PredictPerturb(parse_plan("1:2,2:1"), tau=0.0, certain_fraction=1.0,
                                                      seed=REQ["seed"])], decode=False).latents
    finally:
        hook.remove()
    want, perturbed = _release_pnp_replay(backend.pipe, tiny_t2v, backend.latent_shape(9, 32, 32), REQ["steps"], {1: 2, 2: 1}, REQ["seed"],
                                          REQ["prompt"], REQ["negative_prompt"], 4.0, backend.dtype)
    torch.testing.assert_close(ours, want, rtol=0, atol=0)
    # two passes (cond, uncond) per evaluation; evaluations 0 (step 0), 1, 2, 3 (step 1: predict + 2 perturbed)
    pert_inputs = [inputs[2 * e] for e in (2, 3, 5)]  # step 1 perturbations: evals 2, 3; step 2: eval 5
    for got, exp in zip(pert_inputs, perturbed):
        assert torch.equal(got, exp)
    # The device-independent mode draws the perturbations elsewhere: a different sample from the same seed.
    portable = generate(backend, GenerationRequest(**{**REQ, "guidance_scale": 4.0, "grid": "model",
                                                      "noise": "portable", "arithmetic": "release"}),
                        [PredictPerturb(parse_plan("1:2,2:1"), tau=0.0, certain_fraction=1.0, seed=REQ["seed"])],
                        decode=False).latents
    assert not torch.equal(portable, ours)
    if dtype == "bfloat16":  # the arithmetic option is real: float32 updates give another result in bf16
        f32 = generate(backend, GenerationRequest(**{**REQ, "guidance_scale": 4.0, "grid": "model",
                                                     "arithmetic": "float32"}),
                       [PredictPerturb(parse_plan("1:2,2:1"), tau=0.0, certain_fraction=1.0)], decode=False).latents
        assert not torch.equal(f32, ours)


def test_transfer_model_grid_starts_part_way_on_the_folder_grid(tiny_t2v):
    """grid "model" for transfer: the folder scheduler's last int(steps * strength) steps (diffusers' video-to-
    video rule); the guidance's and the loop's transformer calls get that scheduler's integer timesteps."""
    from tests.conftest import moving_pattern
    from vmt.motion.guidance import GuidanceConfig
    from vmt.transfer import TransferRequest, transfer

    backend = WanBackend.from_pretrained(str(tiny_t2v), WanLoadOptions(device="cpu", dtype="float32"))
    sch = _folder_scheduler(tiny_t2v, 4, flow_shift=7.0)  # TransferRequest's shift 7 overrides the folder's 3
    seen: list[torch.Tensor] = []
    hook = _record_timesteps(backend.pipe.transformer, seen)
    cfg = GuidanceConfig(block=1, span=2, tile=(2, 2), window=3, guided_steps=1, inner_steps=1)
    try:
        res = transfer(backend, moving_pattern(9, 64, 64), TransferRequest(
            prompt="a cat", height=64, width=64, steps=4, strength=0.75, guidance_scale=1.0, grid="model"),
            cfg, decode=False)
    finally:
        hook.remove()
    assert res.sigmas == sch.sigmas[1:].tolist()  # 3 of 4 steps
    # step 0: reference forward + one guided forward, then the step's own velocity; steps 1, 2: velocity
    want = [sch.timesteps[1]] * 3 + [sch.timesteps[2], sch.timesteps[3]]
    assert [int(t) for t in seen] == [int(t) for t in want]


@pytest.mark.slow
def test_cli_refine_parity_options_reach_out_json_and_bad_values_fail_early(tiny_t2v, tmp_path):
    import json

    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "a.mp4"
    args = ["refine", "--model", str(tiny_t2v), "--prompt", "a ball", "--num-frames", "9", "--height", "32",
            "--width", "32", "--steps", "3", "--plan", "1:1", "--quiet", "--device", "cpu"]
    r = CliRunner().invoke(app, [*args, "--grid", "euler", "--noise", "portable", "--arithmetic", "release",
                                 "--cfg-rule", "per-expert", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert (doc["params"]["grid"], doc["params"]["noise"], doc["params"]["arithmetic"],
            doc["params"]["cfg_rule"]) == ("euler", "portable", "release", "per-expert")
    from vmt.sampling.sigmas import flow_sigmas

    assert doc["sigmas"] == flow_sigmas(3, 3.0).tolist()  # the folder's flow_shift 3 on the Euler grid
    bad = tmp_path / "b.mp4"
    r = CliRunner().invoke(app, [*args, "--grid", "unipc", "-o", str(bad), "--model", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "--grid 'unipc': use one of model, euler" in " ".join(r.output.split())


@pytest.mark.slow
def test_i2v_pipeline_noise_replays_the_i2v_release(tiny_i2v):
    """I2V (the release's I2V script: seed 42, tau 0): the start latent comes from diffusers' own
    prepare_latents with the generator (the image is encoded without drawing), the perturbations continue
    the same generator, the condition is concatenated at every evaluation."""
    import numpy as np
    from diffusers.utils.torch_utils import randn_tensor

    from vmt.sampling.pnp import PredictPerturb, parse_plan

    torch.set_num_threads(1)
    img = (np.random.default_rng(2).random((32, 32, 3)) * 255).astype(np.uint8)
    backend = WanBackend.from_pretrained(str(tiny_i2v), WanLoadOptions(device="cpu", dtype="float32",
                                                                       batch_cfg=False))
    plan = {1: 2, 2: 1}
    req = dict(REQ, seed=42, image=img, guidance_scale=3.5, grid="model", noise="pipeline", arithmetic="release")
    ours = generate(backend, GenerationRequest(**req), [PredictPerturb(parse_plan("1:2,2:1"), tau=0.0,
                                                                       certain_fraction=1.0)], decode=False).latents
    pipe = backend.pipe
    sch = _folder_scheduler(tiny_i2v, REQ["steps"])
    gen = torch.Generator("cpu").manual_seed(42)
    x = torch.from_numpy(img).float().div(127.5).sub(1).permute(2, 0, 1)[None]  # the pixels vmt encodes
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompt=REQ["prompt"], negative_prompt=REQ["negative_prompt"],
                                      do_classifier_free_guidance=True, max_sequence_length=512, device="cpu")
        z, cond = pipe.prepare_latents(x, 1, backend.latent_channels, 32, 32, 9, torch.float32,
                                       torch.device("cpu"), gen, None)

        def v_of(lat, t):
            inp = torch.cat([lat, cond], dim=1)
            c = pipe.transformer(hidden_states=inp, timestep=t.expand(1), encoder_hidden_states=pos,
                                 return_dict=False)[0]
            u = pipe.transformer(hidden_states=inp, timestep=t.expand(1), encoder_hidden_states=neg,
                                 return_dict=False)[0]
            return u + 3.5 * (c - u)

        for i, t in enumerate(sch.timesteps):
            s, s_next = sch.sigmas[i], sch.sigmas[i + 1]
            v = v_of(z, t)
            x0, zn = z - s * v, z + (s_next - s) * v
            for _ in range(plan.get(i, 0)):
                eps = randn_tensor(z.shape, generator=gen, device=torch.device("cpu"), dtype=torch.float32)
                zt = (1.0 - s) * x0 + s * eps
                v = v_of(zt, t)
                x0, zn = zt - s * v, zt + (s_next - s) * v
            z = zn
    torch.testing.assert_close(ours, z, rtol=0, atol=0)
    portable = generate(backend, GenerationRequest(**{**req, "noise": "portable"}),
                        [PredictPerturb(parse_plan("1:2,2:1"), tau=0.0, certain_fraction=1.0)], decode=False).latents
    assert (portable - z).abs().max() > 1e-2


def test_refine_sidecar_records_the_model_grids_timesteps(tiny_t2v, tmp_path):
    """With the default grid, out.json carries the integer timesteps the transformer received: the folder
    scheduler's own after set_timesteps (read here straight from the folder with diffusers)."""
    import json

    import diffusers
    from typer.testing import CliRunner

    from cli.main import app

    cls_name = json.loads((tiny_t2v / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    sched = getattr(diffusers, cls_name).from_pretrained(tiny_t2v / "scheduler")
    sched.set_timesteps(3)
    out = tmp_path / "a.mp4"
    r = CliRunner().invoke(app, ["refine", "--model", str(tiny_t2v), "--prompt", "a ball", "--num-frames", "5",
                                 "--height", "16", "--width", "16", "--steps", "3", "--plan", "none", "--quiet",
                                 "--device", "cpu", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["timesteps"] == [float(t) for t in sched.timesteps]
    assert doc["sigmas"][:-1] == [float(s) for s in sched.sigmas[:-1]]
