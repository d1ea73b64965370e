"""The Unitree G1 29-DoF as the low-level interface sees it: joint order, limits, gains, poses.

One source of truth for every other module (driver, simulator model, safety layer, config
validation, policy metadata). Numbers are from Unitree's rev 1.0 URDF (unitree_ros, 2025-03
joint-limit update) and the SDK examples; see shared/reference/g1-interface.md §3.
Indices are the SDK's `motor_cmd` / `motor_state` slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_JOINTS = 29
NUM_MOTOR_SLOTS = 35  # unitree_hg LowCmd_/LowState_ carry 35 motor slots
ARM_SDK_WEIGHT_SLOT = 29  # rt/arm_sdk: motor_cmd[29].q is the blend weight in [0, 1]
CONTROL_DT = 0.002  # 500 Hz, the G1's low-level command and state rate
TICK_S = 0.001  # LowState_.tick counts milliseconds of the robot's own clock

# Topics (unitree_hg IDL)
TOPIC_LOWCMD = "rt/lowcmd"
TOPIC_ARM_SDK = "rt/arm_sdk"
TOPIC_LOWSTATE = "rt/lowstate"
TOPIC_DEX3_CMD = "rt/dex3/{side}/cmd"
TOPIC_DEX3_STATE = "rt/dex3/{side}/state"

# Domains: the real robot uses 0, simulators use 1 (unitree_mujoco convention).
ROBOT_DOMAIN = 0
SIM_DOMAIN = 1


@dataclass(frozen=True)
class Joint:
    index: int
    sdk_name: str
    name: str  # URDF/MJCF joint name
    group: str  # left_leg, right_leg, waist, left_arm, right_arm
    lower: float  # rad
    upper: float  # rad
    effort: float  # N·m
    velocity: float  # rad/s


def _j(i: int, sdk: str, name: str, group: str, lo: float, hi: float, eff: float, vel: float) -> Joint:
    return Joint(i, sdk, name, group, lo, hi, eff, vel)


# fmt: off
JOINTS: tuple[Joint, ...] = (
    _j(0,  "LeftHipPitch",       "left_hip_pitch_joint",       "left_leg",  -2.5307,   2.8798,  88, 32),
    _j(1,  "LeftHipRoll",        "left_hip_roll_joint",        "left_leg",  -0.5236,   2.9671, 139, 20),
    _j(2,  "LeftHipYaw",         "left_hip_yaw_joint",         "left_leg",  -2.7576,   2.7576,  88, 32),
    _j(3,  "LeftKnee",           "left_knee_joint",            "left_leg",  -0.087267, 2.8798, 139, 20),
    _j(4,  "LeftAnklePitch",     "left_ankle_pitch_joint",     "left_leg",  -0.87267,  0.5236,  35, 30),
    _j(5,  "LeftAnkleRoll",      "left_ankle_roll_joint",      "left_leg",  -0.2618,   0.2618,  35, 30),
    _j(6,  "RightHipPitch",      "right_hip_pitch_joint",      "right_leg", -2.5307,   2.8798,  88, 32),
    _j(7,  "RightHipRoll",       "right_hip_roll_joint",       "right_leg", -2.9671,   0.5236, 139, 20),
    _j(8,  "RightHipYaw",        "right_hip_yaw_joint",        "right_leg", -2.7576,   2.7576,  88, 32),
    _j(9,  "RightKnee",          "right_knee_joint",           "right_leg", -0.087267, 2.8798, 139, 20),
    _j(10, "RightAnklePitch",    "right_ankle_pitch_joint",    "right_leg", -0.87267,  0.5236,  35, 30),
    _j(11, "RightAnkleRoll",     "right_ankle_roll_joint",     "right_leg", -0.2618,   0.2618,  35, 30),
    _j(12, "WaistYaw",           "waist_yaw_joint",            "waist",     -2.618,    2.618,   88, 32),
    _j(13, "WaistRoll",          "waist_roll_joint",           "waist",     -0.52,     0.52,    35, 30),
    _j(14, "WaistPitch",         "waist_pitch_joint",          "waist",     -0.52,     0.52,    35, 30),
    _j(15, "LeftShoulderPitch",  "left_shoulder_pitch_joint",  "left_arm",  -3.0892,   2.6704,  25, 37),
    _j(16, "LeftShoulderRoll",   "left_shoulder_roll_joint",   "left_arm",  -1.5882,   2.2515,  25, 37),
    _j(17, "LeftShoulderYaw",    "left_shoulder_yaw_joint",    "left_arm",  -2.618,    2.618,   25, 37),
    _j(18, "LeftElbow",          "left_elbow_joint",           "left_arm",  -1.0472,   2.0944,  25, 37),
    _j(19, "LeftWristRoll",      "left_wrist_roll_joint",      "left_arm",  -1.972222054, 1.972222054, 25, 37),
    _j(20, "LeftWristPitch",     "left_wrist_pitch_joint",     "left_arm",  -1.614429558, 1.614429558,  5, 22),
    _j(21, "LeftWristYaw",       "left_wrist_yaw_joint",       "left_arm",  -1.614429558, 1.614429558,  5, 22),
    _j(22, "RightShoulderPitch", "right_shoulder_pitch_joint", "right_arm", -3.0892,   2.6704,  25, 37),
    _j(23, "RightShoulderRoll",  "right_shoulder_roll_joint",  "right_arm", -2.2515,   1.5882,  25, 37),
    _j(24, "RightShoulderYaw",   "right_shoulder_yaw_joint",   "right_arm", -2.618,    2.618,   25, 37),
    _j(25, "RightElbow",         "right_elbow_joint",          "right_arm", -1.0472,   2.0944,  25, 37),
    _j(26, "RightWristRoll",     "right_wrist_roll_joint",     "right_arm", -1.972222054, 1.972222054, 25, 37),
    _j(27, "RightWristPitch",    "right_wrist_pitch_joint",    "right_arm", -1.614429558, 1.614429558,  5, 22),
    _j(28, "RightWristYaw",      "right_wrist_yaw_joint",      "right_arm", -1.614429558, 1.614429558,  5, 22),
)
# fmt: on

JOINT_NAMES: tuple[str, ...] = tuple(j.name for j in JOINTS)
SDK_NAMES: tuple[str, ...] = tuple(j.sdk_name for j in JOINTS)
LOWER = np.array([j.lower for j in JOINTS], dtype=np.float64)
UPPER = np.array([j.upper for j in JOINTS], dtype=np.float64)
EFFORT = np.array([j.effort for j in JOINTS], dtype=np.float64)
VELOCITY = np.array([j.velocity for j in JOINTS], dtype=np.float64)

GROUPS: dict[str, tuple[int, ...]] = {
    g: tuple(j.index for j in JOINTS if j.group == g)
    for g in ("left_leg", "right_leg", "waist", "left_arm", "right_arm")
}
ARM_JOINTS: tuple[int, ...] = GROUPS["left_arm"] + GROUPS["right_arm"]  # 15..28
# rt/arm_sdk drives arms + waist (SDK `ArmJoints`): 17 joints.
ARM_SDK_JOINTS: tuple[int, ...] = GROUPS["waist"] + ARM_JOINTS

# Stand gains per group (kp, kd): unitree_rl_lab FixStand / SDK low-level example, moderate for arms.
DEFAULT_GAINS: dict[str, tuple[float, float]] = {
    "left_leg": (100.0, 2.0),
    "right_leg": (100.0, 2.0),
    "waist": (200.0, 5.0),
    "left_arm": (60.0, 1.5),
    "right_arm": (60.0, 1.5),
}
DAMPING_KD = 8.0  # kp = 0, kd = 8: the damping command of unitree_rl_gym's deploy code

# Home pose (SDK order): knees slightly bent, arms forward and elbows bent, as in unitree_rl_lab FixStand.
# fmt: off
HOME_POSE = np.array([
    -0.1, 0.0, 0.0, 0.3, -0.2, 0.0,          # left leg
    -0.1, 0.0, 0.0, 0.3, -0.2, 0.0,          # right leg
    0.0, 0.0, 0.0,                           # waist
    0.0, 0.25, 0.0, 0.97, 0.15, 0.0, 0.0,    # left arm
    0.0, -0.25, 0.0, 0.97, -0.15, 0.0, 0.0,  # right arm
], dtype=np.float64)
# fmt: on

# D435 head camera on torso_link (URDF d435_link): position (m) and downward pitch (rad).
HEAD_CAMERA_POS = (0.0576, 0.0175, 0.4299)
HEAD_CAMERA_PITCH = 0.8308

# SDK safety thresholds (unitree_sdk2 terminations.hpp)
MAX_TILT_RAD = 1.0
MAX_JOINT_SPEED = 10.0
MAX_GYRO = 6.0
MAX_WINDING_TEMP_C = 120
MAX_CASING_TEMP_C = 85

# Dex3-1 hand: 7 joints per side, message order thumb_0..2, index_0..1, middle_0..1 (unitree_mujoco order).
DEX3_JOINTS = ("thumb_0", "thumb_1", "thumb_2", "index_0", "index_1", "middle_0", "middle_1")
# fmt: off
DEX3_LOWER = {"left":  np.array([-1.0472, -0.7243, 0.0,     -1.5708, -1.7453, -1.5708, -1.7453]),
              "right": np.array([-1.0472, -1.0472, -1.7453,  0.0,     0.0,     0.0,     0.0])}
DEX3_UPPER = {"left":  np.array([1.0472,  1.0472,  1.7453,   0.0,     0.0,     0.0,     0.0]),
              "right": np.array([1.0472,  0.7243,  0.0,      1.5708,  1.7453,  1.5708,  1.7453])}
# fmt: on


def joint_index(name: str) -> int:
    """Index of a joint given its URDF name (``left_elbow_joint``) or SDK name (``LeftElbow``)."""
    for j in JOINTS:
        if name in (j.name, j.sdk_name):
            return j.index
    raise KeyError(f"unknown G1 joint {name!r}; known: {', '.join(JOINT_NAMES)}")


def gains_array(gains: dict[str, tuple[float, float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint (kp, kd) arrays from per-group gains."""
    gains = gains or DEFAULT_GAINS
    kp = np.array([gains[j.group][0] for j in JOINTS], dtype=np.float64)
    kd = np.array([gains[j.group][1] for j in JOINTS], dtype=np.float64)
    return kp, kd
