"""Images for image-to-video: vmt.io.read_image against diffusers' own image path, and `vmt transfer --image` on
the tiny Wan I2V models (with and without CLIP) with a real reference clip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import SHARED_DATA, moving_pattern, psnr, vae_round_trip
from vmt.io import read_image
from vmt.io.image import crop_box

RUNNER = SHARED_DATA / "reference" / "runner_640x368_81f.mp4"
SIZE = 64
SMALL_CLI = ["--block", "1", "--span", "3", "--tile", "2x2", "--window", "3", "--height", str(SIZE),
             "--width", str(SIZE), "--num-frames", "9", "--steps", "3", "--guided-steps", "2", "--inner-steps",
             "3", "--device", "cpu", "--quiet"]


def _content(h: int, w: int, index: int = 40) -> np.ndarray:
    """A real frame (the runner clip at its own size) or, without ../shared/data, a synthetic texture."""
    if RUNNER.is_file():
        from vmt.io.video import read_video

        frames, _ = read_video(RUNNER, max_frames=index + 1)
        from PIL import Image

        return np.asarray(Image.fromarray(frames[index]).resize((w, h), Image.Resampling.BICUBIC))
    return moving_pattern(1, h, w, seed=index)[0]


def _reference(tmp_path: Path) -> Path:
    """The real reference clip, or a moving texture written as a video."""
    if RUNNER.is_file():
        return RUNNER
    from vmt.io.video import write_video

    return write_video(tmp_path / "ref.mp4", moving_pattern(11, 72, 96, dx=3, dy=1), 12.0)


def _save(tmp_path: Path, name: str, rgb: np.ndarray, mode: str = "RGB") -> Path:
    from PIL import Image

    im = Image.fromarray(rgb)
    if mode == "RGBA":  # an alpha channel diffusers' load_image drops
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(np.linspace(0, 255, rgb.shape[1], dtype=np.uint8)[None].repeat(rgb.shape[0], 0)))
    path = tmp_path / name
    im.save(path, quality=90) if name.endswith(".jpg") else im.save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """A JPEG and two PNGs (one with alpha) of sizes and aspect ratios other than the outputs'."""
    d = tmp_path_factory.mktemp("photos")
    return [_save(d, "wide.jpg", _content(90, 203, 10)), _save(d, "tall.png", _content(150, 77, 50)),
            _save(d, "alpha.png", _content(61, 61, 70), mode="RGBA")]


def _diffusers_tensor(path: Path, h: int, w: int) -> torch.Tensor:
    """The release's / diffusers' path, replayed with diffusers' own code: load_image, then the Wan I2V
    pipeline's VideoProcessor.preprocess to the output size."""
    from diffusers.utils import load_image
    from diffusers.video_processor import VideoProcessor

    return VideoProcessor(vae_scale_factor=8).preprocess(load_image(str(path)), height=h, width=w)


@pytest.mark.parametrize("h,w", [(32, 48), (48, 32), (64, 64)])
def test_stretch_is_diffusers_image_path_bit_for_bit(photos, h, w):
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    vp = VideoProcessor(vae_scale_factor=8)
    for path in photos:
        ours = read_image(path, h, w)
        assert ours.shape == (h, w, 3) and ours.dtype == np.uint8
        ref = _diffusers_tensor(path, h, w)
        # the backend runs the same processor on the fitted image: its resize is then an identity
        again = vp.preprocess(Image.fromarray(ours), height=h, width=w)
        assert torch.equal(again, ref), path.name
        # and the uint8 image is diffusers' resized image itself
        assert np.array_equal(((ref[0].permute(1, 2, 0).numpy() + 1) / 2 * 255).round().astype(np.uint8), ours)


def test_crop_is_centre_crop_box_then_the_same_resize(photos):
    from PIL import Image

    assert crop_box((203, 90), 64, 64) == (56, 0, 146, 90)  # (203 - 90) // 2 = 56
    assert crop_box((77, 150), 32, 48) == (0, 49, 77, 100)  # 77 * 32 / 48 = 51.33 -> 51 rows from (150-51)//2
    assert crop_box((61, 61), 48, 32) == (10, 0, 51, 61)  # 61 * 32 / 48 = 40.67 -> 41 columns from 10
    for path, (h, w), box in [(photos[0], (64, 64), (56, 0, 146, 90)), (photos[1], (32, 48), (0, 49, 77, 100)),
                              (photos[2], (48, 32), (10, 0, 51, 61))]:
        src = Image.open(path)
        src = src.convert("RGB")
        expect = np.asarray(src.crop(box).resize((w, h), Image.Resampling.LANCZOS))
        got = read_image(path, h, w, fit="crop")
        assert np.array_equal(got, expect), path.name
        assert not np.array_equal(got, read_image(path, h, w))  # the aspect differs: crop is not stretch


def test_read_image_errors_name_the_parameter(tmp_path):
    from vmt.errors import VmtError, VmtUsageError

    with pytest.raises(VmtUsageError, match="image .* not found"):
        read_image(tmp_path / "nope.png", 32, 32)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(VmtError, match="cannot read image"):
        read_image(bad, 32, 32)
    ok = _save(tmp_path, "ok.png", _content(40, 40))
    with pytest.raises(VmtUsageError, match="image_fit 'pad'"):
        read_image(ok, 32, 32, fit="pad")


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_i2v", "tiny_i2v_clip"])
def test_conditioning_latents_equal_the_pipeline_on_the_original_file(request, fixture, photos):
    """The backend's first-frame condition from read_image's uint8 is prepare_latents of diffusers' own tensor
    for the original file; with CLIP, the embeddings of the unfitted image are diffusers' too."""
    from PIL import Image

    from vmt.backends.wan import WanBackend, WanLoadOptions
    from vmt.runs.refine import read_first_frame

    backend = WanBackend.from_pretrained(str(request.getfixturevalue(fixture)),
                                         WanLoadOptions(device="cpu", dtype="float32"))
    cond = backend.encode_prompt("x", "", 1.0)
    for path in photos[:2]:
        image, clip_image, doc = read_first_frame(path, 32, 48, "stretch")
        c = backend.condition_on_image(cond, image, 9, 32, 48, clip_image=clip_image)
        x = _diffusers_tensor(path, 32, 48)
        _, ref = backend.pipe.prepare_latents(x, 1, backend.latent_channels, 32, 48, 9, torch.float32,
                                              torch.device("cpu"), None, torch.zeros(1), None)
        assert torch.equal(c.latent_condition, ref), path.name
        assert doc["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and doc["fit"] == "stretch"
        if backend.pipe.transformer.config.image_dim is not None:
            from diffusers.utils import load_image

            emb = backend.pipe.encode_image(load_image(str(path)), torch.device("cpu"))
            assert torch.equal(c.image_embeds, emb)
            fitted = backend.pipe.encode_image(Image.fromarray(image), torch.device("cpu"))
            assert not torch.equal(fitted, emb)  # the fitted image would have given other embeddings


def _transfer(*args) -> object:
    return CliRunner().invoke(app, ["transfer", *[str(a) for a in args]])


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_i2v", "tiny_i2v_clip"])
def test_cli_transfer_onto_a_photo(request, fixture, tmp_path):
    """The release defaults (window 21, tiles 3x4) clamped to the small grid; the output's first frame is the
    photo after the VAE round trip, and not an unrelated image's."""
    from vmt.io.video import read_video

    model = request.getfixturevalue(fixture)
    ref = _reference(tmp_path)
    photo = _save(tmp_path, "photo.jpg", _content(100, 140, 30))
    out = tmp_path / "out.mp4"
    args = [ref, "--prompt", "a dancer", "--image", photo, "-o", out, "--model", model, "--height", SIZE,
            "--width", SIZE, "--num-frames", 9, "--steps", 3, "--guided-steps", 2, "--inner-steps", 3,
            "--block", 1, "--device", "cpu", "--quiet"]
    r = _transfer(*args)
    assert r.exit_code == 0, r.output + (r.stderr or "")
    frames, _ = read_video(out)
    assert frames.shape == (9, SIZE, SIZE, 3)
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["image"]["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert doc["image"]["fit"] == "stretch" and doc["params"]["image_fit"] == "stretch"
    assert doc["guidance"]["config"]["window"] == 4 and doc["guidance"]["config"]["tile"] == "3x4"
    assert doc["model"]["pipeline"] == "WanImageToVideoPipeline" and len(doc["guidance"]["final_amf_loss"]) == 2
    # The first frame against the photo through the VAE. (Not on the written mp4: the tiny random VAE decodes
    # to pixel-level noise that H.264 smooths, ~36 dB against any round trip; the pipeline's frames are exact.)
    fitted = read_image(photo, SIZE, SIZE)
    expect = vae_round_trip(model, fitted)
    unrelated = vae_round_trip(model, 255 - _content(SIZE, SIZE, 75))
    # The same run from Python (first latent frame = the image's latent), frames before the codec:
    from vmt.backends.wan import WanBackend, WanLoadOptions
    from vmt.motion.guidance import GuidanceConfig
    from vmt.transfer import TransferRequest, load_reference, transfer

    backend = WanBackend.from_pretrained(str(model), WanLoadOptions(device="cpu", dtype="float32"))
    reference, _ = load_reference(ref, 9, SIZE, SIZE)
    res = transfer(backend, reference, TransferRequest(prompt="a dancer", height=SIZE, width=SIZE, steps=3),
                   GuidanceConfig(block=1, guided_steps=2, inner_steps=3), image=fitted, notify=None)
    assert psnr(res.frames[0], expect) > 50, psnr(res.frames[0], expect)
    assert psnr(res.frames[0], unrelated) < 45
    # the crop fit is recorded, and gives another first frame (the photo is 100x140, the output square)
    out2 = tmp_path / "crop.mp4"
    r = _transfer(*[a if a != out else out2 for a in args], "--image-fit", "crop")
    assert r.exit_code == 0, r.output
    assert json.loads(out2.with_suffix(".json").read_text())["image"]["fit"] == "crop"


@pytest.mark.slow
def test_cli_transfer_onto_a_photo_at_240x416(tiny_i2v, tmp_path):
    """A real output size (the reference and photo resampled to it): exactly the frames and size asked for."""
    from vmt.io.video import probe_video

    ref = _reference(tmp_path)
    photo = _save(tmp_path, "photo.jpg", _content(300, 500, 40))
    out = tmp_path / "wide.mp4"
    r = _transfer(ref, "--prompt", "x", "--image", photo, "-o", out, "--model", tiny_i2v, "--height", 240,
                  "--width", 416, "--num-frames", 5, "--steps", 2, "--guided-steps", 1, "--inner-steps", 2,
                  "--block", 1, "--device", "cpu", "--quiet", "--no-motion-cache")
    assert r.exit_code == 0, r.output
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (5, 240, 416)
    assert json.loads(out.with_suffix(".json").read_text())["image"]["size"] == [300, 500]


@pytest.mark.slow
def test_cli_transfer_image_with_refine_and_global_amf(tiny_i2v, tmp_path):
    ref = _reference(tmp_path)
    photo = _save(tmp_path, "photo.png", _content(64, 64, 20))
    out = tmp_path / "r.mp4"
    r = _transfer(ref, "--prompt", "x", "--image", photo, "-o", out, "--model", tiny_i2v, *SMALL_CLI,
                  "--refine", "--plan", "0-1:1", "--amf", "global", "--loss", "ditflow")
    assert r.exit_code == 0, r.output + (r.stderr or "")
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["compute"]["nfe"] == 3 + 2  # P&P's plan adds one evaluation at steps 0 and 1
    assert doc["pnp"]["plan"] == "0-1:1" and doc["image"]["fit"] == "stretch"


@pytest.mark.slow
def test_batch_with_an_image_per_line(tiny_i2v, tmp_path):
    ref = _reference(tmp_path)
    a = _save(tmp_path, "a.png", _content(50, 70, 10))
    b = _save(tmp_path, "b.jpg", _content(70, 50, 60))
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(j) + "\n" for j in [
        {"reference": str(ref), "prompt": "one", "image": str(a), "output": "a.mp4"},
        {"reference": str(ref), "prompt": "two", "image": str(b), "image_fit": "crop", "output": "b.mp4"},
    ]))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["transfer", "--batch", str(jobs), "-o", str(out), "--model", str(tiny_i2v),
                                 *SMALL_CLI])
    assert r.exit_code == 0, r.output + (r.stderr or "")
    docs = [json.loads((out / n).read_text()) for n in ("a.json", "b.json")]
    assert [d["image"]["sha256"] for d in docs] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
    assert [d["image"]["fit"] for d in docs] == ["stretch", "crop"]
    from vmt.io.video import read_video

    fa, fb = read_video(out / "a.mp4")[0], read_video(out / "b.mp4")[0]
    assert np.abs(fa[0].astype(int) - fb[0].astype(int)).mean() > 0  # each job's own first frame


def _one_line(r, pattern: str, out: Path) -> None:
    text = (r.stderr or r.output).strip()
    assert r.exit_code == 2, (r.exit_code, text)
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert pattern in " ".join(text.split()), text
    assert not out.exists()


@pytest.mark.slow
def test_bad_image_usage_is_one_line_exit_2(tiny_t2v, tiny_i2v, tmp_path):
    ref = _reference(tmp_path)
    photo = _save(tmp_path, "p.png", _content(40, 40))
    out = tmp_path / "o.mp4"
    _one_line(_transfer(ref, "-p", "x", "--image", tmp_path / "nope.png", "-o", out, "--model", tiny_i2v,
                        *SMALL_CLI), "not found", out)
    _one_line(_transfer(ref, "-p", "x", "--image", photo, "-o", out, "--model", tiny_t2v, *SMALL_CLI),
              "--image needs an image-to-video model", out)
    _one_line(_transfer(ref, "-p", "x", "-o", out, "--model", tiny_i2v, *SMALL_CLI),
              "is an image-to-video model; pass --image", out)
    _one_line(_transfer(ref, "-p", "x", "--image", photo, "--image-fit", "pad", "-o", out, "--model", tiny_i2v,
                        *SMALL_CLI), "--image-fit 'pad'", out)
