"""USB/UVC cameras (and video files) through cv2.VideoCapture."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .base import Camera, CameraConfig, CameraError, CameraFault, Frame

log = logging.getLogger(__name__)


@dataclass
class OpenCVCameraConfig(CameraConfig):
    """``device``: an index (0), a path (/dev/video2, /dev/v4l/by-id/...), or a video file.

    A video file is played at ``fps`` (or its own rate) and, unless ``loop``, ends: the camera
    then faults like an unplugged one. That is how tests exercise the fault path.
    """

    device: int | str = 0
    fourcc: str | None = None  # e.g. "MJPG" for high-resolution UVC modes
    loop: bool = False  # video files: start over at the end
    warmup_s: float = 0.0  # frames read and discarded after opening (auto exposure settles)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "opencv"
        if isinstance(self.device, str) and self.device.isdigit():
            self.device = int(self.device)
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise ValueError(f"camera {self.name!r}: fourcc must be 4 characters, got {self.fourcc!r}")


class OpenCVCamera(Camera):
    config: OpenCVCameraConfig

    def __init__(self, config: OpenCVCameraConfig) -> None:
        super().__init__(config)
        self._cap: cv2.VideoCapture | None = None
        self._is_file = False
        self._period = 0.0
        self._next_due = 0.0

    def describe(self) -> str:
        return f"OpenCV device {self.config.device!r}"

    def _open(self) -> None:
        cfg = self.config
        dev = cfg.device
        self._is_file = isinstance(dev, str) and Path(dev).is_file() and not dev.startswith("/dev/")
        if isinstance(dev, str) and not self._is_file and not Path(dev).exists():
            raise CameraError(
                f"camera {self.name!r}: {dev} does not exist; check the USB cable and `ls /dev/v4l/by-id/`"
            )
        cap = cv2.VideoCapture(dev) if self._is_file else cv2.VideoCapture(dev, cv2.CAP_ANY)
        if not cap.isOpened():
            cap.release()
            raise CameraError(
                f"camera {self.name!r}: cannot open OpenCV device {dev!r}; check that it is plugged in, "
                "not used by another program, and that this user may read /dev/video*"
            )
        if not self._is_file:
            if cfg.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
            if cfg.width is not None:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            if cfg.fps is not None:
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        fps = cfg.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
        self._period = 1.0 / fps if self._is_file else 0.0  # files are paced; devices block on their own
        self._next_due = time.monotonic()
        self._cap = cap
        end = time.monotonic() + cfg.warmup_s
        while time.monotonic() < end:
            cap.read()

    def _grab(self, timeout_s: float) -> Frame | None:
        assert self._cap is not None
        if self._period:
            wait = self._next_due - time.monotonic()
            if wait > timeout_s:
                time.sleep(timeout_s)
                return None
            if wait > 0:
                time.sleep(wait)
            self._next_due = max(self._next_due + self._period, time.monotonic() - self._period)
        ok, bgr = self._cap.read()
        stamp = time.monotonic()
        if not ok and self._is_file and self.config.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CameraFault(f"camera {self.name!r}: {self.describe()} returned no frame (unplugged or end of file)")
        cfg = self.config
        if cfg.width is not None and (bgr.shape[1], bgr.shape[0]) != (cfg.width, cfg.height):
            # A device that ignores the requested mode must not feed the policy a different size silently.
            raise CameraError(
                f"camera {self.name!r}: delivers {bgr.shape[1]}x{bgr.shape[0]}, configured {cfg.width}x{cfg.height}; "
                "pick a mode the device supports (v4l2-ctl --list-formats-ext)"
            )
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return self._gate.accept(np.ascontiguousarray(rgb), stamp)

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
