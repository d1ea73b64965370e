"""Camera intrinsics: the RealSense factory values, or a ChArUco calibration with OpenCV.

RealSense: librealsense reports fx, fy, ppx, ppy and a distortion model per stream profile. Its
``brown_conrady`` coefficients are OpenCV's (k1, k2, p1, p2, k3). For ``inverse_brown_conrady`` (D400 colour)
and ``modified_brown_conrady`` librealsense projects with the tangential terms applied after the radial ones,
unlike OpenCV; we convert by a linear least-squares fit of OpenCV coefficients to librealsense's projection
over the image (exact for radial-only or all-zero coefficients; the fit residual is checked and a poor fit is
refused). Other models are refused: calibrate with the ChArUco board instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from dit4dit.calibration.calibration_file import Intrinsics
from dit4dit.calibration.targets import CharucoDetectorFor, CharucoTarget, Detection

log = logging.getLogger(__name__)

MIN_CORNERS_PER_VIEW = 8  # fewer corners than this constrain a view's pose too weakly to keep it
MIN_VIEWS = 10


class IntrinsicsError(RuntimeError):
    """Calibration could not produce trustworthy intrinsics (too few views, bad fit, unknown model)."""


# ----------------------------------------------------------------------------------------------------------------
# RealSense factory intrinsics
# ----------------------------------------------------------------------------------------------------------------


def _model_name(model: object) -> str:
    """'brown_conrady' from rs.distortion.brown_conrady, or a plain string."""
    return str(model).split(".")[-1].lower()


def opencv_from_realsense_modified(
    fx: float, fy: float, ppx: float, ppy: float, coeffs: list[float], width: int, height: int
) -> tuple[list[float], float]:
    """OpenCV (k1, k2, p1, p2, k3) reproducing librealsense's projection for the (inverse/modified)
    Brown-Conrady models; and the fit's RMS error in pixels over the image.

    librealsense projects normalised undistorted (u, v) as
        s = u² + v²;  f = 1 + c0 s + c1 s² + c4 s³;  x = u f;  y = v f
        x' = x + 2 c2 x y + c3 (s + 2 x²);  y' = y + 2 c3 x y + c2 (s + 2 y²)
    (its deprojection inverts this iteratively). OpenCV applies the tangential terms to the undistorted
    point instead, so the two agree exactly only without tangential terms. OpenCV's model is linear in its
    coefficients, so a least-squares fit over a grid covering the image gives the closest OpenCV model.
    """
    c = [float(v) for v in coeffs]
    if not any(c):
        return [0.0] * 5, 0.0
    px, py = np.meshgrid(np.linspace(0, width - 1, 40), np.linspace(0, height - 1, 30))
    # undistorted points spanning the image (distortion is small enough that this covers it)
    u = ((px - ppx) / fx).ravel()
    v = ((py - ppy) / fy).ravel()
    s = u * u + v * v
    f = 1 + c[0] * s + c[1] * s**2 + c[4] * s**3
    x, y = u * f, v * f
    xd = x + 2 * c[2] * x * y + c[3] * (s + 2 * x * x)
    yd = y + 2 * c[3] * x * y + c[2] * (s + 2 * y * y)
    # OpenCV: xd = u (1 + k1 s + k2 s² + k3 s³) + 2 p1 u v + p2 (s + 2 u²); yd likewise
    A = np.zeros((2 * u.size, 5))
    A[0::2] = np.stack([u * s, u * s**2, 2 * u * v, s + 2 * u * u, u * s**3], axis=1)
    A[1::2] = np.stack([v * s, v * s**2, s + 2 * v * v, 2 * u * v, v * s**3], axis=1)
    b = np.empty(2 * u.size)
    b[0::2] = xd - u
    b[1::2] = yd - v
    k, *_ = np.linalg.lstsq(A, b, rcond=None)
    resid = (A @ k - b).reshape(-1, 2) * np.array([fx, fy])
    return [float(k[0]), float(k[1]), float(k[2]), float(k[3]), float(k[4])], float(np.sqrt((resid**2).sum(1).mean()))


def intrinsics_from_realsense(rs_intrinsics: object, max_fit_error_px: float = 0.1) -> Intrinsics:
    """Convert a ``pyrealsense2.intrinsics`` (or any object with its fields) to the calibration file's form."""
    try:
        width, height = int(rs_intrinsics.width), int(rs_intrinsics.height)  # type: ignore[attr-defined]
        fx, fy = float(rs_intrinsics.fx), float(rs_intrinsics.fy)  # type: ignore[attr-defined]
        ppx, ppy = float(rs_intrinsics.ppx), float(rs_intrinsics.ppy)  # type: ignore[attr-defined]
        coeffs = [float(c) for c in rs_intrinsics.coeffs]  # type: ignore[attr-defined]
        model = _model_name(rs_intrinsics.model)  # type: ignore[attr-defined]
    except AttributeError as e:
        raise IntrinsicsError(f"not a RealSense intrinsics object (needs width/height/fx/fy/ppx/ppy/coeffs/model): {e}") from e
    if len(coeffs) != 5:
        raise IntrinsicsError(f"RealSense intrinsics carry 5 distortion coefficients, got {len(coeffs)}")
    if model in ("none",) or (model in ("brown_conrady", "inverse_brown_conrady", "modified_brown_conrady") and not any(coeffs)):
        dist = [0.0] * 5
    elif model == "brown_conrady":
        dist = [coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4]]  # same order and meaning as OpenCV
    elif model in ("inverse_brown_conrady", "modified_brown_conrady"):
        dist, err = opencv_from_realsense_modified(fx, fy, ppx, ppy, coeffs, width, height)
        if err > max_fit_error_px:
            raise IntrinsicsError(
                f"RealSense {model} coefficients {coeffs} are not representable in OpenCV's model "
                f"within {max_fit_error_px} px (fit RMS {err:.3f} px); calibrate with the ChArUco board instead "
                "(dit4dit-calibrate intrinsics --charuco)"
            )
    else:
        raise IntrinsicsError(
            f"RealSense distortion model {model!r} (coefficients {coeffs}) has no OpenCV equivalent here; "
            "calibrate with the ChArUco board instead (dit4dit-calibrate intrinsics --charuco)"
        )
    return Intrinsics(
        width=width, height=height, fx=fx, fy=fy, cx=ppx, cy=ppy, distortion=dist, source="realsense_factory",
        source_model=model,
    )


def read_realsense_intrinsics(serial: str | None, width: int, height: int, fps: int = 30) -> tuple[Intrinsics, str]:
    """Factory intrinsics of a connected RealSense's colour stream at ``width`` x ``height``; returns (intrinsics, serial).

    Reads the stream profile without streaming frames. Raises IntrinsicsError naming what to check when
    no device (or no device with that serial) is connected or the mode is unsupported.
    """
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        raise IntrinsicsError("pyrealsense2 is not installed; pip install 'dit4dit[realsense]'") from e
    devices = list(rs.context().query_devices())
    if not devices:
        raise IntrinsicsError("no RealSense device found: check the USB cable (USB 3 port) and `rs-enumerate-devices`")
    serials = [d.get_info(rs.camera_info.serial_number) for d in devices]
    if serial is None:
        if len(devices) > 1:
            raise IntrinsicsError(f"several RealSense devices ({serials}); set the camera's serial in deploy.yaml")
        dev = devices[0]
    else:
        if serial not in serials:
            raise IntrinsicsError(f"RealSense serial {serial!r} not connected; connected: {serials}")
        dev = devices[serials.index(serial)]
    for sensor in dev.query_sensors():
        for profile in sensor.get_stream_profiles():
            if profile.stream_type() != rs.stream.color:
                continue  # intrinsics depend on the resolution, not the pixel format
            vp = profile.as_video_stream_profile()
            if vp.width() == width and vp.height() == height and int(vp.fps()) == int(fps):
                return intrinsics_from_realsense(vp.get_intrinsics()), dev.get_info(rs.camera_info.serial_number)
    raise IntrinsicsError(f"RealSense {serials[0] if serial is None else serial} has no colour mode {width}x{height}@{fps}")


# ----------------------------------------------------------------------------------------------------------------
# ChArUco calibration
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class CharucoCalibration:
    intrinsics: Intrinsics
    per_view_error_px: list[float]
    used_views: list[int]  # indices into the images given
    rejected_views: dict[int, str]  # index -> why


def collect_detections(images: Iterable[np.ndarray], target: CharucoTarget) -> list[Detection]:
    detector = CharucoDetectorFor(target)
    return [detector.detect(im) for im in images]


def calibrate_charuco(
    images: list[np.ndarray],
    target: CharucoTarget,
    *,
    fix_k3: bool = True,
    zero_distortion: bool = False,
    min_views: int = MIN_VIEWS,
    max_rms_px: float = 1.0,
) -> CharucoCalibration:
    """Calibrate a pinhole + OpenCV distortion model from images of a ChArUco board.

    Views with fewer than MIN_CORNERS_PER_VIEW corners are rejected (with the reason). Raises
    IntrinsicsError when fewer than ``min_views`` remain or the RMS reprojection error exceeds ``max_rms_px``.
    """
    if not images:
        raise IntrinsicsError("no images given for ChArUco calibration")
    shapes = {im.shape[:2] for im in images}
    if len(shapes) != 1:
        raise IntrinsicsError(f"all calibration images must have one size, got {sorted(shapes)}")
    height, width = next(iter(shapes))
    detections = collect_detections(images, target)
    obj, img, used, rejected = [], [], [], {}
    for i, det in enumerate(detections):
        if len(det) < MIN_CORNERS_PER_VIEW:
            rejected[i] = f"{len(det)} corners (< {MIN_CORNERS_PER_VIEW})"
            continue
        obj.append(det.object_points.astype(np.float32))
        img.append(det.image_points.astype(np.float32))
        used.append(i)
    if len(used) < min_views:
        raise IntrinsicsError(
            f"only {len(used)} of {len(images)} views show the {target.name} board well enough (need {min_views}); "
            f"rejected: {rejected}. Show the whole board, tilted in several directions, across the image."
        )
    flags = 0
    if fix_k3:
        flags |= cv2.CALIB_FIX_K3
    if zero_distortion:
        flags |= cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2 | cv2.CALIB_FIX_K3 | cv2.CALIB_ZERO_TANGENT_DIST
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(obj, img, (width, height), None, None, flags=flags)
    per_view = []
    for o, p, rv, tv in zip(obj, img, rvecs, tvecs, strict=True):
        proj, _ = cv2.projectPoints(o, rv, tv, K, dist)
        per_view.append(float(np.sqrt(((proj.reshape(-1, 2) - p) ** 2).sum(1).mean())))
    if not np.isfinite(rms) or rms > max_rms_px:
        raise IntrinsicsError(
            f"ChArUco calibration RMS reprojection error {rms:.3f} px exceeds {max_rms_px} px; per-view errors "
            f"{np.round(per_view, 2).tolist()}: check the board is flat, square size matches ({target.square_m} m), "
            "and the images are sharp"
        )
    intr = Intrinsics(
        width=width, height=height, fx=float(K[0, 0]), fy=float(K[1, 1]), cx=float(K[0, 2]), cy=float(K[1, 2]),
        distortion=[float(v) for v in dist.ravel()[:5]], source="charuco", reprojection_error_px=float(rms),
        n_views=len(used), n_corners=int(sum(len(o) for o in obj)),
    )
    log.info("charuco calibration: %d views, RMS %.3f px, fx %.2f fy %.2f cx %.2f cy %.2f", len(used), rms,
             intr.fx, intr.fy, intr.cx, intr.cy)
    return CharucoCalibration(intr, per_view, used, rejected)


def compare_intrinsics(a: Intrinsics, b: Intrinsics) -> dict[str, float]:
    """Relative differences |a-b|/|b| of fx, fy, cx, cy (e.g. charuco check against the factory values)."""
    return {k: abs(getattr(a, k) - getattr(b, k)) / abs(getattr(b, k)) for k in ("fx", "fy", "cx", "cy")}
