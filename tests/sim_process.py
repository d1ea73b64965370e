"""``dit4dit-sim`` as a subprocess for tests: start, wait for its control socket, talk to it, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SimProcess:
    """dit4dit-sim on its own DDS domain and ports; stopped with SIGINT (or SIGTERM; then killed) by ``stop``."""

    def __init__(self, domain: int, control_port: int, log: Path, *extra: str, mode_machine: int = 6) -> None:
        self.camera_port = free_port()
        self.control = f"tcp://127.0.0.1:{control_port}"
        self.camera = f"tcp://127.0.0.1:{self.camera_port}"
        cmd = [sys.executable, "-m", "dit4dit.drivers.sim.cli", "--domain", str(domain),
               "--mode-machine", str(mode_machine), "--control-port", str(control_port),
               "--camera-port", str(self.camera_port), *extra]  # fmt: skip
        self.log = log
        self._log_f = open(log, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        self.proc = subprocess.Popen(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=env)

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        from dit4dit.drivers.sim.bridge import control_request

        return control_request(self.control, cmd, **fields)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dit4dit-sim exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            try:
                self.request("ping", timeout_s=1.0)
                return
            except TimeoutError:
                time.sleep(0.2)
        raise RuntimeError(f"dit4dit-sim not ready in {timeout_s} s: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGINT) -> int | None:
        """Stop it with ``sig`` (killed after 15 s); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_f.close()
        return self.proc.returncode


def start_sim(domain: int, control_port: int, tmp_path: Path, *extra: str) -> SimProcess:
    """A ready SimProcess (stopped again if it does not come up)."""
    s = SimProcess(domain, control_port, tmp_path / "sim.log", *extra)
    try:
        s.wait_ready()
    except Exception:
        s.stop()
        raise
    return s
