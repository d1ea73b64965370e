"""What the bridge counts and measures, and the control socket's ``stats`` report over a window.

Counters are totals since start (the ``state`` reply's ``stats`` and the exit summary). Per-sample
figures (command-to-apply latency, physics step lateness) go into bounded rings of the last
``RING_SIZE`` samples for percentiles. A :class:`StatsWindow` remembers the totals and ring positions
when it began, so ``stats`` reports the difference; only the physics thread writes the totals and rings,
only the control thread reads them. Nothing is locked (the physics thread must never wait for a reader):
the physics thread makes ``seq`` odd while it updates a step's counters, and a reader takes its numbers
between two steps (``snapshot``), so the counts of one report agree with each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .command_intake import ARM_SDK_REASONS, HAND_REASONS, LOWCMD_REASONS, TopicCounts

RING_SIZE = 65536  # samples kept for percentiles: 131 s of steps or commands at 500 Hz
LATE_STEP_S = 0.002  # a physics step that starts later than this after its schedule is "late"


class Ring:
    """The newest ``size`` floats added, for percentiles over a window."""

    def __init__(self, size: int = RING_SIZE) -> None:
        self._a = np.zeros(size)
        self.count = 0  # samples ever added

    def add(self, value: float) -> None:
        self._a[self.count % len(self._a)] = value
        self.count += 1

    def since(self, start: int) -> np.ndarray:
        """The samples added since ``count`` was ``start`` (the newest ``size`` of them), oldest first."""
        n = min(self.count - start, len(self._a))
        if n <= 0:
            return np.zeros(0)
        end = self.count % len(self._a)
        idx = np.arange(end - n, end) % len(self._a)
        return self._a[idx]


@dataclass
class BridgeStats:
    steps: int = 0
    lowstate_published: int = 0
    lowcmd: TopicCounts = field(default_factory=lambda: TopicCounts("lowcmd", LOWCMD_REASONS))
    lowcmd_mode_pr_ab: int = 0  # applied, but as PR (the model has serial pitch/roll joints)
    arm_sdk: TopicCounts = field(default_factory=lambda: TopicCounts("arm_sdk", ARM_SDK_REASONS))
    hand_cmd: TopicCounts = field(default_factory=lambda: TopicCounts("hand_cmd", HAND_REASONS))
    hand_state_published: int = 0
    physics_late_steps: int = 0  # steps that started more than LATE_STEP_S after their schedule
    overruns: int = 0  # times physics fell more than LATE_RESYNC_S behind the wall clock (re-anchored)
    command_latency_ms: Ring = field(default_factory=Ring, repr=False)  # apply time - source stamp
    step_late_ms: Ring = field(default_factory=Ring, repr=False)  # step start - its schedule
    seq: int = field(default=0, repr=False)  # odd while the physics thread updates one step's counters

    def snapshot(self, frames: dict[str, int]) -> tuple[dict[str, Any], int, int]:
        """(totals, latency samples, lateness samples) as of one instant between two physics steps."""
        while True:
            seq = self.seq
            if seq & 1:
                time.sleep(0)  # a step is being counted: let it finish
                continue
            out = self.totals(frames), self.command_latency_ms.count, self.step_late_ms.count
            if self.seq == seq:
                return out

    def totals(self, frames: dict[str, int]) -> dict[str, Any]:
        """Every counter since start, flat (``lowcmd_received``, ...), and frames published per camera."""
        return {"steps": self.steps, "lowstate_published": self.lowstate_published, **self.lowcmd.as_dict(),
                "lowcmd_mode_pr_ab": self.lowcmd_mode_pr_ab, **self.arm_sdk.as_dict(), **self.hand_cmd.as_dict(),
                "hand_state_published": self.hand_state_published, "physics_late_steps": self.physics_late_steps,
                "overruns": self.overruns, "frames": dict(frames)}

    def record_step_lateness(self, late_s: float) -> None:
        self.step_late_ms.add(late_s * 1e3)
        if late_s > LATE_STEP_S:
            self.physics_late_steps += 1


def _percentiles(ms: np.ndarray) -> dict[str, float | None]:
    if ms.size == 0:
        return {"p50": None, "p99": None, "max": None}
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(float(ms.max()), 3)}


class StatsWindow:
    """The ``stats`` window: since the bridge started, or since the last ``stats {reset: true}``."""

    def __init__(self, stats: BridgeStats, frames: dict[str, int], step_s: float) -> None:
        self.step_s = step_s
        self.restart(stats, frames)

    def restart(self, stats: BridgeStats, frames: dict[str, int]) -> None:
        self.t0 = time.monotonic()
        self.totals0, self.latency0, self.late0 = stats.snapshot(frames)

    def report(self, stats: BridgeStats, frames: dict[str, int]) -> dict[str, Any]:
        window_s = max(time.monotonic() - self.t0, 1e-9)
        now, latency_n, late_n = stats.snapshot(frames)
        d = {k: v - self.totals0[k] for k, v in now.items() if isinstance(v, int)}
        sim_time_s = d["steps"] * self.step_s
        latency = stats.command_latency_ms.since(self.latency0)[: latency_n - self.latency0]
        return {
            "window_s": round(window_s, 4),
            "sim_time_s": round(sim_time_s, 4),
            "real_time_factor": round(sim_time_s / window_s, 4),
            "lowcmd_received": d["lowcmd_received"],
            "lowcmd_per_s": round(d["lowcmd_received"] / window_s, 2),
            "lowcmd_applied": d["lowcmd_applied"],
            "lowcmd_superseded": d["lowcmd_superseded"],
            "lowcmd_bad_crc": d["lowcmd_bad_crc"],
            "lowcmd_bad_mode_machine": d["lowcmd_bad_mode_machine"],
            "arm_sdk_received": d["arm_sdk_received"],
            "arm_sdk_applied": d["arm_sdk_applied"],
            "arm_sdk_superseded": d["arm_sdk_superseded"],
            "command_latency_ms": {**_percentiles(latency), "n": latency_n - self.latency0},
            "physics_late_steps": d["physics_late_steps"],
            "physics_step_late_ms": _percentiles(stats.step_late_ms.since(self.late0)[: late_n - self.late0]),
            "overruns": d["overruns"],
            "hand_state_published": d["hand_state_published"],  # both hands, rt/dex3/*/state
            "frames": {cam: n - self.totals0["frames"].get(cam, 0) for cam, n in now["frames"].items()},
        }
