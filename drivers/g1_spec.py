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

# ---- Dex3-1 hands: 7 joints a side. The project's order is the hand message's motor order (HandCmd_.motor_cmd[i],
# HandState_.motor_state[i]), left hand then right hand, each thumb_0..2, index_0..1, middle_0..1.
#
# What the sources say (shared/reference/g1-interface.md §6.1, checked 2026-12):
# - unitree_mujoco's g1_joint_index_dds.md numbers both hands 0 thumb_0, 1 thumb_1, 2 thumb_2, 3 index_0,
#   4 index_1, 5 middle_0, 6 middle_1. This table follows it.
# - Unitree's G1 Dex3 datasets (and xr_teleoperate, citing Unitree's "sort by message structure" note) order the
#   left hand thumb_0..2, middle_0..1, index_0..1 and the right hand thumb_0..2, index_0..1, middle_0..1; that is,
#   the left hand's index and middle pairs are swapped against unitree_mujoco and the two hands disagree.
# - unitree_sdk2py carries no joint names at all: idl/default.py sizes HandCmd_/HandState_ to 7 motors, and the
#   mode byte packs only the motor id (drivers/hands.py).
# Index and middle have the same limits, effort and velocity on each side, so the disagreement can only swap
# labels (which finger moves), never send a value outside a joint's limits. DATASET_ORDER converts; verify on a
# real hand before training on Unitree's data with finger-specific labels.
@dataclass(frozen=True)
class HandJoint:
    side: str  # "left" | "right"
    motor: int  # 0..6, the slot in the side's HandCmd_/HandState_
    short: str  # thumb_0 .. middle_1
    name: str  # MJCF/URDF joint name, left_hand_thumb_0_joint
    lower: float  # rad (Unitree's g1_29dof_with_hand_rev_1_0.urdf)
    upper: float
    effort: float  # N·m
    velocity: float  # rad/s


DEX3_JOINTS = ("thumb_0", "thumb_1", "thumb_2", "index_0", "index_1", "middle_0", "middle_1")
HAND_SIDES = ("left", "right")
# fmt: off
_DEX3_LIMITS = {  # short name: (left lower, left upper, right lower, right upper, effort, velocity)
    "thumb_0":  (-1.0472,  1.0472, -1.0472, 1.0472, 2.45, 6.857),
    "thumb_1":  (-0.7243,  1.0472, -1.0472, 0.7243, 1.4, 12.0),
    "thumb_2":  ( 0.0,     1.7453, -1.7453, 0.0,    1.4, 12.0),
    "index_0":  (-1.5708,  0.0,     0.0,    1.5708, 1.4, 12.0),
    "index_1":  (-1.7453,  0.0,     0.0,    1.7453, 1.4, 12.0),
    "middle_0": (-1.5708,  0.0,     0.0,    1.5708, 1.4, 12.0),
    "middle_1": (-1.7453,  0.0,     0.0,    1.7453, 1.4, 12.0),
}
# fmt: on
HAND_JOINTS: tuple[HandJoint, ...] = tuple(
    HandJoint(side, i, short, f"{side}_hand_{short}_joint",
              _DEX3_LIMITS[short][0 if side == "left" else 2], _DEX3_LIMITS[short][1 if side == "left" else 3],
              _DEX3_LIMITS[short][4], _DEX3_LIMITS[short][5])
    for side in HAND_SIDES for i, short in enumerate(DEX3_JOINTS)
)
HAND_JOINT_NAMES: tuple[str, ...] = tuple(j.name for j in HAND_JOINTS)  # 14, the project's order
DEX3_LOWER = {side: np.array([j.lower for j in HAND_JOINTS if j.side == side]) for side in HAND_SIDES}
DEX3_UPPER = {side: np.array([j.upper for j in HAND_JOINTS if j.side == side]) for side in HAND_SIDES}
DEX3_EFFORT = {side: np.array([j.effort for j in HAND_JOINTS if j.side == side]) for side in HAND_SIDES}
# Unitree's G1 Dex3 dataset order of the 14 hand values (after the 14 arm joints in their 28-D vectors).
DATASET_ORDER: tuple[str, ...] = tuple(
    f"left_hand_{s}_joint" for s in ("thumb_0", "thumb_1", "thumb_2", "middle_0", "middle_1", "index_0", "index_1")
) + tuple(f"right_hand_{s}_joint" for s in DEX3_JOINTS)


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


def dataset_to_hand_order(values: np.ndarray) -> np.ndarray:
    """Hand values (..., 14) in Unitree's dataset order (DATASET_ORDER) -> the project's order (HAND_JOINT_NAMES)."""
    values = np.asarray(values)
    if values.shape[-1] != len(HAND_JOINT_NAMES):
        raise ValueError(f"expected {len(HAND_JOINT_NAMES)} hand values in Unitree's dataset order "
                         f"({', '.join(DATASET_ORDER)}), got shape {values.shape}")
    return values[..., [DATASET_ORDER.index(n) for n in HAND_JOINT_NAMES]]
