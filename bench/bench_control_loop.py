"""The controller's 500 Hz loop on this machine, with the whole stack running, and the smoothness of chunk seams.

    python bench/bench_control_loop.py --seconds 60

Starts dit4dit-sim (head camera streamed over ZeroMQ) and dit4dit-serve with a tiny random checkpoint on
this machine, then runs dit4dit-robot's Controller in this process (real G1Robot over DDS, real
PolicyClient, real camera reads) for --seconds of RUNNING. Reports:

* loop timing: tick period p50/p99/max, missed deadlines (ticks starting more than one period late),
  the work per tick, and the driver's own 500 Hz publisher thread (late ticks, worst lateness);
* seam smoothness: the chunk blend is switched between "rtc" (server-side frozen prefix + client
  cross-fade) and "none" (switch at once, stale rows still dropped) every --toggle-s seconds of the same
  run; for each, the peak joint acceleration of the requested target in the window after each chunk
  arrival (boundary) is divided by the peak acceleration away from arrivals (within chunks).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from dit4dit.runtime.config import parse_config
from dit4dit.runtime.controller import State, build_controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(path: Path, needle: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited: {path.read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit(f"no '{needle}' from {proc.args[0]} within {timeout_s} s")


def pct(a: np.ndarray, p: float) -> float:
    return float(np.percentile(a, p)) if len(a) else float("nan")


def accelerations(trace: list[tuple[float, np.ndarray]], dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-tick peak |joint acceleration| (rad/s^2) of the requested target: the velocity change between
    consecutive ticks (velocities on the actual tick times) over the nominal tick. Dividing by the nominal
    tick, not the actual spacing, keeps ticks bunched by a stalled loop from inflating kinks."""
    t = np.array([x[0] for x in trace])
    q = np.stack([x[1] for x in trace])
    gap = np.maximum(np.diff(t), 1e-4)
    v = np.diff(q, axis=0) / gap[:, None]
    a = np.diff(v, axis=0) / dt
    return t[1:-1], np.max(np.abs(a), axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds of RUNNING to measure")
    ap.add_argument("--toggle-s", type=float, default=5.0, help="switch the blend on/off this often")
    ap.add_argument("--policy-hz", type=float, default=15.0)
    ap.add_argument("--camera", default="head:128x96@30")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_loop_"))
    domain = random.SystemRandom().randint(2, 230)
    cam_port, ctl_port, srv_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def spawn(name: str, cmd: list[str]) -> tuple[subprocess.Popen, Path]:
        log = tmp / f"{name}.log"
        p = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(p)
        return p, log

    try:
        from dit4dit.policy.checkpoint import make_random_checkpoint

        ckpt = make_random_checkpoint(tmp / "tiny.pt", "tiny", chunk_length=16, control_rate_hz=args.policy_hz)
        sim, sim_log = spawn("sim", ["dit4dit-sim", "--domain", str(domain), "--camera", args.camera,
                                     "--camera-port", str(cam_port), "--control-port", str(ctl_port)])  # fmt: skip
        srv, srv_log = spawn("serve", ["dit4dit-serve", "--ckpt", str(ckpt), "--bind", f"tcp://127.0.0.1:{srv_port}",
                                       "--device", "cpu", "--max-batch", "1"])  # fmt: skip
        wait_line(sim_log, "dit4dit-sim ready", 120, sim)
        w, h = (int(x) for x in args.camera.split(":")[1].split("@")[0].split("x"))
        cfg = parse_config({
            "robot": {"interface": "lo", "domain": domain},
            "cameras": {"head": {"kind": "sim", "endpoint": f"tcp://127.0.0.1:{cam_port}", "width": w, "height": h,
                                 "max_age_s": 1.0}},
            "server": {"address": f"tcp://127.0.0.1:{srv_port}", "timeout_s": 2.0, "connect_timeout_s": 120},
            "rates": {"policy_hz": args.policy_hz, "execution_horizon": 6},
            "chunking": {"blend": "rtc", "blend_s": 0.2},
            "safety": {"ramp_in_s": 1.0, "state_timeout_s": 0.5, "server_hold_s": 3.0, "server_damp_s": 5.0},
        }, "bench")  # fmt: skip
        ctl = build_controller(cfg, record_timing=True)
        runner = threading.Thread(target=ctl.run, daemon=True)
        runner.start()
        while ctl.state != State.RUNNING:
            if not runner.is_alive():
                raise SystemExit(f"controller stopped before RUNNING: {ctl.transitions}")
            time.sleep(0.1)
        t_run = time.monotonic()
        modes = []  # (t_start, mode)
        mode = "rtc"
        while time.monotonic() - t_run < args.seconds and ctl.state in (State.RUNNING, State.HOLD):
            modes.append((time.monotonic(), mode))
            assert ctl.scheduler is not None
            ctl.scheduler.blend = mode
            time.sleep(min(args.toggle_s, args.seconds - (time.monotonic() - t_run)))
            mode = "none" if mode == "rtc" else "rtc"
        t_end = time.monotonic()
        ctl.request_stop(signal.SIGINT)
        runner.join(30)
        pub = ctl.robot.stats
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    # ---- loop timing over the RUNNING window
    starts = np.array(ctl.loop.tick_starts)
    work = np.array(ctl.loop.tick_work_s)
    sel = (starts >= t_run) & (starts <= t_end)
    periods = np.diff(starts[sel]) * 1e3
    period_ms = 1e3 / cfg.rates.control_hz
    missed = int(np.sum(periods > 2 * period_ms))
    print(f"\ncontroller loop, {sel.sum()} ticks over {t_end - t_run:.1f} s of RUNNING at {cfg.rates.control_hz:.0f} Hz "
          f"(dit4dit-sim, dit4dit-serve tiny on CPU, camera {args.camera} on this {os.cpu_count()}-core machine)")
    print(f"| {'metric':<38} | {'p50':>8} | {'p99':>8} | {'max':>8} |")
    print(f"|{'-' * 40}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    print(f"| {'tick period (ms), target ' + format(period_ms, '.1f'):<38} | {pct(periods, 50):8.3f} | {pct(periods, 99):8.3f} | {periods.max():8.3f} |")
    w = work[sel] * 1e3
    print(f"| {'work per tick (ms)':<38} | {pct(w, 50):8.3f} | {pct(w, 99):8.3f} | {w.max():8.3f} |")
    print(f"| {'missed deadlines (period > 2x target)':<38} | {missed:>8d} | {100 * missed / max(1, len(periods)):7.2f}% | {'':>8} |")
    print(f"| {'driver publisher late ticks (whole run)':<38} | {pub['late_ticks']:>8d} | {'':>8} | {pub['max_lateness_s'] * 1e3:8.2f} |")
    print(f"| {'chunks accepted / requests':<38} | {ctl.counters.chunks_accepted:>8d} | {ctl.counters.requests:>8d} | {'':>8} |")

    # ---- seam smoothness per blend mode, on the requested targets
    assert ctl.trace_targets is not None and ctl.trace_chunks is not None
    trace = [x for x in ctl.trace_targets if t_run <= x[0] <= t_end]
    t_acc, acc = accelerations(trace, 1.0 / cfg.rates.control_hz)
    arrivals = np.array([c[0] for c in ctl.trace_chunks])
    arr_mode = [c[2] for c in ctl.trace_chunks]
    window = cfg.chunking.blend_s + 2.0 / cfg.rates.control_hz
    near = np.zeros(len(t_acc), dtype=bool)
    for ta in arrivals:
        # from the tick before the arrival (a jump at tick J shows in the acceleration at ticks J-1 and J)
        prev_tick = t_acc[t_acc < ta].max() if np.any(t_acc < ta) else ta
        near |= (t_acc >= prev_tick - 1e-9) & (t_acc <= ta + window)
    print(f"\nseam smoothness: peak |joint acceleration| of the requested target (rad/s^2); boundary = "
          f"{window * 1e3:.0f} ms after each chunk arrival, within = elsewhere")
    print(f"| {'blend':<6} | {'chunks':>6} | {'boundary peak':>13} | {'within peak':>11} | {'boundary p99':>12} | {'within p99':>10} | {'peak ratio':>10} |")
    print(f"|{'-' * 8}|{'-' * 8}|{'-' * 15}|{'-' * 13}|{'-' * 14}|{'-' * 12}|{'-' * 12}|")
    bounds = [(t0, modes[i + 1][0] if i + 1 < len(modes) else t_end, m) for i, (t0, m) in enumerate(modes)]
    for m in ("rtc", "none"):
        in_mode = np.zeros(len(t_acc), dtype=bool)
        for t0, t1, mm in bounds:
            if mm == m:
                in_mode |= (t_acc >= t0 + window) & (t_acc < t1)  # skip the switch-over itself
        b, wi = acc[in_mode & near], acc[in_mode & ~near]
        n_chunks = sum(1 for ta, am in zip(arrivals, arr_mode, strict=True) if am == m and any(t0 + window <= ta < t1 for t0, t1, mm in bounds if mm == m))
        if len(b) and len(wi):
            print(f"| {m:<6} | {n_chunks:>6d} | {b.max():13.1f} | {wi.max():11.1f} | {pct(b, 99):12.1f} | {pct(wi, 99):10.1f} | {b.max() / wi.max():10.2f} |")
    print(f"\nlogs: {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
