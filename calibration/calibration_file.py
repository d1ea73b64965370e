"""The calibration file: one YAML per robot + head camera, written by dit4dit-calibrate, read by dit4dit-robot.

Layout (every section optional except the identity, so parts can be calibrated one at a time):

    version: 1
    date: 2026-11-25T12:00:00Z
    robot:  {name: g1-lab-1, serial: ...}
    camera: {name: head, serial: "123456789", kind: realsense}
    intrinsics:  {width, height, fx, fy, cx, cy, distortion: [k1, k2, p1, p2, k3], source, reprojection_error_px, ...}
    extrinsics:  {parent_frame: torso_link, position_m, quaternion_wxyz, residuals and the offset from the nominal mount}
    timing:      {camera_delay_s, command_to_state_s, end_to_end_s, frame_period_s, ...}
    joint_check: {passed, joints: [{joint, sign, gain, offset_rad, tracking_rms_rad, lag_s, ok, reason}]}

The camera frame is OpenCV's optical frame (x right, y down, z along the optical axis); the extrinsics
give that frame's pose in ``torso_link``: p_torso = R @ p_cam + t.
``load_calibration`` refuses a file made for another robot or camera, or of an unknown version.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CALIBRATION_VERSION = 1


class CalibrationFileError(ValueError):
    """A calibration file is missing, malformed, of another version, or made for another robot/camera."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _finite(values: list[float], what: str) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers, got {values}")
    return values


class RobotId(_Model):
    name: str = Field(min_length=1)
    serial: str | None = None


class CameraId(_Model):
    name: str = Field(min_length=1)  # the camera's role in deploy.yaml (head)
    serial: str | None = None  # the device serial (RealSense) or a stable id of the stream
    kind: str = ""  # realsense, opencv, zmq, sim


class Intrinsics(_Model):
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fx: float = Field(gt=0)
    fy: float = Field(gt=0)
    cx: float
    cy: float
    distortion_model: Literal["opencv"] = "opencv"  # k1, k2, p1, p2[, k3[, k4, k5, k6]]
    distortion: list[float] = Field(default_factory=lambda: [0.0] * 5)
    source: Literal["realsense_factory", "charuco"]
    reprojection_error_px: float | None = None  # RMS over all corners (charuco)
    n_views: int | None = None
    n_corners: int | None = None
    source_model: str | None = None  # the device's own distortion model name (realsense)

    @field_validator("distortion")
    @classmethod
    def _dist_len(cls, v: list[float]) -> list[float]:
        if len(v) not in (4, 5, 8):
            raise ValueError(f"distortion needs 4, 5 or 8 OpenCV coefficients (k1 k2 p1 p2 [k3 [k4 k5 k6]]), got {len(v)}")
        return _finite(v, "distortion")

    @model_validator(mode="after")
    def _centre_inside(self) -> Intrinsics:
        if not (0 <= self.cx < self.width and 0 <= self.cy < self.height):
            raise ValueError(f"principal point ({self.cx}, {self.cy}) lies outside the {self.width}x{self.height} image")
        return self

    def camera_matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def dist_coeffs(self) -> np.ndarray:
        return np.asarray(self.distortion, dtype=np.float64)


class Extrinsics(_Model):
    parent_frame: str = "torso_link"
    camera_frame: str = "head_camera_optical"  # x right, y down, z forward
    position_m: list[float]
    quaternion_wxyz: list[float]
    method: str
    n_poses: int = Field(ge=3)
    # residuals: the marker-in-hand pose implied by each view vs their mean, and the reprojection error
    residual_position_m: float
    residual_rotation_deg: float
    reprojection_error_px: float
    # offset from the nominal mount in g1_spec (HEAD_CAMERA_POS / HEAD_CAMERA_PITCH)
    nominal_offset_position_m: float
    nominal_offset_rotation_deg: float
    marker_in_hand_position_m: list[float] | None = None
    marker_in_hand_quaternion_wxyz: list[float] | None = None
    hand_frame: str = ""

    @field_validator("position_m")
    @classmethod
    def _pos(cls, v: list[float]) -> list[float]:
        if len(v) != 3:
            raise ValueError(f"position_m needs 3 numbers, got {len(v)}")
        return _finite(v, "position_m")

    @field_validator("quaternion_wxyz")
    @classmethod
    def _quat(cls, v: list[float]) -> list[float]:
        if len(v) != 4:
            raise ValueError(f"quaternion_wxyz needs 4 numbers, got {len(v)}")
        _finite(v, "quaternion_wxyz")
        n = math.sqrt(sum(x * x for x in v))
        if abs(n - 1.0) > 1e-3:
            raise ValueError(f"quaternion_wxyz must be unit length, got norm {n:.6f}")
        return [x / n for x in v]

    def matrix(self) -> np.ndarray:
        """4x4 pose of the camera optical frame in the parent frame."""
        from dit4dit.calibration.geometry import quat_to_matrix

        T = np.eye(4)
        T[:3, :3] = quat_to_matrix(np.asarray(self.quaternion_wxyz))
        T[:3, 3] = self.position_m
        return T


class Timing(_Model):
    # Images are this much older than their Frame.stamp says, measured against the robot state stream:
    # a controller pairing an image with a state should pair it with the state from camera_delay_s earlier.
    camera_delay_s: float
    command_to_state_s: float  # command published -> motion seen in rt/lowstate
    command_to_image_s: float  # command published -> motion seen in a received image (by its stamp)
    end_to_end_s: float  # motion happens -> a command reacting to its image is on the bus (no policy time)
    frame_period_s: float = Field(gt=0)
    joint: str
    n_trials: int = Field(ge=1)
    spread_s: float = Field(ge=0)  # max-min of camera_delay_s over the steps (the extremes dropped from 5 steps on)


class JointResult(_Model):
    joint: str
    sign: int  # +1: follows the command's direction, -1: opposite, 0: did not move
    gain: float  # measured displacement / commanded displacement
    offset_rad: float  # mean (measured - commanded) while holding
    tracking_rms_rad: float  # RMS of (measured - commanded) after removing the lag
    lag_s: float
    max_error_rad: float
    ok: bool
    reason: str = ""


class JointCheck(_Model):
    passed: bool
    amplitude_rad: float
    period_s: float
    joints: list[JointResult]

    def failed(self) -> list[JointResult]:
        return [j for j in self.joints if not j.ok]


class CalibrationFile(_Model):
    version: int = CALIBRATION_VERSION
    date: _dt.datetime = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0))
    robot: RobotId
    camera: CameraId
    intrinsics: Intrinsics | None = None
    extrinsics: Extrinsics | None = None
    timing: Timing | None = None
    joint_check: JointCheck | None = None


# section of the file -> the dit4dit-calibrate sub-command that fills it
_COMMAND_FOR = {"intrinsics": "intrinsics", "extrinsics": "handeye", "timing": "timing", "joint_check": "joints"}


def save_calibration(calib: CalibrationFile, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a file the robot could load."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# dit4dit calibration file; written by dit4dit-calibrate\n" + yaml.safe_dump(
        calib.model_dump(mode="json"), sort_keys=False
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_calibration(path: str | os.PathLike[str]) -> CalibrationFile:
    """Parse and validate a calibration file without identity checks (tools, merging)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationFileError(f"calibration file {path} does not exist; run `dit4dit-calibrate all --out {path}`")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CalibrationFileError(f"calibration file {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise CalibrationFileError(f"calibration file {path}: expected a mapping at the top level, got {type(raw).__name__}")
    version = raw.get("version")
    if version != CALIBRATION_VERSION:
        raise CalibrationFileError(
            f"calibration file {path} has version {version!r}; this dit4dit reads version {CALIBRATION_VERSION}. "
            "Re-run dit4dit-calibrate to regenerate it."
        )
    try:
        return CalibrationFile.model_validate(raw)
    except ValidationError as e:
        raise CalibrationFileError(f"calibration file {path} is malformed:\n{e}") from e


def load_calibration(
    path: str | os.PathLike[str], robot_name: str, camera_serial: str | None, *, require: tuple[str, ...] = ()
) -> CalibrationFile:
    """Load a calibration file for the robot and camera this process sees; refuse any other.

    ``robot_name`` must equal the file's robot name or serial; ``camera_serial`` must equal the file's
    camera serial (both None for a camera without one). ``require`` names sections that must be present
    (e.g. ``("intrinsics", "extrinsics")``).
    """
    calib = read_calibration(path)
    if robot_name not in (calib.robot.name, calib.robot.serial):
        raise CalibrationFileError(
            f"calibration file {path} was made for robot {calib.robot.name!r} (serial {calib.robot.serial!r}), "
            f"but this is robot {robot_name!r}. Calibrate this robot (dit4dit-calibrate all) or point deploy.yaml's "
            "calibration key at its own file."
        )
    if camera_serial != calib.camera.serial:
        raise CalibrationFileError(
            f"calibration file {path} was made for camera {calib.camera.name!r} with serial {calib.camera.serial!r}, "
            f"but the connected camera has serial {camera_serial!r}. The camera was swapped or deploy.yaml names "
            "another one: recalibrate (dit4dit-calibrate all) before running the policy."
        )
    missing = [s for s in require if getattr(calib, s) is None]
    if missing:
        raise CalibrationFileError(
            f"calibration file {path} lacks {', '.join(missing)}; run `dit4dit-calibrate {_COMMAND_FOR[missing[0]]}"
            f" --out {path}` (or `all`)"
        )
    return calib
