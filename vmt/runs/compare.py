"""`CompareRequest`: does method A beat method B on the same jobs? Paired per-video metrics, a bootstrap
confidence interval resampled by prompt, the win rate and a verdict per metric, and the compute each side paid.

    from vmt.runs.compare import CompareRequest

    report = CompareRequest(a="pnp/", b="plain/").run()        # two `--batch` output folders
    report["metrics"]["warp_error"]["verdict"]                  # a_better | no_difference | b_better

A and B are two sets of outputs of the same jobs: two batch output folders (or their manifest.jsonl files),
paired by job (prompt, seed, reference), or two folders of videos paired by file name. Jobs that share a
prompt form one group of the bootstrap. Nothing is printed; progress goes to an optional callback.

With detectors (`i3d` for FVD, `inception` for FID: TorchScript files, as `vmt eval fvd/fid` take them) and
`references`, compare also reports set metrics: each side's Frechet distance to the reference set, their
difference, and an interval from `set_resamples` resamples of the prompt groups (the same draw on both sides,
features computed once per video, the distance recomputed per resample).

    CompareRequest(a="pnp/", b="plain/", references="real/", i3d="i3d_torchscript.pt").run()["metrics"]["fvd"]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vmt.errors import VmtUsageError, param
from vmt.runs.fields import AT_LEAST_1, Range, check_fields, number, text

SCHEMA = "vmt.compare/1"
MANIFEST = "manifest.jsonl"

# Per-video metrics by family: name -> (the score row's key, which way is better, target for "closer").
FAMILIES: dict[str, dict[str, tuple[str, str, float | None]]] = {
    "temporal": {"warp_error": ("warp_error", "lower", None), "ssim": ("ssim", "higher", None),
                 "psnr": ("psnr", "higher", None), "flicker": ("flicker", "higher", None),
                 "dynamic_degree": ("dynamic", "higher", None)},
    "motion": {"motion_fidelity": ("motion_fidelity", "higher", None),
               "direction_cosine": ("direction_cosine", "higher", None)},
    "physics": {"physics_rms": ("physics_rms", "lower", None)},
    "seams": {"seam_score": ("seam_score", "closer", 1.0)},
}
# Set metrics: name -> (detector spec name in vmt.metrics.detectors, the request field naming its file).
SET_METRICS = {"fvd": ("I3D", "i3d"), "fid": ("INCEPTION", "inception")}
COST_KEYS = ("nfe", "dit_forward", "dit_backward")

# progress(done, total, info): after each video pair is scored.
Progress = Callable[[int, int, dict[str, str]], None]


@dataclass
class Item:
    """One job's output in one set: its pairing key, its bootstrap group, the video, its reference, its
    sidecar (None when there is none)."""

    key: str
    group: str
    video: Path
    reference: Path | None = None
    sidecar: dict | None = None


def _sidecar(video: Path) -> dict | None:
    path = video.with_suffix(".json")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_set(path: Path, name: str) -> dict[str, Item]:
    """The outputs of one side: a batch's manifest (a folder holding manifest.jsonl, or the file) paired by
    (prompt, seed, reference file name), or a folder of videos paired by file name. Raises VmtUsageError
    naming the side and the job when a job is not done or a path is missing."""
    from vmt.batch import DONE_STATUSES
    from vmt.io.video import VIDEO_SUFFIXES

    path = Path(path).expanduser()
    if not path.exists():
        raise VmtUsageError(f"{param(name)} {path} not found; give a batch output folder, its manifest.jsonl "
                            "or a folder of videos")
    manifest = path / MANIFEST if path.is_dir() else path
    items: dict[str, Item] = {}
    if manifest.is_file():
        for lineno, raw in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            row = json.loads(raw) if raw.strip() else {}
            if "batch" in row or not row:
                continue
            where = f"{param(name)} {manifest} line {lineno}"
            if row.get("status") not in DONE_STATUSES:
                raise VmtUsageError(f"{where}: job {row.get('job')} ({row.get('output')}) is "
                                    f"{row.get('status')}; finish the batch (run it again) before comparing")
            video = manifest.parent / row["output"]
            ref = row.get("reference")
            key = json.dumps([row.get("prompt"), row.get("seed"), Path(ref).name if ref else None])
            if key in items:
                raise VmtUsageError(f"{where}: the job (prompt, seed, reference) {key} appears twice; pairs "
                                    "must be one-to-one")
            items[key] = Item(key, str(row.get("prompt") or Path(ref or video).name), video,
                              None if ref is None else manifest.parent / ref, _sidecar(video))
        return items
    if not path.is_dir():
        raise VmtUsageError(f"{param(name)} {path} is neither a folder nor a manifest.jsonl")
    for video in sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES
                        and not p.name.startswith(".")):
        side = _sidecar(video)
        prompt = ((side or {}).get("params") or {}).get("prompt")
        items[video.name] = Item(video.name, str(prompt or video.stem), video, None, side)
    if not items:
        raise VmtUsageError(f"{param(name)} {path} holds no videos and no {MANIFEST}")
    return items


def pair_sets(a: dict[str, Item], b: dict[str, Item]) -> list[tuple[Item, Item]]:
    """Items of A and B with the same key, in A's order; any job on one side only is an error naming it."""
    only_a, only_b = [k for k in a if k not in b], [k for k in b if k not in a]
    if only_a or only_b:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        parts = ([f"only in {param('a')}: {some(only_a)}"] if only_a else []) + \
                ([f"only in {param('b')}: {some(only_b)}"] if only_b else [])
        raise VmtUsageError(f"the two sets are not the same jobs ({'; '.join(parts)}); compare outputs of one "
                            "job file, or folders with the same file names")
    return [(a[k], b[k]) for k in a]


def _cost(item: Item) -> dict[str, float]:
    side = item.sidecar or {}
    compute, timings = side.get("compute") or {}, side.get("timings_s") or {}
    out = {k: float(compute[k]) for k in COST_KEYS if isinstance(compute.get(k), (int, float))}
    seconds = [v for k, v in timings.items() if k != "load" and isinstance(v, (int, float))]
    if seconds:
        out["seconds"] = float(sum(seconds))
    return out


@dataclass
class CompareRequest:
    """A `vmt compare` run. `a`, `b`: the two sets; `references`: a folder of reference videos paired by file
    name (motion metrics; a transfer batch's manifest names its own); `metrics`: families, comma-separated
    (temporal, motion, physics, seams) or "auto" (temporal, plus motion where there are references); `i3d`,
    `inception`: detector files that add FVD, FID (set metrics against the references)."""

    a: Path | None = None
    b: Path | None = None
    references: Path | None = None
    metrics: str = text("auto", "metric families: auto or temporal,motion,physics,seams")
    gate: list[str] | None = None  # metrics on which A must not be detectably worse than B
    clip_length: int | None = number(None, AT_LEAST_1, "frames per clip of a chained video (seams)")
    max_frames: int | None = number(None, Range(2), "frames of each video read")
    resamples: int = number(10_000, Range(100, 1_000_000), "bootstrap resamples")
    level: float = number(0.95, Range(0.5, 1, hi_open=True), "confidence level of the interval")
    seed: int = number(0, Range(0, 2**32 - 1), "seed of the bootstrap")
    html_videos: int = number(3, Range(0, 3), "pairs shown as side-by-side videos in the HTML report")
    i3d: Path | None = None  # the I3D TorchScript file: adds FVD against the references
    inception: Path | None = None  # the Inception TorchScript file: adds per-frame FID against the references
    set_resamples: int = number(200, Range(20, 100_000), "bootstrap resamples of the set metrics (FVD, FID)")
    device: str = "auto"

    def families(self, with_references: bool) -> list[str]:
        if self.metrics.strip() == "auto":
            return ["temporal", "motion"] if with_references else ["temporal"]
        names = [m.strip() for m in self.metrics.split(",") if m.strip()]
        bad = [m for m in names if m not in FAMILIES]
        if bad or not names:
            raise VmtUsageError(f"{param('metrics')} {self.metrics!r}: use auto or a comma-separated list of "
                                f"{', '.join(FAMILIES)}")
        return names

    def check(self) -> None:
        """Values only (no video is read)."""
        check_fields(self)
        for name in ("a", "b"):
            if getattr(self, name) is None:
                raise VmtUsageError(f"{param(name)} is missing; give two sets of outputs to compare")
        families = self.families(True)
        if "seams" in families and self.clip_length is None:
            raise VmtUsageError(f"the seams metric needs {param('clip_length')} (frames per clip)")
        known = {m for f in FAMILIES.values() for m in f} | set(SET_METRICS)
        for g in self.gate or ():
            if g not in known:
                raise VmtUsageError(f"{param('gate')} {g!r} is not a metric compare reports; use one of "
                                    f"{', '.join(sorted(known))}")
            if g in SET_METRICS and getattr(self, SET_METRICS[g][1]) is None:
                raise VmtUsageError(f"{param('gate')} {g} needs its detector: give {param(SET_METRICS[g][1])}")
        if self.set_metric_names() and self.references is None:
            raise VmtUsageError(f"FVD and FID measure each set against real videos: give {param('references')} "
                                "(a folder of reference videos paired by file name)")
        from vmt.metrics import detectors as D

        for name in self.set_metric_names():  # a missing detector fails before any video is scored
            spec_name, field_name = SET_METRICS[name]
            D.find_detector(getattr(D, spec_name), getattr(self, field_name))

    def set_metric_names(self) -> list[str]:
        return [name for name, (_, field_name) in SET_METRICS.items() if getattr(self, field_name) is not None]

    def pairs(self) -> list[tuple[Item, Item]]:
        """The paired items, with references from the manifests or the references folder."""
        pairs = pair_sets(read_set(self.a, "a"), read_set(self.b, "b"))
        if self.references is not None:
            folder = Path(self.references).expanduser()
            if not folder.is_dir():
                raise VmtUsageError(f"{param('references')} {folder} is not a folder of videos")
            for ia, ib in pairs:
                ref = folder / ia.video.name
                if not ref.is_file():
                    raise VmtUsageError(f"{param('references')}: no {ref.name} in {folder} for {ia.video}")
                ia.reference = ib.reference = ref
        return pairs

    def score(self, item: Item, families: list[str]) -> dict[str, float]:
        """The per-video metrics of one output (NaN where a metric has no value for it)."""
        from vmt.metrics import motion, physics, seams, temporal

        rows: dict[str, Any] = {}
        if "temporal" in families:
            rows.update(temporal.score_video(item.video, max_frames=self.max_frames))
        if "motion" in families:
            rows.update(motion.score_pair(item.reference, item.video, max_frames=self.max_frames))
        if "physics" in families:
            rows.update(physics.score_video(item.video, max_frames=self.max_frames))
        if "seams" in families:
            rows.update(seams.score_video(item.video, clip_length=self.clip_length, max_frames=self.max_frames))
        out = {}
        for fam in families:
            for name, (key, _, _) in FAMILIES[fam].items():
                v = rows.get(key)
                out[name] = float(v) if isinstance(v, (int, float, bool)) and v is not None else float("nan")
        return out

    def set_metrics(self, pairs: list[tuple[Item, Item]], groups: list[str]) -> dict[str, Any]:
        """FVD / FID of both sets against the references (each reference once), compared by
        vmt.metrics.paired.compare_set_metric."""
        import numpy as np

        from vmt.metrics import detectors as D
        from vmt.metrics.paired import compare_set_metric
        from vmt.runtime import resolve_device

        out: dict[str, Any] = {}
        refs = list(dict.fromkeys(ia.reference for ia, _ in pairs))
        for name in self.set_metric_names():
            spec_name, field_name = SET_METRICS[name]
            det = D.load_detector(getattr(D, spec_name), getattr(self, field_name), str(resolve_device(self.device)))
            options = {"max_frames": self.max_frames} if name == "fid" else {}
            cache: dict[Path, np.ndarray] = {}

            def features(path: Path, det=det, name=name, options=options, cache=cache) -> np.ndarray:
                key = Path(path).resolve()
                if key not in cache:  # once per video, however many sides or resamples use it
                    cache[key] = D.video_features(path, det, name, **options)
                return cache[key]

            fa = [features(ia.video) for ia, _ in pairs]
            fb = [features(ib.video) for _, ib in pairs]
            reference = np.concatenate([features(r) for r in refs])
            try:
                out[name] = compare_set_metric(fa, fb, reference, groups, resamples=self.set_resamples,
                                               level=self.level, seed=self.seed).as_dict()
            except ValueError as e:
                out[name] = {"better": "lower", "kind": "set", "pairs": len(pairs), "verdict": "no_difference",
                             "ci": None, "note": str(e)}
            out[name]["detector"] = str(det.path)
        return out

    def run(self, json_out: str | Path | None = None, *, html_out: str | Path | None = None,
            progress: Progress | None = None, overwrite: bool = False,
            command: list[str] | None = None, debug: bool = False) -> dict[str, Any]:
        """Score every pair, compare every metric, and return the report (schema vmt.compare/1); write it to
        `json_out` atomically when given, and its page (vmt.html_report.compare_html: plots, thumbnails,
        `html_videos` side-by-side videos) to `html_out`; the two appear together. The gate's outcome is
        `report["gate"]["passed"]`. A failure that is not a VmtError is raised as one (unless `debug`)."""
        from vmt.runs.eval import failures_as_errors

        with failures_as_errors(debug):
            return self._run(json_out, html_out, progress, overwrite, command)

    def _check_outputs(self, pairs: list[tuple[Item, Item]], json_out, html_out) -> None:
        """The report and its page are none of the files compare reads: videos, their sidecars (the cost),
        references, the manifests; whatever overwrite says (inputs are never replaced)."""
        from vmt.io.atomic import check_not_inputs

        outputs = {param(n): Path(p) for n, p in (("json_out", json_out), ("html_out", html_out))
                   if p is not None and str(p) != "-"}
        if not outputs:
            return
        inputs: dict[str, Path] = {}
        for side, (name, root) in enumerate((("a", self.a), ("b", self.b))):
            root = Path(root).expanduser()
            inputs[f"{param(name)} manifest"] = root / MANIFEST if root.is_dir() else root
            for i, pair in enumerate(pairs):
                item = pair[side]
                inputs[f"{param(name)} video {i + 1}"] = item.video
                inputs[f"{param(name)} sidecar {i + 1}"] = item.video.with_suffix(".json")
                if item.reference is not None:
                    inputs[f"reference {i + 1}"] = item.reference
        check_not_inputs(outputs, inputs)

    def _run(self, json_out, html_out, progress, overwrite, command) -> dict[str, Any]:
        import numpy as np

        from vmt.metrics.paired import compare_metric
        from vmt.metrics.report import clean
        from vmt.runtime import versions

        self.check()
        pairs = self.pairs()
        self._check_outputs(pairs, json_out, html_out)
        with_refs = all(ia.reference is not None for ia, _ in pairs)
        families = self.families(with_refs)
        if "motion" in families and not with_refs:
            raise VmtUsageError(f"motion metrics need references: give {param('references')} or compare "
                                "transfer batches (their manifests name each job's reference)")
        scored = []
        for i, (ia, ib) in enumerate(pairs):
            scored.append((self.score(ia, families), self.score(ib, families)))
            if progress is not None:
                progress(i + 1, len(pairs), {"video": ia.video.name})
        groups = [ia.group for ia, _ in pairs]
        metrics: dict[str, Any] = {}
        for fam in families:
            for name, (_, better, target) in FAMILIES[fam].items():
                a = [sa[name] for sa, _ in scored]
                b = [sb[name] for _, sb in scored]
                try:
                    metrics[name] = compare_metric(a, b, groups, better, target=target, resamples=self.resamples,
                                                   level=self.level, seed=self.seed).as_dict()
                except ValueError:
                    metrics[name] = {"better": better, "pairs": 0, "verdict": "no_difference", "ci": None,
                                     "note": "no pair has a value for both"}
        if self.set_metric_names():
            metrics.update(self.set_metrics(pairs, groups))
        cost = {}
        for side, idx in (("a", 0), ("b", 1)):
            costs = [_cost(p[idx]) for p in pairs]
            cost[side] = {k: float(np.mean([c[k] for c in costs])) for k in (*COST_KEYS, "seconds")
                          if costs and all(k in c for c in costs)}
        ratios = {k: cost["a"][k] / cost["b"][k] for k in cost["a"] if cost["b"].get(k)}
        failed = [g for g in (self.gate or ()) if metrics.get(g, {}).get("verdict") == "b_better"]
        report = clean({
            "schema": SCHEMA, "command": command or ["vmt.CompareRequest.run"],
            "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()},
            "pairs": len(pairs), "groups": len(set(groups)), "families": families, "metrics": metrics,
            "cost": {**cost, "a_over_b": ratios}, "versions": versions(),
            "gate": {"metrics": list(self.gate or ()), "failed": failed, "passed": not failed},
            "items": [{"key": ia.key, "group": ia.group, "a": str(ia.video), "b": str(ib.video),
                       "reference": None if ia.reference is None else str(ia.reference), "a_metrics": sa,
                       "b_metrics": sb} for (ia, ib), (sa, sb) in zip(pairs, scored, strict=True)],
        })
        # The page first (it encodes videos in temporary folders), then both files in one commit.
        page = None
        if html_out is not None:
            from vmt.html_report import compare_html

            page = compare_html(report, videos=self.html_videos)
        if json_out is not None or page is not None:
            from vmt.html_report import write_html
            from vmt.io.atomic import atomic_path, commit_together

            with commit_together():
                if json_out is not None:
                    with atomic_path(Path(json_out), replace=overwrite) as tmp:
                        tmp.write_text(json.dumps(report, indent=2) + "\n")
                if page is not None:
                    write_html(html_out, page, overwrite=overwrite)
        return report


__all__ = ["CompareRequest", "FAMILIES", "SCHEMA"]
