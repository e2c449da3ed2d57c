"""The command scaffold, through the real commands: bad input is exit 2 with one line before any work, inputs
are never touched, no file is left behind, SIGTERM/SIGHUP clean up like Ctrl-C, recipes are typed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from vmt.io.video import write_video

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--quiet"]


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below `folder` (hidden ones included) -> sha256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_usage_error(res, pattern: str) -> None:
    err = (res.stderr or "").strip()
    assert res.exit_code == 2, (res.exit_code, res.output, err)
    assert "Traceback" not in res.output and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and pattern.lower() in err.lower(), err


@pytest.fixture(scope="module")
def world_videos(tmp_path_factory) -> Path:
    """The two videos of `world`, encoded once per module; each test gets its own copies."""
    folder = tmp_path_factory.mktemp("world-videos")
    rng = np.random.default_rng(0)
    write_video(folder / "ref.mp4", rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), fps=8)
    write_video(folder / "img.mp4", np.full((1, 32, 32, 3), 90, np.uint8), fps=1)
    return folder


@pytest.fixture
def world(tmp_path, world_videos) -> Path:
    """A folder with a real video, an image, a recipe and a keypoint file; nothing else."""
    for name in ("ref.mp4", "img.mp4"):
        shutil.copyfile(world_videos / name, tmp_path / name)
    (tmp_path / "r.toml").write_text("steps = 2\n")
    (tmp_path / "sub").mkdir()
    return tmp_path


# Each row: a command line (W = the world folder) and the text the one-line error must contain. Every row must
# fail before any model, video or training work starts, leaving the folder byte-identical.
BAD = [
    # missing inputs, folders where files are expected and the reverse
    (["transfer", "W/missing.mp4", "-p", "x", "-o", "W/o.mp4"], "not found"),
    (["transfer", "W/sub", "-p", "x", "-o", "W/o.mp4"], "is a folder"),
    (["refine", "-p", "x", "--image", "W/sub", "-o", "W/o.mp4"], "--image W/sub is a folder"),
    (["refine", "-p", "x", "--image", "W/nope.png", "-o", "W/o.mp4"], "not found"),
    (["longgen", "reconstruct", "W/sub", "-m", "W/sub", "-o", "W/o.mp4"], "is a folder"),
    (["longgen", "reconstruct", "W/ref.mp4", "-m", "W/ref.mp4", "-o", "W/o.mp4"], "is a file; give a folder"),
    (["longgen", "sample", "-m", "W/r.toml", "-o", "W/o.mp4"], "is a file; give a folder"),
    # an output that is an input, even with --overwrite
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/ref.mp4", "--overwrite"], "same file as the input"),
    (["refine", "-p", "x", "--image", "W/img.mp4", "-o", "W/img.mp4", "--overwrite"], "same file as the input"),
    (["longgen", "reconstruct", "W/ref.mp4", "-m", "W/sub", "-o", "W/ref.mp4", "--overwrite"], "same file"),
    (["refine", "-p", "x", "--recipe", "W/r.toml", "-o", "W/r.toml", "--overwrite"], "same file as the input"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/./ref.mp4", "--overwrite"], "same file as the input"),
    # wrong output suffix, missing output folder, output is a folder
    (["refine", "-p", "x", "-o", "W/out.json"], "must end in"),
    (["refine", "-p", "x", "-o", "W/noext"], "must end in"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/out.webm"], "must end in"),
    (["longgen", "sample", "-o", "W/out.npz"], "must end in"),
    (["refine", "-p", "x", "-o", "W/nodir/o.mp4"], "does not exist"),
    (["refine", "-p", "x", "-o", "W/sub"], "is a directory"),
    (["longgen", "train", "synthetic:digits", "-o", "W/r.toml"], "is a file"),
    # numbers: nan, inf, out of range, for every float option of the model commands
    (["refine", "-p", "x", "-o", "W/o.mp4", "-g", "inf"], "--guidance-scale must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "-g", "nan"], "--guidance-scale must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--guidance-scale-2", "-1"], "--guidance-scale-2 must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--shift", "0"], "--shift must be > 0"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--fps", "nan"], "--fps must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--tau", "nan"], "--tau must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--certain-fraction", "1.5"], "--certain-fraction must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--p-norm", "0.5"], "--p-norm must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--steps", "0"], "--steps must be"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--num-frames", "10"], "4k+1"),
    (["refine", "-p", "x", "-o", "W/o.mp4", "--num-frames", "10001"], "rotary"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--strength", "0"], "--strength must be"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--lr", "inf"], "--lr must be"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--temperature", "-1"], "--temperature must be"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--amf-weight", "nan"], "--amf-weight must be"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--fps", "-inf"], "--fps must be"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--window-weight", "-2"], "--window-weight must be"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--lr-end", "0"], "--lr-end must be"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--shift", "nan"], "--shift must be"),
    (["longgen", "sample", "-o", "W/o.mp4", "--fps", "inf"], "--fps must be"),
    (["longgen", "sample", "-o", "W/o.mp4", "--motion-temperature", "nan"], "--motion-temperature must be"),
    (["longgen", "sample", "-o", "W/o.mp4", "--frames", "0"], "--frames must be"),
    (["longgen", "reconstruct", "W/ref.mp4", "-m", "W/sub", "-o", "W/o.mp4", "--fps", "0"], "--fps must be"),
    (["longgen", "train", "synthetic:digits", "-o", "W/run", "--lr", "nan"], "--lr must be"),
    (["longgen", "train", "synthetic:digits", "-o", "W/run", "--kl-weight", "inf"], "--kl-weight must be"),
    (["longgen", "train", "synthetic:digits", "-o", "W/run", "--adv-weight", "-1"], "--adv-weight must be"),
    (["longgen", "train", "synthetic:digits", "-o", "W/run", "--mask-weight", "nan"], "--mask-weight must be"),
    (["longgen", "train", "synthetic:digits", "-o", "W/run", "--fps", "0"], "--fps must be"),
    # eval: inputs, outputs, numbers
    (["eval", "temporal", "W/missing.mp4"], "not found"),
    (["eval", "temporal", "W/ref.mp4", "--json", "W/ref.mp4", "--overwrite"], "same file as the input"),
    (["eval", "temporal", "W/ref.mp4", "--json", "W/report.txt"], "must end in .json"),
    (["eval", "temporal", "W/ref.mp4", "--json", "W/nodir/r.json"], "does not exist"),
    (["eval", "motion", "W/ref.mp4", "W/ref.mp4", "--fb-threshold", "nan"], "--fb-threshold must be"),
    (["eval", "motion", "W/ref.mp4", "W/ref.mp4", "--min-motion", "inf"], "--min-motion must be"),
    (["eval", "physics", "W/ref.mp4", "--threshold", "nan"], "--threshold must be"),
    # predict-keypoints: inputs, outputs, numbers
    (["predict-keypoints", "run", "W/missing.npz", "-o", "W/p.npz"], "not found"),
    (["predict-keypoints", "run", "W/sub", "-o", "W/p.npz"], "is a folder"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.mp4"], "must end in .npz"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.npz", "--render", "W/ref.mp4", "--overwrite"],
     "same file as the input"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.npz", "--render", "W/p2.npz"], "must end in"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.npz", "--context", "0"], "--context must be >= 2"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.npz", "--horizon", "0"], "--horizon must be >= 1"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.npz", "--step-size", "nan"], "--step-size must be"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.npz", "--temperature", "inf"], "--temperature must be"),
    (["predict-keypoints", "run", "W/ref.mp4", "-o", "W/p.npz", "-m", "W/r.toml"], "is a file; give a folder"),
    (["predict-keypoints", "train", "W/missing.npz", "-o", "W/run"], "not found"),
    (["predict-keypoints", "train", "W/ref.mp4", "-o", "W/r.toml"], "is a file"),
    (["predict-keypoints", "train", "W/ref.mp4", "-o", "W/run", "--lr", "nan"], "--lr must be"),
    (["predict-keypoints", "train", "W/ref.mp4", "-o", "W/run", "--dropout", "1"], "--dropout must be"),
    # typer's own parse errors are one line too
    (["refine", "-p", "x", "-o", "W/o.mp4", "--steps", "ten"], "--steps"),
    (["refine", "-p", "x"], "missing option"),
    (["transfer", "W/ref.mp4", "-p", "x", "-o", "W/o.mp4", "--no-such-flag"], "no such option"),
]


@pytest.mark.parametrize("args, pattern", BAD, ids=[" ".join(a)[:70] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, args, pattern):
    before = snapshot(world)
    res = invoke(*[a.replace("W/", f"{world}/") for a in args])
    assert_usage_error(res, pattern.replace("W/", f"{world}/"))
    assert snapshot(world) == before  # inputs byte-identical, no output, no hidden temporary


BAD_RECIPES = [
    ("refine", 'vae-tiling = "no"\n', "vae-tiling = 'no' is not valid for --vae-tiling: expected a boolean"),
    ("refine", 'steps = "ten"\n', "steps = 'ten' is not valid for --steps: expected an integer"),
    ("refine", "steps = 2.5\n", "expected an integer"),
    ("refine", 'guidance-scale = "high"\n', "expected a number"),
    ("refine", "prompt = 3\n", "expected a string"),
    ("refine", "[transfer]\nwindow = 3\n", "has a [transfer] table; this command (vmt refine) reads [refine]"),
    ("refine", "bogus = 1\n", "unknown key 'bogus'"),
    ("refine", "guidance-scale = nan\n", "--guidance-scale must be"),
    ("refine", "steps = [\n", "not valid TOML"),
    ("transfer", 'truncate = "yes"\n', "expected a boolean"),
    ("transfer", "window = 2.0\n", "expected an integer"),
    ("longgen sample", 'frames = "many"\n', "expected an integer"),
]


@pytest.mark.parametrize("command, text, pattern", BAD_RECIPES)
def test_recipe_values_have_the_options_types(world, command, text, pattern):
    recipe = world / "bad.toml"
    recipe.write_text(text)
    before = snapshot(world)
    base = {"refine": ["refine", "-p", "x"], "transfer": ["transfer", world / "ref.mp4", "-p", "x"],
            "longgen sample": ["longgen", "sample"]}[command]
    res = invoke(*base, "-o", world / "o.mp4", "--recipe", recipe)
    assert_usage_error(res, pattern)  # printed literally: bracketed names are not eaten as markup
    assert snapshot(world) == before


def test_block_beyond_the_model_is_an_error_before_weights_load(tiny_t2v, world):
    n_blocks = json.loads((tiny_t2v / "transformer" / "config.json").read_text())["num_layers"]
    res = invoke("transfer", world / "ref.mp4", "-p", "x", "-o", world / "o.mp4", "--model", tiny_t2v,
                 "--block", n_blocks, "--window", "1", "--tile", "1x1", *SMALL[:6])
    assert_usage_error(res, f"--block {n_blocks} is out of range: this model has {n_blocks} blocks")


@pytest.mark.slow
def test_rotary_limit_of_the_loaded_model_comes_from_its_config(tiny_t2v, world):
    # The tiny Wan's rotary table is 32 positions long: 33 latent frames (129 video frames) do not fit.
    res = invoke("refine", "-p", "x", "-o", world / "o.mp4", "--model", tiny_t2v, "--num-frames", "129",
                 "--height", "32", "--width", "32")
    assert_usage_error(res, "use at most 125")
    # A 2160x3840 output on that model once ran for minutes before a shape error; now it stops at the config.
    res = invoke("refine", "-p", "x", "-o", world / "o.mp4", "--model", tiny_t2v, "--num-frames", "1",
                 "--height", "2160", "--width", "3840")
    assert_usage_error(res, "--height 2160 gives 135 positions along that axis; this model's rotary embedding "
                            "covers 32 (rope_max_seq_len): use at most 496")


def test_outputs_get_the_umask_mode_and_exclusive_moves_refuse_a_late_target(tmp_path):
    """Files get 0666 & ~umask (not mkstemp's 0600); without --overwrite the final move is exclusive: a
    target that appeared during the run is left as it was, and the run fails naming it."""
    from vmt.errors import VmtUsageError
    from vmt.io.atomic import atomic_path, output_policy, write_json_atomic

    mask = os.umask(0)
    os.umask(mask)
    path = write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask != 0o600
    target = tmp_path / "b.json"
    with output_policy(overwrite=False), pytest.raises(VmtUsageError, match="appeared while this run"):
        with atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")  # another run finished first
    assert target.read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    with output_policy(overwrite=True), atomic_path(target) as tmp:
        tmp.write_text("mine")
    assert target.read_text() == "mine"


def _run_and_signal(cmd: list[str], sig: int, ready, timeout: float = 180,
                    env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start `vmt ...` in a subprocess, wait until `ready()` is true, send `sig`; return (code, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120", **(env or {})}
    # A shell that starts pytest in the background ignores SIGINT, and children inherit that: restore it.
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", *cmd], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while not ready(proc) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    return proc.returncode, err


def _has_child(proc) -> bool:
    """The process has started a child (ffmpeg decoding or encoding): it is past imports and set-up."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == proc.pid:
            return True
    return False


def _hidden_part(folder: Path) -> bool:
    return any(p.name.startswith(".") and ".part" in p.name for p in folder.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signal_during_longgen_streaming_removes_the_partial_video(tmp_path, sig, code):
    """Frames stream to ffmpeg as clips are made: the hidden temporary exists mid-run and is removed."""
    out = tmp_path / "long.mp4"
    rc, err = _run_and_signal(["longgen", "sample", "--frames", "1000000", "-o", str(out), "--device", "cpu"],
                              sig, lambda proc: _hidden_part(tmp_path))
    assert rc == code, err
    assert "Traceback" not in err and ("no output was written" in err or "interrupted" in err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_during_refine_sampling_exits_143_and_writes_nothing(tiny_t2v, tmp_path):
    out = tmp_path / "o.mp4"
    started = time.time()
    rc, err = _run_and_signal(["refine", "-p", "x", "--model", str(tiny_t2v), "-o", str(out), "--num-frames", "9",
                               "--height", "32", "--width", "32", "--steps", "100000", "--device", "cpu"],
                              signal.SIGTERM, lambda proc: time.time() - started > 12)
    assert rc == 143, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_transfer_guidance_writes_nothing(tiny_t2v, tmp_path, sig, code):
    ref = tmp_path / "ref.mp4"
    write_video(ref, np.random.default_rng(1).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), fps=8)
    before = snapshot(tmp_path)
    started = time.time()
    rc, err = _run_and_signal(["transfer", str(ref), "-p", "x", "--model", str(tiny_t2v), "-o",
                               str(tmp_path / "o.mp4"), "--height", "32", "--width", "32", "--steps", "100000",
                               "--guided-steps", "100000", "--window", "1", "--tile", "1x1", "--block", "1", "--device", "cpu"],
                              sig, lambda proc: time.time() - started > 12)
    assert rc == code, err
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_eval_over_a_folder_writes_no_report(tmp_path, sig, code):
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(2)
    for i in range(12):
        write_video(clips / f"c{i:02d}.mp4", rng.integers(0, 255, (30, 64, 64, 3), dtype=np.uint8), fps=10)
    # Decoding these clips takes milliseconds, so a fast machine finishes before the signal can land. An
    # ffmpeg that is slow to start (a busy disk, a network share) keeps each decode running for a second:
    # the run is surely mid-folder when its first decoder is seen.
    import imageio_ffmpeg

    slow = tmp_path / "bin" / "ffmpeg"
    slow.parent.mkdir()
    slow.write_text(f'#!/bin/sh\nsleep 1\nexec "{imageio_ffmpeg.get_ffmpeg_exe()}" "$@"\n')
    slow.chmod(0o755)
    before = snapshot(tmp_path)
    rc, err = _run_and_signal(["eval", "temporal", str(clips), "--json", str(tmp_path / "r.json")],
                              sig, _has_child, env={"IMAGEIO_FFMPEG_EXE": str(slow)})
    assert rc == code, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_longgen_train_creates_missing_parents_and_resume_keeps_the_runs_settings(tmp_path):
    run = tmp_path / "runs" / "digits"  # runs/ does not exist yet
    common = ["longgen", "train", "synthetic:digits", "-o", run, "--preset", "tiny", "--sample-every", "0",
              "--save-every", "0", "--quiet", "--device", "cpu"]
    res = invoke(*common, "--steps", "1", "--batch-size", "2", "--adv-warmup", "5", "--seed", "3")
    assert res.exit_code == 0, res.output + (res.stderr or "")
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["batch_size"] == 2 and saved["train"]["adv_warmup"] == 5 and saved["step"] == 1
    # A flag that conflicts with the run is an error naming it; nothing is written.
    before = snapshot(tmp_path)
    res = invoke(*common, "--steps", "2", "--resume", "--batch-size", "16")
    assert_usage_error(res, "batch_size 16 (the run has 2)")
    assert snapshot(tmp_path) == before
    # Without the flags the run's own settings are used, not the command's defaults (batch 16, warm-up 300).
    res = invoke(*common, "--steps", "2", "--resume")
    assert res.exit_code == 0, res.output + (res.stderr or "")
    saved = json.loads((run / "config.json").read_text())
    assert saved["step"] == 2 and saved["seed"] == 3
    assert saved["train"]["batch_size"] == 2 and saved["train"]["adv_warmup"] == 5
    train_doc = json.loads((run / "train.json").read_text())
    assert train_doc["params"]["batch_size"] == 2 and train_doc["compute"]["batch_size"] == 2


@pytest.mark.slow
def test_recipes_ship_with_the_package_and_are_taken_by_name(tiny_t2v, tmp_path):
    """`vmt recipes` lists every shipped recipe with its line; `--recipe NAME` works from any folder and its
    values reach the run (sidecar); a recipe of another command or an unknown name is a clear usage error."""
    import vmt

    res = invoke("recipes")
    assert res.exit_code == 0
    rows = [line.split("\t") for line in res.stdout.strip().splitlines()]
    shipped = sorted((Path(vmt.__file__).resolve().parents[1] / "recipes").glob("*/*.toml"))  # top-level recipes/
    assert sorted(Path(r[2]) for r in rows) == shipped and len(shipped) >= 10
    assert all(r[3] for r in rows)  # every recipe says what it is
    assert ["transfer", "fastvmt-wan2.1-1.3b"] in [r[:2] for r in rows]
    out = tmp_path / "o.mp4"
    res = invoke("refine", "-p", "x", "--model", tiny_t2v, "-o", out, "--recipe", "nfe-x2", "--steps", "2",
                 "--num-frames", "5", "--height", "16", "--width", "16", "--quiet")
    assert res.exit_code == 0, res.output + (res.stderr or "")
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["params"]["plan"] == "none" and doc["params"]["steps"] == 2  # recipe value, flag wins
    assert doc["params"]["recipe"].endswith("/recipes/refine/nfe-x2.toml")
    res = invoke("refine", "-p", "x", "-o", tmp_path / "b.mp4", "--recipe", "ditflow-baseline")
    assert_usage_error(res, "recipe 'ditflow-baseline' is for `vmt transfer`")
    res = invoke("refine", "-p", "x", "-o", tmp_path / "b.mp4", "--recipe", "no-such")
    assert_usage_error(res, "shipped for this command: default, nfe-x2")


@pytest.mark.slow
def test_transfer_says_once_that_window_and_tile_were_clamped_unless_quiet(tiny_t2v, world):
    args = ["transfer", world / "ref.mp4", "-p", "x", "--model", tiny_t2v, "--height", "32", "--width", "48",
            "--num-frames", "5", "--steps", "2", "--guided-steps", "1", "--inner-steps", "1", "--block", "1"]
    res = invoke(*args, "-o", world / "a.mp4")
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.stderr.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "--window 21 is larger than the 2x3 token grid" in notes[0], res.stderr
    res = invoke(*args, "-o", world / "b.mp4", "--quiet")
    assert res.exit_code == 0 and res.stderr.strip() == "", res.stderr
    assert json.loads((world / "b.json").read_text())["guidance"]["config"]["window"] == 2
