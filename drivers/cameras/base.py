"""The camera interface every device implements, and the frame bookkeeping they share.

A camera runs a background reader that keeps only the newest frame. ``read_latest(max_age_s)``
returns that frame or raises ``CameraFault`` when it is older than ``max_age_s``: a stopped,
unplugged or frozen camera is always reported, never served as a silently frozen image.
Frames whose device frame number/timestamp did not advance are rejected as duplicates, so a
device that repeats its last buffer ages out instead of looking alive.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class CameraError(RuntimeError):
    """A camera could not be opened or configured (missing, unplugged, busy, bad settings)."""


class CameraFault(RuntimeError):
    """A connected camera stopped delivering fresh frames (stale, frozen, reader died)."""


@dataclass
class Frame:
    """One colour frame (and optionally aligned depth) with its capture time on this host."""

    image: np.ndarray  # uint8 (H, W, 3) RGB
    stamp: float  # time.monotonic() on this host at capture (or best estimate of it)
    frame_id: int  # increasing per camera; the device's frame number where it has one
    device_stamp: float | None = None  # the device's own timestamp (s), if any
    depth: np.ndarray | None = None  # uint16 (H, W) in depth units, aligned to the colour image
    camera: str = ""

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.stamp


@dataclass
class CameraConfig:
    """Fields every camera kind shares. Subclasses add their device settings and a ``kind``."""

    name: str = "head"
    width: int | None = None  # None: the device default / whatever the stream carries
    height: int | None = None
    fps: float | None = None
    max_age_s: float = 0.5  # default staleness limit for read_latest
    connect_timeout_s: float = 5.0  # first frame must arrive within this
    kind: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if (self.width is None) != (self.height is None):
            raise ValueError(f"camera {self.name!r}: set both width and height or neither")
        for key in ("width", "height", "fps"):
            v = getattr(self, key)
            if v is not None and v <= 0:
                raise ValueError(f"camera {self.name!r}: {key} must be > 0, got {v}")
        if self.max_age_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError(f"camera {self.name!r}: max_age_s and connect_timeout_s must be > 0")


class FrameGate:
    """Decides which raw device frames become new ``Frame``s: the logic shared by every camera.

    Kept free of any device so tests exercise it directly (the RealSense path goes through it).
    A frame is a duplicate when its device frame number or device timestamp does not advance.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.accepted = 0
        self.duplicates = 0
        self._last_number: int | None = None
        self._last_device_stamp: float | None = None
        self._next_id = 0

    def accept(
        self,
        image: np.ndarray,
        stamp: float,
        device_number: int | None = None,
        device_stamp: float | None = None,
        depth: np.ndarray | None = None,
    ) -> Frame | None:
        """A new Frame, or None for a duplicate (counted)."""
        if device_number is not None and self._last_number is not None and device_number <= self._last_number:
            self.duplicates += 1
            return None
        if device_stamp is not None and self._last_device_stamp is not None and device_stamp <= self._last_device_stamp:
            self.duplicates += 1
            return None
        check_image(image, self.name)
        if device_number is not None:
            self._last_number = device_number
            frame_id = device_number
        else:
            frame_id = self._next_id
        self._next_id = frame_id + 1
        if device_stamp is not None:
            self._last_device_stamp = device_stamp
        self.accepted += 1
        return Frame(image, stamp, frame_id, device_stamp, depth, self.name)


def check_image(image: np.ndarray, name: str) -> None:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise CameraFault(f"camera {name!r}: expected a uint8 (H, W, 3) RGB image, got shape {shape} dtype {dtype}")


def check_fresh(frame: Frame | None, name: str, max_age_s: float, now: float | None = None) -> Frame:
    """Return ``frame`` if it exists and is at most ``max_age_s`` old, else raise CameraFault."""
    if frame is None:
        raise CameraFault(f"camera {name!r}: no frame received yet")
    now = time.monotonic() if now is None else now
    age = now - frame.stamp
    if age > max_age_s:
        raise CameraFault(
            f"camera {name!r}: newest frame {frame.frame_id} is {age * 1e3:.0f} ms old (max {max_age_s * 1e3:.0f} ms); "
            "the camera stopped, froze or was unplugged"
        )
    return frame


class Camera(abc.ABC):
    """connect / read_latest / disconnect, with a background reader thread keeping the newest frame.

    Subclasses implement ``_open`` (raise CameraError with what to check), ``_grab`` (block up to
    ``timeout_s`` for the next raw frame and hand it to ``self._gate``; return the Frame or None;
    raise CameraError for a mismatch retrying cannot fix, anything else for a transient failure:
    ``max_consecutive_failures`` of those in a row stop the reader) and ``_close``.
    """

    max_consecutive_failures = 10  # reader gives up (fault) after this many failed grabs in a row

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.name = config.name
        self._gate = FrameGate(config.name)
        self._latest: Frame | None = None
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader_error: str | None = None
        self._last_returned_id: int | None = None

    # -- to implement ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _grab(self, timeout_s: float) -> Frame | None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    # -- public API -----------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stats(self) -> dict[str, int]:
        return {"accepted": self._gate.accepted, "duplicates": self._gate.duplicates}

    def connect(self) -> None:
        """Open the device, start the reader, and wait for the first frame (CameraError if none)."""
        if self.is_connected:
            return
        self._stop.clear()
        self._reader_error = None
        self._open()
        self._thread = threading.Thread(target=self._reader, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.config.connect_timeout_s
        with self._lock:
            while self._latest is None and self._reader_error is None and time.monotonic() < deadline:
                self._new_frame.wait(timeout=max(0.0, deadline - time.monotonic()))
            got, err = self._latest, self._reader_error
        if got is None:
            self.disconnect()
            raise CameraError(
                f"camera {self.name!r} ({self.describe()}) opened but delivered no frame within "
                f"{self.config.connect_timeout_s:.1f} s{': ' + err if err else ''}; check the cable/stream and settings"
            )
        log.info("camera %r connected: %s, first frame %s", self.name, self.describe(), got.image.shape)

    def read_latest(self, max_age_s: float | None = None) -> Frame:
        """The newest frame; CameraFault if it is older than ``max_age_s`` or the reader died."""
        max_age_s = self.config.max_age_s if max_age_s is None else max_age_s
        if self._thread is None:
            raise CameraFault(f"camera {self.name!r} is not connected; call connect() first")
        with self._lock:
            frame, err = self._latest, self._reader_error
        if err is not None:
            raise CameraFault(f"camera {self.name!r}: reader stopped: {err}")
        return check_fresh(frame, self.name, max_age_s)

    def read_new(self, timeout_s: float = 1.0) -> Frame:
        """Block until a frame newer than the last one returned by read_new arrives."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                if self._reader_error is not None:
                    raise CameraFault(f"camera {self.name!r}: reader stopped: {self._reader_error}")
                f = self._latest
                if f is not None and f.frame_id != self._last_returned_id:
                    self._last_returned_id = f.frame_id
                    return f
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CameraFault(f"camera {self.name!r}: no new frame within {timeout_s:.2f} s")
                self._new_frame.wait(timeout=left)

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        try:
            self._close()
        finally:
            with self._lock:
                self._latest = None

    def describe(self) -> str:
        """One line naming the device, for errors and logs."""
        return self.config.kind

    def __enter__(self) -> Camera:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # -- reader ---------------------------------------------------------------------------------
    def _reader(self) -> None:
        failures = 0
        poll = 0.1  # short waits so disconnect() is noticed quickly
        while not self._stop.is_set():
            try:
                frame = self._grab(poll)
            except CameraError as e:
                # A configuration mismatch (wrong size, wrong stream): retrying cannot help.
                with self._lock:
                    self._reader_error = str(e)
                    self._new_frame.notify_all()
                log.error("camera %r: %s", self.name, e)
                return
            except Exception as e:  # noqa: BLE001 - any other device error counts as a (transient) failed grab
                failures += 1
                log.warning("camera %r: read failed (%d in a row): %s", self.name, failures, e)
                if failures >= self.max_consecutive_failures:
                    with self._lock:
                        self._reader_error = f"{failures} consecutive read failures, last: {e}"
                        self._new_frame.notify_all()
                    return
                continue
            failures = 0
            if frame is not None:
                with self._lock:
                    self._latest = frame
                    self._new_frame.notify_all()
