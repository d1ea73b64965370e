"""The real-time process: G1Robot over DDS plus the 500 Hz loop, and nothing that could hold it up.

    python -m dit4dit.runtime.realtime.process --shm NAME   (deploy config as JSON on the first line of stdin)

Started by :class:`dit4dit.runtime.realtime.client.RealtimeRobot` (never by hand). The controller's
process decodes cameras, talks to the policy server, packs msgpack, logs and records; none of that
shares this process's interpreter lock. SCHED_FIFO at ``robot.rt_priority`` where permitted, set before
DDS starts so CycloneDDS's receive threads inherit it.

Its stdin stays open for as long as the controller lives: end of file means the controller is gone,
and the loop damps on its next tick (then keeps damping for ``safety.damp_hold_s`` and exits). Exit codes: 0 clean shutdown, 1 could not connect (the reason is in the status
record and on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import select
import signal
import sys
import time

from dit4dit.runtime.realtime import shm

log = logging.getLogger("dit4dit.realtime")


class ParentPipe:
    """Our stdin, which the controller holds open for as long as it lives: end of file = it is gone.

    Polled without blocking on every tick (a few microseconds), so the loop notices on its next tick, not
    whenever a helper thread got the CPU."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.gone = False

    def alive(self) -> bool:
        if not self.gone and self._poll.poll(0):
            try:
                self.gone = not os.read(self.fd, 4096)
            except OSError:
                self.gone = True
        return not self.gone


def _read_line(fd: int) -> bytes:
    """One line from a raw descriptor, byte by byte (nothing read beyond it, so the watcher sees the rest)."""
    out = bytearray()
    while (b := os.read(fd, 1)) and b != b"\n":
        out += b
    return bytes(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dit4dit-rt", description=__doc__.split("\n")[0])
    ap.add_argument("--shm", required=True, help="shared-memory segment made by the controller")
    ap.add_argument("--trace", default=None, help="write a per-tick trace (npz) here at exit (benchmarks)")
    ap.add_argument("--trace-ticks", type=int, default=150_000)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level, logging.INFO), stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # The controller owns the lifecycle: Ctrl-C in a terminal reaches the whole process group, and this
    # process must keep damping until the controller says stop (or goes away), not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    from dit4dit.runtime.config import parse_config

    channel = shm.Channel.attach(args.shm)
    cfg = parse_config(json.loads(_read_line(0)), "the controller's deploy config")
    parent = ParentPipe(0)

    from dit4dit.drivers.g1_robot import G1Robot, set_realtime_priority
    from dit4dit.runtime.realtime.loop import RealtimeLoop, Trace

    status = shm.new(shm.STATUS)
    status["pid"] = os.getpid()
    rc = cfg.robot
    fifo = rc.rt_priority > 0 and set_realtime_priority(rc.rt_priority, "real-time loop")
    status["rt_priority"] = rc.rt_priority if fifo else 0
    robot = G1Robot(rc.driver_config(cfg))
    try:
        robot.connect(rc.connect_timeout_s, publisher=False)
    except Exception as e:  # noqa: BLE001 - RobotError and DDS errors: report and exit 1
        status["phase"] = shm.FAILED
        status["message"] = shm.encode(f"robot: {e}")
        channel.status.write(status)
        log.error("robot: %s", e)
        channel.close()
        return 1
    trace = Trace(args.trace_ticks) if args.trace else None
    loop = RealtimeLoop(robot, channel, cfg, trace=trace, controller_alive=parent.alive)
    loop._status["pid"] = os.getpid()
    loop._status["rt_priority"] = status["rt_priority"]
    loop._status["mode_machine"] = robot.mode_machine or 0
    loop.set_phase(shm.WAITING)
    gc.collect()
    gc.freeze()  # everything made so far is permanent: a collection in the loop only walks new objects
    try:
        # After the controller is gone, keep damping for damp_hold_s, then stop.
        gone_at: list[float] = []

        def should_stop() -> bool:
            if parent.alive():  # polled here too: once damped the loop no longer asks
                return False
            if not gone_at:
                gone_at.append(time.monotonic())
            return time.monotonic() - gone_at[0] > cfg.safety.damp_hold_s

        loop.run(should_stop)
    except Exception:  # a bug must still leave the robot damped, and say so
        log.exception("real-time loop failed; damping")
        loop.damp(shm.DAMP_FAULT, "the real-time loop failed (see its log)")
    finally:
        robot.disconnect()  # damping (lowcmd) or the weight ramped out (arm_sdk), then the channels closed
        loop.set_phase(shm.STOPPED)
        if trace is not None:
            trace.save(args.trace)
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
