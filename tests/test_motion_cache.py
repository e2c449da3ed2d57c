"""The reference cache of `vmt transfer` (vmt.motion.cache): entries verified before use, never trusted when
corrupt, truncated or keyed differently; a hit gives the same bytes with fewer DiT forward passes (counted by
the backend); the key follows what the reference passes depend on; concurrent runs agree; --no-motion-cache
writes nothing. Every test has its own XDG_CACHE_HOME (tests/conftest.py), so none touches ~/.cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import moving_pattern
from vmt.motion.cache import MotionCache, default_cache_dir

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
# 3 steps, 2 guided: 6 sampling passes (CFG pair) + per guided step 1 reference + 2 guided passes = 12
SMALL = ["--block", "1", "--span", "3", "--tile", "2x2", "--window", "3", "--height", str(SIZE), "--width",
         str(SIZE), "--num-frames", "9", "--steps", "3", "--guided-steps", "2", "--inner-steps", "4",
         "--device", "cpu", "--quiet"]


def _ref(folder: Path, name: str = "ref.mp4", dx: int = 3, seed: int = 0) -> Path:
    from vmt.io.video import write_video

    return write_video(folder / name, moving_pattern(11, 72, 96, dx=dx, dy=1, seed=seed), 12.0)


def _run(model, ref, out, *extra, prompt="a cat") -> dict:
    r = CliRunner().invoke(app, ["transfer", str(ref), "-p", prompt, "-o", str(out), "--model", str(model),
                                 *SMALL, *extra])
    assert r.exit_code == 0, r.output
    return json.loads(Path(out).with_suffix(".json").read_text())


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ---------------------------------------------------------------------------- the store itself (no model)


def test_entries_round_trip_as_safetensors_and_bad_ones_are_refused(tmp_path):
    cache = MotionCache(tmp_path / "c")
    key = {"reference": "abc", "n": 1}
    t = {"z_ref": torch.randn(1, 4, 2, 3, 3), "amf.0": torch.randn(5, 9, 2).to(torch.bfloat16)}
    assert cache.load("latent", key).hit is False and cache.load("latent", key).problem is None  # no entry
    assert cache.store("latent", key, t) is None
    path = cache.path("latent", key)
    assert _entries(tmp_path / "c") == [path.name]  # no temporary left behind
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, then a JSON header
    header = json.loads(raw[8:8 + header_len])
    assert json.loads(header["__metadata__"]["vmt_motion_cache"])["key"] == key
    got = cache.load("latent", key)
    assert got.hit and all(torch.equal(got.tensors[n], t[n]) for n in t) and got.tensors["amf.0"].dtype == torch.bfloat16

    assert cache.load("latent", {**key, "n": 2}).hit is False  # another key: another file
    shutil.copy(path, cache.path("latent", {**key, "n": 2}))  # ... and a file under the wrong name is refused
    assert cache.load("latent", {**key, "n": 2}).problem == "stored key differs"
    refused = cache.load("latent", key, check=lambda ts: "latent of another shape")
    assert not refused.hit and refused.problem == "latent of another shape"

    flipped = bytearray(raw)
    flipped[-3] ^= 0x10  # one bit of the tensor data
    path.write_bytes(bytes(flipped))
    assert cache.load("latent", key).problem == "content digest differs (corrupted)"
    path.write_bytes(raw[: len(raw) // 2])
    assert cache.load("latent", key).problem.startswith("unreadable")
    path.write_bytes(b"")
    assert cache.load("latent", key).problem.startswith("unreadable")
    assert cache.store("latent", key, t) is None and cache.load("latent", key).hit  # rewritten whole


def test_default_folder_follows_xdg_cache_home(private_user_cache, monkeypatch):
    assert default_cache_dir() == private_user_cache / "vmt" / "motion"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: a relative path is ignored
    assert default_cache_dir() == Path.home() / ".cache" / "vmt" / "motion"


def test_an_unwritable_cache_never_fails_the_store(tmp_path):
    (tmp_path / "file").write_text("x")
    problem = MotionCache(tmp_path / "file" / "c").store("latent", {"k": 1}, {"z_ref": torch.zeros(2)})
    assert problem is not None and "could not be written" in problem


# ---------------------------------------------------------------------------- transfer on the tiny Wan


@pytest.mark.slow
def test_second_run_is_a_hit_with_the_same_bytes_and_fewer_dit_passes(tiny_t2v, tmp_path):
    ref = _ref(tmp_path)
    cache = tmp_path / "cache"
    plain = _run(tiny_t2v, ref, tmp_path / "plain.mp4", "--no-motion-cache")
    first = _run(tiny_t2v, ref, tmp_path / "first.mp4", "--motion-cache", cache)
    second = _run(tiny_t2v, ref, tmp_path / "second.mp4", "--motion-cache", cache)
    assert plain["motion_cache"] is None
    mc1, mc2 = first["motion_cache"], second["motion_cache"]
    assert (mc1["latent"]["status"], mc1["amf"]["status"]) == ("miss", "miss")
    assert (mc2["latent"]["status"], mc2["amf"]["status"]) == ("hit", "hit")
    assert mc1["amf"]["key"] == mc2["amf"]["key"] and mc2["dir"] == str(cache)
    # The saving is counted, not assumed: the miss spent 2 reference forwards (one per guided step), the hit
    # ran that many fewer, and says so.
    assert plain["compute"]["dit_forward"] == first["compute"]["dit_forward"] == 12
    assert mc1["amf"]["dit_forward_spent"] == 2 == mc2["amf"]["dit_forward_saved"]
    assert second["compute"]["dit_forward"] == first["compute"]["dit_forward"] - mc2["amf"]["dit_forward_saved"]
    assert second["compute"]["dit_backward"] == first["compute"]["dit_backward"]
    data = (tmp_path / "plain.mp4").read_bytes()
    assert (tmp_path / "first.mp4").read_bytes() == data == (tmp_path / "second.mp4").read_bytes()
    assert second["guidance"]["final_amf_loss"] == plain["guidance"]["final_amf_loss"]
    # The prompt is not in the key: another prompt on the same reference loads both entries, and its video
    # is the one it would be without the cache.
    other = _run(tiny_t2v, ref, tmp_path / "other.mp4", "--motion-cache", cache, prompt="a dog")
    other_plain = _run(tiny_t2v, ref, tmp_path / "other-plain.mp4", "--no-motion-cache", prompt="a dog")
    assert (other["motion_cache"]["latent"]["status"], other["motion_cache"]["amf"]["status"]) == ("hit", "hit")
    assert other["compute"]["dit_forward"] == 10
    assert (tmp_path / "other.mp4").read_bytes() == (tmp_path / "other-plain.mp4").read_bytes()
    assert other_plain["compute"]["dit_forward"] == 12
    assert len(_entries(cache)) == 2


def _perturbed_model(src: Path, dst: Path) -> Path:
    """A copy of the tiny model whose first two transformer blocks are scaled by 1.01 (another fingerprint)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    f = dst / "transformer" / "diffusion_pytorch_model.safetensors"
    t = load_file(str(f))
    save_file({k: v * 1.01 if k.startswith(("blocks.0.", "blocks.1.")) and v.is_floating_point() else v
               for k, v in t.items()}, str(f), metadata={"format": "pt"})
    return dst


@pytest.mark.slow
def test_what_the_reference_passes_depend_on_is_in_the_key(tiny_t2v, tmp_path):
    ref = _ref(tmp_path)
    cache = tmp_path / "cache"

    def status(doc) -> tuple[str, str]:
        return doc["motion_cache"]["latent"]["status"], doc["motion_cache"]["amf"]["status"]

    assert status(_run(tiny_t2v, ref, tmp_path / "a.mp4", "--motion-cache", cache)) == ("miss", "miss")
    other_ref = _ref(tmp_path, "other.mp4", dx=-2, seed=1)
    assert status(_run(tiny_t2v, other_ref, tmp_path / "b.mp4", "--motion-cache", cache)) == ("miss", "miss")
    # The same frames under another name are the same reference (its content, not its path, is the key).
    shutil.copy(ref, tmp_path / "renamed.mp4")
    assert status(_run(tiny_t2v, tmp_path / "renamed.mp4", tmp_path / "c.mp4", "--motion-cache", cache)) == \
        ("hit", "hit")
    size = ["--height", "48", "--width", "48"]
    assert status(_run(tiny_t2v, ref, tmp_path / "d.mp4", "--motion-cache", cache, *size)) == ("miss", "miss")
    model = _perturbed_model(tiny_t2v, tmp_path / "model2")
    assert status(_run(model, ref, tmp_path / "e.mp4", "--motion-cache", cache)) == ("miss", "miss")
    # The per-step reference is re-noised with eps' drawn from the seed: another seed is another reference
    # AMF, on the same latent.
    assert status(_run(tiny_t2v, ref, tmp_path / "f.mp4", "--motion-cache", cache, "--seed", "7")) == ("hit", "miss")
    # Guidance settings the reference passes do not see leave the key alone; AMF settings do not.
    assert status(_run(tiny_t2v, ref, tmp_path / "g.mp4", "--motion-cache", cache, "--lr", "0.01",
                       "--no-truncate")) == ("hit", "hit")
    assert status(_run(tiny_t2v, ref, tmp_path / "h.mp4", "--motion-cache", cache, "--temperature", "2")) == \
        ("hit", "miss")
    # A clean reference AMF has no noise: the seed is not in its key.
    assert status(_run(tiny_t2v, ref, tmp_path / "i.mp4", "--motion-cache", cache, "--ref-amf", "clean")) == \
        ("hit", "miss")
    clean = _run(tiny_t2v, ref, tmp_path / "j.mp4", "--motion-cache", cache, "--ref-amf", "clean", "--seed", "7")
    assert status(clean) == ("hit", "hit") and clean["motion_cache"]["amf"]["dit_forward_saved"] == 1


@pytest.mark.slow
def test_corrupt_or_truncated_entries_are_recomputed_with_the_same_output(tiny_t2v, tmp_path):
    ref = _ref(tmp_path)
    cache = tmp_path / "cache"
    _run(tiny_t2v, ref, tmp_path / "a.mp4", "--motion-cache", cache)
    latent, amf = (cache / n for n in _entries(cache)[::-1])  # "latent-..." sorts after "amf-..."
    assert latent.name.startswith("latent-") and amf.name.startswith("amf-")
    raw = bytearray(latent.read_bytes())
    raw[-5] ^= 0xFF
    latent.write_bytes(bytes(raw))
    amf.write_bytes(amf.read_bytes()[:-100])
    doc = _run(tiny_t2v, ref, tmp_path / "b.mp4", "--motion-cache", cache)
    mc = doc["motion_cache"]
    assert mc["latent"]["status"] == "miss" and mc["latent"]["refused"] == "content digest differs (corrupted)"
    assert mc["amf"]["status"] == "miss" and mc["amf"]["refused"].startswith("unreadable")
    assert doc["compute"]["dit_forward"] == 12  # the reference passes ran again
    assert (tmp_path / "b.mp4").read_bytes() == (tmp_path / "a.mp4").read_bytes()
    again = _run(tiny_t2v, ref, tmp_path / "c.mp4", "--motion-cache", cache)  # rewritten whole: hits again
    assert (again["motion_cache"]["latent"]["status"], again["motion_cache"]["amf"]["status"]) == ("hit", "hit")
    assert (tmp_path / "c.mp4").read_bytes() == (tmp_path / "a.mp4").read_bytes()


@pytest.mark.slow
def test_concurrent_runs_on_one_reference_both_finish_alike(tiny_t2v, tmp_path):
    ref = _ref(tmp_path)
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "cli.main", "transfer", str(ref), "-p", "a cat", "-o",
                               str(tmp_path / f"{i}.mp4"), "--model", str(tiny_t2v), *SMALL, "--motion-cache",
                               str(cache)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out.decode()
    assert (tmp_path / "0.mp4").read_bytes() == (tmp_path / "1.mp4").read_bytes()
    names = _entries(cache)  # one entry of each kind, no temporaries
    assert len(names) == 2 and not any(n.startswith(".") for n in names)
    third = _run(tiny_t2v, ref, tmp_path / "2.mp4", "--motion-cache", cache)
    assert (third["motion_cache"]["latent"]["status"], third["motion_cache"]["amf"]["status"]) == ("hit", "hit")
    assert (tmp_path / "2.mp4").read_bytes() == (tmp_path / "0.mp4").read_bytes()


@pytest.mark.slow
def test_no_motion_cache_writes_nothing_and_the_default_is_the_user_cache(tiny_t2v, tmp_path, private_user_cache):
    ref = _ref(tmp_path)
    default = private_user_cache / "vmt" / "motion"
    chosen = tmp_path / "chosen"
    doc = _run(tiny_t2v, ref, tmp_path / "a.mp4", "--no-motion-cache")
    _run(tiny_t2v, ref, tmp_path / "b.mp4", "--no-motion-cache", "--motion-cache", chosen)
    assert doc["motion_cache"] is None and not chosen.exists() and not default.exists()
    assert list(private_user_cache.iterdir()) == []
    doc = _run(tiny_t2v, ref, tmp_path / "c.mp4")  # no option: the user's cache folder
    assert doc["motion_cache"]["dir"] == str(default) and len(_entries(default)) == 2


@pytest.mark.slow
def test_a_batch_over_prompts_computes_the_reference_once(tiny_t2v, tmp_path):
    ref = _ref(tmp_path)
    cache = tmp_path / "cache"
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"prompt": p, "reference": str(ref)}) + "\n" for p in ("a cat", "a dog",
                                                                                                "a fox")))
    r = CliRunner().invoke(app, ["transfer", "--batch", str(jobs), "-o", str(tmp_path / "out"), "--model",
                                 str(tiny_t2v), *SMALL, "--motion-cache", str(cache)])
    assert r.exit_code == 0, r.output
    docs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))
            if p.name != "manifest.json"]
    docs = [d for d in docs if "motion_cache" in d]
    assert len(docs) == 3
    statuses = sorted((d["motion_cache"]["amf"]["status"], d["compute"]["dit_forward"]) for d in docs)
    assert statuses == [("hit", 10), ("hit", 10), ("miss", 12)]
