"""The `vmt eval` gate cannot be switched off by what it reads: a forecast file with NaN is refused like a truth
file with NaN. Every test runs the real `vmt eval` on files it writes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.test_eval_cli import vmt


def one_line_error(r) -> str:
    """The refusal: exit 2, no traceback, exactly one line on stderr."""
    err = (r.stderr or "").strip()
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and len(err.splitlines()) == 1, err
    return err


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
