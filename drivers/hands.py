"""Dex3-1 hands (7 DoF each) on ``rt/dex3/{left,right}/cmd|state`` (g1-interface.md §6.1).

Each motor command's ``mode`` byte packs: bits 0-3 motor id (0-6), bits 4-6 status (1 = in use),
bit 7 timeout. A stopped hand is sent timeout = 1 with kp = kd = 0. Motor order in the message is
``g1_spec.DEX3_JOINTS`` (thumb_0..2, index_0..1, middle_0..1; the joint table is ``g1_spec.HAND_JOINTS``,
whose comment records where the sources disagree: index and middle share limits, so only the labels are at
stake if a unit orders them the other way).

The hands are sent with G1Robot's commands at ``hand_rate_hz`` (100 Hz, as Unitree's tools); this
module only holds the targets, builds messages and parses state. A state's ``stamp`` is when the hand
sent it (the driver maps the sample's DDS source timestamp onto this host's clock), so ``age_s``
shows a backlog or a silent hand.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import g1_spec

SIDES = ("left", "right")
NUM_HAND_JOINTS = len(g1_spec.DEX3_JOINTS)
DEX3_DEFAULT_KP = 1.5
DEX3_DEFAULT_KD = 0.2


def pack_mode(motor_id: int, status: int = 0x01, timeout: bool = False) -> int:
    """The Dex3 ``MotorCmd_.mode`` byte."""
    if not 0 <= motor_id <= 0x0F:
        raise ValueError(f"Dex3 motor id must be 0..15, got {motor_id}")
    if not 0 <= status <= 0x07:
        raise ValueError(f"Dex3 status must be 0..7, got {status}")
    return (motor_id & 0x0F) | ((status & 0x07) << 4) | (int(bool(timeout)) << 7)


def unpack_mode(mode: int) -> tuple[int, int, bool]:
    """(motor id, status, timeout) from a Dex3 mode byte."""
    return mode & 0x0F, (mode >> 4) & 0x07, bool(mode >> 7 & 1)


@dataclass
class HandState:
    q: np.ndarray  # (7,) rad, DEX3_JOINTS order
    dq: np.ndarray
    tau: np.ndarray
    stamp: float  # time.monotonic() at which the hand sent it (drivers/sender_clock.py)
    age_s: float


class Dex3Hand:
    """Targets and state of one hand. Thread-safe: the controller writes, the publisher reads."""

    def __init__(self, side: str) -> None:
        if side not in SIDES:
            raise ValueError(f"hand side must be one of {SIDES}, got {side!r}")
        self.side = side
        self.cmd_topic = g1_spec.TOPIC_DEX3_CMD.format(side=side)
        self.state_topic = g1_spec.TOPIC_DEX3_STATE.format(side=side)
        self.lower = g1_spec.DEX3_LOWER[side]
        self.upper = g1_spec.DEX3_UPPER[side]
        self._lock = threading.Lock()
        self._q = np.zeros(NUM_HAND_JOINTS)
        self._kp = np.zeros(NUM_HAND_JOINTS)
        self._kd = np.zeros(NUM_HAND_JOINTS)
        self._active = False  # False: send timeout/stop (kp = kd = 0)
        self._state: HandState | None = None

    def command(self, q: np.ndarray, kp: float | np.ndarray = DEX3_DEFAULT_KP, kd: float | np.ndarray = DEX3_DEFAULT_KD) -> None:
        """Target joint positions (7,), clamped to the hand's limits."""
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (NUM_HAND_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"{self.side} hand q must be 7 finite values ({', '.join(g1_spec.DEX3_JOINTS)}), got {q!r}")
        kp_a = np.broadcast_to(np.asarray(kp, dtype=np.float64), (NUM_HAND_JOINTS,)).copy()
        kd_a = np.broadcast_to(np.asarray(kd, dtype=np.float64), (NUM_HAND_JOINTS,)).copy()
        if np.any(kp_a < 0) or np.any(kd_a < 0) or not (np.all(np.isfinite(kp_a)) and np.all(np.isfinite(kd_a))):
            raise ValueError(f"{self.side} hand gains must be finite and >= 0, got kp={kp!r} kd={kd!r}")
        with self._lock:
            self._q = np.clip(q, self.lower, self.upper)
            self._kp, self._kd = kp_a, kd_a
            self._active = True

    def stop(self) -> None:
        """Release the hand: timeout bit set, kp = kd = 0."""
        with self._lock:
            self._active = False

    def fill(self, msg: Any) -> None:
        """Write the current target into a HandCmd_ (7 motor_cmd)."""
        with self._lock:
            q, kp, kd, active = self._q, self._kp, self._kd, self._active
        for i in range(NUM_HAND_JOINTS):
            m = msg.motor_cmd[i]
            m.mode = pack_mode(i, 0x01, timeout=not active)
            m.q = float(q[i])
            m.dq = 0.0
            m.tau = 0.0
            m.kp = float(kp[i]) if active else 0.0
            m.kd = float(kd[i]) if active else 0.0

    def on_state(self, msg: Any, stamp: float | None = None) -> None:
        """A HandState_ sent at ``stamp`` (monotonic s; None = now)."""
        ms = msg.motor_state[:NUM_HAND_JOINTS]
        st = HandState(
            q=np.array([m.q for m in ms]),
            dq=np.array([m.dq for m in ms]),
            tau=np.array([m.tau_est for m in ms]),
            stamp=time.monotonic() if stamp is None else stamp,
            age_s=0.0,
        )
        with self._lock:
            self._state = st

    def state(self) -> HandState | None:
        """Latest state (None before the first message), with its age."""
        with self._lock:
            st = self._state
        if st is None:
            return None
        return HandState(st.q.copy(), st.dq.copy(), st.tau.copy(), st.stamp, time.monotonic() - st.stamp)
