"""First Order Motion Model (Siarohin et al., NeurIPS 2019): keypoint detector, dense motion network and
occlusion-aware generator, written from the paper and its architecture description so that the public
release's checkpoints (`vox-cpk.pth.tar`: a dict with 'kp_detector' and 'generator' state dicts) load by name.

Coordinates: keypoints are (x, y) in [-1, 1] over the frame (x = -1 the first column, +1 the last), with a 2x2
jacobian each (the local affine map from the keypoint's reference frame into the image). Images are float
(B, 3, H, W) in [0, 1]. Sampling grids use align_corners=True: -1 and +1 are the centres of the border pixels,
the convention of the coordinate grid below.

Checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only, no pickle code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vmt.errors import VmtUsageError, param

# ----- building blocks (attribute names follow the public release so that its state dicts load) -----


def coordinate_grid(h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(h, w, 2) grid of (x, y) in [-1, 1], x along the columns."""
    x = torch.linspace(-1, 1, w, dtype=dtype, device=device)
    y = torch.linspace(-1, 1, h, dtype=dtype, device=device)
    return torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)


class DownBlock2d(nn.Module):
    """3x3 conv, batch norm, ReLU, 2x2 average pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class UpBlock2d(nn.Module):
    """Nearest 2x upsampling, 3x3 conv, batch norm, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(F.interpolate(x, scale_factor=2.0))))


class SameBlock2d(nn.Module):
    """Conv (resolution kept), batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResBlock2d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(channels)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


def _width(expansion: int, level: int, cap: int) -> int:
    return min(cap, expansion * 2**level)


class Encoder(nn.Module):
    def __init__(self, expansion: int, cin: int, blocks: int, cap: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(cin if i == 0 else _width(expansion, i, cap), _width(expansion, i + 1, cap))
            for i in range(blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        for block in self.down_blocks:
            feats.append(block(feats[-1]))
        return feats


class Decoder(nn.Module):
    """Upsamples the deepest feature and concatenates each encoder level on the way up (U-Net skips)."""

    def __init__(self, expansion: int, cin: int, blocks: int, cap: int):
        super().__init__()
        ups = []
        for i in reversed(range(blocks)):
            width_in = _width(expansion, i + 1, cap) * (1 if i == blocks - 1 else 2)
            ups.append(UpBlock2d(width_in, _width(expansion, i, cap)))
        self.up_blocks = nn.ModuleList(ups)
        self.out_filters = expansion + cin

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = list(feats)
        out = feats.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), feats.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    def __init__(self, expansion: int, cin: int, blocks: int, cap: int):
        super().__init__()
        self.encoder = Encoder(expansion, cin, blocks, cap)
        self.decoder = Decoder(expansion, cin, blocks, cap)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Gaussian blur (sigma = (1/scale - 1)/2, per channel) then nearest downsampling by `scale`."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        self.ka = size // 2
        self.kb = self.ka - 1 if size % 2 == 0 else self.ka
        t = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        g = torch.exp(-(t**2) / (2 * sigma**2))
        kernel = g[:, None] * g[None, :]
        self.register_buffer("weight", (kernel / kernel.sum()).expand(channels, 1, size, size).clone())
        self.scale, self.groups = scale, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return x
        x = F.conv2d(F.pad(x, (self.ka, self.kb, self.ka, self.kb)), self.weight, groups=self.groups)
        return F.interpolate(x, scale_factor=(self.scale, self.scale))


# ----- the three networks -----


@dataclass(frozen=True)
class FommConfig:
    """The public vox-256 configuration (256x256 faces, 10 keypoints with jacobians)."""

    num_kp: int = 10
    channels: int = 3
    jacobian: bool = True
    kp_expansion: int = 32
    kp_max_features: int = 1024
    kp_blocks: int = 5
    kp_temperature: float = 0.1
    kp_scale: float = 0.25
    gen_expansion: int = 64
    gen_max_features: int = 512
    down_blocks: int = 2
    bottleneck_blocks: int = 6
    occlusion: bool = True
    dm_expansion: int = 64
    dm_max_features: int = 1024
    dm_blocks: int = 5
    dm_scale: float = 0.25
    kp_variance: float = 0.01
    size: int = 256


class KPDetector(nn.Module):
    """Image (B, 3, H, W) -> keypoints {'value': (B, K, 2), 'jacobian': (B, K, 2, 2)}.

    Each keypoint is the expectation of the grid under a softmax heatmap (temperature `kp_temperature`); its
    jacobian is the heatmap-weighted average of a 4-channel map per keypoint.
    """

    def __init__(self, cfg: FommConfig):
        super().__init__()
        self.predictor = Hourglass(cfg.kp_expansion, cfg.channels, cfg.kp_blocks, cfg.kp_max_features)
        self.kp = nn.Conv2d(self.predictor.out_filters, cfg.num_kp, 7)
        self.jacobian = None
        if cfg.jacobian:
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * cfg.num_kp, 7)
            nn.init.zeros_(self.jacobian.weight)     # start at identity jacobians
            self.jacobian.bias.data.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(cfg.num_kp))
        self.temperature, self.num_kp = cfg.kp_temperature, cfg.num_kp
        self.down = AntiAliasInterpolation2d(cfg.channels, cfg.kp_scale) if cfg.kp_scale != 1 else None

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.down(image) if self.down is not None else image
        feat = self.predictor(x)
        logits = self.kp(feat)
        b, k, h, w = logits.shape
        heat = F.softmax(logits.reshape(b, k, -1) / self.temperature, dim=-1)          # (B, K, h*w)
        grid = coordinate_grid(h, w, logits.dtype, logits.device).reshape(-1, 2)
        out = {"value": heat @ grid}
        if self.jacobian is not None:
            jmap = self.jacobian(feat).reshape(b, k, 4, h * w)
            out["jacobian"] = (jmap * heat[:, :, None]).sum(-1).reshape(b, k, 2, 2)
        return out


def kp_gaussians(value: torch.Tensor, h: int, w: int, variance: float) -> torch.Tensor:
    """(B, K, 2) keypoints -> (B, K, h, w) unnormalised Gaussian bumps exp(-|p - kp|^2 / (2 variance))."""
    grid = coordinate_grid(h, w, value.dtype, value.device)
    return torch.exp(-0.5 * ((grid[None, None] - value[:, :, None, None]) ** 2).sum(-1) / variance)


class DenseMotionNetwork(nn.Module):
    """Source image + source/driving keypoints -> backward deformation (B, h, w, 2), mask, occlusion map.

    K+1 candidate motions (identity for the background, and per keypoint the first-order Taylor map
    z -> kp_s + J_s J_d^{-1} (z - kp_d)) are mixed by a softmax mask predicted from the Gaussian heatmap
    differences and the source warped by each candidate. When driving == source every candidate is the
    identity, so any mixture is too.
    """

    def __init__(self, cfg: FommConfig):
        super().__init__()
        k, c = cfg.num_kp, cfg.channels
        self.hourglass = Hourglass(cfg.dm_expansion, (k + 1) * (c + 1), cfg.dm_blocks, cfg.dm_max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, k + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, 7, padding=3) if cfg.occlusion else None
        self.num_kp, self.kp_variance = k, cfg.kp_variance
        self.down = AntiAliasInterpolation2d(c, cfg.dm_scale) if cfg.dm_scale != 1 else None

    def sparse_motions(self, h: int, w: int, kp_driving: dict, kp_source: dict) -> torch.Tensor:
        """(B, K+1, h, w, 2): where each output pixel reads the source, per candidate motion."""
        vd, vs = kp_driving["value"], kp_source["value"]
        b = vd.shape[0]
        ident = coordinate_grid(h, w, vd.dtype, vd.device)
        rel = ident[None, None] - vd[:, :, None, None]                                  # (B, K, h, w, 2)
        if "jacobian" in kp_driving and "jacobian" in kp_source:
            jac = kp_source["jacobian"] @ torch.linalg.inv(kp_driving["jacobian"])       # (B, K, 2, 2)
            rel = torch.einsum("bkij,bkhwj->bkhwi", jac, rel)
        motions = rel + vs[:, :, None, None]
        return torch.cat([ident[None, None].expand(b, 1, h, w, 2), motions], dim=1)

    def forward(self, source: torch.Tensor, kp_driving: dict, kp_source: dict) -> dict[str, torch.Tensor]:
        x = self.down(source) if self.down is not None else source
        b, c, h, w = x.shape
        k = self.num_kp
        heat = kp_gaussians(kp_driving["value"], h, w, self.kp_variance) - kp_gaussians(
            kp_source["value"], h, w, self.kp_variance)
        heat = torch.cat([heat.new_zeros(b, 1, h, w), heat], dim=1)[:, :, None]        # (B, K+1, 1, h, w)
        motions = self.sparse_motions(h, w, kp_driving, kp_source)
        warped = F.grid_sample(x[:, None].expand(b, k + 1, c, h, w).reshape(b * (k + 1), c, h, w),
                               motions.reshape(b * (k + 1), h, w, 2), align_corners=True).reshape(b, k + 1, c, h, w)
        feat = self.hourglass(torch.cat([heat, warped], dim=2).reshape(b, -1, h, w))
        mask = F.softmax(self.mask(feat), dim=1)                                         # (B, K+1, h, w)
        deformation = (motions * mask[..., None]).sum(1)                                 # (B, h, w, 2)
        out = {"mask": mask, "deformation": deformation, "sparse_deformed": warped}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(feat))
        return out


def _resample(grid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if grid.shape[1:3] == (h, w):
        return grid
    return F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)


class OcclusionAwareGenerator(nn.Module):
    """Encode the source, warp its features by the dense motion, mask occluded parts, decode to an image."""

    def __init__(self, cfg: FommConfig):
        super().__init__()
        e, cap, n = cfg.gen_expansion, cfg.gen_max_features, cfg.down_blocks
        self.dense_motion_network = DenseMotionNetwork(cfg)
        self.first = SameBlock2d(cfg.channels, e, kernel=7)
        self.down_blocks = nn.ModuleList(DownBlock2d(_width(e, i, cap), _width(e, i + 1, cap)) for i in range(n))
        self.up_blocks = nn.ModuleList(UpBlock2d(_width(e, n - i, cap), _width(e, n - i - 1, cap)) for i in range(n))
        self.bottleneck = nn.Sequential()
        for i in range(cfg.bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(_width(e, n, cap)))
        self.final = nn.Conv2d(e, cfg.channels, 7, padding=3)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        """Source features (computed once per source image, reused for every driving frame)."""
        out = self.first(source)
        for block in self.down_blocks:
            out = block(out)
        return out

    def forward(self, source: torch.Tensor, kp_driving: dict, kp_source: dict,
                features: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feat = self.encode(source) if features is None else features
        b = kp_driving["value"].shape[0]
        if feat.shape[0] != b:
            feat, source = feat.expand(b, *feat.shape[1:]), source.expand(b, *source.shape[1:])
        motion = self.dense_motion_network(source, kp_driving, kp_source)
        h, w = feat.shape[2:]
        feat = F.grid_sample(feat, _resample(motion["deformation"], h, w), align_corners=True)
        occ = motion.get("occlusion_map")
        if occ is not None:
            feat = feat * (occ if occ.shape[2:] == (h, w) else F.interpolate(occ, size=(h, w), mode="bilinear"))
        out = self.bottleneck(feat)
        for block in self.up_blocks:
            out = block(out)
        return {"prediction": torch.sigmoid(self.final(out)), **motion}


# ----- checkpoints -----


class Fomm(nn.Module):
    """Keypoint detector + generator, eval mode."""

    def __init__(self, cfg: FommConfig | None = None):
        super().__init__()
        self.cfg = cfg or FommConfig()
        self.kp_detector = KPDetector(self.cfg)
        self.generator = OcclusionAwareGenerator(self.cfg)

    def checkpoint(self) -> dict[str, dict[str, torch.Tensor]]:
        """The public layout: {'kp_detector': state dict, 'generator': state dict}."""
        return {"kp_detector": self.kp_detector.state_dict(), "generator": self.generator.state_dict()}


def _clean(state: dict) -> dict:
    """Drop a DataParallel 'module.' prefix and BatchNorm step counters (absent from old checkpoints)."""
    out = {}
    for k, v in state.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if not k.endswith("num_batches_tracked"):
            out[k] = v
    return out


def load_fomm(path: str | os.PathLike, device: str | torch.device = "cpu") -> Fomm:
    """Load a FOMM checkpoint (the public vox-256 layout) without running pickle code; clear errors otherwise."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise VmtUsageError(f"{param('fomm')} {path} not found")
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise VmtUsageError(f"{path} holds Python objects other than tensors, which vmt refuses to unpickle "
                            "(no pickle code is run); re-save the state dicts only: torch.save({'kp_detector': "
                            "kp.state_dict(), 'generator': gen.state_dict()}, path)") from e
    except Exception as e:  # not a zip or legacy torch file at all
        raise VmtUsageError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}); pass a FOMM checkpoint "
                            "such as vox-cpk.pth.tar") from e
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), dict) for k in ("kp_detector", "generator")):
        keys = sorted(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
        raise VmtUsageError(f"{path} is not a FOMM checkpoint: expected a dict with 'kp_detector' and 'generator' "
                            f"state dicts, found {keys}")
    kp_state, gen_state = _clean(doc["kp_detector"]), _clean(doc["generator"])
    kp_w = kp_state.get("kp.weight")
    if not isinstance(kp_w, torch.Tensor) or kp_w.ndim != 4:
        raise VmtUsageError(f"{path}: 'kp_detector' has no keypoint head (kp.weight); not a FOMM checkpoint")
    cfg = FommConfig(num_kp=kp_w.shape[0], jacobian="jacobian.weight" in kp_state,
                     occlusion="dense_motion_network.occlusion.weight" in gen_state)
    model = Fomm(cfg)
    for name, module, state in (("kp_detector", model.kp_detector, kp_state), ("generator", model.generator,
                                                                             gen_state)):
        want = {k: v.shape for k, v in _clean(module.state_dict()).items()}
        missing = sorted(set(want) - set(state))
        unexpected = sorted(set(state) - set(want))
        wrong = sorted(k for k in set(want) & set(state) if tuple(state[k].shape) != tuple(want[k]))
        if missing or unexpected or wrong:
            first = (missing or unexpected or wrong)[0]
            raise VmtUsageError(f"{path}: {name} does not match FOMM's vox-256 architecture ({len(missing)} "
                                f"missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped tensors, e.g. "
                                f"{first!r}); vmt loads the 256x256 face configuration")
        module.load_state_dict(state, strict=False)
    return model.to(device).eval()


# ----- video in, video out -----


def frames_to_tensor(frames: np.ndarray, size: int = 256, device: str | torch.device = "cpu") -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float in [0, 1] (area resize when the size differs)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float() / 255
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


@torch.no_grad()
def detect_keypoints(model: Fomm, frames: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray | None]:
    """(T, H, W, 3) uint8 -> positions (T, K, 2) in [-1, 1] and jacobians (T, K, 2, 2) (None without)."""
    dev = next(model.parameters()).device
    vals, jacs = [], []
    for i in range(0, len(frames), batch):
        kp = model.kp_detector(frames_to_tensor(frames[i : i + batch], model.cfg.size, dev))
        vals.append(kp["value"].cpu().numpy())
        if "jacobian" in kp:
            jacs.append(kp["jacobian"].cpu().numpy())
    return np.concatenate(vals).astype(np.float32), np.concatenate(jacs).astype(np.float32) if jacs else None


def relative_keypoints(kp_source: dict, value: torch.Tensor, jacobian: torch.Tensor | None,
                       ref_value: torch.Tensor, ref_jacobian: torch.Tensor | None) -> dict:
    """Transfer the driving motion relative to a reference driving frame onto the source keypoints:
    value = kp_s + (v - v_ref), jacobian = (J J_ref^{-1}) J_s (FOMM's relative animation mode).
    value (B, K, 2), ref (K, 2) or (B, K, 2)."""
    out = {"value": kp_source["value"] + value - ref_value}
    if jacobian is not None and ref_jacobian is not None and "jacobian" in kp_source:
        out["jacobian"] = jacobian @ torch.linalg.inv(ref_jacobian) @ kp_source["jacobian"]
    return out


@torch.no_grad()
def animate(model: Fomm, source: np.ndarray, value: np.ndarray, jacobian: np.ndarray | None,
            ref_value: np.ndarray, ref_jacobian: np.ndarray | None, batch: int = 4) -> np.ndarray:
    """Render the source image (h, w, 3) uint8 moved by driving keypoints value (T, K, 2) [+ jacobian (T, K, 2, 2)]
    relative to the reference driving keypoints (K, 2) [+ (K, 2, 2)] (the last observed frame).
    Returns (T, size, size, 3) uint8."""
    dev = next(model.parameters()).device
    src = frames_to_tensor(source[None], model.cfg.size, dev)
    kp_s = model.kp_detector(src)
    feat = model.generator.encode(src)
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float32)).to(dev)  # noqa: E731
    ref_v, ref_j = t(ref_value), t(ref_jacobian)
    out = []
    for i in range(0, len(value), batch):
        v = t(value[i : i + batch])
        j = None if jacobian is None else t(jacobian[i : i + batch])
        kp_d = relative_keypoints(kp_s, v, j, ref_v, ref_j)   # without jacobians: translations only
        pred = model.generator(src, kp_d, kp_s, features=feat)["prediction"]
        out.append((pred.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)
