"""What calibration procedures need from a robot: joint state, images, and slow safe moves.

Every command goes through ``runtime.realtime.safety.SafeRobot`` (soft limits, per-tick step limit, gain bounds,
latching damping), exactly as the controller's commands do. Two implementations:

* :class:`SimSession`: the in-process ``G1Sim`` (fast, deterministic; tests).
* :class:`RobotSession`: a ``G1Robot`` over DDS (the real G1 or ``dit4dit-sim``) and a camera from
  ``drivers.cameras``, paced in real time.

Moves are joint-space straight lines at a bounded joint speed, then a hold until the arm has settled.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dit4dit.drivers import g1_spec
from dit4dit.runtime.realtime.safety import SafeRobot, SafetyLimits

log = logging.getLogger(__name__)


class SessionError(RuntimeError):
    """A calibration motion could not be carried out (did not settle, robot/camera fault)."""


@dataclass
class MoveSettings:
    max_speed: float = 0.6  # rad/s, largest joint of the move
    settle_speed: float = 0.01  # rad/s: the arm counts as still below this on every moved joint
    settle_timeout_s: float = 3.0
    settle_hold_s: float = 0.3  # stillness must last this long before images are taken


class Session(abc.ABC):
    """Joint state, images and safe commands for calibration procedures."""

    control_dt: float
    safe: SafeRobot

    def __init__(self, kp: np.ndarray, kd: np.ndarray, move: MoveSettings | None = None) -> None:
        self.kp = np.asarray(kp, dtype=np.float64)
        self.kd = np.asarray(kd, dtype=np.float64)
        self.move_settings = move or MoveSettings()
        self.target: np.ndarray | None = None

    # -- provided by implementations -----------------------------------------------------------
    @abc.abstractmethod
    def q(self) -> np.ndarray: ...

    @abc.abstractmethod
    def dq(self) -> np.ndarray: ...

    @abc.abstractmethod
    def now(self) -> float:
        """Seconds on the clock states and frames are stamped with."""

    @abc.abstractmethod
    def tick(self) -> None:
        """Let one control period pass (sim: step physics; robot: sleep to the next tick)."""

    @abc.abstractmethod
    def image(self) -> tuple[np.ndarray, float]:
        """A fresh RGB image of the head camera and its capture stamp (on ``now()``'s clock)."""

    # -- shared behaviour ----------------------------------------------------------------------
    def start(self) -> None:
        """Take the measured pose as the reference so the first command does not jump."""
        q = self.q()
        self.safe.reset(q, self.kp, self.kd)
        self.target = self.safe.last.q.copy() if self.safe.last is not None else q

    def command(self, q: np.ndarray) -> np.ndarray:
        """Send a target through the safety layer; returns what was actually commanded."""
        if self.target is None:
            raise SessionError("session not started: call start() first")
        cmd = self.safe.command(q, self.kp, self.kd)
        self.target = cmd.q.copy()
        return cmd.q

    def move_to(self, goal: np.ndarray, joints: Sequence[int] | None = None) -> None:
        """Straight joint-space line from the last target to ``goal`` at ``max_speed``, then settle."""
        if self.target is None:
            raise SessionError("session not started: call start() first")
        goal = np.asarray(goal, dtype=np.float64)
        start = self.target.copy()
        moved = np.arange(g1_spec.NUM_JOINTS) if joints is None else np.asarray(joints)
        span = float(np.max(np.abs(goal - start)[moved])) if moved.size else 0.0
        n = max(1, int(np.ceil(span / (self.move_settings.max_speed * self.control_dt))))
        for k in range(1, n + 1):
            self.command(start + (goal - start) * (k / n))
            self.tick()
        self.settle(moved)

    def hold(self, seconds: float) -> None:
        for _ in range(max(1, round(seconds / self.control_dt))):
            self.command(self.target)
            self.tick()

    def settle(self, joints: Sequence[int] | np.ndarray | None = None) -> None:
        """Hold the target until the given joints are still for ``settle_hold_s``; SessionError on timeout."""
        s = self.move_settings
        idx = np.arange(g1_spec.NUM_JOINTS) if joints is None else np.asarray(joints)
        still_since: float | None = None
        deadline = self.now() + s.settle_timeout_s
        while True:
            self.command(self.target)
            self.tick()
            t = self.now()
            if float(np.max(np.abs(self.dq()[idx]))) < s.settle_speed:
                still_since = t if still_since is None else still_since
                if t - still_since >= s.settle_hold_s:
                    return
            else:
                still_since = None
            if t > deadline:
                raise SessionError(
                    f"arm did not settle within {s.settle_timeout_s} s (joint speed "
                    f"{np.max(np.abs(self.dq()[idx])):.3f} rad/s > {s.settle_speed}); check gains and that nothing "
                    "is pushing the arm"
                )

    def close(self) -> None:
        """Nothing by default; implementations release devices."""


class _SimRobotAdapter:
    """``RobotLike`` over an in-process G1Sim: a command is the sim's lowcmd target."""

    def __init__(self, sim: object) -> None:
        self.sim = sim

    def command(self, q, kp, kd, dq=None, tau=None) -> None:
        self.sim.set_command(q, kp, kd, dq, tau)  # type: ignore[attr-defined]

    def damp(self, kd) -> None:
        q = self.sim.joint_positions()  # type: ignore[attr-defined]
        self.sim.set_command(q, np.zeros(g1_spec.NUM_JOINTS), np.full(g1_spec.NUM_JOINTS, kd))  # type: ignore[attr-defined]


class SimSession(Session):
    """Calibration against the in-process simulator, as fast as it computes."""

    def __init__(
        self,
        sim: object,
        limits: SafetyLimits,
        kp: np.ndarray,
        kd: np.ndarray,
        *,
        camera: str = "head_camera",
        image_size: tuple[int, int] = (480, 640),
        control_dt: float = 0.01,
        move: MoveSettings | None = None,
    ) -> None:
        super().__init__(kp, kd, move)
        self.sim = sim
        self.camera = camera
        self.image_size = image_size
        self.control_dt = control_dt
        self._steps = max(1, round(control_dt / g1_spec.CONTROL_DT))
        self.safe = SafeRobot(_SimRobotAdapter(sim), limits)

    def q(self) -> np.ndarray:
        return self.sim.joint_positions()  # type: ignore[attr-defined]

    def dq(self) -> np.ndarray:
        return self.sim.joint_velocities()  # type: ignore[attr-defined]

    def now(self) -> float:
        return self.sim.time  # type: ignore[attr-defined]

    def tick(self) -> None:
        self.sim.step(self._steps)  # type: ignore[attr-defined]

    def image(self) -> tuple[np.ndarray, float]:
        return self.sim.render(self.camera, self.image_size), self.now()  # type: ignore[attr-defined]


class RobotSession(Session):
    """Calibration against a G1 over DDS (real or dit4dit-sim) and its head camera, in real time."""

    def __init__(
        self,
        robot: object,
        camera: object,
        limits: SafetyLimits,
        kp: np.ndarray,
        kd: np.ndarray,
        *,
        control_dt: float = 0.01,
        move: MoveSettings | None = None,
        state_timeout_s: float = 0.1,
    ) -> None:
        super().__init__(kp, kd, move)
        self.robot = robot
        self.camera = camera
        self.control_dt = control_dt
        self.state_timeout_s = state_timeout_s
        self.safe = SafeRobot(robot, limits)  # type: ignore[arg-type]
        self._next = time.monotonic()

    def _state(self):
        st = self.robot.state()  # type: ignore[attr-defined]
        if st.age_s > self.state_timeout_s:
            self.safe.damp()
            raise SessionError(
                f"robot state is {st.age_s * 1e3:.0f} ms old (> {self.state_timeout_s * 1e3:.0f} ms): "
                "lowstate stopped; damped the robot"
            )
        return st

    def q(self) -> np.ndarray:
        return np.asarray(self._state().q, dtype=np.float64)

    def dq(self) -> np.ndarray:
        return np.asarray(self._state().dq, dtype=np.float64)

    def now(self) -> float:
        return time.monotonic()

    def tick(self) -> None:
        self._next += self.control_dt
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.monotonic()  # fell behind: do not try to catch up with a burst

    def image(self) -> tuple[np.ndarray, float]:
        # A frame captured after the arm settled: wait for one newer than now.
        t0 = time.monotonic()
        while True:
            frame = self.camera.read_new(timeout_s=1.0)  # type: ignore[attr-defined]
            if frame.stamp >= t0:
                return frame.image, frame.stamp
            if time.monotonic() - t0 > 2.0:
                raise SessionError("camera delivered no frame captured after the arm settled within 2 s")
