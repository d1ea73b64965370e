"""Hand-eye (eye-to-hand) calibration of the head camera against the robot's own kinematics.

The head camera is fixed to ``torso_link``; a ChArUco plate is fixed to the right hand. For each arm pose i,
forward kinematics of the project's G1 model gives the hand in the torso frame, B_i, and PnP on the plate gives
the plate in the camera's optical frame, C_i. With X = camera in torso and Y = plate in hand,

    B_i @ Y = X @ C_i    for every i.

1. Closed form: OpenCV's ``calibrateHandEye`` (Park & Martin) in its eye-to-hand use (robot poses inverted).
   pyproject.toml pins opencv-python-headless>=4.14,<5: 5.0.0 does not expose this function to Python
   (opencv/opencv#29565, fixed upstream in #29584), and 4.13 and older put every ChArUco corner ~0.5 px off
   (opencv/opencv#25539). Where the binding is missing anyway, our own Park & Martin over all pose pairs
   (``park_martin_eye_to_hand``) is used; tests/test_calibration_handeye.py checks it against
   ``cv2.calibrateHandEye`` (Park, and Tsai and Daniilidis for reference) on the same data.
2. Refinement: X and Y together by Levenberg-Marquardt on the reprojection error of every detected corner.
   This weighs each corner as the camera actually measures it, so noisy, far or oblique views count less
   than the closed form lets them.

Residuals reported: the spread of Y_i = B_i^-1 X C_i around their mean (position, rotation), and the RMS
corner reprojection error. The result is compared with the nominal mount from ``g1_spec``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations

import cv2
import numpy as np
from dit4dit.calibration.calibration_file import Extrinsics, Intrinsics
from dit4dit.calibration.geometry import (
    T_to_rvec_tvec,
    inv_T,
    make_T,
    matrix_to_quat,
    nominal_head_camera_optical,
    rotation_angle_deg,
    rotation_distance_deg,
    rvec_tvec_to_T,
)
from dit4dit.calibration.targets import Detection
from dit4dit.drivers import g1_spec

log = logging.getLogger(__name__)

MIN_POSES = 6
MIN_PNP_CORNERS = 6  # the plate has 12 inner corners; a view with fewer is too weak for a stable pose


class HandEyeError(RuntimeError):
    """Hand-eye calibration failed or its result is not trustworthy (reason in the message)."""


@dataclass
class HandEyeSample:
    """One arm pose: the hand in the torso frame (FK of measured joints) and the plate seen by the camera."""

    T_torso_hand: np.ndarray  # 4x4
    detection: Detection
    q: np.ndarray | None = None  # (29,) measured joints, kept for the report


@dataclass
class HandEyeResult:
    T_torso_cam: np.ndarray  # camera optical frame in torso_link
    T_hand_target: np.ndarray  # plate (target) frame in the hand frame
    method: str
    residual_position_m: float
    residual_rotation_deg: float
    reprojection_error_px: float
    per_pose_reprojection_px: list[float]
    nominal_offset_position_m: float
    nominal_offset_rotation_deg: float
    n_poses: int

    def to_extrinsics(self, hand_frame: str) -> Extrinsics:
        return Extrinsics(
            position_m=[float(v) for v in self.T_torso_cam[:3, 3]],
            quaternion_wxyz=[float(v) for v in matrix_to_quat(self.T_torso_cam[:3, :3])],
            method=self.method,
            n_poses=self.n_poses,
            residual_position_m=self.residual_position_m,
            residual_rotation_deg=self.residual_rotation_deg,
            reprojection_error_px=self.reprojection_error_px,
            nominal_offset_position_m=self.nominal_offset_position_m,
            nominal_offset_rotation_deg=self.nominal_offset_rotation_deg,
            marker_in_hand_position_m=[float(v) for v in self.T_hand_target[:3, 3]],
            marker_in_hand_quaternion_wxyz=[float(v) for v in matrix_to_quat(self.T_hand_target[:3, :3])],
            hand_frame=hand_frame,
        )


def plate_pose(detection: Detection, intr: Intrinsics, max_error_px: float = 2.0) -> tuple[np.ndarray, float] | None:
    """The plate's pose in the camera optical frame by PnP, and its RMS reprojection error; None if unusable."""
    if len(detection) < MIN_PNP_CORNERS:
        return None
    K, dist = intr.camera_matrix(), intr.dist_coeffs()
    obj = detection.object_points.astype(np.float64)
    img = detection.image_points.astype(np.float64)
    # IPPE is made for planar targets: it returns the right one of the two mirror-ambiguous poses
    # more reliably than the iterative solver started from nothing.
    ok, rvecs, tvecs, errs = cv2.solvePnPGeneric(obj, img, K, dist, flags=cv2.SOLVEPNP_IPPE)
    if not ok or len(rvecs) == 0:
        return None
    best = int(np.argmin(np.asarray(errs).ravel()))
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, dist, rvecs[best].copy(), tvecs[best].copy())
    proj, _ = cv2.projectPoints(obj, rvec, tvec, K, dist)
    err = float(np.sqrt(((proj.reshape(-1, 2) - img) ** 2).sum(1).mean()))
    if err > max_error_px or float(tvec.ravel()[2]) <= 0:
        return None
    return rvec_tvec_to_T(rvec, tvec), err


# ----------------------------------------------------------------------------------------------------------------
# Closed-form solutions
# ----------------------------------------------------------------------------------------------------------------


def _log_rot(R: np.ndarray) -> np.ndarray:
    rvec, _ = cv2.Rodrigues(np.ascontiguousarray(R))
    return rvec.reshape(3)


def _sqrtm_inv_sym(M: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh(M)
    if np.any(w <= 1e-12):
        raise HandEyeError(
            "hand-eye poses do not rotate the hand about two different axes; add poses that turn the wrist "
            "and the forearm in different directions"
        )
    return V @ np.diag(1.0 / np.sqrt(w)) @ V.T


def park_martin(A: list[np.ndarray], B: list[np.ndarray]) -> np.ndarray:
    """X solving A_k X = X B_k in the least-squares sense (Park & Martin 1994)."""
    M = np.zeros((3, 3))
    for a, b in zip(A, B, strict=True):
        M += np.outer(_log_rot(b[:3, :3]), _log_rot(a[:3, :3]))
    R = _sqrtm_inv_sym(M.T @ M) @ M.T
    C = np.vstack([a[:3, :3] - np.eye(3) for a in A])
    d = np.concatenate([R @ b[:3, 3] - a[:3, 3] for a, b in zip(A, B, strict=True)])
    t, *_ = np.linalg.lstsq(C, d, rcond=None)
    return make_T(R, t)


def park_martin_eye_to_hand(T_base_hand: list[np.ndarray], T_cam_target: list[np.ndarray]) -> np.ndarray:
    """X = camera in base by our Park-Martin over all pose pairs (the pairs OpenCV's solver uses too)."""
    # B_j B_i^-1 X = X C_j C_i^-1: the unknown plate-in-hand cancels.
    pairs = list(combinations(range(len(T_base_hand)), 2))
    A = [T_base_hand[j] @ inv_T(T_base_hand[i]) for i, j in pairs]
    B = [T_cam_target[j] @ inv_T(T_cam_target[i]) for i, j in pairs]
    return park_martin(A, B)


def closed_form_eye_to_hand(T_base_hand: list[np.ndarray], T_cam_target: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """X = camera in base from the pose pairs: OpenCV's Park-Martin, or ours where cv2 lacks the binding."""
    if not hasattr(cv2, "calibrateHandEye"):  # opencv-python 5.0.0 (see the module docstring)
        return park_martin_eye_to_hand(T_base_hand, T_cam_target), "park_martin"
    # Eye-to-hand use of the eye-in-hand solver: feed base->gripper (the inverse robot poses);
    # the "camera to gripper" it returns is then the camera in the base frame.
    inv = [inv_T(T) for T in T_base_hand]
    R, t = cv2.calibrateHandEye(
        [T[:3, :3] for T in inv], [T[:3, 3] for T in inv],
        [T[:3, :3] for T in T_cam_target], [T[:3, 3] for T in T_cam_target],
        method=cv2.CALIB_HAND_EYE_PARK,  # by keyword: the 5th positional argument is an output array
    )
    return make_T(R, t), "opencv_park"


def target_in_hand(T_base_hand: list[np.ndarray], T_cam_target: list[np.ndarray], X: np.ndarray) -> list[np.ndarray]:
    """Y_i = B_i^-1 X C_i for each pose: equal for all i when X is right."""
    return [inv_T(B) @ X @ C for B, C in zip(T_base_hand, T_cam_target, strict=True)]


def mean_pose(Ts: list[np.ndarray]) -> np.ndarray:
    """Chordal mean of rotations (SVD projection of the summed matrices) and mean translation."""
    S = sum(T[:3, :3] for T in Ts)
    U, _, Vt = np.linalg.svd(S)
    R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    return make_T(R, np.mean([T[:3, 3] for T in Ts], axis=0))


# ----------------------------------------------------------------------------------------------------------------
# Joint refinement on reprojection error
# ----------------------------------------------------------------------------------------------------------------


def _params(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return np.concatenate([*T_to_rvec_tvec(X), *T_to_rvec_tvec(Y)])


def _unpack(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rvec_tvec_to_T(p[0:3], p[3:6]), rvec_tvec_to_T(p[6:9], p[9:12])


def _residuals(p: np.ndarray, samples: list[HandEyeSample], K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    X, Y = _unpack(p)
    X_inv = inv_T(X)
    out = []
    for s in samples:
        T_cam_target = X_inv @ s.T_torso_hand @ Y
        rvec, tvec = T_to_rvec_tvec(T_cam_target)
        proj, _ = cv2.projectPoints(s.detection.object_points.astype(np.float64), rvec, tvec, K, dist)
        out.append((proj.reshape(-1, 2) - s.detection.image_points).ravel())
    return np.concatenate(out)


def refine(
    X: np.ndarray, Y: np.ndarray, samples: list[HandEyeSample], intr: Intrinsics, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt over (X, Y) minimising corner reprojection error (numerical Jacobian, 12 params)."""
    K, dist = intr.camera_matrix(), intr.dist_coeffs()
    p = _params(X, Y)
    r = _residuals(p, samples, K, dist)
    cost = float(r @ r)
    lam = 1e-3
    steps = np.array([1e-6] * 3 + [1e-7] * 3 + [1e-6] * 3 + [1e-7] * 3)
    for _ in range(iterations):
        J = np.empty((r.size, p.size))
        for k in range(p.size):
            dp = np.zeros_like(p)
            dp[k] = steps[k]
            J[:, k] = (_residuals(p + dp, samples, K, dist) - r) / steps[k]
        H = J.T @ J
        g = J.T @ r
        improved = False
        while lam < 1e8:
            delta = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), g)
            p_new = p + delta
            r_new = _residuals(p_new, samples, K, dist)
            c_new = float(r_new @ r_new)
            if c_new < cost:
                p, r, improved = p_new, r_new, True
                rel = (cost - c_new) / max(cost, 1e-12)
                cost = c_new
                lam = max(lam / 10, 1e-9)
                break
            lam *= 10
        if not improved or rel < 1e-10:
            break
    return _unpack(p)


# ----------------------------------------------------------------------------------------------------------------
# The whole solve
# ----------------------------------------------------------------------------------------------------------------


def solve_hand_eye(
    samples: list[HandEyeSample],
    intr: Intrinsics,
    *,
    max_residual_position_m: float = 0.01,
    max_residual_rotation_deg: float = 2.0,
    max_reprojection_px: float = 2.0,
) -> HandEyeResult:
    """Camera pose in torso from hand-eye samples; raises HandEyeError when too few or inconsistent."""
    poses, used = [], []
    for s in samples:
        pp = plate_pose(s.detection, intr)
        if pp is not None:
            poses.append(pp[0])
            used.append(s)
    if len(used) < MIN_POSES:
        raise HandEyeError(
            f"only {len(used)} of {len(samples)} arm poses gave a usable view of the wrist plate (need {MIN_POSES}); "
            "check that the plate faces the head camera, is lit and is not occluded in the calibration poses"
        )
    B = [s.T_torso_hand for s in used]
    X0, method = closed_form_eye_to_hand(B, poses)
    Y0 = mean_pose(target_in_hand(B, poses, X0))
    X, Y = refine(X0, Y0, used, intr)
    method += "+reprojection_lm"

    Ys = target_in_hand(B, poses, X)
    pos_res = float(np.sqrt(np.mean([np.sum((Yi[:3, 3] - Y[:3, 3]) ** 2) for Yi in Ys])))
    rot_res = float(np.sqrt(np.mean([rotation_distance_deg(Yi[:3, :3], Y[:3, :3]) ** 2 for Yi in Ys])))
    K, dist = intr.camera_matrix(), intr.dist_coeffs()
    per_pose = []
    for s in used:
        r = _residuals(_params(X, Y), [s], K, dist).reshape(-1, 2)
        per_pose.append(float(np.sqrt((r**2).sum(1).mean())))
    all_r = _residuals(_params(X, Y), used, K, dist).reshape(-1, 2)
    reproj = float(np.sqrt((all_r**2).sum(1).mean()))

    nominal = nominal_head_camera_optical(g1_spec.HEAD_CAMERA_POS, g1_spec.HEAD_CAMERA_PITCH)
    result = HandEyeResult(
        T_torso_cam=X,
        T_hand_target=Y,
        method=method,
        residual_position_m=pos_res,
        residual_rotation_deg=rot_res,
        reprojection_error_px=reproj,
        per_pose_reprojection_px=per_pose,
        nominal_offset_position_m=float(np.linalg.norm(X[:3, 3] - nominal[:3, 3])),
        nominal_offset_rotation_deg=rotation_angle_deg(nominal[:3, :3].T @ X[:3, :3]),
        n_poses=len(used),
    )
    problems = []
    if pos_res > max_residual_position_m:
        problems.append(f"plate-in-hand position spread {pos_res * 1000:.1f} mm > {max_residual_position_m * 1000:.0f} mm")
    if rot_res > max_residual_rotation_deg:
        problems.append(f"plate-in-hand rotation spread {rot_res:.2f} deg > {max_residual_rotation_deg} deg")
    if reproj > max_reprojection_px:
        problems.append(f"reprojection error {reproj:.2f} px > {max_reprojection_px} px")
    if problems:
        raise HandEyeError(
            "hand-eye result is inconsistent: " + "; ".join(problems) + ". Likely causes: the plate moves on the hand, "
            "joint offsets (run `dit4dit-calibrate joints`), wrong intrinsics, or motion blur (poses not settled)."
        )
    log.info(
        "hand-eye: %d poses, camera at %s in torso, %.1f mm / %.2f deg from nominal, reprojection %.2f px",
        len(used), np.round(X[:3, 3], 4), result.nominal_offset_position_m * 1000, result.nominal_offset_rotation_deg,
        reproj,
    )
    return result


# ----------------------------------------------------------------------------------------------------------------
# Planning the arm poses
# ----------------------------------------------------------------------------------------------------------------

RIGHT_ARM = g1_spec.GROUPS["right_arm"]
HAND_TIP = np.array([0.11, 0.0, 0.0, 1.0])  # the mitten's far end in the hand frame


@dataclass
class PlanSettings:
    """How hand-eye poses are chosen (all positions in the torso frame, metres)."""

    n_poses: int = 12
    seed: int = 0
    candidates: int = 2000
    max_view_angle_deg: float = 45.0  # plate normal vs the camera ray: steeper views detect poorly
    image_margin_px: float = 25.0
    # the hand (origin and tip) stays in this box at every calibration pose
    box_min: tuple[float, float, float] = (0.16, -0.32, -0.02)
    box_max: tuple[float, float, float] = (0.45, 0.05, 0.35)
    # keep-out for the way there: in front of x_front the hand stays above z_top (a table edge); the
    # default matches the simulator's tabletop scene and a table no higher than the waist on the robot
    keepout_x_front: float = 0.22
    keepout_z_top: float = -0.02
    # joint ranges searched for the central pose (right arm, SDK order within the arm), inside soft limits
    search_lower: tuple[float, ...] = (-1.3, -0.7, -0.6, 0.0, -1.2, -1.0, -1.0)
    search_upper: tuple[float, ...] = (0.3, 0.1, 0.9, 1.7, 1.2, 1.0, 1.0)
    perturb: tuple[float, ...] = (0.2, 0.15, 0.3, 0.2, 0.6, 0.45, 0.45)  # rad around the central pose
    # the elbow and wrist never enter the torso/head block (torso_link frame, with a 5 cm margin)
    body_min: tuple[float, float, float] = (-0.12, -0.15, -0.05)
    body_max: tuple[float, float, float] = (0.12, 0.15, 0.60)


@dataclass
class PlannedPose:
    q: np.ndarray  # (29,)
    view_angle_deg: float
    plate_center_px: tuple[float, float]


class HandEyePlanner:
    """Finds arm poses where the nominal plate is in view and faces the camera, diverse in rotation.

    Uses the nominal camera mount (g1_spec) and the nominal plate mount, so it needs no calibration; the
    solve does not depend on these guesses being exact.
    """

    def __init__(
        self,
        fk: object,
        intr: Intrinsics,
        target_corners: np.ndarray,
        settings: PlanSettings | None = None,
        T_torso_cam: np.ndarray | None = None,
        T_hand_target: np.ndarray | None = None,
        hand_body: str = "right_rubber_hand",
    ) -> None:
        from dit4dit.calibration.targets import WRIST_PLATE, WRIST_PLATE_POS_IN_HAND

        self.fk = fk
        self.intr = intr
        self.s = settings or PlanSettings()
        self.hand_body = hand_body
        self.T_torso_cam = (
            T_torso_cam if T_torso_cam is not None
            else nominal_head_camera_optical(g1_spec.HEAD_CAMERA_POS, g1_spec.HEAD_CAMERA_PITCH)
        )
        if T_hand_target is None:
            w, h = WRIST_PLATE.size_m
            T_hand_target = make_T(np.diag([1.0, -1.0, -1.0]),
                                   np.asarray(WRIST_PLATE_POS_IN_HAND) + np.array([-w / 2, h / 2, 0.001]))
        self.T_hand_target = T_hand_target
        # the plate's outline (its outer corners) must be in view, not only the inner corners
        c = np.asarray(target_corners, dtype=np.float64)
        lo, hi = c.min(0), c.max(0)
        self._outline = np.array([[lo[0], lo[1], 0], [hi[0], lo[1], 0], [lo[0], hi[1], 0], [hi[0], hi[1], 0]])

    _ARM_POINTS = ("right_elbow_link", "right_wrist_roll_link")

    def _hand(self, q: np.ndarray) -> np.ndarray:
        return self.fk.pose(q, self.hand_body)  # type: ignore[attr-defined]

    def _arm_clear(self, q: np.ndarray) -> tuple[np.ndarray, bool]:
        """The hand pose, and whether the elbow and wrist stay out of the torso/head block."""
        poses = self.fk.poses(q, (self.hand_body, *self._ARM_POINTS))  # type: ignore[attr-defined]
        lo, hi = np.asarray(self.s.body_min), np.asarray(self.s.body_max)
        inside = any(np.all(poses[b][:3, 3] > lo) and np.all(poses[b][:3, 3] < hi) for b in self._ARM_POINTS)
        return poses[self.hand_body], not inside

    def in_box(self, T_hand: np.ndarray) -> bool:
        pts = np.stack([T_hand[:3, 3], (T_hand @ HAND_TIP)[:3]])
        return bool(np.all(pts >= self.s.box_min) and np.all(pts <= self.s.box_max))

    def path_clear(self, qa: np.ndarray, qb: np.ndarray, steps: int = 10) -> bool:
        """The straight joint-space line keeps the hand above the keep-out and the arm off the body."""
        for a in np.linspace(0.0, 1.0, steps):
            T, clear = self._arm_clear(qa + a * (qb - qa))
            if not clear:
                return False
            for p in (T[:3, 3], (T @ HAND_TIP)[:3]):
                if p[0] > self.s.keepout_x_front and p[2] < self.s.keepout_z_top:
                    return False
        return True

    def view(self, q: np.ndarray) -> PlannedPose | None:
        """The pose's view of the plate if it is fully in the image and facing the camera, else None."""
        T_hand, clear = self._arm_clear(q)
        if not clear or not self.in_box(T_hand):
            return None
        T_cam_target = inv_T(self.T_torso_cam) @ T_hand @ self.T_hand_target
        pts = (T_cam_target[:3, :3] @ self._outline.T).T + T_cam_target[:3, 3]
        if np.any(pts[:, 2] < 0.15):
            return None
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), self.intr.camera_matrix(), self.intr.dist_coeffs())
        uv = uv.reshape(-1, 2)
        m = self.s.image_margin_px
        if np.any(uv < m) or np.any(uv[:, 0] > self.intr.width - m) or np.any(uv[:, 1] > self.intr.height - m):
            return None
        # the target's z points into the plate: facing the camera means z along the viewing ray
        ray = T_cam_target[:3, 3] / np.linalg.norm(T_cam_target[:3, 3])
        angle = float(np.degrees(np.arccos(np.clip(T_cam_target[:3, 2] @ ray, -1.0, 1.0))))
        if angle > self.s.max_view_angle_deg:
            return None
        centre = uv.mean(0)
        return PlannedPose(q.copy(), angle, (float(centre[0]), float(centre[1])))

    def plan(self, start_q: np.ndarray, soft_lower: np.ndarray, soft_upper: np.ndarray) -> HandEyePlan:
        """``n_poses`` rotation-diverse poses around a central one, with a checked way there from ``start_q``."""
        s = self.s
        rng = np.random.default_rng(s.seed)
        start_q = np.asarray(start_q, dtype=np.float64)
        arm = list(RIGHT_ARM)
        lo = np.maximum(np.asarray(s.search_lower), soft_lower[arm])
        hi = np.minimum(np.asarray(s.search_upper), soft_upper[arm])
        if np.any(lo >= hi):
            raise HandEyeError("the soft joint limits leave no room for the right arm's hand-eye search ranges")

        def sample() -> np.ndarray:
            q = start_q.copy()
            q[arm] = rng.uniform(lo, hi)
            return q

        # 1. the central pose: plate well inside the image and facing the camera
        best: tuple[float, PlannedPose] | None = None
        centre_px = np.array([self.intr.width / 2, self.intr.height / 2])
        for _ in range(s.candidates):
            v = self.view(sample())
            if v is None:
                continue
            off = np.linalg.norm(np.array(v.plate_center_px) - centre_px) / (0.5 * np.linalg.norm(centre_px))
            score = v.view_angle_deg / s.max_view_angle_deg + off
            if best is None or score < best[0]:
                best = (score, v)
        if best is None:
            raise HandEyeError(
                "no arm pose shows the wrist plate to the head camera within the workspace box; check the plate "
                "mount (targets.WRIST_PLATE_POS_IN_HAND) and PlanSettings"
            )
        centre = best[1]
        # 2. the way there: straight if clear, else through one via pose with both legs clear
        via: list[np.ndarray] = []
        if not self.path_clear(start_q, centre.q):
            for _ in range(s.candidates):
                q = sample()
                if self.path_clear(start_q, q) and self.path_clear(q, centre.q):
                    via = [q]
                    break
            else:
                raise HandEyeError(
                    "no clear way from the start pose to the hand-eye poses (the hand would pass below the keep-out "
                    "plane in front of the robot); start from a pose with the hands raised"
                )
        # 3. perturbations around the centre: visible ones, then a rotation-diverse subset whose way from the
        #    centre is clear (checked only for the picks: the line check is the costly part)
        pool = [centre]
        for _ in range(s.candidates):
            if len(pool) >= 8 * s.n_poses:
                break
            q = centre.q.copy()
            q[arm] = np.clip(q[arm] + rng.uniform(-1, 1, len(arm)) * np.asarray(s.perturb), soft_lower[arm],
                             soft_upper[arm])
            v = self.view(q)
            if v is not None:
                pool.append(v)
        rots = [self._hand(p.q)[:3, :3] for p in pool]
        chosen = [0]
        alive = np.ones(len(pool), dtype=bool)
        alive[0] = False
        dmin = np.array([rotation_distance_deg(rots[0], r) for r in rots])
        while len(chosen) < s.n_poses and alive.any():
            k = int(np.argmax(np.where(alive, dmin, -1.0)))
            alive[k] = False
            if not self.path_clear(centre.q, pool[k].q):
                continue
            chosen.append(k)
            dmin = np.minimum(dmin, [rotation_distance_deg(rots[k], r) for r in rots])
        if len(chosen) < s.n_poses:
            raise HandEyeError(f"only {len(chosen)} visible, reachable poses found around the central pose "
                               f"(need {s.n_poses}); loosen PlanSettings or check the plate mount")
        poses = [pool[k] for k in chosen]
        # nearest-neighbour order keeps the moves short
        ordered = [poses.pop(0)]
        while poses:
            k = int(np.argmin([np.linalg.norm(p.q - ordered[-1].q) for p in poses]))
            ordered.append(poses.pop(k))
        return HandEyePlan(start_q, via, ordered)


@dataclass
class HandEyePlan:
    start: np.ndarray
    via: list[np.ndarray]  # from the start to the central pose (and back, reversed)
    poses: list[PlannedPose]  # poses[0] is the central pose; every other is clear to reach from it

    @property
    def centre(self) -> np.ndarray:
        return self.poses[0].q


# ----------------------------------------------------------------------------------------------------------------
# Running it on a robot (real or simulated) through the safety layer
# ----------------------------------------------------------------------------------------------------------------


def collect_samples(session: object, planner: HandEyePlanner, plan: HandEyePlan, n_images: int = 1) -> list[HandEyeSample]:
    """Visit each pose (through the central pose when the direct line is not clear), settle, look, record.

    The caller has brought the arm to the central pose; it is left at the last pose.
    """
    from dit4dit.calibration.targets import WRIST_PLATE, CharucoDetectorFor

    detector = CharucoDetectorFor(WRIST_PLATE)
    samples: list[HandEyeSample] = []
    prev = plan.centre
    for i, pose in enumerate(plan.poses):
        if not planner.path_clear(prev, pose.q):
            session.move_to(plan.centre, RIGHT_ARM)  # type: ignore[attr-defined]
        session.move_to(pose.q, RIGHT_ARM)  # type: ignore[attr-defined]
        prev = pose.q
        for _ in range(n_images):
            image, _stamp = session.image()  # type: ignore[attr-defined]
            q = session.q()  # type: ignore[attr-defined]
            det = detector.detect(image)
            log.info("hand-eye pose %d/%d: %d plate corners", i + 1, len(plan.poses), len(det))
            samples.append(HandEyeSample(planner.fk.pose(q, planner.hand_body), det, q))  # type: ignore[attr-defined]
    return samples


def run_handeye(
    session: object,
    intr: Intrinsics,
    fk: object,
    settings: PlanSettings | None = None,
) -> tuple[HandEyeResult, list[HandEyeSample]]:
    """Plan poses, visit them through the session's safety layer, solve. The arm ends back at its start pose."""
    from dit4dit.calibration.targets import WRIST_PLATE

    safe = session.safe  # type: ignore[attr-defined]
    planner = HandEyePlanner(fk, intr, WRIST_PLATE.corners_m(), settings)
    plan = planner.plan(session.target.copy(), safe.limits.lower, safe.limits.upper)  # type: ignore[attr-defined]
    for q in plan.via:
        session.move_to(q, RIGHT_ARM)  # type: ignore[attr-defined]
    session.move_to(plan.centre, RIGHT_ARM)  # type: ignore[attr-defined]
    try:
        samples = collect_samples(session, planner, plan)
    finally:
        # back the way we came: centre, via (reversed), start
        if not safe.damped:
            session.move_to(plan.centre, RIGHT_ARM)  # type: ignore[attr-defined]
            for q in reversed(plan.via):
                session.move_to(q, RIGHT_ARM)  # type: ignore[attr-defined]
            session.move_to(plan.start, RIGHT_ARM)  # type: ignore[attr-defined]
    return solve_hand_eye(samples, intr), samples
