"""A latest-frame-only image stream over ZeroMQ, so cameras on the robot's PC (or dit4dit-sim's
rendered cameras) can be read from another process or machine.

Wire format: one single-part message per frame (ZMQ_CONFLATE drops multipart messages), a msgpack
map:

=================  ==============================================================================
key                value
=================  ==============================================================================
``v``              format version (1)
``camera``         camera name, e.g. ``"head"``
``source``         who publishes (``"realsense"``, ``"dit4dit-sim"``, ...)
``stream_id``      random per publisher start: a restarted publisher's frame ids begin again
``frame_id``       int, increasing
``stamp_mono``     capture time, ``time.monotonic()`` on the publishing host
``stamp_wall``     capture time, ``time.time()`` on the publishing host
``clock``          ``hostname/boot_id`` of the publisher: equal on the reader -> same monotonic clock
``device_stamp``   the device's own timestamp in s, or nil
``encoding``       ``"jpeg"`` or ``"raw"`` (RGB uint8, C order)
``shape``          [H, W, 3]
``data``           the encoded image bytes
``depth``          optional raw little-endian uint16 depth (H, W) bytes, or absent
=================  ==============================================================================

Both ends keep one message at most (SNDHWM/RCVHWM 1, CONFLATE 1): a slow reader gets the newest
frame, never a queue of old ones. On another host the capture time is mapped into the reader's
monotonic clock through the wall clocks, so keep the two machines NTP/chrony-synchronised.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import cv2
import msgpack
import numpy as np
import zmq

from .base import Camera, CameraConfig, CameraError, CameraFault, Frame, FrameGate, check_image

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENCODINGS = ("jpeg", "raw")


def clock_id() -> str:
    """Identifies this host's monotonic clock: hostname plus kernel boot id."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "unknown-boot"
    return f"{socket.gethostname()}/{boot}"


_CLOCK_ID = clock_id()


def encode_frame(
    image: np.ndarray,
    *,
    camera: str,
    frame_id: int,
    stamp_mono: float,
    encoding: str = "jpeg",
    jpeg_quality: int = 90,
    source: str = "",
    stream_id: str = "",
    device_stamp: float | None = None,
    depth: np.ndarray | None = None,
) -> bytes:
    """One stream message for an RGB uint8 image."""
    check_image(image, camera)
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ValueError(f"camera {camera!r}: JPEG encoding failed for shape {image.shape}")
        data = buf.tobytes()
    elif encoding == "raw":
        data = np.ascontiguousarray(image).tobytes()
    else:
        raise ValueError(f"unknown image encoding {encoding!r}; use one of {ENCODINGS}")
    # Wall time of capture = now_wall - (now_mono - stamp_mono), so callers pass only monotonic stamps.
    stamp_wall = time.time() - (time.monotonic() - stamp_mono)
    msg: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "camera": camera,
        "source": source,
        "stream_id": stream_id,
        "frame_id": int(frame_id),
        "stamp_mono": float(stamp_mono),
        "stamp_wall": float(stamp_wall),
        "clock": _CLOCK_ID,
        "device_stamp": None if device_stamp is None else float(device_stamp),
        "encoding": encoding,
        "shape": list(image.shape),
        "data": data,
    }
    if depth is not None:
        if depth.dtype != np.uint16 or depth.shape != image.shape[:2]:
            raise ValueError(f"camera {camera!r}: depth must be uint16 {image.shape[:2]}, got {depth.dtype} {depth.shape}")
        msg["depth"] = np.ascontiguousarray(depth).astype("<u2", copy=False).tobytes()
    return msgpack.packb(msg, use_bin_type=True)


def decode_frame(message: bytes) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """(header without data, RGB image, depth or None). ValueError naming what is wrong."""
    try:
        msg = msgpack.unpackb(message, raw=False)
    except Exception as e:
        raise ValueError(f"image stream message is not msgpack: {e}") from e
    if not isinstance(msg, dict) or msg.get("v") != FORMAT_VERSION:
        raise ValueError(f"image stream message has version {msg.get('v') if isinstance(msg, dict) else None}, want {FORMAT_VERSION}")
    data = msg.pop("data", None)
    shape = tuple(msg.get("shape") or ())
    enc = msg.get("encoding")
    if not isinstance(data, bytes) or len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"image stream message lacks data or has shape {shape}, want [H, W, 3]")
    if enc == "jpeg":
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("image stream JPEG payload does not decode")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    elif enc == "raw":
        if len(data) != shape[0] * shape[1] * 3:
            raise ValueError(f"raw image payload has {len(data)} bytes, shape {shape} needs {shape[0] * shape[1] * 3}")
        image = np.frombuffer(data, np.uint8).reshape(shape).copy()
    else:
        raise ValueError(f"unknown image encoding {enc!r}; expected one of {ENCODINGS}")
    if image.shape != shape:
        raise ValueError(f"decoded image shape {image.shape} differs from header shape {shape}")
    depth = None
    raw_depth = msg.pop("depth", None)
    if raw_depth is not None:
        depth = np.frombuffer(raw_depth, "<u2").reshape(shape[:2]).astype(np.uint16)
    return msg, image, depth


def local_stamp(header: dict[str, Any], now_mono: float | None = None, now_wall: float | None = None) -> float:
    """The capture time in this host's time.monotonic(), from a stream header."""
    if header.get("clock") == _CLOCK_ID:
        return float(header["stamp_mono"])
    now_mono = time.monotonic() if now_mono is None else now_mono
    now_wall = time.time() if now_wall is None else now_wall
    # Different host: map through the wall clocks. A future stamp (clock skew) counts as "now".
    age = max(0.0, now_wall - float(header["stamp_wall"]))
    return now_mono - age


class ImageStreamPublisher:
    """PUB side: ``publish(rgb)`` sends the frame if the socket can take it, else drops it.

    ``address`` is bound (``tcp://*:5555``, ``tcp://127.0.0.1:5555``, ``ipc:///tmp/cam``).
    """

    def __init__(
        self,
        address: str,
        camera: str = "head",
        *,
        encoding: str = "jpeg",
        jpeg_quality: int = 90,
        source: str = "",
        context: zmq.Context | None = None,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown image encoding {encoding!r}; use one of {ENCODINGS}")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.address = address
        self.camera = camera
        self.encoding = encoding
        self.jpeg_quality = jpeg_quality
        self.source = source
        self.stream_id = uuid.uuid4().hex[:12]
        self.sent = 0
        self.dropped = 0
        self._next_id = 0
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 1)
        self._sock.setsockopt(zmq.CONFLATE, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        # A socket closed a moment ago (a restarted publisher in this process) frees its port asynchronously.
        deadline = time.monotonic() + 1.0
        while True:
            try:
                self._sock.bind(address)
                break
            except zmq.ZMQError as e:
                if e.errno == zmq.EADDRINUSE and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                self._sock.close()
                raise CameraError(f"image stream for camera {camera!r}: cannot bind {address}: {e} (port in use?)") from e

    def publish(
        self,
        image: np.ndarray,
        *,
        frame_id: int | None = None,
        stamp: float | None = None,
        device_stamp: float | None = None,
        depth: np.ndarray | None = None,
    ) -> bool:
        """Send one RGB uint8 frame; True if queued, False if dropped (no room). ``stamp``: monotonic capture time."""
        fid = self._next_id if frame_id is None else int(frame_id)
        self._next_id = fid + 1
        msg = encode_frame(
            image,
            camera=self.camera,
            frame_id=fid,
            stamp_mono=time.monotonic() if stamp is None else stamp,
            encoding=self.encoding,
            jpeg_quality=self.jpeg_quality,
            source=self.source,
            stream_id=self.stream_id,
            device_stamp=device_stamp,
            depth=depth,
        )
        try:
            self._sock.send(msg, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def publish_frame(self, frame: Frame) -> bool:
        """Re-publish a Frame read from a local camera, keeping its stamps and id."""
        return self.publish(
            frame.image, frame_id=frame.frame_id, stamp=frame.stamp, device_stamp=frame.device_stamp, depth=frame.depth
        )

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> ImageStreamPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ZmqCameraConfig(CameraConfig):
    """Read a camera published by ImageStreamPublisher (robot PC, another machine, dit4dit-sim)."""

    endpoint: str = "tcp://127.0.0.1:5555"  # connect address of the publisher
    stream_camera: str | None = None  # if set, frames must carry this camera name (guards against a wrong port)
    expect_source: str | None = None  # if set, frames must come from this source (e.g. "dit4dit-sim")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "zmq"
        if "://" not in self.endpoint:
            raise ValueError(f"camera {self.name!r}: endpoint {self.endpoint!r} must look like tcp://HOST:PORT")


class ZmqCamera(Camera):
    """SUB side of the image stream (CONFLATE: only the newest message is kept)."""

    config: ZmqCameraConfig

    def __init__(self, config: ZmqCameraConfig, context: zmq.Context | None = None) -> None:
        super().__init__(config)
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._stream_id: str | None = None
        self.bad_messages = 0

    def describe(self) -> str:
        return f"image stream {self.config.endpoint}"

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.CONFLATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            sock.connect(self.config.endpoint)
        except zmq.ZMQError as e:
            sock.close()
            raise CameraError(f"camera {self.name!r}: bad stream address {self.config.endpoint}: {e}") from e
        self._sock = sock
        self._stream_id = None

    def _grab(self, timeout_s: float) -> Frame | None:
        assert self._sock is not None
        if not self._sock.poll(int(timeout_s * 1000)):
            return None
        message = self._sock.recv()
        try:
            header, image, depth = decode_frame(message)
        except ValueError as e:
            self.bad_messages += 1
            raise CameraFault(f"camera {self.name!r}: bad message from {self.config.endpoint}: {e}") from e
        cfg = self.config
        if cfg.stream_camera is not None and header.get("camera") != cfg.stream_camera:
            raise CameraError(
                f"camera {self.name!r}: stream {cfg.endpoint} carries camera {header.get('camera')!r}, "
                f"expected {cfg.stream_camera!r}; check the port"
            )
        if cfg.expect_source is not None and header.get("source") != cfg.expect_source:
            raise CameraError(
                f"camera {self.name!r}: stream {cfg.endpoint} comes from {header.get('source')!r}, "
                f"expected {cfg.expect_source!r}"
            )
        if cfg.width is not None and (image.shape[1], image.shape[0]) != (cfg.width, cfg.height):
            raise CameraError(
                f"camera {self.name!r}: stream frames are {image.shape[1]}x{image.shape[0]}, configured {cfg.width}x{cfg.height}"
            )
        if header.get("stream_id") != self._stream_id:
            if self._stream_id is not None:
                log.info("camera %r: publisher restarted (new stream id), frame ids start over", self.name)
            self._stream_id = header.get("stream_id")
            self._gate = FrameGate(self.name) if self._stream_id is not None else self._gate
        return self._gate.accept(
            image,
            local_stamp(header),
            device_number=int(header["frame_id"]),
            device_stamp=header.get("device_stamp"),
            depth=depth,
        )

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None


__all__ = [
    "CameraFault",
    "ImageStreamPublisher",
    "ZmqCamera",
    "ZmqCameraConfig",
    "clock_id",
    "decode_frame",
    "encode_frame",
    "local_stamp",
]
