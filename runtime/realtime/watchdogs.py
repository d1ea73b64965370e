"""Robot-state watchdogs: any of these tripping means damp now (shared/reference/g1-interface.md §3.1, §7)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def tilt_from_quat(quat_wxyz: Any) -> float:
    """Angle (rad) between the body's z axis and the world's, from a (w, x, y, z) quaternion; nan if invalid."""
    q = np.asarray(quat_wxyz, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        return math.nan
    n = float(np.linalg.norm(q))
    if n < 0.5:  # all-zero or garbage IMU frame
        return math.nan
    w, x, y, z = q / n
    # z component of the body z axis in the world frame: 1 - 2 (x^2 + y^2)
    cz = 1.0 - 2.0 * (x * x + y * y)
    return math.acos(max(-1.0, min(1.0, cz)))


def robot_fault(state: Any, safety: Any) -> str | None:
    """Why the robot must be damped now, or None. ``state``: drivers.g1_robot.RobotState; ``safety``: SafetySection."""
    return stale_fault(state, safety) or motion_fault(state, safety) or hardware_fault(state, safety)


def stale_fault(state: Any, safety: Any) -> str | None:
    if state.age_s > safety.state_timeout_s:
        return f"robot state is {state.age_s * 1e3:.0f} ms old (limit {safety.state_timeout_s * 1e3:.0f} ms): state stream lost"
    return None


def motion_fault(state: Any, safety: Any) -> str | None:
    """Tilt, IMU validity and joint speed: single readings can spike, so the controller debounces these."""
    tilt = tilt_from_quat(state.imu.quat)
    if math.isnan(tilt):
        return f"IMU quaternion invalid ({np.round(state.imu.quat, 3).tolist()}): cannot check tilt"
    if tilt > safety.max_tilt_rad:
        return f"tilt {tilt:.2f} rad exceeds {safety.max_tilt_rad:.2f} rad"
    dq = np.asarray(state.dq, dtype=np.float64)
    if not np.all(np.isfinite(dq)):
        return "joint velocity reading is NaN/inf"
    j = int(np.argmax(np.abs(dq)))
    if abs(dq[j]) > safety.max_joint_speed:
        return f"joint {j} speed {dq[j]:.1f} rad/s exceeds {safety.max_joint_speed:.1f} rad/s"
    return None


def hardware_fault(state: Any, safety: Any) -> str | None:
    """Temperatures and motor error codes."""
    temp = np.asarray(state.temperature, dtype=np.float64)
    if temp.ndim == 2 and temp.shape[1] >= 2:
        casing, winding = temp[:, 0], temp[:, 1]
        if np.max(casing) > safety.max_casing_temp_c:
            j = int(np.argmax(casing))
            return f"joint {j} casing {casing[j]:.0f} C exceeds {safety.max_casing_temp_c:.0f} C"
        if np.max(winding) > safety.max_winding_temp_c:
            j = int(np.argmax(winding))
            return f"joint {j} winding {winding[j]:.0f} C exceeds {safety.max_winding_temp_c:.0f} C"
    err = np.asarray(getattr(state, "motor_error", np.zeros(1)))
    if np.any(err != 0):
        j = int(np.flatnonzero(err)[0])
        return f"motor {j} reports fault code {int(err[j]):#x}"
    return None


class RobotWatchdog:
    """robot_fault with a debounce on the motion checks: tilt / IMU / joint speed must persist for
    ``safety.fault_persist_s`` (a single spiking sample does not damp the robot); a stale state stream,
    temperatures and motor faults trip at once."""

    def __init__(self, safety: Any) -> None:
        self.safety = safety
        self._motion_since: float | None = None

    def check(self, state: Any, now: float) -> str | None:
        reason = stale_fault(state, self.safety) or hardware_fault(state, self.safety)
        if reason is not None:
            return reason
        motion = motion_fault(state, self.safety)
        if motion is None:
            self._motion_since = None
            return None
        if self._motion_since is None:
            self._motion_since = now
        if now - self._motion_since >= self.safety.fault_persist_s:
            return motion
        return None
