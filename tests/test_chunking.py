"""Chunk scheduling on a simulated clock: stale actions dropped, seams without stepping back or jerks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dit4dit.runtime.chunking import ChunkRejected, ChunkScheduler, ChunkTrajectory

DT = 1 / 30  # policy step
TICK = 0.002  # 500 Hz
H = 16
A = 3
V = 0.6  # rad/s of the scripted "policy" motion


def policy_chunk(t_obs: float, offset: float = 0.0) -> np.ndarray:
    """What a consistent policy predicts from an observation at t_obs: a ramp in time (+ optional bias)."""
    t = t_obs + DT * np.arange(H)
    return np.stack([V * t + offset, -0.5 * V * t, np.full(H, 0.2)], axis=1)


def run(sched: ChunkScheduler, delays: list[float], offsets: list[float] | None = None, t_end: float = 3.0) -> np.ndarray:
    """500 Hz loop with async requests that answer after the given delays (cycled). Returns targets (T, A)."""
    sched.reset(policy_chunk(0.0)[0])
    pending: list[tuple[float, float, np.ndarray]] = []
    out = []
    i = 0
    for n in range(int(t_end / TICK)):
        now = n * TICK
        for item in [p for p in pending if p[0] <= now]:
            pending.remove(item)
            sched.on_chunk(item[2], item[1], now)
        if sched.should_request(now):
            sched.begin_request(now, H)
            off = offsets[i % len(offsets)] if offsets else 0.0
            pending.append((now + delays[i % len(delays)], now, policy_chunk(now, off)))
            i += 1
        out.append(sched.sample(now))
    return np.array(out)


def make(blend: str = "client", **kw) -> ChunkScheduler:
    return ChunkScheduler(A, DT, execution_horizon=kw.pop("horizon", 8), blend=blend, blend_s=kw.pop("blend_s", 0.15), **kw)


def test_chunk_trajectory_interpolates_and_holds_ends() -> None:
    tr = ChunkTrajectory(np.array([[0.0], [1.0], [3.0]]), t0=1.0, dt=0.1)
    assert tr.sample(0.5)[0] == 0.0
    assert tr.sample(1.05)[0] == pytest.approx(0.5)
    assert tr.sample(1.15)[0] == pytest.approx(2.0)
    assert tr.sample(9.0)[0] == 3.0
    assert tr.end_time == pytest.approx(1.2)


def test_stale_rows_dropped_by_measured_delay() -> None:
    s = make("none")
    s.reset(np.zeros(A))
    req = s.begin_request(10.0, H)
    acc = s.on_chunk(policy_chunk(10.0), req.t_obs, 10.0 + 0.1)
    assert acc.dropped == 3  # rows at +0, +33, +67 ms are in the past at +100 ms
    assert acc.delay_s == pytest.approx(0.1)
    # Execution picks up the chunk at the arrival time, not at row 0.
    np.testing.assert_allclose(s.sample(10.1), policy_chunk(10.0)[0] + [V * 0.1, -0.5 * V * 0.1, 0], atol=1e-12)


@pytest.mark.parametrize("blend", ["none", "client", "rtc"])
def test_consistent_policy_never_steps_back(blend: str) -> None:
    """A moving arm keeps moving forward through every seam despite 40-150 ms inference delays."""
    q = run(make(blend), delays=[0.04, 0.15, 0.09, 0.12])
    dq = np.diff(q[:, 0])
    settle = int(0.3 / TICK)  # first chunk's blend out of the initial hold
    assert np.all(dq[settle:] >= -1e-12), f"stepped back by {dq[settle:].min():.2e} rad"
    # and it follows the policy: constant speed after the start
    np.testing.assert_allclose(dq[settle:], V * TICK, atol=1e-9)


def test_disagreeing_chunks_blend_without_jumps() -> None:
    """Chunks that disagree by 0.1 rad: a switch jumps, the blend spreads it into bounded velocity."""
    offsets = [0.0, 0.1, -0.05, 0.1]
    hard = run(make("none"), delays=[0.06], offsets=offsets)
    soft = run(make("client", blend_s=0.2), delays=[0.06], offsets=offsets)
    settle = int(0.5 / TICK)
    step_hard = np.abs(np.diff(hard[settle:, 0])).max()
    step_soft = np.abs(np.diff(soft[settle:, 0])).max()
    assert step_hard > 0.05  # the switch is a step of about one offset
    # Raised cosine over 0.2 s: peak extra speed = pi/2 * 0.15 rad / 0.2 s; plus the motion itself.
    bound = (np.pi / 2 * 0.15 / 0.2 + V) * TICK * 1.05
    assert step_soft <= bound, (step_soft, bound)
    acc_soft = np.abs(np.diff(soft[settle:, 0], 2)).max()
    assert acc_soft < step_hard / 50


@settings(max_examples=40, deadline=None)
@given(
    delays=st.lists(st.floats(0.0, 0.25), min_size=1, max_size=6),
    offsets=st.lists(st.floats(-0.2, 0.2), min_size=1, max_size=6),
    blend_s=st.floats(0.05, 0.4),
)
def test_blend_bounds_velocity_for_any_delays(delays: list[float], offsets: list[float], blend_s: float) -> None:
    q = run(make("client", blend_s=blend_s), delays=delays, offsets=offsets, t_end=2.0)
    assert np.all(np.isfinite(q))
    max_jump = max(abs(a - b) for a in offsets + [0.0] for b in offsets + [0.0])
    # Extra speed of a raised-cosine fade = |dw/dt| * |old - new| <= pi/(2 T) * gap, where the gap is the
    # chunks' disagreement plus, when the old one is holding (start, late chunk), the distance moved meanwhile.
    gap = max_jump + V * (blend_s + max(delays) + DT)
    bound = (np.pi / 2 * gap / blend_s + V) * TICK + 1e-9
    assert np.abs(np.diff(q[:, 0])).max() <= bound * 1.01


def test_rtc_request_carries_prefix_and_executing_steps() -> None:
    s = make("rtc")
    s.reset(np.zeros(A))
    r0 = s.begin_request(0.0, H)
    assert r0.n_executing == 0  # no latency measured yet
    s.on_chunk(policy_chunk(0.0), 0.0, 0.1)
    t = 8 * DT
    assert s.should_request(t)
    r1 = s.begin_request(t, H)
    assert r1.prefix is not None
    # Old chunk rows for the new chunk's times, as far as the old chunk reaches (16 - 8 rows).
    assert r1.prefix.shape == (H - 8, A)
    np.testing.assert_allclose(r1.prefix, policy_chunk(0.0)[8:], atol=1e-6)
    assert r1.n_executing == int(np.ceil(0.1 / DT)) + 1


def test_rtc_from_hold_freezes_current_pose() -> None:
    s = make("rtc")
    s.reset(np.array([0.1, 0.2, 0.3]))
    s.begin_request(0.0, H)
    s.on_chunk(policy_chunk(0.0), 0.0, 0.05)
    s.reset(np.array([0.4, 0.5, 0.6]))  # e.g. after teleop: policy resumes here
    r = s.begin_request(1.0, H)
    assert r.prefix is not None and r.n_executing >= 2
    np.testing.assert_allclose(r.prefix, np.tile([0.4, 0.5, 0.6], (len(r.prefix), 1)), atol=1e-6)


@pytest.mark.parametrize(
    ("actions", "match"),
    [
        (np.full((H, A), np.nan), "NaN"),
        (np.zeros((H, A + 1)), "shape"),
        (np.zeros((A,)), "shape"),
        (np.zeros((0, A)), "shape"),
        ("left", "shape|numeric"),
        (np.full((H, A), 50.0), "outside the joint range"),
    ],
)
def test_bad_chunks_rejected(actions: object, match: str) -> None:
    s = ChunkScheduler(A, DT, 8, lower=np.full(A, -3.0), upper=np.full(A, 3.0))
    s.reset(np.zeros(A))
    r = s.begin_request(0.0, H)
    with pytest.raises(ChunkRejected, match=match):
        s.on_chunk(actions, r.t_obs, 0.05)
    assert s.chunks_rejected == 1 and not s.in_flight
    np.testing.assert_array_equal(s.sample(0.1), np.zeros(A))  # still holding


def test_late_chunk_rejected_and_hold_continues() -> None:
    s = make("client")
    s.reset(np.zeros(A))
    r = s.begin_request(0.0, H)
    with pytest.raises(ChunkRejected, match="late"):
        s.on_chunk(policy_chunk(0.0), r.t_obs, (H + 1) * DT)
    assert s.exhausted(1.0)


def test_chunk_for_an_old_request_is_rejected() -> None:
    s = make("client")
    s.reset(np.zeros(A))
    s.begin_request(0.0, H)
    s.reset(np.ones(A))  # e.g. teleop took over meanwhile
    with pytest.raises(ChunkRejected, match="not the one requested"):
        s.on_chunk(policy_chunk(0.0), 0.0, 0.05)


def test_next_request_after_execution_horizon() -> None:
    s = make("client", horizon=4)
    s.reset(np.zeros(A))
    assert s.should_request(0.0)
    s.begin_request(0.0, H)
    assert not s.should_request(0.01)  # one in flight
    s.on_chunk(policy_chunk(0.0), 0.0, 0.05)
    assert not s.should_request(3.5 * DT)
    assert s.should_request(4 * DT)
    assert not s.exhausted(4 * DT) and s.exhausted(H * DT)
