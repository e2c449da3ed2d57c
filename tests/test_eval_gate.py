"""The `vmt eval` gate cannot be switched off by what it reads: a forecast file with NaN is refused like a truth
file with NaN, and folders and globs skip hidden files. Every test runs the real `vmt eval` on files it writes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.test_eval_cli import vmt
from vmt.io.video import write_video


def one_line_error(r) -> str:
    """The refusal: exit 2, no traceback, exactly one line on stderr."""
    err = (r.stderr or "").strip()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(err.splitlines()) == 1, err
    return err


def chain(inside: int, boundary: int, clip: int = 4, frames: int = 12) -> np.ndarray:
    """Flat grey frames whose level steps by `inside` inside clips of `clip` frames and by `boundary` at their
    boundaries: a seam score of boundary / inside (H.264 keeps flat levels exact)."""
    steps = [boundary if k % clip == 0 else inside for k in range(1, frames)]
    levels = 40 + np.cumsum([0] + steps)
    return np.stack([np.full((32, 32, 3), v, np.uint8) for v in levels])


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


# ---------------------------------------------------------------- hidden files and temporaries

def test_folders_and_globs_skip_hidden_files_and_part_temporaries(tmp_path):
    folder = tmp_path / "outs"
    folder.mkdir()
    for name, inside in (("a.mp4", 10), ("b.mp4", 8), (".x.abc.part.mp4", 6), (".hidden.mp4", 5)):
        write_video(folder / name, chain(inside, 10), 10)
    r = vmt("eval", "seams", folder, "--clip-length", "4", "--json", tmp_path / "f.json")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["inputs"]["videos"] == [str(folder / "a.mp4"), str(folder / "b.mp4")]
    assert [it["name"] for it in doc["items"]] == ["a.mp4", "b.mp4"]
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
    r = vmt("eval", "seams", folder / ".hidden.mp4", "--clip-length", "4", "--json", tmp_path / "h.json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "h.json").read_text())["inputs"]["videos"] == [str(folder / ".hidden.mp4")]
