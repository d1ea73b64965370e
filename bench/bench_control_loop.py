"""The runtime path's real-time figures, measured on the wire: sim + server + controller (+ its real-time process).

    python bench/bench_control_loop.py --seconds 30              # nothing else running
    python bench/bench_control_loop.py --seconds 30 --burners 2  # two CPU-burning processes beside it

Starts dit4dit-sim (head camera streamed over ZeroMQ), dit4dit-serve with a tiny random checkpoint and an
independent rt/lowcmd recorder (``python -m dit4dit.runtime.realtime.wire record``, its own process) on
this machine, then runs dit4dit-robot's Controller in this process: it starts the real-time process
(500 Hz loop, safety layer, publish over DDS), the policy client and the camera reader, exactly as
``dit4dit-robot`` does. After --seconds of RUNNING it reports:

* on the wire (the recorder, DDS source timestamps): commands per second, the gap between commands,
  and step-limit violations with no slack (runtime/realtime/wire.py);
* at the simulator (its ``stats`` control command): commands received per second, command-to-apply
  latency, its real-time factor;
* in the real-time process (its per-tick trace): state age at use, tick period, missed deadlines;
* seam smoothness: the blend is switched between "rtc" and "none" every --toggle-s seconds of the same
  run; the peak joint acceleration of the planned target (as the real-time loop sampled it, before the
  safety layer smooths any jump) after each chunk arrival (boundary) is divided by the peak away from
  arrivals (within chunks).
"""

from __future__ import annotations

import argparse
import json
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

from dit4dit.drivers.sim.bridge import control_request
from dit4dit.runtime.config import parse_config
from dit4dit.runtime.controller import State, build_controller
from dit4dit.runtime.realtime.wire import wire_report
from dit4dit.runtime.realtime.safety import SafetyLimits


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


def seam_ratios(t: np.ndarray, q: np.ndarray, dt: float, chunks: list[tuple[float, float, str]],
                modes: list[tuple[float, str]], t_end: float, blend_s: float) -> dict[str, tuple[int, float, float]]:
    """Per blend mode: (chunks, boundary peak, within peak) of |joint acceleration| (rad/s^2) of the commanded
    target. Velocities on the actual tick times; their change divided by the nominal tick, so ticks bunched by
    a stall do not inflate kinks."""
    gap = np.maximum(np.diff(t), 1e-4)
    v = np.diff(q, axis=0) / gap[:, None]
    acc = np.max(np.abs(np.diff(v, axis=0) / dt), axis=1)
    ta = t[1:-1]
    window = blend_s + 2 * dt
    near = np.zeros(len(ta), dtype=bool)
    for arrival, _, _ in chunks:
        near |= (ta >= arrival - 2 * dt) & (ta <= arrival + window)
    bounds = [(t0, modes[i + 1][0] if i + 1 < len(modes) else t_end, m) for i, (t0, m) in enumerate(modes)]
    out = {}
    for m in ("rtc", "none"):
        sel = np.zeros(len(ta), dtype=bool)
        for t0, t1, mm in bounds:
            if mm == m:
                sel |= (ta >= t0 + window) & (ta < t1)  # skip the switch-over itself
        n = sum(1 for a, _, cm in chunks if cm == m and any(t0 + window <= a < t1 for t0, t1, mm in bounds if mm == m))
        b, w = acc[sel & near], acc[sel & ~near]
        if len(b) and len(w):
            out[m] = (n, float(b.max()), float(w.max()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds of RUNNING to measure")
    ap.add_argument("--burners", type=int, default=0, help="CPU-burning processes to run beside the stack")
    ap.add_argument("--toggle-s", type=float, default=5.0, help="switch the blend between rtc and none this often")
    ap.add_argument("--policy-hz", type=float, default=15.0)
    ap.add_argument("--camera", default="head:128x96@30")
    ap.add_argument("--rt-priority", type=int, default=80, help="robot.rt_priority (0 = normal scheduling)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_loop_"))
    domain = random.SystemRandom().randint(2, 230)
    cam_port, ctl_port, srv_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    control = f"tcp://127.0.0.1:{ctl_port}"

    def spawn(name: str, cmd: list[str]) -> tuple[subprocess.Popen, Path]:
        log = tmp / f"{name}.log"
        p = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(p)
        return p, log

    trace_path = tmp / "rt_trace.npz"
    cmds_path = tmp / "lowcmd.npz"
    try:
        from dit4dit.policy.checkpoint import make_random_checkpoint

        ckpt = make_random_checkpoint(tmp / "tiny.pt", "tiny", chunk_length=16, control_rate_hz=args.policy_hz)
        sim, sim_log = spawn("sim", ["dit4dit-sim", "--domain", str(domain), "--camera", args.camera,
                                     "--camera-port", str(cam_port), "--control-port", str(ctl_port)])  # fmt: skip
        spawn("serve", ["dit4dit-serve", "--ckpt", str(ckpt), "--bind", f"tcp://127.0.0.1:{srv_port}",
                        "--device", "cpu", "--max-batch", "1"])  # fmt: skip
        recorder, rec_log = spawn("lowcmd", [sys.executable, "-m", "dit4dit.runtime.realtime.wire", "record",
                                             "--domain", str(domain), "--out", str(cmds_path)])  # fmt: skip
        wait_line(sim_log, "dit4dit-sim ready", 120, sim)
        wait_line(rec_log, "recording", 60, recorder)
        for _ in range(args.burners):
            spawn("burner", [sys.executable, "-c", "while True: pass"])
        w, h = (int(x) for x in args.camera.split(":")[1].split("@")[0].split("x"))
        cfg = parse_config({
            "robot": {"interface": "lo", "domain": domain, "rt_priority": args.rt_priority},
            "cameras": {"head": {"kind": "sim", "endpoint": f"tcp://127.0.0.1:{cam_port}", "width": w, "height": h,
                                 "max_age_s": 1.0}},
            "server": {"address": f"tcp://127.0.0.1:{srv_port}", "timeout_s": 2.0, "connect_timeout_s": 120},
            "rates": {"policy_hz": args.policy_hz, "execution_horizon": 6},
            "chunking": {"blend": "rtc", "blend_s": 0.2},
            "safety": {"ramp_in_s": 1.0, "server_hold_s": 3.0, "server_damp_s": 5.0},
        }, "bench")  # fmt: skip
        ctl = build_controller(cfg, record_timing=True, rt_trace=str(trace_path))
        runner = threading.Thread(target=ctl.run, daemon=True)
        runner.start()
        while ctl.state != State.RUNNING:
            if not runner.is_alive():
                raise SystemExit(f"controller stopped before RUNNING: {ctl.transitions}")
            time.sleep(0.05)
        control_request(control, "stats", reset=True)
        t_run = time.monotonic()
        modes: list[tuple[float, str]] = []
        mode = "rtc"
        while time.monotonic() - t_run < args.seconds and ctl.state in (State.RUNNING, State.HOLD):
            modes.append((time.monotonic(), mode))
            assert ctl.scheduler is not None
            ctl.scheduler.blend = mode
            time.sleep(max(0.0, min(args.toggle_s, args.seconds - (time.monotonic() - t_run))))
            mode = "none" if mode == "rtc" else "rtc"
        t_end = time.monotonic()
        sim_stats = control_request(control, "stats")
        end_state = ctl.state
        ctl.request_stop(signal.SIGINT)
        runner.join(60)
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    limits = SafetyLimits.from_config(cfg.safety, 1.0 / cfg.rates.control_hz)
    with np.load(cmds_path) as z:
        cmds = {k: z[k] for k in z.files}
    t0_ns, t1_ns = int(t_run * 1e9), int(t_end * 1e9)
    from dit4dit.drivers.dds_io import source_ns

    sel = (cmds["t_ns"] >= source_ns(t0_ns)) & (cmds["t_ns"] <= source_ns(t1_ns))
    wire = wire_report({k: v[sel] for k, v in cmds.items()}, limits)
    wire_all = wire_report(cmds, limits)  # the whole run, ramps and damping included
    with np.load(trace_path) as z:
        stamp = z["stamp_ns"] * 1e-9
        age = z["age_s"].astype(np.float64)
        planned = z["planned"].astype(np.float64)
    in_run = (stamp >= t_run) & (stamp <= t_end)
    periods = np.diff(stamp[in_run]) * 1e3
    ages = age[in_run] * 1e3
    target_ms = 1e3 / cfg.rates.control_hz
    missed = int(np.sum(periods > 2 * target_ms))
    lat = sim_stats.get("command_latency_ms", {})
    summary = ctl.summary()
    figures = {
        "seconds": t_end - t_run, "burners": args.burners, "cpus": os.cpu_count(), "end_state": end_state.value,
        "wire_commands_per_s": wire["commands_per_s"], "wire_gap_ms": [wire["gap_ms_p50"], wire["gap_ms_p99"],
                                                                       wire["gap_ms_max"]],
        "wire_step_violations": wire["step_violations"], "wire_step_violations_whole_run": wire_all["step_violations"],
        "sim_lowcmd_per_s": sim_stats.get("lowcmd_per_s"), "sim_real_time_factor": sim_stats.get("real_time_factor"),
        "command_latency_ms": [lat.get("p50"), lat.get("p99"), lat.get("max")],
        "state_age_ms": [pct(ages, 50), pct(ages, 99), float(ages.max())],
        "tick_period_ms": [pct(periods, 50), pct(periods, 99), float(periods.max())],
        "missed_deadlines": missed, "missed_deadlines_pct": 100 * missed / max(1, len(periods)),
        "rt_priority": summary["realtime"].get("rt_priority"), "controller_loop": summary["loop"],
        "chunks": summary["chunks"],
    }
    load = f"{args.burners} CPU burners beside it" if args.burners else "nothing else running"
    print(f"\nruntime path on the wire: {t_end - t_run:.1f} s of RUNNING; dit4dit-sim, dit4dit-serve (tiny, CPU), "
          f"controller + real-time process ({'SCHED_FIFO ' + str(figures['rt_priority']) if figures['rt_priority'] else 'normal scheduling'}); "
          f"{load}; {os.cpu_count()} CPUs")
    print(f"| {'metric':<46} | {'p50':>8} | {'p99':>8} | {'max':>8} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")

    def row(name: str, vals: list) -> None:
        cells = [f"{v:8.3f}" if isinstance(v, (int, float)) and v is not None else f"{'-':>8}" for v in vals]
        print(f"| {name:<46} | {' | '.join(cells)} |")

    def one(name: str, v: float | None, fmt: str = "8.1f") -> None:
        cell = format(v, fmt) if v is not None else "-"
        print(f"| {name:<46} | {cell:>8} | {'':>8} | {'':>8} |")

    one("rt/lowcmd on the wire per s (recorder)", wire["commands_per_s"])
    one("rt/lowcmd received by the simulator per s", sim_stats.get("lowcmd_per_s"))
    row("gap between commands on the wire (ms)", figures["wire_gap_ms"])
    one("step-limit violations on the wire (no slack)", wire["step_violations"], "8.0f")
    row("state age at use (ms), robot clock", figures["state_age_ms"])
    row("real-time tick period (ms), target " + format(target_ms, ".1f"), figures["tick_period_ms"])
    one("missed deadlines (period > 2x target) %", figures["missed_deadlines_pct"], "8.3f")
    row("command-to-apply latency at the simulator (ms)", figures["command_latency_ms"])
    one("simulator real-time factor", sim_stats.get("real_time_factor"), "8.3f")
    one(f"controller loop ({cfg.rates.controller_hz:.0f} Hz) missed deadlines", summary["loop"]["missed_deadlines"], "8.0f")
    one("chunks accepted", summary["chunks"]["accepted"], "8.0f")

    seams = seam_ratios(stamp[in_run], planned[in_run][:, ctl.action_idx], 1.0 / cfg.rates.control_hz,
                        ctl.trace_chunks or [], modes, t_end, cfg.chunking.blend_s)
    print("\nseam smoothness: peak |joint acceleration| of the planned target, before the safety layer, at the real-time "
          "loop's ticks (rad/s^2), boundary = "
          f"{(cfg.chunking.blend_s + 2 / cfg.rates.control_hz) * 1e3:.0f} ms after each chunk arrival, within = elsewhere")
    print(f"| {'blend':<6} | {'chunks':>6} | {'boundary peak':>13} | {'within peak':>11} | {'peak ratio':>10} |")
    print(f"|{'-' * 8}|{'-' * 8}|{'-' * 15}|{'-' * 13}|{'-' * 12}|")
    for m, (n, b, w) in seams.items():
        print(f"| {m:<6} | {n:>6d} | {b:13.1f} | {w:11.1f} | {b / w:10.2f} |")
        figures[f"seam_{m}"] = [n, b, w]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(f"\nlogs: {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
