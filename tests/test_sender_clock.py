"""drivers/sender_clock.py: a state's age from the sender's own clock, so a backlog or a frozen robot shows."""

from __future__ import annotations

import pytest

from dit4dit.drivers.sender_clock import SenderClock

MS = 1e-3


def stream(clock: SenderClock, ticks: range, delay_of, t0: float = 100.0) -> list[float]:
    """Feed ticks (ms) sent at t0 + tick ms, each received delay_of(tick) later; returns the estimated send times."""
    return [clock.observe(k, t0 + k * MS + delay_of(k)) for k in ticks]


def test_steady_stream_reads_as_sent_now():
    c = SenderClock(MS)
    sent = stream(c, range(0, 1000, 2), lambda k: 0.0003)
    assert c.ticking
    assert sent[-1] == pytest.approx(100.0 + 998 * MS + 0.0003, abs=1e-9)


def test_a_backlog_shows_as_age_though_each_sample_is_received_now():
    c = SenderClock(MS)
    stream(c, range(0, 1000, 2), lambda k: 0.0003)
    # The reader fell behind: samples 1000..1998 arrive in a burst, 1.5 s late.
    sent = stream(c, range(1000, 2000, 2), lambda k: 1.5)
    received = 100.0 + 1998 * MS + 1.5
    assert received - sent[-1] == pytest.approx(1.5, abs=1e-3)  # age at receipt


def test_a_frozen_robot_clock_ages_while_samples_keep_coming():
    c = SenderClock(MS)
    stream(c, range(0, 1000, 2), lambda k: 0.0002)
    t = 100.0 + 998 * MS
    sent = [c.observe(998, t + dt) for dt in (0.1, 0.2, 0.5)]  # the tick stopped; messages still arrive
    assert 0.5 - (sent[-1] - t) > 0.49  # aged by (almost) the whole half second


def test_a_slow_sender_clock_is_tolerated_up_to_the_drift_bound():
    c = SenderClock(MS, max_drift=1e-4)
    # The sender's ms are 50 ppm longer than ours: its ticks fall behind our clock by 50 us per second.
    sent = [c.observe(k, 100.0 + k * MS * (1 + 5e-5)) for k in range(0, 600_000, 100)]
    received = 100.0 + 599_900 * MS * (1 + 5e-5)
    assert received - sent[-1] < 1e-3  # not mistaken for 30 ms of latency after 10 minutes


def test_a_tickless_stream_falls_back_to_receipt_time():
    c = SenderClock(MS)
    for i in range(100):
        assert c.observe(0, 50.0 + i * 0.005) == 50.0 + i * 0.005
    assert not c.ticking


def test_wraparound_and_restart():
    c = SenderClock(MS)
    top = (1 << 32) - 4
    a = c.observe(top, 10.0)
    b = c.observe(2, 10.006)  # wrapped: 6 ms later
    assert b - a == pytest.approx(0.006, abs=1e-9) and c.restarts == 0
    c.observe(5, 10.009)
    assert c.observe(1, 20.0) == 20.0  # went back: the sender restarted, re-anchored on receipt
    assert c.restarts == 1
