"""HTML reports a person can look at: one self-contained file (inline CSS, inline SVG plots, images and videos
as data: URIs; nothing is fetched, and a Content-Security-Policy forbids fetching), every string escaped.

    from vmt.html_report import compare_html, eval_html, write_html

    write_html("compare.html", compare_html(report))   # report: CompareRequest.run(), schema vmt.compare/1
    write_html("eval.html", eval_html(report))         # report: a `vmt eval --json` report, vmt.eval/1.x

A compare report shows the verdict table, per metric the paired differences with their confidence interval
(positive favours A), each metric against the compute each side paid (when the sidecars recorded it), a
thumbnail of every pair (reference | A | B), and side-by-side videos of a sample of pairs: the best, the
median and the worst difference on the first gated metric (else warp_error, else the first metric). Videos
are re-encoded small (H.264, downscaled, a few frames), so 100 pairs stay a few MB.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vmt.errors import VmtError, VmtUsageError, param

MAX_VIDEOS = 3
THUMB_HEIGHT = 72
VIDEO_HEIGHT = 128
VIDEO_FRAMES = 24

# Nothing may be fetched: images and media only from data: URIs, styles only inline, no scripts.
CSP = "default-src 'none'; img-src data:; media-src data:; style-src 'unsafe-inline'"

CSS = """
body{font:14px/1.45 system-ui,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1180px;
  padding:0 16px;color:#1d232a;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dde3;
  padding-bottom:4px}
.sub{color:#5a6470;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0 10px}.scroll{overflow-x:auto}
th,td{border:1px solid #d8dde3;padding:3px 8px;text-align:left;vertical-align:middle}
th{background:#f3f5f7;font-weight:600}
td.n{white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums;font-family:ui-monospace,Menlo,Consolas,monospace;
  font-size:12.5px}
.a_better,.pass{color:#0b6e2e;font-weight:600}.b_better,.fail{color:#b3261e;font-weight:600}
.no_difference,.muted{color:#6b7480}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-weight:600}
.badge.pass{background:#dff3e5}.badge.fail{background:#fbe1df}
.plots{display:flex;flex-wrap:wrap;gap:8px 18px}
.plot{margin:0}.plot figcaption{font-size:12px;color:#5a6470}
.thumbs img{display:block;height:%(thumb)dpx;border-radius:2px}
.clip{margin:0 0 14px}.clip video{display:block;max-width:100%%;background:#000;border-radius:3px}
.clip figcaption{font-size:12.5px;margin-top:3px}
.kv td:first-child{color:#5a6470;white-space:nowrap}
.kv td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.missing{color:#b3261e;font-size:11px}
svg text{font:11px system-ui,sans-serif;fill:#39424c}
"""


def esc(value: Any) -> str:
    """Text for HTML (element content and quoted attributes)."""
    return html.escape(str(value), quote=True)


def _num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return esc(v)
    return f"{v:.{digits}g}"


def _page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{esc(CSP)}\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS % {'thumb': THUMB_HEIGHT}}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text before); `head` is text."""
    attr = f" class=\"{cls}\"" if cls else ""
    out = [f"<table{attr}><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</tbody></table>"


def _cell(cell: str | tuple[str, str]) -> str:
    """A cell given as ("n", html) is a number, right-aligned."""
    if isinstance(cell, tuple):
        return f"<td class=\"{cell[0]}\">{cell[1]}</td>"
    return f"<td>{cell}</td>"


def _kv(mapping: dict) -> str:
    rows = [(esc(k), esc(v if not isinstance(v, (list, tuple)) else ", ".join(map(str, v))))
            for k, v in mapping.items()]
    return _table(("name", "value"), rows, "kv")


# ---------------------------------------------------------------- plots (pure SVG strings)


class _Axis:
    """A linear map from values to pixels over [lo, hi] (never empty), with a few round ticks."""

    def __init__(self, values: Sequence[float], x0: float, x1: float, *, include_zero: bool = True):
        vals = [v for v in values if v is not None and math.isfinite(v)] + ([0.0] if include_zero else [])
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if hi - lo < 1e-12 * max(1.0, abs(lo), abs(hi)):
            pad = max(abs(lo) * 0.1, 1e-6)
            lo, hi = lo - pad, hi + pad
        pad = (hi - lo) * 0.06
        self.lo, self.hi, self.x0, self.x1 = lo - pad, hi + pad, x0, x1

    def __call__(self, v: float) -> float:
        return self.x0 + (v - self.lo) / (self.hi - self.lo) * (self.x1 - self.x0)

    def ticks(self, n: int = 5) -> list[float]:
        raw = (self.hi - self.lo) / n
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        first = math.ceil(self.lo / step) * step
        return [first + i * step for i in range(n + 2) if first + i * step <= self.hi + 1e-12]


def _tick_text(v: float) -> str:
    return "0" if abs(v) < 1e-12 else f"{v:.3g}"


def strip_svg(values: Sequence[float], *, ci: Sequence[float] | None = None, mean: float | None = None,
              width: int = 540, height: int = 86, zero: bool = True, label: str = "") -> str:
    """A strip plot: one dot per value (jittered vertically), the mean as a bar and its interval as a
    whisker, the zero line dashed. Values None or not finite are left out."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    extra = list(ci or ()) + ([mean] if mean is not None else [])
    ax = _Axis(vals + [e for e in extra if e is not None], 12, width - 12, include_zero=zero)
    mid, base = 34, height - 22
    parts = [f"<svg width=\"{width}\" height=\"{height}\" "
             f"viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{esc(label)}\">",
             f"<line x1=\"{ax.x0}\" y1=\"{base}\" x2=\"{ax.x1}\" y2=\"{base}\" stroke=\"#9aa3ad\"/>"]
    for t in ax.ticks():
        x = ax(t)
        parts.append(f"<line x1=\"{x:.1f}\" y1=\"{base}\" x2=\"{x:.1f}\" y2=\"{base + 4}\" stroke=\"#9aa3ad\"/>"
                     f"<text x=\"{x:.1f}\" y=\"{base + 15}\" text-anchor=\"middle\">{esc(_tick_text(t))}</text>")
    if zero:
        x = ax(0.0)
        parts.append(f"<line x1=\"{x:.1f}\" y1=\"6\" x2=\"{x:.1f}\" y2=\"{base}\" stroke=\"#6b7480\" "
                     "stroke-dasharray=\"3,3\"/>")
    for i, v in enumerate(vals):
        jitter = ((i * 0.6180339887) % 1.0 - 0.5) * 26
        color = "#2e7d4f" if v > 0 else "#c0392b" if v < 0 else "#6b7480"
        parts.append(f"<circle cx=\"{ax(v):.1f}\" cy=\"{mid + jitter:.1f}\" r=\"3\" fill=\"{color}\" "
                     "fill-opacity=\"0.55\"/>")
    if ci is not None and all(c is not None for c in ci):
        lo, hi = ax(ci[0]), ax(ci[1])
        parts.append(f"<line x1=\"{lo:.1f}\" y1=\"{mid}\" x2=\"{hi:.1f}\" y2=\"{mid}\" stroke=\"#1d232a\" "
                     "stroke-width=\"2\"/>"
                     f"<line x1=\"{lo:.1f}\" y1=\"{mid - 8}\" x2=\"{lo:.1f}\" y2=\"{mid + 8}\" stroke=\"#1d232a\" "
                     "stroke-width=\"2\"/>"
                     f"<line x1=\"{hi:.1f}\" y1=\"{mid - 8}\" x2=\"{hi:.1f}\" y2=\"{mid + 8}\" stroke=\"#1d232a\" "
                     "stroke-width=\"2\"/>")
    if mean is not None and math.isfinite(mean):
        x = ax(mean)
        parts.append(f"<rect x=\"{x - 4:.1f}\" y=\"{mid - 4}\" width=\"8\" height=\"8\" fill=\"#1d5fa8\"/>")
    return "".join(parts) + "</svg>"


def _frame(ax: _Axis, ay: _Axis, width: int, height: int, x_label: str, aria: str) -> list[str]:
    """The start of an x-y plot: the svg element, both axes with their ticks, the x label."""
    parts = [f"<svg width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" "
             f"aria-label=\"{esc(aria)}\">",
             f"<line x1=\"{ax.x0}\" y1=\"{ay.x0}\" x2=\"{ax.x1}\" y2=\"{ay.x0}\" stroke=\"#9aa3ad\"/>",
             f"<line x1=\"{ax.x0}\" y1=\"{ay.x0}\" x2=\"{ax.x0}\" y2=\"{ay.x1}\" stroke=\"#9aa3ad\"/>"]
    for t in ax.ticks(4):
        parts.append(f"<text x=\"{ax(t):.1f}\" y=\"{ay.x0 + 13}\" text-anchor=\"middle\">{esc(_tick_text(t))}</text>")
    for t in ay.ticks(4):
        parts.append(f"<text x=\"{ax.x0 - 4}\" y=\"{ay(t) + 4:.1f}\" text-anchor=\"end\">{esc(_tick_text(t))}</text>")
    parts.append(f"<text x=\"{(ax.x0 + ax.x1) / 2:.1f}\" y=\"{height - 6}\" text-anchor=\"middle\">"
                 f"{esc(x_label)}</text>")
    return parts


def cost_svg(points: Sequence[tuple[str, float, float]], *, x_label: str, y_label: str, width: int = 260,
             height: int = 180) -> str:
    """A scatter of a few labelled points (name, x, y): a metric against the compute each side paid."""
    pts = [(n, x, y) for n, x, y in points if x is not None and y is not None and math.isfinite(x)
           and math.isfinite(y)]
    ax = _Axis([p[1] for p in pts], 62, width - 26, include_zero=True)
    ay = _Axis([p[2] for p in pts], height - 36, 10, include_zero=False)
    parts = _frame(ax, ay, width, height, x_label, f"{y_label} vs {x_label}")
    colors = {"A": "#1d5fa8", "B": "#d9822b"}
    for name, x, y in pts:
        parts.append(f"<circle cx=\"{ax(x):.1f}\" cy=\"{ay(y):.1f}\" r=\"5\" fill=\"{colors.get(name, '#555')}\"/>"
                     f"<text x=\"{ax(x) + 8:.1f}\" y=\"{ay(y) + 4:.1f}\">{esc(name)}</text>")
    return "".join(parts) + "</svg>"


def line_svg(series: dict[str, Sequence[tuple[float, float]]], *, x_label: str, y_label: str, width: int = 300,
             height: int = 170) -> str:
    """Lines of (x, y) points, one per named series (A blue, B orange): a per-step record over the steps."""
    pts = [(x, y) for line in series.values() for x, y in line if math.isfinite(x) and math.isfinite(y)]
    ax = _Axis([p[0] for p in pts], 50, width - 12, include_zero=False)
    ay = _Axis([p[1] for p in pts], height - 36, 10, include_zero=False)
    parts = _frame(ax, ay, width, height, x_label, f"{y_label} over {x_label}")
    colors = {"A": "#1d5fa8", "B": "#d9822b"}
    for name, line in series.items():
        xy = " ".join(f"{ax(x):.1f},{ay(y):.1f}" for x, y in line if math.isfinite(x) and math.isfinite(y))
        if xy:
            parts.append(f"<polyline points=\"{xy}\" fill=\"none\" stroke=\"{colors.get(name, '#555')}\" "
                         f"stroke-width=\"2\"><title>{esc(name)}</title></polyline>")
    return "".join(parts) + "</svg>"


def step_records(video: str | Path | None) -> dict[str, list[tuple[float, float]]]:
    """What a video's sidecar recorded step by step, as curves: P&P's certain fraction at the end of each
    refined step (`pnp.final_certain_fraction`: the share of voxels the uncertainty gate had settled) and the
    guidance's final AMF loss per guided step (`guidance.final_amf_loss`). Empty without a sidecar."""
    import json

    if not video:
        return {}
    try:
        doc = json.loads(Path(video).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, list[tuple[float, float]]] = {}
    certain = (doc.get("pnp") or {}).get("final_certain_fraction") if isinstance(doc, dict) else None
    if isinstance(certain, dict) and certain:
        out["P&P certain fraction"] = sorted((float(k), float(v)) for k, v in certain.items()
                                             if isinstance(v, (int, float)))
    losses = (doc.get("guidance") or {}).get("final_amf_loss") if isinstance(doc, dict) else None
    if isinstance(losses, list) and losses:
        out["AMF loss"] = [(float(i), float(v)) for i, v in enumerate(losses) if isinstance(v, (int, float))]
    return out


def _records_section(report: dict, sample: list[tuple[str, int]]) -> list[str]:
    """Per sampled pair, the step records both sidecars hold (P&P's gate, the guidance's AMF loss)."""
    figures = []
    for label, i in sample:
        item = report["items"][i]
        a, b = step_records(item.get("a")), step_records(item.get("b"))
        for name in sorted(set(a) | set(b)):
            series = {k: v for k, v in (("A", a.get(name)), ("B", b.get(name))) if v}
            x_label = "refined step" if name.startswith("P&P") else "guided step"
            figures.append(f"<figure>{line_svg(series, x_label=x_label, y_label=name)}<figcaption>{esc(name)}, "
                           f"{esc(label)} pair {i + 1} (A blue, B orange)</figcaption></figure>")
    if not figures:
        return []
    return ["<h2>Step records</h2><p class=\"muted\">From the outputs' sidecars: the share of voxels P&P's "
            "uncertainty gate had settled at the end of each refined step, and the motion guidance's AMF loss "
            "per guided step.</p>", f"<div class=\"plots\">{''.join(figures)}</div>"]


# ---------------------------------------------------------------- frames as data: URIs


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def _read(path: str | Path, height: int, frames: int):
    """The first `frames` frames of a video, scaled to `height` (aspect kept, even sides), and its rate."""
    from vmt.io.video import probe_video, read_video

    info = probe_video(path)
    size = (_even(height), _even(info.width * height / max(info.height, 1)))
    return read_video(path, max_frames=frames, size=size, resize="stretch")


def jpeg_uri(frame, quality: int = 78) -> str:
    """An RGB uint8 frame (H, W, 3) as a JPEG data: URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality, optimize=True)
    return _data_uri("image/jpeg", buf.getvalue())


def side_by_side_uri(paths: Sequence[str | Path], *, height: int = VIDEO_HEIGHT, frames: int = VIDEO_FRAMES,
                     crf: int = 30) -> str:
    """The videos side by side (each scaled to `height`, 4 white pixels apart, the shortest's frame count,
    the first one's frame rate) as a small H.264 mp4 data: URI."""
    import numpy as np

    from vmt.io.video import write_video

    clips = [_read(p, height, frames) for p in paths]
    n = min(len(f) for f, _ in clips)
    h = clips[0][0].shape[1]
    gap = np.full((n, h, 4, 3), 255, np.uint8)
    panels: list[Any] = []
    for i, (f, _) in enumerate(clips):
        panels += ([gap] if i else []) + [f[:n]]
    strip = np.concatenate(panels, axis=2)
    with tempfile.TemporaryDirectory(prefix="vmt-html-") as tmp:
        out = write_video(Path(tmp) / "clip.mp4", strip, clips[0][1], crf=crf)
        return _data_uri("video/mp4", out.read_bytes())


class _Thumbs:
    """Thumbnails by path, each video read once (a reference shared by many pairs too)."""

    def __init__(self, height: int, frames: int):
        self.height, self.frames, self.cache = height, frames, {}

    def img(self, path: str | None, alt: str) -> str:
        if path is None:
            return "<span class=\"muted\">-</span>"
        if path not in self.cache:
            try:
                f, _ = _read(path, self.height, self.frames)
                self.cache[path] = ("ok", jpeg_uri(f[len(f) // 2]))
            except (VmtError, OSError) as e:
                self.cache[path] = ("missing", str(e))
        kind, value = self.cache[path]
        if kind == "missing":
            return f"<span class=\"missing\" title=\"{esc(value)}\">unreadable: {esc(Path(path).name)}</span>"
        return f"<img src=\"{value}\" alt=\"{esc(alt)}\" title=\"{esc(path)}\">"


# ---------------------------------------------------------------- compare


def _targets() -> dict[str, float | None]:
    from vmt.runs.compare import FAMILIES

    return {name: target for fam in FAMILIES.values() for name, (_, _, target) in fam.items()}


def pair_differences(report: dict, metric: str) -> list[float | None]:
    """Per pair, goodness(A) - goodness(B) on `metric` (positive favours A), None where either has no value."""
    better = report["metrics"][metric]["better"]
    target = _targets().get(metric)
    out: list[float | None] = []
    for item in report.get("items", []):
        a, b = (item.get("a_metrics") or {}).get(metric), (item.get("b_metrics") or {}).get(metric)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            out.append(None)
        elif better == "lower":
            out.append(b - a)
        elif better == "closer":
            out.append(abs(b - target) - abs(a - target))
        else:
            out.append(a - b)
    return out


def sample_metric(report: dict) -> str | None:
    """The metric that picks the video sample: the first gated one with values, else warp_error, else the
    first metric with values."""
    metrics = report.get("metrics") or {}
    have = [m for m in metrics if any(d is not None for d in pair_differences(report, m))]
    for m in [*(report.get("gate") or {}).get("metrics", []), "warp_error", *have]:
        if m in have:
            return m
    return None


def video_sample(report: dict, count: int = MAX_VIDEOS) -> list[tuple[str, int]]:
    """Up to `count` (label, pair index): the best, worst and median difference on `sample_metric`."""
    metric = sample_metric(report)
    if metric is None or count <= 0:
        return []
    diffs = pair_differences(report, metric)
    order = sorted((d, i) for i, d in enumerate(diffs) if d is not None)
    picks = [("best for A", order[-1][1]), ("worst for A", order[0][1]), ("median", order[len(order) // 2][1])]
    out: list[tuple[str, int]] = []
    for label, i in picks:
        if i not in [j for _, j in out] and len(out) < count:
            out.append((label, i))
    return out


def _verdict_rows(report: dict) -> list[list]:
    gated = set((report.get("gate") or {}).get("metrics") or [])
    rows = []
    for name, m in report["metrics"].items():
        ci = m.get("ci")
        verdict = m.get("verdict", "no_difference")
        rows.append([esc(name) + (" <span class=\"muted\">(gate)</span>" if name in gated else ""),
                     esc(m.get("better", "")), ("n", _num(m.get("a_mean", m.get("a_value")))),
                     ("n", _num(m.get("b_mean", m.get("b_value")))),
                     ("n", _num(m.get("mean_difference", m.get("difference")))),
                     ("n", "-" if not ci else f"[{_num(ci[0])}, {_num(ci[1])}]"),
                     ("n", _num(m.get("win_rate"), 3)), ("n", _num(m.get("pairs"))),
                     f"<span class=\"{esc(verdict)}\">{esc(verdict)}</span>"
                     + (f" <span class=\"muted\">{esc(m['note'])}</span>" if m.get("note") else "")])
    return rows


def _cost_section(report: dict) -> list[str]:
    cost = report.get("cost") or {}
    a, b = cost.get("a") or {}, cost.get("b") or {}
    keys = [k for k in ("nfe", "dit_forward", "dit_backward", "seconds") if k in a and k in b]
    if not keys:
        return ["<h2>Compute</h2><p class=\"muted\">The sidecars recorded no compute for both sides.</p>"]
    ratios = cost.get("a_over_b") or {}
    out = ["<h2>Compute</h2>",
           _table(("cost (mean per video)", "A", "B", "A / B"),
                  [[esc(k), ("n", _num(a[k])), ("n", _num(b[k])), ("n", _num(ratios.get(k)))] for k in keys])]
    x = keys[-1] if "seconds" in keys else keys[0]
    plots = []
    for name, m in report["metrics"].items():
        if m.get("a_mean") is None or m.get("b_mean") is None:
            continue
        svg = cost_svg([("A", a[x], m["a_mean"]), ("B", b[x], m["b_mean"])], x_label=x, y_label=name)
        plots.append(f"<figure class=\"plot\">{svg}<figcaption>{esc(name)} (mean, {esc(m.get('better', ''))} "
                     f"is better) vs {esc(x)}</figcaption></figure>")
    return out + [f"<div class=\"plots\">{''.join(plots)}</div>"]


def compare_html(report: dict, *, videos: int = MAX_VIDEOS, thumb_height: int = THUMB_HEIGHT,
                 video_height: int = VIDEO_HEIGHT, video_frames: int = VIDEO_FRAMES,
                 title: str | None = None) -> str:
    """The HTML page of a `vmt compare` report (schema vmt.compare/1): verdicts, plots, thumbnails of every
    pair, side-by-side videos (reference | A | B) of `videos` pairs (0 to 3), parameters and versions.
    Reads the videos the report names; one that cannot be read is shown as such, not an error."""
    schema = report.get("schema") if isinstance(report, dict) else None
    if not isinstance(schema, str) or not schema.startswith("vmt.compare/"):
        raise VmtUsageError(f"{param('report')} has schema {schema!r}, not vmt.compare/1; give the report of "
                            "CompareRequest.run")
    if not 0 <= int(videos) <= MAX_VIDEOS:
        raise VmtUsageError(f"{param('html_videos')} must be 0 to {MAX_VIDEOS}, got {videos}")
    params = report.get("params") or {}
    gate = report.get("gate") or {}
    items = report.get("items") or []
    title = title or f"vmt compare: {params.get('a')} vs {params.get('b')}"
    gate_html = ""
    if gate.get("metrics"):
        ok = gate.get("passed")
        gate_html = (f" &middot; gate on {esc(', '.join(gate['metrics']))}: <span class=\"badge "
                     f"{'pass' if ok else 'fail'}\">{'passed' if ok else 'failed: ' + esc(', '.join(gate.get('failed', [])))}"
                     "</span>")
    body = [f"<h1>{esc(title)}</h1>",
            f"<p class=\"sub\">A = {esc(params.get('a'))} &middot; B = {esc(params.get('b'))} &middot; "
            f"{_num(report.get('pairs'))} pairs in {_num(report.get('groups'))} prompt groups &middot; "
            f"{esc(report.get('schema'))}{gate_html}</p>",
            "<h2>Verdicts</h2>",
            _table(("metric", "better", "A mean", "B mean", "A-B (better +)", "CI", "win rate", "pairs", "verdict"),
                   _verdict_rows(report)),
            f"<p class=\"muted\">A-B is oriented so that a positive value favours A; CI: the {esc(_num(params.get('level')))} "
            "bootstrap interval of its mean, resampled by prompt; a_better / b_better when the whole interval is "
            "on one side of 0.</p>",
            *[f"<p class=\"muted\">{esc(n)}: a set metric: A's and B's value against the references, their "
              f"difference, and its interval from {esc(_num(m.get('resamples')))} resamples of the prompt groups "
              "(no per-pair win rate).</p>" for n, m in report["metrics"].items() if m.get("kind") == "set"],
            "<h2>Paired differences</h2>",
            "<p class=\"muted\">Each dot is one pair (green: A better, red: B better); the square is the mean, "
            "the whisker its interval, the dashed line 0.</p><div class=\"plots\">"]
    for name, m in report["metrics"].items():
        if m.get("kind") == "set":  # FVD, FID: one value per side, no pairs to plot
            continue
        diffs = pair_differences(report, name)
        svg = strip_svg(diffs, ci=m.get("ci"), mean=m.get("mean_difference"), label=name)
        body.append(f"<figure class=\"plot\">{svg}<figcaption>{esc(name)}: A-B ({esc(m.get('better', ''))} "
                    f"is better), {esc(m.get('verdict', ''))}</figcaption></figure>")
    body.append("</div>")
    body += _cost_section(report)

    sample = video_sample(report, videos)
    metric = sample_metric(report)
    if sample:
        body.append(f"<h2>Side by side</h2><p class=\"muted\">reference | A | B, at most the first {video_frames} frames; "
                    f"chosen by the difference on {esc(metric)}.</p>")
        diffs = pair_differences(report, metric)
        for label, i in sample:
            item = items[i]
            paths = [p for p in (item.get("reference"), item["a"], item["b"]) if p]
            names = " | ".join(n for n, p in zip(("reference", "A", "B"), (item.get("reference"), 1, 1)) if p)
            try:
                uri = side_by_side_uri(paths, height=video_height, frames=video_frames)
                media = (f"<video src=\"{uri}\" style=\"height:{2 * video_height}px\" controls loop muted autoplay "
                         "playsinline preload=\"auto\"></video>")
            except (VmtError, OSError) as e:
                media = f"<p class=\"missing\">cannot show this pair: {esc(e)}</p>"
            body.append(f"<figure class=\"clip\">{media}<figcaption><b>{esc(label)}</b> (pair {i + 1}, "
                        f"{esc(metric)} A-B {_num(diffs[i])}): {esc(names)} &middot; {esc(item.get('group', ''))}"
                        "</figcaption></figure>")

    body += _records_section(report, video_sample(report, max(videos, 1)))
    thumbs = _Thumbs(thumb_height, video_frames)
    names = list(report["metrics"])
    body.append(f"<h2>Pairs</h2><p class=\"muted\">The middle of the first {video_frames} frames of each video; "
                "metric cells are A / B.</p>")
    rows = []
    for i, item in enumerate(items):
        am, bm = item.get("a_metrics") or {}, item.get("b_metrics") or {}
        rows.append([("n", str(i + 1)), esc(item.get("group", "")),
                     f"<div class=\"thumbs\">{thumbs.img(item.get('reference'), 'reference')}</div>",
                     f"<div class=\"thumbs\">{thumbs.img(item.get('a'), 'A')}</div>",
                     f"<div class=\"thumbs\">{thumbs.img(item.get('b'), 'B')}</div>",
                     *[("n", f"{_num(am.get(n))} / {_num(bm.get(n))}") for n in names]])
    body.append(f"<div class=\"scroll\">{_table(('#', 'prompt / group', 'reference', 'A', 'B', *names), rows)}</div>")
    body += ["<h2>Parameters</h2>", _kv(params),
             "<h2>Command</h2>", f"<p class=\"kv\"><code>{esc(' '.join(map(str, report.get('command') or [])))}"
             "</code></p>",
             "<h2>Versions</h2>", _kv(report.get("versions") or {})]
    return _page(title, body)


# ---------------------------------------------------------------- eval


def eval_html(report: dict, *, title: str | None = None) -> str:
    """The HTML page of a `vmt eval` report (schema vmt.eval/1.x): the metrics, the baseline's checks when
    there was one, a strip plot of the per-item values of each metric, the per-item rows, errors, parameters,
    inputs and versions."""
    schema = report.get("schema") if isinstance(report, dict) else None
    if not isinstance(schema, str) or not schema.startswith("vmt.eval/1"):
        raise VmtUsageError(f"{param('report')} has schema {schema!r}, not vmt.eval/1.x; give a report written "
                            "by vmt eval")
    sub = report.get("subcommand", "")
    title = title or f"vmt eval {sub}"
    metrics = report.get("metrics") or {}
    baseline = report.get("baseline")
    body = [f"<h1>{esc(title)}</h1>",
            f"<p class=\"sub\">{esc(schema)} &middot; created {esc(report.get('created', '-'))} &middot; "
            f"{len(report.get('items') or [])} items &middot; {len(report.get('errors') or [])} errors</p>"]
    if baseline:
        regressed = baseline.get("regressions") or []
        body.append(f"<p>Baseline {esc(baseline.get('path'))}: <span class=\"badge {'fail' if regressed else 'pass'}\">"
                    + (f"regressed: {esc(', '.join(regressed))}" if regressed else "no regression") + "</span></p>")
    body += ["<h2>Metrics</h2>",
             _table(("metric", "value", "unit", "better"),
                    [[esc(k), ("n", _num(m.get("value"), 6)), esc(m.get("unit", "")),
                      esc(m.get("better") or "") + (f" (target {_num(m['target'])})" if "target" in m else "")]
                     for k, m in metrics.items()])]
    if baseline:
        rows = []
        for c in baseline.get("checked") or []:
            state = "regressed" if c.get("regressed") else "ok" if c.get("compared", True) else "not compared"
            cls = "fail" if c.get("regressed") else "pass" if state == "ok" else "muted"
            rows.append([esc(c.get("name")), ("n", _num(c.get("baseline"), 6)), ("n", _num(c.get("current"), 6)),
                         esc(c.get("better", "")), esc(c.get("tolerance", "")),
                         f"<span class=\"{cls}\">{esc(state)}</span>", esc(c.get("reason", ""))])
        body += ["<h2>Baseline checks</h2>",
                 _table(("metric", "baseline", "current", "better", "tolerance", "result", "reason"), rows)]
        differ = baseline.get("versions_differ") or {}
        if differ:
            body.append(_table(("package", "baseline", "current"),
                               [[esc(k), esc(v.get("baseline")), esc(v.get("current"))] for k, v in differ.items()]))
    items = report.get("items") or []
    names: list[str] = []
    for it in items:
        names += [k for k in (it.get("metrics") or {}) if k not in names]
    numeric = [n for n in names if any(isinstance((it.get("metrics") or {}).get(n), (int, float))
                                       and not isinstance((it.get("metrics") or {}).get(n), bool) for it in items)]
    if numeric:
        body.append("<h2>Per item</h2><p class=\"muted\">Each dot is one item; the square is the report's value "
                    "when the metric has one.</p><div class=\"plots\">")
        for n in numeric:
            vals = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None
                    for v in ((it.get("metrics") or {}).get(n) for it in items)]
            overall = (metrics.get(n) or {}).get("value")
            body.append(f"<figure class=\"plot\">{strip_svg(vals, mean=overall, zero=False, label=n)}"
                        f"<figcaption>{esc(n)}</figcaption></figure>")
        body.append("</div>")
    if items:
        table = _table(("item", *names), [[esc(it.get("name", "")),
                                           *[("n", _num((it.get("metrics") or {}).get(n))) for n in names]]
                                          for it in items])
        body.append(f"<div class=\"scroll\">{table}</div>")
    if report.get("errors"):
        body += ["<h2>Errors</h2>", _table(("path", "error"), [[esc(e.get("path")), esc(e.get("error"))]
                                                                for e in report["errors"]])]
    body += ["<h2>Parameters</h2>", _kv(report.get("params") or {}),
             "<h2>Inputs</h2>", _kv(report.get("inputs") or {}),
             "<h2>Command</h2>", f"<p class=\"kv\"><code>{esc(' '.join(map(str, report.get('command') or [])))}"
             "</code></p>",
             "<h2>Versions</h2>", _kv(report.get("versions") or {})]
    if report.get("timings_s"):
        body += ["<h2>Timings (s)</h2>", _kv({k: _num(v) for k, v in report["timings_s"].items()})]
    return _page(title, body)


def write_html(path: str | os.PathLike, page: str, *, overwrite: bool | None = None) -> Path:
    """Write the page to `path` atomically (`overwrite` as `atomic_path`'s `replace`: None follows the
    command's output policy)."""
    from vmt.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path, replace=overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


__all__ = ["compare_html", "eval_html", "write_html", "strip_svg", "cost_svg", "video_sample", "sample_metric",
           "pair_differences"]
