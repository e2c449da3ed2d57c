"""Long motion transfer (`vmt longgen sample -m <Wan I2V> --reference long.mp4`): each chain segment is a
FastVMT transfer of the reference's frames over its own time span. On the tiny random-weight I2V model with a
real reference clip (or a moving pattern written as a video): exact frame counts, each segment's reference
range against the closed form of the plan, the guidance's AMF losses and backward passes recorded, each
segment's first frame is its conditioning frame through the VAE, the key and a too-short reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import SHARED_DATA, moving_pattern, psnr, vae_round_trip
from vmt.io.video import probe_video
from vmt.runs.chain import WanChainRequest, chain_folder, plan_segments
from vmt.runs.shared import GuidanceOptions

RUNNER = SHARED_DATA / "reference" / "runner_640x368_81f.mp4"
SIZE = 32
M, FRAMES = 9, 23  # three segments: output frames 0-8, 9-16, 17-22; each next one starts 8 frames later
SMALL = ["--segment-frames", M, "--height", SIZE, "--width", SIZE, "--steps", 3, "--device", "cpu",
         "--plan", "none", "--quiet"]
GUIDE = ["--block", 1, "--guided-steps", 2, "--inner-steps", 3]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _sidecar(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


@pytest.fixture
def reference(tmp_path) -> Path:
    """The real reference clip (81 frames at 15 fps: 86 at 16), or a moving pattern of 40 frames at 16 fps."""
    if RUNNER.is_file():
        return RUNNER
    from vmt.io.video import write_video

    return write_video(tmp_path / "ref.mp4", moving_pattern(40, 72, 96, dx=3, dy=1), 16.0)


@pytest.fixture
def first_frame(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "first.png"
    Image.fromarray(moving_pattern(1, SIZE, SIZE, seed=5)[0]).save(path)
    return path


def test_guidance_options_are_transfers_defaults_in_both_requests():
    """One declaration: transfer and the chain carry GuidanceOptions' fields with the FastVMT defaults."""
    from dataclasses import fields

    from vmt.runs.transfer import TransferRequest

    names = {f.name: f.default for f in fields(GuidanceOptions)}
    assert len(names) == 21 and names["strength"] == 0.75 and names["block"] == 14 and names["tile"] == "3x4"
    for cls in (TransferRequest, WanChainRequest):
        assert {f.name: f.default for f in fields(cls) if f.name in names} == names


def test_reference_span_is_the_segments_own_time(tmp_path):
    """Segment j (frame 0 at output time j * r) gets reference frames j * r .. j * r + M - 1: the closed form."""
    for n, m, ref in [(23, 9, -1), (81, 9, -3), (161, 81, -1), (5, 5, -1)]:
        req = WanChainRequest(model="x", image=Path("a.png"), prompt="p", frames=n, segment_frames=m, ref_index=ref)
        r = ref + m
        for j, seg in enumerate(plan_segments(n, m, ref)):
            assert req.reference_span(seg) == (j * r, j * r + m - 1)
            assert seg.start >= j * r and seg.start + seg.keep - 1 <= j * r + m - 1  # kept frames lie inside


@pytest.mark.slow
def test_chain_with_a_reference(tmp_path, tiny_i2v, first_frame, reference):
    out, plain = tmp_path / "long.mp4", tmp_path / "plain.mp4"
    seen = {}

    def look(j, total, status, seconds):  # the run folder holds segment j's frames and conditioning frame now
        with np.load(chain_folder(out) / f"seg_{j:04d}.npz") as data:
            seen[j] = (data["frames"][0].copy(), data["cond"].copy())

    req = WanChainRequest(model=str(tiny_i2v), image=first_frame, reference=reference, prompt="a runner",
                          frames=FRAMES, segment_frames=M, height=SIZE, width=SIZE, steps=3, device="cpu",
                          plan="none", block=1, guided_steps=2, inner_steps=3)
    res = req.run(out, on_segment=look)
    assert res["segments"] == 3 and res["generated"] == 3 and res["dit_backward"] > 0
    assert probe_video(out).num_frames == FRAMES
    doc = _sidecar(out)
    assert doc["reference"]["sha256"] == __import__("hashlib").sha256(Path(reference).read_bytes()).hexdigest()
    assert doc["reference"]["fps"] == 16.0 and doc["reference"]["held_frames"] == 0
    per = doc["chain"]["per_segment"]
    assert [p["reference_frames"] for p in per] == [[0, 8], [8, 16], [16, 24]]
    for p in per:  # two guided steps, each with its final AMF loss
        assert len(p["guidance"]["final_amf_loss"]) == 2
        assert all(np.isfinite(x) and x > 0 for x in p["guidance"]["final_amf_loss"])
        assert p["compute"]["dit_backward"] == 2 * 1  # guided 2 x ceil(3 / reuse 3)
    assert doc["compute"]["dit_backward"] == 6 and doc["compute"]["dit_forward"] == 24  # the dry run's estimate
    # The anchor: each segment's first frame is its conditioning frame through the VAE, not another's
    for j, (frame0, cond) in seen.items():
        other = seen[(j + 1) % 3][1]
        assert psnr(frame0, vae_round_trip(tiny_i2v, cond)) > 50, j
        assert psnr(frame0, vae_round_trip(tiny_i2v, 255 - other)) < 45, j
    # the same chain without a reference: fewer DiT passes, no backward, no reference in the record
    res2 = invoke("longgen", "sample", "-m", tiny_i2v, "--image", first_frame, "-p", "a runner", "--frames",
                  FRAMES, "-o", plain, *SMALL)
    assert res2.exit_code == 0, res2.output
    base = _sidecar(plain)
    assert doc["compute"]["dit_forward"] > base["compute"]["dit_forward"] and "dit_backward" not in base["compute"]
    assert "reference" not in base and "reference_frames" not in base["chain"]["per_segment"][0]


@pytest.mark.slow
def test_cli_chain_transfer(tmp_path, tiny_i2v, first_frame, reference):
    """From the command line: two segments, their reference ranges, the options recorded, and the run folder
    removed once the video is written."""
    out = tmp_path / "c.mp4"
    args = ["longgen", "sample", "-m", tiny_i2v, "--image", first_frame, "--reference", reference, "-p", "x",
            "--frames", 13, "-o", out, *SMALL, *GUIDE]
    res = invoke(*args)
    assert res.exit_code == 0, res.output + (res.stderr or "")
    assert probe_video(out).num_frames == 13 and not chain_folder(out).exists()
    doc = _sidecar(out)
    assert doc["params"]["reference"] == str(reference) and doc["guidance"]["config"]["block"] == 1
    assert [p["reference_frames"] for p in doc["chain"]["per_segment"]] == [[0, 8], [8, 16]]


def test_reference_shorter_than_the_output_is_one_line_exit_2(tmp_path, tiny_i2v, first_frame):
    from vmt.io.video import write_video

    short = write_video(tmp_path / "short.mp4", moving_pattern(7, 32, 32, dx=2), 16.0)
    res = invoke("longgen", "sample", "-m", tiny_i2v, "--image", first_frame, "--reference", short, "-p", "x",
                 "--frames", 13, "-o", tmp_path / "o.mp4", *SMALL, *GUIDE)
    err = (res.stderr or "").strip()
    assert res.exit_code == 2 and len(err.splitlines()) == 1, (res.exit_code, res.output)
    assert "--reference" in err and "7 frames" in err and "13" in err and "--frames" in err, err
    assert not (tmp_path / "o.mp4").exists() and not chain_folder(tmp_path / "o.mp4").exists()


def test_guidance_options_need_a_wan_model(tmp_path):
    res = invoke("longgen", "sample", "--frames", 5, "--lr", 0.1, "-o", tmp_path / "d.mp4")
    err = (res.stderr or "").strip()
    assert res.exit_code == 2 and "--lr" in err and len(err.splitlines()) == 1, err


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_interrupted_chain_transfer_resumes_to_the_same_bytes(tmp_path, tiny_i2v, first_frame, reference):
    """Stopped after two of three segments: a rerun with another guidance setting is refused naming it; the
    same request reuses both stored segments, makes the third, and writes the uninterrupted run's bytes."""
    from vmt.errors import VmtUsageError

    def request(**kw):
        return WanChainRequest(**{**dict(model=str(tiny_i2v), image=first_frame, reference=reference, prompt="x",
                                         frames=FRAMES, segment_frames=M, height=SIZE, width=SIZE, steps=3,
                                         device="cpu", plan="none", block=1, guided_steps=2, inner_steps=3), **kw})

    whole, part = tmp_path / "whole.mp4", tmp_path / "part.mp4"
    request().run(whole)

    def stop(j, total, status, seconds):
        if j == 1:
            raise _Stop

    with pytest.raises(_Stop):
        request().run(part, on_segment=stop)
    assert sorted(p.name for p in chain_folder(part).glob("seg_*.json")) == ["seg_0000.json", "seg_0001.json"]
    with pytest.raises(VmtUsageError, match="lr"):
        request(lr=0.01).run(part)
    res = request().run(part)
    assert (res["resumed"], res["generated"]) == (2, 1)
    assert part.read_bytes() == whole.read_bytes()
    per = _sidecar(part)["chain"]["per_segment"]
    assert [p["reference_frames"] for p in per] == [[0, 8], [8, 16], [16, 24]]
    assert per[0]["guidance"] == _sidecar(whole)["chain"]["per_segment"][0]["guidance"]  # kept with the segment


def test_dry_run_plans_the_reference_ranges_and_the_guidance(tiny_i2v, first_frame, reference):
    """No weights: each segment's reference frames, and the guidance's passes on top of sampling's
    (per segment: min(guided, steps) reference forwards + guided x ceil(inner / reuse) forward + backward),
    on the model's grid from int(steps * strength) = 2 of the 3 steps: the counts the run measured."""
    kw = dict(model=str(tiny_i2v), image=first_frame, prompt="x", frames=FRAMES, segment_frames=M, height=SIZE,
              width=SIZE, steps=3, device="cpu", plan="none", block=1, guided_steps=2, inner_steps=3)
    plan = WanChainRequest(**kw).dry_run()
    out = WanChainRequest(**kw, reference=reference).dry_run()
    assert [s["reference_frames"] for s in out["segments"]] == [[0, 8], [8, 16], [16, 24]]
    assert "reference_frames" not in plan["segments"][0]
    assert out["estimate"]["dit_backward"] == 3 * 2 * 1
    assert plan["estimate"]["dit_forward"] == 3 * 3 * 2  # 3 segments x 3 steps x 2 CFG branches
    assert out["estimate"]["nfe"] == 3 * 2
    assert out["estimate"]["dit_forward"] == 3 * 2 * 2 + 3 * (2 + 2) == 24  # test_chain_with_a_reference ran 24
