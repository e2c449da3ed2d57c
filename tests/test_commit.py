"""A video and its sidecar are committed as one: after a signal at any point of the commit, both files exist
(whole) or neither does, and what the command says matches what is on disk.

The in-process sweep sends the signal at every line the commit runs; the end-to-end tests run the real
command in a subprocess whose audit hook (sys.addaudithook: the interpreter's own instrumentation of file
operations) sends the signal at the exact moment a temporary is created or moved into place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vmt.io.atomic as atomic
from cli.scaffold import Terminated, termination_signals
from vmt.errors import VmtUsageError
from vmt.io.atomic import commit_together, output_policy, placed_count, placed_since, write_json_atomic
from vmt.io.video import probe_video, write_video

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
SMALL = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu"]
FRAMES = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)


def _commit(folder: Path) -> None:
    with commit_together():
        write_video(folder / "a.mp4", FRAMES, fps=8)
        write_json_atomic(folder / "a.json", {"output": "a.mp4"})


def _lines_of_commit(folder: Path) -> int:
    """How many line events of vmt/io/atomic.py one commit runs (the points a signal can land at)."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != atomic.__file__:
            return None
        if event == "line":
            count += 1
        return trace

    sys.settrace(trace)
    try:
        _commit(folder)
    finally:
        sys.settrace(None)
    for p in folder.iterdir():
        p.unlink()
    return count


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_at_every_line_of_a_commit_leaves_both_files_or_neither(tmp_path, sig):
    n = _lines_of_commit(tmp_path)
    assert n > 20
    outcomes = set()
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for k in range(1, n + 1):
            seen = 0

            def trace(frame, event, arg, k=k):
                nonlocal seen
                if frame.f_code.co_filename != atomic.__file__:
                    return None
                if event == "line":
                    seen += 1
                    if seen == k:
                        os.kill(os.getpid(), sig)
                return trace

            mark = placed_count()
            interrupted = False
            with termination_signals():
                sys.settrace(trace)
                try:
                    _commit(tmp_path)
                except (Terminated, KeyboardInterrupt):
                    interrupted = True
                finally:
                    sys.settrace(None)
            assert interrupted, k  # the signal is never lost, only held until the commit is whole
            names = sorted(p.name for p in tmp_path.iterdir())
            assert names in (["a.json", "a.mp4"], []), (k, names)  # no orphan, no temporary
            assert sorted(p.name for p in placed_since(mark)) == names, k  # what a message would report
            if names:
                assert json.loads((tmp_path / "a.json").read_text()) == {"output": "a.mp4"}
                assert probe_video(tmp_path / "a.mp4").num_frames == len(FRAMES)
            write_json_atomic(tmp_path / "after.json", {})  # no commit left open to swallow later writes
            assert (tmp_path / "after.json").is_file(), k
            for p in tmp_path.iterdir():
                p.unlink()
            outcomes.add(len(names))
    finally:
        signal.signal(signal.SIGINT, previous_int)
    assert outcomes == {0, 2}  # some points come before the moves, some during them


def test_a_commit_whose_second_target_appears_meanwhile_removes_its_first(tmp_path):
    with output_policy(overwrite=False), pytest.raises(VmtUsageError, match="appeared while this run"):
        with commit_together():
            write_video(tmp_path / "a.mp4", FRAMES, fps=8)
            write_json_atomic(tmp_path / "a.json", {"mine": True})
            (tmp_path / "a.json").write_text("theirs")  # another run got there first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "theirs"


def test_an_error_inside_the_commit_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), commit_together():
        write_video(tmp_path / "a.mp4", FRAMES, fps=8)
        raise RuntimeError("the sidecar could not be built")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- end to end

# Runs vmt with an audit hook that sends SIG at the K-th event named EVENT on one of vmt's temporaries
# (os.open of the sidecar's temporary: "open"; the moves into place: os.link / os.replace).
_HOOK = """
import os, signal, sys
event_names = set(os.environ["VMT_TEST_EVENT"].split(","))
suffix = os.environ["VMT_TEST_SUFFIX"]
k, sig, seen = int(os.environ["VMT_TEST_K"]), int(os.environ["VMT_TEST_SIG"]), 0
def hook(event, args):
    global seen
    if event in event_names and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.path.basename(os.fsdecode(args[0]))
        if name.startswith(".") and ".part" in name and name.endswith(suffix):
            seen += 1
            if seen == k:
                os.kill(os.getpid(), sig)
sys.addaudithook(hook)
from cli.main import app
sys.argv = ["vmt", *sys.argv[1:]]
app()
"""


def _run_with_signal(args: list[str], sig: int, event: str, suffix: str, k: int = 1) -> subprocess.CompletedProcess:
    env = {**ENV, "VMT_TEST_EVENT": event, "VMT_TEST_SUFFIX": suffix, "VMT_TEST_K": str(k),
           "VMT_TEST_SIG": str(int(sig))}
    # A shell that starts pytest in the background ignores SIGINT, and children inherit that: restore it.
    return subprocess.run([sys.executable, "-c", _HOOK, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


MOVES = "os.link,os.rename"
# (signal, exit code, event, temporary's suffix, whether the files are then written): where the signal lands.
BEFORE = ("open", ".part.json", False)  # the sidecar's temporary is created: before the commit
VIDEO_MOVE = (MOVES, ".part.mp4", True)  # the video is moved into place
SIDECAR_MOVE = (MOVES, ".part.json", True)  # the sidecar is moved into place (the reported window)
CASES = [(signal.SIGTERM, 143, *BEFORE), (signal.SIGTERM, 143, *VIDEO_MOVE), (signal.SIGTERM, 143, *SIDECAR_MOVE),
         (signal.SIGINT, 130, *VIDEO_MOVE), (signal.SIGINT, 130, *SIDECAR_MOVE),
         (signal.SIGHUP, 129, *VIDEO_MOVE), (signal.SIGHUP, 129, *SIDECAR_MOVE)]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, event, suffix, written", CASES,
                         ids=[f"{c[0].name}-{'before' if c[2] == 'open' else c[3]}" for c in CASES])
def test_refine_interrupted_at_its_commit_writes_both_files_or_neither(tiny_t2v, tmp_path, sig, code, event,
                                                                       suffix, written):
    out = tmp_path / "o.mp4"
    res = _run_with_signal(["refine", "-p", "x", "--model", str(tiny_t2v), "-o", str(out), *SMALL], sig, event,
                           suffix)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    if written:
        assert names == ["o.json", "o.mp4"]
        side = json.loads((tmp_path / "o.json").read_text())
        assert side["output"] == str(out) and side["video"]["frames"] == 9
        assert "written whole before the signal" in res.stderr and "no output was written" not in res.stderr
    else:
        assert names == []
        assert "no output was written" in res.stderr


@pytest.mark.slow
def test_transfer_interrupted_as_its_sidecar_moves_keeps_both(tiny_t2v, tmp_path):
    ref = tmp_path / "ref.mp4"
    write_video(ref, np.random.default_rng(1).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), fps=8)
    res = _run_with_signal(["transfer", str(ref), "-p", "x", "--model", str(tiny_t2v), "-o", str(tmp_path / "o.mp4"),
                            "--height", "32", "--width", "32", "--steps", "2", "--guided-steps", "1",
                            "--inner-steps", "1", "--window", "1", "--tile", "1x1", "--block", "1", "--device", "cpu"],
                           signal.SIGTERM, MOVES, ".part.json")
    assert res.returncode == 143, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "o.mp4", "ref.mp4"]


@pytest.mark.slow
def test_a_batch_interrupted_at_a_jobs_commit_records_that_job_as_done_and_resumes(tiny_t2v, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"prompt": f"p{i}", "seed": i}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    args = ["refine", "--batch", str(jobs), "-o", str(out), "--model", str(tiny_t2v), *SMALL]
    res = _run_with_signal(args, signal.SIGTERM, MOVES, ".part.json", k=2)  # the second job's sidecar
    assert res.returncode == 143, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["0000.json", "0000.mp4", "0001.json", "0001.mp4",
                                                     "manifest.jsonl"]
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()[1:]]
    assert [r["status"] for r in rows] == ["done", "done", "pending"]
    assert "interrupted: 2 of 3 jobs complete, no job was lost" in " ".join(res.stderr.split())
    again = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()[1:]]
    assert [r["status"] for r in rows] == ["skipped", "skipped", "done"]
