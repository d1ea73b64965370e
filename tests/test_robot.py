"""G1Robot over real DDS on loopback against a minimal LowState publisher in another process.

DDS is a per-process singleton, so both the fake G1 and the robot under test run in their own
spawned processes, each on this test's own domain; results come back through queues.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np
import pytest
from dit4dit.drivers import g1_spec
from hypothesis import given
from hypothesis import strategies as hst

pytest.importorskip("unitree_sdk2py")

CTX = mp.get_context("spawn")
ARM = list(g1_spec.ARM_JOINTS)


# --------------------------------------------------------------------------------------------------
# The fake G1: publishes rt/lowstate at ~500 Hz, integrates a first-order joint response to the
# latest command, and records every command it hears.
# --------------------------------------------------------------------------------------------------
def fake_g1(domain: int, opts: dict[str, Any], ready: Any, pause: Any, stop: Any, out: Any) -> None:
    import threading

    from dit4dit.drivers import hg_codec
    from dit4dit.drivers.remote import Remote
    from unitree_sdk2py.core.channel import ChannelFactoryInitialize, ChannelPublisher, ChannelSubscriber
    from unitree_sdk2py.idl.default import unitree_hg_msg_dds__LowState_
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_, LowState_

    ChannelFactoryInitialize(domain, "lo")
    pub = ChannelPublisher(g1_spec.TOPIC_LOWSTATE, LowState_)
    pub.Init()
    q = g1_spec.HOME_POSE.copy()
    lock = threading.Lock()
    latest: dict[str, Any] = {}
    records: list[tuple] = []

    def on_cmd(topic: str, m: Any) -> None:
        rec = hg_codec.pack_lowcmd(m)
        mc = rec["motor_cmd"]
        with lock:
            latest.update(topic=topic, q=mc["q"][:29].astype(float), kp=mc["kp"][:29].astype(float),
                          w=float(mc["q"][29]))  # fmt: skip
            records.append((topic, m.mode_pr, m.mode_machine, m.crc == hg_codec.packed_crc(rec), float(mc["q"][29]),
                            mc["kp"][:29].astype(float), mc["kd"][:29].astype(float), mc["mode"][:29].copy(),
                            mc["q"][:29].astype(float)))  # fmt: skip

    subs = []
    for topic in (g1_spec.TOPIC_LOWCMD, g1_spec.TOPIC_ARM_SDK):
        s = ChannelSubscriber(topic, LowCmd_)
        s.Init(lambda m, t=topic: on_cmd(t, m), 0)
        subs.append(s)

    hand_pubs = {}
    if opts.get("hands"):
        from unitree_sdk2py.idl.default import unitree_hg_msg_dds__HandState_
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandCmd_, HandState_

        def on_hand(side: str, m: Any) -> None:
            with lock:
                records.append(("hand", side, [c.mode for c in m.motor_cmd], [c.q for c in m.motor_cmd],
                                [c.kp for c in m.motor_cmd], [c.kd for c in m.motor_cmd]))  # fmt: skip

        for side in ("left", "right"):
            hp = ChannelPublisher(g1_spec.TOPIC_DEX3_STATE.format(side=side), HandState_)
            hp.Init()
            hs = unitree_hg_msg_dds__HandState_()
            for i in range(7):
                hs.motor_state[i].q = 0.01 * i + (0.5 if side == "right" else 0.0)
            hand_pubs[side] = (hp, hs)
            s = ChannelSubscriber(g1_spec.TOPIC_DEX3_CMD.format(side=side), HandCmd_)
            s.Init(lambda m, sd=side: on_hand(sd, m), 0)
            subs.append(s)

    switcher_calls: list[str] = []
    if "motion_service" in opts:
        # A stand-in for the robot's MotionSwitcher RPC service (SDK Server, real DDS request/response).
        import json

        from unitree_sdk2py.rpc.server import Server

        current = [opts["motion_service"]]

        class FakeMotionSwitcher(Server):
            def __init__(self) -> None:
                super().__init__("motion_switcher")

            def Init(self) -> None:  # noqa: N802 - SDK naming
                self._SetApiVersion("1.0.0.1")
                self._RegistHandler(1001, self.check, False)
                self._RegistHandler(1003, self.release, False)

            def check(self, _param: str) -> tuple[int, str]:
                switcher_calls.append("check")
                return 0, json.dumps({"form": "0", "name": current[0]})

            def release(self, _param: str) -> tuple[int, str]:
                switcher_calls.append("release")
                current[0] = ""
                return 0, ""

        switcher = FakeMotionSwitcher()
        switcher.Init()
        switcher.Start(False)

    msg = unitree_hg_msg_dds__LowState_()
    msg.mode_machine = opts.get("mode_machine", 5)
    remote = (Remote() if opts.get("remote") == "zero" else Remote.from_buttons(["L2", "B"], lx=0.25, ly=-0.5)).as_list()
    tick, turns, dt = 0, 0, 0.002
    ready.set()
    next_t = started = time.monotonic()
    while not stop.is_set():
        with lock:
            cmd = dict(latest)
        if cmd:
            # Joints with kp > 0 move toward their target (time constant 0.05 s), scaled by the arm_sdk weight.
            gain = np.where(cmd["kp"] > 0, 1.0, 0.0) * (cmd["w"] if cmd["topic"] == g1_spec.TOPIC_ARM_SDK else 1.0)
            q = q + gain * (cmd["q"] - q) * min(1.0, dt / 0.05)
        if not pause.is_set():
            # A G1's tick is its own clock in ms. Counted from this process's clock, not from loop turns: on a
            # loaded machine the loop falls behind, and a tick that counted turns would claim its states are older
            # than they are.
            tick = int((time.monotonic() - started) * 1000)
            msg.tick = tick
            for i in range(29):
                msg.motor_state[i].q = float(q[i])
            msg.imu_state.quaternion = [1.0, 0.0, 0.0, 0.0]
            msg.wireless_remote = remote
            msg.crc = 0
            crc = opts.get("crc", "good")
            if crc == "good":
                msg.crc = hg_codec.lowstate_crc(msg)
            elif crc == "bad":
                msg.crc = 12345
            pub.Write(msg)
            turns += 1
            if hand_pubs and turns % 5 == 0:  # 100 Hz
                for hp, hs in hand_pubs.values():
                    hp.Write(hs)
        next_t += dt
        time.sleep(max(0.0, next_t - time.monotonic()))
    with lock:
        records.append(("switcher", switcher_calls))
        out.put(records)


def run_robot(domain: int, scenario: str, opts: dict[str, Any], out: Any, release: Any = None) -> None:
    """The robot under test, in its own process; puts a dict of observations (or the error) on ``out``."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig

    res: dict[str, Any] = {}
    try:
        cfg = G1RobotConfig(interface="lo", domain=domain, **opts.get("config", {}))
        robot = G1Robot(cfg)
        robot.connect(timeout_s=opts.get("timeout_s", 5.0))
        res["mode_machine"] = robot.mode_machine
        if scenario == "pose":
            time.sleep(0.3)  # damping goes out meanwhile
            st = robot.state()
            target = st.q.copy()
            target[ARM] = np.array(opts["arm_target"])
            kp, kd = g1_spec.gains_array()
            robot.command(target, kp, kd)
            deadline = time.monotonic() + 15.0  # the fake plant runs slower on a loaded machine
            while time.monotonic() < deadline and np.abs(robot.state().q - target).max() > 0.002:
                time.sleep(0.05)
            res["q"] = robot.state().q.tolist()
            st = robot.state()
            res["remote_buttons"] = sorted(st.remote.buttons)
            res["remote_sticks"] = [st.remote.lx, st.remote.ly]
            res["remote_lost"] = st.remote_lost
            res["tick"] = st.tick
            res["stats"] = robot.stats
        elif scenario == "ramp":
            st = robot.state()
            kp, kd = g1_spec.gains_array()
            robot.command(st.q, kp, kd)
            # The ramp counts publisher ticks, so on a loaded machine it takes longer than 1/rate: poll.
            weights = []
            t_end = time.monotonic() + 20.0
            while time.monotonic() < t_end and robot.arm_sdk_weight < 1.0:
                weights.append(robot.arm_sdk_weight)
                time.sleep(0.01)
            time.sleep(0.1)
            robot.damp()
            t_end = time.monotonic() + 20.0
            while time.monotonic() < t_end and robot.arm_sdk_weight > 0.0:
                weights.append(robot.arm_sdk_weight)
                time.sleep(0.01)
            weights.append(robot.arm_sdk_weight)
            time.sleep(0.1)
            res["weights"] = weights
            res["sent_weights"] = robot.sent_weights().tolist()
        elif scenario == "stale":
            ages = [robot.state().age_s]
            time.sleep(opts["pause_after_s"])
            # The stand-in G1 is a normal-priority Python process: on a loaded machine one of its states can
            # arrive late (and the robot's clock shows it). Wait for a fresh one rather than sample one instant.
            deadline = time.monotonic() + 20.0
            st = robot.state()
            while st.age_s >= 0.05 and time.monotonic() < deadline:
                robot.wait_for_state(st.stamp, 1.0)
                st = robot.state()
            res["before"] = (st.age_s, st.stale)
            out.put(("paused?", None))  # the parent pauses the publisher now
            time.sleep(0.6)
            st = robot.state()
            ages.append(st.age_s)
            res["after"] = (st.age_s, st.stale)
            time.sleep(0.2)
            res["later_age"] = robot.state().age_s
        elif scenario == "hands":
            t_end = time.monotonic() + 20.0
            while time.monotonic() < t_end and any(h.state() is None for h in robot.hands.values()):
                time.sleep(0.05)
            left, right = robot.hands["left"].state(), robot.hands["right"].state()
            res["hand_q"] = {"left": left.q.tolist(), "right": right.q.tolist()}
            res["hand_age"] = max(left.age_s, right.age_s)
            robot.hands["left"].command(np.array(opts["left_q"]), kp=1.5, kd=0.2)
            time.sleep(0.3)
        elif scenario == "hold":
            out.put(("connected", None))
            if release is not None:
                release.wait(90)
            else:
                time.sleep(opts.get("hold_s", 0.5))
            res["remote_lost"] = robot.state().remote_lost
        res["stats"] = robot.stats
        robot.disconnect()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        res["error"] = f"{type(e).__name__}: {e}"
    out.put(("done", res))


class FakeG1:
    def __init__(self, domain: int, **opts: Any) -> None:
        self.ready, self.pause, self.stop = CTX.Event(), CTX.Event(), CTX.Event()
        self.out = CTX.Queue()
        self.proc = CTX.Process(target=fake_g1, args=(domain, opts, self.ready, self.pause, self.stop, self.out))

    def __enter__(self) -> FakeG1:
        self.proc.start()
        assert self.ready.wait(90), "fake G1 did not start"
        return self

    def records(self) -> list[tuple]:
        self.stop.set()
        try:
            return self.out.get(timeout=60)
        finally:
            self.proc.join(5)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)


def robot_process(domain: int, scenario: str, release: Any = None, **opts: Any) -> tuple[Any, Any]:
    out = CTX.Queue()
    p = CTX.Process(target=run_robot, args=(domain, scenario, opts, out, release))
    p.start()
    return p, out


def result(p: Any, out: Any, timeout: float = 120.0) -> dict[str, Any]:
    try:
        while True:
            kind, res = out.get(timeout=timeout)
            if kind == "done":
                return res
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(2)


# --------------------------------------------------------------------------------------------------
def test_lowcmd_reaches_arm_pose_with_crc_and_mode_machine(dds_domain):
    arm_target = (g1_spec.HOME_POSE[ARM] + 0.2).tolist()
    with FakeG1(dds_domain, mode_machine=6) as g1:
        p, out = robot_process(dds_domain, "pose", arm_target=arm_target)
        res = result(p, out)
        records = g1.records()
    assert "error" not in res, res
    assert res["mode_machine"] == 6
    np.testing.assert_allclose(np.array(res["q"])[ARM], arm_target, atol=0.01)
    assert res["remote_buttons"] == ["B", "L2"] and res["remote_sticks"] == [0.25, -0.5] and not res["remote_lost"]
    assert res["stats"]["crc_errors"] == 0
    lowcmd = [r for r in records if r[0] == g1_spec.TOPIC_LOWCMD]
    assert len(lowcmd) > 100 and not any(r[0] == g1_spec.TOPIC_ARM_SDK for r in records)
    assert all(r[1] == 0 for r in lowcmd), "mode_pr must be 0 (PR)"
    assert all(r[2] == 6 for r in lowcmd), "mode_machine must echo the state's"
    assert all(r[3] for r in lowcmd), "every LowCmd must carry a valid CRC"
    assert all((r[7] == 1).all() for r in lowcmd), "every body motor enabled (mode 1)"
    # Until command() the robot sends damping (kp 0, kd > 0); at disconnect damping again.
    first_cmd = next(i for i, r in enumerate(lowcmd) if (r[5][ARM] > 0).all())
    assert all((r[5] == 0).all() and (r[6] > 0).all() for r in lowcmd[:first_cmd])
    assert (lowcmd[-1][5] == 0).all() and (lowcmd[-1][6] > 0).all()


def test_arm_sdk_weight_ramps_never_jumps(dds_domain):
    rate = 2.0  # weight units per second: 0 -> 1 in 0.5 s
    with FakeG1(dds_domain) as g1:
        p, out = robot_process(dds_domain, "ramp", config={"mode": "arm_sdk", "arm_sdk_weight_rate": rate})
        res = result(p, out)
        records = g1.records()
    assert "error" not in res, res
    sdk = [r for r in records if r[0] == g1_spec.TOPIC_ARM_SDK]
    assert sdk and not any(r[0] == g1_spec.TOPIC_LOWCMD for r in records)
    step = rate / 500.0
    # Per tick, as sent: never a change larger than rate * dt, from 0 up to 1 and back to 0.
    sent = np.array(res["sent_weights"])
    assert np.max(np.abs(np.diff(sent))) <= step + 1e-9
    assert sent[0] <= step and sent.max() == pytest.approx(1.0) and sent[-1] == 0.0
    # As received over DDS (a loaded machine may drop samples): rises then falls, ends at 0.
    w = np.array([r[4] for r in sdk])
    peak = int(np.argmax(w))
    assert np.all(np.diff(w[: peak + 1]) >= -1e-6) and np.all(np.diff(w[peak:]) <= 1e-6)
    assert w.max() == pytest.approx(1.0) and w[-1] == pytest.approx(0.0)
    assert all(r[3] for r in sdk)
    # Only arms and waist are enabled on rt/arm_sdk.
    modes = sdk[-1][7]
    assert set(np.flatnonzero(modes)) == set(g1_spec.ARM_SDK_JOINTS)
    sampled = np.array(res["weights"])
    assert sampled.max() == pytest.approx(1.0) and sampled[-1] == pytest.approx(0.0)


def test_bad_crc_states_are_dropped_and_connect_fails(dds_domain):
    with FakeG1(dds_domain, crc="bad"):
        p, out = robot_process(dds_domain, "hold", timeout_s=5.0)
        res = result(p, out)
    assert "RobotError" in res.get("error", ""), res
    assert "bad CRC" in res["error"]


def test_zero_crc_accepted_only_when_configured(dds_domain):
    with FakeG1(dds_domain, crc="zero"):
        p, out = robot_process(dds_domain, "hold", timeout_s=20.0, config={"accept_zero_crc": True})
        res = result(p, out)
    assert "error" not in res, res
    assert res["stats"]["crc_errors"] == 0 and res["stats"]["states_received"] > 10


def test_stale_state_is_reported(dds_domain):
    with FakeG1(dds_domain) as g1:
        p, out = robot_process(dds_domain, "stale", pause_after_s=0.3, config={"stale_after_s": 0.1})
        kind, _ = out.get(timeout=40)
        assert kind == "paused?"
        g1.pause.set()
        res = result(p, out)
    assert "error" not in res, res
    age0, stale0 = res["before"]
    age1, stale1 = res["after"]
    assert age0 < 0.1 and not stale0
    assert age1 > 0.3 and stale1
    assert res["later_age"] > age1  # keeps growing


def test_second_writer_makes_connect_refuse(dds_domain):
    with FakeG1(dds_domain):
        release = CTX.Event()
        p1, out1 = robot_process(dds_domain, "hold", release=release)
        kind, _ = out1.get(timeout=120)  # the first robot is connected and publishing
        assert kind == "connected"
        p2, out2 = robot_process(dds_domain, "hold", hold_s=0.1)
        res2 = result(p2, out2)
        release.set()
        res1 = result(p1, out1)
    assert "error" not in res1, res1
    assert "RobotBusyError" in res2.get("error", ""), res2
    assert "rt/lowcmd" in res2["error"]


def test_no_state_names_domain_and_what_to_check(dds_domain):
    p, out = robot_process(dds_domain, "hold", timeout_s=0.5)
    res = result(p, out)
    assert "RobotError" in res["error"] and f"domain {dds_domain}" in res["error"] and "dit4dit-sim" in res["error"]


def test_config_validation():
    from dit4dit.drivers.g1_robot import G1RobotConfig

    with pytest.raises(ValueError, match="mode"):
        G1RobotConfig(mode="torque")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="domain"):
        G1RobotConfig(domain=300)
    with pytest.raises(ValueError, match="arm_sdk_weight_rate"):
        G1RobotConfig(arm_sdk_weight_rate=0)
    with pytest.raises(ValueError, match="rt_priority must be in 0..99"):
        G1RobotConfig(rt_priority=120)
    assert G1RobotConfig(interface="lo").is_simulation
    assert not G1RobotConfig(interface="enp3s0").is_simulation


def test_command_validation_names_the_field():
    from dit4dit.drivers.g1_robot import _vec

    with pytest.raises(ValueError, match=r"q must have shape \(29,\)"):
        _vec("q", np.zeros(14))
    with pytest.raises(ValueError, match="kp contains NaN/inf at joints \\[3\\]"):
        v = np.zeros(29)
        v[3] = np.nan
        _vec("kp", v)
    with pytest.raises(ValueError, match="kd must be >= 0"):
        _vec("kd", -1.0, nonneg=True)
    src = np.zeros(29)
    _vec("q", src)
    src[0] = 1.0  # the caller's array stays writable and independent





def test_dex3_mode_byte_packing():
    from dit4dit.drivers.hands import pack_mode, unpack_mode

    assert pack_mode(3, 0x01, timeout=False) == 0x13
    assert pack_mode(6, 0x01, timeout=True) == 0x96
    for mid in range(7):
        for status in range(8):
            for to in (False, True):
                assert unpack_mode(pack_mode(mid, status, to)) == (mid, status, to)
    with pytest.raises(ValueError, match="motor id"):
        pack_mode(16)


def test_dex3_hands_over_dds(dds_domain):
    left_q = [0.5, 2.0, 0.5, -0.5, -0.5, -0.5, -0.5]  # thumb_1 = 2.0 is past its 1.0472 limit: clamped
    with FakeG1(dds_domain, hands=True) as g1:
        p, out = robot_process(dds_domain, "hands", left_q=left_q, config={"hands": True})
        res = result(p, out)
        records = g1.records()
    assert "error" not in res, res
    np.testing.assert_allclose(res["hand_q"]["left"], [0.01 * i for i in range(7)], atol=1e-6)
    np.testing.assert_allclose(res["hand_q"]["right"], [0.5 + 0.01 * i for i in range(7)], atol=1e-6)
    assert res["hand_age"] < 0.1
    hands = [r for r in records if r[0] == "hand"]
    left = [r for r in hands if r[1] == "left"]
    right = [r for r in hands if r[1] == "right"]
    assert left and right
    # Before a command (and the right hand throughout): released, timeout bit set, no gains.
    assert right[-1][2] == [0x80 | 0x10 | i for i in range(7)] and right[-1][4] == [0.0] * 7
    active = [r for r in left if r[4][0] > 0]
    assert active, "the commanded left hand was never sent gains"
    last = active[-1]
    assert last[2] == [0x10 | i for i in range(7)]  # motor id, status 1, no timeout
    expected = np.clip(left_q, g1_spec.DEX3_LOWER["left"], g1_spec.DEX3_UPPER["left"])
    np.testing.assert_allclose(last[3], expected, atol=1e-6)
    assert last[4] == pytest.approx([1.5] * 7) and last[5] == pytest.approx([0.2] * 7)
    # Hands go at ~100 Hz, not at the body's 500 Hz.
    body = [r for r in records if r[0] == g1_spec.TOPIC_LOWCMD]
    assert len(left) < len(body) / 3


def test_remote_lost_is_flagged_when_remote_bytes_stay_zero(dds_domain):
    with FakeG1(dds_domain, remote="zero"):
        p, out = robot_process(dds_domain, "hold", hold_s=0.6, config={"remote_lost_s": 0.3})
        res = result(p, out)
    assert "error" not in res, res
    assert res["remote_lost"]


@given(w=hst.floats(0, 1), target=hst.sampled_from([0.0, 1.0]), step=hst.floats(1e-4, 0.1))
def test_weight_ramp_never_moves_more_than_one_step(w, target, step):
    from dit4dit.drivers.g1_robot import ramp_toward

    seq = [w]
    for _ in range(int(1.0 / step) + 2):
        seq.append(ramp_toward(seq[-1], target, step))
    assert np.max(np.abs(np.diff(seq))) <= step + 1e-12
    assert seq[-1] == target and all(0.0 <= v <= 1.0 for v in seq)


@pytest.mark.parametrize(
    "service,config,outcome",
    [
        ("ai", {"mode": "lowcmd", "release_motion_service": True}, "released"),
        ("ai", {"mode": "lowcmd", "release_motion_service": False}, "debug mode"),
        ("", {"mode": "arm_sdk"}, "needs Unitree's built-in motion service"),
    ],
)
def test_motion_switcher_on_a_real_robot_path(dds_domain, service, config, outcome):
    """simulation=False on lo: the MotionSwitcher step runs against a real SDK RPC service."""
    with FakeG1(dds_domain, motion_service=service) as g1:
        p, out = robot_process(dds_domain, "hold", hold_s=0.2, timeout_s=20.0, config={"simulation": False, **config})
        res = result(p, out)
        records = g1.records()
    calls = next(r[1] for r in records if r[0] == "switcher")
    if outcome == "released":
        assert "error" not in res, res
        assert calls.count("release") >= 1 and calls[-1] == "check"
    else:
        assert "RobotError" in res.get("error", "") and outcome in res["error"], res
        assert "release" not in calls
        assert not any(r[0] in (g1_spec.TOPIC_LOWCMD, g1_spec.TOPIC_ARM_SDK) for r in records), "wrote before refusing"
