"""The real-time loop's decisions, tick by tick on a simulated clock: what it sends, and when it damps.

A stand-in robot records what the loop sends (the loop's process and DDS are covered by
tests/test_realtime_process.py); the shared memory is real.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dit4dit.drivers import g1_spec
from dit4dit.drivers.g1_robot import ImuState, LowCmdTarget, RobotState
from dit4dit.drivers.remote import Remote
from dit4dit.runtime.config import parse_config
from dit4dit.runtime.realtime import shm
from dit4dit.runtime.realtime.client import RealtimeRobot, _robot_state
from dit4dit.runtime.realtime.loop import RealtimeLoop
from dit4dit.runtime.realtime.plan import Plan
from dit4dit.runtime.realtime.safety import SafetyLimits

N = g1_spec.NUM_JOINTS
CFG = parse_config({"safety": {"state_timeout_s": 0.1, "controller_timeout_s": 0.5}})
LIMITS = SafetyLimits.from_config(CFG.safety)
KP, KD = CFG.robot.gains_arrays()
T0 = 1000.0


class StandInRobot:
    """poll / send / damping_target like G1Robot(publisher=False); the state is whatever the test sets."""

    def __init__(self) -> None:
        self.q = g1_spec.HOME_POSE.copy()
        self.stamp = T0
        self.tick = 0
        self.remote = Remote()
        self.sent: list[tuple[int, LowCmdTarget]] = []
        self.arm_sdk_weight = 0.0
        self.stats = {"published": 0, "publish_errors": 0, "states_received": 0, "states_skipped": 0, "crc_errors": 0}

    def poll(self) -> RobotState:
        return RobotState(q=self.q.copy(), dq=np.zeros(N), tau=np.zeros(N),
                          imu=ImuState(np.array([1.0, 0, 0, 0]), np.zeros(3), np.zeros(3), np.array([0, 0, 9.81])),
                          remote=self.remote, remote_lost=False, tick=self.tick, mode_machine=5, stamp=self.stamp,
                          age_s=0.0, stale=False, temperature=np.full((N, 2), 30.0), received=self.stamp)  # fmt: skip

    def send(self, target: LowCmdTarget, stamp_ns: int) -> int:
        self.sent.append((stamp_ns, target))
        self.stats["published"] += 1
        return stamp_ns

    def damping_target(self, kd: float) -> LowCmdTarget:
        z = np.zeros(N)
        return LowCmdTarget(self.q.copy(), z, z, z, np.full(N, kd), damping=True)


@pytest.fixture
def rig():
    channel = shm.Channel.create()
    robot = StandInRobot()
    alive = {"controller": True}
    loop = RealtimeLoop(robot, channel, CFG, controller_alive=lambda: alive["controller"])
    yield loop, robot, channel, alive
    channel.close()


def write_plan(channel: shm.Channel, plan: Plan | None, written_at: float, request: int = shm.REQ_NONE,
               message: str = "") -> None:
    p = shm.new(shm.PLAN)
    if plan is not None:
        n = len(plan.t)
        p["n"], p["t"][:n], p["q"][:n], p["kp"], p["kd"] = n, plan.t, plan.q, plan.kp, plan.kd
    p["written_at"], p["request"], p["message"] = written_at, request, shm.encode(message)
    channel.plan.write(p)


def tick(loop: RealtimeLoop, robot: StandInRobot, t: float, fresh: bool = True) -> LowCmdTarget:
    if fresh:  # a new state sent just now
        robot.stamp, robot.tick = t, robot.tick + 2
    loop.tick(int(round(t * 1e9)))
    return robot.sent[-1][1]


def test_damping_until_the_first_plan_then_from_the_measured_pose(rig) -> None:
    loop, robot, channel, _ = rig
    assert tick(loop, robot, T0).damping
    goal = g1_spec.HOME_POSE + 0.3
    write_plan(channel, Plan(np.array([T0]), goal[None], KP, KD), T0)
    first = tick(loop, robot, T0 + 0.002)
    assert not first.damping and np.all(first.kp == KP)
    # starts at the measured pose (float32, as the robot reports it) and moves at most one step toward the goal
    measured = robot.q.astype(np.float32).astype(np.float64)
    assert np.all(np.abs(first.q - measured) <= LIMITS.max_delta)
    s = channel.status.read()
    assert shm.PHASES[int(s["phase"])] == "RUNNING" and np.allclose(s["sent_q"], first.q)


def test_the_plan_is_interpolated_at_the_tick_time(rig) -> None:
    loop, robot, channel, _ = rig
    a, b = robot.q.copy(), robot.q.copy()
    b[22] += 0.004  # small enough for the step limit over the plan's 20 ms
    write_plan(channel, Plan(np.array([T0, T0 + 0.02]), np.stack([a, b]), KP, KD), T0)
    for k in range(1, 11):
        out = tick(loop, robot, T0 + 0.002 * k)
        assert out.q[22] == pytest.approx(a[22] + 0.004 * (0.002 * k / 0.02), abs=2e-7)  # float32 on the wire


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.sampled_from([0.0001, 0.0005, 0.0015, 0.002, 0.0021, 0.004, 0.011, 0.05]), min_size=5,
                     max_size=60), far=st.floats(-1.0, 1.0))
def test_every_sent_step_within_the_limit_for_the_time_since_the_last_send(gaps, far) -> None:
    """Whatever the scheduling (late ticks, bunched ticks), the step between two sends never exceeds
    max_delta * elapsed / dt, on the float32 values sent."""
    channel = shm.Channel.create()
    try:
        robot = StandInRobot()
        loop = RealtimeLoop(robot, channel, CFG)
        goal = np.clip(robot.q + far, LIMITS.lower, LIMITS.upper)
        write_plan(channel, Plan(np.array([T0]), goal[None], KP, KD), T0 + 10.0)
        t = T0
        for g in gaps:
            t += g
            tick(loop, robot, t)
        active = [(ns, tg) for ns, tg in robot.sent if not tg.damping]
        for (ns0, a), (ns1, b) in zip(active, active[1:], strict=False):
            allowed = LIMITS.max_delta * ((ns1 - ns0) / (LIMITS.dt * 1e9))
            assert np.all(np.abs(b.q - a.q) <= allowed), (ns1 - ns0, np.max(np.abs(b.q - a.q) / allowed))
            assert np.all(b.q.astype(np.float32).astype(np.float64) == b.q)  # what goes on the wire, exactly
    finally:
        channel.close()


def test_a_stale_state_damps_on_that_tick(rig) -> None:
    loop, robot, channel, _ = rig
    write_plan(channel, Plan(np.array([T0]), robot.q[None], KP, KD), T0)
    tick(loop, robot, T0)
    assert not tick(loop, robot, T0 + 0.099, fresh=False).damping  # 99 ms old: still inside 0.1 s
    out = tick(loop, robot, T0 + 0.1011, fresh=False)  # 101 ms old
    assert out.damping and loop.damped
    s = channel.status.read()
    assert int(s["damp_kind"]) == shm.DAMP_FAULT and "state stream lost" in shm.text(s["message"])
    assert tick(loop, robot, T0 + 0.2).damping  # latched, even with fresh state again


def test_remote_estop_held_damps(rig) -> None:
    loop, robot, channel, _ = rig
    write_plan(channel, Plan(np.array([T0]), robot.q[None], KP, KD), T0)
    tick(loop, robot, T0)
    robot.remote = Remote.from_buttons(["L2", "B"])
    assert tick(loop, robot, T0 + 0.002).damping
    s = channel.status.read()
    assert int(s["damp_kind"]) == shm.DAMP_ESTOP and "operator e-stop (remote L2+B)" in shm.text(s["message"])


def test_a_silent_or_gone_controller_damps(rig) -> None:
    loop, robot, channel, alive = rig
    write_plan(channel, Plan(np.array([T0, T0 + 0.3]), np.stack([robot.q, robot.q]), KP, KD), T0)
    t = T0
    while t < T0 + 0.49:  # the plan ends at 0.3 s: held (an underrun), still no damping within the timeout
        t += 0.002
        assert not tick(loop, robot, t).damping
    assert int(channel.status.read()["plan_underruns"]) > 0
    t += 0.02
    assert tick(loop, robot, t).damping
    s = channel.status.read()
    assert int(s["damp_kind"]) == shm.DAMP_CONTROLLER_SILENT and "no plan for" in shm.text(s["message"])

    channel2 = shm.Channel.create()
    try:
        robot2 = StandInRobot()
        loop2 = RealtimeLoop(robot2, channel2, CFG, controller_alive=lambda: alive["controller"])
        write_plan(channel2, Plan(np.array([T0]), robot2.q[None], KP, KD), T0)
        tick(loop2, robot2, T0)
        alive["controller"] = False
        assert tick(loop2, robot2, T0 + 0.002).damping
        assert int(channel2.status.read()["damp_kind"]) == shm.DAMP_CONTROLLER_GONE
    finally:
        channel2.close()


def test_damp_and_shutdown_requests(rig) -> None:
    loop, robot, channel, _ = rig
    write_plan(channel, Plan(np.array([T0]), robot.q[None], KP, KD), T0)
    tick(loop, robot, T0)
    write_plan(channel, None, T0 + 0.01, shm.REQ_DAMP, "operator e-stop (keyboard)")
    assert tick(loop, robot, T0 + 0.012).damping
    s = channel.status.read()
    assert int(s["damp_kind"]) == shm.DAMP_REQUESTED and shm.text(s["message"]) == "operator e-stop (keyboard)"
    write_plan(channel, None, T0 + 0.02, shm.REQ_SHUTDOWN)
    tick(loop, robot, T0 + 0.022)
    assert loop.shutdown


def test_a_plan_with_bad_times_is_refused_and_the_last_one_stays(rig) -> None:
    loop, robot, channel, _ = rig
    write_plan(channel, Plan(np.array([T0]), robot.q[None], KP, KD), T0)
    tick(loop, robot, T0)
    p = shm.new(shm.PLAN)
    p["n"], p["t"][:2], p["q"][:2] = 2, [T0 + 1, T0 + 0.5], robot.q + 0.5  # times go back
    p["kp"], p["kd"], p["written_at"] = KP, KD, T0 + 0.002
    channel.plan.write(p)
    out = tick(loop, robot, T0 + 0.004)
    assert np.allclose(out.q, robot.q, atol=1e-6) and not out.damping


def test_a_torn_record_is_never_read() -> None:
    channel = shm.Channel.create()
    try:
        rec = shm.new(shm.PLAN)
        rec["n"] = 1
        channel.plan.write(rec)
        assert channel.plan.read() is not None
        channel.plan._payload["n"] = 7  # a write landing without its sequence/CRC update: a torn read
        assert channel.plan.read() is None
        channel.plan._header["seq"] += 1  # mid-write (odd)
        assert channel.plan.read() is None
    finally:
        channel.close()


def test_the_state_record_round_trips_into_a_robot_state(rig) -> None:
    loop, robot, channel, _ = rig
    robot.remote = Remote.from_buttons(["A"], lx=0.5)
    tick(loop, robot, T0)
    got = _robot_state(channel.state.read(), 0.1)
    assert got.remote.pressed("A") and got.remote.lx == 0.5 and got.tick == robot.tick and got.stamp == T0
    np.testing.assert_array_equal(got.q, robot.q)
    assert RealtimeRobot  # the controller's side reads the same record (tests/test_realtime_process.py)
