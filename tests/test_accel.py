"""Memory and speed options of the Wan backend (vmt.backends.accel) against the default path on the tiny Wan:
gradient checkpointing, group offload, float8 storage, attention backends (and the fallback for guided
passes), regional compilation; alone, with transfer guidance and with Predict-and-Perturb."""

from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import moving_pattern

SIZE = 64
FRAMES = 9
SMALL = dict(block=1, span=3, tile=(2, 2), window=3, guided_steps=2, inner_steps=3, reuse_interval=1)


def _backend(folder, dtype="float32", **options):
    from vmt.backends.wan import WanBackend, WanLoadOptions

    torch.set_num_threads(1)
    return WanBackend.from_pretrained(str(folder), WanLoadOptions(device="cpu", dtype=dtype, **options))


def _group_offloaded(**options):
    """Group offload needs CUDA in the CLI; the library applies it with the CPU as onload device, which runs
    diffusers' hooks (onload/offload per block, here CPU to CPU) through vmt's passes."""
    from vmt.backends.wan import WanBackend, WanLoadOptions
    from vmt.testing.tiny_wan import build_tiny_wan

    pipe = build_tiny_wan("t2v")  # the weights of the tiny_t2v folder (same seed)
    return WanBackend(pipe, None, torch.device("cpu"), torch.float32, WanLoadOptions(offload="group", **options),
                      place=True)


def _guided_gradient(backend, truncate=True):
    """Latent gradient of the FastVMT loss at one guided step (sigma 0.8), and the loss."""
    from vmt.motion.guidance import GuidanceConfig, MotionGuidance

    g = torch.Generator().manual_seed(0)
    z = torch.randn(backend.latent_shape(FRAMES, SIZE, SIZE), generator=g)
    noise = torch.randn(z.shape, generator=g)
    cond, cond_ref = backend.encode_prompt("a cat", "", 1.0), backend.encode_prompt("", "", 1.0)
    cfg = GuidanceConfig(**{**SMALL, "truncate": truncate})
    mg = MotionGuidance(backend, cfg, z, cond, cond_ref, noise, backend.token_grid(FRAMES, SIZE, SIZE))
    sigma = torch.tensor(0.8)
    ref = mg.reference_amf(sigma)
    zz = (z + 0.1 * noise).requires_grad_(True)
    with backend.frozen(), torch.enable_grad():
        loss, _ = mg.loss(zz, sigma, ref)
        (grad,) = torch.autograd.grad(loss, [zz])
    return grad, loss.detach()


def _transfer_with_pnp(backend, notify=None):
    """A transfer run (2 guided steps) with P&P refining steps 0-1 in the same loop: the final latent."""
    from vmt.motion.guidance import GuidanceConfig
    from vmt.sampling.pnp import PredictPerturb, parse_plan
    from vmt.transfer import TransferRequest, transfer

    frames = moving_pattern(FRAMES, SIZE, SIZE)
    req = TransferRequest(prompt="a ball", height=SIZE, width=SIZE, steps=3, guidance_scale=3.0, seed=1)
    pnp = PredictPerturb(parse_plan("0-1:1").validate(3), 0.25, certain_fraction=1.0, seed=1)
    return transfer(backend, frames, req, GuidanceConfig(**SMALL), interventions=[pnp], decode=False,
                    notify=notify)


def _refine_with_pnp(backend):
    from vmt.generate import GenerationRequest, generate
    from vmt.sampling.pnp import PredictPerturb, parse_plan

    req = GenerationRequest(prompt="a ball", num_frames=FRAMES, height=SIZE, width=SIZE, steps=4,
                            guidance_scale=3.0, seed=2)
    pnp = PredictPerturb(parse_plan("0-2:2").validate(4), 0.25, certain_fraction=1.0, seed=2)
    return generate(backend, req, [pnp], decode=False).latents


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def reference(tiny_t2v):
    """The default path without checkpointing: the reference every option is compared with."""
    b = _backend(tiny_t2v, grad_checkpointing=False)
    return {"backend": b, "grad": _guided_gradient(b), "grad_full": _guided_gradient(b, truncate=False),
            "transfer": _transfer_with_pnp(b).latents, "refine": _refine_with_pnp(b)}


# ------------------------------------------------------------------ gradient checkpointing
@pytest.mark.slow
def test_checkpointing_gives_the_same_gradients_and_recomputes_blocks(tiny_t2v, reference):
    b = _backend(tiny_t2v)  # on by default
    (ckpt,) = b._checkpointing.values()
    for truncate, key in ((True, "grad"), (False, "grad_full")):
        before = ckpt.calls
        grad, loss = _guided_gradient(b, truncate)
        assert ckpt.calls > before  # the blocks before the capture block ran under checkpointing
        assert torch.equal(loss, reference[key][1])
        assert torch.equal(grad, reference[key][0])  # recomputation repeats the same float ops on the CPU
    assert b.describe()["grad_checkpointing"] is True
    assert not reference["backend"]._checkpointing


@pytest.mark.slow
def test_checkpointing_keeps_fewer_activations(tiny_t2v, reference):
    """Bytes of tensors autograd keeps for the backward of one guided loss, weights left out (saved-tensor
    hooks; inside a checkpointed block the checkpoint's own hooks take over: what is counted stays resident)."""
    def kept_bytes(backend) -> int:
        total = [0]
        weights = {p.untyped_storage().data_ptr() for p in backend.pipe.transformer.parameters()}

        def pack(t):
            if t.untyped_storage().data_ptr() not in weights:  # resident anyway
                total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _guided_gradient(backend, truncate=False)
        return total[0]

    plain, ckpt = kept_bytes(reference["backend"]), kept_bytes(_backend(tiny_t2v))
    assert ckpt < 0.8 * plain, (ckpt, plain)


@pytest.mark.slow
def test_checkpointing_with_transfer_and_pnp_is_exact(tiny_t2v, reference):
    b = _backend(tiny_t2v)
    assert torch.equal(_transfer_with_pnp(b).latents, reference["transfer"])
    assert torch.equal(_refine_with_pnp(b), reference["refine"])  # plain steps never checkpoint


# ------------------------------------------------------------------ group offload (hooks on the CPU)
@pytest.mark.slow
def test_group_offload_with_checkpointing_guidance_and_pnp(reference):
    b = _group_offloaded()
    from diffusers.hooks import HookRegistry

    assert "group_offloading" in HookRegistry.check_if_exists_or_initialize(b.pipe.transformer.blocks[0]).hooks
    grad, _ = _guided_gradient(b)
    assert torch.equal(grad, reference["grad"][0])
    assert torch.equal(_transfer_with_pnp(b).latents, reference["transfer"])
    assert torch.equal(_refine_with_pnp(b), reference["refine"])
    assert b.describe()["offload"] == "group"


# ------------------------------------------------------------------ float8 storage
@pytest.mark.slow
def test_float8_storage_close_to_bf16(tiny_t2v):
    ref = _backend(tiny_t2v, dtype="bfloat16")
    f8 = _backend(tiny_t2v, dtype="bfloat16", storage_dtype="float8_e4m3fn")
    w = f8.pipe.transformer.blocks[0].attn1.to_q.weight
    assert w.dtype == torch.float8_e4m3fn  # stored in float8, computed in bf16
    g_ref, _ = _guided_gradient(ref)
    g_f8, _ = _guided_gradient(f8)
    # float8 keeps 3 mantissa bits; measured here: gradient 5.6% (cosine 0.998), latents 1.0%
    assert torch.isfinite(g_f8).all() and 0 < _rel(g_f8, g_ref) < 0.15
    assert float(torch.nn.functional.cosine_similarity(g_f8.flatten(), g_ref.flatten(), 0)) > 0.99
    assert 0 < _rel(_transfer_with_pnp(f8).latents, _transfer_with_pnp(ref).latents) < 0.03
    assert 0 < _rel(_refine_with_pnp(f8), _refine_with_pnp(ref)) < 0.03
    assert f8.describe()["storage_dtype"] == "float8_e4m3fn"


# ------------------------------------------------------------------ attention backends
@pytest.mark.slow
def test_attention_backend_with_backward_is_used_everywhere(tiny_t2v, reference):
    b = _backend(tiny_t2v, attention_backend="_native_math", grad_checkpointing=False)
    assert b.attention_backend() == "_native_math"
    grad, _ = _guided_gradient(b)
    assert _rel(grad, reference["grad"][0]) < 1e-5  # measured 1.8e-6: the math kernel's rounding
    notes = []
    res = _transfer_with_pnp(b, notify=notes.append)
    assert not notes and _rel(res.latents, reference["transfer"]) < 1e-5
    assert _rel(_refine_with_pnp(b), reference["refine"]) < 1e-5
    assert "guided_attention_backend" in b.describe() and b.describe()["guided_attention_backend"] == "_native_math"


class _NoBackward(torch.autograd.Function):
    """Attention with a forward only, like sage attention's kernels."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2))
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this attention backend has no backward pass")


def _forward_only(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False, _parallel_config=None):
    return _NoBackward.apply(query, key, value)


@contextmanager
def _stub_backend():
    """Register the forward-only attention in diffusers' registry under a name with no package requirement
    (cuDNN SDPA, unusable on the CPU anyway); the original is put back afterwards."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from vmt.backends import accel

    name = AttentionBackendName._NATIVE_CUDNN
    saved = (_AttentionBackendRegistry._backends[name], _AttentionBackendRegistry._constraints[name],
             _AttentionBackendRegistry._supported_arg_names[name])
    _AttentionBackendRegistry.register(name)(_forward_only)
    try:
        yield name.value
    finally:
        reg = _AttentionBackendRegistry
        reg._backends[name], reg._constraints[name], reg._supported_arg_names[name] = saved
        for key in [k for k in accel._BACKWARD_PROBES if k[0] == name.value]:
            del accel._BACKWARD_PROBES[key]


@pytest.mark.slow
def test_backend_without_backward_falls_back_in_guided_passes(tiny_t2v, reference):
    from vmt.backends.accel import has_backward

    with _stub_backend() as name:
        assert not has_backward(name, 2, 8, torch.device("cpu"), torch.float32)
        b = _backend(tiny_t2v, attention_backend=name, grad_checkpointing=False)
        # Without the fallback the guided backward fails (the test can fail): differentiate outside frozen().
        with pytest.raises(RuntimeError, match="no backward"):
            z = torch.randn(b.latent_shape(FRAMES, SIZE, SIZE), requires_grad=True)
            cond = b.encode_prompt("a cat", "", 1.0)
            q, k = b.capture_qk(z, torch.tensor(0.8), cond, 1)
            q.sum().backward()
        notes = []
        res = _transfer_with_pnp(b, notify=notes.append)
        assert len(notes) == 1 and "no backward" in notes[0] and "'native'" in notes[0]
        assert any("no backward" in a for a in res.adjustments)
        # stub and fallback compute the same SDPA as the default: the same run
        assert _rel(res.latents, reference["transfer"]) < 1e-5
        assert _rel(_refine_with_pnp(b), reference["refine"]) < 1e-5
        d = b.describe()
        assert d["attention_backend"] == name and d["guided_attention_backend"] == "native"
        assert b.attention_backend() == name  # restored after the guided passes


# ------------------------------------------------------------------ regional compilation
@pytest.mark.slow
def test_compiled_blocks_keep_capture_and_truncation(tiny_t2v, reference):
    """torch.compile of each block (the 'eager' compiler backend: dynamo's tracing and graph breaks without a
    C++ toolchain; inductor is for the GPU suite) with checkpointing on."""
    b = _backend(tiny_t2v, compile=True, compile_backend="eager")
    assert getattr(b.pipe.transformer.blocks[0], "_compiled_call_impl", None) is not None
    for truncate, key in ((True, "grad"), (False, "grad_full")):
        grad, _ = _guided_gradient(b, truncate)
        assert torch.equal(grad, reference[key][0])
    assert torch.equal(_transfer_with_pnp(b).latents, reference["transfer"])
    assert torch.equal(_refine_with_pnp(b), reference["refine"])


# ------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_cli_options_reach_the_model_and_the_sidecar(tiny_t2v, tmp_path):
    from vmt.io.video import write_video

    ref = tmp_path / "ref.mp4"
    write_video(ref, moving_pattern(FRAMES, SIZE, SIZE), 8.0)
    out = tmp_path / "out.mp4"
    r = CliRunner().invoke(app, [
        "transfer", str(ref), "--prompt", "a ball", "-o", str(out), "--model", str(tiny_t2v), "--device", "cpu",
        "--block", "1", "--span", "3", "--tile", "2x2", "--window", "3", "--height", str(SIZE), "--width",
        str(SIZE), "--num-frames", str(FRAMES), "--steps", "2", "--guided-steps", "1", "--inner-steps", "2",
        "--attention-backend", "_native_math", "--no-grad-checkpointing", "--quiet"])
    assert r.exit_code == 0, r.output
    model = json.loads(out.with_suffix(".json").read_text())["model"]
    assert model["attention_backend"] == "_native_math" and model["grad_checkpointing"] is False
    assert model["guided_attention_backend"] == "_native_math"


@pytest.mark.parametrize("args, message", [
    (["--storage-dtype", "float7"], "--storage-dtype"),
    (["--attention-backend", "warp-drive"], "--attention-backend"),
    (["--offload", "group"], "--offload needs a CUDA device"),
])
def test_cli_bad_memory_options_fail_before_loading(tmp_path, args, message):
    missing = tmp_path / "no-such-model"  # never reached: the options are checked first
    out = tmp_path / "x.mp4"
    r = CliRunner().invoke(app, ["refine", "--prompt", "x", "-o", str(out), "--model", str(missing),
                                 "--device", "cpu", "--height", "64", "--width", "64", "-f", "5", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output and "no-such-model" not in r.output
    assert not out.exists()
    np.testing.assert_equal(list(tmp_path.iterdir()), [])


@pytest.mark.slow
def test_checkpointing_on_both_experts_of_a_two_expert_model(tiny_t2v_2expert):
    """Each expert has its own checkpoint function; the guided pass at a sigma of either expert is exact."""
    plain = _backend(tiny_t2v_2expert, grad_checkpointing=False)
    ckpt = _backend(tiny_t2v_2expert)
    assert len(ckpt._checkpointing) == 2
    from vmt.motion.guidance import GuidanceConfig, MotionGuidance

    def grad_at(backend, sigma):
        g = torch.Generator().manual_seed(0)
        z = torch.randn(backend.latent_shape(FRAMES, SIZE, SIZE), generator=g)
        cond = backend.encode_prompt("a cat", "", 1.0)
        mg = MotionGuidance(backend, GuidanceConfig(**SMALL), z, cond, cond, z, backend.token_grid(FRAMES, SIZE, SIZE))
        ref = mg.reference_amf(torch.tensor(sigma))
        zz = (0.9 * z).requires_grad_(True)
        with backend.frozen(), torch.enable_grad():
            return torch.autograd.grad(mg.loss(zz, torch.tensor(sigma), ref)[0], [zz])[0]

    for sigma in (0.95, 0.3):  # boundary 0.875: high-noise expert, then low-noise expert
        calls = [c.calls for c in ckpt._checkpointing.values()]
        assert torch.equal(grad_at(ckpt, sigma), grad_at(plain, sigma))
        assert sum(c.calls for c in ckpt._checkpointing.values()) > sum(calls)
    assert all(c.calls > 0 for c in ckpt._checkpointing.values())  # both experts recomputed blocks


@pytest.mark.slow
def test_cli_refine_with_pnp_and_memory_options(tiny_t2v, tmp_path):
    out = tmp_path / "r.mp4"
    r = CliRunner().invoke(app, [
        "refine", "--prompt", "a ball", "-o", str(out), "--model", str(tiny_t2v), "--device", "cpu",
        "--dtype", "bfloat16", "--height", "32", "--width", "32", "-f", "9", "--steps", "4", "--plan", "1-2:1",
        "--storage-dtype", "float8_e4m3fn", "--attention-backend", "_native_math", "--quiet"])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["model"]["storage_dtype"] == "float8_e4m3fn" and doc["model"]["attention_backend"] == "_native_math"
    assert doc["compute"]["nfe"] == 6 and doc["params"]["storage_dtype"] == "float8_e4m3fn"


@pytest.mark.slow
def test_process_default_backend_without_backward_also_falls_back(tiny_t2v, reference):
    """No --attention-backend, but diffusers' process-wide default (DIFFUSERS_ATTN_BACKEND) lacks a backward."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    with _stub_backend() as name:
        b = _backend(tiny_t2v, grad_checkpointing=False)
        active = _AttentionBackendRegistry._active_backend
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName(name))
        try:
            notes = []
            res = _transfer_with_pnp(b, notify=notes.append)
        finally:
            _AttentionBackendRegistry.set_active_backend(active)
        assert len(notes) == 1 and name in notes[0]
        assert _rel(res.latents, reference["transfer"]) < 1e-5
        assert b.describe()["guided_attention_backend"] == "native"
