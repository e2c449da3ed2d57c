"""The `vmt` CLI: help, version, `vmt refine` end to end on a tiny model, recipes, bad input, Ctrl-C."""

from __future__ import annotations

import json
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
from vmt.io.video import probe_video, write_video

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "3", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    text = result.stderr.strip() if result.stderr else result.output.strip()
    return text


def assert_clean_error(result, code: int, pattern: str, out: Path | None = None):
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    msg = error_line(result)
    assert "Traceback" not in result.output and "Traceback" not in (result.stderr or "")
    assert len(msg.splitlines()) == 1, msg
    assert pattern.lower() in msg.lower(), msg
    if out is not None:
        assert not out.exists()
        assert not any(p.name.startswith(f".{out.stem}.") for p in out.parent.iterdir())


@pytest.mark.slow
def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, time; t = time.perf_counter(); sys.argv = ['vmt', '--help']\n"
        "from cli.main import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in res.stdout, res.stdout + res.stderr
    assert "refine" in res.stdout


def test_version():
    import vmt

    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"vmt {vmt.__version__}"


@pytest.mark.slow
def test_refine_help_teaches():
    res = invoke("refine", "--help")
    assert res.exit_code == 0
    for opt in ("--prompt", "--negative-prompt", "--image", "--num-frames", "--guidance-scale", "--shift",
                "--model", "--device", "--dtype", "--seed", "--recipe", "--overwrite", "--quiet", "--debug"):
        assert opt in res.stdout, opt
    assert "Examples" in res.stdout


@pytest.mark.slow
def test_refine_end_to_end_writes_video_and_sidecar(tiny_t2v, tmp_path):
    out = tmp_path / "fox.mp4"
    res = invoke("refine", "--prompt", "a fox", "--model", tiny_t2v, "-o", out, "--seed", "3", "--plan", "none",
                 *SMALL)
    assert res.exit_code == 0, res.output + (res.stderr or "")
    info = probe_video(out)
    assert (info.num_frames, info.width, info.height, info.fps) == (9, 32, 32, 16.0)
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["schema"] == "vmt.run/1" and doc["subcommand"] == "refine"
    assert doc["compute"]["nfe"] == 3 and doc["compute"]["dit_forward"] == 6
    assert doc["params"]["seed"] == 3 and doc["params"]["shift"] == 3.0  # tiny model's flow_shift
    assert doc["model"]["source"] == "local" and len(doc["model"]["fingerprint"]) == 16
    assert {"load", "encode_prompt", "denoise", "decode"} <= set(doc["timings_s"])
    assert doc["versions"]["torch"] and doc["memory"]["host_peak_rss_mib"] > 0
    assert len(doc["sigmas"]) == 4 and doc["sigmas"][-1] == 0


@pytest.mark.slow
def test_refine_same_seed_same_video(tiny_t2v, tmp_path):
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    for out in (a, b):
        assert invoke("refine", "--prompt", "x", "--model", tiny_t2v, "-o", out, *SMALL).exit_code == 0
    from vmt.io.video import read_video

    assert np.array_equal(read_video(a)[0], read_video(b)[0])


@pytest.mark.slow
def test_recipe_values_apply_and_flags_override(tiny_t2v, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[meta]\nnote = "test"\n[refine]\nsteps = 2\nguidance-scale = 3.0\nseed = 11\n')
    out = tmp_path / "r.mp4"
    res = invoke("refine", "--prompt", "x", "--model", tiny_t2v, "-o", out, "--recipe", recipe,
                 "--num-frames", "9", "--height", "32", "--width", "32", "--seed", "5", "--quiet")
    assert res.exit_code == 0, res.output
    p = json.loads(out.with_suffix(".json").read_text())["params"]
    assert p["steps"] == 2 and p["guidance_scale"] == 3.0  # from the recipe
    assert p["seed"] == 5  # the flag wins


# ------------------------------------------------------------------ bad input: one line, exit code, no file
def test_unknown_recipe_key(tiny_t2v, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("stepz = 3\n")
    out = tmp_path / "o.mp4"
    res = invoke("refine", "--prompt", "x", "--model", tiny_t2v, "-o", out, "--recipe", recipe, *SMALL)
    assert_clean_error(res, 2, "unknown key 'stepz'", out)


def test_existing_output_without_overwrite(tiny_t2v, tmp_path):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"keep me")
    res = invoke("refine", "--prompt", "x", "--model", tiny_t2v, "-o", out, *SMALL)
    assert_clean_error(res, 2, "--overwrite")
    assert out.read_bytes() == b"keep me"


def test_unwritable_output_folder(tiny_t2v, tmp_path):
    res = invoke("refine", "--prompt", "x", "--model", tiny_t2v, "-o", tmp_path / "missing" / "o.mp4", *SMALL)
    assert_clean_error(res, 2, "does not exist")
    if os.geteuid() != 0:  # root can write anywhere; the missing-folder case above covers it
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        res = invoke("refine", "--prompt", "x", "--model", tiny_t2v, "-o", ro / "o.mp4", *SMALL)
        assert_clean_error(res, 2, "not writable")


def test_model_folder_missing_component(tiny_t2v, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_t2v, broken)
    shutil.rmtree(broken / "text_encoder")
    out = tmp_path / "o.mp4"
    res = invoke("refine", "--prompt", "x", "--model", broken, "-o", out, *SMALL)
    assert_clean_error(res, 1, "missing component 'text_encoder'", out)


@pytest.mark.slow
def test_bad_sizes_name_valid_values(tmp_path):
    out = tmp_path / "o.mp4"
    res = invoke("refine", "--prompt", "x", "-o", out, "--num-frames", "10", "--quiet")
    assert_clean_error(res, 2, "use 9 or 13", out)
    res = invoke("refine", "--prompt", "x", "-o", out, "--height", "100", "--quiet")
    assert_clean_error(res, 2, "multiple of 16", out)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "zero_frames"])
def test_bad_image_input(tiny_i2v, tmp_path, kind):
    img = tmp_path / "in.mp4"
    code, pattern = 1, "cannot"
    if kind == "missing":
        code, pattern = 2, "not found"
    elif kind == "text":
        img.write_text("not a video at all\n" * 10)
    elif kind == "truncated":
        write_video(img, np.full((8, 32, 32, 3), 128, np.uint8), fps=8)
        img.write_bytes(img.read_bytes()[:300])
    else:
        from vmt.io.video import ffmpeg_exe

        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=0.3", str(img)],
                       check=True)
        pattern = "no video stream"
    out = tmp_path / "o.mp4"
    res = invoke("refine", "--prompt", "x", "--model", tiny_i2v, "--image", img, "-o", out, *SMALL)
    assert_clean_error(res, code, pattern, out)


@pytest.mark.slow
def test_image_to_video_end_to_end(tiny_i2v, tmp_path):
    img = tmp_path / "first.mp4"
    write_video(img, np.full((1, 40, 60, 3), 90, np.uint8), fps=1)  # any size: resized and cropped
    out = tmp_path / "i2v.mp4"
    res = invoke("refine", "--prompt", "x", "--model", tiny_i2v, "--image", img, "-o", out, *SMALL)
    assert res.exit_code == 0, res.output + (res.stderr or "")
    assert json.loads(out.with_suffix(".json").read_text())["model"]["pipeline"] == "WanImageToVideoPipeline"


@pytest.mark.slow
def test_internal_error_is_one_line_without_debug_and_traceback_with(tiny_t2v, tmp_path):
    """A real failure that is no user mistake: a model folder whose VAE statistics have the wrong length
    loads, then breaks inside generation (RuntimeError). One line and exit 1; --debug shows the traceback."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_t2v, broken)
    cfg_path = broken / "vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["latents_mean"], cfg["latents_std"] = [0.0] * 3, [1.0] * 3
    cfg_path.write_text(json.dumps(cfg))
    out = tmp_path / "o.mp4"
    res = invoke("refine", "--prompt", "x", "--model", broken, "-o", out, *SMALL)
    assert_clean_error(res, 1, "rerun with --debug", out)
    assert "RuntimeError" in error_line(res)
    res = invoke("refine", "--prompt", "x", "--model", broken, "-o", out, *SMALL, "--debug")
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)
    assert not out.exists()


@pytest.mark.slow
def test_sigint_during_generation_leaves_no_output(tiny_t2v, tmp_path):
    out = tmp_path / "o.mp4"
    cmd = [sys.executable, "-m", "cli.main", "refine", "--prompt", "x", "--model", str(tiny_t2v), "-o", str(out),
           "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    # A shell that starts pytest in the background ignores SIGINT, and children inherit that: restore it.
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    for line in proc.stderr:  # the loader reports "... done" before denoising starts
        if "done" in line or time.time() > deadline:
            break
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest
    assert list(tmp_path.iterdir()) == []
