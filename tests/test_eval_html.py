"""`vmt eval ... --html`: the report's page is written with the JSON, holds the numbers of the report, and is
checked like any output (suffix, existing file, an input)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.main import app  # noqa: E402
from vmt.io.video import write_video  # noqa: E402

runner = CliRunner()


def _videos(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    for i in range(3):
        frames = np.stack([np.roll(base, k * (i + 1), axis=1) for k in range(6)])
        write_video(folder / f"v{i}.mp4", frames, 8.0)


def test_eval_writes_its_html_page_beside_the_json(tmp_path):
    _videos(tmp_path / "vids")
    res = runner.invoke(app, ["eval", "temporal", str(tmp_path / "vids"), "--json", str(tmp_path / "r.json"),
                              "--html", str(tmp_path / "r.html"), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    page = (tmp_path / "r.html").read_text()
    assert page.lstrip().lower().startswith("<!doctype html")
    for item in report["items"]:
        assert item["name"] in page
    ssim = report["metrics"]["ssim"]["value"]
    assert f"{ssim:.4g}" in page or f"{ssim:.3f}" in page
    assert not re.search(r"""(src|href)\s*=\s*["']https?://""", page)  # self-contained
    # checked as an output: the suffix, an existing page without --overwrite, an input as the page
    for args, pattern in ((["--html", str(tmp_path / "r.htm")], ".html"),
                          (["--html", str(tmp_path / "r.html")], "exists"),
                          (["--html", str(tmp_path / "vids" / "v0.mp4")], "")):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        res = runner.invoke(app, ["eval", "temporal", str(tmp_path / "vids"), *args, "-q"])
        assert res.exit_code == 2 and pattern in res.output and "Traceback" not in res.output, res.output
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
