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
