"""Paired comparison of two methods on the same jobs: per-pair differences, a cluster bootstrap confidence
interval of their mean, the win rate, and a verdict.

Jobs that share a prompt are not independent (one prompt's videos are alike whichever seed made them), so the
bootstrap resamples whole groups (prompts) with replacement, not single pairs: with correlated pairs inside a
group, a per-pair bootstrap would give intervals that are too narrow and verdicts that flap.

    c = compare_metric(a, b, groups, better="higher")    # a, b: (N,) values of the same N jobs
    c.verdict   # "a_better" | "no_difference" | "b_better"
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
