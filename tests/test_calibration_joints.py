"""Joint check in the real MuJoCo G1: healthy joints pass; a reversed motor and a torque offset are flagged."""

from __future__ import annotations

import numpy as np
import pytest
from dit4dit.calibration.joint_check import (
    JointCheckSettings,
    analyse_sweep,
    run_joint_check,
)
from dit4dit.drivers import g1_spec

JOINTS = ["right_shoulder_pitch_joint", "right_elbow_joint", "right_wrist_roll_joint"]


@pytest.fixture
def sim():
    from dit4dit.drivers.sim.scene import G1Sim, SceneConfig

    s = G1Sim(SceneConfig(tabletop=False))
    yield s
    s.close()


@pytest.fixture(scope="module")
def fk():
    from dit4dit.calibration.fk import TorsoFK

    return TorsoFK()


def _session(sim):
    from dit4dit.calibration.session import SimSession
    from dit4dit.runtime.config import SafetySection
    from dit4dit.runtime.realtime.safety import SafetyLimits

    kp, kd = g1_spec.gains_array()
    s = SimSession(sim, SafetyLimits.from_config(SafetySection(), dt=0.01), kp, kd)
    s.start()
    return s


def test_healthy_joints_pass(sim, fk) -> None:
    session = _session(sim)
    report = run_joint_check(session, JOINTS, fk)
    assert report.passed, [r.reason for r in report.joints]
    for r in report.joints:
        assert r.sign == 1 and 0.8 <= r.gain <= 1.2, r
        assert abs(r.offset_rad) < 0.03 and r.tracking_rms_rad < 0.03, r
    assert not session.safe.damped
    assert session.safe.stats.commands >= len(JOINTS) * 300  # every tick went through the safety layer


def test_torque_offset_is_flagged_on_that_joint_only(sim, fk) -> None:
    # a constant 6 N*m load on the shoulder (kp 60): the joint settles ~0.1 rad off its command
    j = g1_spec.joint_index("right_shoulder_pitch_joint")
    sim.data.qfrc_applied[sim.model.joint("right_shoulder_pitch_joint").dofadr[0]] = 6.0
    report = run_joint_check(_session(sim), JOINTS, fk)
    assert not report.passed
    by = {r.joint: r for r in report.joints}
    bad = by[g1_spec.JOINT_NAMES[j]]
    assert not bad.ok and "offset" in bad.reason
    assert bad.offset_rad == pytest.approx(6.0 / 60.0, abs=0.03)
    assert by["right_elbow_joint"].ok and by["right_wrist_roll_joint"].ok


def test_reversed_motor_is_flagged_and_robot_damped(sim, fk) -> None:
    # the elbow motor pushes the wrong way: under PD it runs away from every target
    sim.model.actuator_gear[sim.model.actuator("right_elbow").id, 0] = -1.0
    session = _session(sim)
    report = run_joint_check(session, JOINTS, fk)
    assert not report.passed
    elbow = next(r for r in report.joints if r.joint == "right_elbow_joint")
    assert not elbow.ok and elbow.sign == -1 and "reversed" in elbow.reason
    assert session.safe.damped  # nothing else may move after a runaway
    assert all(not r.ok for r in report.joints)  # the rest are reported as not checked


def test_analysis_of_a_recorded_sweep() -> None:
    """The fit itself: a lagged, sagging but healthy response passes; a reversed one is flagged as such."""
    s = JointCheckSettings()
    t = np.arange(0, 3.0, 0.01)
    c = 0.15 * np.sin(2 * np.pi * t / 3.0)
    lagged = np.interp(t - 0.05, t, c, left=0.0) * 0.95 - 0.02
    ok = analyse_sweep(t, c, lagged, expected_sag=-0.02, settings=s, joint="j")
    assert ok.ok and ok.lag_s == pytest.approx(0.05, abs=0.011) and ok.gain == pytest.approx(0.95, abs=0.01)
    rev = analyse_sweep(t, c, -c, expected_sag=0.0, settings=s, joint="j")
    assert not rev.ok and rev.sign == -1 and "reversed" in rev.reason
    still = analyse_sweep(t, c, np.zeros_like(c), expected_sag=0.0, settings=s, joint="j")
    assert not still.ok and still.sign == 0 and "did not move" in still.reason
    with pytest.raises(ValueError, match="abort_error_rad"):
        JointCheckSettings(amplitude_rad=0.3, abort_error_rad=0.2)
