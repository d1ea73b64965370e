"""Action-chunk scheduling: asynchronous requests, stale-action dropping, seam blending, 500 Hz sampling.

Time is ``time.monotonic()`` seconds, passed in explicitly so the same code runs in tests on a
simulated clock. A chunk from an observation captured at ``t_obs`` holds actions for the times
``t_obs + k * dt`` (k = 0..H-1, dt = 1 / policy rate): row 0 is the action that goes with the
observation, as in the training data.

* Asynchronous: the next chunk is requested once ``execution_horizon`` steps of the current one have
  started, while the rest of it keeps executing (``should_request``).
* Stale actions: when a chunk arrives at ``t_arr``, its rows for times before ``t_arr`` are already
  in the past (by the measured inference delay) and are dropped; execution picks up the chunk at
  ``t_arr``, never at row 0, so the arm does not step back to where it was when the picture was taken.
* Seams: ``blend="rtc"`` sends the server the old chunk's rows for the new chunk's times as a prefix
  with ``n_executing`` = the steps that will execute while it infers (max of recent delays), which the
  server keeps frozen and ramps away from (inpainting-style real-time chunking). On the client, the
  old trajectory cross-fades into the new one over ``blend_s`` with a raised-cosine weight, which
  needs no gradient and keeps position continuous and velocity bounded even when the server's chunk
  disagrees with the old one (``blend="client"`` does only this; ``"none"`` switches at once).
* Between knots, targets are interpolated linearly for the 500 Hz command stream.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

BlendMode = Literal["rtc", "client", "none"]


class ChunkRejected(ValueError):
    """A chunk that must not be executed. ``kind``: shape, non-finite, out-of-range, late or unrequested."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


RANGE_TOL = 1e-5  # rad: float32 on the wire rounds a limit value a few 1e-7 outside the float64 limit


class Trajectory(Protocol):
    end_time: float

    def sample(self, t: float, extrapolate: bool = False) -> np.ndarray: ...

    def sample_many(self, ts: np.ndarray, extrapolate: bool = False) -> np.ndarray: ...


@dataclass(frozen=True)
class HoldTrajectory:
    """Stay at one pose (start of RUNNING, after teleop, after a silent server)."""

    q: np.ndarray
    end_time: float = -math.inf

    def sample(self, t: float, extrapolate: bool = False) -> np.ndarray:
        return self.q

    def sample_many(self, ts: np.ndarray, extrapolate: bool = False) -> np.ndarray:
        return np.broadcast_to(self.q, (len(ts), len(self.q)))


@dataclass(frozen=True)
class ChunkTrajectory:
    """Linear interpolation through ``actions[k]`` at ``t0 + k * dt``; holds the ends outside."""

    actions: np.ndarray  # (H, A)
    t0: float
    dt: float

    @property
    def end_time(self) -> float:
        return self.t0 + (len(self.actions) - 1) * self.dt

    def sample(self, t: float, extrapolate: bool = False) -> np.ndarray:
        """``extrapolate``: past the end, continue the last segment's velocity instead of holding."""
        u = (t - self.t0) / self.dt
        if u <= 0:
            return self.actions[0]
        last = len(self.actions) - 1
        if u >= last:
            if extrapolate and last > 0:
                return self.actions[last] + (u - last) * (self.actions[last] - self.actions[last - 1])
            return self.actions[last]
        k = int(u)
        f = u - k
        return self.actions[k] * (1.0 - f) + self.actions[k + 1] * f

    def sample_many(self, ts: np.ndarray, extrapolate: bool = False) -> np.ndarray:
        """``sample`` at every time of ``ts`` (K,) -> (K, A)."""
        last = len(self.actions) - 1
        u = (np.asarray(ts, dtype=np.float64) - self.t0) / self.dt
        k = np.clip(np.floor(u), 0, max(last - 1, 0)).astype(np.int64)
        if last == 0:
            return np.broadcast_to(self.actions[0], (len(u), self.actions.shape[1])).copy()
        f = np.clip(u - k, 0.0, None if extrapolate else 1.0)
        f = np.where(u <= 0, 0.0, f)[:, None]
        return self.actions[k] * (1.0 - f) + self.actions[k + 1] * f


@dataclass(frozen=True)
class BlendTrajectory:
    """Raised-cosine cross-fade from ``old`` to ``new`` over [t_start, t_start + duration].

    If ``old`` was still moving at ``t_start`` but ends inside the fade, it is continued at its final
    velocity for the rest of the fade (``extrapolate_old``) rather than stopped, so a consistent
    policy keeps its speed across the seam; an old trajectory already holding at ``t_start`` holds.
    """

    old: Trajectory
    new: Trajectory
    t_start: float
    duration: float
    extrapolate_old: bool = False

    @property
    def end_time(self) -> float:
        return self.new.end_time

    def weight_old(self, t: float) -> float:
        u = (t - self.t_start) / self.duration
        if u <= 0:
            return 1.0
        if u >= 1:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * u))

    def sample(self, t: float, extrapolate: bool = False) -> np.ndarray:
        w = self.weight_old(t)
        if w == 0.0:
            return self.new.sample(t, extrapolate)
        return w * self.old.sample(t, self.extrapolate_old) + (1.0 - w) * self.new.sample(t, extrapolate)

    def sample_many(self, ts: np.ndarray, extrapolate: bool = False) -> np.ndarray:
        u = np.clip((np.asarray(ts, dtype=np.float64) - self.t_start) / self.duration, 0.0, 1.0)
        w = (0.5 * (1.0 + np.cos(np.pi * u)))[:, None]
        return w * self.old.sample_many(ts, self.extrapolate_old) + (1.0 - w) * self.new.sample_many(ts, extrapolate)


class LatencyTracker:
    """Inference delays (observation capture -> chunk arrival) over a sliding window."""

    def __init__(self, window: int) -> None:
        self._d: deque[float] = deque(maxlen=window)

    def add(self, delay_s: float) -> None:
        self._d.append(delay_s)

    def max(self) -> float:
        return max(self._d) if self._d else 0.0

    def __len__(self) -> int:
        return len(self._d)


@dataclass(frozen=True)
class ChunkRequest:
    """What to ask the server for an observation captured at ``t_obs``."""

    t_obs: float
    prefix: np.ndarray | None  # (P, A): the current trajectory at t_obs + k*dt (rtc only)
    n_executing: int  # prefix rows the server must keep: they execute while it infers


@dataclass(frozen=True)
class ChunkAccepted:
    dropped: int  # stale rows skipped
    delay_s: float  # t_arr - t_obs


class ChunkScheduler:
    """Turns asynchronously arriving chunks into one smooth target trajectory for the controlled joints."""

    def __init__(
        self,
        action_dim: int,
        policy_dt: float,
        execution_horizon: int,
        blend: BlendMode = "rtc",
        blend_s: float = 0.2,
        latency_window: int = 20,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> None:
        if action_dim <= 0 or policy_dt <= 0 or execution_horizon <= 0 or blend_s < 0:
            raise ValueError("action_dim, policy_dt and execution_horizon must be > 0 and blend_s >= 0")
        self.action_dim = action_dim
        self.dt = policy_dt
        self.execution_horizon = execution_horizon
        self.blend: BlendMode = blend
        self.blend_s = blend_s
        self.latency = LatencyTracker(latency_window)
        self.lower = None if lower is None else np.asarray(lower, dtype=np.float64)
        self.upper = None if upper is None else np.asarray(upper, dtype=np.float64)
        self.current: Trajectory | None = None
        self._chunk_t_obs: float | None = None  # observation time of the chunk now executing
        self._in_flight: ChunkRequest | None = None
        self.chunks_accepted = 0
        self.chunks_rejected = 0
        self.actions_dropped = 0

    # -- state ----------------------------------------------------------------------------------
    def reset(self, q_hold: np.ndarray) -> None:
        """Forget every chunk and hold ``q_hold`` until the next chunk (the policy resumes from here)."""
        q = np.asarray(q_hold, dtype=np.float64).copy()
        if q.shape != (self.action_dim,):
            raise ValueError(f"hold pose must be ({self.action_dim},), got {q.shape}")
        self.current = HoldTrajectory(q)
        self._chunk_t_obs = None
        self._in_flight = None

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    @property
    def has_chunk(self) -> bool:
        return self._chunk_t_obs is not None

    def exhausted(self, now: float) -> bool:
        """True when no policy action is left for ``now`` (holding the last one, or never had any)."""
        return self.current is None or now > self.current.end_time

    def sample(self, now: float) -> np.ndarray:
        """The target for the controlled joints at ``now`` (500 Hz)."""
        if self.current is None:
            raise RuntimeError("ChunkScheduler.sample before reset(): no pose to hold")
        cur = self.current
        if isinstance(cur, BlendTrajectory) and cur.weight_old(now) == 0.0:
            self.current = cur = cur.new  # blend finished: drop the old chunk
        return np.array(cur.sample(now), dtype=np.float64)

    def sample_many(self, ts: np.ndarray) -> np.ndarray:
        """The targets at the times ``ts`` (K,) from ``ts[0]`` on -> (K, A): what ``sample`` would give at each."""
        self.sample(float(ts[0]))  # drops a finished blend
        assert self.current is not None
        return np.array(self.current.sample_many(ts), dtype=np.float64)

    # -- requests -------------------------------------------------------------------------------
    def should_request(self, now: float) -> bool:
        if self._in_flight is not None or self.current is None:
            return False
        if self._chunk_t_obs is None:
            return True
        return now >= self._chunk_t_obs + self.execution_horizon * self.dt

    def expected_delay_steps(self) -> int:
        """Steps that will execute while the server infers: the max recent delay, rounded up, plus one."""
        if not len(self.latency):
            return 0
        return int(math.ceil(self.latency.max() / self.dt)) + 1

    def begin_request(self, t_obs: float, horizon: int) -> ChunkRequest:
        """Mark a request in flight for an observation captured at ``t_obs``; returns what to send."""
        if self.current is None:
            raise RuntimeError("begin_request before reset()")
        prefix = None
        n_exec = 0
        if self.blend == "rtc" and horizon > 0:
            if self.has_chunk:
                # Old trajectory's rows for the new chunk's times, as far as the old chunk reaches.
                rows = int(math.floor((self.current.end_time - t_obs) / self.dt + 1e-9)) + 1
            else:
                rows = self.expected_delay_steps() + int(math.ceil(self.blend_s / self.dt))
            rows = max(0, min(horizon, rows))
            if rows > 0:
                prefix = np.stack([self.current.sample(t_obs + k * self.dt) for k in range(rows)]).astype(np.float32)
                n_exec = min(rows, self.expected_delay_steps())
        self._in_flight = ChunkRequest(t_obs, prefix, n_exec)
        return self._in_flight

    def cancel_request(self) -> None:
        """The request failed (timeout, server error): allow a new one."""
        self._in_flight = None

    # -- arrivals -------------------------------------------------------------------------------
    def validate(self, actions: object) -> np.ndarray:
        try:
            a = np.array(actions, dtype=np.float64)
        except (TypeError, ValueError):
            raise ChunkRejected("shape", f"actions are not numeric ({type(actions).__name__})") from None
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != self.action_dim:
            raise ChunkRejected("shape", f"actions have shape {a.shape}, expected (H >= 1, {self.action_dim})")
        if not np.all(np.isfinite(a)):
            raise ChunkRejected("non-finite", f"actions contain {int(np.sum(~np.isfinite(a)))} NaN/inf values")
        if self.lower is not None and self.upper is not None:
            bad = (a < self.lower - RANGE_TOL) | (a > self.upper + RANGE_TOL)
            if np.any(bad):
                rows, cols = np.nonzero(bad)
                raise ChunkRejected(
                    "out-of-range",
                    f"{int(bad.sum())} actions outside the joint range, first: step {rows[0]} joint {cols[0]} "
                    f"= {a[rows[0], cols[0]]:.3f} rad not in [{self.lower[cols[0]]:.3f}, {self.upper[cols[0]]:.3f}]"
                )
        return np.clip(a, self.lower, self.upper) if self.lower is not None and self.upper is not None else a

    def on_chunk(self, actions: object, t_obs: float, t_arr: float) -> ChunkAccepted:
        """Accept a chunk for the observation at ``t_obs`` arriving at ``t_arr``, or raise ChunkRejected."""
        req, self._in_flight = self._in_flight, None
        if self.current is None:
            raise RuntimeError("on_chunk before reset()")
        if req is None or abs(req.t_obs - t_obs) > 1e-9:
            self.chunks_rejected += 1
            raise ChunkRejected("unrequested", "a chunk for an observation that is not the one requested (reset since?)")
        try:
            a = self.validate(actions)
        except ChunkRejected:
            self.chunks_rejected += 1
            raise
        delay = t_arr - t_obs
        self.latency.add(delay)
        new = ChunkTrajectory(a, t_obs, self.dt)
        if t_arr > new.end_time:
            self.chunks_rejected += 1
            raise ChunkRejected(
                "late",
                f"late: arrived {delay * 1e3:.0f} ms after its observation, past its last action "
                f"({(len(a) - 1) * self.dt * 1e3:.0f} ms)"
            )
        dropped = int(math.ceil((t_arr - t_obs) / self.dt - 1e-9))  # rows whose time has passed
        if self.blend == "none" or self.blend_s == 0:
            self.current = new
        else:
            moving = t_arr <= self.current.end_time
            self.current = BlendTrajectory(self.current, new, t_arr, self.blend_s, extrapolate_old=moving)
        self._chunk_t_obs = t_obs
        self.chunks_accepted += 1
        self.actions_dropped += dropped
        return ChunkAccepted(dropped=dropped, delay_s=delay)
