"""`dit4dit-serve --profile DIR`: a torch profiler trace of the first N served policy calls.

The profiler is started in the inference thread at the first call (the thread whose operators it records),
stopped after N calls, and writes DIR/trace.json (open it in chrome://tracing or https://ui.perfetto.dev) and
DIR/summary.txt (the operators that took the most time).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("dit4dit.profile")


class RequestProfiler:
    def __init__(self, folder: str | Path, requests: int = 50) -> None:
        if requests < 1:
            raise ValueError(f"--profile-requests must be >= 1, got {requests}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.requests = requests
        self.done = 0
        self._profile: Any = None

    @property
    def finished(self) -> bool:
        return self.done >= self.requests

    def begin(self) -> None:
        """Before a policy call."""
        if self._profile is not None or self.finished:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profile = torch.profiler.profile(activities=activities, record_shapes=True)
        self._profile.__enter__()

    def end(self) -> None:
        """After a policy call; writes the trace after the N-th."""
        if self._profile is None:
            return
        self.done += 1
        if not self.finished:
            return
        self._profile.__exit__(None, None, None)
        trace = self.folder / "trace.json"
        self._profile.export_chrome_trace(str(trace))
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        (self.folder / "summary.txt").write_text(self._profile.key_averages().table(sort_by=sort, row_limit=40))
        self._profile = None
        log.info("profiled %d policy calls: %s and %s", self.done, trace, self.folder / "summary.txt")
        print(f"dit4dit-serve: wrote the profile of {self.done} policy calls to {trace}", flush=True)
