"""rt/lowstate at 500 Hz from Python without the IDL serializer's cost.

cyclonedds-python serialises a ``unitree_hg LowState_`` (35 motor structs) field by field in
Python: ~320 µs a message here, a sixth of the 2 ms budget, before the CRC and the physics.
This module keeps one packed record (hg_codec's C layout, which the CRC is defined over),
fills it from numpy arrays, computes the CRC, and converts it to the XCDR1 bytes the IDL
serializer would produce — byte-identical, checked by tests/test_sim_bridge.py against
``LowState_.serialize()`` — then hands them to CycloneDDS's writer as one buffer.

The C layout pads ``IMUState_`` to 56 bytes and each ``MotorState_``'s ``mode`` to 4; XCDR1
does not pad a struct's end, so the first motor starts at body offset 70 instead of 72, with
one pad byte after its ``mode`` instead of three. From the second motor on both agree again
(shifted by 4 bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from dit4dit.drivers import g1_spec, hg_codec

CDR_LE_HEADER = b"\x00\x01\x00\x00"  # XCDR1, little-endian, no options


def packed_to_cdr(packed: bytes) -> bytes:
    """C-layout LowState_ bytes (2092) -> the serialized sample (4-byte header + 2088-byte body)."""
    if len(packed) != hg_codec.LOWSTATE_DTYPE.itemsize:
        raise ValueError(f"packed LowState_ must be {hg_codec.LOWSTATE_DTYPE.itemsize} bytes, got {len(packed)}")
    return CDR_LE_HEADER + packed[0:70] + packed[72:73] + b"\x00" + packed[76:]


class LowStateRecord:
    """One reusable LowState_ in the C layout; ``fill`` then ``serialize``."""

    def __init__(self, mode_machine: int) -> None:
        self.rec = np.zeros((), dtype=hg_codec.LOWSTATE_DTYPE)
        self.rec["mode_machine"] = mode_machine
        self._motors = self.rec["motor_state"][: g1_spec.NUM_JOINTS]

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

    def serialize(self) -> bytes:
        """Set the CRC and return the serialized sample (what ``LowState_.serialize()`` gives)."""
        self.rec["crc"] = 0
        self.rec["crc"] = hg_codec.packed_crc(self.rec)
        return packed_to_cdr(self.rec.tobytes())

    def to_idl(self) -> Any:
        """The same message as an unitree_sdk2py ``LowState_`` object."""
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowState_

        return LowState_.deserialize(self.serialize())


class LowStateWriter:
    """Publishes serialized LowState_ samples on ``rt/lowstate`` through CycloneDDS.

    Call after ``ChannelFactoryInitialize(domain, interface)`` so the domain carries the SDK's
    interface configuration. Falls back to the SDK's ChannelPublisher (deserialising the bytes)
    if this CycloneDDS build lacks the raw write entry point.
    """

    def __init__(self, domain: int, topic: str = g1_spec.TOPIC_LOWSTATE) -> None:
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowState_

        self._type = LowState_
        try:
            from cyclonedds._clayer import ddspy_write
            from cyclonedds.domain import DomainParticipant
            from cyclonedds.pub import DataWriter
            from cyclonedds.topic import Topic
        except ImportError:
            from unitree_sdk2py.core.channel import ChannelPublisher

            self._raw = None
            self._pub = ChannelPublisher(topic, LowState_)
            self._pub.Init()
            return
        self._participant = DomainParticipant(domain)
        self._topic = Topic(self._participant, topic, LowState_)
        self._writer = DataWriter(self._participant, self._topic)
        self._raw = ddspy_write

    @property
    def fast(self) -> bool:
        return self._raw is not None

    def write(self, sample: bytes) -> None:
        if self._raw is not None:
            ret = self._raw(self._writer._ref, sample)
            if ret < 0:
                raise RuntimeError(f"CycloneDDS refused an rt/lowstate sample (error {ret})")
        else:
            self._pub.Write(self._type.deserialize(sample))
