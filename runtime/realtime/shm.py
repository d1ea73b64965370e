"""Shared memory between the controller and the real-time process, with no lock either side can block on.

One ``multiprocessing.shared_memory`` segment holds three records, each written by one side only:

* ``state``  (real-time -> controller): the newest robot state, with its robot-clock stamp;
* ``status`` (real-time -> controller): what was last sent on the wire, damping, counters, histograms;
* ``plan``   (controller -> real-time): the next fraction of a second of joint targets, sampled, with gains
  and the controller's requests (damp, shut down).

Each record is a numpy structured array behind a sequence number and a CRC-32 of its payload: the writer
makes the sequence odd, writes, stores the CRC, makes it even again; a reader copies the payload and
keeps it only if the sequence was even and unchanged and the CRC matches. A lock would let a descheduled
controller stall the 500 Hz loop; a bare seqlock relies on the CPU's store order (x86 keeps it, the G1's
ARM PC need not). The checksum catches a torn read on any memory model, for ~1 us per KB.
"""

from __future__ import annotations

import secrets
import zlib
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from dit4dit.drivers import g1_spec

N = g1_spec.NUM_JOINTS
MAX_KNOTS = 160  # plan samples; at 4 ms spacing 0.64 s of look-ahead at most
MESSAGE_BYTES = 480
AGE_BIN_S = 0.00025  # state-age histogram: 0.25 ms bins ...
AGE_BINS = 400  # ... up to 100 ms, the last bin holding everything older
PERIOD_BIN_S = 0.0001  # tick-period histogram: 0.1 ms bins ...
PERIOD_BINS = 500  # ... up to 50 ms

HEADER = np.dtype([("seq", "<u8"), ("crc", "<u4"), ("size", "<u4")])

STATE = np.dtype([
    ("count", "<u8"),  # states handled (0: none yet)
    ("q", "<f8", N), ("dq", "<f8", N), ("tau", "<f8", N), ("temperature", "<f8", (N, 2)), ("motor_error", "<u4", N),
    ("quat", "<f8", 4), ("rpy", "<f8", 3), ("gyro", "<f8", 3), ("acc", "<f8", 3), ("imu_temp", "<f8"),
    ("remote", "u1", 40), ("remote_lost", "u1"), ("tick", "<u4"), ("mode_machine", "<u4"),
    ("stamp", "<f8"),  # monotonic s at which the robot sent it (from its tick; receipt when tickless)
    ("received", "<f8"),  # monotonic s at which the real-time process took it
    ("tick_clock", "u1"),  # 1: stamp from the robot's tick; 0: from receipt (tickless stream)
])  # fmt: skip

# Real-time process phases (status.phase)
STARTING, WAITING, RUNNING, DAMPED, FAILED, STOPPED = range(6)
PHASES = ("STARTING", "WAITING", "RUNNING", "DAMPED", "FAILED", "STOPPED")
# Why it damped (status.damp_kind)
NOT_DAMPED, DAMP_FAULT, DAMP_ESTOP, DAMP_REQUESTED, DAMP_CONTROLLER_SILENT, DAMP_CONTROLLER_GONE = range(6)

STATUS = np.dtype([
    ("phase", "u1"), ("damp_kind", "u1"), ("message", f"S{MESSAGE_BYTES}"),
    ("pid", "<u4"), ("mode_machine", "<u4"), ("rt_priority", "<u4"),
    ("sent_q", "<f8", N), ("sent_kp", "<f8", N), ("sent_kd", "<f8", N),  # the last LowCmd, float32 values
    ("sent_stamp", "<f8"),  # its source timestamp (monotonic s)
    ("plan_seq", "<u8"),  # the plan in force
    ("arm_sdk_weight", "<f8"),
    ("ticks", "<u8"), ("late_ticks", "<u8"), ("missed_deadlines", "<u8"), ("max_late_s", "<f8"),
    ("published", "<u8"), ("publish_errors", "<u8"), ("plan_underruns", "<u8"),
    ("states_received", "<u8"), ("states_skipped", "<u8"), ("crc_errors", "<u8"),
    ("commands", "<u8"), ("step_limited", "<u8"), ("position_clamped", "<u8"), ("rejected", "<u8"),
    ("age_hist", "<u4", AGE_BINS), ("age_max_s", "<f8"),  # state age at use, every tick
    ("period_hist", "<u4", PERIOD_BINS), ("period_max_s", "<f8"),  # tick period
])  # fmt: skip

# Controller requests (plan.request)
REQ_NONE, REQ_DAMP, REQ_SHUTDOWN = range(3)

PLAN = np.dtype([
    ("written_at", "<f8"),  # controller heartbeat (monotonic s)
    ("request", "u1"), ("message", f"S{MESSAGE_BYTES}"),  # damp / shut down, with the reason
    ("n", "<u4"),  # knots in use (0: no plan yet: the robot is sent damping)
    ("t", "<f8", MAX_KNOTS),  # knot times (monotonic s), increasing
    ("q", "<f8", (MAX_KNOTS, N)),  # joint targets at the knots (29 joints, g1_spec order)
    ("kp", "<f8", N), ("kd", "<f8", N),
])  # fmt: skip


def _align(n: int) -> int:
    return (n + 63) // 64 * 64


class SeqRecord:
    """One record in the segment: ``write`` (one writer) and ``read`` (any number of readers)."""

    def __init__(self, buf: memoryview, offset: int, dtype: np.dtype) -> None:
        self.dtype = dtype
        self._header = np.ndarray((), HEADER, buffer=buf, offset=offset)
        self._payload = np.ndarray((), dtype, buffer=buf, offset=offset + HEADER.itemsize)
        self._raw = np.ndarray(dtype.itemsize, np.uint8, buffer=buf, offset=offset + HEADER.itemsize)
        self.nbytes = HEADER.itemsize + dtype.itemsize

    @property
    def seq(self) -> int:
        return int(self._header["seq"])

    def write(self, rec: np.ndarray) -> None:
        """Publish ``rec`` (a 0-d array of this record's dtype)."""
        h = self._header
        h["seq"] = h["seq"] + 1  # odd: being written
        self._payload[...] = rec
        h["crc"] = zlib.crc32(self._raw)
        h["seq"] = h["seq"] + 1

    def read(self, tries: int = 3) -> np.ndarray | None:
        """A consistent copy, or None if the writer was mid-write on every try (keep the previous copy)."""
        h = self._header
        for _ in range(tries):
            seq = int(h["seq"])
            if seq & 1:
                continue
            raw = self._raw.copy()
            crc = int(h["crc"])
            if int(h["seq"]) == seq and zlib.crc32(raw) == crc:
                return raw.view(self.dtype).reshape(())
        return None


class Channel:
    """The segment: ``Channel.create()`` in the controller, ``Channel.attach(name)`` in the real-time process."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.shm = shm
        self.owner = owner
        offset = 0
        records = []
        for dtype in (STATE, STATUS, PLAN):
            records.append(SeqRecord(shm.buf, offset, dtype))
            offset = _align(offset + records[-1].nbytes)
        self.state, self.status, self.plan = records

    @staticmethod
    def size() -> int:
        return sum(_align(HEADER.itemsize + d.itemsize) for d in (STATE, STATUS, PLAN))

    @classmethod
    def create(cls) -> Channel:
        shm = shared_memory.SharedMemory(name=f"dit4dit_rt_{secrets.token_hex(6)}", create=True, size=cls.size())
        shm.buf[:] = bytes(len(shm.buf))
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> Channel:
        shm = shared_memory.SharedMemory(name=name)
        # The controller created it and unlinks it; this process's resource tracker must not (Python < 3.13).
        try:
            resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - already untracked on newer Pythons
            pass
        return cls(shm, owner=False)

    @property
    def name(self) -> str:
        return self.shm.name

    def close(self) -> None:
        # numpy views into the buffer must go before the mapping can be closed
        for rec in (self.state, self.status, self.plan):
            rec._header = rec._payload = rec._raw = None  # type: ignore[assignment]
        self.shm.close()
        if self.owner:
            try:
                self.shm.unlink()
            except FileNotFoundError:
                pass


def new(dtype: np.dtype) -> np.ndarray:
    """A zeroed 0-d record of ``dtype`` to fill and ``write``."""
    return np.zeros((), dtype)


def text(value: Any) -> str:
    """A message field as a str."""
    return bytes(value).rstrip(b"\0").decode("utf-8", "replace")


def encode(message: str) -> bytes:
    """A str for a message field (cut to fit, on a character boundary)."""
    raw = message.encode("utf-8")[:MESSAGE_BYTES]
    return raw.decode("utf-8", "ignore").encode("utf-8")


def percentile_from_hist(hist: np.ndarray, bin_s: float, q: float) -> float:
    """The q-th percentile (0..100) of a histogram with bins of ``bin_s``, as the upper edge of its bin."""
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    k = int(np.searchsorted(np.cumsum(hist), q / 100.0 * total))
    return (min(k, len(hist) - 1) + 1) * bin_s
