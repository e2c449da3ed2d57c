"""HTML reports (vmt.html_report): the page is self-contained and escaped, its thumbnails and side-by-side
videos hold the frames of the videos they show, 100 pairs stay a few MB, `vmt compare --html` writes it, and a
real headless Chromium loads every image and video of a report over real clips with no console error."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli.main import app  # noqa: E402
from vmt.errors import VmtUsageError  # noqa: E402
from vmt.html_report import (  # noqa: E402
    compare_html,
    eval_html,
    pair_differences,
    video_sample,
    write_html,
)
from vmt.io.video import read_video, write_video  # noqa: E402

runner = CliRunner()


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def _synthetic(folder: Path, n: int, frames: int = 24, size: tuple[int, int] = (96, 128),
               texture: float = 0.0) -> list[Path]:
    """n distinct videos: a colour gradient per video (plus uniform noise of +-`texture`, fixed in time) with
    a bright square moving right 2 px a frame."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        base = np.stack([(xx * 255 // w + 40 * k) % 256, (yy * 255 // h) % 256,
                         np.full((h, w), (70 * k) % 256)], axis=-1).astype(np.float64)
        base = np.clip(base + rng.uniform(-texture, texture, base.shape), 0, 255).astype(np.uint8)
        video = np.repeat(base[None], frames, axis=0)
        for t in range(frames):
            x0 = 4 + 2 * t
            video[t, 30:50, x0:x0 + 20] = 255
        out.append(write_video(folder / f"v{k}.mp4", video, 10.0))
    return out


def _report(pairs: list[tuple[Path | None, Path, Path]], groups: list[str] | None = None,
            diffs: list[float] | None = None) -> dict:
    """A vmt.compare/1 report over these (reference, A, B) files; warp_error of A is 1 + diffs[i] * -1 (so the
    difference, lower is better, is diffs[i]) and B's is 1."""
    diffs = diffs if diffs is not None else [0.01 * ((i * 7) % 11 - 5) for i in range(len(pairs))]
    groups = groups or [f"prompt {i % 5}" for i in range(len(pairs))]
    items = [{"key": f"k{i}", "group": groups[i], "a": str(a), "b": str(b),
              "reference": None if r is None else str(r),
              "a_metrics": {"warp_error": 1.0 - d, "ssim": 0.9}, "b_metrics": {"warp_error": 1.0, "ssim": 0.9}}
             for i, ((r, a, b), d) in enumerate(zip(pairs, diffs))]
    mean = float(np.mean(diffs))
    return {"schema": "vmt.compare/1", "command": ["vmt", "compare", "A", "B"],
            "params": {"a": "A", "b": "B", "level": 0.95, "resamples": 1000},
            "pairs": len(pairs), "groups": len(set(groups)), "families": ["temporal"],
            "metrics": {"warp_error": {"better": "lower", "pairs": len(pairs), "groups": len(set(groups)),
                                       "a_mean": 1.0 - mean, "b_mean": 1.0, "mean_difference": mean,
                                       "ci": [mean - 0.01, mean + 0.01], "win_rate": 0.5,
                                       "verdict": "no_difference", "level": 0.95},
                        "ssim": {"better": "higher", "pairs": len(pairs), "groups": len(set(groups)),
                                 "a_mean": 0.9, "b_mean": 0.9, "mean_difference": 0.0, "ci": [0.0, 0.0],
                                 "win_rate": 0.5, "verdict": "no_difference", "level": 0.95}},
            "cost": {"a": {"nfe": 71.0}, "b": {"nfe": 50.0}, "a_over_b": {"nfe": 1.42}},
            "versions": {"vmt": "0.1.0.dev0"},
            "gate": {"metrics": ["warp_error"], "failed": [], "passed": True}, "items": items}


def _data_uris(page: str, tag: str, mime: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(rf'<{tag} src="data:{mime};base64,([A-Za-z0-9+/=]+)"', page)]


def _external_links(page: str) -> list[str]:
    refs = re.findall(r'(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', page, flags=re.I)
    return [r for r in refs if not r.startswith("data:")] + re.findall(r"https?://", page)


# ---------------------------------------------------------------- fast: no browser, synthetic videos


def test_page_is_self_contained_and_shows_the_frames_of_its_videos(tmp_path):
    ref, a, b = _synthetic(tmp_path / "v", 3)
    report = _report([(ref, a, b), (ref, b, a), (None, a, a)], diffs=[0.03, -0.02, 0.0])
    page = compare_html(report, videos=2, video_frames=12)
    assert _external_links(page) == []
    assert "Content-Security-Policy" in page and "<script" not in page
    # thumbnails: every video of every pair (the pair without a reference has a dash), the middle of the
    # first 12 frames at 72 px high, against the same frame read independently
    thumbs = _data_uris(page, "img", "image/jpeg")
    assert len(thumbs) == 8
    from PIL import Image

    first = np.asarray(Image.open(io.BytesIO(thumbs[0])).convert("RGB"))
    assert first.shape == (72, 96, 3)
    truth, _ = read_video(ref, max_frames=12, size=(72, 96), resize="stretch")
    assert _psnr(first, truth[6]) > 30
    assert _psnr(first, truth[0]) < _psnr(first, truth[6]) - 3  # the middle frame, not the first
    # videos: best (pair 1) and worst (pair 2) on the gated warp_error; reference | A | B side by side
    clips = _data_uris(page, "video", "video/mp4")
    assert len(clips) == 2
    (tmp_path / "clip.mp4").write_bytes(clips[0])
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (12, 128, 3 * 170 + 2 * 4, 3) and fps == pytest.approx(10.0)
    for panel, src in enumerate((ref, a, b)):
        want, _ = read_video(src, max_frames=12, size=(128, 170), resize="stretch")
        got = frames[:, :, panel * 174:panel * 174 + 170]
        assert _psnr(got, want) > 28, panel
    assert "best for A" in page and "worst for A" in page and "median" not in page


def test_strings_are_escaped(tmp_path):
    ref, a, b = _synthetic(tmp_path / "v", 3)
    evil = '<script>alert("x")</script> & "quotes"'
    report = _report([(ref, a, b)], groups=[evil])
    report["params"]["a"] = evil
    report["command"] = ["vmt", "compare", evil]
    page = compare_html(report, videos=0)
    assert "<script" not in page and evil not in page
    assert html_escaped(evil) in page
    assert "<video" not in page  # videos=0


def html_escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_video_sample_is_best_worst_and_median():
    pairs = [(None, Path("a"), Path("b"))] * 5
    report = _report(pairs, diffs=[0.1, -0.3, 0.02, 0.5, -0.05])
    assert pair_differences(report, "warp_error") == pytest.approx([0.1, -0.3, 0.02, 0.5, -0.05])
    assert video_sample(report) == [("best for A", 3), ("worst for A", 1), ("median", 2)]
    assert video_sample(report, 1) == [("best for A", 3)]
    # "higher is better" and "closer to 1" are oriented so that positive favours A
    report["items"][0]["a_metrics"]["ssim"], report["items"][0]["b_metrics"]["ssim"] = 0.8, 0.9
    assert pair_differences(report, "ssim")[0] == pytest.approx(-0.1)
    report["metrics"]["seam_score"] = {"better": "closer"}
    report["items"][0]["a_metrics"]["seam_score"], report["items"][0]["b_metrics"]["seam_score"] = 0.9, 1.3
    assert pair_differences(report, "seam_score")[0] == pytest.approx(0.2)
    assert pair_differences(report, "seam_score")[1] is None


@pytest.mark.slow
def test_a_hundred_pairs_stay_a_few_megabytes(tmp_path):
    """Textured frames (noise JPEG compresses badly: a worse case than real video) of 256x256."""
    videos = _synthetic(tmp_path / "v", 8, size=(256, 256), texture=40.0)
    pairs = [(videos[i % 8], videos[(i + 1) % 8], videos[(i + 2) % 8]) for i in range(100)]
    page = compare_html(_report(pairs))
    out = write_html(tmp_path / "r.html", page)
    size = out.stat().st_size
    assert len(_data_uris(page, "img", "image/jpeg")) == 300 and page.count("<video") == 3
    assert size < 2_000_000, size  # 0.56 MB when written
    assert out.read_text(encoding="utf-8") == page
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_unreadable_videos_and_bad_arguments(tmp_path):
    ref, a, b = _synthetic(tmp_path / "v", 3)
    report = _report([(ref, a, tmp_path / "gone.mp4")])
    page = compare_html(report)
    assert "unreadable: gone.mp4" in page and "cannot show this pair" in page
    with pytest.raises(VmtUsageError, match="html_videos"):
        compare_html(report, videos=4)
    with pytest.raises(VmtUsageError, match="vmt.compare/1"):
        compare_html({"schema": "vmt.eval/1.1"})
    with pytest.raises(VmtUsageError, match="vmt.eval/1"):
        eval_html(report)


def test_eval_page_shows_metrics_items_and_baseline_checks(tmp_path):
    from vmt.metrics.report import attach_baseline, build_report, compare, parse_tolerances

    items = [{"name": "clip<1>.mp4", "metrics": {"warp_error": 0.012, "ssim": 0.91}},
             {"name": "clip2.mp4", "metrics": {"warp_error": 0.018, "ssim": None}}]
    report = build_report("temporal", {"warp_error": 0.015, "ssim": 0.91, "psnr": 30.5, "flicker": 0.97},
                          command=["vmt", "eval", "temporal", "x/"], params={"max_frames": 20},
                          inputs={"videos": ["clip<1>.mp4", "clip2.mp4"]}, items=items,
                          errors=[{"path": "bad.mp4", "error": "cannot read <moov>"}])
    baseline = json.loads(json.dumps(report))
    baseline["metrics"]["warp_error"]["value"] = 0.010
    checks = compare(report, baseline, parse_tolerances(["warp_error=10%"]))
    attach_baseline(report, tmp_path / "base.json", checks)
    page = eval_html(report)
    assert _external_links(page) == [] and "<script" not in page
    assert "vmt eval temporal" in page and "regressed: warp_error" in page
    assert "clip&lt;1&gt;.mp4" in page and "clip<1>" not in page and "cannot read &lt;moov&gt;" in page
    rows = re.findall(r"<tr>(.*?)</tr>", page)
    warp = next(r for r in rows if r.startswith("<td>warp_error</td><td class=\"n\">0.01</td>"))
    assert "regressed" in warp  # the baseline row: 0.010 there, 0.015 here, 10% allowed
    assert "<td class=\"n\">0.015</td>" in page
    assert page.count("<svg") == 2  # per-item strips of warp_error and ssim


# ---------------------------------------------------------------- the command and a real browser


def _real_sets(shared_data: Path, root: Path, n: int = 4) -> tuple[Path, Path, Path]:
    """B: real clips; A: the same clips shaking sideways every other frame; both with sidecars that record
    the compute (A paid 71 NFE, B 50)."""
    for name, jitter, nfe in (("b", 0, 50), ("a", 3, 71)):
        (root / name).mkdir(parents=True)
        for p in sorted((shared_data / "voxceleb").glob("*.mp4"))[:n]:
            frames, fps = read_video(p, max_frames=20, size=(96, 96))
            if jitter:
                frames = frames.copy()
                frames[1::2] = np.roll(frames[1::2], jitter, axis=2)
            out = write_video(root / name / p.name, frames, fps)
            out.with_suffix(".json").write_text(json.dumps({"compute": {"nfe": nfe},
                                                            "timings_s": {"denoise": nfe / 10}}))
    return root / "a", root / "b", root / "b"


@pytest.mark.slow
def test_compare_html_option_writes_the_page_with_the_json(shared_data, tmp_path):
    a, b, refs = _real_sets(shared_data, tmp_path / "sets", n=3)
    res = runner.invoke(app, ["compare", str(a), str(b), "--references", str(refs), "--metrics", "temporal",
                              "--resamples", "300", "--json", str(tmp_path / "r.json"), "--html",
                              str(tmp_path / "r.html"), "--html-videos", "1", "-q"])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params"]["html_videos"] == 1 and page.count("<video") == 1
    assert len(_data_uris(page, "img", "image/jpeg")) == 9
    for name, m in report["metrics"].items():
        assert f"<td>{name}</td>" in page and m["verdict"] in page
    res = runner.invoke(app, ["compare", str(a), str(b), "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "--overwrite" in res.output, res.output
    res = runner.invoke(app, ["compare", str(a), str(b), "--html", str(tmp_path / "r.htm")])
    assert res.exit_code == 2 and ".html" in res.output, res.output
    res = runner.invoke(app, ["compare", str(a), str(b), "--html", str(tmp_path / "x.html"), "--html-videos", "4"])
    assert res.exit_code == 2 and "--html-videos" in res.output, res.output
    assert not (tmp_path / "x.html").exists()


def _browser():
    """A headless Chromium through selenium, or a skip saying what is missing (./setup.sh installs both
    when run as root on Debian)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (./setup.sh "
                                    "installs the dev extras)")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                  None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("no chromium and chromedriver on PATH (apt-get install chromium chromium-driver; "
                    "./setup.sh does it when run as root)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(arg)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


WAIT_FOR_VIDEOS = """
const done = arguments[arguments.length - 1];
const videos = Array.from(document.querySelectorAll('video'));
const ready = v => new Promise(r => { if (v.readyState >= 2) r(); else {
    v.addEventListener('loadeddata', r); v.addEventListener('error', r); setTimeout(r, 15000); } });
Promise.all(videos.map(ready)).then(() => done(videos.map(v => ({ready: v.readyState, duration: v.duration,
    width: v.videoWidth, height: v.videoHeight, error: v.error ? v.error.code : null}))));
"""


@pytest.mark.slow
def test_a_real_browser_loads_every_image_and_video(shared_data, tmp_path):
    from PIL import Image

    from vmt.runs.compare import CompareRequest

    a, b, refs = _real_sets(shared_data, tmp_path / "sets")
    html_path = tmp_path / "report.html"
    report = CompareRequest(a=a, b=b, references=refs, metrics="temporal", gate=["warp_error"],
                            resamples=500).run(tmp_path / "r.json", html_out=html_path)
    assert report["gate"]["passed"] is False  # the shaking set is worse: the page shows a failed gate
    browser = _browser()
    try:
        browser.set_script_timeout(60)
        browser.get(html_path.as_uri())
        videos = browser.execute_async_script(WAIT_FOR_VIDEOS)
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        # the log is really captured: a console error made now shows up
        browser.execute_script("console.error('vmt-probe')")
        probe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        size = browser.execute_script("return [window.innerWidth * devicePixelRatio, "
                                      "window.innerHeight * devicePixelRatio]")
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot))
    finally:
        browser.quit()
    assert errors == [], errors
    assert any("vmt-probe" in e["message"] for e in probe), probe
    # 4 pairs x (reference, A, B) thumbnails of 96x96 clips at 72 px high, all decoded
    assert images == [[True, 72, 72]] * 12, images
    # best, worst, median: reference | A | B at 128 px high, 20 frames at 10 fps
    assert len(videos) == 3
    for v in videos:
        assert v["error"] is None and v["ready"] >= 2, v
        assert (v["width"], v["height"]) == (3 * 128 + 2 * 4, 128), v
        assert v["duration"] == pytest.approx(2.0, abs=0.15), v
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float64)
    assert (img.shape[1], img.shape[0]) == tuple(int(s) for s in size)
    assert img.std() > 30, img.std()  # text, tables, plots: far from a blank page
    assert (img.mean(axis=2) < 200).mean() > 0.03  # enough dark ink
    red = (img[..., 0] > 150) & (img[..., 1] < 90) & (img[..., 2] < 90)
    assert red.sum() > 50  # the b_better verdicts and red dots
