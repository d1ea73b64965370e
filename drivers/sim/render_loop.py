"""The camera loop: render each configured camera at its own rate from the shared physics snapshot and
publish it on the ZeroMQ image stream (drivers/cameras/zmq_stream.py, ``source="dit4dit-sim"``).

Frame stamps: ``stamp`` = ``time.monotonic()`` when the snapshot was taken (system-wide, so the same
clock as the physics process's), ``device_stamp`` = the robot clock (rt/lowstate's tick, in s) at the
snapshot. With an injected latency L a frame is held back L and stamped when it goes out: it
shows the scene L before its stamp.

It runs in the render process (drivers/sim/render_process.py), or in a thread for ``--render-in-process``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import g1_model

if TYPE_CHECKING:
    from dit4dit.drivers.cameras.zmq_stream import ImageStreamPublisher

    from .scene import G1Sim
    from .shared_snapshot import SharedSnapshot

SIM_SOURCE = "dit4dit-sim"  # the image stream's "source"; drivers/cameras/sim.py insists on it
# Stream camera names -> model camera names.
CAMERA_ALIASES = {"head": g1_model.HEAD_CAMERA, "left_wrist": g1_model.WRIST_CAMERAS["left"],
                  "right_wrist": g1_model.WRIST_CAMERAS["right"]}
DEFAULT_CAMERA_PORT = 55555  # teleimager's head-camera port; further cameras take the next ports
IDLE_WAKE_S = 0.05  # the loop looks at its stop condition at least this often


@dataclass
class CameraStreamConfig:
    """One published camera: stream name (``head``, ``left_wrist``, ``right_wrist`` or a model camera)."""

    name: str = "head"
    width: int = 320  # 640x480 (the D435's mode) costs ~4x the CPU of 320x240 on a software renderer
    height: int = 240
    fps: float = 30.0
    port: int = DEFAULT_CAMERA_PORT
    latency_s: float = 0.0  # injected delay between render and publish (calibration tests)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name!r}: size must be positive, got {self.width}x{self.height}")
        if not 0 < self.fps <= 240:
            raise ValueError(f"camera {self.name!r}: fps must be in (0, 240], got {self.fps}")
        if self.latency_s < 0:
            raise ValueError(f"camera {self.name!r}: latency must be >= 0, got {self.latency_s}")

    @property
    def model_camera(self) -> str:
        return CAMERA_ALIASES.get(self.name, self.name)


def bind_publishers(cameras: list[CameraStreamConfig], host: str, jpeg_quality: int) -> list[ImageStreamPublisher]:
    """One bound PUB socket per camera; CameraError (a RuntimeError) naming the port that is taken."""
    from dit4dit.drivers.cameras.zmq_stream import ImageStreamPublisher

    pubs: list[ImageStreamPublisher] = []
    try:
        for c in cameras:  # one by one, so the ones bound before a failure are released
            pubs.append(ImageStreamPublisher(f"tcp://{host}:{c.port}", camera=c.name, jpeg_quality=jpeg_quality,
                                             source=SIM_SOURCE))
    except Exception:
        for p in pubs:
            p.close()
        raise
    return pubs


class _Stream:
    """One camera's schedule, its frames held back for the injected latency, and its publisher."""

    def __init__(self, cfg: CameraStreamConfig, publisher: ImageStreamPublisher) -> None:
        self.cfg, self.publisher = cfg, publisher
        self.next_due = time.monotonic()
        self.frame_id = 0
        self.pending: collections.deque[tuple[float, np.ndarray, float]] = collections.deque()

    def publish(self, image: np.ndarray, stamp: float, sim_clock: float) -> None:
        self.publisher.publish(image, frame_id=self.frame_id, stamp=stamp, device_stamp=sim_clock)
        self.frame_id += 1

    def deliver_due(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            _, image, sim_clock = self.pending.popleft()
            self.publish(image, now, sim_clock)

    def wake_at(self) -> float:
        return min(self.next_due, self.pending[0][0]) if self.pending else self.next_due


def _pose_scene(sim: G1Sim) -> None:
    """Positions, orientations and camera/light frames from qpos: all a render needs, without dynamics."""
    import mujoco

    mujoco.mj_kinematics(sim.model, sim.data)
    mujoco.mj_comPos(sim.model, sim.data)  # for cameras that track a centre of mass
    mujoco.mj_camlight(sim.model, sim.data)


def render_loop(sim: G1Sim, snapshot: SharedSnapshot, cameras: list[CameraStreamConfig],
                publishers: list[ImageStreamPublisher], should_stop: Callable[[], bool]) -> None:
    """Until ``should_stop()``: render each camera when due from the newest snapshot, publish, count frames."""
    streams = [_Stream(c, p) for c, p in zip(cameras, publishers, strict=True)]
    while not should_stop():
        now = time.monotonic()
        next_wake = now + IDLE_WAKE_S
        for k, cam in enumerate(streams):
            cam.deliver_due(now)
            if now >= cam.next_due:
                sim_clock = snapshot.read()
                captured = time.monotonic()
                if sim_clock is not None:  # None: the physics has not written yet
                    _pose_scene(sim)
                    image = sim.render(cam.cfg.model_camera, (cam.cfg.height, cam.cfg.width))
                    latency = float(snapshot.latency[k])
                    if latency > 0:
                        cam.pending.append((captured + latency, image, sim_clock))
                    else:
                        cam.publish(image, captured, sim_clock)
                cam.next_due += 1.0 / cam.cfg.fps
                if cam.next_due < now:  # rendering cannot keep up: skip, don't burst
                    cam.next_due = now + 1.0 / cam.cfg.fps
            snapshot.frames[k] = cam.frame_id
            next_wake = min(next_wake, cam.wake_at())
        delay = next_wake - time.monotonic()
        if delay > 0:
            time.sleep(delay)
