"""The Wan recall chain (vmt.runs.chain, `vmt longgen sample -m <Wan I2V>`): planning against closed forms,
timelines, streamed drift against vmt.metrics.drift, the drift controls on real frames, and real chains on the
tiny random-weight I2V models: exact frame counts (probed from the file), per-segment records, resume after
SIGTERM byte-identical to an uninterrupted run, one-line errors for bad input."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import moving_pattern
from vmt.errors import VmtUsageError
from vmt.io.video import probe_video, read_video
from vmt.metrics.drift import drift, mean_lab
from vmt.runs.chain import (
    DriftStream, WanChainRequest, chain_folder, is_wan_model, plan_segments, read_timeline, resolve_ref,
    sha256_of,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
SMALL = ["--segment-frames", "5", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu",
         "--plan", "none", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(res, code: int, *patterns: str) -> str:
    err = (res.stderr or "").strip()
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output and len(err.splitlines()) == 1, err
    for pattern in patterns:
        assert pattern in err, err
    return err


@pytest.fixture
def first_frame(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "first.png"
    Image.fromarray(moving_pattern(1, 32, 32)[0]).save(path)
    return path


# ---------------------------------------------------------------- planning: closed forms


@pytest.mark.parametrize("n", [1, 4, 5, 6, 9, 13, 21, 81, 160, 161, 1000])
@pytest.mark.parametrize("m, ref", [(5, -1), (5, -2), (5, 1), (9, -1), (9, 3), (81, -1), (81, -20)])
def test_plan_matches_the_closed_form(n, m, ref):
    r = ref + m if ref < 0 else ref
    segs = plan_segments(n, m, ref)
    assert len(segs) == 1 + math.ceil(max(0, n - m) / r)
    assert sum(s.keep for s in segs) == n  # exactly N frames
    assert [s.start for s in segs] == [0, *np.cumsum([s.keep for s in segs])[:-1].tolist()]  # contiguous
    assert segs[0].keep == min(m, n) and segs[0].keep_from == 0 and segs[0].cond_ref is None
    for j, s in enumerate(segs[1:], 1):
        assert s.cond_ref == r and s.keep_from == m - r  # the frames up to the conditioning point are dropped
        assert s.start - s.keep_from == j * r  # segment j's frame 0 sits at time j * r: the reference's time
        assert s.start == m + (j - 1) * r
        assert 1 <= s.keep <= r and s.keep_from + s.keep <= m


@pytest.mark.parametrize("ref, m", [(0, 5), (5, 5), (-5, 5), (100, 81)])
def test_reference_outside_the_segment_is_refused(ref, m):
    with pytest.raises(VmtUsageError, match="ref_index"):
        resolve_ref(ref, m)


def test_timeline_text_and_jsonl(tmp_path):
    txt = tmp_path / "story.txt"
    txt.write_text("a boat\n\n# a comment\na river\n")
    assert read_timeline(txt) == [{"prompt": "a boat"}, {"prompt": "a river"}]
    jl = tmp_path / "story.jsonl"
    jl.write_text('{"prompt": "a", "seed_offset": 10}\n{"prompt": "b", "guidance_scale": 3}\n')
    req = WanChainRequest(model="x/y", prompts=jl, image=Path("i.png"), frames=13, segment_frames=5, seed=7)
    plan = req.check()
    opts = [req.segment_options(plan, j) for j in range(plan.count)]
    assert [o["prompt"] for o in opts] == ["a", "b", "b"]  # the last repeated
    assert [o["seed"] for o in opts] == [7 + 0 + 10, 7 + 1, 7 + 2]
    assert [o["guidance_scale"] for o in opts] == [5.0, 3.0, 3.0]
    for bad, msg in [('{"prompt": "a", "sed": 1}', "unknown key"), ('{"x": 1}', "needs a \"prompt\""),
                     ("not json", "not JSON"), ('{"prompt": "a", "seed_offset": "1"}', "must be int")]:
        jl.write_text(bad + "\n")
        with pytest.raises(VmtUsageError, match=msg):
            read_timeline(jl)


def test_model_kind_by_folder_content(tmp_path, tiny_i2v):
    assert is_wan_model(str(tiny_i2v)) and is_wan_model("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert not is_wan_model(str(run)) and not is_wan_model(None)


# ---------------------------------------------------------------- drift: streamed = vmt.metrics.drift


def test_streamed_drift_equals_drift_on_equal_chunks():
    frames = moving_pattern(20, 24, 32, seed=3)
    frames[10:] = np.clip(frames[10:].astype(int) + 25, 0, 255).astype(np.uint8)  # a cast from segment 3 on
    stream = DriftStream()
    for s in range(0, 20, 5):
        stream.add(frames[s:s + 5])
    got, want = stream.report(5).as_dict(), drift(frames, 5).as_dict()
    for key in want:
        assert np.allclose(got[key], want[key], rtol=1e-5, atol=1e-3), key  # float32 Lab means
    stream.add(frames[:1])  # a one-frame tail joins the segment before, as drift() does
    want = drift(np.concatenate([frames, frames[:1]]), 5).as_dict()
    got = stream.report(5).as_dict()
    for key in want:
        assert np.allclose(got[key], want[key], rtol=1e-5, atol=1e-3), key  # float32 Lab means


# ---------------------------------------------------------------- the drift controls on real frames


def test_colour_match_brings_a_shifted_frame_to_the_anchor():
    anchor = moving_pattern(1, 48, 64, seed=1)[0]
    shifted = np.clip(anchor.astype(int) * [1.0, 0.8, 0.6] + [30, 0, -10], 0, 255).astype(np.uint8)
    req = WanChainRequest(colour_match=True)

    def delta_e(frame):  # vmt.metrics.drift: segment [anchor, anchor] against [frame, frame]
        return drift(np.stack([anchor, anchor, frame, frame]), 2).delta_e[1]

    assert delta_e(shifted) > 10
    assert delta_e(req.conditioning_frame(shifted, anchor, seed=0)) < 1
    off = WanChainRequest(colour_match=False).conditioning_frame(shifted, anchor, seed=0)
    assert np.array_equal(off, shifted)  # off: the frame as it was


def test_cond_noise_is_seeded_gaussian_of_the_given_std():
    frame = np.full((64, 64, 3), 128, np.uint8)
    req = WanChainRequest(colour_match=False, cond_noise=0.05)
    a, b = req.conditioning_frame(frame, frame, 3), req.conditioning_frame(frame, frame, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, req.conditioning_frame(frame, frame, 4))
    std = ((a.astype(float) - 128) / 127.5).std()
    assert abs(std - 0.05) < 0.003, std
    assert np.array_equal(WanChainRequest(colour_match=False).conditioning_frame(frame, frame, 3), frame)


# ---------------------------------------------------------------- bad input: one line, exit 2


def test_bad_input_is_one_line_exit_2(tmp_path, tiny_i2v, tiny_t2v, first_frame):
    out = tmp_path / "o.mp4"
    base = ["longgen", "sample", "-m", tiny_i2v, "-o", out, "--image", first_frame, "-p", "x", *SMALL]
    one_line_error(invoke(*base, "--frames", "0"), 2, "--frames must be")
    one_line_error(invoke(*base, "--segment-frames", "6"), 2, "--segment-frames must be 4k+1")
    one_line_error(invoke(*base, "--ref-index", "5"), 2, "--ref-index 5 is outside 1..4")
    one_line_error(invoke(*base, "--cond-noise", "-1"), 2, "--cond-noise must be >= 0")
    one_line_error(invoke(*base, "--carry-motion"), 2, "--carry-motion applies to EncGAN3")
    one_line_error(invoke("longgen", "sample", "-m", tiny_i2v, "-o", out, "-p", "x", *SMALL), 2,
                   "cannot start without a first frame", "--image", "--t2v-model")
    one_line_error(invoke("longgen", "sample", "-m", tiny_t2v, "-o", out, "-p", "x", "--image", first_frame,
                          *SMALL), 2, "--model", "image-to-video")
    one_line_error(invoke("longgen", "sample", "-m", tiny_i2v, "-o", out, "-p", "x", "--t2v-model", tiny_i2v,
                          *SMALL), 2, "--t2v-model", "text-to-video")
    one_line_error(invoke("longgen", "sample", "-m", tiny_i2v, "-o", out, *SMALL, "--image", first_frame), 2,
                   "--prompt is missing")
    one_line_error(invoke("longgen", "sample", "-o", out, "-p", "x"), 2, "--prompt applies to Wan")
    assert not out.exists() and not chain_folder(out).exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny_i2v, first_frame):
    out = tmp_path / "o.mp4"
    res = invoke("longgen", "sample", "-m", tiny_i2v, "-o", out, "--image", first_frame, "-p", "x", "--frames",
                 "13", *SMALL, "--dry-run")
    assert res.exit_code == 0, res.output
    assert "3 segments of 5 frames -> 13 frames; NFE 6" in res.output and "GiB" in res.output
    assert "segment 2: output frames 9-12 (its frames 1-4), seed 2" in res.output
    assert not out.exists() and not chain_folder(out).exists()


# ---------------------------------------------------------------- real chains on tiny models


def _sidecar(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_i2v", "tiny_i2v_clip"])
def test_five_segment_chain_gives_exactly_n_frames(request, fixture, tmp_path, first_frame):
    model = request.getfixturevalue(fixture)
    out = tmp_path / "long.mp4"
    res = invoke("longgen", "sample", "-m", model, "--image", first_frame, "-p", "a fox", "--frames", "19",
                 "--seed", "5", "-o", out, *SMALL)
    assert res.exit_code == 0, res.output
    assert probe_video(out).num_frames == 19  # 5 + 4 * 4 - 2: the last segment gives 2
    doc = _sidecar(out)
    chain = doc["chain"]
    assert chain["segments"] == 5 and doc["video"]["frames"] == 19
    per = chain["per_segment"]
    assert [s["seed"] for s in per] == [5, 6, 7, 8, 9]
    assert [s["output_frames"] for s in per] == [[0, 4], [5, 8], [9, 12], [13, 16], [17, 18]]
    assert per[0]["conditioned_on"] is None and per[0]["cond_sha256"] == sha256_of(
        read_video(first_frame, size=(32, 32), max_frames=1)[0][0])
    assert [s["conditioned_on"] for s in per[1:]] == [{"segment": j, "frame": 4, "output_time": 4 * (j + 1)}
                                                     for j in range(4)]
    assert len({s["cond_sha256"] for s in per}) == 5 and len({s["frames_sha256"] for s in per}) == 5
    assert chain["controls"] == {"colour_match": True, "anchor_embedding": True, "cond_noise": 0.0,
                                 "anchor_embedding_used": fixture == "tiny_i2v_clip"}
    assert doc["drift"]["segments"] == 5 and len(doc["drift"]["seams"]) == 4
    assert doc["compute"]["nfe"] == 10
    assert not chain_folder(out).exists()  # removed once the video is written


@pytest.mark.slow
def test_each_control_is_off_by_its_option_and_recorded(tmp_path, tiny_i2v_clip, first_frame):
    runs = {}
    for name, flags in {"on": [], "off": ["--no-colour-match", "--no-anchor-embedding"],
                        "noise": ["--cond-noise", "0.2"]}.items():
        out = tmp_path / f"{name}.mp4"
        res = invoke("longgen", "sample", "-m", tiny_i2v_clip, "--image", first_frame, "-p", "x", "--frames", "9",
                     "-o", out, *SMALL, *flags)
        assert res.exit_code == 0, res.output
        runs[name] = (_sidecar(out), read_video(out)[0])
    assert runs["off"][0]["chain"]["controls"] == {"colour_match": False, "anchor_embedding": False,
                                                   "cond_noise": 0.0, "anchor_embedding_used": False}
    assert runs["noise"][0]["chain"]["controls"]["cond_noise"] == 0.2
    assert runs["off"][0]["params"]["colour_match"] is False
    seg0 = [r[0]["chain"]["per_segment"][0]["frames_sha256"] for r in runs.values()]
    assert len(set(seg0)) == 1  # segment 1 is the same: the controls act on the conditioning of later ones
    for name in ("off", "noise"):
        assert runs[name][0]["chain"]["per_segment"][1]["cond_sha256"] != runs["on"][0]["chain"]["per_segment"][1][
            "cond_sha256"]
        assert np.abs(runs[name][1][5:].astype(int) - runs["on"][1][5:].astype(int)).mean() > 0.5


@pytest.mark.slow
def test_text_to_video_first_segment(tmp_path, tiny_i2v, tiny_t2v):
    out = tmp_path / "t.mp4"
    res = invoke("longgen", "sample", "-m", tiny_i2v, "--t2v-model", tiny_t2v, "-p", "x", "--frames", "9",
                 "-o", out, *SMALL)
    assert res.exit_code == 0, res.output
    per = _sidecar(out)["chain"]["per_segment"]
    assert probe_video(out).num_frames == 9
    assert [s["model"] for s in per] == [str(tiny_t2v), str(tiny_i2v)]


def _wait_for_segments(folder: Path, n: int, proc, deadline: float) -> None:
    while len(list(folder.glob("seg_*.json"))) < n and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_then_rerun_gives_the_bytes_of_an_uninterrupted_run(tmp_path, tiny_i2v, first_frame):
    # 128x128 and 60 steps: a segment takes ~0.7 s on one thread, long enough to be caught in flight.
    args = ["longgen", "sample", "-m", str(tiny_i2v), "--image", str(first_frame), "-p", "x", "--frames", "21",
            "--segment-frames", "5", "--height", "128", "--width", "128", "--steps", "60", "--device", "cpu",
            "--plan", "none", "--quiet"]
    whole = tmp_path / "whole.mp4"
    assert invoke(*args, "-o", whole).exit_code == 0
    out = tmp_path / "resumed.mp4"
    cmd = [sys.executable, "-m", "cli.main", *args, "-o", str(out)]
    # A shell that starts pytest in the background ignores SIGINT, and children inherit that: restore it.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_segments(chain_folder(out), 2, proc, time.time() + 240)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)  # during segment 3
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-2000:]
    kept = sorted(p.name for p in chain_folder(out).glob("seg_*"))
    assert 4 <= len(kept) < 10 and not out.exists(), kept  # at least 2 segments, not all 5; no video yet
    assert not [p for p in chain_folder(out).iterdir() if p.name.startswith(".")]  # no half-written file
    # Stored segments are checked against the request: another step count is refused, naming it.
    one_line_error(invoke(*[a if a != "60" else "59" for a in args], "-o", out), 2, "--steps was 60, now 59",
                   "--overwrite")
    res = invoke(*args, "-o", out)
    assert res.exit_code == 0, res.output
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(whole.read_bytes()).digest()
    a, b = _sidecar(out)["chain"]["per_segment"], _sidecar(whole)["chain"]["per_segment"]
    assert [s["frames_sha256"] for s in a] == [s["frames_sha256"] for s in b]
    assert _sidecar(out)["chain"]["controls"] == _sidecar(whole)["chain"]["controls"]


def test_mean_lab_of_chunks_is_the_mean_of_frames():
    # DriftStream's per-chunk colour: the mean of per-frame means equals the mean over the chunk's pixels.
    frames = moving_pattern(6, 16, 16)
    assert np.allclose(np.mean([mean_lab(f) for f in frames], 0), mean_lab(frames), atol=1e-4)
