"""The inference thread: one request at a time to dit4dit-serve, off the 500 Hz loop.

The control loop submits (observation, ChunkRequest) and polls for the outcome; it never waits on
the network. A request that fails (timeout, server error, protocol error) comes back as an outcome
with ``error`` set, so the loop's watchdog decides what to do (hold, then damp).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from dit4dit.runtime.chunking import ChunkRequest
from dit4dit.runtime.observation import Observation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOutcome:
    request: ChunkRequest
    actions: np.ndarray | None  # (H, A) as received, unvalidated; None on error
    t_arrival: float  # monotonic
    error: str | None = None
    rtt_s: float = 0.0
    server_timing: dict[str, float] | None = None


class InferenceWorker:
    def __init__(self, client: Any, seed: int | None, max_age: dict[str, float]) -> None:
        self.client = client
        self.seed = seed
        self.max_age = max_age
        self._jobs: queue.Queue[tuple[Observation, ChunkRequest] | None] = queue.Queue(maxsize=1)
        self._results: queue.Queue[InferenceOutcome] = queue.Queue()
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self.requests = 0
        self.failures = 0
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def submit(self, obs: Observation, request: ChunkRequest) -> None:
        if self._busy.is_set():
            raise RuntimeError("InferenceWorker.submit while a request is in flight")
        self._busy.set()
        self.requests += 1
        self._jobs.put_nowait((obs, request))

    def poll(self) -> InferenceOutcome | None:
        try:
            return self._results.get_nowait()
        except queue.Empty:
            return None

    def stop(self, timeout_s: float = 2.0) -> None:
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            obs, req = job
            try:
                obs.check_fresh(self.max_age)  # never send an image that aged out while queued
                res = self.client.infer(obs.for_policy(), seed=self.seed, prefix=req.prefix, n_executing=req.n_executing)
                out = InferenceOutcome(req, np.asarray(res.actions), time.monotonic(), None, res.rtt_s, res.timing)
            except Exception as e:  # noqa: BLE001 - every failure becomes an outcome the loop acts on
                self.failures += 1
                out = InferenceOutcome(req, None, time.monotonic(), f"{type(e).__name__}: {e}")
            self._results.put(out)
            self._busy.clear()
