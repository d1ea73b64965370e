"""Teleop devices: remote sticks, keyboard (fed key events), ZeroMQ joint / end-effector stream."""

from __future__ import annotations

import time

import numpy as np
import pytest
from dit4dit.drivers import g1_spec
from dit4dit.drivers.kinematics import G1Kinematics
from dit4dit.drivers.remote import Remote
from dit4dit.drivers.teleop import (
    KeyboardTeleop,
    RemoteSticksTeleop,
    TeleopSender,
    ZmqTeleop,
    decode_teleop,
    encode_teleop,
    make_teleop,
)

HOME = g1_spec.HOME_POSE
L = list(g1_spec.GROUPS["left_arm"])
R = list(g1_spec.GROUPS["right_arm"])


@pytest.fixture(scope="module")
def kin() -> G1Kinematics:
    return G1Kinematics()


class Sticks:
    def __init__(self) -> None:
        self.remote = Remote()

    def __call__(self) -> Remote:
        return self.remote


def test_remote_sticks_joint_velocity_is_integrated_and_clamped():
    sticks = Sticks()
    dev = RemoteSticksTeleop(sticks, controlled=g1_spec.ARM_JOINTS, joint_speed=0.5)
    with pytest.raises(RuntimeError, match="start"):
        dev.target(0.0)
    dev.start(HOME)
    np.testing.assert_array_equal(dev.target(0.0), HOME)
    sticks.remote = Remote(ly=1.0)
    for k in range(1, 11):
        q = dev.target(0.05 * k)
    assert q[R[0]] == pytest.approx(HOME[R[0]] - 0.25, abs=1e-6)  # 0.5 rad/s for 0.5 s
    others = np.setdiff1d(np.arange(29), [R[0]])
    np.testing.assert_array_equal(q[others], HOME[others])
    q = dev.target(10.0)  # a long gap counts as at most 0.1 s
    assert q[R[0]] == pytest.approx(HOME[R[0]] - 0.30, abs=1e-6)
    for k in range(200):
        q = dev.target(10.0 + 0.1 * (k + 1))
    assert q[R[0]] == pytest.approx(g1_spec.LOWER[R[0]])  # clamped at the hard limit


def test_sticks_and_keys_do_not_wind_up_past_a_blocked_arm():
    """The hand pressing on the table holds the shoulder back: the target leads the measured joint by at most
    max_lead however long the person pushes, and follows at once when the arm moves again."""
    measured = HOME.copy()
    sticks = Sticks()
    dev = RemoteSticksTeleop(sticks, controlled=g1_spec.ARM_JOINTS, joint_speed=0.5, measured_source=lambda: measured)
    dev.start(HOME)
    sticks.remote = Remote(ly=1.0)
    for k in range(1, 201):  # 10 s of full stick
        q = dev.target(0.05 * k)
    assert q[R[0]] == pytest.approx(HOME[R[0]] - dev.max_lead, abs=1e-9)  # not the hard limit 2.5 rad further
    measured = q.copy()  # the arm got there: the target may lead again from here
    for k in range(201, 211):
        q = dev.target(0.05 * k)
    assert q[R[0]] == pytest.approx(measured[R[0]] - min(dev.max_lead, 0.25), abs=1e-9)
    keys = KeyboardTeleop(controlled=g1_spec.ARM_JOINTS, measured_source=lambda: HOME)
    keys.start(HOME)
    for k in "m" + "w" * 20:  # joint mode, +20 x 0.05 rad asked
        keys.feed(k)
    assert keys.target()[R[0]] == pytest.approx(HOME[R[0]] + keys.max_lead)


def test_remote_dpad_selects_arm_and_stick_left_moves_hand_left(kin):
    sticks = Sticks()
    dev = RemoteSticksTeleop(sticks, joint_speed=0.5, kinematics=kin)
    dev.start(HOME)
    y0 = {s: kin.fk(HOME)[f"{s}_hand"][1, 3] for s in ("left", "right")}
    for side in ("left", "right"):
        dev.start(HOME)
        sticks.remote = Remote.from_buttons([side])  # d-pad selects the arm
        dev.target(0.0)
        sticks.remote = Remote(lx=-1.0)  # stick left
        for k in range(1, 5):
            q = dev.target(0.05 * k)
        assert kin.fk(q)[f"{side}_hand"][1, 3] > y0[side] + 0.01, side


def test_remote_sticks_cartesian_mode_moves_hand_forward_keeping_orientation(kin):
    sticks = Sticks()
    dev = RemoteSticksTeleop(sticks, mode="ee", arm="left", ee_speed=0.1, kinematics=kin)
    dev.start(HOME)
    T0 = kin.fk(HOME)["left_hand"]
    dev.target(0.0)
    sticks.remote = Remote(ly=1.0)
    for k in range(1, 11):
        q = dev.target(0.02 * k)
    T = kin.fk(q)["left_hand"]
    np.testing.assert_allclose(T[:3, 3] - T0[:3, 3], [0.02, 0, 0], atol=1e-3)
    np.testing.assert_allclose(T[:3, :3], T0[:3, :3], atol=1e-2)
    assert np.array_equal(q[R], HOME[R])


def test_keyboard_keys_step_hand_and_joints(kin):
    dev = KeyboardTeleop(ee_step=0.01, joint_step=0.05, kinematics=kin)
    dev.start(HOME)
    T0 = kin.fk(HOME)
    for k in "wwwx":  # x is not a teleop key: ignored
        dev.feed(k)
    q = dev.target()
    np.testing.assert_allclose(kin.fk(q)["right_hand"][:3, 3] - T0["right_hand"][:3, 3], [0.03, 0, 0], atol=1e-3)
    for k in "1r":
        dev.feed(k)
    q = dev.target()
    np.testing.assert_allclose(kin.fk(q)["left_hand"][:3, 3] - T0["left_hand"][:3, 3], [0, 0, 0.01], atol=1e-3)
    q_before = q.copy()
    for k in "m]ww":  # joint mode, next joint (left shoulder roll), +2 steps
        dev.feed(k)
    q = dev.target()
    assert q[L[1]] == pytest.approx(q_before[L[1]] + 0.10)
    assert np.count_nonzero(q != q_before) == 1


def test_zmq_teleop_joint_targets_and_staleness(free_port):
    ep = f"tcp://127.0.0.1:{free_port}"
    sender = TeleopSender(ep)
    dev = ZmqTeleop(ep, controlled=R, timeout_s=0.3)
    try:
        dev.start(HOME)
        assert dev.target() is None  # nothing received yet
        want = HOME.copy()
        want[R] += 0.1
        deadline = time.monotonic() + 3.0
        q = None
        while q is None and time.monotonic() < deadline:  # ZeroMQ's connect is asynchronous
            sender.send_q(want, joints=L + R)  # left-arm entries are not controlled: ignored
            time.sleep(0.02)
            q = dev.target()
        assert q is not None
        np.testing.assert_allclose(q[R], want[R])
        np.testing.assert_array_equal(q[L], HOME[L])
        assert set(dev.ignored_joints) == set(L)
        time.sleep(0.4)
        assert dev.target() is None  # silent stream past timeout_s
        sender.send(joints={"RightElbow": 99.0})  # outside the limit: clamped
        time.sleep(0.05)
        q = dev.target()
        assert q is not None and q[R[3]] == pytest.approx(g1_spec.UPPER[R[3]])
        sender._sock.send(b"not msgpack")
        time.sleep(0.05)
        dev.target()
        assert dev.bad_messages == 1
    finally:
        dev.close()
        sender.close()


def test_zmq_teleop_end_effector_pose_goes_through_ik(free_port, kin):
    ep = f"tcp://127.0.0.1:{free_port}"
    sender = TeleopSender(ep)
    dev = ZmqTeleop(ep, controlled=g1_spec.ARM_JOINTS, kinematics=kin)
    try:
        dev.start(HOME)
        goal = kin.fk(HOME)["right_hand"]
        goal[:3, 3] += [0.03, 0.02, 0.04]
        q = None
        deadline = time.monotonic() + 3.0
        while q is None and time.monotonic() < deadline:
            sender.send(poses={"right_hand": goal})
            time.sleep(0.02)
            q = dev.target()
        assert q is not None
        T = kin.fk(q)["right_hand"]
        assert np.linalg.norm(T[:3, 3] - goal[:3, 3]) < 1e-3
        far = goal.copy()
        far[:3, 3] = [3.0, 0.0, 0.0]  # unreachable: the arm keeps its last target
        sender.send(poses={"right_hand": far})
        time.sleep(0.05)
        q2 = dev.target()
        np.testing.assert_array_equal(q2, q)
        assert dev.ik_failures == 1
    finally:
        dev.close()
        sender.close()


def test_teleop_message_validation():
    msg = decode_teleop(encode_teleop(seq=1, joints={"left_elbow_joint": 0.5}))
    assert msg["joints"] == {g1_spec.joint_index("LeftElbow"): 0.5}
    with pytest.raises(KeyError, match="unknown G1 joint 'left_pinky'"):
        encode_teleop(seq=1, joints={"left_pinky": 0.1})
    with pytest.raises(ValueError, match="neither joints nor poses"):
        decode_teleop(b"\x82\xa1v\x01\xa3seq\x01")
    bad = np.eye(4)
    bad[0, 0] = 2.0
    with pytest.raises(ValueError, match="not a rigid transform"):
        decode_teleop(encode_teleop(seq=2, poses={"left_hand": bad}))
    with pytest.raises(ValueError, match="frame must be one of"):
        encode_teleop(seq=3, poses={"head": np.eye(4)})


def test_make_teleop():
    assert make_teleop("none") is None
    assert isinstance(make_teleop("keyboard"), KeyboardTeleop)
    assert isinstance(make_teleop("remote", remote_source=Remote), RemoteSticksTeleop)
    with pytest.raises(ValueError, match="needs endpoint"):
        make_teleop("zmq")
    with pytest.raises(ValueError, match="unknown teleop device 'vr'"):
        make_teleop("vr")


def test_terminal_key_reader_on_a_pseudo_terminal():
    import os

    from dit4dit.drivers.teleop import TerminalKeyReader

    master, slave = os.openpty()
    stream = os.fdopen(slave, "r")
    got: list[str] = []
    reader = TerminalKeyReader(stream)
    reader.subscribe(got.append)
    reader.start()
    try:
        os.write(master, b"w1m")
        deadline = time.monotonic() + 3.0
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == ["w", "1", "m"]  # single keys, no Enter needed (cbreak)
    finally:
        reader.stop()
        stream.close()
        os.close(master)


def test_terminal_key_reader_refuses_a_non_terminal(tmp_path):
    from dit4dit.drivers.teleop import TerminalKeyReader

    with open(tmp_path / "f", "w+") as f, pytest.raises(RuntimeError, match="not a TTY"):
        TerminalKeyReader(f)
