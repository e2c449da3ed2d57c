"""GRU-NF / GRU-SNF: flow exactness, MCMC invariance, no leak, sampling wiring, files, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vmt.errors import VmtUsageError
from vmt.keypoints.data import (
    Layout,
    Sequences,
    load_sequences,
    make_windows,
    minmax_stats,
    save_sequences,
    split_by_identity,
)
from vmt.keypoints.flow import ConditionalRealNVP
from vmt.keypoints.mcmc import energy_elements, mh_steps
from vmt.keypoints.model import GRUNF, ModelConfig, SampleOptions, check_layout, load_model, save_model
from vmt.keypoints.augment import augment_batch, random_affine, resample_speed
from vmt.keypoints.baselines import fit_damping, velocity_forecast, velocity_steps
from vmt.keypoints.predict import encode_windows, fit_blend, fit_residual_scale, fit_shrink, forecast, normalise_windows
from vmt.keypoints.train import TrainConfig, calibrate_blend, calibrate_shrink, evaluate, fit

torch.set_num_threads(1)


def _warm_flow(dim=6, cond_dim=3, dtype=torch.float32, seed=0) -> ConditionalRealNVP:
    """A flow with random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    flow = ConditionalRealNVP(dim, cond_dim, hidden=16, blocks=3).to(dtype)
    for p in flow.parameters():  # make the couplings visibly non-identity
        p.data.add_(0.3 * torch.randn_like(p))
    flow.train()
    with torch.no_grad():
        for _ in range(30):
            flow(2 * torch.randn(64, dim, dtype=dtype) + 1, torch.randn(64, cond_dim, dtype=dtype))
    return flow.eval()


def test_flow_inverts_to_1e5():
    flow = _warm_flow()
    x, c = torch.randn(128, 6) * 1.5, torch.randn(128, 3)
    with torch.no_grad():
        u, _ = flow(x, c)
        back = flow.inverse(u, c)
    assert (u - x).abs().max() > 0.1  # the flow is not the identity
    assert (back - x).abs().max() < 1e-5


def test_logdet_matches_bruteforce_jacobian():
    flow = _warm_flow(dim=4, cond_dim=2, dtype=torch.float64)
    x, c = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    _, logdet = flow(x, c)
    for i in range(5):
        ci = c[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, ci=ci: flow(v[None], ci)[0][0], x[i])
        ref = torch.linalg.slogdet(jac)[1]
        assert abs(logdet[i].item() - ref.item()) < 1e-9


@pytest.mark.slow
def test_nll_decreases_to_the_true_conditional_entropy():
    # x | c ~ N([sin 2c, c^2], diag(0.1^2, 0.2^2)): the best achievable NLL is known in closed form.
    torch.manual_seed(0)
    sig = torch.tensor([0.1, 0.2])

    def draw(n):
        c = torch.rand(n, 1) * 2 - 1
        mu = torch.cat([torch.sin(2 * c), c**2], 1)
        return mu + sig * torch.randn(n, 2), c

    flow = ConditionalRealNVP(2, 1, hidden=32, blocks=4)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    xv, cv = draw(2000)
    flow.eval()
    with torch.no_grad():
        start = -flow.log_prob(xv, cv).mean().item()
    flow.train()
    for _ in range(400):
        x, c = draw(256)
        loss = -flow.log_prob(x, c).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flow.eval()
    with torch.no_grad():
        end = -flow.log_prob(xv, cv).mean().item()
    true = float(sum(0.5 * math.log(2 * math.pi * math.e * s**2) for s in sig.tolist()))
    assert end < start - 1.0
    assert end < true + 0.35  # within a third of a nat of the optimum


@pytest.mark.parametrize("elementwise", [True, False])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_mh_leaves_the_annealed_gaussian_invariant(elementwise, lam):
    # exp(-E_lam) is Gaussian per element: precision 1 + lam, mean 2 lam g / (1 + lam).
    gen = torch.Generator().manual_seed(1)
    g = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    mean, var = 2 * lam * g / (1 + lam), torch.full_like(g, 1 / (1 + lam))
    y = mean + var.sqrt() * torch.randn(20000, 4, generator=gen, dtype=torch.float64)
    y, rate = mh_steps(y, g, lam, steps=40, step_size=0.6, elementwise=elementwise, generator=gen)
    assert 0.2 < rate < 0.95
    assert (y.mean(0) - mean).abs().max() < 0.03
    assert (y.var(0) / var - 1).abs().max() < 0.05


@pytest.mark.slow
def test_mh_converges_from_a_wrong_start():
    gen = torch.Generator().manual_seed(2)
    g = torch.tensor([1.5, -1.0], dtype=torch.float64)
    y = torch.full((8000, 2), 4.0, dtype=torch.float64)
    y, _ = mh_steps(y, g, 1.0, steps=300, step_size=0.5, elementwise=False, generator=gen)
    assert (y.mean(0) - g).abs().max() < 0.03   # lam = 1: N(g, 1/2)
    assert (y.var(0) / 0.5 - 1).abs().max() < 0.06


def test_energy_matches_the_spec_formula():
    y, g = torch.tensor([[0.3, -1.2]]), torch.tensor([[1.0, 0.5]])
    lam = 0.25
    ref = 0.75 * 0.5 * (0.3**2 + 1.2**2) + 0.25 * ((1.0 - 0.3) ** 2 + (0.5 + 1.2) ** 2)
    assert abs(energy_elements(y, g, lam).sum().item() - ref) < 1e-6


def _tiny_cfg(**kw) -> ModelConfig:
    base = {"num_kp": 2, "jacobian": False, "context": 4, "horizon": 3, "hidden": 12, "layers": 2, "dropout": 0.0,
            "cond_dim": 3, "flow_hidden": 16, "blocks": 3, "min_range": 0.05}
    base.update(kw)
    return ModelConfig(**base)


def test_no_leak_condition_of_x_t_ignores_x_t():
    torch.manual_seed(0)
    model = GRUNF(_tiny_cfg()).eval()
    x = torch.randn(2, 7, model.dim)
    t = 4
    x2 = x.clone()
    x2[:, t] += 5.0
    c1, c2 = model.conditions(x), model.conditions(x2)   # entry t-1 conditions frame t
    assert torch.equal(c1[:, : t], c2[:, : t])           # conditions of frames 1..t unchanged
    assert (c1[:, t] - c2[:, t]).abs().max() > 1e-3      # the next frame's condition does see x_t


def test_sampling_feedback_modes_and_refine_wiring():
    torch.manual_seed(0)
    model = GRUNF(_tiny_cfg()).eval()
    ctx = torch.randn(3, 4, model.dim)

    def run(feedback):
        return model.sample(ctx, 2, SampleOptions(samples=5, feedback=feedback),
                            generator=torch.Generator().manual_seed(7))

    mean, per = run(feedback="mean"), run(feedback="sample")
    assert mean.shape == (3, 5, 2, model.dim)
    assert torch.equal(mean[:, :, 0], per[:, :, 0])          # first step: same state, same noise
    assert (mean[:, :, 1] - per[:, :, 1]).abs().max() > 1e-4  # then the feedback differs
    assert torch.equal(run(feedback="mean"), mean)             # reproducible by seed
    # A zero-size MH step accepts proposals equal to the current point: refinement becomes a no-op.
    opts0 = SampleOptions(samples=5, refine=True, step_size=0.0)
    a = model.sample(ctx, 1, opts0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, mean[:, :, :1], atol=0, rtol=0)


def test_long_snf_chain_ends_at_the_head_prediction():
    # With many MH steps, the last stage (lam = 1) samples N(g, 1/2) whatever the flow gives it.
    torch.manual_seed(0)
    model = GRUNF(_tiny_cfg()).eval()
    ctx = torch.randn(1, 4, model.dim)
    opts = SampleOptions(samples=4000, refine=True, mcmc_steps=150, step_size=0.5, elementwise=True)
    x = model.sample(ctx, 1, opts, generator=torch.Generator().manual_seed(3))[0, :, 0]
    with torch.no_grad():
        _, h = model.gru(ctx)
        g = model.head(h[-1])[0]
    assert (x.mean(0) - g).abs().max() < 0.05
    assert (x.var(0) / 0.5 - 1).abs().max() < 0.1


# ----- files, layouts, normalisation -----

def _write(path, value, jac=None, lengths=None, names=None):
    lengths = [len(value)] if lengths is None else lengths
    names = [f"s{i}" for i in range(len(lengths))] if names is None else names
    arrays = {"names": np.asarray(names), "lengths": np.asarray(lengths), "value": value}
    if jac is not None:
        arrays["jacobian"] = jac
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    v = [rng.normal(size=(9, 3, 2)).astype(np.float32), rng.normal(size=(5, 3, 2)).astype(np.float32)]
    j = [rng.normal(size=(9, 3, 2, 2)).astype(np.float32), rng.normal(size=(5, 3, 2, 2)).astype(np.float32)]
    save_sequences(tmp_path / "a.npz", ["x#1", "y#2"], v, j)
    seqs = load_sequences(tmp_path / "a.npz")
    assert seqs.layout == Layout(3, True) and seqs.layout.dim == 18
    back_v, back_j = seqs.layout.unflatten(seqs.flat[1])
    assert np.array_equal(back_v, v[1]) and np.array_equal(back_j, j[1])
    assert seqs.flat[0][2, 6 + 2 + 1] == j[0][2, 1, 0, 1]   # keypoint 1: [x, y, j00, j01, j10, j11]
    save_sequences(tmp_path / "b.npz", ["z"], [v[0]])
    assert load_sequences(tmp_path / "b.npz").layout == Layout(3, False)


@pytest.mark.parametrize("case,needle", [
    ("shape", r"expected \(frames, K, 2\)"),
    ("nan", "NaN"),
    ("lengths", "lengths sum"),
    ("jac", "jacobian has shape"),
    ("missing", "lacks the array"),
])
def test_bad_keypoint_files(tmp_path, case, needle):
    v = np.zeros((10, 3, 2), np.float32)
    if case == "shape":
        _write(tmp_path / "f.npz", np.zeros((10, 3, 3), np.float32))
    elif case == "nan":
        v[4, 1, 0] = np.nan
        _write(tmp_path / "f.npz", v)
    elif case == "lengths":
        _write(tmp_path / "f.npz", v, lengths=[4, 4])
    elif case == "jac":
        _write(tmp_path / "f.npz", v, jac=np.zeros((10, 3, 2), np.float32))
    else:
        np.savez(tmp_path / "f.npz", value=v)
    with pytest.raises(VmtUsageError, match=needle):
        load_sequences(tmp_path / "f.npz")


def test_short_sequences_and_other_layouts_are_errors(tmp_path):
    seqs = Sequences(["a"], [np.zeros((5, 4), np.float32)], Layout(2, False))
    with pytest.raises(VmtUsageError, match="context \\+ horizon"):
        make_windows(seqs, 8, 8)
    with pytest.raises(VmtUsageError, match="expects 10 keypoints with jacobians"):
        check_layout(ModelConfig(), Layout(2, False), "input.npz")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(VmtUsageError, match="not 'vmt.keypoints"):
        load_model(tmp_path / "m")


def test_normalisation_uses_the_context_only():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 12, 4)).astype(np.float32)
    n1, lo1, r1 = normalise_windows(w, 5, 0.01)
    w2 = w.copy()
    w2[:, 5:] *= 10
    n2, lo2, r2 = normalise_windows(w2, 5, 0.01)
    assert np.array_equal(lo1, lo2) and np.array_equal(r1, r2)
    assert np.array_equal(n1[:, :5], n2[:, :5])
    assert np.allclose(n1[:, :5].min(1), 0) and np.allclose(n1[:, :5].max(1), 1, atol=1e-6)
    _, r = minmax_stats(np.zeros((1, 5, 2)), 0.05)             # constant context: floored range
    assert np.all(r == 0.05)


def test_split_by_identity_never_shares_an_identity():
    seqs = Sequences(["id1#a", "id2#b", "id1#c", "id3#d"], [np.zeros((3, 2))] * 4, Layout(1, False))
    tr, va = split_by_identity(seqs, ["id1"])
    assert tr.names == ["id2#b", "id3#d"] and va.names == ["id1#a", "id1#c"]
    with pytest.raises(VmtUsageError, match="not in the data"):
        split_by_identity(seqs, ["id9"])


# ----- training -----

def _synthetic(num_seq=12, length=60, k=2, seed=0) -> Sequences:
    """Noisy oscillating keypoints: the future is predictable from the past, so NLL can fall."""
    rng = np.random.default_rng(seed)
    flat = []
    for _ in range(num_seq):
        t = np.arange(length)[:, None]
        f, ph, a = rng.uniform(0.15, 0.35, (1, 2 * k)), rng.uniform(0, 6.3, (1, 2 * k)), rng.uniform(0.2, 0.5)
        flat.append((a * np.sin(f * t + ph) + 0.01 * rng.normal(size=(length, 2 * k))).astype(np.float32))
    return Sequences([f"id{i % 3}#{i}" for i in range(num_seq)], flat, Layout(k, False))


@pytest.mark.slow
def test_synthetic_training_lowers_validation_nll_and_resume_is_exact(tmp_path):
    cfg = _tiny_cfg(hidden=24, flow_hidden=24)
    tr, va = split_by_identity(_synthetic(), ["id0"])
    L = cfg.context + cfg.horizon
    trw = normalise_windows(make_windows(tr, L, 2)[0], cfg.context, cfg.min_range)[0]
    vaw = normalise_windows(make_windows(va, L, L)[0], cfg.context, cfg.min_range)[0]
    tc = TrainConfig(steps=120, batch=32, lr=3e-3, eval_every=40, seed=0)
    res = fit(cfg, tc, trw, vaw, tmp_path / "a")
    hist = [h["val_nll"] for h in res["history"]]
    assert hist[-1] < hist[0] - 1.5
    model, doc = load_model(tmp_path / "a")
    assert doc["best_val_nll"] == pytest.approx(min(hist[1:]))
    assert evaluate(model, torch.from_numpy(vaw))["nll"] == pytest.approx(doc["best_val_nll"], abs=1e-3)
    # Interrupted after 50 steps and resumed: identical to the uninterrupted run.
    fit(cfg, tc, trw, vaw, tmp_path / "b", stop_after=50)
    fit(cfg, tc, trw, vaw, tmp_path / "b", resume=True)
    wa, _ = load_model(tmp_path / "a", "last.safetensors")
    wb, _ = load_model(tmp_path / "b", "last.safetensors")
    for (k, p), q in zip(wa.state_dict().items(), wb.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), k
    with pytest.raises(VmtUsageError, match="different architecture"):
        fit(_tiny_cfg(hidden=8), tc, trw, vaw, tmp_path / "b", resume=True)


def test_save_load_forecast_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GRUNF(_tiny_cfg()).eval()
    save_model(model, tmp_path / "m")
    loaded, _ = load_model(tmp_path / "m")
    ctx = _synthetic(num_seq=2, length=4)
    contexts = np.stack(ctx.flat)
    opts = SampleOptions(samples=6, refine=True)
    a = forecast(model, contexts, 3, opts, seed=5)
    b = forecast(loaded, contexts, 3, opts, seed=5)
    assert a.shape == (2, 6, 3, 4) and np.array_equal(a, b)
    # Output is in detector units: denormalised with the context's own min and range.
    lo, rng = minmax_stats(contexts, 0.05)
    direct = model.sample(torch.from_numpy(normalise_windows(contexts, 4, 0.05)[0]), 3, opts,
                          generator=torch.Generator().manual_seed(5)).numpy()
    assert np.allclose(a, direct * rng[:, None] + lo[:, None], atol=1e-6)


@pytest.mark.slow
def test_shared_data_training_lowers_validation_nll(shared_data, tmp_path):
    seqs = load_sequences(shared_data / "voxceleb" / "fomm_kp_dev.npz")
    assert seqs.layout == Layout(10, True)
    tr, va = split_by_identity(seqs, ["id10283"])
    tr = Sequences(tr.names[:6], tr.flat[:6], tr.layout)   # a slice keeps this test fast
    cfg = ModelConfig(hidden=32, layers=1, dropout=0.0, cond_dim=4, flow_hidden=32, blocks=3)
    L = cfg.context + cfg.horizon
    trw = normalise_windows(make_windows(tr, L, 8)[0], cfg.context, cfg.min_range)[0]
    vaw = normalise_windows(make_windows(va, L, L)[0], cfg.context, cfg.min_range)[0]
    res = fit(cfg, TrainConfig(steps=60, batch=32, lr=3e-3, eval_every=30), trw, vaw, tmp_path / "m")
    hist = [h["val_nll"] for h in res["history"]]
    assert hist[-1] < hist[0] - 5.0


# ----- residual encoding and augmentation -----

def test_untrained_residual_model_forecasts_zero_velocity():
    # Zero-initialised head and couplings and fresh batch norms make the flow the identity: x = anchor + scale * u.
    cfg = _tiny_cfg(param="residual", residual_scale=[0.1, 0.2, 0.3, 0.4])
    model = GRUNF(cfg).eval()
    ctx = np.cumsum(np.random.default_rng(0).normal(size=(2, 4, 4)), axis=1).astype(np.float32)
    still = forecast(model, ctx, 3, SampleOptions(samples=5, temperature=0.0))
    assert np.array_equal(still, np.broadcast_to(ctx[:, None, -1:], still.shape))       # the last frame, exactly
    noisy = forecast(model, ctx, 2, SampleOptions(samples=4000), seed=1)
    spread = (noisy - ctx[:, None, -1:]).std(axis=(0, 1, 2))
    assert np.allclose(spread, [0.1, 0.2, 0.3, 0.4], rtol=0.05)                       # u ~ N(0, 1) times scale


def test_residual_encoding_and_scale_by_hand():
    w = np.zeros((1, 4, 2), np.float32)
    w[0, :, 0] = [1.0, 2.0, 4.0, 7.0]              # anchor (frame 1) = 2: displacements -1, 0, 2, 5
    scale = fit_residual_scale(w, 2, floor=0.5)
    assert scale == pytest.approx([np.sqrt((1 + 0 + 4 + 25) / 4), 0.5])
    z, anchor, s = encode_windows(_tiny_cfg(num_kp=1, param="residual", residual_scale=[2.0, 0.5]), w, 2)
    assert np.allclose(z[0, :, 0], [-0.5, 0.0, 1.0, 2.5]) and anchor[0, 0, 0] == 2.0 and np.all(z[..., 1] == 0)


def test_augmentation_is_a_similarity_on_positions_and_acts_on_jacobians():
    layout = Layout(3, True)
    rng = np.random.default_rng(0)
    pos = rng.uniform(-0.5, 0.5, (8, 5, 3, 2))
    jac = np.eye(2) + 0.2 * rng.normal(size=(8, 5, 3, 2, 2))
    x = torch.from_numpy(layout.flatten(pos, jac).astype(np.float32))
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    out = augment_batch(x, layout, gen, reverse=False)
    a, _ = random_affine(8, torch.Generator().set_state(state), 5.0, 0.05, 0.05, True)
    p2, j2 = layout.unflatten(out.numpy())
    s = np.sqrt(np.abs(np.linalg.det(a.numpy())))                                   # isotropic scale per window
    d = lambda p: np.linalg.norm(p[:, :, 0] - p[:, :, 1], axis=-1)  # noqa: E731
    assert np.allclose(d(p2), s[:, None] * d(pos), atol=1e-5)                        # distances scale by s
    assert np.allclose(np.linalg.det(j2), np.linalg.det(a.numpy())[:, None, None] * np.linalg.det(jac), atol=1e-4)
    assert (np.linalg.det(a.numpy()) < 0).any()                                     # some windows are mirrored
    back = augment_batch(x, layout, torch.Generator().manual_seed(3), rotate_deg=0, scale=0, shift=0, mirror=False)
    flipped = [bool(torch.equal(back[i], x[i].flip(0))) for i in range(8)]
    kept = [bool(torch.allclose(back[i], x[i])) for i in range(8)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_speed_resampling_by_hand():
    seq = np.arange(9, dtype=np.float32)[:, None] ** 2
    assert np.array_equal(resample_speed(seq, 2.0)[:, 0], [0, 4, 16, 36, 64])       # every other frame
    assert np.allclose(resample_speed(seq, 0.5)[:3, 0], [0, 0.5, 1])                  # midpoints


def test_rollout_conditions_ignore_the_true_future():
    # With cfg.rollout the GRU reads the head's predictions after the context: the true future frames only
    # enter as NLL targets, never as inputs; the context's conditions are the teacher-forced ones.
    torch.manual_seed(0)
    model = GRUNF(_tiny_cfg(rollout=True)).eval()
    x = torch.randn(2, 7, model.dim)
    x2 = x.clone()
    x2[:, 4:] += 3.0
    r1, r2 = model.rollout_states(x), model.rollout_states(x2)
    assert torch.equal(r1, r2)
    assert torch.equal(r1[:, :4], model.states(x)[:, :4])
    assert (model.states(x2)[:, 4:] - model.states(x)[:, 4:]).abs().max() > 1e-3   # teacher forcing would see them
    x3 = x.clone()
    x3[:, 3] += 3.0
    assert (model.rollout_states(x3)[:, 3:] - r1[:, 3:]).abs().max() > 1e-3


# ----- displacement shrinkage -----

def _moving_residual_model(seed=0) -> GRUNF:
    """A residual model with random weights, so that (unlike an untrained one) its samples move."""
    torch.manual_seed(seed)
    model = GRUNF(_tiny_cfg(param="residual", residual_scale=[0.1, 0.2, 0.3, 0.4]))
    for p in model.parameters():
        p.data.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _walk(n=3, length=4, seed=0) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).normal(size=(n, length, 4)), axis=1).astype(np.float32)


def test_shrink_zero_is_zero_velocity_and_factors_apply_per_step():
    model, ctx = _moving_residual_model(), _walk()
    opts = SampleOptions(samples=5)
    last = ctx[:, None, -1]                                          # (B, 1, dim)
    raw = forecast(model, ctx, 5, opts, seed=3)
    assert np.abs(raw - last[:, :, None]).min(axis=(1, 3)).min() > 1e-3     # the raw samples do move
    model.cfg.shrink = [0.0, 0.0, 0.0]
    still = forecast(model, ctx, 5, opts, seed=3)
    assert np.array_equal(still, np.broadcast_to(ctx[:, None, -1:], still.shape))   # zero velocity, exactly
    model.cfg.shrink = [1.0, 0.5, 0.0]                               # horizon 5: steps 3, 4 reuse the last factor
    part = forecast(model, ctx, 5, opts, seed=3)
    assert np.allclose(part[:, :, 0], raw[:, :, 0], atol=1e-6)
    assert np.allclose(part[:, :, 1], last + 0.5 * (raw[:, :, 1] - last), atol=1e-6)
    assert np.array_equal(part[:, :, 2:], np.broadcast_to(ctx[:, None, -1:], part[:, :, 2:].shape))
    assert np.array_equal(forecast(model, ctx, 5, opts, seed=3, shrink=False), raw)


def test_fit_shrink_recovers_a_known_factor_and_stays_in_0_1():
    model, ctx = _moving_residual_model(), _walk(n=4)
    opts = SampleOptions(samples=1)        # one sample: the truth below is a known multiple of its displacement
    raw = forecast(model, ctx, 3, opts, seed=7)[:, 0]               # (B, 3, dim)
    last = ctx[:, -1:]
    for true_factor, expected in ((0.35, 0.35), (0.0, 0.0), (3.0, 1.0)):    # 3 lies past the grid's end, 1
        windows = np.concatenate([ctx, last + true_factor * (raw - last)], axis=1)
        assert fit_shrink(model, windows, 4, opts, seed=7) == [expected] * 3
    noise = np.concatenate([ctx, last + np.random.default_rng(1).normal(size=raw.shape)], axis=1)
    got = fit_shrink(model, noise.astype(np.float32), 4, SampleOptions(samples=8), seed=2)
    assert len(got) == 3 and all(0.0 <= a <= 1.0 for a in got)


def test_shrink_is_saved_loaded_and_checked(tmp_path):
    model = _moving_residual_model()
    model.cfg.shrink = [0.25, 0.5, 0.75]
    save_model(model, tmp_path / "m")
    loaded, doc = load_model(tmp_path / "m")
    assert loaded.cfg.shrink == [0.25, 0.5, 0.75] == doc["config"]["shrink"]
    ctx = _walk()
    assert np.array_equal(forecast(loaded, ctx, 3, SampleOptions(samples=4), seed=1),
                          forecast(model, ctx, 3, SampleOptions(samples=4), seed=1))
    for bad in ([1.5, 0.5], []):
        model.cfg.shrink = bad
        save_model(model, tmp_path / "bad")
        with pytest.raises(VmtUsageError, match="shrink"):
            load_model(tmp_path / "bad")


@pytest.mark.slow
def test_calibrate_shrink_never_uses_the_evaluation_identity(tmp_path):
    seqs = _synthetic()                                  # identities id0, id1, id2
    cfg = _tiny_cfg(param="residual")
    tc = TrainConfig(steps=8, batch=16, eval_every=4)
    opts = SampleOptions(samples=4)

    def run(data, folder):
        return calibrate_shrink(data, cfg, tc, tmp_path / folder, exclude=["id0"], calib=["id1"], window_stride=4,
                                augment=False, opts=opts)

    a = run(seqs, "a")
    # id0's sequences replaced by other data (and one dropped): the factors cannot change.
    rng = np.random.default_rng(5)
    other = [f if not n.startswith("id0#") else rng.normal(size=f.shape).astype(np.float32)
             for n, f in zip(seqs.names, seqs.flat)]
    b = run(Sequences(seqs.names[1:], other[1:], seqs.layout), "b")
    assert a == b and len(a) == cfg.horizon and all(0.0 <= x <= 1.0 for x in a)
    trained_on = load_model(tmp_path / "a")[1]["train_sequences"]
    assert trained_on and all(n.startswith("id2#") for n in trained_on)    # neither id0 nor id1 trained on
    with pytest.raises(VmtUsageError, match="evaluation identities"):
        calibrate_shrink(seqs, cfg, tc, tmp_path / "c", exclude=["id0"], calib=["id0"], window_stride=4,
                         augment=False, opts=opts)


# ----- damped-velocity blend -----

def test_damped_velocity_forecast_closed_forms():
    ctx = _walk(n=3, length=4, seed=4)
    last, v = ctx[:, -1], ctx[:, -1] - ctx[:, -2]
    h = np.arange(1, 6, dtype=np.float32)[None, :, None]
    assert np.array_equal(velocity_forecast(ctx, 5, 0.0)[:, 0], np.broadcast_to(last[:, None], (3, 5, 4)))
    assert np.allclose(velocity_forecast(ctx, 5, 1.0)[:, 0], last[:, None] + h * v[:, None], atol=1e-5)
    assert np.allclose(velocity_steps(ctx, 5, 0.5), (1 - 0.5**h) * v[:, None], atol=1e-6)   # sum 0.5^i, i <= h
    # The damping that fits: windows that decay by 0.7 a step are fitted with 0.7, constant velocity with 1.
    for d in (0.7, 1.0, 0.0):
        windows = np.concatenate([ctx, velocity_forecast(ctx, 6, d)[:, 0]], axis=1)
        assert fit_damping(windows, 4) == d


def test_velocity_gain_blends_the_damped_velocity_into_the_forecast_per_step():
    model, ctx = _moving_residual_model(), _walk()
    opts = SampleOptions(samples=5)
    raw = forecast(model, ctx, 5, opts, seed=3)
    # No model displacement and the whole damped velocity: exactly the damped-velocity forecast, every sample.
    model.cfg.shrink, model.cfg.velocity_gain, model.cfg.damping = [0.0], [1.0], 0.8
    dv = forecast(model, ctx, 5, opts, seed=3)
    assert np.allclose(dv, np.broadcast_to(velocity_forecast(ctx, 5, 0.8), dv.shape), atol=1e-6)
    # Per step, steps past the list reuse its last entry.
    model.cfg.shrink, model.cfg.velocity_gain = [1.0, 0.5], [0.0, 0.25]
    mix = forecast(model, ctx, 5, opts, seed=3)
    last, vel = ctx[:, None, None, -1], velocity_steps(ctx, 5, 0.8)[:, None]
    assert np.allclose(mix[:, :, 0], raw[:, :, 0], atol=1e-6)
    assert np.allclose(mix[:, :, 1:], last + 0.5 * (raw[:, :, 1:] - last) + 0.25 * vel[:, :, 1:], atol=1e-5)


def test_fit_blend_recovers_a_known_pair_and_g_zero_is_fit_shrink():
    model, ctx = _moving_residual_model(), _walk(n=4)
    opts = SampleOptions(samples=1)        # one sample: the truth below is a known mix of it and the velocity
    raw = forecast(model, ctx, 3, opts, seed=7)[:, 0]                       # (B, 3, dim)
    last, vel = ctx[:, -1:], velocity_steps(ctx, 3, 0.9)
    for a, g in ((0.35, 0.6), (0.0, 1.0), (1.0, 0.0), (0.2, 0.0)):
        windows = np.concatenate([ctx, last + a * (raw - last) + g * vel], axis=1)
        assert fit_blend(model, windows, 4, opts, 0.9, seed=7) == ([a] * 3, [g] * 3)
    windows = np.concatenate([ctx, last + 0.35 * (raw - last)], axis=1)
    assert fit_blend(model, windows, 4, opts, 0.9, seed=7, velocity_grid=(0.0,))[0] == \
        fit_shrink(model, windows, 4, opts, seed=7)


def test_velocity_gain_is_saved_loaded_and_checked(tmp_path):
    model = _moving_residual_model()
    model.cfg.shrink, model.cfg.velocity_gain, model.cfg.damping = [0.5], [0.3, 0.6], 0.7
    save_model(model, tmp_path / "m")
    loaded, doc = load_model(tmp_path / "m")
    assert (loaded.cfg.velocity_gain, loaded.cfg.damping) == ([0.3, 0.6], 0.7)
    ctx = _walk()
    assert np.array_equal(forecast(loaded, ctx, 3, SampleOptions(samples=4), seed=1),
                          forecast(model, ctx, 3, SampleOptions(samples=4), seed=1))
    for gains, damping in (([0.5], None), ([1.5], 0.5), ([], 0.5), ([0.5], 1.2)):
        model.cfg.velocity_gain, model.cfg.damping = gains, damping
        save_model(model, tmp_path / "bad")
        with pytest.raises(VmtUsageError, match="velocity_gain"):
            load_model(tmp_path / "bad")


@pytest.mark.slow
def test_calibrate_blend_never_uses_the_evaluation_identity(tmp_path):
    seqs = _synthetic()                                  # identities id0, id1, id2
    cfg = _tiny_cfg(param="residual")
    tc = TrainConfig(steps=8, batch=16, eval_every=4)

    def run(data, folder):
        return calibrate_blend(data, cfg, tc, tmp_path / folder, exclude=["id0"], calib=["id1"], window_stride=4,
                               augment=False, opts=SampleOptions(samples=4))

    a = run(seqs, "a")
    rng = np.random.default_rng(5)
    other = [f if not n.startswith("id0#") else rng.normal(size=f.shape).astype(np.float32)
             for n, f in zip(seqs.names, seqs.flat)]
    assert run(Sequences(seqs.names[1:], other[1:], seqs.layout), "b") == a
    assert len(a["shrink"]) == len(a["velocity_gain"]) == cfg.horizon and 0.0 <= a["damping"] <= 1.0
    assert all(0.0 <= x <= 1.0 for x in a["shrink"] + a["velocity_gain"])
