"""The G1 wireless remote as it arrives in ``LowState_.wireless_remote`` (40 bytes).

Byte layout (shared/reference/g1-interface.md §5.3):

====== =========================================================
bytes  content
====== =========================================================
0-1    ``head`` (undocumented; kept as-is for round trips)
2-3    16-bit key bitfield, little-endian
4-7    ``lx`` float32 (left stick X)
8-11   ``rx`` float32 (right stick X)
12-15  ``ry`` float32 (right stick Y)
16-19  ``l2`` float32 (analog L2 trigger)
20-23  ``ly`` float32 (left stick Y, forward positive)
24-39  unused (zero)
====== =========================================================

Key bits, 0..15: R1, L1, start, select, R2, L2, F1, F2, A, B, X, Y, up, right, down, left.

A combination such as ``"L2+B"`` matches when every named key is held (other keys may be held too).
Remote loss follows Unitree's ``dds_wrapper``: all 40 bytes zero for a while (3 s by default).
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

REMOTE_NUM_BYTES = 40
REMOTE_LOST_AFTER_S = 3.0

# Bit index -> canonical key name.
BUTTONS: tuple[str, ...] = (
    "R1", "L1", "start", "select", "R2", "L2", "F1", "F2",
    "A", "B", "X", "Y", "up", "right", "down", "left",
)  # fmt: skip
_BIT_BY_NAME: dict[str, int] = {name.lower(): bit for bit, name in enumerate(BUTTONS)}
# The Python SDK example calls bit 7 "F3".
_BIT_BY_NAME["f3"] = 7

_LAYOUT = struct.Struct("<2sH5f16x")  # head, keys, lx, rx, ry, l2, ly, 16 unused bytes
assert _LAYOUT.size == REMOTE_NUM_BYTES


class RemoteError(ValueError):
    """Malformed remote bytes or an unknown key name."""


def button_bit(name: str) -> int:
    """Bit index of a key name (case-insensitive), e.g. ``"L2"`` -> 5."""
    try:
        return _BIT_BY_NAME[name.strip().lower()]
    except KeyError:
        raise RemoteError(f"unknown remote key {name!r}; known keys: {', '.join(BUTTONS)}") from None


def combo_mask(combo: str | Iterable[str]) -> int:
    """Bit mask of a key combination: ``"L2+B"`` or ``["L2", "B"]``."""
    names = combo.split("+") if isinstance(combo, str) else list(combo)
    names = [n for n in names if n.strip()]
    if not names:
        raise RemoteError(f"empty remote key combination {combo!r}; write keys joined by '+', e.g. 'L2+B'")
    mask = 0
    for name in names:
        mask |= 1 << button_bit(name)
    return mask


def _f32(x: float) -> float:
    """Round to the nearest float32, so a Remote compares equal after a pack/parse round trip."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


@dataclass(frozen=True)
class Remote:
    """One snapshot of the wireless remote: key bitfield, sticks in [-1, 1], analog L2."""

    keys: int = 0  # 16-bit bitfield, bit i = BUTTONS[i]
    lx: float = 0.0
    ly: float = 0.0
    rx: float = 0.0
    ry: float = 0.0
    l2: float = 0.0
    head: bytes = field(default=b"\x00\x00")

    def __post_init__(self) -> None:
        if not 0 <= self.keys <= 0xFFFF:
            raise RemoteError(f"remote keys must fit 16 bits, got {self.keys:#x}")
        if len(self.head) != 2:
            raise RemoteError(f"remote head must be 2 bytes, got {len(self.head)}")
        for name in ("lx", "ly", "rx", "ry", "l2"):
            object.__setattr__(self, name, _f32(float(getattr(self, name))))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | bytearray | Iterable[int]) -> Remote:
        """Parse the 40 ``wireless_remote`` bytes (bytes or the IDL's list of uint8)."""
        raw = bytes(data)
        if len(raw) != REMOTE_NUM_BYTES:
            raise RemoteError(f"wireless_remote must be {REMOTE_NUM_BYTES} bytes, got {len(raw)}")
        head, keys, lx, rx, ry, l2, ly = _LAYOUT.unpack(raw)
        return cls(keys=keys, lx=lx, ly=ly, rx=rx, ry=ry, l2=l2, head=head)

    @classmethod
    def from_buttons(cls, buttons: Iterable[str] = (), **sticks: float) -> Remote:
        """A remote with the named keys held, e.g. ``Remote.from_buttons(["L2", "B"], ly=0.5)``."""
        keys = 0
        for name in buttons:
            keys |= 1 << button_bit(name)
        return cls(keys=keys, **sticks)

    # -- serialisation --------------------------------------------------------------------------
    def pack(self) -> bytes:
        """The 40 bytes as the robot (or dit4dit-sim) puts them in ``LowState_.wireless_remote``."""
        return _LAYOUT.pack(self.head, self.keys, self.lx, self.rx, self.ry, self.l2, self.ly)

    def as_list(self) -> list[int]:
        """The 40 bytes as the IDL's ``uint8[40]`` list."""
        return list(self.pack())

    # -- queries --------------------------------------------------------------------------------
    @property
    def buttons(self) -> frozenset[str]:
        """Names of the keys held."""
        return frozenset(BUTTONS[b] for b in range(16) if self.keys >> b & 1)

    def pressed(self, name: str) -> bool:
        return bool(self.keys >> button_bit(name) & 1)

    def matches(self, combo: str | Iterable[str]) -> bool:
        """True when every key of ``combo`` ("L2+B") is held."""
        mask = combo_mask(combo)
        return self.keys & mask == mask

    @property
    def is_zero(self) -> bool:
        """All 40 bytes zero: what the robot reports when no remote is paired/connected."""
        return self.keys == 0 and self.head == b"\x00\x00" and not any((self.lx, self.ly, self.rx, self.ry, self.l2))

    def sticks(self, deadzone: float = 0.0) -> tuple[float, float, float, float]:
        """(lx, ly, rx, ry), each clamped to [-1, 1], with |v| < deadzone set to 0."""

        def clean(v: float) -> float:
            v = 0.0 if math.isnan(v) else max(-1.0, min(1.0, v))  # NaN from a corrupt frame -> 0
            return 0.0 if abs(v) < deadzone else v

        return clean(self.lx), clean(self.ly), clean(self.rx), clean(self.ry)


class RemoteMonitor:
    """Tracks the remote across state frames: remote loss and rising edges of combinations.

    ``update`` is called with every received remote. ``lost`` is True once every frame for
    ``lost_after_s`` has been all-zero (Unitree's rule), or before any non-zero frame was seen
    for that long after the first update.
    """

    def __init__(self, lost_after_s: float = REMOTE_LOST_AFTER_S) -> None:
        if lost_after_s <= 0:
            raise ValueError(f"lost_after_s must be > 0, got {lost_after_s}")
        self.lost_after_s = lost_after_s
        self._zero_since: float | None = None
        self._last = Remote()
        self._prev = Remote()

    def update(self, remote: Remote, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._prev, self._last = self._last, remote
        if remote.is_zero:
            if self._zero_since is None:
                self._zero_since = now
        else:
            self._zero_since = None

    @property
    def remote(self) -> Remote:
        return self._last

    def lost(self, now: float | None = None) -> bool:
        if self._zero_since is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._zero_since >= self.lost_after_s

    def rose(self, combo: str | Iterable[str]) -> bool:
        """True on the update where ``combo`` became fully held (it was not on the previous one)."""
        return self._last.matches(combo) and not self._prev.matches(combo)
