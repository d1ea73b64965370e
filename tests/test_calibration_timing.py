"""Timing against a live dit4dit-sim (real DDS, real ZeroMQ image stream): an injected camera latency is
recovered within one frame period; plus the alignment maths on recorded-style signals."""

from __future__ import annotations

import time

import numpy as np
import pytest
from dit4dit.calibration.timing import align_delay, state_times

from tests.calibration_rig import deadline, real_time_factor, running_sim

FPS = 30.0
FRAME = 1.0 / FPS  # the tolerance: latency within one frame


def test_alignment_recovers_a_known_shift_finer_than_a_frame() -> None:
    t = np.arange(0.0, 1.5, 0.002)
    s = np.clip((t - 0.3) / 0.15, 0, 1)  # a ramp-like step seen at 500 Hz
    true_delay = 0.0737
    frame_t = np.arange(0.013, 1.5, FRAME)  # frames at an arbitrary phase
    frame_s = np.interp(frame_t - true_delay, t, s)
    d, rms = align_delay(t, s, frame_t, frame_s, max_delay_s=0.5)
    assert abs(d - true_delay) < 0.002 and rms < 0.01


def test_state_times_undo_receipt_jitter() -> None:
    rng = np.random.default_rng(0)
    ticks = np.arange(0, 5000, 2)  # ms counter at 500 Hz
    send = 100.0 + ticks * 1e-3
    stamps = send + 0.0005 + rng.exponential(0.02, ticks.size)  # a busy host: late, never early
    rec = state_times(stamps, ticks)
    assert np.max(np.abs(rec - send)) < 0.002
    assert np.array_equal(state_times(stamps, np.zeros_like(ticks)), stamps)  # no counter: stamps as they are


@pytest.fixture
def live_sim(tmp_path, dds_domain, free_port):
    with deadline(240), running_sim(tmp_path, dds_domain, free_port, "wrist_marker", fps=FPS) as sim:
        yield sim


@pytest.mark.slow
def test_injected_camera_latency_is_recovered_within_one_frame(live_sim) -> None:
    from dit4dit.calibration.calibration_file import Intrinsics
    from dit4dit.calibration.fk import TorsoFK
    from dit4dit.calibration.handeye import HandEyePlanner, PlanSettings
    from dit4dit.calibration.session import MoveSettings, RobotSession
    from dit4dit.calibration.targets import WRIST_PLATE
    from dit4dit.calibration.timing import (
        HostOverloadedError,
        TimingSettings,
        run_timing,
    )
    from dit4dit.drivers import g1_spec
    from dit4dit.drivers.cameras import SimCamera, SimCameraConfig
    from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig
    from dit4dit.drivers.sim.bridge import control_request
    from dit4dit.runtime.config import SafetySection
    from dit4dit.runtime.realtime.safety import SafetyLimits

    # A timing measurement needs a host that keeps real time; on an overloaded machine the simulator itself
    # runs slow and no latency figure means anything (run_timing refuses too, via the state rate).
    rtf = real_time_factor(live_sim["control"])
    if rtf < 0.9:
        pytest.skip(f"host overloaded: dit4dit-sim runs at {rtf:.2f}x real time (needs >= 0.9 for timing)")
    info = control_request(live_sim["control"], "camera_info", camera="head")
    K = np.asarray(info["K"])
    intr = Intrinsics(width=640, height=480, fx=K[0, 0], fy=K[1, 1], cx=K[0, 2], cy=K[1, 2], source="charuco")
    robot = G1Robot(G1RobotConfig(interface="lo", domain=live_sim["domain"]))
    camera = SimCamera(SimCameraConfig(name="head", endpoint=live_sim["endpoint"], max_age_s=2.0))
    robot.connect(10.0)
    camera.connect()
    try:
        kp, kd = g1_spec.gains_array()
        session = RobotSession(robot, camera, SafetyLimits.from_config(SafetySection(), dt=0.01), kp, kd,
                               move=MoveSettings(max_speed=1.0, settle_timeout_s=5.0, settle_speed=0.05),
                               state_timeout_s=1.0)
        session.start()
        planner = HandEyePlanner(TorsoFK(), intr, WRIST_PLATE.corners_m(), PlanSettings())
        plan = planner.plan(session.target.copy(), session.safe.limits.lower, session.safe.limits.upper)
        for q in plan.via:
            session.move_to(q)
        session.move_to(plan.centre)
        settings = TimingSettings(n_steps=6, settle_s=0.5, observe_s=0.8)
        measured = {}
        for latency in (0.0, 0.1):
            control_request(live_sim["control"], "set_latency", seconds=latency, camera="head")
            time.sleep(latency + 0.2)
            try:
                measured[latency] = run_timing(session, settings)
            except HostOverloadedError as e:  # the measurement refused itself: say so rather than fail or pass
                pytest.skip(f"host overloaded during the measurement: {e}")
        print({k: round(v.camera_delay_s * 1e3, 1) for k, v in measured.items()},
              "ms camera delay; e2e", {k: round(v.end_to_end_s * 1e3, 1) for k, v in measured.items()})
        d0, d1 = measured[0.0].camera_delay_s, measured[0.1].camera_delay_s
        # the injected 100 ms on top of the simulator's own pipeline delay, recovered within one frame
        assert abs((d1 - d0) - 0.1) < FRAME, f"injected 100 ms, delay grew by {(d1 - d0) * 1e3:.1f} ms (> 1 frame off)"
        # and the simulator's own pipeline (render, encode, stream) adds at most a frame or two by itself
        assert -FRAME < d0 < 2 * FRAME, f"baseline camera delay {d0 * 1e3:.1f} ms"
        assert measured[0.1].end_to_end_s > measured[0.1].camera_delay_s  # processing comes on top
        assert measured[0.1].n_trials >= 3
    finally:
        session.safe.damp()
        time.sleep(0.2)
        robot.disconnect()
        camera.disconnect()
