"""Simulator speed: physics real-time factor, rt/lowstate rate and jitter over real DDS, camera render rates.

    python bench/bench_sim.py                 # everything (~1 min)
    python bench/bench_sim.py --seconds 10    # longer DDS measurement
    python bench/bench_sim.py --skip-dds      # in-process numbers only

Prints one table. Numbers depend on the machine and its load (note the load average printed).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
from dit4dit.drivers import g1_spec
from dit4dit.drivers.cameras.zmq_stream import encode_frame
from dit4dit.drivers.sim import g1_model
from dit4dit.drivers.sim.scene import G1Sim, SceneConfig

ROWS: list[tuple[str, str, str]] = []


def row(what: str, value: str, note: str = "") -> None:
    ROWS.append((what, value, note))
    print(f"  {what}: {value} {note}", file=sys.stderr, flush=True)


def bench_physics(steps: int) -> None:
    for label, cfg in (("tabletop, weld gantry", SceneConfig()), ("robot only, fixed base", SceneConfig(tabletop=False, base="fixed"))):
        sim = G1Sim(cfg)
        kp, kd = g1_spec.gains_array()
        sim.set_command(g1_spec.HOME_POSE, kp, kd)
        sim.step(100)
        t = time.perf_counter()
        sim.step(steps)
        wall = time.perf_counter() - t
        rtf = steps * sim.model.opt.timestep / wall
        row(f"physics RTF ({label})", f"{rtf:.1f}x", f"{wall / steps * 1e6:.0f} us/step incl. PD, {steps} steps")
        sim.close()


def bench_grasp_physics(steps: int) -> None:
    """Dex3 scene with the right hand holding the red block (handed over as in tests/test_sim_scene.py), alone
    and with the head camera rendered at 30 Hz of simulated time in the same thread (the worst case: dit4dit-sim
    renders in its own process)."""
    import mujoco

    sim = G1Sim(SceneConfig(hands=True))
    m, d = sim.model, sim.data
    kp, kd = g1_spec.gains_array()
    sim.set_command(g1_spec.HOME_POSE, kp, kd)
    palm = m.body("right_hand_palm_link").id
    open_hand = np.array([0.0, 0.72, -1.74, 0.0, 0.0, 0.0, 0.0])
    closed = np.array([0.0, -0.6, -1.74, 1.4, 1.4, 1.4, 1.4])
    sim.set_hand_command("right", open_hand, 1.5, 0.2)
    sim.step(200)
    for i in range(150):
        R = d.xmat[palm].reshape(3, 3)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, R.reshape(9))
        sim.set_object_pose("red_block", d.xpos[palm] + R @ np.array([0.08, 0.05, 0.0]), quat)
        sim.set_hand_command("right", open_hand + (closed - open_hand) * min(1.0, i / 100), 1.5, 0.2)
        sim.step(1)
    sim.step(250)
    block = m.body("red_block").id
    grip = sum(1 for c in d.contact[: d.ncon] if block in (m.geom_bodyid[c.geom1], m.geom_bodyid[c.geom2]))
    every = round(1 / (30 * g1_spec.CONTROL_DT))
    for label, camera in (("Dex3, block held", False), ("Dex3, block held, head camera 320x240@30 same thread", True)):
        t = time.perf_counter()
        for k in range(steps):
            sim.step(1)
            if camera and k % every == 0:
                sim.render(g1_model.HEAD_CAMERA, (320, 240))
        wall = time.perf_counter() - t
        rtf = steps * m.opt.timestep / wall
        row(f"physics RTF ({label})", f"{rtf:.1f}x",
            f"{wall / steps * 1e6:.0f} us/step incl. PD, {steps} steps, {grip} block contacts, {d.ncon} in all")
    sim.close()


def bench_bridge_step(steps: int, domain: int) -> None:
    """One physics step + lowstate fill/CRC/serialize/DDS write, in-process (what the 500 Hz loop costs)."""
    from dit4dit.drivers.sim.bridge import BridgeConfig, SimBridge

    sim = G1Sim()
    bridge = SimBridge(sim, BridgeConfig(domain=domain, cameras=[], control_port=None))
    bridge.start()
    for _ in range(200):
        bridge.step_and_publish()
    t = time.perf_counter()
    for _ in range(steps):
        bridge.step_and_publish()
    per = (time.perf_counter() - t) / steps
    row("step + rt/lowstate publish (in-process)", f"{per * 1e6:.0f} us", f"= {per / 0.002 * 100:.0f}% of the 2 ms period")
    bridge.close()
    sim.close()


def bench_render(n: int) -> None:
    sim = G1Sim()
    for h, w in ((96, 96), (224, 224), (240, 320), (480, 640)):
        sim.render(g1_model.HEAD_CAMERA, (h, w))
        t = time.perf_counter()
        for _ in range(n):
            img = sim.render(g1_model.HEAD_CAMERA, (h, w))
        r = (time.perf_counter() - t) / n
        t = time.perf_counter()
        for i in range(n):
            encode_frame(img, camera="head", frame_id=i, stamp_mono=0.0)
        e = (time.perf_counter() - t) / n
        row(f"render head camera {w}x{h}", f"{1 / r:.0f} fps", f"{r * 1e3:.1f} ms render + {e * 1e3:.1f} ms JPEG")
    sim.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_dds(seconds: float, domain: int, camera: str | None) -> None:
    """dit4dit-sim in its own process; this process subscribes rt/lowstate with the SDK and times arrivals."""
    from dit4dit.drivers.sim.bridge import control_request, wait_for_sim
    from unitree_sdk2py.core.channel import ChannelFactoryInitialize, ChannelSubscriber
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowState_

    ctrl = _free_port()
    cmd = [sys.executable, "-m", "dit4dit.drivers.sim.cli", "--domain", str(domain), "--control-port", str(ctrl),
           "--camera-port", str(_free_port())]
    cmd += ["--camera", camera] if camera else ["--no-cameras"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sub = None
    try:
        addr = f"tcp://127.0.0.1:{ctrl}"
        wait_for_sim(addr, alive=lambda: proc.poll() is None)
        ChannelFactoryInitialize(domain, "lo")
        arrivals: list[float] = []
        ticks: list[int] = []
        lock = threading.Lock()
        recording = threading.Event()

        def on_state(msg) -> None:
            if recording.is_set():
                with lock:
                    arrivals.append(time.perf_counter())
                    ticks.append(msg.tick)

        sub = ChannelSubscriber(g1_spec.TOPIC_LOWSTATE, LowState_)
        sub.Init(on_state, 0)
        time.sleep(1.0)  # discovery + warm-up
        s0 = control_request(addr, "state")
        w0 = time.perf_counter()
        recording.set()
        time.sleep(seconds)
        recording.clear()
        s1 = control_request(addr, "state")
        window = time.perf_counter() - w0  # wall time between the two sim-side counter reads (approx.)
        with lock:
            a, tk = np.array(arrivals), np.array(ticks, dtype=np.int64)
        label = f"with {camera} camera" if camera else "no camera"
        published = s1["stats"]["lowstate_published"] - s0["stats"]["lowstate_published"]
        sim_time = (s1["tick"] - s0["tick"]) / 1000.0
        row(f"sim real-time factor, DDS loop ({label})", f"{sim_time / window:.2f}",
            f"{published} msgs in {window:.2f} s wall; overruns {s1['stats']['overruns'] - s0['stats']['overruns']}")
        if len(a) > 2:
            d = np.diff(a) * 1e3
            rate = (len(a) - 1) / (a[-1] - a[0])
            step = max(1, int(np.median(np.diff(tk))))
            row(f"rt/lowstate received ({label})", f"{rate:.0f} Hz",
                f"{len(a)} msgs; {int((np.diff(tk) // step - 1).clip(0).sum())} lost (tick gaps)")
            row(f"lowstate period ({label})", f"p50 {np.percentile(d, 50):.2f} ms",
                f"p99 {np.percentile(d, 99):.2f} ms, max {d.max():.2f} ms (target 2.00)")
        if camera:
            frames = s1["stats"]["frames"].get(camera.split(":")[0], 0) - s0["stats"]["frames"].get(camera.split(":")[0], 0)
            row(f"camera frames published ({camera})", f"{frames / seconds:.1f} fps")
    finally:
        if sub is not None:
            sub.Close()  # before the sim goes away: its disposal would flood the SDK reader's error prints
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="DDS measurement window per configuration")
    ap.add_argument("--steps", type=int, default=5000, help="physics steps for the real-time factor")
    ap.add_argument("--renders", type=int, default=40, help="frames per render size")
    ap.add_argument("--skip-dds", action="store_true", help="skip the multi-process DDS measurements")
    ap.add_argument("--domain", type=int, default=None, help="DDS domain (default: random in 100..199)")
    args = ap.parse_args()
    domain = args.domain if args.domain is not None else random.SystemRandom().randint(100, 199)
    load0 = os.getloadavg()[0]
    bench_physics(args.steps)
    bench_grasp_physics(args.steps)
    bench_render(args.renders)
    if not args.skip_dds:
        # Each DDS measurement runs the sim in a child; this process's SDK factory binds one domain for all.
        bench_dds(args.seconds, domain, None)
        bench_dds(args.seconds, domain, "head:320x240@30")
        bench_bridge_step(2000, domain)  # last: shares this process's DDS domain
    print(f"\ndit4dit-sim bench  ({os.cpu_count()} CPUs, load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end; MUJOCO_GL={os.environ.get('MUJOCO_GL')})")
    w0 = max(len(r[0]) for r in ROWS)
    w1 = max(len(r[1]) for r in ROWS)
    print(f"| {'measure':<{w0}} | {'value':<{w1}} | notes")
    print(f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|------")
    for what, value, note in ROWS:
        print(f"| {what:<{w0}} | {value:<{w1}} | {note}")


if __name__ == "__main__":
    main()
