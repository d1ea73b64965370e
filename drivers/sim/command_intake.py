"""Newest-command intake: the simulator does what a G1's motor boards do with a command stream, it applies
the latest command and never replays a queue.

Before every physics step the bridge ``take``s every sample waiting on a command topic (a polled
``drivers/dds_io.RawReader``: no per-message Python, so nothing queues up behind a busy interpreter)
and applies only the newest valid one. Older samples of the same batch are *superseded*: counted,
never parsed, never applied. When the newest sample fails its checks it is counted by reason (bad
CRC, wrong ``mode_machine``, malformed or non-finite), and the next newest one is tried.

Samples are parsed with numpy from their serialized bytes (``hg_codec.lowcmd_from_cdr``, ~20 µs),
not through cyclonedds-python's field-by-field IDL objects (~0.5 ms). Dex3 hand commands (100 Hz)
use the SDK type on the one sample that is applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dit4dit.drivers import g1_spec, hg_codec


@dataclass(frozen=True)
class MotorCommand:
    """One parsed command: per-motor arrays (29 body joints or a Dex3 hand's 7) and its DDS source stamp."""

    q: np.ndarray
    dq: np.ndarray
    kp: np.ndarray
    kd: np.ndarray
    tau: np.ndarray
    enabled: np.ndarray  # bool; mode 0 (or a Dex3 stop) = motor off
    stamp_ns: int  # DDS source timestamp: when the writer sent it, ns since the epoch
    weight: float = 0.0  # rt/arm_sdk blend weight, motor_cmd[29].q
    mode_pr: int = 0  # 1 = AB (raw ankle/waist motors); the sim applies it as PR


@dataclass(frozen=True)
class Rejected:
    """Why a sample was not applied: ``reason`` names its counter, ``message`` is logged once."""

    reason: str
    message: str


Parser = Callable[[bytes, int], "MotorCommand | Rejected"]


@dataclass
class TopicCounts:
    """Per topic: samples taken, applied, superseded by a newer one, and rejected by reason."""

    prefix: str  # the counters' names: f"{prefix}_received", ...
    reasons: tuple[str, ...] = ()
    received: int = 0
    applied: int = 0
    superseded: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {f"{self.prefix}_received": self.received, f"{self.prefix}_applied": self.applied,
               f"{self.prefix}_superseded": self.superseded}
        out.update({f"{self.prefix}_{r}": self.rejected.get(r, 0) for r in self.reasons})
        return out


def newest_valid(samples: list[tuple[bytes, int]], parse: Parser, counts: TopicCounts,
                 warn: Callable[[str, str], None]) -> MotorCommand | None:
    """The newest sample of a batch (oldest first) that ``parse`` accepts, with everything counted."""
    counts.received += len(samples)
    for k in range(len(samples) - 1, -1, -1):
        result = parse(*samples[k])
        if isinstance(result, MotorCommand):
            counts.applied += 1
            counts.superseded += k  # the older ones: never looked at
            return result
        counts.rejected[result.reason] = counts.rejected.get(result.reason, 0) + 1
        warn(f"{counts.prefix}-{result.reason}", result.message)
    return None


class CommandIntake:
    """One command topic: ``newest()`` takes every waiting sample and returns the newest valid command."""

    def __init__(self, reader: Any, parse: Parser, counts: TopicCounts, warn: Callable[[str, str], None]) -> None:
        self.reader, self.parse, self.counts, self.warn = reader, parse, counts, warn

    def newest(self) -> MotorCommand | None:
        samples = self.reader.take()
        return newest_valid(samples, self.parse, self.counts, self.warn) if samples else None

    def close(self) -> None:
        self.reader.close()


# -- parsers: serialized sample + source stamp -> MotorCommand | Rejected ----------------------------
LOWCMD_REASONS = ("bad_crc", "bad_mode_machine", "bad_value")
ARM_SDK_REASONS = ("bad_value",)
HAND_REASONS = ("bad_value",)


def _body_command(rec: np.ndarray, stamp_ns: int, topic: str, weight: float = 0.0) -> MotorCommand | Rejected:
    mc = rec["motor_cmd"][: g1_spec.NUM_JOINTS]
    arrays = [mc[k].astype(np.float64) for k in ("q", "dq", "kp", "kd", "tau")]
    if not (all(np.isfinite(a).all() for a in arrays) and np.isfinite(weight)):
        return Rejected("bad_value", f"ignoring {topic} with NaN or inf values")
    q, dq, kp, kd, tau = arrays
    return MotorCommand(q, dq, kp, kd, tau, mc["mode"] != 0, int(stamp_ns), float(weight), int(rec["mode_pr"]))


def lowcmd_parser(mode_machine: int, check_crc: bool = True) -> Parser:
    """rt/lowcmd as the robot checks it: a valid CRC (unless ``check_crc`` is off) and its own mode_machine."""

    def parse(sample: bytes, stamp_ns: int) -> MotorCommand | Rejected:
        try:
            rec = hg_codec.lowcmd_from_cdr(sample)
        except ValueError as e:
            return Rejected("bad_value", f"ignoring a malformed rt/lowcmd: {e}")
        if check_crc and int(rec["crc"]) != hg_codec.packed_crc(rec):
            return Rejected("bad_crc", "ignoring rt/lowcmd with a bad CRC (set it with unitree_sdk2py CRC)")
        if int(rec["mode_machine"]) != mode_machine:
            return Rejected("bad_mode_machine", f"ignoring rt/lowcmd with mode_machine {int(rec['mode_machine'])}; "
                                                f"this G1 reports {mode_machine} (copy it from rt/lowstate)")
        return _body_command(rec, stamp_ns, "rt/lowcmd")

    return parse


def parse_arm_sdk(sample: bytes, stamp_ns: int) -> MotorCommand | Rejected:
    """rt/arm_sdk: no CRC or mode_machine check (Unitree's own C++ arm_sdk example sends neither)."""
    try:
        rec = hg_codec.lowcmd_from_cdr(sample)
    except ValueError as e:
        return Rejected("bad_value", f"ignoring a malformed rt/arm_sdk: {e}")
    weight = float(rec["motor_cmd"]["q"][g1_spec.ARM_SDK_WEIGHT_SLOT])
    return _body_command(rec, stamp_ns, "rt/arm_sdk", weight)


def hand_parser(side: str) -> Parser:
    """rt/dex3/{side}/cmd: 7 motors in DEX3_JOINTS order; mode bits 4-6 status (0 = off), bit 7 timeout (stop)."""
    topic = g1_spec.TOPIC_DEX3_CMD.format(side=side)

    def parse(sample: bytes, stamp_ns: int) -> MotorCommand | Rejected:
        from dit4dit.drivers.hands import unpack_mode
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandCmd_

        n = len(g1_spec.DEX3_JOINTS)
        try:
            mc = list(HandCmd_.deserialize(sample).motor_cmd)[:n]
        except Exception as e:  # noqa: BLE001 - whatever the IDL layer raises on bad bytes
            return Rejected("bad_value", f"ignoring a malformed {topic}: {e}")
        if len(mc) != n:
            return Rejected("bad_value", f"ignoring {topic} with {len(mc)} motor commands, want {n}")
        a = np.array([(m.q, m.dq, m.kp, m.kd, m.tau) for m in mc], dtype=np.float64)
        if not np.isfinite(a).all():
            return Rejected("bad_value", f"ignoring {topic} with NaN or inf values")
        enabled = np.array([status != 0 and not timeout for _, status, timeout in map(unpack_mode, (m.mode for m in mc))])
        return MotorCommand(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], enabled, int(stamp_ns))

    return parse
