"""Forward kinematics and gravity torques in the torso frame on the project's own G1 model.

Poses come from ``drivers.kinematics.G1Kinematics`` (the project's FK on the model file the simulator loads,
``drivers/sim/assets/g1_29dof.xml``), so hand-eye calibration uses the very kinematic tree the simulator, the
scripted expert and the controller use. Only the torso-relative chain matters: the head camera and the arms
both hang off ``torso_link``, so the floating base and the legs drop out. Gravity torques (for the joint
check's expected sag) come from MuJoCo's bias forces on the same model.
"""

from __future__ import annotations

import os
import threading

import numpy as np
from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim import g1_model

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco

TORSO = g1_model.TORSO_BODY


class TorsoFK:
    """Poses of G1 bodies in ``torso_link`` and gravity torques, from the 29 joint positions (SDK order)."""

    def __init__(self, model_path: str | None = None) -> None:
        from dit4dit.drivers.kinematics import G1Kinematics

        self.kinematics = G1Kinematics(model_path, base=TORSO)
        self.model = mujoco.MjModel.from_xml_path(str(model_path or g1_model.MODEL_PATH))
        self.data = mujoco.MjData(self.model)
        jid = [self.model.joint(n).id for n in g1_spec.JOINT_NAMES]
        self._qadr = self.model.jnt_qposadr[jid]
        self._dadr = self.model.jnt_dofadr[jid]
        self._lock = threading.Lock()

    def poses(self, q: np.ndarray, bodies: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
        """4x4 poses in the torso frame of the named bodies (or sites)."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (g1_spec.NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"FK needs a finite ({g1_spec.NUM_JOINTS},) joint vector, got shape {q.shape}")
        return self.kinematics.fk(q, tuple(bodies))

    def pose(self, q: np.ndarray, body: str) -> np.ndarray:
        return self.poses(q, (body,))[body]

    def gravity_torque(self, q: np.ndarray) -> np.ndarray:
        """(29,) joint torques (N*m) that hold ``q`` against gravity with the pelvis upright and still.

        A PD joint holding ``q*`` settles at ``q = q* - gravity_torque / kp``: the sag the joint check
        expects and subtracts before it calls a steady error an offset.
        """
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (g1_spec.NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"gravity_torque needs a finite ({g1_spec.NUM_JOINTS},) joint vector, got {q.shape}")
        with self._lock:
            d = self.data
            d.qpos[:] = self.model.qpos0
            d.qpos[self._qadr] = q
            d.qvel[:] = 0.0
            mujoco.mj_forward(self.model, d)
            return d.qfrc_bias[self._dadr].copy()
