"""`dit4dit-robot --config deploy.yaml`: the real-time controller.

States (every transition is logged with its reason)::

    CONNECTING -> RAMP_IN -> READY -> RUNNING <-> TELEOP
                                        |  ^
                                        v  |
                                        HOLD            (server silent / camera fault: hold the last safe target)
    any of them -> STOPPING -> DAMPED -> exit

One loop at ``rates.control_hz`` (500 Hz) owns the state machine and is the only caller of the
safety layer (runtime/safety.py), which is the only caller of ``robot.command``. Inference runs in
its own thread (runtime/inference.py); cameras have their own reader threads (drivers/cameras);
recording has a writer thread (runtime/recorder.py). The loop never waits on any of them.

Stops: an e-stop (remote combination, keyboard, SIGINT/SIGTERM) or a watchdog (state too old,
tilt, joint speed, temperature, motor fault, server or camera silent past the hold) damps on the
next tick: kp = 0, kd = damping kd (arm_sdk: the driver ramps the weight to 0). The end of the
configured run slides back to the start pose first, then damps.

Exit codes: 0 run finished or stopped by SIGINT/SIGTERM; 1 could not start (config, robot, server,
camera); 3 operator e-stop; 4 a watchdog damped the robot.
"""

from __future__ import annotations

import argparse
import enum
import faulthandler
import json
import os
import logging
import signal
import sys
import threading
import time
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
from dit4dit.runtime.recorder import RecordedFrame, TrialRecorder
from dit4dit.runtime.safety import SafeRobot, SafetyLimits
from dit4dit.runtime.watchdogs import RobotWatchdog

log = logging.getLogger("dit4dit.robot")

N = g1_spec.NUM_JOINTS


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
    tick_starts: list[float] | None = None  # filled when recording timing (bench)
    tick_work_s: list[float] | None = None


@dataclass
class Counters:
    # Largest speed of the requested target (before the safety layer) over the ticks in RUNNING/HOLD/TELEOP,
    # per elapsed time: a seam or handover that jumps shows up here even when the safety layer hides it.
    max_target_speed: float = 0.0
    max_target_speed_state: str = ""
    chunks_accepted: int = 0
    chunks_rejected: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0
    camera_faults: int = 0
    requests: int = 0


DISCONNECT_TIMEOUT_S = 5.0


def _call_with_timeout(fn: Any, timeout_s: float) -> bool:
    """Run fn in a daemon thread; False if it did not finish in time (its exceptions are logged)."""

    def run() -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log.error("%s: %s", getattr(fn, "__qualname__", fn), e)

    t = threading.Thread(target=run, name="shutdown", daemon=True)
    t.start()
    t.join(timeout_s)
    return not t.is_alive()


def smoothstep(u: float) -> float:
    u = min(1.0, max(0.0, u))
    return u * u * (3.0 - 2.0 * u)


class Controller:
    """The state machine and the 500 Hz loop. Components are passed in connected-or-not; ``run`` owns them."""

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
        self.safe = SafeRobot(robot, SafetyLimits.from_config(cfg.safety, 1.0 / cfg.rates.control_hz))
        self.kp, self.kd = cfg.robot.gains_arrays()
        self.watchdog = RobotWatchdog(cfg.safety)
        self.start_pose = cfg.robot.start_pose_array()
        self.dt = 1.0 / cfg.rates.control_hz
        self.state = State.CONNECTING
        self.transitions: list[Transition] = []
        self.exit_code = ExitCode.OK
        self.counters = Counters()
        self.loop = LoopStats(tick_starts=[] if record_timing else None, tick_work_s=[] if record_timing else None)
        # with record_timing (bench/bench_control_loop.py): (tick time, requested target) and accepted chunks
        # (tick time it took effect, observation time, blend mode)
        self.trace_targets: list[tuple[float, np.ndarray]] | None = [] if record_timing else None
        self.trace_chunks: list[tuple[float, float, str]] | None = [] if record_timing else None
        self._t0 = time.monotonic()
        self._signal: int | None = None
        self._stop_loop = threading.Event()
        self.hung_shutdown = False
        # filled in connect()
        self.metadata: dict[str, Any] = {}
        self.action_idx = np.zeros(0, dtype=np.int64)
        self.state_idx = np.zeros(0, dtype=np.int64)
        self.scheduler: ChunkScheduler | None = None
        self.worker: InferenceWorker | None = None
        self.builder: ObservationBuilder | None = None
        self.recorder: TrialRecorder | None = None
        self.horizon = 0
        # per-state bookkeeping
        self._state_since = 0.0
        self._ramp_from = self.start_pose.copy()
        self._hold_q = self.start_pose.copy()
        self._hold_reason = ""
        self._last_good = 0.0
        self._base = self.start_pose.copy()  # targets for the joints the policy does not drive
        self._commanded = self.start_pose.copy()  # what was asked of the safety layer this tick
        self._teleop_target: np.ndarray | None = None
        self._teleop_t = 0.0
        self._next_record = 0.0
        self._run_start = 0.0
        self._episode_start = 0.0
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
        rate = float(md.get("control_rate_hz", cfg.rates.policy_hz))
        if abs(rate - cfg.rates.policy_hz) > 1e-6:
            raise StartupError(
                f"rates.policy_hz is {cfg.rates.policy_hz} but the policy was trained at {rate} Hz "
                "(metadata control_rate_hz); set rates.policy_hz to it"
            )
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
            len(self.action_idx), 1.0 / cfg.rates.policy_hz, cfg.rates.execution_horizon,
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
        self.builder = ObservationBuilder(policy_cams, max_age, self.state_idx, cfg.run.instruction)
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
            fps=rc.fps or self.cfg.rates.policy_hz,
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
            self._shutdown()
            return ExitCode.STARTUP
        st = self.robot.state()
        now = time.monotonic()
        self.safe.reset(st.q, self.kp, self.kd, now)
        self._ramp_from = np.array(st.q, dtype=np.float64)
        self._base = self.start_pose.copy()
        self._transition(State.RAMP_IN, f"robot connected (mode_machine {getattr(self.robot, 'mode_machine', '?')}), "
                         f"blending from the measured pose to the start pose over {self.cfg.safety.ramp_in_s:.1f} s", now)
        try:
            self._loop()
        except Exception:  # a bug must still leave the robot damped, and say so
            log.exception("controller loop failed; damping")
            if not self.safe.damped:
                self.safe.damp()
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
            if loop.tick_starts is not None:
                loop.tick_starts.append(start)
            self._tick(start)
            loop.ticks += 1
            if loop.tick_work_s is not None:
                loop.tick_work_s.append(time.monotonic() - start)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif -delay > 5 * period:  # far behind (GC, swap): resynchronise instead of bursting
                next_t = time.monotonic()

    def _tick(self, now: float) -> None:
        st = self.robot.state()
        ops = self.operator.poll(st, now)
        if self.state not in (State.STOPPING, State.DAMPED):
            if self._signal is not None:
                name = signal.Signals(self._signal).name
                self._emergency(f"{name} received", ExitCode.OK, now)
            elif ops.estop:
                self._emergency(f"operator e-stop ({ops.estop})", ExitCode.ESTOP, now)
            else:
                fault = self.watchdog.check(st, now)
                if fault is not None:
                    self._emergency(f"watchdog: {fault}", ExitCode.FAULT, now)
        if ops.success is not None and self.recorder is not None:
            self.recorder.mark(ops.success)
        if getattr(st, "remote_lost", False):
            self._warn_once("remote-lost", "wireless remote silent (all-zero bytes for %.0f s): its e-stop is "
                            "unavailable; the keyboard (e / space) and Ctrl-C still stop the robot", 3.0)  # fmt: skip
        handler = {
            State.RAMP_IN: self._ramp_in,
            State.READY: self._ready,
            State.RUNNING: self._running,
            State.HOLD: self._hold,
            State.TELEOP: self._teleop,
            State.STOPPING: self._stopping,
            State.DAMPED: self._damped,
        }[self.state]
        target = handler(now, st, ops)
        if target is not None and not self.safe.damped:
            self._track_speed(target, now)
            if self.trace_targets is not None:
                self.trace_targets.append((now, target[self.action_idx].copy()))
            self._commanded = target
            # the write time, not the tick's start: the step allowed is scaled by the time since the last write
            self.safe.command(target, self.kp, self.kd, now=time.monotonic())
        self._record(now, st)
        self._check_run_end(now)

    # ------------------------------------------------------------------------------------ states
    def _ramp_in(self, now: float, st: Any, ops: Any) -> np.ndarray:
        u = smoothstep((now - self._state_since) / self.cfg.safety.ramp_in_s)
        target = self._ramp_from + u * (self.start_pose - self._ramp_from)
        last = self.safe.last
        # arm_sdk: the driver ramps the blend weight up meanwhile; READY only once our command fully counts
        weight_ok = self.cfg.robot.mode != "arm_sdk" or getattr(self.robot, "arm_sdk_weight", 1.0) >= 1.0
        if u >= 1.0 and weight_ok and last is not None and np.max(np.abs(last.q - self.start_pose)) < 1e-4:
            self._transition(State.READY, "start pose reached", now)
        return target

    def _ready(self, now: float, st: Any, ops: Any) -> np.ndarray:
        if self.cfg.run.autostart or ops.start:
            self._start_policy(now, "autostart" if self.cfg.run.autostart else "operator start")
        return self.start_pose

    def _start_policy(self, now: float, reason: str) -> None:
        assert self.scheduler is not None
        q = self.safe.last.q if self.safe.last is not None else self.start_pose
        self.scheduler.reset(q[self.action_idx])
        self._base = q.copy()
        self._last_good = now
        if self.state == State.READY:
            self._run_start = self._episode_start = now
            self._next_record = now
        self._transition(State.RUNNING, reason, now)

    def _running(self, now: float, st: Any, ops: Any) -> np.ndarray:
        assert self.scheduler is not None
        if ops.takeover:
            return self._enter_teleop(now, ops)
        self._service_inference(now, st, ask=True)
        if self.state != State.RUNNING:  # camera fault inside
            return self._hold_q
        silent = now - self._last_good
        if silent > self.cfg.safety.server_hold_s:
            self._enter_hold(now, f"server silent: no good chunk for {silent:.2f} s", "server")
            return self._hold_q
        return self._full(self.scheduler.sample(now))

    def _enter_hold(self, now: float, reason: str, kind: str) -> None:
        assert self.scheduler is not None
        self._hold_q = (self.safe.last.q if self.safe.last is not None else self._commanded).copy()
        self._hold_reason = kind
        self.scheduler.reset(self._hold_q[self.action_idx])
        self._transition(State.HOLD, reason, now)

    def _hold(self, now: float, st: Any, ops: Any) -> np.ndarray:
        assert self.scheduler is not None
        held = now - self._state_since
        if ops.takeover:
            return self._enter_teleop(now, ops)
        if self._hold_reason == "camera":
            if held > self.cfg.safety.camera_damp_s:
                self._emergency(f"camera fault for {held:.2f} s", ExitCode.FAULT, now)
                return self._hold_q
            try:
                assert self.builder is not None
                self.builder.read_images()
            except CameraFault:
                return self._hold_q
            self._last_good = now
            self._start_policy(now, "cameras fresh again")
            return self._hold_q
        # server hold: keep asking; the first good chunk resumes from the held pose (blended, no jump)
        if held > self.cfg.safety.server_damp_s:
            self._emergency(f"server silent for {now - self._last_good:.2f} s (held {held:.2f} s)", ExitCode.FAULT, now)
            return self._hold_q
        if self._service_inference(now, st, ask=True):
            self._transition(State.RUNNING, "server answered again; resuming from the held pose", now)
            return self._full(self.scheduler.sample(now))
        return self._hold_q

    def _enter_teleop(self, now: float, ops: Any) -> np.ndarray:
        self._teleop_target = (self.safe.last.q if self.safe.last is not None else self._commanded).copy()
        self._teleop_t = now
        self.operator.begin_teleop(self._teleop_target)
        self._transition(State.TELEOP, f"operator takeover ({ops.takeover})", now)
        return self._teleop_target

    def _teleop(self, now: float, st: Any, ops: Any) -> np.ndarray:
        assert self._teleop_target is not None
        self._service_inference(now, st, ask=False)  # drain a reply still in flight
        if ops.release:
            self.operator.end_teleop()
            self._start_policy(now, f"operator hands back ({ops.release}); policy resumes from the current pose")
            return self._teleop_target
        goal = ops.teleop_target
        if goal is None:
            return self._teleop_target
        goal = np.asarray(goal, dtype=np.float64)
        if goal.shape != (N,) or not np.all(np.isfinite(goal)):
            self._warn_once("teleop-bad", "teleop target rejected: need 29 finite joint positions, got %s", goal.shape)
            return self._teleop_target
        # Slide toward the person's target at the handover speed (direction kept); the safety layer caps again.
        delta = goal - self._teleop_target
        # by elapsed time (a late tick catches up a little, at most 5 ticks' worth; the safety layer caps again)
        elapsed = min(max(now - self._teleop_t, 0.0), 5 * self.dt)
        self._teleop_t = now
        max_step = self.cfg.safety.handover_velocity * elapsed
        biggest = float(np.max(np.abs(delta)))
        if biggest > max_step:
            delta *= max_step / biggest
        self._teleop_target = self._teleop_target + delta
        return self._teleop_target

    def _stopping(self, now: float, st: Any, ops: Any) -> np.ndarray | None:
        if not self.safe.damped:
            # planned end: slide back to the start pose, then damp
            u = smoothstep((now - self._state_since) / self.cfg.safety.ramp_out_s)
            target = self._ramp_from + u * (self.start_pose - self._ramp_from)
            last = self.safe.last
            if u >= 1.0 and last is not None and np.max(np.abs(last.q - self.start_pose)) < 1e-3:
                self.safe.damp()
            return target
        if self.cfg.robot.mode == "arm_sdk" and getattr(self.robot, "arm_sdk_weight", 0.0) > 0.0:
            return None  # the driver is still ramping the weight down
        self._transition(State.DAMPED, "damping in force", now)
        return None

    def _damped(self, now: float, st: Any, ops: Any) -> None:
        if now - self._state_since >= self.cfg.safety.damp_hold_s:
            self._stop_loop.set()
        return None

    def _emergency(self, reason: str, code: ExitCode, now: float) -> None:
        """Damp on this tick and go to STOPPING."""
        self.safe.damp()
        if self.exit_code == ExitCode.OK:
            self.exit_code = code
        self._transition(State.STOPPING, reason, now)

    def _check_run_end(self, now: float) -> None:
        d = self.cfg.run.duration_s
        if d is None or self.state in (State.STOPPING, State.DAMPED, State.RAMP_IN, State.READY):
            return
        if now - self._run_start >= d:
            self._ramp_from = (self.safe.last.q if self.safe.last is not None else self._commanded).copy()
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
        prev, t_prev = getattr(self, "_speed_ref", (None, 0.0))
        if prev is not None and self.state in (State.RUNNING, State.HOLD, State.TELEOP) and now > t_prev:
            v = float(np.max(np.abs(target - prev))) / max(now - t_prev, self.dt)
            if v > self.counters.max_target_speed:
                self.counters.max_target_speed = v
                self.counters.max_target_speed_state = self.state.value
        self._speed_ref = (target, now)

    def _full(self, q_ctrl: np.ndarray) -> np.ndarray:
        q = self._base.copy()
        q[self.action_idx] = q_ctrl
        return q

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
        try:
            images = {n: c.read_latest(self.cfg.cameras[n].max_age_s).image for n, c in self.cameras.items()}
        except CameraFault:
            return  # no frame without fresh images; the camera watchdog handles the fault
        last = self.safe.last
        assert last is not None
        rec.add(
            RecordedFrame(
                state=np.asarray(st.q, dtype=np.float32)[self.state_idx],
                action=self._commanded[self.action_idx].astype(np.float32),
                executed=last.q[self.action_idx].astype(np.float32),
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
        # The robot is already damped here. G1Robot.disconnect closes its DDS channels, and CycloneDDS can
        # deadlock when a reader is deleted while its listener thread runs (seen under load): never hang on it.
        if not _call_with_timeout(self.robot.disconnect, DISCONNECT_TIMEOUT_S):
            self.hung_shutdown = True
            log.error("robot disconnect did not return within %.0f s (DDS channel close); exiting anyway, "
                      "the robot was left damped", DISCONNECT_TIMEOUT_S)  # fmt: skip
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
        s = self.safe.stats
        return {
            "exit_code": int(self.exit_code),
            "states": [[round(t.t, 3), t.src.value, t.dst.value, t.reason] for t in self.transitions],
            "safety": {"commands": s.commands, "rejected": dict(s.rejected), "step_limited": s.step_limited,
                       "position_clamped": s.position_clamped},  # fmt: skip
            "max_target_speed": round(self.counters.max_target_speed, 4),
            "max_target_speed_state": self.counters.max_target_speed_state,
            "chunks": {"accepted": self.counters.chunks_accepted, "rejected": self.counters.chunks_rejected,
                       "requests": self.counters.requests, "server_errors": self.counters.server_errors,
                       "camera_faults": self.counters.camera_faults},  # fmt: skip
            "loop": {"ticks": self.loop.ticks, "missed_deadlines": self.loop.missed_deadlines,
                     "max_late_ms": round(self.loop.max_late_s * 1e3, 2)},  # fmt: skip
            "recorded_episodes": list(self.recorder.saved) if self.recorder is not None else [],
        }


# ---------------------------------------------------------------------------------------- assembly
def build_controller(cfg: DeployConfig, record_timing: bool = False) -> Controller:
    """The real components from deploy.yaml: G1Robot over DDS, PolicyClient, cameras, operator inputs."""
    from dit4dit.drivers.cameras import camera_config, make_camera
    from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig
    from dit4dit.runtime.client import PolicyClient

    if cfg.calibration is not None:
        _check_calibration(cfg)
    rc = cfg.robot
    robot = G1Robot(
        G1RobotConfig(
            interface=rc.interface, domain=rc.domain, mode=rc.mode, hands=rc.hands,
            rate_hz=cfg.rates.control_hz, arm_sdk_weight_rate=cfg.safety.arm_sdk_weight_rate,
            damping_kd=cfg.safety.damping_kd, stale_after_s=cfg.safety.state_timeout_s,
            accept_zero_crc=False, rt_priority=rc.rt_priority,
        )
    )  # fmt: skip
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
    operator = OperatorInputs.from_config(cfg, remote_source=lambda: robot.state().remote)
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
    if ctl.hung_shutdown:  # a DDS thread is stuck: interpreter teardown would hang on it too
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
