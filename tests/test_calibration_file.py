"""The calibration YAML: round trip, identity checks on load, clear refusals; and the CLI's offline path."""

from __future__ import annotations

import cv2
import pytest
import yaml
from dit4dit.calibration.calibration_file import (
    CalibrationFile,
    CalibrationFileError,
    CameraId,
    Extrinsics,
    Intrinsics,
    JointCheck,
    JointResult,
    RobotId,
    Timing,
    load_calibration,
    read_calibration,
    save_calibration,
)


def _calib(serial: str | None = "123456") -> CalibrationFile:
    return CalibrationFile(
        robot=RobotId(name="g1-lab-1", serial="G1SN0042"),
        camera=CameraId(name="head", serial=serial, kind="realsense"),
        intrinsics=Intrinsics(width=640, height=480, fx=615.0, fy=615.5, cx=321.0, cy=240.5, source="realsense_factory"),
        extrinsics=Extrinsics(position_m=[0.058, 0.017, 0.43], quaternion_wxyz=[0.915, 0.0, 0.4036, 0.0],
                              method="park_martin+reprojection_lm", n_poses=12, residual_position_m=0.001,
                              residual_rotation_deg=0.2, reprojection_error_px=0.3, nominal_offset_position_m=0.004,
                              nominal_offset_rotation_deg=0.8),
        timing=Timing(camera_delay_s=0.045, command_to_state_s=0.03, command_to_image_s=0.075, end_to_end_s=0.06,
                      frame_period_s=1 / 30, joint="right_elbow_joint", n_trials=6, spread_s=0.01),
        joint_check=JointCheck(passed=True, amplitude_rad=0.15, period_s=3.0, joints=[
            JointResult(joint="right_elbow_joint", sign=1, gain=0.98, offset_rad=0.001, tracking_rms_rad=0.002,
                        lag_s=0.03, max_error_rad=0.02, ok=True)]),
    )


def test_round_trip_and_identity_checks(tmp_path) -> None:
    path = save_calibration(_calib(), tmp_path / "calib.yaml")
    raw = yaml.safe_load(path.read_text())
    assert raw["version"] == 1 and raw["robot"]["name"] == "g1-lab-1" and raw["camera"]["serial"] == "123456"
    got = load_calibration(path, "g1-lab-1", "123456", require=("intrinsics", "extrinsics", "timing"))
    assert got == read_calibration(path)
    assert got.extrinsics.matrix()[:3, 3].tolist() == pytest.approx([0.058, 0.017, 0.43])
    assert load_calibration(path, "G1SN0042", "123456").robot.name == "g1-lab-1"  # serial works as the name
    with pytest.raises(CalibrationFileError, match="made for robot 'g1-lab-1'.*this is robot 'g1-lab-2'"):
        load_calibration(path, "g1-lab-2", "123456")
    with pytest.raises(CalibrationFileError, match="serial '123456'.*has serial '999'.*recalibrate"):
        load_calibration(path, "g1-lab-1", "999")
    with pytest.raises(CalibrationFileError, match="serial '123456'.*has serial None"):
        load_calibration(path, "g1-lab-1", None)


def test_missing_sections_name_the_command_to_run(tmp_path) -> None:
    path = save_calibration(_calib().model_copy(update={"extrinsics": None}), tmp_path / "c.yaml")
    with pytest.raises(CalibrationFileError, match="lacks extrinsics; run `dit4dit-calibrate handeye"):
        load_calibration(path, "g1-lab-1", "123456", require=("intrinsics", "extrinsics"))


def test_bad_files_are_refused_clearly(tmp_path) -> None:
    with pytest.raises(CalibrationFileError, match="does not exist"):
        read_calibration(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("version: [1\n")
    with pytest.raises(CalibrationFileError, match="not valid YAML"):
        read_calibration(p)
    raw = _calib().model_dump(mode="json")
    raw["version"] = 2
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(CalibrationFileError, match="version 2; this dit4dit reads version 1"):
        read_calibration(p)
    raw["version"] = 1
    raw["extrinsics"]["quaternion_wxyz"] = [1.0, 1.0, 0.0, 0.0]
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(CalibrationFileError, match="unit length"):
        read_calibration(p)
    raw = _calib().model_dump(mode="json")
    raw["intrinsics"]["fx_typo"] = 1.0
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(CalibrationFileError, match="fx_typo"):
        read_calibration(p)


def _deploy(tmp_path, port: int) -> str:
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump({"cameras": {"head": {"kind": "sim", "endpoint": f"tcp://127.0.0.1:{port}",
                                                         "width": 640, "height": 480}}}))
    return str(path)


def test_cli_intrinsics_from_images_writes_a_loadable_file(tmp_path, free_port) -> None:
    """dit4dit-calibrate intrinsics --images: real renders of the head camera, no robot needed."""
    from dit4dit.calibration.cli import main
    from dit4dit.drivers.sim.calibration_props import (
        mujoco_camera_intrinsics,
        render_board_views,
    )
    from dit4dit.drivers.sim.scene import G1Sim, SceneConfig

    sim = G1Sim(SceneConfig(tabletop=False, additions=("charuco_board",)))
    try:
        images = render_board_views(sim, "head_camera", (480, 640), n=12, seed=7)
        truth = mujoco_camera_intrinsics(sim.model, "head_camera", 640, 480)
    finally:
        sim.close()
    folder = tmp_path / "views"
    folder.mkdir()
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"v{i:02d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    out = tmp_path / "calib.yaml"
    deploy = _deploy(tmp_path, free_port)
    assert main(["intrinsics", "--config", deploy, "--out", str(out), "--images", str(folder),
                 "--robot-name", "g1-sim"]) == 0
    calib = load_calibration(out, "g1-sim", None, require=("intrinsics",))
    assert abs(calib.intrinsics.fx - truth["fx"]) / truth["fx"] < 0.01
    assert calib.camera.kind == "sim" and calib.intrinsics.n_views >= 10
    # a second run for another robot name must not overwrite this robot's file
    assert main(["intrinsics", "--config", deploy, "--out", str(out), "--images", str(folder),
                 "--robot-name", "other"]) == 1
    assert read_calibration(out).robot.name == "g1-sim"


def test_cli_reports_bad_input_without_a_traceback(tmp_path, free_port, capsys) -> None:
    from dit4dit.calibration.cli import main

    deploy = _deploy(tmp_path, free_port)
    assert main(["intrinsics", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "c.yaml"),
                 "--images", str(tmp_path)]) == 1
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["intrinsics", "--config", deploy, "--out", str(tmp_path / "c.yaml"), "--camera", "wrist",
                 "--images", str(tmp_path)]) == 1
    assert "no camera 'wrist'" in capsys.readouterr().err
    assert main(["intrinsics", "--config", deploy, "--out", str(tmp_path / "c.yaml"), "--images",
                 str(tmp_path / "empty")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    assert main(["joints", "--config", deploy, "--out", str(tmp_path / "c.yaml"), "--joints", "left_knuckle"]) == 1
    assert "unknown G1 joint 'left_knuckle'" in capsys.readouterr().err
