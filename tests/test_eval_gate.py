"""The `vmt eval` gate cannot be switched off by what it reads: malformed baselines and non-finite forecasts
are one-line usage errors, each metric is judged in its own direction (the seam score by its distance to 1),
result lines count what was scored, folders and globs skip hidden files, and a baseline made with other
package versions is compared with a note. Every test runs the real `vmt eval` on files it writes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.test_eval_cli import translating, vmt
from vmt.io.video import write_video

cv2 = pytest.importorskip("cv2")


def one_line_error(r) -> str:
    """The refusal: exit 2, no traceback, exactly one line on stderr."""
    err = (r.stderr or "").strip()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(err.splitlines()) == 1, err
    return err


def chain(inside: int, boundary: int, clip: int = 4, frames: int = 12) -> np.ndarray:
    """Flat grey frames whose level steps by `inside` inside clips of `clip` frames and by `boundary` at their
    boundaries: a seam score near boundary / inside (decoded levels may be off by a unit or two)."""
    steps = [boundary if k % clip == 0 else inside for k in range(1, frames)]
    levels = 40 + np.cumsum([0] + steps)
    return np.stack([np.full((32, 32, 3), v, np.uint8) for v in levels])


def alternating(frames: int = 12) -> np.ndarray:
    """Flat frames alternating between two levels: every step, boundary or not, changes by 40 (score 1)."""
    return np.stack([np.full((32, 32, 3), 60 if k % 2 == 0 else 100, np.uint8) for k in range(frames)])


def falling_ball(h: int = 96, w: int = 64, ss: int = 4) -> np.ndarray:
    yy, xx = (np.mgrid[0 : h * ss, 0 : w * ss] + 0.5) / ss - 0.5
    frames = []
    for k in range(14):
        x, y = 20 + 1.0 * k, 8 + 0.5 * k + 0.2 * k * k
        cover = (((xx - x) ** 2 + (yy - y) ** 2) <= 25).reshape(h, ss, w, ss).mean((1, 3))
        frames.append(np.repeat((30 + 200 * cover)[..., None], 3, -1))
    return np.clip(np.stack(frames) + 0.5, 0, 255).astype(np.uint8)


def edited(src, dst, edit) -> object:
    doc = json.loads(src.read_text())
    edit(doc)
    dst.write_text(json.dumps(doc))  # json writes float("nan") as NaN, which Python's reader takes back
    return dst


# ---------------------------------------------------------------- malformed baselines

@pytest.fixture(scope="module")
def motion_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("motion")
    ref = write_video(d / "ref.mp4", translating(2, 1, t=8), 10)
    gen = write_video(d / "gen.mp4", translating(2, 1, t=8, seed=1), 10)
    r = vmt("eval", "motion", ref, gen, "--json", d / "base.json", "-q")
    assert r.exit_code == 0, r.output
    return ref, gen, d / "base.json"


def _set_value(v):
    return lambda doc: doc["metrics"]["motion_fidelity"].__setitem__("value", v)


@pytest.mark.parametrize("edit, expected", [
    (_set_value(float("nan")), ["metric motion_fidelity", "NaN", "not a finite number"]),
    (_set_value(float("inf")), ["metric motion_fidelity", "Infinity", "not a finite number"]),
    (_set_value("0.95"), ["metric motion_fidelity", "'0.95'", "not a number or null"]),
    (_set_value(True), ["metric motion_fidelity", "not a number or null"]),
    (lambda doc: doc["metrics"].__setitem__("motion_fidelity", 0.95),
     ["metric motion_fidelity is a bare number (0.95)", "not a metric object"]),
    (lambda doc: doc["metrics"].__setitem__("motion_fidelity", {"better": "higher"}),
     ["metric motion_fidelity has no value"]),
    (lambda doc: doc["metrics"].pop("motion_fidelity"), ["lacks the gated metric motion_fidelity"]),
    (lambda doc: doc["metrics"]["motion_fidelity"].__setitem__("better", "sideways"),
     ["metric motion_fidelity has better='sideways'"]),
    (lambda doc: doc.__setitem__("params", ["grid", 40]), ["params is list, not an object"]),
    (lambda doc: doc.__setitem__("schema", "vmt.eval/2"), ["schema vmt.eval/2", "reads vmt.eval/1.x"]),
    (lambda doc: doc.__setitem__("schema", "other/1"), ["not a vmt eval report", "'other/1'"]),
], ids=["nan", "inf", "string", "bool", "bare-number", "no-value", "missing", "direction", "params", "schema-major",
        "schema-other"])
def test_malformed_baseline_is_refused_in_one_line_before_any_work(motion_run, tmp_path, edit, expected):
    ref, gen, base = motion_run
    bad = edited(base, tmp_path / "bad_base.json", edit)
    r = vmt("eval", "motion", ref, gen, "--baseline", bad, "--json", tmp_path / "out.json")
    err = one_line_error(r)
    assert str(bad) in err, err
    assert f"regenerate it with `vmt eval motion ... --json {bad}`" in err or "written by `vmt eval --json`" in err, err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "out.json").exists()  # refused before scoring


@pytest.mark.slow
def test_the_unedited_baseline_still_gates(motion_run, tmp_path):
    ref, gen, base = motion_run
    r = vmt("eval", "motion", ref, gen, "--baseline", base, "--json", tmp_path / "out.json")
    assert r.exit_code == 0, r.output
    assert "result: pass" in r.output and "4 baseline checks ok" in r.output
    doc = json.loads((tmp_path / "out.json").read_text())
    assert sorted(c["name"] for c in doc["baseline"]["checked"]) == sorted(
        ["motion_fidelity", "direction_cosine", "reversed_pairs", "unscored_pairs"])
    assert doc["baseline"]["regressions"] == [] and doc["baseline"]["versions_differ"] == {}


# ---------------------------------------------------------------- keypoint files with NaN

def _keypoint_files(tmp_path, pred_nan=None, truth_nan=None):
    from vmt.keypoints.data import save_sequences

    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(12, 3, 2)) for _ in range(2)]
    if truth_nan is not None:
        seqs[0][4, 1, 0] = truth_nan
    save_sequences(tmp_path / "truth.npz", ["a", "b"], seqs)
    value = np.stack([np.repeat(s[None, None, 7], 4, axis=1).repeat(3, axis=0) for s in seqs])  # (2, 3, 4, 3, 2)
    if pred_nan is not None:
        value[1, 2, 3, 0, 1] = pred_nan
    np.savez(tmp_path / "pred.npz", names=np.array(["a", "b"]), start=np.array([8, 8]), value=value)
    return tmp_path / "truth.npz", tmp_path / "pred.npz"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_forecast_with_nan_is_refused_like_a_truth_file_with_nan(tmp_path, bad):
    truth, pred = _keypoint_files(tmp_path)
    r = vmt("eval", "keypoints", truth, pred, "--k", "2", "-q")
    assert r.exit_code == 0 and "ade_best=" in r.output, r.output  # the clean files score
    shape = r"^error: (\S+): value has NaN or infinite entries in (\d+) (\w+); .+ first$"
    truth, pred = _keypoint_files(tmp_path, pred_nan=bad)
    err = one_line_error(vmt("eval", "keypoints", truth, pred, "--k", "2", "--json", tmp_path / "kp.json"))
    m = re.match(shape, err)
    assert m and m.groups() == (str(pred), "1", "sequences"), err
    assert not (tmp_path / "kp.json").exists()
    truth, pred = _keypoint_files(tmp_path, truth_nan=bad)
    err = one_line_error(vmt("eval", "keypoints", truth, pred, "--k", "2"))
    m = re.match(shape, err)
    assert m and m.groups() == (str(truth), "1", "frames"), err


# ---------------------------------------------------------------- the seam score's direction

@pytest.mark.slow
def test_seam_gate_judges_the_distance_to_one(tmp_path):
    half = write_video(tmp_path / "half.mp4", chain(10, 5), 10)    # boundaries move half as much: 0.5
    even = write_video(tmp_path / "even.mp4", alternating(), 10)   # seamless: 1.0
    r = vmt("eval", "seams", half, "--clip-length", "4", "--json", tmp_path / "half.json")
    assert r.exit_code == 0, r.output
    assert "closer to 1" in r.output and "lower" not in r.output  # the table's direction
    doc = json.loads((tmp_path / "half.json").read_text())
    assert doc["metrics"]["seam_score"]["value"] == pytest.approx(0.5, abs=0.01)
    assert doc["metrics"]["seam_score"]["better"] == "closer" and doc["metrics"]["seam_score"]["target"] == 1

    # 0.5 against a baseline of 0.98: further from seamless, a regression ("lower is better" passed it)
    base = edited(tmp_path / "half.json", tmp_path / "b098.json",
                  lambda d: d["metrics"]["seam_score"].__setitem__("value", 0.98))
    r = vmt("eval", "seams", half, "--clip-length", "4", "--baseline", base, "--json", tmp_path / "r.json")
    assert r.exit_code == 1 and "result: REGRESSION" in r.output and "further from 1" in r.output, r.output
    assert json.loads((tmp_path / "r.json").read_text())["baseline"]["regressions"] == ["seam_score"]
    # a tolerance is a share of the baseline's value: 50% of 0.98 allows the 0.48 step away from 1
    r = vmt("eval", "seams", half, "--clip-length", "4", "--baseline", base, "-t", "seam_score=50%")
    assert r.exit_code == 0 and "result: pass" in r.output, r.output
    # a baseline written before the direction was fixed ("lower", schema 1.0) is judged the same way
    old = edited(base, tmp_path / "old.json", lambda d: (d.__setitem__("schema", "vmt.eval/1"),
                                                          d["metrics"]["seam_score"].__setitem__("better", "lower")))
    assert vmt("eval", "seams", half, "--clip-length", "4", "--baseline", old).exit_code == 1

    # 1.0 against a baseline of 0.9: nearer to seamless, a pass ("lower is better" failed it)
    r = vmt("eval", "seams", even, "--clip-length", "4", "--json", tmp_path / "even.json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "even.json").read_text())["metrics"]["seam_score"]["value"] == pytest.approx(
        1.0, abs=0.01)
    base = edited(tmp_path / "even.json", tmp_path / "b090.json",
                  lambda d: d["metrics"]["seam_score"].__setitem__("value", 0.9))
    r = vmt("eval", "seams", even, "--clip-length", "4", "--baseline", base, "--json", tmp_path / "r2.json")
    assert r.exit_code == 0 and "result: pass" in r.output and "1 baseline checks ok" in r.output, r.output
    assert json.loads((tmp_path / "r2.json").read_text())["baseline"]["regressions"] == []
    # a baseline without a value (null: not finite when it was made) compares nothing, and says so
    base = edited(tmp_path / "even.json", tmp_path / "null.json",
                  lambda d: d["metrics"]["seam_score"].__setitem__("value", None))
    r = vmt("eval", "seams", even, "--clip-length", "4", "--baseline", base, "--json", tmp_path / "r3.json")
    assert r.exit_code == 0 and "result: nothing compared" in r.output and "result: pass" not in r.output, r.output
    assert json.loads((tmp_path / "r3.json").read_text())["baseline"]["not_compared"] == ["seam_score"]


# ---------------------------------------------------------------- result lines say what happened

@pytest.mark.slow
def test_result_line_without_baseline_says_no_baseline(tmp_path):
    video = write_video(tmp_path / "v.mp4", alternating(), 10)
    r = vmt("eval", "seams", video, "--clip-length", "4")
    assert r.exit_code == 0, r.output
    assert "result: no baseline" in r.output and "result: pass" not in r.output
    assert "(1 of 1 video scored)" in r.output
    r = vmt("eval", "seams", video, "--clip-length", "4", "-q")
    assert r.exit_code == 0 and r.output.strip().splitlines() == [r.output.strip()]
    assert r.output.startswith("result: no baseline vmt eval seams: seam_score=")


@pytest.mark.slow
def test_physics_result_line_counts_videos_with_a_trajectory(tmp_path):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise"
    noise.mkdir()
    for s in range(2):
        write_video(noise / f"n{s}.mp4", rng.integers(0, 256, (14, 96, 64, 3), dtype=np.uint8), 10)
    r = vmt("eval", "physics", noise, "--json", tmp_path / "none.json")
    assert r.exit_code == 0, r.output
    assert "physics_rms=- (0 of 2 videos had a trajectory)" in r.output and "result: no baseline" in r.output
    assert "scored" not in r.output.splitlines()[-1]
    # the same inputs against that report: the residuals had no value there, so they are not compared
    r = vmt("eval", "physics", noise, "--baseline", tmp_path / "none.json", "--json", tmp_path / "again.json")
    assert r.exit_code == 0, r.output
    assert "1 baseline checks ok, 2 not compared (physics_rms, physics_max: no value in the baseline)" in r.output
    gate = json.loads((tmp_path / "again.json").read_text())["baseline"]
    assert gate["not_compared"] == ["physics_rms", "physics_max"] and gate["regressions"] == []

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_video(mixed / "ball.mp4", falling_ball(), 10)
    (mixed / "noise.mp4").write_bytes((noise / "n0.mp4").read_bytes())
    r = vmt("eval", "physics", mixed)
    assert r.exit_code == 0 and "(1 of 2 videos had a trajectory)" in r.output, r.output


# ---------------------------------------------------------------- hidden files and temporaries

@pytest.mark.slow
def test_folders_and_globs_skip_hidden_files_and_part_temporaries(tmp_path):
    folder = tmp_path / "outs"
    folder.mkdir()
    for name, inside in (("a.mp4", 10), ("b.mp4", 8), (".x.abc.part.mp4", 6), (".hidden.mp4", 5)):
        write_video(folder / name, chain(inside, 10), 10)
    r = vmt("eval", "seams", folder, "--clip-length", "4", "--json", tmp_path / "f.json")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["inputs"]["videos"] == [str(folder / "a.mp4"), str(folder / "b.mp4")]
    assert [it["name"] for it in doc["items"]] == ["a.mp4", "b.mp4"] and "(2 of 2 videos scored)" in r.output
    r = vmt("eval", "seams", str(folder / "*.mp4"), "--clip-length", "4", "--json", tmp_path / "g.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "g.json").read_text())["inputs"]["videos"] == doc["inputs"]["videos"]
    # a glob that names hidden files still picks none of them
    err = one_line_error(vmt("eval", "seams", str(folder / ".*"), "--clip-length", "4"))
    assert "no files match" in err and "hidden files" in err
    hidden_only = tmp_path / "hidden_only"
    hidden_only.mkdir()
    (hidden_only / ".x.abc.part.mp4").write_bytes((folder / "a.mp4").read_bytes())
    err = one_line_error(vmt("eval", "seams", hidden_only, "--clip-length", "4"))
    assert "has no video files" in err and ".part temporaries" in err
    # a file named explicitly is taken as it is
    r = vmt("eval", "seams", folder / ".hidden.mp4", "--clip-length", "4", "-q")
    assert r.exit_code == 0 and "(1 of 1 video scored)" in r.output, r.output


# ---------------------------------------------------------------- package versions

@pytest.mark.slow
def test_baseline_made_with_other_opencv_is_compared_with_a_note(tmp_path):
    video = write_video(tmp_path / "v.mp4", translating(1, 0, t=6), 10)
    base = tmp_path / "base.json"
    r = vmt("eval", "temporal", video, "--flow-preset", "fast", "--json", base, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(base.read_text())
    assert doc["versions"]["opencv"] == cv2.__version__
    assert "opencv" in doc["metric_packages"] and "numpy" in doc["metric_packages"]
    assert doc["versions"]["numpy"] == np.__version__
    r = vmt("eval", "temporal", video, "--flow-preset", "fast", "--baseline", base)
    assert r.exit_code == 0 and "note:" not in r.output, r.output  # same versions: nothing to say

    other = edited(base, tmp_path / "other.json", lambda d: d["versions"].__setitem__("opencv", "4.14.0"))
    r = vmt("eval", "temporal", video, "--flow-preset", "fast", "--baseline", other, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    note = f"note: baseline made with opencv 4.14.0, this run {cv2.__version__}; numbers may move"
    assert note in r.stderr.splitlines(), r.stderr
    assert "result: pass" in r.output and "baseline made with other opencv" in r.output.splitlines()[-1]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["baseline"]["versions_differ"] == {"opencv": {"baseline": "4.14.0", "current": cv2.__version__}}
    # --quiet keeps the note: it qualifies the result
    r = vmt("eval", "temporal", video, "--flow-preset", "fast", "--baseline", other, "-q")
    assert r.exit_code == 0 and r.output.strip().splitlines()[0] == note, r.output
