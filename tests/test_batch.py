"""`vmt refine/transfer --batch` through the real CLI on tiny Wan models: a batch equals single runs byte for
byte with one model load, resumes after SIGTERM without touching finished files, splits over torchrun ranks,
refuses bad job files before any load, and its dry run plans what a run then counts."""

from __future__ import annotations

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
from diffusers import DiffusionPipeline
from typer.testing import CliRunner

from cli.main import app
from vmt.io.video import write_video

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120", "PYTHONPATH": str(ROOT)}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Every diffusers pipeline load in this process (the real load runs; only its calls are counted)."""
    calls: list[str] = []
    original = DiffusionPipeline.from_pretrained.__func__

    def counting(cls, path, *a, **kw):
        calls.append(str(path))
        return original(cls, path, *a, **kw)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(counting))
    return calls


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest(folder: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(x) for x in (folder / "manifest.jsonl").read_text().splitlines()]
    return lines[0]["batch"], lines[1:]


def write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


# Six jobs: prompts, seeds and per-job overrides of the command's options (steps, CFG, plan).
SIX = [
    {"prompt": "a red fox", "seed": 0},
    {"prompt": "a red fox", "seed": 1},
    {"prompt": "a boat", "seed": 7, "steps": 3},
    {"prompt": "a boat", "seed": 8, "guidance-scale": 1.0},
    {"prompt": "rain", "seed": 2, "plan": "none", "output": "rain.mp4"},
    {"prompt": "rain", "seed": 3, "negative_prompt": "blur"},
]


def _single_args(job: dict) -> list[str]:
    out = ["-p", job["prompt"], "--seed", str(job["seed"])]
    for k, v in job.items():
        if k not in ("prompt", "seed", "output"):
            out += ["--" + k.replace("_", "-"), str(v)]
    return out


@pytest.mark.slow
def test_batch_of_six_equals_six_single_runs_with_one_model_load(tiny_t2v, tmp_path, loads):
    jobs = write_jobs(tmp_path / "jobs.jsonl", SIX)
    res = invoke("refine", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, *SMALL)
    assert res.exit_code == 0, res.output
    assert len(loads) == 1
    names = ["0000.mp4", "0001.mp4", "0002.mp4", "0003.mp4", "rain.mp4", "0005.mp4"]
    for i, job in enumerate(SIX):
        single = tmp_path / f"single{i}.mp4"
        r = invoke("refine", "-o", single, "--model", tiny_t2v, *SMALL, *_single_args(job))  # job values win
        assert r.exit_code == 0, r.output
        batch_out = tmp_path / "out" / names[i]
        assert batch_out.read_bytes() == single.read_bytes(), names[i]
        a = json.loads(single.with_suffix(".json").read_text())
        b = json.loads(batch_out.with_suffix(".json").read_text())
        assert a["compute"] == b["compute"]  # counted per job, not accumulated over the batch
        assert {k: v for k, v in a["params"].items() if k not in ("output", "quiet")} == \
            {k: v for k, v in b["params"].items() if k not in ("output", "quiet")}
        assert "batch" not in a and b["batch"]["line"] == i + 1
    assert len(loads) == 1 + len(SIX)
    header, rows = manifest(tmp_path / "out")
    assert header["jobs"] == 6 and header["load_s"] > 0
    assert [r["status"] for r in rows] == ["done"] * 6
    assert [Path(r["output"]).name for r in rows] == names
    assert rows[2]["compute"]["nfe"] >= 3 and rows[4]["compute"]["nfe"] == 2  # steps 3; plan none


@pytest.mark.slow
def test_text_prompts_with_seeds_vbench_names_and_a_dry_run_that_plans_what_runs(tiny_t2v, tmp_path, loads):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# VBench-style prompt list\na cat, walking\n\nthe sea\n")
    base = ["refine", "--batch", prompts, "-o", tmp_path / "out", "--seeds", "0-2", "--naming", "vbench",
            "--model", tiny_t2v, "--plan", "none", *SMALL]
    before = snapshot(tmp_path)
    res = invoke(*base, "--dry-run", "--format", "json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert snapshot(tmp_path) == before and loads == []  # nothing written, no weights loaded
    names = [Path(j["output"]).name for j in plan["jobs"]]
    assert names == [f"a cat, walking-{i}.mp4" for i in range(3)] + [f"the sea-{i}.mp4" for i in range(3)]
    assert [j["seed"] for j in plan["jobs"]] == [0, 1, 2, 0, 1, 2]
    assert plan["totals"]["to_run"] == 6 and plan["gpu_memory_estimate"]["peak_gib"] > 0

    res = invoke(*base)
    assert res.exit_code == 0, res.output
    for j in plan["jobs"]:  # the plan's counts are the run's (plan none: no early exit)
        doc = json.loads(Path(j["output"]).with_suffix(".json").read_text())
        assert doc["compute"]["nfe"] == j["nfe"] and doc["compute"]["dit_forward"] == j["dit_forward"]
        assert doc["params"]["seed"] == j["seed"]
    plan2 = json.loads(invoke(*base, "--dry-run", "--format", "json").stdout)
    assert [j["action"] for j in plan2["jobs"]] == ["skip"] * 6


@pytest.mark.slow
def test_transfer_batch_per_job_references_equal_single_runs_and_the_plan(tiny_t2v, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "refs").mkdir()
    for name in ("a", "b"):
        write_video(tmp_path / "refs" / f"{name}.mp4", rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), fps=8)
    # References are read relative to the job file's folder.
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "x", "reference": "refs/a.mp4", "seed": 1},
                                                {"prompt": "y", "reference": "refs/b.mp4", "seed": 2}])
    opts = ["--model", tiny_t2v, "--height", "32", "--width", "32", "--steps", "3", "--guided-steps", "2",
            "--inner-steps", "3", "--window", "1", "--tile", "1x1", "--block", "1", "--device", "cpu", "--quiet"]
    res = invoke("transfer", "--batch", jobs, "-o", tmp_path / "out", "--naming", "{reference}-{seed}.mp4", *opts,
                 "--dry-run", "--format", "json")
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)["jobs"]
    res = invoke("transfer", "--batch", jobs, "-o", tmp_path / "out", "--naming", "{reference}-{seed}.mp4", *opts)
    assert res.exit_code == 0, res.output
    for name, seed, prompt, row in (("a", 1, "x", plan[0]), ("b", 2, "y", plan[1])):
        single = tmp_path / f"{name}.mp4"
        r = invoke("transfer", tmp_path / "refs" / f"{name}.mp4", "-p", prompt, "--seed", seed, "-o", single, *opts)
        assert r.exit_code == 0, r.output
        out = tmp_path / "out" / f"{name}-{seed}.mp4"
        assert out.read_bytes() == single.read_bytes()
        compute = json.loads(out.with_suffix(".json").read_text())["compute"]
        assert (compute["nfe"], compute["dit_forward"], compute["dit_backward"]) == \
            (row["nfe"], row["dit_forward"], row["dit_backward"])


@pytest.mark.slow
def test_a_job_that_fails_at_run_time_is_recorded_and_the_others_run(tiny_t2v, tmp_path):
    rng = np.random.default_rng(1)
    write_video(tmp_path / "long.mp4", rng.integers(0, 255, (9, 32, 32, 3), dtype=np.uint8), fps=8)
    write_video(tmp_path / "short.mp4", rng.integers(0, 255, (3, 32, 32, 3), dtype=np.uint8), fps=8)
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "x", "reference": "short.mp4"},
                                                {"prompt": "y", "reference": "long.mp4"}])
    res = invoke("transfer", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, "--height", "32",
                 "--width", "32", "--steps", "2", "--guided-steps", "1", "--inner-steps", "1", "--window", "1",
                 "--tile", "1x1", "--block", "1", "--device", "cpu", "--quiet")
    assert res.exit_code == 1, res.output
    assert "line 1" in res.stderr and "has 3 frames" in res.stderr and "Traceback" not in res.output
    rows = manifest(tmp_path / "out")[1]
    assert [r["status"] for r in rows] == ["failed", "done"] and "has 3 frames" in rows[0]["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0001.json", "0001.mp4", "manifest.jsonl"]
    # The manifest is a list of pairs for `vmt eval motion --batch`: each output against its own reference,
    # the failed job an input that failed (exit 3), accepted with --skip-bad.
    assert rows[1]["reference"] == str(tmp_path / "long.mp4") and rows[1]["output"] == str(tmp_path / "out" / "0001.mp4")
    report = tmp_path / "motion.json"
    res = invoke("eval", "motion", "--batch", tmp_path / "out" / "manifest.jsonl", "--json", report, "--quiet")
    assert res.exit_code == 3, res.output
    assert "line 2: the job's status is failed" in res.output
    res = invoke("eval", "motion", "--batch", tmp_path / "out" / "manifest.jsonl", "--json", report, "--quiet",
                 "--skip-bad", "--overwrite")
    assert res.exit_code == 0, res.output
    doc = json.loads(report.read_text())
    assert [(it["reference"], it["path"]) for it in doc["items"]] == [(rows[1]["reference"], rows[1]["output"])]
    assert [e["path"] for e in doc["errors"]] == [rows[0]["output"]]


def test_dry_run_of_a_single_run_checks_like_the_run_and_writes_nothing(tiny_t2v, tmp_path, loads):
    out = tmp_path / "o.mp4"
    res = invoke("refine", "-p", "a cat", "-o", out, "--model", tiny_t2v, *SMALL, "--plan", "2-3:2",
                 "--steps", "4", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "NFE 8  DiT fwd 16 bwd 0" in res.stdout and "1 of 1 jobs to run" in res.stdout
    assert list(tmp_path.iterdir()) == [] and loads == []
    out.write_bytes(b"mine")
    res = invoke("refine", "-p", "a cat", "-o", out, "--model", tiny_t2v, *SMALL, "--dry-run")
    _assert_one_line_usage_error(res, "already exists; pass --overwrite")
    res = invoke("refine", "-o", tmp_path / "p.mp4", "--model", tiny_t2v, *SMALL, "--dry-run")
    _assert_one_line_usage_error(res, "missing option '--prompt'")


BAD_FILES = [
    ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2: not valid JSON"),
    ('{"prompt": "a"}\n{"prompt": "b", "colour": 3}\n', "line 2: unknown key 'colour'"),
    ('{"prompt": "a", "steps": "ten"}\n', "line 1: steps = 'ten' is not valid for --steps: expected an integer"),
    ('{"prompt": "a", "seed": 1.5}\n', "line 1: seed = 1.5 is not valid for --seed: expected an integer"),
    ('{"prompt": "a", "output": "same.mp4"}\n{"prompt": "b", "output": "same.mp4"}\n',
     "line 2: output 'same.mp4' is also the output of line 1"),
    ('{"prompt": "a", "image": "nope.png"}\n', "line 1: --image"),
    ('{"prompt": "a", "model": "other"}\n', "line 1: 'model' cannot change per job"),
    ('{"prompt": "a", "guidance-scale": -1}\n', "line 1: --guidance-scale must be >= 0"),
    ('{"prompt": "a", "num-frames": 10}\n', "line 1: --num-frames 10 is not of the form 4k+1"),
    ('{"prompt": "a", "output": "a.webm"}\n', "line 1: --output"),
    ('["a"]\n', "line 1: expected a JSON object"),
    ('{"seed": 3}\n', "line 1: no prompt"),
]


def _assert_one_line_usage_error(res, pattern: str) -> None:
    err = (res.stderr or "").strip()
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output and len(err.splitlines()) == 1, err
    assert pattern.lower() in err.lower(), err


@pytest.mark.parametrize("text, pattern", BAD_FILES, ids=[p[:40] for _, p in BAD_FILES])
def test_bad_job_files_exit_2_naming_the_line_before_any_load(tiny_t2v, tmp_path, loads, text, pattern):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(text)
    before = snapshot(tmp_path)
    res = invoke("refine", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, *SMALL)
    _assert_one_line_usage_error(res, pattern)
    assert loads == [] and snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_transfer_job_with_a_missing_reference_names_the_line(tiny_t2v, tmp_path, loads):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "x", "reference": "gone.mp4"}])
    res = invoke("transfer", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, "--device", "cpu")
    _assert_one_line_usage_error(res, f"line 1: REFERENCE {tmp_path / 'gone.mp4'} not found")
    assert loads == []


@pytest.mark.slow
def test_changed_parameters_are_an_error_naming_the_job_unless_overwrite(tiny_t2v, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", SIX[:2])
    args = ["refine", "--batch", jobs, "-o", tmp_path / "out", "--model", tiny_t2v, *SMALL]
    assert invoke(*args).exit_code == 0
    first = (tmp_path / "out" / "0001.mp4").read_bytes()
    write_jobs(jobs, [SIX[0], {**SIX[1], "seed": 5}])
    res = invoke(*args)
    _assert_one_line_usage_error(res, "line 2: ")
    assert "0001.mp4 was made with other parameters (seed 1 -> 5)" in res.stderr
    assert (tmp_path / "out" / "0001.mp4").read_bytes() == first
    res = invoke(*args, "--overwrite")
    assert res.exit_code == 0, res.output
    assert [r["status"] for r in manifest(tmp_path / "out")[1]] == ["skipped", "done"]
    assert json.loads((tmp_path / "out" / "0001.json").read_text())["params"]["seed"] == 5


@pytest.mark.slow
def test_sigterm_mid_batch_then_resume_runs_only_the_missing_jobs(tiny_t2v, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"p{i}", "seed": i} for i in range(6)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cli.main", "refine", "--batch", str(jobs), "-o", str(out), "--model",
           str(tiny_t2v), "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "25", "--plan", "none",
           "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len([p for p in out.glob("*.json") if not p.name.startswith(".")]) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "run the same command again to resume" in err
    assert "[1/6] done" in err and "[3/6] done" in err  # no terminal: one line per finished job
    videos = sorted(out.glob("*.mp4"))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial file
    assert all(v.with_suffix(".json").exists() for v in videos)  # each video complete with its sidecar
    k = len(videos)
    assert 3 <= k < 6
    statuses = [r["status"] for r in manifest(out)[1]]
    # The signal lands in a job (then "interrupted") or between two jobs (nothing in flight): never more lost.
    assert statuses[:k] == ["done"] * k and statuses.count("interrupted") <= 1
    assert set(statuses[k:]) <= {"interrupted", "pending"}
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.suffix in (".mp4", ".json")}

    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = manifest(out)[1]
    assert [r["status"] for r in rows] == ["skipped"] * k + ["done"] * (6 - k)
    # Model forwards of the second run: 25 per job it ran, none for the finished ones.
    assert sum(r.get("compute", {}).get("nfe", 0) for r in rows) == 25 * (6 - k)
    for name, (data, mtime) in before.items():
        p = out / name
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtime, name


@pytest.mark.slow
def test_two_torchrun_ranks_write_the_same_files_as_one_process_and_one_manifest(tiny_t2v, tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": f"p{i}", "seed": 10 + i} for i in range(5)])
    common = ["refine", "--batch", str(jobs), "--model", str(tiny_t2v), *SMALL[:-3]]
    one = subprocess.run([sys.executable, "-m", "cli.main", *common, "-o", str(tmp_path / "one"), "--device",
                          "cpu"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "cli.main", *common, "-o", str(tmp_path / "two"),
                          "--device", "auto"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    videos = sorted(p.name for p in (tmp_path / "one").glob("*.mp4"))
    assert videos == sorted(p.name for p in (tmp_path / "two").glob("*.mp4")) and len(videos) == 5
    for name in videos:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([*videos, *(
        v.replace(".mp4", ".json") for v in videos), "manifest.jsonl"])
    header, rows = manifest(tmp_path / "two")
    assert header["world_size"] == 2
    assert [r["status"] for r in rows] == ["done"] * 5 and {r["rank"] for r in rows} == {0, 1}
    sidecar = json.loads((tmp_path / "two" / "0001.json").read_text())
    assert sidecar["batch"]["rank"] == 1 and sidecar["model"]["device"] == "cpu"

    # Resume on two ranks: one job missing, one manifest line per job.
    (tmp_path / "two" / "0003.mp4").unlink()
    (tmp_path / "two" / "0003.json").unlink()
    again = subprocess.run(two.args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["status"] for r in manifest(tmp_path / "two")[1]] == ["skipped"] * 3 + ["done", "skipped"]
    assert (tmp_path / "two" / "0003.mp4").read_bytes() == (tmp_path / "one" / "0003.mp4").read_bytes()


def test_a_single_run_under_torchrun_is_refused(tiny_t2v, tmp_path):
    res = CliRunner().invoke(app, ["refine", "-p", "x", "-o", str(tmp_path / "o.mp4"), "--model", str(tiny_t2v),
                                   *SMALL], env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    _assert_one_line_usage_error(res, "launched as 2 processes (torchrun)")
    assert list(tmp_path.iterdir()) == []


def test_seeds_and_rank_shares():
    from vmt.batch import Ranks, parse_seeds, ranks_from_env
    from vmt.errors import VmtUsageError

    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("1,5,9-10") == [1, 5, 9, 10]
    for bad in ("4-0", "a", "1,1", "-1"):
        with pytest.raises(VmtUsageError):
            parse_seeds(bad)
    items = list(range(11))
    shares = [Ranks(r, 3).share(items) for r in range(3)]
    assert sorted(x for s in shares for x in s) == items and [len(s) for s in shares] == [4, 4, 3]
    assert ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Ranks(3, 4, 1)
    with pytest.raises(VmtUsageError):
        ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})


@pytest.mark.slow
def test_dry_run_weights_are_the_loaded_models_parameters(tiny_t2v):
    """Weights counted from the files' headers (no load) = the parameters of the loaded components, at the
    dtype they load in (the VAE stays float32)."""
    from vmt.backends.memory import weight_bytes

    pipe = DiffusionPipeline.from_pretrained(str(tiny_t2v))
    counted = weight_bytes(tiny_t2v, "bfloat16")
    for comp, per in (("transformer", 2), ("text_encoder", 2), ("vae", 4)):
        assert counted[comp] == per * sum(p.numel() for p in getattr(pipe, comp).parameters()), comp


def test_dry_run_memory_counts_float8_storage_and_group_offload(tiny_t2v):
    """Weights as the chosen options place them: float8 storage is one byte per transformer parameter (counted
    here with safetensors itself); group offload keeps at most the largest non-transformer component or two
    transformer blocks resident."""
    from safetensors import safe_open

    from vmt.backends.memory import memory_estimate, weight_bytes

    params = 0
    for f in (tiny_t2v / "transformer").glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            params += sum(st.get_tensor(k).numel() for k in st.keys())
    assert weight_bytes(tiny_t2v, "bfloat16")["transformer"] == 2 * params
    assert weight_bytes(tiny_t2v, "bfloat16", "float8_e4m3fn")["transformer"] == params
    full = memory_estimate(tiny_t2v, "bfloat16", "none", 64, 1024, 2)
    group = memory_estimate(tiny_t2v, "bfloat16", "group", 64, 1024, 2)
    assert group["peak_gib"] <= full["peak_gib"] and group["activations_gib"] == full["activations_gib"]


def test_dry_run_memory_of_a_guided_backward_with_and_without_checkpointing(tiny_t2v):
    """Through the blocks a guided pass back-propagates, checkpointing keeps each block's input and one block's
    activations instead of every block's; the ratio of the two estimates is that closed form (per token:
    blocks x dim + (4 dim + ffn) against blocks x (4 dim + ffn), text tokens aside)."""
    import json as _json

    from vmt.backends.memory import memory_estimate

    cfg = _json.loads((tiny_t2v / "transformer" / "config.json").read_text())
    dim, ffn = cfg["num_attention_heads"] * cfg["attention_head_dim"], cfg["ffn_dim"]
    tokens, blocks = 50_000, 30
    plain = memory_estimate(tiny_t2v, "bfloat16", "none", tokens, 0, 1, guided_blocks=blocks, checkpointing=False)
    ckpt = memory_estimate(tiny_t2v, "bfloat16", "none", tokens, 0, 1, guided_blocks=blocks, checkpointing=True)
    expect = (blocks * dim + 4 * dim + ffn) / (blocks * (4 * dim + ffn))
    assert ckpt["activations_gib"] < plain["activations_gib"]
    assert abs(ckpt["activations_gib"] / plain["activations_gib"] - expect) < 0.02
