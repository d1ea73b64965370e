"""The real-time process over real DDS on loopback, beside two CPU-burning processes.

* a state stream that falls behind (each state older than the last: a backlog) and then freezes: every
  state older than ``state_timeout_s`` is caught, by the robot's own clock, although each one was
  received just before it was used;
* the step and velocity limits hold on the wire (an independent recorder, no slack) while the plan asks
  for more, jumps, and stalls;
* a controller that dies without a word: damping on the next tick, then the process exits.

DDS is initialised once per process: the stand-in G1 and the recorder run in processes of their own.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from dit4dit.drivers import g1_spec
from dit4dit.runtime.config import parse_config
from dit4dit.runtime.realtime import shm
from dit4dit.runtime.realtime.safety import SafetyLimits

pytest.importorskip("unitree_sdk2py")
pytestmark = pytest.mark.slow

CTX = mp.get_context("spawn")
TIMEOUT_S = 0.1
SLACK_S = 0.002  # the robot clock is anchored on the fastest delivery seen, so ages exclude that floor (< 1 tick)


def stand_in_g1(domain: int, plan: list[tuple[float, float]], ready: Any, go: Any, done: Any, out: Any,
                rate_hz: float = 500.0, unitree_mujoco: bool = False) -> None:
    """Publishes rt/lowstate at 500 Hz with the tick of when each state was taken; once ``go`` is set, from
    ``plan`` [(t_from_go, delay_s)] the states go out ``delay_s`` late (a growing backlog: each is older when
    sent); after the last entry nothing more (a frozen stream). Reports {tick: sample time (monotonic)}.
    ``unitree_mujoco``: like Unitree's Python simulator, tick 0 and crc 0 on every state."""
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowState_

    from dit4dit.drivers.dds_io import RawWriter
    from dit4dit.drivers.g1_robot import init_dds
    from dit4dit.drivers.hg_codec import LowStateRecord

    init_dds(domain, "lo")
    writer = RawWriter(domain, g1_spec.TOPIC_LOWSTATE, LowState_)
    rec = LowStateRecord(mode_machine=5)
    z = np.zeros(g1_spec.NUM_JOINTS)
    t0 = time.monotonic()
    sampled: dict[int, float] = {}
    ready.set()
    k, last_tick = 0, -1
    t_go = None
    while not done.is_set():
        now = time.monotonic()
        if t_go is None and go.is_set():
            t_go = now
        elapsed = now - t_go if t_go is not None else -1.0
        delay = 0.0
        for t_from, d in plan:
            if elapsed >= t_from:
                delay = d
        if elapsed >= plan[-1][0]:
            break  # frozen
        sample_t = now - delay
        tick = int(round((sample_t - t0) * 1000)) + 1000
        if tick <= last_tick:  # the delay grew: nothing newer was taken yet (the robot's clock never goes back)
            time.sleep(0.0005)
            continue
        last_tick = tick
        sampled[tick] = t0 + (tick - 1000) / 1000.0
        rec.fill(q=g1_spec.HOME_POSE, dq=z, ddq=z, tau=z, quaternion=[1.0, 0, 0, 0], rpy=[0, 0, 0], gyroscope=[0, 0, 0],
                 accelerometer=[0, 0, 9.81], tick=0 if unitree_mujoco else tick, wireless_remote=bytes(40),
                 temperature=30)
        writer.write(rec.serialize(crc=0 if unitree_mujoco else None))
        k += 1
        time.sleep(max(0.0, t0 + k / rate_hz - time.monotonic()))
    out.put(sampled)
    done.wait(120)


def burners(n: int = 2) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait(5)


def hold_plans(rt: Any, q: np.ndarray, kp: np.ndarray, kd: np.ndarray, until: Any, period_s: float = 0.01) -> None:
    from dit4dit.runtime.realtime.plan import hold

    while not until():
        rt.send_plan(hold(time.monotonic(), q, kp, kd))
        time.sleep(period_s)


def test_every_state_older_than_the_timeout_is_caught_in_a_growing_backlog_and_a_freeze(dds_domain, tmp_path) -> None:
    from dit4dit.runtime.realtime.client import RealtimeRobot

    ready, go, done, out = CTX.Event(), CTX.Event(), CTX.Event(), CTX.Queue()
    # Once the robot is running: 1 s fresh; then each state goes out later and later (10, 40, then 150 ms: a
    # backlog the old driver reported as fresh, each state received just before it is used); then it freezes.
    plan = [(0.0, 0.0), (1.0, 0.01), (1.5, 0.04), (2.0, 0.15), (2.5, 0.0)]
    pub = CTX.Process(target=stand_in_g1, args=(dds_domain, plan, ready, go, done, out))
    pub.start()
    load = burners()
    trace = tmp_path / "trace.npz"
    try:
        assert ready.wait(60), "the stand-in G1 did not start"
        cfg = parse_config({"robot": {"interface": "lo", "domain": dds_domain},
                            "safety": {"state_timeout_s": TIMEOUT_S}})  # fmt: skip
        rt = RealtimeRobot(cfg, trace=str(trace))
        rt.connect(30.0)
        kp, kd = cfg.robot.gains_arrays()
        q = np.array(rt.state().q)
        go.set()
        hold_plans(rt, q, kp, kd, until=lambda: rt.status().damped or not rt.status().alive)
        s = rt.status()
        assert s.damp_kind == shm.DAMP_FAULT and "state stream lost" in s.message, s.message
        rt.disconnect()
        sampled = out.get(timeout=60)
    finally:
        done.set()
        stop_all(load)
        pub.join(10)
    with np.load(trace) as z:
        stamp, tick, age, damping = z["stamp_ns"] * 1e-9, z["tick"], z["age_s"].astype(float), z["damping"]
    known = np.array([t in sampled for t in tick.tolist()])
    true_age = stamp[known] - np.array([sampled[t] for t in tick[known].tolist()])
    assert true_age.max() > TIMEOUT_S, "the stream never got stale: the test did not test anything"
    # The robot-clock age follows the true age through the backlog (each state was received just before use).
    assert np.all(age[known] >= true_age - SLACK_S), f"age under-read by {np.max(true_age - age[known]) * 1e3:.1f} ms"
    # Every tick that used a state older than the timeout sent damping: none missed.
    running = np.flatnonzero(~damping)[0] if (~damping).any() else 0
    late = known.copy()
    late[known] = true_age > TIMEOUT_S + SLACK_S
    late[:running] = False
    missed = int(np.sum(late & ~damping))
    assert missed == 0, f"{missed} ticks used a state older than {TIMEOUT_S * 1e3:.0f} ms without damping"
    # ...and before the stream went bad nothing tripped early.
    fresh_until = stamp[known][np.argmax(true_age > 0.005)]
    assert not np.any(damping[(stamp > stamp[running]) & (stamp < fresh_until)])


def test_a_tickless_200_hz_stream_without_crc_is_refused_unless_accepted(dds_domain) -> None:
    """Unitree's Python simulator (unitree_mujoco) sends crc 0, tick 0 at 200 Hz: refused by default (a robot
    always sets the CRC); with robot.accept_zero_crc the 500 Hz loop runs on it, its state aged from receipt,
    and a frozen stream still damps."""
    from dit4dit.drivers.g1_robot import RobotError
    from dit4dit.runtime.realtime.client import RealtimeRobot

    ready, go, done, out = CTX.Event(), CTX.Event(), CTX.Event(), CTX.Queue()
    plan = [(0.0, 0.0), (3.0, 0.0)]  # 3 s after `go` the stream stops
    pub = CTX.Process(target=stand_in_g1, args=(dds_domain, plan, ready, go, done, out, 200.0, True))
    pub.start()
    try:
        assert ready.wait(60)
        base = {"robot": {"interface": "lo", "domain": dds_domain, "connect_timeout_s": 2.0}}
        with pytest.raises(RobotError, match="bad CRC"):
            RealtimeRobot(parse_config(base)).connect()
        cfg = parse_config({"robot": {**base["robot"], "accept_zero_crc": True}})
        rt = RealtimeRobot(cfg)
        rt.connect(30.0)
        kp, kd = cfg.robot.gains_arrays()
        st = rt.state()
        assert st.clock == "receipt" and st.tick == 0
        go.set()
        t_go = time.monotonic()
        hold_plans(rt, np.array(st.q), kp, kd, until=lambda: rt.status().damped or time.monotonic() - t_go > 20)
        s = rt.status()
        assert time.monotonic() - t_go >= 3.0, f"damped while the stream was still on: {s.message}"
        assert s.damp_kind == shm.DAMP_FAULT and "state stream lost" in s.message, s.message
        assert s.counters()["published"] > 1000  # 500 Hz commands on a 200 Hz state stream
        rt.disconnect()
    finally:
        done.set()
        pub.join(10)


def test_step_and_velocity_limits_hold_on_the_wire_under_load(rig_sim, tmp_path) -> None:
    """Plans far beyond the limits (jumps, a fast sine) and controller stalls: the recorder finds no step
    beyond max_delta * dt / 2 ms between any two consecutive commands."""
    from dit4dit.runtime.realtime.client import RealtimeRobot
    from dit4dit.runtime.realtime.plan import Plan, knot_times
    from dit4dit.runtime.realtime.wire import wire_report

    domain, recorder, cmds_path = rig_sim
    cfg = parse_config({"robot": {"interface": "lo", "domain": domain}, "safety": {"max_joint_velocity": 2.0}})
    limits = SafetyLimits.from_config(cfg.safety, 1.0 / cfg.rates.control_hz)
    kp, kd = cfg.robot.gains_arrays()
    load = burners()
    try:
        rt = RealtimeRobot(cfg)
        rt.connect(30.0)
        q0 = np.array(rt.state().q)
        arm = list(g1_spec.ARM_JOINTS)
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < 6.0:
            now = time.monotonic()
            ts = knot_times(now)
            q = np.repeat(q0[None], len(ts), axis=0)
            q[:, arm] += 0.4 * np.sin(2 * np.pi * 2.0 * (ts - t0))[:, None]  # 5 rad/s peak: beyond 2 rad/s
            if (k // 50) % 2:
                q[:, arm] += 0.3  # a jump every half second
            rt.send_plan(Plan(ts, np.clip(q, limits.lower, limits.upper), kp, kd))
            k += 1
            time.sleep(0.2 if k % 97 == 0 else 0.01)  # now and then the controller stalls for 0.2 s
        rt.damp("test over")
        time.sleep(0.1)
        status = rt.status()
        rt.disconnect()
    finally:
        stop_all(load)
    recorder.send_signal(signal.SIGTERM)
    recorder.wait(60)
    with np.load(cmds_path) as z:
        cmds = {k: z[k] for k in z.files}
    rep = wire_report(cmds, limits)
    assert rep["messages"] > 1000 and status.counters()["step_limited"] > 100, (rep, status.counters(), status.message)
    assert rep["step_violations"] == 0, rep
    assert status.damp_kind == shm.DAMP_REQUESTED, status.message  # only the test's own damp request


def test_a_controller_that_dies_leaves_the_robot_damped(rig_sim, tmp_path) -> None:
    domain, recorder, cmds_path = rig_sim
    script = f"""
import time, numpy as np
from dit4dit.runtime.config import parse_config
from dit4dit.runtime.realtime.client import RealtimeRobot
from dit4dit.runtime.realtime.plan import hold
cfg = parse_config({{"robot": {{"interface": "lo", "domain": {domain}}}, "safety": {{"damp_hold_s": 0.5}}}})
rt = RealtimeRobot(cfg)
rt.connect(30.0)
kp, kd = cfg.robot.gains_arrays()
q = np.array(rt.state().q)
print("rt", rt._proc.pid, flush=True)
while True:
    rt.send_plan(hold(time.monotonic(), q, kp, kd))
    time.sleep(0.01)
"""
    ctl = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = ctl.stdout.readline()
        assert line.startswith("rt "), line
        rt_pid = int(line.split()[1])
        time.sleep(1.0)
        killed_at = time.monotonic()
        ctl.send_signal(signal.SIGKILL)  # no shutdown, no damp request: its pipe just closes
        ctl.wait(10)
        gone_at = time.monotonic()  # reaped: its end of the pipe is closed by now (a dying process takes a while)
        deadline = time.monotonic() + 30
        while _alive(rt_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(rt_pid), "the real-time process outlived its controller"
        assert time.monotonic() - killed_at >= 0.5  # it kept damping for damp_hold_s first
    finally:
        if ctl.poll() is None:
            ctl.kill()
    recorder.send_signal(signal.SIGTERM)
    recorder.wait(60)
    with np.load(cmds_path) as z:
        kp, t = z["kp"], z["t"]
    from dit4dit.drivers.dds_io import source_ns

    after = t * 1e9 > source_ns(int(gone_at * 1e9)) + 0.004e9  # two ticks after the controller was gone
    assert after.sum() > 50 and np.all(kp[after].max(axis=1) == 0), "commands after the controller died were not damping"
    assert killed_at < gone_at
    assert np.any(kp[~after].max(axis=1) > 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.fixture
def rig_sim(tmp_path, dds_domain):
    """dit4dit-sim (no cameras) and an rt/lowcmd recorder on this test's domain."""
    from tests.robot_rig import Proc

    sim = Proc("sim", ["dit4dit-sim", "--domain", str(dds_domain), "--no-cameras", "--control-port", "0"], tmp_path)
    cmds = tmp_path / "lowcmd.npz"
    rec = Proc("lowcmd", [sys.executable, "-m", "dit4dit.runtime.realtime.wire", "record", "--domain", str(dds_domain),
                          "--out", str(cmds)], tmp_path)  # fmt: skip
    try:
        sim.wait_for("dit4dit-sim ready", 60)
        rec.wait_for("recording", 30)
        yield dds_domain, rec.p, cmds
    finally:
        rec.stop()
        sim.stop()
