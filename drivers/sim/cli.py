"""``dit4dit-sim``: a MuJoCo G1 at a table that speaks the real robot's DDS topics.

Run it, then point dit4dit-robot (or any unitree_sdk2py program) at domain 1 on ``lo``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from dit4dit.drivers import g1_spec

_CAMERA_RE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?::(?P<w>\d+)x(?P<h>\d+))?(?:@(?P<fps>[0-9.]+))?$")

EPILOG = """\
examples:
  dit4dit-sim                                   # headless, tabletop, head camera 320x240@30 on tcp://127.0.0.1:55555
  dit4dit-sim --camera head:640x480@30 --camera right_wrist:320x240@15   # D435-sized head + a wrist camera
  dit4dit-sim --task push_green --seed 3        # lay the scene out for a task
  dit4dit-sim --hands --task pick_place --seed 3 # Dex3-1 hands (rt/dex3/*), a task that grasps
  dit4dit-sim --props charuco_board,wrist_marker
  dit4dit-sim --model ../shared/reference/unitree_g1_mujoco/g1_29dof.xml   # a full mesh MJCF instead
  dit4dit-sim --keyboard                        # toggle remote keys from this terminal (e.g. 2 then b = L2+B)

control socket (ZeroMQ REQ/REP, msgpack maps {"cmd": ...}): ping, reset {seed, task}, state, stats {reset},
  task_state, remote {buttons, sticks}, set_latency {seconds, camera}, set_object_pose {name, pos, quat},
  camera_info {camera}.
  From Python: dit4dit.drivers.sim.bridge.control_request("tcp://127.0.0.1:55570", "stats", reset=True)
"""

DEFAULT_RT_PRIORITY = 70  # above most of a desktop's real-time threads, below the kernel's (watchdogs at 99)
SWITCH_INTERVAL_S = 0.0005  # a helper thread holding the GIL hands it to the physics loop within this

# Keyboard -> remote key (toggled: press once to hold, again to release; space releases all).
KEY_MAP = {"1": "L1", "2": "L2", "3": "R1", "4": "R2", "a": "A", "b": "B", "x": "X", "y": "Y",
           "s": "start", "e": "select", "f": "F1", "g": "F2", "i": "up", "k": "down", "j": "left", "l": "right"}


def parse_camera(spec: str, port: int) -> object:
    """``NAME[:WxH][@FPS]`` -> CameraStreamConfig."""
    from dit4dit.drivers.sim.bridge import CameraStreamConfig

    m = _CAMERA_RE.match(spec.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"--camera {spec!r}: write NAME[:WIDTHxHEIGHT][@FPS], e.g. head:640x480@30")
    kw: dict = {"name": m["name"], "port": port}
    if m["w"]:
        kw["width"], kw["height"] = int(m["w"]), int(m["h"])
    if m["fps"]:
        kw["fps"] = float(m["fps"])
    try:
        return CameraStreamConfig(**kw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--camera {spec!r}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dit4dit-sim",
        description="MuJoCo Unitree G1 (29 DoF) at a table, bridged to the robot's DDS topics: subscribes "
                    "rt/lowcmd and rt/arm_sdk, publishes rt/lowstate at 500 Hz (PD torques recomputed every "
                    "2 ms physics step, as the motors do), streams rendered cameras over ZeroMQ and answers a "
                    "control socket for resets, task state, the wireless remote and latency injection.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    dds = p.add_argument_group("DDS")
    dds.add_argument("--domain", type=int, default=g1_spec.SIM_DOMAIN,
                     help="DDS domain id (default %(default)s; the real robot uses 0)")
    dds.add_argument("--interface", default="lo", help="network interface for CycloneDDS (default %(default)s)")
    dds.add_argument("--mode-machine", type=int, default=5,
                     help="mode_machine reported in rt/lowstate and required in rt/lowcmd (default %(default)s = "
                          "g1_29dof_rev_1_0)")
    dds.add_argument("--no-crc-check", action="store_true", help="accept rt/lowcmd with a bad CRC (the robot does not)")
    scene = p.add_argument_group("scene")
    scene.add_argument("--model", type=Path, default=None,
                       help="a full G1 MJCF to use instead of the built-in model (joints matched by name)")
    scene.add_argument("--hands", action="store_true",
                       help="Dex3-1 hands: the built-in model's Dex3 variant (or --model with Dex3 joints), serving "
                            "rt/dex3/{left,right}/cmd and publishing rt/dex3/{left,right}/state at 100 Hz")
    scene.add_argument("--base", choices=("weld", "fixed", "free"), default="weld",
                       help="pelvis: held by a stiff weld gantry (default), fixed, or free (falls without a "
                            "balance controller)")
    scene.add_argument("--no-table", action="store_true", help="no table or objects, just the robot and a floor")
    scene.add_argument("--props", default="", help="comma-separated scene additions (see --list-props)")
    scene.add_argument("--list-props", action="store_true", help="list the scene additions and exit")
    scene.add_argument("--seed", type=int, default=None, help="object layout seed (default: the fixed default layout)")
    scene.add_argument("--task", default=None, help="lay the scene out for this task (drivers/sim/tasks.py)")
    cam = p.add_argument_group("cameras and sockets")
    cam.add_argument("--camera", action="append", default=None, metavar="NAME[:WxH][@FPS]",
                     help="publish a camera: head, left_wrist, right_wrist (repeatable; default head:320x240@30)")
    cam.add_argument("--no-cameras", action="store_true", help="publish no camera")
    cam.add_argument("--camera-port", type=int, default=55555,
                     help="port of the first camera stream; the next cameras take the next ports (default %(default)s)")
    cam.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality 1..100 (default %(default)s)")
    cam.add_argument("--host", default="127.0.0.1",
                     help="address the camera and control sockets bind (default %(default)s; 0.0.0.0 for other hosts)")
    cam.add_argument("--control-port", type=int, default=55570, help="control socket port, 0 = none (default %(default)s)")
    run = p.add_argument_group("running")
    run.add_argument("--no-realtime", action="store_true", help="step as fast as possible instead of real time")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds of wall time")
    run.add_argument("--rt-priority", type=int, default=DEFAULT_RT_PRIORITY, metavar="N",
                     help="run the physics loop (and DDS's receive threads) SCHED_FIFO at priority N where "
                          "permitted (root, CAP_SYS_NICE or an rtprio limit; else a warning and normal "
                          "scheduling); 0 = normal (default %(default)s)")
    run.add_argument("--render-in-process", action="store_true",
                     help="debugging baseline: render the cameras in a thread of the physics process instead of "
                          "the render process (its rendering delays physics steps; see bench/bench_sim_realtime.py)")
    run.add_argument("--keyboard", action="store_true", help="wireless-remote keys from this terminal (toggles: "
                     + ", ".join(f"{k}={v}" for k, v in KEY_MAP.items()) + ", space = release all)")
    run.add_argument("--viewer", action="store_true",
                     help="open MuJoCo's interactive viewer (needs a display); the --keyboard keys work in it too")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


class RemoteToggler:
    """Key presses -> held remote buttons (each key toggles its button; space releases all)."""

    def __init__(self, bridge) -> None:
        self.bridge = bridge
        self.held: set[str] = set()

    def press(self, ch: str) -> bool:
        from dit4dit.drivers.remote import Remote

        ch = ch.lower()
        if ch == " ":
            self.held.clear()
        elif ch in KEY_MAP:
            self.held ^= {KEY_MAP[ch]}
        else:
            return False
        self.bridge.set_remote(Remote.from_buttons(sorted(self.held)))
        return True


def _keyboard_thread(toggler: RemoteToggler, stop: threading.Event) -> threading.Thread:
    """Read keys from a terminal in cbreak mode (no Enter needed). The mode is set before this returns:
    setting it flushes pending input, so a key typed once the simulator answers is never lost."""
    import select
    import termios
    import tty

    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def run() -> None:
        try:
            while not stop.is_set():
                if not select.select([sys.stdin], [], [], 0.1)[0]:
                    continue
                if toggler.press(sys.stdin.read(1)):
                    print(f"\rremote: {'+'.join(sorted(toggler.held)) or '(none)'}        ", end="", flush=True)
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)

    t = threading.Thread(target=run, name="sim-keyboard", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)  # PyOpenGL's import-time INFO chatter
    if args.viewer:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            parser.error("--viewer needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set; run without "
                         "--viewer (headless), or from a desktop session / ssh -X")
        os.environ["MUJOCO_GL"] = "glfw"  # the viewer and the offscreen renderer share GLFW contexts
    if args.keyboard and not sys.stdin.isatty():
        parser.error("--keyboard needs an interactive terminal on stdin; use the control socket's 'remote' command")
    if not 0 <= args.rt_priority <= 99:
        parser.error(f"--rt-priority must be 0..99, got {args.rt_priority}")
    rt_priority = args.rt_priority
    if args.viewer and rt_priority:
        rt_priority = 0  # the viewer renders in this process's threads, which would inherit SCHED_FIFO
        logging.getLogger(__name__).info("--viewer: the physics loop runs at normal priority")
    sys.setswitchinterval(SWITCH_INTERVAL_S)

    # Imports after the GL backend is chosen.
    from dit4dit.drivers.sim.bridge import BridgeConfig, SimBridge
    from dit4dit.drivers.sim.scene import G1Sim, SceneConfig, SceneError, available_additions

    if args.list_props:
        for name in available_additions():
            print(name)
        return 0
    cameras = []
    if not args.no_cameras:
        for i, spec in enumerate(args.camera or ["head"]):
            try:
                cameras.append(parse_camera(spec, args.camera_port + i))
            except argparse.ArgumentTypeError as e:
                parser.error(str(e))
    props = [s.strip() for s in args.props.split(",") if s.strip()]
    try:
        cfg = BridgeConfig(domain=args.domain, interface=args.interface, mode_machine=args.mode_machine,
                           host=args.host, cameras=cameras, control_port=args.control_port or None,
                           real_time=not args.no_realtime, check_crc=not args.no_crc_check,
                           jpeg_quality=args.jpeg_quality, hands=args.hands, rt_priority=rt_priority,
                           render_in_process=args.render_in_process)
        sim = G1Sim(SceneConfig(model_path=args.model, hands=args.hands, base=args.base, tabletop=not args.no_table,
                                additions=props))
        if args.seed is not None or args.task is not None:
            sim.reset(seed=args.seed, task=args.task)
        bridge = SimBridge(sim, cfg)
    except (SceneError, ValueError, KeyError) as e:
        print(f"dit4dit-sim: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()
        bridge.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    toggler = RemoteToggler(bridge)
    # Before start(): its thread then runs at normal priority, and the terminal is ready when the sim answers.
    keyboard = _keyboard_thread(toggler, stop) if args.keyboard else None
    try:
        bridge.start()
    except RuntimeError as e:
        print(f"dit4dit-sim: {e}", file=sys.stderr)
        stop.set()
        if keyboard is not None:
            keyboard.join(timeout=2.0)
        sim.close()
        return 2
    if args.viewer:
        import mujoco.viewer

        def on_key(keycode: int) -> None:  # GLFW key codes of letters/digits/space are their ASCII codes
            if 0 < keycode < 128:
                toggler.press(chr(keycode))

        bridge.attach_viewer(mujoco.viewer.launch_passive(sim.model, sim.data, key_callback=on_key))
    streams = ", ".join(f"{c.name} {c.width}x{c.height}@{c.fps:g} tcp://{args.host}:{c.port}" for c in cameras) or "none"
    control = f"tcp://{args.host}:{args.control_port}" if args.control_port else "none"
    hands = "Dex3 (rt/dex3/*)" if args.hands else "rubber"
    print(f"dit4dit-sim ready: DDS domain {args.domain} on {args.interface}, mode_machine {args.mode_machine}, "
          f"base {args.base}, hands {hands}; cameras: {streams}; control: {control}", flush=True)
    try:
        bridge.run(duration_s=args.duration)
    finally:
        stop.set()
        if keyboard is not None:
            keyboard.join(timeout=2.0)  # no thread of ours is left running at interpreter exit
        bridge.close()
        sim.close()
        print(f"dit4dit-sim stopped: {bridge.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
