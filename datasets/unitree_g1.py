"""Unitree's G1 Dex3 dataset layout (unitree_IL_lerobot) mapped to and from the project's joint names.

Their ``observation.state`` and ``action`` are 28 float32 values: the 14 arm joints (left arm, then right,
in the SDK's order) and then 7 per hand. The hands differ: the left hand lists thumb 0-2, middle 0-1,
index 0-1, the right hand thumb 0-2, index 0-1, middle 0-1 (shared/reference/cosmos-and-lerobot.md). The
project orders both hands as ``g1_spec.HAND_JOINTS`` (thumb, index, middle), so the left hand is permuted
and the right is not. Cameras: four 480x640 streams, ``cam_left_high``/``cam_right_high`` (the head's
stereo frame split in half) and ``cam_left_wrist``/``cam_right_wrist``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dit4dit.drivers import g1_spec

ROBOT_TYPE = "Unitree_G1_Dex3"
CAMERAS = ("cam_left_high", "cam_right_high", "cam_left_wrist", "cam_right_wrist")
CAMERA_SHAPE = (480, 640)

_ARM = [g1_spec.JOINTS[i] for i in g1_spec.ARM_JOINTS]  # left arm 15..21, right arm 22..28


def _unitree_hand_name(project_name: str) -> str:
    """``left_hand_middle_0_joint`` -> Unitree's ``kLeftHandMiddle0``."""
    side, _, finger, k, _ = project_name.split("_")
    return f"k{side.capitalize()}Hand{finger.capitalize()}{k}"


#: Unitree's 28 names in their order, and the project's name of each, position by position (the hands'
#: dataset order is g1_spec.DATASET_ORDER, next to the one hand-joint table).
PROJECT_NAMES: tuple[str, ...] = tuple([j.name for j in _ARM] + list(g1_spec.DATASET_ORDER))
UNITREE_NAMES: tuple[str, ...] = tuple(
    [f"k{j.sdk_name}" for j in _ARM] + [_unitree_hand_name(n) for n in g1_spec.DATASET_ORDER]
)
#: The 28 values in the project's own order: arms, then the hands in g1_spec.HAND_JOINT_NAMES order.
PROJECT_ORDER: tuple[str, ...] = tuple([j.name for j in _ARM] + list(g1_spec.HAND_JOINT_NAMES))
ARM_NAMES: tuple[str, ...] = tuple(j.name for j in _ARM)


def flat_names(names: Sequence | None) -> list[str] | None:
    """Feature names as a flat list (Unitree's info.json nests them one level: ``[[...28 names...]]``)."""
    if names is None:
        return None
    if len(names) == 1 and isinstance(names[0], (list, tuple)):
        return [str(n) for n in names[0]]
    return [str(n) for n in names]


def is_unitree_layout(names: Sequence | None) -> bool:
    return flat_names(names) == list(UNITREE_NAMES)


def to_project_order(values: np.ndarray) -> np.ndarray:
    """(..., 28) in Unitree's order -> (..., 28) in :data:`PROJECT_ORDER`."""
    values = np.asarray(values)
    if values.shape[-1] != len(UNITREE_NAMES):
        raise ValueError(f"Unitree G1 Dex3 vectors have {len(UNITREE_NAMES)} values, got shape {values.shape}")
    return values[..., [PROJECT_NAMES.index(n) for n in PROJECT_ORDER]]


def to_unitree_order(values: np.ndarray) -> np.ndarray:
    """(..., 28) in :data:`PROJECT_ORDER` -> (..., 28) in Unitree's order (for recording in their layout)."""
    values = np.asarray(values)
    if values.shape[-1] != len(PROJECT_ORDER):
        raise ValueError(f"project G1 Dex3 vectors have {len(PROJECT_ORDER)} values, got shape {values.shape}")
    return values[..., [PROJECT_ORDER.index(n) for n in PROJECT_NAMES]]


def arm_columns() -> list[int]:
    """Columns of Unitree's 28-D vector that hold the 14 arm joints, in g1_spec.ARM_JOINTS order."""
    return [UNITREE_NAMES.index(f"k{j.sdk_name}") for j in _ARM]
