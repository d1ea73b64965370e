"""When was a sample sent, on this host's clock? From the sender's own clock, not from when we read it.

A state's age must show a backlog (samples handled late) and a frozen robot (samples still arriving
but no longer advancing), which receipt time cannot: a queued state looks fresh the moment it is read.
The G1 stamps every LowState with ``tick`` (ms of its own clock); Dex3 hand states carry none, so
their DDS source timestamps serve (the same estimator works on any sender clock).

Estimator: ``offset = receipt - sender_time`` is the delivery delay plus the clocks' difference. Its
smallest value so far (the fastest delivery seen) anchors the sender's clock on ours, so
``sent_at = sender_time + min_offset`` and ``age = now - sent_at`` measures delay beyond the fastest
delivery (the fixed part of the link's latency is not included). The minimum may creep up at
``max_drift`` (s per s, default 100 ppm, twice a crystal's tolerance) so that a sender clock running
slightly slow is not mistaken for growing latency; a real backlog grows far faster than that.

A sender whose clock never advances (unitree_mujoco's Python bridge sends ``tick`` 0) gives no
information: ``ticking`` stays False and ``sent_at`` falls back to receipt time (callers warn). A
clock that advanced and then stopped is frozen: its samples age. A clock that goes back (a sender
restarted) re-anchors.
"""

from __future__ import annotations


class SenderClock:
    def __init__(self, unit_s: float, modulus: int | None = 1 << 32, max_drift: float = 1e-4) -> None:
        if unit_s <= 0 or max_drift < 0:
            raise ValueError("SenderClock: unit_s must be > 0 and max_drift >= 0")
        self.unit_s = unit_s
        self.modulus = modulus
        self.max_drift = max_drift
        self.ticking = False  # the sender's clock has advanced at least once
        self.restarts = 0  # times the sender's clock went back (re-anchored)
        self._raw: int | None = None  # last raw counter value
        self._count = 0  # unwrapped counter
        self._offset = 0.0  # min(receipt - sender time), drifting up at max_drift
        self._received = 0.0

    def observe(self, counter: int, received: float) -> float:
        """One sample's sender clock value and its receipt time (monotonic s) -> when it was sent (monotonic s)."""
        if self._raw is None:
            self._anchor(counter, received)
            return received
        step = counter - self._raw
        if self.modulus is not None:
            step %= self.modulus
            if step >= self.modulus // 2:  # went back: the sender restarted
                self.restarts += 1
                self._anchor(counter, received)
                return received
        elif step < 0:
            self.restarts += 1
            self._anchor(counter, received)
            return received
        self._raw = counter
        self._count += step
        if step:
            self.ticking = True
        if not self.ticking:
            self._received = received
            return received
        sender_time = self._count * self.unit_s
        allowed = self._offset + self.max_drift * max(0.0, received - self._received)
        self._offset = min(allowed, received - sender_time)
        self._received = received
        return sender_time + self._offset

    def _anchor(self, counter: int, received: float) -> None:
        self._raw = counter
        self._count = 0
        self._offset = received
        self._received = received
