"""Wireless-remote bytes (g1-interface.md §5.3): parse/pack both ways, combos, loss detection."""

from __future__ import annotations

import math
import struct

import pytest
from dit4dit.drivers.remote import BUTTONS, Remote, RemoteError, RemoteMonitor, combo_mask
from hypothesis import given
from hypothesis import strategies as st

f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(keys=st.integers(0, 0xFFFF), lx=f32, ly=f32, rx=f32, ry=f32, l2=f32, head=st.binary(min_size=2, max_size=2))
def test_pack_parse_round_trip(keys, lx, ly, rx, ry, l2, head):
    r = Remote(keys=keys, lx=lx, ly=ly, rx=rx, ry=ry, l2=l2, head=head)
    raw = r.pack()
    assert len(raw) == 40 and raw[24:] == bytes(16)
    assert Remote.parse(raw) == r
    assert Remote.parse(r.as_list()) == r  # the IDL hands us a list of ints


@given(raw=st.binary(min_size=24, max_size=24))
def test_parse_pack_round_trip_bytes(raw):
    # Any 24 used bytes (NaNs included) survive parse -> pack bit-exactly, except NaN payloads.
    full = raw + bytes(16)
    r = Remote.parse(full)
    floats = struct.unpack("<5f", raw[4:24])
    if not any(math.isnan(f) for f in floats):
        assert r.pack() == full


def test_byte_offsets_match_reference_layout():
    raw = bytearray(40)
    raw[2] = 0b0010_0001  # R1 (bit 0), L2 (bit 5)
    raw[3] = 0b0000_0010  # B (bit 9)
    struct.pack_into("<f", raw, 4, 0.25)  # lx
    struct.pack_into("<f", raw, 8, -0.5)  # rx
    struct.pack_into("<f", raw, 12, 0.75)  # ry
    struct.pack_into("<f", raw, 16, 1.0)  # L2 analog
    struct.pack_into("<f", raw, 20, -1.0)  # ly
    r = Remote.parse(raw)
    assert r.buttons == {"R1", "L2", "B"}
    assert (r.lx, r.rx, r.ry, r.l2, r.ly) == (0.25, -0.5, 0.75, 1.0, -1.0)
    assert r.pack() == bytes(raw)


@pytest.mark.parametrize("bit,name", list(enumerate(BUTTONS)))
def test_each_bit_names_one_key(bit, name):
    r = Remote(keys=1 << bit)
    assert r.buttons == {name}
    assert r.pressed(name) and r.pressed(name.upper()) and r.pressed(name.lower())
    assert Remote.from_buttons([name]).keys == 1 << bit


def test_combination_matching():
    r = Remote.from_buttons(["L2", "B", "up"])
    assert r.matches("L2+B") and r.matches("l2 + b") and r.matches(["up"])
    assert not r.matches("L2+R2")
    assert combo_mask("L2+B") == (1 << 5) | (1 << 9)
    assert combo_mask("F3") == combo_mask("F2")  # the Python SDK's name for bit 7
    with pytest.raises(RemoteError, match="unknown remote key 'Z'"):
        r.matches("L2+Z")
    with pytest.raises(RemoteError, match="empty"):
        combo_mask("")


def test_bad_lengths_are_rejected():
    with pytest.raises(RemoteError, match="40 bytes, got 24"):
        Remote.parse(bytes(24))
    with pytest.raises(RemoteError, match="16 bits"):
        Remote(keys=1 << 16)


def test_sticks_deadzone_and_nan():
    r = Remote(lx=0.005, ly=2.0, rx=float("nan"), ry=-0.5)
    assert r.sticks(deadzone=0.01) == (0.0, 1.0, 0.0, -0.5)


def test_remote_lost_after_all_zero_for_timeout():
    mon = RemoteMonitor(lost_after_s=3.0)
    mon.update(Remote(lx=0.1), now=0.0)
    assert not mon.lost(now=0.0)
    mon.update(Remote(), now=1.0)
    assert not mon.lost(now=3.9)
    assert mon.lost(now=4.0)
    mon.update(Remote(ly=0.01), now=4.1)  # any non-zero byte means the remote is back
    assert not mon.lost(now=10.0)


def test_rising_edge_of_combo():
    mon = RemoteMonitor()
    mon.update(Remote.from_buttons(["L2"]), now=0)
    assert not mon.rose("L2+B")
    mon.update(Remote.from_buttons(["L2", "B"]), now=0.002)
    assert mon.rose("L2+B")
    mon.update(Remote.from_buttons(["L2", "B"]), now=0.004)
    assert not mon.rose("L2+B")
