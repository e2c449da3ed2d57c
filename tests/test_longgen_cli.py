"""`vmt longgen train | sample | reconstruct` end to end on a tiny model (CPU, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


class _Result:
    """Exit code and output with rich's line wrapping undone (it wraps at the terminal width)."""

    def __init__(self, res):
        self.exit_code = res.exit_code
        self.output = " ".join(res.output.split())


def _invoke(*args: str) -> _Result:
    return _Result(runner.invoke(app, ["longgen", *args], catch_exceptions=False))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lg") / "run"
    res = _invoke("train", "synthetic:digits", "-o", str(out), "--preset", "tiny", "--steps", "3",
                  "--batch-size", "2", "--sample-every", "2", "--quiet")
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_train_writes_a_complete_run_folder(run_dir):
    for name in ("model.safetensors", "train.safetensors", "config.json", "train.json",
                 "samples/step_000002.png", "samples/step_000003.png"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["step"] == 3 and meta["model"]["size"] == 16 and meta["data"] == "synthetic:digits"
    side = json.loads((run_dir / "train.json").read_text())
    assert side["subcommand"] == "longgen train" and side["compute"]["steps"] == 3
    from PIL import Image

    grid = Image.open(run_dir / "samples" / "step_000003.png")
    assert grid.size == (8 * 16, 6 * 16)  # frames across, samples down


@pytest.mark.slow
def test_model_flags_override_the_preset(tmp_path):
    from vmt.longgen.config import preset

    run = tmp_path / "run"
    res = _invoke("train", "synthetic:digits", "-o", str(run), "--preset", "tiny", "--steps", "1",
                  "--batch-size", "2", "--no-warp", "--signed-motion", "--size", "32", "--quiet")
    assert res.exit_code == 0, res.output
    model = json.loads((run / "config.json").read_text())["model"]
    assert preset("tiny").warp and preset("tiny").signed_motion is False
    assert model["warp"] is False and model["signed_motion"] is True and model["size"] == 32


@pytest.mark.slow
def test_resume_continues_and_refuses_another_preset(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    res = _invoke("train", "synthetic:digits", "-o", str(run), "--preset", "tiny", "--steps", "3", "--quiet")
    assert res.exit_code == 2 and "--resume" in res.output
    res = _invoke("train", "synthetic:digits", "-o", str(run), "--preset", "cpu", "--steps", "5", "--resume")
    assert res.exit_code == 2 and "another configuration" in res.output
    res = _invoke("train", "synthetic:digits", "-o", str(run), "--preset", "tiny", "--steps", "4",
                  "--batch-size", "2", "--resume", "--quiet")
    assert res.exit_code == 0, res.output
    assert json.loads((run / "config.json").read_text())["step"] == 4


@pytest.mark.slow
def test_sample_200_frames_streams_exactly_200_frames(run_dir, tmp_path):
    from vmt.io.video import probe_video, read_video

    out = tmp_path / "long.mp4"
    res = _invoke("sample", "-m", str(run_dir), "--frames", "200", "-o", str(out), "--seed", "5", "--quiet")
    assert res.exit_code == 0, res.output
    assert probe_video(out).num_frames == 200
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["video"]["frames"] == 200 and side["compute"]["clips"] == 1 + -(-(200 - 8) // 7)
    again = tmp_path / "again.mp4"
    assert _invoke("sample", "-m", str(run_dir), "--frames", "200", "-o", str(again), "--seed", "5",
                   "--quiet").exit_code == 0
    a, _ = read_video(out)
    b, _ = read_video(again)
    assert np.array_equal(a, b)
    res = _invoke("sample", "-m", str(run_dir), "--frames", "20", "-o", str(out), "--quiet")
    assert res.exit_code == 2 and "already exists" in res.output


@pytest.mark.slow
def test_saved_runs_sample_from_a_fitted_prior_and_standard_prior_restores_n01(run_dir, tmp_path):
    from safetensors.torch import load_file

    from vmt.io.video import read_video

    state = load_file(run_dir / "model.safetensors")
    dx = state["prior_mean_x"].shape[0]
    assert state["prior_mean_x"].abs().max() > 0 and not np.allclose(state["prior_scale_x"].numpy(), np.eye(dx))
    outs = {}
    for flag in ("", "--standard-prior"):
        out = tmp_path / f"s{len(flag)}.mp4"
        res = _invoke("sample", "-m", str(run_dir), "--frames", "16", "-o", str(out), "--seed", "5", "--quiet",
                      *([flag] if flag else []))
        assert res.exit_code == 0, res.output
        outs[flag], _ = read_video(out)
        side = json.loads(out.with_suffix(".json").read_text())
        assert side["params"]["standard_prior"] is bool(flag)
        assert side["model"]["motion_prior"] == ("standard normal" if flag else "learned")
    assert not np.array_equal(outs[""], outs["--standard-prior"])
    # Recall windows (2T - 1 frames) were there, so the run also carries a fitted motion prior and its fit.
    assert state["motion_prior.fitted"].item() == 1
    fit = json.loads((run_dir / "train.json").read_text())["motion_prior_fit"]
    assert set(fit) == {"r2", "r2_linear"}


@pytest.mark.slow
def test_sample_without_model_uses_the_shipped_default(tmp_path):
    from vmt.io.video import probe_video
    from vmt.longgen.checkpoint import DEFAULT_MODEL_DIR

    out = tmp_path / "default.mp4"
    res = _invoke("sample", "--frames", "30", "-o", str(out), "--seed", "1", "--quiet")
    assert res.exit_code == 0, res.output
    assert probe_video(out).num_frames == 30
    side = json.loads(out.with_suffix(".json").read_text())
    assert Path(side["model"]["run_dir"]) == DEFAULT_MODEL_DIR
    assert side["model"]["data"] == "synthetic:digits" and side["video"]["height"] == 32


@pytest.mark.slow
def test_reconstruct_keeps_the_frame_count_and_reports_l1(run_dir, tmp_path):
    from conftest import moving_pattern

    from vmt.io.video import probe_video, write_video

    src = tmp_path / "in.mp4"
    write_video(src, moving_pattern(19, 32, 32), 10)
    out = tmp_path / "rec.mp4"
    res = _invoke("reconstruct", str(src), "-m", str(run_dir), "-o", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    assert probe_video(out).num_frames == 19
    side = json.loads(out.with_suffix(".json").read_text())
    assert 0 < side["reconstruction_l1"] < 2 and side["video"]["frames"] == 19


@pytest.mark.slow
def test_bad_inputs_exit_with_one_line_and_no_output(tmp_path):
    res = _invoke("train", "synthetic:digits", "-o", str(tmp_path / "r0"), "--preset", "tiny", "--size", "48")
    assert res.exit_code == 2 and "power of two" in res.output and not (tmp_path / "r0").exists()
    from conftest import moving_pattern

    from vmt.io.video import write_video

    empty = tmp_path / "empty"
    empty.mkdir()
    res = _invoke("train", str(empty), "-o", str(tmp_path / "r1"), "--preset", "tiny", "--steps", "1")
    assert res.exit_code == 2 and "has no videos" in res.output
    assert not (tmp_path / "r1").exists()

    short = tmp_path / "short"
    short.mkdir()
    write_video(short / "a.mp4", moving_pattern(4, 32, 32), 10)
    res = _invoke("train", str(short), "-o", str(tmp_path / "r2"), "--preset", "tiny", "--steps", "1")
    assert res.exit_code == 2 and "shorter than one training window" in res.output
    assert not (tmp_path / "r2").exists()

    res = _invoke("sample", "-m", str(tmp_path / "nope"), "-o", str(tmp_path / "x.mp4"))
    assert res.exit_code == 2 and "not found" in res.output
    assert not (tmp_path / "x.mp4").exists()
    res = _invoke("train", "synthetic:digits", "-o", str(tmp_path / "r3"), "--stride", "0")
    assert res.exit_code == 2 and "--stride" in res.output
    res = _invoke("train", "synthetic:digits", "-o", str(tmp_path / "r4"), "--pyramid-levels", "0")
    assert res.exit_code == 2 and "--pyramid-levels" in res.output and not (tmp_path / "r4").exists()
    res = _invoke("train", "synthetic:digits", "-o", str(tmp_path / "r5"), "--mask-weight", "-1")
    assert res.exit_code == 2 and "--mask-weight" in res.output and not (tmp_path / "r5").exists()
    res = _invoke("train", "synthetic:digits", "-o", str(tmp_path / "r6"), "--image-warmup", "-5")
    assert res.exit_code == 2 and "--image-warmup" in res.output and not (tmp_path / "r6").exists()
    res = _invoke("sample", "-o", str(tmp_path / "t.mp4"), "--motion-temperature", "-0.5")
    assert res.exit_code == 2 and "--motion-temperature" in res.output and not (tmp_path / "t.mp4").exists()


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[1] / "recipes" / "longgen").glob("*.toml")))
def test_recipes_name_only_real_options(recipe):
    from cli.main import load_recipe

    values = load_recipe(recipe, "longgen train")
    assert values["preset"] in ("paper", "cpu", "tiny") and values["steps"] > 0
