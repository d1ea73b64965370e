"""The 500 Hz loop: newest state in, one safe command out, every tick; nothing else runs in its process.

Per tick (``rates.control_hz``):

1. ``robot.poll()``: the newest rt/lowstate (any backlog skipped), its age from the robot's own clock;
   published to the controller through shared memory.
2. The controller's plan (runtime/realtime/plan.py), re-read when it changed.
3. Safety decisions, each damping on this tick and latching: the robot watchdog (state older than
   ``safety.state_timeout_s``, tilt, joint speed, temperatures, motor faults; runtime/realtime/watchdogs.py); the
   remote's e-stop combination held; a damp request from the controller; the controller silent
   (no plan for ``safety.controller_timeout_s``) or gone (its pipe closed).
4. The target: the plan interpolated at this instant, through the SafetyFilter (runtime/realtime/safety.py)
   against the command last sent, with the time since that send: so the step and velocity limits hold
   between any two consecutive messages on the wire, whatever the scheduling. Damping (kp = 0) when
   damped or before the first plan.
5. ``robot.send`` with the same instant as its DDS source timestamp.

The loop keeps its schedule (absolute tick times); after a stall it skips the ticks it missed instead
of bursting. The controller reads ``status`` for what was sent and why the robot damped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dit4dit.drivers import g1_spec
from dit4dit.drivers.g1_robot import LowCmdTarget
from dit4dit.drivers.remote import combo_mask
from dit4dit.runtime.realtime import shm
from dit4dit.runtime.realtime.plan import PLAN_SPACING_S, Plan
from dit4dit.runtime.realtime.safety import SafetyFilter, SafetyLimits
from dit4dit.runtime.realtime.watchdogs import RobotWatchdog

log = logging.getLogger("dit4dit.realtime")

N = g1_spec.NUM_JOINTS


@dataclass
class Trace:
    """Per-tick record for benchmarks (``--trace``): bounded, preallocated."""

    capacity: int
    stamp_ns: np.ndarray = field(init=False)  # the command's source timestamp (monotonic ns)
    age_s: np.ndarray = field(init=False)  # age of the state it was computed from (robot clock)
    tick: np.ndarray = field(init=False)  # that state's tick
    damping: np.ndarray = field(init=False)  # the command was damping (kp = 0 / weight ramping out)
    q: np.ndarray = field(init=False)  # the joint targets sent
    planned: np.ndarray = field(init=False)  # the plan's targets at that instant, before the safety layer
    n: int = 0

    def __post_init__(self) -> None:
        self.stamp_ns = np.zeros(self.capacity, np.int64)
        self.age_s = np.zeros(self.capacity, np.float32)
        self.tick = np.zeros(self.capacity, np.uint32)
        self.damping = np.zeros(self.capacity, bool)
        self.q = np.zeros((self.capacity, N), np.float32)
        self.planned = np.zeros((self.capacity, N), np.float32)

    def add(self, stamp_ns: int, age_s: float, tick: int, damping: bool, q: np.ndarray, planned: np.ndarray) -> None:
        i = self.n
        if i < self.capacity:
            self.stamp_ns[i], self.age_s[i], self.tick[i], self.damping[i] = stamp_ns, age_s, tick, damping
            self.q[i], self.planned[i] = q, planned
            self.n += 1

    def save(self, path: str) -> None:
        k = self.n
        np.savez(path, stamp_ns=self.stamp_ns[:k], age_s=self.age_s[:k], tick=self.tick[:k], damping=self.damping[:k],
                 q=self.q[:k], planned=self.planned[:k])


class RealtimeLoop:
    """One tick at a time (``tick``), or ``run`` until told to stop. ``robot`` is a connected G1Robot
    (``publisher=False``) or anything with its poll / send / damping_target / arm_sdk_weight / stats."""

    def __init__(self, robot: Any, channel: shm.Channel, cfg: Any, trace: Trace | None = None,
                 controller_alive: Any = None) -> None:
        self.robot = robot
        self.channel = channel
        self.cfg = cfg
        self.dt = 1.0 / cfg.rates.control_hz
        self.filter = SafetyFilter(SafetyLimits.from_config(cfg.safety, self.dt))
        self.watchdog = RobotWatchdog(cfg.safety)
        self.estop_mask = combo_mask(cfg.safety.estop_buttons)
        self.estop_name = "+".join(cfg.safety.estop_buttons)
        self.controller_alive = controller_alive or (lambda: True)
        self.trace = trace
        self.plan: Plan | None = None
        self.plan_seq = 0
        self.plan_written_at = 0.0
        self.plan_request = shm.REQ_NONE
        self.damped = False
        self.shutdown = False
        self._state_count = 0
        self._last_received = -1.0
        self._last_tick = 0.0
        self._last_send = 0.0
        self._status = shm.new(shm.STATUS)
        self._status["phase"] = shm.WAITING
        self._state_rec = shm.new(shm.STATE)

    # ------------------------------------------------------------------------------------------------
    def run(self, should_stop: Any = None) -> None:
        """Tick at ``rates.control_hz`` until a shutdown request (or ``should_stop()``)."""
        period_ns = int(round(self.dt * 1e9))
        next_ns = time.monotonic_ns()
        st = self._status
        while not self.shutdown and not (should_stop is not None and should_stop()):
            self.tick(time.monotonic_ns())
            next_ns += period_ns
            delay = next_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay * 1e-9)
            elif -delay > period_ns:  # a whole period behind: skip the missed ticks, never burst
                st["late_ticks"] += 1
                next_ns = time.monotonic_ns()

    def tick(self, now_ns: int) -> None:
        now = now_ns * 1e-9
        status = self._status
        if self._last_tick:
            period = now - self._last_tick
            status["period_hist"][min(int(period / shm.PERIOD_BIN_S), shm.PERIOD_BINS - 1)] += 1
            status["period_max_s"] = max(float(status["period_max_s"]), period)
            if period > 2 * self.dt:
                status["missed_deadlines"] += 1
            late = period - self.dt
            if late > status["max_late_s"]:
                status["max_late_s"] = late
        self._last_tick = now
        status["ticks"] += 1

        st = self.robot.poll()
        # from the fastest delivery seen (sender_clock.py); a hair below 0 is the poll's own microseconds
        age = max(0.0, now - st.stamp)
        if st.age_s != age:  # aged at this tick's instant, which the watchdog judges
            st = dataclasses.replace(st, age_s=age, stale=age > self.cfg.safety.state_timeout_s)
        if st.received != self._last_received:
            self._last_received = st.received
            self._publish_state(st)
        status["age_hist"][min(int(max(age, 0.0) / shm.AGE_BIN_S), shm.AGE_BINS - 1)] += 1
        status["age_max_s"] = max(float(status["age_max_s"]), age)
        self._read_plan()

        if not self.damped:
            self._check(st, now, age)
        planned = None
        if self.damped or self.plan is None:
            target = self.robot.damping_target(self.cfg.safety.damping_kd)
        else:
            plan = self.plan
            if self.filter.last is None:  # first plan: start from the measured pose (no jump), as of the last send
                self.filter.reset(st.q, plan.kp, plan.kd, self._last_send if self._last_send else now - self.dt)
            if now > plan.end + PLAN_SPACING_S:
                status["plan_underruns"] += 1
            planned = plan.sample(now)
            cmd = self.filter(planned, plan.kp, plan.kd, now=now)
            target = LowCmdTarget(cmd.q, cmd.dq, cmd.tau, cmd.kp, cmd.kd)
        self.robot.send(target, now_ns)
        self._last_send = now
        status["sent_q"], status["sent_kp"], status["sent_kd"] = target.q, target.kp, target.kd
        status["sent_stamp"] = now
        if self.trace is not None:
            self.trace.add(now_ns, age, st.tick & 0xFFFFFFFF, target.damping, target.q,
                           target.q if planned is None else planned)
        self._publish_status()

    # ------------------------------------------------------------------------------------------------
    def _check(self, st: Any, now: float, age: float) -> None:
        """Damp on this tick if anything says so (the reason goes to the controller)."""
        fault = self.watchdog.check(st, now)
        if fault is not None:
            return self.damp(shm.DAMP_FAULT, f"watchdog: {fault}")
        if int(st.remote.keys) & self.estop_mask == self.estop_mask:
            return self.damp(shm.DAMP_ESTOP, f"operator e-stop (remote {self.estop_name})")
        if self.plan_request in (shm.REQ_DAMP, shm.REQ_SHUTDOWN):
            return self.damp(shm.DAMP_REQUESTED, self._plan_message or "the controller asked to damp")
        if not self.controller_alive():
            return self.damp(shm.DAMP_CONTROLLER_GONE, "the controller process is gone (its pipe closed)")
        silent = now - self.plan_written_at
        if self.plan is not None and silent > self.cfg.safety.controller_timeout_s:
            return self.damp(shm.DAMP_CONTROLLER_SILENT, f"the controller sent no plan for {silent:.2f} s "
                             f"(limit {self.cfg.safety.controller_timeout_s:.2f} s)")
        return None

    def damp(self, kind: int, reason: str) -> None:
        """Latch damping from this tick on."""
        if self.damped:
            return
        self.damped = True
        self._status["phase"] = shm.DAMPED
        self._status["damp_kind"] = kind
        self._status["message"] = shm.encode(reason)
        log.warning("damping: %s", reason)

    def _read_plan(self) -> None:
        rec = self.channel.plan
        if rec.seq == self.plan_seq:
            return
        p = rec.read()
        if p is None:  # mid-write: the previous plan stays in force this tick
            return
        self.plan_seq = rec.seq
        self.plan_written_at = float(p["written_at"])
        self.plan_request = int(p["request"])
        self._plan_message = shm.text(p["message"])
        if self.plan_request == shm.REQ_SHUTDOWN:
            self.shutdown = True
        n = int(p["n"])
        if n > 0 and not self.damped:
            try:
                self.plan = Plan(p["t"][:n].copy(), p["q"][:n].copy(), p["kp"].copy(), p["kd"].copy())
            except ValueError as e:  # a malformed plan is refused; the previous one stays in force
                log.error("refused a plan from the controller: %s", e)
                return
            if self._status["phase"] == shm.WAITING:
                self._status["phase"] = shm.RUNNING
            self._status["plan_seq"] = self.plan_seq

    _plan_message = ""

    def _publish_state(self, st: Any) -> None:
        r = self._state_rec
        self._state_count += 1
        r["count"] = self._state_count
        r["q"], r["dq"], r["tau"] = st.q, st.dq, st.tau
        r["temperature"], r["motor_error"] = st.temperature, st.motor_error
        r["quat"], r["rpy"], r["gyro"], r["acc"] = st.imu.quat, st.imu.rpy, st.imu.gyro, st.imu.acc
        r["imu_temp"] = st.imu.temperature
        r["remote"] = np.frombuffer(st.remote.pack(), np.uint8)
        r["remote_lost"] = st.remote_lost
        r["tick"], r["mode_machine"] = st.tick & 0xFFFFFFFF, st.mode_machine
        r["stamp"], r["received"] = st.stamp, st.received
        r["tick_clock"] = st.clock == "tick"
        self.channel.state.write(r)

    def _publish_status(self) -> None:
        s = self._status
        rs = self.robot.stats
        s["arm_sdk_weight"] = self.robot.arm_sdk_weight
        s["published"], s["publish_errors"] = rs["published"], rs["publish_errors"]
        s["states_received"], s["states_skipped"], s["crc_errors"] = (
            rs["states_received"], rs["states_skipped"], rs["crc_errors"])
        fs = self.filter.stats
        s["commands"], s["step_limited"], s["position_clamped"] = fs.commands, fs.step_limited, fs.position_clamped
        s["rejected"] = sum(fs.rejected.values())
        self.channel.status.write(s)

    def set_phase(self, phase: int, message: str = "") -> None:
        self._status["phase"] = phase
        if message:
            self._status["message"] = shm.encode(message)
        self.channel.status.write(self._status)
