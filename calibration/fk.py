"""Forward kinematics in the torso frame on the project's own G1 model.

MuJoCo's ``mj_kinematics`` on the model file the simulator loads (``drivers/sim/assets/g1_29dof.xml``), so
hand-eye calibration uses the very kinematic tree (link origins and axes from Unitree's URDF) that the
simulator and the controller use. Only the torso-relative chain matters: the head camera and the arms both
hang off ``torso_link``, so the floating base and the legs drop out.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from dit4dit.calibration.geometry import inv_T, make_T
from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim import g1_model

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402

TORSO = g1_model.TORSO_BODY


class TorsoFK:
    """Pose of any body of the G1 model in ``torso_link``, from the 29 joint positions (SDK order)."""

    def __init__(self, model_path: str | None = None) -> None:
        self.model = mujoco.MjModel.from_xml_path(str(model_path or g1_model.MODEL_PATH))
        self.data = mujoco.MjData(self.model)
        jid = [self.model.joint(n).id for n in g1_spec.JOINT_NAMES]
        self._qadr = self.model.jnt_qposadr[jid]
        self._dadr = self.model.jnt_dofadr[jid]
        self._torso = self.model.body(TORSO).id
        self._lock = threading.Lock()

    def body_id(self, name: str) -> int:
        bid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)
        if bid < 0:
            raise KeyError(f"body {name!r} is not in the G1 model {g1_model.MODEL_PATH.name}")
        return bid

    def poses(self, q: np.ndarray, bodies: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
        """4x4 poses in the torso frame of the named bodies."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (g1_spec.NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"FK needs a finite ({g1_spec.NUM_JOINTS},) joint vector, got shape {q.shape}")
        ids = {b: self.body_id(b) for b in bodies}
        with self._lock:
            d = self.data
            d.qpos[:] = self.model.qpos0
            d.qpos[self._qadr] = q
            mujoco.mj_kinematics(self.model, d)
            T_world_torso = make_T(d.xmat[self._torso].reshape(3, 3), d.xpos[self._torso])
            inv_torso = inv_T(T_world_torso)
            return {b: inv_torso @ make_T(d.xmat[i].reshape(3, 3), d.xpos[i]) for b, i in ids.items()}

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
