"""The project's own MuJoCo model of the Unitree G1 29-DoF (rev 1.0), in simple geometry.

Kinematic tree, joint origins and axes, masses, centres of mass and inertia tensors are
transcribed from Unitree's ``g1_29dof_rev_1_0.urdf`` (BSD-3); joint names, order, limits and
effort limits come from :mod:`dit4dit.drivers.g1_spec`. Geometry is capsules, boxes and spheres
sized by eye to the real links, so it renders fast offscreen and needs no mesh files.
Armature follows menagerie's ``g1_mjx.xml``; damping/friction loss follow unitree_mujoco
(g1-interface.md §3.2).

Run ``python -m dit4dit.drivers.sim.g1_model`` to regenerate ``assets/g1_29dof.xml`` (rubber
hands) and ``assets/g1_29dof_dex3.xml`` (Dex3-1 hands, 14 more joints and motors after the 29);
a test checks the committed files equal the generator's output.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dit4dit.drivers import g1_spec

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
MODEL_PATH = ASSETS_DIR / "g1_29dof.xml"  # rubber hands (the G1's stock mittens)
DEX3_MODEL_PATH = ASSETS_DIR / "g1_29dof_dex3.xml"  # Dex3-1 three-finger hands (dit4dit-sim --hands)
HAND_VARIANTS = {"rubber": MODEL_PATH, "dex3": DEX3_MODEL_PATH}

# Names other modules rely on (kinematics, scene, bridge).
PELVIS_BODY = "pelvis"
TORSO_BODY = "torso_link"
IMU_SITE = "imu"  # pelvis IMU, the one LowState reports (URDF imu_in_pelvis)
TORSO_IMU_SITE = "secondary_imu"  # torso IMU (URDF imu_in_torso)
HEAD_CAMERA = "head_camera"
WRIST_CAMERAS = {"left": "left_wrist_camera", "right": "right_wrist_camera"}
# End-effector sites: a point inside the closed rubber hand, 8 cm along the palm frame's x from
# the URDF hand_palm_joint frame; orientation = that palm frame (x along the fingers).
HAND_SITES = {"left": "left_hand", "right": "right_hand"}
PALM_BODIES = {"left": "left_rubber_hand", "right": "right_rubber_hand"}
DEX3_PALM_BODIES = {"left": "left_hand_palm_link", "right": "right_hand_palm_link"}
HAND_SITE_OFFSET = (0.08, 0.0, 0.0)


def dex3_joint_names(side: str) -> tuple[str, ...]:
    """Dex3-1 joint names of one hand in message order (g1_spec.DEX3_JOINTS: thumb_0..2, index_0..1, middle_0..1)."""
    return tuple(f"{side}_hand_{j}_joint" for j in g1_spec.DEX3_JOINTS)



# Collision filtering: robot geoms never collide with each other, only with the world/objects.
ROBOT_CONTYPE, ROBOT_CONAFFINITY = 2, 1
WORLD_CONTYPE, WORLD_CONAFFINITY = 1, 3

# D435 colour stream vertical field of view (69° × 42° at 16:9/4:3 colour modes).
D435_FOVY_DEG = 42.0
WRIST_CAMERA_FOVY_DEG = 58.0  # D405-like

# Reflected rotor inertia per joint group (menagerie g1_mjx.xml, g1-interface.md §3.2).
_ARM_HIP_PY = 0.01017752004
_ARM_HIP_R_KNEE = 0.025101925
_ARM_ANKLE_WAIST_RP = 0.00721945
_ARM_SHOULDER = 0.003609725
_ARM_WRIST_PY = 0.00425
JOINT_DAMPING = 0.05
JOINT_FRICTIONLOSS = 0.2
WRIST_FRICTIONLOSS = 0.1

# Pelvis height with the legs at g1_spec.HOME_POSE and the soles on the floor (computed by FK
# of this model in tests/test_sim_model.py, kept here so the scene needs no solve).
PELVIS_HOME_HEIGHT = 0.7842


def _armature(joint_name: str) -> float:
    if "hip_roll" in joint_name or "knee" in joint_name:
        return _ARM_HIP_R_KNEE
    if "hip" in joint_name or "waist_yaw" in joint_name:
        return _ARM_HIP_PY
    if "ankle" in joint_name or "waist" in joint_name:
        return _ARM_ANKLE_WAIST_RP
    if "wrist_pitch" in joint_name or "wrist_yaw" in joint_name:
        return _ARM_WRIST_PY
    return _ARM_SHOULDER


def _rpy_to_quat(r: float, p: float, y: float) -> tuple[float, float, float, float]:
    """URDF rpy (fixed-axis X then Y then Z) as a MuJoCo quaternion (w, x, y, z)."""
    cr, sr = math.cos(r / 2), math.sin(r / 2)
    cp, sp = math.cos(p / 2), math.sin(p / 2)
    cy, sy = math.cos(y / 2), math.sin(y / 2)
    return (
        cr * cp * cy + sr * sp * sy,
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
    )


@dataclass
class Geom:
    kind: str  # capsule | box | sphere | cylinder
    size: tuple[float, ...] = ()
    fromto: tuple[float, ...] | None = None
    pos: tuple[float, float, float] | None = None
    quat: tuple[float, float, float, float] | None = None
    rgba: str = "0.7 0.7 0.7 1"
    name: str | None = None


@dataclass
class Link:
    name: str
    parent: str | None
    pos: tuple[float, float, float]
    rpy: tuple[float, float, float]
    joint: str | None  # None: fixed to the parent
    axis: tuple[float, float, float] | None
    mass: float
    com: tuple[float, float, float]
    inertia: tuple[float, float, float, float, float, float]  # ixx iyy izz ixy ixz iyz
    geoms: list[Geom] = field(default_factory=list)
    effort: float | None = None  # for joints outside g1_spec (Dex3 fingers): limit comes from `limits`
    limits: tuple[float, float] | None = None


DARK = "0.2 0.2 0.2 1"
LIGHT = "0.75 0.75 0.78 1"


def _leg(side: str) -> list[Link]:
    """One leg; the right side mirrors y (URDF values are mirrored there, signs as in the URDF)."""
    s = 1.0 if side == "left" else -1.0
    p = side
    return [
        Link(f"{p}_hip_pitch_link", "pelvis", (0, s * 0.064452, -0.1027), (0, 0, 0),
             f"{p}_hip_pitch_joint", (0, 1, 0), 1.35, (0.002741, s * 0.047791, -0.02606),
             (0.001811, 0.0014193, 0.0012812, s * 3.68e-05, -3.44e-05, s * 0.000171),
             [Geom("capsule", (0.042,), fromto=(0, 0, 0, 0, s * 0.052, -0.030465), rgba=DARK)]),
        Link(f"{p}_hip_roll_link", f"{p}_hip_pitch_link", (0, s * 0.052, -0.030465), (0, -0.1749, 0),
             f"{p}_hip_roll_joint", (1, 0, 0), 1.52, (0.029812, -s * 0.001045, -0.087934),
             (0.0023773, 0.0024123, 0.0016595, -s * 3.8e-06, -0.0003908, s * 1.84e-05),
             [Geom("capsule", (0.045,), fromto=(0, 0, 0, 0.025, 0, -0.10), rgba=LIGHT)]),
        Link(f"{p}_hip_yaw_link", f"{p}_hip_roll_link", (0.025001, 0, -0.12412), (0, 0, 0),
             f"{p}_hip_yaw_joint", (0, 0, 1), 1.702, (-0.057709, -s * 0.010981, -0.15078),
             (0.0057774, 0.0076124, 0.003149, -s * 0.0005411, -0.0023948, -s * 0.0007072),
             [Geom("capsule", (0.048,), fromto=(0, 0, -0.02, -0.078, s * 0.002, -0.177), rgba=LIGHT)]),
        Link(f"{p}_knee_link", f"{p}_hip_yaw_link", (-0.078273, s * 0.0021489, -0.17734), (0, 0.1749, 0),
             f"{p}_knee_joint", (0, 1, 0), 1.932, (0.005457, s * 0.003964, -0.12074),
             (0.011329, 0.011277, 0.0015168, s * 4.82e-05, -s * 4.49e-05, -s * 0.0007146),
             [Geom("capsule", (0.04,), fromto=(0, 0, 0, 0, 0, -0.27), rgba=LIGHT)]),
        Link(f"{p}_ankle_pitch_link", f"{p}_knee_link", (0, -s * 9.4445e-05, -0.30001), (0, 0, 0),
             f"{p}_ankle_pitch_joint", (0, 1, 0), 0.074, (-0.007269, 0, 0.011137),
             (8.4e-06, 1.89e-05, 1.26e-05, 0, -2.9e-06, 0),
             [Geom("sphere", (0.022,), pos=(0, 0, 0), rgba=DARK)]),
        Link(f"{p}_ankle_roll_link", f"{p}_ankle_pitch_link", (0, 0, -0.017558), (0, 0, 0),
             f"{p}_ankle_roll_joint", (1, 0, 0), 0.608, (0.026505, 0, -0.016425),
             (0.0002231, 0.0016161, 0.0016667, s * 2e-07, 8.91e-05, -s * 1e-07),
             # sole 3.5 cm below the ankle roll axis, toe at +0.13, heel at -0.06 (reference
             # model's foot contact points sit at x -0.05..0.12, z -0.03)
             [Geom("box", (0.095, 0.037, 0.0125), pos=(0.035, 0, -0.0225), rgba=DARK,
                   name=f"{p}_foot")]),
    ]


def _arm(side: str) -> list[Link]:
    s = 1.0 if side == "left" else -1.0
    p = side
    return [
        Link(f"{p}_shoulder_pitch_link", "torso_link", (0.0039563, s * 0.10022 if s > 0 else -0.10021, 0.24778),
             (s * 0.27931, 5.4949e-05, -s * 0.00019159),
             f"{p}_shoulder_pitch_joint", (0, 1, 0), 0.718, (0, s * 0.035892, -0.011628),
             (0.0004291, 0.000453, 0.000423, -s * 9.2e-06, 6.4e-06, s * 2.26e-05),
             [Geom("capsule", (0.035,), fromto=(0, s * 0.01, -0.005, 0, s * 0.045, -0.012), rgba=DARK)]),
        Link(f"{p}_shoulder_roll_link", f"{p}_shoulder_pitch_link", (0, s * 0.038, -0.013831), (-s * 0.27925, 0, 0),
             f"{p}_shoulder_roll_joint", (1, 0, 0), 0.643, (-0.000227, s * 0.00727, -0.063243),
             (0.0006177, 0.0006912, 0.0003894, -s * 1e-06, 8.7e-06, -s * 5.3e-06),
             [Geom("capsule", (0.034,), fromto=(0, 0, -0.01, 0, s * 0.006, -0.09), rgba=LIGHT)]),
        Link(f"{p}_shoulder_yaw_link", f"{p}_shoulder_roll_link", (0, s * 0.00624, -0.1032), (0, 0, 0),
             f"{p}_shoulder_yaw_joint", (0, 0, 1), 0.734, (0.010773, -s * 0.002949, -0.072009),
             (0.0009988, 0.0010605, 0.0004354, s * 7.9e-06, 0.0001412, -s * 2.86e-05),
             [Geom("capsule", (0.032,), fromto=(0, 0, -0.01, 0.0158, 0, -0.08), rgba=LIGHT)]),
        Link(f"{p}_elbow_link", f"{p}_shoulder_yaw_link", (0.015783, 0, -0.080518), (0, 0, 0),
             f"{p}_elbow_joint", (0, 1, 0), 0.6, (0.064956, s * 0.004454, -0.010062),
             (0.0002891, 0.0004152, 0.0004197, s * 6.53e-05, 1.72e-05, -s * 5.6e-06),
             [Geom("capsule", (0.029,), fromto=(0, 0, 0, 0.09, s * 0.0017, -0.009), rgba=LIGHT)]),
        Link(f"{p}_wrist_roll_link", f"{p}_elbow_link", (0.1, s * 0.00188791, -0.01), (0, 0, 0),
             f"{p}_wrist_roll_joint", (1, 0, 0), 0.08544498, (0.01713944778, s * 0.00053759094, 4.8864e-07),
             (4.821544023e-05, 3.722899093e-05, 5.482106541e-05, -s * 4.24511021e-06, 5.10599e-09, -s * 1.23525e-09),
             [Geom("capsule", (0.027,), fromto=(0, 0, 0, 0.032, 0, 0), rgba=DARK)]),
        Link(f"{p}_wrist_pitch_link", f"{p}_wrist_roll_link", (0.038, 0, 0), (0, 0, 0),
             f"{p}_wrist_pitch_joint", (0, 1, 0), 0.48404956, (0.02299989837, -s * 0.00111685314, -0.00111658096),
             (0.00016579646273, 0.0004295405741, 0.00042953697654, -s * 1.231206746e-05, 1.231699194e-05,
              s * 8.1417712e-07),
             [Geom("capsule", (0.028,), fromto=(0.004, 0, 0, 0.04, 0, 0), rgba=LIGHT)]),
        Link(f"{p}_wrist_yaw_link", f"{p}_wrist_pitch_link", (0.046, 0, 0), (0, 0, 0),
             f"{p}_wrist_yaw_joint", (0, 0, 1), 0.08457647, (0.02200381568, s * 0.00049485096, 0.00053861123),
             (4.929128828e-05, 5.973338134e-05, 3.928083826e-05, -s * 4.5735494e-07, 4.45867591e-06,
              s * 4.3217198e-07),
             [Geom("cylinder", (0.026, 0.012), pos=(0.022, 0, 0), quat=(0.7071068, 0, 0.7071068, 0), rgba=DARK)]),
        # The rubber hand: a closed mitten, ~12 cm long, fingers along +x of the palm frame.
        Link(f"{p}_rubber_hand", f"{p}_wrist_yaw_link", (0.0415, s * 0.003, 0), (0, 0, 0),
             None, None, 0.17, (0.05361310808, -s * 0.0029590524, 0.00215413091),
             (0.00010099485234748, 0.00028135871571621, 0.00021894770413514, s * 3.618590790516e-05,
              -7.4301518642e-07, s * 3.30189743286e-06),
             [Geom("box", (0.052, 0.018, 0.036), pos=(0.055, 0, 0), rgba=DARK, name=f"{p}_hand_geom")]),
    ]


def _diag_to_full(diag: tuple[float, float, float], quat: tuple[float, float, float, float]) -> tuple[float, ...]:
    """Principal inertia + frame quaternion -> (ixx, iyy, izz, ixy, ixz, iyz)."""
    w, x, y, z = quat
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    I = R @ np.diag(diag) @ R.T
    return (I[0, 0], I[1, 1], I[2, 2], I[0, 1], I[0, 2], I[1, 2])


def _dex3(side: str) -> list[Link]:
    """Dex3-1 hand: palm fixed to the wrist-yaw link, a 3-joint thumb and two 2-joint fingers.

    Joint origins, axes, limits and finger masses/inertias follow Unitree's G1-with-Dex3 description;
    the palm's mass (0.17 kg) and inertia are a box estimate. Left/right mirror y (and the limits).
    """
    s = 1.0 if side == "left" else -1.0
    p = side
    lo, hi = g1_spec.DEX3_LOWER[side], g1_spec.DEX3_UPPER[side]
    lim = {j: (float(lo[i]), float(hi[i])) for i, j in enumerate(g1_spec.DEX3_JOINTS)}
    eff = {j.short: j.effort for j in g1_spec.HAND_JOINTS if j.side == side}
    m_palm, (a, b, c) = 0.17, (0.08, 0.045, 0.07)
    palm_i = (m_palm * (b * b + c * c) / 12, m_palm * (a * a + c * c) / 12, m_palm * (a * a + b * b) / 12, 0, 0, 0)
    grey, dark = "0.55 0.56 0.6 1", DARK
    links = [
        Link(f"{p}_hand_palm_link", f"{p}_wrist_yaw_link", (0.0415, s * 0.003, 0), (0, 0, 0), None, None,
             m_palm, (0.04, 0, 0), palm_i,
             [Geom("box", (0.04, 0.018, 0.038), pos=(0.045, s * 0.004, 0), rgba=dark, name=f"{p}_palm_geom")]),
        Link(f"{p}_hand_thumb_0_link", f"{p}_hand_palm_link", (0.0255, 0, 0), (0, 0, 0), f"{p}_hand_thumb_0_joint",
             (0, 1, 0), 0.0862366, (-0.000884246, -s * 0.00863407, 0.000944293),
             _diag_to_full((1.6546e-05, 1.60058e-05, 1.43741e-05),
                           (0.462991, 0.643965, -0.460173, 0.398986) if s > 0 else (0.643965, 0.462991, -0.398986, 0.460173)),
             [Geom("capsule", (0.012,), fromto=(0, 0, 0, -0.0025, -s * 0.0193, 0), rgba=grey)],
             effort=eff["thumb_0"], limits=lim["thumb_0"]),
        Link(f"{p}_hand_thumb_1_link", f"{p}_hand_thumb_0_link", (-0.0025, -s * 0.0193, 0), (0, 0, 0),
             f"{p}_hand_thumb_1_joint", (0, 0, 1), 0.0588507, (-0.000827888, -s * 0.0354744, -0.0003809),
             _diag_to_full((1.28514e-05, 1.22902e-05, 5.9666e-06),
                           (0.685598, 0.705471, -0.15207, 0.0956069) if s > 0 else (0.705471, 0.685598, -0.0956069, 0.15207)),
             [Geom("capsule", (0.011,), fromto=(0, -s * 0.008, 0, 0, -s * 0.0458, 0), rgba=grey)],
             effort=eff["thumb_1"], limits=lim["thumb_1"]),
        Link(f"{p}_hand_thumb_2_link", f"{p}_hand_thumb_1_link", (0, -s * 0.0458, 0), (0, 0, 0),
             f"{p}_hand_thumb_2_joint", (0, 0, 1), 0.0203063, (-0.00171735, -s * 0.0262819, 0.000107789),
             _diag_to_full((4.61314e-06, 3.86645e-06, 1.53495e-06),
                           (0.703174, 0.710977, -0.00017564, -0.00766553) if s > 0 else (0.710977, 0.703174, 0.00766553, 0.00017564)),
             [Geom("capsule", (0.010,), fromto=(0, -s * 0.006, 0, 0, -s * 0.045, 0), rgba=grey, name=f"{p}_thumb_tip")],
             effort=eff["thumb_2"], limits=lim["thumb_2"]),
    ]
    for finger, z in (("index", 0.0285), ("middle", -0.0285)):
        links += [
            Link(f"{p}_hand_{finger}_0_link", f"{p}_hand_palm_link", (0.0777, s * 0.0016, z), (0, 0, 0),
                 f"{p}_hand_{finger}_0_joint", (0, 0, 1), 0.0588507, (0.0354744, s * 0.000827888, 0.0003809),
                 _diag_to_full((1.28514e-05, 1.22902e-05, 5.9666e-06),
                               (0.391313, 0.552395, 0.417187, 0.606373) if s > 0 else (0.606373, 0.417187, 0.552395, 0.391313)),
                 [Geom("capsule", (0.011,), fromto=(0.006, 0, 0, 0.0458, 0, 0), rgba=grey)],
                 effort=eff[f"{finger}_0"], limits=lim[f"{finger}_0"]),
            Link(f"{p}_hand_{finger}_1_link", f"{p}_hand_{finger}_0_link", (0.0458, 0, 0), (0, 0, 0),
                 f"{p}_hand_{finger}_1_joint", (0, 0, 1), 0.0203063, (0.0262819, s * 0.00171735, -0.000107789),
                 _diag_to_full((4.61314e-06, 3.86645e-06, 1.53495e-06),
                               (0.502612, 0.491799, 0.502639, 0.502861) if s > 0 else (0.502861, 0.502639, 0.491799, 0.502612)),
                 [Geom("capsule", (0.010,), fromto=(0.005, 0, 0, 0.042, 0, 0), rgba=grey, name=f"{p}_{finger}_tip")],
                 effort=eff[f"{finger}_1"], limits=lim[f"{finger}_1"]),
        ]
    return links


def g1_links(hand: str = "rubber") -> list[Link]:
    """All links in MJCF body order (parents before children)."""
    links: list[Link] = [
        Link("pelvis", None, (0, 0, PELVIS_HOME_HEIGHT), (0, 0, 0), None, None, 3.813, (0, 0, -0.07605),
             (0.010549, 0.0093089, 0.0079184, 0, 2.1e-06, 0),
             [Geom("box", (0.055, 0.09, 0.05), pos=(0, 0, -0.075), rgba=DARK, name="pelvis_geom")]),
    ]
    links += _leg("left") + _leg("right")
    links += [
        Link("waist_yaw_link", "pelvis", (0, 0, 0), (0, 0, 0), "waist_yaw_joint", (0, 0, 1), 0.214,
             (0.003494, 0.000233, 0.018034), (0.00010673, 0.00010422, 0.0001625, 2.703e-06, -7.631e-06, -2.01e-07),
             [Geom("cylinder", (0.05, 0.015), pos=(0, 0, 0.018), rgba=DARK)]),
        Link("waist_roll_link", "waist_yaw_link", (-0.0039635, 0, 0.044), (0, 0, 0), "waist_roll_joint", (1, 0, 0),
             0.086, (0, 2.3e-05, 0), (7.079e-06, 6.339e-06, 8.245e-06, 0, 0, 0),
             [Geom("sphere", (0.03,), pos=(0, 0, 0), rgba=DARK)]),
        Link("torso_link", "waist_roll_link", (0, 0, 0), (0, 0, 0), "waist_pitch_joint", (0, 1, 0), 6.78,
             (0.000931, 0.000346, 0.15082), (0.05905, 0.047014, 0.025652, 3.3302e-05, -0.0017715, -2.2399e-05),
             [Geom("box", (0.065, 0.095, 0.12), pos=(-0.005, 0, 0.165), rgba=LIGHT, name="torso_geom"),
              Geom("capsule", (0.05,), fromto=(-0.005, -0.09, 0.255, -0.005, 0.09, 0.255), rgba=LIGHT)]),
        # head_link is fixed to torso_link (URDF head_joint); kept as its own body for its mass.
        # Its front face stays behind the D435 (x 0.0576) so the head camera sees out.
        Link("head_link", "torso_link", (0.0039635, 0, -0.044), (0, 0, 0), None, None, 1.036,
             (0.005267, 0.000299, 0.449869), (0.004085051, 0.004185212, 0.001807911, -2.543e-06, -6.9455e-05,
                                               -3.726e-06),
             [Geom("box", (0.045, 0.06, 0.065), pos=(-0.01, 0, 0.45), rgba=DARK, name="head_geom"),
              Geom("cylinder", (0.035, 0.03), pos=(0, 0, 0.37), rgba=LIGHT)]),
    ]
    links += _arm("left") + _arm("right")
    if hand == "dex3":
        links = [ln for ln in links if ln.name not in PALM_BODIES.values()] + _dex3("left") + _dex3("right")
    elif hand != "rubber":
        raise ValueError(f"hand must be one of {sorted(HAND_VARIANTS)}, got {hand!r}")
    return links


def _fmt(v) -> str:
    return " ".join(f"{float(x):.9g}" for x in v)


def _geom_xml(g: Geom, indent: str) -> str:
    attrs = [f'type="{g.kind}"']
    if g.name:
        attrs.insert(0, f'name="{g.name}"')
    attrs.append(f'size="{_fmt(g.size)}"')
    if g.fromto is not None:
        attrs.append(f'fromto="{_fmt(g.fromto)}"')
    if g.pos is not None:
        attrs.append(f'pos="{_fmt(g.pos)}"')
    if g.quat is not None:
        attrs.append(f'quat="{_fmt(g.quat)}"')
    attrs.append(f'rgba="{g.rgba}"')
    return f'{indent}<geom {" ".join(attrs)}/>\n'


def _camera_xyaxes(pitch: float) -> tuple[float, ...]:
    """MuJoCo camera axes (x right, y up, looking down -z) for an x-forward frame pitched down by `pitch`."""
    c, s = math.cos(pitch), math.sin(pitch)
    ry = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    x_axis = ry @ np.array([0.0, -1.0, 0.0])
    y_axis = ry @ np.array([0.0, 0.0, 1.0])
    return tuple(np.round(np.concatenate([x_axis, y_axis]), 9))


def _extras(link: str, indent: str) -> str:
    """Sites and cameras that belong inside a given body."""
    out = ""
    if link == "pelvis":
        out += f'{indent}<site name="{IMU_SITE}" pos="0.04525 0 -0.08339" size="0.01" rgba="1 0 0 0"/>\n'
    if link == "torso_link":
        out += f'{indent}<site name="{TORSO_IMU_SITE}" pos="-0.03959 -0.00224 0.14792" size="0.01" rgba="1 0 0 0"/>\n'
        out += (f'{indent}<camera name="{HEAD_CAMERA}" pos="{_fmt(g1_spec.HEAD_CAMERA_POS)}" '
                f'xyaxes="{_fmt(_camera_xyaxes(g1_spec.HEAD_CAMERA_PITCH))}" fovy="{D435_FOVY_DEG}"/>\n')
        out += f'{indent}<site name="head_camera_site" pos="{_fmt(g1_spec.HEAD_CAMERA_POS)}" ' \
               f'quat="{_fmt(_rpy_to_quat(0, g1_spec.HEAD_CAMERA_PITCH, 0))}" size="0.005" rgba="0 0 1 0"/>\n'
    for side in ("left", "right"):
        if link in (PALM_BODIES[side], DEX3_PALM_BODIES[side]):
            out += (f'{indent}<site name="{HAND_SITES[side]}" pos="{_fmt(HAND_SITE_OFFSET)}" size="0.01" '
                    f'rgba="0 1 0 0"/>\n')
            # On the back of the hand (palm-frame +z), looking along the fingers and 35° toward -z.
            out += (f'{indent}<camera name="{WRIST_CAMERAS[side]}" pos="0.0 0 0.045" '
                    f'xyaxes="{_fmt(_camera_xyaxes(0.6109))}" fovy="{WRIST_CAMERA_FOVY_DEG}"/>\n')
    return out


def build_model_xml(hand: str = "rubber") -> str:
    """The G1 MJCF as a string (robot only: no floor, no lights); hand: "rubber" or "dex3"."""
    links = g1_links(hand)
    children: dict[str | None, list[Link]] = {}
    for ln in links:
        children.setdefault(ln.parent, []).append(ln)
    spec_by_name = {j.name: j for j in g1_spec.JOINTS}

    def body(ln: Link, depth: int) -> str:
        ind = "  " * depth
        attrs = f'name="{ln.name}" pos="{_fmt(ln.pos)}"'
        if any(abs(a) > 0 for a in ln.rpy):
            attrs += f' quat="{_fmt(_rpy_to_quat(*ln.rpy))}"'
        out = f"{ind}<body {attrs}>\n"
        inner = ind + "  "
        out += (f'{inner}<inertial pos="{_fmt(ln.com)}" mass="{ln.mass:.9g}" '
                f'fullinertia="{_fmt(ln.inertia)}"/>\n')
        if ln.parent is None:
            out += f'{inner}<freejoint name="floating_base_joint"/>\n'
        if ln.joint is not None and ln.joint in spec_by_name:
            j = spec_by_name[ln.joint]
            fl = WRIST_FRICTIONLOSS if "wrist" in ln.joint else JOINT_FRICTIONLOSS
            out += (f'{inner}<joint name="{ln.joint}" axis="{_fmt(ln.axis)}" range="{j.lower:.9g} {j.upper:.9g}" '
                    f'armature="{_armature(ln.joint):.9g}" damping="{JOINT_DAMPING}" frictionloss="{fl}" '
                    f'actuatorfrcrange="{-j.effort:.9g} {j.effort:.9g}"/>\n')
        elif ln.joint is not None:  # Dex3 finger: small rotor, light friction
            lo, hi = ln.limits
            out += (f'{inner}<joint name="{ln.joint}" axis="{_fmt(ln.axis)}" range="{lo:.9g} {hi:.9g}" '
                    f'armature="0.0001" damping="0.01" frictionloss="0.01" '
                    f'actuatorfrcrange="{-ln.effort:.9g} {ln.effort:.9g}"/>\n')
        for g in ln.geoms:
            out += _geom_xml(g, inner)
        out += _extras(ln.name, inner)
        for ch in children.get(ln.name, []):
            out += body(ch, depth + 1)
        out += f"{ind}</body>\n"
        return out

    motors = "".join(
        f'    <motor name="{j.name.removesuffix("_joint")}" joint="{j.name}" '
        f'ctrlrange="{-j.effort:.9g} {j.effort:.9g}"/>\n'
        for j in g1_spec.JOINTS
    )
    fingers = [ln for ln in links if ln.joint is not None and ln.joint not in spec_by_name]
    motors += "".join(
        f'    <motor name="{ln.joint.removesuffix("_joint")}" joint="{ln.joint}" '
        f'ctrlrange="{-ln.effort:.9g} {ln.effort:.9g}"/>\n'
        for ln in fingers
    )
    sensors = "".join(f'    <jointpos name="{j.name}_pos" joint="{j.name}"/>\n' for j in g1_spec.JOINTS)
    sensors += "".join(f'    <jointvel name="{j.name}_vel" joint="{j.name}"/>\n' for j in g1_spec.JOINTS)
    sensors += "".join(f'    <jointactuatorfrc name="{j.name}_torque" joint="{j.name}"/>\n' for j in g1_spec.JOINTS)
    sensors += (
        f'    <framequat name="imu_quat" objtype="site" objname="{IMU_SITE}"/>\n'
        f'    <gyro name="imu_gyro" site="{IMU_SITE}"/>\n'
        f'    <accelerometer name="imu_acc" site="{IMU_SITE}"/>\n'
        f'    <framepos name="frame_pos" objtype="site" objname="{IMU_SITE}"/>\n'
        f'    <framelinvel name="frame_vel" objtype="site" objname="{IMU_SITE}"/>\n'
        f'    <framequat name="secondary_imu_quat" objtype="site" objname="{TORSO_IMU_SITE}"/>\n'
        f'    <gyro name="secondary_imu_gyro" site="{TORSO_IMU_SITE}"/>\n'
        f'    <accelerometer name="secondary_imu_acc" site="{TORSO_IMU_SITE}"/>\n'
    )
    header = (
        f"<!-- Hands: {hand}. "
        "Generated by dit4dit.drivers.sim.g1_model (python -m dit4dit.drivers.sim.g1_model); do not edit.\n"
        "     Unitree G1 29-DoF rev 1.0: joint tree, origins, axes, masses and inertias from Unitree's\n"
        "     g1_29dof_rev_1_0.urdf (BSD-3); limits and effort from dit4dit.drivers.g1_spec;\n"
        "     simple capsule/box/sphere geometry. Actuators: 29 torque motors in SDK order. -->\n"
    )
    return (
        header
        + '<mujoco model="g1_29dof_dit4dit">\n'
        + '  <compiler angle="radian" autolimits="true"/>\n'
        + '  <option timestep="0.002" integrator="implicitfast"/>\n'
        + "  <default>\n"
        + f'    <geom contype="{ROBOT_CONTYPE}" conaffinity="{ROBOT_CONAFFINITY}" condim="3" friction="1.0 0.02 0.001"/>\n'
        + "  </default>\n"
        + "  <worldbody>\n"
        + body(links[0], 2)
        + "  </worldbody>\n"
        + "  <actuator>\n" + motors + "  </actuator>\n"
        + "  <sensor>\n" + sensors + "  </sensor>\n"
        + "</mujoco>\n"
    )


def write_model(path: Path = MODEL_PATH, hand: str = "rubber") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_model_xml(hand))
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Regenerate the project's G1 MJCFs (assets/g1_29dof.xml and "
                                             "assets/g1_29dof_dex3.xml).")
    ap.add_argument("--out-dir", type=Path, default=ASSETS_DIR, help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)
    for hand, path in HAND_VARIANTS.items():
        print(write_model(args.out_dir / path.name, hand))


if __name__ == "__main__":
    main()
