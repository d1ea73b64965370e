"""Fast CRC and field access for unitree_hg ``LowCmd_`` / ``LowState_`` (g1-interface.md §2).

The SDK's ``CRC().Crc`` builds a Python list and loops over 522 words per LowState (~150 µs here);
at 500 Hz on a 2-core PC that matters. This module packs the same little-endian layout through
numpy structured arrays and runs the same CRC-32 (poly 0x04C11DB7, init 0xFFFFFFFF, MSB-first,
over little-endian uint32 words excluding the crc word). ``tests/test_robot_codec.py`` checks
it against the SDK's own implementation.

It also converts between that C layout and the XCDR1 bytes CycloneDDS carries (``*_to_cdr`` /
``*_from_cdr``), so the driver and the simulator read and write samples as one buffer instead of
through cyclonedds-python's field-by-field IDL serializer (~0.5 ms a message here, a quarter of the
2 ms budget). ``tests/test_robot_codec.py`` checks the bytes against ``serialize()``.

The C layout pads each motor struct's leading ``mode`` byte to 4; XCDR1 aligns only the next
float, and does not pad a struct's end. So the first motor of either message starts earlier on the
wire (LowCmd: at body offset 2 instead of 4; LowState: 70 instead of 72, after the 56-byte IMU struct
that XCDR1 ends at 54), with one pad byte after its ``mode``; from the second motor on the two
layouts agree, shifted by 4 bytes.

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


# -- C layout <-> XCDR1 sample bytes ------------------------------------------------------------
CDR_LE_HEADER = b"\x00\x01\x00\x00"  # XCDR1, little-endian, no options
LOWCMD_CDR_SIZE = 4 + 1000
LOWSTATE_CDR_SIZE = 4 + 2088


def _check_size(what: str, data: bytes | memoryview, size: int) -> None:
    if len(data) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(data)}")


def _record(packed: bytes, dtype: np.dtype) -> np.ndarray:
    """A writable 0-d record over a copy of ``packed``, padding bytes included (the CRC covers them;
    indexing a structured array and copying the scalar would not keep them)."""
    return np.frombuffer(bytearray(packed), dtype=dtype).reshape(())


# Where each message's first motor starts in the XCDR1 body (LowCmd: after mode_pr + mode_machine;
# LowState: after the IMU struct, which XCDR1 ends 2 bytes before the C layout's padded end).
_LOWCMD_HEAD, _LOWSTATE_HEAD = 2, 70


def _to_cdr(packed: bytes, head: int) -> bytes:
    # C: [head bytes][2 pad][mode][3 pad][floats...]  ->  XCDR1: [head bytes][mode][1 pad][floats...]
    return CDR_LE_HEADER + packed[:head] + packed[head + 2 : head + 3] + b"\x00" + packed[head + 6 :]


def _from_cdr(sample: bytes, head: int, dtype: np.dtype) -> np.ndarray:
    body = sample[4:]
    return _record(body[:head] + b"\x00\x00" + body[head : head + 1] + b"\x00\x00\x00" + body[head + 2 :], dtype)


def lowcmd_to_cdr(packed: bytes) -> bytes:
    """C-layout LowCmd_ (1004 bytes) -> the serialized sample (header + 1000-byte body)."""
    _check_size("packed LowCmd_", packed, LOWCMD_DTYPE.itemsize)
    return _to_cdr(packed, _LOWCMD_HEAD)


def lowcmd_from_cdr(sample: bytes) -> np.ndarray:
    """A serialized LowCmd_ sample -> one LOWCMD_DTYPE record (a copy)."""
    _check_size("a serialized rt/lowcmd sample", sample, LOWCMD_CDR_SIZE)
    return _from_cdr(sample, _LOWCMD_HEAD, LOWCMD_DTYPE)


def lowstate_to_cdr(packed: bytes) -> bytes:
    """C-layout LowState_ (2092 bytes) -> the serialized sample (header + 2088-byte body)."""
    _check_size("packed LowState_", packed, LOWSTATE_DTYPE.itemsize)
    return _to_cdr(packed, _LOWSTATE_HEAD)


def lowstate_from_cdr(sample: bytes) -> np.ndarray:
    """A serialized LowState_ sample -> one LOWSTATE_DTYPE record (a copy)."""
    _check_size("a serialized rt/lowstate sample", sample, LOWSTATE_CDR_SIZE)
    return _from_cdr(sample, _LOWSTATE_HEAD, LOWSTATE_DTYPE)


class LowCmdRecord:
    """One reusable LowCmd_: ``set`` the motor fields from arrays, then ``serialize``.

    Both layouts live in buffers made once: the C record the CRC is defined over, and the XCDR1 sample
    that goes on the wire, filled from it through fixed numpy views. ``serialize`` returns that same
    bytearray every time (write it before the next call). ``mode_machine`` is latched from the robot's
    LowState; ``mode_pr`` stays 0 (PR).
    """

    def __init__(self, mode_machine: int, joints: Any = None) -> None:
        self._c = bytearray(LOWCMD_DTYPE.itemsize)
        self.rec = np.frombuffer(self._c, dtype=LOWCMD_DTYPE).reshape(())
        self._words = np.frombuffer(self._c, dtype="<u4")  # the CRC covers every word but the last (the crc)
        self._cdr = bytearray(CDR_LE_HEADER + bytes(LOWCMD_CDR_SIZE - 4))
        self._c8, self._cdr8 = np.frombuffer(self._c, np.uint8), np.frombuffer(self._cdr, np.uint8)
        self.rec["mode_machine"] = mode_machine
        self.joints = np.arange(g1_spec.NUM_JOINTS) if joints is None else np.asarray(joints)
        self._mc = self.rec["motor_cmd"]
        self._mc["mode"][self.joints] = 1

    def set(self, q: np.ndarray, dq: np.ndarray, tau: np.ndarray, kp: np.ndarray, kd: np.ndarray) -> None:
        """Fields over all 29 joints (g1_spec order); only ``joints`` are written."""
        j, mc = self.joints, self._mc
        mc["q"][j] = q[j]
        mc["dq"][j] = dq[j]
        mc["tau"][j] = tau[j]
        mc["kp"][j] = kp[j]
        mc["kd"][j] = kd[j]

    def set_slot_q(self, slot: int, value: float) -> None:
        """A motor slot used as a parameter (arm_sdk: the blend weight in ``motor_cmd[29].q``)."""
        self._mc["q"][slot] = value

    def sent_q(self) -> np.ndarray:
        """The 29 joint targets as float32 went on the wire (what the robot receives)."""
        return self._mc["q"][: g1_spec.NUM_JOINTS].astype(np.float64)

    def serialize(self) -> bytearray:
        """The CRC set and the XCDR1 sample (header + 1000-byte body), in the record's own buffer."""
        self._words[-1] = crc32_words(self._words[:-1])
        c, w, h = self._c8, self._cdr8, _LOWCMD_HEAD  # _to_cdr, into the preallocated sample
        w[4 : 4 + h] = c[:h]  # mode_pr, mode_machine
        w[4 + h] = c[h + 2]  # the first motor's mode (XCDR1 aligns only the float after it)
        w[4 + h + 2 :] = c[h + 6 :]
        return self._cdr


class LowStateRecord:
    """One reusable LowState_ in the C layout; ``fill`` then ``serialize`` (simulators, test publishers)."""

    def __init__(self, mode_machine: int) -> None:
        self.rec = np.zeros((), dtype=LOWSTATE_DTYPE)
        self.rec["mode_machine"] = mode_machine

    def fill(self, *, q: np.ndarray, dq: np.ndarray, ddq: np.ndarray, tau: np.ndarray, quaternion: np.ndarray,
             rpy: np.ndarray, gyroscope: np.ndarray, accelerometer: np.ndarray, tick: int,
             wireless_remote: bytes | list[int], motor_mode: int = 1, temperature: int = 0,
             voltage: float = 0.0, imu_temperature: int = 0) -> None:
        m = self.rec["motor_state"]
        n = g1_spec.NUM_JOINTS
        m["mode"][:n] = motor_mode
        m["q"][:n] = q
        m["dq"][:n] = dq
        m["ddq"][:n] = ddq
        m["tau_est"][:n] = tau
        m["temperature"][:n] = temperature
        m["vol"][:n] = voltage
        imu = self.rec["imu_state"]
        imu["quaternion"] = quaternion
        imu["rpy"] = rpy
        imu["gyroscope"] = gyroscope
        imu["accelerometer"] = accelerometer
        imu["temperature"] = imu_temperature
        self.rec["tick"] = tick & 0xFFFFFFFF
        self.rec["wireless_remote"] = np.frombuffer(bytes(wireless_remote), dtype=np.uint8)

    def serialize(self, crc: int | None = None) -> bytes:
        """Set the CRC (computed, or ``crc`` as given: a simulator that sends 0) and return the sample."""
        self.rec["crc"] = 0
        self.rec["crc"] = packed_crc(self.rec) if crc is None else crc
        return lowstate_to_cdr(self.rec.tobytes())

    def to_idl(self) -> Any:
        """The same message as an unitree_sdk2py ``LowState_`` object."""
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowState_

        return LowState_.deserialize(self.serialize())
