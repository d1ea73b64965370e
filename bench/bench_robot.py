"""G1Robot's 500 Hz command publisher against dit4dit-sim, over real DDS on loopback.

Starts ``dit4dit-sim --no-cameras`` in a subprocess, connects G1Robot (lowcmd), commands the home
pose while reading state at 50 Hz (a policy-rate consumer), and reports: the command send period
(p50 / p99 / max), late ticks, the rate at which the simulator received commands, the lowstate rate
the driver received, and the CPU time the driver process used. Run:

    python bench/bench_robot.py [--seconds 10] [--domain N] [--rt-priority 80]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from dit4dit.drivers import g1_spec
from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--domain", type=int, default=None, help="DDS domain (default: a random one in 2..230)")
    ap.add_argument("--rt-priority", type=int, default=0, help="SCHED_FIFO priority for the publisher (0 = normal)")
    args = ap.parse_args()
    domain = args.domain if args.domain is not None else random.SystemRandom().randint(2, 230)
    control = free_port()
    exe = shutil.which("dit4dit-sim")
    cmd = ([exe] if exe else [sys.executable, "-m", "dit4dit.drivers.sim.cli"]) + [
        "--domain", str(domain), "--no-cameras", "--no-table", "--control-port", str(control)]  # fmt: skip
    sim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from dit4dit.drivers.sim.bridge import control_request

        robot = G1Robot(G1RobotConfig(interface="lo", domain=domain, rt_priority=args.rt_priority))
        robot.connect(timeout_s=60.0)
        kp, kd = g1_spec.gains_array()
        st0 = robot.state()
        s0 = control_request(f"tcp://127.0.0.1:{control}", "state")["stats"]
        n0 = robot.stats["states_received"]
        cpu0, t0 = time.process_time(), time.monotonic()
        while (el := time.monotonic() - t0) < args.seconds:
            a = min(1.0, el / 2.0)
            robot.command(st0.q + (g1_spec.HOME_POSE - st0.q) * a, kp, kd)
            robot.state()
            time.sleep(0.02)
        wall = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        s1 = control_request(f"tcp://127.0.0.1:{control}", "state")["stats"]
        n1 = robot.stats["states_received"]
        times = robot.send_times()
        times = times[times >= t0]
        stats = robot.stats
        robot.disconnect()
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(10)
        except subprocess.TimeoutExpired:
            sim.kill()
    per = np.diff(times) * 1e3
    print(f"G1Robot lowcmd publisher vs dit4dit-sim, {wall:.1f} s, {os.cpu_count()} CPUs, domain {domain}, "
          f"rt_priority {args.rt_priority}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'metric':<40} {'value':>10}")
    rows = [
        ("send period p50 (ms)", np.percentile(per, 50)),
        ("send period p99 (ms)", np.percentile(per, 99)),
        ("send period max (ms)", per.max()),
        ("sends per second", len(times) / wall),
        ("late ticks (% of ticks)", 100.0 * stats["late_ticks"] / max(1, stats["published"])),
        ("commands received by sim per second", (s1["lowcmd_received"] - s0["lowcmd_received"]) / wall),
        ("lowstate received by driver per second", (n1 - n0) / wall),
        ("sim lowstate published per second", (s1["lowstate_published"] - s0["lowstate_published"]) / wall),
        ("driver process CPU (% of one core)", 100.0 * cpu / wall),
        ("CRC errors", stats["crc_errors"]),
    ]
    for name, v in rows:
        print(f"{name:<40} {v:>10.2f}")


if __name__ == "__main__":
    main()
