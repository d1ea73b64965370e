"""The trajectory the controller hands the real-time loop: joint targets sampled ahead, interpolated at 500 Hz.

The controller (at ``rates.controller_hz``) samples what it wants over the next ``PLAN_HORIZON_S``
every ``PLAN_SPACING_S`` (ramps, policy chunks blended by runtime/chunking.py, teleop slides, holds) and
writes those knots to shared memory. The real-time loop interpolates them linearly at its own tick
times. The controller may stall or be preempted for up to the horizon and the robot still follows the
plan; past the last knot the loop holds it (counted as an underrun) and, if the controller stays silent
for ``safety.controller_timeout_s``, damps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dit4dit.drivers import g1_spec

N = g1_spec.NUM_JOINTS
PLAN_SPACING_S = 0.004  # knots every 4 ms: linear interpolation of a 0.2 s raised-cosine blend errs < 1e-4 of it
PLAN_HORIZON_S = 0.3  # look-ahead written at every controller tick


@dataclass(frozen=True)
class Plan:
    t: np.ndarray  # (K,) monotonic s, strictly increasing
    q: np.ndarray  # (K, 29) joint targets
    kp: np.ndarray  # (29,)
    kd: np.ndarray  # (29,)

    def __post_init__(self) -> None:
        k = len(self.t)
        if k < 1 or self.q.shape != (k, N) or self.kp.shape != (N,) or self.kd.shape != (N,):
            raise ValueError(f"Plan: need t (K >= 1,), q (K, {N}), kp and kd ({N},); got {self.t.shape}, "
                             f"{self.q.shape}, {self.kp.shape}, {self.kd.shape}")
        if k > 1 and not np.all(np.diff(self.t) > 0):
            raise ValueError("Plan: knot times must increase strictly")

    @property
    def end(self) -> float:
        return float(self.t[-1])

    def sample(self, now: float) -> np.ndarray:
        """The target at ``now``: linear between knots, the first knot before, the last knot after."""
        t = self.t
        k = int(np.searchsorted(t, now, side="right"))
        if k <= 0:
            return self.q[0]
        if k >= len(t):
            return self.q[-1]
        f = (now - t[k - 1]) / (t[k] - t[k - 1])
        return self.q[k - 1] + f * (self.q[k] - self.q[k - 1])


def knot_times(now: float, horizon_s: float = PLAN_HORIZON_S, spacing_s: float = PLAN_SPACING_S) -> np.ndarray:
    """Knot times from ``now`` over the horizon."""
    return now + spacing_s * np.arange(int(round(horizon_s / spacing_s)) + 1)


def hold(now: float, q: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> Plan:
    """Stay at ``q``."""
    return Plan(np.array([now]), np.asarray(q, dtype=np.float64)[None, :], kp, kd)
