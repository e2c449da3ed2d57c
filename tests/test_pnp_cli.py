"""`vmt refine` with P&P end to end on tiny random-weight Wan models (T2V, I2V, two-expert Wan2.2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app

SMALL = ["--num-frames", "9", "--height", "32", "--width", "32", "--quiet"]


def _run(args):
    return CliRunner().invoke(app, ["refine", *args])


@pytest.mark.slow
def test_t2v_plan_nfe_and_certain_fractions_in_sidecar(tiny_t2v, tmp_path):
    out = tmp_path / "a.mp4"
    r = _run(["--model", str(tiny_t2v), "--prompt", "a ball", *SMALL, "--steps", "6", "--plan", "1-2:2,3:1",
              "--tau", "0.25", "--certain-fraction", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 0
    assert doc["compute"]["nfe"] == 6 + 2 + 2 + 1 and doc["pnp"]["nfe"] == 11
    assert doc["compute"]["dit_forward"] == 22  # CFG pair per NFE
    refined = {s["step"]: s["pnp"] for s in doc["steps"] if "pnp" in s}
    assert sorted(refined) == [1, 2, 3]
    assert [len(refined[i]["certain_fraction"]) for i in (1, 2, 3)] == [2, 2, 1]
    assert all(0.0 <= f <= 1.0 for rec in refined.values() for f in rec["certain_fraction"])
    assert doc["params"]["plan"] == "1-2:2,3:1"
    assert doc["pnp"]["time_refined_steps_s"] > 0 and "time_plain_steps_s" in doc["pnp"]


@pytest.mark.slow
def test_plan_none_equals_the_foundation_loop_bit_for_bit(tiny_t2v):
    from vmt.backends.wan import WanBackend, WanLoadOptions
    from vmt.generate import GenerationRequest, generate
    from vmt.sampling.pnp import PredictPerturb, parse_plan

    backend = WanBackend.from_pretrained(str(tiny_t2v), WanLoadOptions(device="cpu", dtype="float32"))
    req = GenerationRequest(prompt="x", num_frames=9, height=32, width=32, steps=5, seed=4)
    plain = generate(backend, req, decode=False).latents
    none = generate(backend, req, [PredictPerturb(parse_plan("none"))], decode=False).latents
    inf = generate(backend, req, [PredictPerturb(parse_plan("1-3:2"), tau=float("inf"))], decode=False).latents
    refined = generate(backend, req, [PredictPerturb(parse_plan("1-3:2"), tau=0.0)], decode=False).latents
    assert torch.equal(plain, none) and torch.equal(plain, inf)
    assert not torch.allclose(plain, refined)


@pytest.mark.slow
def test_cli_plan_none_counts_plain_nfe_and_is_reproducible(tiny_t2v, tmp_path):
    outs = []
    for name, plan in (("p1.mp4", "none"), ("p2.mp4", "1:3"), ("p3.mp4", "1:3")):
        out = tmp_path / name
        r = _run(["--model", str(tiny_t2v), "--prompt", "x", *SMALL, "--steps", "4", "--plan", plan,
                  "--tau", "0", "--seed", "3", "-o", str(out)])
        assert r.exit_code == 0, r.output
        outs.append(json.loads(out.with_suffix(".json").read_text()))
    assert outs[0]["compute"]["nfe"] == 4 and outs[0]["pnp"]["plan"] == "none"
    assert outs[1]["compute"]["nfe"] == 7
    from vmt.io.video import read_video

    a, _ = read_video(tmp_path / "p2.mp4")
    b, _ = read_video(tmp_path / "p3.mp4")
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_default_plan_is_clipped_on_short_schedules(tiny_t2v, tmp_path):
    out = tmp_path / "d.mp4"
    r = _run(["--model", str(tiny_t2v), "--prompt", "x", *SMALL, "--steps", "4", "--certain-fraction", "1",
              "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["params"]["plan"] == "2-3:3" and doc["compute"]["nfe"] == 4 + 6


@pytest.mark.slow
def test_i2v_with_refinement(tiny_i2v, tmp_path):
    from vmt.io.video import write_video

    img = tmp_path / "first.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "i.mp4"
    r = _run(["--model", str(tiny_i2v), "--prompt", "x", "--image", str(img), *SMALL, "--steps", "5",
              "--plan", "1-2:3", "--tau", "0", "--certain-fraction", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["compute"]["nfe"] == 11 and out.is_file()
    assert write_video  # imported to keep the I/O module's import path exercised


def test_two_expert_inner_loop_uses_the_expert_of_the_outer_timestep(tiny_t2v_2expert, tmp_path):
    """Count transformer calls per expert: every P&P evaluation runs on the expert of its outer step."""
    from vmt.backends.wan import WanBackend, WanLoadOptions
    from vmt.generate import GenerationRequest, generate
    from vmt.sampling.pnp import PredictPerturb, parse_plan

    backend = WanBackend.from_pretrained(str(tiny_t2v_2expert), WanLoadOptions(device="cpu", dtype="float32"))
    calls = {"high": 0, "low": 0}
    backend.pipe.transformer.register_forward_hook(lambda *a: calls.__setitem__("high", calls["high"] + 1))
    backend.pipe.transformer_2.register_forward_hook(lambda *a: calls.__setitem__("low", calls["low"] + 1))
    req = GenerationRequest(prompt="x", num_frames=9, height=32, width=32, steps=8, guidance_scale=1.0,
                            guidance_scale_2=1.0, seed=0)
    plan = parse_plan("0-1:2,5-6:1")
    res = generate(backend, req, [PredictPerturb(plan, tau=0.0, certain_fraction=1.0)], decode=False)
    sig = res.sigmas[:-1]
    boundary = 0.875  # the tiny two-expert model's boundary_ratio
    k = {0: 2, 1: 2, 5: 1, 6: 1}
    high = sum(1 + k.get(i, 0) for i, s in enumerate(sig) if s * 1000 >= boundary * 1000)
    low = sum(1 + k.get(i, 0) for i, s in enumerate(sig) if s * 1000 < boundary * 1000)
    assert high > 0 and low > 0
    assert calls == {"high": high, "low": low} and backend.counts.nfe == 8 + 6


@pytest.mark.slow
def test_two_expert_cli(tiny_t2v_2expert, tmp_path):
    out = tmp_path / "e.mp4"
    r = _run(["--model", str(tiny_t2v_2expert), "--prompt", "x", *SMALL, "--steps", "6", "--plan", "1-2:1",
              "--guidance-scale", "4", "--guidance-scale-2", "3", "--certain-fraction", "1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.with_suffix(".json").read_text())["compute"]["nfe"] == 8


@pytest.mark.parametrize("args, fragment", [
    (["--plan", "2-x:3"], "'2-x:3'"),
    (["--plan", "1-3:2,3-4:1"], "overlap"),
    (["--plan", "2-9:1"], "beyond the 6-step schedule"),
    (["--tau", "-0.5"], "--tau must be >= 0"),
    (["--certain-fraction", "0"], "--certain-fraction"),
])
def test_bad_refinement_options_exit_2_without_output(tiny_t2v, tmp_path, args, fragment):
    out = tmp_path / "bad.mp4"
    r = _run(["--model", str(tiny_t2v), "--prompt", "x", *SMALL, "--steps", "6", *args, "-o", str(out)])
    assert r.exit_code == 2
    assert fragment in " ".join(r.output.split())
    assert list(tmp_path.iterdir()) == []
