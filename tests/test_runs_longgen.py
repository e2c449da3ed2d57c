"""vmt.runs.longgen: the longgen requests run from Python write what `vmt longgen train | sample | reconstruct`
writes, check themselves naming parameters (not flags), print nothing and report progress."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from vmt.errors import VmtUsageError
from vmt.runs.longgen import (
    LonggenReconstructRequest, LonggenSampleRequest, LonggenTrainRequest, parse_strides,
)

runner = CliRunner()

# Fields of a sidecar that differ between two runs of the same job: when, how long, how much memory, which
# command line asked for it and where it was written.
VOLATILE = ("created", "timings_s", "memory", "command", "output")
TRAIN = dict(data="synthetic:digits", preset="tiny", steps=3, batch_size=2, sample_every=2, seed=4)


def _cli(*args: str):
    res = runner.invoke(app, ["longgen", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _sidecar(path: Path, request) -> dict:
    """A sidecar without its volatile fields, its params cut to the request's fields (the command line also
    records quiet, debug, recipe and overwrite)."""
    from dataclasses import fields

    doc = json.loads(path.read_text())
    names = {f.name for f in fields(request)}
    doc["params"] = {k: v for k, v in doc["params"].items() if k in names}

    def rounded(v):  # the motion prior's fit statistics sum in BLAS, whose order may vary in the last bit
        if isinstance(v, float):
            return float(f"{v:.12g}")
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return [rounded(x) for x in v] if isinstance(v, list) else v

    return {k: (rounded(v) if k == "motion_prior_fit" else v) for k, v in doc.items() if k not in VOLATILE}


def _tensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny training run made by the command line and by LonggenTrainRequest.run."""
    root = tmp_path_factory.mktemp("runs_longgen")
    _cli("train", "synthetic:digits", "-o", str(root / "cli"), "--preset", "tiny", "--steps", "3",
         "--batch-size", "2", "--sample-every", "2", "--seed", "4", "--quiet")
    calls: list[tuple[int, int, dict]] = []
    request = LonggenTrainRequest(**TRAIN)
    result = request.run(root / "py", progress=lambda d, t, info: calls.append((d, t, info)))
    return {"cli": root / "cli", "py": root / "py", "request": request, "result": result, "calls": calls,
            "root": root}


@pytest.mark.slow
def test_train_request_writes_the_run_the_command_line_writes(runs):
    cli, py = runs["cli"], runs["py"]
    a, b = _tensors(cli / "model.safetensors"), _tensors(py / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert json.loads((cli / "config.json").read_text()) == json.loads((py / "config.json").read_text())
    assert sorted(p.name for p in (py / "samples").iterdir()) == ["step_000002.png", "step_000003.png"]
    assert _sidecar(cli / "train.json", runs["request"]) == _sidecar(py / "train.json", runs["request"])
    side = json.loads((py / "train.json").read_text())
    assert side["command"] == ["vmt.runs.longgen.LonggenTrainRequest.run"] and side["params"]["output"] == str(py)
    assert runs["result"]["step"] == 3 and set(runs["result"]["final_losses"]) == set(side["final_losses"])


@pytest.mark.slow
def test_train_progress_reports_every_step_with_its_losses(runs):
    calls = runs["calls"]
    assert [(d, t) for d, t, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert set(calls[-1][2]) == set(runs["result"]["final_losses"])
    assert all(float(v) == float(v) for v in calls[-1][2].values())  # formatted numbers


@pytest.mark.slow
def test_train_resume_from_python_keeps_the_runs_settings_unless_given(runs, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(runs["py"], run)
    with pytest.raises(VmtUsageError) as e:
        LonggenTrainRequest(**TRAIN).run(run)  # a run is there: resume or overwrite
    assert "resume" in str(e.value) and "overwrite" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(VmtUsageError) as e:
        LonggenTrainRequest(**{**TRAIN, "resume": True}).run(tmp_path / "none")
    assert str(e.value).startswith("resume:") and "--" not in str(e.value)
    # batch_size 16 (the default) is not "given": the resumed run keeps its own 2 and its seed 4.
    with pytest.raises(VmtUsageError) as e:  # given explicitly, it conflicts with the run's
        LonggenTrainRequest(data="synthetic:digits", preset="tiny", steps=4, batch_size=3, resume=True).run(run)
    assert "batch_size 3 (the run has 2)" in str(e.value) and "--" not in str(e.value)
    capfd.readouterr()
    out = LonggenTrainRequest(data="synthetic:digits", preset="tiny", steps=4, resume=True).run(run)
    assert capfd.readouterr() == ("", "")
    assert out["step"] == 4 and json.loads((run / "config.json").read_text())["step"] == 4
    side = json.loads((run / "train.json").read_text())
    assert side["params"]["batch_size"] == 2 and side["params"]["seed"] == 4


@pytest.mark.slow
def test_sample_request_writes_the_video_the_command_line_writes(runs, capfd):
    root = runs["root"]
    _cli("sample", "-m", str(runs["py"]), "--frames", "20", "--ref-index", "-2", "--seed", "5", "-o",
         str(root / "cli.mp4"), "--quiet")
    calls: list[tuple[int, int, dict]] = []
    request = LonggenSampleRequest(model=str(runs["py"]), frames=20, ref_index=-2, seed=5)
    capfd.readouterr()
    out = request.run(root / "py.mp4", progress=lambda d, t, info: calls.append((d, t, info)))
    assert capfd.readouterr() == ("", "")
    assert (root / "py.mp4").read_bytes() == (root / "cli.mp4").read_bytes()
    assert _sidecar(root / "cli.json", request) == _sidecar(root / "py.json", request)
    assert out["frames"] == 20 and out["clips"] == 1 + -(-(20 - 8) // 6) and out["size"] == 16
    assert [(d, t) for d, t, _ in calls] == [(k, 20) for k in range(1, 21)]
    with pytest.raises(VmtUsageError, match="already exists"):
        request.run(root / "py.mp4")
    request.run(root / "py.mp4", overwrite=True)
    assert (root / "py.mp4").read_bytes() == (root / "cli.mp4").read_bytes()


@pytest.mark.slow
def test_reconstruct_request_writes_the_video_the_command_line_writes(runs, capfd):
    from conftest import moving_pattern

    from vmt.io.video import write_video

    root = runs["root"]
    src = root / "in.mp4"
    write_video(src, moving_pattern(19, 32, 32), 10)
    _cli("reconstruct", str(src), "-m", str(runs["py"]), "--recall", "-o", str(root / "rec_cli.mp4"), "--quiet")
    calls: list[tuple[int, int, dict]] = []
    request = LonggenReconstructRequest(video=src, model=str(runs["py"]), recall=True)
    capfd.readouterr()
    out = request.run(root / "rec_py.mp4", progress=lambda d, t, info: calls.append((d, t, info)))
    assert capfd.readouterr() == ("", "")
    assert (root / "rec_py.mp4").read_bytes() == (root / "rec_cli.mp4").read_bytes()
    assert _sidecar(root / "rec_cli.json", request) == _sidecar(root / "rec_py.json", request)
    side = json.loads((root / "rec_py.json").read_text())
    assert out == {"frames": 19, "l1": side["reconstruction_l1"]} and 0 < out["l1"] < 2
    assert [(d, t) for d, t, _ in calls] == [(k, 19) for k in range(1, 20)]
    with pytest.raises(VmtUsageError, match="same file") as e:
        request.run(src, overwrite=True)
    assert "--" not in str(e.value)


@pytest.mark.parametrize(("request_", "name"), [
    (LonggenTrainRequest(data="synthetic:digits", stride="0"), "stride"),
    (LonggenTrainRequest(data="synthetic:digits", stride="2,x"), "stride"),
    (LonggenTrainRequest(data="synthetic:digits", steps=0), "steps"),
    (LonggenTrainRequest(data="synthetic:digits", lr=0.0), "lr"),
    (LonggenTrainRequest(data="synthetic:digits", pyramid_levels=0), "pyramid_levels"),
    (LonggenTrainRequest(data="synthetic:digits", image_warmup=-5), "image_warmup"),
    (LonggenTrainRequest(data="synthetic:digits", fps=float("nan")), "fps"),
    (LonggenTrainRequest(data="synthetic:digits", seed=-1), "seed"),
    (LonggenSampleRequest(frames=0), "frames"),
    (LonggenSampleRequest(motion_temperature=-0.5), "motion_temperature"),
    (LonggenSampleRequest(fps=0.0), "fps"),
    (LonggenReconstructRequest(video="in.mp4", model="run", max_frames=0), "max_frames"),
    (LonggenReconstructRequest(video="in.mp4", model="run", fps=500.0), "fps"),
    (LonggenReconstructRequest(video="in.mp4", model=""), "model"),
])
def test_check_refuses_bad_values_naming_the_parameter(request_, name):
    with pytest.raises(VmtUsageError) as e:
        request_.check()
    assert e.value.params == [name] and str(e.value).startswith(name) and "--" not in str(e.value)


def test_check_resolves_the_model_config_and_the_reference_frame():
    strides, cfg = LonggenTrainRequest(data="synthetic:digits", preset="tiny", stride="2,3", size=32,
                                       warp=False).check()
    assert strides == (2, 3) and cfg.size == 32 and cfg.warp is False and cfg.frames == 8
    with pytest.raises(VmtUsageError, match="power of two"):
        LonggenTrainRequest(data="synthetic:digits", size=48).check()
    with pytest.raises(VmtUsageError, match="unknown preset"):
        LonggenTrainRequest(data="synthetic:digits", preset="huge").check()
    assert LonggenSampleRequest(ref_index=-3).check() == 5  # the shipped model: 8-frame clips
    with pytest.raises(VmtUsageError, match="outside 1..7"):
        LonggenSampleRequest(ref_index=8).check()
    assert parse_strides(" 1, 2 ") == (1, 2)


def test_train_request_refuses_a_file_as_run_folder_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(VmtUsageError) as e:
        LonggenTrainRequest(data="synthetic:digits").run(tmp_path / "f")
    assert str(e.value).startswith("output ") and "is a file" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VmtUsageError, match="has no videos"):
        LonggenTrainRequest(data=str(tmp_path / "empty"), preset="tiny").run(tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_given_fields_are_those_away_from_their_defaults():
    assert LonggenTrainRequest(data="synthetic:digits", preset="tiny", lr=1e-3).given_fields() \
        == {"data", "preset", "lr"}
