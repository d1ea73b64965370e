"""``dit4dit-calibrate``: camera intrinsics, head-camera extrinsics, timing and a joint check, into one YAML.

    dit4dit-calibrate {intrinsics,handeye,timing,joints,all} --config deploy.yaml --out calib.yaml

Runs against whatever deploy.yaml points at: the real G1 (robot.interface / domain 0) or dit4dit-sim.
Every arm motion goes through the controller's safety layer (runtime/realtime/safety.py, limits from deploy.yaml's
``safety`` section). The arm first moves slowly to the start pose, calibrates, returns to the start pose and
damps, as dit4dit-robot does at the end of a run: on the real robot in ``lowcmd`` mode keep it on its gantry.

An existing --out file is updated section by section (it must be for the same robot and camera); the
controller loads it with ``load_calibration`` and refuses one made for another robot or camera.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from dit4dit.calibration.calibration_file import (
    CalibrationFile,
    CalibrationFileError,
    CameraId,
    Intrinsics,
    RobotId,
    read_calibration,
    save_calibration,
)

log = logging.getLogger("dit4dit.calibrate")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_ROBOT_NAME = "g1"

EPILOG = """\
examples:
  dit4dit-calibrate all --config deploy.yaml --out calib.yaml
  dit4dit-calibrate intrinsics --config deploy.yaml --out calib.yaml --images board_photos/
  dit4dit-calibrate intrinsics --config sim.yaml --out calib.yaml --sim-control tcp://127.0.0.1:55570
      (dit4dit-sim --props charuco_board,wrist_marker: the board is moved in front of the camera for you)
  dit4dit-calibrate joints --config deploy.yaml --out calib.yaml --joints right_elbow_joint,right_wrist_roll_joint

sections: intrinsics (RealSense factory values, or ChArUco board views), handeye (head camera in torso_link
from the wrist plate), timing (camera delay vs rt/lowstate, image -> command latency), joints (sweep check).
Print the boards with `python -m dit4dit.calibration.targets --print DIR` (100 % scale, check a square).
"""


class CalibrateError(RuntimeError):
    """A calibration step cannot run (missing prerequisite, bad arguments); the message says what to do."""


@dataclass
class Rig:
    """The connected robot, head camera and safety-layer session, plus what identifies them."""

    cfg: Any
    robot: Any
    camera: Any
    session: Any
    camera_name: str
    camera_serial: str | None
    camera_kind: str


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dit4dit-calibrate",
        description="Calibrate the G1's head camera (intrinsics, pose in torso_link), the camera/state timing, and "
                    "check the joints; write one calibration YAML referenced from deploy.yaml.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("intrinsics", "handeye", "timing", "joints", "all"))
    p.add_argument("--config", required=True, type=Path, help="deploy.yaml (robot, cameras and safety sections)")
    p.add_argument("--out", required=True, type=Path, help="calibration YAML to write (updated if it exists)")
    p.add_argument("--fresh", action="store_true", help="start a new file instead of updating --out")
    p.add_argument("--camera", default="head", help="camera name in deploy.yaml's cameras (default %(default)s)")
    p.add_argument("--robot-name", default=None,
                   help="robot name stored in the file (default: deploy.yaml robot.name, else 'g1')")
    p.add_argument("--robot-serial", default=None, help="robot serial stored in the file")
    p.add_argument("--sim-control", default=None,
                   help="dit4dit-sim control socket (tcp://HOST:PORT): lets intrinsics move the simulated board")
    g = p.add_argument_group("intrinsics")
    g.add_argument("--charuco", action="store_true", help="calibrate from the board even for a RealSense")
    g.add_argument("--images", type=Path, default=None, help="folder of board images (png/jpg) to calibrate from")
    g.add_argument("--views", type=int, default=16, help="board views to collect live (default %(default)s)")
    g.add_argument("--views-timeout", type=float, default=180.0, help="seconds to collect live views")
    g = p.add_argument_group("handeye")
    g.add_argument("--poses", type=int, default=12, help="arm poses (default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="pose planning seed (default %(default)s)")
    g = p.add_argument_group("timing")
    g.add_argument("--timing-joint", default="right_elbow_joint", help="joint stepped (default %(default)s)")
    g.add_argument("--timing-steps", type=int, default=6, help="steps (default %(default)s)")
    g = p.add_argument_group("joints")
    g.add_argument("--joints", default=None,
                   help="comma-separated joints to sweep (default: deploy.yaml robot.controlled_joints)")
    g.add_argument("--amplitude", type=float, default=0.15, help="sweep amplitude, rad (default %(default)s)")
    g.add_argument("--period", type=float, default=3.0, help="sweep period, s (default %(default)s)")
    g.add_argument("--max-lag", type=float, default=0.2,
                   help="largest command->measurement lag a joint may show, s (default %(default)s)")
    p.add_argument("--speed", type=float, default=0.5, help="largest joint speed of moves, rad/s (default %(default)s)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


# ----------------------------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------------------------


def _load_config(path: Path) -> Any:
    from dit4dit.runtime.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        raise CalibrateError(str(e)) from None


def _camera_section(cfg: Any, name: str) -> Any:
    if name not in cfg.cameras:
        raise CalibrateError(f"deploy.yaml has no camera {name!r} (cameras: {sorted(cfg.cameras) or 'none'}); "
                             "add it or pass --camera")
    return cfg.cameras[name]


def _identity(cfg: Any, args: argparse.Namespace, camera_serial: str | None, camera_kind: str) -> tuple[RobotId, CameraId]:
    name = args.robot_name or getattr(cfg.robot, "name", None) or DEFAULT_ROBOT_NAME
    serial = args.robot_serial or getattr(cfg.robot, "serial", None)
    return RobotId(name=name, serial=serial), CameraId(name=args.camera, serial=camera_serial, kind=camera_kind)


def _open_output(args: argparse.Namespace, robot_id: RobotId, camera_id: CameraId) -> CalibrationFile:
    """The file to update: the existing one when it is for this robot and camera, else a new one."""
    if args.out.exists() and not args.fresh:
        try:
            old = read_calibration(args.out)
        except CalibrationFileError as e:
            raise CalibrateError(f"{e}\n(pass --fresh to replace it)") from None
        if old.robot.name != robot_id.name or old.camera.serial != camera_id.serial or old.camera.name != camera_id.name:
            raise CalibrateError(
                f"{args.out} is for robot {old.robot.name!r} / camera {old.camera.name!r} serial {old.camera.serial!r}, "
                f"not robot {robot_id.name!r} / camera {camera_id.name!r} serial {camera_id.serial!r}; "
                "write to another --out or pass --fresh"
            )
        return old.model_copy(update={"robot": robot_id, "camera": camera_id})
    return CalibrationFile(robot=robot_id, camera=camera_id)


REALSENSE_DEFAULT_SIZE = (640, 480)  # the D435's colour mode when deploy.yaml sets no size


def _connect(cfg: Any, args: argparse.Namespace, need_robot: bool, need_camera: bool) -> Rig:
    from dit4dit.calibration.session import MoveSettings, RobotSession
    from dit4dit.drivers.cameras import CameraError, camera_config, make_camera
    from dit4dit.runtime.realtime.safety import SafetyLimits

    cs = _camera_section(cfg, args.camera)
    fields: dict[str, Any] = {"name": args.camera, "width": cs.width, "height": cs.height, "fps": cs.fps,
                                  "max_age_s": max(cs.max_age_s, 1.0)}
    if cs.kind in ("zmq", "sim"):
        fields["endpoint"] = cs.endpoint
    elif cs.kind == "opencv":
        fields["device"] = cs.device
    elif cs.kind == "realsense":
        fields["serial_number_or_name"] = cs.serial
    camera = make_camera(camera_config(cs.kind, **fields)) if need_camera else None
    if camera is not None:
        try:
            camera.connect()
        except CameraError as e:
            raise CalibrateError(str(e)) from None
    serial = cs.serial if cs.kind == "realsense" else None
    robot = session = None
    if need_robot:
        from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig, RobotError

        rc = cfg.robot
        robot = G1Robot(G1RobotConfig(interface=rc.interface, domain=rc.domain, mode=rc.mode,
                                      arm_sdk_weight_rate=cfg.safety.arm_sdk_weight_rate,
                                      damping_kd=cfg.safety.damping_kd, stale_after_s=cfg.safety.state_timeout_s))
        try:
            robot.connect(rc.connect_timeout_s)
        except RobotError as e:
            if camera is not None:
                camera.disconnect()
            raise CalibrateError(str(e)) from None
        control_dt = 0.01
        limits = SafetyLimits.from_config(cfg.safety, dt=control_dt)
        kp, kd = rc.gains_arrays()
        session = RobotSession(robot, camera, limits, kp, kd, control_dt=control_dt,
                               move=MoveSettings(max_speed=args.speed, settle_timeout_s=5.0),
                               state_timeout_s=max(cfg.safety.state_timeout_s, 0.2))
        session.start()
    return Rig(cfg, robot, camera, session, args.camera, serial, cs.kind)


def _finish(rig: Rig) -> None:
    """Back to the start pose, then damp (arm_sdk: the driver hands back to the built-in controller)."""
    try:
        if rig.session is not None and not rig.session.safe.damped:
            rig.session.move_to(rig.cfg.robot.start_pose_array())
            rig.session.safe.damp()
            time.sleep(rig.cfg.safety.damp_hold_s)
    finally:
        if rig.robot is not None:
            rig.robot.disconnect()
        if rig.camera is not None:
            rig.camera.disconnect()


# ----------------------------------------------------------------------------------------------------------------
# Intrinsics sources
# ----------------------------------------------------------------------------------------------------------------


def _load_images(folder: Path) -> list[np.ndarray]:
    import cv2

    if not folder.is_dir():
        raise CalibrateError(f"--images {folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not files:
        raise CalibrateError(f"--images {folder} holds no png/jpg images")
    out = []
    for f in files:
        im = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if im is None:
            raise CalibrateError(f"cannot read image {f}")
        out.append(cv2.cvtColor(im, cv2.COLOR_BGR2RGB))
    return out


def _fresh_frame(camera: Any, after: float, timeout_s: float = 3.0) -> np.ndarray:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        f = camera.read_new(timeout_s=1.0)
        if f.stamp > after:
            return f.image
    raise CalibrateError(f"camera delivered no frame newer than the request within {timeout_s} s")


def _sim_board_images(camera: Any, control: str, n: int, seed: int) -> list[np.ndarray]:
    """Move dit4dit-sim's mocap board through views in front of the camera and grab one frame per view."""
    from dit4dit.calibration.geometry import inv_T, matrix_to_quat
    from dit4dit.calibration.targets import INTRINSICS_BOARD
    from dit4dit.drivers.sim.bridge import control_request
    from dit4dit.drivers.sim.calibration_props import (
        BOARD_BODY,
        board_views,
        target_in_body,
    )

    info = control_request(control, "camera_info", camera=camera.name)
    T_world_cam = np.asarray(info["T_world_cam"])
    latency = float(info.get("latency", 0.0))
    images = []
    for T_cam_target in board_views(n, seed):
        T_body = T_world_cam @ T_cam_target @ inv_T(target_in_body(INTRINSICS_BOARD))
        try:
            control_request(control, "set_object_pose", name=BOARD_BODY, pos=T_body[:3, 3].tolist(),
                            quat=matrix_to_quat(T_body[:3, :3]).tolist())
        except RuntimeError as e:
            raise CalibrateError(f"{e} (start dit4dit-sim with --props charuco_board)") from None
        images.append(_fresh_frame(camera, time.monotonic() + latency + 0.01))
    # park the board out of the way (behind the robot) so later steps see only the wrist plate
    control_request(control, "set_object_pose", name=BOARD_BODY, pos=[-2.0, 0.0, 0.5], quat=[1.0, 0.0, 0.0, 0.0])
    return images


def _live_board_images(camera: Any, n: int, timeout_s: float) -> list[np.ndarray]:
    """Frames in which the operator holds the board in new places: kept when the board moved > 40 px."""
    from dit4dit.calibration.targets import INTRINSICS_BOARD, CharucoDetectorFor

    det = CharucoDetectorFor(INTRINSICS_BOARD)
    kept: list[tuple[np.ndarray, Any]] = []
    deadline = time.monotonic() + timeout_s
    log.info("show the %s board to the camera in %d different places and tilts (%.0f s)", INTRINSICS_BOARD.name, n,
             timeout_s)
    while len(kept) < n and time.monotonic() < deadline:
        frame = camera.read_new(timeout_s=1.0)
        d = det.detect(frame.image)
        if len(d) < INTRINSICS_BOARD.n_corners // 2:
            continue
        centre = d.image_points.mean(0)
        if all(np.linalg.norm(centre - k[1].image_points.mean(0)) > 40 or abs(len(d) - len(k[1])) > 6 for k in kept):
            kept.append((frame.image, d))
            log.info("view %d/%d kept (%d corners)", len(kept), n, len(d))
    if len(kept) < n:
        raise CalibrateError(f"only {len(kept)} of {n} board views collected in {timeout_s:.0f} s")
    return [k[0] for k in kept]


def do_intrinsics(rig: Rig, args: argparse.Namespace) -> tuple[Intrinsics, str | None]:
    """Intrinsics and the camera serial they belong to."""
    from dit4dit.calibration.intrinsics import (
        IntrinsicsError,
        calibrate_charuco,
        read_realsense_intrinsics,
    )
    from dit4dit.calibration.targets import INTRINSICS_BOARD

    cs = rig.cfg.cameras[rig.camera_name]
    try:
        if rig.camera_kind == "realsense" and not args.charuco and args.images is None:
            w, h = (cs.width, cs.height) if cs.width is not None else REALSENSE_DEFAULT_SIZE
            intr, serial = read_realsense_intrinsics(cs.serial, w, h, int(cs.fps))
            log.info("RealSense %s factory intrinsics: fx %.2f fy %.2f cx %.2f cy %.2f (%s)", serial, intr.fx, intr.fy,
                     intr.cx, intr.cy, intr.source_model)
            return intr, serial
        if args.images is not None:
            images = _load_images(args.images)
        elif args.sim_control:
            images = _sim_board_images(rig.camera, args.sim_control, args.views, args.seed)
        else:
            images = _live_board_images(rig.camera, args.views, args.views_timeout)
        res = calibrate_charuco(images, INTRINSICS_BOARD)
    except IntrinsicsError as e:
        raise CalibrateError(str(e)) from None
    i = res.intrinsics
    log.info("ChArUco intrinsics from %d views: fx %.2f fy %.2f cx %.2f cy %.2f, RMS %.3f px", i.n_views, i.fx, i.fy,
             i.cx, i.cy, i.reprojection_error_px)
    return i, rig.camera_serial


def _need_intrinsics(calib: CalibrationFile, rig: Rig) -> Intrinsics:
    intr = calib.intrinsics
    if intr is None:
        raise CalibrateError("no intrinsics yet: run `dit4dit-calibrate intrinsics` first (or `all`)")
    cs = rig.cfg.cameras[rig.camera_name]
    if cs.width is not None:
        size = (cs.width, cs.height)
    elif rig.camera is not None:  # deploy.yaml leaves the size to the stream: the size of its frames
        h, w = rig.camera.read_latest(max(cs.max_age_s, 1.0)).image.shape[:2]
        size = (w, h)
    else:
        return intr
    if (intr.width, intr.height) != size:
        raise CalibrateError(f"the file's intrinsics are for {intr.width}x{intr.height}, the camera streams "
                             f"{size[0]}x{size[1]}; recalibrate intrinsics")
    return intr


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> CalibrationFile:
    from dit4dit.calibration.fk import TorsoFK
    from dit4dit.calibration.handeye import (
        HandEyeError,
        HandEyePlanner,
        PlanSettings,
        run_handeye,
    )
    from dit4dit.calibration.joint_check import JointCheckSettings, run_joint_check
    from dit4dit.calibration.session import SessionError
    from dit4dit.calibration.targets import WRIST_PLATE
    from dit4dit.calibration.timing import TimingError, TimingSettings, run_timing
    from dit4dit.drivers import g1_spec
    from dit4dit.drivers.cameras import CameraFault
    from dit4dit.drivers.g1_robot import RobotError

    cfg = _load_config(args.config)
    cs = _camera_section(cfg, args.camera)
    steps = ["intrinsics", "joints", "handeye", "timing"] if args.what == "all" else [args.what]
    need_robot = any(s != "intrinsics" for s in steps)
    factory = cs.kind == "realsense" and not args.charuco and args.images is None
    need_camera = need_robot or (args.images is None and not factory)
    joints = (args.joints.split(",") if args.joints else list(cfg.robot.controlled_joints))
    for j in [*joints, args.timing_joint]:
        try:
            g1_spec.joint_index(j.strip())
        except KeyError as e:
            raise CalibrateError(str(e.args[0])) from None
    rig = _connect(cfg, args, need_robot, need_camera)
    try:
        robot_id, camera_id = _identity(cfg, args, rig.camera_serial, cs.kind)
        calib = _open_output(args, robot_id, camera_id)
        fk = TorsoFK() if need_robot else None
        if rig.session is not None:
            log.info("moving slowly to the start pose")
            rig.session.move_to(cfg.robot.start_pose_array())
        for step in steps:
            log.info("== %s ==", step)
            try:
                if step == "intrinsics":
                    intr, serial = do_intrinsics(rig, args)
                    if serial != calib.camera.serial:
                        calib = calib.model_copy(update={"camera": calib.camera.model_copy(update={"serial": serial})})
                    calib = calib.model_copy(update={"intrinsics": intr})
                elif step == "joints":
                    report = run_joint_check(rig.session, [j.strip() for j in joints], fk,
                                             JointCheckSettings(amplitude_rad=args.amplitude, period_s=args.period,
                                                                max_lag_s=args.max_lag))
                    calib = calib.model_copy(update={"joint_check": report})
                    for r in report.joints:
                        log.log(logging.INFO if r.ok else logging.ERROR, "joint %-28s %s", r.joint,
                                "ok" if r.ok else r.reason)
                    if not report.passed:
                        save_calibration(calib, args.out)
                        raise CalibrateError(f"joint check failed for {[r.joint for r in report.failed()]}; "
                                             f"report written to {args.out}. Fix the robot before running a policy.")
                elif step == "handeye":
                    intr = _need_intrinsics(calib, rig)
                    res, _ = run_handeye(rig.session, intr, fk, PlanSettings(n_poses=args.poses, seed=args.seed))
                    calib = calib.model_copy(update={"extrinsics": res.to_extrinsics("right_rubber_hand")})
                    log.info("head camera in torso: %s m, %.1f mm / %.2f deg from the nominal mount; residuals "
                             "%.1f mm, %.2f deg, %.2f px", np.round(res.T_torso_cam[:3, 3], 4),
                             res.nominal_offset_position_m * 1e3, res.nominal_offset_rotation_deg,
                             res.residual_position_m * 1e3, res.residual_rotation_deg, res.reprojection_error_px)
                elif step == "timing":
                    intr = _need_intrinsics(calib, rig)
                    planner = HandEyePlanner(fk, intr, WRIST_PLATE.corners_m(), PlanSettings(seed=args.seed))
                    safe = rig.session.safe
                    plan = planner.plan(rig.session.target.copy(), safe.limits.lower, safe.limits.upper)
                    for q in plan.via:
                        rig.session.move_to(q)
                    rig.session.move_to(plan.centre)
                    try:
                        timing = run_timing(rig.session, TimingSettings(joint=args.timing_joint,
                                                                        n_steps=args.timing_steps))
                    finally:
                        if not safe.damped:
                            for q in reversed(plan.via):
                                rig.session.move_to(q)
                            rig.session.move_to(plan.start)
                    calib = calib.model_copy(update={"timing": timing})
                    log.info("camera delay %.1f ms, command->state %.1f ms, image->command %.1f ms",
                             timing.camera_delay_s * 1e3, timing.command_to_state_s * 1e3, timing.end_to_end_s * 1e3)
            except (HandEyeError, TimingError, SessionError, CameraFault, RobotError) as e:
                raise CalibrateError(f"{step}: {e}") from None
            save_calibration(calib, args.out)  # each finished step is kept even if a later one fails
        return calib
    finally:
        _finish(rig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        calib = run(args)
    except CalibrateError as e:
        print(f"dit4dit-calibrate: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("dit4dit-calibrate: interrupted; the arm was returned and damped", file=sys.stderr)
        return EXIT_FAILED
    print(f"dit4dit-calibrate: wrote {args.out} ({', '.join(k for k in ('intrinsics', 'extrinsics', 'timing', 'joint_check') if getattr(calib, k) is not None)})")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
