"""P&P plans written as sigma ranges: the same run as the index plan they denote, carried over to short
(step-distilled) schedules, clear errors, and the distilled recipe end to end on the tiny Wan."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from vmt.errors import VmtUsageError
from vmt.sampling.euler import sample_euler
from vmt.sampling.pnp import PredictPerturb, parse_plan
from vmt.sampling.sigmas import flow_sigmas


class Counting:
    """A smooth nonlinear velocity that records the sigma of every call."""

    def __init__(self):
        self.sigmas: list[float] = []

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.sigmas.append(float(sigma))
        return torch.tanh(z) * (0.5 + sigma) - 0.3 * z.roll(1, dims=1)


def _z(seed: int = 0) -> torch.Tensor:
    return torch.randn((1, 4, 3, 4, 5), generator=torch.Generator().manual_seed(seed))


def _between(a: float, b: float) -> str:
    return f"{(a + b) / 2:.6f}"


def test_sigma_plan_is_the_index_plan_it_denotes_bit_for_bit():
    sig = flow_sigmas(12, 3.0)
    s = [float(x) for x in sig]
    # steps 2-4 with K=2 and 6-8 with K=1, written by the sigmas between their neighbours
    text = (f"{_between(s[1], s[2])}-{_between(s[4], s[5])}:2,"
            f"{_between(s[5], s[6])}-{_between(s[8], s[9])}:1")
    by_index, by_sigma = Counting(), Counting()
    a = sample_euler(by_index, _z(), sig, [PredictPerturb(parse_plan("2-4:2,6-8:1"), 0.25, 1.0, seed=3)])
    pnp = PredictPerturb(parse_plan(text), 0.25, 1.0, seed=3)
    b = sample_euler(by_sigma, _z(), sig, [pnp])
    assert torch.equal(a, b) and by_index.sigmas == by_sigma.sigmas
    doc = pnp.summary(12)
    assert doc["plan_steps"] == "2-4:2,6-8:1" and doc["nfe_planned"] == 12 + 3 * 2 + 3


def test_sigma_plan_carries_over_to_a_short_schedule():
    """The 50-step default plan's band (sigma 0.88-0.99) on a 4-step shift-5 grid: the steps inside it."""
    sig = flow_sigmas(4, 5.0)
    inside = [i for i in range(4) if 0.8 <= float(sig[i]) <= 0.99]
    assert inside  # the grid has a step in the band (else the test would say nothing)
    v = Counting()
    sample_euler(v, _z(), sig, [PredictPerturb(parse_plan("0.99-0.8:1"), 0.0, 1.0)])
    expected = []
    for i in range(4):
        expected += [float(sig[i])] * (2 if i in inside else 1)
    assert v.sigmas == expected


@pytest.mark.parametrize("text, fragment", [
    ("0.9-0.5:1,0.6-0.2:1", "overlap"),
    ("1.5-0.5:1", "above 1"),
    ("0.9-0.5:0", "K = 0"),
    ("0.9-:1", "HIGH-LOW:K"),
])
def test_bad_sigma_plans(text, fragment):
    with pytest.raises(VmtUsageError, match=fragment):
        parse_plan(text)


def test_a_step_covered_by_index_and_sigma_is_an_error():
    sig = flow_sigmas(6, 3.0)
    plan = parse_plan(f"1:1,{float(sig[1]) + 0.001:.4f}-{float(sig[1]) - 0.001:.4f}:2")
    with pytest.raises(VmtUsageError, match="both cover outer step 1"):
        sample_euler(Counting(), _z(), sig, [PredictPerturb(plan)])


def test_distilled_recipe_runs_the_sigma_plan_on_its_grid(tiny_t2v, tmp_path):
    out = tmp_path / "d.mp4"
    r = CliRunner().invoke(app, ["refine", "--recipe", "step-distilled", "--model", str(tiny_t2v), "--prompt",
                                 "a ball", "--num-frames", "9", "--height", "32", "--width", "32", "--dtype",
                                 "float32", "--quiet", "-o", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    sig = doc["sigmas"]
    inside = [i for i in range(4) if 0.8 <= sig[i] <= 0.99]
    assert doc["params"]["guidance_scale"] == 1.0 and len(sig) == 5
    assert doc["compute"]["nfe"] == 4 + len(inside) and doc["compute"]["dit_forward"] == doc["compute"]["nfe"]
    assert sorted(s["step"] for s in doc["steps"] if "pnp" in s) == inside
    assert doc["pnp"]["plan"] == "0.99-0.8:1" and doc["pnp"]["nfe_planned"] == 4 + len(inside)
