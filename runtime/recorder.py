"""Trial recording: each episode of a run becomes a LeRobot v2.1 episode (datasets/).

The control loop hands frames over without waiting (``add`` never blocks; a full queue drops the
frame and counts it). A writer thread buffers them and writes each episode whole when it ends, so a
run that is interrupted keeps every finished episode, and the one running at the interruption is
saved too when the process gets to shut down cleanly (SIGINT/SIGTERM).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedFrame:
    state: np.ndarray  # (S,)
    action: np.ndarray  # (A,) commanded target (policy or teleop) before the safety layer
    executed: np.ndarray  # (A,) what the safety layer sent
    images: dict[str, np.ndarray]
    intervention: bool  # a person was in control
    timestamp: float  # seconds since the episode started


class TrialRecorder:
    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        state_names: Sequence[str],
        action_names: Sequence[str],
        cameras: Mapping[str, tuple[int, int]],
        instruction: str,
        extra_info: Mapping[str, Any] | None = None,
        max_queue: int = 256,
    ) -> None:
        from dit4dit.datasets import LeRobotWriter  # pyarrow is only needed when recording

        self.fps = fps
        self.instruction = instruction
        self.writer = LeRobotWriter(
            root, fps=fps, state_names=state_names, action_names=action_names, cameras=cameras,
            extra_info=extra_info,
        )  # fmt: skip
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max_queue)
        self._success: bool | None = None
        self.dropped = 0
        self.errors: list[str] = []
        self.saved: list[int] = []
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def add(self, frame: RecordedFrame) -> None:
        try:
            self._q.put_nowait(("frame", frame))
        except queue.Full:
            self.dropped += 1

    def mark(self, success: bool) -> None:
        """The operator's verdict for the episode running now (the last mark before its end counts)."""
        self._success = success
        log.info("episode marked %s", "SUCCESS" if success else "FAILURE")

    def end_episode(self, success: bool | None = None) -> None:
        """Close the running episode; it is written by the writer thread."""
        verdict = self._success if success is None else success
        self._success = None
        self._q.put(("end", verdict))

    def close(self, success: bool | None = None, timeout_s: float = 60.0) -> list[int]:
        """Save the running episode (if it has frames) and wait for every write; returns saved episode indices."""
        self.end_episode(success)
        self._q.put(("stop", None))
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            log.error("recorder: writer still busy after %.0f s; the last episode may be missing", timeout_s)
        return list(self.saved)

    def _run(self) -> None:
        while True:
            kind, item = self._q.get()
            try:
                if kind == "frame":
                    f: RecordedFrame = item
                    self.writer.add_frame(
                        state=f.state, action=f.action, action_executed=f.executed, images=f.images,
                        task=self.instruction, intervention=f.intervention, recorded_time=f.timestamp,
                    )  # fmt: skip
                elif kind == "end":
                    if self.writer.buffered_frames:
                        ep = self.writer.save_episode(success=item)
                        self.saved.append(ep)
                        log.info("recorder: episode %d saved (%s)", ep, self.writer.root)
                elif kind == "stop":
                    return
            except Exception as e:  # noqa: BLE001 - a bad frame must not stop the recording thread
                msg = f"{kind}: {type(e).__name__}: {e}"
                if len(self.errors) < 20:
                    self.errors.append(msg)
                log.error("recorder: %s", msg)
