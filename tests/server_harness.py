"""A dit4dit-serve subprocess for tests (shared by test_server.py and test_export.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading


class ServerProcess:
    """A dit4dit-serve subprocess; waits for its 'serving' line, kills it on close."""

    def __init__(self, args: list[str], timeout_s: float = 90.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "dit4dit.runtime.server", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.banner = ""
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("dit4dit-serve: serving"):
                    self.banner = line
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout_s) or not self.banner:
            self.close()
            raise RuntimeError("dit4dit-serve did not start:\n" + "".join(self.lines[-40:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
