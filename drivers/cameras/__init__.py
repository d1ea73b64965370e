"""Cameras: one interface (connect / read_latest / disconnect), a config dataclass per kind, a factory.

    cam = make_camera(OpenCVCameraConfig(name="head", device=0))
    cam.connect(); frame = cam.read_latest(max_age_s=0.2); cam.disconnect()

A missing device is a CameraError at connect; a stale or frozen one a CameraFault while running.
"""

from __future__ import annotations

from typing import Any

from .base import Camera, CameraConfig, CameraError, CameraFault, Frame, FrameGate, check_fresh
from .opencv import OpenCVCamera, OpenCVCameraConfig
from .realsense import RealSenseCamera, RealSenseCameraConfig
from .sim import SimCamera, SimCameraConfig
from .zmq_stream import ImageStreamPublisher, ZmqCamera, ZmqCameraConfig

_KINDS: dict[str, tuple[type[CameraConfig], type[Camera]]] = {
    "realsense": (RealSenseCameraConfig, RealSenseCamera),
    "opencv": (OpenCVCameraConfig, OpenCVCamera),
    "zmq": (ZmqCameraConfig, ZmqCamera),
    "sim": (SimCameraConfig, SimCamera),
}


def make_camera(config: CameraConfig) -> Camera:
    """The camera for a config object (RealSenseCameraConfig -> RealSenseCamera, ...)."""
    for cfg_type, cam_type in _KINDS.values():
        if type(config) is cfg_type:
            return cam_type(config)  # type: ignore[arg-type]
    raise TypeError(f"no camera for config type {type(config).__name__}; known: {[c.__name__ for c, _ in _KINDS.values()]}")


def camera_config(kind: str, **fields: Any) -> CameraConfig:
    """A config from a kind name and fields, e.g. from deploy.yaml: camera_config("sim", name="head", endpoint=...)."""
    try:
        cfg_type = _KINDS[kind][0]
    except KeyError:
        raise ValueError(f"unknown camera kind {kind!r}; known: {sorted(_KINDS)}") from None
    try:
        return cfg_type(**fields)
    except TypeError as e:
        raise ValueError(f"camera kind {kind!r}: {e}") from e


__all__ = [
    "Camera",
    "CameraConfig",
    "CameraError",
    "CameraFault",
    "Frame",
    "FrameGate",
    "ImageStreamPublisher",
    "OpenCVCamera",
    "OpenCVCameraConfig",
    "RealSenseCamera",
    "RealSenseCameraConfig",
    "SimCamera",
    "SimCameraConfig",
    "ZmqCamera",
    "ZmqCameraConfig",
    "camera_config",
    "check_fresh",
    "make_camera",
]  # fmt: skip
