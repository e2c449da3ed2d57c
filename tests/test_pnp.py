"""Predict-and-Perturb: plans, gate, NFE accounting, and exact Gaussian closed forms (no model weights)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vmt.errors import VmtUsageError
from vmt.sampling.euler import Intervention, sample_euler
from vmt.sampling.pnp import PredictPerturb, check_gate, parse_plan, pnp_step
from vmt.sampling.sigmas import flow_sigmas

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "refine"


class Counting:
    """A smooth nonlinear velocity field on a small latent that counts its calls (one call = one NFE)."""

    def __init__(self):
        self.calls = 0
        self.sigmas: list[float] = []

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.sigmas.append(float(sigma))
        return torch.tanh(z) * (0.5 + sigma) - 0.3 * z.roll(1, dims=1)


def _z(seed: int = 0, shape=(1, 4, 3, 4, 5)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------- plans
def test_parse_plan_ranges_and_keywords():
    p = parse_plan(" 2-5: 3, 6-14 :1 ")
    assert p.ranges == ((2, 5, 3), (6, 14, 1))
    assert [p.k(i) for i in (0, 1, 2, 5, 6, 14, 15)] == [0, 0, 3, 3, 1, 1, 0]
    assert parse_plan("default") == p
    assert parse_plan("none").empty and parse_plan("").empty
    assert parse_plan("7:2").ranges == ((7, 7, 2),)
    assert str(parse_plan("6-14:1,2-5:3")) == "2-5:3,6-14:1"


@pytest.mark.parametrize("text, fragment", [
    ("2-x:3", "'2-x:3'"),
    ("2-5", "STEP:K"),
    ("2-5:3,5-8:1", "overlap"),
    ("2-5:3,0-9:1", "overlap"),
    ("5-2:3", "backwards"),
    ("2-5:0", "K = 0"),
    ("2-5:-1", "STEP:K"),
])
def test_malformed_plans_are_clear_errors(text, fragment):
    with pytest.raises(VmtUsageError) as e:
        parse_plan(text)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_plan_beyond_schedule_is_an_error():
    with pytest.raises(VmtUsageError, match="6-14 goes beyond the 10-step schedule"):
        parse_plan("2-5:3,6-14:1").validate(10)
    assert parse_plan("2-5:3,6-14:1").validate(15).last_step == 14
    assert parse_plan("2-5:3,6-14:1").clipped(8).ranges == ((2, 5, 3), (6, 7, 1))


@pytest.mark.parametrize("tau, cf, p, fragment", [
    (-0.1, 0.999, 1.0, "tau must be >= 0"),
    (float("nan"), 0.999, 1.0, "tau"),
    (0.25, 0.0, 1.0, "certain_fraction"),
    (0.25, 1.5, 1.0, "certain_fraction"),
    (0.25, 0.999, 0.5, "p_norm"),
])
def test_bad_gate_parameters(tau, cf, p, fragment):
    with pytest.raises(VmtUsageError) as e:
        check_gate(tau, cf, p)
    assert str(e.value).startswith(fragment) and e.value.params == [fragment.split()[0]]
    with pytest.raises(VmtUsageError):
        PredictPerturb(parse_plan("default"), tau, cf, p)


# ------------------------------------------------------------------------------------ NFE accounting
@pytest.mark.parametrize("steps, plan, expected", [
    (50, "2-5:3,6-14:1", 71),   # default
    (40, "2-5:3,6-13:1", 60),   # Wan2.2-A14B T2V
    (40, "1-5:3,6-13:1", 63),   # Wan2.2-A14B I2V
    (35, "3-8:2,9-15:1", 54),   # Cosmos-Predict2.5
])
def test_nfe_of_published_plans_without_early_exit(steps, plan, expected):
    v = Counting()
    pnp = PredictPerturb(parse_plan(plan), tau=0.25, certain_fraction=1.0)
    sample_euler(v, _z(), flow_sigmas(steps, 3.0), [pnp])
    assert v.calls == expected
    assert parse_plan(plan).nfe(steps) == expected
    assert sum(r["nfe"] for r in pnp.steps) + steps - len(pnp.steps) == expected


def test_inner_loop_evaluates_at_the_outer_sigma():
    """Same sigma (so the same timestep and, on Wan2.2, the same expert) for all K + 1 evaluations."""
    v = Counting()
    sig = flow_sigmas(8, 3.0)
    sample_euler(v, _z(), sig, [PredictPerturb(parse_plan("2:3"), tau=0.0, certain_fraction=1.0)])
    expected = [float(sig[0]), float(sig[1])] + [float(sig[2])] * 4 + [float(s) for s in sig[3:-1]]
    assert v.sigmas == expected


@pytest.mark.parametrize("name, nfe", [
    ("default.toml", 71), ("wan2.1-t2v-1.3b.toml", 71), ("wan2.2-a14b-t2v.toml", 60),
    ("wan2.2-a14b-i2v.toml", 63), ("nfe-x2.toml", 100),
])
def test_recipes_load_with_cli_option_names_and_give_published_nfe(name, nfe):
    from cli.main import load_recipe

    r = load_recipe(RECIPES / name, "refine")
    assert parse_plan(r["plan"]).validate(r["steps"]).nfe(r["steps"]) == nfe


def test_recipe_values_match_the_published_setups():
    from cli.main import load_recipe

    t2v = load_recipe(RECIPES / "wan2.2-a14b-t2v.toml", "refine")
    assert (t2v["steps"], t2v["height"], t2v["width"], t2v["num_frames"]) == (40, 480, 832, 81)
    assert (t2v["guidance_scale"], t2v["guidance_scale_2"], t2v["tau"]) == (4.0, 3.0, 0.2)
    i2v = load_recipe(RECIPES / "wan2.2-a14b-i2v.toml", "refine")
    assert (i2v["guidance_scale"], i2v["tau"], i2v["steps"]) == (3.5, 0.0, 40)
    assert load_recipe(RECIPES / "default.toml", "refine")["tau"] == 0.25


# ----------------------------------------------------------------------------- identities and the gate
def test_empty_plan_is_the_plain_loop_bit_for_bit():
    sig = flow_sigmas(12, 3.0)
    plain = sample_euler(Counting(), _z(1), sig)
    empty = sample_euler(Counting(), _z(1), sig, [PredictPerturb(parse_plan("none"))])
    assert torch.equal(plain, empty)


def test_all_certain_gate_equals_plain_euler_bit_for_bit():
    sig = flow_sigmas(20, 3.0)
    plain = sample_euler(Counting(), _z(2), sig)
    pnp = PredictPerturb(parse_plan("2-5:3,6-14:1"), tau=math.inf, certain_fraction=1.0)
    gated = sample_euler(Counting(), _z(2), sig, [pnp])
    assert torch.equal(plain, gated)
    assert all(f == 1.0 for r in pnp.steps for f in r["certain_fraction"])
    # and with early exit on, tau = inf costs one extra evaluation per refined step
    v = Counting()
    sample_euler(v, _z(2), sig, [PredictPerturb(parse_plan("2-5:3,6-14:1"), tau=math.inf)])
    assert v.calls == 20 + 13


def _ungated_reference(velocity, z, s, s_next, k, seed):
    """The spec's algebra written out directly (no gate): float math on the same noise sequence."""
    g = torch.Generator().manual_seed(seed)
    v = velocity(z, s)
    x0, zn = z - s * v, z + (s_next - s) * v
    for _ in range(k):
        zt = (1 - s) * x0 + s * torch.randn(z.shape, generator=g, dtype=z.dtype)
        v = velocity(zt, s)
        x0, zn = zt - s * v, zt + (s_next - s) * v
    return zn


def test_tau_zero_refines_every_voxel():
    z, s, s_next = _z(3).double(), torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    out, info = pnp_step(Counting(), z, s, s_next, 3, tau=0.0, certain_fraction=1.0,
                         generator=torch.Generator().manual_seed(5))
    ref = _ungated_reference(Counting(), z, s, s_next, 3, 5)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert info.certain_fraction == [0.0, 0.0, 0.0] and info.nfe == 4


def test_gate_keeps_the_plain_update_on_certain_voxels():
    """Left half of the frame: the clean estimate ignores the input (U = 0, certain at ii = 1) and must keep
    the plain Euler update; right half: it follows the input (U ~ s) and must follow the ungated chain."""
    target = _z(9).double()
    left = torch.zeros(1, 1, 3, 4, 5, dtype=torch.bool)
    left[..., :2] = True

    def velocity(z, sigma):
        x0_hat = torch.where(left, target, 0.5 * z)
        return (z - x0_hat) / sigma  # so that z - sigma * v = x0_hat

    z, s, s_next = _z(4).double(), torch.tensor(0.9, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    out, info = pnp_step(velocity, z, s, s_next, 2, tau=0.05, certain_fraction=1.0,
                         generator=torch.Generator().manual_seed(7))
    plain = z + (s_next - s) * velocity(z, s)
    ungated = _ungated_reference(velocity, z, s, s_next, 2, 7)
    lm = left.expand_as(z)
    assert torch.equal(out[lm], plain[lm])
    torch.testing.assert_close(out[~lm], ungated[~lm], rtol=0, atol=1e-12)
    assert not torch.allclose(out[~lm], plain[~lm])
    assert info.certain_fraction == [pytest.approx(0.4), pytest.approx(0.4)]


def test_early_exit_when_everything_is_certain():
    target = _z(9)
    v_calls = []

    def velocity(z, sigma):
        v_calls.append(1)
        return (z - target) / sigma

    pnp = PredictPerturb(parse_plan("1:3"), tau=0.01, certain_fraction=0.999)
    sample_euler(velocity, _z(), flow_sigmas(4, 3.0), [pnp])
    assert len(v_calls) == 4 + 1  # K = 3 planned, stopped after the first Perturb+Predict
    assert pnp.steps[0]["early_exit"] and pnp.steps[0]["iterations"] == 1


def test_composes_with_a_before_step_intervention():
    """Motion guidance runs before_step; P&P must refine the latent that hook produced."""
    class Shift(Intervention):
        name = "shift"

        def before_step(self, state, velocity):
            return state.z + 0.1

    sig = flow_sigmas(5, 3.0)
    pnp = PredictPerturb(parse_plan("1-2:2"), tau=0.0, certain_fraction=1.0, seed=3)
    out = sample_euler(Counting(), _z(5), sig, [Shift(), pnp])
    # by hand: the same chain with the shift applied first and the same generator stream
    g = torch.Generator("cpu").manual_seed(3 + 0x5EED)
    z = _z(5)
    for i in range(5):
        z = z + 0.1
        if i in (1, 2):
            z, _ = pnp_step(Counting(), z, sig[i], sig[i + 1], 2, 0.0, 1.0, generator=g)
        else:
            z = z + (sig[i + 1] - sig[i]) * Counting()(z, sig[i])
    assert torch.equal(out, z)


def test_same_seed_same_result_other_seed_differs():
    sig = flow_sigmas(8, 3.0)
    a = sample_euler(Counting(), _z(), sig, [PredictPerturb(parse_plan("1-3:2"), tau=0.0, seed=1)])
    b = sample_euler(Counting(), _z(), sig, [PredictPerturb(parse_plan("1-3:2"), tau=0.0, seed=1)])
    c = sample_euler(Counting(), _z(), sig, [PredictPerturb(parse_plan("1-3:2"), tau=0.0, seed=2)])
    assert torch.equal(a, b) and not torch.allclose(a, c)


# ------------------------------------------------------------------------- Gaussian data, exact model
def _gaussian_velocity(mu: float, w: float):
    """Exact flow-matching velocity of data N(mu, w I): E[eps - x0 | x_s = x] (float64)."""
    def velocity(x, sigma):
        s = float(sigma)
        c = (1 - s) ** 2 * w + s**2
        e_x0 = mu + (1 - s) * w / c * (x - (1 - s) * mu)
        e_eps = s / c * (x - (1 - s) * mu)
        return e_eps - e_x0
    return velocity


def test_one_perturb_predict_maps_the_clean_estimate_as_the_algebra_says():
    """With sigma_next = sigma the step returns the last perturbed latent zt^K. For K = 2:
    zt^2 = (1-s) x0^1 + s eps2 and x0^1 = E[x0 | zt^1] = mu + a ((1-s) x0^0 + s eps1 - (1-s) mu),
    a = (1-s) w / ((1-s)^2 w + s^2), x0^0 = E[x0 | z]."""
    mu, w, s = 0.7, 2.0, 0.6
    z = _z(11, (1, 1, 50, 8, 8)).double()
    st = torch.tensor(s, dtype=torch.float64)
    out, _ = pnp_step(_gaussian_velocity(mu, w), z, st, st, 2, tau=0.0, certain_fraction=1.0,
                      generator=torch.Generator().manual_seed(21))
    g = torch.Generator().manual_seed(21)
    eps1 = torch.randn(z.shape, generator=g, dtype=torch.float64)
    eps2 = torch.randn(z.shape, generator=g, dtype=torch.float64)
    c = (1 - s) ** 2 * w + s**2
    a = (1 - s) * w / c
    x0_0 = mu + a * (z - (1 - s) * mu)
    x0_1 = mu + a * ((1 - s) * x0_0 + s * eps1 - (1 - s) * mu)
    torch.testing.assert_close(out, (1 - s) * x0_1 + s * eps2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("w, s", [(1.0, 0.5), (4.0, 0.6), (2.0, 0.3)])
def test_stationary_variance_is_cold(w, s):
    """P&P at fixed s is z' = z + s^2 score(z) + s eps. With W = (1-s)^2 w the variance of the signal part
    of z (data N(mu, w) seen at level s), its stationary variance is (W + s^2)^2 / (2W + s^2) < W + s^2."""
    mu = 1.5
    n = 40_000
    z = 3.0 * _z(13, (1, 1, n, 1, 1)).double()  # far from stationary on purpose
    st = torch.tensor(s, dtype=torch.float64)
    W = (1 - s) ** 2 * w
    b = W / (W + s**2)  # contraction per iteration
    k = max(10, math.ceil(math.log(1e-6) / math.log(b**2)))
    out, _ = pnp_step(_gaussian_velocity(mu, w), z, st, st, k, tau=0.0, certain_fraction=1.0,
                      generator=torch.Generator().manual_seed(17))
    expected = (W + s**2) ** 2 / (2 * W + s**2)
    var = float(out.var())
    se = expected * math.sqrt(2 / (n - 1))
    assert abs(var - expected) < 5 * se
    assert expected < W + s**2 and var < W + s**2 - 5 * se  # colder than the true marginal
    assert abs(float(out.mean()) - (1 - s) * mu) < 5 * math.sqrt(expected / n)
