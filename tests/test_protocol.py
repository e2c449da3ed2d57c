"""The backend protocols and the Intervention base class are enough: generate(), Predict-and-Perturb, a
velocity-only intervention and transfer() run on a second, non-Wan backend (vmt.testing.toy_backend), the
results equal float64 loops written out here over that backend's network, and the protocols declare exactly
the members the loop, generate, transfer, the interventions and the run requests touch."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Protocol

import numpy as np
import pytest
import torch

from vmt.backends.base import AttentionAccess, Denoiser, FlowBackend, GenerationBackend, LatentCodec
from vmt.generate import GenerationRequest, generate
from vmt.motion.guidance import GuidanceConfig
from vmt.sampling.euler import Intervention, sample_euler
from vmt.sampling.pnp import PredictPerturb, parse_plan
from vmt.testing.toy_backend import RGB_STD, SCALE, ToyFlowBackend

ROOT = Path(__file__).resolve().parents[1]
REQ = dict(prompt="a red dot", negative_prompt="blur", num_frames=3, height=8, width=12, steps=6,
           guidance_scale=3.0, shift=3.0, seed=5)
GUIDE = dict(block=1, span=2, tile=(2, 2), window=3, inner_steps=3, reuse_interval=1, lr=0.05, lr_end=0.05)


def protocol_members(proto: type) -> set[str]:
    """The public names a Protocol declares (methods, properties, annotated attributes), with its bases'."""
    names: set[str] = set()
    for cls in proto.__mro__:
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        names |= {n for n in vars(cls) if not n.startswith("_")}
        names |= {n for n in getattr(cls, "__annotations__", {}) if not n.startswith("_")}
    return names


class Float64Reference:
    """The toy's guided velocity evaluated here, in float64, from its network and text features."""

    def __init__(self, toy: ToyFlowBackend, prompt: str, negative: str, guidance_scale: float):
        self.net = copy.deepcopy(toy.net).double()
        self.pos = toy.text_features(prompt).double()
        self.neg = toy.text_features(negative).double()
        self.g = guidance_scale
        self.calls = 0

    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        """v at t = timestep / 1000 (sigma on the euler grid)."""
        self.calls += 1
        with torch.no_grad():
            tt = torch.tensor(t, dtype=torch.float64)
            v_c, v_u = self.net(z, tt, self.pos), self.net(z, tt, self.neg)
        return v_u + self.g * (v_c - v_u) if self.g > 1 else v_c


def _start(shape, seed) -> tuple[torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32), gen


def _decode64(toy: ToyFlowBackend, z: torch.Tensor) -> np.ndarray:
    """Frames by hand: RGB = RGB_STD * codec^T z, each latent cell SCALE x SCALE pixels."""
    rgb = RGB_STD * torch.einsum("cr,cfhw->rfhw", toy.codec.double(), z[0])
    rgb = rgb.repeat_interleave(SCALE, 2).repeat_interleave(SCALE, 3)
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 3, 0).numpy().astype(np.uint8)


# --------------------------------------------------------------------------------------------- protocols
def test_toy_backend_is_every_protocol_and_a_missing_member_is_not():
    toy = ToyFlowBackend()
    for proto in (Denoiser, LatentCodec, AttentionAccess, GenerationBackend, FlowBackend):
        assert isinstance(toy, proto), proto.__name__

    class NoGuidedAttention(ToyFlowBackend):
        guided_attention = None  # a backend without it is not a FlowBackend (the loop calls it unguarded)

    assert not isinstance(NoGuidedAttention(), FlowBackend) and isinstance(NoGuidedAttention(), GenerationBackend)
    assert protocol_members(FlowBackend) == (protocol_members(Denoiser) | protocol_members(LatentCodec)
                                             | protocol_members(AttentionAccess))


def test_wan_backend_is_a_flow_backend(tiny_t2v):
    from vmt.backends.wan import WanBackend, WanLoadOptions

    backend = WanBackend.from_pretrained(str(tiny_t2v), WanLoadOptions(device="cpu", dtype="float32"))
    assert isinstance(backend, FlowBackend)


@pytest.mark.slow
def test_generate_and_transfer_on_the_toy_import_no_wan_backend():
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from vmt.generate import GenerationRequest, generate
        from vmt.motion.guidance import GuidanceConfig
        from vmt.sampling.pnp import PredictPerturb, parse_plan
        from vmt.testing.toy_backend import ToyFlowBackend
        from vmt.transfer import TransferRequest, transfer

        toy = ToyFlowBackend()
        r = generate(toy, GenerationRequest(prompt="a dot", num_frames=3, height=8, width=8, steps=3),
                     [PredictPerturb(parse_plan("1:1"))])
        assert r.frames.shape == (3, 8, 8, 3)
        ref = np.zeros((5, 8, 8, 3), np.uint8)
        t = transfer(toy, ref, TransferRequest(prompt="a dot", height=8, width=8, steps=3),
                     GuidanceConfig(block=0, span=2, tile=(2, 2), window=3, guided_steps=1, inner_steps=1),
                     notify=None)
        assert t.frames.shape == (5, 8, 8, 3)
        bad = sorted(m for m in sys.modules if m.startswith(("vmt.backends.wan", "diffusers.pipelines")))
        print("IMPORTED", bad)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert "IMPORTED []" in res.stdout


# --------------------------------------------------------------------------------------------- generate
@pytest.mark.parametrize("grid", ["euler", "model"])
def test_generate_equals_a_float64_euler_loop_over_the_toy_network(grid):
    toy = ToyFlowBackend()
    res = generate(toy, GenerationRequest(**REQ, grid=grid))
    sig = torch.tensor(res.sigmas, dtype=torch.float64)
    assert len(sig) == REQ["steps"] + 1 and sig[0] == 1 and sig[-1] == 0 and (sig.diff() < 0).all()
    # the euler grid feeds t = sigma; the toy's model grid integer timesteps round(1000 * sigma)
    ts = sig[:-1] if grid == "euler" else (sig[:-1] * 1000).round() / 1000
    assert (res.timesteps is None) == (grid == "euler")
    v = Float64Reference(toy, REQ["prompt"], REQ["negative_prompt"], REQ["guidance_scale"])
    z0, _ = _start((1, 4, 3, 4, 6), REQ["seed"])
    z = z0.double()
    for i in range(REQ["steps"]):
        z = z + (sig[i + 1] - sig[i]) * v(z, float(ts[i]))
    assert (z - z0.double()).abs().mean() > 0.3  # the velocity moved the latent: a real test
    torch.testing.assert_close(res.latents.double(), z, rtol=1e-5, atol=2e-5)
    assert res.frames.shape == (3, 8, 12, 3) and res.frames.dtype == np.uint8
    assert np.abs(res.frames.astype(int) - _decode64(toy, z).astype(int)).max() <= 1
    assert toy.counts.as_dict() == {"nfe": 6, "dit_forward": 12, "dit_backward": 0}  # CFG: two passes per NFE


def test_generate_with_an_image_keeps_the_given_first_frame():
    toy = ToyFlowBackend(is_i2v=True)
    img = np.repeat(np.repeat(np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8), 2, 0), 2, 1)
    res = generate(toy, GenerationRequest(**REQ, image=img))
    assert np.array_equal(res.frames[0], img) and not np.array_equal(res.frames[1], img)
    from vmt.errors import VmtUsageError

    with pytest.raises(VmtUsageError, match=f"{toy.model_id} is an image-to-video model"):
        generate(toy, GenerationRequest(**REQ))


def test_pnp_on_the_toy_counts_the_plans_nfe_and_equals_a_replay_of_its_inner_loop():
    toy = ToyFlowBackend()
    plan = parse_plan("1-2:2,4:1")
    pnp = PredictPerturb(plan, tau=0.0, certain_fraction=1.0)  # tau 0: no voxel is ever certain; no early exit
    res = generate(toy, GenerationRequest(**REQ, grid="euler", noise="pipeline"), [pnp])
    assert toy.counts.nfe == plan.nfe(REQ["steps"]) == REQ["steps"] + 5
    assert [r["step"] for r in pnp.steps] == [1, 2, 4] and len(res.steps) == REQ["steps"]
    # by hand: the start latent and then every perturbation from one generator (noise "pipeline")
    sig = torch.tensor(res.sigmas, dtype=torch.float64)
    v = Float64Reference(toy, REQ["prompt"], REQ["negative_prompt"], REQ["guidance_scale"])
    z0, gen = _start((1, 4, 3, 4, 6), REQ["seed"])
    z = z0.double()
    for i in range(REQ["steps"]):
        s, ds = sig[i], sig[i + 1] - sig[i]
        vz = v(z, float(s))
        x0, zn = z - s * vz, z + ds * vz
        for _ in range(plan.k(i)):
            zt = (1 - s) * x0 + s * torch.randn(z.shape, generator=gen, dtype=torch.float32).double()
            vz = v(zt, float(s))
            x0, zn = zt - s * vz, zt + ds * vz
        z = zn
    assert v.calls == plan.nfe(REQ["steps"])
    torch.testing.assert_close(res.latents.double(), z, rtol=1e-5, atol=2e-5)


def test_a_reused_intervention_starts_clean():
    toy = ToyFlowBackend()
    pnp = PredictPerturb(parse_plan("1-2:2"), tau=0.1, certain_fraction=1.0, seed=9)
    req = GenerationRequest(**REQ, grid="euler", noise="portable")  # P&P draws from its own generator
    a = generate(toy, req, [pnp]).latents
    b = generate(toy, req, [pnp]).latents
    fresh = generate(toy, req, [PredictPerturb(parse_plan("1-2:2"), tau=0.1, certain_fraction=1.0, seed=9)])
    assert torch.equal(a, b) and torch.equal(a, fresh.latents)
    assert [r["step"] for r in pnp.steps] == [1, 2]  # this run's records only


class Heun(Intervention):
    """Velocity only: replaces the update of the steps in `at` by Heun's (trapezoidal) step, 2 NFE each."""

    name = "heun"

    def __init__(self, at: set[int]):
        self.at = at
        self.reset()

    def reset(self) -> None:
        self.taken: list[int] = []

    def step(self, state, velocity):
        if state.index not in self.at:
            return None
        s, s2, z = state.sigma, state.sigma_next, state.z
        v1 = velocity(z, s)
        v2 = velocity(z + (s2 - s) * v1, s2)
        self.taken.append(state.index)
        return z + (s2 - s) * (v1 + v2) / 2

    def step_summary(self, state) -> dict[str, str]:
        return {"heun": "2 NFE"} if state.index in self.at else {}


def test_a_velocity_only_intervention_changes_the_result_as_its_closed_form_says():
    toy = ToyFlowBackend()
    heun = Heun({1, 3})
    shown: list[dict[str, str]] = []
    req = GenerationRequest(**REQ, grid="euler")
    res = generate(toy, req, [heun], on_step=lambda st: shown.append(dict(st.summary)))
    assert heun.taken == [1, 3] and toy.counts.nfe == REQ["steps"] + 2
    assert shown == [{}, {"heun": "2 NFE"}, {}, {"heun": "2 NFE"}, {}, {}]
    sig = torch.tensor(res.sigmas, dtype=torch.float64)
    v = Float64Reference(toy, REQ["prompt"], REQ["negative_prompt"], REQ["guidance_scale"])
    z = _start((1, 4, 3, 4, 6), REQ["seed"])[0].double()
    plain = z.clone()
    for i in range(REQ["steps"]):
        s, s2 = sig[i], sig[i + 1]
        v1 = v(z, float(s))
        z = z + (s2 - s) * ((v1 + v(z + (s2 - s) * v1, float(s2))) / 2 if i in (1, 3) else v1)
        plain = plain + (s2 - s) * v(plain, float(s))
    torch.testing.assert_close(res.latents.double(), z, rtol=1e-5, atol=2e-5)
    assert (z - plain).abs().max() > 1e-3  # Heun's steps made a difference the comparison can see
    again = generate(toy, req, [heun]).latents  # reused: reset by the loop
    assert torch.equal(again, res.latents) and heun.taken == [1, 3]


def test_the_loop_refuses_what_is_not_an_intervention():
    class Duck:
        name = "duck"

        def step(self, state, velocity):
            return state.z

    with pytest.raises(TypeError, match="Duck is not a vmt.sampling.euler.Intervention"):
        sample_euler(lambda z, s: z, torch.ones(2), torch.tensor([1.0, 0.0]), [Duck()])


# --------------------------------------------------------------------------------------------- transfer
def _reference_clip(frames=5, height=8, width=12) -> np.ndarray:
    """Block-constant random texture moving one latent cell right per frame."""
    tex = np.random.default_rng(1).integers(0, 256, (height // SCALE, width // SCALE + frames, 3), dtype=np.uint8)
    clip = np.stack([tex[:, t : t + width // SCALE] for t in range(frames)])
    return np.repeat(np.repeat(clip, SCALE, 1), SCALE, 2)


def test_transfer_with_pnp_runs_on_the_toy_through_attention_access():
    from vmt.transfer import TransferRequest, transfer

    toy = ToyFlowBackend()
    req = TransferRequest(prompt="a red dot", height=8, width=12, steps=4, shift=3.0, guidance_scale=3.0, seed=2)
    shown: list[dict[str, str]] = []
    pnp = PredictPerturb(parse_plan("1:1"), tau=0.0, certain_fraction=1.0)
    res = transfer(toy, _reference_clip(), req, GuidanceConfig(**GUIDE, guided_steps=2), [pnp],
                   on_step=lambda st: shown.append(dict(st.summary)), notify=None)
    assert res.frames.shape == (5, 8, 12, 3) and res.grid == (5, 4, 6)
    assert [g["step"] for g in res.guidance] == [0, 1]
    assert all(g["amf_loss"][-1] < g["amf_loss"][0] for g in res.guidance)  # the guidance optimises the AMF
    # 4 steps + 1 P&P iteration, CFG: 2 passes each; per guided step 1 reference + 3 guided forwards
    assert toy.counts.as_dict() == {"nfe": 5, "dit_forward": 5 * 2 + 2 * (1 + 3), "dit_backward": 2 * 3}
    assert [sorted(s) for s in shown] == [["amf"], ["amf", "pnp"], [], []]
    assert shown[0]["amf"] == f"{res.guidance[0]['amf_loss'][0]:.4g}->{res.guidance[0]['final_amf_loss']:.4g}"
    plain = transfer(ToyFlowBackend(), _reference_clip(), req, GuidanceConfig(**GUIDE, guided_steps=0), [pnp],
                     notify=None)
    assert not torch.allclose(plain.latents, res.latents)


# --------------------------------------------------------------------------------------------- members
class Recorder:
    """Forwards every attribute to the backend and records the public names asked for."""

    def __init__(self, target):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_seen", set())

    def __getattr__(self, name):
        if not name.startswith("_"):
            self._seen.add(name)
        return getattr(self._target, name)

    def __setattr__(self, name, value):
        self._seen.add(name)
        setattr(self._target, name, value)


def test_the_protocols_declare_exactly_what_generate_transfer_and_the_cli_use(tmp_path):
    from vmt.errors import VmtUsageError
    from vmt.runs import RefineRequest
    from vmt.runs import TransferRequest as TransferRunRequest
    from vmt.runtime import Timer
    from vmt.transfer import TransferRequest, transfer

    img = np.zeros((8, 12, 3), np.uint8)
    gen = Recorder(ToyFlowBackend())
    generate(gen, GenerationRequest(**REQ), [PredictPerturb(parse_plan("1:1"))])
    generate(gen, GenerationRequest(**REQ, image=img))
    i2v = Recorder(ToyFlowBackend(is_i2v=True))
    with pytest.raises(VmtUsageError):  # the message names the model
        generate(i2v, GenerationRequest(**REQ))
    gen._seen.update(i2v._seen)
    refine = RefineRequest(prompt="a dot", num_frames=3, height=8, width=12, steps=3, plan="1:1")
    refine.run_on(gen, tmp_path / "r.mp4", parse_plan("1:1"), Timer())
    assert json.loads((tmp_path / "r.json").read_text())["pnp"]["nfe_sampler"] == 4
    assert gen._seen <= protocol_members(GenerationBackend), gen._seen - protocol_members(GenerationBackend)

    tr = Recorder(ToyFlowBackend())
    req = TransferRequest(prompt="a red dot", height=8, width=12, steps=3, guidance_scale=3.0, grid="model")
    transfer(tr, _reference_clip(), req, GuidanceConfig(**GUIDE, guided_steps=1, ref_amf="clean"),
             [PredictPerturb(parse_plan("1:1"))], notify=None)
    ti = Recorder(ToyFlowBackend(is_i2v=True))  # onto an image: the first frame is the image's
    first = np.full((8, 12, 3), 200, np.uint8)
    res = transfer(ti, _reference_clip(), req, GuidanceConfig(**GUIDE, guided_steps=1), image=first, notify=None)
    assert np.abs(res.frames[0].astype(int) - 200).max() <= 1
    assert np.abs(res.frames[1:].astype(int) - 200).max() > 10
    tr._seen.update(ti._seen)
    job = TransferRunRequest(reference=tmp_path / "ref.mp4", prompt="a dot", height=8, width=12, steps=3,
                             refine=True, plan="1:1")
    cfg = GuidanceConfig(**GUIDE, guided_steps=1)
    job.run_on(tr, tmp_path / "t.mp4", (cfg, parse_plan("1:1")), Timer(), reference=(_reference_clip(), 8.0))
    assert json.loads((tmp_path / "t.json").read_text())["guidance"]["steps"][0]["step"] == 0

    used = gen._seen | tr._seen
    assert used == protocol_members(FlowBackend), (
        f"used, not declared: {sorted(used - protocol_members(FlowBackend))}; "
        f"declared, not used: {sorted(protocol_members(FlowBackend) - used)}")
