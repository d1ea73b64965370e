"""Arm forward and inverse kinematics on the project's own G1 model (MuJoCo).

``G1Kinematics().fk(q)`` gives 4x4 poses of the hand sites (and any other site or body) in a base
frame, ``torso_link`` by default: the arms and the head camera hang off the torso, so poses in
that frame depend only on the 7 arm joints of each side. ``ik(frame, target, q0)`` solves the
7 joints of that frame's arm by damped least squares, projected onto ``g1_spec`` joint limits at
every step; the other 22 joints are returned as given in ``q0``.

The model is ``drivers/sim/assets/g1_29dof.xml`` (the simulator's), so IK targets, the scripted
expert and hand-eye calibration agree with what the simulator executes.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import g1_spec

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco

# Names in the project's model (drivers/sim/g1_model.py HAND_SITES).
HAND_FRAMES = {"left_hand": "left_arm", "right_hand": "right_arm"}
DEFAULT_BASE = "torso_link"


def default_model_path() -> Path:
    from .sim import g1_model  # the simulator's model module owns the path

    return Path(g1_model.MODEL_PATH)


@dataclass
class IKResult:
    q: np.ndarray  # (29,) solution; only the arm of ``frame`` differs from q0
    converged: bool
    pos_err_m: float
    rot_err_rad: float
    iterations: int


def _rot_log(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (robust near 0 and pi)."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(R, dtype=np.float64).reshape(9))
    if quat[0] < 0:
        quat = -quat
    v = quat[1:]
    s = np.linalg.norm(v)
    if s < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(s, quat[0])
    return v / s * angle


def pose_error(T_a: np.ndarray, T_b: np.ndarray) -> tuple[float, float]:
    """(position error m, rotation error rad) between two 4x4 poses."""
    dp = float(np.linalg.norm(T_a[:3, 3] - T_b[:3, 3]))
    dr = float(np.linalg.norm(_rot_log(T_a[:3, :3] @ T_b[:3, :3].T)))
    return dp, dr


class G1Kinematics:
    """FK / DLS IK for the G1's arms. Thread-safe (one MjData behind a lock)."""

    def __init__(self, model_path: str | Path | None = None, base: str = DEFAULT_BASE) -> None:
        path = Path(model_path) if model_path is not None else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"G1 model {path} not found; generate it with `python -m dit4dit.drivers.sim.g1_model`")
        self.model = mujoco.MjModel.from_xml_path(str(path))
        self.data = mujoco.MjData(self.model)
        m = self.model
        try:
            jids = [m.joint(name).id for name in g1_spec.JOINT_NAMES]
        except KeyError as e:
            raise ValueError(f"model {path} lacks a G1 joint ({e}); it must use g1_spec joint names") from None
        self._qadr = m.jnt_qposadr[jids]
        self._dadr = m.jnt_dofadr[jids]
        self._base = self._body_id(base)
        self.base = base
        self._lock = threading.Lock()
        mujoco.mj_resetData(m, self.data)  # qpos0: pelvis at its home pose (irrelevant in the torso frame)

    # -- helpers ----------------------------------------------------------------------------------
    def _body_id(self, name: str) -> int:
        bid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)
        if bid < 0:
            raise KeyError(f"no body {name!r} in the G1 model")
        return bid

    def _frame(self, name: str) -> tuple[str, int]:
        sid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, name)
        if sid >= 0:
            return "site", sid
        bid = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name)
        if bid >= 0:
            return "body", bid
        raise KeyError(f"no site or body {name!r} in the G1 model; hand frames: {sorted(HAND_FRAMES)}")

    def _set_q(self, q: np.ndarray) -> None:
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (g1_spec.NUM_JOINTS,):
            raise ValueError(f"q must have shape ({g1_spec.NUM_JOINTS},) in g1_spec order, got {q.shape}")
        self.data.qpos[self._qadr] = q
        mujoco.mj_kinematics(self.model, self.data)

    def _world_pose(self, kind: str, idx: int) -> np.ndarray:
        T = np.eye(4)
        if kind == "site":
            T[:3, :3] = self.data.site_xmat[idx].reshape(3, 3)
            T[:3, 3] = self.data.site_xpos[idx]
        else:
            T[:3, :3] = self.data.xmat[idx].reshape(3, 3)
            T[:3, 3] = self.data.xpos[idx]
        return T

    def _base_pose(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.data.xmat[self._base].reshape(3, 3)
        T[:3, 3] = self.data.xpos[self._base]
        return T

    def _in_base(self, kind: str, idx: int) -> np.ndarray:
        Tb = self._base_pose()
        Tw = self._world_pose(kind, idx)
        Ti = np.eye(4)
        Ti[:3, :3] = Tb[:3, :3].T
        Ti[:3, 3] = -Tb[:3, :3].T @ Tb[:3, 3]
        return Ti @ Tw

    # -- API --------------------------------------------------------------------------------------
    def fk(self, q: np.ndarray, frames: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """4x4 poses in the base frame of ``frames`` (default: both hand sites)."""
        frames = tuple(HAND_FRAMES) if frames is None else frames
        with self._lock:
            self._set_q(q)
            return {f: self._in_base(*self._frame(f)) for f in frames}

    def ik(
        self,
        frame: str,
        target_pose: np.ndarray,
        q0: np.ndarray,
        *,
        position_only: bool = False,
        rot_weight: float = 0.3,  # metres per radian: how much orientation counts against position
        damping: float = 0.02,
        nullspace_gain: float = 0.05,  # pull of the redundant DoF toward q0 (keeps teleop solutions near the start)
        max_iters: int = 200,
        tol_pos_m: float = 1e-4,
        tol_rot_rad: float = 1e-3,
        max_step_rad: float = 0.2,
        restarts: int = 0,
        seed: int = 0,
    ) -> IKResult:
        """Solve the arm of ``frame`` (``left_hand`` / ``right_hand``) so it reaches ``target_pose``
        (4x4 in the base frame; with ``position_only`` only its translation counts).

        Starts at ``q0``; with ``restarts`` > 0 also tries random arm configurations (seeded) when
        the first solve does not converge, keeping the best. Joint limits are always respected.
        """
        if frame not in HAND_FRAMES:
            raise KeyError(f"IK frame must be one of {sorted(HAND_FRAMES)}, got {frame!r}")
        target = np.asarray(target_pose, dtype=np.float64)
        if target.shape != (4, 4) or not np.all(np.isfinite(target)):
            raise ValueError(f"target_pose must be a finite 4x4 matrix, got shape {target.shape}")
        joints = np.array(g1_spec.GROUPS[HAND_FRAMES[frame]])
        lo, hi = g1_spec.LOWER[joints], g1_spec.UPPER[joints]
        q0 = np.asarray(q0, dtype=np.float64)
        if q0.shape != (g1_spec.NUM_JOINTS,):
            raise ValueError(f"q0 must have shape ({g1_spec.NUM_JOINTS},), got {q0.shape}")
        rng = np.random.default_rng(seed)
        best: IKResult | None = None
        starts = [np.clip(q0[joints], lo, hi)] + [rng.uniform(lo, hi) for _ in range(restarts)]
        with self._lock:
            for start in starts:
                res = self._solve(frame, target, q0, joints, start, lo, hi, position_only, rot_weight, damping,
                                  nullspace_gain, max_iters, tol_pos_m, tol_rot_rad, max_step_rad)  # fmt: skip
                if best is None or _score(res, position_only) < _score(best, position_only):
                    best = res
                if best.converged:
                    break
        assert best is not None
        return best

    def _solve(
        self, frame: str, target: np.ndarray, q_full: np.ndarray, joints: np.ndarray, start: np.ndarray,
        lo: np.ndarray, hi: np.ndarray, position_only: bool, rot_weight: float, damping: float,
        nullspace_gain: float, max_iters: int, tol_pos: float, tol_rot: float, max_step: float,
    ) -> IKResult:  # fmt: skip
        m, d = self.model, self.data
        kind, idx = self._frame(frame)
        q = q_full.copy()
        q[joints] = start
        dofs = self._dadr[joints]
        jacp = np.zeros((3, m.nv))
        jacr = np.zeros((3, m.nv))
        pos_err = rot_err = np.inf
        it = 0
        for it in range(1, max_iters + 1):
            self._set_q(q)
            mujoco.mj_comPos(m, d)
            T = self._in_base(kind, idx)
            e_p = target[:3, 3] - T[:3, 3]
            e_r = _rot_log(target[:3, :3] @ T[:3, :3].T)
            pos_err, rot_err = float(np.linalg.norm(e_p)), float(np.linalg.norm(e_r))
            if pos_err < tol_pos and (position_only or rot_err < tol_rot):
                return IKResult(q, True, pos_err, rot_err, it)
            Rb = self._base_pose()[:3, :3]
            if kind == "site":
                mujoco.mj_jacSite(m, d, jacp, jacr, idx)
            else:
                mujoco.mj_jacBody(m, d, jacp, jacr, idx)
            # Arm joints do not move the base, so base-frame Jacobians are rotated world ones.
            Jp = Rb.T @ jacp[:, dofs]
            Jr = Rb.T @ jacr[:, dofs]
            if position_only:
                J, e = Jp, e_p
            else:
                J = np.vstack([Jp, rot_weight * Jr])
                e = np.concatenate([e_p, rot_weight * e_r])
            # Damped least squares; the damping fades as the error shrinks so the last mm converges fast.
            lam2 = damping**2 * min(1.0, float(np.linalg.norm(e)) / 0.05)
            J_pinv = J.T @ np.linalg.inv(J @ J.T + lam2 * np.eye(J.shape[0]))
            dq = J_pinv @ e
            # Redundancy: move toward the start configuration inside the task's null space.
            dq += (np.eye(len(joints)) - J_pinv @ J) @ (nullspace_gain * (q_full[joints] - q[joints]))
            biggest = np.max(np.abs(dq))
            if biggest > max_step:
                dq *= max_step / biggest
            q[joints] = np.clip(q[joints] + dq, lo, hi)
        self._set_q(q)
        T = self._in_base(kind, idx)
        pos_err, rot_err = pose_error(target, T)
        ok = pos_err < tol_pos and (position_only or rot_err < tol_rot)
        return IKResult(q, ok, pos_err, rot_err, it)


def _score(r: IKResult, position_only: bool) -> float:
    return r.pos_err_m + (0.0 if position_only else 0.3 * r.rot_err_rad)
