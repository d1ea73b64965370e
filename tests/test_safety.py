"""Property-based tests of the safety layer: whatever is asked, what goes out stays within the limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dit4dit.drivers import g1_spec
from dit4dit.runtime.config import parse_config
from dit4dit.runtime.realtime.safety import JointCommand, SafeRobot, SafetyError, SafetyFilter, SafetyLimits

N = g1_spec.NUM_JOINTS
TOL = 1e-12

CFG = parse_config({"safety": {"max_step": 0.01, "max_joint_velocity": 3.0, "soft_limit_fraction": 0.9}})
LIMITS = SafetyLimits.from_config(CFG.safety)
KP, KD = CFG.robot.gains_arrays()

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
anything_float = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf), st.floats(-1e300, 1e300))
good_vec = hnp.arrays(np.float64, (N,), elements=st.floats(-4.0, 4.0))
wild_vec = hnp.arrays(np.float64, (N,), elements=anything_float)
wrong_shape = st.one_of(
    hnp.arrays(np.float64, st.sampled_from([(0,), (28,), (30,), (1, N), (N, 1), (2, N)]), elements=finite),
    st.just(None),
    st.just("joint targets"),
    st.lists(finite, max_size=40),
    st.just(np.array([np.nan] * N)),
)
request = st.one_of(good_vec, good_vec, wild_vec, wrong_shape)
# Measured start pose: anywhere in the hard range, sometimes outside the soft box, sometimes beyond hard.
start_pose = hnp.arrays(np.float64, (N,), elements=st.floats(0, 1)).map(
    lambda u: g1_spec.LOWER - 0.05 + u * (g1_spec.UPPER - g1_spec.LOWER + 0.1)
)


def check_command(cmd: JointCommand, prev: JointCommand, first: JointCommand) -> None:
    for name in ("q", "kp", "kd", "dq", "tau"):
        a = getattr(cmd, name)
        assert a.shape == (N,) and np.all(np.isfinite(a)), name
    # Hard limits always; soft limits unless the joint started outside them, then never beyond the start.
    assert np.all(cmd.q >= g1_spec.LOWER - TOL) and np.all(cmd.q <= g1_spec.UPPER + TOL)
    assert np.all(cmd.q >= np.minimum(LIMITS.lower, first.q) - TOL)
    assert np.all(cmd.q <= np.maximum(LIMITS.upper, first.q) + TOL)
    # Outside the soft box only ever shrinks.
    out_prev = np.maximum(LIMITS.lower - prev.q, 0) + np.maximum(prev.q - LIMITS.upper, 0)
    out_now = np.maximum(LIMITS.lower - cmd.q, 0) + np.maximum(cmd.q - LIMITS.upper, 0)
    assert np.all(out_now <= out_prev + TOL)
    # Step and velocity limit against the previous command.
    assert np.all(np.abs(cmd.q - prev.q) <= LIMITS.max_delta + TOL)
    assert np.all((cmd.kp >= 0) & (cmd.kp <= LIMITS.max_kp))
    assert np.all((cmd.kd >= 0) & (cmd.kd <= LIMITS.max_kd))
    assert np.all(np.abs(cmd.dq) <= LIMITS.max_velocity)
    assert np.all(np.abs(cmd.tau) <= LIMITS.max_tau + TOL)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    q0=start_pose,
    requests=st.lists(st.tuples(request, st.one_of(st.none(), request), st.one_of(st.none(), request)), max_size=60),
)
def test_every_command_within_limits_and_step(q0: np.ndarray, requests: list) -> None:
    f = SafetyFilter(LIMITS)
    first = prev = f.reset(q0, KP, KD)
    for q, gain, ff in requests:
        cmd = f(q, kp=gain if gain is not None else None, kd=gain, dq=ff, tau=ff)
        check_command(cmd, prev, first)
        prev = cmd


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    q0=start_pose,
    requests=st.lists(st.tuples(request, st.floats(0.0, 0.01)), max_size=60),
)
def test_step_scales_with_time_between_commands(q0: np.ndarray, requests: list) -> None:
    """Commands in a burst (a loop catching up) move only as far as the elapsed time allows, at most one tick."""
    f = SafetyFilter(LIMITS)
    now = 100.0
    first = prev = f.reset(q0, KP, KD, now)
    for q, gap in requests:
        now += gap
        cmd = f(q, now=now)
        check_command(cmd, prev, first)
        allowed = LIMITS.max_delta * min(1.0, gap / LIMITS.dt)
        assert np.all(np.abs(cmd.q - prev.q) <= allowed + TOL)
        prev = cmd


@settings(max_examples=200, deadline=None)
@given(q0=start_pose, target=good_vec)
def test_step_keeps_direction(q0: np.ndarray, target: np.ndarray) -> None:
    """A limited step is the requested (clamped) delta scaled by one factor: direction kept."""
    f = SafetyFilter(LIMITS)
    prev = f.reset(q0, KP, KD)
    lo, hi = f.box(prev.q)
    wanted = np.clip(target, lo, hi) - prev.q
    got = f(target).q - prev.q
    if np.max(np.abs(wanted)) < 1e-12:
        assert np.allclose(got, 0)
        return
    scale = np.max(np.abs(got)) / np.max(np.abs(wanted))
    # Targets go out as float32 (what LowCmd carries): the direction holds to float32 rounding of both poses.
    wire = 2 * float(np.spacing(np.float32(4.0)))
    assert 0 < scale <= 1 + wire / np.max(np.abs(wanted))
    np.testing.assert_allclose(got, scale * wanted, atol=wire)


@settings(max_examples=100, deadline=None)
@given(bad=st.one_of(wild_vec.filter(lambda a: not np.all(np.isfinite(a))), wrong_shape))
def test_bad_targets_rejected_counted_and_hold(bad: object) -> None:
    f = SafetyFilter(LIMITS)
    prev = f.reset(g1_spec.HOME_POSE, KP, KD)
    f(g1_spec.HOME_POSE + 0.001)
    held = f.last.q.copy()
    before = sum(f.stats.rejected.values())
    cmd = f(bad)
    assert sum(f.stats.rejected.values()) == before + 1
    np.testing.assert_array_equal(cmd.q, held)
    assert prev is not cmd


def test_converges_to_a_far_target_without_exceeding_step() -> None:
    f = SafetyFilter(LIMITS)
    prev = f.reset(g1_spec.HOME_POSE, KP, KD)
    target = np.clip(g1_spec.HOME_POSE + 1.0, LIMITS.lower, LIMITS.upper)
    for _ in range(2000):
        cmd = f(target)
        assert np.max(np.abs(cmd.q - prev.q)) <= np.max(LIMITS.max_delta) + TOL
        prev = cmd
    np.testing.assert_allclose(prev.q, target, atol=1e-9)
    assert f.stats.step_limited > 0


def test_target_beyond_soft_limit_is_clamped() -> None:
    f = SafetyFilter(LIMITS)
    f.reset(g1_spec.HOME_POSE, KP, KD)
    for _ in range(3000):
        cmd = f(np.full(N, 100.0))
    np.testing.assert_allclose(cmd.q, LIMITS.upper)
    assert f.stats.position_clamped > 0


def test_limits_come_from_config_and_spec() -> None:
    cfg = parse_config({"safety": {"soft_limit_fraction": 0.8, "max_step": 0.2, "max_joint_velocity": 30.0}})
    lim = SafetyLimits.from_config(cfg.safety)
    centre = (g1_spec.LOWER + g1_spec.UPPER) / 2
    np.testing.assert_allclose(lim.upper - centre, (g1_spec.UPPER - g1_spec.LOWER) / 2 * 0.8)
    # velocity 30 rad/s is above the wrists' 22 rad/s: the spec's per-joint velocity wins.
    np.testing.assert_allclose(lim.max_delta, np.minimum(30.0, g1_spec.VELOCITY) * g1_spec.CONTROL_DT)


class RecordingDriver:
    """The driver end of SafeRobot for unit tests: stores what it was sent (the e2e test uses the real G1Robot)."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def command(self, q, kp, kd, dq=None, tau=None) -> None:
        self.sent.append(("command", q, kp, kd, dq, tau))

    def damp(self, kd) -> None:
        self.sent.append(("damp", kd))


def test_safe_robot_forwards_filtered_commands_and_latches_damping() -> None:
    drv = RecordingDriver()
    robot = SafeRobot(drv, LIMITS)
    with pytest.raises(SafetyError, match="reset"):
        robot.command(g1_spec.HOME_POSE)
    robot.reset(g1_spec.HOME_POSE, KP, KD)
    robot.command(g1_spec.HOME_POSE + 5.0, kp=np.full(N, 1e6))
    _, q, kp, *_ = drv.sent[-1]
    assert np.max(np.abs(q - g1_spec.HOME_POSE)) <= np.max(LIMITS.max_delta) + TOL
    assert np.all(kp <= LIMITS.max_kp)
    robot.damp()
    assert drv.sent[-1] == ("damp", LIMITS.damping_kd)
    with pytest.raises(SafetyError, match="damping"):
        robot.command(g1_spec.HOME_POSE)
    with pytest.raises(SafetyError):
        robot.reset(g1_spec.HOME_POSE, KP, KD)
