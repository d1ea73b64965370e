"""Intrinsics: ChArUco calibration on real MuJoCo renders of the head camera, and RealSense conversion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from dit4dit.calibration.calibration_file import Intrinsics
from dit4dit.calibration.intrinsics import (
    IntrinsicsError,
    calibrate_charuco,
    intrinsics_from_realsense,
    opencv_from_realsense_modified,
    read_realsense_intrinsics,
)
from dit4dit.calibration.targets import (
    INTRINSICS_BOARD,
    WRIST_PLATE,
    CharucoDetectorFor,
    CharucoTarget,
)

TOL = 0.01  # the tolerance: intrinsics within 1 %
H, W = 480, 640


@pytest.fixture(scope="module")
def board_sim():
    from dit4dit.drivers.sim.scene import G1Sim, SceneConfig

    sim = G1Sim(SceneConfig(tabletop=False, additions=("charuco_board",)))
    yield sim
    sim.close()


def test_head_camera_intrinsics_recovered_within_1_percent(board_sim) -> None:
    from dit4dit.drivers.sim.calibration_props import (
        mujoco_camera_intrinsics,
        render_board_views,
    )

    images = render_board_views(board_sim, "head_camera", (H, W), n=16, seed=1)
    result = calibrate_charuco(images, INTRINSICS_BOARD)
    truth = mujoco_camera_intrinsics(board_sim.model, "head_camera", W, H)
    got = result.intrinsics
    print("intrinsics recovered vs true: " + ", ".join(
        f"{k} {getattr(got, k):.2f}/{truth[k]:.2f}" for k in ("fx", "fy", "cx", "cy")) + f", RMS {got.reprojection_error_px:.3f} px")
    for key in ("fx", "fy", "cx", "cy"):
        rel = abs(getattr(got, key) - truth[key]) / truth[key]
        assert rel < TOL, f"{key}: recovered {getattr(got, key):.2f}, true {truth[key]:.2f} ({rel:.2%} > 1 %)"
    assert got.n_views >= 10
    assert got.reprojection_error_px < 0.5
    # a pinhole render: the fitted radial distortion must stay negligible at the image corner
    r2 = ((W / 2) / got.fx) ** 2
    k1, k2 = got.distortion[:2]
    assert abs(k1 * r2 + k2 * r2 * r2) < 0.005


def test_too_few_board_views_is_refused_with_a_reason(board_sim) -> None:
    from dit4dit.drivers.sim.calibration_props import render_board_views

    images = render_board_views(board_sim, "head_camera", (H, W), n=4, seed=3)
    with pytest.raises(IntrinsicsError, match="need 10"):
        calibrate_charuco(images, INTRINSICS_BOARD)
    with pytest.raises(IntrinsicsError, match="one size"):
        calibrate_charuco([np.zeros((10, 10, 3), np.uint8), np.zeros((20, 10, 3), np.uint8)], INTRINSICS_BOARD)


def test_board_detection_and_ids_do_not_collide() -> None:
    img = INTRINSICS_BOARD.image(80)
    det = CharucoDetectorFor(INTRINSICS_BOARD).detect(img)
    assert len(det) == INTRINSICS_BOARD.n_corners
    # the wrist plate's detector must not see the board (distinct marker ids)
    assert len(CharucoDetectorFor(WRIST_PLATE).detect(img)) == 0
    with pytest.raises(ValueError, match="marker_m"):
        CharucoTarget("bad", 5, 4, 0.02, 0.03)
    with pytest.raises(ValueError, match="do not fit"):
        CharucoTarget("bad", 7, 5, 0.04, 0.03, "DICT_4X4_50", first_marker_id=40)


def test_charuco_corners_are_found_where_they_are_drawn() -> None:
    """No half-pixel bias: opencv-python 4.13 and older put every ChArUco corner ~0.5 px right of and below
    where it is (opencv/opencv#25539, 0.68 px here), hence pyproject's opencv-python-headless>=4.14."""
    px, margin = 60, 40
    board = INTRINSICS_BOARD.image(px)
    image = np.full((board.shape[0] + 2 * margin, board.shape[1] + 2 * margin), 255, np.uint8)
    image[margin:-margin, margin:-margin] = board
    det = CharucoDetectorFor(INTRINSICS_BOARD).detect(cv2.GaussianBlur(image, (0, 0), 0.8))
    assert len(det) == INTRINSICS_BOARD.n_corners
    # pixel centres are at integers, so the edge between pixels k-1 and k is at k - 0.5
    drawn = det.object_points[:, :2] / INTRINSICS_BOARD.square_m * px + margin - 0.5
    offset = det.image_points - drawn
    assert np.linalg.norm(offset.mean(0)) < 0.1, f"corners off by {offset.mean(0)} px on average"
    assert np.linalg.norm(offset, axis=1).max() < 0.4


def _rs_intrinsics(model: str, coeffs: list[float]):
    rs = pytest.importorskip("pyrealsense2")
    intr = rs.intrinsics()
    intr.width, intr.height = 640, 480
    intr.fx, intr.fy, intr.ppx, intr.ppy = 615.3, 615.9, 322.1, 241.7
    intr.model = getattr(rs.distortion, model)
    intr.coeffs = coeffs
    return rs, intr


def test_realsense_zero_distortion_conversion() -> None:
    _, rs_intr = _rs_intrinsics("inverse_brown_conrady", [0.0] * 5)
    got = intrinsics_from_realsense(rs_intr)
    assert (got.fx, got.fy, got.cx, got.cy) == pytest.approx((615.3, 615.9, 322.1, 241.7))
    assert got.distortion == [0.0] * 5
    assert got.source == "realsense_factory" and got.source_model == "inverse_brown_conrady"


def test_realsense_inverse_brown_conrady_matches_librealsense_deprojection() -> None:
    """librealsense's own deprojection, re-projected with our OpenCV coefficients, must land on the pixel."""
    import cv2

    rs, rs_intr = _rs_intrinsics("inverse_brown_conrady", [0.05, -0.08, 0.001, -0.0008, 0.02])
    got = intrinsics_from_realsense(rs_intr)
    pixels = [(x, y) for x in (5.0, 160.0, 320.0, 480.0, 634.0) for y in (5.0, 120.0, 240.0, 360.0, 474.0)]
    pts = np.array([rs.rs2_deproject_pixel_to_point(rs_intr, list(p), 1.0) for p in pixels])
    proj, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), got.camera_matrix(), got.dist_coeffs())
    err = np.linalg.norm(proj.reshape(-1, 2) - np.array(pixels), axis=1)
    assert err.max() < 0.1, f"max round-trip error {err.max():.3f} px"


def test_realsense_brown_conrady_is_opencv_order_and_unknown_models_refused() -> None:
    _, rs_intr = _rs_intrinsics("brown_conrady", [0.1, -0.2, 0.003, 0.004, 0.05])
    assert intrinsics_from_realsense(rs_intr).distortion == pytest.approx([0.1, -0.2, 0.003, 0.004, 0.05])
    _, rs_intr = _rs_intrinsics("kannala_brandt4", [0.1, -0.2, 0.003, 0.004, 0.0])
    with pytest.raises(IntrinsicsError, match="kannala_brandt4.*ChArUco"):
        intrinsics_from_realsense(rs_intr)
    # a fit that cannot represent the model is refused rather than silently approximated
    coeffs = [0.8, -2.5, 0.05, -0.05, 3.0]
    _, err = opencv_from_realsense_modified(615.0, 615.0, 320.0, 240.0, coeffs, 640, 480)
    assert err > 0.1
    _, rs_intr = _rs_intrinsics("inverse_brown_conrady", coeffs)
    with pytest.raises(IntrinsicsError, match="not representable"):
        intrinsics_from_realsense(rs_intr)


def test_read_realsense_without_device_says_what_to_check() -> None:
    rs = pytest.importorskip("pyrealsense2")
    if len(rs.context().query_devices()) > 0:
        pytest.skip("a RealSense is connected; this test covers the no-device message")
    with pytest.raises(IntrinsicsError, match="no RealSense device found"):
        read_realsense_intrinsics(None, 640, 480)


def test_intrinsics_model_validation() -> None:
    with pytest.raises(ValueError, match="outside"):
        Intrinsics(width=640, height=480, fx=600, fy=600, cx=700, cy=240, source="charuco")
    with pytest.raises(ValueError, match="4, 5 or 8"):
        Intrinsics(width=640, height=480, fx=600, fy=600, cx=320, cy=240, source="charuco", distortion=[0.1])
