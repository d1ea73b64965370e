"""dit4dit-robot refuses to start on a calibration file made for another robot or camera."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dit4dit.calibration.calibration_file import save_calibration
from dit4dit.runtime.config import load_config
from dit4dit.runtime.controller import StartupError, _check_calibration

from tests.test_calibration_file import _calib

REPO = Path(__file__).resolve().parents[1]


def _deploy(tmp_path: Path, robot_name: str, head: dict) -> Path:
    data = yaml.safe_load((REPO / "deploy.yaml").read_text())
    data["robot"]["name"] = robot_name
    data["cameras"] = {"head": head}
    data["calibration"] = "calib.yaml"  # relative to the deploy file
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


REALSENSE = {"kind": "realsense", "serial": "123456", "width": 640, "height": 480, "fps": 30}


def test_matching_calibration_is_accepted(tmp_path: Path) -> None:
    save_calibration(_calib(serial="123456"), tmp_path / "calib.yaml")
    cfg = load_config(_deploy(tmp_path, "g1-lab-1", REALSENSE))
    assert cfg.calibration == tmp_path / "calib.yaml"
    _check_calibration(cfg)  # no error


def test_calibration_of_another_robot_is_refused(tmp_path: Path) -> None:
    save_calibration(_calib(serial="123456"), tmp_path / "calib.yaml")
    cfg = load_config(_deploy(tmp_path, "g1-lab-2", REALSENSE))
    with pytest.raises(StartupError, match="made for robot 'g1-lab-1'.*this is robot 'g1-lab-2'"):
        _check_calibration(cfg)


def test_calibration_of_another_camera_is_refused(tmp_path: Path) -> None:
    save_calibration(_calib(serial="123456"), tmp_path / "calib.yaml")
    cfg = load_config(_deploy(tmp_path, "g1-lab-1", {**REALSENSE, "serial": "999"}))
    with pytest.raises(StartupError, match="serial '123456'.*has serial '999'"):
        _check_calibration(cfg)


def test_missing_calibration_file_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(_deploy(tmp_path, "g1-lab-1", REALSENSE))
    with pytest.raises(StartupError, match="calib.yaml"):
        _check_calibration(cfg)
