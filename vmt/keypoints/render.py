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
