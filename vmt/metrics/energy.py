"""Energy distance (exponent 1) between two samples of vectors, float64.

    D = 2 E|X - Y| - E|X - X'| - E|Y - Y'|      (Euclidean norms)

V-statistic: every within-sample pair, including a point with itself, enters the means (divide by n^2);
it is >= 0 and equals 2 * integral (F_n - G_m)^2 in one dimension. U-statistic: the within-sample means skip
the diagonal (divide by n(n-1)); unbiased, can be slightly negative.
"""

from __future__ import annotations

import numpy as np

from vmt.errors import VmtError

STATISTICS = ("V", "U")


def _scipy_distance():
    try:
        from scipy.spatial import distance
    except ImportError as e:  # pragma: no cover - scipy is in the metrics extra
        raise VmtError("energy distance needs scipy: pip install 'vmt[metrics]'") from e
    return distance


def _mean_dist(a: np.ndarray, b: np.ndarray) -> float:
    cdist = _scipy_distance().cdist

    return float(cdist(a, b).mean())


def _within(a: np.ndarray, statistic: str) -> float:
    pdist = _scipy_distance().pdist
    n = len(a)
    if n < 2:
        return 0.0
    total = 2.0 * pdist(a).sum()  # sum over ordered pairs i != j
    return total / (n * n) if statistic == "V" else total / (n * (n - 1))


def energy_distance(x: np.ndarray, y: np.ndarray, *, statistic: str = "V") -> float:
    """Energy distance between samples x (N, D) and y (M, D); statistic "V" (default) or "U"."""
    if statistic not in STATISTICS:
        raise VmtError(f"unknown energy statistic {statistic!r}; use 'V' or 'U'")
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise VmtError(f"energy distance needs (N, D) and (M, D) with the same D, got {a.shape} and {b.shape}")
    if statistic == "U" and (len(a) < 2 or len(b) < 2):
        raise VmtError("the U-statistic needs at least 2 samples on each side")
    return 2.0 * _mean_dist(a, b) - _within(a, statistic) - _within(b, statistic)
