"""Calibration props for the simulated scene: a ChArUco board on a mocap body, a ChArUco plate on the right hand.

Each prop is a scene addition (MJCF snippets: assets, worldbody bodies, bodies inserted inside a named robot
body) selected by name (``dit4dit-sim --props charuco_board,wrist_marker``). The board textures are generated
with ``cv2.aruco`` from the same :mod:`dit4dit.calibration.targets` definitions the calibration code detects,
so the simulated props are the printed ones, to the millimetre.

Geometry: a textured box's +z face shows the whole texture with image x along the box's +x and image y along
its -y. The target (board) frame of OpenCV therefore sits at the face's (-x, +y) corner with axes
x = +x, y = -y, z = -z of the prop body: ``target_in_body`` returns that transform (ground truth for tests).
"""

from __future__ import annotations

import cv2
import numpy as np
from dit4dit.calibration.targets import (
    INTRINSICS_BOARD,
    WRIST_PLATE,
    WRIST_PLATE_PARENT,
    WRIST_PLATE_POS_IN_HAND,
    CharucoTarget,
)
from dit4dit.drivers.sim.scene import SceneAddition, register_addition

BOARD_BODY = "calib_board"  # mocap body carrying the intrinsics board
WRIST_MARKER_BODY = "calib_wrist_marker"  # body inside the right hand carrying the wrist plate
WRIST_MARKER_PARENT = WRIST_PLATE_PARENT
# On the back of the right mitten (+z face of its box, half-height 0.036 m), centred on the hand.
WRIST_MARKER_POS = WRIST_PLATE_POS_IN_HAND
PLATE_THICKNESS = 0.002  # m, half of it is the box's half-size in z
BACKING_MARGIN = 0.01  # white border around the printed area (the quiet zone a printed board has)
PX_PER_SQUARE = 120


def target_png(target: CharucoTarget, px_per_square: int = PX_PER_SQUARE) -> bytes:
    """PNG bytes of the target (exactly its chessboard area), as the scene's in-memory texture file."""
    ok, buf = cv2.imencode(".png", target.image(px_per_square))
    if not ok:
        raise RuntimeError(f"could not encode the {target.name} texture as PNG")
    return buf.tobytes()


def target_in_body(target: CharucoTarget, thickness: float = PLATE_THICKNESS) -> np.ndarray:
    """4x4 pose of the OpenCV target frame in the prop body's frame (printed face = body +z at z=thickness/2)."""
    w, h = target.size_m
    T = np.eye(4)
    T[:3, :3] = np.diag([1.0, -1.0, -1.0])
    T[:3, 3] = (-w / 2, h / 2, thickness / 2)
    return T


def _plate_geoms(prefix: str, target: CharucoTarget, material: str) -> str:
    w, h = target.size_m
    t = PLATE_THICKNESS / 2
    # Props are seen, never touched: no contacts; a light, explicit mass so they barely load the arm.
    return (
        f'<geom name="{prefix}_print" type="box" size="{w / 2:.6f} {h / 2:.6f} {t:.6f}" material="{material}" '
        f'contype="0" conaffinity="0" mass="0.01" rgba="1 1 1 1"/>\n'
        f'<geom name="{prefix}_backing" type="box" size="{w / 2 + BACKING_MARGIN:.6f} {h / 2 + BACKING_MARGIN:.6f} '
        f'{t:.6f}" pos="0 0 -0.0005" contype="0" conaffinity="0" mass="0.01" rgba="1 1 1 1"/>\n'
    )


def _material(prefix: str) -> str:
    return (
        f'<texture name="{prefix}_tex" type="2d" file="{prefix}.png"/>\n'
        f'<material name="{prefix}_mat" texture="{prefix}_tex" texuniform="false" texrepeat="1 1" '
        'specular="0" shininess="0" reflectance="0"/>\n'
    )


def charuco_board(pos: tuple[float, float, float] = (0.6, 0.0, 1.0)) -> SceneAddition:
    """The intrinsics board on a mocap body (move it with data.mocap_pos / mocap_quat)."""
    return SceneAddition(
        name="charuco_board",
        description="ChArUco intrinsics board on a mocap body",
        assets=_material(BOARD_BODY),
        files={f"{BOARD_BODY}.png": target_png(INTRINSICS_BOARD)},
        worldbody=(
            f'<body name="{BOARD_BODY}" mocap="true" pos="{pos[0]} {pos[1]} {pos[2]}">\n'
            + _plate_geoms(BOARD_BODY, INTRINSICS_BOARD, f"{BOARD_BODY}_mat")
            + "</body>\n"
        ),
    )


def wrist_marker() -> SceneAddition:
    """The wrist plate on the back of the right hand (a rigid plate, like a 3-D printed clip-on)."""
    p = WRIST_MARKER_POS
    return SceneAddition(
        name="wrist_marker",
        description="ChArUco plate on the back of the right hand (hand-eye calibration)",
        assets=_material(WRIST_MARKER_BODY),
        files={f"{WRIST_MARKER_BODY}.png": target_png(WRIST_PLATE)},
        bodies={
            WRIST_MARKER_PARENT: (
                f'<body name="{WRIST_MARKER_BODY}" pos="{p[0]} {p[1]} {p[2]}">\n'
                + _plate_geoms(WRIST_MARKER_BODY, WRIST_PLATE, f"{WRIST_MARKER_BODY}_mat")
                + "</body>\n"
            )
        },
    )


PROPS = {"charuco_board": charuco_board, "wrist_marker": wrist_marker}
for _name, _factory in PROPS.items():
    register_addition(_factory, name=_name)


def calibration_props(names: list[str] | tuple[str, ...] = ("charuco_board", "wrist_marker")) -> list[SceneAddition]:
    """The named props as scene additions; unknown names raise with the list of known ones."""
    out = []
    for n in names:
        if n not in PROPS:
            raise KeyError(f"unknown calibration prop {n!r}; known: {', '.join(PROPS)}")
        out.append(PROPS[n]())
    return out


def mujoco_camera_intrinsics(model: object, camera: str, width: int, height: int) -> dict[str, float]:
    """Ground-truth pinhole intrinsics (OpenCV pixel convention) of a MuJoCo camera rendered at width x height.

    MuJoCo's fovy is the full vertical field of view and pixels are square; the principal point is the image
    centre, which in OpenCV's convention (pixel centres at integers) is ((W-1)/2, (H-1)/2).
    """
    import mujoco

    cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)  # type: ignore[arg-type]
    if cam_id < 0:
        raise KeyError(f"camera {camera!r} is not in the model")
    sensorsize = np.asarray(model.cam_sensorsize[cam_id])  # type: ignore[attr-defined]
    if np.any(sensorsize > 0):
        raise ValueError(f"camera {camera!r} uses sensorsize/focal intrinsics; only fovy cameras are supported here")
    fovy = np.radians(float(model.cam_fovy[cam_id]))  # type: ignore[attr-defined]
    f = (height / 2.0) / np.tan(fovy / 2.0)
    return {"fx": f, "fy": f, "cx": (width - 1) / 2.0, "cy": (height - 1) / 2.0}


def board_views(n: int, seed: int = 0, distance: tuple[float, float] = (0.45, 0.75),
                max_tilt: float = 0.7, spread: float = 0.12) -> list[np.ndarray]:
    """``n`` poses of the intrinsics board's target frame in a camera's optical frame, for calibration views.

    Tilted up to ``max_tilt`` rad about both in-plane axes (tilts are what separate focal length from
    distance) and shifted across the field of view so the corners cover the image.
    """
    from dit4dit.calibration.geometry import make_T, rot_x, rot_y, rot_z

    rng = np.random.default_rng(seed)
    w, h = INTRINSICS_BOARD.size_m
    out = []
    for _ in range(n):
        z = rng.uniform(*distance)
        R = rot_x(rng.uniform(-max_tilt, max_tilt)) @ rot_y(rng.uniform(-max_tilt, max_tilt)) @ rot_z(
            rng.uniform(-0.3, 0.3))
        centre = np.array([rng.uniform(-spread, spread) * z / 0.6, rng.uniform(-spread, spread) * 0.75 * z / 0.6, z])
        # the target frame's origin is the board's corner: put the board's centre at `centre`
        t = centre - R @ np.array([w / 2, h / 2, 0.0])
        out.append(make_T(R, t))
    return out


def place_board(sim: object, T_world_target: np.ndarray) -> None:
    """Move the mocap board so its target frame lands at ``T_world_target`` (a G1Sim with the charuco_board prop)."""
    from dit4dit.calibration.geometry import inv_T, matrix_to_quat

    T_body = T_world_target @ inv_T(target_in_body(INTRINSICS_BOARD))
    sim.set_object_pose(BOARD_BODY, T_body[:3, 3], matrix_to_quat(T_body[:3, :3]))  # type: ignore[attr-defined]


def render_board_views(sim: object, camera: str, size: tuple[int, int], n: int, seed: int = 0) -> list[np.ndarray]:
    """Images of the intrinsics board in ``n`` poses in front of ``camera`` (size = (height, width))."""
    import mujoco

    T_world_cam = sim.camera_pose(camera, "opencv")  # type: ignore[attr-defined]
    images = []
    for T_cam_target in board_views(n, seed):
        place_board(sim, T_world_cam @ T_cam_target)
        mujoco.mj_forward(sim.model, sim.data)  # type: ignore[attr-defined]
        images.append(sim.render(camera, size).copy())  # type: ignore[attr-defined]
    return images
