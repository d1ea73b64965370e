"""Raw CycloneDDS samples on the Unitree SDK's domain: poll for the newest, write with a source timestamp.

The SDK's ``ChannelSubscriber(handler)`` runs a Python listener per message on CycloneDDS's receive
thread and deserializes each sample field by field (~0.5 ms for a LowState_ here). When Python falls
behind, UDP datagrams queue in the socket and are then handled one by one, in order: a controller
acting on state seconds old. Here nothing runs per message: CycloneDDS's C threads store samples in
the reader's history (``KeepLast(depth)``), and the caller ``take``s them all when it wants the
newest, as serialized bytes it parses itself (drivers/hg_codec.py). Nothing can back up beyond
``depth`` samples.

Writers stamp each sample with a DDS source timestamp. :func:`source_ns` maps this host's monotonic
clock onto the epoch once per process, so consecutive timestamps differ by exactly the monotonic time
between the writes the caller computed its limits for (tests record them on the wire).

Call these after ``ChannelFactoryInitialize`` (``g1_robot.init_dds``): the participant is the SDK's,
with its network-interface configuration.
"""

from __future__ import annotations

import threading
import time
from typing import Any

# Fixed for the life of the process: source timestamps are monotonic time on the epoch's scale.
_EPOCH_MINUS_MONOTONIC_NS = time.time_ns() - time.monotonic_ns()

_lock = threading.RLock()
_participants: dict[int, Any] = {}
_topics: dict[tuple[int, str], Any] = {}


def source_ns(monotonic_ns: int) -> int:
    """The DDS source timestamp (ns since the epoch) for a ``time.monotonic_ns()`` instant."""
    return _EPOCH_MINUS_MONOTONIC_NS + monotonic_ns


def participant(domain: int) -> Any:
    """The SDK's DomainParticipant for ``domain`` (after ChannelFactoryInitialize), else one of our own."""
    from cyclonedds.domain import DomainParticipant
    from unitree_sdk2py.core.channel import ChannelFactory

    with _lock:
        if domain not in _participants:
            sdk = getattr(ChannelFactory, "_ChannelFactory__participant", None)
            sdk_domain = getattr(sdk, "domain_id", None) if sdk is not None else None
            _participants[domain] = sdk if sdk is not None and sdk_domain in (None, domain) else DomainParticipant(domain)
        return _participants[domain]


def _topic(domain: int, name: str, idl_type: Any) -> Any:
    from cyclonedds.topic import Topic

    with _lock:
        key = (domain, name)
        if key not in _topics:
            _topics[key] = Topic(participant(domain), name, idl_type)
        return _topics[key]


class RawReader:
    """A polled reader: no listener, no per-message Python. ``take()`` empties the history, newest last."""

    def __init__(self, domain: int, topic: str, idl_type: Any, depth: int = 16, reliable: bool = False) -> None:
        """``reliable``: ask writers to resend what was lost (recorders); best effort suits a fresh-state reader."""
        from cyclonedds.core import Policy, Qos
        from cyclonedds.sub import DataReader

        self.topic = topic
        reliability = Policy.Reliability.Reliable(0) if reliable else Policy.Reliability.BestEffort
        qos = Qos(Policy.History.KeepLast(depth), reliability)
        self._reader = DataReader(participant(domain), _topic(domain, topic, idl_type), qos=qos)
        self._depth = depth
        self._lock = threading.Lock()

    def take(self) -> list[tuple[bytes, int]]:
        """Every sample waiting, oldest first, as (serialized bytes, source timestamp ns)."""
        from cyclonedds._clayer import ddspy_take
        from cyclonedds.core import InstanceState, SampleState, ViewState

        mask = SampleState.Any | ViewState.Any | InstanceState.Any
        with self._lock:
            if self._reader is None:
                return []
            ret = ddspy_take(self._reader._ref, mask, self._depth)
        if isinstance(ret, int):
            raise RuntimeError(f"CycloneDDS take on {self.topic} failed (error {ret})")
        return [(data, info.source_timestamp) for data, info in ret if info.valid_data]

    def close(self) -> None:
        with self._lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            del reader  # no listener: deleting a polled reader cannot wait on a callback in flight


class RawWriter:
    """Writes serialized samples, each with the source timestamp given."""

    def __init__(self, domain: int, topic: str, idl_type: Any) -> None:
        from cyclonedds.pub import DataWriter

        self.topic = topic
        self._writer = DataWriter(participant(domain), _topic(domain, topic, idl_type))

    def write(self, sample: bytes, stamp_ns: int | None = None) -> None:
        """``stamp_ns``: source timestamp (ns since the epoch, see :func:`source_ns`); None = now."""
        from cyclonedds._clayer import ddspy_write, ddspy_write_ts

        ref = self._writer._ref
        ret = ddspy_write(ref, sample) if stamp_ns is None else ddspy_write_ts(ref, sample, stamp_ns)
        if ret < 0:
            raise RuntimeError(f"CycloneDDS refused a sample on {self.topic} (error {ret})")

    def close(self) -> None:
        self._writer = None
