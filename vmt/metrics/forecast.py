"""Metrics of stochastic forecasts (numpy, computed in float64).

Conventions: a "sample set" of one test window is (N, ...) predictions against one ground truth (...).
MAE and APD share units (mean absolute difference per element) so that APD/MAE is a pure ratio.
"""

from __future__ import annotations

import numpy as np


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| (exponent 1, Euclidean, V-statistic) between windows x (n, ...) and y (m, ...).

    Trailing dimensions are flattened; see `vmt.metrics.energy.energy_distance` (not square-rooted, unlike
    scipy.stats.energy_distance).
    """
    from vmt.metrics.energy import energy_distance as _energy

    return _energy(np.reshape(x, (len(x), -1)), np.reshape(y, (len(y), -1)), statistic="V")


def sample_mae(gt: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """Mean absolute error of each sample: gt (...), samples (N, ...) -> (N,)."""
    diff = np.abs(samples.astype(np.float64) - gt.astype(np.float64)[None])
    return diff.reshape(len(samples), -1).mean(1)


def best_k(gt: np.ndarray, samples: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """Keep the k samples with the lowest MAE; returns (their mean MAE, their indices ordered best first)."""
    if not 1 <= k <= len(samples):
        raise ValueError(f"k must be in 1..{len(samples)}, got {k}")
    mae = sample_mae(gt, samples)
    idx = np.argsort(mae, kind="stable")[:k]
    return float(mae[idx].mean()), idx


def apd(samples: np.ndarray) -> float:
    """Average pairwise distance: mean over pairs i != j of the mean absolute difference per element."""
    n = len(samples)
    if n < 2:
        return 0.0
    s = samples.reshape(n, -1).astype(np.float64)
    # Sum over pairs of sum_e |s_i,e - s_j,e| via sorting each element's column: O(n log n) per element.
    srt = np.sort(s, axis=0)
    coef = (2 * np.arange(n) - n + 1)[:, None]
    total = (coef * srt).sum()                    # sum over i<j of |s_i - s_j|, all elements
    return float(2 * total / (n * (n - 1) * s.shape[1]))


def ade_fde(gt: np.ndarray, samples: np.ndarray) -> tuple[float, float]:
    """Best-of-N average and final displacement errors: gt (H, K, 2), samples (N, H, K, 2) -> (ADE, FDE).

    Displacement is the Euclidean distance of each keypoint; ADE averages over frames and keypoints.
    The minima over samples are taken separately for ADE and FDE.
    """
    d = np.linalg.norm(samples.astype(np.float64) - gt.astype(np.float64)[None], axis=-1)  # (N, H, K)
    return float(d.mean(axis=(1, 2)).min()), float(d[:, -1].mean(axis=1).min())


def crps(gt: np.ndarray, samples: np.ndarray) -> float:
    """Sample CRPS averaged over elements: E|X - y| - 0.5 E|X - X'| (X' pairs over all N^2, V-statistic)."""
    n = len(samples)
    s = samples.reshape(n, -1).astype(np.float64)
    y = gt.reshape(-1).astype(np.float64)
    term1 = np.abs(s - y[None]).mean(0)
    srt = np.sort(s, axis=0)
    coef = (2 * np.arange(n) - n + 1)[:, None]
    term2 = 2 * (coef * srt).sum(0) / (n * n)     # E|X - X'| over all N^2 pairs
    return float((term1 - 0.5 * term2).mean())


# ---------------------------------------------------------------- scoring `predict-keypoints run` output

def _window_errors(gt: np.ndarray, samples: np.ndarray) -> dict[str, float]:
    """Errors of samples (N, H, K, 2) against gt (H, K, 2): ADE/FDE as the mean over samples and the best
    of the N (each minimised separately), and the MAE per element of the best sample."""
    d = np.linalg.norm(samples.astype(np.float64) - gt.astype(np.float64)[None], axis=-1)  # (N, H, K)
    ade, fde = d.mean(axis=(1, 2)), d[:, -1].mean(axis=1)
    return {"ade_mean": float(ade.mean()), "ade_best": float(ade.min()), "fde_mean": float(fde.mean()),
            "fde_best": float(fde.min()), "mae": float(sample_mae(gt, samples).min())}


def baselines(truth: np.ndarray, start: int, horizon: int, damping: float | None = None) -> dict[str, np.ndarray]:
    """Deterministic forecasts of truth (T, K, 2) from the frames before `start`: zero velocity (the last
    context frame repeated), constant velocity (its last step extrapolated) and, given a `damping` d, damped
    velocity (that step times d + d^2 + ... + d^h); each (1, H, K, 2)."""
    last = truth[start - 1].astype(np.float64)
    vel = last - truth[start - 2].astype(np.float64)
    steps = np.arange(1, horizon + 1, dtype=np.float64)[:, None, None]
    out = {"zero_velocity": np.repeat(last[None], horizon, 0)[None],
           "constant_velocity": (last[None] + steps * vel[None])[None]}
    if damping is not None:
        from vmt.keypoints.baselines import velocity_steps

        context = truth[start - 2:start].astype(np.float64).reshape(1, 2, -1)     # (1, 2, K*2)
        steps = velocity_steps(context, horizon, damping)[0].reshape(horizon, *last.shape)
        out["damped_velocity"] = (last[None] + steps)[None]
    return out


def prefix_damping(truths: list[np.ndarray], starts: list[int], horizon: int) -> float | None:
    """The damped-velocity forecast's d, chosen (`baselines.fit_damping`, mean absolute error) on every window
    of 2 + `horizon` frames that ends before its sequence's forecast starts: frames a forecaster has seen, so
    the baseline knows nothing of the futures it is scored on. None when no sequence has such a window."""
    from vmt.keypoints.baselines import fit_damping

    length = 2 + horizon
    windows = [t[a:a + length].reshape(length, -1) for t, st in zip(truths, starts)
               for a in range(0, st - length + 1)]
    return fit_damping(np.stack(windows).astype(np.float64), 2) if windows else None


def load_forecast(pred_path) -> dict[str, np.ndarray]:
    """Read what `vmt predict-keypoints run` writes: names (S,), value (S, N, H, K, 2), context, horizon and
    start (S,): the truth frame index of each sequence's first forecast frame."""
    from vmt.errors import VmtUsageError

    try:
        data = np.load(pred_path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as e:
        raise VmtUsageError(f"{pred_path} is not a readable npz file ({type(e).__name__}: {e})") from e
    missing = [k for k in ("names", "value", "start") if k not in arrays]
    if "start" in missing and "names" in arrays and "value" in arrays:
        raise VmtUsageError(f"{pred_path} records no forecast window (no `start` array): it continues past the end "
                            "of its input, so there is no truth to score it against; rerun `vmt predict-keypoints "
                            "run ... --backtest` to forecast the last frames of each sequence (its horizon) "
                            "instead")
    if missing:
        raise VmtUsageError(f"{pred_path} lacks {', '.join(missing)}; give the .npz `vmt predict-keypoints run` "
                            "writes (names, value (S, N, H, K, 2), start)")
    v = arrays["value"]
    if v.ndim != 5 or v.shape[-1] != 2 or len(v) != len(arrays["names"]) or len(arrays["start"]) != len(v):
        raise VmtUsageError(f"{pred_path}: value {v.shape}, names {arrays['names'].shape}, start "
                            f"{arrays['start'].shape}; expected value (S, N, H, K, 2) with S names and S starts")
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise VmtUsageError(f"{pred_path}: value has dtype {v.dtype}; expected real positions (float)")
    if not np.issubdtype(arrays["start"].dtype, np.integer):
        raise VmtUsageError(f"{pred_path}: start has dtype {arrays['start'].dtype}; expected integer frame indices")
    # Refused as the truth file refuses them (vmt.keypoints.data.load_sequences): a NaN would otherwise vanish
    # in the minimum over samples or turn every mean into a NaN that the report writes as null.
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).reshape(len(v), -1).any(1).sum())
        raise VmtUsageError(f"{pred_path}: value has NaN or infinite entries in {bad} sequences; "
                            "rerun the forecast or drop those sequences first")
    return arrays


def evaluate_forecasts(truth_path, pred_path, k: int = 5) -> tuple[dict, list[dict]]:
    """Score a `predict-keypoints run` file against the keypoint file it forecast (positions only, in the
    file's coordinates). Returns (report metrics, per-sequence rows); metrics are means over windows, the
    energy distance (V-statistic) is between the set of true futures and the set of all samples."""
    from vmt.errors import VmtUsageError, param
    from vmt.keypoints.data import load_sequences

    seqs = load_sequences(truth_path)
    pred = load_forecast(pred_path)
    value = pred["value"]
    s_n, n, h, kp = value.shape[:4]
    if not 1 <= k <= n:
        raise VmtUsageError(f"{param('k')} must be between 1 and the {n} samples, got {k}")
    if kp != seqs.layout.num_kp:
        raise VmtUsageError(f"{pred_path} has {kp} keypoints, {truth_path} has {seqs.layout.num_kp}")
    index = {name: i for i, name in enumerate(seqs.names)}
    truths, starts = [], []
    for i, name in enumerate(str(x) for x in pred["names"]):
        if name not in index:
            raise VmtUsageError(f"sequence {name!r} of {pred_path} is not in {truth_path}")
        truths.append(seqs.layout.unflatten(seqs.flat[index[name]])[0])
        starts.append(st := int(pred["start"][i]))
        if st < 2 or st + h > len(truths[-1]):
            raise VmtUsageError(f"sequence {name!r}: the forecast covers frames {st}..{st + h - 1} but the truth "
                                f"has frames 0..{len(truths[-1]) - 1} (and 2 context frames are needed)")
    damping = prefix_damping(truths, starts, h)
    rows, gts, trivial = [], [], {}
    for i, (truth, st) in enumerate(zip(truths, starts)):
        gt, samples = truth[st:st + h], value[i]
        m = _window_errors(gt, samples)
        m["mae_best_k"], kept = best_k(gt, samples, k)
        m["apd"] = apd(samples[kept])
        for b, fc in baselines(truth, st, h, damping).items():
            e = _window_errors(gt, fc)
            m.update({f"{b}_ade": e["ade_mean"], f"{b}_fde": e["fde_mean"], f"{b}_mae": e["mae"]})
            trivial.setdefault(b, []).append(fc.reshape(-1))
        rows.append({"name": str(pred["names"][i]), "start": st, "metrics": m})
        gts.append(gt.reshape(-1))
    keys = [x for x in rows[0]["metrics"] if x != "mae"]
    metrics = {x: float(np.mean([r["metrics"][x] for r in rows])) for x in keys}
    metrics["apd_mae"] = metrics["apd"] / metrics["mae_best_k"] if metrics["mae_best_k"] > 0 else float("nan")
    gts_a = np.stack(gts)
    metrics["energy_distance"] = energy_distance(gts_a, value.reshape(s_n * n, -1))
    for b, fcs in trivial.items():
        metrics[f"{b}_energy_distance"] = energy_distance(gts_a, np.stack(fcs))
    if damping is not None:
        metrics["damped_velocity_damping"] = damping
    metrics.update(windows=s_n, samples=n, horizon=h)
    return metrics, rows
