"""Fast CRC and field access for unitree_hg ``LowCmd_`` / ``LowState_`` (g1-interface.md §2).

The SDK's ``CRC().Crc`` builds a Python list and loops over 522 words per LowState (~150 µs here);
at 500 Hz on a 2-core PC that matters. This module packs the same little-endian layout through
numpy structured arrays and runs the same CRC-32 (poly 0x04C11DB7, init 0xFFFFFFFF, MSB-first,
over little-endian uint32 words excluding the crc word). ``tests/test_robot_codec.py`` checks
it against the SDK's own implementation.

Used by the driver (CRC on every LowCmd, CRC check on every LowState) and by anything that
publishes LowState (the simulator, test publishers).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from . import g1_spec

# -- packed layouts ---------------------------------------------------------------------------
MOTOR_CMD_DTYPE = np.dtype(
    {
        "names": ["mode", "q", "dq", "tau", "kp", "kd", "reserve"],
        "formats": ["u1", "<f4", "<f4", "<f4", "<f4", "<f4", "<u4"],
        "offsets": [0, 4, 8, 12, 16, 20, 24],
        "itemsize": 28,
    }
)
LOWCMD_DTYPE = np.dtype(
    {
        "names": ["mode_pr", "mode_machine", "motor_cmd", "reserve", "crc"],
        "formats": ["u1", "u1", (MOTOR_CMD_DTYPE, (g1_spec.NUM_MOTOR_SLOTS,)), ("<u4", (4,)), "<u4"],
        "offsets": [0, 1, 4, 984, 1000],
        "itemsize": 1004,
    }
)
MOTOR_STATE_DTYPE = np.dtype(
    {
        "names": ["mode", "q", "dq", "ddq", "tau_est", "temperature", "vol", "sensor", "motorstate", "reserve"],
        "formats": ["u1", "<f4", "<f4", "<f4", "<f4", ("<i2", (2,)), "<f4", ("<u4", (2,)), "<u4", ("<u4", (4,))],
        "offsets": [0, 4, 8, 12, 16, 20, 24, 28, 36, 40],
        "itemsize": 56,
    }
)
IMU_DTYPE = np.dtype(
    {
        "names": ["quaternion", "gyroscope", "accelerometer", "rpy", "temperature"],
        "formats": [("<f4", (4,)), ("<f4", (3,)), ("<f4", (3,)), ("<f4", (3,)), "<i2"],
        "offsets": [0, 16, 28, 40, 52],
        "itemsize": 56,
    }
)
LOWSTATE_DTYPE = np.dtype(
    {
        "names": ["version", "mode_pr", "mode_machine", "tick", "imu_state", "motor_state", "wireless_remote", "reserve", "crc"],
        "formats": [
            ("<u4", (2,)), "u1", "u1", "<u4", IMU_DTYPE,
            (MOTOR_STATE_DTYPE, (g1_spec.NUM_MOTOR_SLOTS,)), ("u1", (40,)), ("<u4", (4,)), "<u4",
        ],
        "offsets": [0, 8, 9, 12, 16, 72, 2032, 2072, 2088],
        "itemsize": 2092,
    }
)
assert LOWCMD_DTYPE.itemsize == 1004 and LOWSTATE_DTYPE.itemsize == 2092


# -- CRC-32 (MPEG-2 over byte-swapped words) ----------------------------------------------------
def _load_native() -> Any:
    try:
        from unitree_sdk2py.utils.crc import CRC

        lib = getattr(CRC(), "crc_lib", None)
    except Exception:  # noqa: BLE001 - SDK missing or its .so unavailable on this platform
        return None
    return lib


_NATIVE = _load_native()
_TABLE = np.zeros(256, dtype=np.uint32)
for _i in range(256):
    _c = _i << 24
    for _ in range(8):
        _c = ((_c << 1) ^ 0x04C11DB7) if _c & 0x80000000 else (_c << 1)
    _TABLE[_i] = _c & 0xFFFFFFFF
_TABLE_LIST = [int(x) for x in _TABLE]


def crc32_words(words: np.ndarray) -> int:
    """Unitree's CRC over little-endian uint32 words (already excluding the crc word)."""
    words = np.ascontiguousarray(words, dtype="<u4")
    if _NATIVE is not None:
        ptr = words.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
        return int(_NATIVE.crc32_core(ptr, ctypes.c_uint32(len(words))))
    crc = 0xFFFFFFFF
    for b in words.astype(">u4").tobytes():  # each word fed MSB first
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE_LIST[((crc >> 24) ^ b) & 0xFF]
    return crc


def packed_crc(packed: np.ndarray) -> int:
    """CRC of one packed LOWCMD_DTYPE / LOWSTATE_DTYPE record (the last word, crc, excluded)."""
    words = np.frombuffer(packed.tobytes(), dtype="<u4")
    return crc32_words(words[:-1])


# -- IDL message <-> packed record ------------------------------------------------------------
def pack_lowcmd(cmd: Any) -> np.ndarray:
    rec = np.zeros((), dtype=LOWCMD_DTYPE)
    rec["mode_pr"] = cmd.mode_pr
    rec["mode_machine"] = cmd.mode_machine
    mc = rec["motor_cmd"]
    rows = [(m.mode, m.q, m.dq, m.tau, m.kp, m.kd, m.reserve) for m in cmd.motor_cmd]
    mc[...] = np.array(rows, dtype=MOTOR_CMD_DTYPE)
    rec["reserve"] = cmd.reserve
    rec["crc"] = cmd.crc
    return rec


def lowcmd_crc(cmd: Any) -> int:
    return packed_crc(pack_lowcmd(cmd))


def pack_lowstate(st: Any) -> np.ndarray:
    rec = np.zeros((), dtype=LOWSTATE_DTYPE)
    rec["version"] = st.version
    rec["mode_pr"] = st.mode_pr
    rec["mode_machine"] = st.mode_machine
    rec["tick"] = st.tick
    imu = st.imu_state
    rec["imu_state"] = (imu.quaternion, imu.gyroscope, imu.accelerometer, imu.rpy, imu.temperature)
    rows = [
        (m.mode, m.q, m.dq, m.ddq, m.tau_est, m.temperature, m.vol, m.sensor, m.motorstate, m.reserve)
        for m in st.motor_state
    ]
    rec["motor_state"] = np.array(rows, dtype=MOTOR_STATE_DTYPE)
    wr = st.wireless_remote  # bytes after DDS deserialisation, a list of ints when built locally
    rec["wireless_remote"] = np.frombuffer(wr, np.uint8) if isinstance(wr, (bytes, bytearray)) else wr
    rec["reserve"] = st.reserve
    rec["crc"] = st.crc
    return rec


def lowstate_crc(st: Any) -> int:
    return packed_crc(pack_lowstate(st))
