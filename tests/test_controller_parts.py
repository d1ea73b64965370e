"""Fast tests of the controller's parts: watchdogs, observation freshness, operator inputs, recorder."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from dit4dit.drivers import g1_spec
from dit4dit.drivers.cameras import CameraFault
from dit4dit.drivers.g1_robot import ImuState, RobotState
from dit4dit.drivers.remote import Remote
from dit4dit.runtime.config import parse_config
from dit4dit.runtime.observation import Observation, joint_indices
from dit4dit.runtime.operator import KeyboardListener, OperatorInputs
from dit4dit.runtime.realtime.watchdogs import RobotWatchdog, robot_fault, tilt_from_quat

SAFETY = parse_config({}).safety
N = g1_spec.NUM_JOINTS


def robot_state(**kw) -> RobotState:
    quat = kw.pop("quat", np.array([1.0, 0.0, 0.0, 0.0]))
    base = dict(
        q=g1_spec.HOME_POSE.copy(), dq=np.zeros(N), tau=np.zeros(N),
        imu=ImuState(quat, np.zeros(3), np.zeros(3), np.array([0, 0, 9.81])),
        remote=kw.pop("remote", Remote()), remote_lost=False, tick=1, mode_machine=5,
        stamp=time.monotonic(), age_s=0.001, stale=False, temperature=np.full((N, 2), 30.0),
    )  # fmt: skip
    base.update(kw)
    return RobotState(**base)


def test_tilt_from_quaternion() -> None:
    assert tilt_from_quat([1, 0, 0, 0]) == pytest.approx(0.0)
    a = 0.6
    assert tilt_from_quat([math.cos(a / 2), math.sin(a / 2), 0, 0]) == pytest.approx(a)
    assert tilt_from_quat([math.cos(a / 2), 0, 0, math.sin(a / 2)]) == pytest.approx(0.0)  # yaw is no tilt
    assert math.isnan(tilt_from_quat([0, 0, 0, 0]))
    assert math.isnan(tilt_from_quat([np.nan, 0, 0, 1]))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"age_s": 0.5}, "state stream lost"),
        ({"quat": np.array([math.cos(0.4), math.sin(0.4), 0, 0])}, "tilt"),
        ({"quat": np.zeros(4)}, "IMU quaternion invalid"),
        ({"dq": np.r_[np.zeros(20), 7.0, np.zeros(8)]}, "joint 20 speed 7.0"),
        ({"dq": np.full(N, np.nan)}, "NaN"),
        ({"temperature": np.c_[np.full(N, 30.0), np.r_[np.full(28, 40.0), 115.0]]}, "joint 28 winding 115"),
        ({"temperature": np.c_[np.r_[90.0, np.full(28, 30.0)], np.full(N, 40.0)]}, "joint 0 casing 90"),
        ({"motor_error": np.r_[np.zeros(3, np.uint32), 0x20, np.zeros(25, np.uint32)]}, "motor 3 reports fault"),
    ],
)
def test_robot_faults(change: dict, needle: str) -> None:
    assert robot_fault(robot_state(), SAFETY) is None
    reason = robot_fault(robot_state(**change), SAFETY)
    assert reason is not None and needle in reason, reason


def test_watchdog_debounces_motion_but_not_staleness() -> None:
    wd = RobotWatchdog(SAFETY)  # fault_persist_s 0.01
    fast = robot_state(dq=np.r_[np.zeros(20), 7.0, np.zeros(8)])
    assert wd.check(fast, 10.0) is None  # one spiking sample
    assert wd.check(robot_state(), 10.002) is None  # gone again: debounce restarts
    assert wd.check(fast, 10.004) is None
    assert "speed" in (wd.check(fast, 10.015) or "")
    assert "state stream lost" in (RobotWatchdog(SAFETY).check(robot_state(age_s=0.5), 0.0) or "")


def test_stale_image_is_never_sent() -> None:
    now = time.monotonic()
    obs = Observation(
        images={"head": np.zeros((4, 4, 3), np.uint8)}, image_stamps={"head": now - 0.3}, image_ids={"head": 7},
        state=np.zeros(14, np.float32), state_stamp=now, instruction="x",
    )  # fmt: skip
    obs.check_fresh({"head": 0.5}, now)
    with pytest.raises(CameraFault, match="image 7 is 300 ms old"):
        obs.check_fresh({"head": 0.2}, now)


def test_joint_indices_name_unknown_names() -> None:
    np.testing.assert_array_equal(joint_indices(["LeftElbow", "right_elbow_joint"], "action_names"), [18, 25])
    with pytest.raises(ValueError, match=r"action_names.*left_gripper"):
        joint_indices(["left_elbow_joint", "left_gripper"], "action_names")


def test_remote_combos_estop_held_takeover_on_rising_edge() -> None:
    ops = OperatorInputs(["L2", "B"], ["L1", "A"], ["L1", "X"], keyboard=None)
    now = time.monotonic()
    assert ops.poll(robot_state(), now).takeover is None
    assert ops.poll(robot_state(remote=Remote.from_buttons(["L1", "A"])), now).takeover == "remote L1+A"
    assert ops.poll(robot_state(remote=Remote.from_buttons(["L1", "A"])), now).takeover is None  # held: once
    assert ops.poll(robot_state(remote=Remote.from_buttons(["L2"])), now).estop is None
    for _ in range(2):  # an e-stop counts while held
        assert ops.poll(robot_state(remote=Remote.from_buttons(["L2", "B", "up"])), now).estop == "remote L2+B"
    assert ops.poll(robot_state(remote=Remote.from_buttons(["L1", "X"])), now).release == "remote L1+X"


def test_keyboard_from_a_pipe() -> None:
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as rf:
        kb = KeyboardListener(rf)
        kb.start()
        ops = OperatorInputs(["L2", "B"], ["L1", "A"], ["L1", "X"], keyboard=kb)
        os.write(w, b"ty")
        deadline = time.monotonic() + 2
        got = []
        while time.monotonic() < deadline and len(got) < 1:
            c = ops.poll(robot_state(), time.monotonic())
            if c.takeover or c.success is not None:
                got.append(c)
            time.sleep(0.01)
        assert got and got[0].takeover == "keyboard" and got[0].success is True
        os.write(w, b"e")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            c = ops.poll(robot_state(), time.monotonic())
            if c.estop:
                break
            time.sleep(0.01)
        assert c.estop == "keyboard"
        os.close(w)
        kb.stop()


def test_recorder_keeps_finished_episodes(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from dit4dit.datasets import LeRobotDataset
    from dit4dit.runtime.recorder import RecordedFrame, TrialRecorder

    names = [g1_spec.JOINT_NAMES[i] for i in g1_spec.ARM_JOINTS]
    rec = TrialRecorder(tmp_path / "ds", fps=10, state_names=names, action_names=names, cameras={"head": (16, 16)},
                        instruction="pick up the red block")  # fmt: skip

    def frame(i: int, intervention: bool) -> RecordedFrame:
        img = np.full((16, 16, 3), i * 10 % 255, np.uint8)
        v = np.full(14, 0.01 * i, np.float32)
        return RecordedFrame(v, v + 0.1, v + 0.05, {"head": img}, intervention, i / 10)

    for i in range(12):
        rec.add(frame(i, intervention=5 <= i < 8))
    rec.mark(True)
    rec.end_episode()
    for i in range(7):
        rec.add(frame(i, intervention=False))
    saved = rec.close()  # the interrupted second episode is saved too
    assert saved == [0, 1] and not rec.errors and rec.dropped == 0
    ds = LeRobotDataset(tmp_path / "ds")
    assert len(ds) == 2
    ep = ds.episode(0)
    assert ep.length == 12 and ep.success is True
    np.testing.assert_array_equal(ep.intervention, [5 <= i < 8 for i in range(12)])
    np.testing.assert_allclose(ep.action_executed - ep.state, 0.05, atol=1e-6)
    assert ds.episode(1).length == 7 and ds.episode(1).success is None
    # Reopening appends: a later run adds episodes, the finished ones stay.
    rec2 = TrialRecorder(tmp_path / "ds", fps=10, state_names=names, action_names=names, cameras={"head": (16, 16)},
                         instruction="pick up the red block")  # fmt: skip
    rec2.add(frame(1, False))
    assert rec2.close(success=False) == [2]
    assert len(LeRobotDataset(tmp_path / "ds")) == 3
