"""Joint check: sweep chosen joints slowly around the start pose and confirm measured positions follow.

For each joint, one at a time, the target follows q0 + A sin(2 pi t / T) (one period, the rest of the body
holding), through the safety layer. Then, with the measured displacement m(t) and the commanded one c(t):

* lag: the delay that best aligns m with c (searched on a grid);
* gain and sign: least-squares slope of m(t) on c(t - lag): +1 and near 1 for a healthy joint;
  a negative slope is a reversed joint, near 0 a joint that does not move;
* offset: the fit's intercept (measured minus commanded at zero displacement) minus the sag gravity alone explains (gravity torque / kp from
  the project's model), i.e. what a wrong zero, a constant load or a torque bias leaves;
* tracking error: RMS of m(t) - gain * c(t - lag) - the rest.

A joint whose error exceeds ``abort_error_rad`` at any tick (a reversed motor runs away) stops the check at
once and damps the robot through the safety layer: a robot with such a joint must not be run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dit4dit.calibration.calibration_file import JointCheck, JointResult
from dit4dit.calibration.session import Session
from dit4dit.drivers import g1_spec

log = logging.getLogger(__name__)


@dataclass
class JointCheckSettings:
    amplitude_rad: float = 0.15
    period_s: float = 3.0
    min_gain: float = 0.8
    max_gain: float = 1.2
    max_offset_rad: float = 0.03
    max_tracking_rms_rad: float = 0.03
    max_lag_s: float = 0.2
    abort_error_rad: float = 0.3  # |measured - commanded| beyond this at any tick: stop and damp

    def __post_init__(self) -> None:
        if not 0 < self.amplitude_rad <= 0.5:
            raise ValueError(f"joint check amplitude must be in (0, 0.5] rad, got {self.amplitude_rad}")
        if self.period_s < 1.0:
            raise ValueError(f"joint check period must be >= 1 s (a slow sweep), got {self.period_s}")
        if self.abort_error_rad <= self.amplitude_rad:
            raise ValueError("abort_error_rad must exceed amplitude_rad, or a healthy lagging joint would abort")


def analyse_sweep(
    t: np.ndarray,
    commanded: np.ndarray,
    measured: np.ndarray,
    expected_sag: float,
    settings: JointCheckSettings,
    joint: str,
) -> JointResult:
    """Sign, gain, offset, lag and tracking error of one joint's sweep (angles as displacements from q0)."""
    t = np.asarray(t, dtype=np.float64)
    c = np.asarray(commanded, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    dt = float(np.median(np.diff(t)))
    best = None
    for lag_steps in range(max(1, round(settings.max_lag_s * 1.5 / dt)) + 1):
        cs = c[: c.size - lag_steps] if lag_steps else c
        ms = m[lag_steps:]
        A = np.stack([cs, np.ones_like(cs)], axis=1)
        coef, *_ = np.linalg.lstsq(A, ms, rcond=None)
        rms = float(np.sqrt(np.mean((A @ coef - ms) ** 2)))
        if best is None or rms < best[0]:
            best = (rms, lag_steps, float(coef[0]), float(coef[1]))
    assert best is not None
    rms, lag_steps, gain, intercept = best
    lag = lag_steps * dt
    offset = intercept - expected_sag
    max_err = float(np.max(np.abs(m - c)))
    moved = float(np.ptp(m)) > 0.2 * float(np.ptp(c))
    sign = 0 if not moved else (1 if gain > 0 else -1)
    problems = []
    if sign == 0:
        problems.append(f"did not move (measured range {np.ptp(m):.3f} rad for a commanded {np.ptp(c):.3f} rad)")
    elif sign < 0:
        problems.append(f"moves opposite to the command (gain {gain:.2f}): reversed sign")
    elif not settings.min_gain <= gain <= settings.max_gain:
        problems.append(f"gain {gain:.2f} outside [{settings.min_gain}, {settings.max_gain}]")
    if abs(offset) > settings.max_offset_rad:
        problems.append(f"offset {offset:+.3f} rad beyond +-{settings.max_offset_rad} (after {expected_sag:+.3f} gravity sag)")
    if rms > settings.max_tracking_rms_rad:
        problems.append(f"tracking RMS {rms:.3f} rad > {settings.max_tracking_rms_rad}")
    if lag > settings.max_lag_s:
        problems.append(f"lag {lag * 1e3:.0f} ms > {settings.max_lag_s * 1e3:.0f} ms")
    return JointResult(
        joint=joint, sign=sign, gain=gain, offset_rad=offset, tracking_rms_rad=rms, lag_s=lag, max_error_rad=max_err,
        ok=not problems, reason="; ".join(problems),
    )


def run_joint_check(
    session: Session, joints: Sequence[str | int], fk: object, settings: JointCheckSettings | None = None
) -> JointCheck:
    """Sweep each joint around the session's current target; damp and stop on a runaway. Returns the report."""
    s = settings or JointCheckSettings()
    if session.target is None:
        raise RuntimeError("session not started: call start() first")
    idx = [g1_spec.joint_index(j) if isinstance(j, str) else int(j) for j in joints]
    if not idx:
        raise ValueError("joint check needs at least one joint")
    q0 = session.target.copy()
    lo, hi = session.safe.limits.lower, session.safe.limits.upper
    results: list[JointResult] = []
    aborted: str | None = None
    for i in idx:
        name = g1_spec.JOINT_NAMES[i]
        if any(r.joint == name for r in results):
            continue  # already reported (it was the joint that ran away)
        if aborted is not None:
            results.append(JointResult(joint=name, sign=0, gain=0.0, offset_rad=0.0, tracking_rms_rad=0.0, lag_s=0.0,
                                       max_error_rad=0.0, ok=False, reason=f"not checked: {aborted}"))
            continue
        # keep the sweep inside the soft limits (never let the safety clamp distort the command)
        amp = min(s.amplitude_rad, q0[i] - lo[i] - 1e-3, hi[i] - q0[i] - 1e-3)
        if amp < 0.02:
            results.append(JointResult(joint=name, sign=0, gain=0.0, offset_rad=0.0, tracking_rms_rad=0.0, lag_s=0.0,
                                       max_error_rad=0.0, ok=False,
                                       reason=f"start pose {q0[i]:.3f} rad is at its soft limit; no room to sweep"))
            continue
        kp = float(session.kp[i])
        sag = -float(fk.gravity_torque(q0)[i]) / kp if kp > 0 else 0.0  # type: ignore[attr-defined]
        ts, cs, ms = [], [], []
        n = round(s.period_s / session.control_dt)
        t0 = session.now()
        culprit: int | None = None
        for k in range(n + 1):
            target = q0.copy()
            target[i] = q0[i] + amp * np.sin(2 * np.pi * k / n)
            cmd = session.command(target)
            session.tick()
            q = session.q()
            ts.append(session.now() - t0)
            cs.append(cmd[i] - q0[i])
            ms.append(q[i] - q0[i])
            # every joint is watched, not only the swept one: a reversed joint runs away on its own
            err = np.abs(q - cmd)
            if float(err.max()) > s.abort_error_rad:
                culprit = int(np.argmax(err))
                break
        if culprit is not None:
            session.safe.damp()
            bad = g1_spec.JOINT_NAMES[culprit]
            q = session.q()
            moved = q[culprit] - q0[culprit]
            aborted = f"{bad} ran away ({moved:+.3f} rad from its target) while sweeping {name}; robot damped"
            log.error("joint check: %s", aborted)
            reversed_hint = "; it moved away from its target under PD control: reversed motor direction (sign)"
            if culprit == i and len(ms) > 1 and np.sign(ms[-1]) == -np.sign(cs[-1]) != 0:
                sign = -1
            else:
                sign = -1 if culprit != i else 0
            results.append(JointResult(
                joint=bad, sign=sign, gain=0.0, offset_rad=0.0, tracking_rms_rad=0.0, lag_s=0.0,
                max_error_rad=float(np.abs(q - session.target)[culprit]), ok=False,
                reason=f"ran away beyond {s.abort_error_rad} rad" + (reversed_hint if sign < 0 else ""),
            ))
            if culprit != i:
                results.append(JointResult(joint=name, sign=0, gain=0.0, offset_rad=0.0, tracking_rms_rad=0.0,
                                           lag_s=0.0, max_error_rad=0.0, ok=False, reason=f"not checked: {aborted}"))
            continue
        session.settle([i])
        res = analyse_sweep(np.array(ts), np.array(cs), np.array(ms), sag, s, name)
        log.info("joint check %s: %s", name, "ok" if res.ok else res.reason)
        results.append(res)
    return JointCheck(passed=all(r.ok for r in results), amplitude_rad=s.amplitude_rad, period_s=s.period_s,
                      joints=results)
