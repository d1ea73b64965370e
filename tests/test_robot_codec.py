"""drivers/hg_codec.py against the SDK's own CRC: same packed layout, same CRC-32, both message kinds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

pytest.importorskip("unitree_sdk2py")

from unitree_sdk2py.idl.default import unitree_hg_msg_dds__LowCmd_, unitree_hg_msg_dds__LowState_  # noqa: E402
from unitree_sdk2py.utils.crc import CRC  # noqa: E402

from dit4dit.drivers import hg_codec  # noqa: E402

f32 = hst.floats(-1e3, 1e3, width=32)


@settings(max_examples=40, deadline=None)
@given(q=hst.lists(f32, min_size=35, max_size=35), kp=f32, mm=hst.integers(0, 255), mode=hst.integers(0, 255))
def test_lowcmd_crc_matches_sdk(q, kp, mm, mode):
    cmd = unitree_hg_msg_dds__LowCmd_()
    cmd.mode_machine = mm
    for i, m in enumerate(cmd.motor_cmd):
        m.q, m.kp, m.kd, m.mode = q[i], kp, abs(kp), mode
    assert hg_codec.lowcmd_crc(cmd) == CRC().Crc(cmd)


@settings(max_examples=40, deadline=None)
@given(q=hst.lists(f32, min_size=35, max_size=35), tick=hst.integers(0, 2**32 - 1),
       remote=hst.binary(min_size=40, max_size=40), temp=hst.integers(-100, 200))  # fmt: skip
def test_lowstate_crc_matches_sdk(q, tick, remote, temp):
    st = unitree_hg_msg_dds__LowState_()
    st.tick = tick
    st.imu_state.quaternion = [1.0, 0.1, -0.2, 0.3]
    st.imu_state.temperature = temp
    for i, m in enumerate(st.motor_state):
        m.q, m.dq, m.temperature, m.motorstate = q[i], -q[i], [temp, temp + 1], i
    st.wireless_remote = list(remote)
    assert hg_codec.lowstate_crc(st) == CRC().Crc(st)
    want = CRC().Crc(st)
    # Deserialised messages carry the remote as bytes: same CRC.
    st.wireless_remote = bytes(remote)
    assert hg_codec.lowstate_crc(st) == want


def test_pure_python_crc_equals_native():
    words = np.random.default_rng(0).integers(0, 2**32, 250, dtype=np.uint64).astype(np.uint32)
    native = hg_codec._NATIVE
    if native is None:
        pytest.skip("the SDK's native CRC library is not available on this platform")
    want = hg_codec.crc32_words(words)
    hg_codec._NATIVE = None
    try:
        assert hg_codec.crc32_words(words) == want
    finally:
        hg_codec._NATIVE = native


# -- the raw-sample path (drivers/dds_io.py + hg_codec CDR conversions) against the SDK's serializer -----
@settings(max_examples=30, deadline=None)
@given(q=hst.lists(f32, min_size=35, max_size=35), mm=hst.integers(0, 255), mode=hst.integers(0, 255),
       reserve=hst.lists(hst.integers(0, 2**32 - 1), min_size=4, max_size=4))  # fmt: skip
def test_lowcmd_cdr_bytes_equal_the_sdk_serializer(q, mm, mode, reserve):
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_

    cmd = unitree_hg_msg_dds__LowCmd_()
    cmd.mode_pr, cmd.mode_machine = 0, mm
    for i, m in enumerate(cmd.motor_cmd):
        m.mode, m.q, m.dq, m.tau, m.kp, m.kd, m.reserve = mode, q[i], -q[i], q[i] / 2, abs(q[i]), 1.0, i
    cmd.reserve = reserve
    cmd.crc = CRC().Crc(cmd)
    sample = cmd.serialize()
    assert hg_codec.lowcmd_to_cdr(hg_codec.pack_lowcmd(cmd).tobytes()) == sample
    rec = hg_codec.lowcmd_from_cdr(sample)
    assert int(rec["crc"]) == hg_codec.packed_crc(rec) == cmd.crc  # padding bytes kept: the CRC still holds
    assert LowCmd_.deserialize(hg_codec.lowcmd_to_cdr(rec.tobytes())).serialize() == sample


def test_lowcmd_record_is_what_the_sdk_would_send():
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_

    rng = np.random.default_rng(2)
    rec = hg_codec.LowCmdRecord(mode_machine=5)
    q, dq, tau, kp, kd = (rng.normal(size=29) for _ in range(5))
    rec.set(q, dq, tau, np.abs(kp), np.abs(kd))
    msg = LowCmd_.deserialize(rec.serialize())
    assert msg.mode_machine == 5 and msg.mode_pr == 0 and msg.crc == CRC().Crc(msg)
    assert [m.mode for m in msg.motor_cmd] == [1] * 29 + [0] * 6
    np.testing.assert_array_equal(rec.sent_q(), np.array([m.q for m in msg.motor_cmd[:29]]))
    np.testing.assert_allclose(rec.sent_q(), q, atol=1e-6)  # float32 on the wire
    arm = hg_codec.LowCmdRecord(mode_machine=5, joints=range(12, 29))
    arm.set(q, dq, tau, np.abs(kp), np.abs(kd))
    arm.set_slot_q(29, 0.25)
    msg = LowCmd_.deserialize(arm.serialize())
    assert [m.mode for m in msg.motor_cmd[:12]] == [0] * 12 and msg.motor_cmd[12].mode == 1
    assert msg.motor_cmd[0].q == 0.0 and msg.motor_cmd[29].q == 0.25


@settings(max_examples=20, deadline=None)
@given(q=hst.lists(f32, min_size=35, max_size=35), tick=hst.integers(0, 2**32 - 1),
       remote=hst.binary(min_size=40, max_size=40))
def test_lowstate_from_cdr_keeps_every_byte_the_crc_covers(q, tick, remote):
    st = unitree_hg_msg_dds__LowState_()
    st.tick = tick
    for i, m in enumerate(st.motor_state):
        m.q, m.dq, m.mode = q[i], -q[i], i % 3
    st.wireless_remote = list(remote)
    st.crc = CRC().Crc(st)
    rec = hg_codec.lowstate_from_cdr(st.serialize())
    assert int(rec["crc"]) == hg_codec.packed_crc(rec) == st.crc
    assert int(rec["tick"]) == tick and rec["wireless_remote"].tobytes() == remote
    np.testing.assert_array_equal(rec["motor_state"]["q"], np.array(q, dtype=np.float32))


def test_wrong_sized_samples_are_refused_by_name():
    with pytest.raises(ValueError, match="rt/lowstate sample must be 2092 bytes, got 10"):
        hg_codec.lowstate_from_cdr(b"\x00" * 10)
    with pytest.raises(ValueError, match="rt/lowcmd sample must be 1004 bytes"):
        hg_codec.lowcmd_from_cdr(b"\x00" * 1003)
