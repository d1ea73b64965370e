"""`dit4dit-robot --config deploy.yaml`: the robot's controller, above its real-time process.

States (every transition is logged with its reason)::

    CONNECTING -> RAMP_IN -> READY -> RUNNING <-> TELEOP
                                        |  ^
                                        v  |
                                        HOLD            (server silent / camera fault: hold the last safe target)
    any of them -> STOPPING -> DAMPED -> exit

Two processes (docs/architecture.md, "Real time"):

* this one, at ``rates.controller_hz`` (100 Hz): the state machine, chunk scheduling and blending
  (runtime/chunking.py), camera reads, the policy client (its own thread, runtime/inference.py),
  operator inputs, recording (a writer thread). Each tick it samples what it wants over the next
  0.3 s and hands those targets to
* the real-time process (runtime/realtime/), at ``rates.control_hz`` (500 Hz): the newest robot state,
  the safety layer against the command last sent, the robot watchdogs, and the publish. Every command
  is made there; nothing here can hold it up.

Stops: an e-stop (remote combination, keyboard, SIGINT/SIGTERM) or a watchdog (state too old, tilt,
joint speed, temperature, motor fault — checked on every real-time tick — or the server or camera
silent past the hold) damps on the real-time process's next tick: kp = 0, kd = damping kd (arm_sdk:
the weight ramps to 0). The end of the configured run slides back to the start pose first, then damps.

Exit codes: 0 run finished or stopped by SIGINT/SIGTERM; 1 could not start (config, robot, server,
camera); 3 operator e-stop; 4 a watchdog damped the robot.
"""

from __future__ import annotations

import argparse
import enum
import faulthandler
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dit4dit.drivers import g1_spec
from dit4dit.drivers.cameras import CameraError, CameraFault
from dit4dit.runtime.chunking import ChunkRejected, ChunkScheduler
from dit4dit.runtime.config import ConfigError, DeployConfig, load_config
from dit4dit.runtime.inference import InferenceOutcome, InferenceWorker
from dit4dit.runtime.observation import ObservationBuilder, joint_indices
from dit4dit.runtime.operator import OperatorInputs
from dit4dit.runtime.realtime import shm
from dit4dit.runtime.realtime.plan import Plan, knot_times
from dit4dit.runtime.recorder import RecordedFrame, TrialRecorder

log = logging.getLogger("dit4dit.robot")

N = g1_spec.NUM_JOINTS

# A target function: the joint targets (K, 29) at the times ts (K,) from now on.
TargetFn = Callable[[np.ndarray], np.ndarray]


class State(enum.Enum):
    CONNECTING = "CONNECTING"
    RAMP_IN = "RAMP_IN"
    READY = "READY"
    RUNNING = "RUNNING"
    HOLD = "HOLD"
    TELEOP = "TELEOP"
    STOPPING = "STOPPING"
    DAMPED = "DAMPED"


class ExitCode(enum.IntEnum):
    OK = 0
    STARTUP = 1
    ESTOP = 3
    FAULT = 4


class StartupError(RuntimeError):
    """The controller could not start; the message says what to check."""


@dataclass
class Transition:
    t: float  # seconds since start
    src: State
    dst: State
    reason: str


@dataclass
class LoopStats:
    ticks: int = 0
    missed_deadlines: int = 0  # ticks that started more than one period late
    max_late_s: float = 0.0


@dataclass
class Counters:
    # Largest speed of the requested target over the ticks in RUNNING/HOLD/TELEOP, per elapsed time: a seam or
    # handover that jumps shows up here even when the safety layer hides it.
    max_target_speed: float = 0.0
    max_target_speed_state: str = ""
    chunks_accepted: int = 0
    chunks_rejected: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0
    camera_faults: int = 0
    requests: int = 0


def smoothstep(u: np.ndarray | float) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def ramp(q_from: np.ndarray, q_to: np.ndarray, t0: float, duration_s: float) -> TargetFn:
    """Smoothstep from q_from (at t0) to q_to (at t0 + duration_s), then q_to."""
    delta = q_to - q_from
    return lambda ts: q_from + smoothstep((ts - t0) / duration_s)[:, None] * delta


def constant(q: np.ndarray) -> TargetFn:
    return lambda ts: np.broadcast_to(q, (len(ts), len(q)))


def slide(q_from: np.ndarray, goal: np.ndarray, t0: float, speed: float) -> TargetFn:
    """Straight toward goal at ``speed`` (rad/s on the joint furthest away, direction kept), then goal."""
    delta = goal - q_from
    biggest = float(np.max(np.abs(delta)))
    if biggest == 0.0:
        return constant(q_from)
    return lambda ts: q_from + np.clip(speed * (ts - t0) / biggest, 0.0, 1.0)[:, None] * delta


class Controller:
    """The state machine. Components are passed in connected-or-not; ``run`` owns them.

    ``robot`` is a :class:`dit4dit.runtime.realtime.client.RealtimeRobot` (connect, state, status,
    send_plan, damp, disconnect)."""

    def __init__(
        self,
        cfg: DeployConfig,
        robot: Any,
        client: Any,
        cameras: dict[str, Any],
        operator: OperatorInputs,
        record_timing: bool = False,
    ) -> None:
        self.cfg = cfg
        self.robot = robot
        self.client = client
        self.cameras = cameras
        self.operator = operator
        self.kp, self.kd = cfg.robot.gains_arrays()
        self.start_pose = cfg.robot.start_pose_array()
        self.dt = 1.0 / cfg.rates.controller_hz
        self.state = State.CONNECTING
        self.transitions: list[Transition] = []
        self.exit_code = ExitCode.OK
        self.counters = Counters()
        self.loop = LoopStats()
        # with record_timing (bench/bench_control_loop.py): accepted chunks (tick time it took effect,
        # observation time, blend mode)
        self.trace_chunks: list[tuple[float, float, str]] | None = [] if record_timing else None
        self._t0 = time.monotonic()
        self._signal: int | None = None
        self._stop_loop = threading.Event()
        self.rt_status: Any = None  # the real-time process's last report (RealtimeStatus)
        self.damp_requested = False
        # filled in connect()
        self.metadata: dict[str, Any] = {}
        self.action_idx = np.zeros(0, dtype=np.int64)
        self.state_idx = np.zeros(0, dtype=np.int64)
        self.scheduler: ChunkScheduler | None = None
        self.worker: InferenceWorker | None = None
        self.builder: ObservationBuilder | None = None
        self.recorder: TrialRecorder | None = None
        self.horizon = 0
        self.policy_hz = cfg.rates.policy_hz or 0.0  # the policy's step rate (metadata when the config leaves it)
        # per-state bookkeeping
        self._state_since = 0.0
        self._ramp_from = self.start_pose.copy()
        self._hold_q = self.start_pose.copy()
        self._hold_reason = ""
        self._hold_from = State.RUNNING  # the state a remote-lost hold interrupted
        self._last_good = 0.0
        self._base = self.start_pose.copy()  # targets for the joints the policy does not drive
        self._commanded = self.start_pose.copy()  # the target asked for now (this tick)
        self._plan_fn: TargetFn | None = None  # what the last tick planned (teleop continues from it)
        self._teleop_goal: np.ndarray | None = None
        self._next_record = 0.0
        self._run_start = 0.0
        self._episode_start = 0.0
        self._speed_ref: tuple[np.ndarray, float] | None = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------------------ logging
    def _transition(self, dst: State, reason: str, now: float) -> None:
        src = self.state
        self.transitions.append(Transition(now - self._t0, src, dst, reason))
        log.info("state %s -> %s: %s", src.value, dst.value, reason)
        self.state = dst
        self._state_since = now

    def _warn_once(self, key: str, msg: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *args)

    # ------------------------------------------------------------------------------------ startup
    def connect(self) -> None:
        """CONNECTING: server metadata, robot, cameras; validate that they fit deploy.yaml."""
        cfg = self.cfg
        self.metadata = self._fetch_metadata()
        md = self.metadata
        try:
            self.action_idx = joint_indices(md["action_names"], "action_names")
            self.state_idx = joint_indices(md["state_names"], "state_names")
        except (KeyError, ValueError) as e:
            raise StartupError(f"server {cfg.server.address}: {e}") from None
        want = set(cfg.robot.controlled_indices())
        if set(self.action_idx.tolist()) != want:
            raise StartupError(
                f"the policy acts on {list(md['action_names'])} but deploy.yaml robot.controlled_joints lists "
                f"{cfg.robot.controlled_joints}; make them the same joints"
            )
        rate = md.get("control_rate_hz", cfg.rates.policy_hz)
        if rate is None:
            raise StartupError("the server's metadata has no control_rate_hz: set rates.policy_hz in deploy.yaml")
        rate = float(rate)
        if cfg.rates.policy_hz is not None and abs(rate - cfg.rates.policy_hz) > 1e-6:
            raise StartupError(
                f"rates.policy_hz is {cfg.rates.policy_hz} but the policy was trained at {rate} Hz "
                "(metadata control_rate_hz); set rates.policy_hz to it, or to null to take the policy's"
            )
        try:
            cfg.check_policy_rate(rate)
        except ValueError as e:
            raise StartupError(f"deploy.yaml with this policy: {e}") from None
        self.policy_hz = rate
        self.horizon = int(md["chunk_length"])
        if cfg.rates.execution_horizon > self.horizon:
            raise StartupError(
                f"rates.execution_horizon ({cfg.rates.execution_horizon}) exceeds the policy's chunk_length "
                f"({self.horizon}); use at most {self.horizon}"
            )
        missing = set(md.get("cameras", {})) - set(self.cameras)
        if missing:
            raise StartupError(
                f"the policy needs camera(s) {sorted(missing)} but deploy.yaml cameras has {sorted(self.cameras)}"
            )
        self.scheduler = ChunkScheduler(
            len(self.action_idx), 1.0 / self.policy_hz, cfg.rates.execution_horizon,
            blend=cfg.chunking.blend, blend_s=cfg.chunking.blend_s, latency_window=cfg.chunking.latency_window,
            lower=g1_spec.LOWER[self.action_idx], upper=g1_spec.UPPER[self.action_idx],
        )  # fmt: skip
        policy_cams = {n: self.cameras[n] for n in md.get("cameras", {})}
        max_age = {n: cfg.cameras[n].max_age_s for n in self.cameras}
        try:
            for cam in self.cameras.values():
                cam.connect()
        except CameraError as e:
            raise StartupError(str(e)) from None
        sizes = {n: (int(c["height"]), int(c["width"])) for n, c in md.get("cameras", {}).items()}
        self.builder = ObservationBuilder(policy_cams, max_age, self.state_idx, cfg.run.instruction, sizes=sizes)
        try:
            self.robot.connect(cfg.robot.connect_timeout_s)
        except Exception as e:  # noqa: BLE001 - RobotError and DDS errors: report and exit 1
            raise StartupError(f"robot: {e}") from None
        self.worker = InferenceWorker(self.client, cfg.server.seed, {n: max_age[n] for n in policy_cams})
        if cfg.recording.enabled:
            try:
                self.recorder = self._make_recorder(md)
            except Exception as e:  # noqa: BLE001 - dataset folder incompatible, pyarrow missing, no frame
                raise StartupError(f"recording.root {cfg.recording.root}: {e}") from None
        self.operator.start()

    def _fetch_metadata(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.cfg.server.connect_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                md = self.client.metadata()
                for key in ("action_names", "state_names", "chunk_length"):
                    if key not in md:
                        raise StartupError(f"server metadata lacks {key!r}; is {self.cfg.server.address} a dit4dit-serve?")
                self.client.reset()
                return md
            except StartupError:
                raise
            except Exception as e:  # noqa: BLE001 - ServerTimeout while it starts: retry until the deadline
                last = e
                time.sleep(0.2)
        raise StartupError(
            f"no policy server at {self.cfg.server.address} within {self.cfg.server.connect_timeout_s:.0f} s "
            f"({last}); start it with `dit4dit-serve --ckpt ...` or fix server.address"
        )

    def _make_recorder(self, md: dict[str, Any]) -> TrialRecorder:
        sizes = {}
        for name, cam in self.cameras.items():
            frame = cam.read_latest(self.cfg.cameras[name].max_age_s * 10)
            sizes[name] = frame.image.shape[:2]
        rc = self.cfg.recording
        return TrialRecorder(
            rc.root,
            fps=rc.fps or self.policy_hz,
            state_names=list(md["state_names"]),
            action_names=list(md["action_names"]),
            cameras=sizes,
            instruction=self.cfg.run.instruction,
            extra_info={"policy": {k: md.get(k) for k in ("model", "version", "preset")}},
        )

    # ------------------------------------------------------------------------------------ the loop
    def run(self) -> ExitCode:
        """Connect, run the loop until DAMPED has been held, shut down. Returns the exit code."""
        self._t0 = time.monotonic()
        try:
            self.connect()
        except StartupError as e:
            log.error("cannot start: %s", e)
            self.exit_code = ExitCode.STARTUP
            self._shutdown()
            return self.exit_code
        st = self.robot.state()
        now = time.monotonic()
        self._ramp_from = np.array(st.q, dtype=np.float64)
        self._base = self.start_pose.copy()
        self._transition(State.RAMP_IN, f"robot connected (mode_machine {getattr(self.robot, 'mode_machine', '?')}), "
                         f"blending from the measured pose to the start pose over {self.cfg.safety.ramp_in_s:.1f} s", now)
        try:
            self._loop()
        except Exception:  # a bug must still leave the robot damped, and say so
            log.exception("controller loop failed; damping")
            self.robot.damp("the controller loop failed")
            self.exit_code = ExitCode.FAULT
        finally:
            self._shutdown()
        return self.exit_code

    def request_stop(self, signum: int) -> None:
        """Signal handler entry point: the next tick damps."""
        self._signal = signum

    def _loop(self) -> None:
        period = self.dt
        next_t = time.monotonic()
        loop = self.loop
        while not self._stop_loop.is_set():
            start = time.monotonic()
            late = start - next_t
            if late > period:
                loop.missed_deadlines += 1
            loop.max_late_s = max(loop.max_late_s, late)
            self._tick(start)
            loop.ticks += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif -delay > 5 * period:  # far behind (GC, swap): resynchronise instead of bursting
                next_t = time.monotonic()

    def _tick(self, now: float) -> None:
        st = self.robot.state()
        rt = self.rt_status = self.robot.status()
        ops = self.operator.poll(st, now)
        if self.state not in (State.STOPPING, State.DAMPED):
            if not rt.alive:
                self._lost_realtime(rt, now)
                return
            if rt.damped and not self.damp_requested:  # the real-time loop damped on its own
                code = ExitCode.ESTOP if rt.damp_kind == shm.DAMP_ESTOP else ExitCode.FAULT
                self._emergency(rt.message, code, now)
            elif self._signal is not None:
                name = signal.Signals(self._signal).name
                self._emergency(f"{name} received", ExitCode.OK, now)
            elif ops.estop:
                self._emergency(f"operator e-stop ({ops.estop})", ExitCode.ESTOP, now)
        if ops.success is not None and self.recorder is not None:
            self.recorder.mark(ops.success)
        if getattr(st, "remote_lost", False):
            if self.cfg.remote_required:
                if self.state in (State.RAMP_IN, State.READY, State.RUNNING, State.TELEOP):
                    self._hold_from = self.state
                    self._enter_hold(now, f"wireless remote lost (all-zero bytes for {self.cfg.safety.remote_lost_s:.1f} s):"
                                     " its e-stop is unavailable; holding", "remote")
            else:
                self._warn_once("remote-lost", "wireless remote silent (all-zero bytes for %.1f s): its e-stop is "
                                "unavailable; the keyboard (e / space) and Ctrl-C still stop the robot",
                                self.cfg.safety.remote_lost_s)  # fmt: skip
        handler = {
            State.RAMP_IN: self._ramp_in,
            State.READY: self._ready,
            State.RUNNING: self._running,
            State.HOLD: self._hold,
            State.TELEOP: self._teleop,
            State.STOPPING: self._stopping,
            State.DAMPED: self._damped,
        }[self.state]
        fn = handler(now, st, ops)
        if fn is not None and not self.damp_requested:
            ts = knot_times(now)
            q = np.array(fn(ts), dtype=np.float64)
            self.robot.send_plan(Plan(ts, q, self.kp, self.kd))
            self._plan_fn = fn
            self._commanded = q[0]
            self._track_speed(q[0], now)
        self._record(now, st)
        self._check_run_end(now)

    def _sent_q(self) -> np.ndarray:
        """The joint targets of the last command the robot was sent (after the safety layer)."""
        rt = self.rt_status if self.rt_status is not None else self.robot.status()
        return np.array(rt.sent_q, dtype=np.float64)

    # ------------------------------------------------------------------------------------ states
    def _ramp_in(self, now: float, st: Any, ops: Any) -> TargetFn:
        fn = ramp(self._ramp_from, self.start_pose, self._state_since, self.cfg.safety.ramp_in_s)
        done = now - self._state_since >= self.cfg.safety.ramp_in_s
        # arm_sdk: the driver ramps the blend weight up meanwhile; READY only once our command fully counts
        weight_ok = self.cfg.robot.mode != "arm_sdk" or self.rt_status.arm_sdk_weight >= 1.0
        if done and weight_ok and np.max(np.abs(self._sent_q() - self.start_pose)) < 1e-4:
            self._transition(State.READY, "start pose reached", now)
        return fn

    def _ready(self, now: float, st: Any, ops: Any) -> TargetFn:
        if self.cfg.run.autostart or ops.start:
            return self._start_policy(now, "autostart" if self.cfg.run.autostart else "operator start")
        return constant(self.start_pose)

    def _start_policy(self, now: float, reason: str) -> TargetFn:
        assert self.scheduler is not None
        q = self._sent_q()
        self.scheduler.reset(q[self.action_idx])
        self._base = q.copy()
        self._last_good = now
        if self.state == State.READY:
            self._run_start = self._episode_start = now
            self._next_record = now
        self._transition(State.RUNNING, reason, now)
        return self._policy_fn

    def _policy_fn(self, ts: np.ndarray) -> np.ndarray:
        assert self.scheduler is not None
        q = np.repeat(self._base[None, :], len(ts), axis=0)
        q[:, self.action_idx] = self.scheduler.sample_many(ts)
        return q

    def _running(self, now: float, st: Any, ops: Any) -> TargetFn:
        if ops.takeover:
            return self._enter_teleop(now, ops)
        self._service_inference(now, st, ask=True)
        if self.state != State.RUNNING:  # camera fault inside
            return constant(self._hold_q)
        silent = now - self._last_good
        if silent > self.cfg.safety.server_hold_s:
            return self._enter_hold(now, f"server silent: no good chunk for {silent:.2f} s", "server")
        return self._policy_fn

    def _enter_hold(self, now: float, reason: str, kind: str) -> TargetFn:
        assert self.scheduler is not None
        self._hold_q = self._sent_q()
        self._hold_reason = kind
        self.scheduler.reset(self._hold_q[self.action_idx])
        self._transition(State.HOLD, reason, now)
        return constant(self._hold_q)

    def _hold(self, now: float, st: Any, ops: Any) -> TargetFn | None:
        assert self.scheduler is not None
        held = now - self._state_since
        if ops.takeover:
            return self._enter_teleop(now, ops)
        if self._hold_reason == "remote":
            if st.remote_lost:
                if held > self.cfg.safety.remote_damp_s:
                    self._emergency(f"wireless remote lost for {held + self.cfg.safety.remote_lost_s:.1f} s",
                                    ExitCode.FAULT, now)
                    return None
                return constant(self._hold_q)
            return self._resume_after_remote(now)
        if self._hold_reason == "camera":
            if held > self.cfg.safety.camera_damp_s:
                self._emergency(f"camera fault for {held:.2f} s", ExitCode.FAULT, now)
                return None
            try:
                assert self.builder is not None
                self.builder.read_images()
            except CameraFault:
                return constant(self._hold_q)
            self._last_good = now
            return self._start_policy(now, "cameras fresh again")
        # server hold: keep asking; the first good chunk resumes from the held pose (blended, no jump)
        if held > self.cfg.safety.server_damp_s:
            self._emergency(f"server silent for {now - self._last_good:.2f} s (held {held:.2f} s)", ExitCode.FAULT, now)
            return None
        if self._service_inference(now, st, ask=True):
            self._transition(State.RUNNING, "server answered again; resuming from the held pose", now)
            return self._policy_fn
        return constant(self._hold_q)

    def _resume_after_remote(self, now: float) -> TargetFn:
        """The remote is back: carry on where the hold interrupted (a ramp restarts from the held pose)."""
        src = self._hold_from
        if src == State.RAMP_IN:
            self._ramp_from = self._hold_q.copy()
            self._transition(State.RAMP_IN, "wireless remote back; ramping in again from the held pose", now)
            return ramp(self._ramp_from, self.start_pose, now, self.cfg.safety.ramp_in_s)
        if src == State.READY:
            self._transition(State.READY, "wireless remote back", now)
            return constant(self._hold_q)
        return self._start_policy(now, "wireless remote back; policy resumes from the held pose")

    def _enter_teleop(self, now: float, ops: Any) -> TargetFn:
        q = self._sent_q()
        self._teleop_goal = None
        self.operator.begin_teleop(q)
        self._transition(State.TELEOP, f"operator takeover ({ops.takeover})", now)
        return constant(q)

    def _teleop(self, now: float, st: Any, ops: Any) -> TargetFn:
        assert self._plan_fn is not None
        self._service_inference(now, st, ask=False)  # drain a reply still in flight
        here = np.array(self._plan_fn(np.array([now]))[0], dtype=np.float64)  # where the last plan has got to
        if ops.release:
            self.operator.end_teleop()
            return self._start_policy(now, f"operator hands back ({ops.release}); policy resumes from the current pose")
        goal = ops.teleop_target
        if goal is not None:
            goal = np.asarray(goal, dtype=np.float64)
            if goal.shape != (N,) or not np.all(np.isfinite(goal)):
                self._warn_once("teleop-bad", "teleop target rejected: need 29 finite joint positions, got %s", goal.shape)
                goal = None
        if goal is None:  # no live input: stay where the slide has got to
            return constant(here)
        # Slide toward the person's target at the handover speed (direction kept); the safety layer caps again.
        return slide(here, goal, now, self.cfg.safety.handover_velocity)

    def _stopping(self, now: float, st: Any, ops: Any) -> TargetFn | None:
        if not self.damp_requested:
            # planned end: slide back to the start pose, then damp
            fn = ramp(self._ramp_from, self.start_pose, self._state_since, self.cfg.safety.ramp_out_s)
            done = now - self._state_since >= self.cfg.safety.ramp_out_s
            if done and np.max(np.abs(self._sent_q() - self.start_pose)) < 1e-3:
                self._request_damp("run finished: back at the start pose")
                return None
            return fn
        rt = self.rt_status
        if not rt.damped:
            return None  # the real-time loop damps on its next tick
        if self.cfg.robot.mode == "arm_sdk" and rt.arm_sdk_weight > 0.0:
            return None  # the weight is still ramping down
        self._transition(State.DAMPED, "damping in force", now)
        return None

    def _damped(self, now: float, st: Any, ops: Any) -> None:
        if now - self._state_since >= self.cfg.safety.damp_hold_s:
            self._stop_loop.set()
        return None

    def _request_damp(self, reason: str) -> None:
        self.damp_requested = True
        self.robot.damp(reason)

    def _emergency(self, reason: str, code: ExitCode, now: float) -> None:
        """Damp on the real-time process's next tick and go to STOPPING."""
        self._request_damp(reason)
        if self.exit_code == ExitCode.OK:
            self.exit_code = code
        self._transition(State.STOPPING, reason, now)

    def _lost_realtime(self, rt: Any, now: float) -> None:
        """The real-time process is gone: nothing commands the robot any more. Report and stop."""
        self.damp_requested = True
        self.exit_code = ExitCode.FAULT
        self._transition(State.DAMPED, f"the real-time process exited ({rt.message or 'no reason given'}); "
                         "nothing commands the robot now", now)  # fmt: skip
        self._stop_loop.set()

    def _check_run_end(self, now: float) -> None:
        d = self.cfg.run.duration_s
        if d is None or self.state in (State.STOPPING, State.DAMPED, State.RAMP_IN, State.READY):
            return
        if now - self._run_start >= d:
            self._ramp_from = self._sent_q()
            self._transition(State.STOPPING, f"run length {d:.1f} s reached; back to the start pose, then damping", now)

    # ------------------------------------------------------------------------------------ inference
    def _service_inference(self, now: float, st: Any, ask: bool) -> bool:
        """Take a finished reply, send a new request if due. Returns True when a chunk was accepted."""
        assert self.worker is not None and self.scheduler is not None and self.builder is not None
        accepted = False
        out = self.worker.poll()
        if out is not None:
            accepted = self._take(out, now)
        if ask and not self.worker.busy and self.scheduler.should_request(now):
            try:
                obs = self.builder.build(st)
            except CameraFault as e:
                self.counters.camera_faults += 1
                log.warning("%s", e)
                if self.state != State.HOLD:
                    self._enter_hold(now, f"camera fault: {e}; not asking the policy", "camera")
                return accepted
            req = self.scheduler.begin_request(obs.state_stamp, self.horizon)
            self.worker.submit(obs, req)
            self.counters.requests += 1
        return accepted

    def _take(self, out: InferenceOutcome, now: float) -> bool:
        assert self.scheduler is not None
        if out.error is not None:
            self.counters.server_errors += 1
            if self.scheduler.in_flight:
                self.scheduler.cancel_request()
            log.warning("inference failed: %s", out.error)
            return False
        try:
            acc = self.scheduler.on_chunk(out.actions, out.request.t_obs, max(now, out.t_arrival))
        except ChunkRejected as e:
            key = e.kind
            self.counters.chunks_rejected[key] = self.counters.chunks_rejected.get(key, 0) + 1
            log.warning("chunk rejected: %s", e)
            return False
        self.counters.chunks_accepted += 1
        if self.trace_chunks is not None:
            self.trace_chunks.append((now, out.request.t_obs, self.scheduler.blend))  # the tick it took effect
        self._last_good = now
        log.debug("chunk accepted: delay %.0f ms, %d stale rows dropped", acc.delay_s * 1e3, acc.dropped)
        return True

    # ------------------------------------------------------------------------------------ helpers
    def _track_speed(self, target: np.ndarray, now: float) -> None:
        if self._speed_ref is not None and self.state in (State.RUNNING, State.HOLD, State.TELEOP):
            prev, t_prev = self._speed_ref
            if now > t_prev:
                v = float(np.max(np.abs(target - prev))) / max(now - t_prev, self.dt)
                if v > self.counters.max_target_speed:
                    self.counters.max_target_speed = v
                    self.counters.max_target_speed_state = self.state.value
        self._speed_ref = (target, now)

    def _record(self, now: float, st: Any) -> None:
        rec = self.recorder
        if rec is None or self.state not in (State.RUNNING, State.HOLD, State.TELEOP) or now < self._next_record:
            return
        self._next_record += 1.0 / rec.fps
        if now - self._next_record > 1.0 / rec.fps:  # fell behind: skip rather than burst
            self._next_record = now
        ep = self.cfg.run.episode_s
        if ep is not None and now - self._episode_start >= ep:
            rec.end_episode()
            self._episode_start = now
        try:  # full frames for the recording; the policy gets them resized (ObservationBuilder)
            images = {n: c.read_latest(self.cfg.cameras[n].max_age_s).image for n, c in self.cameras.items()}
        except CameraFault:
            return  # no frame without fresh images; the camera watchdog handles the fault
        rec.add(
            RecordedFrame(
                state=np.asarray(st.q, dtype=np.float32)[self.state_idx],
                action=self._commanded[self.action_idx].astype(np.float32),
                executed=self._sent_q()[self.action_idx].astype(np.float32),
                images=images,
                intervention=self.state == State.TELEOP,
                timestamp=now - self._episode_start,
            )
        )

    def _shutdown(self) -> None:
        try:
            self.operator.stop()
        except Exception as e:  # noqa: BLE001
            log.debug("operator stop: %s", e)
        if self.worker is not None:
            self.worker.stop(timeout_s=self.cfg.server.timeout_s + 1.0)
        if self.recorder is not None:
            saved = self.recorder.close()
            log.info("recorded episodes: %s", saved)
        try:
            self.rt_status = self.robot.status()
            self.robot.disconnect()  # damps if it has not yet, then stops the real-time process
        except Exception as e:  # noqa: BLE001 - shutting down: report, go on closing the rest
            log.error("robot disconnect: %s", e)
        for cam in self.cameras.values():
            try:
                cam.disconnect()
            except Exception as e:  # noqa: BLE001
                log.debug("camera disconnect: %s", e)
        try:
            self.client.close()
        except Exception as e:  # noqa: BLE001
            log.debug("client close: %s", e)

    def summary(self) -> dict[str, Any]:
        rt = self.rt_status
        raw = rt.raw if rt is not None else shm.new(shm.STATUS)
        realtime: dict[str, Any] = {"counters": rt.counters(), "state_age_ms": rt.state_age_ms(),
                                    "tick_period_ms": rt.tick_period_ms(), "rt_priority": int(raw["rt_priority"]),
                                    "phase": rt.phase, "message": rt.message} if rt is not None else {}  # fmt: skip
        return {
            "exit_code": int(self.exit_code),
            "states": [[round(t.t, 3), t.src.value, t.dst.value, t.reason] for t in self.transitions],
            "safety": {"commands": int(raw["commands"]), "rejected": int(raw["rejected"]),
                       "step_limited": int(raw["step_limited"]), "position_clamped": int(raw["position_clamped"])},
            "max_target_speed": round(self.counters.max_target_speed, 4),
            "max_target_speed_state": self.counters.max_target_speed_state,
            "chunks": {"accepted": self.counters.chunks_accepted, "rejected": self.counters.chunks_rejected,
                       "requests": self.counters.requests, "server_errors": self.counters.server_errors,
                       "camera_faults": self.counters.camera_faults},  # fmt: skip
            "loop": {"ticks": self.loop.ticks, "missed_deadlines": self.loop.missed_deadlines,
                     "max_late_ms": round(self.loop.max_late_s * 1e3, 2), "hz": self.cfg.rates.controller_hz},
            "realtime": realtime,
            "recorded_episodes": list(self.recorder.saved) if self.recorder is not None else [],
        }


# ---------------------------------------------------------------------------------------- assembly
def build_controller(cfg: DeployConfig, record_timing: bool = False, rt_trace: str | None = None) -> Controller:
    """The real components from deploy.yaml: the real-time process over DDS, PolicyClient, cameras, operator."""
    from dit4dit.drivers.cameras import camera_config, make_camera
    from dit4dit.runtime.client import PolicyClient
    from dit4dit.runtime.realtime.client import RealtimeRobot

    if cfg.calibration is not None:
        _check_calibration(cfg)
    robot = RealtimeRobot(cfg, trace=rt_trace)
    cameras = {}
    for name, c in cfg.cameras.items():
        fields: dict[str, Any] = dict(name=name, width=c.width, height=c.height, fps=c.fps, max_age_s=c.max_age_s)
        if c.kind in ("zmq", "sim"):
            fields["endpoint"] = c.endpoint
        elif c.kind == "opencv":
            fields["device"] = c.device
        elif c.kind == "realsense":
            fields["serial_number_or_name"] = c.serial
        try:
            cameras[name] = make_camera(camera_config(c.kind, **fields))
        except ValueError as e:
            raise StartupError(f"cameras.{name}: {e}") from None
    client = PolicyClient(cfg.server.address, timeout_s=cfg.server.timeout_s, token=cfg.server.token)
    operator = OperatorInputs.from_config(cfg, remote_source=lambda: robot.state().remote,
                                          measured_source=lambda: robot.state().q)
    return Controller(cfg, robot, client, cameras, operator, record_timing=record_timing)


def _check_calibration(cfg: DeployConfig) -> None:
    """Refuse to start on a calibration file made for another robot or camera."""
    from dit4dit.calibration import CalibrationFileError, load_calibration, read_calibration

    try:
        calib = read_calibration(cfg.calibration)
        cam = cfg.cameras.get(calib.camera.name)
        if cam is None:
            raise CalibrationFileError(
                f"{cfg.calibration} calibrates camera {calib.camera.name!r}, which deploy.yaml's cameras do not name "
                f"(cameras: {', '.join(cfg.cameras) or 'none'})"
            )
        serial = cam.serial if cam.kind == "realsense" else None
        calib = load_calibration(cfg.calibration, cfg.robot.name, serial, require=("intrinsics", "extrinsics"))
    except CalibrationFileError as e:
        raise StartupError(f"calibration: {e}") from None
    log.info("calibration %s: robot %s, camera %s, made %s", cfg.calibration, calib.robot.name, calib.camera.name,
             calib.date.isoformat())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dit4dit-robot", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="deploy.yaml (see the commented one at the repo root)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--summary", help="write a JSON summary (states, safety counters, loop timing) here at exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"dit4dit-robot: {e}", file=sys.stderr)
        return int(ExitCode.STARTUP)
    try:
        ctl = build_controller(cfg)
    except StartupError as e:
        print(f"dit4dit-robot: cannot start: {e}", file=sys.stderr)
        return int(ExitCode.STARTUP)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: ctl.request_stop(signum))
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: every thread's stack to stderr
    code = ctl.run()
    summary = ctl.summary()
    log.info("summary %s", json.dumps(summary))
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=1)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
