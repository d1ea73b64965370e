"""The safety layer: the only path from the controller to the robot driver.

Whatever asks for a command (policy chunks, teleop, ramps), what reaches ``robot.command`` is:

* a finite (29,) target, else the request is rejected, counted, and the last safe target is held;
* clamped to the soft joint limits. A joint that starts outside them (a robot switched on in an odd
  pose) may hold or move inwards, never further out;
* at most ``max_delta[j]`` from the previous command on every joint, where ``max_delta`` is the
  tighter of the per-tick step limit and the velocity limit times the tick. The whole delta vector is
  scaled by one factor, so the direction of motion is kept (xr_teleoperate's arm clipper does the same).
  Given the command's time, a tick that comes sooner than one period after the previous one may only
  move that fraction of the step, so a control loop that catches up after a stall (several ticks in a
  burst) cannot make the driver's 500 Hz publisher send a bigger step than time allows;
* gains clamped to [0, max_kp] / [0, max_kd], feed-forward velocity to +-max_velocity, torque to a
  fraction of each joint's effort; non-finite or wrong-shaped gains fall back to the last safe ones;
* a float32 value, as the robot receives it (LowCmd carries float32): every limit above holds for the
  rounded value itself, so a recorder of the wire finds no step, however small, beyond the limit. The
  step allowed is also shaved by ``STEP_MARGIN`` (1 ppm) so that float rounding in the time arithmetic
  of whoever checks it never reads the limit as exceeded.

``damp()`` latches: from then on only the damping command (kp = 0, kd > 0) goes out.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dit4dit.drivers import g1_spec

log = logging.getLogger(__name__)

N = g1_spec.NUM_JOINTS
STEP_MARGIN = 1e-6  # relative: the step allowed is max_delta * (1 - STEP_MARGIN)


class SafetyError(RuntimeError):
    """The layer was used wrongly (commanded after damping, or before a reference pose exists)."""


@dataclass(frozen=True)
class SafetyLimits:
    lower: np.ndarray  # (29,) soft lower limit, rad
    upper: np.ndarray  # (29,) soft upper limit, rad
    max_delta: np.ndarray  # (29,) largest target change per tick, rad
    max_velocity: float  # feed-forward dq bound, rad/s
    max_kp: float
    max_kd: float
    max_tau: np.ndarray  # (29,) feed-forward torque bound, N*m
    damping_kd: float
    dt: float = g1_spec.CONTROL_DT  # the control tick the step limits are per

    def __post_init__(self) -> None:
        for name in ("lower", "upper", "max_delta", "max_tau"):
            a = getattr(self, name)
            if a.shape != (N,) or not np.all(np.isfinite(a)):
                raise ValueError(f"SafetyLimits.{name} must be a finite ({N},) array, got {a.shape}")
        if np.any(self.lower < g1_spec.LOWER) or np.any(self.upper > g1_spec.UPPER) or np.any(self.lower >= self.upper):
            raise ValueError("SafetyLimits: soft limits must lie inside the G1's hard range with lower < upper")
        if np.any(self.max_delta <= 0) or self.damping_kd <= 0:
            raise ValueError("SafetyLimits: max_delta and damping_kd must be > 0")

    @classmethod
    def from_config(cls, safety: Any, dt: float = g1_spec.CONTROL_DT) -> SafetyLimits:
        """From a ``config.SafetySection``."""
        lo, hi = safety.soft_limits()
        per_joint_vel = np.minimum(safety.max_joint_velocity, g1_spec.VELOCITY)
        max_delta = np.minimum(safety.max_step, per_joint_vel * dt)
        return cls(
            lower=lo,
            upper=hi,
            max_delta=max_delta,
            max_velocity=float(safety.max_joint_velocity),
            max_kp=float(safety.max_kp),
            max_kd=float(safety.max_kd),
            max_tau=g1_spec.EFFORT * float(safety.max_torque_fraction),
            damping_kd=float(safety.damping_kd),
            dt=dt,
        )


@dataclass(frozen=True)
class JointCommand:
    """One safe command for all 29 joints, as it goes to ``robot.command``."""

    q: np.ndarray
    kp: np.ndarray
    kd: np.ndarray
    dq: np.ndarray
    tau: np.ndarray


@dataclass
class SafetyStats:
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    step_limited: int = 0  # ticks where the step limit scaled the delta
    position_clamped: int = 0  # ticks where a target was clamped to the soft limits
    commands: int = 0


def _as_vector(x: Any) -> np.ndarray | None:
    """A finite float64 (29,) copy of x, or None."""
    try:
        a = np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if a.shape != (N,) or not np.all(np.isfinite(a)):
        return None
    return a


def _reason(x: Any) -> str:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return "not numeric"
    if a.shape != (N,):
        return f"shape {a.shape} != ({N},)"
    return "non-finite"


class SafetyFilter:
    """Pure filter: turns any request into a command that satisfies the limits, given the previous one."""

    def __init__(self, limits: SafetyLimits) -> None:
        self.limits = limits
        self.stats = SafetyStats()
        self.last: JointCommand | None = None
        self._t_last: float | None = None

    def reset(self, q_measured: Any, kp: Any, kd: Any, now: float | None = None) -> JointCommand:
        """Start from the measured pose (clipped into the hard range), so the first command is no jump."""
        q = _as_vector(q_measured)
        if q is None:
            raise SafetyError(f"reset: measured pose is not a finite ({N},) vector: {_reason(q_measured)}")
        q = _float32_inside(np.clip(q, g1_spec.LOWER, g1_spec.UPPER))
        kp_v = _as_vector(kp)
        kd_v = _as_vector(kd)
        if kp_v is None or kd_v is None:
            raise SafetyError("reset: kp and kd must be finite (29,) vectors")
        self.last = JointCommand(
            q=q,
            kp=np.clip(kp_v, 0.0, self.limits.max_kp),
            kd=np.clip(kd_v, 0.0, self.limits.max_kd),
            dq=np.zeros(N),
            tau=np.zeros(N),
        )
        self._t_last = now
        return self.last

    def box(self, prev_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position bounds for the next command: the soft box, widened only to where prev_q already is."""
        return np.minimum(self.limits.lower, prev_q), np.maximum(self.limits.upper, prev_q)

    def __call__(
        self, q: Any, kp: Any = None, kd: Any = None, dq: Any = None, tau: Any = None, now: float | None = None
    ) -> JointCommand:
        """The safe command for this request. ``now`` (monotonic s): scale the step by the time since the last."""
        prev = self.last
        if prev is None:
            raise SafetyError("no reference pose: call reset(measured q) before the first command")
        lim = self.limits
        self.stats.commands += 1

        target = _as_vector(q)
        if target is None:
            self.stats.rejected[f"q {_reason(q)}"] += 1
            target = prev.q
        lo, hi = self.box(prev.q)
        clamped = np.clip(target, lo, hi)
        if np.any(clamped != target):
            self.stats.position_clamped += 1
        max_delta = lim.max_delta * (1.0 - STEP_MARGIN)
        if now is not None:
            if self._t_last is not None:
                frac = min(1.0, max(0.0, (now - self._t_last) / lim.dt))
                max_delta = max_delta * frac
            self._t_last = now
        delta = clamped - prev.q
        if np.any(max_delta <= 0):  # two commands at the same instant: no motion allowed
            ratio = np.inf if np.any(delta != 0) else 0.0
        else:
            ratio = float(np.max(np.abs(delta) / max_delta))
        if ratio > 1.0:
            self.stats.step_limited += 1
            delta = delta / ratio if np.isfinite(ratio) else np.zeros(N)
        new_q = np.clip(prev.q + delta, lo, hi)
        # Rounding in prev + delta/ratio may overshoot the step by an ulp; pull it back.
        new_q = np.clip(new_q, prev.q - max_delta, prev.q + max_delta)
        new_q = _float32_toward(new_q, prev.q, max_delta, lo, hi)

        new_kp = self._bounded("kp", kp, prev.kp, 0.0, lim.max_kp)
        new_kd = self._bounded("kd", kd, prev.kd, 0.0, lim.max_kd)
        new_dq = self._bounded("dq", dq, None, -lim.max_velocity, lim.max_velocity)
        new_tau = self._bounded("tau", tau, None, -lim.max_tau, lim.max_tau)
        self.last = JointCommand(q=new_q, kp=new_kp, kd=new_kd, dq=new_dq, tau=new_tau)
        return self.last

    def _bounded(self, name: str, x: Any, fallback: np.ndarray | None, lo: Any, hi: Any) -> np.ndarray:
        if x is None:
            return fallback.copy() if fallback is not None else np.zeros(N)
        v = _as_vector(x)
        if v is None:
            self.stats.rejected[f"{name} {_reason(x)}"] += 1
            return fallback.copy() if fallback is not None else np.zeros(N)
        return np.clip(v, lo, hi)


def _float32_inside(q: np.ndarray) -> np.ndarray:
    """q rounded to float32, a rounding that would leave the hard range moved back inside by one ulp."""
    w = q.astype(np.float32)
    w = np.where(w.astype(np.float64) > g1_spec.UPPER, np.nextafter(w, np.float32(-np.inf)), w)
    w = np.where(w.astype(np.float64) < g1_spec.LOWER, np.nextafter(w, np.float32(np.inf)), w)
    return w.astype(np.float64)


def _float32_toward(q: np.ndarray, prev: np.ndarray, max_delta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """q rounded to float32; where rounding broke the step or the box, one ulp back toward prev (a float32
    value that satisfies both, so a half-ulp overshoot is always undone)."""
    w = q.astype(np.float32)
    wd = w.astype(np.float64)
    bad = (np.abs(wd - prev) > max_delta) | (wd < lo) | (wd > hi)
    if np.any(bad):
        w[bad] = np.nextafter(w[bad], prev[bad].astype(np.float32))
        wd = w.astype(np.float64)
    return wd


class RobotLike(Protocol):
    def command(self, q: np.ndarray, kp: np.ndarray, kd: np.ndarray, dq: np.ndarray | None = None,
                tau: np.ndarray | None = None) -> None: ...  # fmt: skip

    def damp(self, kd: float | np.ndarray) -> None: ...


class SafeRobot:
    """The robot as the controller sees it: every command passes the SafetyFilter; damping latches."""

    def __init__(self, robot: RobotLike, limits: SafetyLimits) -> None:
        self.robot = robot
        self.filter = SafetyFilter(limits)
        self.damped = False
        self._lock = threading.Lock()

    @property
    def limits(self) -> SafetyLimits:
        return self.filter.limits

    @property
    def stats(self) -> SafetyStats:
        return self.filter.stats

    @property
    def last(self) -> JointCommand | None:
        return self.filter.last

    def reset(self, q_measured: Any, kp: Any, kd: Any, now: float | None = None) -> JointCommand:
        with self._lock:
            if self.damped:
                raise SafetyError("reset after damping: restart dit4dit-robot to re-arm")
            return self.filter.reset(q_measured, kp, kd, now)

    def command(
        self, q: Any, kp: Any = None, kd: Any = None, dq: Any = None, tau: Any = None, now: float | None = None
    ) -> JointCommand:
        with self._lock:
            if self.damped:
                raise SafetyError("command after damping: the robot stays damped until restart")
            cmd = self.filter(q, kp, kd, dq, tau, now)
            self.robot.command(cmd.q, cmd.kp, cmd.kd, dq=cmd.dq, tau=cmd.tau)
            return cmd

    def damp(self) -> None:
        """kp = 0, kd = damping_kd on every joint (arm_sdk: the driver ramps the weight to 0). Latches."""
        with self._lock:
            if not self.damped:
                log.warning("safety: damping (kp=0, kd=%.1f)", self.limits.damping_kd)
            self.damped = True
            self.robot.damp(self.limits.damping_kd)


class HandLimiter:
    """The safety layer of one Dex3-1 hand: every target inside the hand's joint limits (g1_spec.HAND_JOINTS),
    at most ``max_velocity * dt`` from the previous target per joint (the delta vector scaled as one, as the
    arm's), gains clamped to [0, max_kp] / [0, max_kd]; non-finite or wrong-shaped targets hold the last one."""

    def __init__(self, side: str, max_velocity: float = 6.0, max_kp: float = 3.0, max_kd: float = 0.5,
                 dt: float = g1_spec.CONTROL_DT) -> None:
        if side not in g1_spec.HAND_SIDES:
            raise ValueError(f"hand side must be one of {g1_spec.HAND_SIDES}, got {side!r}")
        self.side = side
        self.lower, self.upper = g1_spec.DEX3_LOWER[side], g1_spec.DEX3_UPPER[side]
        self.max_delta = float(max_velocity) * float(dt)
        self.max_kp, self.max_kd = float(max_kp), float(max_kd)
        self._last: np.ndarray | None = None
        self.rejected = 0

    def reset(self, q_measured: Any) -> None:
        self._last = np.clip(np.asarray(q_measured, dtype=np.float64), self.lower, self.upper)

    def __call__(self, q: Any, kp: Any, kd: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q, kp, kd) safe to send; reset() first."""
        if self._last is None:
            raise SafetyError(f"{self.side} hand limiter used before reset(q_measured)")
        n = len(g1_spec.DEX3_JOINTS)
        target = np.asarray(q, dtype=np.float64)
        if target.shape != (n,) or not np.all(np.isfinite(target)):
            self.rejected += 1
            target = self._last
        target = np.clip(target, self.lower, self.upper)
        delta = target - self._last
        biggest = float(np.max(np.abs(delta)))
        if biggest > self.max_delta:
            delta *= self.max_delta / biggest
        self._last = np.clip(self._last + delta, self.lower, self.upper)

        def gain(x: Any, hi: float) -> np.ndarray:
            a = np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))
            return np.clip(np.where(np.isfinite(a), a, 0.0), 0.0, hi)

        return self._last.copy(), gain(kp, self.max_kp), gain(kd, self.max_kd)
