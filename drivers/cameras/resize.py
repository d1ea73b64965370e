"""The one image resize of the project: area averaging to the policy's input size (OpenCV, no torch).

Training (policy/data.py), the policy's own preprocessing (policy/inference.py) and the robot's
controller (runtime/observation.py, before a frame goes on the wire) all call this, so the model sees
the same pixels whichever side shrank the frame. Frames already at the size pass through untouched.
"""

from __future__ import annotations

import cv2
import numpy as np


def area_resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (..., H, W, 3) -> uint8 (..., h, w, 3) with ``size = (h, w)``, area-averaged."""
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"resize size must be positive (height, width), got {size}")
    if frames.shape[-3:-1] == (h, w):
        return np.ascontiguousarray(frames)
    lead = frames.shape[:-3]
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in flat])
    return out.reshape(*lead, h, w, frames.shape[-1])
