"""deploy.yaml validation: every mistake names its key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dit4dit.drivers import g1_spec
from dit4dit.runtime.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return str(e.value)


def test_repo_deploy_yaml_is_valid_and_targets_the_simulator() -> None:
    cfg = load_config(REPO / "deploy.yaml")
    assert cfg.robot.domain == g1_spec.SIM_DOMAIN and cfg.robot.interface == "lo"
    assert cfg.server.address == "tcp://127.0.0.1:5555"
    assert cfg.cameras and all(c.kind == "sim" for c in cfg.cameras.values())


def test_defaults_are_valid() -> None:
    cfg = parse_config({})
    assert cfg.robot.controlled_indices() == g1_spec.ARM_JOINTS
    np.testing.assert_array_equal(cfg.robot.start_pose_array(), g1_spec.HOME_POSE)


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"robot": {"interfce": "lo"}}, ["robot.interfce", "unknown key"]),
        ({"safty": {}}, ["safty", "unknown key"]),
        ({"robot": {"domain": "one"}}, ["robot.domain", "integer"]),
        ({"robot": {"domain": 300}}, ["robot.domain", "232"]),
        ({"rates": {"policy_hz": 0}}, ["rates.policy_hz", "greater than 0"]),
        ({"rates": {"policy_hz": -5}}, ["rates.policy_hz", "greater than 0"]),
        ({"rates": {"control_hz": 0}}, ["rates.control_hz", "greater than 0"]),
        ({"rates": {"execution_horizon": 0}}, ["rates.execution_horizon"]),
        ({"safety": {"soft_limit_fraction": 1.5}}, ["safety.soft_limit_fraction", "less than or equal to 1"]),
        ({"safety": {"max_step": float("nan")}}, ["safety.max_step"]),
        (
            {"safety": {"joint_limits": {"left_elbow_joint": [-2.0, 1.0]}}},
            ["safety.joint_limits", "left_elbow_joint", "-1.0472", "2.0944"],
        ),
        ({"safety": {"joint_limits": {"left_pinky": [0, 1]}}}, ["safety.joint_limits", "left_pinky"]),
        ({"safety": {"max_tilt_rad": 2.0}}, ["safety.max_tilt_rad", "less than or equal to 1"]),
        ({"safety": {"estop_buttons": ["L2", "Q"]}}, ["safety.estop_buttons", "Q"]),
        ({"robot": {"controlled_joints": ["left_elbow_joint", "LeftElbow"]}}, ["robot.controlled_joints", "twice"]),
        ({"robot": {"controlled_joints": ["elbow"]}}, ["robot.controlled_joints", "elbow"]),
        ({"robot": {"gains": {"arms": {"kp": 1, "kd": 1}}}}, ["robot.gains", "arms", "left_arm"]),
        ({"robot": {"gains": {"left_arm": {"kp": 900, "kd": 1}}}}, ["robot.gains.left_arm.kp", "500"]),
        ({"robot": {"start_pose": {"left_elbow_joint": 2.09}}}, ["robot.start_pose.left_elbow_joint", "soft limits"]),
        ({"robot": {"mode": "arm_sdk", "controlled_joints": ["left_knee_joint"]}}, ["arm_sdk", "left_knee_joint"]),
        ({"robot": {"mode": "highcmd"}}, ["robot.mode", "lowcmd", "arm_sdk"]),
        ({"cameras": {"head": {"kind": "zmq"}}}, ["cameras.head", "endpoint"]),
        ({"cameras": {"head": {"kind": "sim", "endpoint": "tcp://x:1", "fps": 0}}}, ["cameras.head.fps"]),
        ({"server": {"address": "127.0.0.1:5555"}}, ["server.address", "tcp://"]),
        ({"teleop": {"device": "zmq"}}, ["teleop", "endpoint"]),
        ({"rates": {"policy_hz": 30, "execution_horizon": 30}}, ["server_hold_s", "execution_horizon"]),
        ({"robot": {"gains": {"waist": {"kp": 400, "kd": 5}}}}, ["robot.gains.waist", "safety.max_kp"]),
        ({"safety": {"soft_limit_fraction": 0.3}}, ["default start pose", "left_hip_roll_joint", "soft limits"]),
        ({"robot": {"rt_priority": 120}}, ["robot.rt_priority", "99"]),
        ({"robot": {"joint_gains": {"left_ankle": {"kp": 40, "kd": 2}}}}, ["robot.joint_gains", "left_ankle"]),
        ({"robot": {"joint_gains": {"LeftAnklePitch": {"kp": 400, "kd": 2}}}},
         ["robot.joint_gains.LeftAnklePitch", "safety.max_kp"]),
        ({"robot": {"accept_zero_crc": "yes please"}}, ["robot.accept_zero_crc", "bool"]),
        ({"rates": {"controller_hz": 900}}, ["rates.controller_hz", "500"]),
        ({"safety": {"controller_timeout_s": 0.2}}, ["safety.controller_timeout_s", "0.3"]),
        ({"cameras": {"head": {"kind": "sim", "endpoint": "tcp://x:1", "width": 640}}}, ["cameras.head", "both"]),
        ([1, 2], ["mapping"]),
    ],
)
def test_bad_values_name_the_key(data: object, needles: list[str]) -> None:
    msg = error_of(data)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_per_joint_gains_override_their_group() -> None:
    cfg = parse_config({"robot": {"joint_gains": {"left_ankle_pitch_joint": {"kp": 40, "kd": 2},
                                                  "RightAnkleRoll": {"kp": 45, "kd": 2.5}}}})  # fmt: skip
    kp, kd = cfg.robot.gains_arrays()
    la, rr = g1_spec.joint_index("left_ankle_pitch_joint"), g1_spec.joint_index("right_ankle_roll_joint")
    assert (kp[la], kd[la], kp[rr], kd[rr]) == (40, 2, 45, 2.5)
    others = np.ones(g1_spec.NUM_JOINTS, bool)
    others[[la, rr]] = False
    np.testing.assert_array_equal(kp[others], g1_spec.gains_array()[0][others])  # the rest keep their group's


def test_the_policy_rate_is_taken_from_the_policy_unless_set() -> None:
    cfg = load_config(REPO / "deploy.yaml")
    assert cfg.rates.policy_hz is None  # dit4dit-robot takes the checkpoint's control_rate_hz at start
    cfg.check_policy_rate(10.0)  # the shipped checkpoint's rate fits the shipped holds
    with pytest.raises(ValueError, match="server_hold_s"):
        cfg.check_policy_rate(2.0)  # 8 steps at 2 Hz = 4 s between requests: every chunk would trip the hold


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"robot": {"hands": "maybe"}}))
    with pytest.raises(ConfigError, match=r"wrong.yaml.*\n.*robot.hands"):
        load_config(wrong)


def test_config_is_immutable() -> None:
    cfg = parse_config({})
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="frozen"):
        cfg.safety.max_step = 1.0  # type: ignore[misc]
