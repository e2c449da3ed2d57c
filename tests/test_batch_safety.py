"""Batches lose nothing: what a batch reads is never what it writes, a video and its sidecar are committed as
one (signals at every point of the commit), job lines are typed and bounded like the command line, resume
compares content, and one batch writes into a folder at a time. Every test runs the real command on real
tiny files and checks the files afterwards."""

from __future__ import annotations

import fcntl
import hashlib
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
SMALL = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
TRANSFER_SMALL = ["--height", "32", "--width", "32", "--steps", "2", "--guided-steps", "1", "--inner-steps", "1",
                  "--window", "1", "--tile", "1x1", "--block", "1", "--device", "cpu", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def one_line_error(res, code: int, *patterns: str) -> str:
    err = (res.stderr or "").strip()
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output and len(err.splitlines()) == 1, err
    for pattern in patterns:
        assert pattern in err, err
    return err


def clip(path: Path, seed: int = 0) -> Path:
    write_video(path, np.random.default_rng(seed).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), fps=8)
    return path


# ---------------------------------------------------------------- reads against writes


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_job_whose_reference_is_another_jobs_output_is_refused_before_anything(tiny_t2v, tmp_path, overwrite):
    out = tmp_path / "out"
    out.mkdir()
    clip(out / "vox.mp4", 1)  # a reference the user keeps in the output folder
    clip(tmp_path / "ref.mp4", 2)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a", "reference": "ref.mp4", "output": "vox.mp4"},
                                                {"prompt": "b", "reference": "out/vox.mp4"}])
    before = snapshot(tmp_path)
    res = invoke("transfer", "--batch", jobs, "-o", out, "--model", tiny_t2v, *TRANSFER_SMALL,
                 *(["--overwrite"] if overwrite else []))
    one_line_error(res, 2, "line 2: reference", "is also written by this batch (", "line 1: output")
    assert snapshot(tmp_path) == before  # the reference was neither replaced nor used


def test_an_input_that_is_a_hard_link_to_an_output_is_refused(tiny_t2v, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    clip(out / "0000.mp4", 3)
    os.link(out / "0000.mp4", tmp_path / "linked.mp4")  # another name, the same file
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b", "image": "linked.mp4"}])
    before = snapshot(tmp_path)
    res = invoke("refine", "--batch", jobs, "-o", out, "--model", tiny_t2v, *SMALL, "--overwrite")
    one_line_error(res, 2, "line 2: image", "linked.mp4 is also written by this batch", "line 1: output")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_the_job_file_may_not_be_the_manifest(tiny_t2v, tmp_path):
    out = tmp_path / "out"
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a", "seed": 1}])
    assert invoke("refine", "--batch", jobs, "-o", out, "--model", tiny_t2v, *SMALL).exit_code == 0
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        res = invoke("refine", "--batch", out / "manifest.jsonl", "-o", out, "--model", tiny_t2v, *SMALL, *extra)
        one_line_error(res, 2, "--batch", "manifest.jsonl is also written by this batch (the manifest")
    assert snapshot(tmp_path) == before


def test_outputs_that_would_share_a_sidecar_are_refused(tiny_t2v, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a", "output": "a.mp4"}, {"prompt": "b", "output": "a.mkv"}])
    res = invoke("refine", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, *SMALL)
    one_line_error(res, 2, "line 2: output 'a.mkv' and 'a.mp4' (line 1) would share the sidecar 'a.json'")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- job lines typed and bounded


BAD_LINES = [
    ('{"prompt": "a", "seed": -1}', "line 1: --seed must be >= 0 and <= 18446744073709551615, got -1"),
    ('{"prompt": "a", "seed": 18446744073709551616}', "--seed must be >= 0 and <= 18446744073709551615"),
    ('{"prompt": "a", "return": 3}', "unknown key 'return'"),
    ('{"prompt": "a", "output": "a\\u0000b.mp4"}', "contains the control character '\\x00'"),
    ('{"prompt": "a", "output": "a\\nb.mp4"}', "contains the control character '\\n'"),
    ('{"prompt": "a", "output": ".a.mp4"}', "would be a hidden file"),
    ('{"prompt": "a", "seed": 1, "seed": 2}', "line 1: key 'seed' appears twice"),
    ('{"prompt": "a", "fps": 1e9}', "--fps must be >= 1 and <= 240"),
    ('{"prompt": "a", "fps": 0.5}', "--fps must be >= 1 and <= 240"),
    ('{"prompt": ""}', "line 1: --prompt is empty"),
]


@pytest.mark.parametrize("line, pattern", BAD_LINES, ids=[p[:30] for _, p in BAD_LINES])
def test_bad_job_lines_exit_2_before_any_weights(tiny_t2v, tmp_path, line, pattern):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(line + "\n")
    for extra in (["--dry-run"], []):
        res = invoke("refine", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, *SMALL, *extra)
        one_line_error(res, 2, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]


@pytest.mark.slow
def test_the_largest_seed_is_taken_as_is_and_differs_from_its_wrap_around(tiny_t2v, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a", "seed": 2**64 - 1}, {"prompt": "a", "seed": 0}])
    res = invoke("refine", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, *SMALL)
    assert res.exit_code == 0, res.output
    side = json.loads((tmp_path / "out" / "0000.json").read_text())
    assert side["params"]["seed"] == 2**64 - 1
    assert (tmp_path / "out" / "0000.mp4").read_bytes() != (tmp_path / "out" / "0001.mp4").read_bytes()


def test_a_dot_prompt_gets_a_visible_name(tiny_t2v, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(".\n..hidden?\n")
    res = invoke("refine", "--batch", prompts, "-o", tmp_path / "out", "--naming", "vbench", "--model", tiny_t2v,
                 *SMALL, "--dry-run", "--format", "json")
    assert res.exit_code == 0, res.output
    names = [Path(j["output"]).name for j in json.loads(res.stdout)["jobs"]]
    assert names == ["_-0.mp4", "__hidden?-0.mp4"]


def test_a_naming_template_that_makes_hidden_files_is_refused(tiny_t2v, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\n")
    res = invoke("refine", "--batch", prompts, "-o", tmp_path / "out", "--naming", ".{index}.mp4",
                 "--model", tiny_t2v, *SMALL, "--dry-run")
    one_line_error(res, 2, "'.0.mp4' would be a hidden file")


def test_a_plan_of_too_many_jobs_is_refused_at_once(tiny_t2v, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\nb\n")
    started = time.perf_counter()
    res = invoke("refine", "--batch", prompts, "--seeds", "0-99999999", "-o", tmp_path / "out",
                 "--model", tiny_t2v, *SMALL, "--dry-run")
    one_line_error(res, 2, "--seeds '0-99999999' gives 100000000 seeds; a batch runs at most 100000 jobs")
    res = invoke("refine", "--batch", prompts, "--seeds", "0-50000", "-o", tmp_path / "out",
                 "--model", tiny_t2v, *SMALL, "--dry-run")
    one_line_error(res, 2, "with --seeds gives 100002 jobs (2 lines)")
    assert time.perf_counter() - started < 20  # answered, not planned


@pytest.mark.slow
def test_a_dry_run_streams_its_plan(tiny_t2v, tmp_path):
    """The first job's line is printed while the other 99999 are still being checked."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\n")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "refine", "--batch", str(prompts), "--seeds", "0-99999",
                             "-o", str(tmp_path / "out"), "--model", str(tiny_t2v), *SMALL, "--dry-run"],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        still_planning = proc.poll() is None
        second = proc.stdout.readline()
    finally:
        proc.kill()
        proc.communicate()
    assert first.split()[:3] == ["0", "run", str(tmp_path / "out" / "0000.mp4")], first
    assert second.split()[:2] == ["1", "run"]
    assert still_planning
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- resume by content


def _perturb_weights(model: Path) -> None:
    """Change one weight of the transformer in place (same path, same file names)."""
    from safetensors.torch import load_file, save_file

    f = next((model / "transformer").glob("*.safetensors"))
    tensors = load_file(f)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, f)


@pytest.mark.slow
def test_resume_redoes_jobs_whose_model_or_reference_changed_at_the_same_path(tiny_t2v, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_t2v, model)
    clip(tmp_path / "ref.mp4", 4)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a", "reference": "ref.mp4"}])
    args = ["transfer", "--batch", jobs, "-o", tmp_path / "out", "--model", model, *TRANSFER_SMALL]
    assert invoke(*args).exit_code == 0
    first = (tmp_path / "out" / "0000.mp4").read_bytes()
    assert invoke(*args).exit_code == 0  # same content: resumed as done
    assert (tmp_path / "out" / "0000.mp4").read_bytes() == first

    clip(tmp_path / "ref.mp4", 5)  # another reference at the same path
    res = invoke(*args)
    one_line_error(res, 2, "0000.mp4 was made with other parameters (input-sha256", "pass --overwrite")
    assert (tmp_path / "out" / "0000.mp4").read_bytes() == first
    assert invoke(*args, "--overwrite").exit_code == 0
    second = (tmp_path / "out" / "0000.mp4").read_bytes()
    assert second != first

    _perturb_weights(model)  # new weights in the same folder
    res = invoke(*args)
    one_line_error(res, 2, "was made with other parameters (model-fingerprint")
    assert invoke(*args, "--overwrite").exit_code == 0
    side = json.loads((tmp_path / "out" / "0000.json").read_text())
    assert side["batch"]["params"]["model_fingerprint"] == side["model"]["fingerprint"]
    assert side["batch"]["params"]["input_sha256"]["reference"] == hashlib.sha256(
        (tmp_path / "ref.mp4").read_bytes()).hexdigest()


# ---------------------------------------------------------------- one batch per folder


@pytest.mark.slow
def test_a_folder_locked_by_another_batch_is_refused_and_a_crashed_holder_leaves_no_lock(tiny_t2v, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}])
        res = invoke("refine", "--batch", jobs, "-o", out, "--model", tiny_t2v, *SMALL)
        one_line_error(res, 1, f"another batch is writing into {out}")
        assert list(out.iterdir()) == []
        # A dry run writes nothing and needs no lock.
        assert invoke("refine", "--batch", jobs, "-o", out, "--model", tiny_t2v, *SMALL, "--dry-run").exit_code == 0
    finally:
        holder.kill()  # a crash: no clean-up of its own
        holder.wait()
    res = invoke("refine", "--batch", jobs, "-o", out, "--model", tiny_t2v, *SMALL)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["0000.json", "0000.mp4", "manifest.jsonl"]
    fd = os.open(out, os.O_RDONLY)  # released at the end of the batch
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- physical limits


@pytest.mark.parametrize("args, pattern", [
    (["--fps", "1e-9"], "--fps must be >= 1 and <= 240, got 1e-09"),
    (["--fps", "1e9"], "--fps must be >= 1 and <= 240"),
    (["--storage-dtype", ""], "--storage-dtype is empty"),
    (["--attention-backend", " "], "--attention-backend is empty"),
    (["--seed", "-1"], "--seed must be >= 0"),
])
def test_single_runs_refuse_values_outside_physical_limits(tiny_t2v, tmp_path, args, pattern):
    res = invoke("refine", "-p", "x", "-o", tmp_path / "o.mp4", "--model", tiny_t2v, *SMALL, *args)
    one_line_error(res, 2, pattern)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [1.0, 240.0])
def test_the_frame_rate_limits_write_readable_videos(tmp_path, fps):
    path = write_video(tmp_path / "v.mp4", np.zeros((3, 16, 16, 3), np.uint8), fps=fps)
    info = probe_video(path)
    assert info.fps == pytest.approx(fps) and info.num_frames == 3


@pytest.mark.slow
def test_an_interrupted_torchrun_batch_prints_one_summary_line(tiny_t2v, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"p{i}", "seed": i} for i in range(8)])
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", "29521", "-m", "cli.main", "refine", "--batch", str(jobs), "-o",
                             str(out), "--model", str(tiny_t2v), "--num-frames", "9", "--height", "32", "--width",
                             "32", "--steps", "40", "--plan", "none", "--device", "auto"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    # pathlib's glob matches hidden names too: wait for a committed sidecar, not a commit's temporary.
    while (not [p for p in out.glob("*.json") if not p.name.startswith(".")] and time.time() < deadline
           and proc.poll() is None):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGTERM)  # the launcher and its workers, as a scheduler's preemption does
    err = proc.communicate(timeout=120)[1]
    lines = [x for x in err.splitlines() if "interrupted:" in x]
    assert len(lines) == 1, err[-3000:]
    assert "run the same command again to resume" in lines[0] and "(2 processes)" in lines[0]
    assert "no output was written" not in err
    videos = sorted(p for p in out.glob("*.mp4") if not p.name.startswith("."))
    assert videos and all(v.with_suffix(".json").exists() for v in videos)
    # Counted when rank 0 stopped; the other rank may still finish the commit it was in (one job more).
    counted = int(lines[0].split("interrupted: ")[1].split(" of 8 jobs complete")[0])
    assert counted in (len(videos) - 1, len(videos)), (counted, videos)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
