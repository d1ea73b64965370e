"""The simulator's newest-command intake and its statistics, on real serialized samples (no DDS needed):
a batch applies its newest valid sample, older ones are superseded, bad ones are counted and skipped."""

from __future__ import annotations

import time

import numpy as np
import pytest
from dit4dit.drivers import g1_spec, hg_codec
from dit4dit.drivers.sim.command_intake import (
    CommandIntake,
    MotorCommand,
    TopicCounts,
    hand_parser,
    lowcmd_parser,
    newest_valid,
    parse_arm_sdk,
)
from dit4dit.drivers.sim.stats import BridgeStats, Ring, StatsWindow

MM = 6
N = g1_spec.NUM_JOINTS
ZERO = np.zeros(N)


def lowcmd(q0: float, *, mode_machine: int = MM, weight: float | None = None, crc_ok: bool = True,
           joints: object = None) -> bytes:
    rec = hg_codec.LowCmdRecord(mode_machine, joints)
    kp, kd = g1_spec.gains_array()
    rec.set(np.full(N, q0), ZERO, ZERO, kp, kd)
    if weight is not None:
        rec.set_slot_q(g1_spec.ARM_SDK_WEIGHT_SLOT, weight)
    sample = rec.serialize()
    return sample if crc_ok else sample[:-4] + b"\xef\xbe\xad\xde"


def batch(*samples: bytes) -> list[tuple[bytes, int]]:
    return [(s, 1_000 + i) for i, s in enumerate(samples)]


def counts() -> TopicCounts:
    return TopicCounts("lowcmd", ("bad_crc", "bad_mode_machine", "bad_value"))


def no_warn(key: str, text: str) -> None:
    pass


def test_a_burst_applies_its_newest_sample_and_supersedes_the_rest() -> None:
    c = counts()
    cmd = newest_valid(batch(*(lowcmd(0.01 * i) for i in range(40))), lowcmd_parser(MM), c, no_warn)
    assert isinstance(cmd, MotorCommand)
    np.testing.assert_allclose(cmd.q, 0.39, atol=1e-6)  # float32 on the wire
    assert cmd.stamp_ns == 1_039 and cmd.enabled.all() and cmd.q.dtype == np.float64
    assert c.as_dict() == {"lowcmd_received": 40, "lowcmd_applied": 1, "lowcmd_superseded": 39, "lowcmd_bad_crc": 0,
                           "lowcmd_bad_mode_machine": 0, "lowcmd_bad_value": 0}


def test_a_bad_newest_sample_falls_back_to_the_next_newest_valid_one() -> None:
    c = counts()
    warned: list[str] = []
    samples = batch(lowcmd(0.1), lowcmd(0.2), lowcmd(0.3, crc_ok=False), lowcmd(0.4, mode_machine=MM - 1))
    cmd = newest_valid(samples, lowcmd_parser(MM), c, lambda key, text: warned.append(key))
    assert cmd is not None and cmd.q[0] == pytest.approx(0.2) and cmd.stamp_ns == 1_001
    assert (c.received, c.applied, c.superseded) == (4, 1, 1)
    assert c.rejected == {"bad_crc": 1, "bad_mode_machine": 1}
    assert warned == ["lowcmd-bad_mode_machine", "lowcmd-bad_crc"]


def test_a_batch_of_bad_samples_applies_nothing_and_counts_each() -> None:
    c = counts()
    bad = batch(lowcmd(0.1, crc_ok=False), lowcmd(0.2, mode_machine=0), lowcmd(0.3, crc_ok=False), b"\x00" * 10)
    assert newest_valid(bad, lowcmd_parser(MM), c, no_warn) is None
    assert (c.received, c.applied, c.superseded) == (4, 0, 0)
    assert c.rejected == {"bad_crc": 2, "bad_mode_machine": 1, "bad_value": 1}
    # the CRC check can be switched off (--no-crc-check), mode_machine still counts
    cmd = newest_valid(batch(lowcmd(0.5, crc_ok=False)), lowcmd_parser(MM, check_crc=False), c, no_warn)
    assert cmd is not None and cmd.q[0] == pytest.approx(0.5)


def test_non_finite_values_are_rejected() -> None:
    rec = hg_codec.LowCmdRecord(MM)
    q = np.full(N, 0.1)
    q[3] = np.nan
    rec.set(q, ZERO, ZERO, ZERO, ZERO)
    c = counts()
    cmd = newest_valid(batch(lowcmd(0.7), rec.serialize()), lowcmd_parser(MM), c, no_warn)
    assert cmd is not None and cmd.q[0] == pytest.approx(0.7) and c.rejected == {"bad_value": 1}


def test_arm_sdk_carries_its_weight_and_needs_no_crc_or_mode_machine() -> None:
    c = TopicCounts("arm_sdk", ("bad_value",))
    sample = lowcmd(0.3, mode_machine=0, weight=0.25, crc_ok=False, joints=g1_spec.ARM_SDK_JOINTS)
    cmd = newest_valid(batch(sample), parse_arm_sdk, c, no_warn)
    assert cmd is not None and cmd.weight == pytest.approx(0.25)
    arm = list(g1_spec.ARM_SDK_JOINTS)
    np.testing.assert_allclose(cmd.q[arm], 0.3, atol=1e-6)
    assert cmd.enabled[arm].all() and not cmd.enabled[:12].any()  # legs: mode 0 in an arm_sdk message


def test_dex3_hand_commands_newest_only_with_the_sdk_type() -> None:
    from dit4dit.drivers.hands import pack_mode
    from unitree_sdk2py.idl.default import unitree_hg_msg_dds__HandCmd_

    def hand(q: float, stop_motor: int | None = None) -> bytes:
        msg = unitree_hg_msg_dds__HandCmd_()
        for i, m in enumerate(msg.motor_cmd):
            m.mode, m.q, m.kp, m.kd = pack_mode(i, timeout=i == stop_motor), q, 1.5, 0.1
        return msg.serialize()

    c = TopicCounts("hand_cmd", ("bad_value",))
    cmd = newest_valid(batch(hand(0.1), hand(0.2, stop_motor=2)), hand_parser("right"), c, no_warn)
    assert cmd is not None and cmd.q.shape == (7,) and cmd.q[0] == pytest.approx(0.2)
    assert cmd.enabled.tolist() == [True, True, False, True, True, True, True]
    assert (c.received, c.applied, c.superseded) == (2, 1, 1)


def test_command_intake_takes_the_whole_queue_each_time() -> None:
    class Reader:
        def __init__(self) -> None:
            self.queue: list[tuple[bytes, int]] = []

        def take(self) -> list[tuple[bytes, int]]:
            out, self.queue = self.queue, []
            return out

        def close(self) -> None:
            pass

    reader, c = Reader(), counts()
    intake = CommandIntake(reader, lowcmd_parser(MM), c, no_warn)
    assert intake.newest() is None and c.received == 0
    reader.queue = batch(lowcmd(0.1), lowcmd(0.2))
    assert intake.newest().q[0] == pytest.approx(0.2)
    assert intake.newest() is None  # nothing is applied twice
    assert (c.received, c.applied, c.superseded) == (2, 1, 1)


def test_ring_keeps_the_newest_samples_of_a_window() -> None:
    r = Ring(8)
    for v in range(5):
        r.add(v)
    assert r.since(0).tolist() == [0, 1, 2, 3, 4] and r.since(3).tolist() == [3, 4] and r.since(5).size == 0
    for v in range(5, 20):
        r.add(v)
    assert r.since(0).tolist() == list(range(12, 20))  # bounded: the newest 8
    assert r.since(17).tolist() == [17, 18, 19]


def test_stats_window_reports_the_difference_since_its_start() -> None:
    st = BridgeStats()
    st.steps, st.lowcmd.received, st.command_latency_ms.count = 100, 50, 0
    w = StatsWindow(st, {"head": 3}, step_s=0.002)
    st.steps += 500  # one simulated second
    st.lowcmd.received += 40
    st.lowcmd.applied += 30
    st.lowcmd.superseded += 10
    for ms in (1.0, 2.0, 3.0, 10.0):
        st.command_latency_ms.add(ms)
    for late in (0.0001, 0.0001, 0.005):
        st.record_step_lateness(late)
    time.sleep(0.05)
    rep = w.report(st, {"head": 33})
    assert set(rep) >= {"window_s", "sim_time_s", "real_time_factor", "lowcmd_received", "lowcmd_per_s",
                        "lowcmd_applied", "lowcmd_superseded", "arm_sdk_received", "command_latency_ms",
                        "physics_late_steps", "physics_step_late_ms", "overruns", "frames"}
    assert rep["sim_time_s"] == pytest.approx(1.0)
    assert rep["real_time_factor"] == pytest.approx(1.0 / rep["window_s"], rel=1e-3)
    assert (rep["lowcmd_received"], rep["lowcmd_applied"], rep["lowcmd_superseded"]) == (40, 30, 10)
    assert rep["lowcmd_per_s"] == pytest.approx(40 / rep["window_s"], rel=1e-2)
    assert rep["command_latency_ms"]["n"] == 4 and rep["command_latency_ms"]["max"] == 10.0
    assert rep["command_latency_ms"]["p50"] == pytest.approx(2.5)
    assert rep["physics_late_steps"] == 1 and rep["physics_step_late_ms"]["max"] == pytest.approx(5.0)
    assert rep["frames"] == {"head": 30}
    empty = StatsWindow(st, {}, 0.002).report(st, {})
    assert empty["command_latency_ms"] == {"p50": None, "p99": None, "max": None, "n": 0}
