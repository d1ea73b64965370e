"""Intel RealSense (the G1's head D435i, wrist D405s) through pyrealsense2.

Colour (RGB8) and optionally depth aligned to colour. ``connect`` selects the device by serial
number or name, starts the pipeline, discards frames for ``warmup_s`` (auto-exposure settles),
and retries: a plain restart first, then a USB hardware reset before the last attempt. A
background reader keeps the newest frame; frames whose frame number or device timestamp does not
advance are duplicates and are dropped, so a frozen device ages out and ``read_latest`` faults.

The device-free parts (device selection, turning one colour/depth pair into a Frame) are module
functions so tests run them without a camera.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Camera, CameraConfig, CameraError, CameraFault, Frame, FrameGate

log = logging.getLogger(__name__)


def _import_rs() -> Any:
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        raise CameraError(
            f"pyrealsense2 is not importable ({e}); install it with `pip install pyrealsense2` "
            "and the system library libusb-1.0-0 (`apt-get install libusb-1.0-0`)"
        ) from e
    return rs


@dataclass
class RealSenseCameraConfig(CameraConfig):
    serial_number_or_name: str | None = None  # None: the only device attached (error if several)
    use_depth: bool = False  # also stream depth, aligned to the colour image
    warmup_s: float = 1.0  # frames discarded after start while auto-exposure settles
    connect_attempts: int = 3  # the last one is preceded by a USB hardware reset
    frame_timeout_s: float = 1.0  # one wait_for_frames; this many in a row failing counts as a read failure

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "realsense"
        if self.connect_attempts < 1:
            raise ValueError(f"camera {self.name!r}: connect_attempts must be >= 1")
        if self.warmup_s < 0:
            raise ValueError(f"camera {self.name!r}: warmup_s must be >= 0")


def select_device(devices: list[tuple[str, str]], serial_number_or_name: str | None, camera: str = "") -> str:
    """Serial number of the device to open, from (serial, name) pairs of the attached devices."""
    listing = ", ".join(f"{n} (serial {s})" for s, n in devices) or "none"
    if not devices:
        raise CameraError(
            f"camera {camera!r}: no RealSense device found; check the USB3 cable and power, and `rs-enumerate-devices`"
        )
    if serial_number_or_name is None:
        if len(devices) > 1:
            raise CameraError(f"camera {camera!r}: several RealSense devices attached ({listing}); set serial_number_or_name")
        return devices[0][0]
    by_serial = [s for s, _ in devices if s == serial_number_or_name]
    if by_serial:
        return by_serial[0]
    by_name = [s for s, n in devices if n == serial_number_or_name]
    if len(by_name) == 1:
        return by_name[0]
    if len(by_name) > 1:
        raise CameraError(f"camera {camera!r}: several devices named {serial_number_or_name!r} ({listing}); use a serial number")
    raise CameraError(f"camera {camera!r}: RealSense {serial_number_or_name!r} not attached; attached: {listing}")


def frame_from_arrays(
    gate: FrameGate,
    color: np.ndarray,
    frame_number: int,
    device_timestamp_ms: float,
    stamp: float,
    depth: np.ndarray | None = None,
    expect_shape: tuple[int, int] | None = None,
) -> Frame | None:
    """One RealSense colour (RGB8) [+ aligned depth] sample -> a new Frame, or None for a duplicate.

    Raises CameraFault for a wrong-size or malformed image (a device in the wrong mode).
    """
    if expect_shape is not None and color.shape[:2] != expect_shape:
        raise CameraFault(f"camera {gate.name!r}: colour frame is {color.shape[:2]}, configured {expect_shape}")
    if depth is not None and (depth.dtype != np.uint16 or depth.shape != color.shape[:2]):
        raise CameraFault(
            f"camera {gate.name!r}: aligned depth must be uint16 {color.shape[:2]}, got {depth.dtype} {depth.shape}"
        )
    # Copy out of the librealsense buffer: it is recycled once the frame object is released.
    return gate.accept(
        np.array(color, dtype=np.uint8, copy=True),
        stamp,
        device_number=int(frame_number),
        device_stamp=float(device_timestamp_ms) / 1000.0,
        depth=None if depth is None else np.array(depth, copy=True),
    )


class RealSenseCamera(Camera):
    config: RealSenseCameraConfig

    def __init__(self, config: RealSenseCameraConfig) -> None:
        super().__init__(config)
        self._rs: Any = None
        self._pipeline: Any = None
        self._align: Any = None
        self._serial: str | None = None
        self._misses = 0

    def describe(self) -> str:
        return f"RealSense {self._serial or self.config.serial_number_or_name or '(any)'}"

    def _attached(self) -> list[tuple[str, str]]:
        rs = self._rs
        out = []
        for dev in rs.context().query_devices():
            out.append((dev.get_info(rs.camera_info.serial_number), dev.get_info(rs.camera_info.name)))
        return out

    def _hardware_reset(self, serial: str) -> None:
        rs = self._rs
        for dev in rs.context().query_devices():
            if dev.get_info(rs.camera_info.serial_number) == serial:
                log.warning("camera %r: USB hardware reset of RealSense %s", self.name, serial)
                dev.hardware_reset()
                time.sleep(3.0)  # the device re-enumerates on the bus
                return

    def _start_once(self, serial: str) -> None:
        rs, cfg = self._rs, self.config
        pipeline = rs.pipeline()
        rs_cfg = rs.config()
        rs_cfg.enable_device(serial)
        w, h = (cfg.width, cfg.height) if cfg.width is not None else (0, 0)
        fps = int(cfg.fps) if cfg.fps is not None else 0
        rs_cfg.enable_stream(rs.stream.color, w, h, rs.format.rgb8, fps)
        if cfg.use_depth:
            rs_cfg.enable_stream(rs.stream.depth, w, h, rs.format.z16, fps)
        pipeline.start(rs_cfg)
        try:
            end = time.monotonic() + cfg.warmup_s
            got = False
            while time.monotonic() < end or not got:
                ok, _ = pipeline.try_wait_for_frames(int(cfg.frame_timeout_s * 1000))
                got = got or ok
                if not ok and time.monotonic() > end + cfg.frame_timeout_s:
                    raise CameraError(f"camera {self.name!r}: RealSense {serial} started but sends no frames")
        except Exception:
            pipeline.stop()
            raise
        self._pipeline = pipeline
        self._align = rs.align(rs.stream.color) if cfg.use_depth else None

    def _open(self) -> None:
        self._rs = _import_rs()
        serial = select_device(self._attached(), self.config.serial_number_or_name, self.name)
        self._serial = serial
        self._gate = FrameGate(self.name)  # frame numbers restart with the pipeline
        last: Exception | None = None
        for attempt in range(1, self.config.connect_attempts + 1):
            if attempt == self.config.connect_attempts and attempt > 1:
                self._hardware_reset(serial)
            try:
                self._start_once(serial)
                self._misses = 0
                return
            except Exception as e:  # noqa: BLE001 - librealsense raises RuntimeError subclasses
                last = e
                log.warning("camera %r: start attempt %d failed: %s", self.name, attempt, e)
        raise CameraError(
            f"camera {self.name!r}: RealSense {serial} failed to start after {self.config.connect_attempts} attempts "
            f"(last: {last}); check the resolution/fps is supported (`rs-enumerate-devices -c`) and the USB3 link"
        )

    def _grab(self, timeout_s: float) -> Frame | None:
        ok, frames = self._pipeline.try_wait_for_frames(int(max(timeout_s, 0.001) * 1000))
        stamp = time.monotonic()
        if not ok:
            # A short poll timing out is normal between frames; many in a row is a dead device.
            self._misses += 1
            if self._misses * timeout_s >= self.config.frame_timeout_s:
                self._misses = 0
                raise CameraFault(f"camera {self.name!r}: no frame from RealSense {self._serial} for {self.config.frame_timeout_s} s")
            return None
        self._misses = 0
        if self._align is not None:
            frames = self._align.process(frames)
        color = frames.get_color_frame()
        if not color:
            return None
        depth = None
        if self._align is not None:
            d = frames.get_depth_frame()
            depth = np.asanyarray(d.get_data()) if d else None
        cfg = self.config
        return frame_from_arrays(
            self._gate,
            np.asanyarray(color.get_data()),
            color.get_frame_number(),
            color.get_timestamp(),
            stamp,
            depth,
            expect_shape=(cfg.height, cfg.width) if cfg.width is not None else None,
        )

    def _close(self) -> None:
        if self._pipeline is not None:
            try:
                self._pipeline.stop()
            except RuntimeError as e:  # already stopped / device gone
                log.debug("camera %r: pipeline stop: %s", self.name, e)
            self._pipeline = None
