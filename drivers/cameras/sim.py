"""Frames rendered by ``dit4dit-sim``, read over its ZeroMQ image stream.

The simulator publishes one ImageStreamPublisher per camera with ``source="dit4dit-sim"``.
SimCamera is a ZmqCamera that insists on that source and on the camera name, so a policy can
never be fed a real camera (or the wrong simulated one) by a mistyped port.
"""

from __future__ import annotations

from dataclasses import dataclass

from .zmq_stream import ZmqCamera, ZmqCameraConfig

SIM_SOURCE = "dit4dit-sim"


@dataclass
class SimCameraConfig(ZmqCameraConfig):
    """``name`` is the simulator's camera name (``head``, ``left_wrist``...), ``endpoint`` its stream."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kind = "sim"
        if self.stream_camera is None:
            self.stream_camera = self.name
        self.expect_source = SIM_SOURCE


class SimCamera(ZmqCamera):
    config: SimCameraConfig

    def describe(self) -> str:
        return f"dit4dit-sim camera {self.config.stream_camera!r} at {self.config.endpoint} (is dit4dit-sim running?)"
