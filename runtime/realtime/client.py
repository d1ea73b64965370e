"""The real-time process as the controller sees it: a robot that takes plans, not single targets.

    rt = RealtimeRobot(cfg)                 # cfg: the validated deploy config
    rt.connect()                            # starts the process; it connects to the G1 (RobotError on failure)
    st = rt.state()                         # the newest robot state (RobotState), age from the robot's clock
    rt.send_plan(Plan(t, q, kp, kd))        # the next fraction of a second of targets
    s = rt.status()                         # what went out, whether and why it damped, counters
    rt.damp("reason")                       # damp on the next tick (latches)
    rt.disconnect()                         # damp if not yet, stop the process

Nothing here talks DDS or commands the robot directly: every command is made in the other process,
through its safety layer, at its own rate.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from dit4dit.drivers.g1_robot import ImuState, RobotError, RobotState
from dit4dit.drivers.remote import Remote
from dit4dit.runtime.realtime import shm
from dit4dit.runtime.realtime.plan import Plan

log = logging.getLogger("dit4dit.robot")

STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RealtimeStatus:
    phase: str  # STARTING, WAITING (no plan yet: damping), RUNNING, DAMPED, FAILED, STOPPED
    damped: bool
    damp_kind: int  # shm.DAMP_*
    message: str  # why it damped or failed
    sent_q: np.ndarray  # (29,) the joint targets of the last LowCmd (float32 values)
    sent_stamp: float
    arm_sdk_weight: float
    alive: bool  # the process is running
    raw: np.ndarray  # every counter (shm.STATUS)

    def counters(self) -> dict[str, int]:
        keys = ("ticks", "late_ticks", "missed_deadlines", "published", "publish_errors", "plan_underruns",
                "states_received", "states_skipped", "crc_errors", "commands", "step_limited", "position_clamped",
                "rejected")  # fmt: skip
        return {k: int(self.raw[k]) for k in keys}

    def state_age_ms(self) -> dict[str, float]:
        """State age at use, over every tick so far: p50 / p99 / max (ms)."""
        return _hist_ms(self.raw["age_hist"], shm.AGE_BIN_S, float(self.raw["age_max_s"]))

    def tick_period_ms(self) -> dict[str, float]:
        """The real-time loop's tick period, over every tick so far: p50 / p99 / max (ms)."""
        return _hist_ms(self.raw["period_hist"], shm.PERIOD_BIN_S, float(self.raw["period_max_s"]))


def _hist_ms(hist: np.ndarray, bin_s: float, max_s: float) -> dict[str, float]:
    """Percentiles as their bin's upper edge, never above the exact maximum."""
    p50, p99 = (min(shm.percentile_from_hist(hist, bin_s, q), max_s) for q in (50, 99))
    return {"p50": round(p50 * 1e3, 3), "p99": round(p99 * 1e3, 3), "max": round(max_s * 1e3, 3)}


class RealtimeRobot:
    def __init__(self, cfg: Any, trace: str | None = None) -> None:
        self.cfg = cfg
        self.trace = trace
        self._channel: shm.Channel | None = None
        self._proc: subprocess.Popen | None = None
        self._plan = shm.new(shm.PLAN)
        self._last_status: RealtimeStatus | None = None
        self._last_state: RobotState | None = None
        self._state_count = 0
        self.mode_machine: int | None = None

    # ------------------------------------------------------------------------------------------------
    def connect(self, timeout_s: float | None = None) -> None:
        """Start the real-time process and wait until it has connected to the robot (RobotError otherwise)."""
        cfg = self.cfg
        timeout_s = cfg.robot.connect_timeout_s if timeout_s is None else timeout_s
        self._channel = shm.Channel.create()
        args = [sys.executable, "-m", "dit4dit.runtime.realtime.process", "--shm", self._channel.name]
        if self.trace:
            args += ["--trace", self.trace]
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE)
        assert self._proc.stdin is not None
        self._proc.stdin.write(cfg.model_dump_json().encode() + b"\n")
        self._proc.stdin.flush()  # stdin stays open: its end of file tells the process we are gone
        deadline = time.monotonic() + timeout_s + 30.0  # + the interpreter's start and imports on a busy machine
        while True:
            s = self.status()
            if s.phase in ("WAITING", "RUNNING", "DAMPED"):
                self.mode_machine = int(s.raw["mode_machine"])
                break
            if s.phase == "FAILED" or not s.alive:
                code = self._proc.poll()
                self._stop_process()
                raise RobotError(s.message or f"the real-time process exited ({code}) before connecting")
            if time.monotonic() > deadline:
                self._stop_process()
                raise RobotError(f"the real-time process did not connect within {timeout_s + 30.0:.0f} s")
            time.sleep(0.01)
        while self.poll() is None:  # the first state is published with the first tick
            if not self.status().alive:
                raise RobotError(f"the real-time process exited: {self.status().message}")
            time.sleep(0.001)
        rt = int(s.raw["rt_priority"])
        log.info("real-time process %d running at %.0f Hz (%s)", int(s.raw["pid"]), cfg.rates.control_hz,
                 f"SCHED_FIFO {rt}" if rt else "normal scheduling")

    def disconnect(self) -> None:
        """Damp (if not yet), then stop the process: it sends damping a while longer and exits."""
        if self._channel is None:
            return
        self._write_plan(shm.REQ_SHUTDOWN, "controller shutting down")
        self._stop_process()
        self._channel.close()
        self._channel = None

    def _stop_process(self) -> None:
        p = self._proc
        if p is None:
            return
        try:
            p.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("the real-time process did not stop within %.0f s; killing it", STOP_TIMEOUT_S)
            p.kill()
            p.wait(5)
        if p.stdin is not None:
            try:
                p.stdin.close()
            except OSError:
                pass
        self._proc = None

    # ------------------------------------------------------------------------------------------------
    def poll(self) -> RobotState | None:
        """The newest state (None before the first), aged as of now."""
        assert self._channel is not None
        rec = self._channel.state
        if rec.seq != self._state_count:
            r = rec.read()
            if r is not None and int(r["count"]) > 0:
                self._state_count = rec.seq
                self._last_state = _robot_state(r, self.cfg.safety.state_timeout_s)
        st = self._last_state
        if st is None:
            return None
        age = time.monotonic() - st.stamp
        return _with_age(st, age, self.cfg.safety.state_timeout_s)

    def state(self) -> RobotState:
        st = self.poll()
        if st is None:
            raise RobotError("no robot state yet: connect() first")
        return st

    def status(self) -> RealtimeStatus:
        """What the real-time process reports now (the previous report while it is mid-write)."""
        alive = self._proc is not None and self._proc.poll() is None
        raw = self._channel.status.read() if self._channel is not None else None
        if raw is None:
            last = self._last_status
            if last is None:
                raw = shm.new(shm.STATUS)
            else:
                return RealtimeStatus(**{**last.__dict__, "alive": alive})
        phase = shm.PHASES[int(raw["phase"])]
        s = RealtimeStatus(
            phase=phase, damped=phase in ("DAMPED", "STOPPED") or int(raw["damp_kind"]) != shm.NOT_DAMPED,
            damp_kind=int(raw["damp_kind"]), message=shm.text(raw["message"]), sent_q=raw["sent_q"].copy(),
            sent_stamp=float(raw["sent_stamp"]), arm_sdk_weight=float(raw["arm_sdk_weight"]), alive=alive, raw=raw,
        )  # fmt: skip
        self._last_status = s
        return s

    def send_plan(self, plan: Plan) -> None:
        """Hand over the targets for the next fraction of a second (replaces the previous plan)."""
        n = len(plan.t)
        if n > shm.MAX_KNOTS:
            raise ValueError(f"a plan holds at most {shm.MAX_KNOTS} knots, got {n}")
        p = self._plan
        p["n"] = n
        p["t"][:n] = plan.t
        p["q"][:n] = plan.q
        p["kp"], p["kd"] = plan.kp, plan.kd
        self._write_plan(shm.REQ_NONE, "")

    def damp(self, reason: str = "the controller asked to damp") -> None:
        """Damping from the real-time process's next tick on (latches: restart to re-arm)."""
        self._write_plan(shm.REQ_DAMP, reason)

    def _write_plan(self, request: int, message: str) -> None:
        if self._channel is None:
            raise RobotError("RealtimeRobot used before connect()")
        p = self._plan
        if int(p["request"]) != shm.REQ_NONE and request == shm.REQ_NONE:
            request = int(p["request"])  # a damp request stays in force
        p["request"], p["message"] = request, shm.encode(message) if message else p["message"]
        p["written_at"] = time.monotonic()
        self._channel.plan.write(p)


def _robot_state(r: np.ndarray, stale_after_s: float) -> RobotState:
    try:
        remote = Remote.parse(r["remote"].tobytes())
    except ValueError:
        remote = Remote()
    st = RobotState(
        q=r["q"].copy(), dq=r["dq"].copy(), tau=r["tau"].copy(),
        imu=ImuState(r["quat"].copy(), r["rpy"].copy(), r["gyro"].copy(), r["acc"].copy(), float(r["imu_temp"])),
        remote=remote, remote_lost=bool(r["remote_lost"]), tick=int(r["tick"]), mode_machine=int(r["mode_machine"]),
        stamp=float(r["stamp"]), age_s=0.0, stale=False, temperature=r["temperature"].copy(),
        motor_error=r["motor_error"].copy(), received=float(r["received"]),
        clock="tick" if int(r["tick_clock"]) else "receipt",
    )  # fmt: skip
    return st


def _with_age(st: RobotState, age: float, stale_after_s: float) -> RobotState:
    import dataclasses

    return dataclasses.replace(st, age_s=age, stale=age > stale_after_s)
