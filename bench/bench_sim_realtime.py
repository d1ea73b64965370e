"""dit4dit-sim's real-time figures with a 500 Hz driver and a streaming camera: rendering in the render
process (the default) against rendering in a thread of the physics process (``--render-in-process``, the
old way), side by side.

    python bench/bench_sim_realtime.py                      # 3 interleaved 10 s runs per configuration
    python bench/bench_sim_realtime.py --burn 2             # with 2 CPU-burning processes beside it
    python bench/bench_sim_realtime.py --priorities 0 --repeat 1   # normal scheduling only, one run each
    python bench/bench_sim_realtime.py --hands --priorities 0      # also dit4dit-sim --hands, the hands closing
                                                                   # and opening on rt/dex3/*/cmd at 100 Hz

Per configuration: dit4dit-sim in its own process (head camera 320x240@30), a driver process running
``G1Robot(G1RobotConfig(interface="lo", domain=D))`` (its 500 Hz publisher thread sends every LowCmd
source-stamped, and it counts the rt/lowstate it takes), and the sim's own ``stats`` report over the
window (``control_request(addr, "stats", reset=True)`` ... ``control_request(addr, "stats")``):

- physics step lateness: how late each 2 ms step started against its schedule (late = > 2 ms);
- real-time factor: simulated time / wall time;
- rt/lowstate rate as the driver took it, and rt/lowcmd rate as the sim took it;
- command-to-apply latency: start of the physics step that first uses a command minus its DDS source stamp.

Configurations run interleaved, ``--repeat`` times each (a VM's CPU steal and other jobs come in bursts); a
row shows the median over the runs of each figure, and the largest maximum. Prints one table. Numbers
depend on the machine and its load (the load average is printed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

CTX = mp.get_context("spawn")
CAMERA = "head:320x240@30"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _driver(domain: int, control: str, seconds: float, out: Any, hands: bool = False) -> None:
    """Spawned: G1Robot's 500 Hz publisher against the sim; the sim's stats over the window and our counts.
    With ``hands`` both Dex3 hands close into fists and open again (1 s period) on rt/dex3/*/cmd: finger
    contacts with each other's links are off (robot geoms do not collide), so this costs the hands' own
    dynamics and DDS traffic, not a grasp's contacts (bench_sim.py's in-process rows measure those)."""
    from dit4dit.drivers import g1_spec
    from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig
    from dit4dit.drivers.sim.bridge import control_request

    try:
        robot = G1Robot(G1RobotConfig(interface="lo", domain=domain, hands=hands))
        robot.connect(timeout_s=60.0)
        try:
            kp, kd = g1_spec.gains_array()
            q = g1_spec.HOME_POSE.copy()
            robot.command(q, kp, kd)
            deadline = time.monotonic() + 30
            while control_request(control, "stats")["lowcmd_applied"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # settle
            control_request(control, "stats", reset=True)
            s0, t0 = dict(robot.stats), time.monotonic()
            arm = list(g1_spec.ARM_JOINTS)
            while time.monotonic() - t0 < seconds:  # a moving target, as a policy sends
                q[arm] = g1_spec.HOME_POSE[arm] + 0.1 * np.sin(time.monotonic() - t0)
                robot.command(q, kp, kd)
                if hands:
                    closing = 0.5 - 0.5 * np.cos(2 * np.pi * (time.monotonic() - t0))
                    for side, hand in robot.hands.items():
                        hand.command(g1_spec.DEX3_LOWER[side] + closing * (g1_spec.DEX3_UPPER[side] - g1_spec.DEX3_LOWER[side]))
                time.sleep(0.01)
            wall = time.monotonic() - t0
            s1 = dict(robot.stats)
            report = control_request(control, "stats")
        finally:
            robot.disconnect()
        out.put({"report": report, "lowstate_hz": (s1["states_received"] - s0["states_received"]) / wall,
                 "sent_hz": (s1["published"] - s0["published"]) / wall,
                 "hand_state_hz": report["hand_state_published"] / report["window_s"] / 2 if hands else None})
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put({"error": f"{type(e).__name__}: {e}"})


def measure(label: str, extra: list[str], seconds: float, domain: int) -> dict[str, Any]:
    hands = "--hands" in extra
    from dit4dit.drivers.sim.bridge import wait_for_sim

    ctrl = _free_port()
    cmd = [sys.executable, "-m", "dit4dit.drivers.sim.cli", "--domain", str(domain), "--control-port", str(ctrl),
           "--camera-port", str(_free_port()), "--camera", CAMERA, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    addr = f"tcp://127.0.0.1:{ctrl}"
    try:
        try:
            wait_for_sim(addr, alive=lambda: proc.poll() is None)
        except RuntimeError as e:
            raise RuntimeError(f"{e}: {proc.stdout.read()[-2000:]}") from None
        out = CTX.Queue()
        p = CTX.Process(target=_driver, args=(domain, addr, seconds, out, hands), daemon=True)
        p.start()
        res = out.get(timeout=seconds + 120)
        p.join(10)
        if "error" in res:
            raise RuntimeError(f"{label}: driver failed: {res['error']}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(5)
        log = proc.stdout.read() if proc.stdout else ""
    res["label"], res["exit"] = label, rc
    fifo = "SCHED_FIFO" in log
    res["fifo"] = fifo
    rep = res["report"]
    print(f"  {label}: step late p99 {rep['physics_step_late_ms']['p99']} ms, {rep['physics_late_steps']} late steps, "
          f"command latency p99 {rep['command_latency_ms']['p99']} ms (exit {rc}{', SCHED_FIFO' if fifo else ''})",
          file=sys.stderr, flush=True)
    return res


def _summary(reports: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Median p50 and p99 over the runs, largest max."""
    vals = [r[key] for r in reports if r[key]["p50"] is not None]
    if not vals:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(np.median([v["p50"] for v in vals])), "p99": float(np.median([v["p99"] for v in vals])),
            "max": max(v["max"] for v in vals)}


def _ms(d: dict[str, Any]) -> str:
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    return f"{f(d['p50'])} / {f(d['p99'])} / {f(d['max'])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window per configuration")
    ap.add_argument("--priorities", default="70,0", help="--rt-priority values to run (comma-separated)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per configuration")
    ap.add_argument("--burn", type=int, default=0, help="CPU-burning processes running during the measurements")
    ap.add_argument("--domain", type=int, default=None, help="DDS domain (default: random in 100..199)")
    ap.add_argument("--hands", action="store_true", help="add render-process rows with dit4dit-sim --hands")
    args = ap.parse_args()
    domain = args.domain if args.domain is not None else random.SystemRandom().randint(100, 199)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burn)]
    load0 = os.getloadavg()[0]
    configs = [(f"{where}, rt-priority {prio}", [*flag, "--rt-priority", str(prio)])
               for prio in (int(p) for p in args.priorities.split(","))
               for where, flag in (("in-process thread", ["--render-in-process"]), ("render process", []))]
    if args.hands:
        configs += [(f"render process, Dex3 hands, rt-priority {prio}", ["--hands", "--rt-priority", str(prio)])
                    for prio in (int(p) for p in args.priorities.split(","))]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in configs}
    try:
        for _ in range(args.repeat):
            for label, extra in configs:
                runs[label].append(measure(label, extra, args.seconds, domain))
    finally:
        for b in burners:
            b.kill()
            b.wait()
    print(f"\ndit4dit-sim real-time bench ({os.cpu_count()} CPUs, {args.burn} CPU burners, load average {load0:.1f} "
          f"at start, {os.getloadavg()[0]:.1f} at end; camera {CAMERA}; {args.repeat} x {args.seconds:g} s per row; "
          f"MUJOCO_GL={os.environ.get('MUJOCO_GL')})")
    head = ("rendering", "RTF", "step late p50/p99/max ms", "late steps", "overruns", "lowstate Hz", "lowcmd/s",
            "cmd->apply p50/p99/max ms", "frames/s", "rt/dex3 state Hz/hand", "exit")
    table = [head]
    for label, rs in runs.items():
        reps = [r["report"] for r in rs]
        med = lambda f: float(np.median([f(r) for r in reps]))  # noqa: E731
        refused = not all(r["fifo"] for r in rs) and not label.endswith(" 0")
        table.append((label + (" (FIFO refused)" if refused else ""),
                      f"{med(lambda r: r['real_time_factor']):.3f}", _ms(_summary(reps, "physics_step_late_ms")),
                      f"{med(lambda r: 100 * r['physics_late_steps'] / max(1.0, r['sim_time_s'] / 0.002)):.2f}%",
                      str(sum(r["overruns"] for r in reps)),
                      f"{float(np.median([r['lowstate_hz'] for r in rs])):.0f}", f"{med(lambda r: r['lowcmd_per_s']):.0f}",
                      _ms(_summary(reps, "command_latency_ms")),
                      f"{med(lambda r: sum(r['frames'].values()) / r['window_s']):.1f}",
                      "-" if rs[0]["hand_state_hz"] is None else f"{np.median([r['hand_state_hz'] for r in rs]):.0f}",
                      ",".join(sorted({str(r["exit"]) for r in rs}))))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for k, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


if __name__ == "__main__":
    main()
