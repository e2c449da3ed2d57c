"""Paired comparison of two methods on the same jobs: per-pair differences, a cluster bootstrap confidence
interval of their mean, the win rate, and a verdict.

Jobs that share a prompt are not independent (one prompt's videos are alike whichever seed made them), so the
bootstrap resamples whole groups (prompts) with replacement, not single pairs: with correlated pairs inside a
group, a per-pair bootstrap would give intervals that are too narrow and verdicts that flap.

    c = compare_metric(a, b, groups, better="higher")    # a, b: (N,) values of the same N jobs
    c.verdict   # "a_better" | "no_difference" | "b_better"

Set metrics (FVD, FID) have no per-pair value: compare_set_metric measures each side's set against one fixed
reference set, and resamples the same prompt groups on both sides to get an interval of the difference.

    c = compare_set_metric(a_feats, b_feats, ref_feats, groups)   # per job: detector features (n_i, D)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

VERDICTS = ("a_better", "no_difference", "b_better")
DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95


def goodness(values: np.ndarray, better: str, target: float | None = None) -> np.ndarray:
    """Values turned so that larger is better: x ("higher"), -x ("lower"), -|x - target| ("closer")."""
    v = np.asarray(values, dtype=np.float64)
    if better == "higher":
        return v
    if better == "lower":
        return -v
    if better == "closer":
        return -np.abs(v - float(target))
    raise ValueError(f"better must be higher, lower or closer, got {better!r}")


def cluster_bootstrap(diffs: np.ndarray, groups: Sequence[Hashable], *, resamples: int = DEFAULT_RESAMPLES,
                      level: float = DEFAULT_LEVEL, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of `diffs` (N,), resampling the groups with replacement; each resample
    is the mean over all pairs of the drawn groups (a group drawn twice counts twice). Deterministic by seed."""
    diffs = np.asarray(diffs, dtype=np.float64)
    labels, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    k = len(labels)
    sums = np.bincount(index, weights=diffs, minlength=k)  # per group: sum of its differences and its size
    sizes = np.bincount(index, minlength=k).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // max(k, 1))  # bounded memory for many groups
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        counts = np.stack([np.bincount(row, minlength=k) for row in rng.integers(0, k, size=(n, k))])
        means[start:start + n] = (counts @ sums) / (counts @ sizes)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def win_rate(diffs: np.ndarray) -> float:
    """Share of pairs where A is better; ties count half."""
    d = np.asarray(diffs, dtype=np.float64)
    return float((np.sum(d > 0) + 0.5 * np.sum(d == 0)) / len(d))


def verdict_of(ci: tuple[float, float]) -> str:
    """A better when the whole interval is above 0, B better when it is below, else no detectable difference."""
    lo, hi = ci
    if lo > 0:
        return "a_better"
    if hi < 0:
        return "b_better"
    return "no_difference"


@dataclass
class MetricComparison:
    """One metric over N pairs. `mean_difference` and `ci` are in the metric's own units, oriented so that a
    positive value favours A (goodness(A) - goodness(B)); `a_mean`, `b_mean` are the plain means."""

    better: str
    pairs: int
    groups: int
    a_mean: float
    b_mean: float
    mean_difference: float
    ci: tuple[float, float]
    win_rate: float
    verdict: str
    level: float

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def compare_metric(a: Sequence[float], b: Sequence[float], groups: Sequence[Hashable], better: str, *,
                   target: float | None = None, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                   seed: int = 0) -> MetricComparison:
    """Compare paired values of A and B (the same job at index i); pairs where either is NaN are left out.
    Raises ValueError when no pair is left."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.any():
        raise ValueError("no pair has a value for both")
    a, b = a[keep], b[keep]
    groups = [g for g, k in zip(groups, keep, strict=True) if k]
    d = goodness(a, better, target) - goodness(b, better, target)
    ci = cluster_bootstrap(d, groups, resamples=resamples, level=level, seed=seed)
    return MetricComparison(better, int(len(d)), len(set(map(str, groups))), float(a.mean()), float(b.mean()),
                            float(d.mean()), ci, win_rate(d), verdict_of(ci), level)


DEFAULT_SET_RESAMPLES = 200


@dataclass
class SetMetricComparison:
    """A distance to a reference set (lower is better) for A's and B's whole sets. `difference` and `ci`
    are oriented so that a positive value favours A (b_value - a_value); there is no per-pair win rate."""

    better: str
    pairs: int
    groups: int
    a_value: float
    b_value: float
    difference: float
    ci: tuple[float, float]
    verdict: str
    level: float
    resamples: int
    reference_samples: int
    kind: str = "set"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def compare_set_metric(a: Sequence[np.ndarray], b: Sequence[np.ndarray], reference: np.ndarray,
                       groups: Sequence[Hashable], *, resamples: int = DEFAULT_SET_RESAMPLES,
                       level: float = DEFAULT_LEVEL, seed: int = 0) -> SetMetricComparison:
    """Frechet distance of A's features and of B's features to the reference features, and a percentile
    interval of their difference: each resample draws the prompt groups with replacement, takes the same
    draw on both sides (a group drawn twice counts twice), and recomputes both distances (the reference is
    held fixed). a[i], b[i]: the features (n_i, D) of job i on each side. Raises ValueError with fewer than 2
    groups (nothing to resample)."""
    from vmt.metrics.frechet import frechet_distance_features, frechet_to_reference, reference_fit

    if len(a) != len(b) or len(a) != len(groups):
        raise ValueError("a, b and groups must have one entry per job")
    labels, index = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    k = len(labels)
    if k < 2:
        raise ValueError("a set metric's interval needs at least 2 groups")
    members = [np.flatnonzero(index == g) for g in range(k)]
    ref = reference_fit(reference)
    a_value = frechet_distance_features(np.concatenate(a), reference)
    b_value = frechet_distance_features(np.concatenate(b), reference)
    rng = np.random.default_rng(seed)
    diffs = np.empty(resamples)
    for r in range(resamples):
        jobs = np.concatenate([members[g] for g in rng.integers(0, k, size=k)])
        fa = frechet_to_reference(np.concatenate([a[i] for i in jobs]), ref)
        fb = frechet_to_reference(np.concatenate([b[i] for i in jobs]), ref)
        diffs[r] = fb - fa
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [alpha, 1.0 - alpha])
    ci = (float(lo), float(hi))
    return SetMetricComparison("lower", len(a), k, a_value, b_value, b_value - a_value, ci, verdict_of(ci), level,
                               resamples, int(len(reference)))
