"""Weight-free keypoints from video: Shi-Tomasi corners tracked by pyramidal Lucas-Kanade (opencv).

Positions are returned in [-1, 1] (FOMM's convention: x = 2 * col / (W - 1) - 1). With `jacobian=True`
each keypoint also tracks two satellite points `offset` pixels to its right and below; the 2x2 matrix
mapping the first frame's offsets to the current ones is a local affine estimate in the spirit of FOMM's
jacobians (relative to the first frame). Lost points keep their last position.
"""

from __future__ import annotations

import numpy as np

from vmt.errors import VmtError


def _cv2():
    try:
        import cv2
    except ImportError as e:
        raise VmtError("video input needs opencv-python-headless: install the keypoints extra of vmt") from e
    return cv2


def track_keypoints(frames: np.ndarray, num_kp: int = 10, jacobian: bool = True, offset: float = 6.0,
                    min_distance: int = 12) -> tuple[np.ndarray, np.ndarray | None]:
    """frames (T, H, W, 3) uint8 -> positions (T, K, 2) in [-1, 1] and jacobians (T, K, 2, 2) or None."""
    cv2 = _cv2()
    t, h, w = frames.shape[:3]
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    pts = cv2.goodFeaturesToTrack(grays[0], maxCorners=num_kp, qualityLevel=0.01, minDistance=min_distance)
    if pts is None or len(pts) < num_kp:
        found = 0 if pts is None else len(pts)
        raise VmtError(f"found {found} trackable corners in the first frame, need {num_kp}; "
                       "use a more textured video or fewer keypoints")
    base = pts.reshape(-1, 2).astype(np.float32)
    if jacobian:
        sat = np.concatenate([base, base + [offset, 0], base + [0, offset]]).astype(np.float32)
    else:
        sat = base
    track = np.empty((t, len(sat), 2), np.float32)
    track[0] = sat
    lk = {"winSize": (21, 21), "maxLevel": 3,
          "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)}
    for i in range(1, t):
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(grays[i - 1], grays[i], track[i - 1].reshape(-1, 1, 2), None, **lk)
        ok = st.reshape(-1).astype(bool)
        track[i] = np.where(ok[:, None], nxt.reshape(-1, 2), track[i - 1])
    k = num_kp
    scale = np.array([2 / (w - 1), 2 / (h - 1)], np.float32)
    pos = track[:, :k] * scale - 1
    if not jacobian:
        return pos, None
    d_now = np.stack([track[:, k : 2 * k] - track[:, :k], track[:, 2 * k :] - track[:, :k]], axis=-1)  # (T,K,2,2)
    d_ref = np.array([[offset, 0], [0, offset]], np.float32)  # columns: the two first-frame offsets
    jac = d_now @ np.linalg.inv(d_ref)
    return pos.astype(np.float32), jac.astype(np.float32)
