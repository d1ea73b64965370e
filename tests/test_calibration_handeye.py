"""Hand-eye: the head camera's pose in torso_link from the wrist plate, in the real MuJoCo G1 scene."""

from __future__ import annotations

import numpy as np
import pytest
from dit4dit.calibration.calibration_file import Intrinsics
from dit4dit.calibration.geometry import (
    inv_T,
    make_T,
    matrix_to_quat,
    nominal_head_camera_optical,
    quat_to_matrix,
    rot_x,
    rot_y,
    rot_z,
    rotation_distance_deg,
)
from dit4dit.calibration.handeye import (
    HandEyeError,
    park_martin,
    run_handeye,
    solve_hand_eye,
)
from dit4dit.drivers import g1_spec

POS_TOL_M = 0.01  # the tolerances: position within 1 cm, rotation within 1 degree
ROT_TOL_DEG = 1.0
H, W = 480, 640


def _true_camera_in_torso(sim) -> np.ndarray:
    p, q = sim.body_pose("torso_link")
    return inv_T(make_T(quat_to_matrix(q), p)) @ sim.camera_pose("head_camera", "opencv")


def _session(sim):
    from dit4dit.calibration.session import SimSession
    from dit4dit.runtime.config import SafetySection
    from dit4dit.runtime.safety import SafetyLimits

    kp, kd = g1_spec.gains_array()
    s = SimSession(sim, SafetyLimits.from_config(SafetySection(), dt=0.01), kp, kd, image_size=(H, W))
    s.start()
    return s


def test_handeye_recovers_a_displaced_head_camera() -> None:
    """Mount the simulated camera off its nominal pose; calibration must find the true one, not the nominal."""
    from dit4dit.calibration.fk import TorsoFK
    from dit4dit.drivers.sim.calibration_props import mujoco_camera_intrinsics
    from dit4dit.drivers.sim.scene import G1Sim, SceneConfig

    sim = G1Sim(SceneConfig(additions=("wrist_marker",)))
    try:
        cid = sim.model.camera("head_camera").id
        # 8 mm off and 1.5 deg more pitch, 0.7 deg yaw: what a loose or re-mounted camera looks like
        sim.model.cam_pos[cid] += np.array([0.004, -0.005, 0.0045])
        R = quat_to_matrix(sim.model.cam_quat[cid].copy())
        sim.model.cam_quat[cid] = matrix_to_quat(rot_y(np.radians(1.5)) @ rot_z(np.radians(0.7)) @ R)
        sim.reset()
        truth = _true_camera_in_torso(sim)
        nominal = nominal_head_camera_optical(g1_spec.HEAD_CAMERA_POS, g1_spec.HEAD_CAMERA_PITCH)
        assert np.linalg.norm(truth[:3, 3] - nominal[:3, 3]) > 0.007  # the test displaces it for real

        gt = mujoco_camera_intrinsics(sim.model, "head_camera", W, H)
        intr = Intrinsics(width=W, height=H, source="charuco", **gt)
        session = _session(sim)
        start = session.target.copy()
        result, samples = run_handeye(session, intr, TorsoFK())

        pos_err = float(np.linalg.norm(result.T_torso_cam[:3, 3] - truth[:3, 3]))
        rot_err = rotation_distance_deg(result.T_torso_cam[:3, :3], truth[:3, :3])
        print(f"hand-eye: position error {pos_err * 1000:.3f} mm, rotation error {rot_err:.4f} deg, "
              f"{result.n_poses} poses, reprojection {result.reprojection_error_px:.3f} px, method {result.method}")
        assert pos_err < POS_TOL_M, f"camera position off by {pos_err * 1000:.2f} mm (> 10 mm)"
        assert rot_err < ROT_TOL_DEG, f"camera rotation off by {rot_err:.3f} deg (> 1 deg)"
        # reported offset from the nominal mount is the displacement we applied
        assert result.nominal_offset_position_m == pytest.approx(np.linalg.norm(truth[:3, 3] - nominal[:3, 3]), abs=2e-3)
        assert result.residual_position_m < 0.005 and result.reprojection_error_px < 1.0
        assert result.n_poses >= 8 and len(samples) >= result.n_poses
        # every motion went through the safety layer and the arm came back to where it started
        assert session.safe.stats.commands > 100
        assert np.allclose(session.target, start, atol=1e-9)
        assert np.max(np.abs(sim.joint_positions() - start)) < 0.05  # PD sag under gravity only
        ext = result.to_extrinsics("right_rubber_hand")
        assert np.allclose(ext.matrix(), result.T_torso_cam, atol=1e-9)
    finally:
        sim.close()


def _random_T(rng) -> np.ndarray:
    return make_T(rot_x(rng.uniform(-1, 1)) @ rot_y(rng.uniform(-1, 1)) @ rot_z(rng.uniform(-1, 1)),
                  rng.uniform(-0.3, 0.3, 3))


def test_park_martin_solves_ax_xb_exactly() -> None:
    rng = np.random.default_rng(4)
    X = _random_T(rng)
    A = [_random_T(rng) for _ in range(6)]
    B = [inv_T(X) @ a @ X for a in A]
    got = park_martin(A, B)
    assert np.allclose(got, X, atol=1e-8)


def test_degenerate_motion_and_too_few_views_are_refused() -> None:
    rng = np.random.default_rng(5)
    X = _random_T(rng)
    # rotations about one axis only leave the solution undetermined
    A = [make_T(rot_z(a), rng.uniform(-0.1, 0.1, 3)) for a in (0.3, 0.6, 0.9)]
    B = [inv_T(X) @ a @ X for a in A]
    with pytest.raises(HandEyeError, match="two different axes"):
        park_martin(A, B)
    intr = Intrinsics(width=W, height=H, fx=600, fy=600, cx=319.5, cy=239.5, source="charuco")
    with pytest.raises(HandEyeError, match="usable view"):
        solve_hand_eye([], intr)
