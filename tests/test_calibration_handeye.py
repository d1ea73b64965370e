"""Hand-eye: the head camera's pose in torso_link from the wrist plate, in the real MuJoCo G1 scene; and our
Park-Martin closed form checked against OpenCV's own ``cv2.calibrateHandEye`` on the same data."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from dit4dit.calibration.calibration_file import Intrinsics
from dit4dit.calibration.geometry import (
    T_to_rvec_tvec,
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
    HandEyeSample,
    park_martin,
    park_martin_eye_to_hand,
    plate_pose,
    run_handeye,
    solve_hand_eye,
)
from dit4dit.calibration.targets import WRIST_PLATE, WRIST_PLATE_POS_IN_HAND, Detection
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
    from dit4dit.runtime.realtime.safety import SafetyLimits

    kp, kd = g1_spec.gains_array()
    s = SimSession(sim, SafetyLimits.from_config(SafetySection(), dt=0.01), kp, kd, image_size=(H, W))
    s.start()
    return s


@pytest.fixture(scope="module")
def displaced_run():
    """Hand-eye run on the simulated G1 with its head camera mounted off the nominal pose (run once, shared)."""
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
        gt = mujoco_camera_intrinsics(sim.model, "head_camera", W, H)
        intr = Intrinsics(width=W, height=H, source="charuco", **gt)
        session = _session(sim)
        start = session.target.copy()
        result, samples = run_handeye(session, intr, TorsoFK())
        yield SimpleNamespace(sim=sim, truth=truth, intr=intr, session=session, start=start, result=result,
                              samples=samples)
    finally:
        sim.close()


def test_handeye_recovers_a_displaced_head_camera(displaced_run) -> None:
    """Mount the simulated camera off its nominal pose; calibration must find the true one, not the nominal."""
    run = displaced_run
    sim, truth, session, start, result, samples = run.sim, run.truth, run.session, run.start, run.result, run.samples
    nominal = nominal_head_camera_optical(g1_spec.HEAD_CAMERA_POS, g1_spec.HEAD_CAMERA_PITCH)
    assert np.linalg.norm(truth[:3, 3] - nominal[:3, 3]) > 0.007  # the test displaces it for real
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


# ----------------------------------------------------------------------------------------------------------------
# Our Park-Martin against OpenCV's cv2.calibrateHandEye (pyproject pins the OpenCV that has it)
# ----------------------------------------------------------------------------------------------------------------

OPENCV_METHODS = {
    "opencv_park": cv2.CALIB_HAND_EYE_PARK,  # the same algorithm as ours: must agree to rounding
    "opencv_tsai": cv2.CALIB_HAND_EYE_TSAI,  # the others for reference: exact on exact data, close with noise
    "opencv_daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
}
# Exact data: rounding only (an angle from arccos of a trace bottoms out near 1e-6 deg).
EXACT_ROT_DEG, EXACT_POS_M = 1e-4, 1e-6
# Per-axis 1-sigma noise on each pose: (deg, m). Camera: PnP of the 80 mm plate at 0.3-0.55 m; robot: FK
# with small joint offsets. Bounds in multiples of the camera noise; the worst of 200 seeds was 3.0x / 4.9x.
CAMERA_NOISE = (0.2, 0.001)
ROBOT_NOISE = (0.05, 0.0005)
NOISY_ROT_DEG, NOISY_POS_M = 5 * CAMERA_NOISE[0], 10 * CAMERA_NOISE[1]


def _opencv_eye_to_hand(T_torso_hand: list, T_cam_target: list, method: int) -> np.ndarray:
    """cv2.calibrateHandEye as OpenCV documents it for eye-to-hand: base->gripper in, camera in base out."""
    assert hasattr(cv2, "calibrateHandEye"), (
        f"OpenCV {cv2.__version__} has no calibrateHandEye; pyproject.toml pins opencv-python-headless>=4.14,<5")
    inv = [inv_T(T) for T in T_torso_hand]
    R, t = cv2.calibrateHandEye([T[:3, :3] for T in inv], [T[:3, 3] for T in inv],
                                [T[:3, :3] for T in T_cam_target], [T[:3, 3] for T in T_cam_target], method=method)
    return make_T(R, t)


def _solve_all(B: list, C: list) -> dict[str, np.ndarray]:
    """X from the same poses by ours and by each OpenCV method."""
    opencv = {name: _opencv_eye_to_hand(B, C, method) for name, method in OPENCV_METHODS.items()}
    return {"park_martin": park_martin_eye_to_hand(B, C), **opencv}


def _rotvec(v) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(v, dtype=np.float64).reshape(3, 1))[0]


def _perturb(T: np.ndarray, rng, rot_deg: float, pos_m: float) -> np.ndarray:
    return T @ make_T(_rotvec(rng.normal(0, np.radians(rot_deg), 3)), rng.normal(0, pos_m, 3))


def _error(T: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(rotation in deg, translation in m) between two poses."""
    return rotation_distance_deg(T[:3, :3], ref[:3, :3]), float(np.linalg.norm(T[:3, 3] - ref[:3, 3]))


def _views(rng, n: int = 12):
    """Known X (camera in torso) and Y (plate in hand) near the G1's nominal mounts, and n arm poses B_i with
    the plate C_i in view and facing the camera: tilted up to ~35 deg, turned up to ~45 deg, 0.3-0.55 m away."""
    X = nominal_head_camera_optical(g1_spec.HEAD_CAMERA_POS, g1_spec.HEAD_CAMERA_PITCH) @ make_T(
        _rotvec(rng.normal(0, 0.03, 3)), rng.normal(0, 0.01, 3))
    w, h = WRIST_PLATE.size_m
    Y = make_T(np.diag([1.0, -1.0, -1.0]) @ _rotvec(rng.normal(0, 0.05, 3)),
               np.asarray(WRIST_PLATE_POS_IN_HAND) + np.array([-w / 2, h / 2, 0.001]))
    C = [make_T(_rotvec([*rng.uniform(-0.6, 0.6, 2), rng.uniform(-0.8, 0.8)]),
                [rng.uniform(-0.05, 0.0), rng.uniform(-0.04, 0.0), rng.uniform(0.3, 0.55)]) for _ in range(n)]
    return X, Y, [X @ c @ inv_T(Y) for c in C], C


@pytest.mark.parametrize("noisy", [False, True], ids=["exact", "noisy"])
def test_park_martin_agrees_with_opencv_calibrate_hand_eye(noisy: bool) -> None:
    """Synthetic eye-to-hand poses with a known X, exact or noisy: ours and OpenCV's recover X and agree."""
    rot_tol, pos_tol = (NOISY_ROT_DEG, NOISY_POS_M) if noisy else (EXACT_ROT_DEG, EXACT_POS_M)
    worst: dict[str, np.ndarray] = {}
    for seed in range(10):
        rng = np.random.default_rng(seed)
        X, _, B, C = _views(rng)
        if noisy:
            B = [_perturb(T, rng, *ROBOT_NOISE) for T in B]
            C = [_perturb(T, rng, *CAMERA_NOISE) for T in C]
        solved = _solve_all(B, C)
        ours = solved["park_martin"]
        for name, T in solved.items():
            rot, pos = _error(T, X)
            worst[name] = np.maximum(worst.get(name, 0.0), (rot, pos))
            assert rot < rot_tol and pos < pos_tol, f"seed {seed}: {name} {rot:.2g} deg, {pos * 1e3:.2g} mm off"
            rot, pos = _error(T, ours)
            assert rot < rot_tol and pos < pos_tol, f"seed {seed}: {name} {rot:.2g} deg, {pos * 1e3:.2g} mm from ours"
        # the same algorithm on the same pose pairs: only rounding differs, with noise or without
        rot, pos = _error(ours, solved["opencv_park"])
        assert rot < EXACT_ROT_DEG and pos < EXACT_POS_M, f"seed {seed}: ours vs OpenCV's {rot:.2g} deg, {pos:.2g} m"
    for name, (rot, pos) in worst.items():
        print(f"{'noisy' if noisy else 'exact'} {name:18s} worst of 10: {rot:.2g} deg, {pos * 1e3:.2g} mm off")


def test_whole_solve_is_the_same_with_opencv_or_our_closed_form(monkeypatch) -> None:
    """solve_hand_eye (PnP, closed form, refinement) on plate corners projected with 0.2 px noise: OpenCV's
    closed form where cv2 has it, ours where it does not (as with opencv-python 5.0.0); one answer."""
    rng = np.random.default_rng(7)
    X, Y, B, C = _views(rng)
    intr = Intrinsics(width=W, height=H, fx=610.0, fy=610.0, cx=319.5, cy=239.5, source="charuco")
    corners, ids = WRIST_PLATE.corners_m(), np.arange(WRIST_PLATE.n_corners)
    samples = []
    for Bi, Ci in zip(B, C, strict=True):
        uv, _ = cv2.projectPoints(corners, *T_to_rvec_tvec(Ci), intr.camera_matrix(), intr.dist_coeffs())
        uv = uv.reshape(-1, 2) + rng.normal(0, 0.2, (len(ids), 2))
        assert np.all(uv > 0) and np.all(uv < (W, H))
        samples.append(HandEyeSample(Bi, Detection(ids, corners.copy(), uv)))
    with_opencv = solve_hand_eye(samples, intr)
    assert with_opencv.method == "opencv_park+reprojection_lm", f"OpenCV {cv2.__version__}: {with_opencv.method}"
    monkeypatch.delattr(cv2, "calibrateHandEye")
    with_ours = solve_hand_eye(samples, intr)
    assert with_ours.method == "park_martin+reprojection_lm"
    # these bounds held for each of 30 seeds that passed solve_hand_eye's own consistency checks
    for r in (with_opencv, with_ours):
        rot, pos = _error(r.T_torso_cam, X)
        print(f"{r.method}: {rot:.3g} deg, {pos * 1e3:.3g} mm off, reprojection {r.reprojection_error_px:.3f} px")
        assert rot < 0.1 and pos < 0.001
        rot, pos = _error(r.T_hand_target, Y)
        assert rot < 0.3 and pos < 0.001
    rot, pos = _error(with_ours.T_torso_cam, with_opencv.T_torso_cam)
    assert rot < EXACT_ROT_DEG and pos < EXACT_POS_M


def test_park_martin_agrees_with_opencv_on_the_simulated_views(displaced_run) -> None:
    """The closed forms on the simulator's rendered views of the plate (its PnP poses, as the solve gets them)."""
    run = displaced_run
    views = [(s.T_torso_hand, pp[0]) for s in run.samples if (pp := plate_pose(s.detection, run.intr)) is not None]
    B, C = [v[0] for v in views], [v[1] for v in views]
    solved = _solve_all(B, C)
    for name, T in solved.items():
        rot, pos = _error(T, run.truth)
        print(f"sim {name:18s} {rot:.3g} deg, {pos * 1e3:.3g} mm off the truth ({len(views)} views)")
        assert rot < 0.5 and pos < 0.005, f"{name}: {rot:.2g} deg, {pos * 1e3:.2g} mm off the truth"
    rot, pos = _error(solved["park_martin"], solved["opencv_park"])
    assert rot < EXACT_ROT_DEG and pos < EXACT_POS_M
