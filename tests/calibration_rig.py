"""A live dit4dit-sim for the calibration tests: real process, real DDS on a private domain, real ZeroMQ."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# The simulator asks the kernel for SIGTERM when its parent (the test process) dies, even by SIGKILL, so an
# interrupted test run never leaves simulators behind. Done in the child itself: no preexec_fn in a
# multi-threaded (DDS) parent.
_SIM_BOOT = (
    "import ctypes, signal, sys; ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM); "  # 1 = PR_SET_PDEATHSIG
    "from dit4dit.drivers.sim.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_sim(tmp: Path, domain: int, camera_port: int, props: str, fps: float = 30.0) -> Iterator[dict]:
    """dit4dit-sim without the table, with the given props and a 640x480 head camera; killed on exit."""
    from dit4dit.drivers.sim.bridge import wait_for_sim

    control_port = _port()
    log_path = tmp / "sim.log"
    log = open(log_path, "wb")
    p = subprocess.Popen(
        [sys.executable, "-c", _SIM_BOOT, "--domain", str(domain), "--no-table", "--props", props,
         "--camera", f"head:640x480@{fps:g}", "--camera-port", str(camera_port), "--control-port", str(control_port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    control = f"tcp://127.0.0.1:{control_port}"
    try:
        try:
            wait_for_sim(control, alive=lambda: p.poll() is None)
        except RuntimeError as e:
            raise AssertionError(f"{e}:\n{log_path.read_text()[-3000:]}") from None
        yield {"domain": domain, "endpoint": f"tcp://127.0.0.1:{camera_port}", "control": control, "log": log_path}
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        log.close()


def real_time_factor(control: str, seconds: float = 1.0) -> float:
    """Simulated seconds per wall second over ``seconds``: below ~0.9 the host is too loaded for timing."""
    from dit4dit.drivers.sim.bridge import control_request

    a, t0 = control_request(control, "state")["sim_time"], time.monotonic()
    time.sleep(seconds)
    return (control_request(control, "state")["sim_time"] - a) / (time.monotonic() - t0)


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the test after ``seconds`` so a stuck run still cleans up (and names itself)."""

    def _expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"calibration test exceeded its {seconds} s deadline")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
