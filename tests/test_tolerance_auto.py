"""`vmt eval ... --tolerance auto`: the gate's tolerance from the measured spread of the per-input values, so a
rerun on other samples of the same method passes and a degraded one fails (real clips, not tiny-model noise)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.main import app  # noqa: E402
from vmt.io.video import read_video, write_video  # noqa: E402
from vmt.metrics.report import AUTO_SIGMAS, auto_allowance, compare, parse_tolerances  # noqa: E402

runner = CliRunner()


def _doc(name: str, values: list[float]) -> dict:
    return {"metrics": {name: {"value": float(np.mean(values))}},
            "items": [{"metrics": {name: v}} for v in values] + [{"metrics": {name: None}}]}


def test_auto_allowance_is_three_standard_errors_of_the_difference():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 5.0]
    want = AUTO_SIGMAS * math.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 3)
    assert auto_allowance("ssim", _doc("ssim", a), _doc("ssim", b)) == pytest.approx(want)
    # "closer" metrics spread as their distance to the target (seam score 1): 0.5 and 1.5 are both 0.5 away
    assert auto_allowance("seam_score", _doc("seam_score", [0.5, 1.5]), _doc("seam_score", [0.5, 1.5])) == 0.0
    assert auto_allowance("fvd", {"items": []}, {"items": []}) is None  # a set metric: no spread, exact
    assert parse_tolerances(["auto"])["*"].auto and parse_tolerances(["ssim=auto"])["ssim"].auto


def test_auto_gates_on_the_spread_and_a_set_metric_stays_exact():
    base, cur = _doc("ssim", [0.90, 0.92, 0.94, 0.96]), _doc("ssim", [0.89, 0.91, 0.93, 0.95])
    (check,) = compare(cur, base, parse_tolerances(["auto"]))
    assert not check.regressed and check.tolerance.startswith("auto")
    worse = _doc("ssim", [0.70, 0.72, 0.74, 0.76])
    (check,) = compare(worse, base, parse_tolerances(["auto"]))
    assert check.regressed
    (check,) = compare({"metrics": {"fvd": {"value": 10.5}}, "items": []}, {"metrics": {"fvd": {"value": 10.0}}},
                       parse_tolerances(["auto"]))
    assert check.regressed and "exact" in check.tolerance


@pytest.mark.slow
def test_a_rerun_on_other_samples_passes_and_a_degraded_one_fails(shared_data, tmp_path):
    """Baseline: 20-frame pieces from the first half of four real clips; rerun: pieces from their second
    halves (the same "method", other samples); degraded: those pieces with every other frame shifted by 2
    px. An exact gate (tolerance 0) flags the rerun; auto does not, and still catches the degradation."""
    sets = {k: tmp_path / k for k in ("base", "rerun", "degraded")}
    for d in sets.values():
        d.mkdir()
    for p in sorted((shared_data / "voxceleb").glob("*.mp4")):
        frames, fps = read_video(p, size=(96, 96))
        half = len(frames) // 2
        for k in range(2):
            write_video(sets["base"] / f"{p.stem}_{k}.mp4", frames[k * half // 2:][:20], fps)
            later = frames[half + k * half // 2:][:20]
            write_video(sets["rerun"] / f"{p.stem}_{k}.mp4", later, fps)
            shaken = later.copy()
            shaken[1::2] = np.roll(shaken[1::2], 2, axis=2)
            write_video(sets["degraded"] / f"{p.stem}_{k}.mp4", shaken, fps)
    base = tmp_path / "base.json"
    assert runner.invoke(app, ["eval", "temporal", str(sets["base"]), "--json", str(base), "-q"]).exit_code == 0

    def gate(name: str, *tol: str):
        out = tmp_path / f"{name}-{len(tol)}.json"
        res = runner.invoke(app, ["eval", "temporal", str(sets[name]), "--baseline", str(base),
                                  "--allow-different-inputs", "--json", str(out), "-q", *tol])
        return res.exit_code, json.loads(out.read_text())

    assert gate("rerun")[0] == 1  # the exact gate flaps on sampling noise
    code, report = gate("rerun", "--tolerance", "auto")
    assert code == 0, report["baseline"]["checked"]
    code, report = gate("degraded", "--tolerance", "auto")
    assert code == 1
    regressed = {c["name"] for c in report["baseline"]["checked"] if c["regressed"]}
    assert {"ssim", "psnr", "flicker"} <= regressed
