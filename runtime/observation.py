"""Observations for the policy, with the capture time of every image and of the state.

Images come from ``Camera.read_latest(max_age_s)``, which raises ``CameraFault`` for a frame older
than the camera's max age, so a stale image can never reach the policy; the age is checked again
against the same limit when the observation is handed to the inference thread (``check_fresh``).

Frames are shrunk here, on the robot, to the size the server's metadata asks for (``cameras.<name>``),
with the resize training uses (drivers/cameras/resize.py): a RealSense's 640x480 RGB is 0.9 MB, about
7 ms of pure transfer on 1 GbE per request, for a model that takes 64x64. Recordings keep full frames.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dit4dit.drivers import g1_spec
from dit4dit.drivers.cameras import CameraFault
from dit4dit.drivers.cameras.resize import area_resize


@dataclass(frozen=True)
class Observation:
    images: dict[str, np.ndarray]  # camera -> uint8 (H, W, 3) RGB
    image_stamps: dict[str, float]  # camera -> capture time (monotonic s)
    image_ids: dict[str, int]
    state: np.ndarray  # float32 (S,), metadata state_names order
    state_stamp: float  # receipt time of the robot state (monotonic s)
    instruction: str

    def oldest_image_age(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max((now - s for s in self.image_stamps.values()), default=0.0)

    def check_fresh(self, max_age: Mapping[str, float], now: float | None = None) -> None:
        """CameraFault if any image is older than its camera's max age now."""
        now = time.monotonic() if now is None else now
        for cam, stamp in self.image_stamps.items():
            age = now - stamp
            if age > max_age[cam]:
                raise CameraFault(f"camera {cam!r}: image {self.image_ids[cam]} is {age * 1e3:.0f} ms old "
                                  f"(max {max_age[cam] * 1e3:.0f} ms); not sent")  # fmt: skip

    def for_policy(self) -> dict[str, Any]:
        """The Policy.infer / PolicyClient.infer observation dict."""
        return {"images": dict(self.images), "state": self.state, "instruction": self.instruction}


def joint_indices(names: Sequence[str], what: str) -> np.ndarray:
    """g1_spec indices of the policy's state/action names; ValueError naming the unknown ones."""
    idx, unknown = [], []
    for n in names:
        try:
            idx.append(g1_spec.joint_index(n))
        except KeyError:
            unknown.append(n)
    if unknown:
        raise ValueError(
            f"policy metadata {what} has names that are not G1 body joints: {unknown}; this controller maps "
            f"{what} onto the 29 joints of drivers/g1_spec.py"
        )
    return np.array(idx, dtype=np.int64)


class ObservationBuilder:
    """Assembles an Observation from the robot state and the cameras."""

    def __init__(
        self,
        cameras: Mapping[str, Any],
        max_age: Mapping[str, float],
        state_indices: np.ndarray,
        instruction: str,
        sizes: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        self.cameras = dict(cameras)
        self.max_age = dict(max_age)
        self.state_indices = state_indices
        self.instruction = instruction
        self.sizes = dict(sizes or {})  # camera -> (height, width) the policy takes; absent: sent as captured

    def read_images(self) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, int]]:
        images, stamps, ids = {}, {}, {}
        for name, cam in self.cameras.items():
            frame = cam.read_latest(self.max_age[name])  # CameraFault when stale
            images[name], stamps[name], ids[name] = frame.image, frame.stamp, frame.frame_id
        return images, stamps, ids

    def build(self, robot_state: Any) -> Observation:
        images, stamps, ids = self.read_images()
        images = {n: area_resize(im, self.sizes[n]) if n in self.sizes else im for n, im in images.items()}
        return Observation(
            images=images,
            image_stamps=stamps,
            image_ids=ids,
            state=np.asarray(robot_state.q, dtype=np.float32)[self.state_indices],
            state_stamp=float(robot_state.stamp),
            instruction=self.instruction,
        )
