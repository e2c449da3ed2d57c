"""Drawing forecasts: predicted keypoints over the last context frame (opencv), one video frame per step."""

from __future__ import annotations

import numpy as np

from vmt.keypoints.tracker import _cv2


def to_pixels(pos: np.ndarray, height: int, width: int) -> np.ndarray:
    """[-1, 1] positions (..., 2) as (x, y) -> pixel coordinates."""
    return (pos + 1) / 2 * np.array([width - 1, height - 1])


def _colour(k: int, num: int) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(k / max(num, 1), 0.85, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def draw_forecast(frame: np.ndarray | None, last_context: np.ndarray, samples: np.ndarray,
                  max_samples: int = 20, size: int = 256) -> np.ndarray:
    """One frame per predicted step: (H, N, K, 2) samples in [-1, 1] over `frame` (h, w, 3) uint8 (or a grey
    canvas). Samples are small dots in each keypoint's colour, their mean a ring, the last context frame's
    keypoints white crosses. Returns (H, h, w, 3) uint8."""
    cv2 = _cv2()
    if frame is None:
        frame = np.full((size, size, 3), 60, np.uint8)
    h, w = frame.shape[:2]
    k = samples.shape[2]
    out = []
    ctx_px = to_pixels(last_context, h, w)
    for step in range(samples.shape[0]):
        img = frame.copy()
        for kp in range(k):
            cx, cy = (round(float(v)) for v in ctx_px[kp])
            cv2.drawMarker(img, (cx, cy), (255, 255, 255), cv2.MARKER_CROSS, 8, 1)
        pts = to_pixels(samples[step, :max_samples], h, w)
        for kp in range(k):
            col = _colour(kp, k)
            for s in pts[:, kp]:
                cv2.circle(img, (round(float(s[0])), round(float(s[1]))), 2, col, -1, lineType=cv2.LINE_AA)
            mx, my = to_pixels(samples[step, :, kp].mean(0), h, w)
            cv2.circle(img, (round(float(mx)), round(float(my))), 5, col, 1, lineType=cv2.LINE_AA)
        cv2.putText(img, f"+{step + 1}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(img)
    return np.stack(out)


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2, with U(0) = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-300)), 0.0)


def tps_map(src: np.ndarray, dst: np.ndarray, query: np.ndarray, reg: float = 1e-3) -> np.ndarray:
    """Thin-plate spline through control points src (n, 2) -> dst (n, 2), evaluated at query (m, 2).

    Float64; `reg` is a small smoothing term on the kernel's diagonal. An affine src -> dst is reproduced exactly.
    """
    src, dst, query = (a.astype(np.float64) for a in (src, dst, query))
    n = len(src)
    kmat = _tps_kernel(((src[:, None] - src[None]) ** 2).sum(-1)) + reg * np.eye(n)
    p = np.concatenate([np.ones((n, 1)), src], 1)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n], a[:n, n:], a[n:, :n] = kmat, p, p.T
    b = np.zeros((n + 3, 2))
    b[:n] = dst
    coef = np.linalg.lstsq(a, b, rcond=None)[0]
    kq = _tps_kernel(((query[:, None] - src[None]) ** 2).sum(-1))
    return kq @ coef[:n] + np.concatenate([np.ones((len(query), 1)), query], 1) @ coef[n:]


def warp_preview(frame: np.ndarray, last_context: np.ndarray, future: np.ndarray, anchors: bool = True) -> np.ndarray:
    """Weight-free preview: warp `frame` (h, w, 3) so that its keypoints `last_context` (K, 2) in [-1, 1] move to
    each future position `future` (H, K, 2). Backward thin-plate-spline map + bilinear remap; with `anchors`
    the frame's corners and edge midpoints stay put. Returns (H, h, w, 3) uint8."""
    cv2 = _cv2()
    h, w = frame.shape[:2]
    ctx_px = to_pixels(last_context, h, w)
    fixed = np.array([[x, y] for x in (0, (w - 1) / 2, w - 1) for y in (0, (h - 1) / 2, h - 1)
                      if not (x == (w - 1) / 2 and y == (h - 1) / 2)])
    yy, xx = np.mgrid[0:h, 0:w]
    grid = np.stack([xx.ravel(), yy.ravel()], 1).astype(np.float64)
    out = []
    for step in range(len(future)):
        fut_px = to_pixels(future[step], h, w)
        src, dst = fut_px, ctx_px          # output pixel (future frame) -> where to read in the source frame
        if anchors:
            src, dst = np.concatenate([src, fixed]), np.concatenate([dst, fixed])
        m = tps_map(src, dst, grid).astype(np.float32).reshape(h, w, 2)
        out.append(cv2.remap(frame, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return np.stack(out)
