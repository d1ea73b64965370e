"""Calibration of the G1's head camera and clocks: intrinsics, hand-eye extrinsics, timing, joint check.

The controller only needs :func:`load_calibration` (pydantic + YAML, no OpenCV or MuJoCo at import).
The procedures live in ``intrinsics``, ``handeye``, ``timing``, ``joint_check``; ``cli`` is dit4dit-calibrate.
"""

from dit4dit.calibration.calibration_file import (
    CALIBRATION_VERSION,
    CalibrationFile,
    CalibrationFileError,
    load_calibration,
    read_calibration,
    save_calibration,
)

__all__ = [
    "CALIBRATION_VERSION",
    "CalibrationFile",
    "CalibrationFileError",
    "load_calibration",
    "read_calibration",
    "save_calibration",
]
