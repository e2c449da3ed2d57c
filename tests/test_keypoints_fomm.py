"""FOMM (keypoint detector, dense motion, generator): checkpoint layout, closed forms, refusals (CPU, seconds).

Random weights stand in for the public vox-cpk checkpoint: the layout and the costs are the real ones.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from vmt.errors import VmtUsageError
from vmt.keypoints.fomm import (
    DenseMotionNetwork,
    Fomm,
    FommConfig,
    animate,
    coordinate_grid,
    detect_keypoints,
    load_fomm,
)

SMALL = FommConfig(kp_expansion=4, kp_max_features=16, kp_blocks=3, gen_expansion=4, gen_max_features=16,
                   bottleneck_blocks=1, dm_expansion=4, dm_max_features=16, dm_blocks=3, size=64)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and batch-norm statistic random (non-trivial mixtures, occlusion, jacobian maps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.is_floating_point() and not name.endswith(".down.weight") and name != "down.weight":
                t.copy_(0.3 * torch.randn(t.shape, generator=g))


@pytest.fixture(scope="module")
def vox_ckpt(tmp_path_factory):
    """A checkpoint in the public layout, full vox-256 size, random weights, written as torch.save does."""
    torch.manual_seed(0)
    model = Fomm()
    path = tmp_path_factory.mktemp("fomm") / "vox-cpk.pth.tar"
    doc = model.checkpoint()
    doc["epoch"] = 99   # the release also stores optimizers and the epoch beside the two state dicts
    torch.save(doc, path)
    return path


def test_public_layout_names_and_shapes(vox_ckpt):
    doc = torch.load(vox_ckpt, weights_only=True)
    kp, gen = doc["kp_detector"], doc["generator"]
    # Shapes follow from the vox-256 architecture: hourglass output = expansion + input channels (32 + 3),
    # dense-motion input = (K + 1) * (channels + 1) = 44 (heatmap difference + deformed source per motion).
    assert kp["kp.weight"].shape == (10, 35, 7, 7)
    assert kp["jacobian.weight"].shape == (40, 35, 7, 7)
    assert kp["predictor.encoder.down_blocks.0.conv.weight"].shape == (64, 3, 3, 3)
    assert kp["predictor.decoder.up_blocks.0.conv.weight"].shape == (512, 1024, 3, 3)   # 32 * 2^4 out, 32 * 2^5 in
    assert kp["predictor.decoder.up_blocks.4.conv.weight"].shape == (32, 128, 3, 3)     # 2 * 64 in: skip concat
    assert kp["down.weight"].shape == (3, 1, 13, 13)               # sigma 1.5 -> 2 * round(6) + 1 taps
    assert gen["dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight"].shape == (128, 44, 3, 3)
    assert gen["dense_motion_network.mask.weight"].shape == (11, 64 + 44, 7, 7)
    assert gen["dense_motion_network.occlusion.weight"].shape == (1, 108, 7, 7)
    assert gen["first.conv.weight"].shape == (64, 3, 7, 7)
    assert gen["bottleneck.r5.conv2.weight"].shape == (256, 256, 3, 3)
    assert gen["up_blocks.1.norm.running_var"].shape == (64,)
    assert gen["final.weight"].shape == (3, 64, 7, 7)


@pytest.mark.slow
def test_checkpoint_loads_and_detects_keypoints_in_range(vox_ckpt):
    model = load_fomm(vox_ckpt)
    frames = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    pos, jac = detect_keypoints(model, frames)
    assert pos.shape == (2, 10, 2) and jac.shape == (2, 10, 2, 2)
    assert np.all(np.abs(pos) <= 1)                     # expectations of a softmax over the [-1, 1] grid
    # Fresh jacobian head: zero weights and bias [1, 0, 0, 1], so every heatmap average is the identity.
    assert np.allclose(jac, np.eye(2), atol=1e-6)
    # A checkpoint without BatchNorm step counters (older torch) and with a DataParallel prefix loads too.
    state = Fomm().checkpoint()
    state["kp_detector"] = {f"module.{k}": v for k, v in state["kp_detector"].items()
                            if not k.endswith("num_batches_tracked")}
    path = vox_ckpt.parent / "old.pth.tar"
    torch.save(state, path)
    assert load_fomm(path).cfg.num_kp == 10


def test_keypoints_stay_in_range_for_random_heads():
    model = Fomm(SMALL).eval()
    _randomise(model.kp_detector, seed=1)
    pos, jac = detect_keypoints(model, np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    assert np.all(np.abs(pos) <= 1) and jac.shape == (3, 10, 2, 2)
    assert not np.allclose(jac, np.eye(2))


def test_dense_motion_is_the_identity_when_driving_equals_source():
    # Every sparse motion is kp_s + J_s J_d^{-1} (z - kp_d) = z when kp_d = kp_s, so any softmax mixture of
    # them, whatever the mask network says, is the identity grid.
    for seed in range(3):
        net = DenseMotionNetwork(SMALL).eval()
        _randomise(net, seed)
        g = torch.Generator().manual_seed(seed)
        kp = {"value": 2 * torch.rand(2, 10, 2, generator=g) - 1,
              "jacobian": torch.eye(2) + 0.5 * torch.randn(2, 10, 2, 2, generator=g)}
        with torch.no_grad():
            out = net(torch.rand(2, 3, 64, 64, generator=g), kp, kp)
        assert out["deformation"].shape == (2, 16, 16, 2)
        assert torch.allclose(out["deformation"], coordinate_grid(16, 16).expand(2, 16, 16, 2), atol=1e-5)
        assert not torch.allclose(out["mask"], torch.full_like(out["mask"], 1 / 11), atol=1e-3)   # not trivial


def test_sparse_motion_of_a_translation():
    # Driving keypoints = source + d with identity jacobians: each keypoint's motion reads the source at z - d.
    net = DenseMotionNetwork(SMALL)
    src = {"value": torch.zeros(1, 10, 2), "jacobian": torch.eye(2).expand(1, 10, 2, 2)}
    d = torch.tensor([0.2, -0.1])
    drv = {"value": src["value"] + d, "jacobian": src["jacobian"]}
    motions = net.sparse_motions(8, 8, drv, src)
    grid = coordinate_grid(8, 8)
    assert torch.allclose(motions[0, 0], grid) and torch.allclose(motions[0, 1:], (grid - d).expand(10, 8, 8, 2))


def test_animate_renders_frames(tmp_path):
    model = Fomm(SMALL).eval()
    _randomise(model, seed=2)
    src = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pos, jac = detect_keypoints(model, src[None])
    future = pos + np.linspace(0, 0.1, 3)[:, None, None, None]             # (3, 1, 10, 2) -> drop the 1
    out = animate(model, src, future[:, 0], np.repeat(jac, 3, 0), pos[0], jac[0])
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8


class Payload:
    """A pickled object whose unpickling would run code (writes a file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_non_fomm_files_and_pickles_are_refused(tmp_path):
    text = tmp_path / "notes.pth.tar"
    text.write_text("hello")
    with pytest.raises(VmtUsageError, match="not a PyTorch checkpoint"):
        load_fomm(text)
    other = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(VmtUsageError, match="not a FOMM checkpoint.*'state_dict'"):
        load_fomm(other)
    wrong = tmp_path / "wrong.pth"
    doc = Fomm(SMALL).checkpoint()
    torch.save(doc, wrong)
    with pytest.raises(VmtUsageError, match="does not match FOMM's vox-256 architecture"):
        load_fomm(wrong)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    with open(evil, "wb") as f:
        pickle.dump({"kp_detector": Payload(str(marker)), "generator": {}}, f)
    with pytest.raises(VmtUsageError, match="refuses to unpickle"):
        load_fomm(evil)
    assert not marker.exists()                         # no pickle code ran
    evil_torch = tmp_path / "evil2.pth.tar"
    torch.save({"kp_detector": Payload(str(marker)), "generator": {}}, evil_torch)
    with pytest.raises(VmtUsageError, match="refuses to unpickle"):
        load_fomm(evil_torch)
    assert not marker.exists()
